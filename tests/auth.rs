//! I1 access control against a running gateway: tokens in `setup`, `?token=` and
//! `Authorization: Bearer`; read/write rules on subscribe, publish and `/ws/sub/{topic}`;
//! requests before `setup`; expired tokens on live connections; API keys for HTTP publish.

mod common;

use common::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subsocket::auth::{ApiKeyConfig, AuthMode};

const SECRET: &str = "test-secret-for-the-auth-tests";
const API_KEY: &str = "k-publisher-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, read: &[&str], write: &[&str], exp: u64) -> String {
    let claims = json!({ "sub": sub, "read": read, "write": write, "exp": exp });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn trader() -> String {
    token("trader", &["prices.*"], &["orders"], now() + 600)
}

fn start_auth() -> TestGateway {
    start_with(|c| {
        c.auth.mode = Some(AuthMode::Jwt);
        c.auth.hs256_secret = Some(SECRET.into());
        c.auth.leeway_s = 0;
        c.auth.api_keys = vec![ApiKeyConfig {
            id: "feed".into(),
            sha256: hex::encode(Sha256::digest(API_KEY.as_bytes())),
            write: vec!["prices.*".into()],
        }];
    })
}

fn setup(ws: &mut Ws, token: &str) -> Value {
    send_json(ws, &json!({"type": "setup", "token": token}));
    recv_json(ws)
}

#[test]
fn nothing_but_setup_is_served_before_authentication() {
    let gw = start_auth();
    let mut ws = connect(gw.addr, "/ws");
    send_text(&mut ws, r#"{"type":"subscribe","topic":"prices.BTC"}"#);
    let e = recv_json(&mut ws);
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "UNAUTHORIZED");
    send_text(
        &mut ws,
        r#"{"type":"publish","topic":"orders","messageId":"m1","payload":1}"#,
    );
    let e = recv_json(&mut ws);
    assert_eq!(
        (&e["code"], &e["topic"], &e["messageId"]),
        (&json!("UNAUTHORIZED"), &json!("orders"), &json!("m1"))
    );
    // A bad token is refused with the reason, and the connection may try again.
    let e = setup(&mut ws, "not.a.token");
    assert_eq!(e["code"], "UNAUTHORIZED", "{e}");
    let forged = {
        let claims = json!({"sub": "mallory", "read": ["*"], "exp": now() + 600});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"some other secret"),
        )
        .unwrap()
    };
    assert_eq!(setup(&mut ws, &forged)["code"], "UNAUTHORIZED");
    let expired = token("trader", &["*"], &["*"], now() - 10);
    let e = setup(&mut ws, &expired);
    assert_eq!(e["code"], "UNAUTHORIZED");
    assert!(e["message"].as_str().unwrap().contains("expired"), "{e}");
    let ready = setup(&mut ws, &trader());
    assert_eq!(ready["type"], "ready", "{ready}");
    subscribe(&mut ws, "prices.BTC");
}

#[test]
fn read_and_write_rules_are_checked_on_every_request() {
    let gw = start_auth();
    let mut ws = connect(gw.addr, "/ws");
    assert_eq!(setup(&mut ws, &trader())["type"], "ready");
    // Read: prices.* only; a batch with one forbidden topic subscribes none of them.
    send_text(
        &mut ws,
        r#"{"type":"subscribe","topics":["prices.BTC","risk.alerts"]}"#,
    );
    let e = recv_json(&mut ws);
    assert_eq!(
        (&e["code"], &e["topic"]),
        (&json!("FORBIDDEN"), &json!("risk.alerts"))
    );
    assert_eq!(stats(gw.addr)["subscriptions"], 0);
    subscribe(&mut ws, "prices.BTC");
    // Write: orders only.
    send_text(
        &mut ws,
        r#"{"type":"publish","topic":"prices.BTC","messageId":"x","payload":1}"#,
    );
    let e = recv_json(&mut ws);
    assert_eq!(
        (&e["code"], &e["topic"], &e["messageId"]),
        (&json!("FORBIDDEN"), &json!("prices.BTC"), &json!("x"))
    );
    assert_eq!(publish(&mut ws, "orders", "o1", "{}"), 1);
    // Replay is a read.
    send_text(
        &mut ws,
        r#"{"type":"replay","topic":"risk.alerts","fromSeq":1}"#,
    );
    assert_eq!(recv_json(&mut ws)["code"], "FORBIDDEN");
}

#[test]
fn a_token_on_the_upgrade_authenticates_and_micro_sockets_are_checked_at_once() {
    let gw = start_auth();
    let mut ok = connect(gw.addr, &format!("/ws/sub/prices.BTC?token={}", trader()));
    assert_eq!(
        recv_text(&mut ok),
        r#"{"type":"subscribed","topic":"prices.BTC"}"#
    );
    // Forbidden topic: told why, then closed with 1008.
    let mut raw = RawWs::connect(gw.addr, &format!("/ws/sub/risk.alerts?token={}", trader()));
    let e: Value = serde_json::from_str(raw.read_frame().text()).unwrap();
    assert_eq!(
        (&e["code"], &e["topic"]),
        (&json!("FORBIDDEN"), &json!("risk.alerts"))
    );
    assert_eq!(
        raw.ending_within(Duration::from_secs(3)),
        Ending::Close(Some(1008))
    );
    // A bad token on the upgrade: UNAUTHORIZED, then 1008.
    let mut raw = RawWs::connect(gw.addr, "/ws?token=garbage");
    let e: Value = serde_json::from_str(raw.read_frame().text()).unwrap();
    assert_eq!(e["code"], "UNAUTHORIZED");
    assert_eq!(
        raw.ending_within(Duration::from_secs(3)),
        Ending::Close(Some(1008))
    );
    // Without a token, /ws/sub waits for setup, then subscribes.
    let mut later = connect(gw.addr, "/ws/sub/prices.ETH");
    expect_silence(&mut later, Duration::from_millis(200));
    assert_eq!(setup(&mut later, &trader())["type"], "ready");
    assert_eq!(
        recv_text(&mut later),
        r#"{"type":"subscribed","topic":"prices.ETH"}"#
    );
}

#[test]
fn a_token_that_expires_on_a_live_connection_ends_it() {
    let gw = start_auth();
    let short = token("trader", &["prices.*"], &[], now() + 2);
    let mut raw = RawWs::connect(gw.addr, &format!("/ws?token={short}"));
    raw.subscribe("prices.BTC");
    match raw.ending_within(Duration::from_secs(6)) {
        Ending::Close(Some(1008)) => {}
        other => panic!("expected close 1008 after expiry, got {other:?}"),
    }
    assert!(
        raw.texts_seen.iter().any(|t| t.contains("token expired")),
        "{:?}",
        raw.texts_seen
    );
}

#[test]
fn http_publish_needs_an_api_key_with_write_access() {
    let gw = start_auth();
    let mut sub = connect(gw.addr, &format!("/ws/sub/prices.BTC?token={}", trader()));
    recv_text(&mut sub);
    let r = http_post(gw.addr, "/publish/prices.BTC", "", b"1");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = http_post(
        gw.addr,
        "/publish/prices.BTC",
        "Authorization: Bearer wrong-key\r\n",
        b"1",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let auth = format!("Authorization: Bearer {API_KEY}\r\n");
    let r = http_post(gw.addr, "/publish/orders", &auth, b"1");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"], "FORBIDDEN");
    let r = http_post(gw.addr, "/publish/prices.BTC", &auth, b"{\"px\": 2}");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        recv_delivery(&mut sub, "prices.BTC")["data"],
        json!({"px": 2})
    );
}

#[test]
fn without_authentication_everything_is_open_and_tokens_are_not_checked() {
    let gw = start();
    let mut ws = connect(gw.addr, "/ws?token=whatever");
    subscribe(&mut ws, "anything");
    assert_eq!(setup(&mut ws, "not-a-jwt")["type"], "ready");
    let r = http_post(gw.addr, "/publish/anything", "", b"1");
    assert_eq!(r.status, 200, "{}", r.text());
}
