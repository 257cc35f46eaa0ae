//! End-to-end tests of the gateway against PROTOCOL.md: every message of the Micro Socket
//! protocol over `/ws` and `/ws/sub/{topic}`, the HTTP routes, byte-identical fan-out, bad input,
//! heartbeats, graceful shutdown and the `/echo` endpoint.
//!
//! Each test starts its own 2-core gateway on an ephemeral port; the slow and stressful tests
//! live in `tests/stress.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};
use subsocket::ws::frame::{self, OpCode};

/// Asserts `v` is `{"type":"error","code":code,"message":"…"}` (plus correlation fields).
fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error explains itself: {v}"
    );
}

/// Asserts the exact field order of an error answer: type, code, message first.
fn assert_error_text(text: &str, code: &str) -> Value {
    assert!(
        text.starts_with(&format!(r#"{{"type":"error","code":"{code}","message":""#)),
        "error shape: {text}"
    );
    let v: Value = serde_json::from_str(text).unwrap();
    assert_error(&v, code);
    v
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

// ===== 1. the protocol over /ws ============================================================

#[test]
fn setup_without_topics_answers_ready_with_a_session_id() {
    let gw = start();
    for setup in [
        r#"{"type":"setup","token":"anything"}"#,
        r#"{"type":"setup"}"#,
    ] {
        let mut ws = connect(gw.addr, "/ws");
        send_text(&mut ws, setup);
        let text = recv_text(&mut ws);
        assert!(
            text.starts_with(r#"{"type":"ready","sessionId":""#),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap();
        let mut k = keys(&v);
        k.sort();
        assert_eq!(k, ["sessionId", "type"], "{text}");
        assert!(v["sessionId"].as_str().is_some_and(|s| !s.is_empty()));
        // Nothing else follows a setup without topics.
        assert_ping_pong(&mut ws);
    }
    // Two sessions never share an id.
    let mut a = connect(gw.addr, "/ws");
    let mut b = connect(gw.addr, "/ws");
    send_text(&mut a, r#"{"type":"setup","token":"t"}"#);
    send_text(&mut b, r#"{"type":"setup","token":"t"}"#);
    assert_ne!(
        recv_json(&mut a)["sessionId"],
        recv_json(&mut b)["sessionId"]
    );
}

#[test]
fn setup_with_topics_answers_ready_then_subscribed_and_delivers_those_topics() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(
        &mut ws,
        r#"{"type":"setup","token":"tok","topics":["alpha","beta"]}"#,
    );
    let ready = recv_json(&mut ws);
    assert_eq!(ready["type"], "ready", "{ready}");
    assert!(ready["sessionId"].is_string());
    assert_eq!(
        recv_text(&mut ws),
        r#"{"type":"subscribed","topics":["alpha","beta"]}"#
    );
    let mut publisher = connect(gw.addr, "/ws");
    let seq = publish(&mut publisher, "beta", "m-beta", "7");
    assert_eq!(seq, 1);
    assert_eq!(
        recv_text(&mut ws),
        delivery_text("beta", 1, "m-beta", "7"),
        "a topic of setup is delivered"
    );
}

#[test]
fn subscribe_single_and_batch_are_answered_in_the_form_asked() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"subscribe","topic":"t"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"type":"subscribed","topic":"t"}"#);
    send_text(&mut ws, r#"{"type":"subscribe","topics":["a","b","c"]}"#);
    assert_eq!(
        recv_text(&mut ws),
        r#"{"type":"subscribed","topics":["a","b","c"]}"#
    );
    send_text(&mut ws, r#"{"type":"subscribe","topics":["one"]}"#);
    assert_eq!(
        recv_text(&mut ws),
        r#"{"type":"subscribed","topics":["one"]}"#,
        "a batch of one is still answered as a batch"
    );
    // Subscribing again to a held topic is harmless and answered the same way.
    send_text(&mut ws, r#"{"type":"subscribe","topic":"t"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"type":"subscribed","topic":"t"}"#);
    // Every one of them delivers, exactly once each.
    let mut publisher = connect(gw.addr, "/ws");
    for t in ["t", "a", "b", "c", "one"] {
        publish(&mut publisher, t, &format!("id-{t}"), "null");
        assert_eq!(
            recv_text(&mut ws),
            delivery_text(t, 1, &format!("id-{t}"), "null")
        );
    }
    assert_ping_pong(&mut ws);
    let s = wait_stats(gw.addr, Duration::from_secs(2), "5 subscriptions", |s| {
        s["subscriptions"] == 5
    });
    assert_eq!(s["connections"], 2, "{s}");
}

#[test]
fn unsubscribe_single_and_batch_are_answered_in_the_form_asked() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    subscribe_many(&mut ws, &["t", "a", "b"]);
    send_text(&mut ws, r#"{"type":"unsubscribe","topic":"t"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"type":"unsubscribed","topic":"t"}"#);
    send_text(&mut ws, r#"{"type":"unsubscribe","topics":["a","b"]}"#);
    assert_eq!(
        recv_text(&mut ws),
        r#"{"type":"unsubscribed","topics":["a","b"]}"#
    );
    // Unsubscribing from a topic not held is answered too (idempotent).
    send_text(&mut ws, r#"{"type":"unsubscribe","topic":"never"}"#);
    assert_eq!(
        recv_text(&mut ws),
        r#"{"type":"unsubscribed","topic":"never"}"#
    );
    wait_stats(gw.addr, Duration::from_secs(2), "no subscriptions", |s| {
        s["subscriptions"] == 0 && s["topics"] == 0
    });
}

#[test]
fn publish_is_acked_with_seq_no_and_delivered_with_the_payload_byte_for_byte() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    let payload = r#"{"a": [1, 2 ,3]}"#;
    send_text(
        &mut publisher,
        &format!(r#"{{"type":"publish","topic":"t","messageId":"m1","payload":{payload}}}"#),
    );
    assert_eq!(
        recv_text(&mut publisher),
        r#"{"type":"ack","messageId":"m1","status":"ok","seqNo":1}"#
    );
    assert_eq!(
        recv_text(&mut sub),
        r#"{"type":"message","topic":"t","seqNo":1,"messageId":"m1","data":{"a": [1, 2 ,3]}}"#
    );
    // Odd but valid payloads: whitespace inside, escapes, unicode, big numbers, scalars.
    let payloads = [
        "\"caf\\u00e9 \\\"quoted\\\" é\"",
        "[ ]",
        "{ }",
        "-1.5e300",
        "123456789012345678901234567890",
        "true",
        "null",
        "{\"nested\" :\t{\"deep\":\n[{\"x\":\"\\n\"}]}}",
    ];
    for (i, p) in payloads.iter().enumerate() {
        let id = format!("m{}", i + 2);
        send_text(
            &mut publisher,
            &format!(r#"{{"type":"publish","topic":"t","messageId":"{id}","payload":{p}}}"#),
        );
        let seq = i as u64 + 2;
        assert_eq!(
            recv_text(&mut publisher),
            format!(r#"{{"type":"ack","messageId":"{id}","status":"ok","seqNo":{seq}}}"#)
        );
        assert_eq!(recv_text(&mut sub), delivery_text("t", seq, &id, p));
    }
    // seqNo is per topic: another topic starts at 1.
    assert_eq!(publish(&mut publisher, "other", "o1", "1"), 1);
    // Field order of the request does not matter, unknown fields are ignored.
    send_text(
        &mut publisher,
        r#"{"payload":{"z":0},"extra":[1],"messageId":"late","topic":"t","type":"publish"}"#,
    );
    assert_eq!(
        recv_text(&mut publisher),
        r#"{"type":"ack","messageId":"late","status":"ok","seqNo":10}"#
    );
    assert_eq!(
        recv_text(&mut sub),
        delivery_text("t", 10, "late", r#"{"z":0}"#)
    );
}

#[test]
fn publish_without_message_id_is_given_a_generated_one() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    let mut ids = Vec::new();
    for seq in 1..=3u64 {
        send_text(
            &mut publisher,
            r#"{"type":"publish","topic":"t","payload":1}"#,
        );
        let ack = recv_json(&mut publisher);
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["status"], "ok", "{ack}");
        assert_eq!(ack["seqNo"], seq, "{ack}");
        let id = ack["messageId"].as_str().expect("generated messageId");
        assert!(!id.is_empty());
        assert_eq!(recv_text(&mut sub), delivery_text("t", seq, id, "1"));
        ids.push(id.to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "generated ids are unique: {ids:?}");
}

#[test]
fn a_topic_with_quotes_and_unicode_is_escaped_in_every_answer() {
    let gw = start();
    let topic = "pr\"ic\\es.é/€";
    let mut sub = subscriber(gw.addr, topic);
    let mut publisher = connect(gw.addr, "/ws");
    assert_eq!(publish(&mut publisher, topic, "m\"1", "[1]"), 1);
    let text = recv_text(&mut sub);
    assert_eq!(text, delivery_text(topic, 1, "m\"1", "[1]"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["topic"], topic);
    assert_eq!(v["messageId"], "m\"1");
}

#[test]
fn application_ping_is_answered_with_pong() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"ping"}"#);
    assert_eq!(recv_text(&mut ws), r#"{"type":"pong"}"#);
    // Byte for byte on a raw socket: one unmasked FIN text frame.
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.send_text(r#"{"type":"ping"}"#);
    let f = raw.read_frame();
    let mut expect = vec![0x81, 15];
    expect.extend_from_slice(br#"{"type":"pong"}"#);
    assert_eq!(f.raw, expect);
}

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
fn ack_is_accepted_silently() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"ack","messageId":"m1"}"#);
    send_text(&mut ws, r#"{"type":"ack","topic":"t","seqNo":3}"#);
    send_text(
        &mut ws,
        r#"{"type":"ack","messageId":"m2","topic":"t","seqNo":4}"#,
    );
    assert_ping_pong(&mut ws);
}

#[test]
fn replay_is_refused_with_replay_unavailable_naming_the_topic() {
    // History is off by default: nothing is held, so a replay of published messages is refused.
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    for i in 1..=3 {
        assert_eq!(publish(&mut ws, "hist", &format!("h{i}"), "1"), i);
    }
    send_text(&mut ws, r#"{"type":"replay","topic":"hist","fromSeq":1}"#);
    let v = assert_error_text(&recv_text(&mut ws), "REPLAY_UNAVAILABLE");
    assert_eq!(v["topic"], "hist", "{v}");
    assert_ping_pong(&mut ws);
}

#[test]
fn resume_is_refused_with_session_expired() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(
        &mut ws,
        r#"{"type":"resume","sessionId":"s-1","lastSeqPerTopic":{"a":3}}"#,
    );
    assert_error_text(&recv_text(&mut ws), "SESSION_EXPIRED");
    assert_ping_pong(&mut ws);
}

#[test]
fn after_unsubscribe_no_more_deliveries_arrive() {
    let gw = start();
    let mut leaver = subscriber(gw.addr, "t");
    let mut stayer = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "t", "before", "1");
    assert_eq!(recv_text(&mut leaver), delivery_text("t", 1, "before", "1"));
    assert_eq!(recv_text(&mut stayer), delivery_text("t", 1, "before", "1"));
    send_text(&mut leaver, r#"{"type":"unsubscribe","topic":"t"}"#);
    assert_eq!(
        recv_text(&mut leaver),
        r#"{"type":"unsubscribed","topic":"t"}"#
    );
    for i in 0..5 {
        publish(&mut publisher, "t", &format!("after{i}"), "2");
        let m = recv_delivery(&mut stayer, "t");
        assert_eq!(m["messageId"], format!("after{i}"));
    }
    expect_silence(&mut leaver, Duration::from_millis(300));
    assert_ping_pong(&mut leaver);
}

#[test]
fn error_replies_keep_the_connection_open_and_usable() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    let cases = [
        "not json",
        "{\"type\":\"subscribe\",\"topic\":\"t\"",
        "[1,2]",
        "\"subscribe\"",
        "42",
        "{}",
        r#"{"type":"nope"}"#,
        r#"{"type":7}"#,
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","topic":5}"#,
        r#"{"type":"subscribe","topics":"a"}"#,
        r#"{"type":"subscribe","topics":[]}"#,
        r#"{"type":"unsubscribe"}"#,
        r#"{"type":"publish","topic":"t"}"#,
        r#"{"type":"publish","payload":1}"#,
        r#"{"type":"publish","topic":"t","payload":1,"messageId":7}"#,
        r#"{"type":"publish","topic":"t","payload":1,"messageId":""}"#,
        r#"{"type":"publish","topic":"","payload":1}"#,
        r#"{"type":"replay","topic":"t"}"#,
        r#"{"type":"resume"}"#,
    ];
    for c in cases {
        send_text(&mut ws, c);
        let text = recv_text(&mut ws);
        let v = assert_error_text(&text, "BAD_REQUEST");
        assert!(v["message"].as_str().unwrap().len() < 300, "{text}");
    }
    assert_ping_pong(&mut ws);
    subscribe(&mut ws, "still-works");
}

#[test]
fn seq_no_counts_publishes_to_a_topic_nobody_subscribes() {
    let gw = start();
    let mut publisher = connect(gw.addr, "/ws");
    for expect in 1..=3 {
        assert_eq!(
            publish(&mut publisher, "nobody", &format!("n{expect}"), "0"),
            expect
        );
    }
    let s = stats(gw.addr);
    assert_eq!(
        s["topics"], 0,
        "a topic without subscribers is not counted: {s}"
    );
    let mut sub = subscriber(gw.addr, "nobody");
    assert_eq!(publish(&mut publisher, "nobody", "n4", "0"), 4);
    assert_eq!(recv_text(&mut sub), delivery_text("nobody", 4, "n4", "0"));
}

#[test]
fn subscribe_with_from_seq_subscribes_then_says_replay_is_unavailable() {
    // fromSeq 5 on a topic whose last seqNo is 0 (e.g. after a restart): continuity cannot be
    // proven, the client is told so, and live delivery goes on.
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"subscribe","topic":"t","fromSeq":5}"#);
    assert_eq!(recv_text(&mut ws), r#"{"type":"subscribed","topic":"t"}"#);
    let v = assert_error_text(&recv_text(&mut ws), "REPLAY_UNAVAILABLE");
    assert_eq!(v["topic"], "t", "{v}");
    assert!(v["message"].as_str().unwrap().contains("ahead"), "{v}");
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "t", "live", "1");
    assert_eq!(recv_text(&mut ws), delivery_text("t", 1, "live", "1"));
}

#[test]
fn a_batch_naming_a_topic_twice_subscribes_it_once() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"subscribe","topics":["a","a"]}"#);
    let v = recv_json(&mut ws);
    assert_eq!(v["type"], "subscribed", "{v}");
    send_text(&mut ws, r#"{"type":"setup","topics":["a"]}"#);
    assert_eq!(recv_json(&mut ws)["type"], "ready");
    recv_json(&mut ws);
    wait_stats(gw.addr, Duration::from_secs(2), "one subscription", |s| {
        s["subscriptions"] == 1 && s["topics"] == 1
    });
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "a", "once", "1");
    assert_eq!(recv_text(&mut ws), delivery_text("a", 1, "once", "1"));
    expect_silence(&mut ws, Duration::from_millis(200));
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
fn http_publish_of_a_large_body_is_delivered_byte_for_byte() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "big");
    let body = format!("{{\"blob\": \"{}\"}}", "q".repeat(60_000));
    let r = http_post(gw.addr, "/publish/big", "", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["messageId"].as_str().unwrap().to_owned();
    assert!(recv_text(&mut sub) == delivery_text("big", 1, &id, &body));
}

#[test]
fn connections_over_max_conns_per_core_are_refused() {
    let gw = start_with(|c| c.max_conns_per_core = 2);
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut c = HttpConn::new(gw.addr);
        c.stream
            .write_all(upgrade_request("/ws", "13").as_bytes())
            .unwrap();
        match c.read_response_head_only() {
            Ok(r) => {
                assert_eq!(r.status, 101);
                open.push(c);
            }
            Err(_) => refused += 1,
        }
    }
    assert!(open.len() <= 4, "2 cores x 2: {} open", open.len());
    assert!(refused >= 8, "refused {refused}");
    drop(open);
    // Room again once they are gone.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut c = HttpConn::new(gw.addr);
        c.stream
            .write_all(upgrade_request("/ws", "13").as_bytes())
            .unwrap();
        if c.read_response_head_only().is_ok_and(|r| r.status == 101) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the others left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_repeated_message_id_is_answered_duplicate_and_not_delivered_again() {
    // PROTOCOL.md I2 and the `publish` row: a repeated `messageId` from the same identity is
    // answered `duplicate` (with the original's seqNo) and not delivered again.
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    assert_eq!(publish(&mut publisher, "t", "once", "1"), 1);
    assert_eq!(recv_text(&mut sub), delivery_text("t", 1, "once", "1"));
    send_text(
        &mut publisher,
        r#"{"type":"publish","topic":"t","messageId":"once","payload":1}"#,
    );
    assert_eq!(
        recv_text(&mut publisher),
        r#"{"type":"ack","messageId":"once","status":"duplicate","seqNo":1}"#
    );
    let r = http_post(gw.addr, "/publish/t", "Idempotency-Key: k1\r\n", b"2");
    assert_eq!(r.json()["status"], "ok");
    let r = http_post(gw.addr, "/publish/t", "Idempotency-Key: k1\r\n", b"2");
    assert_eq!(
        r.text(),
        r#"{"seqNo":2,"messageId":"k1","status":"duplicate"}"#
    );
    assert_eq!(recv_text(&mut sub), delivery_text("t", 2, "k1", "2"));
    expect_silence(&mut sub, Duration::from_millis(200));
    // Counted, and the window's size is visible.
    let s = stats(gw.addr);
    assert_eq!(s["duplicates"], 2, "{s}");
    assert_eq!(s["dedupEntries"], 2, "{s}");
    let m = http_get(gw.addr, "/metrics").text();
    assert!(m.contains("subsocket_duplicates_total{core="), "{m}");
    // The same id on another topic is a new message.
    assert_eq!(publish(&mut publisher, "other", "once", "3"), 1);
}

// ===== 2. /ws/sub/{topic} ====================================================================

#[test]
fn micro_socket_is_subscribed_at_upgrade_and_receives_only_its_topic() {
    let gw = start();
    let mut micro = connect(gw.addr, "/ws/sub/prices.btc");
    assert_eq!(
        recv_text(&mut micro),
        r#"{"type":"subscribed","topic":"prices.btc"}"#,
        "the first message"
    );
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "prices.eth", "e1", "1");
    publish(&mut publisher, "prices.btc", "b1", r#"{"px": 1}"#);
    assert_eq!(
        recv_text(&mut micro),
        delivery_text("prices.btc", 1, "b1", r#"{"px": 1}"#)
    );
    // The micro socket speaks the rest of the protocol (publish, ping) too.
    assert_eq!(publish(&mut micro, "prices.eth", "e2", "2"), 2);
    assert_ping_pong(&mut micro);
    let s = wait_stats(gw.addr, Duration::from_secs(2), "1 subscription", |s| {
        s["subscriptions"] == 1
    });
    assert_eq!(s["connections"], 2, "{s}");
}

#[test]
fn micro_socket_topic_may_be_percent_encoded() {
    let gw = start();
    let mut micro = connect(gw.addr, "/ws/sub/chat%20room%2F%C3%A9");
    let topic = "chat room/é";
    assert_eq!(
        recv_text(&mut micro),
        format!(r#"{{"type":"subscribed","topic":{}}}"#, Value::from(topic))
    );
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, topic, "m", "\"hi\"");
    assert_eq!(
        recv_text(&mut micro),
        delivery_text(topic, 1, "m", "\"hi\"")
    );
}

#[test]
fn micro_socket_refuses_other_topics_with_single_topic() {
    let gw = start();
    let mut micro = connect(gw.addr, "/ws/sub/mine");
    recv_text(&mut micro);
    for req in [
        r#"{"type":"subscribe","topic":"other"}"#,
        r#"{"type":"subscribe","topics":["mine","other"]}"#,
        r#"{"type":"unsubscribe","topic":"other"}"#,
        r#"{"type":"setup","topics":["other"]}"#,
    ] {
        send_text(&mut micro, req);
        let mut v = recv_json(&mut micro);
        if v["type"] == "ready" {
            v = recv_json(&mut micro); // setup answers ready first, then the refusal
        }
        assert_error(&v, "SINGLE_TOPIC");
        assert_eq!(v["topic"], "other", "the refused topic is named: {v}");
    }
    // Its own topic is fine, and still delivered after the refusals.
    send_text(&mut micro, r#"{"type":"subscribe","topic":"mine"}"#);
    assert_eq!(
        recv_text(&mut micro),
        r#"{"type":"subscribed","topic":"mine"}"#
    );
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "other", "o", "0");
    publish(&mut publisher, "mine", "m", "0");
    assert_eq!(recv_text(&mut micro), delivery_text("mine", 1, "m", "0"));
}

#[test]
fn micro_socket_with_a_too_long_topic_is_refused_400_at_upgrade() {
    let gw = start_with(|c| c.max_topic_bytes = 16);
    let long = "x".repeat(17);
    let r = http(
        gw.addr,
        upgrade_request(&format!("/ws/sub/{long}"), "13").as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "BAD_REQUEST");
    // Invalid UTF-8 after decoding and control characters are refused too.
    for bad in ["/ws/sub/%FF", "/ws/sub/a%0Ab", "/ws/sub/"] {
        let r = http(gw.addr, upgrade_request(bad, "13").as_bytes());
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    // 16 bytes is fine.
    let mut ok = RawWs::connect(gw.addr, &format!("/ws/sub/{}", "x".repeat(16)));
    assert!(ok.recv_text().contains("subscribed"));
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

// ===== 3. HTTP on the same port ==============================================================

#[test]
fn healthz_answers_200() {
    let gw = start();
    let r = http_get(gw.addr, "/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn stats_counts_connections_subscriptions_and_each_topic_once() {
    let gw = start();
    let s = stats(gw.addr);
    for k in ["connections", "topics", "subscriptions"] {
        assert_eq!(s[k], 0, "{k} on an idle gateway: {s}");
    }
    let cores = s["cores"].as_array().expect("cores array");
    assert_eq!(cores.len(), 2, "{s}");
    // "shared" is subscribed on both cores, "solo" by one connection.
    let mut subs = subscribers_on_every_core(gw.addr, "shared", 2);
    let mut solo = connect(gw.addr, "/ws");
    subscribe_many(&mut solo, &["solo", "shared"]);
    let n = subs.len() as u64 + 1;
    let s = wait_stats(
        gw.addr,
        Duration::from_secs(2),
        "counts after subscribes",
        |s| s["connections"] == n && s["subscriptions"] == n + 1 && s["topics"] == 2,
    );
    let cores = s["cores"].as_array().unwrap();
    let sum = |k: &str| -> u64 { cores.iter().map(|c| c[k].as_u64().unwrap()).sum() };
    assert_eq!(sum("connections"), n, "{s}");
    assert_eq!(sum("subscriptions"), n + 1, "{s}");
    let local_topics = sum("topics");
    assert!(
        (3..=4).contains(&local_topics),
        "per core: shared on both + solo on one: {s}"
    );
    let core_ids: Vec<u64> = cores.iter().map(|c| c["core"].as_u64().unwrap()).collect();
    let mut expect: Vec<u64> = gw.gateway().cores().iter().map(|&c| c as u64).collect();
    expect.sort();
    assert_eq!(core_ids, expect);
    // Unsubscribing "shared" everywhere but on one core keeps it counted once.
    for ws in subs.iter_mut() {
        send_text(ws, r#"{"type":"unsubscribe","topic":"shared"}"#);
        recv_text(ws);
    }
    wait_stats(
        gw.addr,
        Duration::from_secs(2),
        "shared only via solo",
        |s| s["subscriptions"] == 2 && s["topics"] == 2,
    );
    send_text(
        &mut solo,
        r#"{"type":"unsubscribe","topics":["solo","shared"]}"#,
    );
    recv_text(&mut solo);
    wait_stats(gw.addr, Duration::from_secs(2), "no topics", |s| {
        s["subscriptions"] == 0 && s["topics"] == 0 && s["connections"] == n
    });
}

#[test]
fn metrics_exports_per_core_prometheus_counters() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "t", "m", "1");
    recv_delivery(&mut sub, "t");
    let r = http_get(gw.addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    for core in gw.gateway().cores() {
        for series in [
            "subsocket_deliveries_total",
            "subsocket_slow_consumer_disconnects_total",
        ] {
            let prefix = format!("{series}{{core=\"{core}\"}} ");
            assert!(
                text.lines().any(|l| l.starts_with(&prefix)),
                "missing {prefix}in:\n{text}"
            );
        }
    }
    let delivered: u64 = text
        .lines()
        .filter(|l| l.starts_with("subsocket_deliveries_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(delivered, 1, "one delivery to one subscriber:\n{text}");
    // Every sample line is `name{labels} value` or `name value` with a numeric value.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let v = l.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "bad sample line {l:?}");
    }
}

#[test]
fn demo_publish_publishes_the_query_pairs_as_an_object() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let r = http_get(gw.addr, "/demo/publish/t?k=v&x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.text();
    let v = r.json();
    assert_eq!(v["seqNo"], 1, "{body}");
    assert_eq!(v["status"], "ok", "{body}");
    let id = v["messageId"].as_str().expect("messageId");
    assert!(!id.is_empty());
    assert_eq!(
        body,
        format!(r#"{{"seqNo":1,"messageId":"{id}","status":"ok"}}"#)
    );
    assert_eq!(
        recv_text(&mut sub),
        delivery_text("t", 1, id, r#"{"k":"v","x":"1"}"#)
    );
    // Percent- and plus-decoding of the pairs.
    let r = http_get(gw.addr, "/demo/publish/t?msg=hello+world%21");
    assert_eq!(r.status, 200);
    let m = recv_delivery(&mut sub, "t");
    assert_eq!(m["data"], json!({"msg":"hello world!"}));
    assert_eq!(m["seqNo"], 2);
}

#[test]
fn demo_publish_is_404_when_turned_off() {
    let gw = start_with(|c| c.demo_publish = false);
    let mut sub = subscriber(gw.addr, "t");
    let r = http_get(gw.addr, "/demo/publish/t?k=v");
    assert_eq!(r.status, 404, "{}", r.text());
    expect_silence(&mut sub, Duration::from_millis(200));
}

#[test]
fn http_publish_delivers_the_body_byte_for_byte() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let r = http_post(gw.addr, "/publish/t", "", br#"{"p": 1}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["seqNo"], 1);
    assert_eq!(v["status"], "ok");
    let id = v["messageId"].as_str().unwrap();
    assert_eq!(
        recv_text(&mut sub),
        delivery_text("t", 1, id, r#"{"p": 1}"#)
    );
    // Whitespace around the value is not part of it.
    let r = http_post(gw.addr, "/publish/t", "", b" \r\n [1, 2]\n");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["messageId"].as_str().unwrap().to_owned();
    assert_eq!(recv_text(&mut sub), delivery_text("t", 2, &id, "[1, 2]"));
    // A percent-encoded topic.
    let mut sub2 = subscriber(gw.addr, "a b");
    let r = http_post(gw.addr, "/publish/a%20b", "", b"3");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(recv_delivery(&mut sub2, "a b")["data"], 3);
}

#[test]
fn idempotency_key_becomes_the_message_id() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let r = http_post(gw.addr, "/publish/t", "Idempotency-Key: abc\r\n", b"{}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), r#"{"seqNo":1,"messageId":"abc","status":"ok"}"#);
    assert_eq!(recv_text(&mut sub), delivery_text("t", 1, "abc", "{}"));
}

#[test]
fn http_publish_with_an_invalid_json_body_is_400_and_not_delivered() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    for body in [&b"{not json"[..], b"", b"1 2", b"{\"a\":1}}"] {
        let r = http_post(gw.addr, "/publish/t", "", body);
        assert_eq!(r.status, 400, "{:?}: {}", body, r.text());
        assert_eq!(r.json()["error"], "BAD_REQUEST");
    }
    let r = http_post(gw.addr, "/publish/t", "", b"true");
    assert_eq!(r.status, 200);
    assert_eq!(
        recv_delivery(&mut sub, "t")["seqNo"],
        1,
        "refused bodies used no seqNo"
    );
}

#[test]
fn http_publish_over_max_message_bytes_is_413() {
    let gw = start_with(|c| c.max_message_bytes = 1024);
    let mut sub = subscriber(gw.addr, "t");
    let body = format!("\"{}\"", "y".repeat(1500));
    let r = http_post(gw.addr, "/publish/t", "", body.as_bytes());
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"], "TOO_LARGE");
    expect_silence(&mut sub, Duration::from_millis(200));
    // Exactly at the limit is fine.
    let body = format!("\"{}\"", "y".repeat(1022));
    let r = http_post(gw.addr, "/publish/t", "", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(recv_delivery(&mut sub, "t")["seqNo"], 1);
}

#[test]
fn get_on_publish_is_405() {
    let gw = start();
    let r = http_get(gw.addr, "/publish/t");
    assert_eq!(r.status, 405, "{}", r.text());
    let r = http_post(gw.addr, "/stats", "", b"{}");
    assert_eq!(r.status, 405, "{}", r.text());
}

#[test]
fn unknown_http_path_is_404() {
    let gw = start();
    for p in ["/nope", "/publish", "/statsx", "/demo/publishx/t"] {
        let r = http_get(gw.addr, p);
        assert_eq!(r.status, 404, "{p}: {}", r.text());
        assert_eq!(r.json()["error"], "NOT_FOUND", "{p}");
    }
}

#[test]
fn keep_alive_answers_several_requests_on_one_connection() {
    let gw = start();
    let mut sub = subscriber(gw.addr, "t");
    let mut c = HttpConn::new(gw.addr);
    let r = c.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None, "keep-alive is the default");
    let r = c.request(&post_request("/publish/t", "", b"[1]"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.json()["connections"].is_u64());
    // Two requests in one write (pipelined) are both answered, in order.
    let mut two = post_request("/publish/t", "", b"[2]");
    two.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = c.request(&two);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["seqNo"], 2);
    let r = c.read_response().expect("second pipelined answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)), "Connection: close");
    assert_eq!(recv_delivery(&mut sub, "t")["data"], json!([1]));
    assert_eq!(recv_delivery(&mut sub, "t")["data"], json!([2]));
}

#[test]
fn docs_page_is_html() {
    let gw = start();
    let r = http_get(gw.addr, "/docs");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    let body = r.text().to_ascii_lowercase();
    assert!(body.contains("<html"), "an HTML page");
    assert!(body.contains("websocket"), "the playground");
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
fn head_healthz_answers_without_a_body() {
    // RFC 9110 9.3.2: a response to HEAD carries no content. Bytes after the head would be read
    // by a keep-alive client as the start of the next response.
    let gw = start();
    let mut c = HttpConn::new(gw.addr);
    c.stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut chunk = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "HEAD answer not closed");
        match std::io::Read::read(&mut c.stream, &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&all).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let head_end = text.find("\r\n\r\n").expect("a complete head") + 4;
    assert_eq!(
        &text[head_end..],
        "",
        "the HEAD response carries a body: {text:?}"
    );
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
        None,
        "no extension is negotiated"
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

// ===== 4. encode once: identical bytes for every subscriber ==================================

#[test]
fn every_subscriber_receives_byte_identical_delivery_frames() {
    let gw = start_with(|c| c.max_message_bytes = 256 * 1024);
    let mut subs = raw_subscribers_on_every_core(gw.addr, "same", 6);
    let mut publisher = connect(gw.addr, "/ws");
    let payloads = [
        "1".to_string(),
        r#"{"a": [1, 2 ,3]}"#.to_string(),
        format!("\"{}\"", "m".repeat(300)),    // 16-bit length
        format!("\"{}\"", "L".repeat(70_000)), // 64-bit length
        "[\"é\", \"\\u0000\"]".to_string(),
    ];
    for (i, p) in payloads.iter().enumerate() {
        let id = format!("id-{i}");
        let seq = publish(&mut publisher, "same", &id, p);
        assert_eq!(seq, i as u64 + 1);
        let mut expect = Vec::new();
        frame::write_server_frame(
            &mut expect,
            OpCode::Text,
            delivery_text("same", seq, &id, p).as_bytes(),
        );
        for (n, s) in subs.iter_mut().enumerate() {
            let f = s.read_frame();
            assert!(
                f.raw == expect,
                "subscriber {n}, publish {i}: frame differs (got {} bytes, want {}; head {:02x?})",
                f.raw.len(),
                expect.len(),
                &f.raw[..f.raw.len().min(12)]
            );
        }
    }
}

// ===== 7. bad input never disturbs a bystander ===============================================

/// A subscriber of `bystander` and a publisher, set up before the bad input.
struct Bystander {
    sub: Ws,
    publisher: Ws,
    seq: u64,
}

impl Bystander {
    fn new(gw: &TestGateway) -> Bystander {
        let sub = subscriber(gw.addr, "bystander");
        let publisher = connect(gw.addr, "/ws");
        Bystander {
            sub,
            publisher,
            seq: 0,
        }
    }

    /// A publish still reaches the bystander.
    fn still_served(&mut self) {
        self.seq += 1;
        let id = format!("after-{}", self.seq);
        assert_eq!(
            publish(&mut self.publisher, "bystander", &id, "{}"),
            self.seq
        );
        assert_eq!(
            recv_text(&mut self.sub),
            delivery_text("bystander", self.seq, &id, "{}")
        );
    }
}

/// Sends `bad` on a fresh `/ws` connection and expects a BAD_REQUEST error; the connection
/// stays open and usable.
fn bad_request_keeps_connection(bad: &str) {
    let gw = start();
    let mut by = Bystander::new(&gw);
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, bad);
    assert_error_text(&recv_text(&mut ws), "BAD_REQUEST");
    assert_ping_pong(&mut ws);
    subscribe(&mut ws, "x");
    by.still_served();
}

#[test]
fn malformed_json_is_bad_request_and_the_connection_stays_open() {
    bad_request_keeps_connection(r#"{"type":"subscribe","topic":"#);
}

#[test]
fn non_object_json_is_bad_request_and_the_connection_stays_open() {
    bad_request_keeps_connection(r#"["subscribe","t"]"#);
}

#[test]
fn unknown_type_is_bad_request_and_the_connection_stays_open() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"frobnicate","topic":"t"}"#);
    let v = assert_error_text(&recv_text(&mut ws), "BAD_REQUEST");
    assert!(
        v["message"].as_str().unwrap().contains("frobnicate"),
        "names the type: {v}"
    );
    drop(gw);
    bad_request_keeps_connection(r#"{"type":"frobnicate"}"#);
}

#[test]
fn missing_topic_is_bad_request_and_the_connection_stays_open() {
    bad_request_keeps_connection(r#"{"type":"subscribe"}"#);
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    send_text(
        &mut ws,
        r#"{"type":"publish","messageId":"m9","payload":1}"#,
    );
    let v = assert_error_text(&recv_text(&mut ws), "BAD_REQUEST");
    assert_eq!(v["messageId"], "m9", "names the request: {v}");
}

#[test]
fn wrong_field_type_is_bad_request_and_the_connection_stays_open() {
    bad_request_keeps_connection(r#"{"type":"subscribe","topic":["t"]}"#);
    bad_request_keeps_connection(r#"{"type":"publish","topic":"t","payload":1,"qos":"1"}"#);
}

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

/// Sends `bytes` on a fresh raw `/ws` connection and expects a close frame with `code`, then the
/// end of the TCP connection; a bystander is still served.
fn violation_closes_with(
    tweak: impl FnOnce(&mut subsocket::config::Config),
    bytes: &[u8],
    code: u16,
) {
    let gw = start_with(tweak);
    let mut by = Bystander::new(&gw);
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.send_raw(bytes);
    match raw.ending_within(Duration::from_secs(3)) {
        Ending::Close(c) => assert_eq!(c, Some(code), "close code"),
        other => panic!("expected close {code}, got {other:?}"),
    }
    raw.assert_tcp_ends();
    by.still_served();
    wait_stats(
        gw.addr,
        Duration::from_secs(2),
        "the closed one is gone",
        |s| s["connections"] == 2,
    );
}

fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_client_frame(&mut out, opcode, payload, [1, 2, 3, 4], true);
    out
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
fn message_over_max_message_bytes_is_closed_with_1009() {
    let text = format!(
        r#"{{"type":"publish","topic":"t","payload":"{}"}}"#,
        "z".repeat(2000)
    );
    violation_closes_with(
        |c| c.max_message_bytes = 1024,
        &client_frame(OpCode::Text, text.as_bytes()),
        1009,
    );
}

#[test]
fn fragmented_message_over_the_limit_is_closed_with_1009() {
    let mut bytes = Vec::new();
    for i in 0..3 {
        let op = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        frame::write_client_frame(&mut bytes, op, &[b' '; 500], [9, 9, 9, 9], i == 2);
    }
    violation_closes_with(|c| c.max_message_bytes = 1024, &bytes, 1009);
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
fn topic_over_max_topic_bytes_is_bad_request() {
    let gw = start_with(|c| c.max_topic_bytes = 32);
    let mut by = Bystander::new(&gw);
    let mut ws = connect(gw.addr, "/ws");
    let long = "t".repeat(33);
    send_json(&mut ws, &json!({"type":"subscribe","topic":long}));
    assert_error_text(&recv_text(&mut ws), "BAD_REQUEST");
    send_json(&mut ws, &json!({"type":"subscribe","topics":["ok", long]}));
    assert_error_text(&recv_text(&mut ws), "BAD_REQUEST");
    send_json(
        &mut ws,
        &json!({"type":"publish","topic":long,"messageId":"p1","payload":1}),
    );
    let v = assert_error_text(&recv_text(&mut ws), "BAD_REQUEST");
    assert_eq!(v["messageId"], "p1", "{v}");
    let r = http_post(gw.addr, &format!("/publish/{long}"), "", b"1");
    assert_eq!(r.status, 400, "{}", r.text());
    // All or nothing: "ok" of the refused batch was not subscribed.
    wait_stats(gw.addr, Duration::from_secs(2), "only the bystander", |s| {
        s["subscriptions"] == 1
    });
    subscribe(&mut ws, &"t".repeat(32));
    by.still_served();
}

#[test]
fn more_topics_in_one_request_than_allowed_is_limit_exceeded() {
    let gw = start_with(|c| c.max_topics_per_request = 3);
    let mut by = Bystander::new(&gw);
    let mut ws = connect(gw.addr, "/ws");
    send_text(
        &mut ws,
        r#"{"type":"subscribe","topics":["a","b","c","d"]}"#,
    );
    assert_error_text(&recv_text(&mut ws), "LIMIT_EXCEEDED");
    send_text(
        &mut ws,
        r#"{"type":"unsubscribe","topics":["a","b","c","d"]}"#,
    );
    assert_error_text(&recv_text(&mut ws), "LIMIT_EXCEEDED");
    send_text(&mut ws, r#"{"type":"setup","topics":["a","b","c","d"]}"#);
    assert_eq!(recv_json(&mut ws)["type"], "ready");
    assert_error_text(&recv_text(&mut ws), "LIMIT_EXCEEDED");
    subscribe_many(&mut ws, &["a", "b", "c"]);
    by.still_served();
}

#[test]
fn exceeding_max_topics_per_conn_is_limit_exceeded() {
    let gw = start_with(|c| c.max_topics_per_conn = 3);
    let mut by = Bystander::new(&gw);
    let mut ws = connect(gw.addr, "/ws");
    subscribe_many(&mut ws, &["a", "b"]);
    send_text(&mut ws, r#"{"type":"subscribe","topics":["c","d"]}"#);
    assert_error_text(&recv_text(&mut ws), "LIMIT_EXCEEDED");
    subscribe(&mut ws, "c");
    send_text(&mut ws, r#"{"type":"subscribe","topic":"d"}"#);
    let v = assert_error_text(&recv_text(&mut ws), "LIMIT_EXCEEDED");
    assert_eq!(v["topic"], "d", "{v}");
    // Re-subscribing a held topic is not a new one.
    subscribe(&mut ws, "a");
    // After an unsubscribe there is room again.
    send_text(&mut ws, r#"{"type":"unsubscribe","topic":"a"}"#);
    recv_text(&mut ws);
    subscribe(&mut ws, "d");
    by.still_served();
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
fn oversized_request_head_is_431() {
    let gw = start();
    let mut by = Bystander::new(&gw);
    // One long header: the head (about 9000 bytes) is over the 8 KiB default.
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    let mut c = HttpConn::new(gw.addr);
    let r = c.request(req.as_bytes());
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(c.closed_within(Duration::from_secs(2)));
    // Too many headers is the same.
    let mut req = String::from("GET /stats HTTP/1.1\r\n");
    for i in 0..100 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let r = http(gw.addr, req.as_bytes());
    assert_eq!(r.status, 431, "{}", r.text());
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

// ===== 9. heartbeats ========================================================================

#[test]
fn a_silent_client_is_pinged_then_closed_for_idleness() {
    let gw = start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 500;
    });
    let t0 = Instant::now();
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let mut pings = 0;
    let ending = loop {
        let left = Duration::from_millis(2500).saturating_sub(t0.elapsed());
        match raw.read_frame_within(left) {
            Ok(f) if f.opcode == OpCode::Ping as u8 => {
                assert_eq!(f.raw.len(), 2, "an empty ping: {f:?}");
                pings += 1;
            }
            Ok(f) if f.opcode == OpCode::Close as u8 => break Ending::Close(f.close_code()),
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(e) => break e,
        }
    };
    let took = t0.elapsed();
    assert!(
        matches!(ending, Ending::Close(Some(1008)) | Ending::Eof),
        "closed for idleness, got {ending:?} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(450),
        "not before the idle timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(pings >= 1, "pinged before being closed");
    raw.assert_tcp_ends();
    let s = wait_stats(gw.addr, Duration::from_secs(2), "closed", |s| {
        s["connections"] == 0
    });
    assert!(s["idleCloses"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn first_pings_of_a_connection_burst_are_spread_over_the_interval() {
    // 2 s interval, 1 s sweeps: without the spread every connection of a burst is first pinged
    // in the same sweep (at ~2 s); with it, some in the first sweep and some later.
    let gw = start_with(|c| {
        c.cores = subsocket::config::Cores::Count(1);
        c.ping_interval_ms = 2_000;
        c.idle_timeout_ms = 10_000;
    });
    let t0 = Instant::now();
    let mut conns: Vec<RawWs> = (0..16).map(|_| RawWs::connect(gw.addr, "/ws")).collect();
    let mut firsts: Vec<Option<Duration>> = vec![None; conns.len()];
    while firsts.iter().any(Option::is_none) {
        assert!(
            t0.elapsed() < Duration::from_millis(3_500),
            "no ping: {firsts:?}"
        );
        for (raw, first) in conns.iter_mut().zip(firsts.iter_mut()) {
            if first.is_some() {
                continue;
            }
            if let Ok(f) = raw.read_frame_within(Duration::from_millis(5)) {
                assert_eq!(f.opcode, OpCode::Ping as u8, "{f:?}");
                *first = Some(t0.elapsed());
            }
        }
    }
    let firsts: Vec<Duration> = firsts.into_iter().flatten().collect();
    let early = firsts
        .iter()
        .filter(|t| **t < Duration::from_millis(1_500))
        .count();
    assert!(
        early > 0 && early < firsts.len(),
        "first pings all in one sweep: {firsts:?}"
    );
}

#[test]
fn a_client_that_answers_pings_stays_open() {
    let gw = start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 500;
    });
    let mut ws = connect(gw.addr, "/ws");
    let mut raw_pings = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        // tungstenite answers each ping on its next read.
        match ws.read() {
            Ok(tungstenite::Message::Ping(_)) => raw_pings += 1,
            Ok(m) => panic!("unexpected {m:?} after {:?}", t0.elapsed()),
            Err(e) => panic!("closed after {:?}: {e}", t0.elapsed()),
        }
    }
    assert!(raw_pings >= 5, "pinged every ~100 ms, got {raw_pings}");
    assert_ping_pong(&mut ws);
    // A client that sends messages (not pongs) stays open too.
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1200) {
        raw.send_text(r#"{"type":"ping"}"#);
        assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
        std::thread::sleep(Duration::from_millis(150));
    }
}

// ===== 10. graceful shutdown ================================================================

#[test]
fn shutdown_sends_1001_to_every_client_and_join_returns_within_the_grace_period() {
    let tg = start_with(|c| c.shutdown_grace_ms = 2_000);
    let addr = tg.addr;
    let mut raws = raw_subscribers_on_every_core(addr, "t", 4);
    let mut ws = subscriber(addr, "t");
    let gw = tg.take();
    let t0 = Instant::now();
    gw.shutdown();
    for (i, raw) in raws.iter_mut().enumerate() {
        match raw.ending_within(Duration::from_secs(3)) {
            Ending::Close(code) => assert_eq!(code, Some(1001), "client {i}"),
            other => panic!("client {i}: expected close 1001, got {other:?}"),
        }
        raw.assert_tcp_ends();
    }
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("tungstenite client: expected close 1001, got {other:?}"),
    }
    let joined = within(Duration::from_secs(5), "join", move || gw.join());
    let took = t0.elapsed();
    assert_eq!(joined, Ok(()));
    assert!(took < Duration::from_millis(2_500), "join took {took:?}");
    // New connections are refused (or end at once without an upgrade).
    match std::net::TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut s) => {
            let _ = s.write_all(upgrade_request("/ws", "13").as_bytes());
            assert!(
                socket_ends_within(&mut s, Duration::from_secs(2)),
                "a connection after shutdown is not served"
            );
        }
    }
}

#[test]
fn shutdown_of_an_idle_gateway_is_quick() {
    let tg = start();
    let gw = tg.take();
    let t0 = Instant::now();
    gw.shutdown();
    let joined = within(Duration::from_secs(5), "join", move || gw.join());
    assert_eq!(joined, Ok(()));
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn shutdown_with_a_client_that_does_not_read_still_returns_within_the_grace_period() {
    let tg = start_with(|c| {
        c.shutdown_grace_ms = 1_000;
        c.max_backlog_bytes = 256 * 1024;
        c.socket_send_buffer_bytes = 8 * 1024;
    });
    let addr = tg.addr;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4 * 1024).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut stuck = RawWs::upgrade(sock.into(), "/ws");
    stuck.subscribe("t");
    let mut publisher = connect(addr, "/ws");
    let pad = "x".repeat(1000);
    for i in 0..100 {
        publish(&mut publisher, "t", &format!("m{i}"), &format!("\"{pad}\""));
    }
    wait_stats(addr, Duration::from_secs(2), "a backlog", |s| {
        s["backlogBytes"].as_u64().unwrap() > 32 * 1024
    });
    let gw = tg.take();
    let t0 = Instant::now();
    gw.shutdown();
    let joined = within(Duration::from_secs(5), "join", move || gw.join());
    assert_eq!(joined, Ok(()));
    assert!(
        t0.elapsed() < Duration::from_millis(2_000),
        "join took {:?}",
        t0.elapsed()
    );
    // The stuck client's socket ends (it may or may not have got the close frame).
    let ending = stuck.ending_within(Duration::from_secs(3));
    assert!(
        matches!(ending, Ending::Close(_) | Ending::Eof | Ending::Reset(_)),
        "{ending:?}"
    );
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

// ===== property: any JSON payload passes through byte for byte ==============================

#[test]
fn any_json_payload_is_delivered_byte_for_byte() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PtConfig, TestRunner};

    let gw = start_with(|c| c.max_message_bytes = 1024 * 1024);
    let sub = subscriber(gw.addr, "p");
    let publisher = connect(gw.addr, "/ws");
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let mut runner = TestRunner::new(PtConfig {
        cases: 64,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let state = std::cell::RefCell::new((sub, publisher, 0u64));
    runner
        .run(&(value, any::<bool>()), |(v, pretty)| {
            let text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                serde_json::to_string(&v).unwrap()
            };
            let (sub, publisher, seq) = &mut *state.borrow_mut();
            *seq += 1;
            let id = format!("p{seq}");
            let got_seq = publish(publisher, "p", &id, &text);
            prop_assert_eq!(got_seq, *seq);
            let delivered = recv_text(sub);
            prop_assert_eq!(delivered, delivery_text("p", *seq, &id, &text));
            Ok(())
        })
        .unwrap();
}

// ===== I5: latency objectives ================================================================

#[test]
fn publish_to_write_latency_is_measured_and_objective_breaches_are_counted() {
    // An objective no gateway can meet (p50 under 1 µs) must be counted as breached once a
    // one-second window with deliveries ends; the histogram counts every delivery written.
    let gw = start_with(|c| {
        c.latency_objectives_us = subsocket::metrics::LatencyObjectives {
            p50: Some(1),
            p95: None,
            p99: Some(60_000_000),
        };
    });
    let mut subs: Vec<_> = (0..4).map(|_| subscriber(gw.addr, "lat")).collect();
    let mut publisher = connect(gw.addr, "/ws");
    for i in 1..=5u64 {
        assert_eq!(publish(&mut publisher, "lat", &format!("l{i}"), "0"), i);
    }
    for s in &mut subs {
        for i in 1..=5u64 {
            assert_eq!(recv_text(s), delivery_text("lat", i, &format!("l{i}"), "0"));
        }
    }
    let s = wait_stats(
        gw.addr,
        Duration::from_secs(5),
        "a breach of the p50 objective",
        |s| s["latencyUs"]["breaches"]["p50"].as_u64().unwrap_or(0) >= 1,
    );
    assert_eq!(s["latencyUs"]["count"], 20, "one sample per delivery: {s}");
    assert_eq!(s["latencyUs"]["breaches"]["p99"], 0, "{s}");
    assert_eq!(s["latencyUs"]["objectives"]["p50"], 1, "{s}");
    assert!(s["latencyUs"]["p99"].as_u64().unwrap() < 5_000_000, "{s}");
    let m = http_get(gw.addr, "/metrics").text();
    assert!(
        m.contains("subsocket_delivery_latency_seconds_count{} 20"),
        "{m}"
    );
    assert!(
        m.contains("subsocket_latency_objective_breaches_total{core="),
        "{m}"
    );
}

// ===== I6: history and replay ================================================================

fn start_with_history(max_messages: usize) -> TestGateway {
    start_with(|c| {
        c.history.rules = vec![subsocket::history::HistoryRule {
            pattern: "*".into(),
            max_messages: Some(max_messages),
            max_bytes: None,
            max_age_ms: None,
        }];
    })
}

#[test]
fn replay_sends_the_held_messages_in_order_and_names_the_oldest_when_too_old() {
    let gw = start_with_history(3);
    let mut publisher = connect(gw.addr, "/ws");
    for i in 1..=5u64 {
        assert_eq!(
            publish(&mut publisher, "h", &format!("m{i}"), &i.to_string()),
            i
        );
    }
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"replay","topic":"h","fromSeq":3}"#);
    for i in 3..=5u64 {
        assert_eq!(
            recv_text(&mut ws),
            delivery_text("h", i, &format!("m{i}"), &i.to_string())
        );
    }
    // Only the last 3 are held: from 2 is unavailable, and the error names the oldest held.
    send_text(&mut ws, r#"{"type":"replay","topic":"h","fromSeq":2}"#);
    let v = assert_error_text(&recv_text(&mut ws), "REPLAY_UNAVAILABLE");
    assert_eq!(v["topic"], "h");
    assert!(
        v["message"].as_str().unwrap().contains("oldest held is 3"),
        "{v}"
    );
    // Not subscribed: a replay does not subscribe.
    publish(&mut publisher, "h", "m6", "6");
    expect_silence(&mut ws, Duration::from_millis(200));
}

#[test]
fn subscribe_with_from_seq_replays_then_continues_live_without_gap_or_duplicate() {
    // A publisher keeps publishing while subscribers join with fromSeq 1: each must see exactly
    // 1..=N in order, whichever core it and the topic's owner are on.
    let gw = start_with_history(10_000);
    let addr = gw.addr;
    const N: u64 = 400;
    let publisher = std::thread::spawn(move || {
        let mut p = connect(addr, "/ws");
        for i in 1..=N {
            send_text(
                &mut p,
                &format!(r#"{{"type":"publish","topic":"seam","messageId":"s{i}","payload":{i}}}"#),
            );
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for _ in 1..=N {
            recv_json(&mut p);
        }
    });
    std::thread::sleep(Duration::from_millis(10));
    let mut subs: Vec<Ws> = (0..6).map(|_| connect(addr, "/ws")).collect();
    for s in &mut subs {
        send_text(s, r#"{"type":"subscribe","topic":"seam","fromSeq":1}"#);
        assert_eq!(recv_text(s), r#"{"type":"subscribed","topic":"seam"}"#);
    }
    publisher.join().unwrap();
    for s in &mut subs {
        for i in 1..=N {
            let v = recv_json(s);
            assert_eq!(v["type"], "message", "{v}");
            assert_eq!(v["seqNo"], i, "gap or duplicate at the seam: {v}");
        }
        expect_silence(s, Duration::from_millis(100));
    }
}
