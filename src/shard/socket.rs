//! Socket plumbing of the connection tasks: reads (through the core's scratch buffer while
//! idle), direct writes before a connection joins the flusher, and the TLS record layer on the
//! read side (handshake, decryption, alerts).
//!
//! After the upgrade nothing here writes: every byte for a WebSocket connection goes through
//! `Conn::out` and the flusher ([`super::write`]); TLS records that a read makes rustls want to
//! send are queued there too (`Shard::mark_dirty_conn`).
//!
//! May touch: one socket and its TLS state; `Shard::read_scratch`. May not: touch the topic
//! table, other connections, or queue frames.
//!
//! Used by [`super::accept`], [`super::http`] and [`super::reader`].

use super::connections::ConnId;
use super::Shard;
use crate::metrics::Counters;
use crate::readiness::Socket;
use crate::ws::handshake::{self, Request};
use futures_lite::future::poll_fn;
use glommio::timer::Timer;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

/// Bytes read per `recv` while a message is in progress (the buffer is on the heap then).
/// Between messages a connection reads into its core's scratch buffer (`Shard::read_scratch`,
/// the same size) and keeps only what arrived: an idle connection holds no read buffer at all.
pub(super) const BUSY_READ_BYTES: usize = 16 * 1024;

/// An accepted socket before the WebSocket upgrade (the request head, plain HTTP): plain, or
/// TLS (I7), whose handshake is driven by the first reads. After an upgrade the TLS state moves
/// into the connection (`Conn::tls`), where the flusher seals each write into records.
pub(super) struct Io {
    pub stream: Rc<Socket>,
    pub tls: RefCell<Option<Box<rustls::ServerConnection>>>,
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

/// Reads once into the core's scratch buffer and appends what came to `buf`. Safe to share
/// between connections: `Socket::poll_read` is a non-blocking `recv` into the slice, then a
/// readiness poll that holds no buffer ([`crate::readiness`]), so the scratch is used
/// only inside one poll.
pub(super) async fn read_via_scratch(
    shard: &Shard,
    stream: &Socket,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut scratch = shard.read_scratch.borrow_mut();
        match stream.poll_read(cx, &mut scratch[..]) {
            Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

/// TLS after the upgrade: plaintext rustls already holds, else read records (through the
/// core's scratch buffer) and decrypt them. Records rustls wants to send back (alerts, key
/// updates) join the connection's next write.
pub(super) async fn read_tls_plaintext(
    shard: &Shard,
    id: ConnId,
    stream: &Socket,
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

/// Reads once from the socket into `into`.
async fn raw_read(stream: &Socket, into: &mut [u8]) -> io::Result<usize> {
    stream.read(into).await
}

/// Writes all of `bytes` to the socket.
async fn raw_write_all(stream: &Socket, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await
}

/// Reads once from the socket into `buf`'s spare room (at least `want` bytes of room).
pub(super) async fn read_more_raw(
    stream: &Socket,
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
