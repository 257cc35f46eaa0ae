//! Unit and property tests of [`super`] (history): kept beside the code they test, in a file of
//! their own so the module itself reads in one sitting.

use super::*;
use proptest::prelude::*;

fn rule(pattern: &str, n: Option<usize>, b: Option<usize>, age_ms: Option<u64>) -> HistoryRule {
    HistoryRule {
        pattern: pattern.into(),
        max_messages: n,
        max_bytes: b,
        max_age_ms: age_ms,
    }
}

fn history(rules: Vec<HistoryRule>, budget_bytes: usize) -> History {
    History::new(HistoryConfig {
        rules,
        budget_bytes,
        qos1_fallback: None,
    })
    .expect("valid rules")
}

/// A frame that names its topic and seqNo, padded to `len` bytes (at least the name).
fn frame(topic: &str, seq: u64, len: usize) -> Bytes {
    let mut v = format!("{topic}#{seq};").into_bytes();
    v.resize(len.max(v.len()), b'.');
    Bytes::from(v)
}

fn ms(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

/// Pushes seqNos `range` of `topic` with 10-byte frames at `now`.
fn push_range(
    h: &mut History,
    topic: &Arc<str>,
    range: std::ops::RangeInclusive<u64>,
    now: Instant,
) {
    for s in range {
        h.push(topic, s, frame(topic, s, 10), now);
    }
}

/// Checks every `from` in 0..=last+3 against "held is exactly oldest..=last".
fn assert_replays(h: &mut History, topic: &str, last: u64, held: Option<u64>, now: Instant) {
    for from in 0..=last + 3 {
        let got = h.replay_from(topic, from, last, now);
        let f = from.max(1);
        let want = if f > last + 1 {
            Err(ReplayError::FromSeqInFuture {
                from_seq: from,
                last_seq: last,
            })
        } else if f == last + 1 {
            Ok(Vec::new())
        } else {
            match held {
                Some(o) if f >= o => Ok((f..=last).map(|s| frame(topic, s, 10)).collect()),
                _ => Err(ReplayError::Unavailable {
                    oldest_held: held,
                    last_seq: last,
                }),
            }
        };
        assert_eq!(got, want, "topic {topic} from {from} last {last}");
    }
}

#[test]
fn count_limit_keeps_the_last_n() {
    let t0 = Instant::now();
    let mut h = history(vec![rule("*", Some(3), None, None)], usize::MAX);
    let a: Arc<str> = "a".into();
    assert_replays(&mut h, "a", 0, None, t0);
    push_range(&mut h, &a, 1..=3, t0);
    assert_eq!(h.held("a"), Some((1, 3)));
    assert_eq!(h.evictions(), 0);
    assert_replays(&mut h, "a", 3, Some(1), t0);
    push_range(&mut h, &a, 4..=7, t0);
    assert_eq!(h.held("a"), Some((5, 7)));
    assert_eq!((h.messages(), h.evictions()), (3, 4));
    assert_replays(&mut h, "a", 7, Some(5), t0);
}

#[test]
fn byte_limit_counts_frame_bytes() {
    let t0 = Instant::now();
    let mut h = history(vec![rule("*", None, Some(30), None)], usize::MAX);
    let a: Arc<str> = "a".into();
    push_range(&mut h, &a, 1..=3, t0);
    assert_eq!(h.held("a"), Some((1, 3)), "30 bytes exactly fit");
    push_range(&mut h, &a, 4..=4, t0);
    assert_eq!(h.held("a"), Some((2, 4)));
    assert_replays(&mut h, "a", 4, Some(2), t0);
    // One frame over the limit on its own: it is not kept, and nothing before it either.
    h.push(&a, 5, frame("a", 5, 31), t0);
    assert_eq!(h.held("a"), None);
    assert_eq!((h.messages(), h.topics(), h.bytes()), (0, 0, 0));
    assert_replays(&mut h, "a", 5, None, t0);
    push_range(&mut h, &a, 6..=6, t0);
    assert_replays(&mut h, "a", 6, Some(6), t0);
}

#[test]
fn age_limit_holds_for_less_than_max_age() {
    let t0 = Instant::now();
    let mut h = history(vec![rule("*", None, None, Some(1000))], usize::MAX);
    let a: Arc<str> = "a".into();
    push_range(&mut h, &a, 1..=2, ms(t0, 0));
    push_range(&mut h, &a, 3..=3, ms(t0, 500));
    assert_eq!(h.expire(ms(t0, 999)), 0);
    assert_eq!(h.held("a"), Some((1, 3)));
    assert_eq!(h.expire(ms(t0, 1000)), 2, "exactly max_age old: gone");
    assert_eq!(h.held("a"), Some((3, 3)));
    assert_eq!(h.expirations(), 2);
    assert_eq!(h.evictions(), 0);
    // replay drops expired messages itself, without waiting for `expire`.
    assert_replays(&mut h, "a", 3, Some(3), ms(t0, 1499));
    assert_replays(&mut h, "a", 3, None, ms(t0, 1500));
    assert_eq!(h.topics(), 0);
    // A push also trims its own topic.
    push_range(&mut h, &a, 4..=4, ms(t0, 2000));
    push_range(&mut h, &a, 5..=5, ms(t0, 3000));
    assert_eq!(h.held("a"), Some((5, 5)));
}

#[test]
fn zero_limits_keep_nothing() {
    let t0 = Instant::now();
    for r in [
        rule("*", Some(0), None, None),
        rule("*", None, Some(0), None),
        rule("*", None, None, Some(0)),
    ] {
        let mut h = history(vec![r], usize::MAX);
        let a: Arc<str> = "a".into();
        push_range(&mut h, &a, 1..=3, t0);
        assert_eq!((h.messages(), h.topics()), (0, 0));
        assert_replays(&mut h, "a", 3, None, t0);
    }
    let mut h = history(vec![rule("*", None, None, None)], 0);
    let a: Arc<str> = "a".into();
    push_range(&mut h, &a, 1..=3, t0);
    assert_eq!((h.messages(), h.evictions()), (0, 3), "budget 0");
}

#[test]
fn first_matching_rule_wins() {
    let t0 = Instant::now();
    let rules = vec![
        rule("prices.BTC", Some(1), None, None),
        rule("prices.*", Some(2), None, None),
        rule("secret.*", Some(0), None, None),
        rule("*", Some(3), None, None),
        rule("never", Some(100), None, None),
    ];
    let cases = [
        ("prices.BTC", 1),
        ("prices.ETH", 2),
        ("prices.eu.ETH", 2),
        ("prices.", 2),
        ("prices", 3),
        ("pricesX", 3),
        ("secret.x", 0),
        ("never", 3),
        ("", 3),
    ];
    let mut h = history(rules, usize::MAX);
    for (name, kept) in cases {
        let t: Arc<str> = name.into();
        push_range(&mut h, &t, 1..=5, t0);
        let held = h.held(name).map_or(0, |(o, n)| n - o + 1);
        assert_eq!(held, kept, "{name:?}");
    }
    // No rule matches: no history at all.
    let mut h = history(
        vec![rule("a", None, None, None), rule("b.*", None, None, None)],
        usize::MAX,
    );
    let c: Arc<str> = "c".into();
    push_range(&mut h, &c, 1..=2, t0);
    assert_eq!((h.messages(), h.topics()), (0, 0));
    assert_replays(&mut h, "c", 2, None, t0);
    let b: Arc<str> = "b".into();
    push_range(&mut h, &b, 1..=2, t0);
    assert_eq!(h.messages(), 0, "`b.*` does not match `b`");
}

#[test]
fn qos1_messages_are_kept_under_the_fallback_when_no_rule_matches() {
    let mut h = History::new(HistoryConfig {
        rules: vec![rule("prices.*", Some(2), None, None)],
        budget_bytes: 1 << 20,
        qos1_fallback: Some(rule("*", Some(3), None, None)),
    })
    .expect("valid");
    let t0 = Instant::now();
    let pay: Arc<str> = "payments.eu".into();
    // QoS 0 on a topic no rule matches: not kept.
    h.push(&pay, 1, frame("payments.eu", 1, 20), t0);
    assert_eq!(h.held("payments.eu"), None);
    for s in 2..=6 {
        h.push_entry(
            &pay,
            s,
            frame("payments.eu", s, 20),
            None,
            Some(format!("m{s}").into()),
            t0,
        );
    }
    assert_eq!(h.held("payments.eu"), Some((4, 6)), "fallback keeps 3");
    let got = h.replay_held("payments.eu", 5, 6, t0).expect("held");
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].seq_no, got[0].qos1.as_deref()), (5, Some("m5")));
    // A configured rule wins over the fallback, for QoS 1 too.
    let p: Arc<str> = "prices.x".into();
    for s in 1..=4 {
        h.push_entry(&p, s, frame("prices.x", s, 20), None, Some("q".into()), t0);
    }
    assert_eq!(h.held("prices.x"), Some((3, 4)));
    // And QoS 0 messages are never kept by the fallback.
    let other: Arc<str> = "other".into();
    h.push(&other, 1, frame("other", 1, 20), t0);
    assert_eq!(h.held("other"), None);
}

#[test]
fn bad_patterns_are_refused() {
    for p in ["", "**", "a*", "a.*.b", "*.a", "a.**", ".*"] {
        let cfg = HistoryConfig {
            rules: vec![rule(p, None, None, None)],
            budget_bytes: 0,
            qos1_fallback: None,
        };
        assert!(History::new(cfg).is_err(), "{p:?}");
    }
    for p in ["*", "a", "a.*", "a.b.*", "a.b"] {
        let cfg = HistoryConfig {
            rules: vec![rule(p, None, None, None)],
            budget_bytes: 0,
            qos1_fallback: None,
        };
        assert!(History::new(cfg).is_ok(), "{p:?}");
    }
}

#[test]
fn rules_deserialize_from_toml() {
    #[derive(Deserialize)]
    struct File {
        history: Vec<HistoryRule>,
    }
    let f: File = toml::from_str(
        "[[history]]\npattern = \"prices.*\"\nmax_messages = 100\nmax_age_ms = 60000\n\
         [[history]]\npattern = \"*\"\nmax_bytes = 1024\n",
    )
    .expect("parses");
    assert_eq!(
        f.history,
        vec![
            rule("prices.*", Some(100), None, Some(60_000)),
            rule("*", None, Some(1024), None)
        ]
    );
    assert!(toml::from_str::<File>("[[history]]\npattern = \"*\"\nmax_msgs = 1\n").is_err());
    // No rules named: the default rule (every topic, bounded); `rules = []`: history off.
    let c: HistoryConfig = toml::from_str("budget_bytes = 5").expect("parses");
    assert_eq!(
        (c.rules, c.budget_bytes),
        (crate::history::default_rules(), 5)
    );
    let c: HistoryConfig = toml::from_str("rules = []").expect("parses");
    assert!(c.rules.is_empty());
}

#[test]
fn budget_evicts_the_oldest_across_topics() {
    let t0 = Instant::now();
    let per = 10 + ENTRY_OVERHEAD_BYTES;
    // Room for exactly 4 messages in 2 topics.
    let budget = 4 * per + 2 * TOPIC_OVERHEAD_BYTES;
    let mut h = history(vec![rule("*", None, None, None)], budget);
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    push_range(&mut h, &a, 1..=1, t0);
    push_range(&mut h, &b, 1..=2, t0);
    push_range(&mut h, &a, 2..=2, t0);
    assert_eq!(h.bytes(), budget);
    assert_eq!(h.evictions(), 0);
    // a1 is the oldest of all.
    push_range(&mut h, &a, 3..=3, t0);
    assert_eq!((h.held("a"), h.held("b")), (Some((2, 3)), Some((1, 2))));
    // then b1, b2.
    push_range(&mut h, &a, 4..=5, t0);
    assert_eq!((h.held("a"), h.held("b")), (Some((2, 5)), None));
    // b emptied: its topic overhead is freed too, so a keeps more.
    assert_eq!(h.topics(), 1);
    assert_eq!(h.evictions(), 3);
    assert!(h.bytes() <= budget);
    assert_replays(&mut h, "a", 5, Some(2), t0);
    assert_replays(&mut h, "b", 2, None, t0);
}

#[test]
fn memory_pressure_evicts_the_oldest_to_a_lower_limit() {
    let t0 = Instant::now();
    let mut h = history(vec![rule("*", None, None, None)], 1 << 20);
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    push_range(&mut h, &a, 1..=3, t0);
    push_range(&mut h, &b, 1..=3, t0);
    let per = 10 + ENTRY_OVERHEAD_BYTES;
    // Room for a3 and b1..b3 only: a1 and a2 are the oldest.
    let limit = 4 * per + 2 * TOPIC_OVERHEAD_BYTES;
    assert_eq!(h.evict_to(limit), 2);
    assert_eq!((h.held("a"), h.held("b")), (Some((3, 3)), Some((1, 3))));
    assert_eq!(h.evictions(), 2);
    assert_eq!(h.evict_to(0), 4);
    assert_eq!((h.messages(), h.bytes()), (0, 0));
    assert_replays(&mut h, "b", 3, None, t0);
}

#[test]
fn stale_records_are_skipped_and_compacted() {
    let t0 = Instant::now();
    let mut h = history(
        vec![
            rule("hot", Some(1), None, None),
            rule("*", None, None, None),
        ],
        usize::MAX,
    );
    let (cold, hot): (Arc<str>, Arc<str>) = ("cold".into(), "hot".into());
    push_range(&mut h, &cold, 1..=1, t0);
    push_range(&mut h, &hot, 1..=10 * COMPACT_SLACK as u64, t0);
    assert!(h.order.len() <= 2 * h.messages() + COMPACT_SLACK + 1);
    assert_eq!(h.messages(), 2);
    // The budget now evicts cold#1 (the oldest), skipping hot's stale records.
    h.budget_bytes = h.bytes() - 1;
    push_range(
        &mut h,
        &hot,
        10 * COMPACT_SLACK as u64 + 1..=10 * COMPACT_SLACK as u64 + 1,
        t0,
    );
    assert_eq!((h.held("cold"), h.messages()), (None, 1));
}

#[test]
fn a_seq_gap_drops_the_older_run() {
    let t0 = Instant::now();
    let mut h = history(vec![rule("*", None, None, None)], usize::MAX);
    let a: Arc<str> = "a".into();
    push_range(&mut h, &a, 1..=3, t0);
    push_range(&mut h, &a, 5..=6, t0);
    assert_eq!((h.held("a"), h.evictions()), (Some((5, 6)), 3));
    assert_replays(&mut h, "a", 6, Some(5), t0);
    // The sequencer is ahead of what was pushed: nothing held reaches last_seq.
    assert_replays(&mut h, "a", 7, None, t0);
}

#[test]
fn replay_boundaries_when_history_starts_late() {
    let t0 = Instant::now();
    let mut h = history(vec![rule("*", None, None, None)], usize::MAX);
    let a: Arc<str> = "a".into();
    // seqNo 1..=4 were published before history was on.
    push_range(&mut h, &a, 5..=8, t0);
    assert_replays(&mut h, "a", 8, Some(5), t0);
    assert_eq!(
        h.replay_from("a", 1, u64::MAX, t0),
        Err(ReplayError::Unavailable {
            oldest_held: None,
            last_seq: u64::MAX
        })
    );
}

/// The model: every live entry in push order, trimmed by the rules written out naively.
struct Model {
    rules: Vec<HistoryRule>,
    budget: usize,
    /// (topic, seq, frame, arrival ms), oldest first.
    live: Vec<(usize, u64, Bytes, u64)>,
    evictions: u64,
    expirations: u64,
}

impl Model {
    fn rule(&self, name: &str) -> Option<&HistoryRule> {
        self.rules.iter().find(|r| {
            r.pattern == "*"
                || r.pattern == name
                || r.pattern
                    .strip_suffix('*')
                    .is_some_and(|p| p.ends_with('.') && name.starts_with(p))
        })
    }

    /// Topic `t`'s live (seq, frame), oldest first.
    fn of(&self, t: usize) -> Vec<(u64, Bytes)> {
        self.live
            .iter()
            .filter(|e| e.0 == t)
            .map(|e| (e.1, e.2.clone()))
            .collect()
    }

    fn remove_oldest_of(&mut self, t: usize) {
        let i = self.live.iter().position(|e| e.0 == t).expect("has one");
        self.live.remove(i);
    }

    fn expire_topic(&mut self, t: usize, name: &str, now: u64) {
        let Some(age) = self.rule(name).and_then(|r| r.max_age_ms) else {
            return;
        };
        let before = self.live.len();
        self.live.retain(|e| e.0 != t || now - e.3 < age);
        self.expirations += (before - self.live.len()) as u64;
    }

    fn bytes(&self) -> usize {
        let mut topics: Vec<usize> = self.live.iter().map(|e| e.0).collect();
        topics.sort_unstable();
        topics.dedup();
        self.live
            .iter()
            .map(|e| e.2.len() + ENTRY_OVERHEAD_BYTES)
            .sum::<usize>()
            + topics.len() * TOPIC_OVERHEAD_BYTES
    }

    fn push(&mut self, t: usize, name: &str, seq: u64, frame: Bytes, now: u64) {
        let Some(r) = self.rule(name).cloned() else {
            return;
        };
        let held = self.of(t);
        if held.last().is_some_and(|e| e.0 + 1 != seq) {
            self.evictions += held.len() as u64;
            self.live.retain(|e| e.0 != t);
        }
        self.live.push((t, seq, frame, now));
        self.expire_topic(t, name, now);
        loop {
            let held = self.of(t);
            let bytes: usize = held.iter().map(|e| e.1.len()).sum();
            if !(r.max_messages.is_some_and(|m| held.len() > m)
                || r.max_bytes.is_some_and(|b| bytes > b))
            {
                break;
            }
            self.remove_oldest_of(t);
            self.evictions += 1;
        }
        while self.bytes() > self.budget {
            self.live.remove(0);
            self.evictions += 1;
        }
    }

    /// What a replay must answer: frames iff every seqNo in from..=last is held.
    fn replay(
        &mut self,
        t: usize,
        name: &str,
        from: u64,
        last: u64,
        now: u64,
    ) -> Result<Vec<Bytes>, ReplayError> {
        let f = from.max(1);
        if f > last + 1 {
            return Err(ReplayError::FromSeqInFuture {
                from_seq: from,
                last_seq: last,
            });
        }
        self.expire_topic(t, name, now);
        let held = self.of(t);
        let get = |s: u64| held.iter().find(|e| e.0 == s).map(|e| e.1.clone());
        let has = |s: u64| get(s).is_some();
        if (f..=last).all(has) {
            return Ok((f..=last).filter_map(get).collect());
        }
        // The smallest s with s..=last all held.
        let mut oldest = None;
        let mut s = last;
        while s >= 1 && has(s) {
            oldest = Some(s);
            s -= 1;
        }
        Err(ReplayError::Unavailable {
            oldest_held: oldest,
            last_seq: last,
        })
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Publish to topic with a frame of this length (pushed to the history).
    Push(usize, usize),
    /// Publish without pushing (a hole, or history not yet on).
    Skip(usize),
    Advance(u64),
    Expire,
    /// Replay topic from (last + 1 - back), saturating.
    Replay(usize, u64),
}

const NAMES: [&str; 5] = ["a", "prices.x", "prices.y", "b", "z"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..NAMES.len(), 0usize..60).prop_map(|(t, n)| Op::Push(t, n)),
        1 => (0..NAMES.len()).prop_map(Op::Skip),
        3 => (0u64..400).prop_map(Op::Advance),
        1 => Just(Op::Expire),
        4 => (0..NAMES.len(), 0u64..12).prop_map(|(t, b)| Op::Replay(t, b)),
    ]
}

fn limits() -> impl Strategy<Value = (Option<usize>, Option<usize>, Option<u64>)> {
    (
        proptest::option::of(0usize..6),
        proptest::option::of(0usize..200),
        proptest::option::of(0u64..1500),
    )
}

proptest! {
    #[test]
    fn history_matches_the_model(
        la in limits(),
        lp in limits(),
        lall in limits(),
        has_any in any::<bool>(),
        budget_msgs in 0usize..20,
        ops in proptest::collection::vec(op(), 0..200),
    ) {
        let mut rules = vec![
            rule("a", la.0, la.1, la.2),
            rule("prices.*", lp.0, lp.1, lp.2),
        ];
        if has_any {
            rules.push(rule("*", lall.0, lall.1, lall.2));
        }
        let budget = budget_msgs * (30 + ENTRY_OVERHEAD_BYTES) + 2 * TOPIC_OVERHEAD_BYTES;
        let mut h = history(rules.clone(), budget);
        let mut m = Model { rules, budget, live: Vec::new(), evictions: 0, expirations: 0 };
        let names: Vec<Arc<str>> = NAMES.iter().map(|n| Arc::from(*n)).collect();
        let mut last = [0u64; NAMES.len()];
        let t0 = Instant::now();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Push(t, n) => {
                    last[t] += 1;
                    let f = frame(NAMES[t], last[t], n);
                    h.push(&names[t], last[t], f.clone(), ms(t0, now));
                    m.push(t, NAMES[t], last[t], f, now);
                }
                Op::Skip(t) => last[t] += 1,
                Op::Advance(d) => now += d,
                Op::Expire => {
                    let before = m.live.len();
                    for (t, name) in NAMES.iter().enumerate() {
                        m.expire_topic(t, name, now);
                    }
                    prop_assert_eq!(h.expire(ms(t0, now)), before - m.live.len());
                }
                Op::Replay(t, back) => {
                    let from = (last[t] + 1).saturating_sub(back);
                    let got = h.replay_from(NAMES[t], from, last[t], ms(t0, now));
                    prop_assert_eq!(got, m.replay(t, NAMES[t], from, last[t], now));
                }
            }
            prop_assert_eq!(h.messages(), m.live.len());
            prop_assert_eq!(h.bytes(), m.bytes());
            prop_assert!(h.bytes() <= budget);
            prop_assert_eq!(h.evictions(), m.evictions);
            prop_assert_eq!(h.expirations(), m.expirations);
            prop_assert!(h.order.len() <= 2 * h.messages() + COMPACT_SLACK + 1);
            for (t, name) in NAMES.iter().enumerate() {
                let held = m.of(t);
                let want = held.first().zip(held.last()).map(|(o, n)| (o.0, n.0));
                prop_assert_eq!(h.held(name), want, "{}", name);
            }
        }
        // Finally every from in 0..=last+3 of every topic, after whatever was evicted.
        for (t, name) in NAMES.iter().enumerate() {
            for from in 0..=last[t] + 3 {
                let got = h.replay_from(name, from, last[t], ms(t0, now));
                prop_assert_eq!(got, m.replay(t, name, from, last[t], now), "{} from {}", name, from);
            }
        }
    }
}
