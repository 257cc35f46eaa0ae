//! Sessions and `resume` (I6): a session is made by `setup`, detached when its connection
//! ends, kept `session_ttl_ms`, and taken over by a `resume` on any core: the session's home
//! core (from its id) knows which core holds it; the holder hands its state over (closing a
//! still-open old connection of the same identity); the resuming core re-subscribes and
//! replays. In a cluster a session made on another node is resumed statelessly.
//!
//! May touch: the sessions table, a connection's session and identity, subscriptions and
//! replays (through their rooms). May not: touch another core's state except by message.
//!
//! Read next: [`super::qos`].

use super::connections::ConnId;
use super::messages::single_topic_only;
use super::replay::{ReplayFor, FROM_NOW};
use super::waiters::Pending;
use super::{unix_now, Shard};
use crate::mesh::{ShardId, ShardMsg};
use crate::metrics::Counters;
use crate::protocol::{self, ErrorCode, ProtoError};
use crate::session::{self, Detached, Held, TakeError};
use crate::ws::frame;
use std::sync::Arc;
use std::time::Instant;

impl Shard {
    /// `setup`: the connection's session, made now unless it has one.
    pub(crate) fn session_for(&self, id: ConnId) -> Arc<str> {
        if let Some(Some(s)) = self.with_conn(id, |c| c.session.clone()) {
            return s;
        }
        let s = self.sessions.borrow_mut().create(self.id, id);
        self.with_conn(id, |c| c.session = Some(s.clone()));
        Counters::add(&self.counters.sessions_created, 1);
        s
    }

    /// The connection is ending: keep its session for a `resume` (see `session.rs`).
    pub(super) fn detach_session(&self, id: ConnId) {
        let Some(Some(sid)) = self.with_conn(id, |c| c.session.take()) else {
            return;
        };
        if self.shutting_down.get() {
            return; // a restart loses every session anyway
        }
        let state = self.session_state(id);
        let dropped = self
            .sessions
            .borrow_mut()
            .detach(&sid, id, state, Instant::now());
        for gone in dropped {
            self.session_gone(gone);
        }
    }

    /// What `resume` needs of a live connection.
    fn session_state(&self, id: ConnId) -> Detached {
        let topics: Vec<Arc<str>> = self.topics.borrow().topics_of(id.slot).cloned().collect();
        self.with_conn(id, |c| Detached {
            identity: c.identity.clone(),
            topics,
            unacked: c
                .inflight
                .as_ref()
                .map(|i| i.lowest_per_topic())
                .unwrap_or_default(),
        })
        .unwrap_or(Detached {
            identity: None,
            topics: Vec::new(),
            unacked: Vec::new(),
        })
    }

    /// Tells session `id`'s home that this core no longer holds it.
    pub(super) fn session_gone(&self, id: Arc<str>) {
        match session::home_of(&id, self.n_shards()) {
            Some(h) if h == self.id => self.sessions.borrow_mut().gone(&id, self.id),
            Some(h) => self.send_to(h, ShardMsg::SessionGone { id, from: self.id }),
            None => {}
        }
    }

    /// `resume`: ask session `sid`'s home for it; the rest happens in [`Shard::session_taken`].
    pub(crate) fn request_resume(
        &self,
        id: ConnId,
        sid: &str,
        subject: Option<Arc<str>>,
        last_seq: Vec<(Arc<str>, u64)>,
    ) {
        let foreign = match (session::node_tag(sid), self.sessions.borrow().own_tag()) {
            (Some(tag), Some(own)) => tag != own,
            _ => false,
        };
        if foreign {
            return self.resume_from_another_node(id, sid.into(), last_seq);
        }
        let Some(home) = session::home_of(sid, self.n_shards()) else {
            return self.resume_failed(id, None, TakeError::Unknown);
        };
        let sid: Arc<str> = sid.into();
        let token = self.wait_for(Pending::Resume {
            conn: id,
            session: sid.clone(),
            last_seq,
        });
        if home == self.id {
            self.session_take(sid, subject, (self.id, token), false);
        } else {
            self.send_to(
                home,
                ShardMsg::SessionTake {
                    id: sid,
                    subject,
                    reply_to: (self.id, token),
                    forwarded: false,
                },
            );
        }
    }

    /// Clusters: `resume` of a session made on another node (which may be gone). Its state
    /// stayed there, so this is a stateless resume: the topics of `lastSeqPerTopic` are
    /// subscribed again under the connection's own identity (access rules apply) and replayed
    /// from JetStream after each `seqNo`; the session continues here under the same id. A
    /// connection without an identity yet (authentication on, no token) gets `SESSION_EXPIRED`,
    /// so the client falls back to `setup` + `subscribe` with `fromSeq`.
    fn resume_from_another_node(&self, id: ConnId, sid: Arc<str>, last_seq: Vec<(Arc<str>, u64)>) {
        if self.with_conn(id, |c| c.identity.is_some()) != Some(true) {
            return self.resume_failed(id, None, TakeError::Unknown);
        }
        let token = self.wait_for(Pending::Resume {
            conn: id,
            session: sid,
            last_seq,
        });
        Counters::add(&self.counters.sessions_resumed_across_nodes, 1);
        self.session_taken(
            token,
            Ok(Box::new(Detached {
                identity: None,
                topics: Vec::new(),
                unacked: Vec::new(),
            })),
        );
    }

    /// At the home (`forwarded == false`): find the holder and forward; at the holder: hand
    /// the session over (closing its old connection if it is still open).
    pub(super) fn session_take(
        &self,
        sid: Arc<str>,
        subject: Option<Arc<str>>,
        reply_to: (ShardId, u64),
        forwarded: bool,
    ) {
        if !forwarded {
            let holder = self.sessions.borrow().holder(&sid);
            let Some(holder) = holder else {
                return self.answer_take(reply_to, Err(TakeError::Unknown));
            };
            // The session moves to the resuming core (if the take fails there, that core
            // sends `SessionGone` and the pointer goes).
            self.sessions
                .borrow_mut()
                .set_holder(sid.clone(), reply_to.0);
            if holder != self.id {
                self.send_to(
                    holder,
                    ShardMsg::SessionTake {
                        id: sid,
                        subject,
                        reply_to,
                        forwarded: true,
                    },
                );
                return;
            }
        }
        let taken = self.sessions.borrow_mut().take(&sid, subject.as_deref());
        let result = match taken {
            Err(e) => Err(e),
            Ok(Held::Detached { state, .. }) => Ok(state),
            Ok(Held::Attached(old)) => {
                let same = self
                    .with_conn(old, |c| match (&subject, &c.identity) {
                        (Some(s), Some(i)) => *i.subject == **s,
                        (Some(_), None) => false,
                        (None, _) => true,
                    })
                    .unwrap_or(false);
                if same {
                    // A takeover: the old connection is still open (or its end not yet seen).
                    let state = self.session_state(old);
                    self.with_conn(old, |c| c.session = None);
                    self.begin_close(
                        old,
                        frame::CLOSE_POLICY,
                        "session resumed on another connection",
                    );
                    Ok(Box::new(state))
                } else {
                    self.sessions.borrow_mut().attach(sid.clone(), old);
                    Err(TakeError::OtherIdentity)
                }
            }
        };
        if result.as_ref().err() == Some(&TakeError::OtherIdentity) {
            // It stays here: point its home back (the home moved it to the requester).
            match session::home_of(&sid, self.n_shards()) {
                Some(h) if h == self.id => self.sessions.borrow_mut().set_holder(sid, self.id),
                Some(h) => self.send_to(
                    h,
                    ShardMsg::SessionHeld {
                        id: sid,
                        at: self.id,
                    },
                ),
                None => {}
            }
        }
        self.answer_take(reply_to, result);
    }

    fn answer_take(&self, reply_to: (ShardId, u64), result: Result<Box<Detached>, TakeError>) {
        let (shard, token) = reply_to;
        if shard == self.id {
            self.session_taken(token, result);
        } else {
            self.send_to(shard, ShardMsg::SessionTaken { token, result });
        }
    }

    /// The session arrived (or not) for a connection's `resume`: adopt it, re-subscribe, replay.
    pub(super) fn session_taken(&self, token: u64, result: Result<Box<Detached>, TakeError>) {
        let Some(Pending::Resume {
            conn: id,
            session: sid,
            last_seq,
        }) = self.pending.borrow_mut().remove(&token)
        else {
            return;
        };
        let state = match result {
            Err(e) => return self.resume_failed(id, Some(sid), e),
            Ok(s) => s,
        };
        // The connection may have gone while the session travelled: keep it for a later try.
        let Some((own, identity, single)) = self.with_conn(id, |c| {
            (
                c.session.clone(),
                c.identity.clone(),
                c.single_topic.clone(),
            )
        }) else {
            return self.keep_detached(sid, *state);
        };
        let identity = match identity.or_else(|| state.identity.clone()) {
            Some(i) if i.is_expired(unix_now()) => {
                self.keep_detached(sid, *state);
                return self.reply_error(
                    id,
                    &ProtoError::new(
                        ErrorCode::Unauthorized,
                        "the session's token has expired: send setup with a fresh token, then resume",
                    ),
                );
            }
            Some(i) => i,
            None => {
                self.keep_detached(sid, *state);
                return self.reply_error(
                    id,
                    &ProtoError::new(
                        ErrorCode::Unauthorized,
                        "authenticate first: send setup with a token",
                    ),
                );
            }
        };
        if let Some(own) = own.filter(|o| **o != *sid) {
            // The connection's own session (from its `setup`) gives way to the resumed one.
            self.sessions.borrow_mut().forget(&own, id);
            self.session_gone(own);
        }
        self.with_conn(id, |c| {
            c.identity = Some(identity.clone());
            c.session = Some(sid.clone());
        });
        self.sessions.borrow_mut().attach(sid.clone(), id);
        Counters::add(&self.counters.sessions_resumed, 1);
        if !self.account_enter(id) {
            return;
        }

        // What to restore: the listed topics from their last seqNo, then the session's other
        // topics (from their lowest unacknowledged QoS 1 seqNo, else live only).
        let mut plan: Vec<(Arc<str>, Option<u64>)> = Vec::new();
        for (t, last) in &last_seq {
            plan.push((t.clone(), Some(last.saturating_add(1))));
        }
        for t in state
            .topics
            .iter()
            .chain(state.unacked.iter().map(|(t, _)| t))
        {
            if plan.iter().any(|(p, _)| p == t) {
                continue;
            }
            let from = state.unacked.iter().find(|(u, _)| u == t).map(|(_, s)| *s);
            plan.push((t.clone(), from));
        }
        let mut replays = 0;
        for (t, from) in plan {
            if let Some(only) = &single {
                if *only != t {
                    self.reply_error(id, &single_topic_only(only, &t));
                    continue;
                }
            }
            if let Err(e) = identity.check_read(&t) {
                self.reply_error(id, &e.to_proto());
                continue;
            }
            let (have, subscribed) = {
                let table = self.topics.borrow();
                (
                    table.conn_topic_count(id.slot),
                    table.is_subscribed(id.slot, &t),
                )
            };
            if !subscribed {
                if let Err(e) = self.admit_subscriptions(id, &[&t]) {
                    self.reply_error(id, &e.with_topic(&t));
                    continue;
                }
            }
            if !subscribed {
                if have >= self.cfg.max_topics_per_conn {
                    self.reply_error(
                        id,
                        &ProtoError::new(
                            ErrorCode::LimitExceeded,
                            format!(
                                "a connection may hold at most {} topics",
                                self.cfg.max_topics_per_conn
                            ),
                        )
                        .with_topic(&t),
                    );
                    continue;
                }
                self.subscribe(id, &t);
            }
            // A topic with nothing to replay still makes the round trip (`FROM_NOW`): its
            // answer comes behind the owner's registration of this core's interest, so
            // `resumed` is sent only when no later publish can miss the connection.
            if self.request_replay(id, t, from.unwrap_or(FROM_NOW), ReplayFor::Resume) {
                replays += 1;
            }
        }
        if replays == 0 {
            self.reply(id, |b| protocol::encode_resumed(b, &sid));
        }
    }

    /// Puts a taken session back here, detached (its resume could not complete).
    fn keep_detached(&self, sid: Arc<str>, state: Detached) {
        let dropped = self
            .sessions
            .borrow_mut()
            .restore(&sid, state, Instant::now());
        for gone in dropped {
            self.session_gone(gone);
        }
    }

    fn resume_failed(&self, id: ConnId, sid: Option<Arc<str>>, e: TakeError) {
        Counters::add(&self.counters.sessions_resume_failed, 1);
        if let (Some(sid), TakeError::Unknown) = (sid, e) {
            // The home pointed the session at this core when it forwarded the take; nobody
            // holds it. (After `OtherIdentity` the holder has pointed the home back to itself.)
            self.session_gone(sid);
        }
        let why = match e {
            // Never say whether a session exists for someone else.
            TakeError::Unknown | TakeError::OtherIdentity => {
                "unknown or expired session (sessions are kept session_ttl_ms after a disconnect; \
                 subscribe again, with fromSeq to recover held messages)"
            }
        };
        self.reply_error(id, &ProtoError::new(ErrorCode::SessionExpired, why));
    }
}
