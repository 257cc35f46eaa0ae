//! `Shard`: everything one core owns, and the tasks that run on it.
//!
//! A shard is one glommio executor pinned to one core. It owns its connections (a slab), its
//! [`TopicTable`], the [`Sequencer`] state of the topics it owns, its counters and its write
//! ring. It is the only place with `Rc`/`RefCell` state, and none of it is `Send`: the compiler
//! keeps it on its core. It may not lock, block, call std::net, or hold anything of another
//! shard's except the [`Mesh`] senders.
//!
//! Tasks per shard:
//! - the accept loop (`conn::accept_loop`), one task per connection (`conn::serve`);
//! - the dispatcher: drains the local fan-out queue and the cross-core inbox;
//! - the flusher: once per loop turn, writes every dirty connection once (io_uring batch);
//! - the sweeper: heartbeats and idle timeouts, once a second;
//! - the outbox drainer, only while a peer's inbox is full.
//!
//! Borrow rule: a `RefCell` of the shard is borrowed only between two `.await`s, never across
//! one, and fan-out never calls back into connection code (it only appends bytes and marks
//! connections dirty), so no borrow can be re-entered.

mod conn;
mod http;

use crate::auth::{Authenticator, Identity};
use crate::backbone::{BackboneCmd, BackboneTx};
use crate::config::Config;
use crate::history::{History, HistoryRule, Pattern, ReplayError};
use crate::mesh::{Delivery, Inbox, Mesh, PublishReq, Published, ReplayAnswer, ShardId, ShardMsg};
use crate::metrics::{Counters, LatencyRecorder, Snapshot};
use crate::outbuf::{Kind, OutBuf, Push};
use crate::protocol::{self, AckStatus, ErrorCode, ProtoError};
use crate::publish::{Dedup, IdGen, Sequencer};
use crate::qos::{Inflight, QosMsg, Track, Unacked};
use crate::session::{self, Detached, Held, Sessions, TakeError};
use crate::signing::Signer;
use crate::topics::TopicTable;
use crate::uring::{SendOp, Writer};
use crate::ws::frame::{self, OpCode};
use bytes::Bytes;
use crossbeam_channel::TrySendError;
use futures_lite::future::poll_fn;
use glommio::channels::local_channel::LocalSender;
use glommio::net::TcpStream;
use glommio::timer::Timer;
use hashbrown::HashMap;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

pub(crate) use conn::accept_loop;

/// Cross-core messages waiting for full inboxes, over all peers, before publishes are refused.
const OUTBOX_MAX_MESSAGES: usize = 256 * 1024;
/// A replay "from the next message": no frames, only the seam (see `Shard::session_taken`).
const FROM_NOW: u64 = u64::MAX;
/// How long a closing connection may take to flush its close frame.
const CLOSE_FLUSH_MS: u64 = 1_000;

/// A connection's identity on its shard: slab slot + generation, so a stale id never reaches a
/// newer connection that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId {
    pub slot: u32,
    pub gen: u32,
}

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
    /// The socket, for io_uring sends.
    pub fd: RawFd,
    /// The glommio stream: read by the connection task; written by the blocked-writer task.
    pub stream: Rc<RefCell<TcpStream>>,
    /// Bytes queued for the socket: frames are appended here once, contiguous, so one write
    /// takes everything pending (coalescing, GLOMMIO-NOTES.md section 4).
    pub out: OutBuf,
    /// Listed in the shard's dirty list for the next flush.
    pub is_dirty: bool,
    /// The socket was full: the blocked-writer task owns writing until it drains.
    pub blocked_since: Option<Instant>,
    /// The task waiting for writability; dropping it cancels it.
    pub blocked_writer: Option<glommio::Task<()>>,
    pub state: ConnState,
    /// A close frame is queued (never queue two).
    pub close_sent: bool,
    /// Wakes the connection task (to notice `Closing`, or that `out` drained while closing).
    pub task_waker: Option<Waker>,
    /// Deliveries in `out` not yet written, and when the oldest of them was published: one
    /// latency sample per write, counted once per delivery (an upper bound for the later ones).
    pub pending_deliveries: u32,
    pub oldest_published_at: Option<Instant>,
    /// Last time any frame arrived (heartbeat).
    pub last_seen: Instant,
    /// Last server ping.
    pub last_ping: Instant,
    /// `/ws/sub/{topic}`: the only topic this connection may (un)subscribe.
    pub single_topic: Option<Arc<str>>,
    /// Who this connection is: `None` until `setup` when authentication is required.
    pub identity: Option<Identity>,
    /// Topics being replayed to this connection, with the live frames held back meanwhile.
    /// `None` almost always (boxed: costs one word per connection).
    pub replaying: Option<Box<Replaying>>,
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
    pub cipher: OutBuf,
}

impl TlsConn {
    /// Moves every record rustls has ready into `cipher`.
    pub fn drain_records(&mut self) {
        struct Sink<'a>(&'a mut OutBuf);
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

impl Conn {
    /// Bytes queued and not yet taken by the kernel (plaintext and sealed records).
    #[inline]
    pub fn pending(&self) -> usize {
        self.out.pending() + self.tls.as_ref().map_or(0, |t| t.cipher.pending())
    }

    /// TLS: seals the queued plaintext into records once the previous ones are written.
    #[inline]
    fn seal(&mut self) {
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
    fn wire_bytes(&self) -> &[u8] {
        match &self.tls {
            None => self.out.pending_bytes(),
            Some(t) => t.cipher.pending_bytes(),
        }
    }

    /// `n` bytes of `wire_bytes` were written; true when all of them were.
    #[inline]
    fn advance_wire(&mut self, n: usize) -> bool {
        match &mut self.tls {
            None => self.out.advance(n),
            Some(t) => t.cipher.advance(n),
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

/// Topics being replayed to a connection, each with the live frames held back meanwhile.
#[derive(Default)]
pub(crate) struct Replaying {
    topics: Vec<(Arc<str>, Vec<Delivery>)>,
    /// Replays of a `resume` still to come; `resumed` is queued when the last one is written.
    resume_left: u32,
}

/// The answer an HTTP request task waits for.
#[derive(Debug)]
pub(crate) enum Reply {
    Published(Published),
    /// The publish was not accepted (clusters: `BACKBONE_UNAVAILABLE`).
    PublishFailed(ProtoError),
    Stats(Box<Snapshot>),
}

/// Someone on this shard waiting for another shard's answer.
enum Pending {
    /// A WebSocket `publish`: answer with `ack` on this connection.
    ConnAck(ConnId),
    /// A `replay` (or `subscribe` with `fromSeq`, or one topic of a `resume`) of a connection.
    Replay {
        conn: ConnId,
        topic: Arc<str>,
        for_resume: bool,
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

/// A backbone subscription of an owned topic (clusters).
struct BbSub {
    /// Names this subscription to the backbone thread (a later one for the same topic gets a
    /// new one, so a late answer to an ended one is ignored).
    gen: u64,
    /// The backbone confirmed it: gained interests are acknowledged at once.
    live: bool,
    /// (core, token) of the `InterestAck`s waiting for it to go live.
    waiters: Vec<(ShardId, u64)>,
    /// Replays asked for before it went live (topic, fromSeq, reply_to, partial): answered
    /// once live delivery has a known starting point, so replay and live feed meet exactly.
    replays: Vec<DeferredReplay>,
}

/// A replay that waits for its topic's backbone subscription to go live.
struct DeferredReplay {
    topic: Arc<str>,
    from_seq: u64,
    reply_to: (ShardId, u64),
    partial: bool,
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
}

/// One core's state. See the module doc.
pub(crate) struct Shard {
    /// Index among the shards (what `owner_shard` returns).
    pub id: ShardId,
    /// CPU this shard is pinned to.
    pub core: usize,
    pub cfg: Arc<Config>,
    pub mesh: Mesh,
    pub conns: RefCell<Slab<Conn>>,
    /// Generation counter for new connections.
    next_gen: Cell<u32>,
    pub topics: RefCell<TopicTable>,
    /// Sequencing state of the topics this shard owns.
    pub seq: RefCell<Sequencer>,
    /// The duplicate window of the topics this shard owns (I2).
    dedup: RefCell<Dedup>,
    /// Verifies tokens and API keys (shared, immutable: built once at startup).
    pub auth: Arc<Authenticator>,
    /// `Some`: every connection speaks TLS (I7).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections with bytes to write at the next flush.
    dirty: RefCell<Vec<u32>>,
    /// Connections with an answer queued (pong, ack, error): written before the next chunk
    /// of a big flush, so a huge fan-out does not make a client wait for its pong.
    urgent: RefCell<Vec<u32>>,
    flush_waker: RefCell<Option<Waker>>,
    writer: RefCell<Writer>,
    pub counters: Counters,
    /// Publish-to-write latency of deliveries written by this core (I5).
    pub latency: LatencyRecorder,
    /// Deliveries sequenced here for local subscribers, in seqNo order per topic.
    local_fanout: RefCell<VecDeque<LocalWork>>,
    /// History of the topics this shard owns (I6).
    history: RefCell<History>,
    /// Topics whose gained interest is not yet acknowledged by their owner -> the token of
    /// the latest `Interest` sent (subscribers of those topics wait for it).
    interest_pending: RefCell<HashMap<Arc<str>, u64>>,
    /// Per connection, its subscribe answers still waiting (tokens in request order): answers
    /// go out in the order the requests came, even when a later one is ready first.
    subscribe_order: RefCell<HashMap<ConnId, VecDeque<u64>>>,
    /// Sessions held here, and where those made here are (I6 `resume`).
    sessions: RefCell<Sessions<ConnId>>,
    /// `qos1_topics`, parsed.
    qos1_topics: Vec<Pattern>,
    /// Signs every delivery this shard sequences (I7), when configured.
    signer: Option<Signer>,
    /// The cluster backbone, when this gateway is one node of a cluster.
    pub backbone: Option<BackboneTx>,
    /// `[cluster] local_topics`, parsed: sequenced here, never sent over the backbone.
    local_topics: Vec<Pattern>,
    /// Owned topics this node subscribes to on the backbone (clusters).
    bb_subs: RefCell<HashMap<Arc<str>, BbSub>>,
    bb_gen: Cell<u64>,
    dispatcher_waker: RefCell<Option<Waker>>,
    /// Per peer, messages that found its inbox full, in order.
    outbox: RefCell<Vec<VecDeque<ShardMsg>>>,
    outbox_len: Cell<usize>,
    outbox_draining: Cell<bool>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_token: Cell<u64>,
    pub ids: RefCell<IdGen>,
    /// Bumped by every change of the topic table; a sliced fan-out that sees it move re-checks
    /// each slot of its snapshot before writing.
    table_version: Cell<u64>,
    fanout_scratch: RefCell<Vec<u32>>,
    /// Every idle connection's reads land here first (see `conn::read_via_scratch`).
    read_scratch: RefCell<Box<[u8]>>,
    pub shutting_down: Cell<bool>,
    /// Wakes the accept loop and the main future on shutdown.
    shutdown_wakers: RefCell<Vec<Waker>>,
}

impl Shard {
    // Each argument is one independent piece of a core's setup; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: ShardId,
        core: usize,
        cfg: Arc<Config>,
        mesh: Mesh,
        auth: Arc<Authenticator>,
        tls: Option<Arc<rustls::ServerConfig>>,
        boot: u64,
        backbone: Option<BackboneTx>,
    ) -> std::io::Result<Shard> {
        let local_topics = cfg
            .cluster
            .as_ref()
            .map(|c| c.local_topics.iter().map(|p| Pattern::parse(p)).collect())
            .transpose()
            .map_err(std::io::Error::other)?
            .unwrap_or_default();
        let writer = Writer::new(cfg.write_path, cfg.write_ring_entries)?;
        let latency = LatencyRecorder::new(cfg.latency_objectives_us.clone());
        let mut history_cfg = cfg.history.clone();
        history_cfg.qos1_fallback = Some(HistoryRule {
            pattern: "*".into(),
            max_messages: Some(cfg.qos1_history_max_messages),
            max_bytes: None,
            max_age_ms: Some(cfg.qos1_history_max_age_ms),
        });
        let history = History::new(history_cfg).map_err(std::io::Error::other)?;
        let qos1_topics = cfg
            .qos1_topics
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        let signer = match &cfg.signing {
            Some(s) => {
                Some(Signer::from_file(&s.key_id, &s.key_hex_file).map_err(std::io::Error::other)?)
            }
            None => None,
        };
        let mut sessions = Sessions::new(
            Duration::from_millis(cfg.session_ttl_ms),
            cfg.max_detached_sessions_per_core,
        );
        if let Some(bb) = &backbone {
            sessions = sessions.with_node_tag(&session::tag_of_node(&bb.node));
        }
        let dedup = Dedup::new(
            Duration::from_millis(cfg.dedup_window_ms),
            cfg.dedup_max_entries,
        );
        let n = mesh.len();
        Ok(Shard {
            id,
            core,
            cfg,
            mesh,
            conns: RefCell::new(Slab::new()),
            next_gen: Cell::new(0),
            topics: RefCell::new(TopicTable::new()),
            seq: RefCell::new(Sequencer::default()),
            dedup: RefCell::new(dedup),
            auth,
            tls,
            dirty: RefCell::new(Vec::new()),
            urgent: RefCell::new(Vec::new()),
            flush_waker: RefCell::new(None),
            writer: RefCell::new(writer),
            counters: Counters::default(),
            latency,
            local_fanout: RefCell::new(VecDeque::new()),
            history: RefCell::new(history),
            sessions: RefCell::new(sessions),
            interest_pending: RefCell::new(HashMap::new()),
            subscribe_order: RefCell::new(HashMap::new()),
            qos1_topics,
            signer,
            backbone,
            local_topics,
            bb_subs: RefCell::new(HashMap::new()),
            bb_gen: Cell::new(0),
            dispatcher_waker: RefCell::new(None),
            outbox: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            outbox_len: Cell::new(0),
            outbox_draining: Cell::new(false),
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            ids: RefCell::new(IdGen::new(boot, id)),
            table_version: Cell::new(0),
            fanout_scratch: RefCell::new(Vec::new()),
            read_scratch: RefCell::new(vec![0u8; conn::BUSY_READ_BYTES].into_boxed_slice()),
            shutting_down: Cell::new(false),
            shutdown_wakers: RefCell::new(Vec::new()),
        })
    }

    fn n_shards(&self) -> usize {
        self.mesh.len()
    }

    // ----- connections -------------------------------------------------------------------

    /// Registers an upgraded connection.
    pub(crate) fn add_conn(
        &self,
        stream: Rc<RefCell<TcpStream>>,
        fd: RawFd,
        single_topic: Option<Arc<str>>,
        identity: Option<Identity>,
        tls: Option<Box<rustls::ServerConnection>>,
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
        let slot = self.conns.borrow_mut().insert(Conn {
            gen,
            fd,
            stream,
            out: OutBuf::new(),
            is_dirty: false,
            blocked_since: None,
            blocked_writer: None,
            state: ConnState::Open,
            close_sent: false,
            task_waker: None,
            pending_deliveries: 0,
            oldest_published_at: None,
            last_seen: now,
            last_ping,
            single_topic,
            identity,
            replaying: None,
            session: None,
            inflight: None,
            tls: tls.map(|conn| {
                Box::new(TlsConn {
                    conn: *conn,
                    cipher: OutBuf::new(),
                })
            }),
        });
        Counters::add(&self.counters.ws_opened, 1);
        ConnId {
            slot: slot as u32,
            gen,
        }
    }

    /// Removes a connection and every subscription it held. Called by its own task, last.
    pub(crate) fn remove_conn(&self, id: ConnId) {
        self.detach_session(id);
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
        // Dropping the Conn drops its blocked-writer task (cancelling it) outside the borrow.
        drop(removed);
        Counters::add(&self.counters.ws_closed, 1);
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

    fn bump_table_version(&self) {
        self.table_version
            .set(self.table_version.get().wrapping_add(1));
    }

    /// Queues an answer (a complete frame) for one connection. O(len).
    pub(crate) fn enqueue(&self, id: ConnId, bytes: &[u8]) -> Enqueued {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return Enqueued::Gone;
        };
        let res = enqueue_into(c, bytes, Kind::Reply, &self.cfg, &self.counters);
        if res == Enqueued::Queued || res == Enqueued::Disconnected {
            mark_dirty(c, id.slot, &mut self.dirty.borrow_mut());
            if c.blocked_since.is_none() {
                self.urgent.borrow_mut().push(id.slot);
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
            mark_dirty(c, id.slot, &mut self.dirty.borrow_mut());
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
        mark_dirty(c, id.slot, &mut self.dirty.borrow_mut());
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
        mark_dirty(c, id.slot, &mut self.dirty.borrow_mut());
        drop(conns);
        self.wake_flusher();
    }

    // ----- flushing ----------------------------------------------------------------------

    fn wake_flusher(&self) {
        if let Some(w) = self.flush_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The flusher task: every time connections became dirty, write each once.
    async fn flusher(self: Rc<Self>) {
        let mut batch: Vec<u32> = Vec::new();
        let mut urgent: Vec<u32> = Vec::new();
        let mut results: Vec<i32> = Vec::new();
        loop {
            poll_fn(|cx| {
                if self.dirty.borrow().is_empty() && self.urgent.borrow().is_empty() {
                    *self.flush_waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            std::mem::swap(&mut batch, &mut *self.dirty.borrow_mut());
            // A huge batch is written in chunks with a yield between them, so reads, accepts
            // and the dispatcher keep moving. Connections of later chunks stay marked dirty
            // meanwhile: frames queued for them during the yield join their one write. Answers
            // queued meanwhile (pongs, acks) go first, ahead of the rest of the batch.
            let chunk_len = self.cfg.flush_chunk_conns;
            for chunk in batch.chunks(chunk_len) {
                std::mem::swap(&mut urgent, &mut *self.urgent.borrow_mut());
                if !urgent.is_empty() {
                    self.flush(&urgent, &mut results);
                    urgent.clear();
                }
                self.flush(chunk, &mut results);
                if batch.len() > chunk_len {
                    glommio::yield_if_needed().await;
                }
            }
            batch.clear();
            // Answers already written with the batch need nothing more (flush skips them).
            std::mem::swap(&mut urgent, &mut *self.urgent.borrow_mut());
            if !urgent.is_empty() {
                self.flush(&urgent, &mut results);
                urgent.clear();
            }
        }
    }

    /// Writes every listed connection once: one SEND each, one submit for all (io_uring path).
    fn flush(self: &Rc<Self>, batch: &[u32], results: &mut Vec<i32>) {
        let mut conns = self.conns.borrow_mut();
        let mut slots: Vec<u32> = Vec::with_capacity(batch.len());
        for &slot in batch {
            if let Some(c) = conns.get_mut(slot as usize) {
                if !c.is_dirty {
                    // Listed twice (an answer listed as urgent, or re-listed after an urgent
                    // write): written already. Two sends of the same bytes must never be
                    // submitted together.
                    continue;
                }
                c.is_dirty = false;
                if c.blocked_since.is_none() && c.pending() > 0 {
                    c.seal();
                    slots.push(slot);
                }
            }
        }
        if slots.is_empty() {
            return;
        }
        {
            let ops: Vec<SendOp<'_>> = slots
                .iter()
                .map(|&s| {
                    let c = &conns[s as usize];
                    SendOp {
                        fd: c.fd,
                        buf: c.wire_bytes(),
                    }
                })
                .collect();
            if let Err(e) = self.writer.borrow_mut().write_batch(&ops, results) {
                tracing::error!(shard = self.id, "write ring failed: {e}");
                results.clear();
                results.resize(ops.len(), -libc::EIO);
            }
        }
        Counters::add(&self.counters.writes, slots.len() as u64);
        let now = Instant::now();
        let mut to_block: Vec<ConnId> = Vec::new();
        let mut again: Vec<u32> = Vec::new();
        for (i, &slot) in slots.iter().enumerate() {
            let c = &mut conns[slot as usize];
            let res = results[i];
            if res >= 0 {
                Counters::add(&self.counters.bytes_out, res as u64);
                if !c.advance_wire(res as usize) {
                    to_block.push(ConnId { slot, gen: c.gen });
                } else if c.pending() == 0 {
                    drained(c, &self.latency, now);
                } else {
                    // TLS: plaintext queued behind the records just written.
                    again.push(slot);
                }
            } else if res == -libc::EAGAIN {
                to_block.push(ConnId { slot, gen: c.gen });
            } else {
                // The peer is gone (EPIPE, ECONNRESET, …): drop what is queued and close.
                peer_gone(c);
            }
        }
        if !again.is_empty() {
            let mut dirty = self.dirty.borrow_mut();
            for slot in again {
                mark_dirty(&mut conns[slot as usize], slot, &mut dirty);
            }
            drop(dirty);
            self.wake_flusher();
        }
        drop(conns);
        for id in to_block {
            Counters::add(&self.counters.writes_blocked, 1);
            self.start_blocked_writer(id);
        }
    }

    /// The socket is full: wait for writability through glommio (POLLOUT) and write the rest
    /// with its `send(2)`; the connection rejoins the batch once drained.
    fn start_blocked_writer(self: &Rc<Self>, id: ConnId) {
        let shard = self.clone();
        let Some(stream) = self.with_conn(id, |c| {
            c.blocked_since = Some(Instant::now());
            c.stream.clone()
        }) else {
            return;
        };
        let task = glommio::spawn_local(async move {
            loop {
                let res = poll_fn(|cx| {
                    let mut conns = shard.conns.borrow_mut();
                    let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen)
                    else {
                        return Poll::Ready(Ok(0));
                    };
                    if c.pending() == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    c.seal();
                    let mut s = stream.borrow_mut();
                    futures_lite::AsyncWrite::poll_write(
                        std::pin::Pin::new(&mut *s),
                        cx,
                        c.wire_bytes(),
                    )
                })
                .await;
                let done = shard
                    .with_conn(id, |c| match res {
                        Ok(n) => {
                            Counters::add(&shard.counters.bytes_out, n as u64);
                            c.advance_wire(n);
                            if c.pending() == 0 {
                                drained(c, &shard.latency, Instant::now());
                                c.blocked_since = None;
                                true
                            } else {
                                false
                            }
                        }
                        Err(_) => {
                            c.blocked_since = None;
                            peer_gone(c);
                            true
                        }
                    })
                    .unwrap_or(true);
                if done {
                    break;
                }
            }
        });
        // Keep the handle in the connection: dropping the connection cancels the wait.
        if let Some(Some(old)) = self.with_conn(id, |c| c.blocked_writer.replace(task)) {
            old.detach();
        }
    }

    // ----- publishing and fan-out --------------------------------------------------------

    fn next_token(&self) -> u64 {
        let t = self.next_token.get();
        self.next_token.set(t + 1);
        t
    }

    /// Accepts a publish on this shard (from a connection or HTTP) and routes it to the owner.
    /// `Err` when the gateway is overloaded (the publish is refused, never silently lost).
    /// `client_message_id` is the client's `messageId` (or HTTP `Idempotency-Key`), checked for
    /// duplicates; without one the gateway makes a unique id.
    pub(crate) fn publish(
        &self,
        topic: &str,
        client_message_id: Option<&str>,
        identity: Arc<str>,
        payload: Bytes,
        qos1: bool,
        waiter: Option<PublishWaiter>,
    ) -> Result<(), ProtoError> {
        let is_client_id = client_message_id.is_some();
        let message_id: Arc<str> = match client_message_id {
            Some(m) => m.into(),
            None => self.ids.borrow_mut().next_id().into(),
        };
        let interned = self.topics.borrow().interned(topic);
        let topic: Arc<str> = interned.unwrap_or_else(|| topic.into());
        if self.outbox_len.get() >= OUTBOX_MAX_MESSAGES {
            return Err(ProtoError::new(
                ErrorCode::RateLimited,
                "gateway overloaded: cross-core queues are full, retry later",
            )
            .with_topic(&topic)
            .with_message_id(&message_id));
        }
        let clustered = self.clustered(&topic);
        if clustered && !self.backbone.as_ref().is_some_and(|b| b.has_room()) {
            return Err(ProtoError::new(
                ErrorCode::BackboneUnavailable,
                "too many publishes wait for the cluster backbone; retry later",
            )
            .with_topic(&topic)
            .with_message_id(&message_id));
        }
        Counters::add(&self.counters.publishes_in, 1);
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        let reply_to = waiter.map(|w| {
            let token = self.next_token();
            let p = match w {
                PublishWaiter::Conn(id) => Pending::ConnAck(id),
                PublishWaiter::Task(tx) => Pending::Task { tx, remaining: 1 },
            };
            self.pending.borrow_mut().insert(token, p);
            (self.id, token)
        });
        let req = PublishReq {
            topic,
            message_id,
            payload,
            identity,
            is_client_id,
            reply_to,
            accepted_at: Instant::now(),
            qos1,
        };
        if clustered {
            // JetStream stamps the seqNo; the frame comes back through the owner's subscription.
            let mut req = req;
            req.qos1 = req.qos1 || self.qos1_topics.iter().any(|p| p.matches(&req.topic));
            let reply_to = req.reply_to;
            if !self
                .backbone
                .as_ref()
                .is_some_and(|b| b.send(BackboneCmd::Publish(req)))
            {
                if let Some((_, token)) = reply_to {
                    self.pending.borrow_mut().remove(&token);
                }
                return Err(ProtoError::new(
                    ErrorCode::BackboneUnavailable,
                    "the cluster backbone is not running",
                ));
            }
        } else if owner == self.id {
            self.sequence(req);
        } else {
            self.send_to(owner, ShardMsg::Publish(req));
        }
        Ok(())
    }

    /// Whether `topic` travels over the cluster backbone (false on a single node and for
    /// `local_topics`).
    pub(crate) fn clustered(&self, topic: &str) -> bool {
        self.backbone.is_some() && !self.local_topics.iter().any(|p| p.matches(topic))
    }

    /// On the owner: check the duplicate window, stamp `seqNo`, build the frame once, hand it
    /// to every shard.
    fn sequence(&self, req: PublishReq) {
        let (seq_no, duplicate) = if req.is_client_id {
            let seq = &self.seq;
            let topic = &req.topic;
            self.dedup.borrow_mut().check(
                Instant::now(),
                &req.identity,
                topic,
                &req.message_id,
                || seq.borrow_mut().next_seq(topic),
            )
        } else {
            (self.seq.borrow_mut().next_seq(&req.topic), false)
        };
        let result = Published {
            seq_no,
            message_id: req.message_id,
            duplicate,
        };
        if duplicate {
            Counters::add(&self.counters.duplicates, 1);
            self.answer_publish(req.reply_to, result);
            return;
        }
        Counters::add(&self.counters.publishes_sequenced, 1);
        let qos1 = req.qos1 || self.qos1_topics.iter().any(|p| p.matches(&req.topic));
        let sig = self
            .signer
            .as_ref()
            .map(|s| s.sign(&req.topic, seq_no, &req.payload));
        let extras = protocol::FrameExtras {
            qos1,
            signature: self
                .signer
                .as_ref()
                .zip(sig.as_deref())
                .map(|(s, sig)| (s.key_id(), sig)),
        };
        let frame = protocol::encode_message_frame_with(
            &req.topic,
            seq_no,
            &result.message_id,
            &extras,
            &req.payload,
        );
        let d = Delivery {
            topic: req.topic,
            seq_no,
            frame,
            published_at: req.accepted_at,
            qos1: qos1.then(|| result.message_id.clone()),
        };
        self.dispatch(d, true);
        self.answer_publish(req.reply_to, result);
    }

    /// On the owner: hand a sequenced delivery to every interested core (interest routing),
    /// keep it in the history (`keep`), and queue it for the local subscribers.
    fn dispatch(&self, d: Delivery, keep: bool) {
        let wants = self.seq.borrow().wants(&d.topic);
        for peer in 0..self.n_shards() {
            if peer != self.id && wants.has(peer) {
                self.send_to(peer, ShardMsg::Deliver(d.clone()));
            }
        }
        if keep {
            self.history.borrow_mut().push_entry(
                &d.topic,
                d.seq_no,
                d.frame.clone(),
                d.qos1.clone(),
                Instant::now(),
            );
        }
        self.local_fanout
            .borrow_mut()
            .push_back(LocalWork::Deliver(d));
        self.wake_dispatcher();
    }

    // ----- the cluster backbone (clusters only) --------------------------------------------

    /// On the owner: a message of `d.topic` from the backbone, in `seqNo` order. Anything at
    /// or below the last delivered `seqNo` was delivered already (a gap fill racing the live
    /// feed, or a resubscription's overlap).
    fn deliver_from_backbone(&self, d: Delivery) {
        {
            let mut seq = self.seq.borrow_mut();
            if d.seq_no <= seq.last_seq(&d.topic) {
                return;
            }
            seq.set_last(&d.topic, d.seq_no);
        }
        Counters::add(&self.counters.publishes_sequenced, 1);
        self.dispatch(d, true);
    }

    /// On the owner: `from..=to` of `topic` are lost. Subscribers are told, precisely, and
    /// delivery continues after `to`.
    fn backbone_lost(&self, topic: Arc<str>, from: u64, to: u64) {
        {
            let mut seq = self.seq.borrow_mut();
            if seq.last_seq(&topic) >= to {
                return;
            }
            seq.set_last(&topic, to);
        }
        let err = ProtoError::new(
            ErrorCode::ReplayUnavailable,
            format!(
                "seqNo {from} to {to} of this topic were lost by the cluster backbone (no longer held); delivery continues at {}",
                to + 1
            ),
        )
        .with_topic(&topic)
        .with_oldest_seq(Some(to + 1));
        self.tell_subscribers(topic, to, &err);
    }

    /// On the owner: `err` to every subscriber of `topic` on every core, in the topic's order
    /// at `seq_no` (so a replay's seam treats it like the delivery it stands for). Not kept.
    fn tell_subscribers(&self, topic: Arc<str>, seq_no: u64, err: &ProtoError) {
        let mut frame = Vec::new();
        protocol::encode_error(&mut frame, err); // a finished text frame
        let d = Delivery {
            topic,
            seq_no,
            frame: Bytes::from(frame),
            published_at: Instant::now(),
            qos1: None,
        };
        self.dispatch(d, false);
    }

    /// On the owner: the topic's history restarted in JetStream (NATS lost its stream). Its
    /// numbering starts again after `last_seq`; subscribers are told before the new chain.
    fn backbone_restarted(&self, topic: Arc<str>, last_seq: u64) {
        let before = {
            let mut seq = self.seq.borrow_mut();
            let before = seq.last_seq(&topic);
            seq.set_last(&topic, last_seq);
            before
        };
        let err = ProtoError::new(
            ErrorCode::ReplayUnavailable,
            format!(
                "the cluster backbone lost this topic's history (its JetStream stream was created again): messages after seqNo {before} are not known, and numbering starts again at {}",
                last_seq + 1
            ),
        )
        .with_topic(&topic);
        self.tell_subscribers(topic, last_seq, &err);
    }

    /// On the owner, clusters: a core gained or lost interest in `topic`. The node subscribes
    /// to the topic's subject on its first interested core and unsubscribes after the last;
    /// a gained interest is acknowledged only once the subscription is live.
    fn owner_interest(&self, topic: Arc<str>, up: bool, from: ShardId, ack: Option<u64>) {
        self.seq.borrow_mut().interest(&topic, up, from);
        let bb = match &self.backbone {
            Some(bb) if self.clustered(&topic) => bb,
            _ => {
                if let Some(t) = ack {
                    self.send_interest_ack(from, t);
                }
                return;
            }
        };
        if up {
            let mut subs = self.bb_subs.borrow_mut();
            match subs.get_mut(&topic) {
                Some(s) if s.live => {
                    drop(subs);
                    if let Some(t) = ack {
                        self.send_interest_ack(from, t);
                    }
                }
                Some(s) => s.waiters.extend(ack.map(|t| (from, t))),
                None => {
                    let gen = self.bb_gen.get() + 1;
                    self.bb_gen.set(gen);
                    subs.insert(
                        topic.clone(),
                        BbSub {
                            gen,
                            live: false,
                            waiters: ack.map(|t| (from, t)).into_iter().collect(),
                            replays: Vec::new(),
                        },
                    );
                    bb.send(BackboneCmd::Subscribe {
                        topic,
                        gen,
                        owner: self.id,
                    });
                }
            }
        } else if !self.seq.borrow().has_interest(&topic) {
            let gone = self.bb_subs.borrow_mut().remove(&topic);
            if let Some(s) = gone {
                bb.send(BackboneCmd::Unsubscribe { topic, gen: s.gen });
                for (f, t) in s.waiters {
                    self.send_interest_ack(f, t);
                }
                for r in s.replays {
                    self.answer_replay(r.topic, r.from_seq, r.reply_to, r.partial);
                }
            }
        }
    }

    fn send_interest_ack(&self, to: ShardId, token: u64) {
        if to == self.id {
            self.interest_acked(token);
        } else {
            self.send_to(to, ShardMsg::InterestAck { token });
        }
    }

    /// On the owner: the backbone subscription `gen` is live; live delivery continues after
    /// `last_seq` (0: unknown, the link was down).
    fn backbone_subscribed(&self, topic: Arc<str>, gen: u64, last_seq: u64) {
        let (waiters, replays) = {
            let mut subs = self.bb_subs.borrow_mut();
            match subs.get_mut(&topic) {
                Some(s) if s.gen == gen => {
                    s.live = true;
                    (
                        std::mem::take(&mut s.waiters),
                        std::mem::take(&mut s.replays),
                    )
                }
                _ => return,
            }
        };
        if last_seq > 0 {
            // JetStream's chain is the truth: a lower value means numbering restarted there.
            self.seq.borrow_mut().set_last(&topic, last_seq);
        }
        for (f, t) in waiters {
            self.send_interest_ack(f, t);
        }
        for r in replays {
            self.answer_replay(r.topic, r.from_seq, r.reply_to, r.partial);
        }
    }

    /// On the owner: a replay read out of JetStream. Where this node has a live feed of the
    /// topic, the answer is cut at what the owner has already handed to the cores, so that it
    /// travels behind those frames and the seam stays exact (see `answer_replay`).
    fn backbone_replayed(
        &self,
        topic: Arc<str>,
        reply_to: (ShardId, u64),
        mut answer: ReplayAnswer,
    ) {
        let live = self.bb_subs.borrow().get(&topic).is_some_and(|s| s.live);
        if live {
            let cut = answer.last_seq.min(self.seq.borrow().last_seq(&topic));
            answer.frames.retain(|f| f.seq_no <= cut);
            answer.last_seq = cut;
        }
        self.send_replay_answer(reply_to, answer);
    }

    /// Sends a publish's outcome to whoever waits for it (on this shard or another).
    fn answer_publish(&self, reply_to: Option<(ShardId, u64)>, result: Published) {
        if let Some((shard, token)) = reply_to {
            if shard == self.id {
                self.complete(token, Reply::Published(result));
            } else {
                self.send_to(shard, ShardMsg::Published { token, result });
            }
        }
    }

    /// Writes one delivery to every local subscriber of its topic. Small topics in one go;
    /// big ones in slices of `fanout_slice_subscribers` with a yield between slices. O(subscribers).
    async fn fan_out(&self, d: &Delivery) {
        let count = self.topics.borrow().subscriber_count(&d.topic);
        if count == 0 {
            return;
        }
        let slice_len = self.cfg.fanout_slice_subscribers;
        let o = Outgoing::new(d);
        if count <= slice_len {
            let topics = self.topics.borrow();
            let mut conns = self.conns.borrow_mut();
            let mut dirty = self.dirty.borrow_mut();
            let mut delivered = 0u64;
            topics.for_each_subscriber(&d.topic, |slot| {
                if let Some(c) = conns.get_mut(slot as usize) {
                    delivered += u64::from(deliver_into(
                        c,
                        slot,
                        &o,
                        &mut dirty,
                        &self.cfg,
                        &self.counters,
                    ));
                }
            });
            Counters::add(&self.counters.deliveries, delivered);
        } else {
            let mut snapshot = std::mem::take(&mut *self.fanout_scratch.borrow_mut());
            self.topics
                .borrow()
                .subscribers_into(&d.topic, &mut snapshot);
            let version = self.table_version.get();
            for slice in snapshot.chunks(slice_len) {
                let changed = self.table_version.get() != version;
                {
                    let topics = self.topics.borrow();
                    let mut conns = self.conns.borrow_mut();
                    let mut dirty = self.dirty.borrow_mut();
                    let mut delivered = 0u64;
                    for &slot in slice {
                        if changed && !topics.is_subscribed(slot, &d.topic) {
                            continue;
                        }
                        if let Some(c) = conns.get_mut(slot as usize) {
                            delivered += u64::from(deliver_into(
                                c,
                                slot,
                                &o,
                                &mut dirty,
                                &self.cfg,
                                &self.counters,
                            ));
                        }
                    }
                    Counters::add(&self.counters.deliveries, delivered);
                }
                self.wake_flusher();
                glommio::yield_if_needed().await;
            }
            snapshot.clear();
            *self.fanout_scratch.borrow_mut() = snapshot;
        }
        self.wake_flusher();
    }

    /// Tells the topic's owner that this shard gained or lost its first/last subscriber. A
    /// gained interest on another core returns the token its `InterestAck` will carry.
    pub(crate) fn interest(&self, topic: Arc<str>, up: bool) -> Option<u64> {
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        // A gained interest waits for the owner's acknowledgement. On the owner itself there is
        // only something to wait for while the topic's backbone subscription is not live.
        let waits = up
            && (owner != self.id
                || (self.clustered(&topic)
                    && !self.bb_subs.borrow().get(&topic).is_some_and(|s| s.live)));
        let ack = waits.then(|| {
            let token = self.next_token();
            self.pending.borrow_mut().insert(
                token,
                Pending::InterestUp {
                    topic: topic.clone(),
                    waiters: Vec::new(),
                },
            );
            self.interest_pending
                .borrow_mut()
                .insert(topic.clone(), token);
            token
        });
        if owner == self.id {
            self.owner_interest(topic, up, self.id, ack);
        } else {
            self.send_to(
                owner,
                ShardMsg::Interest {
                    topic,
                    up,
                    from: self.id,
                    ack,
                },
            );
        }
        ack
    }

    /// The owner registered a gained interest: answer the subscribes that waited for it.
    fn interest_acked(&self, token: u64) {
        let Some(Pending::InterestUp { topic, waiters }) = self.pending.borrow_mut().remove(&token)
        else {
            return;
        };
        {
            let mut ip = self.interest_pending.borrow_mut();
            if ip.get(&topic) == Some(&token) {
                ip.remove(&topic);
            }
        }
        let mut conns: Vec<ConnId> = Vec::new();
        {
            let mut pending = self.pending.borrow_mut();
            for w in waiters {
                if let Some(Pending::Subscribe {
                    conn, remaining, ..
                }) = pending.get_mut(&w)
                {
                    *remaining = remaining.saturating_sub(1);
                    if *remaining == 0 && !conns.contains(conn) {
                        conns.push(*conn);
                    }
                }
            }
        }
        for c in conns {
            self.release_subscribes(c);
        }
    }

    /// Sends, in request order, the connection's subscribe answers that are ready.
    fn release_subscribes(&self, id: ConnId) {
        loop {
            let ready = {
                let mut order = self.subscribe_order.borrow_mut();
                let Some(q) = order.get_mut(&id) else {
                    return;
                };
                let mut pending = self.pending.borrow_mut();
                let head_done = q.front().is_some_and(|t| {
                    matches!(
                        pending.get(t),
                        Some(Pending::Subscribe { remaining: 0, .. }) | None
                    )
                });
                if !head_done {
                    return;
                }
                let token = q.pop_front().expect("checked");
                if q.is_empty() {
                    order.remove(&id);
                }
                pending.remove(&token)
            };
            if let Some(Pending::Subscribe {
                conn,
                reply,
                replays,
                ..
            }) = ready
            {
                self.finish_subscribe(conn, &reply, replays);
            }
        }
    }

    /// Answers a subscribe (`reply`: the encoded `subscribed`) now, or once every interest it
    /// depends on (`waits`: tokens from [`Shard::subscribe`]) is acknowledged by the owners.
    /// Then asks for the replays of a `subscribe` with `fromSeq`.
    pub(crate) fn answer_subscribe(
        &self,
        id: ConnId,
        waits: Vec<u64>,
        reply: Vec<u8>,
        replays: Vec<(Arc<str>, u64)>,
    ) {
        let queued = self.subscribe_order.borrow().contains_key(&id);
        let mut pending = self.pending.borrow_mut();
        let mut attached = 0;
        let token = self.next_token();
        for w in &waits {
            if let Some(Pending::InterestUp { waiters, .. }) = pending.get_mut(w) {
                waiters.push(token);
                attached += 1;
            }
        }
        if attached == 0 && !queued {
            drop(pending);
            return self.finish_subscribe(id, &reply, replays);
        }
        pending.insert(
            token,
            Pending::Subscribe {
                conn: id,
                remaining: attached,
                reply,
                replays,
            },
        );
        drop(pending);
        self.subscribe_order
            .borrow_mut()
            .entry(id)
            .or_default()
            .push_back(token);
        if attached == 0 {
            self.release_subscribes(id);
        }
    }

    fn finish_subscribe(&self, id: ConnId, reply: &[u8], replays: Vec<(Arc<str>, u64)>) {
        self.enqueue(id, reply);
        for (topic, from) in replays {
            self.request_replay(id, topic, from, false);
        }
    }

    /// How many more subscriptions this core may take (admission control).
    pub(crate) fn subscription_room(&self) -> usize {
        let mut cap = self.cfg.max_subscriptions_per_core;
        if self.cfg.max_subscriptions > 0 {
            cap = cap.min(self.cfg.max_subscriptions / self.n_shards());
        }
        cap.saturating_sub(self.topics.borrow().subscription_count())
    }

    /// `LIMIT_EXCEEDED` for `want` subscriptions more than this core may take.
    pub(crate) fn subscriptions_refused(&self, want: usize) -> ProtoError {
        Counters::add(&self.counters.subscriptions_refused, 1);
        ProtoError::new(
            ErrorCode::LimitExceeded,
            format!(
                "the gateway is at its subscription limit (this core holds {}; asked for {want} more): try again later or another node",
                self.topics.borrow().subscription_count()
            ),
        )
    }

    /// Subscribes a connection; tells the owner when the topic is new on this shard.
    /// Returns the token of an interest the owner has not acknowledged yet (see
    /// [`Shard::answer_subscribe`]): until then a publish might not be handed to this core.
    pub(crate) fn subscribe(&self, id: ConnId, topic: &str) -> Option<u64> {
        use crate::topics::Subscribed;
        let res = self.topics.borrow_mut().subscribe(id.slot, topic);
        let wait = if let Subscribed::Added {
            topic_created: true,
        } = res
        {
            let t = self
                .topics
                .borrow()
                .interned(topic)
                .expect("just subscribed");
            self.interest(t, true)
        } else {
            self.interest_pending.borrow().get(topic).copied()
        };
        self.bump_table_version();
        wait
    }

    /// Unsubscribes; tells the owner when the topic is gone from this shard.
    pub(crate) fn unsubscribe(&self, id: ConnId, topic: &str) {
        use crate::topics::Unsubscribed;
        let interned = self.topics.borrow().interned(topic);
        let res = self.topics.borrow_mut().unsubscribe(id.slot, topic);
        if let (
            Unsubscribed::Removed {
                topic_removed: true,
            },
            Some(t),
        ) = (res, interned)
        {
            self.interest(t, false);
        }
        self.bump_table_version();
        self.with_conn(id, |c| {
            if let Some(inf) = c.inflight.as_mut() {
                inf.forget_topic(topic);
                if inf.is_empty() {
                    c.inflight = None;
                }
            }
        });
    }

    // ----- cross-core ---------------------------------------------------------------------

    /// Sends to another shard, keeping per-peer order: if earlier messages wait in the outbox
    /// (the peer's inbox was full), this one waits behind them.
    pub(crate) fn send_to(&self, to: ShardId, msg: ShardMsg) {
        debug_assert_ne!(
            to, self.id,
            "local work is a direct call, never a mesh message"
        );
        let mut outbox = self.outbox.borrow_mut();
        if outbox[to].is_empty() {
            match self.mesh.try_send_to(to, msg) {
                Ok(()) => return,
                Err(TrySendError::Full(m)) => {
                    Counters::add(&self.counters.inbox_full, 1);
                    outbox[to].push_back(m);
                }
                Err(TrySendError::Disconnected(_)) => return, // that shard has exited (shutdown)
            }
        } else {
            outbox[to].push_back(msg);
        }
        self.outbox_len.set(self.outbox_len.get() + 1);
        if !self.outbox_draining.replace(true) {
            let me = self.self_rc();
            glommio::spawn_local(async move { me.drain_outbox().await }).detach();
        }
    }

    /// Retries full inboxes until the outbox is empty. Runs only while something waits.
    async fn drain_outbox(self: Rc<Self>) {
        loop {
            {
                let mut outbox = self.outbox.borrow_mut();
                let mut left = 0;
                for (to, q) in outbox.iter_mut().enumerate() {
                    while let Some(m) = q.pop_front() {
                        match self.mesh.try_send_to(to, m) {
                            Ok(()) => {}
                            Err(TrySendError::Full(m)) => {
                                q.push_front(m);
                                break;
                            }
                            Err(TrySendError::Disconnected(_)) => q.clear(),
                        }
                    }
                    left += q.len();
                }
                self.outbox_len.set(left);
                if left == 0 {
                    self.outbox_draining.set(false);
                    return;
                }
            }
            Timer::new(Duration::from_micros(200)).await;
        }
    }

    fn self_rc(&self) -> Rc<Shard> {
        SELF.with(|s| s.borrow().clone().expect("shard registered on its thread"))
    }

    fn complete(&self, token: u64, reply: Reply) {
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

    /// Asks every shard for its counters; the answers arrive on `tx` (this shard's first).
    pub(crate) fn query_stats(&self, tx: LocalSender<Reply>) -> u64 {
        let _ = tx.try_send(Reply::Stats(Box::new(self.snapshot())));
        let token = self.next_token();
        let others = self.n_shards() - 1;
        if others > 0 {
            self.pending.borrow_mut().insert(
                token,
                Pending::Task {
                    tx,
                    remaining: others,
                },
            );
            for peer in 0..self.n_shards() {
                if peer != self.id {
                    self.send_to(
                        peer,
                        ShardMsg::StatsQuery {
                            from: self.id,
                            token,
                        },
                    );
                }
            }
        }
        token
    }

    /// This shard's counters and gauges.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut s = self.counters.snapshot();
        s.core = self.core;
        let conns = self.conns.borrow();
        s.connections = conns.len() as u64;
        s.backlog_bytes = conns.iter().map(|(_, c)| c.pending() as u64).sum();
        let topics = self.topics.borrow();
        s.local_topics = topics.topic_count() as u64;
        s.subscriptions = topics.subscription_count() as u64;
        s.owned_topics_with_interest = self.seq.borrow().topics_with_interest();
        let dedup = self.dedup.borrow();
        s.dedup_entries = dedup.len() as u64;
        s.dedup_evictions = dedup.evictions;
        s.sessions_detached = self.sessions.borrow().detached_count() as u64;
        s.qos1_unacked = conns
            .iter()
            .filter_map(|(_, c)| c.inflight.as_ref())
            .map(|i| i.len() as u64)
            .sum();
        s.latency = Some(Box::new(self.latency.snapshot()));
        s
    }

    // ----- the dispatcher ----------------------------------------------------------------

    fn wake_dispatcher(&self) {
        if let Some(w) = self.dispatcher_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Drains the local fan-out queue and the inbox completely, then sleeps until either has
    /// work (register the wakers, then re-check: no lost wake-up, no spinning).
    async fn dispatcher(self: Rc<Self>, inbox: Inbox) {
        loop {
            let mut handled = 0usize;
            loop {
                let next = self.local_fanout.borrow_mut().pop_front();
                match next {
                    Some(LocalWork::Deliver(d)) => {
                        self.fan_out(&d).await;
                        handled += 1;
                    }
                    Some(LocalWork::Replayed { token, answer }) => {
                        self.replayed(token, answer);
                        handled += 1;
                    }
                    None => break,
                }
            }
            while let Ok(msg) = inbox.rx.try_recv() {
                self.handle(msg).await;
                handled += 1;
                if handled.is_multiple_of(256) {
                    glommio::yield_if_needed().await;
                }
                if !self.local_fanout.borrow().is_empty() {
                    break;
                }
            }
            if handled > 0 {
                continue;
            }
            poll_fn(|cx| {
                inbox.waker.register(cx.waker());
                *self.dispatcher_waker.borrow_mut() = Some(cx.waker().clone());
                if inbox.rx.is_empty() && self.local_fanout.borrow().is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }

    async fn handle(&self, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(req) => self.sequence(req),
            ShardMsg::Deliver(d) => {
                Counters::add(&self.counters.remote_frames_in, 1);
                self.fan_out(&d).await
            }
            ShardMsg::Published { token, result } => self.complete(token, Reply::Published(result)),
            ShardMsg::PublishFailed { token, error } => {
                self.complete(token, Reply::PublishFailed(error))
            }
            ShardMsg::FromBackbone(d) => self.deliver_from_backbone(d),
            ShardMsg::BackboneSubscribed {
                topic,
                gen,
                last_seq,
            } => self.backbone_subscribed(topic, gen, last_seq),
            ShardMsg::BackboneLost { topic, from, to } => self.backbone_lost(topic, from, to),
            ShardMsg::BackboneRestarted { topic, last_seq } => {
                self.backbone_restarted(topic, last_seq)
            }
            ShardMsg::BackboneReplayed {
                topic,
                reply_to,
                answer,
            } => self.backbone_replayed(topic, reply_to, answer),
            ShardMsg::Interest {
                topic,
                up,
                from,
                ack,
            } => self.owner_interest(topic, up, from, ack),
            ShardMsg::InterestAck { token } => self.interest_acked(token),
            ShardMsg::StatsQuery { from, token } => {
                let snapshot = Box::new(self.snapshot());
                self.send_to(from, ShardMsg::StatsReply { token, snapshot });
            }
            ShardMsg::StatsReply { token, snapshot } => {
                self.complete(token, Reply::Stats(snapshot))
            }
            ShardMsg::Replay {
                topic,
                from_seq,
                reply_to,
                partial,
            } => self.answer_replay(topic, from_seq, reply_to, partial),
            ShardMsg::Replayed { token, answer } => self.replayed(token, answer),
            ShardMsg::SessionTake {
                id,
                subject,
                reply_to,
                forwarded,
            } => self.session_take(id, subject, reply_to, forwarded),
            ShardMsg::SessionTaken { token, result } => self.session_taken(token, result),
            ShardMsg::SessionGone { id, from } => self.sessions.borrow_mut().gone(&id, from),
            ShardMsg::SessionHeld { id, at } => self.sessions.borrow_mut().set_holder(id, at),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    // ----- replay (I6) ---------------------------------------------------------------------

    /// A connection asks for `topic`'s frames from `from_seq` on. Until the owner's answer is
    /// handled, live frames of that topic for this connection are held back (see
    /// [`deliver_into`]), so the replay and the live stream meet without gap or duplicate.
    /// `for_resume`: one topic of a `resume` (partial answers allowed; counted for `resumed`).
    /// False when that topic is already being replayed to the connection.
    pub(crate) fn request_replay(
        &self,
        id: ConnId,
        topic: Arc<str>,
        from_seq: u64,
        for_resume: bool,
    ) -> bool {
        let started = self.with_conn(id, |c| {
            let r = c.replaying.get_or_insert_with(Default::default);
            if r.topics.iter().any(|(t, _)| *t == topic) {
                return false;
            }
            r.topics.push((topic.clone(), Vec::new()));
            if for_resume {
                r.resume_left += 1;
            }
            true
        });
        if started != Some(true) {
            return false;
        }
        let token = self.next_token();
        self.pending.borrow_mut().insert(
            token,
            Pending::Replay {
                conn: id,
                topic: topic.clone(),
                for_resume,
            },
        );
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        if owner == self.id {
            self.answer_replay(topic, from_seq, (self.id, token), for_resume);
        } else {
            self.send_to(
                owner,
                ShardMsg::Replay {
                    topic,
                    from_seq,
                    reply_to: (self.id, token),
                    partial: for_resume,
                },
            );
        }
        true
    }

    /// On the owner: answer from the history. The answer travels behind every frame of the
    /// topic sequenced so far (the local fan-out queue here, the owner -> core FIFO elsewhere).
    /// `partial`: when older messages are gone, send those still held after the error.
    fn answer_replay(
        &self,
        topic: Arc<str>,
        from_seq: u64,
        reply_to: (ShardId, u64),
        partial: bool,
    ) {
        if self.backbone.is_some() {
            let mut subs = self.bb_subs.borrow_mut();
            if let Some(s) = subs.get_mut(&topic).filter(|s| !s.live) {
                s.replays.push(DeferredReplay {
                    topic,
                    from_seq,
                    reply_to,
                    partial,
                });
                return;
            }
        }
        let last_seq = self.seq.borrow().last_seq(&topic);
        let now = Instant::now();
        let mut history = self.history.borrow_mut();
        let held = if from_seq == FROM_NOW {
            Ok(Vec::new()) // live from here on: the answer only marks the seam
        } else {
            history.replay_held(&topic, from_seq, last_seq, now)
        };
        if let Some(bb) = &self.backbone {
            // Without a live feed of the topic this node's `last_seq` may be stale; with one,
            // its history may not reach back far enough. JetStream has both.
            let live = self.bb_subs.borrow().get(&topic).is_some_and(|s| s.live);
            if self.clustered(&topic) && (held.is_err() || !live) && from_seq != FROM_NOW {
                drop(history);
                bb.send(BackboneCmd::Replay {
                    topic,
                    from_seq,
                    reply_to,
                    partial,
                    owner: self.id,
                });
                return;
            }
        }
        let answer = match held {
            Ok(frames) => ReplayAnswer {
                last_seq,
                frames,
                error: None,
            },
            Err(e) => {
                let frames = match e {
                    ReplayError::Unavailable {
                        oldest_held: Some(oldest),
                        ..
                    } if partial => history
                        .replay_held(&topic, oldest, last_seq, now)
                        .unwrap_or_default(),
                    _ => Vec::new(),
                };
                ReplayAnswer {
                    last_seq,
                    frames,
                    error: Some(e),
                }
            }
        };
        drop(history);
        self.send_replay_answer(reply_to, answer);
    }

    /// Sends a replay's answer behind every frame of the topic handed out so far.
    fn send_replay_answer(&self, reply_to: (ShardId, u64), answer: ReplayAnswer) {
        let (shard, token) = reply_to;
        if shard == self.id {
            self.local_fanout
                .borrow_mut()
                .push_back(LocalWork::Replayed { token, answer });
            self.wake_dispatcher();
        } else {
            self.send_to(shard, ShardMsg::Replayed { token, answer });
        }
    }

    /// The owner's answer reached the connection's core: write the replayed frames, then the
    /// held-back live frames newer than `last_seq` (older ones were in the replay), then resume
    /// live delivery. The last replay of a `resume` is followed by `resumed`.
    fn replayed(&self, token: u64, answer: ReplayAnswer) {
        let Some(Pending::Replay {
            conn: id,
            topic,
            for_resume,
        }) = self.pending.borrow_mut().remove(&token)
        else {
            return;
        };
        let state = self.with_conn(id, |c| {
            let r = c.replaying.as_mut()?;
            let i = r.topics.iter().position(|(t, _)| *t == topic)?;
            let (_, held) = r.topics.swap_remove(i);
            let mut resume_done = false;
            if for_resume && r.resume_left > 0 {
                r.resume_left -= 1;
                resume_done = r.resume_left == 0;
            }
            if r.topics.is_empty() && r.resume_left == 0 {
                c.replaying = None;
            }
            Some((held, resume_done, c.session.clone()))
        });
        let Some(Some((held, resume_done, session))) = state else {
            return;
        };
        let last_seq = answer.last_seq;
        match answer.error {
            None => {}
            Some(ReplayError::Unavailable { oldest_held, .. }) => {
                let msg = match oldest_held {
                    Some(o) if for_resume => format!("messages before seqNo {o} are no longer held and are lost; those from {o} to {last_seq} follow"),
                    Some(o) => format!("messages before seqNo {o} are no longer held; the oldest held is {o}, the last is {last_seq}"),
                    None => format!("no message of this topic is held (the last seqNo is {last_seq})"),
                };
                self.reply_error(
                    id,
                    &ProtoError::new(ErrorCode::ReplayUnavailable, msg)
                        .with_topic(&topic)
                        .with_oldest_seq(oldest_held),
                );
            }
            Some(ReplayError::FromSeqInFuture { from_seq, last_seq }) => {
                // Ahead of the topic: most likely the gateway restarted and numbering began
                // again. Continuity cannot be proven, and the client is told so.
                let msg = format!(
                    "fromSeq {from_seq} is ahead of the topic's last seqNo {last_seq} \
                     (numbering restarted?); nothing can be replayed"
                );
                let e = ProtoError::new(ErrorCode::ReplayUnavailable, msg).with_topic(&topic);
                self.reply_error(id, &e);
            }
        }
        let now = Instant::now();
        let replayed: Vec<Delivery> = answer
            .frames
            .into_iter()
            .map(|f| Delivery {
                topic: topic.clone(),
                seq_no: f.seq_no,
                frame: f.frame,
                published_at: now,
                qos1: f.qos1,
            })
            .collect();
        self.deliver_to(id, replayed.iter(), true);
        if resume_done {
            if let Some(s) = &session {
                self.reply(id, |b| protocol::encode_resumed(b, s));
            }
        }
        self.deliver_to(id, held.iter().filter(|d| d.seq_no > last_seq), false);
    }

    /// Queues deliveries for one connection outside a fan-out: a replay's frames
    /// (`replayed`: QoS 1 ones re-tracked unless already tracked, no latency sample) or the
    /// live frames held back during it.
    fn deliver_to<'a>(
        &self,
        id: ConnId,
        deliveries: impl Iterator<Item = &'a Delivery>,
        replayed: bool,
    ) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return;
        };
        let mut dirty = self.dirty.borrow_mut();
        let mut n = 0;
        for d in deliveries {
            n += u64::from(deliver_now(
                c,
                id.slot,
                &Outgoing::new(d),
                &mut dirty,
                &self.cfg,
                &self.counters,
                replayed,
            ));
        }
        Counters::add(&self.counters.deliveries, n);
        drop((dirty, conns));
        self.wake_flusher();
    }

    // ----- sessions (I6 resume) -----------------------------------------------------------

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
    fn detach_session(&self, id: ConnId) {
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
    fn session_gone(&self, id: Arc<str>) {
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
        let token = self.next_token();
        self.pending.borrow_mut().insert(
            token,
            Pending::Resume {
                conn: id,
                session: sid.clone(),
                last_seq,
            },
        );
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
        let token = self.next_token();
        self.pending.borrow_mut().insert(
            token,
            Pending::Resume {
                conn: id,
                session: sid,
                last_seq,
            },
        );
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
    fn session_take(
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
    fn session_taken(&self, token: u64, result: Result<Box<Detached>, TakeError>) {
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
                    self.reply_error(
                        id,
                        &ProtoError::new(
                            ErrorCode::SingleTopic,
                            format!("this micro socket serves only '{only}'"),
                        )
                        .with_topic(&t),
                    );
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
            if !subscribed && self.subscription_room() == 0 {
                self.reply_error(id, &self.subscriptions_refused(1).with_topic(&t));
                continue;
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
            if self.request_replay(id, t, from.unwrap_or(FROM_NOW), true) {
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

    // ----- QoS 1 (I4) ---------------------------------------------------------------------

    /// A client's `ack`. Unknown acks (QoS 0, already acknowledged) are ignored.
    pub(crate) fn ack(
        &self,
        id: ConnId,
        message_id: Option<&str>,
        topic: Option<&str>,
        seq_no: Option<u64>,
    ) {
        let matched = self.with_conn(id, |c| {
            let Some(inf) = c.inflight.as_mut() else {
                return false;
            };
            let hit = inf.ack(message_id, topic, seq_no);
            if inf.is_empty() {
                c.inflight = None;
            }
            hit
        });
        if matched == Some(true) {
            Counters::add(&self.counters.qos1_acks, 1);
        }
    }

    // ----- heartbeats and shutdown -------------------------------------------------------

    /// Once a second: ping connections that have been quiet, close the silent and the stuck.
    async fn sweeper(self: Rc<Self>) {
        let idle = Duration::from_millis(self.cfg.idle_timeout_ms);
        let ping_every = Duration::from_millis(self.cfg.ping_interval_ms);
        let redeliver = Duration::from_millis(self.cfg.qos1_redeliver_ms);
        let tick = Duration::from_millis(
            self.cfg
                .ping_interval_ms
                .min(self.cfg.qos1_redeliver_ms / 2)
                .clamp(10, 1000),
        );
        let ping = {
            let mut b = Vec::new();
            frame::write_server_frame(&mut b, OpCode::Ping, b"");
            b
        };
        let mut last_latency_tick = Instant::now();
        loop {
            Timer::new(tick).await;
            let now = Instant::now();
            let now_unix = unix_now();
            if now.duration_since(last_latency_tick) >= Duration::from_secs(1) {
                self.latency.tick();
                self.history.borrow_mut().expire(now);
                last_latency_tick = now;
            }
            let expired = self.sessions.borrow_mut().expire(now);
            for id in expired {
                Counters::add(&self.counters.sessions_expired, 1);
                self.session_gone(id);
            }
            let evicted = std::mem::take(&mut self.sessions.borrow_mut().evicted);
            Counters::add(&self.counters.sessions_evicted, evicted);
            let mut to_close: Vec<(ConnId, u16, &str)> = Vec::new();
            {
                let mut conns = self.conns.borrow_mut();
                let mut dirty = self.dirty.borrow_mut();
                for (slot, c) in conns.iter_mut() {
                    if c.state != ConnState::Open {
                        continue;
                    }
                    if c.pending() == 0 && !c.is_dirty && c.blocked_since.is_none() {
                        // Give idle connections' write buffers back; busy ones regrow theirs.
                        c.out.release_if_empty();
                    }
                    let id = ConnId {
                        slot: slot as u32,
                        gen: c.gen,
                    };
                    if let Some(inf) = c.inflight.as_mut() {
                        // I4: QoS 1 deliveries not acknowledged in time go out again.
                        let due = inf.due(now, redeliver);
                        for f in &due {
                            if enqueue_into(c, f, Kind::Delivery, &self.cfg, &self.counters)
                                != Enqueued::Queued
                            {
                                break;
                            }
                            Counters::add(&self.counters.qos1_redeliveries, 1);
                        }
                        if !due.is_empty() {
                            mark_dirty(c, slot as u32, &mut dirty);
                        }
                    }
                    if c.identity.as_ref().is_some_and(|i| i.is_expired(now_unix)) {
                        // Documented choice (auth.rs): an expired token ends the connection.
                        let err = ProtoError::new(ErrorCode::Unauthorized, "token expired");
                        let mut b = Vec::with_capacity(96);
                        protocol::encode_error(&mut b, &err);
                        c.out.push_uncapped(&b);
                        to_close.push((id, frame::CLOSE_POLICY, "token expired"));
                    } else if now.duration_since(c.last_seen) > idle {
                        Counters::add(&self.counters.idle_closes, 1);
                        to_close.push((id, frame::CLOSE_POLICY, "idle timeout"));
                    } else if c
                        .blocked_since
                        .is_some_and(|t| now.duration_since(t) > idle)
                    {
                        Counters::add(&self.counters.slow_consumer_disconnects, 1);
                        to_close.push((id, frame::CLOSE_POLICY, "not reading"));
                    } else if now.duration_since(c.last_ping) >= ping_every {
                        c.last_ping = now;
                        if enqueue_into(c, &ping, Kind::Reply, &self.cfg, &self.counters)
                            == Enqueued::Queued
                        {
                            mark_dirty(c, slot as u32, &mut dirty);
                        }
                    }
                }
            }
            for (id, code, reason) in to_close {
                self.begin_close(id, code, reason);
            }
            self.wake_flusher();
        }
    }

    fn begin_shutdown(&self) {
        if self.shutting_down.replace(true) {
            return;
        }
        let ids: Vec<ConnId> = self
            .conns
            .borrow()
            .iter()
            .map(|(s, c)| ConnId {
                slot: s as u32,
                gen: c.gen,
            })
            .collect();
        for id in ids {
            self.begin_close(id, frame::CLOSE_GOING_AWAY, "server shutting down");
        }
        self.wake_shutdown_waiters();
    }

    fn wake_shutdown_waiters(&self) {
        for w in self.shutdown_wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn shutdown_started(&self) {
        poll_fn(|cx| {
            if self.shutting_down.get() {
                Poll::Ready(())
            } else {
                self.shutdown_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    async fn all_conns_closed(&self) {
        poll_fn(|cx| {
            if self.conns.borrow().is_empty() {
                Poll::Ready(())
            } else {
                self.shutdown_wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// `ok`, or `duplicate` when the id was seen within the window.
pub(crate) fn ack_status(p: &Published) -> AckStatus {
    if p.duplicate {
        AckStatus::Duplicate
    } else {
        AckStatus::Ok
    }
}

/// Seconds since the Unix epoch (token expiry is in wall-clock time).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Who waits for a publish's outcome.
pub(crate) enum PublishWaiter {
    Conn(ConnId),
    Task(LocalSender<Reply>),
}

thread_local! {
    /// The shard running on this thread (set once by [`run_shard`]).
    static SELF: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// Appends to a connection's out buffer, applying the slow-consumer policy. O(len).
fn enqueue_into(
    c: &mut Conn,
    bytes: &[u8],
    kind: Kind,
    cfg: &Config,
    counters: &Counters,
) -> Enqueued {
    if c.state != ConnState::Open {
        return Enqueued::Gone;
    }
    match c
        .out
        .push(bytes, kind, cfg.max_backlog_bytes, cfg.slow_consumer)
    {
        Push::Queued => Enqueued::Queued,
        Push::Dropped => {
            Counters::add(&counters.drops, 1);
            Enqueued::Dropped
        }
        Push::OverLimit => {
            Counters::add(&counters.slow_consumer_disconnects, 1);
            let err = ProtoError::new(
                ErrorCode::SlowConsumer,
                format!("more than {} bytes queued: closing", cfg.max_backlog_bytes),
            );
            let mut b = Vec::with_capacity(128);
            protocol::encode_error(&mut b, &err);
            c.out.push_uncapped(&b);
            close_conn(c, frame::CLOSE_POLICY, "slow consumer");
            Enqueued::Disconnected
        }
    }
}

/// Queues one delivery for a subscriber and notes its publish time for the latency histogram.
/// True when it was queued (not dropped, not cut off). Held back while the topic is replayed.
#[inline]
fn deliver_into(
    c: &mut Conn,
    slot: u32,
    o: &Outgoing<'_>,
    dirty: &mut Vec<u32>,
    cfg: &Config,
    counters: &Counters,
) -> bool {
    if let Some(r) = c.replaying.as_mut() {
        if let Some((_, held)) = r.topics.iter_mut().find(|(t, _)| *t == o.d.topic) {
            // Held back until the replay of this topic is written (see `Shard::replayed`).
            held.push(o.d.clone());
            return false;
        }
    }
    deliver_now(c, slot, o, dirty, cfg, counters, false)
}

/// One delivery as this core hands it to its subscribers: for QoS 1, one `Rc` every
/// subscriber's in-flight entry shares (plain counts, no atomics per subscriber), and one
/// timestamp for the whole fan-out.
struct Outgoing<'a> {
    d: &'a Delivery,
    qos1: Option<Rc<QosMsg>>,
    now: Instant,
}

impl<'a> Outgoing<'a> {
    fn new(d: &'a Delivery) -> Self {
        Outgoing {
            d,
            qos1: d.qos1.as_ref().map(|message_id| {
                Rc::new(QosMsg {
                    topic: d.topic.clone(),
                    seq_no: d.seq_no,
                    message_id: message_id.clone(),
                    frame: d.frame.clone(),
                })
            }),
            now: Instant::now(),
        }
    }
}

/// Queues one delivery now. A QoS 1 delivery is tracked until its ack (a replayed one only if
/// it is not tracked already); past `qos1_window` unacknowledged the connection is closed
/// with `SLOW_CONSUMER` (a QoS 1 delivery is never dropped: the session keeps it for `resume`).
/// A QoS 1 delivery refused by the `drop` backlog policy stays tracked and is sent again later.
fn deliver_now(
    c: &mut Conn,
    slot: u32,
    o: &Outgoing<'_>,
    dirty: &mut Vec<u32>,
    cfg: &Config,
    counters: &Counters,
    replayed: bool,
) -> bool {
    let d = o.d;
    if let Some(msg) = &o.qos1 {
        if c.state != ConnState::Open {
            return false;
        }
        let u = Unacked {
            msg: msg.clone(),
            sent_at: o.now,
            attempts: 1,
        };
        let inflight = c.inflight.get_or_insert_with(Default::default);
        let tracked = if replayed {
            inflight.track_replayed(u, cfg.qos1_window)
        } else {
            inflight.track(u, cfg.qos1_window)
        };
        match tracked {
            Track::Tracked => Counters::add(&counters.qos1_deliveries, 1),
            Track::AlreadyTracked => {}
            Track::WindowFull => {
                Counters::add(&counters.qos1_window_closes, 1);
                let err = ProtoError::new(
                    ErrorCode::SlowConsumer,
                    format!(
                        "{} QoS 1 deliveries are unacknowledged (qos1_window): closing; resume to get them again",
                        cfg.qos1_window
                    ),
                );
                let mut b = Vec::with_capacity(160);
                protocol::encode_error(&mut b, &err);
                c.out.push_uncapped(&b);
                close_conn(
                    c,
                    frame::CLOSE_POLICY,
                    "too many unacknowledged QoS 1 deliveries",
                );
                mark_dirty(c, slot, dirty);
                return false;
            }
        }
    }
    match enqueue_into(c, &d.frame, Kind::Delivery, cfg, counters) {
        Enqueued::Queued => {
            if !replayed {
                if c.pending_deliveries == 0 {
                    c.oldest_published_at = Some(d.published_at);
                }
                c.pending_deliveries += 1;
            }
            mark_dirty(c, slot, dirty);
            true
        }
        Enqueued::Disconnected => {
            mark_dirty(c, slot, dirty);
            false
        }
        Enqueued::Dropped | Enqueued::Gone => false,
    }
}

/// The socket failed (EPIPE, ECONNRESET, …): nothing more can be written; close.
fn peer_gone(c: &mut Conn) {
    c.clear_out();
    c.close_sent = true;
    c.state = ConnState::Closing;
    if let Some(w) = c.task_waker.take() {
        w.wake();
    }
}

/// Marks `Closing` and queues the close frame once.
fn close_conn(c: &mut Conn, code: u16, reason: &str) {
    if !c.close_sent {
        c.close_sent = true;
        let mut f = Vec::with_capacity(frame::MAX_SERVER_HEADER_BYTES + 125);
        frame::write_server_frame(&mut f, OpCode::Close, &frame::close_payload(code, reason));
        c.out.push_uncapped(&f);
    }
    c.state = ConnState::Closing;
    if let Some(w) = c.task_waker.take() {
        w.wake();
    }
}

#[inline]
fn mark_dirty(c: &mut Conn, slot: u32, dirty: &mut Vec<u32>) {
    if !c.is_dirty && c.blocked_since.is_none() {
        c.is_dirty = true;
        dirty.push(slot);
    }
}

/// Everything queued was written.
fn drained(c: &mut Conn, latency: &LatencyRecorder, now: Instant) {
    if let Some(at) = c.oldest_published_at.take() {
        latency.record(
            now.saturating_duration_since(at),
            u64::from(c.pending_deliveries),
        );
    }
    c.pending_deliveries = 0;
    if c.state == ConnState::Closing {
        if let Some(w) = c.task_waker.take() {
            w.wake();
        }
    }
}

/// Work the dispatcher does in order, behind the deliveries sequenced before it.
enum LocalWork {
    /// A frame this shard sequenced, for its local subscribers.
    Deliver(Delivery),
    /// This shard's own answer to a replay asked by one of its connections.
    Replayed { token: u64, answer: ReplayAnswer },
}

/// What a shard needs from the gateway to start.
pub(crate) struct ShardSetup {
    pub id: ShardId,
    pub core: usize,
    pub cfg: Arc<Config>,
    pub mesh: Mesh,
    pub inbox: Inbox,
    pub listener_fd: RawFd,
    pub auth: Arc<Authenticator>,
    /// `Some`: every connection speaks TLS (I7).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub boot: u64,
    /// The cluster backbone (`None`: one node).
    pub backbone: Option<BackboneTx>,
    /// Told once the shard accepts (so `start` returns only when every core is serving).
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
}

/// The shard's main future: starts its tasks, serves until shutdown, drains, returns.
pub(crate) async fn run_shard(setup: ShardSetup) {
    let shard = match Shard::new(
        setup.id,
        setup.core,
        setup.cfg.clone(),
        setup.mesh.clone(),
        setup.auth.clone(),
        setup.tls.clone(),
        setup.boot,
        setup.backbone.clone(),
    ) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            let _ = setup.ready.send(Err(format!(
                "core {}: cannot create the write ring: {e}",
                setup.core
            )));
            return;
        }
    };
    SELF.with(|s| *s.borrow_mut() = Some(shard.clone()));
    // SAFETY: `listener_fd` is a bound, listening socket created by the gateway for this shard
    // alone; ownership moves here (the gateway never uses or closes it afterwards).
    let listener = unsafe {
        <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(setup.listener_fd)
    };
    let dispatcher = glommio::spawn_local(shard.clone().dispatcher(setup.inbox));
    let flusher = glommio::spawn_local(shard.clone().flusher());
    let sweeper = glommio::spawn_local(shard.clone().sweeper());
    let acceptor = glommio::spawn_local(accept_loop(shard.clone(), listener));
    let _ = setup.ready.send(Ok(()));
    tracing::debug!(shard = shard.id, core = shard.core, "shard serving");

    shard.shutdown_started().await;
    drop(acceptor); // stop accepting: new connections go to nobody (the listener closes).
    let grace = Duration::from_millis(shard.cfg.shutdown_grace_ms);
    futures_lite::future::or(shard.all_conns_closed(), async {
        Timer::new(grace).await;
    })
    .await;
    let left = shard.conns.borrow().len();
    if left > 0 {
        tracing::warn!(
            shard = shard.id,
            left,
            "shutdown grace over; dropping connections"
        );
    }
    drop(sweeper);
    drop(dispatcher);
    drop(flusher);
    SELF.with(|s| *s.borrow_mut() = None);
}
