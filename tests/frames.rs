//! The WebSocket frame layer (RFC 6455) on `/ws`, byte for byte on raw sockets: ping/pong frames,
//! many frames per read and one frame over many reads, fragmentation, the close handshake, and
//! each protocol violation closed with its code (1002, 1007) while a bystander is still served;
//! plus `/echo`, the frame layer with no protocol on top.
//!
//! Each test starts its own 2-core gateway on an ephemeral port. Frames over the size limit
//! (1009) are in `tests/limits.rs`.

mod common;

use common::*;
use std::time::Duration;
use subsocket::ws::frame::{self, OpCode};

// ===== frames in, frames out ================================================================

#[test]
fn websocket_ping_frame_is_answered_with_a_pong_frame_of_the_same_payload() {
    let gw = start();
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.send_frame(OpCode::Ping, b"hb-1");
    let f = raw.read_frame();
    assert_eq!(f.raw, [0x8A, 4, b'h', b'b', b'-', b'1'], "{f:?}");
    raw.send_frame(OpCode::Ping, b"");
    assert_eq!(raw.read_frame().raw, [0x8A, 0]);
    let long = [7u8; 125];
    raw.send_frame(OpCode::Ping, &long);
    let f = raw.read_frame();
    assert_eq!((f.opcode, f.fin, f.masked), (0xA, true, false));
    assert_eq!(f.payload, long);
    // An unsolicited pong is accepted silently.
    raw.send_frame(OpCode::Pong, b"x");
    raw.send_text(r#"{"type":"ping"}"#);
    assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
}

#[test]
fn many_frames_in_one_write_are_all_answered_in_order() {
    let gw = start();
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let mut bytes = Vec::new();
    for i in 0..200 {
        let text = format!(r#"{{"type":"subscribe","topic":"t{i}"}}"#);
        frame::write_client_frame(
            &mut bytes,
            OpCode::Text,
            text.as_bytes(),
            [5, 6, 7, 8],
            true,
        );
    }
    raw.send_raw(&bytes);
    for i in 0..200 {
        assert_eq!(
            raw.recv_text(),
            format!(r#"{{"type":"subscribed","topic":"t{i}"}}"#)
        );
    }
}

#[test]
fn a_frame_written_one_byte_at_a_time_is_decoded() {
    let gw = start();
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let payload = format!(
        r#"{{"type":"publish","topic":"slow","messageId":"b","payload":"{}"}}"#,
        "p".repeat(700)
    );
    let f = client_frame(OpCode::Text, payload.as_bytes());
    for b in &f {
        raw.send_raw(std::slice::from_ref(b));
    }
    let ack = raw.recv_json();
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["seqNo"], 1);
}

// ===== violations close the connection, never a bystander ===================================

#[test]
fn binary_frame_is_bad_request_and_the_connection_stays_open() {
    let gw = start();
    let mut by = Bystander::new(&gw);
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.send_frame(OpCode::Binary, br#"{"type":"ping"}"#);
    assert_error_text(&raw.recv_text(), "BAD_REQUEST");
    raw.send_text(r#"{"type":"ping"}"#);
    assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
    by.still_served();
}

#[test]
fn invalid_utf8_text_frame_is_closed_with_1007() {
    violation_closes_with(
        |_| {},
        &client_frame(OpCode::Text, &[b'{', 0xff, 0xfe, b'}']),
        1007,
    );
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    let mut f = vec![0x81, 15];
    f.extend_from_slice(br#"{"type":"ping"}"#);
    violation_closes_with(|_| {}, &f, 1002);
}

#[test]
fn reserved_bits_are_closed_with_1002() {
    let mut f = client_frame(OpCode::Text, br#"{"type":"ping"}"#);
    f[0] |= 0x40; // RSV1 without an extension
    violation_closes_with(|_| {}, &f, 1002);
}

#[test]
fn reserved_opcode_is_closed_with_1002() {
    let mut f = client_frame(OpCode::Text, b"x");
    f[0] = 0x83;
    violation_closes_with(|_| {}, &f, 1002);
}

#[test]
fn fragmented_message_within_the_limit_is_reassembled() {
    let gw = start();
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let msg = br#"{"type":"ping"}"#;
    let mut bytes = Vec::new();
    frame::write_client_frame(&mut bytes, OpCode::Text, &msg[..5], [1, 1, 1, 1], false);
    // A control frame may come between fragments.
    frame::write_client_frame(&mut bytes, OpCode::Ping, b"p", [2, 2, 2, 2], true);
    frame::write_client_frame(
        &mut bytes,
        OpCode::Continuation,
        &msg[5..],
        [3, 3, 3, 3],
        true,
    );
    raw.send_raw(&bytes);
    assert_eq!(raw.read_frame().raw, [0x8A, 1, b'p']);
    assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
}

#[test]
fn close_frame_is_echoed_and_the_connection_ends() {
    let gw = start();
    let mut by = Bystander::new(&gw);
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.subscribe("x");
    raw.send_raw(&client_frame(
        OpCode::Close,
        &frame::close_payload(1000, "bye"),
    ));
    assert_eq!(
        raw.ending_within(Duration::from_secs(3)),
        Ending::Close(Some(1000))
    );
    raw.assert_tcp_ends();
    by.still_served();
    wait_stats(gw.addr, Duration::from_secs(2), "x is gone", |s| {
        s["connections"] == 2 && s["subscriptions"] == 1
    });
}

#[test]
fn invalid_close_code_is_closed_with_1002() {
    violation_closes_with(
        |_| {},
        &client_frame(OpCode::Close, &frame::close_payload(1005, "")),
        1002,
    );
}

#[test]
fn one_byte_close_payload_is_closed_with_1002() {
    violation_closes_with(|_| {}, &client_frame(OpCode::Close, &[3]), 1002);
}

#[test]
fn oversized_ping_is_closed_with_1002() {
    violation_closes_with(|_| {}, &client_frame(OpCode::Ping, &[0u8; 126]), 1002);
}

#[test]
fn continuation_without_a_message_is_closed_with_1002() {
    violation_closes_with(|_| {}, &client_frame(OpCode::Continuation, b"x"), 1002);
}

// ===== 11. /echo ============================================================================

#[test]
fn echo_is_404_unless_enabled() {
    let gw = start();
    let r = http(gw.addr, upgrade_request("/echo", "13").as_bytes());
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn echo_returns_text_and_binary_messages_identically() {
    let gw = start_with(|c| c.echo = true);
    let mut ws = connect(gw.addr, "/echo");
    let text = "héllo, not JSON at all {";
    ws.send(tungstenite::Message::text(text)).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => assert_eq!(t.as_str(), text),
        m => panic!("{m:?}"),
    }
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    ws.send(tungstenite::Message::binary(big.clone())).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Binary(b) => assert!(b[..] == big[..], "1 MiB binary differs"),
        m => panic!("{m:?}"),
    }
    let big_text = "ü".repeat(512 * 1024);
    ws.send(tungstenite::Message::text(big_text.clone()))
        .unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Text(t) => assert!(t.as_str() == big_text, "1 MiB text differs"),
        m => panic!("{m:?}"),
    }
    ws.send(tungstenite::Message::binary(Vec::new())).unwrap();
    match ws.read().unwrap() {
        tungstenite::Message::Binary(b) => assert!(b.is_empty()),
        m => panic!("{m:?}"),
    }
    close_cleanly(ws);
}
