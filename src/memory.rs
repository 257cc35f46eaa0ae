//! The process memory budget: one number (`memory_budget_bytes`) that bounds what clients can
//! make the gateway hold, the cost of each thing they can make it hold, and who holds it.
//!
//! Lives here: reading what the machine (or its cgroup) lets this process use, resolving the
//! budget and each core's share of it, the measured cost of a connection, a subscription, a
//! topic, a detached session, a QoS 1 delivery and a dedup entry ([`Usage`]: one core's
//! estimate, part by part), judging [`Pressure`], and [`Accounts`] (per identity: connections,
//! subscriptions and topics brought onto a core, for the per-identity caps). May not: touch
//! sockets, executors or another core's state. Each core keeps its own `Usage` against its own
//! share, like `max_subscriptions`: nothing is counted across cores on the data path.
//!
//! The costs are RSS measured on Linux 6.18 with mimalloc (docs/operations.md, "The memory
//! budget"); the estimate is checked against the real RSS once a second (the sweeper), and
//! whichever is nearer the budget decides.

use hashbrown::HashMap;
use std::sync::Arc;

/// A connection while idle: its task (1,168 B), `Conn` (256 B), its socket and readiness slot
/// (80 B), allocator rounding (RSS growth per idle connection at 10,000-19,000 connections,
/// `scripts/bench-scale.sh`: 1,754-2,006 B; docs/performance.md).
pub const CONN_BYTES: usize = 2_000;
/// A subscription to a topic that already exists on the core (topic table entries both ways:
/// 35-46 B measured at 1M-10M subscriptions).
pub const SUBSCRIPTION_BYTES: usize = 48;
/// A topic on a core, besides its subscriptions and its name: the table entry, the interned
/// name's header, the owner's routing entry and its hash slots (10 connections x 10,000 unique
/// 256-byte topics grew RSS by 650-780 B per subscription, 48 of them the subscription, 256
/// the name: tests/memory.rs measured 776 B at 59,200 topics).
pub const TOPIC_BYTES: usize = 450;
/// A topic the owner ever sequenced (its `seqNo` lives as long as the process), besides its
/// name: the hash entry and the name's own allocation.
pub const SEQUENCED_TOPIC_BYTES: usize = 96;
/// A detached session kept for `resume`, besides its topics: the hash entries, the state box.
pub const SESSION_BYTES: usize = 256;
/// Each topic (or QoS 1 position) a detached session remembers: one name reference.
pub const SESSION_TOPIC_BYTES: usize = 24;
/// One unacknowledged QoS 1 delivery tracked for a connection (the frame itself is shared with
/// history and the other subscribers).
pub const QOS1_ENTRY_BYTES: usize = 64;
/// One remembered `messageId` of the dedup window: hash entry, order record, the id string.
pub const DEDUP_ENTRY_BYTES: usize = 160;

/// Above this share of its budget (per mille), a core refuses what would grow it: new
/// subscriptions (`LIMIT_EXCEEDED`), new connections (HTTP 503 / close 1013), publishes to new
/// topics; history gives back first.
pub const REFUSE_AT_PERMILLE: usize = 900;

/// What part of the machine's memory the default budget takes: half, the rest left to the
/// kernel (socket buffers, 3.9 KB of slab per socket) and everything else on the host.
pub const DEFAULT_SHARE_DIVISOR: u64 = 2;

/// Used when the machine's memory cannot be read (no /proc/meminfo): 4 GiB.
pub const FALLBACK_BUDGET_BYTES: u64 = 4 << 30;

/// The resolved budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The whole process.
    pub total: usize,
    /// What each core may hold (`total / cores`).
    pub per_core: usize,
    /// Where `total` came from.
    pub source: BudgetSource,
    /// The memory the machine (or the cgroup) lets this process use, when known.
    pub machine: Option<u64>,
}

/// Where the budget came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    /// `memory_budget_bytes` in the configuration.
    Configured,
    /// Half of the machine's (or the cgroup's) memory.
    Machine,
    /// [`FALLBACK_BUDGET_BYTES`]: the machine's memory could not be read.
    Fallback,
}

impl BudgetSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetSource::Configured => "memory_budget_bytes",
            BudgetSource::Machine => "half of the machine's memory",
            BudgetSource::Fallback => "fallback (machine memory unknown)",
        }
    }
}

impl Budget {
    /// `configured` (0: the default) on `cores` cores, given what the machine lets us use.
    pub fn resolve(configured: usize, cores: usize, machine: Option<u64>) -> Budget {
        let (total, source) = if configured > 0 {
            (configured as u64, BudgetSource::Configured)
        } else if let Some(m) = machine {
            (m / DEFAULT_SHARE_DIVISOR, BudgetSource::Machine)
        } else {
            (FALLBACK_BUDGET_BYTES, BudgetSource::Fallback)
        };
        let total = usize::try_from(total).unwrap_or(usize::MAX);
        Budget {
            total,
            per_core: total / cores.max(1),
            source,
            machine,
        }
    }

    /// The per-core level above which a core refuses growth.
    pub fn refuse_at(&self) -> usize {
        self.per_core / 1000 * REFUSE_AT_PERMILLE
    }
}

/// The memory this process may use: `MemTotal`, or less when its cgroup (v2 `memory.max`, v1
/// `memory.limit_in_bytes`) says so. `None` when /proc/meminfo cannot be read.
pub fn machine_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total = meminfo_bytes(&meminfo, "MemTotal")?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_limit(&c, |p| std::fs::read_to_string(p).ok()));
    Some(cgroup.map_or(total, |l| l.min(total)))
}

/// A `Key:   123 kB` line of /proc/meminfo, in bytes.
pub fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.split(':').next() == Some(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The memory limit of the cgroup named in a /proc/self/cgroup text, read through `read`
/// (a path -> its contents). v2 (`0::/path`): `memory.max` of that cgroup and its parents, the
/// smallest; v1: `memory.limit_in_bytes` of the `memory` controller's cgroup. "max" and the
/// v1 "unlimited" value (near `i64::MAX`) are no limit.
pub fn cgroup_limit(proc_cgroup: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let parse = |s: Option<String>| -> Option<u64> {
        let v: u64 = s?.trim().parse().ok()?;
        (v < (1 << 60)).then_some(v)
    };
    let mut best: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let found = if controllers.is_empty() {
            // v2: the limit of this cgroup or of any parent applies.
            let mut p = path.trim_end_matches('/').to_string();
            let mut min: Option<u64> = None;
            loop {
                let file = format!("/sys/fs/cgroup{p}/memory.max");
                if let Some(v) = parse(read(&file)) {
                    min = Some(min.map_or(v, |m: u64| m.min(v)));
                }
                match p.rfind('/') {
                    Some(i) => p.truncate(i),
                    None => break,
                }
            }
            min
        } else if controllers.split(',').any(|c| c == "memory") {
            let file = format!(
                "/sys/fs/cgroup/memory{}/memory.limit_in_bytes",
                path.trim_end_matches('/')
            );
            parse(read(&file))
        } else {
            None
        };
        if let Some(v) = found {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
    }
    best
}

/// What the process held once every core was serving, before any client (set once by the
/// gateway; each core counts its share of it as the `base` part).
static STARTUP_RSS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Records the process RSS at the end of startup (the first call wins).
pub fn note_startup_rss(rss: usize) {
    let _ = STARTUP_RSS.set(rss);
}

/// The RSS recorded by [`note_startup_rss`].
pub fn startup_rss() -> Option<usize> {
    STARTUP_RSS.get().copied()
}

/// Hands the pages the calling core's allocator heap has freed back to the OS (mimalloc's
/// `mi_collect(false)`). mimalloc returns a freed page only after a delay, and only when that
/// heap allocates or frees again later: a core that goes quiet after a burst (a wave of
/// handshakes, a subscribe storm) would go on holding the burst's pages in its RSS, 600-700
/// bytes per connection at 10,000 connections here. The idle sweep calls this once a second
/// on each core; it costs a walk of the heap's pages (measured in docs/performance.md).
pub fn release_freed_pages() {
    // SAFETY: `mi_collect` has no preconditions; with `force = false` it frees only what the
    // calling thread's heap no longer uses (when mimalloc is not the global allocator, as in
    // unit tests, its heap is empty and this does nothing).
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// The resident set of this process in bytes (/proc/self/statm), when it can be read.
pub fn process_rss() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(
        pages
            * usize::try_from(page)
                .ok()
                .filter(|&p| p > 0)
                .unwrap_or(4096),
    )
}

/// One core's memory, part by part (bytes). `out_buffers` and `history` are exact (the bytes
/// held); the others are counts times the costs above.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// This core's share of what the process held before it served anyone (executors, rings,
    /// tables): measured at startup.
    pub base: usize,
    pub connections: usize,
    pub subscriptions: usize,
    /// Topics with a local subscriber: [`TOPIC_BYTES`] plus the name each.
    pub topics: usize,
    /// Topics this core owns and ever sequenced.
    pub sequenced: usize,
    /// Bytes queued for the sockets (the backlog budget's figure).
    pub out_buffers: usize,
    /// Frames and entries held for replay (the history budget's figure).
    pub history: usize,
    /// Detached sessions waiting for `resume`.
    pub sessions: usize,
    /// Unacknowledged QoS 1 deliveries.
    pub qos1: usize,
    /// The `messageId` dedup window.
    pub dedup: usize,
}

impl Usage {
    /// The parts with their `/stats` names.
    pub fn parts(&self) -> [(&'static str, usize); 10] {
        [
            ("base", self.base),
            ("connections", self.connections),
            ("subscriptions", self.subscriptions),
            ("topics", self.topics),
            ("sequencedTopics", self.sequenced),
            ("outBuffers", self.out_buffers),
            ("history", self.history),
            ("sessions", self.sessions),
            ("qos1", self.qos1),
            ("dedup", self.dedup),
        ]
    }

    pub fn total(&self) -> usize {
        self.parts().iter().map(|(_, v)| v).sum()
    }

    /// Sums per-core usages (for `/stats` totals).
    pub fn add(&mut self, o: &Usage) {
        self.base += o.base;
        self.connections += o.connections;
        self.subscriptions += o.subscriptions;
        self.topics += o.topics;
        self.sequenced += o.sequenced;
        self.out_buffers += o.out_buffers;
        self.history += o.history;
        self.sessions += o.sessions;
        self.qos1 += o.qos1;
        self.dedup += o.dedup;
    }
}

/// How near its share a core is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below [`REFUSE_AT_PERMILLE`]: everything is admitted.
    Normal,
    /// Above it: growth is refused, history gives back.
    Refusing,
    /// At or over the share: the backlog budget sheds draining backlogs too, detached sessions
    /// are evicted oldest first.
    Full,
}

/// The pressure of a core holding `used` (its estimate, or its share of the process RSS) out
/// of `budget`.
pub fn pressure(used: usize, budget: &Budget) -> Pressure {
    if used >= budget.per_core {
        Pressure::Full
    } else if used >= budget.refuse_at() {
        Pressure::Refusing
    } else {
        Pressure::Normal
    }
}

/// The per-identity caps, as one core enforces them (its share of each, rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityCaps {
    /// 0: no cap.
    pub connections: usize,
    pub subscriptions: usize,
    pub topics: usize,
}

impl IdentityCaps {
    /// Each cap's share on one of `cores` cores (0 stays "no cap").
    pub fn per_core(connections: usize, subscriptions: usize, topics: usize, cores: usize) -> Self {
        let share = |v: usize| if v == 0 { 0 } else { v.div_ceil(cores.max(1)) };
        IdentityCaps {
            connections: share(connections),
            subscriptions: share(subscriptions),
            topics: share(topics),
        }
    }
}

/// What one identity holds on a core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub key: Arc<str>,
    pub connections: usize,
    pub subscriptions: usize,
    /// Topics its connections brought onto the core and still subscribe to.
    pub topics: usize,
}

/// Which cap a request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    Connections,
    Subscriptions,
    Topics,
}

impl OverCap {
    pub fn what(self) -> &'static str {
        match self {
            OverCap::Connections => "connections",
            OverCap::Subscriptions => "subscriptions",
            OverCap::Topics => "unique topics",
        }
    }
}

/// An account's index, kept in its connections.
pub type AccountId = u32;

/// The identities holding something on one core. An account lives while it has a connection.
#[derive(Debug, Default)]
pub struct Accounts {
    by_key: HashMap<Arc<str>, AccountId>,
    slots: Vec<Option<Account>>,
    free: Vec<AccountId>,
}

impl Accounts {
    /// The key of a connection's account: the token's subject, or the peer's address for
    /// anonymous and not-yet-authenticated connections.
    pub fn key_for(subject: Option<&str>, peer: Option<std::net::IpAddr>) -> Arc<str> {
        match (subject, peer) {
            (Some(s), _) if s != crate::auth::ANONYMOUS_SUBJECT => Arc::from(format!("sub:{s}")),
            (_, Some(ip)) => Arc::from(format!("ip:{ip}")),
            (_, None) => Arc::from("ip:unknown"),
        }
    }

    /// Adds a connection to `key`'s account if `caps` allow it.
    pub fn open(&mut self, key: &Arc<str>, caps: &IdentityCaps) -> Result<AccountId, OverCap> {
        let id = match self.by_key.get(key) {
            Some(&id) => id,
            None => {
                let acc = Account {
                    key: key.clone(),
                    ..Account::default()
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize] = Some(acc);
                        id
                    }
                    None => {
                        self.slots.push(Some(acc));
                        (self.slots.len() - 1) as AccountId
                    }
                };
                self.by_key.insert(key.clone(), id);
                id
            }
        };
        let acc = self.get_mut(id);
        if caps.connections > 0 && acc.connections >= caps.connections {
            if acc.connections == 0 {
                self.release(id);
            }
            return Err(OverCap::Connections);
        }
        acc.connections += 1;
        Ok(id)
    }

    /// A connection of `id` holding `subscriptions` and `topics` closed (or moved away).
    pub fn close(&mut self, id: AccountId, subscriptions: usize, topics: usize) {
        let acc = self.get_mut(id);
        acc.connections = acc.connections.saturating_sub(1);
        acc.subscriptions = acc.subscriptions.saturating_sub(subscriptions);
        acc.topics = acc.topics.saturating_sub(topics);
        if acc.connections == 0 {
            self.release(id);
        }
    }

    /// Whether `id` may take `subscriptions` more, `topics` of them new to the core.
    pub fn check(
        &self,
        id: AccountId,
        subscriptions: usize,
        topics: usize,
        caps: &IdentityCaps,
    ) -> Result<(), OverCap> {
        let acc = self.get(id);
        if caps.subscriptions > 0 && acc.subscriptions + subscriptions > caps.subscriptions {
            return Err(OverCap::Subscriptions);
        }
        if caps.topics > 0 && acc.topics + topics > caps.topics {
            return Err(OverCap::Topics);
        }
        Ok(())
    }

    /// Counts subscriptions (and topics) added (`up`) or removed.
    pub fn count(&mut self, id: AccountId, subscriptions: usize, topics: usize, up: bool) {
        let acc = self.get_mut(id);
        if up {
            acc.subscriptions += subscriptions;
            acc.topics += topics;
        } else {
            acc.subscriptions = acc.subscriptions.saturating_sub(subscriptions);
            acc.topics = acc.topics.saturating_sub(topics);
        }
    }

    pub fn get(&self, id: AccountId) -> &Account {
        self.slots[id as usize].as_ref().expect("live account")
    }

    fn get_mut(&mut self, id: AccountId) -> &mut Account {
        self.slots[id as usize].as_mut().expect("live account")
    }

    fn release(&mut self, id: AccountId) {
        if let Some(acc) = self.slots[id as usize].take() {
            self.by_key.remove(&acc.key);
            self.free.push(id);
        }
    }

    /// Identities with a connection on this core.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_defaults_to_half_the_machine_split_per_core() {
        let b = Budget::resolve(0, 2, Some(24 << 30));
        assert_eq!(b.total, 12 << 30);
        assert_eq!(b.per_core, 6 << 30);
        assert_eq!(b.source, BudgetSource::Machine);
        let b = Budget::resolve(64 << 20, 1, Some(24 << 30));
        assert_eq!((b.total, b.per_core), (64 << 20, 64 << 20));
        assert_eq!(b.source, BudgetSource::Configured);
        let b = Budget::resolve(0, 4, None);
        assert_eq!(b.total as u64, FALLBACK_BUDGET_BYTES);
        assert_eq!(b.source, BudgetSource::Fallback);
    }

    #[test]
    fn pressure_starts_at_ninety_percent_of_the_share() {
        let b = Budget::resolve(1_000_000, 1, None);
        assert_eq!(pressure(899_999, &b), Pressure::Normal);
        assert_eq!(pressure(900_000, &b), Pressure::Refusing);
        assert_eq!(pressure(1_000_000, &b), Pressure::Full);
    }

    #[test]
    fn cgroup_limits_are_read_for_v2_parents_and_v1() {
        let files = |p: &str| -> Option<String> {
            match p {
                "/sys/fs/cgroup/a/b/memory.max" => Some("max\n".into()),
                "/sys/fs/cgroup/a/memory.max" => Some("1073741824\n".into()),
                "/sys/fs/cgroup/memory/docker/x/memory.limit_in_bytes" => {
                    Some("536870912\n".into())
                }
                "/sys/fs/cgroup/memory/free/memory.limit_in_bytes" => {
                    Some("9223372036854771712\n".into())
                }
                _ => None,
            }
        };
        assert_eq!(cgroup_limit("0::/a/b\n", files), Some(1 << 30));
        assert_eq!(cgroup_limit("0::/\n", files), None);
        assert_eq!(
            cgroup_limit("4:memory:/docker/x\n3:cpu:/y\n", files),
            Some(512 << 20)
        );
        assert_eq!(cgroup_limit("4:cpu,memory:/free\n", files), None);
        assert_eq!(cgroup_limit("garbage", files), None);
    }

    #[test]
    fn usage_sums_its_parts() {
        let u = Usage {
            base: 1,
            connections: 2,
            subscriptions: 3,
            topics: 4,
            sequenced: 5,
            out_buffers: 6,
            history: 7,
            sessions: 8,
            qos1: 9,
            dedup: 10,
        };
        assert_eq!(u.total(), 55);
        let mut t = Usage::default();
        t.add(&u);
        t.add(&u);
        assert_eq!(t.total(), 110);
    }

    #[test]
    fn accounts_enforce_each_cap_and_free_themselves() {
        let caps = IdentityCaps::per_core(4, 10, 3, 2);
        assert_eq!(
            (caps.connections, caps.subscriptions, caps.topics),
            (2, 5, 2)
        );
        let mut a = Accounts::default();
        let k: Arc<str> = Arc::from("ip:127.0.0.1");
        let one = a.open(&k, &caps).unwrap();
        let two = a.open(&k, &caps).unwrap();
        assert_eq!(one, two);
        assert_eq!(a.open(&k, &caps), Err(OverCap::Connections));
        assert_eq!(a.check(one, 6, 0, &caps), Err(OverCap::Subscriptions));
        assert_eq!(a.check(one, 3, 3, &caps), Err(OverCap::Topics));
        assert!(a.check(one, 5, 2, &caps).is_ok());
        a.count(one, 5, 2, true);
        assert_eq!(a.check(one, 1, 0, &caps), Err(OverCap::Subscriptions));
        a.close(one, 3, 1);
        assert_eq!(a.get(one).subscriptions, 2);
        a.close(two, 2, 1);
        assert!(a.is_empty());
        // A fresh identity after the slot is reused starts from nothing.
        let other: Arc<str> = Arc::from("sub:alice");
        let id = a.open(&other, &caps).unwrap();
        assert_eq!(a.get(id).subscriptions, 0);
        let none = IdentityCaps::per_core(0, 0, 0, 4);
        assert!(a.check(id, usize::MAX / 2, usize::MAX / 2, &none).is_ok());
        assert_eq!(
            Accounts::key_for(Some("anonymous"), None).as_ref(),
            "ip:unknown"
        );
        assert_eq!(Accounts::key_for(Some("bob"), None).as_ref(), "sub:bob");
    }
}
