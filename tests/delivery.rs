//! Fan-out of a publish: every subscriber, on every core, gets byte-identical frames (encoded
//! once); any JSON payload is delivered byte for byte (a property test); and the
//! publish-to-write latency is measured, with objective breaches counted.
//!
//! Each test starts its own 2-core gateway on an ephemeral port; fan-out under load is in
//! `tests/stress.rs`.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;
use subsocket::ws::frame::{self, OpCode};

// ===== 4. encode once: identical bytes for every subscriber =================================

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

// ===== I5: latency objectives ===============================================================

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
