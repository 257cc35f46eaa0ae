//! Sessions, QoS 1 and signatures against the real gateway: `resume` after forced
//! disconnects, acks of QoS 1 deliveries (no redelivery once acked), the `fromSeq` fallback
//! when the session expired, and HMAC verification of signed deliveries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{assert_quiet, cut_repeatedly, seqs, take, wait_event, Gateway, Proxy, HISTORY};
use serde_json::json;
use subsocket_client::{ConnectionState, Event, MicroSocket, Qos, Recovery, RetryPolicy};

const LIMIT: Duration = Duration::from_secs(20);

fn fast_retry() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(200))
}

fn qos1_config(extra: &str) -> String {
    format!("qos1_redeliver_ms = 200\n{extra}\n{HISTORY}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishes_are_acked_and_deliveries_acked_back() {
    let gw = Gateway::start(&qos1_config(""), &[]);
    let sub = MicroSocket::builder(gw.url("/ws/sub/risk.alerts"))
        .connect()
        .unwrap();
    let mut alerts = sub.stream("risk.alerts").unwrap();
    sub.wait_connected().await.unwrap();
    let publisher = MicroSocket::builder(gw.url("/ws"))
        .qos(Qos::AtLeastOnce)
        .connect()
        .unwrap();
    publisher.wait_connected().await.unwrap();
    for i in 1..=20u64 {
        let ack = publisher
            .publish("risk.alerts", &json!({ "alert": i }), None)
            .await
            .unwrap();
        assert_eq!((ack.duplicate, ack.seq_no), (false, Some(i)));
    }
    let got = take(&mut alerts, 20, LIMIT).await;
    assert_eq!(seqs(&got), (1..=20).collect::<Vec<_>>());
    assert!(got.iter().all(|m| m.qos == Qos::AtLeastOnce));
    // Several redelivery periods: an acked delivery is never sent again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stats = gw.stats().await;
    assert_eq!(stats["qos1Acks"], json!(20), "{stats}");
    assert_eq!(stats["qos1Redeliveries"], json!(0), "{stats}");
    assert_eq!(stats["qos1Unacked"], json!(0), "{stats}");
    assert_quiet(&mut alerts, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_stream_cut_mid_way_resumes_with_every_message_once_in_order() {
    const N: u64 = 1000;
    let gw = Gateway::start(&qos1_config(""), &[]);
    let proxy = Arc::new(Proxy::start(gw.port).await);
    let sub = MicroSocket::builder(proxy.url("/ws"))
        .topic("payments.settled")
        .retry(fast_retry())
        .connect()
        .unwrap();
    let mut events = sub.events();
    let mut settled = sub.stream("payments.settled").unwrap();
    sub.wait_connected().await.unwrap();
    let publisher = Arc::new(MicroSocket::builder(gw.url("/ws")).connect().unwrap());
    publisher.wait_connected().await.unwrap();
    let p = publisher.clone();
    let publishing = tokio::spawn(async move {
        for i in 1..=N {
            let ack = p
                .publish("payments.settled", &json!({ "n": i }), Qos::AtLeastOnce)
                .await
                .unwrap();
            assert_eq!(ack.seq_no, Some(i));
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let cutting = cut_repeatedly(proxy.clone(), sub.state(), 5, Duration::from_millis(80));
    let mut got = Vec::new();
    while got.len() < N as usize {
        got.extend(take(&mut settled, 1, LIMIT).await);
    }
    publishing.await.unwrap();
    let cuts = cutting.await.unwrap();
    sub.wait_connected().await.unwrap();
    assert_eq!(seqs(&got), (1..=N).collect::<Vec<_>>());
    assert_quiet(&mut settled, Duration::from_millis(500)).await;
    let mut resumed = 0;
    while let Ok(e) = events.try_recv() {
        match e {
            Event::Connected {
                recovery: Recovery::Resumed,
                ..
            } => resumed += 1,
            Event::Lost { .. } | Event::Restarted { .. } | Event::SessionExpired { .. } => {
                panic!("a live session must resume without loss: {e:?}")
            }
            _ => {}
        }
    }
    assert!(
        cuts >= 3 && resumed >= cuts,
        "{resumed} resumes for {cuts} cuts"
    );
    let stats = gw.stats().await;
    assert_eq!(
        stats["qos1Unacked"],
        json!(0),
        "every delivery acked: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_falls_back_to_from_seq_without_loss() {
    let gw = Gateway::start(&format!("session_ttl_ms = 100\n{HISTORY}"), &[]);
    let proxy = Proxy::start(gw.port).await;
    let multi = MicroSocket::builder(proxy.url("/ws"))
        .topic("fx")
        .retry(fast_retry())
        .connect()
        .unwrap();
    let single = MicroSocket::builder(proxy.url("/ws/sub/fx"))
        .retry(fast_retry())
        .connect()
        .unwrap();
    let mut events = [multi.events(), single.events()];
    let mut streams = [multi.stream("fx").unwrap(), single.stream("fx").unwrap()];
    multi.wait_connected().await.unwrap();
    single.wait_connected().await.unwrap();
    gw.http_publish("fx", &json!(1)).await;
    for s in &mut streams {
        assert_eq!(seqs(&take(s, 1, LIMIT).await), [1]);
    }
    proxy.refuse(true);
    proxy.cut();
    for sock in [&multi, &single] {
        sock.state()
            .wait_for(|s| matches!(s, ConnectionState::Backoff { .. }))
            .await
            .unwrap();
    }
    for i in 2..=6 {
        gw.http_publish("fx", &json!(i)).await;
    }
    // Longer than the session TTL (the gateway sweeps once a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.refuse(false);
    for (s, ev) in streams.iter_mut().zip(&mut events) {
        wait_event(ev, LIMIT, "SessionExpired", |e| {
            matches!(e, Event::SessionExpired { .. })
        })
        .await;
        wait_event(ev, LIMIT, "a resubscribed connection", |e| {
            matches!(
                e,
                Event::Connected {
                    recovery: Recovery::Resubscribed,
                    ..
                }
            )
        })
        .await;
        let got = take(s, 5, LIMIT).await;
        assert_eq!(seqs(&got), [2, 3, 4, 5, 6]);
        assert_quiet(s, Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_deliveries_verify_and_a_wrong_key_drops_them() {
    let key_hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let key_file =
        std::env::temp_dir().join(format!("subsocket-client-key-{}.hex", std::process::id()));
    std::fs::write(&key_file, key_hex).unwrap();
    let config = format!(
        "[signing]\nkey_id = \"k1\"\nkey_hex_file = {:?}\n\n{HISTORY}",
        key_file.display().to_string()
    );
    let gw = Gateway::start(&config, &[]);
    let good = MicroSocket::builder(gw.url("/ws/sub/signed"))
        .verify_signatures("k1", hex_decode(key_hex))
        .connect()
        .unwrap();
    let bad = MicroSocket::builder(gw.url("/ws/sub/signed"))
        .verify_signatures("k1", b"not the key".to_vec())
        .connect()
        .unwrap();
    let mut good_stream = good.stream("signed").unwrap();
    let mut bad_stream = bad.stream("signed").unwrap();
    let mut bad_events = bad.events();
    good.wait_connected().await.unwrap();
    bad.wait_connected().await.unwrap();
    for i in 1..=5 {
        gw.http_publish("signed", &json!({ "v": i, "s": "é\"\\" }))
            .await;
    }
    let got = take(&mut good_stream, 5, LIMIT).await;
    assert_eq!(seqs(&got), [1, 2, 3, 4, 5]);
    assert!(got.iter().all(|m| m.signature_verified));
    for seq in 1..=5 {
        let e = wait_event(&mut bad_events, LIMIT, "BadSignature", |e| {
            matches!(e, Event::BadSignature { .. })
        })
        .await;
        assert_eq!(
            e,
            Event::BadSignature {
                topic: "signed".into(),
                seq_no: seq
            }
        );
    }
    assert_quiet(&mut bad_stream, Duration::from_millis(200)).await;
    let _ = std::fs::remove_file(key_file);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
