//! Waiters: someone on this core waiting for another core's (or the backbone's) answer — a
//! connection's `ack`, a replay, a subscribe behind interest acks, a resume, an HTTP task.
//! Each waits under a token (`next_token`); the answer names the token, and [`Shard::complete`]
//! (or the room that asked) finishes it.
//!
//! May touch: the pending table, and queue answers for connections. May not: block.
//!
//! Read next: [`super::housekeeping`].

use super::connections::ConnId;
use super::publish::ack_status;
use super::Shard;
use crate::mesh::Published;
use crate::metrics::Snapshot;
use crate::protocol::{self, ProtoError};
use glommio::channels::local_channel::LocalSender;
use std::sync::Arc;

/// The answer an HTTP request task waits for.
#[derive(Debug)]
pub(crate) enum Reply {
    Published(Published),
    /// The publish was not accepted (clusters: `BACKBONE_UNAVAILABLE`).
    PublishFailed(ProtoError),
    Stats(Box<Snapshot>),
}

/// Someone on this shard waiting for another shard's answer.
pub(super) enum Pending {
    /// A WebSocket `publish`: answer with `ack` on this connection.
    ConnAck(ConnId),
    /// A `replay` (or `subscribe` with `fromSeq`, one topic of a `resume`, a refill) of a
    /// connection.
    Replay {
        conn: ConnId,
        topic: Arc<str>,
        purpose: super::replay::ReplayFor,
    },
    /// A gained interest in `topic` waiting for the owner's `InterestAck`; `waiters` are the
    /// `Pending::Subscribe` tokens to tell.
    InterestUp { topic: Arc<str>, waiters: Vec<u64> },
    /// A subscribe request whose answer waits for `remaining` interest acks: then `reply` is
    /// queued and `replays` (topic, fromSeq) are asked for.
    Subscribe {
        conn: ConnId,
        remaining: u32,
        reply: Vec<u8>,
        replays: Vec<(Arc<str>, u64)>,
    },
    /// A `resume` waiting for its session to be handed over.
    Resume {
        conn: ConnId,
        session: Arc<str>,
        last_seq: Vec<(Arc<str>, u64)>,
    },
    /// An HTTP request task; `remaining` answers still expected.
    Task {
        tx: LocalSender<Reply>,
        remaining: usize,
    },
}

/// Who waits for a publish's outcome.
pub(crate) enum PublishWaiter {
    Conn(ConnId),
    Task(LocalSender<Reply>),
}

impl Shard {
    pub(super) fn next_token(&self) -> u64 {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }

    /// Registers `p` as waiting for an answer; the answer will carry the returned token.
    pub(super) fn wait_for(&self, p: Pending) -> u64 {
        let token = self.next_token();
        self.pending.borrow_mut().insert(token, p);
        token
    }

    pub(super) fn complete(&self, token: u64, reply: Reply) {
        let mut pending = self.pending.borrow_mut();
        match pending.remove(&token) {
            Some(Pending::ConnAck(id)) => {
                drop(pending);
                match reply {
                    Reply::Published(p) => self.reply(id, |b| {
                        protocol::encode_ack(b, &p.message_id, ack_status(&p), Some(p.seq_no))
                    }),
                    Reply::PublishFailed(e) => self.reply_error(id, &e),
                    Reply::Stats(_) => {}
                }
            }
            Some(
                Pending::Replay { .. }
                | Pending::Resume { .. }
                | Pending::InterestUp { .. }
                | Pending::Subscribe { .. },
            ) => {}
            Some(Pending::Task { tx, remaining }) => {
                let _ = tx.try_send(reply);
                if remaining > 1 {
                    pending.insert(
                        token,
                        Pending::Task {
                            tx,
                            remaining: remaining - 1,
                        },
                    );
                }
            }
            None => {}
        }
    }

    /// Forgets a waiter that gave up (an HTTP request that timed out).
    pub(crate) fn forget(&self, token: u64) {
        self.pending.borrow_mut().remove(&token);
    }
}
