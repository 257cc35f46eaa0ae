//! The owner's per-topic history (I6): the recent delivery frames of the topics this core owns,
//! kept so that `replay`, `subscribe` with `fromSeq` and `resume` can send exactly the messages
//! a client missed, or say exactly what was lost.
//!
//! What lives here: [`HistoryRule`]s (limits per topic pattern), [`HistoryConfig`] (the rules and
//! the core's memory budget) and [`History`], one per core, holding for each owned topic the
//! finished frames (`Bytes`: a refcount, never a copy) with their `seqNo` and arrival time.
//!
//! Pure: no glommio, no sockets, no async, no clock of its own (every call takes `now`). Runs on
//! the topic's owner core only, right next to its [`Sequencer`](crate::publish::Sequencer).
//!
//! # Invariants
//! - A topic's held messages are one contiguous run of `seqNo`s ending at the last one pushed:
//!   a `push` whose `seqNo` does not follow the last held one drops the older run first (it could
//!   never be replayed without a hole). Removal is only ever from the front of a run.
//! - Limits: a topic keeps what its rule allows (count, frame bytes, age); the core keeps at most
//!   `budget_bytes` in all, and over budget the globally oldest message goes first, whatever its
//!   topic. A message that alone breaks a limit is not kept, and neither is anything before it.
//!
//! # The seam rule (what the engine must do)
//! To subscribe with `fromSeq` without gap or duplicate, the engine registers the subscription
//! and asks the owner for the replay in ONE step on the owner's message queue: the owner answers
//! with the frames up to its current last `seqNo` (passing `Sequencer::last_seq` as `last_seq`),
//! and every later frame reaches the subscriber live after them, because both travel the same
//! owner -> core FIFO. The subscriber's core drops live frames with `seqNo` <= the last replayed
//! one. `resume {lastSeqPerTopic}` is the same step per topic with `from_seq = lastSeq + 1`.
//!
//! # Why a global queue with lazy deletion (and not a heap)
//! Budget eviction needs "the oldest message of any topic". Pushes arrive in time order, so a
//! global FIFO of `(topic slot, stamp)` records is already sorted by age: its front is the oldest.
//! A topic's own limits evict from that topic's front without touching the global FIFO, leaving a
//! stale record behind; a record is live iff its topic's front entry has a stamp <= its stamp
//! (removal is front-only and stamps only grow, so a reused slot's newer entries never match).
//! Stale records are skipped when they reach the front, and the FIFO is compacted once it holds
//! more than twice the live records (plus [`COMPACT_SLACK`]): pushing, evicting and compacting
//! are all amortized O(1). The rejected alternative, per-topic deques plus a min-heap of their
//! front stamps, costs O(log topics) per eviction and must fix its heap on every own-rule
//! eviction.

use bytes::Bytes;
use hashbrown::HashMap;
use serde::Deserialize;
use slab::Slab;
use std::collections::VecDeque;
use std::fmt;
use std::mem::size_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Default per-core memory budget of the history: 64 MiB.
pub const DEFAULT_HISTORY_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// The `from_seq` of a replay that asks for the newest held message only (`subscribe` with
/// `"latest": true`): resolved by whoever knows the topic's last `seqNo` (the owner, or
/// JetStream), as `fromSeq = last`, or as nothing when the topic was never published. (A real
/// `seqNo` never comes near it; `u64::MAX` means "from the next one".)
pub const REPLAY_LATEST: u64 = u64::MAX - 1;

/// Messages per topic the default rule keeps.
pub const DEFAULT_HISTORY_MESSAGES: usize = 1_000;

/// How long the default rule keeps a message: 5 minutes.
pub const DEFAULT_HISTORY_AGE_MS: u64 = 300_000;

/// Bookkeeping bytes per held message on top of its frame: its entry in the topic's deque plus
/// its record in the global age FIFO. Counted against the budget.
pub const ENTRY_OVERHEAD_BYTES: usize = size_of::<Entry>() + size_of::<Record>();

/// Bookkeeping bytes per topic with something held: its slab slot and its index entry (about:
/// the hash table's control bytes and spare capacity are not counted). Counted against the budget.
pub const TOPIC_OVERHEAD_BYTES: usize = size_of::<TopicHistory>() + size_of::<(Arc<str>, usize)>();

/// Stale records the global FIFO may hold beyond the live ones before it is compacted.
pub const COMPACT_SLACK: usize = 1024;

/// Limits for the topics matching `pattern`. A `[[history]]` table in the config file.
///
/// A limit left out is no limit (the global budget still applies). `0` keeps nothing, which is how
/// a rule placed before a broader one turns history off for some topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// An exact topic name, a prefix wildcard `prices.*` (every topic starting with `prices.`,
    /// at any depth), or `*` (every topic).
    pub pattern: String,
    /// Most messages kept for one topic.
    pub max_messages: Option<usize>,
    /// Most frame bytes (what goes on the wire) kept for one topic.
    pub max_bytes: Option<usize>,
    /// A message is dropped once it is this old (milliseconds since it was pushed).
    pub max_age_ms: Option<u64>,
}

/// The rules and the budget of one core's [`History`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Tried in order; the first whose pattern matches a topic gives its limits. A topic no rule
    /// matches has no history.
    pub rules: Vec<HistoryRule>,
    /// Most bytes (frames plus [`ENTRY_OVERHEAD_BYTES`] per message and [`TOPIC_OVERHEAD_BYTES`]
    /// per topic) one core keeps over all its topics.
    pub budget_bytes: usize,
    /// Limits for QoS 1 messages of topics no rule matches: QoS 1 messages are always kept (so a
    /// resumed session gets its unacknowledged ones again), within these limits. Set by the
    /// engine from its `qos1_history_*` settings; `None` keeps them only under a matching rule.
    #[serde(skip)]
    pub qos1_fallback: Option<HistoryRule>,
}

/// The history every topic gets when the configuration names no rules: the last
/// [`DEFAULT_HISTORY_MESSAGES`] messages, for at most [`DEFAULT_HISTORY_AGE_MS`], within the
/// per-core budget. So `replay`, `resume` and the clients' gap recovery work out of the box.
pub fn default_rules() -> Vec<HistoryRule> {
    vec![HistoryRule {
        pattern: "*".to_owned(),
        max_messages: Some(DEFAULT_HISTORY_MESSAGES),
        max_bytes: None,
        max_age_ms: Some(DEFAULT_HISTORY_AGE_MS),
    }]
}

impl Default for HistoryConfig {
    /// [`default_rules`] (every topic, bounded) and [`DEFAULT_HISTORY_BUDGET_BYTES`]. History
    /// is off with `rules = []`.
    fn default() -> Self {
        HistoryConfig {
            rules: default_rules(),
            budget_bytes: DEFAULT_HISTORY_BUDGET_BYTES,
            qos1_fallback: None,
        }
    }
}

/// Why a replay cannot be answered with frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Some message in `fromSeq..=last_seq` is no longer held (`REPLAY_UNAVAILABLE`).
    /// `oldest_held` is the smallest `fromSeq` that would succeed now (None: only
    /// `last_seq + 1`, nothing is held).
    Unavailable {
        /// Oldest `seqNo` held for the topic, when anything is.
        oldest_held: Option<u64>,
        /// The topic's last `seqNo`.
        last_seq: u64,
    },
    /// `fromSeq` is beyond `last_seq + 1`: it asks for messages not published yet
    /// (`BAD_REQUEST`).
    FromSeqInFuture {
        /// What was asked.
        from_seq: u64,
        /// The topic's last `seqNo`.
        last_seq: u64,
    },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::Unavailable {
                oldest_held: Some(o),
                last_seq,
            } => write!(
                f,
                "history holds seqNo {o} to {last_seq}; earlier messages are gone"
            ),
            ReplayError::Unavailable {
                oldest_held: None,
                last_seq,
            } => write!(f, "history holds nothing up to seqNo {last_seq}"),
            ReplayError::FromSeqInFuture { from_seq, last_seq } => {
                write!(
                    f,
                    "fromSeq {from_seq} is after the last seqNo {last_seq} + 1"
                )
            }
        }
    }
}

impl std::error::Error for ReplayError {}

/// A rule's pattern, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    Exact(String),
    /// The prefix including its trailing dot (`prices.` for `prices.*`).
    Prefix(String),
    Any,
}

impl Pattern {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let (head, is_prefix) = match s.strip_suffix(".*") {
            Some(head) => (head, true),
            None => (s, false),
        };
        if head.is_empty() || head.contains('*') {
            return Err(format!(
                "history pattern {s:?}: use a topic name, `name.*` or `*`"
            ));
        }
        Ok(if is_prefix {
            Pattern::Prefix(format!("{head}."))
        } else {
            Pattern::Exact(s.to_owned())
        })
    }

    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            Pattern::Exact(name) => topic == name,
            Pattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
            Pattern::Any => true,
        }
    }
}

/// A rule with its pattern parsed and its age as a `Duration`.
#[derive(Debug, Clone)]
struct Limits {
    pattern: Pattern,
    max_messages: Option<usize>,
    max_bytes: Option<usize>,
    max_age: Option<Duration>,
}

/// One held message.
#[derive(Debug)]
struct Entry {
    seq: u64,
    /// Global push counter: orders entries across topics and identifies this entry's record.
    stamp: u64,
    arrival: Instant,
    frame: Bytes,
    /// Its compressed form (permessage-deflate), when the owner built one.
    deflated: Option<Bytes>,
    /// The `messageId` of a QoS 1 message (its subscribers must acknowledge it again when it is
    /// replayed); `None` for QoS 0.
    qos1: Option<Arc<str>>,
}

impl Entry {
    /// The frame bytes it holds (both forms), as the budget counts them.
    fn bytes(&self) -> usize {
        self.frame.len() + self.deflated.as_ref().map_or(0, Bytes::len)
    }
}

/// One held message as a replay hands it out.
#[derive(Debug, Clone)]
pub struct HeldFrame {
    /// Its `seqNo`.
    pub seq_no: u64,
    /// The finished delivery frame (a refcount of the bytes that were sent live).
    pub frame: Bytes,
    /// Its compressed form, when one was built (replays serve the same variants as live).
    pub deflated: Option<Bytes>,
    /// `Some(messageId)` when it was published with QoS 1.
    pub qos1: Option<Arc<str>>,
}

/// One line of the global age FIFO: "the entry `stamp` of the topic in `slot`".
#[derive(Debug, Clone, Copy)]
struct Record {
    slot: usize,
    stamp: u64,
}

/// What one topic holds. Exists only while it holds something.
#[derive(Debug)]
struct TopicHistory {
    /// For removing the index entry when the topic empties.
    name: Arc<str>,
    /// Index into `History::rules`, resolved once when the topic got its first message.
    rule: usize,
    /// Contiguous `seqNo`s, oldest first.
    entries: VecDeque<Entry>,
    /// Sum of the entries' frame lengths (for `max_bytes`).
    frame_bytes: usize,
}

/// One core's histories: the topics it owns. Lives on that core and is never shared; only the
/// `Bytes` it hands out (refcounts of the same frames) cross cores.
#[derive(Debug)]
pub struct History {
    rules: Vec<Limits>,
    /// Index in `rules` of the QoS 1 fallback (the last rule), when there is one: used only by
    /// QoS 1 pushes to a topic no configured rule matches.
    qos1_rule: Option<usize>,
    budget_bytes: usize,
    /// Topic name -> slot in `topics`. Only topics holding at least one message.
    index: HashMap<Arc<str>, usize>,
    /// The topics' histories; a slot is freed when its topic empties and may be reused.
    topics: Slab<TopicHistory>,
    /// Every held entry's record in push (= age) order, plus stale records (see module doc).
    order: VecDeque<Record>,
    /// The next entry's stamp.
    next_stamp: u64,
    /// Sum of the frame lengths of every held entry.
    frame_bytes: usize,
    /// Entries held.
    messages: usize,
    /// Messages dropped for room: a topic's count or bytes limit, the budget, or a `seqNo` gap.
    evictions: u64,
    /// Messages dropped for age.
    expirations: u64,
}

impl History {
    /// Checks the patterns (`name`, `name.*` or `*`; no other `*`).
    pub fn new(cfg: HistoryConfig) -> Result<Self, String> {
        let mut rules = cfg
            .rules
            .iter()
            .map(|r| {
                Ok(Limits {
                    pattern: Pattern::parse(&r.pattern)?,
                    max_messages: r.max_messages,
                    max_bytes: r.max_bytes,
                    max_age: r.max_age_ms.map(Duration::from_millis),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let qos1_rule = cfg.qos1_fallback.as_ref().map(|r| {
            rules.push(Limits {
                pattern: Pattern::Any,
                max_messages: r.max_messages,
                max_bytes: r.max_bytes,
                max_age: r.max_age_ms.map(Duration::from_millis),
            });
            rules.len() - 1
        });
        Ok(History {
            rules,
            qos1_rule,
            budget_bytes: cfg.budget_bytes,
            index: HashMap::new(),
            topics: Slab::new(),
            order: VecDeque::new(),
            next_stamp: 0,
            frame_bytes: 0,
            messages: 0,
            evictions: 0,
            expirations: 0,
        })
    }

    /// Remembers a sequenced frame. Must run on the topic's owner, right after
    /// `Sequencer::next_seq` stamped `seq_no`, with a `now` that never goes backwards.
    /// Then applies the topic's rule and the budget. Amortized O(1) plus O(rules) the first time
    /// a topic is seen (and on every push to a topic no rule matches).
    pub fn push(&mut self, topic: &Arc<str>, seq_no: u64, frame: Bytes, now: Instant) {
        self.push_entry(topic, seq_no, frame, None, None, now)
    }

    /// [`History::push`] with the compressed form (`deflated`, counted with the frame) and
    /// the `messageId` of a QoS 1 message (`qos1`), which is kept under the QoS 1 fallback
    /// limits when no configured rule matches the topic.
    pub fn push_entry(
        &mut self,
        topic: &Arc<str>,
        seq_no: u64,
        frame: Bytes,
        deflated: Option<Bytes>,
        qos1: Option<Arc<str>>,
        now: Instant,
    ) {
        let slot = match self.index.get(&**topic) {
            Some(&slot) => slot,
            None => {
                let configured = self.rules.len() - usize::from(self.qos1_rule.is_some());
                let found = self.rules[..configured]
                    .iter()
                    .position(|r| r.pattern.matches(topic))
                    .or(self.qos1_rule.filter(|_| qos1.is_some()));
                let Some(rule) = found else {
                    return;
                };
                let slot = self.topics.insert(TopicHistory {
                    name: topic.clone(),
                    rule,
                    entries: VecDeque::new(),
                    frame_bytes: 0,
                });
                self.index.insert(topic.clone(), slot);
                slot
            }
        };
        if let Some(back) = self.topics[slot].entries.back() {
            if back.seq.checked_add(1) != Some(seq_no) {
                // A hole (a frame never pushed) or a restart: the older run can't be replayed
                // without one, so it goes.
                debug_assert!(seq_no > back.seq, "seqNo went backwards on {topic}");
                while !self.topics[slot].entries.is_empty() {
                    self.drop_front(slot);
                    self.evictions += 1;
                }
            }
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        let t = &mut self.topics[slot];
        let e = Entry {
            seq: seq_no,
            stamp,
            arrival: now,
            frame,
            deflated,
            qos1,
        };
        t.frame_bytes += e.bytes();
        self.frame_bytes += e.bytes();
        self.messages += 1;
        t.entries.push_back(e);
        self.order.push_back(Record { slot, stamp });

        self.expire_topic(slot, now);
        let limits = &self.rules[self.topics[slot].rule];
        let (max_messages, max_bytes) = (limits.max_messages, limits.max_bytes);
        loop {
            let t = &self.topics[slot];
            let over = max_messages.is_some_and(|m| t.entries.len() > m)
                || max_bytes.is_some_and(|b| t.frame_bytes > b);
            if !over {
                break;
            }
            self.drop_front(slot);
            self.evictions += 1;
        }
        self.remove_if_empty(slot);

        self.evict_to(self.budget_bytes);
    }

    /// Drops the globally oldest messages, whatever their topic, until [`History::bytes`] is
    /// at most `limit` (the budget after each push; less when the process memory budget is
    /// short). Returns how many went (counted in `evictions`). O(dropped).
    pub fn evict_to(&mut self, limit: usize) -> usize {
        let before = self.messages;
        while self.bytes() > limit {
            let Some(rec) = self.order.pop_front() else {
                break;
            };
            let front = self.topics.get(rec.slot).and_then(|t| t.entries.front());
            // Live records are in stamp order and each topic's entries too, so the first live
            // record is its topic's front: equal stamps, or the record is stale.
            debug_assert!(front.is_none_or(|e| e.stamp >= rec.stamp));
            if front.is_some_and(|e| e.stamp == rec.stamp) {
                self.drop_front(rec.slot);
                self.evictions += 1;
                self.remove_if_empty(rec.slot);
            }
        }
        self.compact();
        before - self.messages
    }

    /// The frames of `topic` from `from_seq` (0 counts as 1) through `last_seq`, oldest first,
    /// when every one of them is still held. `last_seq` is the topic's `Sequencer::last_seq`,
    /// read in the same owner step (see the seam rule in the module doc).
    ///
    /// - `from_seq == last_seq + 1`: nothing was missed, `Ok` and empty.
    /// - `from_seq > last_seq + 1`: [`ReplayError::FromSeqInFuture`] (a bad request).
    /// - otherwise, a message in `from_seq..=last_seq` gone (or never held): `Unavailable`
    ///   naming the oldest `seqNo` held.
    ///
    /// Drops the topic's expired messages first, so an answer never includes one.
    /// O(answer) plus O(expired).
    pub fn replay_from(
        &mut self,
        topic: &str,
        from_seq: u64,
        last_seq: u64,
        now: Instant,
    ) -> Result<Vec<Bytes>, ReplayError> {
        self.replay_held(topic, from_seq, last_seq, now)
            .map(|v| v.into_iter().map(|h| h.frame).collect())
    }

    /// [`History::replay_from`] with each frame's `seqNo` and QoS 1 `messageId`.
    pub fn replay_held(
        &mut self,
        topic: &str,
        from_seq: u64,
        last_seq: u64,
        now: Instant,
    ) -> Result<Vec<HeldFrame>, ReplayError> {
        let from = from_seq.max(1);
        if from > last_seq.saturating_add(1) {
            return Err(ReplayError::FromSeqInFuture { from_seq, last_seq });
        }
        if let Some(&slot) = self.index.get(topic) {
            self.expire_topic(slot, now);
            self.remove_if_empty(slot);
        }
        if last_seq.checked_add(1) == Some(from) {
            return Ok(Vec::new());
        }
        let Some((oldest, newest)) = self.held(topic) else {
            return Err(ReplayError::Unavailable {
                oldest_held: None,
                last_seq,
            });
        };
        debug_assert!(newest <= last_seq, "history is ahead of the sequencer");
        if newest != last_seq {
            // The newest messages were never pushed: nothing held reaches `last_seq`.
            return Err(ReplayError::Unavailable {
                oldest_held: None,
                last_seq,
            });
        }
        if from < oldest {
            return Err(ReplayError::Unavailable {
                oldest_held: Some(oldest),
                last_seq,
            });
        }
        let t = &self.topics[self.index[topic]];
        let skip = usize::try_from(from - oldest).expect("less than the entries held");
        Ok(t.entries
            .range(skip..)
            .map(|e| HeldFrame {
                seq_no: e.seq,
                frame: e.frame.clone(),
                deflated: e.deflated.clone(),
                qos1: e.qos1.clone(),
            })
            .collect())
    }

    /// Drops every message past its topic's age limit; returns how many. The engine calls it
    /// about once a second. O(topics held) plus O(dropped).
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.messages;
        let slots: Vec<usize> = self
            .topics
            .iter()
            .filter(|(_, t)| self.rules[t.rule].max_age.is_some())
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            self.expire_topic(slot, now);
            self.remove_if_empty(slot);
        }
        self.compact();
        before - self.messages
    }

    /// The oldest and newest `seqNo` held for `topic`, when it holds any.
    pub fn held(&self, topic: &str) -> Option<(u64, u64)> {
        let t = &self.topics[*self.index.get(topic)?];
        Some((t.entries.front()?.seq, t.entries.back()?.seq))
    }

    /// Memory held, as the budget counts it: frames plus [`ENTRY_OVERHEAD_BYTES`] per message
    /// plus [`TOPIC_OVERHEAD_BYTES`] per topic. Not counted: stale FIFO records (at most
    /// `messages + COMPACT_SLACK` records of 16 bytes) and deques' spare capacity.
    pub fn bytes(&self) -> usize {
        self.frame_bytes
            + self.messages * ENTRY_OVERHEAD_BYTES
            + self.topics.len() * TOPIC_OVERHEAD_BYTES
    }

    /// Messages held, over all topics.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Topics holding at least one message.
    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    /// Messages dropped for room (a topic's count or bytes limit, the budget, a `seqNo` gap).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Messages dropped for age.
    pub fn expirations(&self) -> u64 {
        self.expirations
    }

    /// Drops the topic's messages past its age limit. Leaves an empty topic in place.
    fn expire_topic(&mut self, slot: usize, now: Instant) {
        let Some(max_age) = self.rules[self.topics[slot].rule].max_age else {
            return;
        };
        while self.topics[slot]
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.arrival) >= max_age)
        {
            self.drop_front(slot);
            self.expirations += 1;
        }
    }

    /// Removes the topic's oldest entry (its record goes stale). The caller counts why.
    fn drop_front(&mut self, slot: usize) {
        let t = &mut self.topics[slot];
        let e = t.entries.pop_front().expect("caller checked non-empty");
        t.frame_bytes -= e.bytes();
        self.frame_bytes -= e.bytes();
        self.messages -= 1;
    }

    /// Frees the topic's slot and index entry when it holds nothing.
    fn remove_if_empty(&mut self, slot: usize) {
        if self.topics[slot].entries.is_empty() {
            let t = self.topics.remove(slot);
            self.index.remove(&*t.name);
        }
    }

    /// Drops the stale records once they outnumber the live ones (plus slack). Amortized O(1).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.messages + COMPACT_SLACK {
            return;
        }
        let topics = &self.topics;
        self.order.retain(|r| {
            topics
                .get(r.slot)
                .and_then(|t| t.entries.front())
                .is_some_and(|e| e.stamp <= r.stamp)
        });
        debug_assert_eq!(self.order.len(), self.messages);
    }
}

#[cfg(test)]
mod tests;
