//! Fan-out: one delivery -> the out buffer of every local subscriber of its topic.
//!
//! Small topics in one go; big ones in slices with a yield between them (re-checking each slot
//! if the table changed meanwhile). Per subscriber: held back while that topic is being
//! replayed to it (`Replaying`), QoS 1 tracked (one shared `Rc` per delivery, no atomics),
//! appended to `Conn::out` under the slow-consumer policy, marked dirty. Never calls back into
//! connection code and never writes to a socket.
//!
//! May touch: the topic table (read), connections' out buffers and in-flight sets, the dirty
//! list. May not: write to sockets, change subscriptions.
//!
//! Next on the path of a publish: [`super::write`] (the flusher).

use super::connections::{close_conn, Conn, ConnId, ConnState, Enqueued};
use super::ladder::{enqueue_delivery, Ladder};
use super::write::mark_dirty;
use super::Shard;
use crate::config::Config;
use crate::config::SlowConsumerPolicy;
use crate::mesh::Delivery;
use crate::metrics::Counters;
use crate::protocol::{self, ErrorCode, ProtoError};
use crate::qos::{QosMsg, Track, Unacked};
use crate::ws::frame;
use std::rc::Rc;
use std::time::Instant;

/// Queues one delivery for a subscriber and notes its publish time for the latency histogram.
/// True when it was queued (not dropped, not cut off). Held back while the topic is replayed.
#[inline]
fn deliver_into(
    c: &mut Conn,
    slot: u32,
    o: &Outgoing<'_>,
    dirty: &mut Vec<u32>,
    cfg: &Config,
    counters: &Counters,
) -> bool {
    if let Some(r) = c.replaying_mut() {
        if let Some((_, held)) = r.topics.iter_mut().find(|(t, _)| *t == o.d.topic) {
            // Held back until the replay of this topic is written (see `Shard::replayed`).
            held.push(o.d.clone());
            return false;
        }
    }
    deliver_now(c, slot, o, dirty, cfg, counters, false)
}

/// One delivery as this core hands it to its subscribers: for QoS 1, one `Rc` every
/// subscriber's in-flight entry shares (plain counts, no atomics per subscriber), and one
/// timestamp for the whole fan-out.
struct Outgoing<'a> {
    d: &'a Delivery,
    qos1: Option<Rc<QosMsg>>,
    now: Instant,
    /// The topic's slow-consumer policy, looked up once per fan-out.
    policy: SlowConsumerPolicy,
    ladder: &'a Ladder,
}

impl<'a> Outgoing<'a> {
    pub(super) fn new(d: &'a Delivery, ladder: &'a Ladder) -> Self {
        Outgoing {
            d,
            policy: ladder.policy(&d.topic),
            ladder,
            qos1: d.qos1.as_ref().map(|message_id| {
                Rc::new(QosMsg {
                    topic: d.topic.clone(),
                    seq_no: d.seq_no,
                    message_id: message_id.clone(),
                    frame: d.frame.clone(),
                    deflated: d.deflated.clone(),
                })
            }),
            now: Instant::now(),
        }
    }
}

/// Queues one delivery now. A QoS 1 delivery is tracked until its ack (a replayed one only if
/// it is not tracked already); past `qos1_window` unacknowledged the connection is closed
/// with `SLOW_CONSUMER` (a QoS 1 delivery is never dropped: the session keeps it for `resume`).
/// A QoS 1 delivery refused by the `drop` backlog policy stays tracked and is sent again later.
fn deliver_now(
    c: &mut Conn,
    slot: u32,
    o: &Outgoing<'_>,
    dirty: &mut Vec<u32>,
    cfg: &Config,
    counters: &Counters,
    replayed: bool,
) -> bool {
    let d = o.d;
    // An event stream cannot ack: QoS 1 deliveries reach it like QoS 0 ones (it resumes from
    // history by Last-Event-ID instead), never tracked.
    if let Some(msg) = o.qos1.as_ref().filter(|_| !c.is_sse()) {
        if c.state != ConnState::Open {
            return false;
        }
        let u = Unacked {
            msg: msg.clone(),
            sent_at: o.now,
            attempts: 1,
        };
        let inflight = c.inflight.get_or_insert_with(Default::default);
        let tracked = if replayed {
            inflight.track_replayed(u, cfg.qos1_window)
        } else {
            inflight.track(u, cfg.qos1_window)
        };
        match tracked {
            Track::Tracked => Counters::add(&counters.qos1_deliveries, 1),
            Track::AlreadyTracked => {}
            Track::WindowFull => {
                Counters::add(&counters.qos1_window_closes, 1);
                let err = ProtoError::new(
                    ErrorCode::SlowConsumer,
                    format!(
                        "{} QoS 1 deliveries are unacknowledged (qos1_window): closing; resume to get them again",
                        cfg.qos1_window
                    ),
                );
                let mut b = Vec::with_capacity(160);
                protocol::encode_error(&mut b, &err);
                c.push_uncapped(&b);
                close_conn(
                    c,
                    frame::CLOSE_POLICY,
                    "too many unacknowledged QoS 1 deliveries",
                );
                mark_dirty(c, slot, dirty);
                return false;
            }
        }
    }
    match enqueue_delivery(c, d, o.policy, o.ladder, cfg, counters) {
        Enqueued::Queued => {
            if !replayed {
                if c.pending_deliveries == 0 {
                    c.oldest_published_at = Some(d.published_at);
                }
                c.pending_deliveries += 1;
            }
            mark_dirty(c, slot, dirty);
            true
        }
        Enqueued::Disconnected => {
            mark_dirty(c, slot, dirty);
            false
        }
        Enqueued::Dropped | Enqueued::Gone | Enqueued::Refilling => false,
    }
}

impl Shard {
    /// Writes one delivery to every local subscriber of its topic. Small topics in one go;
    /// big ones in slices of `fanout_slice_subscribers` (fewer for a big frame: a slice queues
    /// at most `fanout_turn_bytes`) with a yield between slices. O(subscribers).
    pub(super) async fn fan_out(&self, d: &Delivery) {
        let count = self.topics.borrow().subscriber_count(&d.topic);
        if count == 0 {
            return;
        }
        let frame_len = d.frame.len().max(1);
        let slice_len = self
            .cfg
            .fanout_slice_subscribers
            .min((self.cfg.fanout_turn_bytes / frame_len).max(1));
        let o = Outgoing::new(d, &self.ladder);
        if count <= slice_len {
            let topics = self.topics.borrow();
            let mut conns = self.conns.borrow_mut();
            let mut dirty = self.writes.dirty.borrow_mut();
            let mut delivered = 0u64;
            topics.for_each_subscriber(&d.topic, |slot| {
                if let Some(c) = conns.get_mut(slot as usize) {
                    delivered += u64::from(deliver_into(
                        c,
                        slot,
                        &o,
                        &mut dirty,
                        &self.cfg,
                        &self.counters,
                    ));
                }
            });
            Counters::add(&self.counters.deliveries, delivered);
            self.queued_this_turn(delivered as usize * frame_len);
        } else {
            let mut snapshot = std::mem::take(&mut *self.fanout_scratch.borrow_mut());
            self.topics
                .borrow()
                .subscribers_into(&d.topic, &mut snapshot);
            let version = self.table_version.get();
            for slice in snapshot.chunks(slice_len) {
                let changed = self.table_version.get() != version;
                {
                    let topics = self.topics.borrow();
                    let mut conns = self.conns.borrow_mut();
                    let mut dirty = self.writes.dirty.borrow_mut();
                    let mut delivered = 0u64;
                    for &slot in slice {
                        if changed && !topics.is_subscribed(slot, &d.topic) {
                            continue;
                        }
                        if let Some(c) = conns.get_mut(slot as usize) {
                            delivered += u64::from(deliver_into(
                                c,
                                slot,
                                &o,
                                &mut dirty,
                                &self.cfg,
                                &self.counters,
                            ));
                        }
                    }
                    Counters::add(&self.counters.deliveries, delivered);
                    self.queued_this_turn(delivered as usize * frame_len);
                }
                self.wake_flusher();
                self.let_writer_run().await;
            }
            snapshot.clear();
            *self.fanout_scratch.borrow_mut() = snapshot;
        }
        self.wake_flusher();
        self.check_backlog_budget();
    }

    /// Writes consecutive deliveries of one topic (`ds`, in seqNo order) to every local
    /// subscriber, each subscriber's frames appended in one copy: the subscriber's state and
    /// out buffer are touched once per batch instead of once per delivery (at 10,000
    /// subscribers those are cache misses). A subscriber that needs more than the backlog
    /// check (a replay under way, a refill, a drop to report, behind its cap) and QoS 1
    /// deliveries take the per-delivery path, so every guarantee is the one of [`Self::fan_out`].
    pub(super) async fn fan_out_batch(&self, ds: &[Delivery]) {
        let [first, ..] = ds else {
            return;
        };
        let count = self.topics.borrow().subscriber_count(&first.topic);
        if count == 0 {
            return;
        }
        let joined_len: usize = ds.iter().map(|d| d.frame.len()).sum();
        let plain = ds.iter().all(|d| d.qos1.is_none());
        let fits = count <= self.cfg.fanout_slice_subscribers
            && count.saturating_mul(joined_len) <= self.cfg.fanout_turn_bytes;
        if ds.len() == 1 || !plain || !fits {
            for d in ds {
                self.fan_out(d).await;
                self.let_writer_run_if_full().await;
            }
            return;
        }
        let mut joined = Vec::with_capacity(joined_len);
        for d in ds {
            joined.extend_from_slice(&d.frame);
        }
        // The same deliveries as a subscriber with permessage-deflate takes them (full
        // window: the compressed form where there is one), joined when the first such
        // subscriber is met. Subscribers with a narrower window take the per-delivery path.
        let any_deflated = ds.iter().any(|d| d.deflated.is_some());
        let mut joined_z: Option<(Vec<u8>, u64)> = None;
        // The same deliveries as one-topic event streams take them, joined when the first such
        // stream is met (only when the owner built every event: otherwise the per-delivery path).
        let all_sse = ds.iter().all(|d| d.sse.is_some());
        let last_seq = ds.last().map_or(0, |d| d.seq_no);
        let mut joined_sse: Option<Vec<u8>> = None;
        // The per-delivery state, built only if some subscriber needs the per-delivery path.
        let mut outgoing: Option<Vec<Outgoing<'_>>> = None;
        let k = ds.len() as u32;
        let (cap, grace) = (
            self.cfg.max_backlog_bytes,
            std::time::Duration::from_millis(self.cfg.slow_consumer_grace_ms),
        );
        {
            let topics = self.topics.borrow();
            let mut conns = self.conns.borrow_mut();
            let mut dirty = self.writes.dirty.borrow_mut();
            let (mut delivered, mut bytes, mut deflated) = (0u64, 0usize, 0u64);
            let mut as_sse = 0u64;
            topics.for_each_subscriber(&first.topic, |slot| {
                let Some(c) = conns.get_mut(slot as usize) else {
                    return;
                };
                if all_sse && c.state == ConnState::Open && c.plain_single_sse().is_some() {
                    let events = joined_sse.get_or_insert_with(|| {
                        let mut j = Vec::new();
                        for d in ds {
                            j.extend_from_slice(d.sse.as_deref().unwrap_or_default());
                        }
                        j
                    });
                    let fits = !c.is_slow(events.len(), cap, grace);
                    if let Some(s) = c.plain_single_sse().filter(|_| fits) {
                        s.note_sent(last_seq);
                        c.out.push_uncapped(events);
                        as_sse += u64::from(k);
                        if c.pending_deliveries == 0 {
                            c.oldest_published_at = Some(first.published_at);
                        }
                        c.pending_deliveries += k;
                        mark_dirty(c, slot, &mut dirty);
                        delivered += u64::from(k);
                        bytes += events.len();
                        return;
                    }
                }
                let wide = c.deflate_bits >= crate::ws::deflate::MAX_WINDOW_BITS;
                let (frames, z_count): (&[u8], u64) = if any_deflated && wide {
                    let (z, n) = joined_z.get_or_insert_with(|| {
                        let mut z = Vec::new();
                        let mut n = 0;
                        for d in ds {
                            let f = d.frame_for(c.deflate_bits);
                            n += u64::from(d.deflated.is_some());
                            z.extend_from_slice(f);
                        }
                        (z, n)
                    });
                    (z, *n)
                } else {
                    (&joined, 0)
                };
                if c.state == ConnState::Open
                    && (c.deflate_bits == 0 || wide || !any_deflated)
                    && c.is_plain()
                    && !c.is_slow(frames.len(), cap, grace)
                {
                    c.out.push_uncapped(frames);
                    deflated += z_count;
                    if c.pending_deliveries == 0 {
                        c.oldest_published_at = Some(first.published_at);
                    }
                    c.pending_deliveries += k;
                    mark_dirty(c, slot, &mut dirty);
                    delivered += u64::from(k);
                    bytes += frames.len();
                    return;
                }
                let outgoing = outgoing.get_or_insert_with(|| {
                    ds.iter().map(|d| Outgoing::new(d, &self.ladder)).collect()
                });
                for o in outgoing.iter() {
                    if deliver_into(c, slot, o, &mut dirty, &self.cfg, &self.counters) {
                        delivered += 1;
                        bytes += o.d.frame_for(c.deflate_bits).len();
                    }
                }
            });
            Counters::add(&self.counters.deliveries, delivered);
            Counters::add(&self.counters.deliveries_deflated, deflated);
            Counters::add(&self.counters.deliveries_sse, as_sse);
            self.queued_this_turn(bytes);
        }
        self.wake_flusher();
        self.check_backlog_budget();
        self.let_writer_run_if_full().await;
    }

    /// Queues deliveries for one connection outside a fan-out: a replay's frames
    /// (`replayed`: QoS 1 ones re-tracked unless already tracked, no latency sample) or the
    /// live frames held back during it.
    pub(super) fn deliver_to<'a>(
        &self,
        id: ConnId,
        deliveries: impl Iterator<Item = &'a Delivery>,
        replayed: bool,
    ) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return;
        };
        let mut dirty = self.writes.dirty.borrow_mut();
        let mut n = 0;
        for d in deliveries {
            n += u64::from(deliver_now(
                c,
                id.slot,
                &Outgoing::new(d, &self.ladder),
                &mut dirty,
                &self.cfg,
                &self.counters,
                replayed,
            ));
        }
        Counters::add(&self.counters.deliveries, n);
        drop((dirty, conns));
        self.wake_flusher();
    }
}
