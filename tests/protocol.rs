//! The Micro Socket protocol's messages over `/ws` and `/ws/sub/{topic}` (PROTOCOL.md): `setup`,
//! `subscribe`/`unsubscribe` in single and batch form, `publish` and its `ack` (seqNo, generated
//! ids, duplicates), application `ping`, client `ack`, and the `BAD_REQUEST`/`SINGLE_TOPIC`
//! answers that leave the connection open.
//!
//! Each test starts its own 2-core gateway on an ephemeral port. Next to read: `tests/replay.rs`
//! (replay, `fromSeq`, resume), `tests/frames.rs` (the WebSocket frames under these messages),
//! `tests/limits.rs` (the size and count limits).

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

// ===== 1. the protocol over /ws =============================================================

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

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

// ===== 2. /ws/sub/{topic} ===================================================================

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

// ===== 7. bad input never disturbs a bystander ==============================================

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
