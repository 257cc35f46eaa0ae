//! permessage-deflate (RFC 7692) end to end, on raw sockets: the upgrade's answer, deliveries
//! compressed once per publish for every subscriber that negotiated it (on every core) while
//! the others get the plain frame, small messages left plain, replays in the same variants,
//! compressed client messages with and without context takeover, a small frame that inflates
//! past the limit (1009) with a bystander still served, and the extension turned off.
//!
//! Each test starts its own 2-core gateway on an ephemeral port.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const CHROMIUM_OFFER: &str = "permessage-deflate; client_max_window_bits";
const ANSWER: &str = "permessage-deflate; server_no_context_takeover";

/// A ~1 KiB JSON price tick batch.
fn ticks() -> String {
    let rows: Vec<String> = (0..14)
        .map(|i| {
            format!(
                r#"{{"symbol":"BTC-USD","bid":{}.{:02},"ask":{}.{:02},"ts":{}}}"#,
                64_000 + i * 7 % 13,
                i * 31 % 100,
                64_001 + i * 7 % 13,
                i * 17 % 100,
                1_765_100_000_000u64 + i * 137
            )
        })
        .collect();
    format!("[{}]", rows.join(","))
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn publish(addr: std::net::SocketAddr, topic: &str, body: &str) -> Value {
    let r = http_post(addr, &format!("/publish/{topic}"), "", body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Deflating subscribers of `topic` on every core, plus one plain subscriber.
fn mixed_subscribers(addr: std::net::SocketAddr, topic: &str) -> (Vec<RawWs>, RawWs) {
    let mut zs = Vec::new();
    for _ in 0..64 {
        let (mut z, answer) = RawWs::connect_deflate(addr, "/ws", CHROMIUM_OFFER);
        assert_eq!(answer.as_deref(), Some(ANSWER));
        z.subscribe(topic);
        zs.push(z);
        if zs.len() >= 2 && per_core_connections(&stats(addr)).iter().all(|&n| n > 0) {
            break;
        }
    }
    assert!(per_core_connections(&stats(addr)).iter().all(|&n| n > 0));
    let mut plain = RawWs::connect(addr, "/ws");
    plain.subscribe(topic);
    (zs, plain)
}

#[test]
fn a_publish_is_compressed_once_for_every_core_and_plain_subscribers_get_the_plain_frame() {
    let gw = start();
    let (mut zs, mut plain) = mixed_subscribers(gw.addr, "prices");
    let body = ticks();
    assert!(body.len() > 900, "{}", body.len());
    let ack = publish(gw.addr, "prices", &body);
    let (want, was) = plain.recv_message();
    assert!(!was, "the plain subscriber gets the plain frame");
    let v: Value = serde_json::from_str(&want).unwrap();
    assert_eq!(v["seqNo"], ack["seqNo"]);
    assert_eq!(v["data"], json(&body));
    for z in &mut zs {
        let f = z.read_frame();
        assert_eq!(f.rsv, 4, "RSV1: compressed");
        assert!(
            f.payload.len() * 3 < want.len(),
            "{} -> {}",
            want.len(),
            f.payload.len()
        );
        assert_eq!(f.message_text(), want, "the same message, byte for byte");
    }
    let s = wait_stats(gw.addr, Duration::from_secs(5), "counters", |s| {
        s["deliveries"].as_u64() >= Some(zs.len() as u64 + 1)
    });
    assert_eq!(s["deflateBuilt"], 1, "compressed once, for every core: {s}");
    assert_eq!(s["deliveriesDeflated"], zs.len() as u64);
    assert_eq!(s["deflateNegotiated"], zs.len() as u64);
}

#[test]
fn small_messages_and_topics_without_compressing_subscribers_stay_plain() {
    let gw = start();
    let (mut zs, _plain) = mixed_subscribers(gw.addr, "small");
    publish(gw.addr, "small", r#"{"p":1}"#);
    for z in &mut zs {
        let f = z.read_frame();
        assert_eq!(f.rsv, 0, "below min_bytes: {f:?}");
        assert!(f.text().contains(r#""data":{"p":1}"#));
    }
    assert_eq!(stats(gw.addr)["deflateBuilt"], 0);
}

#[test]
fn a_topic_is_compressed_only_while_a_subscriber_of_it_takes_compressed_frames() {
    // Every core has compressing connections (of "zipped"); "plain-only" has none of them.
    let gw = start();
    let (mut zs, mut plain) = mixed_subscribers(gw.addr, "zipped");
    plain.subscribe("plain-only");
    publish(gw.addr, "plain-only", &ticks());
    assert!(!plain.recv_message().1);
    assert_eq!(
        stats(gw.addr)["deflateBuilt"],
        0,
        "no subscriber of it wanted it"
    );
    publish(gw.addr, "zipped", &ticks());
    assert!(zs[0].recv_message().1);
    assert!(!plain.recv_message().1);
    assert_eq!(stats(gw.addr)["deflateBuilt"], 1);
    // The compressing subscribers leave the topic (one unsubscribes, the rest close): the plain
    // one is left, and the topic is not compressed any more.
    zs[0].send_text(r#"{"type":"unsubscribe","topic":"zipped"}"#);
    assert!(zs[0].recv_text().contains("unsubscribed"));
    zs.truncate(1);
    wait_stats(
        gw.addr,
        Duration::from_secs(5),
        "only two connections left",
        |s: &Value| s["connections"] == 2,
    );
    publish(gw.addr, "zipped", &ticks());
    assert!(!plain.recv_message().1);
    assert_eq!(
        stats(gw.addr)["deflateBuilt"],
        1,
        "nothing compressed for no one"
    );
}

#[test]
fn without_a_compressing_connection_nothing_is_compressed() {
    let gw = start();
    let mut plain = RawWs::connect(gw.addr, "/ws");
    plain.subscribe("only-plain");
    publish(gw.addr, "only-plain", &ticks());
    assert!(!plain.recv_message().1);
    let s = stats(gw.addr);
    assert_eq!(s["deflateBuilt"], 0, "{s}");
}

#[test]
fn a_replay_serves_the_compressed_form_history_holds() {
    let gw = start();
    let (mut zs, _plain) = mixed_subscribers(gw.addr, "hist");
    let body = ticks();
    for _ in 0..3 {
        publish(gw.addr, "hist", &body);
    }
    for z in &mut zs {
        for _ in 0..3 {
            assert!(z.recv_message().1);
        }
    }
    let (mut late, _) = RawWs::connect_deflate(gw.addr, "/ws", "permessage-deflate");
    late.send_text(r#"{"type":"replay","topic":"hist","fromSeq":2}"#);
    for seq in 2..=3 {
        let (text, compressed) = late.recv_message();
        assert!(compressed, "replayed compressed");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["seqNo"], seq);
        assert_eq!(v["data"], json(&body));
    }
}

#[test]
fn compressed_client_messages_are_inflated_with_and_without_context_takeover() {
    let gw = start();
    for offer in [
        "permessage-deflate",
        "permessage-deflate; client_no_context_takeover",
    ] {
        let (mut z, answer) = RawWs::connect_deflate(gw.addr, "/ws", offer);
        let answer = answer.unwrap();
        assert_eq!(
            answer.contains("client_no_context_takeover"),
            offer.contains("client_no_context_takeover"),
            "{answer}"
        );
        // Each message compressed on its own is valid with or without context takeover.
        z.send_compressed(r#"{"type":"subscribe","topic":"in"}"#);
        assert_eq!(z.recv_message().0, r#"{"type":"subscribed","topic":"in"}"#);
        z.send_compressed(&format!(
            r#"{{"type":"publish","topic":"in","payload":{}}}"#,
            ticks()
        ));
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(serde_json::from_str::<Value>(&z.recv_message().0).unwrap());
        }
        assert!(got.iter().any(|v| v["type"] == "ack"), "{got:?}");
        assert!(
            got.iter()
                .any(|v| v["type"] == "message" && v["data"] == json(&ticks())),
            "{got:?}"
        );
        z.send_text(r#"{"type":"unsubscribe","topic":"in"}"#);
        assert_eq!(
            z.recv_message().0,
            r#"{"type":"unsubscribed","topic":"in"}"#
        );
    }
}

#[test]
fn a_client_compressing_with_context_takeover_may_refer_to_its_earlier_messages() {
    use flate2::{Compress, Compression, FlushCompress};
    let gw = start();
    let (mut z, _) = RawWs::connect_deflate(gw.addr, "/ws", CHROMIUM_OFFER);
    // One compressor for the whole connection, as a browser keeps it.
    let mut c = Compress::new(Compression::new(6), false);
    let mut sizes = Vec::new();
    for i in 0..5 {
        let text = format!(r#"{{"type":"subscribe","topic":"prices.instrument-{i:03}"}}"#);
        let mut body = Vec::with_capacity(256);
        c.compress_vec(text.as_bytes(), &mut body, FlushCompress::Sync)
            .unwrap();
        body.truncate(body.len() - 4);
        sizes.push(body.len());
        let mut out = Vec::new();
        subsocket::ws::frame::write_client_frame(
            &mut out,
            subsocket::ws::frame::OpCode::Text,
            &body,
            [1, 2, 3, 4],
            true,
        );
        out[0] |= subsocket::ws::frame::RSV1;
        z.send_raw(&out);
        let want = format!(r#"{{"type":"subscribed","topic":"prices.instrument-{i:03}"}}"#);
        assert_eq!(z.recv_message().0, want);
    }
    assert!(
        sizes[4] < sizes[0] / 2,
        "later messages refer back: {sizes:?}"
    );
}

#[test]
fn a_frame_that_inflates_past_the_limit_is_closed_with_1009_and_others_are_served() {
    let gw = start();
    let mut bystander = Bystander::new(&gw);
    let (mut z, _) = RawWs::connect_deflate(gw.addr, "/ws", "permessage-deflate");
    // 20 MB of spaces inside a JSON string: ~20 KB on the wire, far past max_message_bytes.
    let bomb = format!(r#"{{"type":"ping","x":"{}"}}"#, " ".repeat(20_000_000));
    z.send_compressed(&bomb);
    assert_eq!(
        z.ending_within(Duration::from_secs(5)),
        Ending::Close(Some(1009))
    );
    bystander.still_served();
    // RSV1 without the extension is a protocol error, as before.
    let mut raw = RawWs::connect(gw.addr, "/ws");
    raw.send_compressed(r#"{"type":"ping"}"#);
    assert_eq!(
        raw.ending_within(Duration::from_secs(5)),
        Ending::Close(Some(1002))
    );
}

#[test]
fn turned_off_the_extension_is_never_answered() {
    let gw = start_with(|c| c.deflate.enabled = false);
    let (mut z, answer) = RawWs::connect_deflate(gw.addr, "/ws", CHROMIUM_OFFER);
    assert_eq!(answer, None);
    z.subscribe("t");
    publish(gw.addr, "t", &ticks());
    assert!(!z.recv_message().1);
}

#[test]
fn a_client_limiting_our_window_gets_only_messages_that_fit_it_compressed() {
    let gw = start();
    let (mut z, answer) = RawWs::connect_deflate(
        gw.addr,
        "/ws",
        "permessage-deflate; server_max_window_bits=9",
    );
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9")
    );
    z.subscribe("w");
    // A 1 KiB message does not fit a 512-byte window: it goes plain.
    publish(gw.addr, "w", &ticks());
    assert!(!z.recv_message().1);
    // The echo endpoint compresses with the client's window itself.
    let gw = start_with(|c| c.echo = true);
    let (mut e, _) = RawWs::connect_deflate(
        gw.addr,
        "/echo",
        "permessage-deflate; server_max_window_bits=9",
    );
    let text = ticks();
    e.send_text(&text);
    let (back, compressed) = e.recv_message();
    assert!(compressed);
    assert_eq!(back, text);
}
