//! The slow-consumer ladder (issue 13): what a delivery for a connection that
//! [`Conn::is_slow`] judges slow turns into, per topic (`slow_consumer`, then
//! `[[slow_consumer_rules]]`, first match wins):
//!
//! - `disconnect`: `error` `SLOW_CONSUMER`, close 1008.
//! - `drop`: the delivery is dropped for that connection; the range dropped is told to it
//!   (`SLOW_CONSUMER` with `topic`, `fromSeq`, `toSeq`) before its next delivery of the topic
//!   or once its socket drains, whichever comes first, so nothing goes missing silently.
//! - `refill`: the connection stays; its queued deliveries of every `refill` topic are
//!   discarded, and so is every later one of those topics, until its socket drains (a ping
//!   queued behind them tells when: the writer sees the socket take bytes again). Then each
//!   topic is replayed from the first seqNo discarded, through the same seam as `replay` (live
//!   frames held back until the owner's answer, which travels behind every frame handed out),
//!   so the subscriber gets every message once and in order; what history no longer holds is
//!   reported (`REPLAY_UNAVAILABLE`, `oldestSeq` where delivery resumes).
//!
//! QoS 1 deliveries keep their own rules: discarded or dropped ones stay tracked and are sent
//! again (`qos1_redeliver_ms`); a replay does not track them twice.
//!
//! May touch: a connection's out buffer and shed state, replay requests (through
//! [`super::replay`]). May not: write to sockets.
//!
//! Reached from [`super::fanout`] (each delivery), [`super::budget`] (the core's budget),
//! [`super::write`] (a socket drained) and [`super::housekeeping`] (the backstop).

use super::connections::{
    behind_for_too_long, cut_slow_consumer, Conn, ConnId, ConnState, Enqueued,
};
use super::replay::ReplayFor;
use super::write::mark_dirty;
use super::Shard;
use crate::config::{Config, SlowConsumerPolicy};
use crate::history::Pattern;
use crate::mesh::Delivery;
use crate::metrics::Counters;
use crate::outbuf::is_delivery_frame;
use crate::protocol::{self, ErrorCode, ProtoError};
use crate::ws::frame::{self, OpCode};
use std::sync::Arc;
use std::time::Duration;

/// The policies, parsed once per core.
pub(crate) struct Ladder {
    global: SlowConsumerPolicy,
    rules: Vec<(Pattern, SlowConsumerPolicy)>,
}

impl Ladder {
    pub(crate) fn new(cfg: &Config) -> Result<Self, String> {
        let rules = cfg
            .slow_consumer_rules
            .iter()
            .map(|r| Ok((Pattern::parse(&r.topics)?, r.policy)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Ladder {
            global: cfg.slow_consumer,
            rules,
        })
    }

    /// The policy of `topic`. One comparison without rules.
    #[inline]
    pub(crate) fn policy(&self, topic: &str) -> SlowConsumerPolicy {
        if self.rules.is_empty() {
            return self.global;
        }
        self.rules
            .iter()
            .find(|(p, _)| p.matches(topic))
            .map_or(self.global, |(_, policy)| *policy)
    }
}

/// A connection's shed state; `None` on `Conn` almost always (boxed: one word).
#[derive(Default, Debug)]
pub(crate) struct Shed {
    /// `refill` topics whose deliveries are discarded until the socket drains, each with the
    /// first seqNo discarded (the replay starts there).
    refill: Vec<(Arc<str>, u64)>,
    /// Ranges `drop` dropped and not yet told: (topic, first, last).
    dropped: Vec<(Arc<str>, u64, u64)>,
}

impl Shed {
    pub(super) fn is_empty(&self) -> bool {
        self.refill.is_empty() && self.dropped.is_empty()
    }

    fn refilling(&mut self, topic: &str) -> Option<&mut (Arc<str>, u64)> {
        self.refill.iter_mut().find(|(t, _)| **t == *topic)
    }

    /// `drop`: adds `seq` to the topic's untold range. A range `seq` does not continue is
    /// over: it is returned (to be told) and a new one begins.
    fn note_dropped(
        &mut self,
        topic: &str,
        seq: u64,
        interned: Option<&Arc<str>>,
    ) -> Option<(Arc<str>, u64, u64)> {
        match self.dropped.iter_mut().find(|(t, _, _)| **t == *topic) {
            Some(r) if r.2.checked_add(1) == Some(seq) => {
                r.2 = seq;
                None
            }
            Some(r) => {
                let ended = r.clone();
                (r.1, r.2) = (seq, seq);
                Some(ended)
            }
            None => {
                let t = interned.cloned().unwrap_or_else(|| topic.into());
                self.dropped.push((t, seq, seq));
                None
            }
        }
    }

    fn note_refill(&mut self, topic: &str, seq: u64, interned: Option<&Arc<str>>) {
        match self.refilling(topic) {
            Some(r) => r.1 = r.1.min(seq),
            None => {
                let t = interned.cloned().unwrap_or_else(|| topic.into());
                self.refill.push((t, seq));
            }
        }
    }
}

/// Queues one delivery under the ladder. A `refill` topic being refilled is discarded (its
/// replay covers it); a dropped range of the topic is told first; a connection that is not
/// slow takes the delivery whatever its backlog. O(frame).
pub(super) fn enqueue_delivery(
    c: &mut Conn,
    d: &Delivery,
    policy: SlowConsumerPolicy,
    ladder: &Ladder,
    cfg: &Config,
    counters: &Counters,
) -> Enqueued {
    if c.state != ConnState::Open {
        return Enqueued::Gone;
    }
    if let Some(shed) = c.shed_mut() {
        if let Some(r) = shed.refilling(&d.topic) {
            if is_delivery_frame(&d.frame) {
                r.1 = r.1.min(d.seq_no);
                Counters::add(&counters.refill_discards, 1);
                return Enqueued::Refilling;
            }
        }
    }
    let grace = Duration::from_millis(cfg.slow_consumer_grace_ms);
    let frame = d.frame_for(c.deflate_bits);
    if !c.is_slow(frame.len(), cfg.max_backlog_bytes, grace) {
        if c.has_shed() {
            tell_dropped(c, Some(&d.topic), counters);
        }
        c.push_delivery(d, counters);
        return Enqueued::Queued;
    }
    match policy {
        SlowConsumerPolicy::Disconnect => {
            cut_slow_consumer(c, behind_for_too_long(cfg), counters);
            Enqueued::Disconnected
        }
        SlowConsumerPolicy::Drop => {
            Counters::add(&counters.drops, 1);
            if d.qos1.is_none() && is_delivery_frame(&d.frame) {
                note_dropped(c, &d.topic, d.seq_no, counters);
            }
            Enqueued::Dropped
        }
        SlowConsumerPolicy::Refill => {
            let current = is_delivery_frame(&d.frame).then_some((&d.topic, d.seq_no));
            start_discarding(c, current, ladder, counters);
            if current.is_some() {
                Enqueued::Refilling
            } else {
                c.push_delivery(d, counters);
                Enqueued::Queued
            }
        }
    }
}

/// `refill`: discards the queued deliveries of every `refill` topic and `current` (the
/// delivery that found the connection slow), noting where each topic's replay must start,
/// and, the first time, queues a ping behind what stays, so the writer sees when the socket
/// takes bytes again.
fn start_discarding(
    c: &mut Conn,
    current: Option<(&Arc<str>, u64)>,
    ladder: &Ladder,
    counters: &Counters,
) {
    let mut shed = c.take_shed();
    let first = shed.refill.is_empty();
    let d = c.out.discard_deliveries_where(|payload| {
        let Some(h) = protocol::delivery_head(payload) else {
            return false;
        };
        if ladder.policy(&h.topic) != SlowConsumerPolicy::Refill {
            return false;
        }
        shed.note_refill(&h.topic, h.seq_no, None);
        true
    });
    if let Some((topic, seq)) = current {
        shed.note_refill(topic, seq, Some(topic));
    }
    c.put_shed(shed);
    c.pending_deliveries = c.pending_deliveries.saturating_sub(d.frames as u32);
    Counters::add(
        &counters.refill_discards,
        d.frames as u64 + u64::from(current.is_some()),
    );
    if first {
        Counters::add(&counters.refill_entries, 1);
        c.push_uncapped(&ping());
    }
}

fn ping() -> Vec<u8> {
    let mut b = Vec::with_capacity(2);
    frame::write_server_frame(&mut b, OpCode::Ping, b"");
    b
}

/// `drop`: adds `seq` to the topic's untold range; a range it does not continue is told now.
fn note_dropped(c: &mut Conn, topic: &Arc<str>, seq: u64, counters: &Counters) {
    let mut shed = c.take_shed();
    let ended = shed.note_dropped(topic, seq, Some(topic));
    c.put_shed(shed);
    if let Some(run) = ended {
        report_dropped(c, run, counters);
    }
}

/// Queues the `SLOW_CONSUMER` reports of the untold dropped ranges of `topic` (of every
/// topic: `None`).
fn tell_dropped(c: &mut Conn, topic: Option<&Arc<str>>, counters: &Counters) {
    let mut shed = c.take_shed();
    let mut told = Vec::new();
    shed.dropped.retain(|r| {
        let tell = topic.is_none_or(|t| **t == *r.0);
        if tell {
            told.push(r.clone());
        }
        !tell
    });
    c.put_shed(shed);
    for run in told {
        report_dropped(c, run, counters);
    }
}

/// One dropped range's `SLOW_CONSUMER` report, queued.
fn report_dropped(c: &mut Conn, (t, from, to): (Arc<str>, u64, u64), counters: &Counters) {
    let err = ProtoError::new(
        ErrorCode::SlowConsumer,
        format!(
            "seqNo {from} to {to} of this topic were dropped for this connection: its \
             socket stayed behind (slow_consumer = drop); replay them from {from} while \
             history holds them"
        ),
    )
    .with_topic(&t)
    .with_range(from, to);
    let mut b = Vec::with_capacity(200);
    protocol::encode_error(&mut b, &err);
    c.push_uncapped(&b);
    Counters::add(&counters.drop_reports, 1);
}

/// The core's backlog budget picked `c`: every queued delivery goes (the frame in flight and
/// replies stay) and each topic's policy says what follows: `refill` topics are refilled once
/// the socket drains, `drop` topics' ranges are told, and any `disconnect` topic among them
/// cuts the connection. Returns (frames, bytes) discarded.
pub(super) fn shed_for_budget(
    c: &mut Conn,
    ladder: &Ladder,
    why: impl FnOnce() -> String,
    counters: &Counters,
) -> (usize, usize) {
    let mut heads: Vec<protocol::DeliveryHead> = Vec::new();
    let d = c
        .out
        .discard_deliveries(|payload| heads.extend(protocol::delivery_head(payload)));
    c.pending_deliveries = c.pending_deliveries.saturating_sub(d.frames as u32);
    let mut cut = false;
    let mut refill = false;
    let mut shed = c.take_shed();
    let mut ended = Vec::new();
    for h in heads {
        match ladder.policy(&h.topic) {
            SlowConsumerPolicy::Disconnect => cut = true,
            SlowConsumerPolicy::Drop => {
                Counters::add(&counters.drops, 1);
                // A QoS 1 delivery stays tracked and goes out again: no range to tell.
                if !h.qos1 {
                    ended.extend(shed.note_dropped(&h.topic, h.seq_no, None));
                }
            }
            SlowConsumerPolicy::Refill => {
                if shed.refill.is_empty() {
                    refill = true;
                }
                shed.note_refill(&h.topic, h.seq_no, None);
                Counters::add(&counters.refill_discards, 1);
            }
        }
    }
    c.put_shed(shed);
    for run in ended {
        report_dropped(c, run, counters);
    }
    if cut {
        cut_slow_consumer(c, why(), counters);
    } else if refill {
        Counters::add(&counters.refill_entries, 1);
        c.push_uncapped(&ping());
    }
    (d.frames, d.bytes)
}

impl Shard {
    /// `id`'s socket took everything queued: tell the dropped ranges, start the refills.
    pub(super) fn after_drain(&self, id: ConnId) {
        let refills = self.with_conn(id, |c| {
            if c.state != ConnState::Open || !c.has_shed() {
                return Vec::new();
            }
            tell_dropped(c, None, &self.counters);
            let mut shed = c.take_shed();
            let refills = std::mem::take(&mut shed.refill);
            c.put_shed(shed);
            mark_dirty(c, id.slot, &mut self.writes.dirty.borrow_mut());
            refills
        });
        let Some(refills) = refills else {
            return;
        };
        for (topic, from) in refills {
            if self.request_replay(id, topic.clone(), from, ReplayFor::Refill) {
                Counters::add(&self.counters.refill_replays, 1);
            } else {
                // A replay of this topic is already on its way to the connection: its
                // frames come back here (discarded); try again at the next drain or sweep.
                self.with_conn(id, |c| {
                    let mut shed = c.take_shed();
                    shed.note_refill(&topic, from, Some(&topic));
                    c.put_shed(shed);
                });
            }
        }
        self.wake_flusher();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_go_first_then_the_global_policy() {
        let cfg = Config {
            slow_consumer: SlowConsumerPolicy::Disconnect,
            slow_consumer_rules: vec![
                crate::config::SlowConsumerRule {
                    topics: "prices.*".into(),
                    policy: SlowConsumerPolicy::Refill,
                },
                crate::config::SlowConsumerRule {
                    topics: "prices.raw".into(),
                    policy: SlowConsumerPolicy::Drop,
                },
            ],
            ..Config::default()
        };
        let l = Ladder::new(&cfg).unwrap();
        assert_eq!(l.policy("prices.raw"), SlowConsumerPolicy::Refill);
        assert_eq!(l.policy("prices.BTC"), SlowConsumerPolicy::Refill);
        assert_eq!(l.policy("orders"), SlowConsumerPolicy::Disconnect);
    }
}
