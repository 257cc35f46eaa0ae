//! A topic's live feed, while a core of this node has a subscriber of it: subscribe to
//! `<prefix>.out.<topic>`, confirm the server has the interest (a round trip) before telling the
//! owner core where live delivery starts, then forward every republished message in order.
//! A jump in `Ss-Seq` is filled from JetStream first; what JetStream no longer holds is reported
//! lost. Shortly after subscribing, and after every reconnect, the topic's last message is read
//! again to catch what the link missed; stream sequences going back mean the stream was created
//! again (the topic's history restarted), which the owner is told.
//!
//! May touch: a topic's subscription handle (`TopicState::sub`) and chain end (through
//! `learn`), the owner core's inbox (deliveries, gaps, restarts).
//! May not: store anything, or touch a topic's publish queue.
//!
//! Read next: [`super::read`].

use super::read::{nats_sequence, ReadErr, Stored};
use super::{Node, SubHandle, READ_BATCH};
use crate::mesh::{Delivery, ShardId, ShardMsg};
use bytes::Bytes;
use futures_util::StreamExt;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Node {
    pub(super) fn subscribe(self: Rc<Self>, topic: Arc<str>, gen: u64, owner: ShardId) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        {
            let mut topics = self.topics.borrow_mut();
            let t = topics.entry(topic.clone()).or_default();
            if let Some(old) = t.sub.replace(SubHandle { gen, stop: stop_tx }) {
                let _ = old.stop.send(());
            }
        }
        tokio::task::spawn_local(self.subscription(topic, gen, owner, stop_rx));
    }

    /// One topic's live feed: subscribe, tell the owner where live delivery starts, then
    /// forward every message in order, filling gaps from JetStream.
    async fn subscription(
        self: Rc<Self>,
        topic: Arc<str>,
        gen: u64,
        owner: ShardId,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let out = self.cc.out_subject(&topic);
        let subject = self.cc.in_subject(&topic);
        let mut sub = loop {
            match self.client.subscribe(out.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    self.stats.set_error(format!("subscribe {out}: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = &mut stop => return,
                    }
                }
            }
        };
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        // The server has processed the SUB once a request on this connection has come back
        // (`flush` only empties the client's buffer): everything stored after the last message
        // read below reaches this subscription (from a NATS cluster's other servers, once the
        // interest has spread: the re-check below covers that window).
        let base = if self.round_trip().await {
            self.last_of(&topic).await.ok()
        } else {
            None
        };
        if let Some((s, n)) = base {
            self.learn(&topic, s, n);
        }
        // Where live delivery continues: `None` while the link is down at subscribe time
        // (then the first message received sets it).
        let mut at: Option<(u64, u64)> = base;
        self.mesh.send_blocking(
            owner,
            ShardMsg::BackboneSubscribed {
                topic: topic.clone(),
                gen,
                last_seq: base.map_or(0, |b| b.1),
            },
        );
        let mut resync = self.resync.subscribe();
        // Re-read the topic's last message twice shortly after subscribing: in a NATS cluster
        // the new interest reaches the stream leader's server a moment later, and a message
        // republished before it did would otherwise wait for the next one to be noticed.
        let mut settle = [Duration::from_millis(250), Duration::from_millis(1_000)].into_iter();
        let mut settle_at = tokio::time::Instant::now() + settle.next().unwrap_or_default();
        let mut settling = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(settle_at), if settling => {
                    match settle.next() {
                        Some(d) => settle_at = tokio::time::Instant::now() + d,
                        None => settling = false,
                    }
                    if let (Ok((s, n)), Some((_, have))) = (self.last_of(&topic).await, at) {
                        if n > have {
                            self.learn(&topic, s, n);
                            self.fill(&topic, &subject, owner, &mut at, n).await;
                        }
                    }
                }
                m = sub.next() => {
                    let Some(m) = m else { break };
                    let stream_seq = nats_sequence(m.headers.as_ref()).unwrap_or(0);
                    let Some(s) = Stored::from_parts(stream_seq, m.headers.as_ref(), m.payload) else {
                        tracing::warn!(subject = %m.subject, "a message without Ss-Seq on the backbone; ignored");
                        continue;
                    };
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if s.at_us > 0 {
                        self.stats.last_receive_lag_us.store(
                            crate::backbone::unix_us().saturating_sub(s.at_us),
                            Ordering::Relaxed,
                        );
                    }
                    self.learn(&topic, s.stream_seq, s.seq);
                    if let Some((at_stream, n)) = at {
                        if s.stream_seq < at_stream && s.seq <= n {
                            // Stream sequences went back: the stream was created again and the
                            // topic numbers from 1 again. Say so, and follow the new chain.
                            self.restarted(&topic, owner, s.seq - 1);
                            at = None;
                        }
                    }
                    if let Some((_, n)) = at {
                        if s.seq <= n {
                            continue;
                        }
                        if s.seq > n + 1 {
                            self.fill(&topic, &subject, owner, &mut at, s.seq - 1).await;
                        }
                    }
                    at = Some((s.stream_seq, s.seq));
                    self.forward(&topic, owner, &s);
                }
                changed = resync.changed() => {
                    if changed.is_err() { break; }
                    if let Ok((s, n)) = self.last_of(&topic).await {
                        self.learn(&topic, s, n);
                        match at {
                            Some((at_stream, _)) if s < at_stream => {
                                self.restarted(&topic, owner, n);
                                at = Some((s, n));
                            }
                            Some((_, have)) if n > have => {
                                self.fill(&topic, &subject, owner, &mut at, n).await;
                            }
                            None => at = Some((s, n)),
                            _ => {}
                        }
                    }
                }
                _ = &mut stop => break,
            }
        }
        let _ = sub.unsubscribe().await;
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    /// A request on the backbone connection that nobody answers: when NATS's "no responders"
    /// comes back, the server has processed everything this connection sent before it.
    async fn round_trip(&self) -> bool {
        use async_nats::RequestErrorKind as K;
        match tokio::time::timeout(
            Duration::from_millis(self.cc.request_timeout_ms),
            self.client
                .request(format!("_subsocket.sync.{}", self.cc.stream), Bytes::new()),
        )
        .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == K::NoResponders,
            Err(_) => false,
        }
    }

    /// Reads the topic's messages after `at` up to `seqNo` `to` from JetStream and forwards
    /// them; what JetStream no longer holds is reported lost.
    async fn fill(
        &self,
        topic: &Arc<str>,
        subject: &str,
        owner: ShardId,
        at: &mut Option<(u64, u64)>,
        to: u64,
    ) {
        let Some((mut stream_at, mut have)) = *at else {
            return;
        };
        let mut tries = 0;
        while have < to {
            let want = (to - have).min(READ_BATCH as u64) as usize;
            match self.next_many(subject, stream_at + 1, want).await {
                Ok(batch) => {
                    for m in batch {
                        if m.seq <= have {
                            stream_at = m.stream_seq;
                            continue;
                        }
                        if m.seq > have + 1 {
                            self.lost(topic, owner, have + 1, m.seq - 1);
                        }
                        self.stats.gap_filled.fetch_add(1, Ordering::Relaxed);
                        self.forward(topic, owner, &m);
                        stream_at = m.stream_seq;
                        have = m.seq;
                    }
                }
                Err(ReadErr::NotFound) => {
                    self.lost(topic, owner, have + 1, to);
                    have = to;
                }
                Err(ReadErr::Io(e)) => {
                    tries += 1;
                    if tries > 20 {
                        tracing::warn!(%topic, "cannot read missed messages back: {e}");
                        self.lost(topic, owner, have + 1, to);
                        have = to;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        *at = Some((stream_at, have));
    }

    /// The topic's chain restarted in JetStream (its stream was created again): live delivery
    /// continues after `last_seq` of the new numbering.
    fn restarted(&self, topic: &Arc<str>, owner: ShardId, last_seq: u64) {
        tracing::warn!(%topic, last_seq, "the topic's history restarted in JetStream; numbering starts again");
        self.mesh.send_blocking(
            owner,
            ShardMsg::BackboneRestarted {
                topic: topic.clone(),
                last_seq,
            },
        );
    }

    fn lost(&self, topic: &Arc<str>, owner: ShardId, from: u64, to: u64) {
        tracing::warn!(%topic, from, to, "messages lost by the backbone (no longer in JetStream)");
        self.stats.lost.fetch_add(to + 1 - from, Ordering::Relaxed);
        self.mesh.send_blocking(
            owner,
            ShardMsg::BackboneLost {
                topic: topic.clone(),
                from,
                to,
            },
        );
    }

    fn forward(&self, topic: &Arc<str>, owner: ShardId, s: &Stored) {
        let age = Duration::from_micros(crate::backbone::unix_us().saturating_sub(s.at_us));
        let published_at = if s.at_us > 0 {
            Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
        } else {
            Instant::now()
        };
        self.mesh.send_blocking(
            owner,
            ShardMsg::FromBackbone(Delivery {
                topic: topic.clone(),
                seq_no: s.seq,
                frame: s.frame(),
                // The owner builds the compressed form in `dispatch`.
                deflated: None,
                sse: None,
                published_at,
                qos1: s.qos1.clone(),
            }),
        );
    }
}
