//! How a connection is kept alive and how it ends: heartbeat pings (spread over the interval),
//! the idle close of a silent client, and graceful shutdown (close 1001 to every client, `join`
//! within the grace period even with a client that does not read).
//!
//! Each test starts its own gateway on an ephemeral port.

mod common;

use common::*;
use std::io::Write;
use std::time::{Duration, Instant};
use subsocket::ws::frame::OpCode;

// ===== 9. heartbeats ========================================================================

#[test]
fn a_silent_client_is_pinged_then_closed_for_idleness() {
    let gw = start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 500;
    });
    let t0 = Instant::now();
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let mut pings = 0;
    let ending = loop {
        let left = Duration::from_millis(2500).saturating_sub(t0.elapsed());
        match raw.read_frame_within(left) {
            Ok(f) if f.opcode == OpCode::Ping as u8 => {
                assert_eq!(f.raw.len(), 2, "an empty ping: {f:?}");
                pings += 1;
            }
            Ok(f) if f.opcode == OpCode::Close as u8 => break Ending::Close(f.close_code()),
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(e) => break e,
        }
    };
    let took = t0.elapsed();
    assert!(
        matches!(ending, Ending::Close(Some(1008)) | Ending::Eof),
        "closed for idleness, got {ending:?} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(450),
        "not before the idle timeout: {took:?}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(pings >= 1, "pinged before being closed");
    raw.assert_tcp_ends();
    let s = wait_stats(gw.addr, Duration::from_secs(2), "closed", |s| {
        s["connections"] == 0
    });
    assert!(s["idleCloses"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn first_pings_of_a_connection_burst_are_spread_over_the_interval() {
    // 2 s interval, 1 s sweeps: without the spread every connection of a burst is first pinged
    // in the same sweep (at ~2 s); with it, some in the first sweep and some later.
    let gw = start_with(|c| {
        c.cores = subsocket::config::Cores::Count(1);
        c.ping_interval_ms = 2_000;
        c.idle_timeout_ms = 10_000;
    });
    let t0 = Instant::now();
    let mut conns: Vec<RawWs> = (0..16).map(|_| RawWs::connect(gw.addr, "/ws")).collect();
    let mut firsts: Vec<Option<Duration>> = vec![None; conns.len()];
    while firsts.iter().any(Option::is_none) {
        assert!(
            t0.elapsed() < Duration::from_millis(3_500),
            "no ping: {firsts:?}"
        );
        for (raw, first) in conns.iter_mut().zip(firsts.iter_mut()) {
            if first.is_some() {
                continue;
            }
            if let Ok(f) = raw.read_frame_within(Duration::from_millis(5)) {
                assert_eq!(f.opcode, OpCode::Ping as u8, "{f:?}");
                *first = Some(t0.elapsed());
            }
        }
    }
    let firsts: Vec<Duration> = firsts.into_iter().flatten().collect();
    let early = firsts
        .iter()
        .filter(|t| **t < Duration::from_millis(1_500))
        .count();
    assert!(
        early > 0 && early < firsts.len(),
        "first pings all in one sweep: {firsts:?}"
    );
}

#[test]
fn a_client_that_answers_pings_stays_open() {
    let gw = start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 500;
    });
    let mut ws = connect(gw.addr, "/ws");
    let mut raw_pings = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        // tungstenite answers each ping on its next read.
        match ws.read() {
            Ok(tungstenite::Message::Ping(_)) => raw_pings += 1,
            Ok(m) => panic!("unexpected {m:?} after {:?}", t0.elapsed()),
            Err(e) => panic!("closed after {:?}: {e}", t0.elapsed()),
        }
    }
    assert!(raw_pings >= 5, "pinged every ~100 ms, got {raw_pings}");
    assert_ping_pong(&mut ws);
    // A client that sends messages (not pongs) stays open too.
    let mut raw = RawWs::connect(gw.addr, "/ws");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1200) {
        raw.send_text(r#"{"type":"ping"}"#);
        assert_eq!(raw.recv_text(), r#"{"type":"pong"}"#);
        std::thread::sleep(Duration::from_millis(150));
    }
}

// ===== 10. graceful shutdown ================================================================

#[test]
fn shutdown_sends_1001_to_every_client_and_join_returns_within_the_grace_period() {
    let tg = start_with(|c| c.shutdown_grace_ms = 2_000);
    let addr = tg.addr;
    let mut raws = raw_subscribers_on_every_core(addr, "t", 4);
    let mut ws = subscriber(addr, "t");
    let gw = tg.take();
    let t0 = Instant::now();
    gw.shutdown();
    for (i, raw) in raws.iter_mut().enumerate() {
        match raw.ending_within(Duration::from_secs(3)) {
            Ending::Close(code) => assert_eq!(code, Some(1001), "client {i}"),
            other => panic!("client {i}: expected close 1001, got {other:?}"),
        }
        raw.assert_tcp_ends();
    }
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("tungstenite client: expected close 1001, got {other:?}"),
    }
    let joined = within(Duration::from_secs(5), "join", move || gw.join());
    let took = t0.elapsed();
    assert_eq!(joined, Ok(()));
    assert!(took < Duration::from_millis(2_500), "join took {took:?}");
    // New connections are refused (or end at once without an upgrade).
    match std::net::TcpStream::connect(addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(mut s) => {
            let _ = s.write_all(upgrade_request("/ws", "13").as_bytes());
            assert!(
                socket_ends_within(&mut s, Duration::from_secs(2)),
                "a connection after shutdown is not served"
            );
        }
    }
}

#[test]
fn shutdown_of_an_idle_gateway_is_quick() {
    let tg = start();
    let gw = tg.take();
    let t0 = Instant::now();
    gw.shutdown();
    let joined = within(Duration::from_secs(5), "join", move || gw.join());
    assert_eq!(joined, Ok(()));
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn shutdown_with_a_client_that_does_not_read_still_returns_within_the_grace_period() {
    let tg = start_with(|c| {
        c.shutdown_grace_ms = 1_000;
        c.max_backlog_bytes = 256 * 1024;
        c.socket_send_buffer_bytes = 8 * 1024;
    });
    let addr = tg.addr;
    let mut stuck = RawWs::with_receive_buffer(addr, "/ws", 4 * 1024);
    stuck.subscribe("t");
    let mut publisher = connect(addr, "/ws");
    let pad = "x".repeat(1000);
    for i in 0..100 {
        publish(&mut publisher, "t", &format!("m{i}"), &format!("\"{pad}\""));
    }
    wait_stats(addr, Duration::from_secs(2), "a backlog", |s| {
        s["backlogBytes"].as_u64().unwrap() > 32 * 1024
    });
    let gw = tg.take();
    let t0 = Instant::now();
    gw.shutdown();
    let joined = within(Duration::from_secs(5), "join", move || gw.join());
    assert_eq!(joined, Ok(()));
    assert!(
        t0.elapsed() < Duration::from_millis(2_000),
        "join took {:?}",
        t0.elapsed()
    );
    // The stuck client's socket ends (it may or may not have got the close frame).
    let ending = stuck.ending_within(Duration::from_secs(3));
    assert!(
        matches!(ending, Ending::Close(_) | Ending::Eof | Ending::Reset(_)),
        "{ending:?}"
    );
}
