//! One Micro Socket message from a client -> the `Shard` calls it asks for.
//!
//! [`on_text`] parses the JSON (`protocol::parse_client_msg`), checks what the connection may
//! do (identity, read/write rules, single-topic sockets, request-size limits: the whole
//! request first, all or nothing) and answers or calls into the rooms that do the work:
//! `publish` -> [`super::publish`], `subscribe`/`unsubscribe` -> [`super::subscriptions`],
//! `replay` -> [`super::replay`], `resume` -> [`super::sessions`], `ack` -> [`super::qos`].
//!
//! May touch: its own connection's fields (identity) and the read-only topic table (to count
//! what a request adds). May not: change the topic table or queue deliveries itself.
//!
//! Next on the path of a publish: [`super::publish`] (`Shard::publish`).

use super::connections::ConnId;
use super::waiters::PublishWaiter;
use super::{unix_now, Shard};
use crate::auth::{AuthError, AuthFailure};
use crate::protocol::{self, ClientMsg, ErrorCode, ProtoError, Topics};
use crate::ws::frame;
use bytes::Bytes;
use std::borrow::Cow;
use std::sync::Arc;

/// Handles one Micro Socket message.
pub(super) fn on_text(shard: &Shard, id: ConnId, text: &str) {
    let msg = match protocol::parse_client_msg(text) {
        Ok(m) => m,
        Err(e) => return shard.reply_error(id, &e),
    };
    match msg {
        ClientMsg::Setup { token, topics } => {
            // With authentication: a token here replaces the connection's identity; without
            // one the identity from the upgrade (or the anonymous grants) stays. Under
            // `auth = none` tokens are not looked at. `ready` first, then the subscriptions.
            let had = shard
                .with_conn(id, |c| c.identity.is_some())
                .unwrap_or(false);
            let verified = match token.as_deref().filter(|t| !t.is_empty()) {
                Some(t) if shard.auth.required() => shard.auth.verify(t, unix_now()).map(Some),
                _ if had => Ok(None),
                _ => shard
                    .auth
                    .anonymous()
                    .map(Some)
                    .ok_or(AuthError::Unauthorized(AuthFailure::Missing)),
            };
            match verified {
                Err(e) => return shard.reply_error(id, &e.to_proto()),
                Ok(Some(identity)) => {
                    shard.with_conn(id, |c| c.identity = Some(identity));
                    if !shard.account_enter(id) {
                        return;
                    }
                }
                Ok(None) => {}
            }
            let session = shard.session_for(id);
            let mut ready = Vec::with_capacity(80);
            protocol::encode_ready(&mut ready, &session);
            if had {
                // A `/ws/sub` socket known at the upgrade was subscribed there: `ready` goes
                // behind that `subscribed`, so a client that saw it misses no later publish.
                shard.answer_subscribe(id, Vec::new(), ready, Vec::new());
            } else {
                subscribe_single_topic(shard, id, Some(ready));
            }
            if !topics.is_empty() {
                subscribe(shard, id, topics, true, FromSeq::Live);
            }
        }
        _ if shard
            .with_conn(id, |c| c.identity.is_none())
            .unwrap_or(true)
            && !matches!(msg, ClientMsg::Resume { .. }) =>
        {
            let e = ProtoError::new(
                ErrorCode::Unauthorized,
                "authenticate first: send setup with a token (or connect with ?token=)",
            );
            let e = match &msg {
                ClientMsg::Publish {
                    topic, message_id, ..
                } => e
                    .with_topic(topic)
                    .with_message_id_opt(message_id.as_deref()),
                ClientMsg::Replay { topic, .. } => e.with_topic(topic),
                _ => e,
            };
            shard.reply_error(id, &e)
        }
        ClientMsg::Ping => shard.reply(id, protocol::encode_pong),
        ClientMsg::Subscribe {
            topics,
            from_seq,
            latest,
        } => {
            let (list, batch) = split_topics(topics);
            let from = match (latest, from_seq) {
                (true, _) => FromSeq::All(crate::history::REPLAY_LATEST),
                (false, Some(f)) => FromSeq::All(f),
                (false, None) => FromSeq::Live,
            };
            subscribe(shard, id, list, batch, from);
        }
        ClientMsg::Unsubscribe { topics } => {
            let (list, batch) = split_topics(topics);
            unsubscribe(shard, id, list, batch);
        }
        ClientMsg::Publish {
            topic,
            message_id,
            payload,
            qos,
        } => {
            if let Err(e) = protocol::validate_topic(&topic, shard.cfg.max_topic_bytes) {
                return shard.reply_error(id, &e.with_message_id_opt(message_id.as_deref()));
            }
            let Some(identity) = shard.with_conn(id, |c| c.identity.clone()).flatten() else {
                return;
            };
            if let Err(e) = identity.check_write(&topic) {
                return shard
                    .reply_error(id, &e.to_proto().with_message_id_opt(message_id.as_deref()));
            }
            let payload = Bytes::copy_from_slice(payload.get().as_bytes());
            if let Err(e) = shard.publish(
                &topic,
                message_id.as_deref(),
                identity.subject.clone(),
                payload,
                qos == 1,
                Some(PublishWaiter::Conn(id)),
            ) {
                shard.reply_error(id, &e);
            }
        }
        ClientMsg::Ack {
            message_id,
            topic,
            seq_no,
        } => {
            // Clears a QoS 1 delivery; an ack of a QoS 0 one (or of an unknown one) is
            // accepted and ignored (PROTOCOL.md).
            shard.ack(id, message_id.as_deref(), topic.as_deref(), seq_no);
        }
        ClientMsg::Replay { topic, from_seq } => {
            if let Err(e) = protocol::validate_topic(&topic, shard.cfg.max_topic_bytes) {
                return shard.reply_error(id, &e);
            }
            let read = shard.with_conn(id, |c| c.identity.as_ref().map(|i| i.check_read(&topic)));
            if let Some(Some(Err(e))) = read {
                return shard.reply_error(id, &e.to_proto());
            }
            shard.request_replay(
                id,
                Arc::from(&*topic),
                from_seq,
                super::replay::ReplayFor::Request,
            );
        }
        ClientMsg::Resume {
            session_id,
            last_seq_per_topic,
        } => resume(shard, id, &session_id, last_seq_per_topic),
    }
}

/// `/ws/sub/{topic}`: subscribes the connection's own topic once its identity is known (at the
/// upgrade, or after `setup` when authentication is required), checking the read rule.
/// `ready` (the answer to that `setup`) is sent first, but only once the subscription is in
/// place at the topic's owner, like `subscribed`: a client that publishes on `ready` must not
/// be able to publish past its own subscription.
pub(super) fn subscribe_single_topic(shard: &Shard, id: ConnId, ready: Option<Vec<u8>>) {
    let send_ready = |waits: Vec<u64>| {
        if let Some(r) = ready {
            shard.answer_subscribe(id, waits, r, Vec::new());
        }
    };
    let Some((Some(topic), Some(identity), latest)) = shard.with_conn(id, |c| {
        (c.single_topic.clone(), c.identity.clone(), c.single_latest)
    }) else {
        return send_ready(Vec::new());
    };
    if let Err(e) = identity.check_read(&topic) {
        send_ready(Vec::new());
        shard.reply_error(id, &e.to_proto());
        shard.begin_close(id, frame::CLOSE_POLICY, "forbidden");
        return;
    }
    let subscribed = shard.topics.borrow().is_subscribed(id.slot, &topic);
    let new: &[&str] = if subscribed { &[] } else { &[&topic] };
    if let Err(e) = shard.admit_subscriptions(id, new) {
        // A micro socket without its topic is useless: say why and close (1013: try again later).
        send_ready(Vec::new());
        shard.reply_error(id, &e.with_topic(&topic));
        shard.begin_close(id, frame::CLOSE_TRY_AGAIN_LATER, "subscription limit");
        return;
    }
    let waits: Vec<u64> = shard.subscribe(id, &topic).into_iter().collect();
    send_ready(waits.clone());
    let mut reply = Vec::with_capacity(64);
    protocol::encode_subscribed(&mut reply, &[&topic], false);
    // `?latest=1`: the newest held message first, then live (like `subscribe` with `latest`).
    let replays = if latest && !subscribed {
        vec![(topic.clone(), crate::history::REPLAY_LATEST)]
    } else {
        Vec::new()
    };
    shard.answer_subscribe(id, waits, reply, replays);
}

fn split_topics(t: Topics<'_>) -> (Vec<Cow<'_, str>>, bool) {
    match t {
        Topics::One(t) => (vec![t], false),
        Topics::Many(v) => (v, true),
    }
}

/// What every (un)subscribe request is checked for first, in this order: how many topics it
/// names, that each is a valid topic, and on a `/ws/sub/{topic}` socket that it is that topic.
fn check_request_topics(
    shard: &Shard,
    id: ConnId,
    topics: &[Cow<'_, str>],
) -> Result<(), ProtoError> {
    let cfg = &shard.cfg;
    if topics.len() > cfg.max_topics_per_request {
        return Err(ProtoError::new(
            ErrorCode::LimitExceeded,
            format!(
                "{} topics in one request; at most {} are allowed",
                topics.len(),
                cfg.max_topics_per_request
            ),
        ));
    }
    let single = shard.with_conn(id, |c| c.single_topic.clone()).flatten();
    for t in topics {
        protocol::validate_topic(t, cfg.max_topic_bytes)?;
        if let Some(s) = &single {
            if **s != **t {
                return Err(single_topic_only(s, t));
            }
        }
    }
    Ok(())
}

/// `SINGLE_TOPIC`: a `/ws/sub/{only}` socket asked for `topic`.
pub(super) fn single_topic_only(only: &str, topic: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::SingleTopic,
        format!("this micro socket serves only '{only}'"),
    )
    .with_topic(topic)
}

/// Where a subscribe starts each topic.
pub(super) enum FromSeq {
    /// Live only.
    Live,
    /// Every topic from this `seqNo` (`fromSeq`): history first, then live.
    All(u64),
    /// Per topic, in the request's order (an event stream resumed by its `Last-Event-ID`).
    Each(Vec<Option<u64>>),
}

/// Checks the whole request first (all or nothing), then subscribes and answers once.
pub(super) fn subscribe(
    shard: &Shard,
    id: ConnId,
    topics: Vec<Cow<'_, str>>,
    batch: bool,
    from_seq: FromSeq,
) {
    let cfg = &shard.cfg;
    if let Err(e) = check_request_topics(shard, id, &topics) {
        return shard.reply_error(id, &e);
    }
    if let Some(identity) = shard.with_conn(id, |c| c.identity.clone()).flatten() {
        for t in &topics {
            if let Err(e) = identity.check_read(t) {
                return shard.reply_error(id, &e.to_proto());
            }
        }
    }
    let (have, fresh) = {
        let table = shard.topics.borrow();
        let have = table.conn_topic_count(id.slot);
        let mut seen = hashbrown::HashSet::new();
        let fresh: Vec<&str> = topics
            .iter()
            .map(|t| &**t)
            .filter(|t| !table.is_subscribed(id.slot, t) && seen.insert(*t))
            .collect();
        (have, fresh)
    };
    let new = fresh.len();
    if have + new > cfg.max_topics_per_conn {
        let mut e = ProtoError::new(
            ErrorCode::LimitExceeded,
            format!(
                "a connection may hold at most {} topics (has {have}, asked for {new} more)",
                cfg.max_topics_per_conn
            ),
        );
        if !batch {
            e = e.with_topic(&topics[0]);
        }
        return shard.reply_error(id, &e);
    }
    if let Err(mut e) = shard.admit_subscriptions(id, &fresh) {
        if !batch {
            e = e.with_topic(&topics[0]);
        }
        return shard.reply_error(id, &e);
    }
    drop(fresh);
    // `subscribed` goes out once every owner has registered this core's new interest (until
    // then a publish might not be handed to this core), then the replays of `fromSeq` are
    // asked for: the history up to now comes first, then live (no gap, no duplicate).
    let waits: Vec<u64> = topics
        .iter()
        .filter_map(|t| shard.subscribe(id, t))
        .collect();
    let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
    let mut reply = Vec::with_capacity(64);
    protocol::encode_subscribed(&mut reply, &names, batch);
    let replays = match from_seq {
        FromSeq::All(from) => names.iter().map(|t| (Arc::from(*t), from)).collect(),
        FromSeq::Each(froms) => names
            .iter()
            .zip(froms)
            .filter_map(|(t, from)| Some((Arc::from(*t), from?)))
            .collect(),
        FromSeq::Live => Vec::new(),
    };
    shard.answer_subscribe(id, waits, reply, replays);
}

/// `resume`: checks the request, then asks for the session (see `Shard::request_resume`).
pub(super) fn resume(shard: &Shard, id: ConnId, session_id: &str, last: Vec<(Cow<'_, str>, u64)>) {
    let cfg = &shard.cfg;
    if last.len() > cfg.max_topics_per_request {
        return shard.reply_error(
            id,
            &ProtoError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} topics in lastSeqPerTopic; at most {} are allowed",
                    last.len(),
                    cfg.max_topics_per_request
                ),
            ),
        );
    }
    for (t, _) in &last {
        if let Err(e) = protocol::validate_topic(t, cfg.max_topic_bytes) {
            return shard.reply_error(id, &e);
        }
    }
    let Some((own, subject)) = shard.with_conn(id, |c| {
        (
            c.session.clone(),
            c.identity.as_ref().map(|i| i.subject.clone()),
        )
    }) else {
        return;
    };
    if own.as_deref() == Some(session_id) {
        return shard.reply_error(
            id,
            &ProtoError::new(
                ErrorCode::BadRequest,
                "this connection already holds that session",
            ),
        );
    }
    let last = last.into_iter().map(|(t, s)| (Arc::from(&*t), s)).collect();
    shard.request_resume(id, session_id, subject, last);
}

pub(super) fn unsubscribe(shard: &Shard, id: ConnId, topics: Vec<Cow<'_, str>>, batch: bool) {
    if let Err(e) = check_request_topics(shard, id, &topics) {
        return shard.reply_error(id, &e);
    }
    for t in &topics {
        shard.unsubscribe(id, t);
    }
    let names: Vec<&str> = topics.iter().map(|t| &**t).collect();
    let mut reply = Vec::with_capacity(64);
    protocol::encode_unsubscribed(&mut reply, &names, batch);
    // Behind any `subscribed` of this connection still waiting for an owner.
    shard.answer_subscribe(id, Vec::new(), reply, Vec::new());
}

trait WithMessageIdOpt {
    fn with_message_id_opt(self, id: Option<&str>) -> Self;
}

impl WithMessageIdOpt for ProtoError {
    fn with_message_id_opt(self, id: Option<&str>) -> Self {
        match id {
            Some(m) => self.with_message_id(m),
            None => self,
        }
    }
}
