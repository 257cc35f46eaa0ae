//! Admission control (issue 5): subscription caps per core and per process answered with
//! `LIMIT_EXCEEDED` (never an out-of-memory), and an accept-rate limit that makes a connection
//! storm wait in the listen backlog while live connections keep being served.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use subsocket::config::Cores;

#[test]
fn the_per_core_subscription_cap_refuses_with_limit_exceeded_and_frees_on_unsubscribe() {
    let gw = start_with(|c| {
        c.cores = Cores::Count(1);
        c.max_subscriptions_per_core = 3;
    });
    let mut a = connect(gw.addr, "/ws");
    subscribe_many(&mut a, &["t1", "t2"]);
    // A batch that does not fit is refused whole.
    send_json(&mut a, &json!({"type":"subscribe","topics":["t3","t4"]}));
    let e = recv_json(&mut a);
    assert_eq!(e["code"], "LIMIT_EXCEEDED", "{e}");
    let mut b = connect(gw.addr, "/ws");
    subscribe(&mut b, "t3");
    send_json(&mut b, &json!({"type":"subscribe","topic":"t4"}));
    let e = recv_json(&mut b);
    assert_eq!(
        (&e["code"], &e["topic"]),
        (&json!("LIMIT_EXCEEDED"), &json!("t4")),
        "{e}"
    );
    // Re-subscribing what one already has needs no room.
    subscribe(&mut b, "t3");
    // A micro socket that cannot get its topic is told why and closed with 1013.
    let mut micro = RawWs::connect(gw.addr, "/ws/sub/t5");
    let e: serde_json::Value = serde_json::from_str(&micro.recv_text()).unwrap();
    assert_eq!(e["code"], "LIMIT_EXCEEDED", "{e}");
    assert_eq!(micro.read_frame().close_code(), Some(1013));
    // Room again after an unsubscribe; the refused connections still work.
    send_text(&mut a, r#"{"type":"unsubscribe","topic":"t1"}"#);
    recv_json(&mut a);
    subscribe(&mut b, "t4");
    let s = stats(gw.addr);
    assert_eq!(
        (
            s["subscriptions"].as_u64(),
            s["subscriptionsRefused"].as_u64()
        ),
        (Some(3), Some(3)),
        "{s}"
    );
}

#[test]
fn the_process_cap_is_shared_equally_by_the_cores() {
    let gw = start_with(|c| {
        c.cores = Cores::Count(2.min(subsocket::config::available_cores().len()));
        c.max_subscriptions = 4;
    });
    let cores = stats(gw.addr)["cores"].as_array().unwrap().len() as u64;
    // Fill every core: each takes 4 / cores.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        let mut ws = connect(gw.addr, "/ws");
        send_json(
            &mut ws,
            &json!({"type":"subscribe","topic":format!("p{i}")}),
        );
        match recv_json(&mut ws)["type"].as_str() {
            Some("subscribed") => held.push(ws),
            Some("error") => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(held.len() as u64, 4 / cores * cores);
    assert_eq!(refused as u64, 40 - held.len() as u64);
}

#[test]
fn a_connection_storm_is_rate_limited_while_live_connections_stay_responsive() {
    const RATE: u32 = 40;
    const STORM: usize = 120;
    let gw = start_with(|c| {
        c.cores = Cores::Count(1);
        c.max_accepts_per_sec_per_core = RATE;
    });
    let mut live = connect(gw.addr, "/ws");
    assert_ping_pong(&mut live);
    let addr = gw.addr;
    let t0 = Instant::now();
    let storm = std::thread::spawn(move || {
        // Connect everything at once (the kernel queues them), then upgrade each.
        let socks: Vec<_> = (0..STORM).map(|_| tcp(addr)).collect();
        socks
            .into_iter()
            .map(|s| RawWs::upgrade(s, "/ws"))
            .collect::<Vec<_>>()
    });
    let mut worst = Duration::ZERO;
    while !storm.is_finished() {
        let t = Instant::now();
        assert_ping_pong(&mut live);
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    let upgraded = storm.join().unwrap();
    let took = t0.elapsed();
    assert_eq!(upgraded.len(), STORM);
    // One second of burst, then RATE a second: the storm cannot finish much sooner than this.
    let floor = Duration::from_secs_f64((STORM as f64 - f64::from(RATE)) / f64::from(RATE) * 0.8);
    assert!(
        took >= floor,
        "{STORM} accepts in {took:?}, faster than {RATE}/s allows"
    );
    assert!(
        worst < Duration::from_millis(500),
        "a live ping waited {worst:?}"
    );
    assert!(stats(gw.addr)["acceptsThrottled"].as_u64() > Some(0));
}
