//! A Server-Sent Events client on a raw socket (`/sse`): the request by hand, the response
//! head, then events parsed the way `EventSource` does (fields `id`, `event`, `data`, `retry`;
//! comment lines counted; an event is dispatched at its blank line when it has data). Generic
//! over the stream, so the TLS tests use it too. Every read has a timeout.
//!
//! May use the socket helper of `mod.rs`; nothing else. Next to read: `checks.rs`.

use super::{tcp, HttpResponse};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The stream's last event id once this event is dispatched (`id:` of this event, or the
    /// one before it).
    pub id: String,
    /// `event:` (None: a default `message` event).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {self:?}"))
    }
}

/// An open event stream.
pub struct SseClient<S> {
    s: S,
    buf: Vec<u8>,
    /// The response head, as text.
    pub head: String,
    /// `retry:` values seen, and comment lines (heartbeats) seen.
    pub retry: Option<u64>,
    pub comments: usize,
    last_id: String,
}

/// The GET request of an event stream, with `extra` headers (each ending in `\r\n`).
pub fn sse_request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{extra}\r\n")
        .into_bytes()
}

/// Opens `path` and checks the answer is an event stream (200, `text/event-stream`).
pub fn sse_open(addr: SocketAddr, path: &str, extra: &str) -> SseClient<TcpStream> {
    let mut s = tcp(addr);
    s.write_all(&sse_request(path, extra)).unwrap();
    SseClient::start(s)
}

/// Sends `path` and returns the (error) answer: status and JSON body.
pub fn sse_refused(addr: SocketAddr, path: &str, extra: &str) -> HttpResponse {
    super::http(addr, &sse_request(path, extra))
}

impl<S: Read + Write> SseClient<S> {
    /// Reads the response head from a stream the request was written to; panics unless it is
    /// an event stream.
    pub fn start(s: S) -> Self {
        let mut c = SseClient {
            s,
            buf: Vec::new(),
            head: String::new(),
            retry: None,
            comments: 0,
            last_id: String::new(),
        };
        let deadline = Instant::now() + super::READ_TIMEOUT;
        let end = loop {
            if let Some(i) = memchr::memmem::find(&c.buf, b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                Instant::now() < deadline,
                "no response head: {:?}",
                String::from_utf8_lossy(&c.buf)
            );
            assert!(
                c.fill(),
                "closed before the response head: {:?}",
                String::from_utf8_lossy(&c.buf)
            );
        };
        c.head = String::from_utf8_lossy(&c.buf[..end]).into_owned();
        c.buf.drain(..end);
        assert!(
            c.head.starts_with("HTTP/1.1 200 "),
            "not an event stream: {}{}",
            c.head,
            String::from_utf8_lossy(&c.buf)
        );
        assert!(
            c.head.contains("Content-Type: text/event-stream"),
            "{}",
            c.head
        );
        c
    }

    /// One more read into the buffer; false at EOF (or a reset).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.s.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "no event within the read timeout; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            }
            Err(_) => false,
        }
    }

    /// The next dispatched event; `None` when the stream ended first.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let (mut event, mut data, mut has_data) = (None, String::new(), false);
        loop {
            let Some(nl) = memchr::memchr(b'\n', &self.buf) else {
                if !self.fill() {
                    return None;
                }
                continue;
            };
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8(line[..nl].to_vec()).expect("events are UTF-8");
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if has_data {
                    return Some(SseEvent {
                        id: self.last_id.clone(),
                        event,
                        data,
                    });
                }
                event = None;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line
                .split_once(':')
                .map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "data" => {
                    if has_data {
                        data.push('\n');
                    }
                    data.push_str(value);
                    has_data = true;
                }
                "id" => self.last_id = value.to_string(),
                "event" => event = Some(value.to_string()),
                "retry" => self.retry = value.parse().ok(),
                _ => {}
            }
        }
    }

    /// The next event that is not a delivery is returned as well: this skips nothing.
    pub fn expect_event(&mut self, name: &str) -> SseEvent {
        let ev = self
            .next_event()
            .unwrap_or_else(|| panic!("the stream ended before `{name}`"));
        assert_eq!(ev.event.as_deref(), Some(name), "{ev:?}");
        ev
    }

    /// The next delivery (a default event); panics on any other event.
    pub fn next_delivery(&mut self) -> (String, Value) {
        let ev = self
            .next_event()
            .expect("the stream ended before a delivery");
        assert_eq!(ev.event, None, "expected a delivery, got {ev:?}");
        let v = ev.json();
        assert_eq!(v["type"], "message", "{ev:?}");
        (ev.id, v)
    }

    /// Waits (bounded) for `n` heartbeat comments more than seen so far.
    pub fn wait_comments(&mut self, n: usize, within: Duration) {
        let want = self.comments + n;
        let deadline = Instant::now() + within;
        while self.comments < want {
            assert!(
                Instant::now() < deadline,
                "{} heartbeats, wanted {want}",
                self.comments
            );
            // A comment line is consumed by next_event's loop; feed it line by line.
            while let Some(nl) = memchr::memchr(b'\n', &self.buf) {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                if line.starts_with(b":") {
                    self.comments += 1;
                }
            }
            if self.comments < want {
                assert!(self.fill(), "the stream ended");
            }
        }
    }

    /// Whether the server ends the stream within `within` (the rest of what it sent is read).
    pub fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.s
    }
}
