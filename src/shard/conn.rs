//! One accepted socket: the HTTP request head, then either plain HTTP (see `http.rs`) or a
//! WebSocket connection served until it closes.
//!
//! The connection task only reads and decides; it never writes to the socket itself once the
//! upgrade is done. Everything it sends (answers, pongs, the close frame) is queued with
//! `Shard::enqueue` and written by the flusher with the deliveries, so a reply and a burst of
//! deliveries share one write. May not: touch other connections or the topic table except
//! through `Shard` methods.

use super::{http, unix_now, ConnId, ConnState, Shard, CLOSE_FLUSH_MS};
use crate::auth::{self, AuthError, AuthFailure, Identity};
use crate::metrics::Counters;
use crate::protocol::{self, ClientMsg, ErrorCode, ProtoError, Topics};
use crate::ws::frame::{self, Decoder, Message, OpCode, Role};
use crate::ws::handshake::{self, Request};
use bytes::Bytes;
use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use std::borrow::Cow;
use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Bytes read per `recv` while a message is in progress (the buffer is on the heap then).
/// Between messages a connection reads into its core's scratch buffer (`Shard::read_scratch`,
/// the same size) and keeps only what arrived: an idle connection holds no read buffer at all.
pub(super) const BUSY_READ_BYTES: usize = 16 * 1024;

/// Reads once into the core's scratch buffer and appends what came to `buf`. Safe to share
/// between connections: glommio's `poll_read` is a non-blocking `recv` into the slice, then a
/// readiness poll that holds no buffer (GLOMMIO-NOTES.md, section 1), so the scratch is used
/// only inside one poll.
async fn read_via_scratch(
    shard: &Shard,
    stream: &RefCell<TcpStream>,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut scratch = shard.read_scratch.borrow_mut();
        match Pin::new(&mut *stream.borrow_mut()).poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

/// Accepts until the task is dropped (at shutdown). Each connection gets its own task.
pub(crate) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
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
            set_send_buffer(stream.as_raw_fd(), shard.cfg.socket_send_buffer_bytes);
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

/// An accepted socket before the WebSocket upgrade (the request head, plain HTTP): plain, or
/// TLS (I7), whose handshake is driven by the first reads. After an upgrade the TLS state moves
/// into the connection (`Conn::tls`), where the flusher seals each write into records.
pub(super) struct Io {
    pub stream: Rc<RefCell<TcpStream>>,
    pub tls: RefCell<Option<Box<rustls::ServerConnection>>>,
}

/// Reads once from the socket into `into`.
async fn raw_read(stream: &RefCell<TcpStream>, into: &mut [u8]) -> io::Result<usize> {
    poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, into)).await
}

/// Writes all of `bytes` to the socket.
async fn raw_write_all(stream: &RefCell<TcpStream>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Reads once from the socket into `buf`'s spare room (at least `want` bytes of room).
async fn read_more_raw(
    stream: &RefCell<TcpStream>,
    buf: &mut Vec<u8>,
    want: usize,
) -> io::Result<usize> {
    let old = buf.len();
    buf.resize(old + want, 0);
    let res = raw_read(stream, &mut buf[old..]).await;
    buf.truncate(old + *res.as_ref().unwrap_or(&0));
    res
}

/// Sends whatever TLS records rustls has ready (handshake messages, alerts, data).
async fn flush_tls(io: &Io) -> io::Result<()> {
    loop {
        let records = {
            let mut tls = io.tls.borrow_mut();
            let Some(t) = tls.as_mut().filter(|t| t.wants_write()) else {
                return Ok(());
            };
            let mut v = Vec::new();
            while t.wants_write() {
                t.write_tls(&mut v)?;
            }
            v
        };
        raw_write_all(&io.stream, &records).await?;
    }
}

/// Moves the plaintext rustls has decrypted into `buf`: `Some(n)` (0: the peer ended the
/// stream), `None` when none is ready.
pub(super) fn take_plaintext(
    t: &mut rustls::ServerConnection,
    buf: &mut Vec<u8>,
    want: usize,
) -> Option<io::Result<usize>> {
    use std::io::Read;
    let old = buf.len();
    buf.resize(old + want, 0);
    let res = t.reader().read(&mut buf[old..]);
    match res {
        Ok(n) => {
            buf.truncate(old + n);
            Some(Ok(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            buf.truncate(old);
            None
        }
        // The peer closed TCP without close_notify: the end of the stream all the same.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            buf.truncate(old);
            Some(Ok(0))
        }
        Err(e) => {
            buf.truncate(old);
            Some(Err(e))
        }
    }
}

/// Feeds received TLS bytes to rustls. An error means a bad peer: the alert (if any) is
/// queued in rustls for the caller to send.
pub(super) fn feed_tls(t: &mut rustls::ServerConnection, mut cipher: &[u8]) -> io::Result<()> {
    while !cipher.is_empty() {
        t.read_tls(&mut cipher)?;
        t.process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(())
}

/// Reads once into `buf`'s spare room (at least `want` bytes of room): plaintext, decrypted
/// when the socket speaks TLS (completing the handshake on the way).
pub(super) async fn read_more(io: &Io, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    if io.tls.borrow().is_none() {
        return read_more_raw(&io.stream, buf, want).await;
    }
    let mut cipher = vec![0u8; 4096];
    loop {
        let ready = io
            .tls
            .borrow_mut()
            .as_mut()
            .and_then(|t| take_plaintext(t, buf, want));
        if let Some(res) = ready {
            return res;
        }
        flush_tls(io).await?;
        let n = raw_read(&io.stream, &mut cipher).await?;
        if n == 0 {
            return Ok(0);
        }
        let fed = io
            .tls
            .borrow_mut()
            .as_mut()
            .map_or(Ok(()), |t| feed_tls(t, &cipher[..n]));
        if let Err(e) = fed {
            let _ = flush_tls(io).await; // the alert, so the peer learns why
            return Err(e);
        }
    }
}

/// Writes all of `bytes` directly (used before a connection joins the flusher: the upgrade
/// answer, plain HTTP answers), encrypted when the socket speaks TLS.
pub(super) async fn write_all(io: &Io, bytes: &[u8]) -> io::Result<()> {
    let sealed = match io.tls.borrow_mut().as_mut() {
        Some(t) => {
            use std::io::Write;
            t.writer().write_all(bytes)?;
            true
        }
        None => false,
    };
    if sealed {
        flush_tls(io).await
    } else {
        raw_write_all(&io.stream, bytes).await
    }
}

/// Reads until a full request head is in `buf`, within the handshake deadline (which covers
/// the TLS handshake too).
pub(super) async fn read_head(
    shard: &Shard,
    stream: &Io,
    buf: &mut Vec<u8>,
) -> Result<Request, HeadFailure> {
    let deadline = Duration::from_millis(shard.cfg.handshake_timeout_ms);
    let read = async {
        loop {
            match handshake::parse_request(buf, shard.cfg.max_request_head_bytes) {
                Ok(Some(req)) => return Ok(req),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Bad(e)),
            }
            match read_more(stream, buf, 2048).await {
                Ok(0) => return Err(HeadFailure::Closed),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(HeadFailure::Tls),
                Err(_) => return Err(HeadFailure::Closed),
                Ok(_) => {}
            }
        }
    };
    futures_lite::future::or(read, async {
        Timer::new(deadline).await;
        Err(HeadFailure::TimedOut)
    })
    .await
}

/// Why no request head was read.
pub(super) enum HeadFailure {
    Closed,
    /// The TLS handshake (or a record) failed: the alert was sent.
    Tls,
    TimedOut,
    Bad(handshake::HeadError),
}

/// Where an upgrade goes.
enum Endpoint {
    Ws { single_topic: Option<Arc<str>> },
    Echo,
}

/// Serves one accepted socket to the end.
async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let fd = stream.as_raw_fd();
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
        stream: Rc::new(RefCell::new(stream)),
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
    if write_all(&stream, &handshake::upgrade_response(&key))
        .await
        .is_err()
    {
        return;
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
            glommio::spawn_local(async move { serve_echo(&shard, stream, tls, fd, buf).await })
                .detach()
        }
        Endpoint::Ws { single_topic } => glommio::spawn_local(async move {
            serve_ws(&shard, stream, tls, fd, buf, single_topic, initial).await
        })
        .detach(),
    };
}

fn route_upgrade(shard: &Shard, req: &Request) -> Result<Endpoint, (u16, &'static str, String)> {
    if req.path == "/ws" {
        return Ok(Endpoint::Ws { single_topic: None });
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
        });
    }
    Err((
        404,
        "NOT_FOUND",
        format!("no WebSocket endpoint at {}", req.path),
    ))
}

/// Waits until the connection is `Closing` (registering the task's waker).
async fn closing(shard: &Shard, id: ConnId) {
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
async fn finish(shard: &Shard, id: ConnId, fd: i32) {
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

/// Reads frames until the connection closes; hands each message to `on_message`.
/// Returns when the connection is `Closing` (for any reason).
async fn read_frames(
    shard: &Shard,
    id: ConnId,
    stream: &RefCell<TcpStream>,
    mut buf: Vec<u8>,
    max_message_bytes: usize,
    mut on_message: impl FnMut(Message),
) {
    let mut decoder = Decoder::new(Role::Server, max_message_bytes);
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

/// TLS after the upgrade: plaintext rustls already holds, else read records (through the
/// core's scratch buffer) and decrypt them. Records rustls wants to send back (alerts, key
/// updates) join the connection's next write.
async fn read_tls_plaintext(
    shard: &Shard,
    id: ConnId,
    stream: &RefCell<TcpStream>,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let ready = shard
            .with_conn(id, |c| {
                let t = c.tls.as_mut()?;
                take_plaintext(&mut t.conn, buf, BUSY_READ_BYTES)
            })
            .flatten();
        if let Some(res) = ready {
            return res;
        }
        let mut cipher = Vec::new();
        let n = read_via_scratch(shard, stream, &mut cipher).await?;
        if n == 0 {
            return Ok(0);
        }
        let cipher = &cipher[..n];
        let fed = shard.with_conn(id, |c| {
            let t = c
                .tls
                .as_mut()
                .expect("a TLS connection keeps its TLS state");
            let res = feed_tls(&mut t.conn, cipher);
            t.drain_records();
            res
        });
        shard.mark_dirty_conn(id);
        match fed {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                Counters::add(&shard.counters.tls_handshake_failures, 1);
                return Err(e);
            }
            None => return Ok(0),
        }
    }
}

async fn serve_echo(
    shard: &Shard,
    stream: Rc<RefCell<TcpStream>>,
    tls: Option<Box<rustls::ServerConnection>>,
    fd: i32,
    buf: Vec<u8>,
) {
    let id = shard.add_conn(stream.clone(), fd, None, shard.auth.anonymous(), tls);
    read_frames(
        shard,
        id,
        &stream,
        buf,
        crate::config::ECHO_MAX_MESSAGE_BYTES,
        |m| {
            let (op, data) = match m {
                Message::Text(d) => (OpCode::Text, d),
                Message::Binary(d) => (OpCode::Binary, d),
                _ => return,
            };
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

async fn serve_ws(
    shard: &Shard,
    stream: Rc<RefCell<TcpStream>>,
    tls: Option<Box<rustls::ServerConnection>>,
    fd: i32,
    buf: Vec<u8>,
    single_topic: Option<Arc<str>>,
    initial: Result<Option<Identity>, AuthError>,
) {
    let (identity, refused) = match initial {
        Ok(i) => (i, None),
        Err(e) => (None, Some(e)),
    };
    let is_known = identity.is_some();
    let id = shard.add_conn(stream.clone(), fd, single_topic.clone(), identity, tls);
    if let Some(e) = refused {
        // A bad token on the upgrade: say why, then close (the socket is upgraded so that a
        // browser can read the reason; an HTTP 401 would reach its code as a bare failure).
        shard.reply_error(id, &e.to_proto());
        shard.begin_close(id, frame::CLOSE_POLICY, "unauthorized");
    } else if is_known {
        subscribe_single_topic(shard, id);
    }
    let max = shard.cfg.max_message_bytes;
    read_frames(shard, id, &stream, buf, max, |m| {
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

/// Handles one Micro Socket message.
fn on_text(shard: &Shard, id: ConnId, text: &str) {
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
                }
                Ok(None) => {}
            }
            let session = shard.session_for(id);
            shard.reply(id, |b| protocol::encode_ready(b, &session));
            if !had {
                subscribe_single_topic(shard, id);
            }
            if !topics.is_empty() {
                subscribe(shard, id, topics, true, None);
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
        ClientMsg::Subscribe { topics, from_seq } => {
            let (list, batch) = split_topics(topics);
            subscribe(shard, id, list, batch, from_seq);
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
                Some(super::PublishWaiter::Conn(id)),
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
            shard.request_replay(id, Arc::from(&*topic), from_seq, false);
        }
        ClientMsg::Resume {
            session_id,
            last_seq_per_topic,
        } => resume(shard, id, &session_id, last_seq_per_topic),
    }
}

/// `/ws/sub/{topic}`: subscribes the connection's own topic once its identity is known (at the
/// upgrade, or after `setup` when authentication is required), checking the read rule.
fn subscribe_single_topic(shard: &Shard, id: ConnId) {
    let Some((Some(topic), Some(identity))) =
        shard.with_conn(id, |c| (c.single_topic.clone(), c.identity.clone()))
    else {
        return;
    };
    if let Err(e) = identity.check_read(&topic) {
        shard.reply_error(id, &e.to_proto());
        shard.begin_close(id, frame::CLOSE_POLICY, "forbidden");
        return;
    }
    if shard.subscription_room() == 0 {
        // A micro socket without its topic is useless: say why and close (1013: try again later).
        shard.reply_error(id, &shard.subscriptions_refused(1).with_topic(&topic));
        shard.begin_close(id, frame::CLOSE_TRY_AGAIN_LATER, "subscription limit");
        return;
    }
    let waits: Vec<u64> = shard.subscribe(id, &topic).into_iter().collect();
    let mut reply = Vec::with_capacity(64);
    protocol::encode_subscribed(&mut reply, &[&topic], false);
    shard.answer_subscribe(id, waits, reply, Vec::new());
}

fn split_topics(t: Topics<'_>) -> (Vec<Cow<'_, str>>, bool) {
    match t {
        Topics::One(t) => (vec![t], false),
        Topics::Many(v) => (v, true),
    }
}

/// Checks the whole request first (all or nothing), then subscribes and answers once.
fn subscribe(
    shard: &Shard,
    id: ConnId,
    topics: Vec<Cow<'_, str>>,
    batch: bool,
    from_seq: Option<u64>,
) {
    let cfg = &shard.cfg;
    if topics.len() > cfg.max_topics_per_request {
        return shard.reply_error(
            id,
            &ProtoError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} topics in one request; at most {} are allowed",
                    topics.len(),
                    cfg.max_topics_per_request
                ),
            ),
        );
    }
    let single = shard.with_conn(id, |c| c.single_topic.clone()).flatten();
    for t in &topics {
        if let Err(e) = protocol::validate_topic(t, cfg.max_topic_bytes) {
            return shard.reply_error(id, &e);
        }
        if let Some(s) = &single {
            if **s != **t {
                return shard.reply_error(
                    id,
                    &ProtoError::new(
                        ErrorCode::SingleTopic,
                        format!("this micro socket serves only '{s}'"),
                    )
                    .with_topic(t),
                );
            }
        }
    }
    if let Some(identity) = shard.with_conn(id, |c| c.identity.clone()).flatten() {
        for t in &topics {
            if let Err(e) = identity.check_read(t) {
                return shard.reply_error(id, &e.to_proto());
            }
        }
    }
    let (have, new) = {
        let table = shard.topics.borrow();
        let have = table.conn_topic_count(id.slot);
        let mut seen = hashbrown::HashSet::new();
        let new = topics
            .iter()
            .filter(|t| !table.is_subscribed(id.slot, t) && seen.insert(&***t))
            .count();
        (have, new)
    };
    if new > shard.subscription_room() {
        let mut e = shard.subscriptions_refused(new);
        if !batch {
            e = e.with_topic(&topics[0]);
        }
        return shard.reply_error(id, &e);
    }
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
        Some(from) => names.iter().map(|t| (Arc::from(*t), from)).collect(),
        None => Vec::new(),
    };
    shard.answer_subscribe(id, waits, reply, replays);
}

/// `resume`: checks the request, then asks for the session (see `Shard::request_resume`).
fn resume(shard: &Shard, id: ConnId, session_id: &str, last: Vec<(Cow<'_, str>, u64)>) {
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

fn unsubscribe(shard: &Shard, id: ConnId, topics: Vec<Cow<'_, str>>, batch: bool) {
    if topics.len() > shard.cfg.max_topics_per_request {
        return shard.reply_error(
            id,
            &ProtoError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} topics in one request; at most {} are allowed",
                    topics.len(),
                    shard.cfg.max_topics_per_request
                ),
            ),
        );
    }
    let single = shard.with_conn(id, |c| c.single_topic.clone()).flatten();
    for t in &topics {
        if let Err(e) = protocol::validate_topic(t, shard.cfg.max_topic_bytes) {
            return shard.reply_error(id, &e);
        }
        if let Some(s) = &single {
            if **s != **t {
                return shard.reply_error(
                    id,
                    &ProtoError::new(
                        ErrorCode::SingleTopic,
                        format!("this micro socket serves only '{s}'"),
                    )
                    .with_topic(t),
                );
            }
        }
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
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let client = glommio::net::TcpStream::connect(addr).await.unwrap();
                let server = listener.accept().await.unwrap();
                let cfg = Arc::new(crate::config::Config::default());
                let (mesh, _inboxes) = crate::mesh::build(1, 16);
                let auth = Arc::new(crate::auth::Authenticator::new(&cfg.auth).unwrap());
                let shard = Shard::new(0, 0, cfg, mesh, auth, None, 0, None).unwrap();
                let fd = server.as_raw_fd();
                let f = serve_ws(
                    &shard,
                    Rc::new(RefCell::new(server)),
                    None,
                    fd,
                    Vec::new(),
                    None,
                    Ok(None),
                );
                let size = size_of_future(&f);
                drop(f);
                drop(client);
                size
            })
            .unwrap()
            .join()
            .unwrap();
        let conn = std::mem::size_of::<super::super::Conn>();
        eprintln!("serve_ws future: {size} bytes; Conn: {conn} bytes");
        // Budgets over today's sizes (printed by --nocapture): the task and the
        // slab entry are most of an idle connection's ~2.5 KB (docs/performance.md).
        assert!(size <= 1_024, "serve_ws future grew to {size} bytes");
        assert!(conn <= 256, "Conn grew to {conn} bytes");
    }
}
