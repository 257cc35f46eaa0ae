//! Plain HTTP on the gateway's port: `/publish/{topic}`, `/demo/publish/{topic}`, `/stats`,
//! `/metrics`, `/healthz`, `/docs`. Keep-alive HTTP/1.1; chunked bodies are refused (411).
//!
//! No topic state of its own: publishes go through `Shard::publish` exactly like a WebSocket
//! `publish`, and stats are gathered from every shard by message. Answers are written directly
//! by the request task (`socket::write_all`), never through the flusher.
//!
//! May touch: its socket, `Shard::publish`, the waiters of its own requests, `auth` (API keys,
//! tokens). May not: touch connections or the topic table.
//!
//! Next on the path of an HTTP publish: [`super::publish`], then [`super::waiters`] brings the
//! owner's answer back to `http_publish`.

use super::publish::ack_status;
use super::socket::{read_head, read_more, write_all, HeadFailure, Io};
use super::waiters::{PublishWaiter, Reply};
use super::{unix_now, Shard};
use crate::auth::{self, AuthError, AuthFailure, Identity};
use crate::metrics::{self, Counters, Snapshot};
use crate::protocol;
use crate::protocol::ErrorCode;
use crate::ws::handshake::{self, Request};
use bytes::Bytes;
use glommio::channels::local_channel;
use glommio::timer::Timer;
use std::time::Duration;

/// How long an HTTP publish waits for the owner core's answer.
const PUBLISH_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/stats` waits for every core's counters.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The playground page (protocol reference + WebSocket console).
const DOCS_HTML: &str = include_str!("../../docs/playground.html");
/// The browser client (clients/js), served so that a page on the gateway (the playground, an
/// application) can `import { MicroSocket } from "/client/microsocket.js"` with no build step.
const CLIENT_JS: &str = include_str!("../../clients/js/microsocket.js");

/// Answers requests on one connection until it closes or asks to. A WebSocket upgrade or an
/// event-stream request (`GET /sse…`) on the kept-alive connection (browsers and Node pool
/// connections) is handed back to the caller with the bytes read after it.
pub(super) async fn serve_http(
    shard: &Shard,
    stream: &Io,
    first: Request,
    mut buf: Vec<u8>,
) -> Option<(Request, Vec<u8>)> {
    let mut req = first;
    loop {
        if super::sse::is_sse_request(&req) {
            // An event stream (on a fresh or a kept-alive connection): the caller serves it.
            return Some((req, buf));
        }
        Counters::add(&shard.counters.http_requests, 1);
        let keep_alive = req.keep_alive && !shard.shutting_down.get();
        // The body.
        if req.is_chunked {
            let _ = write_all(
                stream,
                &handshake::json_error(
                    411,
                    "BAD_REQUEST",
                    "chunked bodies are not accepted; send Content-Length",
                    false,
                ),
            )
            .await;
            return None;
        }
        let body_len = req.content_length.unwrap_or(0);
        if body_len > shard.cfg.max_message_bytes {
            let msg = format!(
                "body of {body_len} bytes is over the limit of {}",
                shard.cfg.max_message_bytes
            );
            let _ = write_all(
                stream,
                &handshake::json_error(413, "TOO_LARGE", &msg, false),
            )
            .await;
            return None;
        }
        while buf.len() < req.head_len + body_len {
            let want = (req.head_len + body_len - buf.len()).min(64 * 1024);
            match read_more(stream, &mut buf, want).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        let body = buf[req.head_len..req.head_len + body_len].to_vec();
        buf.drain(..req.head_len + body_len);
        let mut answer = route(shard, &req, &body, keep_alive).await;
        if req.method == "HEAD" {
            // Same head as GET, no body (RFC 9110 9.3.2).
            if let Some(end) = memchr::memmem::find(&answer, b"\r\n\r\n") {
                answer.truncate(end + 4);
            }
        }
        if write_all(stream, &answer).await.is_err() || !keep_alive {
            return None;
        }
        req = match read_head(shard, stream, &mut buf).await {
            Ok(r) if !r.is_upgrade => r,
            Ok(r) => return Some((r, buf)),
            Err(HeadFailure::Bad(e)) => {
                let _ = write_all(
                    stream,
                    &handshake::json_error(400, "BAD_REQUEST", &e.to_string(), false),
                )
                .await;
                return None;
            }
            Err(_) => return None,
        };
    }
}

async fn route(shard: &Shard, req: &Request, body: &[u8], keep_alive: bool) -> Vec<u8> {
    // HEAD is answered like GET (without the body, see serve_http) on read-only routes only:
    // a HEAD must never publish.
    let read_only = matches!(
        req.path.as_str(),
        "/healthz" | "/stats" | "/metrics" | "/docs" | "/" | "/client/microsocket.js"
    );
    let method = if req.method == "HEAD" && read_only {
        "GET"
    } else {
        req.method.as_str()
    };
    let path = req.path.as_str();
    match (method, path) {
        ("GET", "/healthz") => {
            handshake::response(200, "application/json", br#"{"status":"ok"}"#, keep_alive)
        }
        ("GET", "/stats") => {
            let snaps = gather_stats(shard).await;
            let mut body = metrics::render_stats_json(&snaps);
            if let Some(bb) = &shard.backbone {
                body.pop(); // the closing brace
                body.push(',');
                body.push_str(&bb.stats_json());
                body.push('}');
            }
            handshake::response(200, "application/json", body.as_bytes(), keep_alive)
        }
        ("GET", "/metrics") => {
            let snaps = gather_stats(shard).await;
            let mut body = metrics::render_prometheus(&snaps);
            if let Some(bb) = &shard.backbone {
                body.push_str(&bb.prometheus());
            }
            handshake::response(
                200,
                "text/plain; version=0.0.4",
                body.as_bytes(),
                keep_alive,
            )
        }
        ("GET", "/client/microsocket.js") => handshake::response(
            200,
            "text/javascript; charset=utf-8",
            CLIENT_JS.as_bytes(),
            keep_alive,
        ),
        ("GET", "/docs") | ("GET", "/") => handshake::response(
            200,
            "text/html; charset=utf-8",
            DOCS_HTML.as_bytes(),
            keep_alive,
        ),
        ("GET", "/ws") | ("GET", "/echo") => handshake::json_error(
            426,
            "BAD_REQUEST",
            "this endpoint speaks WebSocket: send an Upgrade request",
            keep_alive,
        ),
        (m, p) if super::sse::is_sse_path(p) => handshake::json_error(
            405,
            "BAD_REQUEST",
            &format!("{m} is not allowed on an event stream: use GET"),
            keep_alive,
        ),
        (_, p) if p.starts_with("/ws/sub/") => handshake::json_error(
            426,
            "BAD_REQUEST",
            "this endpoint speaks WebSocket: send an Upgrade request",
            keep_alive,
        ),
        ("POST", p) if p.starts_with("/publish/") => {
            let Some(topic) = handshake::decode_segment(&p["/publish/".len()..]) else {
                return handshake::json_error(
                    400,
                    "BAD_REQUEST",
                    "topic is not UTF-8 after percent-decoding",
                    keep_alive,
                );
            };
            if serde_json::from_slice::<&serde_json::value::RawValue>(body).is_err() {
                return handshake::json_error(
                    400,
                    "BAD_REQUEST",
                    "the body must be one JSON value",
                    keep_alive,
                );
            }
            let payload = trim_json(body);
            http_publish(
                shard,
                req,
                &topic,
                req.idempotency_key.clone(),
                Bytes::copy_from_slice(payload),
                keep_alive,
            )
            .await
        }
        ("GET", p) if p.starts_with("/demo/publish/") => {
            if !shard.cfg.demo_publish {
                return handshake::json_error(
                    404,
                    "NOT_FOUND",
                    "demo publishing is off (demo_publish = false)",
                    keep_alive,
                );
            }
            let Some(topic) = handshake::decode_segment(&p["/demo/publish/".len()..]) else {
                return handshake::json_error(
                    400,
                    "BAD_REQUEST",
                    "topic is not UTF-8 after percent-decoding",
                    keep_alive,
                );
            };
            let mut obj = serde_json::Map::new();
            for (k, v) in handshake::query_pairs(req.query.as_deref().unwrap_or("")) {
                obj.insert(k, serde_json::Value::String(v));
            }
            let payload = serde_json::to_vec(&serde_json::Value::Object(obj))
                .expect("a map of strings serializes");
            http_publish(shard, req, &topic, None, Bytes::from(payload), keep_alive).await
        }
        (_, "/healthz" | "/stats" | "/metrics" | "/docs" | "/client/microsocket.js") => {
            handshake::json_error(
                405,
                "BAD_REQUEST",
                &format!("{method} is not allowed on {path}"),
                keep_alive,
            )
        }
        (m, p) if p.starts_with("/publish/") => handshake::json_error(
            405,
            "BAD_REQUEST",
            &format!("{m} is not allowed on /publish: use POST"),
            keep_alive,
        ),
        _ => handshake::json_error(404, "NOT_FOUND", &format!("nothing at {path}"), keep_alive),
    }
}

/// The payload passes through byte for byte, less surrounding whitespace (which would be
/// outside the JSON value in the `data` field).
fn trim_json(body: &[u8]) -> &[u8] {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &body[start..end]
}

async fn http_publish(
    shard: &Shard,
    req: &Request,
    topic: &str,
    idempotency_key: Option<String>,
    payload: Bytes,
    keep_alive: bool,
) -> Vec<u8> {
    if let Err(e) = protocol::validate_topic(topic, shard.cfg.max_topic_bytes) {
        return handshake::json_error(400, e.code.as_str(), &e.message, keep_alive);
    }
    let identity = match http_identity(shard, req) {
        Ok(i) => i,
        Err(e) => {
            let status = if e.code() == ErrorCode::Forbidden {
                403
            } else {
                401
            };
            return handshake::json_error(status, e.code().as_str(), &e.to_string(), keep_alive);
        }
    };
    if let Err(e) = identity.check_write(topic) {
        return handshake::json_error(403, e.code().as_str(), &e.to_string(), keep_alive);
    }
    if let Some(k) = &idempotency_key {
        if k.is_empty() || k.len() > protocol::MAX_MESSAGE_ID_BYTES {
            return handshake::json_error(
                400,
                "BAD_REQUEST",
                "Idempotency-Key must be 1..=128 bytes",
                keep_alive,
            );
        }
    }
    // `?qos=1` (extension): the delivery is QoS 1, as with a WebSocket publish's `qos`.
    let qos1 = match handshake::query_value(req.query.as_deref(), "qos").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => {
            return handshake::json_error(400, "BAD_REQUEST", "qos must be 0 or 1", keep_alive)
        }
    };
    let (tx, rx) = local_channel::new_bounded(1);
    let waiter = Some(PublishWaiter::Task(tx));
    if let Err(e) = shard.publish(
        topic,
        idempotency_key.as_deref(),
        identity.subject.clone(),
        payload,
        qos1,
        waiter,
    ) {
        return handshake::json_error(429, e.code.as_str(), &e.message, keep_alive);
    }
    let reply = futures_lite::future::or(async { rx.recv().await }, async {
        // In a cluster the backbone answers within `publish_timeout_ms`; wait a little longer so
        // the publish gets its own answer.
        let wait = shard
            .cfg
            .cluster
            .as_ref()
            .map_or(PUBLISH_REPLY_TIMEOUT, |c| {
                Duration::from_millis(c.publish_timeout_ms) + PUBLISH_REPLY_TIMEOUT
            });
        Timer::new(wait).await;
        None
    })
    .await;
    match reply {
        Some(Reply::Published(p)) => {
            let body = protocol::publish_result_json(p.seq_no, &p.message_id, ack_status(&p));
            handshake::response(200, "application/json", &body, keep_alive)
        }
        Some(Reply::PublishFailed(e)) => {
            handshake::json_error(503, e.code.as_str(), &e.message, keep_alive)
        }
        _ => handshake::json_error(
            503,
            "INTERNAL_ERROR",
            "the topic's owner core did not answer in time",
            keep_alive,
        ),
    }
}

/// Who publishes over HTTP: `Authorization: Bearer <API key>` when keys are configured (then
/// required), else a bearer JWT when authentication is on, else the anonymous identity.
fn http_identity(shard: &Shard, req: &Request) -> Result<Identity, AuthError> {
    let bearer = req.authorization.as_deref().and_then(auth::bearer_token);
    let a = &shard.auth;
    match bearer {
        Some(key) if a.has_api_keys() => a.verify_api_key(key).or_else(|e| {
            if a.required() {
                a.verify(key, unix_now())
            } else {
                Err(e)
            }
        }),
        Some(token) if a.required() => a.verify(token, unix_now()),
        None if a.has_api_keys() => Err(AuthError::Unauthorized(AuthFailure::Missing)),
        _ => a.authenticate(None, unix_now()),
    }
}

/// Every shard's snapshot (this one's first), waiting at most [`STATS_TIMEOUT`].
async fn gather_stats(shard: &Shard) -> Vec<Snapshot> {
    let n = shard.mesh.len();
    let (tx, rx) = local_channel::new_bounded(n);
    let token = shard.query_stats(tx);
    let mut snaps = Vec::with_capacity(n);
    let collect = async {
        while snaps.len() < n {
            match rx.recv().await {
                Some(Reply::Stats(s)) => snaps.push(*s),
                Some(_) => {}
                None => break,
            }
        }
    };
    futures_lite::future::or(collect, async {
        Timer::new(STATS_TIMEOUT).await;
    })
    .await;
    shard.forget(token);
    snaps.sort_by_key(|s| s.core);
    snaps
}
