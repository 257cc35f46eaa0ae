//! A WebSocket client on a plain socket: the upgrade written by hand (RFC 6455's example key),
//! server frames parsed byte for byte ([`RawFrame`]), masked client frames built with the
//! gateway's own encoder, and how a connection ended ([`Ending`]: a close code, EOF, a reset).
//!
//! Reads the upgrade answer with `http.rs`'s [`HttpConn`]. Next to read: `http.rs`.

use super::{socket_ends_within, tcp, HttpConn, READ_TIMEOUT};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use subsocket::ws::frame::{self, OpCode};

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

    /// The text of a text frame, inflated first when it is compressed (RSV1).
    pub fn message_text(&self) -> String {
        if self.rsv & 4 == 0 {
            return self.text().to_owned();
        }
        assert_eq!(
            self.opcode,
            OpCode::Text as u8,
            "not a text frame: {self:?}"
        );
        let mut inf = subsocket::ws::deflate::Inflater::no_context();
        let text = inf.inflate(&self.payload, 1 << 24).expect("valid DEFLATE");
        String::from_utf8(text).expect("inflated text is UTF-8")
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

    /// Upgrades on `path` from a socket whose receive buffer is `rcvbuf` bytes: a client that
    /// does not read fills it (and the gateway's send buffer) after a few KiB.
    pub fn with_receive_buffer(addr: SocketAddr, path: &str, rcvbuf: usize) -> RawWs {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        sock.connect_timeout(&addr.into(), READ_TIMEOUT).unwrap();
        RawWs::upgrade(sock.into(), path)
    }

    /// Upgrades an already connected socket.
    pub fn upgrade(stream: TcpStream, path: &str) -> RawWs {
        RawWs::upgrade_sending(stream, path, &[])
    }

    /// Upgrades on `path` with `first` (client frames) in the same write as the request: the
    /// gateway reads them in the turn that completes the upgrade.
    pub fn connect_sending(addr: SocketAddr, path: &str, first: &[u8]) -> RawWs {
        RawWs::upgrade_sending(tcp(addr), path, first)
    }

    fn upgrade_sending(stream: TcpStream, path: &str, first: &[u8]) -> RawWs {
        RawWs::upgrade_with(stream, path, "", first).0
    }

    /// Upgrades on `path` offering `permessage-deflate` as `offer` (the
    /// `Sec-WebSocket-Extensions` value); returns the gateway's answer to it (`None`: declined).
    pub fn connect_deflate(addr: SocketAddr, path: &str, offer: &str) -> (RawWs, Option<String>) {
        let (raw, resp) = RawWs::upgrade_with(
            tcp(addr),
            path,
            &format!("Sec-WebSocket-Extensions: {offer}\r\n"),
            &[],
        );
        let answer = resp.header("sec-websocket-extensions").map(str::to_string);
        (raw, answer)
    }

    /// Upgrades with `extra` header lines (each ending in CRLF) and `first` frames after the
    /// request; returns the 101 answer too.
    pub fn upgrade_with(
        stream: TcpStream,
        path: &str,
        extra: &str,
        first: &[u8],
    ) -> (RawWs, super::HttpResponse) {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
        let mut http = HttpConn {
            stream,
            buf: Vec::new(),
        };
        let request = upgrade_request(path, "13");
        let mut request = format!("{}{extra}\r\n", &request[..request.len() - 2]).into_bytes();
        request.extend_from_slice(first);
        http.stream.write_all(&request).unwrap();
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
        (
            RawWs {
                stream,
                buf,
                texts_seen: Vec::new(),
            },
            resp,
        )
    }

    /// Sends `text` as one compressed message (permessage-deflate, RSV1, no context kept).
    pub fn send_compressed(&mut self, text: &str) {
        let body = subsocket::ws::deflate::compress_message(text.as_bytes(), 6, 15).unwrap();
        let mut out = Vec::new();
        frame::write_client_frame(&mut out, OpCode::Text, &body, [9, 8, 7, 6], true);
        out[0] |= frame::RSV1;
        self.send_raw(&out);
    }

    /// The next data frame's text, inflated when it came compressed (RSV1), skipping pings;
    /// and whether it was compressed.
    pub fn recv_message(&mut self) -> (String, bool) {
        loop {
            let f = self.read_frame();
            if f.opcode == OpCode::Ping as u8 {
                continue;
            }
            return (f.message_text(), f.rsv & 4 != 0);
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

/// One final client frame, masked with `[1, 2, 3, 4]`: what a well-behaved client sends.
pub fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_client_frame(&mut out, opcode, payload, [1, 2, 3, 4], true);
    out
}
