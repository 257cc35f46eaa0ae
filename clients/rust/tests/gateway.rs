//! The client against the real gateway binary: delivery, publish/ack/duplicate, reconnects
//! (idle timeout, restart, forced disconnects mid-stream), independence of micro sockets, and
//! the latest value on subscribe.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{assert_quiet, cut_repeatedly, seqs, take, wait_event, Gateway, Proxy, HISTORY};
use serde_json::json;
use subsocket_client::{ConnectionState, Event, MicroSocket, Qos, Recovery, RetryPolicy};

const LIMIT: Duration = Duration::from_secs(20);

fn fast_retry() -> RetryPolicy {
    RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ws_socket_receives_each_topic_in_order() {
    let gw = Gateway::start(HISTORY, &[]);
    let sock = MicroSocket::builder(gw.url("/ws"))
        .topics(["alpha", "beta"])
        .connect()
        .unwrap();
    let mut alpha = sock.stream("alpha").unwrap();
    let mut beta = sock.stream("beta").unwrap();
    assert!(sock.stream("alpha").is_none(), "a stream is taken once");
    sock.wait_connected().await.unwrap();
    for i in 1..=30u64 {
        gw.http_publish("alpha", &json!({ "i": i })).await;
        gw.http_publish("beta", &json!([i, "b"])).await;
    }
    let a = take(&mut alpha, 30, LIMIT).await;
    let b = take(&mut beta, 30, LIMIT).await;
    assert_eq!(seqs(&a), (1..=30).collect::<Vec<_>>());
    assert_eq!(seqs(&b), (1..=30).collect::<Vec<_>>());
    for (i, m) in a.iter().enumerate() {
        assert_eq!(m.topic, "alpha");
        assert_eq!(
            m.json::<serde_json::Value>().unwrap(),
            json!({ "i": i + 1 })
        );
    }
    assert_eq!(
        b[4].data.get(),
        "[5,\"b\"]",
        "data byte for byte as published"
    );
    sock.close().await;
    assert_eq!(*sock.state().borrow(), ConnectionState::Closed);
    assert!(
        alpha.recv().await.is_none(),
        "streams end when the socket closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_each_topic_with_its_newest_message() {
    let gw = Gateway::start(HISTORY, &[]);
    for i in 1..=4u64 {
        gw.http_publish("px", &json!({ "i": i })).await;
    }
    let sock = MicroSocket::builder(gw.url("/ws"))
        .topic("px")
        .latest(true)
        .connect()
        .unwrap();
    let mut px = sock.stream("px").unwrap();
    let mut events = sock.events();
    sock.wait_connected().await.unwrap();
    let first = take(&mut px, 1, LIMIT).await;
    assert_eq!(seqs(&first), [4], "the current value first");
    gw.http_publish("px", &json!({ "i": 5 })).await;
    assert_eq!(seqs(&take(&mut px, 1, LIMIT).await), [5]);
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, Event::Lost { .. }),
            "older ones were not asked for: {e:?}"
        );
    }
    sock.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_socket_publishes_and_gets_ok_then_duplicate() {
    let gw = Gateway::start(HISTORY, &[]);
    let sock = MicroSocket::builder(gw.url("/ws/sub/orders"))
        .connect()
        .unwrap();
    let mut orders = sock.stream("orders").unwrap();
    sock.wait_connected().await.unwrap();

    let first = sock
        .publish("orders", &json!({ "id": 1 }), None)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.seq_no, Some(1));

    let payload = serde_json::value::to_raw_value(&json!({ "id": 2 })).unwrap();
    let id = "order-2".to_string();
    let ok = sock
        .publish_raw("orders", payload.clone(), Qos::AtMostOnce, id.clone())
        .await
        .unwrap();
    let again = sock
        .publish_raw("orders", payload, Qos::AtMostOnce, id.clone())
        .await
        .unwrap();
    assert_eq!((ok.duplicate, ok.seq_no), (false, Some(2)));
    assert_eq!(
        (again.duplicate, again.seq_no),
        (true, Some(2)),
        "the original's seqNo"
    );
    assert_eq!(again.message_id, id);

    let got = take(&mut orders, 2, LIMIT).await;
    assert_eq!(seqs(&got), [1, 2]);
    assert_eq!(got[1].message_id, id);
    assert_quiet(&mut orders, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_idling_the_socket_out_is_survived_without_loss() {
    // The gateway closes connections silent for 1.5 s; a subscriber that only listens is one.
    let gw = Gateway::start(
        HISTORY,
        &["--idle-timeout-ms", "1500", "--ping-interval-ms", "60000"],
    );
    let sock = MicroSocket::builder(gw.url("/ws"))
        .topic("quiet")
        .retry(fast_retry())
        .connect()
        .unwrap();
    let mut events = sock.events();
    let mut quiet = sock.stream("quiet").unwrap();
    sock.wait_connected().await.unwrap();
    for i in 1..=3 {
        gw.http_publish("quiet", &json!(i)).await;
    }
    assert_eq!(seqs(&take(&mut quiet, 3, LIMIT).await), [1, 2, 3]);
    let gone = wait_event(&mut events, LIMIT, "a disconnect", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(format!("{gone:?}").contains("idle"), "{gone:?}");
    // Published while the socket may be down: recovered by resume or fromSeq.
    for i in 4..=6 {
        gw.http_publish("quiet", &json!(i)).await;
    }
    let back = wait_event(&mut events, LIMIT, "a reconnect", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    assert!(
        matches!(
            back,
            Event::Connected {
                recovery: Recovery::Resumed | Recovery::Resubscribed,
                ..
            }
        ),
        "{back:?}"
    );
    let got = take(&mut quiet, 3, LIMIT).await;
    assert_eq!(seqs(&got), [4, 5, 6]);
    assert_eq!(got[2].data.get(), "6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_on_the_same_port_is_reported_and_delivery_goes_on() {
    let mut gw = Gateway::start(HISTORY, &[]);
    let multi = MicroSocket::builder(gw.url("/ws"))
        .topic("news")
        .retry(fast_retry())
        .connect()
        .unwrap();
    let single = MicroSocket::builder(gw.url("/ws/sub/news"))
        .retry(fast_retry())
        .connect()
        .unwrap();
    let mut multi_events = multi.events();
    let mut single_events = single.events();
    let mut multi_news = multi.stream("news").unwrap();
    let mut single_news = single.stream("news").unwrap();
    multi.wait_connected().await.unwrap();
    single.wait_connected().await.unwrap();
    for i in 1..=5 {
        gw.http_publish("news", &json!({ "before": i })).await;
    }
    assert_eq!(
        seqs(&take(&mut multi_news, 5, LIMIT).await),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(&take(&mut single_news, 5, LIMIT).await),
        [1, 2, 3, 4, 5]
    );

    let port = gw.port;
    let gw = tokio::task::spawn_blocking(move || {
        gw.restart();
        gw
    })
    .await
    .unwrap();
    assert_eq!(gw.port, port);

    for events in [&mut multi_events, &mut single_events] {
        wait_event(events, LIMIT, "a reconnect after the restart", |e| {
            matches!(
                e,
                Event::Connected {
                    recovery: Recovery::Resubscribed,
                    ..
                }
            )
        })
        .await;
    }
    for i in 1..=3 {
        gw.http_publish("news", &json!({ "after": i })).await;
    }
    for (events, news) in [
        (&mut multi_events, &mut multi_news),
        (&mut single_events, &mut single_news),
    ] {
        let got = take(news, 3, LIMIT).await;
        assert_eq!(seqs(&got), [1, 2, 3], "the new numbering is delivered");
        assert_eq!(
            got[0].json::<serde_json::Value>().unwrap(),
            json!({ "after": 1 })
        );
        let restarted = wait_event(events, LIMIT, "Restarted", |e| {
            matches!(e, Event::Restarted { .. })
        })
        .await;
        assert_eq!(
            restarted,
            Event::Restarted {
                topic: "news".into(),
                last_seq_before: 5
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_disconnects_mid_stream_deliver_every_message_once_in_order() {
    const N: u64 = 1500;
    let gw = Gateway::start(HISTORY, &[]);
    let proxy = Arc::new(Proxy::start(gw.port).await);
    let tokens = Arc::new(AtomicU32::new(0));
    let counter = tokens.clone();
    let sub = MicroSocket::builder(proxy.url("/ws"))
        .topic("ticks")
        .token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(format!("token-{n}")) }
        })
        .retry(fast_retry())
        .connect()
        .unwrap();
    let mut events = sub.events();
    let mut ticks = sub.stream("ticks").unwrap();
    sub.wait_connected().await.unwrap();

    let publisher = Arc::new(MicroSocket::builder(gw.url("/ws")).connect().unwrap());
    publisher.wait_connected().await.unwrap();
    let p = publisher.clone();
    let publishing = tokio::spawn(async move {
        for i in 1..=N {
            let ack = p.publish("ticks", &json!({ "i": i }), None).await.unwrap();
            assert_eq!(ack.seq_no, Some(i));
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let cutting = cut_repeatedly(proxy.clone(), sub.state(), 5, Duration::from_millis(80));
    let collect = async {
        let mut got = Vec::new();
        while got.len() < N as usize {
            got.extend(take(&mut ticks, 1, LIMIT).await);
        }
        got
    };
    let got = tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("all messages within 60 s");
    publishing.await.unwrap();
    let cuts = cutting.await.unwrap();
    assert_eq!(
        seqs(&got),
        (1..=N).collect::<Vec<_>>(),
        "each seqNo once, in order"
    );
    for m in &got {
        assert_eq!(
            m.json::<serde_json::Value>().unwrap(),
            json!({ "i": m.seq_no })
        );
    }
    assert_quiet(&mut ticks, Duration::from_millis(500)).await;
    assert!(cuts >= 3, "the stream was cut {cuts} times while ready");
    sub.wait_connected().await.unwrap();
    let mut reconnects = 0;
    while let Ok(e) = events.try_recv() {
        match e {
            Event::Connected { recovery, .. } if recovery != Recovery::Fresh => reconnects += 1,
            Event::Lost { .. } | Event::Restarted { .. } => panic!("nothing may be lost: {e:?}"),
            _ => {}
        }
    }
    assert!(
        reconnects >= cuts,
        "{reconnects} recovered reconnects for {cuts} cuts"
    );
    assert!(
        tokens.load(Ordering::SeqCst) as usize > cuts,
        "the token provider is called again on every reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waits_out_a_disconnect_and_is_acked_once() {
    let gw = Gateway::start(HISTORY, &[]);
    let proxy = Proxy::start(gw.port).await;
    let watcher = MicroSocket::builder(gw.url("/ws/sub/pay"))
        .connect()
        .unwrap();
    let mut pay = watcher.stream("pay").unwrap();
    watcher.wait_connected().await.unwrap();
    let sock = MicroSocket::builder(proxy.url("/ws"))
        .retry(fast_retry())
        .publish_timeout(Duration::from_secs(15))
        .connect()
        .unwrap();
    sock.wait_connected().await.unwrap();
    let mut state = sock.state();
    proxy.refuse(true);
    proxy.cut();
    state
        .wait_for(|s| matches!(s, ConnectionState::Backoff { .. }))
        .await
        .unwrap();
    let sock = Arc::new(sock);
    let s = sock.clone();
    let pending =
        tokio::spawn(async move { s.publish("pay", &json!({ "amount": 10 }), None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !pending.is_finished(),
        "no ack while the gateway is unreachable"
    );
    proxy.refuse(false);
    let ack = pending.await.unwrap().unwrap();
    assert_eq!((ack.duplicate, ack.seq_no), (false, Some(1)));
    assert_eq!(seqs(&take(&mut pay, 1, LIMIT).await), [1]);
    assert_quiet(&mut pay, Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_or_stalled_socket_leaves_the_others_delivering() {
    let gw = Gateway::start(HISTORY, &[]);
    // Nothing listens on this port: every attempt is refused.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let failing = MicroSocket::builder(format!("ws://127.0.0.1:{dead_port}/ws"))
        .topic("prices")
        .retry(fast_retry().max_attempts(5))
        .connect()
        .unwrap();
    let mut failing_events = failing.events();
    // Never read: its one-slot buffer fills and it stops reading its connection.
    let stalled = MicroSocket::builder(gw.url("/ws/sub/prices"))
        .channel_capacity(1)
        .connect()
        .unwrap();
    let _stalled_stream = stalled.stream("prices").unwrap();
    let healthy = MicroSocket::builder(gw.url("/ws/sub/prices"))
        .connect()
        .unwrap();
    let mut prices = healthy.stream("prices").unwrap();
    stalled.wait_connected().await.unwrap();
    healthy.wait_connected().await.unwrap();

    for i in 1..=200 {
        gw.http_publish("prices", &json!({ "px": i })).await;
    }
    let got = take(&mut prices, 200, LIMIT).await;
    assert_eq!(seqs(&got), (1..=200).collect::<Vec<_>>());

    wait_event(&mut failing_events, LIMIT, "GaveUp", |e| {
        matches!(e, Event::GaveUp { .. })
    })
    .await;
    assert!(matches!(
        *failing.state().borrow(),
        ConnectionState::Failed { .. }
    ));
    let err = failing
        .publish("prices", &json!(1), None)
        .await
        .unwrap_err();
    assert!(matches!(err, subsocket_client::Error::GaveUp(_)), "{err}");
    assert!(failing.wait_connected().await.is_err());
    // The healthy one still delivers after the other gave up.
    gw.http_publish("prices", &json!({ "px": 201 })).await;
    assert_eq!(seqs(&take(&mut prices, 1, LIMIT).await), [201]);
    assert!(matches!(
        *stalled.state().borrow(),
        ConnectionState::Connected { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_down_are_recovered_without_a_later_message() {
    let gw = Gateway::start(HISTORY, &[]);
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
    let mut streams = [multi.stream("fx").unwrap(), single.stream("fx").unwrap()];
    multi.wait_connected().await.unwrap();
    single.wait_connected().await.unwrap();
    for i in 1..=2 {
        gw.http_publish("fx", &json!(i)).await;
    }
    for s in &mut streams {
        assert_eq!(seqs(&take(s, 2, LIMIT).await), [1, 2]);
    }
    proxy.refuse(true);
    proxy.cut();
    for sock in [&multi, &single] {
        sock.state()
            .wait_for(|s| matches!(s, ConnectionState::Backoff { .. }))
            .await
            .unwrap();
    }
    // Published while both are down, and nothing after: only resume / fromSeq can bring these.
    for i in 3..=7 {
        gw.http_publish("fx", &json!(i)).await;
    }
    proxy.refuse(false);
    for s in &mut streams {
        let got = take(s, 5, LIMIT).await;
        assert_eq!(seqs(&got), [3, 4, 5, 6, 7]);
        assert_eq!(got[0].data.get(), "3");
        assert_quiet(s, Duration::from_millis(300)).await;
    }
}
