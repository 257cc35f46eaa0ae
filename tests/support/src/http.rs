//! One blocking HTTP/1.1 request whose answer is read to EOF: for a request that says
//! `Connection: close` to a server that then closes (the gateway's `/publish` and `/stats`, the
//! NATS monitoring port). Bounded: every read times out after [`READ_TIMEOUT`].
//!
//! It only reads an answer; tests *of* the gateway's HTTP (keep-alive, pipelining, byte-exact
//! heads) use the root tests' own client.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long one read may wait for the server.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: the status, the head as sent (status line and headers, without the blank line),
/// and the body (de-chunked when it came `Transfer-Encoding: chunked`).
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code of the status line.
    pub status: u16,
    /// The status line and the header lines, as received.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Connects to `addr`, writes `request` (a whole request, which should say `Connection: close`)
/// and reads the answer until the server closes. Fails the test when it cannot.
pub fn request_to_eof(addr: impl ToSocketAddrs, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect for HTTP");
    s.set_read_timeout(Some(READ_TIMEOUT))
        .expect("read timeout");
    s.write_all(request).expect("write HTTP request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read HTTP response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    Reply {
        status,
        head: head.to_string(),
        body,
    }
}
