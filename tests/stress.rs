//! The slow and stressful end-to-end tests: seqNo order under concurrent publishers (both write
//! paths), cleanup of hundreds of connections, and slow consumers.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subsocket::config::{Config, SlowConsumerPolicy, WritePath};

// ===== 5 and 12. seqNo gap-free and in order under concurrent publishers =====================

/// One publisher's acknowledged publishes, in the order its acks arrived: (seqNo, messageId).
type Acks = Vec<(u64, String)>;

/// A WebSocket publisher: writes all its publishes as fast as it can, then reads every ack.
fn ws_publisher(addr: SocketAddr, topic: &'static str, name: String, count: usize) -> Acks {
    let mut ws = connect(addr, "/ws");
    for i in 0..count {
        write_text(
            &mut ws,
            &format!(
                r#"{{"type":"publish","topic":"{topic}","messageId":"{name}-{i}","payload":{{"from":"{name}","i":{i}}}}}"#
            ),
        );
    }
    flush(&mut ws);
    let mut acks = Vec::with_capacity(count);
    for _ in 0..count {
        let ack = recv_json(&mut ws);
        assert_eq!(ack["type"], "ack", "{name}: {ack}");
        assert_eq!(ack["status"], "ok", "{name}: {ack}");
        acks.push((
            ack["seqNo"].as_u64().expect("seqNo"),
            ack["messageId"].as_str().unwrap().to_owned(),
        ));
    }
    acks
}

/// An HTTP publisher: `POST /publish/{topic}` on one keep-alive connection, one after another.
fn http_publisher(addr: SocketAddr, topic: &'static str, name: String, count: usize) -> Acks {
    let mut c = HttpConn::new(addr);
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("{name}-{i}");
        let body = format!(r#"{{"from":"{name}","i":{i}}}"#);
        let r = c.request(&post_request(
            &format!("/publish/{topic}"),
            &format!("Idempotency-Key: {id}\r\n"),
            body.as_bytes(),
        ));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        assert_eq!(v["messageId"], id.as_str());
        acks.push((v["seqNo"].as_u64().expect("seqNo"), id));
    }
    acks
}

/// Reads `count` deliveries and returns them as (seqNo, messageId), in arrival order.
fn read_deliveries(mut ws: Ws, topic: &str, count: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        let m = recv_delivery(&mut ws, topic);
        got.push((
            m["seqNo"].as_u64().expect("seqNo"),
            m["messageId"].as_str().unwrap().to_owned(),
        ));
    }
    // Nothing more than the publishes arrives.
    expect_silence(&mut ws, Duration::from_millis(100));
    got
}

fn seq_no_order_under_concurrent_publishers(
    tweak: impl FnOnce(&mut Config),
    ws_publishers: usize,
    http_publishers: usize,
    per_publisher: usize,
) {
    const TOPIC: &str = "seq";
    let gw = start_with(tweak);
    let addr = gw.addr;
    let total = (ws_publishers + http_publishers) * per_publisher;
    // Subscribers on both cores, so every publisher's core differs from some subscriber's.
    let subs = subscribers_on_every_core(addr, TOPIC, 4);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|ws| std::thread::spawn(move || read_deliveries(ws, TOPIC, total)))
        .collect();
    let mut publishers = Vec::new();
    for p in 0..ws_publishers {
        publishers.push(std::thread::spawn(move || {
            ws_publisher(addr, TOPIC, format!("ws{p}"), per_publisher)
        }));
    }
    for p in 0..http_publishers {
        publishers.push(std::thread::spawn(move || {
            http_publisher(addr, TOPIC, format!("http{p}"), per_publisher)
        }));
    }
    let mut seq_to_id: HashMap<u64, String> = HashMap::new();
    for (n, h) in publishers.into_iter().enumerate() {
        let acks = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        assert_eq!(acks.len(), per_publisher);
        for w in acks.windows(2) {
            assert!(
                w[0].0 < w[1].0,
                "publisher {n}: its own publishes are sequenced in the order sent: {:?} then {:?}",
                w[0],
                w[1]
            );
        }
        for (i, (seq, id)) in acks.into_iter().enumerate() {
            assert!(
                id.ends_with(&format!("-{i}")),
                "ack {i} of publisher {n} is for {id}"
            );
            if let Some(prev) = seq_to_id.insert(seq, id.clone()) {
                panic!("seqNo {seq} given twice: {prev} and {id}");
            }
        }
    }
    let seqs: BTreeSet<u64> = seq_to_id.keys().copied().collect();
    let expect: BTreeSet<u64> = (1..=total as u64).collect();
    assert!(seqs == expect, "acks' seqNos are exactly 1..={total}");
    for (n, h) in readers.into_iter().enumerate() {
        let got = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        for (i, (seq, id)) in got.iter().enumerate() {
            assert_eq!(
                *seq,
                i as u64 + 1,
                "subscriber {n}: delivery {i} has seqNo {seq} (gap, duplicate or reorder)"
            );
            assert_eq!(
                &seq_to_id[seq], id,
                "subscriber {n}: seqNo {seq} carries the acked message"
            );
        }
    }
}

#[test]
fn seq_no_is_gap_free_and_in_order_under_concurrent_websocket_publishers() {
    seq_no_order_under_concurrent_publishers(|_| {}, 4, 0, 300);
}

#[test]
fn seq_no_is_gap_free_and_in_order_with_http_publishers_mixed_in() {
    seq_no_order_under_concurrent_publishers(|_| {}, 2, 2, 300);
}

#[test]
fn seq_no_is_gap_free_and_in_order_on_the_send_write_path() {
    seq_no_order_under_concurrent_publishers(|c| c.write_path = WritePath::Send, 3, 1, 150);
}

#[test]
fn seq_no_is_gap_free_and_in_order_on_the_uring_write_path() {
    seq_no_order_under_concurrent_publishers(|c| c.write_path = WritePath::Uring, 3, 1, 150);
}

#[test]
fn a_topic_with_more_subscribers_than_a_fan_out_slice_reaches_all_of_them_in_order() {
    // Fan-out to more than `fanout_slice_subscribers` local subscribers is done in slices with
    // yields in between, and flushes of more than `flush_chunk_conns` connections in chunks;
    // both are set small here so 2,600 subscribers cross them many times on each core.
    const SUBS: usize = 2_600;
    const THREADS: usize = 4;
    const MESSAGES: u64 = 5;
    let gw = start_with(|c| {
        c.fanout_slice_subscribers = 100;
        c.flush_chunk_conns = 64;
    });
    let addr = gw.addr;
    let openers: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                (0..SUBS / THREADS)
                    .map(|_| {
                        let mut raw = RawWs::connect(addr, "/ws");
                        raw.subscribe("wide");
                        raw
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let groups: Vec<Vec<RawWs>> = openers
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect();
    let s = wait_stats(addr, Duration::from_secs(5), "all subscribed", |s| {
        s["subscriptions"] == SUBS as u64
    });
    let biggest = s["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subscriptions"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(biggest > 1024, "one core has many slices: {s}");
    let mut publisher = connect(addr, "/ws");
    for i in 1..=MESSAGES {
        assert_eq!(
            publish(&mut publisher, "wide", &format!("w{i}"), &i.to_string()),
            i
        );
    }
    let readers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                for mut raw in group {
                    for i in 1..=MESSAGES {
                        assert_eq!(
                            raw.recv_text(),
                            delivery_text("wide", i, &format!("w{i}"), &i.to_string())
                        );
                    }
                }
            })
        })
        .collect();
    for h in readers {
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    }
    let s = stats(addr);
    assert_eq!(s["deliveries"], SUBS as u64 * MESSAGES, "{s}");
}

/// A subscriber that reads, but slowly and through a small receive buffer, so the gateway's
/// writes to it keep hitting a full socket (partial sends, the blocked-writer path, buffer
/// compaction): every message must still arrive whole and in order.
fn slow_reader_gets_every_message_intact(write_path: WritePath) {
    const N: usize = 3_000;
    let gw = start_with(|c| {
        c.write_path = write_path;
        c.max_backlog_bytes = 8 * 1024 * 1024;
        c.socket_send_buffer_bytes = 8 * 1024;
    });
    let addr = gw.addr;
    let mut slow = RawWs::with_receive_buffer(addr, "/ws", 8 * 1024);
    slow.subscribe("drip");
    let payload = |i: usize| format!(r#"{{"i":{i},"pad":"{}"}}"#, "abcdefgh".repeat(100 + i % 37));
    let reader = std::thread::spawn(move || {
        for i in 0..N {
            let f = slow.read_frame();
            let expect = delivery_text("drip", i as u64 + 1, &format!("d{i}"), &payload(i));
            assert!(
                f.opcode == 1 && f.payload == expect.as_bytes(),
                "delivery {i} differs: got {:?}",
                String::from_utf8_lossy(&f.payload[..f.payload.len().min(120)])
            );
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let mut publisher = connect(addr, "/ws");
    for batch in (0..N).collect::<Vec<_>>().chunks(100) {
        for &i in batch {
            write_text(
                &mut publisher,
                &format!(
                    r#"{{"type":"publish","topic":"drip","messageId":"d{i}","payload":{}}}"#,
                    payload(i)
                ),
            );
        }
        flush(&mut publisher);
        for &i in batch {
            let ack = recv_json(&mut publisher);
            assert_eq!(ack["seqNo"], i as u64 + 1, "{ack}");
        }
    }
    reader
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let s = stats(addr);
    assert_eq!(s["slowConsumerDisconnects"], 0, "{s}");
    assert!(
        s["writesBlocked"].as_u64().unwrap() > 0,
        "the socket was full at times: {s}"
    );
}

#[test]
fn a_slow_but_reading_subscriber_gets_every_message_intact_on_the_uring_path() {
    slow_reader_gets_every_message_intact(WritePath::Uring);
}

#[test]
fn a_slow_but_reading_subscriber_gets_every_message_intact_on_the_send_path() {
    slow_reader_gets_every_message_intact(WritePath::Send);
}

// ===== 6. cleanup to zero ====================================================================

#[test]
fn hundreds_of_connections_closing_cleanly_or_abruptly_leave_nothing_behind() {
    const CONNS: usize = 300;
    const THREADS: usize = 6;
    const TOPICS: usize = 50;
    const PER_CONN: usize = 5;
    let gw = start();
    let addr = gw.addr;
    let topics_of = |i: usize| -> Vec<String> {
        (0..PER_CONN)
            .map(|k| format!("topic-{}", (i + k * 10) % TOPICS))
            .collect()
    };
    // Open and subscribe from several threads at once.
    let per_thread = CONNS / THREADS;
    let openers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                (t * per_thread..(t + 1) * per_thread)
                    .map(|i| {
                        let mut ws = connect(addr, "/ws");
                        let ts = topics_of(i);
                        let refs: Vec<&str> = ts.iter().map(String::as_str).collect();
                        subscribe_many(&mut ws, &refs);
                        (i, ws)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let groups: Vec<Vec<(usize, Ws)>> = openers
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect();
    let s = wait_stats(addr, Duration::from_secs(5), "all subscribed", |s| {
        s["connections"] == CONNS as u64
            && s["subscriptions"] == (CONNS * PER_CONN) as u64
            && s["topics"] == TOPICS as u64
    });
    assert!(
        per_core_connections(&s).iter().all(|&n| n > 0),
        "both cores hold connections: {s}"
    );
    // One publish per topic; each connection is owed PER_CONN deliveries.
    for t in 0..TOPICS {
        let r = http_post(addr, &format!("/publish/topic-{t}"), "", b"{\"n\":1}");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Even connections read their deliveries and close cleanly; odd ones drop the socket,
    // half of those with an RST (SO_LINGER 0) and unread data.
    let closers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                for (i, mut ws) in group {
                    if i % 2 == 0 {
                        let mut seen = BTreeSet::new();
                        for _ in 0..PER_CONN {
                            let m = recv_json(&mut ws);
                            assert_eq!(m["type"], "message", "{m}");
                            seen.insert(m["topic"].as_str().unwrap().to_owned());
                        }
                        assert_eq!(seen, topics_of(i).into_iter().collect::<BTreeSet<_>>());
                        close_cleanly(ws);
                    } else {
                        let stream = ws.get_ref();
                        if i % 4 == 1 {
                            socket2::SockRef::from(stream)
                                .set_linger(Some(Duration::ZERO))
                                .unwrap();
                        }
                        drop(ws);
                    }
                }
            })
        })
        .collect();
    for h in closers {
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    }
    let s = wait_stats(addr, Duration::from_secs(5), "everything gone", |s| {
        s["connections"] == 0 && s["subscriptions"] == 0 && s["topics"] == 0
    });
    for c in s["cores"].as_array().unwrap() {
        assert_eq!(c["connections"], 0, "{s}");
        assert_eq!(c["subscriptions"], 0, "{s}");
        assert_eq!(c["topics"], 0, "{s}");
        assert_eq!(c["backlogBytes"], 0, "{s}");
    }
    assert_eq!(s["wsOpened"], s["wsClosed"], "{s}");
    // The gateway still serves after the churn.
    let mut sub = subscriber(addr, "topic-0");
    let r = http_post(addr, "/publish/topic-0", "", b"2");
    assert_eq!(r.status, 200);
    let m = recv_delivery(&mut sub, "topic-0");
    assert_eq!(m["seqNo"], 2, "topic-0's seqNo continues: {m}");
}

// ===== 8. slow consumers =====================================================================

const FLOOD: &str = "flood";
const FLOOD_MESSAGES: usize = 2_000;

fn slow_consumer_config(policy: SlowConsumerPolicy) -> impl FnOnce(&mut Config) {
    move |c| {
        c.slow_consumer = policy;
        c.max_backlog_bytes = 64 * 1024;
        // The cap itself under test: no write deadline, the policy applies as soon as a
        // blocked socket's backlog is over it (tests/burst.rs covers the grace period).
        c.slow_consumer_grace_ms = 0;
        c.socket_send_buffer_bytes = 16 * 1024;
    }
}

/// A raw subscriber of [`FLOOD`] with a 4 KiB receive buffer that will not read.
fn non_reader(addr: SocketAddr) -> RawWs {
    let mut raw = RawWs::with_receive_buffer(addr, "/ws", 4 * 1024);
    raw.subscribe(FLOOD);
    raw
}

/// How far (in messages of about 1 KiB) the publisher may run ahead of the reading subscriber:
/// the test is about isolating a non-reader, not about out-publishing a reader, so the reader
/// is never more than this behind (well under its 64 KiB backlog).
const READER_LAG: usize = 24;

/// Publishes [`FLOOD_MESSAGES`] payloads of about 1 KiB in small batches (reading the acks of
/// each batch, so the publisher itself is never a slow consumer), sampling `/stats`'
/// `backlogBytes` between batches. With `reader_progress`, never runs more than
/// [`READER_LAG`] messages ahead of that reader. Returns the largest backlog sample.
fn flood(addr: SocketAddr, reader_progress: Option<&AtomicU64>) -> u64 {
    let mut publisher = connect(addr, "/ws");
    let filler = "x".repeat(1000);
    let mut max_backlog = 0;
    let mut sent = 0;
    while sent < FLOOD_MESSAGES {
        if let Some(progress) = reader_progress {
            let deadline = Instant::now() + READ_TIMEOUT;
            while (progress.load(Ordering::Acquire) as usize) + READER_LAG < sent {
                assert!(
                    Instant::now() < deadline,
                    "the reading subscriber is stuck at {} of {sent}",
                    progress.load(Ordering::Acquire)
                );
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let batch = 16.min(FLOOD_MESSAGES - sent);
        for i in sent..sent + batch {
            write_text(
                &mut publisher,
                &format!(
                    r#"{{"type":"publish","topic":"{FLOOD}","messageId":"f{i}","payload":{{"i":{i},"pad":"{filler}"}}}}"#
                ),
            );
        }
        flush(&mut publisher);
        for i in sent..sent + batch {
            let ack = recv_json(&mut publisher);
            assert_eq!(ack["messageId"], format!("f{i}"), "{ack}");
            assert_eq!(ack["seqNo"], i as u64 + 1, "{ack}");
        }
        sent += batch;
        if sent % 256 == 0 {
            let b = stats(addr)["backlogBytes"].as_u64().unwrap();
            max_backlog = max_backlog.max(b);
        }
    }
    max_backlog
}

/// A subscriber thread that reads every flood message and checks they are 1..=N in order,
/// counting them in the returned progress counter.
fn reader(addr: SocketAddr) -> (std::thread::JoinHandle<()>, Arc<AtomicU64>) {
    let mut ws = subscriber(addr, FLOOD);
    let progress = Arc::new(AtomicU64::new(0));
    let p = progress.clone();
    let h = std::thread::spawn(move || {
        for i in 1..=FLOOD_MESSAGES as u64 {
            let m = recv_delivery(&mut ws, FLOOD);
            assert_eq!(
                m["seqNo"], i,
                "the reading subscriber gets every message in order"
            );
            p.store(i, Ordering::Release);
        }
        assert_ping_pong(&mut ws);
    });
    (h, progress)
}

/// The seqNos of the deliveries among `texts`, checked to increase.
fn delivered_seqs(texts: &[String]) -> Vec<u64> {
    let seqs: Vec<u64> = texts
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|v| v["type"] == "message")
        .map(|v| v["seqNo"].as_u64().unwrap())
        .collect();
    for w in seqs.windows(2) {
        assert!(w[0] < w[1], "deliveries in order: {} then {}", w[0], w[1]);
    }
    seqs
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_and_others_get_everything() {
    slow_consumer_is_disconnected(WritePath::Uring);
}

#[test]
fn a_subscriber_that_does_not_read_is_disconnected_on_the_send_write_path() {
    slow_consumer_is_disconnected(WritePath::Send);
}

fn slow_consumer_is_disconnected(write_path: WritePath) {
    let gw = start_with(|c| {
        slow_consumer_config(SlowConsumerPolicy::Disconnect)(c);
        c.write_path = write_path;
    });
    let addr = gw.addr;
    let mut slow = non_reader(addr);
    let (reading, progress) = reader(addr);
    let t0 = Instant::now();
    let max_backlog = flood(addr, Some(&progress));
    reading
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let s = wait_stats(
        addr,
        Duration::from_secs(5),
        "a slow-consumer disconnect",
        |s| s["slowConsumerDisconnects"].as_u64().unwrap() >= 1,
    );
    assert_eq!(s["slowConsumerDisconnects"], 1, "only the non-reader: {s}");
    // 3 connections (non-reader, reader, publisher), each capped at 64 KiB plus a final
    // error/close frame.
    assert!(
        max_backlog <= 3 * (64 * 1024 + 1024),
        "backlogBytes stays bounded, peaked at {max_backlog}"
    );
    // The non-reader's socket holds some deliveries, then (maybe) SLOW_CONSUMER and close 1008,
    // then ends.
    let ending = slow.ending_within(Duration::from_secs(5));
    let seqs = delivered_seqs(&slow.texts_seen);
    assert!(
        matches!(
            ending,
            Ending::Close(Some(1008)) | Ending::Eof | Ending::Reset(_)
        ),
        "the non-reader is cut off, got {ending:?} after {} deliveries",
        seqs.len()
    );
    assert!(
        seqs.len() < FLOOD_MESSAGES,
        "it cannot have received everything"
    );
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as u64 + 1, "what it got is a gap-free prefix");
    }
    if let Some(err) = slow
        .texts_seen
        .iter()
        .find(|t| t.contains(r#""type":"error""#))
    {
        let v: Value = serde_json::from_str(err).unwrap();
        assert_eq!(v["code"], "SLOW_CONSUMER", "{v}");
    }
    wait_stats(
        addr,
        Duration::from_secs(3),
        "the non-reader is gone (and the reader and publisher left)",
        |s| s["connections"] == 0 && s["backlogBytes"] == 0,
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[test]
fn with_the_drop_policy_a_non_reader_stays_connected_and_loses_only_its_own_deliveries() {
    let gw = start_with(slow_consumer_config(SlowConsumerPolicy::Drop));
    let addr = gw.addr;
    let mut slow = non_reader(addr);
    let (reading, progress) = reader(addr);
    let max_backlog = flood(addr, Some(&progress));
    reading
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let s = wait_stats(addr, Duration::from_secs(3), "drops counted", |s| {
        s["drops"].as_u64().unwrap() > 0
    });
    assert_eq!(s["slowConsumerDisconnects"], 0, "{s}");
    // The reader and the publisher have left (their closes reach the gateway a moment after
    // they hang up); the non-reader is still connected.
    let s = wait_stats(
        addr,
        Duration::from_secs(3),
        "the reader and the publisher gone",
        |s| s["connections"].as_u64() <= Some(1),
    );
    assert_eq!(
        s["connections"], 1,
        "the non-reader is still connected: {s}"
    );
    assert!(
        max_backlog <= 3 * (64 * 1024 + 1024),
        "backlogBytes stays bounded, peaked at {max_backlog}"
    );
    // Once it reads, it gets what was queued (in order, with gaps where drops were) and is
    // served again.
    let mut texts = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "the queued deliveries do not end"
        );
        match slow.read_frame_within(Duration::from_millis(300)) {
            Ok(f) if f.opcode == 1 => texts.push(f.text().to_owned()),
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(Ending::Open) => break,
            Err(e) => panic!("the non-reader was cut off: {e:?}"),
        }
    }
    slow.send_text(r#"{"type":"ping"}"#);
    assert_eq!(slow.recv_text(), r#"{"type":"pong"}"#);
    let seqs = delivered_seqs(&texts);
    assert!(
        !seqs.is_empty() && seqs.len() < FLOOD_MESSAGES,
        "{}",
        seqs.len()
    );
    let drops = stats(addr)["drops"].as_u64().unwrap();
    assert_eq!(
        seqs.len() as u64 + drops,
        FLOOD_MESSAGES as u64,
        "every delivery was either queued or counted as a drop"
    );
    let mut publisher = connect(addr, "/ws");
    let seq = publish(&mut publisher, FLOOD, "last", "0");
    let m = serde_json::from_str::<Value>(&slow.recv_text()).unwrap();
    assert_eq!(m["seqNo"], seq, "served again after draining: {m}");
}

#[test]
fn with_the_drop_policy_an_answer_to_a_request_is_not_dropped() {
    // PROTOCOL.md: every request has its answer (`publish` -> `ack`, `ping` -> `pong`). The
    // drop policy drops deliveries; a backlogged connection that asks something must still
    // get the answer once it reads.
    let gw = start_with(slow_consumer_config(SlowConsumerPolicy::Drop));
    let addr = gw.addr;
    let mut slow = non_reader(addr);
    flood(addr, None);
    wait_stats(addr, Duration::from_secs(3), "drops counted", |s| {
        s["drops"].as_u64().unwrap() > 0
    });
    // Fill what is left under the cap with tiny deliveries (about 75 bytes each), so that an
    // answer bigger than that cannot slip in by luck.
    let mut publisher = connect(addr, "/ws");
    for i in 0..200 {
        publish(&mut publisher, FLOOD, &format!("s{i}"), "0");
    }
    // Still backlogged: ask (the ack names a long messageId, so it is ~170 bytes), then read
    // everything.
    let long_id = format!("mine-{}", "i".repeat(100));
    slow.send_text(r#"{"type":"ping"}"#);
    slow.send_text(&format!(
        r#"{{"type":"publish","topic":"elsewhere","messageId":"{long_id}","payload":1}}"#
    ));
    // Both requests are handled (the publish sequenced) before the non-reader starts reading.
    let expected = (FLOOD_MESSAGES + 200 + 1) as u64;
    wait_stats(
        addr,
        Duration::from_secs(3),
        "the publish is sequenced",
        |s| s["publishesSequenced"] == expected,
    );
    let mut texts = Vec::new();
    loop {
        match slow.read_frame_within(Duration::from_millis(500)) {
            Ok(f) if f.opcode == 1 => texts.push(f.text().to_owned()),
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(_) => break,
        }
    }
    let answers: Vec<&String> = texts
        .iter()
        .filter(|t| !t.starts_with(r#"{"type":"message""#))
        .collect();
    assert!(
        answers.iter().any(|t| *t == r#"{"type":"pong"}"#),
        "the pong was dropped; answers seen: {answers:?} among {} frames",
        texts.len()
    );
    assert!(
        answers
            .iter()
            .any(|t| t.starts_with(&format!(r#"{{"type":"ack","messageId":"{long_id}""#))),
        "the ack was dropped; answers seen: {answers:?}"
    );
}
