//! Subscriptions on this core: subscribe and unsubscribe a connection on the topic table,
//! admission (`max_subscriptions*`), and answering `subscribed`/`unsubscribed` in the order
//! the requests came, each once every interest it waits for is acknowledged.
//!
//! A topic new (or gone) on this core is told to its owner through [`super::interest`].
//!
//! May touch: the topic table (and its version), pending subscribe answers, a connection's
//! in-flight set on unsubscribe. May not: queue deliveries.
//!
//! Read next: [`super::interest`].

use super::connections::ConnId;
use super::waiters::Pending;
use super::Shard;
use crate::metrics::Counters;
use crate::protocol::{ErrorCode, ProtoError};
use std::sync::Arc;

impl Shard {
    pub(super) fn bump_table_version(&self) {
        self.table_version
            .set(self.table_version.get().wrapping_add(1));
    }

    /// Subscribes a connection; tells the owner when the topic is new on this shard.
    /// Returns the token of an interest the owner has not acknowledged yet (see
    /// [`Shard::answer_subscribe`]): until then a publish might not be handed to this core.
    pub(crate) fn subscribe(&self, id: ConnId, topic: &str) -> Option<u64> {
        use crate::topics::Subscribed;
        let res = self.topics.borrow_mut().subscribe(id.slot, topic);
        if let Subscribed::Added { topic_created } = res {
            self.account_count(id, topic_created, true);
        }
        let wait = if let Subscribed::Added {
            topic_created: true,
        } = res
        {
            let t = self
                .topics
                .borrow()
                .interned(topic)
                .expect("just subscribed");
            self.interest(t, true)
        } else {
            self.interest_pending.borrow().get(topic).copied()
        };
        if let Subscribed::Added { .. } = res {
            self.count_conn_forms(id, || self.topics.borrow().interned(topic), true);
        }
        self.bump_table_version();
        wait
    }

    /// The forms a subscription of connection `id` wants (compressed, event), counted per topic
    /// ([`Shard::count_forms`]).
    /// `topic` gives the table's interned name, asked for only when the connection wants a
    /// form (no allocation, and no lookup for a plain subscriber).
    fn count_conn_forms(&self, id: ConnId, topic: impl FnOnce() -> Option<Arc<str>>, up: bool) {
        let (z, s) = self
            .with_conn(id, |c| (c.deflate_bits != 0, c.is_sse()))
            .unwrap_or_default();
        if z || s {
            if let Some(t) = topic() {
                self.count_forms(&t, z, s, up);
            }
        }
    }

    /// Unsubscribes; tells the owner when the topic is gone from this shard.
    pub(crate) fn unsubscribe(&self, id: ConnId, topic: &str) {
        use crate::topics::Unsubscribed;
        let interned = self.topics.borrow().interned(topic);
        let created = self.topics.borrow().created_by(id.slot, topic);
        let res = self.topics.borrow_mut().unsubscribe(id.slot, topic);
        if let Unsubscribed::Removed { .. } = res {
            self.account_count(id, created, false);
            self.count_conn_forms(id, || interned.clone(), false);
        }
        if let (
            Unsubscribed::Removed {
                topic_removed: true,
            },
            Some(t),
        ) = (res, interned)
        {
            self.interest(t, false);
        }
        self.bump_table_version();
        self.with_conn(id, |c| {
            if let Some(inf) = c.inflight.as_mut() {
                inf.forget_topic(topic);
                if inf.is_empty() {
                    c.inflight = None;
                }
            }
        });
    }

    /// Answers a subscribe (`reply`: the encoded `subscribed`) now, or once every interest it
    /// depends on (`waits`: tokens from [`Shard::subscribe`]) is acknowledged by the owners.
    /// Then asks for the replays of a `subscribe` with `fromSeq`.
    pub(crate) fn answer_subscribe(
        &self,
        id: ConnId,
        waits: Vec<u64>,
        reply: Vec<u8>,
        replays: Vec<(Arc<str>, u64)>,
    ) {
        let queued = self.subscribe_order.borrow().contains_key(&id);
        let mut pending = self.pending.borrow_mut();
        let mut attached = 0;
        let token = self.next_token();
        for w in &waits {
            if let Some(Pending::InterestUp { waiters, .. }) = pending.get_mut(w) {
                waiters.push(token);
                attached += 1;
            }
        }
        if attached == 0 && !queued {
            drop(pending);
            return self.finish_subscribe(id, &reply, replays);
        }
        pending.insert(
            token,
            Pending::Subscribe {
                conn: id,
                remaining: attached,
                reply,
                replays,
            },
        );
        drop(pending);
        self.subscribe_order
            .borrow_mut()
            .entry(id)
            .or_default()
            .push_back(token);
        if attached == 0 {
            self.release_subscribes(id);
        }
    }

    /// Sends, in request order, the connection's subscribe answers that are ready.
    pub(super) fn release_subscribes(&self, id: ConnId) {
        loop {
            let ready = {
                let mut order = self.subscribe_order.borrow_mut();
                let Some(q) = order.get_mut(&id) else {
                    return;
                };
                let mut pending = self.pending.borrow_mut();
                let head_done = q.front().is_some_and(|t| {
                    matches!(
                        pending.get(t),
                        Some(Pending::Subscribe { remaining: 0, .. }) | None
                    )
                });
                if !head_done {
                    return;
                }
                let token = q.pop_front().expect("checked");
                if q.is_empty() {
                    order.remove(&id);
                }
                pending.remove(&token)
            };
            if let Some(Pending::Subscribe {
                conn,
                reply,
                replays,
                ..
            }) = ready
            {
                self.finish_subscribe(conn, &reply, replays);
            }
        }
    }

    fn finish_subscribe(&self, id: ConnId, reply: &[u8], replays: Vec<(Arc<str>, u64)>) {
        self.enqueue(id, reply);
        for (topic, from) in replays {
            self.request_replay(id, topic, from, super::replay::ReplayFor::Request);
        }
    }

    /// Admission of `new` (distinct topics the connection is not subscribed to yet): the
    /// core's subscription cap, the identity's caps, then the memory budget. `Err`: the
    /// `LIMIT_EXCEEDED` to answer.
    pub(crate) fn admit_subscriptions(&self, id: ConnId, new: &[&str]) -> Result<(), ProtoError> {
        if new.is_empty() {
            return Ok(());
        }
        if new.len() > self.subscription_room() {
            return Err(self.subscriptions_refused(new.len()));
        }
        let (created, name_bytes) = {
            let table = self.topics.borrow();
            new.iter()
                .filter(|t| table.subscriber_count(t) == 0)
                .fold((0, 0), |(n, b), t| (n + 1, b + t.len()))
        };
        self.account_check(id, new.len(), created)?;
        if !self.memory_admits(Self::subscribe_cost(new.len(), created, name_bytes)) {
            return Err(self.memory_refused("subscribe"));
        }
        Ok(())
    }

    /// How many more subscriptions this core may take (admission control).
    pub(crate) fn subscription_room(&self) -> usize {
        let mut cap = self.cfg.max_subscriptions_per_core;
        if self.cfg.max_subscriptions > 0 {
            cap = cap.min(self.cfg.max_subscriptions / self.n_shards());
        }
        cap.saturating_sub(self.topics.borrow().subscription_count())
    }

    /// `LIMIT_EXCEEDED` for `want` subscriptions more than this core may take.
    pub(crate) fn subscriptions_refused(&self, want: usize) -> ProtoError {
        Counters::add(&self.counters.subscriptions_refused, 1);
        ProtoError::new(
            ErrorCode::LimitExceeded,
            format!(
                "the gateway is at its subscription limit (this core holds {}; asked for {want} more): try again later or another node",
                self.topics.borrow().subscription_count()
            ),
        )
    }
}
