//! Cross-core messaging of one shard: sending to a peer (with the outbox that holds messages
//! for a full inbox, in order, and its drainer task) and the dispatcher task that drains this
//! core's own inbox and its local fan-out queue, and routes each message to its room.
//!
//! Only `ShardMsg`s cross cores (they carry `Bytes`, `Arc<str>` and plain ids); per-peer order
//! is kept, which replay seams and interest acks depend on. Wake-ups are crossbeam + one waker
//! per core (GLOMMIO-NOTES.md).
//!
//! May touch: the mesh senders, the outbox, the local fan-out queue. May not: block, or borrow
//! any shard state across an `.await`.
//!
//! Next on the path of a publish: [`super::fanout`] (`Shard::fan_out`).

use super::waiters::Reply;
use super::Shard;
use crate::mesh::{Delivery, Inbox, ReplayAnswer, ShardId, ShardMsg};
use crate::metrics::Counters;
use crossbeam_channel::TrySendError;
use futures_lite::future::poll_fn;
use glommio::timer::Timer;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

/// Cross-core messages waiting for full inboxes, over all peers, before publishes are refused.
pub(super) const OUTBOX_MAX_MESSAGES: usize = 256 * 1024;

/// Most consecutive deliveries of one topic fanned out together (`Shard::fan_out_batch`).
const MAX_BATCH: usize = 64;

/// Work the dispatcher does in order, behind the deliveries sequenced before it.
pub(super) enum LocalWork {
    /// A frame this shard sequenced, for its local subscribers.
    Deliver(Delivery),
    /// This shard's own answer to a replay asked by one of its connections.
    Replayed { token: u64, answer: ReplayAnswer },
    /// This shard's own answer to an HTTP publish made on it: behind the publish's local
    /// fan-out, so that once the client holds its 200 the delivery is queued for every local
    /// subscriber the topic had, and a subscription made after the answer cannot receive it (as
    /// on the other cores, whose deliveries travel ahead of the answer on the same channel). A
    /// WebSocket `ack` is not deferred (a publisher reads its ack before its own delivery).
    Answered {
        token: u64,
        reply: super::waiters::Reply,
    },
}

/// Per peer, the messages that found its inbox full, in order; drained by `drain_outbox`.
pub(super) struct Outbox {
    queues: RefCell<Vec<VecDeque<ShardMsg>>>,
    /// Messages waiting, over all peers (publishes are refused past `OUTBOX_MAX_MESSAGES`).
    len: Cell<usize>,
    /// The drainer task is running.
    draining: Cell<bool>,
}

impl Outbox {
    pub(super) fn new(peers: usize) -> Outbox {
        Outbox {
            queues: RefCell::new((0..peers).map(|_| VecDeque::new()).collect()),
            len: Cell::new(0),
            draining: Cell::new(false),
        }
    }

    /// Messages waiting, over all peers.
    pub(super) fn len(&self) -> usize {
        self.len.get()
    }
}

impl Shard {
    /// Sends to another shard, keeping per-peer order: if earlier messages wait in the outbox
    /// (the peer's inbox was full), this one waits behind them.
    pub(crate) fn send_to(&self, to: ShardId, msg: ShardMsg) {
        debug_assert_ne!(
            to, self.id,
            "local work is a direct call, never a mesh message"
        );
        let mut outbox = self.outbox.queues.borrow_mut();
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
        self.outbox.len.set(self.outbox.len.get() + 1);
        if !self.outbox.draining.replace(true) {
            let me = self.self_rc();
            glommio::spawn_local(async move { me.drain_outbox().await }).detach();
        }
    }

    /// Retries full inboxes until the outbox is empty. Runs only while something waits.
    async fn drain_outbox(self: Rc<Self>) {
        loop {
            {
                let mut outbox = self.outbox.queues.borrow_mut();
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
                self.outbox.len.set(left);
                if left == 0 {
                    self.outbox.draining.set(false);
                    return;
                }
            }
            Timer::new(Duration::from_micros(200)).await;
        }
    }

    pub(super) fn wake_dispatcher(&self) {
        if let Some(w) = self.dispatcher_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Drains the local fan-out queue and the inbox completely, then sleeps until either has
    /// work (register the wakers, then re-check: no lost wake-up, no spinning).
    pub(super) async fn dispatcher(self: Rc<Self>, inbox: Inbox) {
        let mut batch: Vec<Delivery> = Vec::new();
        // A message taken off the inbox behind a batch, handled next (before any newer one).
        let mut carry: Option<ShardMsg> = None;
        loop {
            let mut handled = 0usize;
            loop {
                let next = self.local_fanout.borrow_mut().pop_front();
                match next {
                    Some(LocalWork::Deliver(d)) => {
                        // The deliveries of this topic queued right behind it go out with it
                        // (`fan_out_batch`: one copy per subscriber for all of them).
                        batch.push(d);
                        self.take_same_topic(&mut batch);
                        handled += batch.len();
                        self.fan_out_batch(&batch).await;
                        batch.clear();
                    }
                    Some(LocalWork::Replayed { token, answer }) => {
                        self.replayed(token, answer);
                        handled += 1;
                    }
                    Some(LocalWork::Answered { token, reply }) => {
                        self.complete(token, reply);
                        handled += 1;
                    }
                    None => break,
                }
            }
            while let Some(msg) = carry.take().or_else(|| inbox.rx.try_recv().ok()) {
                let ShardMsg::Deliver(d) = msg else {
                    self.handle(msg).await;
                    handled += 1;
                    if handled.is_multiple_of(256) {
                        glommio::yield_if_needed().await;
                    } else {
                        self.let_writer_run_if_full().await;
                    }
                    if !self.local_fanout.borrow().is_empty() {
                        break;
                    }
                    continue;
                };
                // An owner's deliveries of one topic arrive in order; those of it right
                // behind this one go out with it (the first other message waits its turn).
                batch.push(d);
                while batch.len() < MAX_BATCH {
                    match inbox.rx.try_recv() {
                        Ok(ShardMsg::Deliver(d)) if d.topic == batch[0].topic => batch.push(d),
                        Ok(other) => {
                            carry = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                Counters::add(&self.counters.remote_frames_in, batch.len() as u64);
                handled += batch.len();
                self.fan_out_batch(&batch).await;
                batch.clear();
                glommio::yield_if_needed().await;
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
                if carry.is_none() && inbox.rx.is_empty() && self.local_fanout.borrow().is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }

    /// Moves the local deliveries queued right behind `batch`'s last, of the same topic, into
    /// it (at most `MAX_BATCH`): they would be fanned out next anyway, in this order.
    fn take_same_topic(&self, batch: &mut Vec<Delivery>) {
        let mut q = self.local_fanout.borrow_mut();
        while batch.len() < MAX_BATCH {
            match q.front() {
                Some(LocalWork::Deliver(d)) if d.topic == batch[0].topic => {
                    let Some(LocalWork::Deliver(d)) = q.pop_front() else {
                        unreachable!("front was a delivery");
                    };
                    batch.push(d);
                }
                _ => break,
            }
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
            ShardMsg::Forms {
                topic,
                from,
                deflate,
                sse,
            } => self.seq.borrow_mut().forms(&topic, from, deflate, sse),
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
}
