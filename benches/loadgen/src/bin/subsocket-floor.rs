//! `subsocket-floor`: the write floor of fan-out on this host (issue 14), the reference the
//! gateway's CPU per delivery is held against. No gateway: a plain loop on one thread (pinned to
//! `--server-core`) writes `--frames-per-write` pre-built WebSocket frames, the size of a
//! gateway delivery of a `--payload`-byte message, in one `write(2)` to each of `--conns`
//! loopback sockets whenever the socket is writable; readers on `--client-core` drain them.
//! What the server thread's CPU time (getrusage RUSAGE_THREAD: user + system, so the kernel's
//! TCP send path and, on loopback, the receive path it runs for the peer) costs per frame is
//! the floor: what any gateway pays to hand a frame to the kernel at that many frames per write.
//!
//! One JSON line on stdout, a summary on stderr. Stops by itself after `--seconds`.

use clap::Parser;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subsocket::ws::frame::{self, OpCode};

#[derive(Parser, Debug)]
#[command(about = "The fan-out write floor: pre-built frames, N per write(2), to many sockets")]
struct Args {
    /// Sockets written to.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Frames in each write(2).
    #[arg(long, default_value_t = 32)]
    frames_per_write: usize,
    /// Payload bytes of each message (the frame carries it in a Micro Socket `message`).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Measured seconds (after a one-second warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// SO_SNDBUF of the written sockets (the gateway's default: 128 KiB).
    #[arg(long, default_value_t = 128 * 1024)]
    send_buffer: usize,
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Scenario name recorded in the JSON line.
    #[arg(long, default_value = "floor")]
    scenario: String,
    /// Internal: be the reading side, connecting `--conns` sockets to this address (the
    /// readers run in a process of their own, so each side has its own descriptor limit).
    #[arg(long, hide = true)]
    drain_from: Option<SocketAddr>,
}

/// A gateway-shaped delivery frame of a `payload`-byte message.
fn delivery_frame(payload: usize, seq: u64) -> Vec<u8> {
    let data = format!("{{\"p\":\"{}\"}}", "x".repeat(payload.saturating_sub(8)));
    let json = format!(
        "{{\"type\":\"message\",\"topic\":\"fanout\",\"seqNo\":{seq},\"messageId\":\"mf3k2j9x1a-0-{seq}\",\"data\":{data}}}"
    );
    let mut out = Vec::new();
    frame::write_server_frame(&mut out, OpCode::Text, json.as_bytes());
    out
}

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own; no other memory.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

fn pin(core: usize) {
    core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn set_send_buffer(s: &TcpStream, bytes: usize) {
    let sock = socket2::SockRef::from(s);
    let _ = sock.set_send_buffer_size(bytes);
    let _ = sock.set_nodelay(true);
}

/// Reads everything every socket gets until each is closed (or `stop`); returns the bytes read.
fn drain(mut socks: Vec<TcpStream>, stop: Arc<AtomicBool>) -> u64 {
    let mut open = socks.len();
    let mut poll = Poll::new().expect("poll");
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::READABLE)
            .expect("register");
    }
    let mut events = Events::with_capacity(4096);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) && open > 0 {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for ev in events.iter() {
            let s = &mut socks[ev.token().0];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        open -= 1;
                        break;
                    }
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
    total
}

/// Raises RLIMIT_NOFILE: both ends of every socket are in this process (10,000 sockets are
/// 20,000 descriptors). Root may raise the hard limit too; others get the hard limit.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit read and write one `rlimit` we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        let want = libc::rlimit {
            rlim_cur: rl.rlim_max.max(1 << 20),
            rlim_max: rl.rlim_max.max(1 << 20),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    if let Some(addr) = args.drain_from {
        // The reading side: connect, read until the writer closes every socket (at most a
        // minute past its run).
        pin(args.client_core);
        let socks: Vec<TcpStream> = (0..args.conns)
            .map(|_| {
                let s = std::net::TcpStream::connect(addr).expect("connect");
                s.set_nonblocking(true).expect("nonblocking");
                TcpStream::from_std(s)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let timer_stop = stop.clone();
        let limit = Duration::from_secs_f64(args.seconds + 60.0);
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            timer_stop.store(true, Ordering::Relaxed);
        });
        drain(socks, stop);
        return;
    }
    let listener_std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr: SocketAddr = listener_std.local_addr().expect("addr");
    listener_std.set_nonblocking(true).expect("nonblocking");
    let listener = TcpListener::from_std(listener_std);

    let conns = args.conns;
    let mut client = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--drain-from", &addr.to_string()])
        .args(["--conns", &conns.to_string()])
        .args(["--client-core", &args.client_core.to_string()])
        .spawn()
        .expect("start the readers");

    pin(args.server_core);
    let mut socks: Vec<TcpStream> = Vec::with_capacity(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while socks.len() < conns {
        match listener.accept() {
            Ok((s, _)) => {
                set_send_buffer(&s, args.send_buffer);
                socks.push(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "connections did not arrive");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    let mut batch = Vec::new();
    for i in 0..args.frames_per_write {
        batch.extend_from_slice(&delivery_frame(args.payload, 1_000_000 + i as u64));
    }
    let frame_len = batch.len() / args.frames_per_write;

    let mut poll = Poll::new().expect("poll");
    for (i, s) in socks.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::WRITABLE)
            .expect("register");
    }
    // Bytes of the current batch still to write, per socket (a short write finishes first).
    let mut left: Vec<usize> = vec![0; conns];
    let mut events = Events::with_capacity(4096);
    let start = Instant::now();
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(args.seconds);
    let (mut measuring, mut cpu0, mut t0) = (false, 0.0, start);
    let (mut bytes, mut writes, mut blocked) = (0u64, 0u64, 0u64);
    while start.elapsed() < warmup + measure {
        if !measuring && start.elapsed() >= warmup {
            measuring = true;
            cpu0 = thread_cpu_seconds();
            t0 = Instant::now();
            (bytes, writes, blocked) = (0, 0, 0);
        }
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for ev in events.iter() {
            let i = ev.token().0;
            let s = &mut socks[i];
            // Edge-triggered: write until the socket refuses.
            loop {
                let from = if left[i] == 0 {
                    0
                } else {
                    batch.len() - left[i]
                };
                match s.write(&batch[from..]) {
                    Ok(n) => {
                        writes += 1;
                        bytes += n as u64;
                        left[i] = batch.len() - from - n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        blocked += 1;
                        break;
                    }
                    Err(e) => panic!("write: {e}"),
                }
            }
        }
    }
    let cpu = thread_cpu_seconds() - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    drop(socks);
    let _ = client.wait();
    let frames = bytes as f64 / frame_len as f64;
    let ns_per_frame = cpu * 1e9 / frames.max(1.0);
    let line = serde_json::json!({
        "scenario": args.scenario, "server": "floor", "conns": conns,
        "frames_per_write": args.frames_per_write, "payload_bytes": args.payload,
        "frame_bytes": frame_len, "measured_s": wall, "frames": frames,
        "deliveries_per_s": frames / wall, "server_cpu_s": cpu,
        "server_cpu_ns_per_delivery": ns_per_frame, "server_cpu_util": cpu / wall,
        "writes": writes, "writes_blocked": blocked,
        "deliveries_per_write": frames / (writes.max(1) as f64),
        // The fields the bench summary reads of every row (no latency, nothing to lose here).
        "latency_us": {"p50": null, "p99": null, "p999": null, "max": null},
        "lost": 0, "gaps": 0, "reordered": 0, "client_cpu_util": null,
        "subscriptions_per_s": null, "rss_per_subscription_bytes": null,
        "bottleneck": "-",
    });
    println!("{line}");
    eprintln!(
        "floor {}: {:.0} frames/s, server {:.0} ns/frame (util {:.2}), {:.1} frames/write ({} B frames, {} conns), {} writes refused",
        args.scenario,
        frames / wall,
        ns_per_frame,
        cpu / wall,
        frames / (writes.max(1) as f64),
        frame_len,
        conns,
        blocked
    );
}
