//! Latest value on subscribe (issue 16, part 3; an extension): `subscribe` with `"latest":true`,
//! `/ws/sub/{topic}?latest=1` and `/sse…?latest=1` send the topic's newest held message first,
//! then the live stream, with the seam of `fromSeq` (no gap, no duplicate); a topic never
//! published gives nothing and no error; history that does not hold it says so
//! (`REPLAY_UNAVAILABLE`), and live delivery goes on.
//!
//! Each test starts its own 2-core gateway on an ephemeral port.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn seqs(ws: &mut Ws, topic: &str, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| recv_delivery(ws, topic)["seqNo"].as_u64().unwrap())
        .collect()
}

#[test]
fn subscribe_with_latest_gets_the_newest_then_live() {
    let gw = start();
    let mut p = connect(gw.addr, "/ws");
    for i in 1..=5 {
        publish(&mut p, "px", &format!("m{i}"), &i.to_string());
    }
    let mut s = connect(gw.addr, "/ws");
    send_text(&mut s, r#"{"type":"subscribe","topic":"px","latest":true}"#);
    assert_eq!(recv_text(&mut s), r#"{"type":"subscribed","topic":"px"}"#);
    assert_eq!(recv_text(&mut s), delivery_text("px", 5, "m5", "5"));
    publish(&mut p, "px", "m6", "6");
    assert_eq!(recv_text(&mut s), delivery_text("px", 6, "m6", "6"));
    expect_silence(&mut s, Duration::from_millis(200));
    // A batch: each topic its own newest.
    publish(&mut p, "other", "o1", "1");
    publish(&mut p, "other", "o2", "2");
    let mut b = connect(gw.addr, "/ws");
    send_text(
        &mut b,
        r#"{"type":"subscribe","topics":["px","other"],"latest":true}"#,
    );
    assert!(recv_text(&mut b).contains(r#""type":"subscribed""#));
    let mut got: Vec<(String, u64)> = (0..2)
        .map(|_| {
            let v: Value = serde_json::from_str(&recv_text(&mut b)).unwrap();
            (
                v["topic"].as_str().unwrap().to_string(),
                v["seqNo"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, [("other".to_string(), 2), ("px".to_string(), 6)]);
}

#[test]
fn latest_of_a_topic_never_published_is_nothing_then_live() {
    let gw = start();
    let mut s = connect(gw.addr, "/ws");
    send_text(
        &mut s,
        r#"{"type":"subscribe","topic":"fresh","latest":true}"#,
    );
    assert_eq!(
        recv_text(&mut s),
        r#"{"type":"subscribed","topic":"fresh"}"#
    );
    expect_silence(&mut s, Duration::from_millis(200));
    let mut p = connect(gw.addr, "/ws");
    publish(&mut p, "fresh", "f1", "1");
    assert_eq!(seqs(&mut s, "fresh", 1), [1]);
}

#[test]
fn latest_that_history_does_not_hold_is_reported_and_live_goes_on() {
    let gw = start_with(|c| c.history.rules.clear());
    let mut p = connect(gw.addr, "/ws");
    publish(&mut p, "gone", "g1", "1");
    let mut s = connect(gw.addr, "/ws");
    send_text(
        &mut s,
        r#"{"type":"subscribe","topic":"gone","latest":true}"#,
    );
    assert_eq!(recv_text(&mut s), r#"{"type":"subscribed","topic":"gone"}"#);
    let v = assert_error_text(&recv_text(&mut s), "REPLAY_UNAVAILABLE");
    assert_eq!(v["topic"], "gone");
    publish(&mut p, "gone", "g2", "2");
    assert_eq!(seqs(&mut s, "gone", 1), [2]);
    // Both at once is a bad request.
    send_text(
        &mut s,
        r#"{"type":"subscribe","topic":"x","latest":true,"fromSeq":1}"#,
    );
    assert_error_text(&recv_text(&mut s), "BAD_REQUEST");
}

#[test]
fn a_micro_socket_and_an_event_stream_take_latest_from_the_url() {
    let gw = start();
    let mut p = connect(gw.addr, "/ws");
    for i in 1..=3 {
        publish(&mut p, "q", &format!("q{i}"), &i.to_string());
    }
    let mut m = connect(gw.addr, "/ws/sub/q?latest=1");
    assert_eq!(recv_text(&mut m), r#"{"type":"subscribed","topic":"q"}"#);
    assert_eq!(recv_text(&mut m), delivery_text("q", 3, "q3", "3"));
    let mut plain = connect(gw.addr, "/ws/sub/q");
    assert_eq!(
        recv_text(&mut plain),
        r#"{"type":"subscribed","topic":"q"}"#
    );

    let mut e = sse_open(gw.addr, "/sse/sub/q?latest=1", "");
    e.expect_event("subscribed");
    assert_eq!(e.next_delivery().0, "3");
    // Several topics: the one the id names resumes exactly, the other starts from its newest.
    for i in 1..=2 {
        publish(&mut p, "r", &format!("r{i}"), &i.to_string());
    }
    let mut two = sse_open(
        gw.addr,
        "/sse?topic=q&topic=r&latest=1",
        "Last-Event-ID: 1.0\r\n",
    );
    two.expect_event("subscribed");
    let mut got: Vec<(String, u64)> = (0..3)
        .map(|_| {
            let v = two.next_delivery().1;
            (
                v["topic"].as_str().unwrap().to_string(),
                v["seqNo"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(got, [("q".into(), 2), ("q".into(), 3), ("r".into(), 2)]);

    publish(&mut p, "q", "q4", "4");
    assert_eq!(recv_text(&mut m), delivery_text("q", 4, "q4", "4"));
    assert_eq!(
        recv_text(&mut plain),
        delivery_text("q", 4, "q4", "4"),
        "no latest: live only"
    );
    assert_eq!(e.next_delivery().0, "4");
}

#[test]
fn a_micro_socket_authenticated_by_setup_still_starts_with_the_latest() {
    const SECRET: &str = "latest-test-secret-0123456789abcdef";
    let tok = |read: &[&str], write: &[&str]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "t", "read": read, "write": write, "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let gw = start_with(|c| {
        c.auth.mode = Some(subsocket::auth::AuthMode::Jwt);
        c.auth.hs256_secret = Some(SECRET.into());
    });
    let mut p = connect(gw.addr, &format!("/ws?token={}", tok(&[], &["*"])));
    for i in 1..=3 {
        publish(&mut p, "auth.q", &format!("a{i}"), &i.to_string());
    }
    let mut m = connect(gw.addr, "/ws/sub/auth.q?latest=1");
    expect_silence(&mut m, Duration::from_millis(200));
    send_text(
        &mut m,
        &format!(r#"{{"type":"setup","token":"{}"}}"#, tok(&["auth.*"], &[])),
    );
    let ready: Value = serde_json::from_str(&recv_text(&mut m)).unwrap();
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(
        recv_text(&mut m),
        r#"{"type":"subscribed","topic":"auth.q"}"#
    );
    assert_eq!(recv_text(&mut m), delivery_text("auth.q", 3, "a3", "3"));
}
