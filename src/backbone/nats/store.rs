//! Publishing into JetStream: a core's publish waits in its topic's queue; one task per topic
//! stores the queue in order, as atomic batches of up to [`MAX_BATCH`] when the server has them,
//! else one by one. Each store carries `Nats-Expected-Last-Subject-Sequence` (the chain's end as
//! this node knows it); a lost race (another node stored first) forgets that end, reads it back
//! and tries again. `Nats-Msg-Id` makes a retry safe and gives the cluster-wide duplicate window.
//! When a publish is settled its core gets `Published` or `PublishFailed`.
//!
//! May touch: a topic's queue and chain end (`TopicState::{queue, publishing, last}`), the
//! pending-publish counters, the reply to the accepting core.
//! May not: touch a topic's live subscription, or forward deliveries (the republished copy
//! reaches every node, this one included, through [`super::feed`]).
//!
//! Read next: [`super::feed`].

use super::read::ReadErr;
use super::{Node, Waiting, H_AT, H_ID, H_NODE, H_QOS, H_SEQ, MAX_BATCH};
use crate::mesh::{PublishReq, Published, ShardMsg};
use crate::protocol::{self, ErrorCode, ProtoError};
use async_nats::HeaderMap;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Node {
    pub(super) fn enqueue_publish(self: Rc<Self>, req: PublishReq) {
        let now_us = crate::backbone::unix_us();
        let at = now_us.saturating_sub(req.accepted_at.elapsed().as_micros() as u64);
        self.stats.pending_publishes.fetch_add(1, Ordering::Relaxed);
        {
            let mut w = self.waiting_since.borrow_mut();
            *w.entry(at / 1000).or_default() += 1;
            let oldest = w.keys().next().copied().unwrap_or(0);
            self.stats
                .oldest_pending_unix_ms
                .store(oldest, Ordering::Relaxed);
        }
        let topic = req.topic.clone();
        let start = {
            let mut topics = self.topics.borrow_mut();
            let t = topics.entry(topic.clone()).or_default();
            t.queue.push_back(Waiting {
                req,
                accepted_unix_us: at,
            });
            !std::mem::replace(&mut t.publishing, true)
        };
        if start {
            tokio::task::spawn_local(self.publisher(topic));
        }
    }

    /// Stores `topic`'s waiting publishes in order: as atomic batches of up to [`MAX_BATCH`]
    /// when the server has them (one round trip each), else one after the other.
    async fn publisher(self: Rc<Self>, topic: Arc<str>) {
        loop {
            let batch: Vec<Waiting> = {
                let mut topics = self.topics.borrow_mut();
                let Some(t) = topics.get_mut(&topic) else {
                    return;
                };
                if t.queue.is_empty() {
                    // The entry stays: its `last` saves a read before the next store.
                    t.publishing = false;
                    return;
                }
                let n = if self.atomic_batches {
                    t.queue.len().min(MAX_BATCH)
                } else {
                    1
                };
                t.queue.drain(..n).collect()
            };
            let results = if batch.len() > 1 {
                match self.store_batch(&topic, &batch).await {
                    Some(r) => r.into_iter().map(Ok).collect(),
                    None => {
                        let mut out = Vec::with_capacity(batch.len());
                        for w in &batch {
                            out.push(self.store(&topic, w).await);
                        }
                        out
                    }
                }
            } else {
                vec![self.store(&topic, &batch[0]).await]
            };
            for (w, result) in batch.iter().zip(results) {
                self.finished(w, result);
            }
        }
    }

    /// A publish is stored (or failed): update the counters and answer its core.
    fn finished(&self, w: &Waiting, result: Result<Published, ProtoError>) {
        self.stats.pending_publishes.fetch_sub(1, Ordering::Relaxed);
        {
            let mut ws = self.waiting_since.borrow_mut();
            let ms = w.accepted_unix_us / 1000;
            if let Some(c) = ws.get_mut(&ms) {
                *c -= 1;
                if *c == 0 {
                    ws.remove(&ms);
                }
            }
            let oldest = ws.keys().next().copied().unwrap_or(0);
            self.stats
                .oldest_pending_unix_ms
                .store(oldest, Ordering::Relaxed);
        }
        if let Some((shard, token)) = w.req.reply_to {
            let msg = match result {
                Ok(result) => ShardMsg::Published { token, result },
                Err(error) => {
                    self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                    ShardMsg::PublishFailed { token, error }
                }
            };
            self.mesh.send_blocking(shard, msg);
        }
    }

    /// Stores `ws` (2 or more publishes of `topic`, in order) as one atomic batch: `seqNo`s
    /// n+1.. with the expected-last check on the first, all or nothing. `None` when the batch
    /// cannot settle it (a `messageId` inside it is a duplicate, or the outcome is unknown):
    /// the caller then stores them one by one, which sorts out duplicates and earlier stores.
    async fn store_batch(&self, topic: &Arc<str>, ws: &[Waiting]) -> Option<Vec<Published>> {
        let subject = self.cc.in_subject(topic);
        for _attempt in 0..3 {
            let (last_stream, last_seq) = self.chain_end(topic).await.ok()?;
            let id = self.next_batch.get() + 1;
            self.next_batch.set(id);
            let batch_id = format!("{}-{id}", self.node_tag);
            let sent = Instant::now();
            let mut reply = None;
            for (i, w) in ws.iter().enumerate() {
                let seq = last_seq + 1 + i as u64;
                let (json, mut h) = self.outbound(topic, w, seq);
                h.insert("Nats-Batch-Id", batch_id.as_str());
                h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
                if i == 0 {
                    h.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last_stream.to_string().as_str(),
                    );
                }
                if i + 1 < ws.len() {
                    self.client
                        .publish_with_headers(subject.clone(), h, json)
                        .await
                        .ok()?;
                } else {
                    h.insert("Nats-Batch-Commit", "1");
                    reply = Some(
                        self.client
                            .request_with_headers(subject.clone(), h, json)
                            .await
                            .ok()?,
                    );
                }
            }
            let reply = reply?;
            let v: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            if let Some(stream_seq) = v["seq"].as_u64().filter(|_| v["error"].is_null()) {
                let last = last_seq + ws.len() as u64;
                self.stats
                    .last_store_us
                    .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.stats
                    .published
                    .fetch_add(ws.len() as u64, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.learn(topic, stream_seq, last);
                return Some(
                    ws.iter()
                        .enumerate()
                        .map(|(i, w)| Published {
                            seq_no: last_seq + 1 + i as u64,
                            message_id: w.req.message_id.clone(),
                            duplicate: false,
                        })
                        .collect(),
                );
            }
            match v["error"]["err_code"].as_u64() {
                // Wrong last sequence: another node stored this topic's next message first.
                Some(10071) | Some(10164) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.forget_last(topic);
                }
                _ => {
                    tracing::debug!(%topic, "atomic batch not stored: {v}; storing one by one");
                    return None;
                }
            }
        }
        None
    }

    /// The stored form of publish `w` as `seqNo` `seq`: the delivery JSON (built once, here)
    /// and the headers every node reads.
    fn outbound(&self, topic: &Arc<str>, w: &Waiting, seq: u64) -> (Bytes, HeaderMap) {
        let req = &w.req;
        let sig = self
            .signer
            .as_ref()
            .map(|s| s.sign(topic, seq, &req.payload));
        let extras = protocol::FrameExtras {
            qos1: req.qos1,
            signature: self
                .signer
                .as_ref()
                .zip(sig.as_deref())
                .map(|(s, sig)| (s.key_id(), sig)),
        };
        let frame =
            protocol::encode_message_frame_with(topic, seq, &req.message_id, &extras, &req.payload);
        let json = frame.slice(crate::ws::frame::header_len(&frame)..);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", self.nats_msg_id(req).as_str());
        h.insert(H_SEQ, seq.to_string().as_str());
        h.insert(H_ID, &*req.message_id);
        if req.qos1 {
            h.insert(H_QOS, "1");
        }
        h.insert(H_AT, w.accepted_unix_us.to_string().as_str());
        h.insert(H_NODE, &*self.node);
        (json, h)
    }

    fn nats_msg_id(&self, req: &PublishReq) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        if req.is_client_id {
            // The duplicate window is per identity and topic (as on one node).
            h.update(b"c\0");
            h.update(req.identity.as_bytes());
            h.update(b"\0");
            h.update(req.topic.as_bytes());
            h.update(b"\0");
        } else {
            h.update(b"g\0");
        }
        h.update(req.message_id.as_bytes());
        hex::encode(&h.finalize()[..16])
    }

    /// Stores one publish: stamps the next `seqNo` of the topic's chain, retrying on a lost
    /// race or a broken link until `publish_timeout_ms`.
    async fn store(&self, topic: &Arc<str>, w: &Waiting) -> Result<Published, ProtoError> {
        let req = &w.req;
        let deadline = req.accepted_at + Duration::from_millis(self.cc.publish_timeout_ms);
        let subject = self.cc.in_subject(topic);
        let mut backoff = Duration::from_millis(20);
        let mut last_err = String::new();
        let fail = |why: &str| {
            ProtoError::new(
                ErrorCode::BackboneUnavailable,
                format!(
                    "not stored by the cluster backbone within {} ms ({why}); it may still have been: publish again with the same messageId",
                    self.cc.publish_timeout_ms
                ),
            )
            .with_topic(topic)
            .with_message_id(&req.message_id)
        };
        loop {
            if Instant::now() >= deadline {
                return Err(fail(&last_err));
            }
            let (last_stream, last_seq) = match self.chain_end(topic).await {
                Ok(l) => l,
                Err(e) => {
                    last_err = e;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            let seq = last_seq + 1;
            let (json, mut h) = self.outbound(topic, w, seq);
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_stream.to_string().as_str(),
            );
            let sent = Instant::now();
            let res = match self.js.publish_with_headers(subject.clone(), h, json).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match res {
                Ok(ack) if !ack.duplicate => {
                    self.stats
                        .last_store_us
                        .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    self.learn(topic, ack.sequence, seq);
                    return Ok(Published {
                        seq_no: seq,
                        message_id: req.message_id.clone(),
                        duplicate: false,
                    });
                }
                Ok(ack) => {
                    // Stored before: by an earlier try of this very publish (then it is ours and
                    // "ok"), or by an earlier publish with the same id ("duplicate").
                    match self.read_seq(ack.sequence).await {
                        Ok(orig) => {
                            self.learn(topic, orig.stream_seq, orig.seq);
                            let ours = orig.node.as_deref() == Some(&*self.node)
                                && orig.at_us == w.accepted_unix_us;
                            if !ours {
                                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            } else {
                                self.stats.published.fetch_add(1, Ordering::Relaxed);
                            }
                            return Ok(Published {
                                seq_no: orig.seq,
                                message_id: req.message_id.clone(),
                                duplicate: !ours,
                            });
                        }
                        Err(ReadErr::NotFound) => {
                            // The original aged out of the stream but not out of the window.
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            return Ok(Published {
                                seq_no: 0,
                                message_id: req.message_id.clone(),
                                duplicate: true,
                            });
                        }
                        Err(ReadErr::Io(e)) => last_err = e,
                    }
                }
                Err(e) => {
                    use async_nats::jetstream::context::PublishErrorKind as K;
                    match e.kind() {
                        K::WrongLastSequence => {
                            // Another node stored this topic's next message first.
                            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                            self.forget_last(topic);
                            continue;
                        }
                        K::StreamNotFound => {
                            // A leader election in progress, or a NATS that lost the stream.
                            last_err = format!("stream {} not found", self.cc.stream);
                            self.ensure_stream().await;
                        }
                        _ => last_err = e.to_string(),
                    }
                    // The outcome is unknown: the message may be stored. Re-read the chain.
                    self.forget_last(topic);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// (stream sequence, `seqNo`) of the topic's last stored message: as this node knows it, or
    /// read from JetStream when it does not.
    async fn chain_end(&self, topic: &Arc<str>) -> Result<(u64, u64), String> {
        if let Some(l) = self.topics.borrow().get(topic).and_then(|t| t.last) {
            return Ok(l);
        }
        let l = self.last_of(topic).await?;
        self.learn(topic, l.0, l.1);
        Ok(l)
    }

    /// Records that the topic's chain reached (`stream_seq`, `seq`), if that is news.
    pub(super) fn learn(&self, topic: &Arc<str>, stream_seq: u64, seq: u64) {
        let mut topics = self.topics.borrow_mut();
        if let Some(t) = topics.get_mut(topic) {
            match t.last {
                Some((s, _)) if s >= stream_seq => {}
                _ => t.last = Some((stream_seq, seq)),
            }
        }
    }

    fn forget_last(&self, topic: &Arc<str>) {
        if let Some(t) = self.topics.borrow_mut().get_mut(topic) {
            t.last = None;
        }
    }
}
