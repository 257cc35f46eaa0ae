//! `TopicTable`: the per-core two-way index topic <-> local connection slot.
//!
//! What lives here: which local connections (by dense slab slot, [`ConnSlot`]) are subscribed to
//! which topics, indexed both ways — topic -> subscriber slots for fan-out, slot -> topic ids so
//! closing a connection costs only its own topics (uWebSockets' `TopicTree` does the same with
//! `Topic`/`Subscriber`). A topic exists exactly while it has at least one local subscriber.
//!
//! What may not live here: sockets, buffers, glommio, async, locks, sequence numbers, access
//! rules. The table is pure and synchronous; it is plain data (`Send`), but there is one instance
//! per core, owned and mutated only by that core's shard, never shared or locked.
//!
//! # Invariants
//! - Every topic name is interned once as an `Arc<str>` with a dense `u32` topic id; ids of removed
//!   topics are reused.
//! - `conn` is subscribed to `topic` iff the topic's subscriber set holds `conn` iff the
//!   connection's topic list holds the topic's id. Neither side ever holds a duplicate.
//! - No live topic has an empty subscriber set; no free id is in the name index.
//! - `subscriptions` equals the sum of all subscriber-set sizes (and of all per-slot list sizes).
//!
//! # Memory (target: <= 48 bytes of heap per subscription at scale)
//! A subscription costs one `u32` in its connection's list and one `u32` in its topic's subscriber
//! set (a `Vec<u32>` up to [`SMALL_SET_MAX`] entries, a `hashbrown::HashSet<u32>` above, about
//! 5 bytes per bucket at 7/8 load), i.e. roughly 10-20 bytes with amortized growth. Per topic there
//! is a fixed ~100 bytes plus the name; per slot 24 bytes. No allocation happens per subscription
//! beyond amortized vector/table growth.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashSet, HashTable};

/// A local connection's slot: a dense small integer handed out (and reused) by the shard's slab.
/// The table allocates per-slot state up to the highest slot seen, so slots must stay dense.
pub type ConnSlot = u32;

/// A dense topic id, index into [`TopicTable::topics`].
type TopicId = u32;

/// Largest subscriber count kept as a linearly-searched `Vec`; one more promotes the set to a hash
/// set so that (un)subscribing on a topic with a million subscribers stays O(1).
pub const SMALL_SET_MAX: usize = 32;

/// A hash set that shrinks to this many subscribers (or fewer) is demoted back to a `Vec`. Lower
/// than [`SMALL_SET_MAX`] so a topic hovering at the threshold does not convert on every call.
pub const SMALL_SET_DEMOTE: usize = SMALL_SET_MAX / 2;

/// The outcome of [`TopicTable::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// The subscription is new; `topic_created` when the topic had no local subscriber before
    /// (the shard may need to tell other cores, or start tracking the topic).
    Added {
        /// The topic did not exist in this table before this call.
        topic_created: bool,
    },
    /// The connection was already subscribed; nothing changed.
    AlreadySubscribed,
}

/// The outcome of [`TopicTable::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsubscribed {
    /// The subscription existed and is gone; `topic_removed` when it was the topic's last local
    /// subscriber, so the topic left the table.
    Removed {
        /// The topic has no local subscriber left and was removed from the table.
        topic_removed: bool,
    },
    /// The connection was not subscribed (or the topic is unknown); nothing changed.
    NotSubscribed,
}

/// The subscriber slots of one topic: small sets are a `Vec` (4 bytes per entry, linear search
/// over at most [`SMALL_SET_MAX`] entries beats hashing), large ones a hash set (O(1) removal).
#[derive(Debug)]
enum SubscriberSet {
    /// At most [`SMALL_SET_MAX`] slots, unordered, no duplicates.
    Small(Vec<ConnSlot>),
    /// More than [`SMALL_SET_DEMOTE`] slots. Boxed so the enum stays the size of a `Vec`
    /// (24 bytes) for the many small topics.
    Large(Box<HashSet<ConnSlot>>),
}

impl SubscriberSet {
    /// A set holding only `conn`.
    fn single(conn: ConnSlot) -> Self {
        SubscriberSet::Small(vec![conn])
    }

    /// O(1).
    fn len(&self) -> usize {
        match self {
            SubscriberSet::Small(v) => v.len(),
            SubscriberSet::Large(s) => s.len(),
        }
    }

    /// O(1): at most [`SMALL_SET_MAX`] comparisons, or one hash lookup.
    fn contains(&self, conn: ConnSlot) -> bool {
        match self {
            SubscriberSet::Small(v) => v.contains(&conn),
            SubscriberSet::Large(s) => s.contains(&conn),
        }
    }

    /// Inserts `conn`; false when it was already there. O(1) amortized; promotion to a hash set
    /// copies the [`SMALL_SET_MAX`] entries once.
    fn insert(&mut self, conn: ConnSlot) -> bool {
        match self {
            SubscriberSet::Small(v) => {
                if v.contains(&conn) {
                    return false;
                }
                if v.len() < SMALL_SET_MAX {
                    v.push(conn);
                } else {
                    let mut set = HashSet::with_capacity(v.len() * 2);
                    set.extend(v.iter().copied());
                    set.insert(conn);
                    *self = SubscriberSet::Large(Box::new(set));
                }
                true
            }
            SubscriberSet::Large(s) => s.insert(conn),
        }
    }

    /// Removes `conn`; false when it was not there. O(1) amortized (demotion and shrinking copy
    /// at most a constant fraction of what earlier removals paid for).
    fn remove(&mut self, conn: ConnSlot) -> bool {
        match self {
            SubscriberSet::Small(v) => {
                let Some(at) = v.iter().position(|&c| c == conn) else {
                    return false;
                };
                v.swap_remove(at);
                shrink_if_sparse(v);
                true
            }
            SubscriberSet::Large(s) => {
                if !s.remove(&conn) {
                    return false;
                }
                if s.len() <= SMALL_SET_DEMOTE {
                    *self = SubscriberSet::Small(s.iter().copied().collect());
                } else if s.len() * 4 < s.capacity() {
                    // Halve the table after a mass unsubscribe, so churn does not pin memory.
                    s.shrink_to(s.len() * 2);
                }
                true
            }
        }
    }

    /// Calls `f` for each slot, in unspecified order. O(len) (O(capacity) for a hash set).
    fn for_each(&self, mut f: impl FnMut(ConnSlot)) {
        match self {
            SubscriberSet::Small(v) => v.iter().for_each(|&c| f(c)),
            SubscriberSet::Large(s) => s.iter().for_each(|&c| f(c)),
        }
    }

    /// Approximate heap bytes of this set.
    fn heap_bytes(&self) -> usize {
        match self {
            SubscriberSet::Small(v) => v.capacity() * size_of::<ConnSlot>(),
            SubscriberSet::Large(s) => {
                size_of::<HashSet<ConnSlot>>() + hash_table_bytes::<ConnSlot>(s.capacity())
            }
        }
    }
}

/// Frees most of a vector's spare capacity once it is less than a quarter full, and all of it
/// when empty. Amortized O(1): a shrink to 2*len copies len entries after at least cap/2 removals.
fn shrink_if_sparse(v: &mut Vec<u32>) {
    if v.is_empty() {
        *v = Vec::new();
    } else if v.capacity() > 8 && v.len() * 4 < v.capacity() {
        v.shrink_to(v.len() * 2);
    }
}

/// Approximate heap bytes of a hashbrown table holding up to `capacity` items of `T`: buckets
/// (a power of two, load factor 7/8) times the item size plus one control byte each.
fn hash_table_bytes<T>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (size_of::<T>() + 1)
}

/// One live topic.
#[derive(Debug)]
struct TopicEntry {
    /// The interned name: shared (not copied) with the shard, the mesh messages and the
    /// `on_topic_removed` callback.
    name: Arc<str>,
    /// The local subscribers; never empty while the entry is live.
    subs: SubscriberSet,
    /// The connection whose subscription brought the topic onto this core, while it is still
    /// subscribed ([`NO_CREATOR`] after it left): who is charged for the topic (per-identity
    /// caps on unique topics).
    creator: ConnSlot,
}

/// [`TopicEntry::creator`] of a topic whose creator has left.
const NO_CREATOR: ConnSlot = ConnSlot::MAX;

/// The per-core two-way subscription index. See the module docs for invariants and memory.
///
/// One per core, owned and mutated only by its shard; never shared across cores.
#[derive(Debug, Default)]
pub struct TopicTable {
    /// Topic id -> topic, `None` for a free id (listed in `free_ids`). Dense so a connection can
    /// name its topics with 4-byte ids instead of 16-byte `Arc`s. Sized by the high-water mark
    /// of simultaneously live topics (40 bytes per id).
    topics: Vec<Option<TopicEntry>>,
    /// Ids of removed topics, reused before `topics` grows, so topic churn does not grow it.
    free_ids: Vec<TopicId>,
    /// Name -> topic id. A `HashTable` of bare ids hashed by the name stored in `topics`, so the
    /// name is held once (a `HashMap<Arc<str>, u32>` would spend 20 more bytes per topic).
    index: HashTable<TopicId>,
    /// Hashes names for `index` (foldhash, randomly seeded per table).
    hasher: DefaultHashBuilder,
    /// Conn slot -> ids of the topics it is subscribed to (unordered, no duplicates). Indexed by
    /// slot, grown to the highest slot seen; a slot's list is freed when the connection goes.
    conns: Vec<Vec<TopicId>>,
    /// Total number of (conn, topic) subscriptions, kept so the count is O(1) for /stats.
    subscriptions: usize,
    /// Conn slot -> how many live topics it is the creator of (grown like `conns`).
    created: Vec<u32>,
    /// Sum of the live topics' name lengths (the memory budget counts them).
    name_bytes: usize,
}

impl TopicTable {
    /// An empty table. Allocates nothing until the first subscription.
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `topic` if it is live. O(1) expected (one hash of the name).
    fn find(&self, topic: &str) -> Option<TopicId> {
        let hash = self.hasher.hash_one(topic);
        let topics = &self.topics;
        self.index
            .find(hash, |&id| &*live(topics, id).name == topic)
            .copied()
    }

    /// The live topic with id `id`.
    fn entry(&self, id: TopicId) -> &TopicEntry {
        live(&self.topics, id)
    }

    /// Subscribes `conn` to `topic`, creating (and interning) the topic on its first subscriber.
    ///
    /// O(1) amortized expected: one name hash, a bounded set lookup, two amortized pushes. A new
    /// topic also allocates its `Arc<str>` name. `conn` must be a dense slab slot (per-slot state
    /// is allocated up to it).
    pub fn subscribe(&mut self, conn: ConnSlot, topic: &str) -> Subscribed {
        let created = match self.find(topic) {
            Some(id) => {
                let entry = live_mut(&mut self.topics, id);
                if !entry.subs.insert(conn) {
                    return Subscribed::AlreadySubscribed;
                }
                self.conn_list_mut(conn).push(id);
                false
            }
            None => {
                let id = self.insert_topic(topic, conn);
                self.conn_list_mut(conn).push(id);
                self.created[conn as usize] += 1;
                true
            }
        };
        self.subscriptions += 1;
        Subscribed::Added {
            topic_created: created,
        }
    }

    /// Creates the topic `topic` (known absent) with `conn` as its only subscriber; returns its id.
    fn insert_topic(&mut self, topic: &str, conn: ConnSlot) -> TopicId {
        let entry = TopicEntry {
            name: Arc::from(topic),
            subs: SubscriberSet::single(conn),
            creator: conn,
        };
        self.name_bytes += topic.len();
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.topics[id as usize] = Some(entry);
                id
            }
            None => {
                let id = TopicId::try_from(self.topics.len())
                    .expect("more than u32::MAX live topics on one core is beyond any memory");
                self.topics.push(Some(entry));
                id
            }
        };
        let hash = self.hasher.hash_one(topic);
        let (topics, hasher) = (&self.topics, &self.hasher);
        self.index.insert_unique(hash, id, |&other| {
            hasher.hash_one(&*live(topics, other).name)
        });
        id
    }

    /// Removes the (now subscriber-less) topic `id` from the index and frees its id; returns the
    /// entry so the caller can report its name. O(1) expected.
    fn remove_topic(&mut self, id: TopicId) -> TopicEntry {
        let entry = self.topics[id as usize]
            .take()
            .expect("remove_topic is only called with a live topic id");
        debug_assert_eq!(entry.subs.len(), 0);
        debug_assert_eq!(
            entry.creator, NO_CREATOR,
            "the creator leaves before its topic goes"
        );
        self.name_bytes -= entry.name.len();
        let hash = self.hasher.hash_one(&*entry.name);
        if let Ok(found) = self.index.find_entry(hash, |&other| other == id) {
            found.remove();
        } else {
            debug_assert!(false, "live topic {id} missing from the name index");
        }
        self.free_ids.push(id);
        entry
    }

    /// The topic list of `conn`, growing the per-slot vector to reach it.
    fn conn_list_mut(&mut self, conn: ConnSlot) -> &mut Vec<TopicId> {
        let slot = conn as usize;
        if slot >= self.conns.len() {
            self.conns.resize_with(slot + 1, Vec::new);
            self.created.resize(slot + 1, 0);
        }
        &mut self.conns[slot]
    }

    /// Unsubscribes `conn` from `topic`; the topic leaves the table with its last subscriber.
    ///
    /// O(1) expected on the topic side, plus O(t) to find the topic id in `conn`'s own list, where
    /// t is the number of topics `conn` is subscribed to (bounded by the per-connection limit).
    pub fn unsubscribe(&mut self, conn: ConnSlot, topic: &str) -> Unsubscribed {
        let Some(id) = self.find(topic) else {
            return Unsubscribed::NotSubscribed;
        };
        let entry = live_mut(&mut self.topics, id);
        if !entry.subs.remove(conn) {
            return Unsubscribed::NotSubscribed;
        }
        if entry.creator == conn {
            entry.creator = NO_CREATOR;
            self.created[conn as usize] -= 1;
        }
        let topic_removed = entry.subs.len() == 0;
        let list = &mut self.conns[conn as usize];
        let at = list
            .iter()
            .position(|&t| t == id)
            .expect("the topic's subscriber set and the slot's topic list agree");
        list.swap_remove(at);
        shrink_if_sparse(list);
        self.subscriptions -= 1;
        if topic_removed {
            self.remove_topic(id);
        }
        Unsubscribed::Removed { topic_removed }
    }

    /// Removes every subscription of `conn` (its connection closed) and frees the slot's list.
    /// Calls `on_topic_removed` with the name of each topic that lost its last local subscriber,
    /// after the topic has left the table. Returns how many subscriptions were removed.
    ///
    /// O(t) expected, where t is the number of topics `conn` was subscribed to: other
    /// connections and topics are not visited.
    pub fn remove_conn(
        &mut self,
        conn: ConnSlot,
        mut on_topic_removed: impl FnMut(&Arc<str>),
    ) -> usize {
        let Some(list) = self.conns.get_mut(conn as usize) else {
            return 0;
        };
        let ids = std::mem::take(list);
        for &id in &ids {
            let entry = live_mut(&mut self.topics, id);
            let was_there = entry.subs.remove(conn);
            debug_assert!(
                was_there,
                "slot {conn} lists topic {id} but is not in its set"
            );
            if entry.creator == conn {
                entry.creator = NO_CREATOR;
            }
            if entry.subs.len() == 0 {
                let removed = self.remove_topic(id);
                on_topic_removed(&removed.name);
            }
        }
        self.subscriptions -= ids.len();
        self.created[conn as usize] = 0;
        ids.len()
    }

    /// Whether `conn` is subscribed to `topic`. O(1) expected (name hash + bounded set lookup).
    pub fn is_subscribed(&self, conn: ConnSlot, topic: &str) -> bool {
        self.find(topic)
            .is_some_and(|id| self.entry(id).subs.contains(conn))
    }

    /// Number of local subscribers of the topic (0 when unknown). O(1) expected.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.find(topic).map_or(0, |id| self.entry(id).subs.len())
    }

    /// Calls `f` for each local subscriber slot of the topic, in unspecified order; returns how
    /// many there were (0 when the topic is unknown). O(n) in the subscriber count.
    ///
    /// Must not be re-entered: `f` may not subscribe, unsubscribe or remove connections while the
    /// iteration runs (the shared borrow makes the compiler enforce it). To mutate per subscriber,
    /// or to fan out a huge topic in slices across yields, copy first with
    /// [`TopicTable::subscribers_into`].
    pub fn for_each_subscriber(&self, topic: &str, f: impl FnMut(ConnSlot)) -> usize {
        let Some(id) = self.find(topic) else {
            return 0;
        };
        let subs = &self.entry(id).subs;
        subs.for_each(f);
        subs.len()
    }

    /// Copies the topic's subscriber slots into `out` (cleared first; left empty when the topic is
    /// unknown), so a huge topic can be fanned out in slices across yields while the table keeps
    /// changing. O(n) in the subscriber count; reuses `out`'s capacity.
    pub fn subscribers_into(&self, topic: &str, out: &mut Vec<ConnSlot>) {
        out.clear();
        if let Some(id) = self.find(topic) {
            let subs = &self.entry(id).subs;
            out.reserve(subs.len());
            subs.for_each(|c| out.push(c));
        }
    }

    /// The interned names of the topics `conn` is subscribed to, in unspecified order.
    /// O(1) to create, O(t) to drain.
    pub fn topics_of(&self, conn: ConnSlot) -> impl Iterator<Item = &Arc<str>> + '_ {
        self.conns
            .get(conn as usize)
            .into_iter()
            .flatten()
            .map(|&id| &self.entry(id).name)
    }

    /// Whether `conn` brought `topic` onto this core and is still subscribed to it. O(1)
    /// expected.
    pub fn created_by(&self, conn: ConnSlot, topic: &str) -> bool {
        self.find(topic)
            .is_some_and(|id| self.entry(id).creator == conn)
    }

    /// How many live topics `conn` brought onto this core (and still subscribes to). O(1).
    pub fn conn_created_count(&self, conn: ConnSlot) -> usize {
        self.created.get(conn as usize).map_or(0, |&n| n as usize)
    }

    /// Sum of the live topics' name lengths. O(1).
    pub fn name_bytes(&self) -> usize {
        self.name_bytes
    }

    /// How many topics `conn` is subscribed to (for the per-connection limit). O(1).
    pub fn conn_topic_count(&self, conn: ConnSlot) -> usize {
        self.conns.get(conn as usize).map_or(0, Vec::len)
    }

    /// Number of topics with at least one local subscriber. O(1).
    pub fn topic_count(&self) -> usize {
        self.index.len()
    }

    /// Number of (connection, topic) subscriptions on this core. O(1).
    pub fn subscription_count(&self) -> usize {
        self.subscriptions
    }

    /// The interned name if the topic is present, to share instead of allocating a new
    /// `Arc<str>`. O(1) expected.
    pub fn interned(&self, topic: &str) -> Option<Arc<str>> {
        self.find(topic).map(|id| Arc::clone(&self.entry(id).name))
    }

    /// Approximate heap bytes held by the table (allocator overhead not included), for the memory
    /// benchmarks and /stats. O(topics + slots): not for the hot path.
    pub fn heap_bytes(&self) -> usize {
        let mut bytes = self.topics.capacity() * size_of::<Option<TopicEntry>>()
            + self.free_ids.capacity() * size_of::<TopicId>()
            + hash_table_bytes::<TopicId>(self.index.capacity())
            + self.conns.capacity() * size_of::<Vec<TopicId>>()
            + self.created.capacity() * size_of::<u32>();
        for entry in self.topics.iter().flatten() {
            // An `Arc<str>` allocation: two reference counts plus the bytes.
            bytes += 2 * size_of::<usize>() + entry.name.len();
            bytes += entry.subs.heap_bytes();
        }
        for list in &self.conns {
            bytes += list.capacity() * size_of::<TopicId>();
        }
        bytes
    }

    /// Checks every invariant of the module docs; panics naming the first broken one.
    /// O(topics + subscriptions). Test-only.
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut from_topics = 0;
        let mut live_topics = 0;
        for (id, entry) in self.topics.iter().enumerate() {
            let id = id as TopicId;
            let Some(entry) = entry else {
                assert!(self.free_ids.contains(&id), "free id {id} not in free list");
                continue;
            };
            live_topics += 1;
            assert!(entry.subs.len() > 0, "live topic {id} has no subscriber");
            assert_eq!(self.find(&entry.name), Some(id), "topic {id} not indexed");
            if let SubscriberSet::Small(v) = &entry.subs {
                assert!(v.len() <= SMALL_SET_MAX, "small set over the threshold");
                let mut sorted = v.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), v.len(), "duplicate subscriber in topic {id}");
            }
            entry.subs.for_each(|c| {
                assert!(
                    self.conns[c as usize].contains(&id),
                    "slot {c} in topic {id} but topic not in slot's list"
                );
            });
            from_topics += entry.subs.len();
        }
        assert_eq!(live_topics, self.index.len(), "index size");
        assert_eq!(
            live_topics + self.free_ids.len(),
            self.topics.len(),
            "free list size"
        );
        let mut from_conns = 0;
        for (slot, list) in self.conns.iter().enumerate() {
            for &id in list {
                assert!(
                    self.entry(id).subs.contains(slot as ConnSlot),
                    "slot {slot} lists topic {id} but is not in its set"
                );
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), list.len(), "duplicate topic in slot {slot}");
            from_conns += list.len();
        }
        assert_eq!(from_topics, self.subscriptions, "count vs topic sets");
        assert_eq!(from_conns, self.subscriptions, "count vs slot lists");
        let mut created = vec![0u32; self.created.len()];
        let mut names = 0;
        for entry in self.topics.iter().flatten() {
            names += entry.name.len();
            if entry.creator != NO_CREATOR {
                assert!(entry.subs.contains(entry.creator), "creator not subscribed");
                created[entry.creator as usize] += 1;
            }
        }
        assert_eq!(created, self.created, "created counts");
        assert_eq!(names, self.name_bytes, "name bytes");
    }
}

/// The live topic `id` of `topics`. Ids come only from the index and the slot lists, which hold
/// live ids only (module invariant), so a miss is a bug in this module.
fn live(topics: &[Option<TopicEntry>], id: TopicId) -> &TopicEntry {
    topics[id as usize]
        .as_ref()
        .expect("ids in the index and slot lists are live")
}

/// Mutable [`live`].
fn live_mut(topics: &mut [Option<TopicEntry>], id: TopicId) -> &mut TopicEntry {
    topics[id as usize]
        .as_mut()
        .expect("ids in the index and slot lists are live")
}

#[cfg(test)]
mod tests;
