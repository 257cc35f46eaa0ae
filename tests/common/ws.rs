//! The tungstenite WebSocket client, for JSON messages: connect on a path, send text or JSON,
//! receive the next text message (bounded, passing over ping/pong frames), `subscribe`,
//! `publish` and wait for the ack, deliveries and their exact text, a clean close.
//!
//! Byte-exact frames and protocol violations are `raw.rs`'s job. Next to read: `raw.rs`.

use super::{tcp, READ_TIMEOUT};
use serde_json::Value;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub type Ws = tungstenite::WebSocket<TcpStream>;

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
