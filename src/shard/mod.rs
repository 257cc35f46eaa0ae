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
use crate::config::Config;
use crate::history::{History, ReplayError};
use crate::mesh::{Delivery, Inbox, Mesh, PublishReq, Published, ShardId, ShardMsg};
use crate::metrics::{Counters, LatencyRecorder, Snapshot};
use crate::outbuf::{Kind, OutBuf, Push};
use crate::protocol::{self, AckStatus, ErrorCode, ProtoError};
use crate::publish::{Dedup, IdGen, Sequencer};
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
/// How long a closing connection may take to flush its close frame.
const CLOSE_FLUSH_MS: u64 = 1_000;

/// A connection's identity on its shard: slab slot + generation, so a stale id never reaches a
/// newer connection that reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Conn {
    /// Bytes queued and not yet taken by the kernel.
    #[inline]
    pub fn pending(&self) -> usize {
        self.out.pending()
    }
}

/// Topics being replayed to a connection, each with the live frames held back meanwhile.
#[derive(Default)]
pub(crate) struct Replaying(Vec<(Arc<str>, Vec<Delivery>)>);

/// The answer an HTTP request task waits for.
#[derive(Debug)]
pub(crate) enum Reply {
    Published(Published),
    Stats(Box<Snapshot>),
}

/// Someone on this shard waiting for another shard's answer.
enum Pending {
    /// A WebSocket `publish`: answer with `ack` on this connection.
    ConnAck(ConnId),
    /// A `replay` (or `subscribe` with `fromSeq`) of a connection.
    Replay(ConnId, Arc<str>),
    /// An HTTP request task; `remaining` answers still expected.
    Task {
        tx: LocalSender<Reply>,
        remaining: usize,
    },
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
    /// Connections with bytes to write at the next flush.
    dirty: RefCell<Vec<u32>>,
    flush_waker: RefCell<Option<Waker>>,
    writer: RefCell<Writer>,
    pub counters: Counters,
    /// Publish-to-write latency of deliveries written by this core (I5).
    pub latency: LatencyRecorder,
    /// Deliveries sequenced here for local subscribers, in seqNo order per topic.
    local_fanout: RefCell<VecDeque<LocalWork>>,
    /// History of the topics this shard owns (I6).
    history: RefCell<History>,
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
    pub shutting_down: Cell<bool>,
    /// Wakes the accept loop and the main future on shutdown.
    shutdown_wakers: RefCell<Vec<Waker>>,
}

impl Shard {
    pub(crate) fn new(
        id: ShardId,
        core: usize,
        cfg: Arc<Config>,
        mesh: Mesh,
        auth: Arc<Authenticator>,
        boot: u64,
    ) -> std::io::Result<Shard> {
        let writer = Writer::new(cfg.write_path, cfg.write_ring_entries)?;
        let latency = LatencyRecorder::new(cfg.latency_objectives_us.clone());
        let history = History::new(cfg.history.clone()).map_err(std::io::Error::other)?;
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
            dirty: RefCell::new(Vec::new()),
            flush_waker: RefCell::new(None),
            writer: RefCell::new(writer),
            counters: Counters::default(),
            latency,
            local_fanout: RefCell::new(VecDeque::new()),
            history: RefCell::new(history),
            dispatcher_waker: RefCell::new(None),
            outbox: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            outbox_len: Cell::new(0),
            outbox_draining: Cell::new(false),
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            ids: RefCell::new(IdGen::new(boot, id)),
            table_version: Cell::new(0),
            fanout_scratch: RefCell::new(Vec::new()),
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
    ) -> ConnId {
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        let now = Instant::now();
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
            last_ping: now,
            single_topic,
            identity,
            replaying: None,
        });
        Counters::add(&self.counters.ws_opened, 1);
        ConnId {
            slot: slot as u32,
            gen,
        }
    }

    /// Removes a connection and every subscription it held. Called by its own task, last.
    pub(crate) fn remove_conn(&self, id: ConnId) {
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
        }
        drop(conns);
        self.wake_flusher();
        res
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
        let mut results: Vec<i32> = Vec::new();
        loop {
            poll_fn(|cx| {
                if self.dirty.borrow().is_empty() {
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
            // meanwhile: frames queued for them during the yield join their one write.
            let chunk_len = self.cfg.flush_chunk_conns;
            for chunk in batch.chunks(chunk_len) {
                self.flush(chunk, &mut results);
                if batch.len() > chunk_len {
                    glommio::yield_if_needed().await;
                }
            }
            batch.clear();
        }
    }

    /// Writes every listed connection once: one SEND each, one submit for all (io_uring path).
    fn flush(self: &Rc<Self>, batch: &[u32], results: &mut Vec<i32>) {
        let mut conns = self.conns.borrow_mut();
        let mut slots: Vec<u32> = Vec::with_capacity(batch.len());
        for &slot in batch {
            if let Some(c) = conns.get_mut(slot as usize) {
                c.is_dirty = false;
                if c.blocked_since.is_none() && c.pending() > 0 {
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
                        buf: c.out.pending_bytes(),
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
        for (i, &slot) in slots.iter().enumerate() {
            let c = &mut conns[slot as usize];
            let res = results[i];
            if res >= 0 {
                Counters::add(&self.counters.bytes_out, res as u64);
                if c.out.advance(res as usize) {
                    drained(c, &self.latency, now);
                } else {
                    to_block.push(ConnId { slot, gen: c.gen });
                }
            } else if res == -libc::EAGAIN {
                to_block.push(ConnId { slot, gen: c.gen });
            } else {
                // The peer is gone (EPIPE, ECONNRESET, …): drop what is queued and close.
                peer_gone(c);
            }
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
                    let conns = shard.conns.borrow();
                    let Some(c) = conns.get(id.slot as usize).filter(|c| c.gen == id.gen) else {
                        return Poll::Ready(Ok(0));
                    };
                    if c.pending() == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    let mut s = stream.borrow_mut();
                    futures_lite::AsyncWrite::poll_write(
                        std::pin::Pin::new(&mut *s),
                        cx,
                        c.out.pending_bytes(),
                    )
                })
                .await;
                let done = shard
                    .with_conn(id, |c| match res {
                        Ok(n) => {
                            Counters::add(&shard.counters.bytes_out, n as u64);
                            if c.out.advance(n) {
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
        };
        if owner == self.id {
            self.sequence(req);
        } else {
            self.send_to(owner, ShardMsg::Publish(req));
        }
        Ok(())
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
        let frame =
            protocol::encode_message_frame(&req.topic, seq_no, &result.message_id, &req.payload);
        let d = Delivery {
            topic: req.topic,
            seq_no,
            frame,
            published_at: req.accepted_at,
        };
        for peer in 0..self.n_shards() {
            if peer != self.id {
                self.send_to(peer, ShardMsg::Deliver(d.clone()));
            }
        }
        self.history
            .borrow_mut()
            .push(&d.topic, seq_no, d.frame.clone(), Instant::now());
        self.local_fanout
            .borrow_mut()
            .push_back(LocalWork::Deliver(d));
        self.wake_dispatcher();
        self.answer_publish(req.reply_to, result);
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
                        d,
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
                                d,
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

    /// Tells the topic's owner that this shard gained or lost its first/last subscriber.
    pub(crate) fn interest(&self, topic: Arc<str>, up: bool) {
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        if owner == self.id {
            self.seq.borrow_mut().interest(&topic, up);
        } else {
            self.send_to(owner, ShardMsg::Interest { topic, up });
        }
    }

    /// Subscribes a connection; tells the owner when the topic is new on this shard.
    pub(crate) fn subscribe(&self, id: ConnId, topic: &str) {
        use crate::topics::Subscribed;
        let res = self.topics.borrow_mut().subscribe(id.slot, topic);
        if let Subscribed::Added {
            topic_created: true,
        } = res
        {
            let t = self
                .topics
                .borrow()
                .interned(topic)
                .expect("just subscribed");
            self.interest(t, true);
        }
        self.bump_table_version();
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
                if let Reply::Published(p) = reply {
                    self.reply(id, |b| {
                        protocol::encode_ack(b, &p.message_id, ack_status(&p), Some(p.seq_no))
                    });
                }
            }
            Some(Pending::Replay(..)) => {}
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
                    Some(LocalWork::Replayed {
                        token,
                        last_seq,
                        result,
                    }) => {
                        self.replayed(token, last_seq, result);
                        handled += 1;
                    }
                    None => break,
                }
            }
            while let Ok(msg) = inbox.rx.try_recv() {
                self.handle(msg).await;
                handled += 1;
                if handled % 256 == 0 {
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
            ShardMsg::Deliver(d) => self.fan_out(&d).await,
            ShardMsg::Published { token, result } => self.complete(token, Reply::Published(result)),
            ShardMsg::Interest { topic, up } => self.seq.borrow_mut().interest(&topic, up),
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
            } => self.answer_replay(topic, from_seq, reply_to),
            ShardMsg::Replayed {
                token,
                last_seq,
                result,
            } => self.replayed(token, last_seq, result),
            ShardMsg::Shutdown => self.begin_shutdown(),
        }
    }

    // ----- replay (I6) ---------------------------------------------------------------------

    /// A connection asks for `topic`'s frames from `from_seq` on. Until the owner's answer is
    /// handled, live frames of that topic for this connection are held back (see
    /// [`deliver_into`]), so the replay and the live stream meet without gap or duplicate.
    pub(crate) fn request_replay(&self, id: ConnId, topic: Arc<str>, from_seq: u64) {
        let started = self.with_conn(id, |c| {
            let r = c.replaying.get_or_insert_with(Default::default);
            if r.0.iter().any(|(t, _)| *t == topic) {
                return false;
            }
            r.0.push((topic.clone(), Vec::new()));
            true
        });
        if started != Some(true) {
            return;
        }
        let token = self.next_token();
        self.pending
            .borrow_mut()
            .insert(token, Pending::Replay(id, topic.clone()));
        let owner = crate::publish::owner_shard(&topic, self.n_shards());
        if owner == self.id {
            self.answer_replay(topic, from_seq, (self.id, token));
        } else {
            self.send_to(
                owner,
                ShardMsg::Replay {
                    topic,
                    from_seq,
                    reply_to: (self.id, token),
                },
            );
        }
    }

    /// On the owner: answer from the history. The answer travels behind every frame of the
    /// topic sequenced so far (the local fan-out queue here, the owner -> core FIFO elsewhere).
    fn answer_replay(&self, topic: Arc<str>, from_seq: u64, reply_to: (ShardId, u64)) {
        let last_seq = self.seq.borrow().last_seq(&topic);
        let result =
            self.history
                .borrow_mut()
                .replay_from(&topic, from_seq, last_seq, Instant::now());
        let (shard, token) = reply_to;
        if shard == self.id {
            self.local_fanout
                .borrow_mut()
                .push_back(LocalWork::Replayed {
                    token,
                    last_seq,
                    result,
                });
            self.wake_dispatcher();
        } else {
            self.send_to(
                shard,
                ShardMsg::Replayed {
                    token,
                    last_seq,
                    result,
                },
            );
        }
    }

    /// The owner's answer reached the connection's core: write the replayed frames, then the
    /// held-back live frames newer than `last_seq` (older ones were in the replay), then resume
    /// live delivery.
    fn replayed(&self, token: u64, last_seq: u64, result: Result<Vec<Bytes>, ReplayError>) {
        let Some(Pending::Replay(id, topic)) = self.pending.borrow_mut().remove(&token) else {
            return;
        };
        let held = self.with_conn(id, |c| {
            let r = c.replaying.as_mut()?;
            let i = r.0.iter().position(|(t, _)| *t == topic)?;
            let (_, held) = r.0.swap_remove(i);
            if r.0.is_empty() {
                c.replaying = None;
            }
            Some(held)
        });
        let Some(Some(held)) = held else { return };
        match result {
            Ok(frames) => {
                for f in &frames {
                    self.enqueue_delivery(id, f);
                }
            }
            Err(ReplayError::Unavailable { oldest_held, .. }) => {
                let msg = match oldest_held {
                    Some(o) => format!("messages before seqNo {o} are no longer held; the oldest held is {o}, the last is {last_seq}"),
                    None => format!("no message of this topic is held (the last seqNo is {last_seq})"),
                };
                self.reply_error(
                    id,
                    &ProtoError::new(ErrorCode::ReplayUnavailable, msg).with_topic(&topic),
                );
            }
            Err(ReplayError::FromSeqInFuture { from_seq, last_seq }) => {
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
        for d in held.iter().filter(|d| d.seq_no > last_seq) {
            self.enqueue_delivery(id, &d.frame);
        }
    }

    /// Queues one (replayed or held-back) delivery frame for a connection.
    fn enqueue_delivery(&self, id: ConnId, frame: &[u8]) {
        let mut conns = self.conns.borrow_mut();
        let Some(c) = conns.get_mut(id.slot as usize).filter(|c| c.gen == id.gen) else {
            return;
        };
        let res = enqueue_into(c, frame, Kind::Delivery, &self.cfg, &self.counters);
        if matches!(res, Enqueued::Queued | Enqueued::Disconnected) {
            if res == Enqueued::Queued {
                Counters::add(&self.counters.deliveries, 1);
            }
            mark_dirty(c, id.slot, &mut self.dirty.borrow_mut());
        }
        drop(conns);
        self.wake_flusher();
    }

    // ----- heartbeats and shutdown -------------------------------------------------------

    /// Once a second: ping connections that have been quiet, close the silent and the stuck.
    async fn sweeper(self: Rc<Self>) {
        let idle = Duration::from_millis(self.cfg.idle_timeout_ms);
        let ping_every = Duration::from_millis(self.cfg.ping_interval_ms);
        let tick = Duration::from_millis(self.cfg.ping_interval_ms.clamp(10, 1000));
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
/// True when it was queued (not dropped, not cut off).
#[inline]
fn deliver_into(
    c: &mut Conn,
    slot: u32,
    d: &Delivery,
    dirty: &mut Vec<u32>,
    cfg: &Config,
    counters: &Counters,
) -> bool {
    if let Some(r) = c.replaying.as_mut() {
        if let Some((_, held)) = r.0.iter_mut().find(|(t, _)| *t == d.topic) {
            // Held back until the replay of this topic is written (see `Shard::replayed`).
            held.push(d.clone());
            return false;
        }
    }
    match enqueue_into(c, &d.frame, Kind::Delivery, cfg, counters) {
        Enqueued::Queued => {
            if c.pending_deliveries == 0 {
                c.oldest_published_at = Some(d.published_at);
            }
            c.pending_deliveries += 1;
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
    c.out.clear();
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
    Replayed {
        token: u64,
        last_seq: u64,
        result: Result<Vec<Bytes>, ReplayError>,
    },
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
    pub boot: u64,
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
        setup.boot,
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
