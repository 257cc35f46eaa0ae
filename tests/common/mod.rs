//! Shared helpers of the integration tests: start a gateway, talk to it as a WebSocket client
//! (tungstenite, for JSON messages), as a raw-socket WebSocket client (for byte-exact frames and
//! protocol violations), and as a raw HTTP/1.1 client.
//!
//! Every wait is bounded: sockets get read timeouts and every poll has a deadline, so a broken
//! gateway fails a test with a message instead of hanging it.

#![allow(dead_code)] // each test binary uses a different subset of the helpers

use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use subsocket::config::{Config, Cores};
use subsocket::gateway::{self, Gateway};
use subsocket::ws::frame::{self, OpCode};

/// Read timeout on every test socket: long enough for a loaded 2-core machine, short enough
/// that a missing answer fails the test quickly.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub type Ws = tungstenite::WebSocket<TcpStream>;

// ----- the gateway --------------------------------------------------------------------------

/// A running gateway that is shut down and joined when dropped (also when a test panics).
pub struct TestGateway {
    gw: Option<Gateway>,
    pub addr: SocketAddr,
}

impl TestGateway {
    /// Shuts down and waits for every core; returns `join`'s result.
    pub fn stop(mut self) -> Result<(), String> {
        let gw = self.gw.take().expect("gateway still running");
        gw.shutdown();
        gw.join()
    }

    /// The gateway itself (for `shutdown` without `join`).
    pub fn gateway(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway still running")
    }

    /// Takes the gateway out (the caller shuts it down and joins it).
    pub fn take(mut self) -> Gateway {
        self.gw.take().expect("gateway still running")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown();
            let _ = gw.join();
        }
    }
}

/// The configuration every test starts from: an ephemeral port on 127.0.0.1, 2 cores, a short
/// shutdown grace.
pub fn test_config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        cores: Cores::Count(2.min(subsocket::config::available_cores().len()).max(1)),
        shutdown_grace_ms: 1_000,
        ..Config::default()
    }
}

/// Starts a gateway on the test configuration changed by `tweak`.
pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let mut cfg = test_config();
    tweak(&mut cfg);
    let gw = gateway::start(cfg).expect("gateway starts");
    let addr = gw.local_addr();
    TestGateway { gw: Some(gw), addr }
}

/// Starts a gateway on the test configuration.
pub fn start() -> TestGateway {
    start_with(|_| {})
}

// ----- tungstenite client ------------------------------------------------------------------

/// A plain TCP connection with the test read timeout.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Opens a WebSocket on `path` (e.g. `/ws`) with a read timeout.
pub fn connect(addr: SocketAddr, path: &str) -> Ws {
    let stream = tcp(addr);
    let url = format!("ws://{addr}{path}");
    match tungstenite::client::client(url.as_str(), stream) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("WebSocket upgrade on {path} failed: {e}"),
    }
}

/// Sends one text frame.
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::text(text.to_owned()))
        .unwrap_or_else(|e| panic!("send {text}: {e}"));
}

/// Sends one JSON value as a text frame.
pub fn send_json(ws: &mut Ws, v: &Value) {
    send_text(ws, &v.to_string());
}

/// Queues one text frame without flushing (batch several, then [`flush`]).
pub fn write_text(ws: &mut Ws, text: &str) {
    ws.write(tungstenite::Message::text(text.to_owned()))
        .unwrap_or_else(|e| panic!("write {text}: {e}"));
}

pub fn flush(ws: &mut Ws) {
    ws.flush().unwrap_or_else(|e| panic!("flush: {e}"));
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock || io.kind() == ErrorKind::TimedOut)
}

/// The next text message, exactly as received. WebSocket ping/pong frames are not messages and
/// are passed over (tungstenite answers pings itself); anything else fails the test.
pub fn recv_text(ws: &mut Ws) -> String {
    recv_text_within(ws, READ_TIMEOUT)
        .unwrap_or_else(|| panic!("no text message within {READ_TIMEOUT:?}"))
}

/// The next text message within `within`, or `None` when none came in time.
pub fn recv_text_within(ws: &mut Ws, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        ws.get_mut()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let res = ws.read();
        ws.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match res {
            Ok(tungstenite::Message::Text(t)) => return Some(t.as_str().to_owned()),
            Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => continue,
            Ok(other) => panic!("expected a text message, got {other:?}"),
            Err(e) if is_timeout(&e) => return None,
            Err(e) => panic!("expected a text message, the connection failed: {e}"),
        }
    }
}

/// The next text message parsed as JSON.
pub fn recv_json(ws: &mut Ws) -> Value {
    let text = recv_text(ws);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts that no text message arrives within `within`.
pub fn expect_silence(ws: &mut Ws, within: Duration) {
    if let Some(t) = recv_text_within(ws, within) {
        panic!("expected no message, got {t}");
    }
}

/// Sends an application `ping` and asserts the very next message is the `pong`: proves the
/// connection is open, usable, and that nothing was queued before the pong.
pub fn assert_ping_pong(ws: &mut Ws) {
    send_text(ws, r#"{"type":"ping"}"#);
    assert_eq!(recv_text(ws), r#"{"type":"pong"}"#);
}

/// `subscribe` to one topic and check the exact answer.
pub fn subscribe(ws: &mut Ws, topic: &str) {
    send_json(ws, &serde_json::json!({"type":"subscribe","topic":topic}));
    let expect = format!(r#"{{"type":"subscribed","topic":{}}}"#, Value::from(topic));
    assert_eq!(recv_text(ws), expect);
}

/// `subscribe` to several topics (batch form) and check the exact answer.
pub fn subscribe_many(ws: &mut Ws, topics: &[&str]) {
    send_json(ws, &serde_json::json!({"type":"subscribe","topics":topics}));
    let expect = format!(
        r#"{{"type":"subscribed","topics":{}}}"#,
        serde_json::to_string(topics).unwrap()
    );
    assert_eq!(recv_text(ws), expect);
}

/// A connection on `/ws` subscribed to `topic`.
pub fn subscriber(addr: SocketAddr, topic: &str) -> Ws {
    let mut ws = connect(addr, "/ws");
    subscribe(&mut ws, topic);
    ws
}

/// Publishes and waits for the `ack`; returns its seqNo.
pub fn publish(ws: &mut Ws, topic: &str, message_id: &str, payload_json: &str) -> u64 {
    send_text(
        ws,
        &format!(
            r#"{{"type":"publish","topic":{},"messageId":{},"payload":{payload_json}}}"#,
            Value::from(topic),
            Value::from(message_id)
        ),
    );
    let ack = recv_json(ws);
    assert_eq!(ack["type"], "ack", "expected an ack, got {ack}");
    assert_eq!(
        ack["messageId"], message_id,
        "ack of another message: {ack}"
    );
    assert_eq!(ack["status"], "ok", "{ack}");
    ack["seqNo"]
        .as_u64()
        .unwrap_or_else(|| panic!("ack without seqNo: {ack}"))
}

/// Receives the next message and asserts it is a delivery on `topic`; returns it parsed.
pub fn recv_delivery(ws: &mut Ws, topic: &str) -> Value {
    let m = recv_json(ws);
    assert_eq!(m["type"], "message", "expected a delivery, got {m}");
    assert_eq!(m["topic"], topic, "{m}");
    m
}

/// The exact text of a delivery.
pub fn delivery_text(topic: &str, seq_no: u64, message_id: &str, data: &str) -> String {
    format!(
        r#"{{"type":"message","topic":{},"seqNo":{seq_no},"messageId":{},"data":{data}}}"#,
        Value::from(topic),
        Value::from(message_id)
    )
}

/// Closes with a close frame and waits (bounded) for the server's close answer.
pub fn close_cleanly(mut ws: Ws) {
    let _ = ws.close(None);
    let deadline = Instant::now() + READ_TIMEOUT;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => continue,
            Err(_) => return, // ConnectionClosed after the close handshake, or the socket ended
        }
    }
    panic!("the server did not complete the close handshake");
}

// ----- stats --------------------------------------------------------------------------------

/// `GET /stats`, parsed.
pub fn stats(addr: SocketAddr) -> Value {
    let r = http_get(addr, "/stats");
    assert_eq!(r.status, 200, "/stats: {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("/stats is not JSON ({e})"))
}

/// Polls `/stats` until `ok` holds, at most `within`; fails with the last stats otherwise.
pub fn wait_stats(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = stats(addr);
        if ok(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("/stats did not reach '{what}' within {within:?}; last: {s}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Per-core `connections` from `/stats`.
pub fn per_core_connections(s: &Value) -> Vec<u64> {
    s["cores"]
        .as_array()
        .expect("/stats has a cores array")
        .iter()
        .map(|c| c["connections"].as_u64().expect("per-core connections"))
        .collect()
}

/// Opens subscribers of `topic` (on `/ws`) until every core holds at least one of them and at
/// least `min` are open. Call before any other WebSocket connection exists on the gateway, so
/// that `/stats` counts only these. Connections spread over cores by SO_REUSEPORT hashing, so a
/// few tries are enough; 64 bound it.
pub fn subscribers_on_every_core(addr: SocketAddr, topic: &str, min: usize) -> Vec<Ws> {
    let mut subs = Vec::new();
    for _ in 0..64 {
        subs.push(subscriber(addr, topic));
        if subs.len() >= min {
            let per_core = per_core_connections(&stats(addr));
            if per_core.iter().all(|&n| n > 0) {
                return subs;
            }
        }
    }
    panic!("64 connections did not reach every core");
}

/// The same for raw-socket subscribers.
pub fn raw_subscribers_on_every_core(addr: SocketAddr, topic: &str, min: usize) -> Vec<RawWs> {
    let mut subs = Vec::new();
    for _ in 0..64 {
        let mut raw = RawWs::connect(addr, "/ws");
        raw.subscribe(topic);
        subs.push(raw);
        if subs.len() >= min {
            let per_core = per_core_connections(&stats(addr));
            if per_core.iter().all(|&n| n > 0) {
                return subs;
            }
        }
    }
    panic!("64 connections did not reach every core");
}

// ----- raw HTTP -----------------------------------------------------------------------------

/// One HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn new(addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: tcp(addr),
            buf: Vec::new(),
        }
    }

    /// Sends `raw` (a whole request) and reads one response.
    pub fn request(&mut self, raw: &[u8]) -> HttpResponse {
        // A server may answer and close before reading everything (413): a failed write is
        // not the test's concern, the response is.
        let _ = self.stream.write_all(raw);
        self.read_response()
            .unwrap_or_else(|e| panic!("no HTTP response: {e}"))
    }

    /// Reads one response (head + Content-Length body).
    pub fn read_response(&mut self) -> Result<HttpResponse, String> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec())
            .map_err(|_| "response head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().expect("numeric Content-Length"))
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            self.fill()?;
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(format!(
                "connection closed after {} bytes: {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) => Err(format!(
                "read failed after {} bytes ({e}): {:?}",
                self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            )),
        }
    }

    /// Whether the server closed the connection (EOF or reset) within `within`.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        socket_ends_within(&mut self.stream, within)
    }
}

/// Reads and discards until EOF or an error other than a timeout; true when the socket ended
/// within `within`.
pub fn socket_ends_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A one-shot request on a fresh connection.
pub fn http(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    HttpConn::new(addr).request(raw)
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// `POST path` with `body` and extra header lines (each ending in `\r\n`).
pub fn post_request(path: &str, extra_headers: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

pub fn http_post(addr: SocketAddr, path: &str, extra_headers: &str, body: &[u8]) -> HttpResponse {
    http(addr, &post_request(path, extra_headers, body))
}

// ----- raw WebSocket ------------------------------------------------------------------------

/// The key of RFC 6455's example handshake.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The upgrade request for `path`.
pub fn upgrade_request(path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

/// One server frame as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    /// RSV1-3 bits.
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
    /// Header + payload, byte for byte.
    pub raw: Vec<u8>,
}

impl RawFrame {
    pub fn text(&self) -> &str {
        assert_eq!(
            self.opcode,
            OpCode::Text as u8,
            "not a text frame: {self:?}"
        );
        std::str::from_utf8(&self.payload).expect("text frame is UTF-8")
    }

    /// The code of a close frame (`None` for an empty close payload).
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OpCode::Close as u8, "not a close frame");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// How a raw connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code (and the socket may still be open).
    Close(Option<u16>),
    /// EOF without a close frame.
    Eof,
    /// A read error other than a timeout (reset).
    Reset(String),
    /// Nothing ended it within the wait.
    Open,
}

/// A WebSocket client on a plain socket: the upgrade done by hand, frames read raw.
pub struct RawWs {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    /// Text frames seen by [`RawWs::ending_within`] while waiting for the end.
    pub texts_seen: Vec<String>,
}

impl RawWs {
    /// Upgrades on `path` and asserts `101`.
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::upgrade(tcp(addr), path)
    }

    /// Upgrades an already connected socket (e.g. one with a small receive buffer).
    pub fn upgrade(stream: TcpStream, path: &str) -> RawWs {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut http = HttpConn {
            stream,
            buf: Vec::new(),
        };
        http.stream
            .write_all(upgrade_request(path, "13").as_bytes())
            .unwrap();
        let resp = http
            .read_response_head_only()
            .unwrap_or_else(|e| panic!("upgrade on {path}: {e}"));
        assert_eq!(resp.status, 101, "upgrade on {path}: {resp:?}");
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "RFC 6455 example accept key"
        );
        let HttpConn { stream, buf } = http;
        RawWs {
            stream,
            buf,
            texts_seen: Vec::new(),
        }
    }

    /// A raw client on a connection whose `101` was already read (what followed it stays
    /// buffered).
    pub fn from_upgraded(http: HttpConn) -> RawWs {
        let HttpConn { stream, buf } = http;
        RawWs {
            stream,
            buf,
            texts_seen: Vec::new(),
        }
    }

    /// Sends one masked client frame.
    pub fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        frame::write_client_frame(&mut out, opcode, payload, [0x12, 0x34, 0x56, 0x78], true);
        self.send_raw(&out);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(OpCode::Text, text.as_bytes());
    }

    /// Writes bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame within `within`; `Err` with how the socket ended otherwise.
    pub fn read_frame_within(&mut self, within: Duration) -> Result<RawFrame, Ending> {
        let deadline = Instant::now() + within;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Ending::Open);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Ending::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return Err(Ending::Open)
                }
                Err(e) => return Err(Ending::Reset(e.to_string())),
            }
        }
    }

    /// The next frame (fails the test after [`READ_TIMEOUT`]).
    pub fn read_frame(&mut self) -> RawFrame {
        self.read_frame_within(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("no frame within {READ_TIMEOUT:?}: {e:?}"))
    }

    /// The next data frame's text, skipping ping frames.
    pub fn recv_text(&mut self) -> String {
        loop {
            let f = self.read_frame();
            if f.opcode == OpCode::Ping as u8 {
                continue;
            }
            return f.text().to_owned();
        }
    }

    pub fn recv_json(&mut self) -> Value {
        let t = self.recv_text();
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
    }

    pub fn subscribe(&mut self, topic: &str) {
        self.send_text(&serde_json::json!({"type":"subscribe","topic":topic}).to_string());
        let expect = format!(r#"{{"type":"subscribed","topic":{}}}"#, Value::from(topic));
        assert_eq!(self.recv_text(), expect);
    }

    /// Reads until a close frame, EOF or reset, at most `within`. Text frames seen on the way
    /// are kept in `texts_seen`; pings are ignored.
    pub fn ending_within(&mut self, within: Duration) -> Ending {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame_within(left) {
                Ok(f) if f.opcode == OpCode::Close as u8 => return Ending::Close(f.close_code()),
                Ok(f) if f.opcode == OpCode::Text as u8 => {
                    self.texts_seen.push(f.text().to_owned())
                }
                Ok(_) => {}
                Err(e) => return e,
            }
        }
    }

    /// After a close frame: the server must end the TCP connection too.
    pub fn assert_tcp_ends(&mut self) {
        assert!(
            socket_ends_within(&mut self.stream, Duration::from_secs(3)),
            "the server did not close the TCP connection after its close frame"
        );
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl HttpConn {
    /// Reads only a response head (the upgrade answer has no body); leaves what follows in the
    /// buffer.
    pub fn read_response_head_only(&mut self) -> Result<HttpResponse, String> {
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        if status == 101 {
            self.buf.drain(..head_end);
            return Ok(HttpResponse {
                status,
                headers,
                body: Vec::new(),
            });
        }
        // Not an upgrade: read the body as usual.
        let resp_len = headers_content_length(&headers);
        while self.buf.len() < head_end + resp_len {
            self.fill()?;
        }
        let body = self.buf[head_end..head_end + resp_len].to_vec();
        self.buf.drain(..head_end + resp_len);
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

fn headers_content_length(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Parses one server frame from the front of `buf`: `(frame, bytes used)`, `None` if incomplete.
pub fn parse_server_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < at + 4 {
            return None;
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((
        RawFrame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            masked,
            payload,
            raw: buf[..at + len].to_vec(),
        },
        at + len,
    ))
}

/// Runs `f` on a thread and fails the test if it has not finished within `within`.
pub fn within<T: Send + 'static>(
    within: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(within) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            // The thread panicked: re-raise its panic here.
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("finished without sending"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {within:?}")
        }
    }
}
