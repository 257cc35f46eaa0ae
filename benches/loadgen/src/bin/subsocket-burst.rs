//! `subsocket-burst`: the burst benchmark of issue 13. One topic, `--subs` subscribers of which
//! `--stalled-fraction` do not read (a 4 KiB receive buffer, nothing read) while one publisher
//! pipelines `--burst-bytes` of `--payload`-byte messages as fast as the socket takes them. The
//! healthy subscribers read all along; the stalled ones start reading `--hold-ms` after the last
//! publish was acknowledged (so `refill` can show what it brings back). The run ends when no frame
//! arrived for `--quiet-ms`. Per class of subscriber: delivered, lost, reordered, disconnected, the
//! gateway's reports (`SLOW_CONSUMER` ranges, `REPLAY_UNAVAILABLE`), and for the healthy ones the
//! publish-to-delivery latency; for the gateway (`--gateway-pid`) its peak RSS, and its counters.
//!
//! One JSON line on stdout, a summary on stderr. Every run stops by itself (`--max-seconds`).

use clap::Parser;
use hdrhistogram::Histogram;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use subsocket::ws::frame::{self, OpCode};

#[derive(Parser, Debug)]
#[command(
    about = "Burst benchmark: healthy and stalled subscribers of one topic under a publish burst"
)]
struct Args {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Subscribers of the topic.
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Share of them that stall (do not read until the burst is over and `--hold-ms` passed).
    #[arg(long, default_value_t = 0.1)]
    stalled_fraction: f64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Bytes of payload in the burst (messages = burst-bytes / payload).
    #[arg(long, default_value_t = 1 << 20)]
    burst_bytes: usize,
    /// How long the stalled subscribers keep not reading after the last ack.
    #[arg(long, default_value_t = 3000)]
    hold_ms: u64,
    /// The run ends after this long without a frame (once the stalled ones read).
    #[arg(long, default_value_t = 2000)]
    quiet_ms: u64,
    /// Hard limit on the whole run.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// The gateway's pid, for its peak RSS (VmHWM) and RSS.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// A label copied to the JSON line (the policy under test, say).
    #[arg(long, default_value = "")]
    label: String,
}

/// What one subscriber saw.
#[derive(Default, Clone)]
struct Seen {
    stalled: bool,
    next: u64,
    delivered: u64,
    reordered: u64,
    closed: bool,
    slow_reports: u64,
    replay_unavailable: u64,
    /// Messages the gateway said this subscriber will not get (drop ranges, refill losses).
    refill_lost: u64,
}

struct Sub {
    stream: MioStream,
    buf: Vec<u8>,
    seen: Seen,
}

/// A blocking WebSocket connection on `path` (a receive buffer of `rcvbuf` bytes if given),
/// upgraded.
fn connect(target: SocketAddr, rcvbuf: Option<usize>, path: &str) -> Result<TcpStream, String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    if let Some(b) = rcvbuf {
        sock.set_recv_buffer_size(b).map_err(|e| e.to_string())?;
    }
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.connect(&target.into())
        .map_err(|e| format!("connect {target}: {e}"))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)
            .map_err(|e| format!("upgrade: {e}"))?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            String::from_utf8_lossy(&head)
        ));
    }
    Ok(s)
}

fn find_u64(hay: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&hay[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Handles every whole frame in `sub.buf`; returns how many text and close frames it took.
fn process(sub: &mut Sub, epoch: Instant, hist: &mut Histogram<u64>) -> usize {
    let mut at = 0;
    let mut n = 0;
    while let Some(len) = frame::server_frame_len(&sub.buf[at..]) {
        if at + len > sub.buf.len() {
            break;
        }
        let f = &sub.buf[at..at + len];
        let op = f[0] & 0x0f;
        let payload = &f[frame::header_len(f)..];
        at += len;
        if op == OpCode::Text as u8 || op == OpCode::Close as u8 {
            n += 1; // heartbeat pings do not keep the run alive
        }
        if op == OpCode::Close as u8 {
            sub.seen.closed = true;
            continue;
        }
        if op != OpCode::Text as u8 {
            continue;
        }
        let s = &mut sub.seen;
        if payload.starts_with(br#"{"type":"message""#) {
            let Some(seq) = find_u64(payload, br#""seqNo":"#) else {
                continue;
            };
            if seq >= s.next {
                // In order, or past a gap (what the gap held is counted as lost at the end).
                s.delivered += 1;
                s.next = seq + 1;
            } else {
                s.reordered += 1;
            }
            if !s.stalled {
                if let Some(t) = find_u64(payload, br#""t":"#) {
                    let now = epoch.elapsed().as_micros() as u64;
                    let _ = hist.record(now.saturating_sub(t).max(1));
                }
            }
        } else if memchr::memmem::find(payload, br#""code":"SLOW_CONSUMER""#).is_some() {
            s.slow_reports += 1;
            // `drop`'s report of the range it skipped (a `disconnect` cut has no range).
            if let (Some(from), Some(to)) = (
                find_u64(payload, br#""fromSeq":"#),
                find_u64(payload, br#""toSeq":"#),
            ) {
                s.refill_lost += to.saturating_sub(from) + 1;
            }
        } else if memchr::memmem::find(payload, br#""code":"REPLAY_UNAVAILABLE""#).is_some() {
            s.replay_unavailable += 1;
            if let Some(o) = find_u64(payload, br#""oldestSeq":"#) {
                s.refill_lost += o.saturating_sub(s.next.max(1));
                s.next = s.next.max(o);
            }
        }
    }
    sub.buf.drain(..at);
    n
}

fn http_stats(target: SocketAddr) -> Value {
    let Ok(mut s) = TcpStream::connect(target) else {
        return Value::Null;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let Some(at) = memchr::memmem::find(&out, b"\r\n\r\n") else {
        return Value::Null;
    };
    serde_json::from_slice(&out[at + 4..]).unwrap_or(Value::Null)
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("subsocket-burst: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let epoch = Instant::now();
    let topic = format!(
        "burst-{}-{}",
        std::process::id(),
        epoch.elapsed().as_nanos()
    );
    let stalled_n = ((args.subs as f64) * args.stalled_fraction).round() as usize;
    let messages = (args.burst_bytes / args.payload.max(1)).max(1) as u64;
    let rss_before = args.gateway_pid.and_then(|p| status_kib(p, "VmRSS:"));

    // Subscribers: stalled ones first (small receive buffer), then the healthy ones.
    let mut subs: Vec<Sub> = Vec::with_capacity(args.subs);
    for i in 0..args.subs {
        let stalled = i < stalled_n;
        let mut s = connect(
            args.target,
            stalled.then_some(4096),
            &format!("/ws/sub/{topic}"),
        )?;
        // The micro socket's `subscribed` comes first.
        let mut first = [0u8; 256];
        let n = s.read(&mut first).map_err(|e| format!("subscribed: {e}"))?;
        if memchr::memmem::find(&first[..n], b"subscribed").is_none() {
            return Err(format!(
                "no subscribed: {}",
                String::from_utf8_lossy(&first[..n])
            ));
        }
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        subs.push(Sub {
            stream: MioStream::from_std(s),
            buf: Vec::new(),
            seen: Seen {
                stalled,
                ..Seen::default()
            },
        });
    }

    // The publisher: all publishes written, then the acks read, on a thread of its own.
    let mut publisher = connect(args.target, None, "/ws")?;
    publisher.set_read_timeout(None).ok();
    let pad = "x".repeat(args.payload.saturating_sub(40));
    let topic_pub = topic.clone();
    let publishing = std::thread::spawn(move || -> Result<(Duration, u64), String> {
        let started = Instant::now();
        let mut out = Vec::with_capacity(1 << 20);
        let mut reader = publisher.try_clone().map_err(|e| e.to_string())?;
        let acks = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0u64;
            let mut pending = Vec::new();
            while got < messages {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        const ACK: &[u8] = br#""type":"ack""#;
                        pending.extend_from_slice(&buf[..n]);
                        got += memchr::memmem::find_iter(&pending, ACK).count() as u64;
                        // A tail shorter than the needle cannot hold a whole one: no double count.
                        let cut = pending.len().saturating_sub(ACK.len() - 1);
                        pending.drain(..cut);
                    }
                }
            }
            got
        });
        for i in 0..messages {
            let t = epoch.elapsed().as_micros() as u64;
            let text = format!(
                r#"{{"type":"publish","topic":"{topic_pub}","messageId":"b{i}","payload":{{"t":{t},"p":"{pad}"}}}}"#
            );
            frame::write_client_frame(&mut out, OpCode::Text, text.as_bytes(), [1, 2, 3, 4], true);
            if out.len() >= 1 << 16 {
                publisher.write_all(&out).map_err(|e| e.to_string())?;
                out.clear();
            }
        }
        publisher.write_all(&out).map_err(|e| e.to_string())?;
        let acked = acks.join().unwrap_or(0);
        Ok((started.elapsed(), acked))
    });

    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    for (i, s) in subs.iter_mut().enumerate() {
        if !s.seen.stalled {
            poll.registry()
                .register(&mut s.stream, Token(i), Interest::READABLE)
                .map_err(|e| e.to_string())?;
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 1 << 16];
    let mut peak_kib = 0u64;
    let mut last_frame = Instant::now();
    let mut publish_done: Option<(Instant, Duration, u64)> = None;
    let mut stalled_reading = false;
    let mut publishing = Some(publishing);
    loop {
        let now = Instant::now();
        if now >= deadline {
            eprintln!("subsocket-burst: --max-seconds reached");
            break;
        }
        if let Some(pid) = args.gateway_pid {
            peak_kib = peak_kib.max(status_kib(pid, "VmRSS:").unwrap_or(0));
        }
        if publish_done.is_none() && publishing.as_ref().is_some_and(|p| p.is_finished()) {
            let (took, acked) = publishing
                .take()
                .expect("checked")
                .join()
                .map_err(|_| "publisher panicked")??;
            publish_done = Some((Instant::now(), took, acked));
        }
        if let Some((at, _, _)) = publish_done {
            if !stalled_reading && now.duration_since(at) >= Duration::from_millis(args.hold_ms) {
                stalled_reading = true;
                last_frame = now;
                for (i, s) in subs.iter_mut().enumerate() {
                    if s.seen.stalled {
                        poll.registry()
                            .register(&mut s.stream, Token(i), Interest::READABLE)
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            if stalled_reading
                && now.duration_since(last_frame) >= Duration::from_millis(args.quiet_ms)
            {
                break;
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let s = &mut subs[ev.token().0];
            loop {
                match s.stream.read(&mut chunk) {
                    Ok(0) => {
                        s.seen.closed = true;
                        let _ = poll.registry().deregister(&mut s.stream);
                        break;
                    }
                    Ok(n) => {
                        s.buf.extend_from_slice(&chunk[..n]);
                        if process(s, epoch, &mut hist) > 0 {
                            last_frame = Instant::now();
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        s.seen.closed = true;
                        let _ = poll.registry().deregister(&mut s.stream);
                        break;
                    }
                }
            }
        }
    }
    let stats = http_stats(args.target);
    let hwm = args.gateway_pid.and_then(|p| status_kib(p, "VmHWM:"));
    let class = |stalled: bool| {
        let v: Vec<&Seen> = subs
            .iter()
            .map(|s| &s.seen)
            .filter(|s| s.stalled == stalled)
            .collect();
        let delivered: u64 = v.iter().map(|s| s.delivered).sum();
        let expected = messages * v.len() as u64;
        let after_cut: u64 = v
            .iter()
            .filter(|s| s.closed)
            .map(|s| messages.saturating_sub(s.delivered))
            .sum();
        let reported: u64 = v.iter().filter(|s| !s.closed).map(|s| s.refill_lost).sum();
        let missing_open: u64 = v
            .iter()
            .filter(|s| !s.closed)
            .map(|s| messages.saturating_sub(s.delivered))
            .sum();
        json!({
            "conns": v.len(),
            "expected": expected,
            "delivered": delivered,
            "lost": expected.saturating_sub(delivered),
            "complete": v.iter().filter(|s| s.delivered == messages).count(),
            "reordered": v.iter().map(|s| s.reordered).sum::<u64>(),
            "disconnected": v.iter().filter(|s| s.closed).count(),
            "slowConsumerReports": v.iter().map(|s| s.slow_reports).sum::<u64>(),
            "replayUnavailable": v.iter().map(|s| s.replay_unavailable).sum::<u64>(),
            "reportedLost": reported,
            "lostAfterCut": after_cut,
            "lostSilently": missing_open.saturating_sub(reported),
        })
    };
    let (took, acked) = publish_done
        .map(|(_, t, a)| (t.as_secs_f64(), a))
        .unwrap_or((0.0, 0));
    let pick = |k: &str| stats.get(k).cloned().unwrap_or(Value::Null);
    let line = json!({
        "label": args.label,
        "subs": args.subs,
        "stalled": stalled_n,
        "payload": args.payload,
        "burst_bytes": args.burst_bytes,
        "messages": messages,
        "acked": acked,
        "publish_s": took,
        "healthy": class(false),
        "stalledClass": class(true),
        "healthy_latency_us": {
            "p50": hist.value_at_quantile(0.5),
            "p99": hist.value_at_quantile(0.99),
            "max": hist.max(),
        },
        "gateway_rss_before_kib": rss_before,
        "gateway_rss_peak_kib": peak_kib.max(hwm.unwrap_or(0)),
        "gateway": {
            "drops": pick("drops"),
            "dropReports": pick("dropReports"),
            "refillEntries": pick("refillEntries"),
            "refillReplays": pick("refillReplays"),
            "refillDiscards": pick("refillDiscards"),
            "slowConsumerDisconnects": pick("slowConsumerDisconnects"),
            "budgetSheds": pick("budgetSheds"),
        },
    });
    println!("{line}");
    let h = &line["healthy"];
    let st = &line["stalledClass"];
    eprintln!(
        "burst {} x {} B ({}): healthy {}/{} delivered, {} cut, p99 {} us; stalled {}/{} delivered, {} cut, {} reports, {} reported lost; gateway peak RSS {} MiB",
        messages,
        args.payload,
        args.label,
        h["delivered"],
        h["expected"],
        h["disconnected"],
        line["healthy_latency_us"]["p99"],
        st["delivered"],
        st["expected"],
        st["disconnected"],
        st["slowConsumerReports"].as_u64().unwrap_or(0) + st["replayUnavailable"].as_u64().unwrap_or(0),
        st["reportedLost"],
        line["gateway_rss_peak_kib"].as_u64().unwrap_or(0) / 1024,
    );
    Ok(())
}
