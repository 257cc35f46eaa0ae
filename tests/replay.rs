//! What a reconnecting client asks for: `replay`, `subscribe` with `fromSeq`, and `resume`. With
//! history off (`rules = []`) a replay is refused with `REPLAY_UNAVAILABLE`, and an unknown
//! session with `SESSION_EXPIRED`; with history (the default keeps every topic's recent
//! messages), `replay` and `fromSeq` are served in order, without a gap or a duplicate at the
//! seam between replay and live delivery.
//!
//! Each test starts its own 2-core gateway on an ephemeral port. Sessions that `resume` succeeds
//! on (and QoS 1) are in `tests/guarantees.rs`.

mod common;

use common::*;
use std::time::Duration;

// ===== without history: refused, and said so ================================================

#[test]
fn replay_is_refused_with_replay_unavailable_naming_the_topic() {
    // History off: nothing is held, so a replay of published messages is refused.
    let gw = start_with(|c| c.history.rules.clear());
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

// ===== I6: history and replay ===============================================================

#[test]
fn replay_and_from_seq_work_with_the_default_configuration() {
    // No [history] written: the default rule keeps the recent messages of every topic.
    let gw = start();
    let mut publisher = connect(gw.addr, "/ws");
    for i in 1..=3u64 {
        publish(&mut publisher, "dflt", &format!("m{i}"), &i.to_string());
    }
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"replay","topic":"dflt","fromSeq":1}"#);
    for i in 1..=3u64 {
        assert_eq!(
            recv_text(&mut ws),
            delivery_text("dflt", i, &format!("m{i}"), &i.to_string())
        );
    }
    send_text(
        &mut ws,
        r#"{"type":"subscribe","topic":"dflt","fromSeq":2}"#,
    );
    assert_eq!(
        recv_text(&mut ws),
        r#"{"type":"subscribed","topic":"dflt"}"#
    );
    for i in 2..=3u64 {
        assert_eq!(recv_json(&mut ws)["seqNo"], i);
    }
    publish(&mut publisher, "dflt", "m4", "4");
    assert_eq!(recv_text(&mut ws), delivery_text("dflt", 4, "m4", "4"));
}

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
