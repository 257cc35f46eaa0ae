//! Replay (I6): `replay`, `subscribe` with `fromSeq`, and each topic of a `resume`. The
//! connection's core asks the owner; the owner answers from its history (or, in a cluster,
//! from JetStream through the backbone); the answer travels behind every frame of the topic
//! handed out so far, and live frames for that connection are held back meanwhile
//! ([`Replaying`]), so replay and live stream meet with no gap and no duplicate.
//!
//! May touch: the history of owned topics, a connection's `replaying` state and queue
//! (through `deliver_to`), pending replay tokens. May not: change subscriptions.
//!
//! Read next: [`super::sessions`].

use super::backbone::DeferredReplay;
use super::connections::ConnId;
use super::inbox::LocalWork;
use super::waiters::Pending;
use super::Shard;
use crate::backbone::BackboneCmd;
use crate::history::ReplayError;
use crate::mesh::{Delivery, ReplayAnswer, ShardId, ShardMsg};
use crate::protocol::{self, ErrorCode, ProtoError};
use std::sync::Arc;
use std::time::Instant;

/// A replay "from the next message": no frames, only the seam (see `Shard::session_taken`).
pub(super) const FROM_NOW: u64 = u64::MAX;

/// Why a connection asked for a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayFor {
    /// `replay`, or `subscribe` with `fromSeq`: all or nothing.
    Request,
    /// One topic of a `resume`: partial answers allowed, counted for `resumed`.
    Resume,
    /// The `refill` slow-consumer policy (see [`super::ladder`]): partial answers allowed.
    Refill,
}

/// Topics being replayed to a connection, each with the live frames held back meanwhile.
#[derive(Default)]
pub(crate) struct Replaying {
    pub(super) topics: Vec<(Arc<str>, Vec<Delivery>)>,
    /// Replays of a `resume` still to come; `resumed` is queued when the last one is written.
    pub(super) resume_left: u32,
}

impl Shard {
    /// A connection asks for `topic`'s frames from `from_seq` on. Until the owner's answer is
    /// handled, live frames of that topic for this connection are held back (see
    /// [`deliver_into`]), so the replay and the live stream meet without gap or duplicate.
    /// False when that topic is already being replayed to the connection.
    pub(crate) fn request_replay(
        &self,
        id: ConnId,
        topic: Arc<str>,
        from_seq: u64,
        purpose: ReplayFor,
    ) -> bool {
        let for_resume = purpose == ReplayFor::Resume;
        let partial = purpose != ReplayFor::Request;
        let started = self.with_conn(id, |c| {
            let r = c.replaying_or_default();
            if r.topics.iter().any(|(t, _)| *t == topic) {
                return false;
            }
            r.topics.push((topic.clone(), Vec::new()));
            if for_resume {
                r.resume_left += 1;
            }
            true
        });
        if started != Some(true) {
            return false;
        }
        let token = self.wait_for(Pending::Replay {
            conn: id,
            topic: topic.clone(),
            purpose,
        });
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        if owner == self.id {
            self.answer_replay(topic, from_seq, (self.id, token), partial);
        } else {
            self.send_to(
                owner,
                ShardMsg::Replay {
                    topic,
                    from_seq,
                    reply_to: (self.id, token),
                    partial,
                },
            );
        }
        true
    }

    /// On the owner: answer from the history. The answer travels behind every frame of the
    /// topic sequenced so far (the local fan-out queue here, the owner -> core FIFO elsewhere).
    /// `partial`: when older messages are gone, send those still held after the error.
    pub(super) fn answer_replay(
        &self,
        topic: Arc<str>,
        from_seq: u64,
        reply_to: (ShardId, u64),
        partial: bool,
    ) {
        if self.backbone.is_some() {
            let mut subs = self.bb_subs.borrow_mut();
            if let Some(s) = subs.get_mut(&topic).filter(|s| !s.live) {
                s.replays.push(DeferredReplay {
                    topic,
                    from_seq,
                    reply_to,
                    partial,
                });
                return;
            }
        }
        let last_seq = self.seq.borrow().last_seq(&topic);
        let now = Instant::now();
        let mut history = self.history.borrow_mut();
        // "latest": from the newest message (nothing when there is none yet).
        let local_from = match from_seq {
            crate::history::REPLAY_LATEST if last_seq == 0 => FROM_NOW,
            crate::history::REPLAY_LATEST => last_seq,
            f => f,
        };
        let held = if local_from == FROM_NOW {
            Ok(Vec::new()) // live from here on: the answer only marks the seam
        } else {
            history.replay_held(&topic, local_from, last_seq, now)
        };
        if let Some(bb) = &self.backbone {
            // Without a live feed of the topic this node's `last_seq` may be stale; with one,
            // its history may not reach back far enough. JetStream has both.
            let live = self.bb_subs.borrow().get(&topic).is_some_and(|s| s.live);
            if self.clustered(&topic) && (held.is_err() || !live) && from_seq != FROM_NOW {
                drop(history);
                bb.send(BackboneCmd::Replay {
                    topic,
                    from_seq,
                    reply_to,
                    partial,
                    owner: self.id,
                });
                return;
            }
        }
        let answer = match held {
            Ok(frames) => ReplayAnswer {
                last_seq,
                frames,
                error: None,
            },
            Err(e) => {
                let frames = match e {
                    ReplayError::Unavailable {
                        oldest_held: Some(oldest),
                        ..
                    } if partial => history
                        .replay_held(&topic, oldest, last_seq, now)
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                ReplayAnswer {
                    last_seq,
                    frames,
                    error: Some(e),
                }
            }
        };
        drop(history);
        self.send_replay_answer(reply_to, answer);
    }

    /// Sends a replay's answer behind every frame of the topic handed out so far.
    pub(super) fn send_replay_answer(&self, reply_to: (ShardId, u64), answer: ReplayAnswer) {
        let (shard, token) = reply_to;
        if shard == self.id {
            self.local_fanout
                .borrow_mut()
                .push_back(LocalWork::Replayed { token, answer });
            self.wake_dispatcher();
        } else {
            self.send_to(shard, ShardMsg::Replayed { token, answer });
        }
    }

    /// The owner's answer reached the connection's core: write the replayed frames, then the
    /// held-back live frames newer than `last_seq` (older ones were in the replay), then resume
    /// live delivery. The last replay of a `resume` is followed by `resumed`.
    pub(super) fn replayed(&self, token: u64, answer: ReplayAnswer) {
        let Some(Pending::Replay {
            conn: id,
            topic,
            purpose,
        }) = self.pending.borrow_mut().remove(&token)
        else {
            return;
        };
        let for_resume = purpose == ReplayFor::Resume;
        let partial = purpose != ReplayFor::Request;
        let state = self.with_conn(id, |c| {
            let r = c.replaying_mut()?;
            let i = r.topics.iter().position(|(t, _)| *t == topic)?;
            let (_, held) = r.topics.swap_remove(i);
            let mut resume_done = false;
            if for_resume && r.resume_left > 0 {
                r.resume_left -= 1;
                resume_done = r.resume_left == 0;
            }
            if r.topics.is_empty() && r.resume_left == 0 {
                c.end_replaying();
            }
            Some((held, resume_done, c.session.clone()))
        });
        let Some(Some((held, resume_done, session))) = state else {
            return;
        };
        let last_seq = answer.last_seq;
        match answer.error {
            None => {}
            Some(ReplayError::Unavailable { oldest_held, .. }) => {
                let msg = match oldest_held {
                    Some(o) if partial => format!("messages before seqNo {o} are no longer held and are lost; those from {o} to {last_seq} follow"),
                    Some(o) => format!("messages before seqNo {o} are no longer held; the oldest held is {o}, the last is {last_seq}"),
                    None if purpose == ReplayFor::Refill => format!("the messages this connection missed while it was behind are no longer held and are lost; delivery goes on after seqNo {last_seq}"),
                    None => format!("no message of this topic is held (the last seqNo is {last_seq})"),
                };
                // A refill with nothing held says where delivery goes on, so the loss is exact.
                let oldest = match (oldest_held, purpose) {
                    (None, ReplayFor::Refill) => last_seq.checked_add(1),
                    (o, _) => o,
                };
                self.reply_error(
                    id,
                    &ProtoError::new(ErrorCode::ReplayUnavailable, msg)
                        .with_topic(&topic)
                        .with_oldest_seq(oldest),
                );
            }
            Some(ReplayError::FromSeqInFuture { from_seq, last_seq }) => {
                // Ahead of the topic: most likely the gateway restarted and numbering began
                // again. Continuity cannot be proven, and the client is told so.
                let msg = format!(
                    "fromSeq {from_seq} is ahead of the topic's last seqNo {last_seq} \
                     (numbering restarted?); nothing can be replayed"
                );
                let e = ProtoError::new(ErrorCode::ReplayUnavailable, msg).with_topic(&topic);
                self.reply_error(id, &e);
            }
        }
        let now = Instant::now();
        let replayed: Vec<Delivery> = answer
            .frames
            .into_iter()
            .map(|f| Delivery {
                topic: topic.clone(),
                seq_no: f.seq_no,
                frame: f.frame,
                deflated: f.deflated,
                sse: None,
                published_at: now,
                qos1: f.qos1,
            })
            .collect();
        self.deliver_to(id, replayed.iter(), true);
        if resume_done {
            if let Some(s) = &session {
                self.reply(id, |b| protocol::encode_resumed(b, s));
            }
        }
        self.deliver_to(id, held.iter().filter(|d| d.seq_no > last_seq), false);
    }
}
