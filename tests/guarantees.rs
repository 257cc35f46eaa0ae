//! I4 (QoS 1), I6 (`resume` of sessions) and I7 (message signatures) against a running
//! 2-core gateway: acks and redelivery, the unacknowledged window, sessions that outlive their
//! connection and are resumed on either core with every message exactly once, takeovers,
//! forged and foreign sessions, and HMAC signatures a client can verify.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subsocket::auth::AuthMode;
use subsocket::config::{Config, SigningConfig};
use subsocket::history::HistoryRule;

fn with_history(c: &mut Config, max_messages: usize) {
    c.history.rules = vec![HistoryRule {
        pattern: "*".into(),
        max_messages: Some(max_messages),
        max_bytes: None,
        max_age_ms: None,
    }];
}

/// `setup` without a token (auth off); returns the session id.
fn setup(ws: &mut Ws) -> String {
    send_text(ws, r#"{"type":"setup"}"#);
    let r = recv_json(ws);
    assert_eq!(r["type"], "ready", "{r}");
    r["sessionId"].as_str().expect("sessionId").to_string()
}

fn publish_qos(ws: &mut Ws, topic: &str, id: &str, payload: &str, qos: u8) -> u64 {
    send_text(
        ws,
        &format!(
            r#"{{"type":"publish","topic":"{topic}","messageId":"{id}","payload":{payload},"qos":{qos}}}"#
        ),
    );
    let a = recv_json(ws);
    assert_eq!(
        (&a["type"], &a["status"]),
        (&json!("ack"), &json!("ok")),
        "{a}"
    );
    a["seqNo"].as_u64().unwrap()
}

fn qos1_text(topic: &str, seq: u64, id: &str, data: &str) -> String {
    format!(
        r#"{{"type":"message","topic":"{topic}","seqNo":{seq},"messageId":"{id}","qos":1,"data":{data}}}"#
    )
}

fn resume(ws: &mut Ws, session: &str, last: Value) {
    send_json(
        ws,
        &json!({"type":"resume","sessionId":session,"lastSeqPerTopic":last}),
    );
}

/// Cuts a connection without a close frame (as a dropped network would).
fn cut(ws: Ws) {
    let _ = ws.get_ref().shutdown(Shutdown::Both);
}

fn stat(addr: SocketAddr, key: &str) -> u64 {
    stats(addr)[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in /stats"))
}

// ----- I4: QoS 1 ----------------------------------------------------------------------------

#[test]
fn a_qos1_delivery_is_marked_and_sent_again_until_acknowledged() {
    let gw = start_with(|c| c.qos1_redeliver_ms = 300);
    let mut sub = subscriber(gw.addr, "pay");
    let mut publisher = connect(gw.addr, "/ws");
    assert_eq!(
        publish_qos(&mut publisher, "pay", "p1", r#"{"eur":5}"#, 1),
        1
    );
    let first = recv_text(&mut sub);
    assert_eq!(first, qos1_text("pay", 1, "p1", r#"{"eur":5}"#));
    // No ack: the same bytes again, after the redelivery timeout and not before.
    let t0 = Instant::now();
    assert_eq!(recv_text(&mut sub), first);
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(recv_text(&mut sub), first, "and again while unacknowledged");
    assert!(stat(gw.addr, "qos1Redeliveries") >= 2);
    assert_eq!(stat(gw.addr, "qos1Unacked"), 1);
    send_text(
        &mut sub,
        r#"{"type":"ack","messageId":"p1","topic":"pay","seqNo":1}"#,
    );
    wait_stats(gw.addr, Duration::from_secs(5), "qos1 acked", |s| {
        s["qos1Unacked"] == 0 && s["qos1Acks"] == 1
    });
    // Anything still in flight was sent before the ack was handled; then silence.
    while let Some(t) = recv_text_within(&mut sub, Duration::from_millis(200)) {
        assert_eq!(t, first);
    }
    expect_silence(&mut sub, Duration::from_millis(800));
}

#[test]
fn acks_by_message_id_alone_and_qos0_carries_no_state() {
    let gw = start_with(|c| c.qos1_redeliver_ms = 300);
    let mut sub = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    publish_qos(&mut publisher, "t", "zero", "0", 0);
    assert_eq!(recv_text(&mut sub), delivery_text("t", 1, "zero", "0"));
    publish_qos(&mut publisher, "t", "one", "1", 1);
    assert_eq!(recv_text(&mut sub), qos1_text("t", 2, "one", "1"));
    send_text(&mut sub, r#"{"type":"ack","messageId":"one"}"#);
    // An ack of a QoS 0 delivery (or an unknown one) is accepted and ignored.
    send_text(&mut sub, r#"{"type":"ack","messageId":"zero"}"#);
    send_text(&mut sub, r#"{"type":"ack","topic":"t","seqNo":99}"#);
    assert_ping_pong(&mut sub);
    expect_silence(&mut sub, Duration::from_millis(900));
    let s = stats(gw.addr);
    assert_eq!(
        (s["qos1Acks"].as_u64(), s["qos1Unacked"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_eq!(s["qos1Deliveries"], 1, "{s}");
}

#[test]
fn qos1_topics_make_every_publish_qos1_including_http() {
    let gw = start_with(|c| c.qos1_topics = vec!["payments.*".into()]);
    let mut sub = subscriber(gw.addr, "payments.eu");
    let mut other = subscriber(gw.addr, "prices");
    let mut publisher = connect(gw.addr, "/ws");
    publish_qos(&mut publisher, "payments.eu", "a", "1", 0);
    assert_eq!(recv_text(&mut sub), qos1_text("payments.eu", 1, "a", "1"));
    publish_qos(&mut publisher, "prices", "b", "2", 0);
    assert_eq!(recv_text(&mut other), delivery_text("prices", 1, "b", "2"));
    // HTTP publish with ?qos=1 on any topic; a bad value is refused.
    let r = http_post(gw.addr, "/publish/prices?qos=1", "", b"3");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = recv_json(&mut other);
    assert_eq!(
        (m["seqNo"].as_u64(), m["qos"].as_u64()),
        (Some(2), Some(1)),
        "{m}"
    );
    let r = http_post(gw.addr, "/publish/prices?qos=2", "", b"3");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn too_many_unacknowledged_deliveries_close_the_connection() {
    let gw = start_with(|c| c.qos1_window = 3);
    let mut sub = subscriber(gw.addr, "t");
    let mut keeps_up = subscriber(gw.addr, "t");
    let mut publisher = connect(gw.addr, "/ws");
    for i in 1..=4 {
        publish_qos(&mut publisher, "t", &format!("m{i}"), "0", 1);
        let m = recv_json(&mut keeps_up);
        send_json(
            &mut keeps_up,
            &json!({"type":"ack","topic":"t","seqNo":m["seqNo"]}),
        );
    }
    for i in 1..=3 {
        assert_eq!(recv_json(&mut sub)["seqNo"], i);
    }
    let e = recv_json(&mut sub);
    assert_eq!(e["code"], "SLOW_CONSUMER", "{e}");
    match sub.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected close 1008, got {other:?}"),
    }
    assert_eq!(stat(gw.addr, "qos1WindowCloses"), 1);
    // The other subscriber is untouched.
    publish_qos(&mut publisher, "t", "m5", "0", 1);
    assert_eq!(recv_json(&mut keeps_up)["seqNo"], 5);
}

// ----- I6: sessions and resume ------------------------------------------------------------

/// The I6 test of the issue: a subscriber is cut off mid-stream while publishing continues,
/// reconnects, resumes, and ends with every seqNo exactly once. Repeated until resumes have
/// landed on both cores (a resume on the core that did not make the session crosses cores).
#[test]
fn a_subscriber_cut_off_mid_stream_resumes_with_every_message_exactly_once() {
    let gw = start_with(|c| with_history(c, 10_000));
    let addr = gw.addr;
    const TOTAL: u64 = 1_500;
    // Subscribed before the first publish: every seqNo from 1 is owed to it.
    let mut ws = connect(addr, "/ws");
    let session = setup(&mut ws);
    subscribe(&mut ws, "feed");
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ws = connect(addr, "/ws");
            for i in 1..=TOTAL {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                publish(&mut ws, "feed", &format!("m{i}"), &i.to_string());
                if i % 5 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut cuts = 0;
    let mut log: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "stream did not finish; seen {}",
            seen.len()
        );
        // Read a random-ish stretch, then cut the connection without a close frame.
        let stretch = 40 + (cuts * 37) % 90;
        let mut got = 0;
        while got < stretch {
            let Some(t) = recv_text_within(&mut ws, Duration::from_secs(5)) else {
                break;
            };
            let m: Value = serde_json::from_str(&t).unwrap();
            match m["type"].as_str() {
                Some("message") => {
                    seen.push(m["seqNo"].as_u64().unwrap());
                    got += 1;
                }
                Some("resumed") => {
                    log.push(format!(
                        "resumed after {}",
                        seen.last().copied().unwrap_or(0)
                    ));
                    assert_eq!(m["sessionId"], session.as_str())
                }
                _ => panic!("unexpected {m}"),
            }
        }
        if seen.last() == Some(&TOTAL) {
            break;
        }
        let s = stats(addr);
        let cores_resumed = s["cores"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["sessionsResumed"].as_u64() > Some(0))
            .count();
        let want_cores = s["cores"].as_array().unwrap().len();
        if cuts >= 6 && cores_resumed == want_cores {
            // Enough cuts: read to the end on this connection.
            while seen.last() != Some(&TOTAL) {
                let m = recv_json(&mut ws);
                assert_eq!(m["type"], "message", "{m}");
                seen.push(m["seqNo"].as_u64().unwrap());
            }
            break;
        }
        cut(ws);
        cuts += 1;
        ws = connect(addr, "/ws");
        let last = seen.last().copied().unwrap_or(0);
        log.push(format!("cut at {last}"));
        resume(&mut ws, &session, json!({ "feed": last }));
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let expect: Vec<u64> = (1..=TOTAL).collect();
    let odd: Vec<(usize, u64)> = seen
        .iter()
        .enumerate()
        .filter(|(i, s)| **s != *i as u64 + 1)
        .map(|(i, s)| (i, *s))
        .take(5)
        .collect();
    assert_eq!(
        seen.len(),
        expect.len(),
        "gaps or duplicates after {cuts} cuts; first out of place (index, seqNo): {odd:?}; log: {log:?}"
    );
    assert_eq!(seen, expect, "every seqNo exactly once, in order");
    assert!(cuts >= 6, "{cuts}");
    let s = stats(addr);
    for c in s["cores"].as_array().unwrap() {
        assert!(
            c["sessionsResumed"].as_u64() > Some(0),
            "a resume on every core: {s}"
        );
    }
}

#[test]
fn resume_sends_replayed_messages_then_resumed_then_live() {
    let gw = start_with(|c| with_history(c, 100));
    let mut ws = connect(gw.addr, "/ws");
    let session = setup(&mut ws);
    subscribe_many(&mut ws, &["a", "b"]);
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "a", "a1", "1");
    publish(&mut publisher, "b", "b1", "1");
    assert_eq!(recv_json(&mut ws)["seqNo"], 1);
    assert_eq!(recv_json(&mut ws)["seqNo"], 1);
    cut(ws);
    wait_stats(gw.addr, Duration::from_secs(5), "session detached", |s| {
        s["sessionsDetached"] == 1
    });
    publish(&mut publisher, "a", "a2", "2");
    publish(&mut publisher, "a", "a3", "3");
    publish(&mut publisher, "b", "b2", "2");
    let mut ws = connect(gw.addr, "/ws");
    // `a` from its last seqNo; `b` not listed: re-subscribed, live only.
    resume(&mut ws, &session, json!({"a": 1}));
    assert_eq!(recv_text(&mut ws), delivery_text("a", 2, "a2", "2"));
    assert_eq!(recv_text(&mut ws), delivery_text("a", 3, "a3", "3"));
    assert_eq!(
        recv_text(&mut ws),
        format!(r#"{{"type":"resumed","sessionId":"{session}"}}"#)
    );
    publish(&mut publisher, "b", "b3", "3");
    assert_eq!(recv_text(&mut ws), delivery_text("b", 3, "b3", "3"));
    publish(&mut publisher, "a", "a4", "4");
    assert_eq!(recv_text(&mut ws), delivery_text("a", 4, "a4", "4"));
    let s = stats(gw.addr);
    assert_eq!(
        (s["sessionsDetached"].as_u64(), s["subscriptions"].as_u64()),
        (Some(0), Some(2)),
        "{s}"
    );
    // The same session id resumes again later.
    cut(ws);
    let mut ws = connect(gw.addr, "/ws");
    wait_stats(gw.addr, Duration::from_secs(5), "detached again", |s| {
        s["sessionsDetached"] == 1
    });
    resume(&mut ws, &session, json!({"a": 4, "b": 3}));
    assert_eq!(recv_json(&mut ws)["type"], "resumed");
}

#[test]
fn unacknowledged_qos1_messages_come_back_on_resume_without_any_history_rule() {
    let gw = start_with(|c| c.history.rules.clear());
    let mut ws = connect(gw.addr, "/ws");
    let session = setup(&mut ws);
    subscribe(&mut ws, "pay");
    let mut publisher = connect(gw.addr, "/ws");
    for i in 1..=3 {
        publish_qos(&mut publisher, "pay", &format!("p{i}"), &i.to_string(), 1);
        assert_eq!(recv_json(&mut ws)["seqNo"], i);
    }
    send_text(&mut ws, r#"{"type":"ack","topic":"pay","seqNo":1}"#);
    assert_ping_pong(&mut ws);
    cut(ws);
    publish_qos(&mut publisher, "pay", "p4", "4", 1);
    let mut ws = connect(gw.addr, "/ws");
    // Not listed: the lowest unacknowledged seqNo (2) on.
    resume(&mut ws, &session, json!({}));
    for i in 2..=4 {
        assert_eq!(
            recv_text(&mut ws),
            qos1_text("pay", i, &format!("p{i}"), &i.to_string())
        );
    }
    assert_eq!(recv_json(&mut ws)["type"], "resumed");
    // They are tracked again on the new connection.
    wait_stats(gw.addr, Duration::from_secs(5), "re-tracked", |s| {
        s["qos1Unacked"] == 3
    });
}

#[test]
fn resume_works_with_the_default_configuration() {
    // No [history] written: the default rule keeps every topic's recent messages, so a client
    // cut off mid-stream gets what it missed (issue 13: resume works out of the box).
    let gw = start();
    let mut ws = connect(gw.addr, "/ws");
    let session = setup(&mut ws);
    subscribe(&mut ws, "d");
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "d", "d1", "1");
    assert_eq!(recv_json(&mut ws)["seqNo"], 1);
    cut(ws);
    wait_stats(gw.addr, Duration::from_secs(5), "session detached", |s| {
        s["sessionsDetached"] == 1
    });
    for i in 2..=4 {
        publish(&mut publisher, "d", &format!("d{i}"), &i.to_string());
    }
    let mut ws = connect(gw.addr, "/ws");
    resume(&mut ws, &session, json!({"d": 1}));
    for i in 2..=4 {
        assert_eq!(
            recv_text(&mut ws),
            delivery_text("d", i, &format!("d{i}"), &i.to_string())
        );
    }
    assert_eq!(recv_json(&mut ws)["type"], "resumed");
    publish(&mut publisher, "d", "d5", "5");
    assert_eq!(recv_text(&mut ws), delivery_text("d", 5, "d5", "5"));
}

#[test]
fn a_resume_past_the_history_says_what_was_lost_then_sends_what_is_held() {
    let gw = start_with(|c| with_history(c, 3));
    let mut ws = connect(gw.addr, "/ws");
    let session = setup(&mut ws);
    subscribe(&mut ws, "t");
    cut(ws);
    let mut publisher = connect(gw.addr, "/ws");
    for i in 1..=10 {
        publish(&mut publisher, "t", &format!("m{i}"), &i.to_string());
    }
    let mut ws = connect(gw.addr, "/ws");
    resume(&mut ws, &session, json!({"t": 2}));
    let e = recv_json(&mut ws);
    assert_eq!(
        (&e["code"], &e["topic"], &e["oldestSeq"]),
        (&json!("REPLAY_UNAVAILABLE"), &json!("t"), &json!(8)),
        "{e}"
    );
    for i in 8..=10 {
        assert_eq!(recv_json(&mut ws)["seqNo"], i);
    }
    assert_eq!(recv_json(&mut ws)["type"], "resumed");
}

#[test]
fn a_resume_while_the_old_connection_is_open_takes_the_session_over() {
    let gw = start_with(|c| with_history(c, 100));
    let mut old = connect(gw.addr, "/ws");
    let session = setup(&mut old);
    subscribe(&mut old, "t");
    let mut publisher = connect(gw.addr, "/ws");
    publish(&mut publisher, "t", "m1", "1");
    assert_eq!(recv_json(&mut old)["seqNo"], 1);
    let mut new = connect(gw.addr, "/ws");
    resume(&mut new, &session, json!({"t": 1}));
    assert_eq!(recv_json(&mut new)["type"], "resumed");
    match old.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("the old connection should be closed 1008, got {other:?}"),
    }
    publish(&mut publisher, "t", "m2", "2");
    assert_eq!(recv_text(&mut new), delivery_text("t", 2, "m2", "2"));
    wait_stats(gw.addr, Duration::from_secs(5), "one subscriber", |s| {
        s["subscriptions"] == 1 && s["connections"] == 2
    });
}

#[test]
fn forged_malformed_and_expired_sessions_are_refused() {
    let gw = start_with(|c| c.session_ttl_ms = 300);
    let mut ws = connect(gw.addr, "/ws");
    for forged in [
        "0.0123456789abcdef0123456789abcdef",
        "1.ffffffffffffffffffffffffffffffff",
        "s-1",
        "9.0123456789abcdef0123456789abcdef",
    ] {
        resume(&mut ws, forged, json!({"t": 1}));
        let e = recv_json(&mut ws);
        assert_eq!(e["code"], "SESSION_EXPIRED", "{forged}: {e}");
    }
    // Nothing was subscribed by the failed resumes.
    assert_eq!(stats(gw.addr)["subscriptions"], 0);
    let mut a = connect(gw.addr, "/ws");
    let session = setup(&mut a);
    subscribe(&mut a, "t");
    cut(a);
    wait_stats(gw.addr, Duration::from_secs(5), "expired", |s| {
        s["sessionsExpired"] == 1 && s["sessionsDetached"] == 0
    });
    resume(&mut ws, &session, json!({"t": 0}));
    assert_eq!(recv_json(&mut ws)["code"], "SESSION_EXPIRED");
    // The socket that failed to resume still works.
    assert_ping_pong(&mut ws);
}

#[test]
fn with_session_ttl_zero_nothing_is_kept() {
    let gw = start_with(|c| c.session_ttl_ms = 0);
    let mut a = connect(gw.addr, "/ws");
    let session = setup(&mut a);
    cut(a);
    wait_stats(gw.addr, Duration::from_secs(5), "closed", |s| {
        s["connections"] == 0
    });
    let mut ws = connect(gw.addr, "/ws");
    resume(&mut ws, &session, json!({}));
    assert_eq!(recv_json(&mut ws)["code"], "SESSION_EXPIRED");
}

const SECRET: &str = "test-secret-for-the-guarantee-tests";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({ "sub": sub, "read": ["*"], "write": ["*"], "exp": exp });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn with_auth_a_resume_adopts_its_identity_and_refuses_anyone_else() {
    let gw = start_with(|c| {
        c.auth.mode = Some(AuthMode::Jwt);
        c.auth.hs256_secret = Some(SECRET.into());
        with_history(c, 100);
    });
    let mut alice = connect(gw.addr, "/ws");
    send_json(&mut alice, &json!({"type":"setup","token":token("alice")}));
    let session = recv_json(&mut alice)["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    subscribe(&mut alice, "t");
    cut(alice);
    wait_stats(gw.addr, Duration::from_secs(5), "detached", |s| {
        s["sessionsDetached"] == 1
    });
    // Bob, authenticated, cannot take Alice's session (and is not told it exists).
    let mut bob = connect(gw.addr, "/ws");
    send_json(&mut bob, &json!({"type":"setup","token":token("bob")}));
    assert_eq!(recv_json(&mut bob)["type"], "ready");
    resume(&mut bob, &session, json!({"t": 0}));
    assert_eq!(recv_json(&mut bob)["code"], "SESSION_EXPIRED");
    // An unauthenticated socket may resume (the session id is the credential) and becomes Alice.
    let mut again = connect(gw.addr, "/ws");
    send_text(&mut again, r#"{"type":"subscribe","topic":"t"}"#);
    assert_eq!(recv_json(&mut again)["code"], "UNAUTHORIZED");
    resume(&mut again, &session, json!({"t": 0}));
    let r = recv_json(&mut again);
    assert_eq!(r["type"], "resumed", "{r}");
    let mut publisher = connect(gw.addr, "/ws");
    send_json(
        &mut publisher,
        &json!({"type":"setup","token":token("pub")}),
    );
    recv_json(&mut publisher);
    publish(&mut publisher, "t", "m1", "1");
    assert_eq!(recv_json(&mut again)["seqNo"], 1);
    // It publishes as Alice now: dedup is per identity, so Alice's id is hers alone.
    assert_eq!(publish(&mut again, "u", "same-id", "2"), 1);
    let a = publish_status(&mut publisher, "u", "same-id");
    assert_eq!(a, "ok", "another identity's messageId is not a duplicate");
    let a = publish_status(&mut again, "u", "same-id");
    assert_eq!(a, "duplicate");
}

fn publish_status(ws: &mut Ws, topic: &str, id: &str) -> String {
    send_json(
        ws,
        &json!({"type":"publish","topic":topic,"messageId":id,"payload":0}),
    );
    let a = recv_json(ws);
    assert_eq!(a["type"], "ack", "{a}");
    a["status"].as_str().unwrap().to_string()
}

// ----- I7: signatures -----------------------------------------------------------------------

#[test]
fn signed_deliveries_verify_and_tampering_does_not() {
    let key = b"0123456789abcdef0123456789abcdef-signing-key";
    let dir = std::env::temp_dir().join(format!("subsocket-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key.hex");
    std::fs::write(&path, format!("{}\n", hex::encode(key))).unwrap();
    let gw = start_with(|c| {
        c.signing = Some(SigningConfig {
            key_id: "k1".into(),
            key_hex_file: path.clone(),
        });
        with_history(c, 10);
    });
    let mut sub = subscriber(gw.addr, "prices.eu");
    let mut publisher = connect(gw.addr, "/ws");
    let payload = r#"{"bid": 1.25, "ask":1.5 , "s":"é\"x"}"#;
    publish_qos(&mut publisher, "prices.eu", "m1", payload, 0);
    let text = recv_text(&mut sub);
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["kid"], "k1", "{text}");
    let sig = m["sig"].as_str().unwrap();
    // The signed data is the payload's JSON text exactly as it appears in the frame.
    let data = &text[text.find(r#","data":"#).unwrap() + 8..text.len() - 1];
    assert_eq!(data, payload);
    assert!(subsocket::signing::verify(
        key,
        "prices.eu",
        1,
        data.as_bytes(),
        sig
    ));
    assert!(!subsocket::signing::verify(
        key,
        "prices.eu",
        2,
        data.as_bytes(),
        sig
    ));
    assert!(!subsocket::signing::verify(
        key,
        "prices.us",
        1,
        data.as_bytes(),
        sig
    ));
    let forged = data.replace("1.25", "9.25");
    assert!(!subsocket::signing::verify(
        key,
        "prices.eu",
        1,
        forged.as_bytes(),
        sig
    ));
    // A replayed message carries the same signature.
    send_text(
        &mut sub,
        r#"{"type":"replay","topic":"prices.eu","fromSeq":1}"#,
    );
    assert_eq!(recv_text(&mut sub), text);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_signing_key_stops_the_gateway_from_starting() {
    let dir = std::env::temp_dir().join(format!("subsocket-badsig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("short.hex");
    std::fs::write(&path, "abcd").unwrap();
    let mut cfg = test_config();
    cfg.signing = Some(SigningConfig {
        key_id: "k1".into(),
        key_hex_file: path,
    });
    let Err(err) = subsocket::gateway::start(cfg) else {
        panic!("a 2-byte signing key must be refused");
    };
    assert!(err.contains("at least 32"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
