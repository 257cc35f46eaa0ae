//! HTTP/1.1 on the gateway's port: parsing a request head, the WebSocket upgrade answer
//! (RFC 6455 section 4.2), and plain HTTP answers.
//!
//! Pure: works on byte slices, never on sockets. The shard reads bytes, calls
//! [`parse_request`] until it gets a head, and routes it.

use percent_encoding::percent_decode_str;

/// Most headers accepted in one request head.
pub const MAX_HEADERS: usize = 48;

/// The parts of a request head the gateway uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path without the query, still percent-encoded.
    pub path: String,
    /// The raw query string after `?`, if any.
    pub query: Option<String>,
    /// `Upgrade: websocket` with `Connection: upgrade` was asked for.
    pub is_upgrade: bool,
    /// `Sec-WebSocket-Key`.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub ws_version: Option<String>,
    /// `Sec-WebSocket-Extensions`, every such header joined with `, ` (RFC 6455 section 9.1).
    pub extensions: Option<String>,
    /// `Authorization` header value.
    pub authorization: Option<String>,
    /// `Idempotency-Key` header value.
    pub idempotency_key: Option<String>,
    /// `Last-Event-ID` header value (an `EventSource` reconnecting to `/sse`).
    pub last_event_id: Option<String>,
    /// `Content-Length`, when given.
    pub content_length: Option<usize>,
    /// `Transfer-Encoding: chunked` was given (refused by the gateway with 411).
    pub is_chunked: bool,
    /// HTTP/1.1 without `Connection: close` (or 1.0 with keep-alive).
    pub keep_alive: bool,
    /// Bytes of the head, including the blank line.
    pub head_len: usize,
}

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// The head is larger than allowed (answered 431).
    HeadTooLarge,
    /// Not HTTP/1.x, or a malformed header line (answered 400).
    Malformed(String),
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::HeadTooLarge => write!(f, "request head too large"),
            HeadError::Malformed(m) => write!(f, "malformed request: {m}"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Parses a request head from the front of `buf`. `Ok(None)`: incomplete, read more.
pub fn parse_request(buf: &[u8], max_head_bytes: usize) -> Result<Option<Request>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let head_len = match status {
        httparse::Status::Partial => {
            if buf.len() > max_head_bytes {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let version = req.version.unwrap_or(1);
    let mut out = Request {
        method: req.method.unwrap_or("").to_string(),
        path,
        query,
        keep_alive: version == 1,
        head_len,
        ..Request::default()
    };
    let mut upgrade_ws = false;
    let mut connection_upgrade = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed(format!("header {} is not UTF-8", h.name)))?
            .trim();
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ws = value
                .split(',')
                .any(|v| v.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                } else if token.eq_ignore_ascii_case("close") {
                    out.keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    out.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            match &mut out.extensions {
                Some(e) => {
                    e.push_str(", ");
                    e.push_str(value);
                }
                None => out.extensions = Some(value.to_string()),
            }
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("last-event-id") {
            out.last_event_id = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("idempotency-key") {
            out.idempotency_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| HeadError::Malformed("bad Content-Length".into()))?;
            if out.content_length.is_some_and(|prev| prev != n) {
                return Err(HeadError::Malformed("conflicting Content-Length".into()));
            }
            out.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            out.is_chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    out.is_upgrade = upgrade_ws && connection_upgrade;
    Ok(Some(out))
}

/// Why an upgrade request is not acceptable: (HTTP status, reason).
pub fn check_upgrade(req: &Request) -> Result<&str, (u16, &'static str)> {
    if req.method != "GET" {
        return Err((405, "WebSocket upgrade must use GET"));
    }
    if req.ws_version.as_deref() != Some("13") {
        return Err((426, "Sec-WebSocket-Version must be 13"));
    }
    let key = req
        .ws_key
        .as_deref()
        .ok_or((400, "missing Sec-WebSocket-Key"))?;
    // A valid key is 16 random bytes in base64: 24 characters ending in "==".
    if key.len() != 24 || !key.ends_with("==") {
        return Err((400, "invalid Sec-WebSocket-Key"));
    }
    Ok(key)
}

/// The `101 Switching Protocols` answer for `key`, naming the extension agreed on (the
/// `Sec-WebSocket-Extensions` value), if any.
pub fn upgrade_response(key: &str, extensions: Option<&str>) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let ext = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{ext}\r\n"
    )
    .into_bytes()
}

/// A complete HTTP/1.1 answer with a body.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}{}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" },
        if status == 426 { "Sec-WebSocket-Version: 13\r\n" } else { "" },
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A JSON error answer: `{"error":"CODE","message":"…"}`.
pub fn json_error(status: u16, code: &str, message: &str, keep_alive: bool) -> Vec<u8> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    response(status, "application/json", body.as_bytes(), keep_alive)
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Percent-decodes one path segment; `None` when it is not UTF-8 after decoding.
pub fn decode_segment(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `k=v&k2=v2` -> pairs, percent- and `+`-decoded; pairs that are not UTF-8 are skipped.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = decode_segment(&k.replace('+', " "))?;
            let v = decode_segment(&v.replace('+', " "))?;
            Some((k, v))
        })
        .collect()
}

/// The value of `name` in the query string, decoded.
pub fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query_pairs(query?)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws/sub/prices%2EBTC?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn parses_an_upgrade_with_query() {
        let r = parse_request(UPGRADE, 8192).unwrap().unwrap();
        assert!(r.is_upgrade);
        assert_eq!(r.path, "/ws/sub/prices%2EBTC");
        assert_eq!(decode_segment("prices%2EBTC").unwrap(), "prices.BTC");
        assert_eq!(query_value(r.query.as_deref(), "token").unwrap(), "abc");
        assert_eq!(r.head_len, UPGRADE.len());
        assert_eq!(check_upgrade(&r).unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        let resp = String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==", None)).unwrap();
        assert!(
            resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{resp}"
        );
    }

    #[test]
    fn extension_headers_are_joined_and_answered() {
        let head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\nsec-websocket-extensions: permessage-deflate\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let r = parse_request(head, 8192).unwrap().unwrap();
        assert_eq!(
            r.extensions.as_deref(),
            Some("permessage-deflate; server_max_window_bits=10, permessage-deflate")
        );
        let resp = String::from_utf8(upgrade_response(
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some("permessage-deflate; server_no_context_takeover"),
        ))
        .unwrap();
        assert!(resp.ends_with(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        ));
        assert_eq!(
            parse_request(UPGRADE, 8192).unwrap().unwrap().extensions,
            None
        );
    }

    #[test]
    fn a_partial_head_asks_for_more_and_an_endless_one_is_refused() {
        assert_eq!(parse_request(&UPGRADE[..40], 8192).unwrap(), None);
        let mut endless = b"GET / HTTP/1.1\r\nX: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(parse_request(&endless, 8192), Err(HeadError::HeadTooLarge));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 8192),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn wrong_versions_and_keys_are_refused() {
        let mut r = parse_request(UPGRADE, 8192).unwrap().unwrap();
        r.ws_version = Some("8".into());
        assert_eq!(check_upgrade(&r).unwrap_err().0, 426);
        r.ws_version = Some("13".into());
        r.ws_key = Some("short".into());
        assert_eq!(check_upgrade(&r).unwrap_err().0, 400);
        r.method = "POST".into();
        assert_eq!(check_upgrade(&r).unwrap_err().0, 405);
    }

    #[test]
    fn plain_requests_keep_alive_unless_told() {
        let r = parse_request(
            b"POST /publish/a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            8192,
        )
        .unwrap()
        .unwrap();
        assert!(r.keep_alive && !r.is_upgrade);
        assert_eq!(r.content_length, Some(2));
        let r = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn query_pairs_decode_plus_and_percent() {
        assert_eq!(
            query_pairs("a=1&b=hello+world&c=%C3%A9&d"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "hello world".into()),
                ("c".into(), "é".into()),
                ("d".into(), "".into())
            ]
        );
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response(200, "text/plain", b"ok", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 2\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nok"));
    }
}
