//! The memory budget on this core: what this core holds, part by part ([`Usage`]), against its
//! share of `memory_budget_bytes`, and who holds it (per-identity [`Accounts`]).
//!
//! - Admission asks [`Shard::memory_admits`] before it grows anything clients control: a
//!   subscription ([`super::messages`]), an upgrade ([`super::accept`]: HTTP 503), a publish to
//!   a topic never seen ([`super::publish`]). Above 90 % of the share the answer is no, after
//!   the history has given back what it can (oldest first).
//! - The sweeper ([`Shard::memory_sweep`], once a second) reads the process RSS (whichever of
//!   the estimate and the RSS is nearer the budget decides), gives history back under
//!   pressure, and at the share evicts detached sessions oldest first and lets the backlog
//!   budget shed draining backlogs too.
//! - The per-identity caps (`max_*_per_identity`, each core its share) are kept in the
//!   accounts: connections when a connection is registered or its identity changes,
//!   subscriptions and topics as the topic table changes.
//!
//! May touch: the history (eviction), detached sessions (eviction), the accounts. May not:
//! write to sockets or queue deliveries.

use super::connections::ConnId;
use super::Shard;
use crate::memory::{self, AccountId, Accounts, Budget, IdentityCaps, OverCap, Pressure, Usage};
use crate::metrics::Counters;
use crate::protocol::{ErrorCode, ProtoError};
use std::cell::{Cell, RefCell};
use std::sync::Arc;

/// A connection's account before it has one (or when its identity was refused).
pub(super) const NO_ACCOUNT: AccountId = AccountId::MAX;

/// The core's memory state.
pub(super) struct Memory {
    pub budget: Budget,
    pub caps: IdentityCaps,
    cores: usize,
    /// The process RSS at the last sweep (0 before the first).
    rss: Cell<usize>,
    /// Unacknowledged QoS 1 deliveries at the last sweep (an O(connections) count).
    qos1_entries: Cell<usize>,
    pub accounts: RefCell<Accounts>,
}

impl Memory {
    pub fn new(cfg: &crate::config::Config, cores: usize) -> Memory {
        let budget = Budget::resolve(cfg.memory_budget_bytes, cores, memory::machine_memory());
        Memory {
            budget,
            caps: IdentityCaps::per_core(
                cfg.max_conns_per_identity,
                cfg.max_subscriptions_per_identity,
                cfg.max_topics_per_identity,
                cores,
            ),
            cores: cores.max(1),
            rss: Cell::new(0),
            qos1_entries: Cell::new(0),
            accounts: RefCell::new(Accounts::default()),
        }
    }

    pub fn rss(&self) -> usize {
        self.rss.get()
    }

    /// This core's share of the process RSS at the end of startup (recorded by the gateway
    /// once every core serves; the measured per-core figure until then).
    fn base(&self) -> usize {
        memory::startup_rss().map_or(crate::doctor::BASE_BYTES_PER_CORE as usize, |r| {
            r / self.cores
        })
    }
}

impl Shard {
    /// What this core holds now, part by part. O(1).
    pub(super) fn memory_usage(&self) -> Usage {
        let m = &self.memory;
        let topics = self.topics.borrow();
        let dedup = self.dedup.borrow().len();
        Usage {
            base: m.base(),
            connections: self.conns.borrow().len() * memory::CONN_BYTES,
            subscriptions: topics.subscription_count() * memory::SUBSCRIPTION_BYTES,
            topics: topics.topic_count() * memory::TOPIC_BYTES + topics.name_bytes(),
            sequenced: self.seq.borrow().memory_bytes(),
            out_buffers: crate::outbuf::queued_on_this_thread(),
            history: self.history.borrow().bytes(),
            sessions: self.sessions.borrow().detached_bytes(),
            qos1: m.qos1_entries.get() * memory::QOS1_ENTRY_BYTES,
            dedup: dedup * memory::DEDUP_ENTRY_BYTES,
        }
    }

    /// How much this core holds as the budget judges it, with `extra` bytes more: the
    /// estimate or this core's share of the process RSS, whichever is larger.
    fn memory_held(&self, extra: usize) -> usize {
        let rss_share = self.memory.rss.get() / self.n_shards();
        (self.memory_usage().total() + extra).max(rss_share)
    }

    pub(super) fn memory_pressure(&self) -> Pressure {
        memory::pressure(self.memory_held(0), &self.memory.budget)
    }

    /// Whether this core may take `extra` bytes more: below 90 % of its share, after the
    /// history has given back what it can. A refusal is counted in `memory_refusals`.
    pub(super) fn memory_admits(&self, extra: usize) -> bool {
        let refuse_at = self.memory.budget.refuse_at();
        if self.memory_held(extra) < refuse_at {
            return true;
        }
        self.history_give_back(self.memory_held(extra) + 1 - refuse_at);
        if self.memory_held(extra) < refuse_at {
            return true;
        }
        Counters::add(&self.counters.memory_refusals, 1);
        false
    }

    /// Evicts the oldest history, whatever its topic, to free `bytes`.
    fn history_give_back(&self, bytes: usize) {
        let mut h = self.history.borrow_mut();
        let held = h.bytes();
        if held == 0 {
            return;
        }
        let gone = h.evict_to(held.saturating_sub(bytes));
        Counters::add(&self.counters.memory_history_evictions, gone as u64);
    }

    /// `LIMIT_EXCEEDED` for a request refused by the memory budget.
    pub(super) fn memory_refused(&self, what: &str) -> ProtoError {
        let b = &self.memory.budget;
        ProtoError::new(
            ErrorCode::LimitExceeded,
            format!(
                "the gateway is near its memory budget (this core holds {} of its {} byte share): {what} refused; try again later or another node",
                self.memory_held(0),
                b.per_core
            ),
        )
    }

    /// `LIMIT_EXCEEDED` for a request over a per-identity cap.
    pub(super) fn identity_refused(&self, over: OverCap) -> ProtoError {
        Counters::add(&self.counters.identity_refusals, 1);
        let caps = &self.memory.caps;
        let (cap, total) = match over {
            OverCap::Connections => (caps.connections, self.cfg.max_conns_per_identity),
            OverCap::Subscriptions => (caps.subscriptions, self.cfg.max_subscriptions_per_identity),
            OverCap::Topics => (caps.topics, self.cfg.max_topics_per_identity),
        };
        ProtoError::new(
            ErrorCode::LimitExceeded,
            format!(
                "this identity holds its share of {} on this core ({cap} of max_{}_per_identity = {total})",
                over.what(),
                match over {
                    OverCap::Connections => "conns",
                    OverCap::Subscriptions => "subscriptions",
                    OverCap::Topics => "topics",
                }
            ),
        )
    }

    /// Once a second: the process RSS, the QoS 1 count; under pressure history gives back; at
    /// the share, detached sessions go oldest first.
    pub(super) fn memory_sweep(&self) {
        // First, so the RSS read next (and the budget's view) counts only what is held.
        memory::release_freed_pages();
        if let Some(rss) = memory::process_rss() {
            self.memory.rss.set(rss);
        }
        let unacked: usize = self
            .conns
            .borrow()
            .iter()
            .filter_map(|(_, c)| c.inflight.as_ref())
            .map(|i| i.len())
            .sum();
        self.memory.qos1_entries.set(unacked);
        let refuse_at = self.memory.budget.refuse_at();
        let held = self.memory_held(0);
        if held >= refuse_at {
            self.history_give_back(held + 1 - refuse_at);
        }
        while self.memory_pressure() == Pressure::Full {
            let Some(gone) = self.sessions.borrow_mut().evict_oldest() else {
                break;
            };
            self.session_gone(gone);
        }
        let (held, share) = (self.memory_held(0), self.memory.budget.per_core);
        if held >= share {
            self.shed_for_memory(held + 1 - share);
        }
    }

    // ----- per-identity accounts ----------------------------------------------------------

    /// Puts a connection in its identity's account (a new one, or one whose identity just
    /// changed). Over that identity's share of connections: `LIMIT_EXCEEDED`, then close 1013
    /// (try again later); false.
    pub(super) fn account_enter(&self, id: ConnId) -> bool {
        let key = self.account_key(id);
        match self.account_move(id, &key) {
            Ok(()) => true,
            Err(e) => {
                self.reply_error(id, &e);
                self.begin_close(
                    id,
                    crate::ws::frame::CLOSE_TRY_AGAIN_LATER,
                    "connection limit for this identity",
                );
                false
            }
        }
    }

    /// Puts a new connection in the account of `key`; `Err` when that identity holds its share
    /// of connections (the connection keeps [`NO_ACCOUNT`] and is to be closed).
    pub(super) fn account_open(&self, id: ConnId, key: &Arc<str>) -> Result<(), ProtoError> {
        let res = self
            .memory
            .accounts
            .borrow_mut()
            .open(key, &self.memory.caps);
        match res {
            Ok(acc) => {
                self.with_conn(id, |c| c.account = acc);
                Ok(())
            }
            Err(over) => Err(self.identity_refused(over)),
        }
    }

    /// Takes a connection out of its account (it closes, or moves to another identity),
    /// with what it holds in the topic table.
    pub(super) fn account_close(&self, id: ConnId) {
        let Some(acc) = self.with_conn(id, |c| std::mem::replace(&mut c.account, NO_ACCOUNT))
        else {
            return;
        };
        if acc == NO_ACCOUNT {
            return;
        }
        let (subs, created) = {
            let t = self.topics.borrow();
            (t.conn_topic_count(id.slot), t.conn_created_count(id.slot))
        };
        self.memory.accounts.borrow_mut().close(acc, subs, created);
    }

    /// A connection's identity changed (`setup` with a token, `resume` adopting a session's):
    /// moves it, with what it holds, to the new identity's account.
    pub(super) fn account_move(&self, id: ConnId, key: &Arc<str>) -> Result<(), ProtoError> {
        let same = self
            .with_conn(id, |c| c.account)
            .filter(|&a| a != NO_ACCOUNT)
            .is_some_and(|a| self.memory.accounts.borrow().get(a).key == *key);
        if same {
            return Ok(());
        }
        self.account_close(id);
        self.account_open(id, key)?;
        let (subs, created) = {
            let t = self.topics.borrow();
            (t.conn_topic_count(id.slot), t.conn_created_count(id.slot))
        };
        if let Some(acc) = self.with_conn(id, |c| c.account) {
            self.memory
                .accounts
                .borrow_mut()
                .count(acc, subs, created, true);
        }
        Ok(())
    }

    /// Whether the connection's identity may take `subs` more subscriptions, `topics` of them
    /// new to this core.
    pub(super) fn account_check(
        &self,
        id: ConnId,
        subs: usize,
        topics: usize,
    ) -> Result<(), ProtoError> {
        let Some(acc) = self
            .with_conn(id, |c| c.account)
            .filter(|&a| a != NO_ACCOUNT)
        else {
            return Ok(());
        };
        self.memory
            .accounts
            .borrow()
            .check(acc, subs, topics, &self.memory.caps)
            .map_err(|over| self.identity_refused(over))
    }

    /// Counts a subscription (and a topic it created) in, or out of, the connection's account.
    pub(super) fn account_count(&self, id: ConnId, topic_created: bool, up: bool) {
        let Some(acc) = self
            .with_conn(id, |c| c.account)
            .filter(|&a| a != NO_ACCOUNT)
        else {
            return;
        };
        self.memory
            .accounts
            .borrow_mut()
            .count(acc, 1, usize::from(topic_created), up);
    }

    /// The memory a subscription request would add: `subs` subscriptions, `new_topic_bytes`
    /// of names of topics new to this core (`new_topics` of them).
    pub(super) fn subscribe_cost(subs: usize, new_topics: usize, new_topic_bytes: usize) -> usize {
        subs * memory::SUBSCRIPTION_BYTES + new_topics * memory::TOPIC_BYTES + new_topic_bytes
    }

    /// The key of a connection's account: its token's subject, else its peer's address.
    pub(super) fn account_key(&self, id: ConnId) -> Arc<str> {
        let (subject, peer) = self
            .with_conn(id, |c| {
                (
                    c.identity.as_ref().map(|i| i.subject.clone()),
                    c.stream.peer_addr().ok().map(|a| a.ip()),
                )
            })
            .unwrap_or((None, None));
        Accounts::key_for(subject.as_deref(), peer)
    }
}
