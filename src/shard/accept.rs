//! Where a connection begins: the accept loop and one task per accepted socket.
//!
//! [`accept_loop`] takes sockets from this core's SO_REUSEPORT listener (throttled by
//! `max_accepts_per_sec_per_core`, refused past `max_conns_per_core`) and spawns [`serve`] for
//! each: it reads the request head (through [`super::socket`], TLS included), serves plain HTTP
//! ([`super::http`]) or checks the upgrade, answers it, verifies a token given on the upgrade,
//! and hands the socket to the WebSocket task in [`super::reader`].
//!
//! May touch: the socket it accepted, `Shard::cfg`, `auth`, counters. May not: touch
//! connections, topics or the write path (the connection is registered by `reader`).
//!
//! Next on the path of a publish: [`super::reader`] (WebSocket) or [`super::http`] (HTTP).

use super::reader::{serve_echo, serve_ws};
use super::socket::{read_head, write_all, HeadFailure, Io};
use super::{http, unix_now, Shard};
use crate::auth::{self, AuthError, Identity};
use crate::metrics::Counters;
use crate::protocol;
use crate::readiness::Socket;
use crate::ws::handshake::{self, Request};
use glommio::timer::Timer;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts until the task is dropped (at shutdown). Each connection gets its own task.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: Socket) {
    let rate = f64::from(shard.cfg.max_accepts_per_sec_per_core);
    // Token bucket: `rate` tokens a second, at most one second's worth saved up.
    let mut tokens = rate;
    let mut refilled = Instant::now();
    loop {
        if rate > 0.0 {
            let now = Instant::now();
            tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
            refilled = now;
            if tokens < 1.0 {
                // A connection storm: the rest wait in the kernel's listen backlog while the
                // live connections keep the core.
                Counters::add(&shard.counters.accepts_throttled, 1);
                Timer::new(Duration::from_secs_f64((1.0 - tokens) / rate)).await;
                continue;
            }
            tokens -= 1.0;
        }
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE/ENFILE and friends: log, back off a little, keep serving the others.
                tracing::warn!(shard = shard.id, "accept failed: {e}");
                Timer::new(Duration::from_millis(10)).await;
                continue;
            }
        };
        Counters::add(&shard.counters.accepted, 1);
        if shard.conns.borrow().len() >= shard.cfg.max_conns_per_core {
            Counters::add(&shard.counters.conns_refused, 1);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        if shard.cfg.socket_send_buffer_bytes > 0 {
            set_send_buffer(stream.fd(), shard.cfg.socket_send_buffer_bytes);
        }
        glommio::spawn_local(serve(shard.clone(), stream)).detach();
    }
}

fn set_send_buffer(fd: i32, bytes: usize) {
    let v: libc::c_int = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: `fd` is a live socket owned by the caller; the option value is a c_int that
    // lives across the call, and its size is passed correctly.
    let _ = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Where an upgrade goes.
enum Endpoint {
    /// `latest`: `/ws/sub/{topic}?latest=1`.
    Ws {
        single_topic: Option<Arc<str>>,
        latest: bool,
    },
    Echo,
}

/// Serves one accepted socket to the end.
async fn serve(shard: Rc<Shard>, stream: Socket) {
    let tls = match &shard.tls {
        Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
            Ok(mut c) => {
                // The engine bounds what it queues (max_backlog_bytes); rustls need not.
                c.set_buffer_limit(None);
                Some(Box::new(c))
            }
            Err(e) => {
                tracing::error!(shard = shard.id, "TLS session setup failed: {e}");
                return;
            }
        },
        None => None,
    };
    let stream = Io {
        stream: Rc::new(stream),
        tls: RefCell::new(tls),
    };
    let mut buf: Vec<u8> = Vec::new();
    let req = match read_head(&shard, &stream, &mut buf).await {
        Ok(r) => r,
        Err(f) => {
            Counters::add(&shard.counters.handshake_failures, 1);
            if matches!(f, HeadFailure::Tls) {
                Counters::add(&shard.counters.tls_handshake_failures, 1);
            }
            let answer = match f {
                HeadFailure::Closed | HeadFailure::Tls => None,
                HeadFailure::TimedOut => Some(handshake::json_error(
                    408,
                    "TIMEOUT",
                    "request head not received in time",
                    false,
                )),
                HeadFailure::Bad(handshake::HeadError::HeadTooLarge) => Some(
                    handshake::json_error(431, "TOO_LARGE", "request head too large", false),
                ),
                HeadFailure::Bad(e) => Some(handshake::json_error(
                    400,
                    "BAD_REQUEST",
                    &e.to_string(),
                    false,
                )),
            };
            if let Some(a) = answer {
                let _ = write_all(&stream, &a).await;
            }
            return;
        }
    };
    let (req, mut buf) = if req.is_upgrade {
        (req, buf)
    } else {
        // Plain HTTP, until the client closes or upgrades the kept-alive connection.
        match Box::pin(http::serve_http(&shard, &stream, req, buf)).await {
            Some(upgrade) => upgrade,
            None => return,
        }
    };
    if !req.is_upgrade {
        // `GET /sse…` (serve_http hands back nothing else): an event stream, in a task of its
        // own like a WebSocket, so the handshake's state is freed with this one.
        glommio::spawn_local(async move { super::sse::serve_sse(&shard, stream, req, buf).await })
            .detach();
        return;
    }
    let endpoint = match route_upgrade(&shard, &req) {
        Ok(e) => e,
        Err((status, code, msg)) => {
            Counters::add(&shard.counters.handshake_failures, 1);
            let _ = write_all(&stream, &handshake::json_error(status, code, &msg, false)).await;
            return;
        }
    };
    let key = match handshake::check_upgrade(&req) {
        Ok(k) => k.to_string(),
        Err((status, msg)) => {
            Counters::add(&shard.counters.handshake_failures, 1);
            let _ = write_all(
                &stream,
                &handshake::json_error(status, "BAD_REQUEST", msg, false),
            )
            .await;
            return;
        }
    };
    if shard.shutting_down.get() {
        let _ = write_all(
            &stream,
            &handshake::json_error(503, "SHUTTING_DOWN", "server is shutting down", false),
        )
        .await;
        return;
    }
    if !shard.memory_admits(crate::memory::CONN_BYTES) {
        // Refused before the upgrade: nothing is allocated for it, and any client sees why.
        let msg = shard.memory_refused("a new connection").message;
        let _ = write_all(
            &stream,
            &handshake::json_error(503, "LIMIT_EXCEEDED", &msg, false),
        )
        .await;
        return;
    }
    let deflate = req
        .extensions
        .as_deref()
        .and_then(|offers| crate::ws::deflate::negotiate(offers, &shard.cfg.deflate));
    let answer = deflate.as_ref().map(|n| n.response_value());
    if write_all(
        &stream,
        &handshake::upgrade_response(&key, answer.as_deref()),
    )
    .await
    .is_err()
    {
        return;
    }
    if deflate.is_some() {
        Counters::add(&shard.counters.deflate_negotiated, 1);
    }
    buf.drain(..req.head_len);
    let Io { stream, tls } = stream;
    let tls = tls.into_inner();
    // The token may come on the upgrade (browsers can only use `?token=`); without one the
    // connection is anonymous, or waits for `setup` when anonymous access is not configured.
    let token = handshake::query_value(req.query.as_deref(), "token").or_else(|| {
        req.authorization
            .as_deref()
            .and_then(auth::bearer_token)
            .map(str::to_string)
    });
    let initial: Result<Option<Identity>, AuthError> = match token {
        Some(t) if shard.auth.required() => shard.auth.verify(&t, unix_now()).map(Some),
        _ => Ok(shard.auth.anonymous()),
    };
    // The connection lives on in a task of its own, so what it keeps for its lifetime is only
    // the WebSocket loop's state: the handshake's buffers and the HTTP path's (larger) state
    // are freed with this task.
    match endpoint {
        Endpoint::Echo => {
            glommio::spawn_local(async move { serve_echo(&shard, stream, tls, buf, deflate).await })
                .detach()
        }
        Endpoint::Ws {
            single_topic,
            latest,
        } => glommio::spawn_local(async move {
            let single = single_topic.map(|t| (t, latest));
            serve_ws(&shard, stream, tls, buf, single, initial, deflate).await
        })
        .detach(),
    };
}

/// `?latest=1` (or `true`): start with the topic's newest held message.
pub(super) fn wants_latest(query: Option<&str>) -> bool {
    matches!(
        handshake::query_value(query, "latest").as_deref(),
        Some("1" | "true")
    )
}

fn route_upgrade(shard: &Shard, req: &Request) -> Result<Endpoint, (u16, &'static str, String)> {
    if req.path == "/ws" {
        return Ok(Endpoint::Ws {
            single_topic: None,
            latest: false,
        });
    }
    if req.path == "/echo" && shard.cfg.echo {
        return Ok(Endpoint::Echo);
    }
    if let Some(raw) = req.path.strip_prefix("/ws/sub/") {
        let topic = handshake::decode_segment(raw).ok_or((
            400,
            "BAD_REQUEST",
            "topic is not UTF-8 after percent-decoding".to_string(),
        ))?;
        protocol::validate_topic(&topic, shard.cfg.max_topic_bytes)
            .map_err(|e| (400, "BAD_REQUEST", e.message))?;
        return Ok(Endpoint::Ws {
            single_topic: Some(topic.into()),
            latest: wants_latest(req.query.as_deref()),
        });
    }
    Err((
        404,
        "NOT_FOUND",
        format!("no WebSocket endpoint at {}", req.path),
    ))
}
