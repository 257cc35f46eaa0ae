//! Burst-proof delivery: a subscriber whose socket takes what it is given gets every message of
//! a burst, in order, under every slow-consumer policy, while a subscriber of the same topic that
//! never reads pays alone (cut off under `disconnect`, its deliveries dropped under `drop`).
//!
//! The burst is the one that used to cut a fast reader off with the default configuration:
//! one publisher pipelines 640 publishes of 32 KiB (20 MiB) to a topic with two subscribers, a
//! raw socket with a 4 KiB receive buffer that never reads and a reader on a thread of its own
//! that reads as fast as it can. The gateway runs its default limits (`max_backlog_bytes` 1 MiB,
//! `slow_consumer_grace_ms` 2 s, `fanout_turn_bytes` 64 MiB).

mod common;
use common::*;

use serde_json::Value;
use std::thread::JoinHandle;
use std::time::Duration;
use subsocket::config::{Config, SlowConsumerPolicy, SlowConsumerRule};
use subsocket::ws::frame::OpCode;

const TOPIC: &str = "burst";
const MESSAGES: u64 = 640;
const PAYLOAD_BYTES: usize = 32 * 1024;

/// A raw subscriber of `topics` with a 4 KiB receive buffer that never reads.
fn stalled_on(addr: std::net::SocketAddr, topics: &[&str]) -> RawWs {
    let mut raw = RawWs::with_receive_buffer(addr, "/ws", 4 * 1024);
    for t in topics {
        raw.subscribe(t);
    }
    raw
}

/// What the fast reader saw: the seqNos of its deliveries in arrival order, anything else it
/// was sent, and its socket (still open when it returns after `want` deliveries).
struct Seen {
    seqs: Vec<u64>,
    others: Vec<String>,
    ws: Option<Ws>,
}

/// A subscriber on a thread of its own that reads as fast as it can until it has `want`
/// deliveries, the connection ends, or nothing comes for 10 s.
fn fast_reader(addr: std::net::SocketAddr, want: u64) -> JoinHandle<Seen> {
    let mut ws = subscriber(addr, TOPIC);
    std::thread::spawn(move || {
        let mut seen = Seen {
            seqs: Vec::new(),
            others: Vec::new(),
            ws: None,
        };
        while (seen.seqs.len() as u64) < want {
            match ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] == "message" {
                        seen.seqs.push(v["seqNo"].as_u64().unwrap());
                    } else {
                        seen.others.push(t.to_string());
                    }
                }
                Ok(tungstenite::Message::Close(c)) => {
                    seen.others.push(format!("close {c:?}"));
                    return seen;
                }
                Ok(_) => {}
                Err(e) => {
                    seen.others.push(format!("read error: {e}"));
                    return seen;
                }
            }
        }
        seen.ws = Some(ws);
        seen
    })
}

/// Pipelines `n` publishes of [`PAYLOAD_BYTES`] each to [`TOPIC`] (all written before any ack
/// is read), then reads the `n` acks: returns the seqNos they name.
fn burst(addr: std::net::SocketAddr, first: u64, n: u64) -> Vec<u64> {
    let mut publisher = connect(addr, "/ws");
    let pad = "p".repeat(PAYLOAD_BYTES);
    for i in first..first + n {
        write_text(
            &mut publisher,
            &format!(
                r#"{{"type":"publish","topic":"{TOPIC}","messageId":"b{i}","payload":"{pad}"}}"#
            ),
        );
    }
    flush(&mut publisher);
    (0..n)
        .map(|_| {
            let ack = recv_json(&mut publisher);
            assert_eq!(ack["type"], "ack", "{ack}");
            assert_eq!(ack["status"], "ok", "{ack}");
            ack["seqNo"].as_u64().unwrap()
        })
        .collect()
}

fn assert_got_everything(seen: &Seen, from: u64, to: u64, policy: SlowConsumerPolicy) {
    assert!(
        seen.others.is_empty(),
        "{policy:?}: the fast reader was sent {:?} after {} deliveries",
        seen.others,
        seen.seqs.len()
    );
    let want: Vec<u64> = (from..=to).collect();
    assert!(
        seen.seqs == want,
        "{policy:?}: the fast reader gets seqNo {from}..={to} in order; got {} deliveries, first \
         {:?}, last {:?}",
        seen.seqs.len(),
        seen.seqs.first(),
        seen.seqs.last()
    );
}

fn fast_reader_survives_a_burst(policy: SlowConsumerPolicy) {
    let gw = start_with(|c| c.slow_consumer = policy);
    let addr = gw.addr;
    let grace = Duration::from_millis(Config::default().slow_consumer_grace_ms);
    let mut stalled = stalled_on(addr, &[TOPIC]);
    let fast = fast_reader(addr, MESSAGES);
    let acks = burst(addr, 0, MESSAGES);
    assert_eq!(acks, (1..=MESSAGES).collect::<Vec<_>>());
    let seen = fast.join().unwrap();
    assert_got_everything(&seen, 1, MESSAGES, policy);
    let s = stats(addr);
    assert_eq!(s["slowConsumerDisconnects"], 0, "{policy:?}: {s}");
    assert_eq!(
        s["drops"], 0,
        "{policy:?}: nothing is dropped within the grace: {s}"
    );

    // The stalled reader is still behind after the grace period: the policy applies to it,
    // and to it alone.
    let mut ws = seen.ws.expect("the fast reader's connection is open");
    match policy {
        SlowConsumerPolicy::Disconnect => {
            let s = wait_stats(
                addr,
                grace + Duration::from_secs(5),
                "the stalled reader cut",
                |s| s["slowConsumerDisconnects"].as_u64().unwrap() >= 1,
            );
            assert_eq!(
                s["slowConsumerDisconnects"], 1,
                "only the stalled reader: {s}"
            );
            let ending = stalled.ending_within(Duration::from_secs(5));
            assert!(
                matches!(
                    ending,
                    Ending::Close(Some(1008)) | Ending::Eof | Ending::Reset(_)
                ),
                "the stalled reader is cut off, got {ending:?}"
            );
        }
        SlowConsumerPolicy::Drop | SlowConsumerPolicy::Refill => {
            std::thread::sleep(grace + Duration::from_millis(200));
            // Past the grace, what is published next is dropped (or discarded for a refill)
            // for the stalled reader only.
            let more = 8;
            let fast = std::thread::spawn(move || {
                (0..more)
                    .map(|_| recv_delivery(&mut ws, TOPIC)["seqNo"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            });
            burst(addr, MESSAGES, more);
            let got = fast.join().unwrap();
            assert_eq!(got, (MESSAGES + 1..=MESSAGES + more).collect::<Vec<_>>());
            let s = stats(addr);
            if policy == SlowConsumerPolicy::Drop {
                assert!(
                    s["drops"].as_u64().unwrap() >= 1,
                    "the stalled reader's deliveries past the grace are dropped: {s}"
                );
                assert_eq!(s["slowConsumerDisconnects"], 0, "{s}");
            } else {
                assert!(
                    s["refillEntries"].as_u64().unwrap() >= 1,
                    "the stalled reader's backlog is discarded for a refill: {s}"
                );
                assert_eq!(
                    (&s["slowConsumerDisconnects"], &s["drops"]),
                    (&0.into(), &0.into()),
                    "{s}"
                );
            }
            let ending = stalled.ending_within(Duration::from_millis(200));
            assert!(
                matches!(ending, Ending::Open),
                "{policy:?} keeps the connection: {ending:?}"
            );
        }
    }
}

#[test]
fn a_fast_reader_gets_a_whole_burst_under_the_disconnect_policy() {
    fast_reader_survives_a_burst(SlowConsumerPolicy::Disconnect);
}

#[test]
fn a_fast_reader_gets_a_whole_burst_under_the_drop_policy() {
    fast_reader_survives_a_burst(SlowConsumerPolicy::Drop);
}

#[test]
fn a_fast_reader_gets_a_whole_burst_under_the_refill_policy() {
    fast_reader_survives_a_burst(SlowConsumerPolicy::Refill);
}

// ===== the ladder: refill and drop reports ====================================================

/// A gateway with a short write deadline (and `tweak`); a subscriber of [`TOPIC`] with a 4 KiB
/// receive buffer that does not read while `first` 32 KiB messages are published, then past the
/// deadline `more` (which find it slow): returns the gateway and that subscriber, not yet read.
fn stalled_through_a_burst(
    tweak: impl FnOnce(&mut Config),
    first: u64,
    more: u64,
) -> (TestGateway, RawWs) {
    let gw = start_with(|c| {
        c.slow_consumer_grace_ms = 200;
        tweak(c);
    });
    let stalled = stalled_on(gw.addr, &[TOPIC]);
    assert_eq!(burst(gw.addr, 0, first), (1..=first).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(400));
    burst(gw.addr, first, more);
    (gw, stalled)
}

/// Everything the subscriber reads within `quiet` of silence: deliveries' seqNos in order, and
/// the other texts.
fn read_until_quiet(raw: &mut RawWs, quiet: Duration) -> (Vec<u64>, Vec<Value>) {
    let (mut seqs, mut others) = (Vec::new(), Vec::new());
    while let Ok(f) = raw.read_frame_within(quiet) {
        if f.opcode != OpCode::Text as u8 {
            continue; // the refill's ping
        }
        let v: Value = serde_json::from_str(f.text()).unwrap();
        if v["type"] == "message" {
            seqs.push(v["seqNo"].as_u64().unwrap());
        } else {
            others.push(v);
        }
    }
    (seqs, others)
}

#[test]
fn refill_gives_a_stalled_reader_every_message_once_in_order_when_it_reads_again() {
    let (n, more) = (200, 20);
    // The policy by topic: `disconnect` for the rest.
    let (gw, mut stalled) = stalled_through_a_burst(
        |c| {
            c.slow_consumer_rules = vec![SlowConsumerRule {
                topics: TOPIC.into(),
                policy: SlowConsumerPolicy::Refill,
            }]
        },
        n,
        more,
    );
    let s = stats(gw.addr);
    assert!(s["refillEntries"].as_u64().unwrap() >= 1, "{s}");
    assert!(
        s["refillDiscards"].as_u64().unwrap() >= more,
        "its backlog and what came after it were discarded: {s}"
    );
    let (seqs, others) = read_until_quiet(&mut stalled, Duration::from_secs(2));
    assert!(others.is_empty(), "nothing but deliveries: {others:?}");
    assert!(
        seqs == (1..=n + more).collect::<Vec<_>>(),
        "every message exactly once, in order: {} deliveries, first {:?}, last {:?}, {:?}",
        seqs.len(),
        seqs.first(),
        seqs.last(),
        seqs.windows(2).find(|w| w[1] != w[0] + 1)
    );
    let s = stats(gw.addr);
    assert!(s["refillReplays"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(
        (&s["slowConsumerDisconnects"], &s["drops"]),
        (&0.into(), &0.into()),
        "{s}"
    );
    // The stream goes on live.
    burst(gw.addr, n + more, 1);
    assert_eq!(stalled.recv_json()["seqNo"], n + more + 1);
}

#[test]
fn refill_without_history_says_exactly_what_is_lost() {
    let (n, more) = (200, 20);
    let (gw, mut stalled) = stalled_through_a_burst(
        |c| {
            c.slow_consumer = SlowConsumerPolicy::Refill;
            c.history.rules = Vec::new();
        },
        n,
        more,
    );
    let (seqs, others) = read_until_quiet(&mut stalled, Duration::from_secs(2));
    let k = seqs.len() as u64;
    assert!(k < n, "some were discarded: {k}");
    assert_eq!(
        seqs,
        (1..=k).collect::<Vec<_>>(),
        "what came, came in order"
    );
    assert_eq!(others.len(), 1, "{others:?}");
    let e = &others[0];
    assert_eq!(
        (&e["type"], &e["code"], &e["topic"]),
        (&"error".into(), &"REPLAY_UNAVAILABLE".into(), &TOPIC.into()),
        "{e}"
    );
    assert_eq!(
        e["oldestSeq"],
        n + more + 1,
        "lost: seqNo {} to {}: {e}",
        k + 1,
        n + more
    );
    burst(gw.addr, n + more, 1);
    assert_eq!(stalled.recv_json()["seqNo"], n + more + 1);
}

#[test]
fn drop_reports_the_range_it_dropped_and_replay_brings_it_back() {
    let (n, more) = (200, 20);
    let (gw, mut stalled) =
        stalled_through_a_burst(|c| c.slow_consumer = SlowConsumerPolicy::Drop, n, more);
    let (seqs, others) = read_until_quiet(&mut stalled, Duration::from_secs(2));
    let k = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=k).collect::<Vec<_>>(),
        "what came, came in order"
    );
    assert!(k < n + more, "some were dropped: {k}");
    assert_eq!(others.len(), 1, "one report: {others:?}");
    let e = &others[0];
    assert_eq!(
        (&e["code"], &e["topic"], &e["fromSeq"], &e["toSeq"]),
        (
            &"SLOW_CONSUMER".into(),
            &TOPIC.into(),
            &(k + 1).into(),
            &(n + more).into()
        ),
        "{e}"
    );
    let s = stats(gw.addr);
    assert_eq!(s["drops"], n + more - k, "{s}");
    assert_eq!(s["dropReports"], 1, "{s}");
    // The report names what to ask for.
    stalled.send_text(&format!(
        r#"{{"type":"replay","topic":"{TOPIC}","fromSeq":{}}}"#,
        k + 1
    ));
    let (again, others) = read_until_quiet(&mut stalled, Duration::from_secs(2));
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(again, (k + 1..=n + more).collect::<Vec<_>>());
}

// ===== the core's backlog budget ==============================================================

/// Pipelines `n` publishes of [`PAYLOAD_BYTES`] to each of `topics` in turn, then reads the acks.
fn publish_round_robin(addr: std::net::SocketAddr, topics: &[(&str, u64)]) {
    let mut publisher = connect(addr, "/ws");
    let pad = "p".repeat(PAYLOAD_BYTES);
    let mut sent = 0;
    let most = topics.iter().map(|t| t.1).max().unwrap_or(0);
    for i in 0..most {
        for (t, n) in topics {
            if i < *n {
                write_text(
                    &mut publisher,
                    &format!(
                        r#"{{"type":"publish","topic":"{t}","messageId":"{t}{i}","payload":"{pad}"}}"#
                    ),
                );
                sent += 1;
            }
        }
    }
    flush(&mut publisher);
    for _ in 0..sent {
        let ack = recv_json(&mut publisher);
        assert_eq!(
            (&ack["type"], &ack["status"]),
            (&"ack".into(), &"ok".into()),
            "{ack}"
        );
    }
}

/// One core, a 4 MiB budget and a write deadline long enough never to matter: two stalled
/// subscribers, A with about 4.4 MiB queued for it, B with about 1.25 MiB, and a reader of
/// both topics. Over the budget, A alone is picked (the largest stalled backlog; taking it
/// brings the core under 7/8 of the budget), B keeps everything, the reader gets everything.
fn the_budget_picks_the_largest_stalled_backlog(policy: SlowConsumerPolicy) {
    let gw = start_with(|c| {
        c.cores = subsocket::config::Cores::Count(1);
        c.slow_consumer = policy;
        c.slow_consumer_grace_ms = 60_000;
        c.core_backlog_budget_bytes = 4 * 1024 * 1024;
    });
    let addr = gw.addr;
    let mut a = stalled_on(addr, &["t1", "t2"]);
    let _b = stalled_on(addr, &["t1"]);
    let mut reader = subscriber(addr, "t1");
    subscribe(&mut reader, "t2");
    let reading = std::thread::spawn(move || {
        let mut next = [1u64, 1u64];
        while next != [41, 101] {
            let m = recv_json(&mut reader);
            assert_eq!(m["type"], "message", "{m}");
            let k = usize::from(m["topic"] == "t2");
            assert_eq!(
                m["seqNo"], next[k],
                "the reader gets every message in order: {m}"
            );
            next[k] += 1;
        }
        reader
    });
    publish_round_robin(addr, &[("t1", 40), ("t2", 100)]);
    let _reader = reading.join().unwrap();
    let s = wait_stats(addr, Duration::from_secs(5), "a budget shed", |s| {
        s["budgetSheds"].as_u64() >= Some(1)
    });
    assert_eq!(
        s["budgetSheds"], 1,
        "{policy:?}: only the largest stalled backlog: {s}"
    );
    let backlog = s["backlogBytes"].as_u64().unwrap();
    assert!(
        backlog <= 4 * 1024 * 1024 * 7 / 8,
        "{policy:?}: back under 7/8 of the budget: {backlog}"
    );
    // The publisher is gone; B and the reader stay, and A too under `drop`.
    let (what, staying) = match policy {
        SlowConsumerPolicy::Disconnect => {
            assert_eq!(s["slowConsumerDisconnects"], 1, "{s}");
            let ending = a.ending_within(Duration::from_secs(5));
            assert!(
                matches!(
                    ending,
                    Ending::Close(Some(1008)) | Ending::Eof | Ending::Reset(_)
                ),
                "A is cut off, got {ending:?}"
            );
            ("A gone", 2)
        }
        SlowConsumerPolicy::Drop => {
            assert_eq!(s["slowConsumerDisconnects"], 0, "{s}");
            assert!(
                s["drops"].as_u64().unwrap() >= 50,
                "A's queued deliveries dropped: {s}"
            );
            ("publisher gone", 3)
        }
        SlowConsumerPolicy::Refill => {
            assert_eq!(s["slowConsumerDisconnects"], 0, "{s}");
            assert!(
                s["refillDiscards"].as_u64().unwrap() >= 50,
                "A's queued deliveries discarded, to be replayed: {s}"
            );
            assert_eq!(s["refillEntries"], 1, "A alone: {s}");
            ("publisher gone", 3)
        }
    };
    let s = wait_stats(addr, Duration::from_secs(5), what, |s| {
        s["connections"] == staying
    });
    assert!(
        s["backlogBytes"].as_u64().unwrap() >= 512 * 1024,
        "B keeps its backlog: {s}"
    );
}

#[test]
fn over_the_core_budget_the_largest_stalled_backlog_is_cut() {
    the_budget_picks_the_largest_stalled_backlog(SlowConsumerPolicy::Disconnect);
}

#[test]
fn over_the_core_budget_the_largest_stalled_backlog_is_dropped() {
    the_budget_picks_the_largest_stalled_backlog(SlowConsumerPolicy::Drop);
}

#[test]
fn over_the_core_budget_the_largest_stalled_backlog_is_refilled() {
    the_budget_picks_the_largest_stalled_backlog(SlowConsumerPolicy::Refill);
}
