//! Connections as their shard keeps them: [`Conn`] (socket, out buffer, state, identity,
//! session, QoS 1 in-flight set, TLS), registration and removal, and queueing bytes for one
//! connection — answers, errors, the close frame — under the slow-consumer policy
//! (`max_backlog_bytes`, `slow_consumer`).
//!
//! Queueing only appends to `Conn::out` and marks the connection dirty; [`super::write`]
//! writes. Answers are also listed as urgent, so they go out ahead of a big flush.
//!
//! May touch: the connection slab, the dirty and urgent lists, the topic table on removal.
//! May not: write to sockets.
//!
//! On the path of a publish: [`super::fanout`] queues deliveries through [`enqueue_into`];
//! next is [`super::write`].

use super::ladder::Shed;
use super::replay::Replaying;
use super::write::mark_dirty;
use super::Shard;
use crate::auth::Identity;
use crate::config::Config;
use crate::metrics::Counters;
use crate::outbuf::{Kind, OutBuf, Push};
use crate::protocol::{self, ErrorCode, ProtoError};
use crate::qos::Inflight;
use crate::readiness::Socket;
use crate::ws::frame::{self, OpCode};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

/// A connection's identity on its shard: slab slot + generation, so a stale id never reaches a
/// newer connection that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

/// `Conn::behind_at_ms` when the backlog is not over the cap.
pub(crate) const NOT_BEHIND: u16 = u16::MAX;

/// The clock of a blocked connection (`Conn::blocked_ms`) stops here, about 65 s after the
/// socket began refusing bytes: enough for a grace period (at most 60 s, `config.rs`), and a
/// connection blocked for `idle_timeout_ms` is closed anyway.
const BLOCKED_CLOCK_MAX: u16 = NOT_BEHIND - 1;

/// A blocked connection whose socket took bytes within this many milliseconds is draining.
pub(crate) const DRAINING_MS: u32 = 250;

/// What a connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    Open,
    /// A close was decided; nothing but the close frame is queued any more.
    Closing,
}

/// One WebSocket connection as its shard sees it.
pub(crate) struct Conn {
    /// Generation, see [`ConnId`].
    pub gen: u32,
    /// The socket itself (its descriptor, `stream.fd()`, is what io_uring sends name when
    /// it is not a registered file): read by the connection task, written by the blocked-writer task
    /// (closed when the last of them and the connection let go).
    pub stream: Rc<Socket>,
    /// Bytes queued for the socket: frames are appended here once, contiguous, so one write
    /// takes everything pending (coalescing, GLOMMIO-NOTES.md section 4).
    pub out: OutBuf,
    /// Listed in the shard's dirty list for the next flush.
    pub is_dirty: bool,
    /// The socket was full: the blocked-writer task owns writing until it drains.
    pub blocked_since: Option<Instant>,
    /// While blocked: when (milliseconds after `blocked_since`) the backlog went over
    /// `max_backlog_bytes`; [`NOT_BEHIND`] while it is not over. The slow-consumer policy
    /// applies once it has been over for `slow_consumer_grace_ms`. Two bytes, not an
    /// `Instant` (like `progress_at_ms`): they keep `Conn` within its 256-byte budget.
    pub behind_at_ms: u16,
    /// While blocked: when (milliseconds after `blocked_since`) the socket last took bytes. A
    /// connection that took some within `DRAINING_MS` is draining: the core's backlog budget
    /// never picks it.
    pub progress_at_ms: u16,
    /// The task waiting for writability; dropping it cancels it.
    pub blocked_writer: Option<glommio::Task<()>>,
    pub state: ConnState,
    /// A close frame is queued (never queue two).
    pub close_sent: bool,
    /// Its socket is in the write ring's registered files at its slot (unregistered in
    /// `remove_conn`, before the descriptor closes).
    pub fixed_file: bool,
    /// `/ws/sub/{topic}?latest=1`: its topic's subscription starts with the newest held message.
    pub single_latest: bool,
    /// permessage-deflate: deliveries may go compressed with a window of 2^this (0: the
    /// connection did not negotiate it and always gets plain frames). Counted in the mesh's
    /// per-core count of such connections while it lives.
    pub deflate_bits: u8,
    /// Wakes the connection task (to notice `Closing`, or that `out` drained while closing).
    pub task_waker: Option<Waker>,
    /// Deliveries in `out` not yet written, and when the oldest of them was published: one
    /// latency sample per write, counted once per delivery (an upper bound for the later ones).
    pub pending_deliveries: u32,
    /// Its identity's account on this core (per-identity caps, [`super::memory`]).
    pub account: crate::memory::AccountId,
    pub oldest_published_at: Option<Instant>,
    /// Last time any frame arrived (heartbeat).
    pub last_seen: Instant,
    /// Last server ping.
    pub last_ping: Instant,
    /// `/ws/sub/{topic}`: the only topic this connection may (un)subscribe.
    pub single_topic: Option<Arc<str>>,
    /// Who this connection is: `None` until `setup` when authentication is required.
    pub identity: Option<Identity>,
    /// The rare states (a replay under way, the slow-consumer ladder's ranges), boxed
    /// together: `None` almost always, one word per connection.
    rare: Option<Box<Rare>>,
    /// Its session (made by `setup` or taken by `resume`), when it has one.
    pub session: Option<Arc<str>>,
    /// QoS 1 deliveries sent and not acknowledged (I4); `None` while there are none.
    pub inflight: Option<Box<Inflight>>,
    /// The TLS record layer (I7), on a TLS listener.
    pub tls: Option<Box<TlsConn>>,
}

/// A TLS connection's record layer (I7). Frames are queued as plaintext in `Conn::out` like on
/// any connection; each write seals everything pending into records (many frames per record,
/// not one record per frame) once the previous records are all written.
pub(crate) struct TlsConn {
    pub conn: rustls::ServerConnection,
    /// Records waiting for the socket.
    pub cipher: OutBuf<false>,
}

impl TlsConn {
    /// Moves every record rustls has ready into `cipher`.
    pub fn drain_records(&mut self) {
        struct Sink<'a>(&'a mut OutBuf<false>);
        impl std::io::Write for Sink<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push_uncapped(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut Sink(&mut self.cipher)).is_err() {
                break;
            }
        }
    }
}

/// What few connections have at any time: see [`Conn`]'s `rare`.
#[derive(Default)]
struct Rare {
    /// Topics being replayed to this connection, with the live frames held back meanwhile.
    replaying: Option<Replaying>,
    /// The slow-consumer ladder's ranges (to refill, to tell).
    shed: Option<Shed>,
    /// An event stream (`/sse`): its topics and ids. Every frame queued for it is turned into
    /// its event on the way into `out` ([`Conn::push_uncapped`]); set for the stream's life.
    sse: Option<crate::sse::Stream>,
}

impl Conn {
    /// The replays under way, if any. One branch when there is none (the fan-out's path).
    #[inline]
    pub fn replaying_mut(&mut self) -> Option<&mut Replaying> {
        self.rare.as_deref_mut()?.replaying.as_mut()
    }

    pub fn replaying_or_default(&mut self) -> &mut Replaying {
        self.rare
            .get_or_insert_with(Default::default)
            .replaying
            .get_or_insert_with(Default::default)
    }

    pub fn end_replaying(&mut self) {
        if let Some(r) = self.rare.as_deref_mut() {
            r.replaying = None;
        }
        self.tidy_rare();
    }

    /// No rare state at all (no replay under way, nothing shed or refilling): a delivery to
    /// it needs only the backlog check.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.rare.is_none()
    }

    #[inline]
    pub fn has_shed(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.shed.is_some())
    }

    #[inline]
    pub fn shed_mut(&mut self) -> Option<&mut Shed> {
        self.rare.as_deref_mut()?.shed.as_mut()
    }

    /// Takes the ladder's state out (an empty one when there is none); give it back with
    /// [`Conn::put_shed`].
    pub fn take_shed(&mut self) -> Shed {
        let s = self.rare.as_deref_mut().and_then(|r| r.shed.take());
        self.tidy_rare();
        s.unwrap_or_default()
    }

    /// Keeps the ladder's state (nothing when it is empty).
    pub fn put_shed(&mut self, s: Shed) {
        if s.is_empty() {
            if let Some(r) = self.rare.as_deref_mut() {
                r.shed = None;
            }
            self.tidy_rare();
        } else {
            self.rare.get_or_insert_with(Default::default).shed = Some(s);
        }
    }

    /// Makes this connection an event stream (before anything is queued for it).
    pub fn set_sse(&mut self, s: crate::sse::Stream) {
        self.rare.get_or_insert_with(Default::default).sse = Some(s);
    }

    /// An event stream (`/sse`), not a WebSocket.
    #[inline]
    pub fn is_sse(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.sse.is_some())
    }

    /// A one-topic event stream with no other rare state (no replay under way, nothing shed):
    /// like a plain connection it takes a batch of shared events in one copy.
    #[inline]
    pub fn plain_single_sse(&mut self) -> Option<&mut crate::sse::Stream> {
        let r = self.rare.as_deref_mut()?;
        if r.replaying.is_some() || r.shed.is_some() {
            return None;
        }
        r.sse.as_mut().filter(|s| s.is_single())
    }

    #[inline]
    pub fn sse_mut(&mut self) -> Option<&mut crate::sse::Stream> {
        self.rare.as_deref_mut()?.sse.as_mut()
    }

    /// On an event stream, what the finished server frame `frame` is there (possibly nothing:
    /// a pong), built for this stream ([`crate::sse::Stream::convert_frame`], O(len)); `None`
    /// on a WebSocket, which takes the frame as it is.
    fn sse_event(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let s = self.sse_mut()?;
        let mut ev = Vec::with_capacity(frame.len() + 32);
        s.convert_frame(frame, &mut ev);
        Some(ev)
    }

    /// Appends a finished server frame without the cap; on an event stream, its event instead.
    pub fn push_uncapped(&mut self, frame: &[u8]) {
        match self.sse_event(frame) {
            None => self.out.push_uncapped(frame),
            Some(ev) if ev.is_empty() => {}
            Some(ev) => self.out.push_uncapped(&ev),
        }
    }

    /// Queues a delivery in the form this connection takes: the plain or the compressed frame,
    /// or on an event stream its event (the owner's shared one, or built here when the owner
    /// had none). Counted in `deliveries_deflated` / `deliveries_sse`. O(len).
    pub fn push_delivery(&mut self, d: &crate::mesh::Delivery, counters: &Counters) {
        let Conn {
            rare,
            out,
            deflate_bits,
            ..
        } = self;
        match rare.as_deref_mut().and_then(|r| r.sse.as_mut()) {
            None => {
                let f = d.frame_for(*deflate_bits);
                out.push_uncapped(f);
                if !std::ptr::eq(f, &d.frame) {
                    Counters::add(&counters.deliveries_deflated, 1);
                }
            }
            Some(s) => {
                Counters::add(&counters.deliveries_sse, 1);
                match &d.sse {
                    Some(ev) => s.push_delivery(&d.topic, d.seq_no, ev, |b| out.push_uncapped(b)),
                    None => {
                        Counters::add(&counters.sse_built_for_one, 1);
                        let mut ev = Vec::with_capacity(d.frame.len() + 32);
                        s.convert_frame(&d.frame, &mut ev);
                        out.push_uncapped(&ev);
                    }
                }
            }
        }
    }

    fn tidy_rare(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.replaying.is_none() && r.shed.is_none() && r.sse.is_none())
        {
            self.rare = None;
        }
    }

    /// Bytes queued and not yet taken by the kernel (plaintext and sealed records).
    #[inline]
    pub fn pending(&self) -> usize {
        self.out.pending() + self.tls.as_ref().map_or(0, |t| t.cipher.pending())
    }

    /// TLS: seals the queued plaintext into records once the previous ones are written.
    #[inline]
    pub(super) fn seal(&mut self) {
        let Some(t) = self.tls.as_mut() else {
            return;
        };
        if t.cipher.pending() > 0 {
            return;
        }
        let plain = self.out.pending_bytes();
        if !plain.is_empty() {
            use std::io::Write;
            if let Ok(n) = t.conn.writer().write(plain) {
                self.out.advance(n);
            }
        }
        t.drain_records();
    }

    /// What the next write sends: the queued bytes, or the sealed records (call `seal` first).
    #[inline]
    pub(super) fn wire_bytes(&self) -> &[u8] {
        match &self.tls {
            None => self.out.pending_bytes(),
            Some(t) => t.cipher.pending_bytes(),
        }
    }

    /// `n` bytes of `wire_bytes` were written; true when all of them were.
    #[inline]
    pub(super) fn advance_wire(&mut self, n: usize) -> bool {
        match &mut self.tls {
            None => self.out.advance(n),
            Some(t) => t.cipher.advance(n),
        }
    }

    /// Is this connection a slow consumer if `extra` more bytes are queued? Only while its
    /// socket refuses bytes (`blocked_since`): bytes the writer has not offered to the kernel
    /// yet say nothing about the reader. Over `cap` while blocked starts the grace period
    /// (`behind_at_ms`); slow once it is over.
    #[inline]
    pub(super) fn is_slow(&mut self, extra: usize, cap: usize, grace: Duration) -> bool {
        if self.blocked_since.is_none() || self.pending() + extra <= cap {
            return false;
        }
        let now_ms = self.blocked_ms(Instant::now());
        if self.behind_at_ms == NOT_BEHIND {
            self.behind_at_ms = now_ms;
        }
        u128::from(now_ms - self.behind_at_ms.min(now_ms)) >= grace.as_millis()
    }

    /// Milliseconds since this connection's socket began refusing bytes (0 when it is not).
    /// (Stops at `BLOCKED_CLOCK_MAX`.)
    fn blocked_ms(&self, now: Instant) -> u16 {
        self.blocked_since.map_or(0, |b| {
            now.saturating_duration_since(b)
                .as_millis()
                .min(u128::from(BLOCKED_CLOCK_MAX)) as u16
        })
    }

    /// Blocked, and its socket took nothing for `DRAINING_MS`: a reader that stopped (or
    /// nearly), which the core's backlog budget may pick.
    pub(super) fn is_stalled(&self, now: Instant) -> bool {
        self.blocked_since.is_some() && self.stalled_ms(now) >= DRAINING_MS
    }

    /// Milliseconds since the blocked socket last took bytes (0 when not blocked).
    pub(super) fn stalled_ms(&self, now: Instant) -> u32 {
        u32::from(self.blocked_ms(now).saturating_sub(self.progress_at_ms))
    }

    /// The blocked socket took bytes just now.
    pub(super) fn progressed(&mut self) {
        self.progress_at_ms = self.blocked_ms(Instant::now());
    }

    /// Bytes were written: back under `cap`, the grace period ends.
    #[inline]
    pub(super) fn wrote(&mut self, cap: usize) {
        if self.behind_at_ms != NOT_BEHIND && self.pending() <= cap {
            self.behind_at_ms = NOT_BEHIND;
        }
    }

    /// Forgets everything queued (the peer is gone).
    pub fn clear_out(&mut self) {
        self.out.clear();
        if let Some(t) = self.tls.as_mut() {
            t.cipher.clear();
        }
    }
}

/// Result of queueing bytes for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    Queued,
    /// Over `max_backlog_bytes` with the `drop` policy: not queued.
    Dropped,
    /// Over `max_backlog_bytes` with the `disconnect` policy: the connection is now closing.
    Disconnected,
    /// The connection is closing or gone.
    Gone,
    /// A `refill` topic being refilled: discarded, its replay will bring it (see
    /// [`super::ladder`]).
    Refilling,
}

/// Appends to a connection's out buffer, applying the slow-consumer policy to a connection
/// that [`Conn::is_slow`] judges slow; any other is queued whatever its backlog. O(len).
pub(super) fn enqueue_into(
    c: &mut Conn,
    bytes: &[u8],
    kind: Kind,
    cfg: &Config,
    counters: &Counters,
) -> Enqueued {
    if c.state != ConnState::Open {
        return Enqueued::Gone;
    }
    let grace = Duration::from_millis(cfg.slow_consumer_grace_ms);
    let cap = if c.is_slow(bytes.len(), cfg.max_backlog_bytes, grace) {
        cfg.max_backlog_bytes
    } else {
        usize::MAX
    };
    let event = c.sse_event(bytes);
    let bytes = match &event {
        None => bytes,
        Some(ev) if ev.is_empty() => return Enqueued::Queued,
        Some(ev) => {
            Counters::add(&counters.sse_built_for_one, 1);
            &ev[..]
        }
    };
    match c.out.push(bytes, kind, cap, cfg.slow_consumer) {
        Push::Queued => Enqueued::Queued,
        Push::Dropped => {
            Counters::add(&counters.drops, 1);
            Enqueued::Dropped
        }
        Push::OverLimit => {
            cut_slow_consumer(c, behind_for_too_long(cfg), counters);
            Enqueued::Disconnected
        }
    }
}

/// Why a connection is a slow consumer, for its `SLOW_CONSUMER` error.
pub(super) fn behind_for_too_long(cfg: &Config) -> String {
    format!(
        "more than {} bytes queued for {} ms while the socket took no more: closing",
        cfg.max_backlog_bytes, cfg.slow_consumer_grace_ms
    )
}

/// The slow-consumer cut: `error` `SLOW_CONSUMER` saying `why`, then close 1008 (counted). The
/// caller marks the connection dirty.
pub(super) fn cut_slow_consumer(c: &mut Conn, why: String, counters: &Counters) {
    Counters::add(&counters.slow_consumer_disconnects, 1);
    let err = ProtoError::new(ErrorCode::SlowConsumer, why);
    let mut b = Vec::with_capacity(128);
    protocol::encode_error(&mut b, &err);
    c.push_uncapped(&b);
    close_conn(c, frame::CLOSE_POLICY, "slow consumer");
}

/// The socket failed (EPIPE, ECONNRESET, …): nothing more can be written; close.
pub(super) fn peer_gone(c: &mut Conn) {
    c.clear_out();
    c.close_sent = true;
    c.state = ConnState::Closing;
    if let Some(w) = c.task_waker.take() {
        w.wake();
    }
}

/// Marks `Closing` and queues the close frame once.
pub(super) fn close_conn(c: &mut Conn, code: u16, reason: &str) {
    if !c.close_sent {
        c.close_sent = true;
        let mut f = Vec::with_capacity(frame::MAX_SERVER_HEADER_BYTES + 125);
        frame::write_server_frame(&mut f, OpCode::Close, &frame::close_payload(code, reason));
        c.push_uncapped(&f);
    }
    c.state = ConnState::Closing;
    if let Some(w) = c.task_waker.take() {
        w.wake();
    }
}

impl Shard {
    /// Registers an upgraded connection.
    pub(crate) fn add_conn(
        &self,
        stream: Rc<Socket>,
        single_topic: Option<Arc<str>>,
        identity: Option<Identity>,
        tls: Option<Box<rustls::ServerConnection>>,
        deflate_bits: u8,
    ) -> ConnId {
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        let now = Instant::now();
        // The first ping at a spread-out moment (a hash of the generation over one interval):
        // a burst of connections (a reconnect storm, a benchmark) must not have every ping due
        // in the same sweep, then again together every interval.
        let spread = (u64::from(gen).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32)
            % self.cfg.ping_interval_ms.max(1);
        let last_ping = now
            .checked_sub(Duration::from_millis(spread))
            .unwrap_or(now);
        let fd = stream.fd();
        let slot = self.conns.borrow_mut().insert(Conn {
            gen,
            stream,
            out: OutBuf::new(),
            is_dirty: false,
            blocked_since: None,
            behind_at_ms: NOT_BEHIND,
            progress_at_ms: 0,
            blocked_writer: None,
            state: ConnState::Open,
            close_sent: false,
            fixed_file: false,
            single_latest: false,
            deflate_bits,
            task_waker: None,
            pending_deliveries: 0,
            account: super::memory::NO_ACCOUNT,
            oldest_published_at: None,
            last_seen: now,
            last_ping,
            single_topic,
            identity,
            rare: None,
            session: None,
            inflight: None,
            tls: tls.map(|conn| {
                Box::new(TlsConn {
                    conn: *conn,
                    cipher: OutBuf::default(),
                })
            }),
        });
        let fixed = self.writes.register_file(slot as u32, fd);
        if let Some(c) = self.conns.borrow_mut().get_mut(slot) {
            c.fixed_file = fixed;
        }
        Counters::add(&self.counters.ws_opened, 1);
        if deflate_bits != 0 {
            self.mesh.count_deflater(self.id, true);
        }
        ConnId {
            slot: slot as u32,
            gen,
        }
    }

    /// Removes a connection and every subscription it held. Called by its own task, last.
    pub(crate) fn remove_conn(&self, id: ConnId) {
        self.detach_session(id);
        self.account_close(id);
        // Its subscriptions' wanted forms go first (the owner hears them before any interest
        // down below).
        let (z, s) = self
            .with_conn(id, |c| (c.deflate_bits != 0, c.is_sse()))
            .unwrap_or_default();
        if z || s {
            let held: Vec<Arc<str>> = self.topics.borrow().topics_of(id.slot).cloned().collect();
            for t in &held {
                self.count_forms(t, z, s, false);
            }
        }
        let mut emptied: Vec<Arc<str>> = Vec::new();
        self.topics
            .borrow_mut()
            .remove_conn(id.slot, |t| emptied.push(t.clone()));
        self.bump_table_version();
        for t in emptied {
            self.interest(t, false);
        }
        let removed = {
            let mut conns = self.conns.borrow_mut();
            match conns.get(id.slot as usize) {
                Some(c) if c.gen == id.gen => Some(conns.remove(id.slot as usize)),
                _ => None,
            }
        };
        if removed.as_ref().is_some_and(|c| c.deflate_bits != 0) {
            self.mesh.count_deflater(self.id, false);
        }
        let was_sse = removed.as_ref().is_some_and(|c| c.is_sse());
        if was_sse {
            self.mesh.count_sse_stream(self.id, false);
            Counters::add(&self.counters.sse_closed, 1);
        }
        if removed.as_ref().is_some_and(|c| c.fixed_file) {
            // Before the descriptor closes: the table holds a reference to the socket.
            self.writes.unregister_file(id.slot);
        }
        // Dropping the Conn drops its blocked-writer task (cancelling it) outside the borrow.
        drop(removed);
        if !was_sse {
            Counters::add(&self.counters.ws_closed, 1);
        }
        if self.shutting_down.get() && self.conns.borrow().is_empty() {
            self.wake_shutdown_waiters();
        }
    }

    /// Runs `f` on the connection if `id` is still live.
    pub(crate) fn with_conn<R>(&self, id: ConnId, f: impl FnOnce(&mut Conn) -> R) -> Option<R> {
        let mut conns = self.conns.borrow_mut();
        match conns.get_mut(id.slot as usize) {
            Some(c) if c.gen == id.gen => Some(f(c)),
            _ => None,
        }
    }

    /// Queues an answer (a complete frame) for one connection. O(len).
    pub(crate) fn enqueue(&self, id: ConnId, bytes: &[u8]) -> Enqueued {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return Enqueued::Gone;
        };
        let res = enqueue_into(c, bytes, Kind::Reply, &self.cfg, &self.counters);
        if res == Enqueued::Queued || res == Enqueued::Disconnected {
            mark_dirty(c, id.slot, &mut self.writes.dirty.borrow_mut());
            if c.blocked_since.is_none() {
                self.writes.urgent.borrow_mut().push(id.slot);
            }
        }
        drop(conns);
        self.wake_flusher();
        res
    }

    /// Schedules a write of whatever the connection has pending (TLS records queued by a read).
    pub(crate) fn mark_dirty_conn(&self, id: ConnId) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return;
        };
        if c.pending() > 0 {
            mark_dirty(c, id.slot, &mut self.writes.dirty.borrow_mut());
            drop(conns);
            self.wake_flusher();
        }
    }

    /// Queues bytes without the backlog cap (the conformance echo endpoint only).
    pub(crate) fn enqueue_uncapped(&self, id: ConnId, bytes: &[u8]) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns
            .get_mut(id.slot as usize)
            .filter(|c| c.gen == id.gen && c.state == ConnState::Open)
        else {
            return;
        };
        c.out.push_uncapped(bytes);
        mark_dirty(c, id.slot, &mut self.writes.dirty.borrow_mut());
        drop(conns);
        self.wake_flusher();
    }

    /// Queues a frame built by `build` (protocol answers), bypassing nothing.
    pub(crate) fn reply(&self, id: ConnId, build: impl FnOnce(&mut Vec<u8>)) {
        let mut buf = Vec::with_capacity(128);
        build(&mut buf);
        self.enqueue(id, &buf);
    }

    /// Sends a protocol `error` to the connection.
    pub(crate) fn reply_error(&self, id: ConnId, err: &ProtoError) {
        Counters::add(&self.counters.protocol_errors, 1);
        self.reply(id, |b| protocol::encode_error(b, err));
    }

    /// Decides to close: queues a close frame (once), marks `Closing` and wakes the
    /// connection task, which flushes and tears down.
    pub(crate) fn begin_close(&self, id: ConnId, code: u16, reason: &str) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return;
        };
        close_conn(c, code, reason);
        mark_dirty(c, id.slot, &mut self.writes.dirty.borrow_mut());
        drop(conns);
        self.wake_flusher();
    }
}
