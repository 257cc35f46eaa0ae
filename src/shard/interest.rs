//! Interest routing: which cores have subscribers of a topic. A core tells the topic's owner
//! when it gains its first or loses its last subscriber; the owner hands deliveries only to
//! interested cores (`Sequencer::wants`). A gained interest is acknowledged (`InterestAck`)
//! once the owner registered it — in a cluster once the node's backbone subscription is live —
//! and `subscribed` waits for that, so no publish after it can miss the new subscriber.
//!
//! May touch: the owner's interest set, backbone subscriptions, pending interest tokens.
//! May not: touch connections.
//!
//! Read next: [`super::replay`].

use super::backbone::BbSub;
use super::connections::ConnId;
use super::waiters::Pending;
use super::Shard;
use crate::backbone::BackboneCmd;
use crate::mesh::{ShardId, ShardMsg};
use std::sync::Arc;

impl Shard {
    /// Tells the topic's owner that this shard gained or lost its first/last subscriber. A
    /// gained interest on another core returns the token its `InterestAck` will carry.
    pub(crate) fn interest(&self, topic: Arc<str>, up: bool) -> Option<u64> {
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        // A gained interest waits for the owner's acknowledgement. On the owner itself there is
        // only something to wait for while the topic's backbone subscription is not live.
        let waits = up
            && (owner != self.id
                || (self.clustered(&topic)
                    && !self.bb_subs.borrow().get(&topic).is_some_and(|s| s.live)));
        let ack = waits.then(|| {
            let token = self.wait_for(Pending::InterestUp {
                topic: topic.clone(),
                waiters: Vec::new(),
            });
            self.interest_pending
                .borrow_mut()
                .insert(topic.clone(), token);
            token
        });
        if owner == self.id {
            self.owner_interest(topic, up, self.id, ack);
        } else {
            self.send_to(
                owner,
                ShardMsg::Interest {
                    topic,
                    up,
                    from: self.id,
                    ack,
                },
            );
        }
        ack
    }

    /// On the owner, clusters: a core gained or lost interest in `topic`. The node subscribes
    /// to the topic's subject on its first interested core and unsubscribes after the last;
    /// a gained interest is acknowledged only once the subscription is live.
    pub(super) fn owner_interest(
        &self,
        topic: Arc<str>,
        up: bool,
        from: ShardId,
        ack: Option<u64>,
    ) {
        self.seq.borrow_mut().interest(&topic, up, from);
        let bb = match &self.backbone {
            Some(bb) if self.clustered(&topic) => bb,
            _ => {
                if let Some(t) = ack {
                    self.send_interest_ack(from, t);
                }
                return;
            }
        };
        if up {
            let mut subs = self.bb_subs.borrow_mut();
            match subs.get_mut(&topic) {
                Some(s) if s.live => {
                    drop(subs);
                    if let Some(t) = ack {
                        self.send_interest_ack(from, t);
                    }
                }
                Some(s) => s.waiters.extend(ack.map(|t| (from, t))),
                None => {
                    let gen = self.bb_gen.get() + 1;
                    self.bb_gen.set(gen);
                    subs.insert(
                        topic.clone(),
                        BbSub {
                            gen,
                            live: false,
                            waiters: ack.map(|t| (from, t)).into_iter().collect(),
                            replays: Vec::new(),
                        },
                    );
                    bb.send(BackboneCmd::Subscribe {
                        topic,
                        gen,
                        owner: self.id,
                    });
                }
            }
        } else if !self.seq.borrow().has_interest(&topic) {
            let gone = self.bb_subs.borrow_mut().remove(&topic);
            if let Some(s) = gone {
                bb.send(BackboneCmd::Unsubscribe { topic, gen: s.gen });
                for (f, t) in s.waiters {
                    self.send_interest_ack(f, t);
                }
                for r in s.replays {
                    self.answer_replay(r.topic, r.from_seq, r.reply_to, r.partial);
                }
            }
        }
    }

    /// A subscriber of `topic` that takes compressed deliveries (`z`) and/or is an event stream
    /// (`s`) came (`up`) or went; the owner hears when this core's count of either leaves or
    /// reaches 0. Called after the core's interest up and before its interest down.
    pub(crate) fn count_forms(&self, topic: &Arc<str>, z: bool, s: bool, up: bool) {
        if !z && !s {
            return;
        }
        let (dz, ds) = {
            let mut counts = self.form_counts.borrow_mut();
            let e = counts.entry(topic.clone()).or_insert((0, 0));
            let before = *e;
            let step = |n: &mut u32, on: bool| {
                if on {
                    *n = if up { *n + 1 } else { n.saturating_sub(1) };
                }
            };
            step(&mut e.0, z);
            step(&mut e.1, s);
            let after = *e;
            if after == (0, 0) {
                counts.remove(topic);
            }
            let flip = |b: u32, a: u32| ((b == 0) != (a == 0)).then_some(a > 0);
            (flip(before.0, after.0), flip(before.1, after.1))
        };
        if dz.is_none() && ds.is_none() {
            return;
        }
        let owner = crate::publish::owner_shard(topic, self.n_shards());
        if owner == self.id {
            self.seq.borrow_mut().forms(topic, self.id, dz, ds);
        } else {
            self.send_to(
                owner,
                ShardMsg::Forms {
                    topic: topic.clone(),
                    from: self.id,
                    deflate: dz,
                    sse: ds,
                },
            );
        }
    }

    pub(super) fn send_interest_ack(&self, to: ShardId, token: u64) {
        if to == self.id {
            self.interest_acked(token);
        } else {
            self.send_to(to, ShardMsg::InterestAck { token });
        }
    }

    /// The owner registered a gained interest: answer the subscribes that waited for it.
    pub(super) fn interest_acked(&self, token: u64) {
        let Some(Pending::InterestUp { topic, waiters }) = self.pending.borrow_mut().remove(&token)
        else {
            return;
        };
        {
            let mut ip = self.interest_pending.borrow_mut();
            if ip.get(&topic) == Some(&token) {
                ip.remove(&topic);
            }
        }
        let mut conns: Vec<ConnId> = Vec::new();
        {
            let mut pending = self.pending.borrow_mut();
            for w in waiters {
                if let Some(Pending::Subscribe {
                    conn, remaining, ..
                }) = pending.get_mut(&w)
                {
                    *remaining = remaining.saturating_sub(1);
                    if *remaining == 0 && !conns.contains(conn) {
                        conns.push(*conn);
                    }
                }
            }
        }
        for c in conns {
            self.release_subscribes(c);
        }
    }
}
