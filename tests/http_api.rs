//! The HTTP routes on the WebSocket port: `/healthz` (GET and HEAD), `/stats`, `/metrics`,
//! `/docs`, `POST /publish/{topic}` (body byte for byte, `Idempotency-Key`, bad bodies),
//! `/demo/publish`, 404/405, and keep-alive with pipelining.
//!
//! Each test starts its own 2-core gateway on an ephemeral port. The upgrade to a WebSocket is in
//! `tests/handshake.rs`; the 413 of an oversized body in `tests/limits.rs`.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

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
