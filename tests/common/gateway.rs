//! The gateway under test, in-process: the test configuration, a [`TestGateway`] that is shut
//! down and joined when dropped, and `/stats` (read, polled until a condition holds, per core),
//! with helpers that open subscribers until every core holds one.
//!
//! May use the other helper modules (HTTP for `/stats`, the clients for subscribers); holds no
//! socket itself. Next to read: `ws.rs`.

use super::{http_get, subscriber, RawWs, Ws};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use subsocket::config::{Config, Cores};
use subsocket::gateway::{self, Gateway};
use subsocket_testkit::poll::poll_until;

// ----- the gateway --------------------------------------------------------------------------

/// A running gateway that is shut down and joined when dropped (also when a test panics).
pub struct TestGateway {
    gw: Option<Gateway>,
    pub addr: SocketAddr,
}

impl TestGateway {
    /// Shuts down and waits for every core; returns `join`'s result.
    pub fn stop(mut self) -> Result<(), String> {
        let gw = self.gw.take().expect("gateway still running");
        gw.shutdown();
        gw.join()
    }

    /// The gateway itself (for `shutdown` without `join`).
    pub fn gateway(&self) -> &Gateway {
        self.gw.as_ref().expect("gateway still running")
    }

    /// Takes the gateway out (the caller shuts it down and joins it).
    pub fn take(mut self) -> Gateway {
        self.gw.take().expect("gateway still running")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown();
            let _ = gw.join();
        }
    }
}

/// The configuration every test starts from: an ephemeral port on 127.0.0.1, 2 cores, a short
/// shutdown grace.
pub fn test_config() -> Config {
    Config {
        bind: "127.0.0.1:0".parse().unwrap(),
        cores: Cores::Count(2.min(subsocket::config::available_cores().len()).max(1)),
        shutdown_grace_ms: 1_000,
        ..Config::default()
    }
}

/// Starts a gateway on the test configuration changed by `tweak`.
pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestGateway {
    let mut cfg = test_config();
    tweak(&mut cfg);
    let gw = gateway::start(cfg).expect("gateway starts");
    let addr = gw.local_addr();
    TestGateway { gw: Some(gw), addr }
}

/// Starts a gateway on the test configuration.
pub fn start() -> TestGateway {
    start_with(|_| {})
}

// ----- stats --------------------------------------------------------------------------------

/// `GET /stats`, parsed.
pub fn stats(addr: SocketAddr) -> Value {
    let r = http_get(addr, "/stats");
    assert_eq!(r.status, 200, "/stats: {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("/stats is not JSON ({e})"))
}

/// Polls `/stats` until `ok` holds, at most `within`; fails with the last stats otherwise.
pub fn wait_stats(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let reached = poll_until(within, Duration::from_millis(20), || {
        let s = stats(addr);
        if ok(&s) {
            return Some(s);
        }
        last = s;
        None
    });
    reached
        .unwrap_or_else(|| panic!("/stats did not reach '{what}' within {within:?}; last: {last}"))
}

/// Per-core `connections` from `/stats`.
pub fn per_core_connections(s: &Value) -> Vec<u64> {
    s["cores"]
        .as_array()
        .expect("/stats has a cores array")
        .iter()
        .map(|c| c["connections"].as_u64().expect("per-core connections"))
        .collect()
}

/// Opens subscribers of `topic` (on `/ws`) until every core holds at least one of them and at
/// least `min` are open. Call before any other WebSocket connection exists on the gateway, so
/// that `/stats` counts only these. Connections spread over cores by SO_REUSEPORT hashing, so a
/// few tries are enough; 64 bound it.
pub fn subscribers_on_every_core(addr: SocketAddr, topic: &str, min: usize) -> Vec<Ws> {
    let mut subs = Vec::new();
    for _ in 0..64 {
        subs.push(subscriber(addr, topic));
        if subs.len() >= min {
            let per_core = per_core_connections(&stats(addr));
            if per_core.iter().all(|&n| n > 0) {
                return subs;
            }
        }
    }
    panic!("64 connections did not reach every core");
}

/// The same for raw-socket subscribers.
pub fn raw_subscribers_on_every_core(addr: SocketAddr, topic: &str, min: usize) -> Vec<RawWs> {
    let mut subs = Vec::new();
    for _ in 0..64 {
        let mut raw = RawWs::connect(addr, "/ws");
        raw.subscribe(topic);
        subs.push(raw);
        if subs.len() >= min {
            let per_core = per_core_connections(&stats(addr));
            if per_core.iter().all(|&n| n > 0) {
                return subs;
            }
        }
    }
    panic!("64 connections did not reach every core");
}
