//! Event-stream subscribers (Server-Sent Events): `GET /sse/sub/{topic}` and
//! `GET /sse?topic=A&topic=B…`, on a fresh or a kept-alive HTTP/1.1 connection, plain or TLS.
//!
//! [`serve_sse`] checks the request before answering (topics, token, read rules,
//! `Last-Event-ID`: a clear HTTP error otherwise), then registers the socket as a connection
//! like a WebSocket (same limits, memory admission, per-identity caps, slow-consumer policy,
//! heartbeats, shutdown) whose out buffer takes events instead of frames
//! ([`crate::sse::Stream`], `Conn::push_uncapped`/`Conn::push_delivery`), subscribes its
//! topics (each resumed from history after the seqNo its id names, with the same seam and loss
//! report as `replay`), and reads until the client goes away: it has nothing to say.
//!
//! May touch: its socket until it is registered, `Shard::add_conn`, the subscribe path. May
//! not: write to the socket once registered (the flusher does).

use super::connections::{ConnId, ConnState};
use super::messages::{subscribe, FromSeq};
use super::reader::{closing, finish};
use super::socket::{read_tls_plaintext, read_via_scratch, write_all, Io};
use super::{unix_now, Shard};
use crate::auth::{self, Identity};
use crate::metrics::Counters;
use crate::protocol;
use crate::sse::{self, Stream};
use crate::ws::handshake::{self, Request};
use std::borrow::Cow;
use std::sync::Arc;

/// The `retry:` an event stream starts with: how long a browser waits before reconnecting.
pub(crate) const RETRY_MS: u64 = 1_000;

/// Whether a request asks for an event stream.
pub(super) fn is_sse_request(req: &Request) -> bool {
    req.method == "GET" && is_sse_path(&req.path)
}

/// `/sse` or `/sse/sub/{topic}`.
pub(super) fn is_sse_path(path: &str) -> bool {
    path == "/sse" || path.starts_with("/sse/sub/")
}

/// A checked request: what the stream will be.
struct Ask {
    topics: Vec<Arc<str>>,
    last: Option<Vec<u64>>,
    identity: Option<Identity>,
    /// `?latest=1`: topics with no resume point start with their newest held message.
    latest: bool,
}

fn bad(status: u16, code: &str, msg: &str) -> Vec<u8> {
    handshake::json_error(status, code, msg, false)
}

/// Everything that can be refused before the stream is answered, in the order a client
/// would fix it: the topics, the token, the read rules, the resume point, the node's state.
fn check(shard: &Shard, req: &Request) -> Result<Ask, Vec<u8>> {
    let cfg = &shard.cfg;
    let query = req.query.as_deref();
    let mut names: Vec<String> = Vec::new();
    if let Some(raw) = req.path.strip_prefix("/sse/sub/") {
        let t = handshake::decode_segment(raw).ok_or_else(|| {
            bad(
                400,
                "BAD_REQUEST",
                "topic is not UTF-8 after percent-decoding",
            )
        })?;
        names.push(t);
    } else {
        names.extend(
            handshake::query_pairs(query.unwrap_or(""))
                .into_iter()
                .filter(|(k, _)| k == "topic")
                .map(|(_, v)| v),
        );
        if names.is_empty() {
            return Err(bad(
                400,
                "BAD_REQUEST",
                "name the topics: /sse?topic=A&topic=B, or /sse/sub/{topic}",
            ));
        }
    }
    let most = cfg.max_topics_per_request.min(cfg.max_topics_per_conn);
    if names.len() > most {
        return Err(bad(
            400,
            "LIMIT_EXCEEDED",
            &format!("{} topics; a stream may name at most {most}", names.len()),
        ));
    }
    for (i, t) in names.iter().enumerate() {
        protocol::validate_topic(t, cfg.max_topic_bytes)
            .map_err(|e| bad(400, "BAD_REQUEST", &format!("topic {t:?}: {}", e.message)))?;
        if names[..i].contains(t) {
            return Err(bad(
                400,
                "BAD_REQUEST",
                &format!("topic {t:?} is named twice"),
            ));
        }
    }
    let token = handshake::query_value(query, "token").or_else(|| {
        req.authorization
            .as_deref()
            .and_then(auth::bearer_token)
            .map(str::to_string)
    });
    let identity = match token {
        Some(t) if shard.auth.required() => match shard.auth.verify(&t, unix_now()) {
            Ok(i) => Some(i),
            Err(e) => {
                let p = e.to_proto();
                return Err(bad(401, p.code.as_str(), &p.message));
            }
        },
        _ => shard.auth.anonymous(),
    };
    let Some(identity) = identity else {
        return Err(bad(
            401,
            "UNAUTHORIZED",
            "a token is required: ?token=… or Authorization: Bearer …",
        ));
    };
    for t in &names {
        if let Err(e) = identity.check_read(t) {
            let p = e.to_proto();
            return Err(bad(403, p.code.as_str(), &p.message));
        }
    }
    let id = req
        .last_event_id
        .clone()
        .or_else(|| handshake::query_value(query, "lastEventId"));
    let last = match id {
        Some(id) => {
            sse::parse_last_event_id(&id, names.len()).map_err(|e| bad(400, "BAD_REQUEST", &e.0))?
        }
        None => None,
    };
    if shard.shutting_down.get() {
        return Err(bad(503, "SHUTTING_DOWN", "server is shutting down"));
    }
    if !shard.memory_admits(crate::memory::CONN_BYTES) {
        let msg = shard.memory_refused("a new event stream").message;
        return Err(bad(503, "LIMIT_EXCEEDED", &msg));
    }
    Ok(Ask {
        topics: names.into_iter().map(Arc::from).collect(),
        last,
        identity: Some(identity),
        latest: super::accept::wants_latest(query),
    })
}

/// Serves one event stream to its end. `rest` holds what was read after the request head.
pub(super) async fn serve_sse(shard: &Shard, io: Io, req: Request, rest: Vec<u8>) {
    Counters::add(&shard.counters.http_requests, 1);
    let ask = match check(shard, &req) {
        Ok(a) => a,
        Err(answer) => {
            Counters::add(&shard.counters.handshake_failures, 1);
            let _ = write_all(&io, &answer).await;
            return;
        }
    };
    // Nothing the client sends is read for meaning (what came after the request head neither):
    // hold no buffer between reads, or the request head's would stay for the stream's life.
    drop((req, rest));
    let mut buf = Vec::new();
    let Io { stream, tls } = io;
    let tls = tls.into_inner();
    let is_tls = tls.is_some();
    let fd = stream.fd();
    let resumed = ask.last.is_some();
    // Each topic resumes after the seqNo the stream's id names; one with none yet (0, or no id
    // at all) starts live, or with its newest held message when `?latest=1` asks for it.
    let latest = ask.latest.then_some(crate::history::REPLAY_LATEST);
    let froms: Vec<Option<u64>> = match &ask.last {
        Some(l) => l
            .iter()
            .map(|&s| if s > 0 { Some(s + 1) } else { latest })
            .collect(),
        None => vec![latest; ask.topics.len()],
    };
    let id = shard.add_conn(stream.clone(), None, ask.identity, tls, 0);
    shard.make_sse(id, Stream::new(ask.topics.clone(), ask.last), resumed);
    if shard.account_enter(id) {
        let topics: Vec<Cow<'_, str>> = ask.topics.iter().map(|t| Cow::Borrowed(&**t)).collect();
        let batch = topics.len() > 1;
        subscribe(shard, id, topics, batch, FromSeq::Each(froms));
    }
    loop {
        let read = async {
            if is_tls {
                Box::pin(read_tls_plaintext(shard, id, &stream, &mut buf)).await
            } else {
                read_via_scratch(shard, &stream, &mut buf).await
            }
        };
        let res = futures_lite::future::or(async { Some(read.await) }, async {
            closing(shard, id).await;
            None
        })
        .await;
        match res {
            None => break,
            Some(Ok(0)) | Some(Err(_)) => {
                // The client went away (an EventSource closed, a network cut).
                shard.with_conn(id, |c| {
                    c.state = ConnState::Closing;
                    c.close_sent = true;
                    c.clear_out();
                });
                break;
            }
            // A client of an event stream has nothing to say: what it sends is ignored.
            Some(Ok(_)) => buf = Vec::new(),
        }
    }
    finish(shard, id, fd).await;
}

impl Shard {
    /// Turns the connection just added into an event stream: its out buffer takes events, the
    /// response head goes first, and it is counted as a stream, not as a WebSocket.
    fn make_sse(&self, id: ConnId, stream: Stream, resumed: bool) {
        self.with_conn(id, |c| {
            c.set_sse(stream);
            c.out.push_uncapped(&sse::response_head(RETRY_MS, None));
        });
        self.mark_dirty_conn(id);
        self.mesh.count_sse_stream(self.id, true);
        // `add_conn` counted a WebSocket; this is a stream.
        Counters::add(&self.counters.ws_opened, u64::MAX);
        Counters::add(&self.counters.sse_opened, 1);
        if resumed {
            Counters::add(&self.counters.sse_resumes, 1);
        }
    }
}
