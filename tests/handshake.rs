//! The HTTP/1.1 upgrade to a WebSocket and what is answered before one exists: paths (404), a
//! plain GET (426), browser-style headers, an upgrade on a kept-alive HTTP connection, a frame
//! sent with the upgrade request, non-HTTP garbage (400), a silent socket (408) and a wrong
//! WebSocket version or key (426, 400).
//!
//! Each test starts its own 2-core gateway on an ephemeral port. The plain HTTP routes are in
//! `tests/http_api.rs`.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use subsocket::ws::frame::OpCode;

#[test]
fn a_frame_sent_together_with_the_upgrade_request_is_served() {
    let gw = start();
    let mut c = HttpConn::new(gw.addr);
    let mut bytes = upgrade_request("/ws", "13").into_bytes();
    bytes.extend_from_slice(&client_frame(OpCode::Text, br#"{"type":"ping"}"#));
    c.stream.write_all(&bytes).unwrap();
    let r = c.read_response_head_only().unwrap();
    assert_eq!(r.status, 101);
    // Whatever followed the 101 in the same read is kept by the raw client.
    let mut raw = RawWs::from_upgraded(c);
    assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
}

#[test]
fn unknown_websocket_path_is_404() {
    let gw = start();
    for path in ["/nope", "/ws/", "/wss", "/ws/subx/a", "/echo"] {
        let r = http(gw.addr, upgrade_request(path, "13").as_bytes());
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "NOT_FOUND", "{path}");
    }
}

#[test]
fn plain_get_on_a_websocket_path_asks_for_an_upgrade() {
    let gw = start();
    for p in ["/ws", "/ws/sub/t"] {
        let r = http_get(gw.addr, p);
        assert_eq!(r.status, 426, "{p}: {}", r.text());
        assert_eq!(r.header("sec-websocket-version"), Some("13"), "{p}");
    }
}

#[test]
fn browser_style_upgrade_headers_are_accepted() {
    // Firefox sends `Connection: keep-alive, Upgrade`; header names and `websocket` in any case.
    let gw = start();
    let mut c = HttpConn::new(gw.addr);
    let req = format!(
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nupgrade: WebSocket\r\nsec-websocket-key: {WS_KEY}\r\nsec-websocket-version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\nOrigin: http://example\r\n\r\n"
    );
    c.stream.write_all(req.as_bytes()).unwrap();
    let r = c.read_response_head_only().unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(
        r.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover"),
        "permessage-deflate is negotiated (on by default)"
    );
    let mut raw = RawWs::from_upgraded(c);
    raw.send_text(r#"{"type":"ping"}"#);
    assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
}

#[test]
fn an_upgrade_on_a_kept_alive_http_connection_is_served() {
    // Browsers and Node's undici pool connections: a fetch, then a WebSocket on the same socket.
    let gw = start();
    let mut c = HttpConn::new(gw.addr);
    let r = c.request(b"POST /publish/pooled HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1");
    assert_eq!(r.status, 200, "{}", r.text());
    c.stream
        .write_all(upgrade_request("/ws/sub/pooled", "13").as_bytes())
        .unwrap();
    let r = c.read_response_head_only().unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    let mut raw = RawWs::from_upgraded(c);
    assert_eq!(raw.recv_text(), r#"{"type":"subscribed","topic":"pooled"}"#);
    let r = http_post(gw.addr, "/publish/pooled", "", b"2");
    assert_eq!(r.status, 200);
    let m: serde_json::Value = serde_json::from_str(&raw.recv_text()).unwrap();
    assert_eq!(
        (m["seqNo"].as_u64(), m["data"].as_u64()),
        (Some(2), Some(2)),
        "{m}"
    );
}

#[test]
fn non_websocket_garbage_on_the_port_is_answered_400_and_closed() {
    let gw = start();
    let mut by = Bystander::new(&gw);
    for garbage in [
        &b"HELLO THERE\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ] {
        let mut c = HttpConn::new(gw.addr);
        let r = c.request(garbage);
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(garbage),
            r.text()
        );
        assert!(c.closed_within(Duration::from_secs(2)), "closed after 400");
    }
    by.still_served();
}

#[test]
fn a_silent_socket_is_answered_408_after_the_handshake_timeout() {
    let gw = start_with(|c| c.handshake_timeout_ms = 300);
    let mut by = Bystander::new(&gw);
    let t0 = Instant::now();
    let mut c = HttpConn::new(gw.addr);
    let r = c.read_response().expect("a 408 answer");
    let took = t0.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert!(c.closed_within(Duration::from_secs(1)));
    // A half-sent head times out the same way.
    let mut c = HttpConn::new(gw.addr);
    c.stream.write_all(b"GET /ws HTTP/1.1\r\nHost").unwrap();
    assert_eq!(c.read_response().expect("408").status, 408);
    by.still_served();
}

#[test]
fn websocket_version_8_is_426() {
    let gw = start();
    let mut by = Bystander::new(&gw);
    let r = http(gw.addr, upgrade_request("/ws", "8").as_bytes());
    assert_eq!(r.status, 426, "{}", r.text());
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    let bad_key = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(http(gw.addr, bad_key.as_bytes()).status, 400);
    by.still_served();
}
