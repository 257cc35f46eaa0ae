//! Who sequences a topic, and the state its owner keeps.
//!
//! Every topic has exactly one owner core, `owner_shard(topic, n)`: a pure function of the name,
//! so every core computes the same answer without asking anyone. Only the owner stamps `seqNo`,
//! so `seqNo` grows by exactly one per accepted publish with no atomic and no lock: one core,
//! one counter. The owner is also where a topic's history will live (for `replay`) and where a
//! cluster backbone can hand in sequence numbers instead of [`Sequencer::next_seq`].
//!
//! Pure: no glommio, no sockets. The shard calls in here when it owns the topic.

use hashbrown::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The core (index into the shard list, not a CPU id) that sequences `topic`.
/// FNV-1a: stable across runs and builds, which matters once nodes of a cluster must agree.
#[inline]
pub fn owner_shard(topic: &str, n_shards: usize) -> usize {
    debug_assert!(n_shards > 0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Fold the high bits in: FNV's low bits are weak for short similar names.
    ((h ^ (h >> 32)) % n_shards as u64) as usize
}

/// What the owner keeps per topic.
#[derive(Debug, Default)]
struct OwnedTopic {
    /// The last `seqNo` handed out (0: never published).
    last_seq: u64,
    /// How many cores have at least one subscriber (for the distinct-topic count).
    cores_with_interest: u32,
    /// Which cores (bit i = core i, for i < 64) have a subscriber: the owner hands a delivery
    /// only to those (interest routing). Cores 64 and up are always handed every delivery.
    mask: u64,
    /// Of those, which have a subscriber that takes compressed deliveries (permessage-deflate),
    /// and which an event stream (SSE): the owner builds those forms only when some bit is set.
    zmask: u64,
    smask: u64,
}

/// The cores a topic's deliveries must go to (see [`Sequencer::wants`]), and which of them
/// want its compressed form or its event form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    mask: u64,
    zmask: u64,
    smask: u64,
}

impl Interest {
    /// Whether core `core` has a subscriber (always true from core 64 on: not tracked).
    #[inline]
    pub fn has(self, core: usize) -> bool {
        core >= 64 || self.mask & (1 << core) != 0
    }

    /// Whether some core below 64 has a subscriber taking compressed deliveries.
    #[inline]
    pub fn wants_deflated(self) -> bool {
        self.zmask != 0
    }

    /// Whether some core below 64 has an event stream subscribed.
    #[inline]
    pub fn wants_sse(self) -> bool {
        self.smask != 0
    }
}

/// The owner's per-topic state for the topics hashed to this core.
///
/// Memory: a topic that was ever published keeps its entry (name + 16 bytes) so its `seqNo`
/// never restarts while the process lives; a topic that was only subscribed to disappears when
/// its last subscriber leaves.
#[derive(Debug, Default)]
pub struct Sequencer {
    topics: HashMap<Arc<str>, OwnedTopic>,
    /// Topics with `cores_with_interest > 0`, kept as a count so `/stats` is O(1).
    with_interest: u64,
    /// Topics ever published (`last_seq > 0`: their entries live as long as the process) and
    /// the sum of their names' lengths, for the memory budget.
    published: usize,
    published_name_bytes: usize,
}

impl Sequencer {
    /// Stamps the next `seqNo` of `topic`. O(1).
    pub fn next_seq(&mut self, topic: &Arc<str>) -> u64 {
        let entry = match self.topics.get_mut(&**topic) {
            Some(e) => e,
            None => self.topics.entry(topic.clone()).or_default(),
        };
        if entry.last_seq == 0 {
            self.published += 1;
            self.published_name_bytes += topic.len();
        }
        entry.last_seq += 1;
        entry.last_seq
    }

    /// Clusters: the backbone stamped `seq` (the next delivery's or a baseline); record it as
    /// the topic's last.
    pub fn set_last(&mut self, topic: &Arc<str>, seq: u64) {
        let entry = match self.topics.get_mut(&**topic) {
            Some(e) => e,
            None => self.topics.entry(topic.clone()).or_default(),
        };
        if entry.last_seq == 0 && seq > 0 {
            self.published += 1;
            self.published_name_bytes += topic.len();
        }
        entry.last_seq = seq;
    }

    /// Whether some core has a subscriber of `topic`.
    pub fn has_interest(&self, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|t| t.cores_with_interest > 0)
    }

    /// The last `seqNo` given to `topic` (0 when none).
    pub fn last_seq(&self, topic: &str) -> u64 {
        self.topics.get(topic).map_or(0, |t| t.last_seq)
    }

    /// The cores with a subscriber of `topic` (none when unknown). O(1).
    #[inline]
    pub fn wants(&self, topic: &str) -> Interest {
        self.topics.get(topic).map_or(
            Interest {
                mask: 0,
                zmask: 0,
                smask: 0,
            },
            |t| Interest {
                mask: t.mask,
                zmask: t.zmask,
                smask: t.smask,
            },
        )
    }

    /// Core `core` gained (`Some(true)`) or lost its first/last subscriber of `topic` that
    /// takes compressed deliveries (`deflate`), or that is an event stream (`sse`). Sent after
    /// the core's interest up and before its interest down, so the topic is known here.
    pub fn forms(&mut self, topic: &str, core: usize, deflate: Option<bool>, sse: Option<bool>) {
        let Some(e) = self.topics.get_mut(topic).filter(|_| core < 64) else {
            return;
        };
        let bit = 1u64 << core;
        for (mask, change) in [(&mut e.zmask, deflate), (&mut e.smask, sse)] {
            match change {
                Some(true) => *mask |= bit,
                Some(false) => *mask &= !bit,
                None => {}
            }
        }
    }

    /// Core `core` gained (`up`) or lost its first/last subscriber of `topic`.
    pub fn interest(&mut self, topic: &Arc<str>, up: bool, core: usize) {
        let bit = if core < 64 { 1u64 << core } else { 0 };
        if up {
            let e = match self.topics.get_mut(&**topic) {
                Some(e) => e,
                None => self.topics.entry(topic.clone()).or_default(),
            };
            if e.cores_with_interest == 0 {
                self.with_interest += 1;
            }
            e.cores_with_interest += 1;
            e.mask |= bit;
        } else if let Some(e) = self.topics.get_mut(&**topic) {
            if e.cores_with_interest == 0 {
                debug_assert!(false, "interest down without up for {topic}");
                return;
            }
            e.cores_with_interest -= 1;
            e.mask &= !bit;
            e.zmask &= !bit;
            e.smask &= !bit;
            if e.cores_with_interest == 0 {
                self.with_interest -= 1;
                if e.last_seq == 0 {
                    self.topics.remove(&**topic);
                }
            }
        }
    }

    /// Topics owned here with a subscriber on some core.
    pub fn topics_with_interest(&self) -> u64 {
        self.with_interest
    }

    /// Whether `topic` has state here (a publish to it adds none).
    pub fn knows(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    /// Memory of the published topics' state, as the memory budget counts it (an entry kept
    /// only for interest is counted with its topic, `memory::TOPIC_BYTES`).
    pub fn memory_bytes(&self) -> usize {
        self.published * crate::memory::SEQUENCED_TOPIC_BYTES + self.published_name_bytes
    }

    /// Topics owned here that have any state.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when no topic has state here.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// Who published, what, where: the key of the duplicate window (I2: a repeated `messageId` from
/// the same identity on the same topic).
type DedupKey = (Arc<str>, Arc<str>, Arc<str>);

/// The owner's window of recent client-given `messageId`s (I2, no double processing).
///
/// Bounded twice: entries older than `window` are forgotten, and at most `max_entries` are kept
/// (the oldest goes first; counted in `evictions`). A duplicate is answered with the original's
/// `seqNo` and not delivered again. Only ids the client chose are remembered: ids the gateway
/// generates are unique by construction. Memory: about 100 bytes plus the three strings' bytes
/// per entry.
#[derive(Debug)]
pub struct Dedup {
    seen: HashMap<DedupKey, u64>,
    /// Insertion order, for expiry and eviction.
    order: VecDeque<(Instant, DedupKey)>,
    window: Duration,
    max_entries: usize,
    /// Entries dropped because the window was full before they expired.
    pub evictions: u64,
}

impl Dedup {
    /// A window of `window` and at most `max_entries` ids (0 turns dedup off).
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Dedup {
            seen: HashMap::new(),
            order: VecDeque::new(),
            window,
            max_entries,
            evictions: 0,
        }
    }

    /// The `seqNo` the id was given if it was seen within the window; otherwise remembers it with
    /// the `seqNo` from `stamp` (called only then). Returns (seqNo, is_duplicate). Amortized O(1).
    pub fn check(
        &mut self,
        now: Instant,
        identity: &Arc<str>,
        topic: &Arc<str>,
        message_id: &Arc<str>,
        stamp: impl FnOnce() -> u64,
    ) -> (u64, bool) {
        if self.max_entries == 0 {
            return (stamp(), false);
        }
        self.expire(now);
        let key: DedupKey = (identity.clone(), topic.clone(), message_id.clone());
        if let Some(&seq) = self.seen.get(&key) {
            return (seq, true);
        }
        let seq = stamp();
        if self.seen.len() >= self.max_entries {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
                self.evictions += 1;
            }
        }
        self.seen.insert(key.clone(), seq);
        self.order.push_back((now, key));
        (seq, false)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.window {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.seen.remove(&key);
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Makes `messageId`s and `sessionId`s unique within the process and across restarts:
/// `<boot id base36>-<core>-<counter base36>`.
#[derive(Debug)]
pub struct IdGen {
    prefix: String,
    next: u64,
}

impl IdGen {
    /// `boot` should differ between runs (the gateway uses its start time in microseconds).
    pub fn new(boot: u64, shard: usize) -> Self {
        IdGen {
            prefix: format!("{}-{}-", base36(boot), shard),
            next: 0,
        }
    }

    /// The next id.
    pub fn next_id(&mut self) -> String {
        self.next += 1;
        let mut s = String::with_capacity(self.prefix.len() + 8);
        s.push_str(&self.prefix);
        s.push_str(&base36(self.next));
        s
    }
}

fn base36(mut v: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if v == 0 {
        return "0".into();
    }
    let mut buf = Vec::with_capacity(13);
    while v > 0 {
        buf.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    buf.reverse();
    String::from_utf8(buf).expect("base36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_in_range() {
        for n in 1..9 {
            for t in ["a", "prices.BTC", "risk.alerts", ""] {
                let o = owner_shard(t, n);
                assert!(o < n);
                assert_eq!(o, owner_shard(t, n));
            }
        }
        // Fixed values: a change here breaks clusters that mix versions.
        assert_eq!(owner_shard("prices.BTC", 1), 0);
    }

    #[test]
    fn owners_spread_topics_over_cores() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(&format!("topic-{i}"), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn seq_grows_by_one_per_publish_per_topic() {
        let mut s = Sequencer::default();
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        assert_eq!(s.next_seq(&a), 1);
        assert_eq!(s.next_seq(&a), 2);
        assert_eq!(s.next_seq(&b), 1);
        assert_eq!(s.last_seq("a"), 2);
    }

    #[test]
    fn the_forms_a_topic_needs_follow_its_cores() {
        let mut s = Sequencer::default();
        let a: Arc<str> = "a".into();
        s.forms("a", 1, Some(true), None); // before any interest: unknown topic, ignored
        assert!(!s.wants("a").wants_deflated());
        s.interest(&a, true, 1);
        s.interest(&a, true, 2);
        s.forms("a", 1, Some(true), Some(true));
        s.forms("a", 2, None, Some(true));
        let w = s.wants("a");
        assert!(w.wants_deflated() && w.wants_sse());
        s.forms("a", 1, Some(false), Some(false));
        let w = s.wants("a");
        assert!(
            !w.wants_deflated() && w.wants_sse(),
            "core 2's stream is still there"
        );
        s.interest(&a, false, 2); // losing interest clears the core's forms too
        assert!(!s.wants("a").wants_sse());
    }

    #[test]
    fn interest_counts_distinct_topics_and_forgets_unpublished_ones() {
        let mut s = Sequencer::default();
        let a: Arc<str> = "a".into();
        s.interest(&a, true, 0);
        s.interest(&a, true, 3);
        assert_eq!(s.topics_with_interest(), 1);
        assert!(s.wants("a").has(0) && s.wants("a").has(3) && !s.wants("a").has(1));
        s.interest(&a, false, 0);
        assert_eq!(s.topics_with_interest(), 1);
        assert!(!s.wants("a").has(0) && s.wants("a").has(3));
        s.interest(&a, false, 3);
        assert_eq!(s.topics_with_interest(), 0);
        assert!(s.is_empty());
        assert!(!s.wants("a").has(3), "nobody wants an unknown topic");
        assert!(
            s.wants("a").has(64),
            "cores from 64 on are not tracked: always sent to"
        );
        s.next_seq(&a);
        s.interest(&a, true, 70);
        assert!(s.wants("a").has(70) && !s.wants("a").has(0));
        s.interest(&a, false, 70);
        assert_eq!(s.len(), 1, "a published topic keeps its seqNo");
    }

    #[test]
    fn a_repeated_id_is_a_duplicate_with_the_original_seq() {
        let mut d = Dedup::new(Duration::from_secs(60), 100);
        let (anon, t, u): (Arc<str>, Arc<str>, Arc<str>) = ("".into(), "t".into(), "u".into());
        let (m1, m2): (Arc<str>, Arc<str>) = ("m1".into(), "m2".into());
        let now = Instant::now();
        let mut next = 0;
        let mut stamp = || {
            next += 1;
            next
        };
        assert_eq!(d.check(now, &anon, &t, &m1, &mut stamp), (1, false));
        assert_eq!(d.check(now, &anon, &t, &m1, &mut stamp), (1, true));
        assert_eq!(d.check(now, &anon, &t, &m2, &mut stamp), (2, false));
        // The same id on another topic, or from another identity, is not a duplicate.
        assert_eq!(d.check(now, &anon, &u, &m1, &mut stamp), (3, false));
        let alice: Arc<str> = "alice".into();
        assert_eq!(d.check(now, &alice, &t, &m1, &mut stamp), (4, false));
    }

    #[test]
    fn the_window_is_bounded_in_time_and_size() {
        let mut d = Dedup::new(Duration::from_secs(10), 3);
        let anon: Arc<str> = "".into();
        let t: Arc<str> = "t".into();
        let t0 = Instant::now();
        let ids: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("m{i}"))).collect();
        for (i, id) in ids.iter().enumerate() {
            d.check(t0, &anon, &t, id, || i as u64 + 1);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(d.evictions, 2);
        // m0 was evicted: not a duplicate any more; m4 still is.
        assert!(!d.check(t0, &anon, &t, &ids[0], || 9).1);
        assert!(d.check(t0, &anon, &t, &ids[4], || 9).1);
        // After the window everything is forgotten.
        assert!(
            !d.check(t0 + Duration::from_secs(11), &anon, &t, &ids[4], || 10)
                .1
        );
        assert_eq!(d.len(), 1);
        let mut off = Dedup::new(Duration::from_secs(10), 0);
        assert!(!off.check(t0, &anon, &t, &ids[1], || 1).1);
        assert!(!off.check(t0, &anon, &t, &ids[1], || 2).1);
    }

    #[test]
    fn ids_are_unique() {
        let mut g = IdGen::new(123, 1);
        let a = g.next_id();
        let b = g.next_id();
        assert_ne!(a, b);
        assert!(a.starts_with("3f-1-"), "{a}");
    }
}
