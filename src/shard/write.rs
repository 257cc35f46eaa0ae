//! The write path: the flusher task writes every dirty connection once per loop turn — one
//! io_uring SEND each, one submit for all (`uring::Writer`) — so every frame queued for a
//! connection since its last write leaves in one `send` (coalescing, GLOMMIO-NOTES.md section
//! 4). A connection whose socket is full gets a blocked-writer task that waits for POLLOUT and
//! finishes through glommio; it rejoins the batch once drained.
//!
//! May touch: connections' out buffers (taking written bytes off), the dirty/urgent lists, the
//! write ring, the latency recorder. May not: queue new frames or decide closes (except marking
//! a connection whose peer is gone).
//!
//! The end of the path of a publish: the bytes are on the subscriber's socket.

use super::connections::{peer_gone, Conn, ConnId, ConnState, NOT_BEHIND};
use super::Shard;
use crate::metrics::{Counters, LatencyRecorder};
use crate::uring::SendOp;
use crate::uring::Writer;
use futures_lite::future::poll_fn;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Poll;
use std::task::Waker;
use std::time::Instant;

#[inline]
pub(super) fn mark_dirty(c: &mut Conn, slot: u32, dirty: &mut Vec<u32>) {
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
    c.behind_at_ms = NOT_BEHIND;
    if c.state == ConnState::Closing {
        if let Some(w) = c.task_waker.take() {
            w.wake();
        }
    }
}

/// The write path's state: which connections the next flush writes, and the ring it writes
/// through.
pub(super) struct WriteQueue {
    /// Connections with bytes to write at the next flush.
    pub(super) dirty: RefCell<Vec<u32>>,
    /// Connections with an answer queued (pong, ack, error): written before the next chunk
    /// of a big flush, so a huge fan-out does not make a client wait for its pong.
    pub(super) urgent: RefCell<Vec<u32>>,
    /// The flusher, asleep until a connection becomes dirty.
    waker: RefCell<Option<Waker>>,
    /// Bytes fan-outs queued since the writer last had a chance to run (`fanout_turn_bytes`).
    turn_bytes: Cell<usize>,
    ring: RefCell<Writer>,
}

impl WriteQueue {
    pub(super) fn new(ring: Writer) -> WriteQueue {
        WriteQueue {
            dirty: RefCell::new(Vec::new()),
            urgent: RefCell::new(Vec::new()),
            waker: RefCell::new(None),
            turn_bytes: Cell::new(0),
            ring: RefCell::new(ring),
        }
    }
}

impl WriteQueue {
    /// Registers a new connection's socket at its slot in the ring's files (see
    /// `uring::Writer::register`); true when it is there.
    pub(super) fn register_file(&self, slot: u32, fd: std::os::fd::RawFd) -> bool {
        self.ring.borrow_mut().register(slot, fd)
    }

    pub(super) fn unregister_file(&self, slot: u32) {
        self.ring.borrow_mut().unregister(slot);
    }
}

impl Shard {
    pub(super) fn wake_flusher(&self) {
        if let Some(w) = self.writes.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// A fan-out queued `bytes` (over all its subscribers).
    #[inline]
    pub(super) fn queued_this_turn(&self, bytes: usize) {
        let t = &self.writes.turn_bytes;
        t.set(t.get().saturating_add(bytes));
    }

    /// The bound on what one turn takes in: once fan-outs queued `fanout_turn_bytes` since the
    /// writer last ran, wake the flusher and let it (and the blocked writers) run before
    /// queueing more. A burst then reaches the sockets slice by slice, and a subscriber that
    /// reads is offered its bytes before they pile up (its socket, not the turn, says whether
    /// it is slow). Otherwise yields only when the task's time slice is used up.
    pub(super) async fn let_writer_run(&self) {
        if self.writes.turn_bytes.get() >= self.cfg.fanout_turn_bytes {
            self.wake_flusher();
            futures_lite::future::yield_now().await;
            self.writes.turn_bytes.set(0);
        } else {
            glommio::yield_if_needed().await;
        }
    }

    /// [`Self::let_writer_run`] only when the turn's budget is spent (no time-slice check).
    pub(super) async fn let_writer_run_if_full(&self) {
        if self.writes.turn_bytes.get() >= self.cfg.fanout_turn_bytes {
            self.let_writer_run().await;
        }
    }

    /// The flusher task: every time connections became dirty, write each once.
    pub(super) async fn flusher(self: Rc<Self>) {
        let mut batch: Vec<u32> = Vec::new();
        let mut urgent: Vec<u32> = Vec::new();
        let mut results: Vec<i32> = Vec::new();
        loop {
            poll_fn(|cx| {
                if self.writes.dirty.borrow().is_empty() && self.writes.urgent.borrow().is_empty() {
                    *self.writes.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            std::mem::swap(&mut batch, &mut *self.writes.dirty.borrow_mut());
            // The writer runs: what fan-outs queue from here on is the next turn's.
            self.writes.turn_bytes.set(0);
            // A huge batch is written in chunks with a yield between them, so reads, accepts
            // and the dispatcher keep moving. Connections of later chunks stay marked dirty
            // meanwhile: frames queued for them during the yield join their one write. Answers
            // queued meanwhile (pongs, acks) go first, ahead of the rest of the batch.
            let chunk_len = self.cfg.flush_chunk_conns;
            for chunk in batch.chunks(chunk_len) {
                std::mem::swap(&mut urgent, &mut *self.writes.urgent.borrow_mut());
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
            std::mem::swap(&mut urgent, &mut *self.writes.urgent.borrow_mut());
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
                        fd: c.stream.fd(),
                        fixed: c.fixed_file.then_some(s),
                        buf: c.wire_bytes(),
                    }
                })
                .collect();
            if let Err(e) = self.writes.ring.borrow_mut().write_batch(&ops, results) {
                tracing::error!(shard = self.id, "write ring failed: {e}");
                results.clear();
                results.resize(ops.len(), -libc::EIO);
            }
        }
        Counters::add(&self.counters.writes, slots.len() as u64);
        let now = Instant::now();
        let mut to_block: Vec<ConnId> = Vec::new();
        let mut again: Vec<u32> = Vec::new();
        let mut followups: Vec<ConnId> = Vec::new();
        for (i, &slot) in slots.iter().enumerate() {
            let c = &mut conns[slot as usize];
            let res = results[i];
            if res >= 0 {
                Counters::add(&self.counters.bytes_out, res as u64);
                let all = c.advance_wire(res as usize);
                c.wrote(self.cfg.max_backlog_bytes);
                if !all {
                    to_block.push(ConnId { slot, gen: c.gen });
                } else if c.pending() == 0 {
                    drained(c, &self.latency, now);
                    if c.has_shed() {
                        followups.push(ConnId { slot, gen: c.gen });
                    }
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
            let mut dirty = self.writes.dirty.borrow_mut();
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
        for id in followups {
            self.after_drain(id);
        }
    }

    /// The socket is full: wait for writability (a POLLOUT poll, [`crate::readiness`]) and
    /// write the rest with `send(2)`; the connection rejoins the batch once drained.
    fn start_blocked_writer(self: &Rc<Self>, id: ConnId) {
        let shard = self.clone();
        let Some(stream) = self.with_conn(id, |c| {
            c.blocked_since = Some(Instant::now());
            // Over the cap already (a turn queued a burst before the writer ran): behind from
            // now, not from the next delivery that happens to look.
            c.behind_at_ms = if c.pending() > self.cfg.max_backlog_bytes {
                0
            } else {
                NOT_BEHIND
            };
            c.progress_at_ms = 0;
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
                    stream.poll_write(cx, c.wire_bytes())
                })
                .await;
                let mut followup = false;
                let done = shard
                    .with_conn(id, |c| match res {
                        Ok(n) => {
                            Counters::add(&shard.counters.bytes_out, n as u64);
                            c.advance_wire(n);
                            c.wrote(shard.cfg.max_backlog_bytes);
                            if n > 0 {
                                c.progressed();
                            }
                            if c.pending() == 0 {
                                drained(c, &shard.latency, Instant::now());
                                c.blocked_since = None;
                                followup = c.has_shed(); // the ladder has a range to tell or refill
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
                if followup {
                    shard.after_drain(id);
                }
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
}
