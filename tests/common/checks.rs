//! Checks several test files share: the shape of an error answer, a [`Bystander`] (a subscriber
//! and a publisher set up before bad input, still served after it), and a protocol violation that
//! must end with a given close code while the bystander is served.
//!
//! Built only from the other helper modules; starts gateways only in [`violation_closes_with`].

use super::{
    connect, delivery_text, publish, recv_text, start_with, subscriber, wait_stats, Ending, RawWs,
    TestGateway, Ws,
};
use serde_json::Value;
use std::time::Duration;

/// Asserts `v` is `{"type":"error","code":code,"message":"…"}` (plus correlation fields).
pub fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error explains itself: {v}"
    );
}

/// Asserts the exact field order of an error answer: type, code, message first.
pub fn assert_error_text(text: &str, code: &str) -> Value {
    assert!(
        text.starts_with(&format!(r#"{{"type":"error","code":"{code}","message":""#)),
        "error shape: {text}"
    );
    let v: Value = serde_json::from_str(text).unwrap();
    assert_error(&v, code);
    v
}

/// A subscriber of `bystander` and a publisher, set up before the bad input.
pub struct Bystander {
    sub: Ws,
    publisher: Ws,
    seq: u64,
}

impl Bystander {
    pub fn new(gw: &TestGateway) -> Bystander {
        let sub = subscriber(gw.addr, "bystander");
        let publisher = connect(gw.addr, "/ws");
        Bystander {
            sub,
            publisher,
            seq: 0,
        }
    }

    /// A publish still reaches the bystander.
    pub fn still_served(&mut self) {
        self.seq += 1;
        let id = format!("after-{}", self.seq);
        assert_eq!(
            publish(&mut self.publisher, "bystander", &id, "{}"),
            self.seq
        );
        assert_eq!(
            recv_text(&mut self.sub),
            delivery_text("bystander", self.seq, &id, "{}")
        );
    }
}

/// Sends `bytes` on a fresh raw `/ws` connection and expects a close frame with `code`, then the
/// end of the TCP connection; a bystander is still served.
pub fn violation_closes_with(
    tweak: impl FnOnce(&mut subsocket::config::Config),
    bytes: &[u8],
    code: u16,
) {
    let gw = start_with(tweak);
    let mut by = Bystander::new(&gw);
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.send_raw(bytes);
    match raw.ending_within(Duration::from_secs(3)) {
        Ending::Close(c) => assert_eq!(c, Some(code), "close code"),
        other => panic!("expected close {code}, got {other:?}"),
    }
    raw.assert_tcp_ends();
    by.still_served();
    wait_stats(
        gw.addr,
        Duration::from_secs(2),
        "the closed one is gone",
        |s| s["connections"] == 2,
    );
}
