//! The configured size and count limits and what crossing each one answers: `max_conns_per_core`
//! (refused at upgrade), `max_topic_bytes` (`BAD_REQUEST`, 400 at upgrade), `max_topics_per_request`
//! and `max_topics_per_conn` (`LIMIT_EXCEEDED`), `max_message_bytes` (close 1009, HTTP 413) and the
//! request head size (431). Nobody else is disturbed, and exactly at a limit is fine.
//!
//! Each test starts its own 2-core gateway on an ephemeral port. The subscription caps and the
//! accept-rate limit are in `tests/admission.rs`.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use subsocket::ws::frame::{self, OpCode};

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
