//! Cluster glue on the owner core: what the NATS thread (`crate::backbone`) hands back —
//! stored messages of owned topics in `seqNo` order, subscriptions gone live, replays read
//! from JetStream, ranges lost, a history that restarted — turned into deliveries and notices
//! for the subscribers on every core. Only used with `[cluster]`.
//!
//! May touch: the sequencer's last `seqNo`, backbone subscriptions (`BbSub`), dispatch.
//! May not: talk to NATS (only `BackboneTx` commands, sent from `publish`, `interest`, `replay`).
//!
//! Read next: [`super::waiters`].

use super::Shard;
use crate::mesh::{Delivery, ReplayAnswer, ShardId};
use crate::metrics::Counters;
use crate::protocol::{self, ErrorCode, ProtoError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// A backbone subscription of an owned topic (clusters).
pub(super) struct BbSub {
    /// Names this subscription to the backbone thread (a later one for the same topic gets a
    /// new one, so a late answer to an ended one is ignored).
    pub(super) gen: u64,
    /// The backbone confirmed it: gained interests are acknowledged at once.
    pub(super) live: bool,
    /// (core, token) of the `InterestAck`s waiting for it to go live.
    pub(super) waiters: Vec<(ShardId, u64)>,
    /// Replays asked for before it went live (topic, fromSeq, reply_to, partial): answered
    /// once live delivery has a known starting point, so replay and live feed meet exactly.
    pub(super) replays: Vec<DeferredReplay>,
}

/// A replay that waits for its topic's backbone subscription to go live.
pub(super) struct DeferredReplay {
    pub(super) topic: Arc<str>,
    pub(super) from_seq: u64,
    pub(super) reply_to: (ShardId, u64),
    pub(super) partial: bool,
}

impl Shard {
    /// On the owner: a message of `d.topic` from the backbone, in `seqNo` order. Anything at
    /// or below the last delivered `seqNo` was delivered already (a gap fill racing the live
    /// feed, or a resubscription's overlap).
    pub(super) fn deliver_from_backbone(&self, d: Delivery) {
        {
            let mut seq = self.seq.borrow_mut();
            if d.seq_no <= seq.last_seq(&d.topic) {
                return;
            }
            seq.set_last(&d.topic, d.seq_no);
        }
        Counters::add(&self.counters.publishes_sequenced, 1);
        self.dispatch(d, true);
    }

    /// On the owner: the backbone subscription `gen` is live; live delivery continues after
    /// `last_seq` (0: unknown, the link was down).
    pub(super) fn backbone_subscribed(&self, topic: Arc<str>, gen: u64, last_seq: u64) {
        let (waiters, replays) = {
            let mut subs = self.bb_subs.borrow_mut();
            match subs.get_mut(&topic) {
                Some(s) if s.gen == gen => {
                    s.live = true;
                    (
                        std::mem::take(&mut s.waiters),
                        std::mem::take(&mut s.replays),
                    )
                }
                _ => return,
            }
        };
        if last_seq > 0 {
            // JetStream's chain is the truth: a lower value means numbering restarted there.
            self.seq.borrow_mut().set_last(&topic, last_seq);
        }
        for (f, t) in waiters {
            self.send_interest_ack(f, t);
        }
        for r in replays {
            self.answer_replay(r.topic, r.from_seq, r.reply_to, r.partial);
        }
    }

    /// On the owner: a replay read out of JetStream. Where this node has a live feed of the
    /// topic, the answer is cut at what the owner has already handed to the cores, so that it
    /// travels behind those frames and the seam stays exact (see `answer_replay`).
    pub(super) fn backbone_replayed(
        &self,
        topic: Arc<str>,
        reply_to: (ShardId, u64),
        mut answer: ReplayAnswer,
    ) {
        let live = self.bb_subs.borrow().get(&topic).is_some_and(|s| s.live);
        if live {
            let cut = answer.last_seq.min(self.seq.borrow().last_seq(&topic));
            answer.frames.retain(|f| f.seq_no <= cut);
            answer.last_seq = cut;
        }
        self.send_replay_answer(reply_to, answer);
    }

    /// On the owner: `from..=to` of `topic` are lost. Subscribers are told, precisely, and
    /// delivery continues after `to`.
    pub(super) fn backbone_lost(&self, topic: Arc<str>, from: u64, to: u64) {
        {
            let mut seq = self.seq.borrow_mut();
            if seq.last_seq(&topic) >= to {
                return;
            }
            seq.set_last(&topic, to);
        }
        let err = ProtoError::new(
            ErrorCode::ReplayUnavailable,
            format!(
                "seqNo {from} to {to} of this topic were lost by the cluster backbone (no longer held); delivery continues at {}",
                to + 1
            ),
        )
        .with_topic(&topic)
        .with_oldest_seq(Some(to + 1));
        self.tell_subscribers(topic, to, &err);
    }

    /// On the owner: the topic's history restarted in JetStream (NATS lost its stream). Its
    /// numbering starts again after `last_seq`; subscribers are told before the new chain.
    pub(super) fn backbone_restarted(&self, topic: Arc<str>, last_seq: u64) {
        let before = {
            let mut seq = self.seq.borrow_mut();
            let before = seq.last_seq(&topic);
            seq.set_last(&topic, last_seq);
            before
        };
        let err = ProtoError::new(
            ErrorCode::ReplayUnavailable,
            format!(
                "the cluster backbone lost this topic's history (its JetStream stream was created again): messages after seqNo {before} are not known, and numbering starts again at {}",
                last_seq + 1
            ),
        )
        .with_topic(&topic);
        self.tell_subscribers(topic, last_seq, &err);
    }

    /// On the owner: `err` to every subscriber of `topic` on every core, in the topic's order
    /// at `seq_no` (so a replay's seam treats it like the delivery it stands for). Not kept.
    fn tell_subscribers(&self, topic: Arc<str>, seq_no: u64, err: &ProtoError) {
        let mut frame = Vec::new();
        protocol::encode_error(&mut frame, err); // a finished text frame
        let d = Delivery {
            topic,
            seq_no,
            frame: Bytes::from(frame),
            deflated: None,
            sse: None,
            published_at: Instant::now(),
            qos1: None,
        };
        self.dispatch(d, false);
    }
}
