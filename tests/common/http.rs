//! A raw HTTP/1.1 client: byte-exact requests on a keep-alive connection ([`HttpConn`]), one
//! response at a time by `Content-Length` (or only the head, for an upgrade), whether the server
//! closed the socket, and one-shot `GET`/`POST` helpers.
//!
//! Next to read: `checks.rs`.

use super::tcp;
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

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
    /// Read but not yet parsed (`raw.rs` takes it over after an upgrade).
    pub(super) buf: Vec<u8>,
}

impl HttpConn {
    pub fn new(addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: tcp(addr),
            buf: Vec::new(),
        }
    }

    /// Nothing read past the last response (the socket can be handed to another client).
    pub fn buf_is_empty(&self) -> bool {
        self.buf.is_empty()
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
