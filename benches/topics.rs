//! `TopicTable` at scale: what one subscribe/unsubscribe, one lookup, one subscriber visited in
//! a fan-out and one connection close cost on a core's table holding 1,000,000 subscriptions.
//!
//! The table: 10,000 connections x 100 topics each. Every connection is subscribed to one hot
//! topic (10,000 subscribers, a hash set) and to 99 ordinary topics out of 99,000 (10 subscribers
//! each, a small `Vec` set), so 99,001 topics and exactly 1,000,000 subscriptions.
//!
//! Each timed call touches a different connection or topic (a prime stride through them), so
//! the numbers include the cache misses a real 1M-entry table pays, not one hot cache line.
//! Nothing is pinned: these measure the pure data structure on whatever core runs the bench.
//!
//! Run: `cargo bench --bench topics`.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use subsocket::topics::{ConnSlot, Subscribed, TopicTable, Unsubscribed};

/// Connections in the table (dense slots `0..CONNS`).
const CONNS: u32 = 10_000;
/// Topics each connection is subscribed to: the hot one plus `ORDINARY_PER_CONN` ordinary ones.
const TOPICS_PER_CONN: u32 = 100;
/// Ordinary (non-hot) topics each connection is subscribed to.
const ORDINARY_PER_CONN: u32 = TOPICS_PER_CONN - 1;
/// Ordinary topics: `CONNS * ORDINARY_PER_CONN / ORDINARY_TOPICS` = 10 subscribers each.
const ORDINARY_TOPICS: u32 = 99_000;
/// The topic every connection is subscribed to.
const HOT_TOPIC: &str = "hot.broadcast";
/// Prime stride through connections and topics, so consecutive calls touch unrelated entries.
const STRIDE: u32 = 7_919;
/// Benchmark names are padded to this width with `_` so they line up in the output.
const NAME_WIDTH: usize = 44;

/// `name` padded with `_` to [`NAME_WIDTH`].
fn padded(name: &str) -> String {
    format!("{name:_<NAME_WIDTH$}")
}

/// The ordinary topic names, index = topic number.
fn topic_names() -> Vec<String> {
    (0..ORDINARY_TOPICS)
        .map(|i| format!("room.{i:06}"))
        .collect()
}

/// The `k`-th ordinary topic (k < `ORDINARY_PER_CONN`) of connection `conn`: 99 consecutive
/// topic numbers per connection, wrapping, so every ordinary topic gets exactly 10 subscribers
/// and no connection gets one twice.
fn ordinary_topic(conn: ConnSlot, k: u32) -> usize {
    ((conn * ORDINARY_PER_CONN + k) % ORDINARY_TOPICS) as usize
}

/// An ordinary topic `conn` is NOT subscribed to (the one right after its 99).
fn foreign_topic(conn: ConnSlot) -> usize {
    ordinary_topic(conn, ORDINARY_PER_CONN)
}

/// Subscribes `conn` to its 100 topics.
fn add_conn(table: &mut TopicTable, names: &[String], conn: ConnSlot) {
    table.subscribe(conn, HOT_TOPIC);
    for k in 0..ORDINARY_PER_CONN {
        table.subscribe(conn, &names[ordinary_topic(conn, k)]);
    }
}

/// The 1M-subscription table described in the module docs.
fn full_table(names: &[String]) -> TopicTable {
    let mut table = TopicTable::new();
    for conn in 0..CONNS {
        add_conn(&mut table, names, conn);
    }
    assert_eq!(table.subscription_count(), 1_000_000);
    assert_eq!(table.topic_count(), ORDINARY_TOPICS as usize + 1);
    assert_eq!(table.subscriber_count(HOT_TOPIC), CONNS as usize);
    table
}

/// Next value of a strided cursor over `0..n`.
fn step(cursor: &Cell<u32>, n: u32) -> u32 {
    let next = (cursor.get() + STRIDE) % n;
    cursor.set(next);
    next
}

fn topics(c: &mut Criterion) {
    let names = topic_names();
    let mut table = full_table(&names);
    let subs = table.subscription_count();
    let heap = table.heap_bytes();
    eprintln!(
        "topics: {subs} subscriptions on {} topics hold {heap} heap bytes = {:.1} bytes/subscription",
        table.topic_count(),
        heap as f64 / subs as f64,
    );

    let mut g = c.benchmark_group("topics_1M");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // A new subscription on a 10-subscriber topic, then its removal: the table ends unchanged.
    let cursor = Cell::new(0);
    g.bench_function(padded("subscribe+unsubscribe_pair_10sub_topic"), |b| {
        b.iter(|| {
            let conn = step(&cursor, CONNS);
            let topic = &names[foreign_topic(conn)];
            let added = table.subscribe(conn, topic);
            let removed = table.unsubscribe(conn, topic);
            debug_assert_eq!(
                added,
                Subscribed::Added {
                    topic_created: false
                }
            );
            black_box((added, removed))
        })
    });

    // The same pair on the 10,000-subscriber (hash set) topic: unsubscribe, then subscribe back.
    g.bench_function(padded("unsubscribe+subscribe_pair_10k_sub_topic"), |b| {
        b.iter(|| {
            let conn = step(&cursor, CONNS);
            let removed = table.unsubscribe(conn, HOT_TOPIC);
            let added = table.subscribe(conn, HOT_TOPIC);
            debug_assert_eq!(
                removed,
                Unsubscribed::Removed {
                    topic_removed: false
                }
            );
            black_box((added, removed))
        })
    });

    // First subscriber of a topic (interns the name) and its last unsubscribe (frees it).
    let fresh: Vec<String> = (0..1024).map(|i| format!("fresh.{i:04}")).collect();
    g.bench_function(padded("subscribe+unsubscribe_pair_new_topic"), |b| {
        b.iter(|| {
            let conn = step(&cursor, CONNS);
            let topic = &fresh[conn as usize % fresh.len()];
            let added = table.subscribe(conn, topic);
            let removed = table.unsubscribe(conn, topic);
            debug_assert_eq!(
                removed,
                Unsubscribed::Removed {
                    topic_removed: true
                }
            );
            black_box((added, removed))
        })
    });
    assert_eq!(table.subscription_count(), 1_000_000);

    g.bench_function(padded("subscriber_count_10sub_topic"), |b| {
        b.iter(|| {
            let topic = step(&cursor, ORDINARY_TOPICS) as usize;
            black_box(table.subscriber_count(&names[topic]))
        })
    });

    // Half hits (a topic of the connection), half misses (the topic right after its range).
    g.bench_function(padded("is_subscribed_hit_or_miss"), |b| {
        b.iter(|| {
            let conn = step(&cursor, CONNS);
            let topic = if conn.is_multiple_of(2) {
                ordinary_topic(conn, conn % ORDINARY_PER_CONN)
            } else {
                foreign_topic(conn)
            };
            black_box(table.is_subscribed(conn, &names[topic]))
        })
    });

    // One fan-out's walk over the subscriber set; criterion reports the time per subscriber.
    g.throughput(Throughput::Elements(u64::from(CONNS)));
    g.bench_function(padded("for_each_subscriber_10k_sub_topic"), |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let n = table.for_each_subscriber(black_box(HOT_TOPIC), |slot| {
                sum += u64::from(slot);
            });
            black_box((n, sum))
        })
    });

    // A connection with 100 topics closes; it is re-added (untimed) before the next close.
    // The time is per connection; the throughput line counts subscriptions removed.
    g.throughput(Throughput::Elements(u64::from(TOPICS_PER_CONN)));
    let table = RefCell::new(table);
    let removed_last: Cell<Option<ConnSlot>> = Cell::new(None);
    g.bench_function(padded("remove_conn_100_topics"), |b| {
        b.iter_batched(
            || {
                if let Some(conn) = removed_last.take() {
                    add_conn(&mut table.borrow_mut(), &names, conn);
                }
                step(&cursor, CONNS)
            },
            |conn| {
                let n = table.borrow_mut().remove_conn(conn, |_| {
                    unreachable!("every topic keeps other subscribers")
                });
                removed_last.set(Some(conn));
                black_box(n)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, topics);
criterion_main!(benches);
