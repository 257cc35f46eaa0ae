//! Server-Sent Events (`GET /sse/sub/{topic}`, `GET /sse?topic=A&topic=B`) end to end on raw
//! sockets: each delivery one event whose `data` is the very JSON a WebSocket subscriber gets,
//! built once per publish for every stream on every core; ids that resume every topic of a
//! stream exactly (`Last-Event-ID` or `?lastEventId=`), with `replay`'s loss report when
//! history no longer holds the range; clear HTTP errors for bad topics, ids and tokens; the
//! read rules; QoS 1 messages to a stream that cannot ack; heartbeats; a kept-alive connection;
//! a slow stream cut while a healthy one keeps up; the close event at shutdown.
//!
//! Each test starts its own 2-core gateway on an ephemeral port. TLS: `tests/tls.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;
use subsocket::auth::AuthMode;

fn publish(addr: std::net::SocketAddr, topic: &str, body: &str) -> u64 {
    let r = http_post(addr, &format!("/publish/{topic}"), "", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["seqNo"].as_u64().unwrap()
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

/// Opens a one-topic stream and waits for its `subscribed` event (from then on every publish
/// reaches it).
fn stream_of(
    addr: std::net::SocketAddr,
    path: &str,
    extra: &str,
) -> SseClient<std::net::TcpStream> {
    let mut s = sse_open(addr, path, extra);
    assert_eq!(s.retry, None);
    let ev = s.expect_event("subscribed");
    assert_eq!(ev.json()["type"], "subscribed");
    assert!(s.retry.is_some(), "the stream starts with a retry: hint");
    s
}

#[test]
fn every_delivery_is_one_event_built_once_with_the_websocket_json_and_its_seq_as_id() {
    let gw = start();
    // Streams on both cores (SO_REUSEPORT spreads them) and a WebSocket subscriber to compare.
    let mut streams: Vec<_> = (0..8)
        .map(|_| stream_of(gw.addr, "/sse/sub/prices", ""))
        .collect();
    let mut ws = RawWs::connect(gw.addr, "/ws");
    ws.subscribe("prices");
    let before = stats(gw.addr);
    // A body with line breaks of its own: they travel as more `data:` lines, and the JSON
    // EventSource hands over is the same value.
    let bodies = [
        r#"{"px":1}"#,
        "{\"px\":\n2,\r\n\"note\":\"two\"}",
        r#"[1,2,3]"#,
    ];
    for (i, b) in bodies.iter().enumerate() {
        assert_eq!(publish(gw.addr, "prices", b), i as u64 + 1);
    }
    let ws_texts: Vec<String> = (0..3).map(|_| ws.recv_text()).collect();
    for s in &mut streams {
        for (i, text) in ws_texts.iter().enumerate() {
            let (id, v) = s.next_delivery();
            assert_eq!(id, (i + 1).to_string());
            let want: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v, want, "the event's data is the WebSocket delivery");
        }
    }
    let after = stats(gw.addr);
    let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
    assert_eq!(
        d("sseBuilt"),
        3,
        "one event per publish, whatever the number of streams: {after}"
    );
    assert_eq!(d("deliveriesSse"), 24);
    assert_eq!(after["sseOpened"], 8);
    assert_eq!(
        after["wsOpened"], 1,
        "streams are not counted as WebSockets"
    );
    drop(streams);
    wait_stats(
        gw.addr,
        Duration::from_secs(5),
        "the streams closed",
        |s: &Value| s["sseClosed"] == 8,
    );
}

#[test]
fn a_stream_of_several_topics_resumes_each_exactly_from_its_last_event_id() {
    let gw = start();
    let mut s = stream_of(gw.addr, "/sse?topic=a&topic=b", "");
    publish(gw.addr, "a", r#"{"a":1}"#);
    publish(gw.addr, "b", r#"{"b":1}"#);
    publish(gw.addr, "a", r#"{"a":2}"#);
    let ids: Vec<String> = (0..3).map(|_| s.next_delivery().0).collect();
    assert_eq!(
        ids,
        ["1.0", "1.1", "2.1"],
        "one seqNo per topic, in the URL's order"
    );
    drop(s);
    // Missed while away.
    publish(gw.addr, "a", r#"{"a":3}"#);
    publish(gw.addr, "b", r#"{"b":2}"#);
    publish(gw.addr, "b", r#"{"b":3}"#);
    // The second resume, from the same id, also gets the first one's live message (a #4).
    for (how, extra, path, missed) in [
        (
            "header",
            "Last-Event-ID: 2.1\r\n",
            "/sse?topic=a&topic=b",
            vec![("a", 3), ("b", 2), ("b", 3)],
        ),
        (
            "query",
            "",
            "/sse?topic=a&topic=b&lastEventId=2.1",
            vec![("a", 3), ("a", 4), ("b", 2), ("b", 3)],
        ),
    ] {
        let before = stats(gw.addr)["sseResumes"].as_u64().unwrap();
        let mut r = stream_of(gw.addr, path, extra);
        let mut got: Vec<(String, u64)> = Vec::new();
        for _ in 0..missed.len() {
            let (_, v) = r.next_delivery();
            got.push((
                v["topic"].as_str().unwrap().into(),
                v["seqNo"].as_u64().unwrap(),
            ));
        }
        got.sort();
        let missed: Vec<(String, u64)> = missed
            .into_iter()
            .map(|(t, n)| (t.to_string(), n))
            .collect();
        assert_eq!(got, missed, "{how}: each missed one, once");
        publish(gw.addr, "a", r#"{"a":"live"}"#);
        let (id, v) = r.next_delivery();
        assert_eq!(
            v["data"],
            json!({"a":"live"}),
            "{how}: then live, nothing twice"
        );
        let seq_a = v["seqNo"].as_u64().unwrap();
        assert_eq!(id, format!("{seq_a}.3"), "{how}");
        assert_eq!(stats(gw.addr)["sseResumes"].as_u64().unwrap(), before + 1);
    }
}

#[test]
fn a_resume_history_no_longer_holds_is_reported_like_replay_then_goes_live() {
    let gw = start_with_history(3);
    for i in 1..=10 {
        publish(gw.addr, "h", &format!(r#"{{"i":{i}}}"#));
    }
    let mut s = stream_of(gw.addr, "/sse/sub/h", "Last-Event-ID: 2\r\n");
    let e = s.expect_event("error").json();
    assert_eq!(e["code"], "REPLAY_UNAVAILABLE", "{e}");
    assert_eq!(e["topic"], "h", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("oldest held is 8"),
        "{e}"
    );
    publish(gw.addr, "h", r#"{"i":11}"#);
    let (id, v) = s.next_delivery();
    assert_eq!((id.as_str(), v["seqNo"].as_u64()), ("11", Some(11)));
    // Within what history holds: exactly the missed ones.
    let mut r = stream_of(gw.addr, "/sse/sub/h", "Last-Event-ID: 9\r\n");
    let seqs: Vec<u64> = (0..2)
        .map(|_| r.next_delivery().1["seqNo"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [10, 11]);
}

#[test]
fn bad_requests_get_clear_http_errors_and_disturb_no_one() {
    let gw = start();
    let mut bystander = stream_of(gw.addr, "/sse/sub/ok", "");
    let long = "x".repeat(300);
    for (path, extra, status, needle) in [
        ("/sse".to_string(), "", 400, "name the topics"),
        (format!("/sse/sub/{long}"), "", 400, "topic"),
        ("/sse/sub/%FF".to_string(), "", 400, "UTF-8"),
        ("/sse?topic=a&topic=a".to_string(), "", 400, "named twice"),
        (
            "/sse?topic=a&topic=b".to_string(),
            "Last-Event-ID: 7\r\n",
            400,
            "2 topic(s)",
        ),
        (
            "/sse/sub/a".to_string(),
            "Last-Event-ID: seven\r\n",
            400,
            "not a seqNo",
        ),
    ] {
        let r = sse_refused(gw.addr, &path, extra);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(needle), "{path}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{path}: {}", r.text());
    }
    let r = http_post(gw.addr, "/sse/sub/a", "", b"{}");
    assert_eq!(r.status, 405, "{}", r.text());
    publish(gw.addr, "ok", "1");
    assert_eq!(bystander.next_delivery().0, "1");
}

const SECRET: &str = "sse-test-secret-0123456789abcdef";

fn token(read: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "reader", "read": read, "write": [], "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn tokens_and_read_rules_apply_like_on_a_websocket() {
    let gw = start_with(|c| {
        c.auth.mode = Some(AuthMode::Jwt);
        c.auth.hs256_secret = Some(SECRET.into());
        c.auth.leeway_s = 0;
    });
    let r = sse_refused(gw.addr, "/sse/sub/prices.btc", "");
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("token is required"), "{}", r.text());
    let r = sse_refused(gw.addr, "/sse/sub/prices.btc?token=not-a-jwt", "");
    assert_eq!(r.status, 401, "{}", r.text());
    let t = token(&["prices.*"]);
    let r = sse_refused(
        gw.addr,
        &format!("/sse?topic=prices.btc&topic=news&token={t}"),
        "",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("news"), "names the topic: {}", r.text());
    // By ?token= (what EventSource can do) and by header.
    let mut a = stream_of(gw.addr, &format!("/sse/sub/prices.btc?token={t}"), "");
    let mut b = stream_of(
        gw.addr,
        "/sse/sub/prices.btc",
        &format!("Authorization: Bearer {t}\r\n"),
    );
    let mut publisher = RawWs::connect(
        gw.addr,
        &format!("/ws?token={}", {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &json!({"sub": "feed", "read": [], "write": ["*"], "exp": 4_000_000_000u64}),
                &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap()
        }),
    );
    publisher.send_text(r#"{"type":"publish","topic":"prices.btc","payload":{"px":1}}"#);
    assert!(publisher.recv_text().contains(r#""type":"ack""#));
    assert_eq!(a.next_delivery().1["data"], json!({"px":1}));
    assert_eq!(b.next_delivery().1["data"], json!({"px":1}));
}

#[test]
fn qos1_messages_reach_a_stream_that_cannot_ack_and_it_is_never_cut_for_it() {
    let gw = start_with(|c| c.qos1_window = 4);
    let mut s = stream_of(gw.addr, "/sse/sub/q", "");
    let mut p = RawWs::connect(gw.addr, "/ws");
    for i in 1..=12 {
        p.send_text(&format!(
            r#"{{"type":"publish","topic":"q","qos":1,"payload":{i}}}"#
        ));
        assert!(p.recv_text().contains(r#""type":"ack""#));
    }
    for i in 1..=12u64 {
        let (_, v) = s.next_delivery();
        assert_eq!((v["seqNo"].as_u64(), v["qos"].as_u64()), (Some(i), Some(1)));
    }
    assert_eq!(stats(gw.addr)["qos1WindowCloses"], 0);
}

#[test]
fn heartbeats_keep_an_idle_stream_open_past_the_idle_timeout() {
    let gw = start_with(|c| {
        c.ping_interval_ms = 200;
        c.idle_timeout_ms = 600;
    });
    let mut s = stream_of(gw.addr, "/sse/sub/quiet", "");
    s.wait_comments(5, Duration::from_secs(3));
    // Over the idle timeout with nothing said by the client: still open, still delivering.
    publish(gw.addr, "quiet", r#""still here""#);
    assert_eq!(s.next_delivery().1["data"], "still here");
}

#[test]
fn an_event_stream_on_a_kept_alive_connection() {
    let gw = start();
    let mut c = HttpConn::new(gw.addr);
    let r = c.request(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(c.buf_is_empty());
    let mut stream = c.stream;
    stream.write_all(&sse_request("/sse/sub/k", "")).unwrap();
    let mut s = SseClient::start(stream);
    s.expect_event("subscribed");
    publish(gw.addr, "k", "1");
    assert_eq!(s.next_delivery().0, "1");
}

#[test]
fn a_stream_that_stops_reading_is_cut_while_a_healthy_one_gets_everything() {
    let gw = start_with(|c| {
        c.max_backlog_bytes = 64 * 1024;
        c.slow_consumer_grace_ms = 200;
    });
    let stalled = {
        let s = tcp(gw.addr);
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(4096)
            .unwrap();
        let mut s = s;
        s.write_all(&sse_request("/sse/sub/burst", "")).unwrap();
        s
    };
    let mut healthy = stream_of(gw.addr, "/sse/sub/burst", "");
    wait_stats(
        gw.addr,
        Duration::from_secs(5),
        "both streams subscribed",
        |s: &Value| s["subscriptions"] == 2,
    );
    let body = format!(r#"{{"pad":"{}"}}"#, "p".repeat(1000));
    let reader = std::thread::spawn(move || {
        (1..=600u64).all(|i| healthy.next_delivery().1["seqNo"].as_u64() == Some(i))
    });
    for _ in 0..600 {
        publish(gw.addr, "burst", &body);
    }
    assert!(
        reader.join().unwrap(),
        "the healthy stream got 1..600 in order"
    );
    wait_stats(
        gw.addr,
        Duration::from_secs(5),
        "the stalled stream cut",
        |s| s["slowConsumerDisconnects"].as_u64() >= Some(1),
    );
    drop(stalled);
}

#[test]
fn shutdown_ends_a_stream_with_a_close_event() {
    let gw = start();
    let mut s = stream_of(gw.addr, "/sse/sub/bye", "");
    let g = gw.take();
    g.shutdown();
    let ev = s.expect_event("close").json();
    assert_eq!(ev["code"], 1001, "{ev}");
    assert!(
        s.ends_within(Duration::from_secs(3)),
        "the connection closes after it"
    );
    g.join().unwrap();
}

#[test]
fn a_pipelined_burst_reaches_every_stream_once_and_in_order() {
    // Publishes sent back to back reach the owner in runs, which the fan-out appends to each
    // one-topic stream in one copy; a stream of two topics takes them one by one for its ids.
    let gw = start();
    let mut singles: Vec<_> = (0..8)
        .map(|_| stream_of(gw.addr, "/sse/sub/run", ""))
        .collect();
    let mut both = stream_of(gw.addr, "/sse?topic=other&topic=run", "");
    let mut p = RawWs::connect(gw.addr, "/ws");
    const N: u64 = 400;
    for i in 1..=N {
        p.send_text(&format!(
            r#"{{"type":"publish","topic":"run","payload":{i}}}"#
        ));
    }
    for _ in 1..=N {
        assert!(p.recv_text().contains(r#""type":"ack""#));
    }
    for s in &mut singles {
        for i in 1..=N {
            let (id, v) = s.next_delivery();
            assert_eq!(
                (id, v["seqNo"].as_u64(), v["data"].as_u64()),
                (i.to_string(), Some(i), Some(i))
            );
        }
    }
    for i in 1..=N {
        let (id, v) = both.next_delivery();
        assert_eq!((id, v["seqNo"].as_u64()), (format!("0.{i}"), Some(i)));
    }
    let s = stats(gw.addr);
    assert_eq!(s["deliveriesSse"].as_u64(), Some(9 * N), "{s}");
}

#[test]
fn the_event_form_is_built_only_while_a_stream_of_the_topic_is_there() {
    let gw = start();
    // Streams on both cores (of "evented"), a WebSocket subscriber of "ws-only" and of "evented".
    let streams: Vec<_> = (0..8)
        .map(|_| stream_of(gw.addr, "/sse/sub/evented", ""))
        .collect();
    let mut ws = RawWs::connect(gw.addr, "/ws");
    ws.subscribe("ws-only");
    ws.subscribe("evented");
    publish(gw.addr, "ws-only", "1");
    ws.recv_text();
    assert_eq!(stats(gw.addr)["sseBuilt"], 0, "no stream of it");
    publish(gw.addr, "evented", "1");
    ws.recv_text();
    assert_eq!(stats(gw.addr)["sseBuilt"], 1);
    drop(streams);
    wait_stats(
        gw.addr,
        Duration::from_secs(5),
        "the streams closed",
        |s: &Value| s["sseClosed"] == 8,
    );
    publish(gw.addr, "evented", "2");
    ws.recv_text();
    assert_eq!(stats(gw.addr)["sseBuilt"], 1, "not built for no one");
}
