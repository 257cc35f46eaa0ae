//! `subsocket-bench`: the load generator. Speaks the Micro Socket protocol to any gateway
//! (subsocket, or the Bun reference peer), opens N subscriber connections spread over source
//! addresses, subscribes them, publishes at a fixed rate or closed-loop, and reports
//! deliveries/s, loss and reordering, end-to-end latency, and — given the gateway's PID — its
//! CPU per delivery and RSS per connection and per subscription.
//!
//! One thread, one epoll loop (mio), pinned to a core of its own. Frames are parsed in place
//! without allocating per delivery. Reuses the crate's frame writer; nothing from `shard/`.
//! Every loop is bounded in time and stops by itself.

// The result object is one large json! literal.
#![recursion_limit = "256"]

use clap::Parser;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use subsocket::ws::frame::{self, OpCode};

#[derive(Debug, Parser, Clone)]
#[command(name = "subsocket-bench", about = "Micro Socket load generator")]
struct Args {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Where the publishers (ws or http) connect; subscribers stay on `--target` (e.g. another
    /// node of a cluster, for cross-node fan-out). Default: `--target`.
    #[arg(long)]
    publish_target: Option<SocketAddr>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Topics in the topic space.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Topics each subscriber subscribes to.
    #[arg(long, default_value_t = 1)]
    topics_per_conn: usize,
    /// How subscribers pick topics: uniform, zipf, one.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Topics per subscribe request.
    #[arg(long, default_value_t = 100)]
    subscribe_batch: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publish over `ws` or `http`.
    #[arg(long, default_value = "ws")]
    publish_via: String,
    /// Open loop: publishes per second over all publishers (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed loop: at most this many messages published but not yet delivered to all their subscribers.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Payload size in bytes (JSON object with a timestamp, a counter and padding).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The gateway's PID, for CPU and RSS from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Source addresses for subscriber connections (comma list); default: 127.0.0.2.. as needed.
    #[arg(long)]
    sources: Option<String>,
    /// Connections per source address before moving to the next.
    #[arg(long, default_value_t = 10000)]
    per_source: usize,
    /// Pin this process to this core.
    #[arg(long)]
    core: Option<usize>,
    /// Scenario name for the report.
    #[arg(long, default_value = "custom")]
    scenario: String,
    /// Server label for the report.
    #[arg(long, default_value = "subsocket")]
    server: String,
    /// Append the JSON result line to this file.
    #[arg(long)]
    json: Option<String>,
    /// Print progress every second.
    #[arg(long)]
    progress: bool,
    /// Churn: connections per second that arrive, subscribe to `churn_topics` topics and leave (0: off).
    #[arg(long, default_value_t = 0.0)]
    churn_rate: f64,
    /// Topics each churning connection subscribes to.
    #[arg(long, default_value_t = 20)]
    churn_topics: usize,
    /// Hard cap on the whole run in seconds (connect + subscribe + run + drain).
    #[arg(long, default_value_t = 600.0)]
    max_seconds: f64,
    /// A token for the gateway's `[auth]`, sent as `?token=` on every WebSocket upgrade.
    #[arg(long, conflicts_with = "hs256_secret")]
    token: Option<String>,
    /// Make the `?token=` itself: an HS256 JWT signed with this secret, `sub` "bench",
    /// `read`/`write` ["*"], expiring in a day.
    #[arg(long)]
    hs256_secret: Option<String>,
    /// Publish with this QoS. 1: deliveries carry `"qos":1` and every subscriber acks each one
    /// (`{"type":"ack","topic":…,"seqNo":…}`, one write per read); redeliveries are counted apart.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Subscription churn on top of the steady subscribers: subscribe/unsubscribe operations
    /// per second (one topic each), spread over `churn_conns` connections of their own that
    /// subscribe to random topics of the topic space (published ones included) and unsubscribe
    /// the oldest once they hold `churn_hold`. Their deliveries are read and not counted (0: off).
    #[arg(long, default_value_t = 0.0)]
    churn_ops: f64,
    /// Connections the `churn_ops` operations are spread over.
    #[arg(long, default_value_t = 100)]
    churn_conns: usize,
    /// Topics a churn connection holds before it starts unsubscribing its oldest.
    #[arg(long, default_value_t = 50)]
    churn_hold: usize,
    /// Side probe: a connection of its own, on a thread of its own, sends `{"type":"ping"}`
    /// this often during the publish phase and times each `pong` (0: off). Samples taken while
    /// some publish was still being delivered count as "busy", the others as "idle".
    #[arg(long, default_value_t = 0.0)]
    probe_interval_ms: f64,
    /// Connections being opened at once (connect + upgrade in flight).
    #[arg(long, default_value_t = 512)]
    connect_concurrency: usize,
    /// Seconds allowed for connecting, and again for subscribing.
    #[arg(long, default_value_t = 300.0)]
    phase_seconds: f64,
}

const PUBLISHER_BASE: usize = 1 << 30;
const CHURN_BASE: usize = 1 << 29;
const CHURN_OPS_BASE: usize = 1 << 28;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Phase {
    Connecting,
    Handshake,
    Open,
    Closed,
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// topic index -> last seqNo seen (subscribers).
    last_seq: HashMap<u32, u64>,
    topics: Vec<u32>,
    subscribed_pending: usize,
    is_http: bool,
    /// Publisher: requests sent and not yet answered (HTTP) / acked (WS).
    outstanding: usize,
    churn_deadline: Option<Instant>,
    /// A read filled the buffer once: read 64 KB at a time from now on.
    rbuf_hot: bool,
    /// A `--churn-ops` connection: its deliveries are not counted, its answers are churn acks.
    churner: bool,
    /// `--churn-ops`: the topics this churn connection holds, oldest first.
    held: std::collections::VecDeque<u32>,
}

impl Conn {
    fn queue(&mut self, bytes: &[u8]) {
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        self.wbuf.extend_from_slice(bytes);
    }
    /// Queues `{"type":"ack","topic":T,"seqNo":N}` (written with the connection's next flush).
    fn queue_ack(&mut self, topic: &[u8], seq: u64, scratch: &mut Vec<u8>, seed: &mut u32) {
        scratch.clear();
        scratch.extend_from_slice(b"{\"type\":\"ack\",\"topic\":\"");
        scratch.extend_from_slice(topic);
        scratch.extend_from_slice(b"\",\"seqNo\":");
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = seq;
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        scratch.extend_from_slice(&digits[i..]);
        scratch.push(b'}');
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        masked_text(&mut self.wbuf, scratch, seed);
    }
    fn flush(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Totals {
    deliveries: u64,
    measured_deliveries: u64,
    gaps: u64,
    reordered: u64,
    published: u64,
    acked: u64,
    completed: u64,
    errors: u64,
    subscribed_topics: u64,
    closed_unexpectedly: u64,
    churned: u64,
    /// QoS 1: acks the subscribers sent (one per delivery, redeliveries included).
    acks_sent: u64,
    /// QoS 1: deliveries of a seqNo the connection already had (the gateway resent it because
    /// the ack came late); not counted as deliveries, gaps or reorderings.
    redelivered: u64,
    /// `--churn-ops`: subscribe and unsubscribe requests sent, and answers received.
    churn_ops_sent: u64,
    churn_ops_answered: u64,
}

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn masked_text(out: &mut Vec<u8>, text: &[u8], seed: &mut u32) {
    *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    frame::write_client_frame(out, OpCode::Text, text, seed.to_le_bytes(), true);
}

/// `/ws`, with `?token=` when the run authenticates (percent-encoded where a character is not
/// URL-safe; a JWT's base64url and dots never are).
fn ws_path(token: Option<&str>) -> String {
    let Some(t) = token else {
        return "/ws".into();
    };
    let mut path = String::from("/ws?token=");
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    path
}

/// An HS256 JWT the gateway's `[auth] hs256_secret` accepts: `sub` "bench", every topic
/// readable and writable, valid for a day.
fn make_token(secret: &str) -> Result<String, String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + 86_400;
    let claims = serde_json::json!({"sub": "bench", "read": ["*"], "write": ["*"], "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| format!("making the token: {e}"))
}

fn upgrade_request(host: &SocketAddr, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

fn source_addrs(args: &Args) -> Vec<IpAddr> {
    if let Some(s) = &args.sources {
        return s.split(',').filter_map(|a| a.trim().parse().ok()).collect();
    }
    let needed = args.conns.div_ceil(args.per_source).max(1);
    (0..needed)
        .map(|i| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                (2 + i) as u8 / 255,
                ((2 + i) % 255) as u8,
            ))
        })
        .collect()
}

fn connect_from(src: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM.nonblocking(),
        None,
    )?;
    sock.set_nodelay(true)?;
    if let Some(ip) = src {
        // Let connect(2) pick the port per 4-tuple, not bind(2) per address: many more
        // connections per source address, and TIME_WAIT leftovers of a previous run don't block.
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads a c_int that lives across the call; the fd is ours.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match sock.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std: std::net::TcpStream = sock.into();
    Ok(TcpStream::from_std(std))
}

/// Zipf(s=1) topic picker over `n` topics.
struct Picker {
    cdf: Vec<f64>,
    rng: u64,
    mode: String,
    n: usize,
}

impl Picker {
    fn new(mode: &str, n: usize, seed: u64) -> Self {
        let cdf = if mode == "zipf" {
            let mut acc = 0.0;
            let mut v: Vec<f64> = (1..=n)
                .map(|k| {
                    acc += 1.0 / k as f64;
                    acc
                })
                .collect();
            let total = acc;
            v.iter_mut().for_each(|x| *x /= total);
            v
        } else {
            Vec::new()
        };
        Picker {
            cdf,
            rng: seed | 1,
            mode: mode.to_string(),
            n,
        }
    }
    fn next_u64(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
    fn pick(&mut self) -> u32 {
        match self.mode.as_str() {
            "one" => 0,
            "zipf" => {
                let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                self.cdf.partition_point(|&c| c < u).min(self.n - 1) as u32
            }
            _ => (self.next_u64() % self.n as u64) as u32,
        }
    }
}

fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(r.ru_utime) + tv(r.ru_stime)
    }
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only touch the struct on our stack.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Finds `key` (e.g. `"seqNo":`) in `hay` and parses the unsigned integer after it.
fn find_u64(hay: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let mut v: u64 = 0;
    let mut i = at;
    while i < hay.len() && hay[i].is_ascii_digit() {
        v = v * 10 + u64::from(hay[i] - b'0');
        i += 1;
    }
    (i > at).then_some((v, i))
}

fn find_str<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = memchr::memmem::find(hay, key)? + key.len();
    let end = memchr::memchr(b'"', &hay[at..])? + at;
    Some(&hay[at..end])
}

fn topic_index(name: &[u8]) -> Option<u32> {
    std::str::from_utf8(name.strip_prefix(b"t")?)
        .ok()?
        .parse()
        .ok()
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("subsocket-bench: {e}");
        std::process::exit(1);
    }
}

struct Run {
    poll: Poll,
    conns: HashMap<usize, Conn>,
    epoch: Instant,
    totals: Totals,
    hist: Histogram<u64>,
    measuring: bool,
    /// (topic, seq) -> deliveries still expected.
    remaining: HashMap<(u32, u64), u64>,
    subs_per_topic: Vec<u64>,
    seed: u32,
    timeline: Vec<u64>,
    /// Largest end-to-end latency (µs) of each measured second, beside `timeline`.
    lat_max_timeline: Vec<u64>,
    /// QoS 1: ack every delivery that carries `"qos":1`.
    ack_qos1: bool,
    /// Scratch for building ack messages (no allocation per delivery).
    scratch: Vec<u8>,
    /// Publish (timestamp in the payload) to the delivery that completed the message: the
    /// last of its topic's subscribers to receive it.
    complete_hist: Histogram<u64>,
}

fn run(args: Args) -> Result<(), String> {
    if args.conns == 0
        || args.topics == 0
        || args.topics_per_conn == 0
        || args.topics_per_conn > args.topics
    {
        return Err("need conns > 0, topics > 0 and 0 < topics_per_conn <= topics".into());
    }
    if let Some(c) = args.core {
        core_affinity::set_for_current(core_affinity::CoreId { id: c });
    }
    raise_nofile();
    let hard_deadline = Instant::now() + Duration::from_secs_f64(args.max_seconds);
    let mut r = Run {
        poll: Poll::new().map_err(|e| e.to_string())?,
        conns: HashMap::new(),
        epoch: Instant::now(),
        totals: Totals::default(),
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"),
        measuring: false,
        remaining: HashMap::new(),
        subs_per_topic: vec![0; args.topics],
        seed: 0x1234_5678,
        timeline: Vec::new(),
        lat_max_timeline: Vec::new(),
        ack_qos1: args.qos == 1,
        scratch: Vec::with_capacity(128),
        complete_hist: Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .expect("valid histogram bounds"),
    };
    let token = match (&args.token, &args.hs256_secret) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(s)) => Some(make_token(s)?),
        (None, None) => None,
    };
    let ws_path = ws_path(token.as_deref());
    let rss_before = args.pid.and_then(proc_rss_bytes);

    // ---- connect ----
    let sources = source_addrs(&args);
    let t0 = Instant::now();
    let mut picker = Picker::new(&args.dist, args.topics, 0x9e37_79b9_7f4a_7c15);
    let mut next = 0usize;
    let max_pending = args.connect_concurrency.max(1);
    let phase_limit = Duration::from_secs_f64(args.phase_seconds);
    let kernel_before = kernel_snapshot();
    let mut events = Events::with_capacity(4096);
    let total = args.conns;
    let mut open = 0usize;
    // Connections not open yet (O(pending) per turn, not O(connections)).
    let mut pending: Vec<usize> = Vec::with_capacity(max_pending);
    let mut last_connect_progress = Instant::now();
    while open < total {
        while next < total && pending.len() < max_pending {
            let src = sources.get(next / args.per_source).copied();
            let stream =
                connect_from(src, args.target).map_err(|e| format!("connect #{next}: {e}"))?;
            let mut c = Conn::new(stream);
            r.poll
                .registry()
                .register(
                    &mut c.stream,
                    Token(next),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| e.to_string())?;
            c.queue(&upgrade_request(&args.target, &ws_path));
            let mut ts: Vec<u32> = Vec::with_capacity(args.topics_per_conn);
            while ts.len() < args.topics_per_conn {
                let t = picker.pick();
                if !ts.contains(&t) {
                    ts.push(t);
                } else if args.dist == "one" {
                    break;
                }
            }
            for &t in &ts {
                r.subs_per_topic[t as usize] += 1;
            }
            c.topics = ts;
            r.conns.insert(next, c);
            pending.push(next);
            next += 1;
        }
        r.pump(&mut events, Duration::from_millis(50))?;
        pending.retain(|id| r.conns.get(id).is_some_and(|c| c.phase != Phase::Open));
        open = next - pending.len();
        if args.progress && last_connect_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  connecting: {open} of {total} open ({:.0}/s)",
                open as f64 / t0.elapsed().as_secs_f64()
            );
            last_connect_progress = Instant::now();
        }
        if r.totals.errors > 0 {
            return Err(format!(
                "{} connections refused or answered with an error while connecting (auth? see above)",
                r.totals.errors
            ));
        }
        if Instant::now() > hard_deadline || t0.elapsed() > phase_limit {
            return Err(format!("only {open} of {total} connections opened in time"));
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    // Let the gateway finish its side of the handshakes before reading its RSS.
    std::thread::sleep(Duration::from_millis(200));
    let rss_connected = args.pid.and_then(proc_rss_bytes);
    let kernel_connected = kernel_snapshot();

    // ---- subscribe ----
    let t1 = Instant::now();
    let want: u64 = r.conns.values().map(|c| c.topics.len() as u64).sum();
    let ids: Vec<usize> = r.conns.keys().copied().collect();
    for id in ids {
        let c = r.conns.get_mut(&id).expect("listed");
        let topics = c.topics.clone();
        for chunk in topics.chunks(args.subscribe_batch.max(1)) {
            let names: Vec<String> = chunk.iter().map(|t| format!("\"t{t}\"")).collect();
            let msg = format!(
                "{{\"type\":\"subscribe\",\"topics\":[{}]}}",
                names.join(",")
            );
            let mut f = Vec::new();
            masked_text(&mut f, msg.as_bytes(), &mut r.seed);
            c.queue(&f);
        }
        c.subscribed_pending = topics.len();
        let _ = c.flush();
    }
    while r.totals.subscribed_topics < want {
        r.pump(&mut events, Duration::from_millis(50))?;
        if r.totals.errors > 0 {
            return Err(format!(
                "{} errors from the gateway while subscribing (auth? see above)",
                r.totals.errors
            ));
        }
        if args.progress && last_connect_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "  subscribing: {} of {want} confirmed",
                r.totals.subscribed_topics
            );
            last_connect_progress = Instant::now();
        }
        if Instant::now() > hard_deadline || t1.elapsed() > phase_limit {
            return Err(format!(
                "only {} of {want} subscriptions confirmed in time",
                r.totals.subscribed_topics
            ));
        }
    }
    let subscribe_s = t1.elapsed().as_secs_f64();
    let subs_per_s = want as f64 / subscribe_s.max(1e-9);
    let rss_subscribed = args.pid.and_then(proc_rss_bytes);
    let kernel_subscribed = kernel_snapshot();
    let client_rss_subscribed = proc_rss_bytes(std::process::id());
    if args.progress {
        eprintln!("connected {total} in {connect_s:.2}s; {want} subscriptions in {subscribe_s:.3}s ({subs_per_s:.0}/s)");
    }

    // ---- publishers ----
    let via_http = args.publish_via == "http";
    let publish_target = args.publish_target.unwrap_or(args.target);
    for p in 0..args.publishers.max(1) {
        let stream =
            connect_from(None, publish_target).map_err(|e| format!("publisher connect: {e}"))?;
        let mut c = Conn::new(stream);
        c.is_http = via_http;
        let id = PUBLISHER_BASE + p;
        r.poll
            .registry()
            .register(
                &mut c.stream,
                Token(id),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        if !via_http {
            c.queue(&upgrade_request(&publish_target, &ws_path));
        } else {
            c.phase = Phase::Open;
        }
        r.conns.insert(id, c);
    }
    let tp = Instant::now();
    while r
        .conns
        .iter()
        .any(|(id, c)| *id >= PUBLISHER_BASE && c.phase != Phase::Open)
    {
        r.pump(&mut events, Duration::from_millis(20))?;
        if tp.elapsed() > Duration::from_secs(10) {
            return Err("publishers did not connect".into());
        }
    }

    // ---- churn connections (--churn-ops) ----
    let churn_conns = if args.churn_ops > 0.0 {
        args.churn_conns.max(1)
    } else {
        0
    };
    for k in 0..churn_conns {
        let src = sources.get(k % sources.len()).copied();
        let stream = connect_from(src, args.target).map_err(|e| format!("churn connect: {e}"))?;
        let mut c = Conn::new(stream);
        c.churner = true;
        r.poll
            .registry()
            .register(
                &mut c.stream,
                Token(CHURN_OPS_BASE + k),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| e.to_string())?;
        c.queue(&upgrade_request(&args.target, &ws_path));
        r.conns.insert(CHURN_OPS_BASE + k, c);
    }
    let tc0 = Instant::now();
    while (0..churn_conns).any(|k| {
        r.conns
            .get(&(CHURN_OPS_BASE + k))
            .is_some_and(|c| c.phase != Phase::Open)
    }) {
        r.pump(&mut events, Duration::from_millis(20))?;
        if tc0.elapsed() > Duration::from_secs(10) {
            return Err("churn connections did not connect".into());
        }
    }
    let mut churn_picker = Picker::new("uniform", args.topics, 0xc4a2_51f3);
    let mut churn_ops_done = 0u64;
    let mut churn_conn_next = 0usize;
    let mut churn_scratch = Vec::with_capacity(128);

    // ---- publish ----
    let warmup = Duration::from_secs_f64(args.warmup);
    let measure = Duration::from_secs_f64(args.duration);
    let start = Instant::now();
    let mut pub_picker = Picker::new(
        if args.dist == "one" { "one" } else { "uniform" },
        args.topics,
        0x51ed_2701,
    );
    // Only publish to topics somebody subscribed to, so "delivered to all" is well defined.
    let live_topics: Vec<u32> = (0..args.topics as u32)
        .filter(|t| r.subs_per_topic[*t as usize] > 0)
        .collect();
    let mut counter: u64 = 0;
    let mut next_pub = 0usize;
    let mut cpu_server_start = None;
    let mut cpu_self_start = 0.0;
    let mut measure_start = start;
    let mut last_progress = Instant::now();
    let mut last_deliveries = 0u64;
    let mut churn_next = 0usize;
    let mut churn_due = 0.0f64;
    let mut last_tick = Instant::now();
    // Side probe: ping/pong round trips on a connection and thread of their own.
    let probe_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let in_flight_shared = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = (args.probe_interval_ms > 0.0).then(|| {
        let stop = probe_stop.clone();
        let busy = in_flight_shared.clone();
        let target = args.target;
        let path = ws_path.clone();
        let every = Duration::from_secs_f64(args.probe_interval_ms / 1000.0);
        std::thread::spawn(move || run_probe(target, &path, every, &stop, &busy))
    });
    loop {
        in_flight_shared.store(
            r.totals.published - r.totals.completed,
            std::sync::atomic::Ordering::Relaxed,
        );
        let elapsed = start.elapsed();
        if !r.measuring && elapsed >= warmup {
            r.measuring = true;
            measure_start = Instant::now();
            cpu_server_start = args.pid.and_then(proc_cpu_seconds);
            cpu_self_start = self_cpu_seconds();
            r.totals.measured_deliveries = 0;
        }
        if elapsed >= warmup + measure || Instant::now() > hard_deadline {
            break;
        }
        // How many may we publish now?
        let allowed = if args.rate > 0.0 {
            let due = (elapsed.as_secs_f64() * args.rate) as u64;
            due.saturating_sub(r.totals.published)
        } else {
            let in_flight = r.totals.published - r.totals.completed;
            (args.window as u64).saturating_sub(in_flight)
        };
        for _ in 0..allowed.min(4096) {
            let topic = live_topics[pub_picker.pick() as usize % live_topics.len()];
            counter += 1;
            let payload = make_payload(now_ns(r.epoch), counter, args.payload);
            let pid = PUBLISHER_BASE + next_pub % args.publishers.max(1);
            next_pub += 1;
            let c = r.conns.get_mut(&pid).expect("publisher");
            if c.is_http {
                let req = format!(
                    "POST /publish/t{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    payload.len()
                );
                c.queue(req.as_bytes());
                c.queue(payload.as_bytes());
            } else {
                let qos = if args.qos == 1 { ",\"qos\":1" } else { "" };
                let msg = format!(
                    "{{\"type\":\"publish\",\"topic\":\"t{topic}\"{qos},\"payload\":{payload}}}"
                );
                let mut f = Vec::with_capacity(msg.len() + 14);
                masked_text(&mut f, msg.as_bytes(), &mut r.seed);
                c.queue(&f);
            }
            c.outstanding += 1;
            r.totals.published += 1;
        }
        for p in 0..args.publishers.max(1) {
            if let Some(c) = r.conns.get_mut(&(PUBLISHER_BASE + p)) {
                c.flush().map_err(|e| format!("publisher write: {e}"))?;
            }
        }
        // Churn: arrive, subscribe, leave.
        if args.churn_rate > 0.0 {
            let dt = last_tick.elapsed().as_secs_f64();
            last_tick = Instant::now();
            churn_due += dt * args.churn_rate;
            while churn_due >= 1.0 {
                churn_due -= 1.0;
                let id = CHURN_BASE + churn_next;
                churn_next += 1;
                if let Ok(stream) = connect_from(
                    sources.get(churn_next % sources.len()).copied(),
                    args.target,
                ) {
                    let mut c = Conn::new(stream);
                    if r.poll
                        .registry()
                        .register(
                            &mut c.stream,
                            Token(id),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_ok()
                    {
                        c.queue(&upgrade_request(&args.target, &ws_path));
                        let names: Vec<String> = (0..args.churn_topics)
                            .map(|i| format!("\"churn{}\"", (churn_next + i) % 1000))
                            .collect();
                        let msg = format!(
                            "{{\"type\":\"subscribe\",\"topics\":[{}]}}",
                            names.join(",")
                        );
                        let mut f = Vec::new();
                        masked_text(&mut f, msg.as_bytes(), &mut r.seed);
                        c.queue(&f);
                        c.churn_deadline = Some(Instant::now() + Duration::from_millis(500));
                        r.conns.insert(id, c);
                    }
                }
            }
            let expired: Vec<usize> = r
                .conns
                .iter()
                .filter(|(_, c)| c.churn_deadline.is_some_and(|d| Instant::now() > d))
                .map(|(k, _)| *k)
                .collect();
            for k in expired {
                if let Some(mut c) = r.conns.remove(&k) {
                    let _ = r.poll.registry().deregister(&mut c.stream);
                    r.totals.churned += 1;
                }
            }
        }
        // Churn operations: one topic per request, round robin over the churn connections.
        if churn_conns > 0 {
            let due = (elapsed.as_secs_f64() * args.churn_ops) as u64;
            let n = due.saturating_sub(churn_ops_done).min(10_000);
            let mut touched = Vec::new();
            for _ in 0..n {
                let id = CHURN_OPS_BASE + churn_conn_next % churn_conns;
                churn_conn_next += 1;
                let Some(c) = r.conns.get_mut(&id) else {
                    continue;
                };
                let (kind, t) = if c.held.len() >= args.churn_hold.max(1) {
                    ("unsubscribe", c.held.pop_front().expect("held"))
                } else {
                    let t = churn_picker.pick();
                    c.held.push_back(t);
                    ("subscribe", t)
                };
                churn_scratch.clear();
                write!(churn_scratch, "{{\"type\":\"{kind}\",\"topic\":\"t{t}\"}}")
                    .expect("write to a Vec");
                if c.wpos == c.wbuf.len() {
                    c.wbuf.clear();
                    c.wpos = 0;
                }
                masked_text(&mut c.wbuf, &churn_scratch, &mut r.seed);
                touched.push(id);
                churn_ops_done += 1;
                r.totals.churn_ops_sent += 1;
            }
            touched.sort_unstable();
            touched.dedup();
            for id in touched {
                if let Some(c) = r.conns.get_mut(&id) {
                    if c.flush().is_err() {
                        c.phase = Phase::Closed;
                    }
                }
            }
        }
        let wait = if args.rate > 0.0 || churn_conns > 0 {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(5)
        };
        r.pump(&mut events, wait)?;
        if args.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let d = r.totals.deliveries - last_deliveries;
            eprintln!(
                "  t={:>5.1}s  {:>10} deliveries/s  published {}  in flight {}",
                elapsed.as_secs_f64(),
                d,
                r.totals.published,
                r.totals.published - r.totals.completed
            );
            last_deliveries = r.totals.deliveries;
            last_progress = Instant::now();
        }
        if r.measuring {
            let sec = measure_start.elapsed().as_secs() as usize;
            if r.timeline.len() <= sec {
                r.timeline.resize(sec + 1, 0);
                r.lat_max_timeline.resize(sec + 1, 0);
            }
        }
    }
    let measured_s = measure_start.elapsed().as_secs_f64();
    probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probe = probe.map(|h| h.join().unwrap_or_default());
    let cpu_server = match (cpu_server_start, args.pid.and_then(proc_cpu_seconds)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_self = self_cpu_seconds() - cpu_self_start;
    let measured_deliveries = r.totals.measured_deliveries;
    // ---- drain: wait for what is in flight ----
    let td = Instant::now();
    while r.totals.completed < r.totals.published && td.elapsed() < Duration::from_secs(3) {
        r.pump(&mut events, Duration::from_millis(20))?;
    }
    // A message is lost when some subscriber of its topic never got it (after the drain).
    let unfinished = r.totals.published - r.totals.completed;
    let lost = unfinished;
    let missing_deliveries: u64 = r.remaining.values().sum();
    let rss_end = args.pid.and_then(proc_rss_bytes);
    let kernel_end = kernel_snapshot();
    // The gateway's QoS 1 books while the connections are still open: with QoS 1 keep pumping
    // (the last acks go out) until nothing is unacknowledged, at most 2 s.
    let mut stats_end = serde_json::Value::Null;
    let ts = Instant::now();
    loop {
        if let Some(v) = http_get_json(args.target, "/stats") {
            stats_end = serde_json::json!({"connections": v["connections"], "qos1Acks": v["qos1Acks"],
                "qos1Redeliveries": v["qos1Redeliveries"], "qos1Unacked": v["qos1Unacked"]});
        }
        let settled = stats_end["qos1Unacked"].as_u64().unwrap_or(0) == 0;
        if args.qos == 0 || settled || ts.elapsed() > Duration::from_secs(2) {
            break;
        }
        r.pump(&mut events, Duration::from_millis(50))?;
    }
    // Close everything and see whether the gateway returns to its baseline (churn: nothing leaks).
    for (_, mut c) in r.conns.drain() {
        let _ = r.poll.registry().deregister(&mut c.stream);
    }
    let mut after_close = serde_json::Value::Null;
    let tc = Instant::now();
    while tc.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(v) = http_get_json(args.target, "/stats") {
            let done = v["connections"] == 0 && v["subscriptions"] == 0;
            after_close = serde_json::json!({"connections": v["connections"], "subscriptions": v["subscriptions"], "topics": v["topics"]});
            if done {
                break;
            }
        }
    }
    let rss_after_close = args.pid.and_then(proc_rss_bytes);

    let dps = measured_deliveries as f64 / measured_s.max(1e-9);
    let ns_per_delivery = cpu_server.map(|c| c * 1e9 / measured_deliveries.max(1) as f64);
    let server_util = cpu_server.map(|c| c / measured_s);
    let client_util = cpu_self / measured_s;
    let bottleneck = match server_util {
        Some(s) if s >= 0.9 => "server",
        _ if client_util >= 0.9 => "load generator",
        Some(_) if args.rate > 0.0 => "neither (open loop at a fixed rate)",
        Some(_) => "neither saturated (closed-loop window / loopback latency bound)",
        None => "unknown (no --pid)",
    };
    let subs = want;
    // Per connection: what opening the connections added (idle, unsubscribed connections).
    // Per subscription: what subscribing then added, over the number of subscriptions.
    let rss_per_conn = match (rss_before, rss_connected) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / args.conns as f64),
        _ => None,
    };
    let rss_per_sub = match (rss_connected, rss_subscribed) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / subs as f64),
        _ => None,
    };
    let q = |p: f64| r.hist.value_at_quantile(p) as f64 / 1000.0;
    // [latency µs, quantile] pairs for a CDF plot: 0.0..=0.975 in steps of 0.025, then the tail.
    let latency_cdf_us: Vec<[f64; 2]> = if r.hist.is_empty() {
        Vec::new()
    } else {
        (0..40)
            .map(|i| f64::from(i) / 40.0)
            .chain([0.99, 0.995, 0.999, 0.9999, 1.0])
            .map(|p| [q(p), p])
            .collect()
    };
    let result = serde_json::json!({
        "scenario": args.scenario, "server": args.server, "target": args.target.to_string(),
        "publish_target": publish_target.to_string(), "conns": args.conns, "topics": args.topics,
        "topics_per_conn": args.topics_per_conn, "subscriptions": subs, "payload_bytes": args.payload,
        "publishers": args.publishers, "publish_via": args.publish_via, "rate": args.rate, "window": args.window,
        "connect_s": connect_s, "subscribe_s": subscribe_s, "subscriptions_per_s": subs_per_s,
        "measured_s": measured_s, "published": r.totals.published, "acked": r.totals.acked,
        "deliveries": measured_deliveries, "deliveries_per_s": dps,
        "lost": lost, "missing_deliveries": missing_deliveries, "gaps": r.totals.gaps, "reordered": r.totals.reordered,
        "errors": r.totals.errors, "closed_unexpectedly": r.totals.closed_unexpectedly, "churned": r.totals.churned,
        "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": r.hist.max() as f64 / 1000.0, "count": r.hist.len()},
        "server_cpu_s": cpu_server, "server_cpu_ns_per_delivery": ns_per_delivery, "server_cpu_util": server_util,
        "client_cpu_s": cpu_self, "client_cpu_util": client_util, "bottleneck": bottleneck,
        "server_rss_before": rss_before, "server_rss_connected": rss_connected, "server_rss_subscribed": rss_subscribed, "server_rss_end": rss_end,
        "server_rss_after_close": rss_after_close, "stats_after_close": after_close,
        "rss_per_conn_bytes": rss_per_conn, "rss_per_subscription_bytes": rss_per_sub,
        "deliveries_per_s_timeline": r.timeline, "latency_cdf_us": latency_cdf_us,
        "auth": token.is_some(), "qos": args.qos, "acks_sent": r.totals.acks_sent,
        "redelivered": r.totals.redelivered, "stats_end": stats_end,
        "publish_to_last_delivery_us": hist_json(&r.complete_hist),
        "churn_ops": args.churn_ops, "churn_ops_sent": r.totals.churn_ops_sent,
        "churn_ops_answered": r.totals.churn_ops_answered,
        "probe": probe.as_ref().map(|p| serde_json::json!({
            "interval_ms": args.probe_interval_ms, "sent": p.sent, "error": p.error,
            "rtt_busy_us": hist_json(&p.busy), "rtt_idle_us": hist_json(&p.idle),
        })),
        "kernel": {"before": kernel_before, "connected": kernel_connected,
            "subscribed": kernel_subscribed, "end": kernel_end},
        "client_rss_subscribed": client_rss_subscribed,
        "latency_max_us_timeline": r.lat_max_timeline,
    });
    let line = result.to_string();
    println!("{line}");
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        writeln!(f, "{line}").map_err(|e| e.to_string())?;
    }
    eprintln!(
        "{} {}: {:.0} deliveries/s, server {} ns/delivery (util {}), client util {:.2}, p50 {:.0}us p99 {:.0}us max {:.0}us, lost {} gaps {} reordered {} [bottleneck: {}]",
        args.server, args.scenario, dps,
        ns_per_delivery.map_or("?".into(), |v| format!("{v:.0}")),
        server_util.map_or("?".into(), |v| format!("{v:.2}")),
        client_util, q(0.5), q(0.99), r.hist.max() as f64 / 1000.0, lost, r.totals.gaps, r.totals.reordered, bottleneck
    );
    if !r.complete_hist.is_empty() {
        let c = &r.complete_hist;
        eprintln!(
            "  publish to last delivery: p50 {:.0}us p99 {:.0}us max {:.0}us ({} messages)",
            c.value_at_quantile(0.5) as f64 / 1000.0,
            c.value_at_quantile(0.99) as f64 / 1000.0,
            c.max() as f64 / 1000.0,
            c.len()
        );
    }
    if churn_conns > 0 {
        eprintln!(
            "  churn: {} subscribe/unsubscribe ops sent, {} answered",
            r.totals.churn_ops_sent, r.totals.churn_ops_answered
        );
    }
    if let Some(p) = &probe {
        let f = |h: &Histogram<u64>| {
            format!(
                "{} samples p50 {:.0}us p99 {:.0}us max {:.0}us",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            )
        };
        eprintln!(
            "  probe ping/pong: during fan-out {}; idle {}{}",
            f(&p.busy),
            f(&p.idle),
            p.error
                .as_ref()
                .map_or(String::new(), |e| format!(" (error: {e})"))
        );
    }
    if args.qos == 1 {
        eprintln!(
            "  qos 1: acks sent {}, redelivered {}; gateway: qos1Acks {}, qos1Redeliveries {}, qos1Unacked {}",
            r.totals.acks_sent,
            r.totals.redelivered,
            stats_end["qos1Acks"],
            stats_end["qos1Redeliveries"],
            stats_end["qos1Unacked"]
        );
    }
    if lost > 0 || r.totals.gaps > 0 || r.totals.reordered > 0 {
        return Err(format!(
            "delivery problems: lost {lost}, gaps {}, reordered {}",
            r.totals.gaps, r.totals.reordered
        ));
    }
    if args.qos == 1 && r.totals.acks_sent == 0 && r.totals.deliveries > 0 {
        return Err("qos 1: no delivery carried \"qos\":1, nothing was acked".into());
    }
    Ok(())
}

/// p50/p90/p99/p99.9/max in µs and the sample count of a ns histogram.
fn hist_json(h: &Histogram<u64>) -> serde_json::Value {
    let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
    serde_json::json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 / 1000.0, "count": h.len()})
}

/// Kernel memory that sockets cost, host-wide (both ends of loopback connections): TCP sockets
/// and their buffer pages from /proc/net/sockstat, the slab caches a socket lives in from
/// /proc/slabinfo (root only; absent otherwise), and the slab totals from /proc/meminfo.
fn kernel_snapshot() -> serde_json::Value {
    let mut v = serde_json::Map::new();
    if let Ok(ss) = std::fs::read_to_string("/proc/net/sockstat") {
        for line in ss.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |k: &str| {
                f.iter()
                    .position(|x| *x == k)
                    .and_then(|i| f.get(i + 1))
                    .and_then(|x| x.parse::<u64>().ok())
            };
            match f.first() {
                Some(&"sockets:") => {
                    v.insert("sockets_used".into(), num("used").into());
                }
                Some(&"TCP:") => {
                    v.insert("tcp_inuse".into(), num("inuse").into());
                    v.insert("tcp_alloc".into(), num("alloc").into());
                    v.insert("tcp_tw".into(), num("tw").into());
                    v.insert("tcp_mem_pages".into(), num("mem").into());
                }
                _ => {}
            }
        }
    }
    if let Ok(si) = std::fs::read_to_string("/proc/slabinfo") {
        let mut slab = serde_json::Map::new();
        for line in si.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            const CACHES: [&str; 9] = [
                "TCP",
                "sock_inode_cache",
                "dentry",
                "filp",
                "eventpoll_epi",
                "eventpoll_pwq",
                "skbuff_head_cache",
                "tw_sock_TCP",
                "request_sock_TCP",
            ];
            if f.len() > 3 && CACHES.contains(&f[0]) {
                let (Ok(num), Ok(size)) = (f[2].parse::<u64>(), f[3].parse::<u64>()) else {
                    continue;
                };
                slab.insert(f[0].into(), (num * size).into());
            }
        }
        v.insert("slab_bytes".into(), slab.into());
    }
    if let Ok(mi) = std::fs::read_to_string("/proc/meminfo") {
        for line in mi.lines() {
            let mut f = line.split_whitespace();
            let (Some(k), Some(n)) = (f.next(), f.next()) else {
                continue;
            };
            let key = match k {
                "Slab:" => "slab_total_bytes",
                "SUnreclaim:" => "slab_unreclaimable_bytes",
                "MemAvailable:" => "mem_available_bytes",
                "Percpu:" => "percpu_bytes",
                _ => continue,
            };
            if let Ok(kb) = n.parse::<u64>() {
                v.insert(key.into(), (kb * 1024).into());
            }
        }
    }
    v.into()
}

/// Round trips of the side probe (`--probe-interval-ms`).
struct ProbeResult {
    busy: Histogram<u64>,
    idle: Histogram<u64>,
    sent: u64,
    error: Option<String>,
}

impl Default for ProbeResult {
    fn default() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
        ProbeResult {
            busy: h(),
            idle: h(),
            sent: 0,
            error: None,
        }
    }
}

/// One complete server frame at the start of `b`: (opcode, header length, payload length).
fn next_frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, hl) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    (b.len() >= hl + len).then_some((b[0] & 0x0f, hl, len))
}

/// The side probe: `{"type":"ping"}` every `every` on a blocking connection of its own until
/// `stop`; each round trip goes to the busy histogram when some publish was being delivered
/// when it was sent or answered, else to the idle one. Bounded: a read waits at most 10 s.
fn run_probe(
    target: SocketAddr,
    path: &str,
    every: Duration,
    stop: &std::sync::atomic::AtomicBool,
    in_flight: &std::sync::atomic::AtomicU64,
) -> ProbeResult {
    use std::io::Read as _;
    use std::sync::atomic::Ordering::Relaxed;
    let mut res = ProbeResult::default();
    let outcome = (|| -> io::Result<()> {
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(&upgrade_request(&target, path))?;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(e) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break e + 4;
            }
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            return Err(io::Error::other("probe upgrade refused"));
        }
        buf.drain(..head_end);
        let mut seed = 0x0bad_cafe_u32;
        let mut ping = Vec::new();
        masked_text(&mut ping, br#"{"type":"ping"}"#, &mut seed);
        while !stop.load(Relaxed) {
            let busy_before = in_flight.load(Relaxed) > 0;
            let t = Instant::now();
            s.write_all(&ping)?;
            res.sent += 1;
            'answer: loop {
                while let Some((op, hl, len)) = next_frame(&buf) {
                    let payload = buf[hl..hl + len].to_vec();
                    buf.drain(..hl + len);
                    if op == 9 {
                        let mut f = Vec::new();
                        frame::write_client_frame(
                            &mut f,
                            OpCode::Pong,
                            &payload,
                            [1, 2, 3, 4],
                            true,
                        );
                        s.write_all(&f)?;
                    } else if op == 1 && memchr::memmem::find(&payload, b"\"pong\"").is_some() {
                        break 'answer;
                    } else if op == 8 {
                        return Err(io::Error::other("probe connection closed by the gateway"));
                    }
                }
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let rtt = t.elapsed();
            let busy = busy_before || in_flight.load(Relaxed) > 0;
            let h = if busy { &mut res.busy } else { &mut res.idle };
            let _ = h.record((rtt.as_nanos() as u64).max(1));
            std::thread::sleep(every.saturating_sub(rtt));
        }
        Ok(())
    })();
    if let Err(e) = outcome {
        res.error = Some(e.to_string());
    }
    res
}

/// `GET path` over a fresh connection; the JSON body, if any.
fn http_get_json(target: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    let at = memchr::memmem::find(&body, b"\r\n\r\n")? + 4;
    serde_json::from_slice(&body[at..]).ok()
}

fn make_payload(ts: u64, counter: u64, size: usize) -> String {
    let mut s = format!("{{\"ts\":{ts},\"c\":{counter},\"p\":\"");
    let pad = size.saturating_sub(s.len() + 2);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            phase: Phase::Connecting,
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::new(),
            wpos: 0,
            last_seq: HashMap::new(),
            topics: Vec::new(),
            subscribed_pending: 0,
            is_http: false,
            outstanding: 0,
            churn_deadline: None,
            rbuf_hot: false,
            churner: false,
            held: std::collections::VecDeque::new(),
        }
    }
}

impl Run {
    /// One epoll wait and the work it brings.
    fn pump(&mut self, events: &mut Events, timeout: Duration) -> Result<(), String> {
        self.poll
            .poll(events, Some(timeout))
            .map_err(|e| e.to_string())?;
        let tokens: Vec<(usize, bool, bool)> = events
            .iter()
            .map(|e| {
                (
                    e.token().0,
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable(),
                )
            })
            .collect();
        for (id, readable, writable) in tokens {
            if writable {
                if let Some(c) = self.conns.get_mut(&id) {
                    if c.phase == Phase::Connecting {
                        c.phase = if c.is_http {
                            Phase::Open
                        } else {
                            Phase::Handshake
                        };
                    }
                    if c.flush().is_err() {
                        c.phase = Phase::Closed;
                    }
                }
            }
            if readable {
                self.read_conn(id)?;
            }
        }
        Ok(())
    }

    fn read_conn(&mut self, id: usize) -> Result<(), String> {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            // Read straight into the connection's buffer: no per-read zeroing of a big array.
            // Small until a read fills it (idle connections by the 100,000: 4 KB each), then
            // 64 KB for connections that get bursts.
            let old = c.rbuf.len();
            if c.rbuf.capacity() - old < 1024 {
                c.rbuf.reserve(4096);
            } else if c.rbuf_hot && c.rbuf.capacity() - old < 16 * 1024 {
                c.rbuf.reserve(64 * 1024);
            }
            let spare = c.rbuf.capacity() - old;
            // SAFETY: `read(2)` writes at most `spare` bytes into the vector's spare capacity,
            // and `set_len` below only exposes the bytes it reports as written.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(&c.stream),
                    c.rbuf.as_mut_ptr().add(old).cast(),
                    spare,
                )
            };
            match n {
                0 => {
                    if c.churn_deadline.is_none() && c.phase != Phase::Closed {
                        self.totals.closed_unexpectedly += 1;
                    }
                    c.phase = Phase::Closed;
                    let _ = self.poll.registry().deregister(&mut c.stream);
                    return Ok(());
                }
                n if n > 0 => {
                    // SAFETY: the kernel initialized `n` bytes after `old`.
                    unsafe { c.rbuf.set_len(old + n as usize) };
                    let full = n as usize == spare;
                    if full {
                        c.rbuf_hot = true;
                    }
                    self.process(id);
                    if !full {
                        return Ok(());
                    }
                }
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(()),
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            c.phase = Phase::Closed;
                            self.totals.closed_unexpectedly += 1;
                            let _ = self.poll.registry().deregister(&mut c.stream);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn process(&mut self, id: usize) {
        let now = now_ns(self.epoch);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut pos = 0;
        if c.is_http {
            // Responses: count complete ones (status line .. body by Content-Length).
            loop {
                let rest = &c.rbuf[pos..];
                let Some(head_end) = memchr::memmem::find(rest, b"\r\n\r\n") else {
                    break;
                };
                let len =
                    find_u64(&rest[..head_end], b"Content-Length: ").map_or(0, |v| v.0) as usize;
                if rest.len() < head_end + 4 + len {
                    break;
                }
                if !rest.starts_with(b"HTTP/1.1 200") {
                    self.totals.errors += 1;
                }
                self.totals.acked += 1;
                c.outstanding = c.outstanding.saturating_sub(1);
                pos += head_end + 4 + len;
            }
            c.rbuf.drain(..pos);
            return;
        }
        if c.phase == Phase::Handshake || c.phase == Phase::Connecting {
            let Some(end) = memchr::memmem::find(&c.rbuf, b"\r\n\r\n") else {
                return;
            };
            if !c.rbuf.starts_with(b"HTTP/1.1 101") {
                c.phase = Phase::Closed;
                self.totals.errors += 1;
                return;
            }
            c.phase = Phase::Open;
            pos = end + 4;
        }
        let rbuf = std::mem::take(&mut c.rbuf);
        loop {
            let b = &rbuf[pos..];
            if b.len() < 2 {
                break;
            }
            let op = b[0] & 0x0f;
            let (len, hl) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < hl + len {
                break;
            }
            let payload = &b[hl..hl + len];
            if op == 1 {
                on_text(
                    payload,
                    now,
                    c,
                    &mut self.totals,
                    &mut self.hist,
                    &mut self.complete_hist,
                    &mut self.remaining,
                    &self.subs_per_topic,
                    self.measuring,
                    &mut self.timeline,
                    &mut self.lat_max_timeline,
                    id >= PUBLISHER_BASE,
                    self.ack_qos1.then_some((&mut self.scratch, &mut self.seed)),
                );
            } else if op == 9 {
                let mut f = Vec::new();
                frame::write_client_frame(&mut f, OpCode::Pong, payload, [1, 2, 3, 4], true);
                c.queue(&f);
                let _ = c.flush();
            } else if op == 8 {
                c.phase = Phase::Closed;
                if c.churn_deadline.is_none() {
                    self.totals.closed_unexpectedly += 1;
                }
            }
            pos += hl + len;
        }
        c.rbuf = rbuf;
        c.rbuf.drain(..pos);
        // QoS 1: the acks of everything this read brought, in one write.
        if c.wpos < c.wbuf.len() && c.phase == Phase::Open && c.flush().is_err() {
            c.phase = Phase::Closed;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn on_text(
    p: &[u8],
    now: u64,
    c: &mut Conn,
    totals: &mut Totals,
    hist: &mut Histogram<u64>,
    complete_hist: &mut Histogram<u64>,
    remaining: &mut HashMap<(u32, u64), u64>,
    subs_per_topic: &[u64],
    measuring: bool,
    timeline: &mut [u64],
    lat_max_timeline: &mut [u64],
    is_publisher: bool,
    ack_qos1: Option<(&mut Vec<u8>, &mut u32)>,
) {
    if p.starts_with(b"{\"type\":\"message\"") {
        let Some(name) = find_str(p, b"\"topic\":\"") else {
            totals.errors += 1;
            return;
        };
        let Some(topic) = topic_index(name) else {
            totals.errors += 1;
            return;
        };
        let Some((seq, after)) = find_u64(p, b"\"seqNo\":") else {
            totals.errors += 1;
            return;
        };
        if is_publisher || c.churn_deadline.is_some() || c.churner {
            return;
        }
        if let Some((scratch, seed)) = ack_qos1 {
            // `"qos":1` sits between `messageId` and `data`: look only there.
            let head = &p[after..];
            let head = &head[..memchr::memmem::find(head, b"\"data\":").unwrap_or(head.len())];
            if memchr::memmem::find(head, b"\"qos\":1").is_some() {
                c.queue_ack(name, seq, scratch, seed);
                totals.acks_sent += 1;
                // A seqNo this connection already has: the gateway resent it (our ack was
                // late or lost), not a reordering. Acked again, counted apart.
                if c.last_seq.get(&topic).is_some_and(|&last| seq <= last) {
                    totals.redelivered += 1;
                    return;
                }
            }
        }
        totals.deliveries += 1;
        if measuring {
            totals.measured_deliveries += 1;
            if let Some(last) = timeline.last_mut() {
                *last += 1;
            }
        }
        match c.last_seq.insert(topic, seq) {
            Some(last) if seq == last + 1 => {}
            Some(last) if seq > last + 1 => totals.gaps += seq - last - 1,
            Some(_) => totals.reordered += 1,
            None => {}
        }
        let ts = find_u64(&p[after..], b"\"ts\":").map(|(ts, _)| ts);
        if let Some(ts) = ts {
            let lat = now.saturating_sub(ts).max(1);
            let _ = hist.record(lat);
            if let Some(m) = lat_max_timeline.last_mut().filter(|_| measuring) {
                *m = (*m).max(lat / 1000);
            }
        }
        let expected = subs_per_topic.get(topic as usize).copied().unwrap_or(0);
        let e = remaining.entry((topic, seq)).or_insert(expected);
        *e = e.saturating_sub(1);
        if *e == 0 {
            remaining.remove(&(topic, seq));
            totals.completed += 1;
            if let Some(ts) = ts {
                let _ = complete_hist.record(now.saturating_sub(ts).max(1));
            }
        }
    } else if p.starts_with(b"{\"type\":\"ack\"") {
        totals.acked += 1;
        c.outstanding = c.outstanding.saturating_sub(1);
    } else if c.churner
        && (p.starts_with(b"{\"type\":\"subscribed\"")
            || p.starts_with(b"{\"type\":\"unsubscribed\""))
    {
        totals.churn_ops_answered += 1;
    } else if p.starts_with(b"{\"type\":\"subscribed\"") {
        let n = memchr::memchr_iter(b',', p).count();
        let k = if memchr::memmem::find(p, b"\"topics\"").is_some() {
            n
        } else {
            1
        };
        totals.subscribed_topics += k as u64;
        c.subscribed_pending = c.subscribed_pending.saturating_sub(k);
    } else if p.starts_with(b"{\"type\":\"error\"") {
        totals.errors += 1;
        if totals.errors <= 5 {
            eprintln!("error from server: {}", String::from_utf8_lossy(p));
        }
    }
}
