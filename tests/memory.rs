//! The process memory budget (issue 13, point 5): a flood of subscriptions to unique topics is
//! answered `LIMIT_EXCEEDED` while the gateway's RSS stays under its `memory_budget_bytes`, new
//! connections are refused with HTTP 503 near it, history gives back first, and another client
//! keeps being served; the per-identity caps keep one identity (a token's subject, or an
//! anonymous peer's address) from taking more than its share of connections, subscriptions and
//! unique topics.
//!
//! The flood test runs the real binary as a process of its own, so its RSS is the gateway's
//! alone (in-process gateways share the test binary's heap with every other test).

mod common;
use common::*;

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use subsocket::config::Cores;
use subsocket_testkit::process::{GatewayProcess, Scratch};

/// The flood: 10 connections x 10,000 unique 256-byte topics (100,000 subscriptions that would
/// grow RSS by about 62 MiB), in batches of 200 topics (52 KB, under the 64 KiB message cap).
const FLOOD_CONNS: usize = 10;
const TOPICS_PER_CONN: usize = 10_000;
const BATCH: usize = 200;

/// A unique 256-byte topic name.
fn topic(conn: usize, i: usize) -> String {
    let head = format!("flood.{conn}.{i}.");
    format!("{head}{}", "x".repeat(256 - head.len()))
}

fn spawn_gateway(scratch: &Scratch, config: &str) -> GatewayProcess {
    let cfg = scratch.file("gateway.toml", config);
    let core = subsocket::config::available_cores()[0];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_subsocket"));
    cmd.arg("-c")
        .arg(&cfg)
        .args(["--bind", "127.0.0.1:0"])
        .args(["--cores", &format!("{core},")])
        .args(["--log", "info"]);
    GatewayProcess::spawn(
        cmd,
        &scratch.path().join("stdout"),
        &scratch.path().join("gateway.log"),
    )
}

/// Publishes `n` messages to `topic` over HTTP; each must be accepted.
fn publish_http(addr: SocketAddr, topic: &str, first: u64, n: u64) {
    for i in first..first + n {
        let r = http_post(
            addr,
            &format!("/publish/{topic}"),
            "",
            format!("{{\"i\":{i}}}").as_bytes(),
        );
        assert_eq!(r.status, 200, "publish {i}: {}", r.text());
    }
}

/// Reads `n` deliveries of `topic` and checks their payloads count up from `first`.
fn expect_deliveries(ws: &mut Ws, first: u64, n: u64) {
    for i in first..first + n {
        let v = recv_json(ws);
        assert_eq!(
            (&v["type"], &v["data"]["i"]),
            (&json!("message"), &json!(i)),
            "{v}"
        );
    }
}

#[test]
fn a_flood_of_unique_topics_is_refused_within_the_memory_budget_while_others_are_served() {
    let scratch = Scratch::new("memory-flood");
    // 96 MiB for the whole process: about 30 MiB of it is the gateway at rest, so the flood
    // has room for a part of its 62 MiB only. The per-identity caps are off: the budget alone
    // must stop it.
    let budget: u64 = 96 << 20;
    let gw = spawn_gateway(
        &scratch,
        &format!(
            "memory_budget_bytes = {budget}\nmax_conns_per_identity = 0\n\
             max_subscriptions_per_identity = 0\nmax_topics_per_identity = 0\n"
        ),
    );
    let addr = gw.addr();
    let mut reader = subscriber(addr, "prices");
    publish_http(addr, "prices", 0, 5);
    expect_deliveries(&mut reader, 0, 5);
    // 1.2 MB of history, which gives way before anything is refused.
    let page = "y".repeat(4096);
    for i in 0..300 {
        let body = format!("{{\"i\":{i},\"page\":\"{page}\"}}");
        let r = http_post(addr, "/publish/archive", "", body.as_bytes());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(stats(addr)["memory"]["parts"]["history"].as_u64().unwrap() > 1_200_000);

    let mut flood: Vec<Ws> = (0..FLOOD_CONNS).map(|_| connect(addr, "/ws")).collect();
    let (mut granted, mut refused) = (0usize, 0usize);
    let mut peak_rss = 0u64;
    for batch in 0..TOPICS_PER_CONN / BATCH {
        for (c, ws) in flood.iter_mut().enumerate() {
            let topics: Vec<String> = (batch * BATCH..(batch + 1) * BATCH)
                .map(|i| topic(c, i))
                .collect();
            send_json(ws, &json!({"type":"subscribe","topics":topics}));
        }
        for ws in flood.iter_mut() {
            let v = recv_json(ws);
            match v["type"].as_str() {
                Some("subscribed") => granted += BATCH,
                Some("error") => {
                    assert_eq!(v["code"], "LIMIT_EXCEEDED", "{v}");
                    assert!(
                        v["message"].as_str().unwrap().contains("memory budget"),
                        "{v}"
                    );
                    refused += BATCH;
                }
                _ => panic!("unexpected answer {v}"),
            }
        }
        peak_rss = peak_rss.max(gw.rss_bytes().expect("gateway RSS"));
        // The reader is served all along.
        publish_http(addr, "prices", 5 + batch as u64, 1);
        expect_deliveries(&mut reader, 5 + batch as u64, 1);
    }
    let all = FLOOD_CONNS * TOPICS_PER_CONN;
    assert!(
        refused > 0,
        "nothing was refused: {granted} of {all} granted"
    );
    assert!(granted > 0, "the budget refused everything");
    assert_eq!(granted + refused, all);
    assert!(
        peak_rss <= budget,
        "RSS {peak_rss} went past the budget {budget} ({granted} subscriptions granted)"
    );

    eprintln!("granted {granted} of {all}; peak RSS {peak_rss} of {budget}");
    // Fill the last of the room one topic at a time: what is left is then less than one
    // topic, and less than a connection.
    let mut singles = 0;
    loop {
        let ws = &mut flood[0];
        send_json(ws, &json!({"type":"subscribe","topic":topic(99, singles)}));
        let v = recv_json(ws);
        if v["type"] == "error" {
            assert_eq!(v["code"], "LIMIT_EXCEEDED", "{v}");
            break;
        }
        singles += 1;
        assert!(singles < 2 * BATCH, "single topics kept being granted");
    }
    granted += singles;
    // Near the budget a new connection is refused before its upgrade, with a reason.
    let mut conn = HttpConn::new(addr);
    let r = conn.request(upgrade_request("/ws", "13").as_bytes());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "LIMIT_EXCEEDED", "{}", r.text());

    let s = stats(addr);
    let m = &s["memory"];
    assert_eq!(m["budgetBytes"].as_u64(), Some(budget), "{m}");
    assert!(m["usedBytes"].as_u64().unwrap() <= budget, "{m}");
    assert!(m["parts"]["topics"].as_u64().unwrap() > 0, "{m}");
    assert!(s["memoryRefusals"].as_u64().unwrap() > 0, "{s}");
    // History gave back first: the archive's 300 pages went before the first refusal.
    assert!(s["memoryHistoryEvictions"].as_u64().unwrap() >= 300, "{s}");
    assert_eq!(s["subscriptions"].as_u64(), Some(granted as u64 + 1), "{s}");

    // The flood goes away: its memory comes back and the gateway admits again.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats(addr);
        if s["subscriptions"].as_u64() == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flood's subscriptions stayed: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut late = loop {
        let mut conn = HttpConn::new(addr);
        let r = conn.request(upgrade_request("/ws", "13").as_bytes());
        if r.status == 101 {
            break RawWs::from_upgraded(conn);
        }
        assert!(
            Instant::now() < deadline,
            "still refused after the flood left: {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    late.subscribe("after.the.flood");
    publish_http(addr, "prices", 100, 3);
    expect_deliveries(&mut reader, 100, 3);
    drop(gw);
}

#[test]
fn one_identity_gets_its_share_of_connections_subscriptions_and_unique_topics() {
    let gw = start_with(|c| {
        c.cores = Cores::Count(1);
        c.max_conns_per_identity = 2;
        c.max_subscriptions_per_identity = 5;
        c.max_topics_per_identity = 3;
    });
    let mut a = connect(gw.addr, "/ws");
    let mut b = connect(gw.addr, "/ws");
    // A third connection of the same anonymous peer (127.0.0.1) is told why and closed 1013.
    let mut third = RawWs::connect(gw.addr, "/ws");
    let e: Value = serde_json::from_str(&third.recv_text()).unwrap();
    assert_eq!(e["code"], "LIMIT_EXCEEDED", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("connections"),
        "{e}"
    );
    assert_eq!(third.read_frame().close_code(), Some(1013));
    // Another peer address is another identity.
    let mut other = RawWs::upgrade(tcp_from("127.0.0.2", gw.addr), "/ws");
    other.subscribe("elsewhere");

    // Unique topics: three brought onto the core by this identity, the fourth refused.
    subscribe_many(&mut a, &["u1", "u2", "u3"]);
    send_json(&mut b, &json!({"type":"subscribe","topic":"u4"}));
    let e = recv_json(&mut b);
    assert_eq!(
        (&e["code"], &e["topic"]),
        (&json!("LIMIT_EXCEEDED"), &json!("u4")),
        "{e}"
    );
    assert!(
        e["message"].as_str().unwrap().contains("unique topics"),
        "{e}"
    );
    // A topic someone else brought costs no unique topic, only a subscription.
    subscribe(&mut b, "elsewhere");
    subscribe(&mut b, "u1");
    // Subscriptions: 5 in all (u1 u2 u3 on a, elsewhere u1 on b).
    send_json(&mut b, &json!({"type":"subscribe","topic":"u2"}));
    let e = recv_json(&mut b);
    assert_eq!(e["code"], "LIMIT_EXCEEDED", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("subscriptions"),
        "{e}"
    );
    // Unsubscribing gives the room back.
    send_text(&mut b, r#"{"type":"unsubscribe","topic":"u1"}"#);
    recv_json(&mut b);
    subscribe(&mut b, "u2");
    // Closing a connection gives back its connection, subscriptions and topics.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut c = loop {
        let mut c = connect(gw.addr, "/ws");
        send_json(&mut c, &json!({"type":"subscribe","topics":["v1", "v2"]}));
        let v = recv_json(&mut c);
        if v["type"] == "subscribed" {
            break c;
        }
        assert!(Instant::now() < deadline, "room never came back: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let s = stats(gw.addr);
    assert!(s["identityRefusals"].as_u64().unwrap() >= 3, "{s}");
    assert_eq!(s["memory"]["identities"].as_u64(), Some(2), "{s}");
    publish(&mut c, "v1", "m1", r#"{"ok":true}"#);
    drop(gw);
}

/// A TCP connection to `addr` from the source address `ip`.
fn tcp_from(ip: &str, addr: SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(ip.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}
