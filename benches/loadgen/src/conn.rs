//! One client connection of the load generator: its state, its read and write buffers, the
//! upgrade request, masked text frames and QoS 1 acks; and how it is opened (bound to one of the
//! source addresses, non-blocking), with the token when the run authenticates.

use crate::Args;
use mio::net::TcpStream;
use std::collections::HashMap;
use std::io;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;
use subsocket::ws::frame;
use subsocket::ws::frame::OpCode;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum Phase {
    Connecting,
    Handshake,
    Open,
    Closed,
}

pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) phase: Phase,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) wpos: usize,
    /// topic index -> last seqNo seen (subscribers).
    pub(crate) last_seq: HashMap<u32, u64>,
    pub(crate) topics: Vec<u32>,
    pub(crate) subscribed_pending: usize,
    pub(crate) is_http: bool,
    /// Publisher: requests sent and not yet answered (HTTP) / acked (WS).
    pub(crate) outstanding: usize,
    pub(crate) churn_deadline: Option<Instant>,
    /// A read filled the buffer once: read 64 KB at a time from now on.
    pub(crate) rbuf_hot: bool,
    /// A `--churn-ops` connection: its deliveries are not counted, its answers are churn acks.
    pub(crate) churner: bool,
    /// `--churn-ops`: the topics this churn connection holds, oldest first.
    pub(crate) held: std::collections::VecDeque<u32>,
    /// `--sse`: an event stream (its answer is `200`, then events, not frames).
    pub(crate) is_sse: bool,
}

impl Conn {
    pub(crate) fn queue(&mut self, bytes: &[u8]) {
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        self.wbuf.extend_from_slice(bytes);
    }
    /// Queues `{"type":"ack","topic":T,"seqNo":N}` (written with the connection's next flush).
    pub(crate) fn queue_ack(
        &mut self,
        topic: &[u8],
        seq: u64,
        scratch: &mut Vec<u8>,
        seed: &mut u32,
    ) {
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
    pub(crate) fn flush(&mut self) -> io::Result<()> {
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

pub(crate) fn masked_text(out: &mut Vec<u8>, text: &[u8], seed: &mut u32) {
    *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
    frame::write_client_frame(out, OpCode::Text, text, seed.to_le_bytes(), true);
}

/// `/ws`, with `?token=` when the run authenticates (percent-encoded where a character is not
/// URL-safe; a JWT's base64url and dots never are).
pub(crate) fn ws_path(token: Option<&str>) -> String {
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
pub(crate) fn make_token(secret: &str) -> Result<String, String> {
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

pub(crate) fn upgrade_request(host: &SocketAddr, path: &str) -> Vec<u8> {
    upgrade_request_with(host, path, false)
}

/// The permessage-deflate offer of `--deflate` subscribers: no context kept on either side, so
/// every compressed delivery inflates alone (and one publish's frame is the same bytes for every
/// subscriber, which the load generator's inflate cache relies on).
pub(crate) const DEFLATE_OFFER: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The upgrade request, with the permessage-deflate offer when `deflate`.
pub(crate) fn upgrade_request_with(host: &SocketAddr, path: &str, deflate: bool) -> Vec<u8> {
    let ext = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// `--sse`: the request of an event stream on `topics` (with `?token=` from `ws_path`'s query).
pub(crate) fn sse_request(host: &SocketAddr, topics: &[u32], ws_path: &str) -> Vec<u8> {
    let token = ws_path.split_once('?').map(|(_, q)| q);
    let path = match (topics, token) {
        ([t], None) => format!("/sse/sub/t{t}"),
        ([t], Some(q)) => format!("/sse/sub/t{t}?{q}"),
        (ts, q) => {
            let list: Vec<String> = ts.iter().map(|t| format!("topic=t{t}")).collect();
            let q = q.map(|q| format!("&{q}")).unwrap_or_default();
            format!("/sse?{}{q}", list.join("&"))
        }
    };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n").into_bytes()
}

pub(crate) fn source_addrs(args: &Args) -> Vec<IpAddr> {
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

pub(crate) fn connect_from(src: Option<IpAddr>, target: SocketAddr) -> io::Result<TcpStream> {
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

impl Conn {
    pub(crate) fn new(stream: TcpStream) -> Conn {
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
            is_sse: false,
        }
    }
}
