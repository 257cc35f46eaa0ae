//! Housekeeping of one core: the sweeper (once a tick: pings for quiet connections, idle and
//! stuck connections closed, expired tokens, QoS 1 redelivery, session and history expiry,
//! idle write buffers given back), stats (this core's snapshot and the gathering of every
//! core's for `/stats` and `/metrics`), and shutdown (close every connection, wake the
//! waiters).
//!
//! May touch: every connection's timers and buffers, counters, sessions, history expiry.
//! May not: hold a borrow across the sweeper's sleep.

use super::connections::{
    behind_for_too_long, cut_slow_consumer, enqueue_into, ConnId, ConnState, Enqueued,
};
use super::waiters::{Pending, Reply};
use super::write::mark_dirty;
use super::{unix_now, Shard};
use crate::config::SlowConsumerPolicy;
use crate::mesh::ShardMsg;
use crate::metrics::{Counters, Snapshot};
use crate::outbuf::Kind;
use crate::protocol::{self, ErrorCode, ProtoError};
use crate::ws::frame::{self, OpCode};
use futures_lite::future::poll_fn;
use glommio::channels::local_channel::LocalSender;
use glommio::timer::Timer;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

impl Shard {
    /// Once a second: ping connections that have been quiet, close the silent and the stuck.
    pub(super) async fn sweeper(self: Rc<Self>) {
        let idle = Duration::from_millis(self.cfg.idle_timeout_ms);
        let grace = Duration::from_millis(self.cfg.slow_consumer_grace_ms);
        let ping_every = Duration::from_millis(self.cfg.ping_interval_ms);
        let redeliver = Duration::from_millis(self.cfg.qos1_redeliver_ms);
        let tick = Duration::from_millis(
            self.cfg
                .ping_interval_ms
                .min(self.cfg.qos1_redeliver_ms / 2)
                .clamp(10, 1000),
        );
        let ping = {
            let mut b = Vec::new();
            frame::write_server_frame(&mut b, OpCode::Ping, b"");
            b
        };
        let mut last_latency_tick = Instant::now();
        loop {
            Timer::new(tick).await;
            let now = Instant::now();
            let now_unix = unix_now();
            if now.duration_since(last_latency_tick) >= Duration::from_secs(1) {
                self.latency.tick();
                self.history.borrow_mut().expire(now);
                self.memory_sweep();
                last_latency_tick = now;
            }
            let expired = self.sessions.borrow_mut().expire(now);
            for id in expired {
                Counters::add(&self.counters.sessions_expired, 1);
                self.session_gone(id);
            }
            let evicted = std::mem::take(&mut self.sessions.borrow_mut().evicted);
            Counters::add(&self.counters.sessions_evicted, evicted);
            let mut to_close: Vec<(ConnId, u16, &str)> = Vec::new();
            let mut followups: Vec<ConnId> = Vec::new();
            {
                let mut conns = self.conns.borrow_mut();
                let mut dirty = self.writes.dirty.borrow_mut();
                for (slot, c) in conns.iter_mut() {
                    if c.state != ConnState::Open {
                        continue;
                    }
                    if c.pending() == 0 && !c.is_dirty && c.blocked_since.is_none() {
                        // Give idle connections' write buffers back; busy ones regrow theirs.
                        c.out.release_if_empty();
                    }
                    let id = ConnId {
                        slot: slot as u32,
                        gen: c.gen,
                    };
                    if c.has_shed() && c.pending() == 0 && c.blocked_since.is_none() {
                        // The ladder's backstop: a drain the writer did not report (a refill
                        // put back while a replay of its topic was on its way).
                        followups.push(id);
                    }
                    if let Some(inf) = c.inflight.as_mut() {
                        // I4: QoS 1 deliveries not acknowledged in time go out again.
                        let due = inf.due(now, redeliver, c.deflate_bits);
                        for f in &due {
                            if enqueue_into(c, f, Kind::Delivery, &self.cfg, &self.counters)
                                != Enqueued::Queued
                            {
                                break;
                            }
                            Counters::add(&self.counters.qos1_redeliveries, 1);
                        }
                        if !due.is_empty() {
                            mark_dirty(c, slot as u32, &mut dirty);
                        }
                    }
                    if c.identity.as_ref().is_some_and(|i| i.is_expired(now_unix)) {
                        // Documented choice (auth.rs): an expired token ends the connection.
                        let err = ProtoError::new(ErrorCode::Unauthorized, "token expired");
                        let mut b = Vec::with_capacity(96);
                        protocol::encode_error(&mut b, &err);
                        c.push_uncapped(&b);
                        to_close.push((id, frame::CLOSE_POLICY, "token expired"));
                    } else if now.duration_since(c.last_seen) > idle && !c.is_sse() {
                        // (An event stream never speaks: it is judged by its socket, below,
                        // and kept alive by the heartbeat comments its pings become.)
                        Counters::add(&self.counters.idle_closes, 1);
                        to_close.push((id, frame::CLOSE_POLICY, "idle timeout"));
                    } else if self.cfg.slow_consumer == SlowConsumerPolicy::Disconnect
                        && c.is_slow(0, self.cfg.max_backlog_bytes, grace)
                    {
                        // Behind for the whole grace period with nothing more published to
                        // it: the policy applies all the same.
                        cut_slow_consumer(c, behind_for_too_long(&self.cfg), &self.counters);
                        mark_dirty(c, slot as u32, &mut dirty);
                    } else if c
                        .blocked_since
                        .is_some_and(|t| now.duration_since(t) > idle)
                    {
                        Counters::add(&self.counters.slow_consumer_disconnects, 1);
                        to_close.push((id, frame::CLOSE_POLICY, "not reading"));
                    } else if now.duration_since(c.last_ping) >= ping_every
                        && c.blocked_since.is_none()
                    {
                        // (A socket that refuses bytes needs no heartbeat to find out: it is
                        // judged by the slow-consumer rules, and a ping queued behind its
                        // backlog could only cut it as a reply over the cap.)
                        c.last_ping = now;
                        if enqueue_into(c, &ping, Kind::Reply, &self.cfg, &self.counters)
                            == Enqueued::Queued
                        {
                            mark_dirty(c, slot as u32, &mut dirty);
                        }
                    }
                }
            }
            for (id, code, reason) in to_close {
                self.begin_close(id, code, reason);
            }
            for id in followups {
                self.after_drain(id);
            }
            self.shed_backlog(true);
            self.wake_flusher();
        }
    }

    /// Asks every shard for its counters; the answers arrive on `tx` (this shard's first).
    pub(crate) fn query_stats(&self, tx: LocalSender<Reply>) -> u64 {
        let _ = tx.try_send(Reply::Stats(Box::new(self.snapshot())));
        let token = self.next_token();
        let others = self.n_shards() - 1;
        if others > 0 {
            self.pending.borrow_mut().insert(
                token,
                Pending::Task {
                    tx,
                    remaining: others,
                },
            );
            for peer in 0..self.n_shards() {
                if peer != self.id {
                    self.send_to(
                        peer,
                        ShardMsg::StatsQuery {
                            from: self.id,
                            token,
                        },
                    );
                }
            }
        }
        token
    }

    /// This shard's counters and gauges.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut s = self.counters.snapshot();
        s.core = self.core;
        let conns = self.conns.borrow();
        s.connections = conns.len() as u64;
        s.backlog_bytes = conns.iter().map(|(_, c)| c.pending() as u64).sum();
        let topics = self.topics.borrow();
        s.local_topics = topics.topic_count() as u64;
        s.subscriptions = topics.subscription_count() as u64;
        s.owned_topics_with_interest = self.seq.borrow().topics_with_interest();
        let dedup = self.dedup.borrow();
        s.dedup_entries = dedup.len() as u64;
        s.dedup_evictions = dedup.evictions;
        s.sessions_detached = self.sessions.borrow().detached_count() as u64;
        s.qos1_unacked = conns
            .iter()
            .filter_map(|(_, c)| c.inflight.as_ref())
            .map(|i| i.len() as u64)
            .sum();
        s.latency = Some(Box::new(self.latency.snapshot()));
        s.memory = self.memory_usage();
        s.memory_share = self.memory.budget.per_core as u64;
        s.rss = self.memory.rss() as u64;
        s.identities = self.memory.accounts.borrow().len() as u64;
        s
    }

    pub(super) fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        let ids: Vec<ConnId> = self
            .conns
            .borrow()
            .iter()
            .map(|(s, c)| ConnId {
                slot: s as u32,
                gen: c.gen,
            })
            .collect();
        for id in ids {
            self.begin_close(id, frame::CLOSE_GOING_AWAY, "server shutting down");
        }
        self.wake_shutdown_waiters();
    }

    pub(super) fn wake_shutdown_waiters(&self) {
        for w in self.shutdown_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn shutdown_started(&self) {
        poll_fn(|cx| {
            if self.shutting_down.get() {
                Poll::Ready(())
            } else {
                self.shutdown_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub(super) async fn all_conns_closed(&self) {
        poll_fn(|cx| {
            if self.conns.borrow().is_empty() {
                Poll::Ready(())
            } else {
                self.shutdown_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}
