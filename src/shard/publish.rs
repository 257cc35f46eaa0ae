//! A publish, from its acceptance to its dispatch: route it to the topic's owner core (or to the
//! cluster backbone), and on the owner check the duplicate window, stamp `seqNo`, build the
//! delivery frame **once**, keep it in the history and hand it to every interested core.
//!
//! Here is the encode-once point: `sequence` makes the one `Bytes` every subscriber on every
//! core is written from. Outcomes go back to the waiter (`ack`, or the HTTP task) through
//! [`super::waiters`].
//!
//! May touch: the sequencer, dedup window and history of owned topics; the outbox; pending
//! waiters. May not: touch connections' buffers (that is [`super::fanout`]).
//!
//! Next on the path of a publish: [`super::inbox`] (to other cores) and, on the owner itself,
//! the local fan-out queue drained by the dispatcher into [`super::fanout`].

use super::inbox::{LocalWork, OUTBOX_MAX_MESSAGES};
use super::waiters::{Pending, PublishWaiter, Reply};
use super::Shard;
use crate::backbone::BackboneCmd;
use crate::mesh::{Delivery, PublishReq, Published, ShardId, ShardMsg};
use crate::metrics::Counters;
use crate::protocol::{self, AckStatus, ErrorCode, ProtoError};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;

/// `ok`, or `duplicate` when the id was seen within the window.
pub(crate) fn ack_status(p: &Published) -> AckStatus {
    if p.duplicate {
        AckStatus::Duplicate
    } else {
        AckStatus::Ok
    }
}

impl Shard {
    /// Accepts a publish on this shard (from a connection or HTTP) and routes it to the owner.
    /// `Err` when the gateway is overloaded (the publish is refused, never silently lost).
    /// `client_message_id` is the client's `messageId` (or HTTP `Idempotency-Key`), checked for
    /// duplicates; without one the gateway makes a unique id.
    pub(crate) fn publish(
        &self,
        topic: &str,
        client_message_id: Option<&str>,
        identity: Arc<str>,
        payload: Bytes,
        qos1: bool,
        waiter: Option<PublishWaiter>,
    ) -> Result<(), ProtoError> {
        let is_client_id = client_message_id.is_some();
        let message_id: Arc<str> = match client_message_id {
            Some(m) => m.into(),
            None => self.ids.borrow_mut().next_id().into(),
        };
        let interned = self.topics.borrow().interned(topic);
        let topic: Arc<str> = interned.unwrap_or_else(|| topic.into());
        if self.outbox.len() >= OUTBOX_MAX_MESSAGES {
            return Err(ProtoError::new(
                ErrorCode::RateLimited,
                "gateway overloaded: cross-core queues are full, retry later",
            )
            .with_topic(&topic)
            .with_message_id(&message_id));
        }
        let clustered = self.clustered(&topic);
        if clustered && !self.backbone.as_ref().is_some_and(|b| b.has_room()) {
            return Err(ProtoError::new(
                ErrorCode::BackboneUnavailable,
                "too many publishes wait for the cluster backbone; retry later",
            )
            .with_topic(&topic)
            .with_message_id(&message_id));
        }
        Counters::add(&self.counters.publishes_in, 1);
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        let reply_to = waiter.map(|w| {
            let token = self.wait_for(match w {
                PublishWaiter::Conn(id) => Pending::ConnAck(id),
                PublishWaiter::Task(tx) => Pending::Task { tx, remaining: 1 },
            });
            (self.id, token)
        });
        let req = PublishReq {
            topic,
            message_id,
            payload,
            identity,
            is_client_id,
            reply_to,
            accepted_at: Instant::now(),
            qos1,
        };
        if clustered {
            // JetStream stamps the seqNo; the frame comes back through the owner's subscription.
            let mut req = req;
            req.qos1 = req.qos1 || self.qos1_topics.iter().any(|p| p.matches(&req.topic));
            let reply_to = req.reply_to;
            if !self
                .backbone
                .as_ref()
                .is_some_and(|b| b.send(BackboneCmd::Publish(req)))
            {
                if let Some((_, token)) = reply_to {
                    self.pending.borrow_mut().remove(&token);
                }
                return Err(ProtoError::new(
                    ErrorCode::BackboneUnavailable,
                    "the cluster backbone is not running",
                ));
            }
        } else if owner == self.id {
            self.sequence(req);
        } else {
            self.send_to(owner, ShardMsg::Publish(req));
        }
        Ok(())
    }

    /// Whether `topic` travels over the cluster backbone (false on a single node and for
    /// `local_topics`).
    pub(crate) fn clustered(&self, topic: &str) -> bool {
        self.backbone.is_some() && !self.local_topics.iter().any(|p| p.matches(topic))
    }

    /// On the owner: check the duplicate window, stamp `seqNo`, build the frame once, hand it
    /// to every shard.
    pub(super) fn sequence(&self, req: PublishReq) {
        if !self.seq.borrow().knows(&req.topic)
            && !self.memory_admits(crate::memory::SEQUENCED_TOPIC_BYTES + req.topic.len())
        {
            // A topic never seen would keep its seqNo for the life of the process.
            let e = self
                .memory_refused("a publish to a new topic")
                .with_topic(&req.topic)
                .with_message_id(&req.message_id);
            return self.answer_publish(req.reply_to, Err(e));
        }
        let (seq_no, duplicate) = if req.is_client_id {
            let seq = &self.seq;
            let topic = &req.topic;
            self.dedup.borrow_mut().check(
                Instant::now(),
                &req.identity,
                topic,
                &req.message_id,
                || seq.borrow_mut().next_seq(topic),
            )
        } else {
            (self.seq.borrow_mut().next_seq(&req.topic), false)
        };
        let result = Published {
            seq_no,
            message_id: req.message_id,
            duplicate,
        };
        if duplicate {
            Counters::add(&self.counters.duplicates, 1);
            self.answer_publish(req.reply_to, Ok(result));
            return;
        }
        Counters::add(&self.counters.publishes_sequenced, 1);
        let qos1 = req.qos1 || self.qos1_topics.iter().any(|p| p.matches(&req.topic));
        let sig = self
            .signer
            .as_ref()
            .map(|s| s.sign(&req.topic, seq_no, &req.payload));
        let extras = protocol::FrameExtras {
            qos1,
            signature: self
                .signer
                .as_ref()
                .zip(sig.as_deref())
                .map(|(s, sig)| (s.key_id(), sig)),
        };
        let frame = protocol::encode_message_frame_with(
            &req.topic,
            seq_no,
            &result.message_id,
            &extras,
            &req.payload,
        );
        let d = Delivery {
            topic: req.topic,
            seq_no,
            frame,
            deflated: None,
            sse: None,
            published_at: req.accepted_at,
            qos1: qos1.then(|| result.message_id.clone()),
        };
        self.dispatch(d, true);
        self.answer_publish(req.reply_to, Ok(result));
    }

    /// On the owner: hand a sequenced delivery to every interested core (interest routing),
    /// keep it in the history (`keep`), and queue it for the local subscribers.
    pub(super) fn dispatch(&self, mut d: Delivery, keep: bool) {
        let wants = self.seq.borrow().wants(&d.topic);
        if d.deflated.is_none() {
            d.deflated = self.deflated_form(&d.frame, wants);
        }
        let sse_wanted = wants.wants_sse()
            || (self.n_shards() > 64 && self.mesh.wants_sse(|c| c >= 64 && wants.has(c)));
        if d.sse.is_none() && sse_wanted && crate::outbuf::is_delivery_frame(&d.frame) {
            // The event every stream of this publish gets (Server-Sent Events), built once here.
            let json = &d.frame[crate::ws::frame::header_len(&d.frame)..];
            d.sse = Some(Bytes::from(crate::sse::delivery_event(d.seq_no, json)));
            Counters::add(&self.counters.sse_built, 1);
        }
        for peer in 0..self.n_shards() {
            if peer != self.id && wants.has(peer) {
                self.send_to(peer, ShardMsg::Deliver(d.clone()));
            }
        }
        if keep {
            self.history.borrow_mut().push_entry(
                &d.topic,
                d.seq_no,
                d.frame.clone(),
                d.deflated.clone(),
                d.qos1.clone(),
                Instant::now(),
            );
        }
        self.local_fanout
            .borrow_mut()
            .push_back(LocalWork::Deliver(d));
        self.wake_dispatcher();
    }

    /// The compressed form of a finished frame (permessage-deflate), built here once for every
    /// core: only when the extension is on, the message is at least `deflate.min_bytes`, some
    /// core the topic goes to (`wants`) has a subscriber of it that takes compressed
    /// deliveries, and compressing makes it smaller.
    fn deflated_form(&self, frame: &[u8], wants: crate::publish::Interest) -> Option<Bytes> {
        let z = &self.cfg.deflate;
        let payload = &frame[crate::ws::frame::header_len(frame)..];
        // Cores 64 and up are not in the per-topic masks: their per-core counts stand in.
        let wanted = wants.wants_deflated()
            || (self.n_shards() > 64 && self.mesh.wants_deflated(|c| c >= 64 && wants.has(c)));
        if !z.enabled || payload.len() < z.min_bytes || !wanted {
            return None;
        }
        let started = Instant::now();
        let out = crate::ws::deflate::compress_frame(
            crate::ws::frame::OpCode::Text,
            payload,
            z.level,
            crate::ws::deflate::MAX_WINDOW_BITS,
        );
        Counters::add(
            &self.counters.deflate_ns,
            started.elapsed().as_nanos() as u64,
        );
        Counters::add(&self.counters.deflate_built, 1);
        Counters::add(&self.counters.deflate_bytes_in, payload.len() as u64);
        match out {
            Some(f) => {
                Counters::add(&self.counters.deflate_bytes_out, f.len() as u64);
                Some(Bytes::from(f))
            }
            None => {
                Counters::add(&self.counters.deflate_bytes_out, frame.len() as u64);
                None
            }
        }
    }

    /// Sends a publish's outcome (sequenced, or refused) to whoever waits for it, on this
    /// shard or another.
    fn answer_publish(
        &self,
        reply_to: Option<(ShardId, u64)>,
        outcome: Result<Published, ProtoError>,
    ) {
        let Some((shard, token)) = reply_to else {
            return;
        };
        if shard == self.id {
            let reply = match outcome {
                Ok(result) => Reply::Published(result),
                Err(error) => Reply::PublishFailed(error),
            };
            // A WebSocket publisher's `ack` goes out now, ahead of the delivery (a publisher
            // subscribed to its own topic reads its ack first, as it always has); any other
            // waiter (an HTTP publish) is answered behind the local fan-out.
            let conn_ack = matches!(
                self.pending.borrow().get(&token),
                Some(super::waiters::Pending::ConnAck(_))
            );
            if conn_ack {
                self.complete(token, reply);
            } else {
                self.local_fanout
                    .borrow_mut()
                    .push_back(LocalWork::Answered { token, reply });
                self.wake_dispatcher();
            }
        } else {
            self.send_to(
                shard,
                match outcome {
                    Ok(result) => ShardMsg::Published { token, result },
                    Err(error) => ShardMsg::PublishFailed { token, error },
                },
            );
        }
    }
}
