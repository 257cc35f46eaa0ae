//! A WebSocket connection's task: registers the connection, reads and decodes frames until it
//! closes, answers control frames, hands each message on, then waits (bounded) for the close
//! frame to be written and tears the connection down.
//!
//! The task only reads and decides; it never writes to the socket itself once the upgrade is
//! done. Everything it sends (answers, pongs, the close frame) is queued with
//! `Shard::enqueue` and written by the flusher with the deliveries, so a reply and a burst of
//! deliveries share one write. The `serve_ws` future lives as long as the connection, so its
//! size is per-connection memory (the test below keeps it small).
//!
//! May touch: its own connection through `Shard` methods. May not: touch other connections or
//! the topic table directly.
//!
//! Next on the path of a publish: [`super::messages`] (`on_text`).

use super::connections::{ConnId, ConnState};
use super::messages::{on_text, subscribe_single_topic};
use super::socket::{read_more_raw, read_tls_plaintext, read_via_scratch, BUSY_READ_BYTES};
use super::Shard;
use crate::auth::{AuthError, Identity};
use crate::metrics::Counters;
use crate::protocol::{ErrorCode, ProtoError};
use crate::readiness::Socket;
use crate::ws::deflate::{self, Inflater, Negotiated};
use crate::ws::frame::{self, Decoder, Message, OpCode, Role};
use futures_lite::future::poll_fn;
use glommio::timer::Timer;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long a closing connection may take to flush its close frame.
const CLOSE_FLUSH_MS: u64 = 1_000;

pub(super) async fn serve_ws(
    shard: &Shard,
    stream: Rc<Socket>,
    tls: Option<Box<rustls::ServerConnection>>,
    buf: Vec<u8>,
    single: Option<(Arc<str>, bool)>,
    initial: Result<Option<Identity>, AuthError>,
    deflate: Option<Negotiated>,
) {
    let fd = stream.fd();
    let (identity, refused) = match initial {
        Ok(i) => (i, None),
        Err(e) => (None, Some(e)),
    };
    let is_known = identity.is_some();
    let id = shard.add_conn(
        stream.clone(),
        // `/ws/sub/{topic}`: the topic, and whether it starts with its newest message.
        single.as_ref().map(|(t, _)| t.clone()),
        identity,
        tls,
        deflate.map_or(0, |n| n.server_window_bits),
    );
    if let Some((_, true)) = single {
        shard.with_conn(id, |c| c.single_latest = true);
    }
    if let Some(e) = refused {
        // A bad token on the upgrade: say why, then close (the socket is upgraded so that a
        // browser can read the reason; an HTTP 401 would reach its code as a bare failure).
        shard.reply_error(id, &e.to_proto());
        shard.begin_close(id, frame::CLOSE_POLICY, "unauthorized");
    } else if shard.account_enter(id) && is_known {
        subscribe_single_topic(shard, id, None);
    }
    let max = shard.cfg.max_message_bytes;
    read_frames(shard, id, &stream, buf, max, deflate, |m| {
        Counters::add(&shard.counters.messages_in, 1);
        match m {
            Message::Text(t) => match std::str::from_utf8(&t) {
                Ok(text) => on_text(shard, id, text),
                Err(_) => shard.begin_close(id, frame::CLOSE_INVALID_PAYLOAD, "invalid UTF-8"),
            },
            Message::Binary(_) => shard.reply_error(
                id,
                &ProtoError::new(
                    ErrorCode::BadRequest,
                    "binary frames are not part of the protocol: send JSON text frames",
                ),
            ),
            _ => {}
        }
    })
    .await;
    finish(shard, id, fd).await;
}

pub(super) async fn serve_echo(
    shard: &Shard,
    stream: Rc<Socket>,
    tls: Option<Box<rustls::ServerConnection>>,
    buf: Vec<u8>,
    deflate: Option<Negotiated>,
) {
    let fd = stream.fd();
    let id = shard.add_conn(stream.clone(), None, shard.auth.anonymous(), tls, 0);
    read_frames(
        shard,
        id,
        &stream,
        buf,
        crate::config::ECHO_MAX_MESSAGE_BYTES,
        deflate,
        |m| {
            let (op, data) = match m {
                Message::Text(d) => (OpCode::Text, d),
                Message::Binary(d) => (OpCode::Binary, d),
                _ => return,
            };
            // Compressed per message (even when that does not shrink it, as Autobahn's reference
            // server does) with the window this client allows, no context kept; a window of 8,
            // which zlib cannot compress with, gets plain frames.
            let compressed = deflate.filter(|n| n.server_window_bits >= 9).and_then(|n| {
                deflate::compress_frame_with(
                    op,
                    &data,
                    shard.cfg.deflate.level,
                    n.server_window_bits,
                    true,
                )
            });
            if let Some(f) = compressed {
                shard.enqueue_uncapped(id, &f);
                return;
            }
            let mut f = Vec::with_capacity(data.len() + frame::MAX_SERVER_HEADER_BYTES);
            frame::write_server_frame(&mut f, op, &data);
            // The echo endpoint is for conformance runs: its replies are not subject to the
            // subscriber backlog cap (a 16 MiB echo must go through).
            shard.enqueue_uncapped(id, &f);
        },
    )
    .await;
    finish(shard, id, fd).await;
}

/// Reads frames until the connection closes; hands each message to `on_message`.
/// Returns when the connection is `Closing` (for any reason).
async fn read_frames(
    shard: &Shard,
    id: ConnId,
    stream: &Socket,
    mut buf: Vec<u8>,
    max_message_bytes: usize,
    deflate: Option<Negotiated>,
    mut on_message: impl FnMut(Message),
) {
    let mut decoder = Decoder::new(Role::Server, max_message_bytes);
    if let Some(n) = &deflate {
        decoder.set_inflater(Inflater::new(n));
    }
    let is_tls = shard.with_conn(id, |c| c.tls.is_some()).unwrap_or(false);
    loop {
        // Decode everything buffered.
        let mut pos = 0;
        loop {
            match decoder.decode(&buf[pos..]) {
                Ok(None) => break,
                Ok(Some((used, msg))) => {
                    pos += used;
                    shard.with_conn(id, |c| c.last_seen = Instant::now());
                    match msg {
                        None => {}
                        Some(Message::Ping(p)) => {
                            let mut f = Vec::with_capacity(p.len() + 2);
                            frame::write_server_frame(&mut f, OpCode::Pong, &p);
                            shard.enqueue(id, &f);
                        }
                        Some(Message::Pong(_)) => {}
                        Some(Message::Close { code, .. }) => {
                            // Echo the code (RFC 6455 5.5.1), then close the TCP side.
                            shard.begin_close(id, code.unwrap_or(frame::CLOSE_NORMAL), "");
                        }
                        Some(m) => on_message(m),
                    }
                    if shard.with_conn(id, |c| c.state) != Some(ConnState::Open) {
                        return;
                    }
                }
                Err(e) => {
                    shard.begin_close(id, e.close_code(), &e.to_string());
                    return;
                }
            }
        }
        buf.drain(..pos);
        if buf.is_empty() {
            // Between messages an idle connection holds no heap read buffer at all.
            buf = Vec::new();
        } else if buf.capacity() > BUSY_READ_BYTES * 4 && buf.len() < BUSY_READ_BYTES {
            buf.shrink_to(BUSY_READ_BYTES);
        }
        // Read more: through the core's scratch buffer while idle, straight into the heap
        // buffer while a message is in progress.
        let read = async {
            if is_tls {
                // Boxed: plain connections' tasks do not carry the TLS read state's size.
                Box::pin(read_tls_plaintext(shard, id, stream, &mut buf)).await
            } else if buf.is_empty() {
                read_via_scratch(shard, stream, &mut buf).await
            } else {
                let want = decoder.bytes_wanted(&buf).clamp(1024, BUSY_READ_BYTES);
                read_more_raw(stream, &mut buf, want).await
            }
        };
        let res = futures_lite::future::or(async { Some(read.await) }, async {
            closing(shard, id).await;
            None
        })
        .await;
        match res {
            None => return,
            Some(Ok(0)) | Some(Err(_)) => {
                // The peer went away without a close frame (or broke TLS: the alert, if any,
                // was written by `read_tls_plaintext`).
                shard.with_conn(id, |c| {
                    c.state = ConnState::Closing;
                    c.close_sent = true;
                    c.clear_out();
                });
                return;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Waits until the connection is `Closing` (registering the task's waker).
pub(super) async fn closing(shard: &Shard, id: ConnId) {
    poll_fn(|cx| match shard.with_conn(id, |c| c.state) {
        Some(ConnState::Open) => {
            shard.with_conn(id, |c| c.task_waker = Some(cx.waker().clone()));
            Poll::Pending
        }
        _ => Poll::Ready(()),
    })
    .await
}

/// After `Closing`: wait (bounded) until the close frame is written, then tear down.
pub(super) async fn finish(shard: &Shard, id: ConnId, fd: i32) {
    let flushed = poll_fn(|cx| match shard.with_conn(id, |c| c.pending()) {
        Some(0) | None => Poll::Ready(()),
        Some(_) => {
            shard.with_conn(id, |c| c.task_waker = Some(cx.waker().clone()));
            Poll::Pending
        }
    });
    futures_lite::future::or(flushed, async {
        Timer::new(Duration::from_millis(CLOSE_FLUSH_MS)).await;
    })
    .await;
    // SAFETY: `fd` belongs to this connection's stream, which is still alive (held by this task
    // until it returns); shutdown(2) does not close the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
    shard.remove_conn(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of_future<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What one idle WebSocket connection costs in its task: the `serve_ws` future is
    /// allocated once per connection for its whole life, so its size is per-connection memory.
    #[test]
    fn the_connection_task_stays_small() {
        let size = glommio::LocalExecutorBuilder::default()
            .io_memory(64 * 1024)
            .spawn(|| async move {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let client = std::net::TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                let cfg = Arc::new(crate::config::Config::default());
                let (mesh, _inboxes) = crate::mesh::build(1, 16);
                let auth = Arc::new(crate::auth::Authenticator::new(&cfg.auth).unwrap());
                let shard = Shard::new(0, 0, cfg, mesh, auth, None, 0, None).unwrap();
                let server = Socket::new(server.into(), &shard.poller).unwrap();
                let f = serve_ws(
                    &shard,
                    Rc::new(server),
                    None,
                    Vec::new(),
                    None,
                    Ok(None),
                    None,
                );
                let size = size_of_future(&f);
                drop(f);
                drop(client);
                size
            })
            .unwrap()
            .join()
            .unwrap();
        let conn = std::mem::size_of::<super::super::connections::Conn>();
        eprintln!("serve_ws future: {size} bytes; Conn: {conn} bytes");
        // Budgets over today's sizes (printed by --nocapture): the task and the
        // slab entry are most of an idle connection's ~2.5 KB (docs/performance.md).
        assert!(size <= 1_024, "serve_ws future grew to {size} bytes");
        assert!(conn <= 256, "Conn grew to {conn} bytes");
    }
}
