//! Fuzzes `topics::TopicTable` against a model, as uWebSockets' `TopicTree` fuzzer does.
//!
//! The input is read as 3-byte operations: a connection byte (64 slots, so a topic can cross the
//! small-set threshold of 32 subscribers), an action byte (low two bits: 0 = Subscribe,
//! 1 = Unsubscribe, 2 = Remove the connection, 3 = Query) and a topic byte (a small alphabet, so
//! operations collide). Each operation is applied to the table and to a
//! `HashMap<slot, HashSet<topic>>` model; every answer must agree, and the whole table is compared
//! with the model after the last operation. The operation count is capped so inputs stay fast.

#![no_main]

use std::collections::{BTreeSet, HashMap, HashSet};

use libfuzzer_sys::fuzz_target;
use subsocket::topics::{ConnSlot, Subscribed, TopicTable, Unsubscribed};

/// The topic alphabet: short, overlapping, one empty and one non-ASCII name.
const TOPICS: [&str; 8] = ["a", "b", "c", "a.b", "prices.*", "\u{e9}", "", "big"];
/// Number of distinct connection slots; above the small-set threshold (32).
const CONNS: u8 = 64;
/// Longest operation sequence tried per input.
const MAX_OPS: usize = 4096;

type Model = HashMap<ConnSlot, HashSet<&'static str>>;

fn topic_live(model: &Model, topic: &str) -> bool {
    model.values().any(|s| s.contains(topic))
}

fn subscribers(model: &Model, topic: &str) -> BTreeSet<ConnSlot> {
    model
        .iter()
        .filter(|(_, s)| s.contains(topic))
        .map(|(&c, _)| c)
        .collect()
}

/// Checks every query about (`conn`, `topic`) against the model.
fn check_query(table: &TopicTable, model: &Model, conn: ConnSlot, topic: &str) {
    let mine = model.get(&conn);
    assert_eq!(
        table.is_subscribed(conn, topic),
        mine.is_some_and(|s| s.contains(topic))
    );
    let expected = subscribers(model, topic);
    assert_eq!(table.subscriber_count(topic), expected.len());
    let mut out = Vec::new();
    table.subscribers_into(topic, &mut out);
    assert_eq!(out.len(), expected.len(), "no duplicate subscriber");
    assert_eq!(out.iter().copied().collect::<BTreeSet<_>>(), expected);
    let mut seen = BTreeSet::new();
    assert_eq!(
        table.for_each_subscriber(topic, |c| {
            seen.insert(c);
        }),
        expected.len()
    );
    assert_eq!(seen, expected);
    assert_eq!(table.interned(topic).is_some(), !expected.is_empty());
    let got: BTreeSet<&str> = table.topics_of(conn).map(|t| &**t).collect();
    let want: BTreeSet<&str> = mine
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    assert_eq!(got, want);
    assert_eq!(table.conn_topic_count(conn), want.len());
}

fuzz_target!(|data: &[u8]| {
    let mut table = TopicTable::new();
    let mut model = Model::new();
    let mut touched = BTreeSet::new();
    for op in data.chunks_exact(3).take(MAX_OPS) {
        let conn = ConnSlot::from(op[0] % CONNS);
        let topic = TOPICS[usize::from(op[2]) % TOPICS.len()];
        touched.insert(conn);
        match op[1] & 3 {
            0 => {
                let created = !topic_live(&model, topic);
                let expected = if model.entry(conn).or_default().insert(topic) {
                    Subscribed::Added {
                        topic_created: created,
                    }
                } else {
                    Subscribed::AlreadySubscribed
                };
                assert_eq!(table.subscribe(conn, topic), expected);
            }
            1 => {
                let expected = if model.get_mut(&conn).is_some_and(|s| s.remove(topic)) {
                    Unsubscribed::Removed {
                        topic_removed: !topic_live(&model, topic),
                    }
                } else {
                    Unsubscribed::NotSubscribed
                };
                assert_eq!(table.unsubscribe(conn, topic), expected);
            }
            2 => {
                let mine = model.remove(&conn).unwrap_or_default();
                let mut expected_gone: Vec<&str> = mine
                    .iter()
                    .copied()
                    .filter(|t| !topic_live(&model, t))
                    .collect();
                expected_gone.sort_unstable();
                let mut gone = Vec::new();
                assert_eq!(
                    table.remove_conn(conn, |t| gone.push(t.to_string())),
                    mine.len()
                );
                gone.sort_unstable();
                assert_eq!(gone, expected_gone);
            }
            _ => check_query(&table, &model, conn, topic),
        }
        let total: usize = model.values().map(HashSet::len).sum();
        assert_eq!(table.subscription_count(), total);
    }
    // The whole table against the model: each touched slot's topics, each topic's subscribers.
    for &conn in &touched {
        let got: BTreeSet<&str> = table.topics_of(conn).map(|t| &**t).collect();
        let want: BTreeSet<&str> = model
            .get(&conn)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        assert_eq!(got, want);
    }
    let mut out = Vec::new();
    for topic in TOPICS {
        table.subscribers_into(topic, &mut out);
        assert_eq!(
            out.iter().copied().collect::<BTreeSet<_>>(),
            subscribers(&model, topic)
        );
    }
    let live: HashSet<&str> = model.values().flatten().copied().collect();
    assert_eq!(table.topic_count(), live.len());
});
