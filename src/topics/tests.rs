//! Unit and property tests of [`super`] (topics): kept beside the code they test, in a file of
//! their own so the module itself reads in one sitting.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet as StdHashSet};

fn sorted_subscribers(table: &TopicTable, topic: &str) -> Vec<ConnSlot> {
    let mut out = Vec::new();
    table.subscribers_into(topic, &mut out);
    out.sort_unstable();
    out
}

fn sorted_topics(table: &TopicTable, conn: ConnSlot) -> Vec<String> {
    let mut v: Vec<String> = table.topics_of(conn).map(|t| t.to_string()).collect();
    v.sort();
    v
}

#[test]
fn first_subscriber_creates_topic_and_repeat_is_already_subscribed() {
    let mut t = TopicTable::new();
    assert_eq!(
        t.subscribe(1, "a"),
        Subscribed::Added {
            topic_created: true
        }
    );
    assert_eq!(
        t.subscribe(2, "a"),
        Subscribed::Added {
            topic_created: false
        }
    );
    assert_eq!(t.subscribe(1, "a"), Subscribed::AlreadySubscribed);
    assert_eq!(t.subscriber_count("a"), 2);
    assert_eq!(t.subscription_count(), 2);
    assert_eq!(t.topic_count(), 1);
    t.check_invariants();
}

#[test]
fn unsubscribing_last_conn_removes_topic() {
    let mut t = TopicTable::new();
    t.subscribe(1, "a");
    t.subscribe(2, "a");
    assert_eq!(
        t.unsubscribe(1, "a"),
        Unsubscribed::Removed {
            topic_removed: false
        }
    );
    assert_eq!(t.unsubscribe(1, "a"), Unsubscribed::NotSubscribed);
    assert_eq!(
        t.unsubscribe(2, "a"),
        Unsubscribed::Removed {
            topic_removed: true
        }
    );
    assert_eq!(t.topic_count(), 0);
    assert_eq!(t.subscriber_count("a"), 0);
    assert!(t.interned("a").is_none());
    t.check_invariants();
}

#[test]
fn unsubscribing_unknown_topic_or_slot_is_not_subscribed() {
    let mut t = TopicTable::new();
    assert_eq!(t.unsubscribe(7, "nope"), Unsubscribed::NotSubscribed);
    t.subscribe(1, "a");
    assert_eq!(t.unsubscribe(900, "a"), Unsubscribed::NotSubscribed);
    assert_eq!(t.remove_conn(900, |_| panic!("nothing to remove")), 0);
    t.check_invariants();
}

#[test]
fn closing_conn_removes_only_its_topics() {
    let mut t = TopicTable::new();
    t.subscribe(1, "shared");
    t.subscribe(1, "mine");
    t.subscribe(1, "also-mine");
    t.subscribe(2, "shared");
    t.subscribe(2, "theirs");
    let mut removed = Vec::new();
    assert_eq!(t.remove_conn(1, |name| removed.push(name.to_string())), 3);
    removed.sort();
    assert_eq!(removed, ["also-mine", "mine"]);
    assert_eq!(t.subscriber_count("shared"), 1);
    assert!(t.is_subscribed(2, "shared"));
    assert!(t.is_subscribed(2, "theirs"));
    assert_eq!(t.conn_topic_count(1), 0);
    assert_eq!(t.topics_of(1).count(), 0);
    assert_eq!(t.subscription_count(), 2);
    assert_eq!(t.topic_count(), 2);
    t.check_invariants();
}

#[test]
fn removed_conn_frees_its_slot_list_and_slot_can_be_reused() {
    let mut t = TopicTable::new();
    for i in 0..100 {
        t.subscribe(3, &format!("t{i}"));
    }
    assert!(t.conns[3].capacity() >= 100);
    t.remove_conn(3, |_| {});
    assert_eq!(t.conns[3].capacity(), 0, "slot list freed");
    // The slab hands slot 3 to a new connection: it starts clean.
    assert_eq!(
        t.subscribe(3, "fresh"),
        Subscribed::Added {
            topic_created: true
        }
    );
    assert_eq!(sorted_topics(&t, 3), ["fresh"]);
    t.check_invariants();
}

#[test]
fn removed_topic_ids_are_reused() {
    let mut t = TopicTable::new();
    for round in 0..10 {
        for i in 0..50 {
            t.subscribe(i, &format!("r{round}-t{i}"));
        }
        for i in 0..50 {
            t.remove_conn(i, |_| {});
        }
        t.check_invariants();
    }
    assert_eq!(t.topic_count(), 0);
    assert_eq!(t.topics.len(), 50, "ids reused across rounds");
}

#[test]
fn large_topic_promotes_to_hash_set_and_demotes_back() {
    let mut t = TopicTable::new();
    let n = SMALL_SET_MAX as ConnSlot;
    for c in 0..n {
        t.subscribe(c, "big");
    }
    let id = t.find("big").unwrap();
    assert!(matches!(t.entry(id).subs, SubscriberSet::Small(_)));
    t.subscribe(n, "big");
    assert!(matches!(t.entry(id).subs, SubscriberSet::Large(_)));
    assert_eq!(t.subscribe(n, "big"), Subscribed::AlreadySubscribed);
    assert_eq!(t.subscriber_count("big"), SMALL_SET_MAX + 1);
    assert_eq!(sorted_subscribers(&t, "big"), (0..=n).collect::<Vec<_>>());
    t.check_invariants();
    // Down to the demotion threshold: back to a Vec, same members.
    for c in (SMALL_SET_DEMOTE as ConnSlot)..=n {
        t.unsubscribe(c, "big");
    }
    assert!(matches!(t.entry(id).subs, SubscriberSet::Small(_)));
    assert_eq!(
        sorted_subscribers(&t, "big"),
        (0..SMALL_SET_DEMOTE as ConnSlot).collect::<Vec<_>>()
    );
    t.check_invariants();
}

#[test]
fn unsubscribing_from_a_huge_topic_shrinks_it() {
    let mut t = TopicTable::new();
    for c in 0..100_000 {
        t.subscribe(c, "huge");
    }
    let id = t.find("huge").unwrap();
    let full = t.entry(id).subs.heap_bytes();
    for c in 100..100_000 {
        assert!(matches!(
            t.unsubscribe(c, "huge"),
            Unsubscribed::Removed {
                topic_removed: false
            }
        ));
    }
    assert_eq!(t.subscriber_count("huge"), 100);
    let left = t.entry(id).subs.heap_bytes();
    assert!(left < full / 100, "{left} vs {full}");
    assert!(
        t.conns[5000].capacity() == 0,
        "emptied slot lists are freed"
    );
    t.check_invariants();
}

#[test]
fn for_each_subscriber_visits_each_slot_once_and_returns_the_count() {
    let mut t = TopicTable::new();
    for c in [4, 9, 2] {
        t.subscribe(c, "x");
    }
    let mut seen = Vec::new();
    assert_eq!(t.for_each_subscriber("x", |c| seen.push(c)), 3);
    seen.sort_unstable();
    assert_eq!(seen, [2, 4, 9]);
    assert_eq!(t.for_each_subscriber("unknown", |_| panic!()), 0);
    let mut out = vec![77];
    t.subscribers_into("unknown", &mut out);
    assert!(out.is_empty(), "out is cleared");
}

#[test]
fn interned_returns_the_shared_name() {
    let mut t = TopicTable::new();
    t.subscribe(1, "prices.btc");
    t.subscribe(2, "prices.btc");
    let a = t.interned("prices.btc").unwrap();
    let b = t.topics_of(2).next().unwrap();
    assert!(Arc::ptr_eq(&a, b));
}

#[test]
fn heap_stays_under_48_bytes_per_subscription_at_scale() {
    // 50k connections x 4 topics over 1k topics: 200k subscriptions, ~200 per topic.
    let mut t = TopicTable::new();
    for c in 0..50_000u32 {
        for k in 0..4u32 {
            t.subscribe(c, &format!("topic-{}", (c * 7 + k * 251) % 1000));
        }
    }
    let subs = t.subscription_count();
    assert_eq!(subs, 200_000);
    let per_sub = t.heap_bytes() as f64 / subs as f64;
    assert!(per_sub <= 48.0, "{per_sub:.1} bytes per subscription");
}

/// An operation of the model-based property test.
#[derive(Debug, Clone)]
enum Op {
    Subscribe(ConnSlot, usize),
    Unsubscribe(ConnSlot, usize),
    RemoveConn(ConnSlot),
    /// Subscribes slots `start..start+n` to the big topic, crossing the small-set threshold.
    BulkSubscribeBig(ConnSlot, u32),
    /// Unsubscribes slots `start..start+n` from the big topic.
    BulkUnsubscribeBig(ConnSlot, u32),
}

const TOPICS: [&str; 5] = ["a", "b", "c", "a.b", "\u{e9}t\u{e9}"];
const BIG: &str = "big";
const CONNS: ConnSlot = 6;
const BIG_CONNS: ConnSlot = 80;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CONNS, 0..TOPICS.len()).prop_map(|(c, t)| Op::Subscribe(c, t)),
        3 => (0..CONNS, 0..TOPICS.len()).prop_map(|(c, t)| Op::Unsubscribe(c, t)),
        1 => (0..BIG_CONNS).prop_map(Op::RemoveConn),
        1 => (0..BIG_CONNS, 0..50u32).prop_map(|(s, n)| Op::BulkSubscribeBig(s, n)),
        1 => (0..BIG_CONNS, 0..50u32).prop_map(|(s, n)| Op::BulkUnsubscribeBig(s, n)),
    ]
}

type Model = HashMap<ConnSlot, StdHashSet<String>>;

fn model_subscribe(model: &mut Model, c: ConnSlot, topic: &str) -> Subscribed {
    let existed = model.values().any(|s| s.contains(topic));
    if model.entry(c).or_default().insert(topic.to_string()) {
        Subscribed::Added {
            topic_created: !existed,
        }
    } else {
        Subscribed::AlreadySubscribed
    }
}

fn model_unsubscribe(model: &mut Model, c: ConnSlot, topic: &str) -> Unsubscribed {
    if model.get_mut(&c).is_some_and(|s| s.remove(topic)) {
        Unsubscribed::Removed {
            topic_removed: !model.values().any(|s| s.contains(topic)),
        }
    } else {
        Unsubscribed::NotSubscribed
    }
}

/// Compares every query of the table with the model.
fn assert_agrees(t: &TopicTable, model: &Model) {
    t.check_invariants();
    let mut all_topics: BTreeSet<&str> = TOPICS.iter().copied().collect();
    all_topics.insert(BIG);
    let mut total = 0;
    let mut live = BTreeSet::new();
    for c in 0..BIG_CONNS + 50 {
        let expected: BTreeSet<&str> = model
            .get(&c)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let got: BTreeSet<&str> = t.topics_of(c).map(|a| &**a).collect();
        assert_eq!(got, expected, "topics_of({c})");
        assert_eq!(t.conn_topic_count(c), expected.len());
        total += expected.len();
        live.extend(expected.iter().copied());
        for topic in &all_topics {
            assert_eq!(t.is_subscribed(c, topic), expected.contains(topic));
        }
    }
    for topic in &all_topics {
        let mut expected: Vec<ConnSlot> = model
            .iter()
            .filter(|(_, s)| s.contains(*topic))
            .map(|(&c, _)| c)
            .collect();
        expected.sort_unstable();
        assert_eq!(
            sorted_subscribers(t, topic),
            expected,
            "subscribers of {topic}"
        );
        assert_eq!(t.subscriber_count(topic), expected.len());
        let mut seen = Vec::new();
        assert_eq!(
            t.for_each_subscriber(topic, |c| seen.push(c)),
            expected.len()
        );
        seen.sort_unstable();
        assert_eq!(seen, expected);
        assert_eq!(t.interned(topic).is_some(), !expected.is_empty());
    }
    assert_eq!(t.subscription_count(), total);
    assert_eq!(t.topic_count(), live.len());
}

proptest! {
    // Each case checks every query after every op; 64 cases of up to 120 ops keep the debug
    // build's run to a few seconds while still crossing the small-set threshold many times.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_operations_agree_with_a_hash_map_model(ops in proptest::collection::vec(op(), 1..120)) {
        let mut t = TopicTable::new();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Subscribe(c, k) => {
                    prop_assert_eq!(t.subscribe(c, TOPICS[k]), model_subscribe(&mut model, c, TOPICS[k]));
                }
                Op::Unsubscribe(c, k) => {
                    prop_assert_eq!(t.unsubscribe(c, TOPICS[k]), model_unsubscribe(&mut model, c, TOPICS[k]));
                }
                Op::RemoveConn(c) => {
                    let mine = model.remove(&c).unwrap_or_default();
                    let mut expected_gone: Vec<String> = mine
                        .iter()
                        .filter(|topic| !model.values().any(|s| s.contains(*topic)))
                        .cloned()
                        .collect();
                    expected_gone.sort();
                    let mut gone = Vec::new();
                    prop_assert_eq!(t.remove_conn(c, |n| gone.push(n.to_string())), mine.len());
                    gone.sort();
                    prop_assert_eq!(gone, expected_gone);
                }
                Op::BulkSubscribeBig(start, n) => {
                    for c in start..start + n {
                        prop_assert_eq!(t.subscribe(c, BIG), model_subscribe(&mut model, c, BIG));
                    }
                }
                Op::BulkUnsubscribeBig(start, n) => {
                    for c in start..start + n {
                        prop_assert_eq!(t.unsubscribe(c, BIG), model_unsubscribe(&mut model, c, BIG));
                    }
                }
            }
            assert_agrees(&t, &model);
        }
    }
}

#[test]
fn a_topic_is_charged_to_its_creator_while_it_stays() {
    let mut t = TopicTable::new();
    t.subscribe(1, "abc");
    t.subscribe(2, "abc");
    t.subscribe(2, "de");
    assert_eq!((t.conn_created_count(1), t.conn_created_count(2)), (1, 1));
    assert!(t.created_by(1, "abc") && !t.created_by(2, "abc"));
    assert_eq!(t.name_bytes(), 5);
    // The creator leaves: nobody is charged, though the topic lives on.
    t.unsubscribe(1, "abc");
    assert_eq!(t.conn_created_count(1), 0);
    assert!(!t.created_by(2, "abc"));
    t.check_invariants();
    t.remove_conn(2, |_| {});
    assert_eq!((t.conn_created_count(2), t.name_bytes()), (0, 0));
    t.check_invariants();
}
