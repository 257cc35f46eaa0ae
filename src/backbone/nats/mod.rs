//! The NATS backbone: one thread running the async-nats client on a tokio runtime, bridged to
//! the cores (see the parent module for the contract).
//!
//! # How a topic's `seqNo` is assigned cluster-wide
//! One JetStream stream holds `<prefix>.in.>`. Each topic is one subject in it. To publish
//! `seqNo` n+1 a node stores the message with `Nats-Expected-Last-Subject-Sequence` = the stream
//! sequence of the topic's message n. JetStream accepts exactly one store per expected value,
//! so for every topic the stored messages form one chain 1, 2, 3, … whichever nodes publish.
//! A node that loses the race (`wrong last sequence`) reads the topic's last message back,
//! learns the new n and tries again. Each stored message carries its `seqNo` (`Ss-Seq`), its
//! `messageId`, QoS and acceptance time in headers; its body is the finished delivery JSON,
//! built once by the node that accepted the publish.
//!
//! Publishes of one topic from one node go one round trip at a time (each needs the previous
//! one's stream sequence); whatever waits meanwhile goes in the next round trip as one atomic
//! batch (NATS 2.12+). Different topics go in parallel. `Nats-Msg-Id` makes retries safe and
//! gives the cluster-wide duplicate window (I2): a stored message is never stored twice.
//!
//! # Delivery
//! The stream republishes each stored message on `<prefix>.out.<topic>` (core NATS). A node
//! subscribes to that subject while it has a subscriber of the topic and forwards each message,
//! in order, to the topic's owner core. A jump in `Ss-Seq` (core NATS dropped something, or the
//! link was down) is filled from JetStream before anything later is forwarded; what JetStream
//! no longer holds is reported to the owner as lost (subscribers get `REPLAY_UNAVAILABLE`
//! naming the range), never skipped silently. After a reconnect every subscription re-reads its
//! topic's last message and fills what it missed.
//!
//! May not: touch sockets of clients, or block on a core (it only sends to core inboxes).
//!
//! # Layout
//! This file holds the thread itself: [`start`], the main loop (commands from the cores, link
//! events), the state its tasks share ([`Node`], per-topic `TopicState`) and the dispatch of a
//! [`BackboneCmd`] to the job that serves it. Each job is an `impl Node` block in a file of its
//! own, in reading order (a publish, its delivery, then the reads they and replays build on):
//!
//! | file | what lives there |
//! |---|---|
//! | [`connect`] | client options, credentials, TLS; the stream's config, creating it (again) |
//! | [`store`] | publishing: per-topic queue, atomic batches, expected-last conflicts, retries |
//! | [`feed`] | a topic's live subscription: interest confirmed, gap fills, lost ranges, restarts |
//! | [`read`] | JetStream reads: a stored message's form, last/next message, batched direct get |
//! | [`replay`] | a replay out of JetStream for the owner core (frames from a `seqNo` on) |
//!
//! The jobs share [`Node`]'s fields (private to this module and its files); each file says what
//! else it may touch.
//!
//! Read next: [`connect`].

mod connect;
mod feed;
mod read;
mod replay;
mod store;

use super::{BackboneCmd, BackboneStats, BackboneTx, ClusterConfig, LinkState};
use crate::mesh::{Mesh, PublishReq, ShardMsg};
use crate::signing::Signer;
use async_nats::jetstream::{self, stream};
use hashbrown::HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Header: the topic `seqNo` of a stored message.
pub const H_SEQ: &str = "Ss-Seq";
/// Header: its `messageId`.
pub const H_ID: &str = "Ss-Id";
/// Header: `1` for QoS 1.
pub const H_QOS: &str = "Ss-Qos";
/// Header: unix µs when a gateway accepted the publish (for latency across nodes).
pub const H_AT: &str = "Ss-At";
/// Header: the node that accepted it.
pub const H_NODE: &str = "Ss-Node";

/// Most messages read back from JetStream with one request (replays, gap fills).
pub const READ_BATCH: usize = 256;

/// Most publishes of one topic stored as one atomic batch (NATS allows 1,000).
pub const MAX_BATCH: usize = 256;

/// What the NATS thread needs besides the cluster settings.
pub struct Setup {
    pub cluster: ClusterConfig,
    pub node: Arc<str>,
    pub mesh: Mesh,
    /// The duplicate window (the stream's `duplicate_window`).
    pub dedup_window: Duration,
    pub signer: Option<Signer>,
}

/// Starts the backbone thread: connects, creates or updates the stream, and returns once the
/// link is up (an unreachable NATS at startup is an error; later outages are survived).
pub fn start(setup: Setup) -> Result<BackboneTx, String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let stats = Arc::new(BackboneStats::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let handle = BackboneTx {
        tx,
        stats: stats.clone(),
        node: setup.node.clone(),
        max_pending: setup.cluster.max_pending_publishes,
    };
    std::thread::Builder::new()
        .name("subsocket-backbone".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the NATS runtime: {e}")));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, run(setup, stats, rx, ready_tx));
        })
        .map_err(|e| format!("cannot start the backbone thread: {e}"))?;
    match ready_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("NATS backbone: not connected within 30 s".into()),
    }
}

/// Per topic, on the NATS thread. Kept while the process lives once the topic was published
/// or subscribed here (about 100 bytes plus the name), so the next store needs no read first.
#[derive(Default)]
struct TopicState {
    /// Stream sequence and `seqNo` of the topic's last stored message, as far as this node
    /// knows (`None`: unknown, read it from JetStream before the next store).
    last: Option<(u64, u64)>,
    /// Publishes waiting their turn.
    queue: VecDeque<Waiting>,
    /// A task is storing this topic's queue.
    publishing: bool,
    /// The live subscription, when a core has a subscriber.
    sub: Option<SubHandle>,
}

struct Waiting {
    req: PublishReq,
    accepted_unix_us: u64,
}

struct SubHandle {
    gen: u64,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// Everything the thread's tasks share (single-threaded: `Rc`/`RefCell`).
struct Node {
    /// What the stream is created (again) with.
    stream_config: stream::Config,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    cc: ClusterConfig,
    node: Arc<str>,
    mesh: Mesh,
    stats: Arc<BackboneStats>,
    signer: Option<Signer>,
    topics: RefCell<HashMap<Arc<str>, TopicState>>,
    /// Bumped after every reconnect: subscriptions re-check what they missed.
    resync: tokio::sync::watch::Sender<u64>,
    /// Accept times (unix ms) of the publishes waiting -> how many (for the lag in `/stats`).
    waiting_since: RefCell<std::collections::BTreeMap<u64, u32>>,
    /// Whether the server takes atomic batches (NATS 2.12+): then a topic's waiting publishes
    /// are stored together, one round trip for up to [`MAX_BATCH`].
    atomic_batches: bool,
    next_batch: std::cell::Cell<u64>,
    /// This node's tag (as in session ids): the prefix of its batch ids.
    node_tag: String,
}

async fn run(
    setup: Setup,
    stats: Arc<BackboneStats>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<BackboneCmd>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let cc = setup.cluster.clone();
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let node = match connect::connect(&setup, &stats, ev_tx).await {
        Ok(n) => Rc::new(n),
        Err(e) => {
            let _ = ready.send(Err(format!("NATS backbone {}: {e}", cc.backbone)));
            return;
        }
    };
    stats.set_state(LinkState::Connected);
    tracing::info!(backbone = %cc.backbone, node = %node.node, stream = %cc.stream, "cluster backbone connected");
    let _ = ready.send(Ok(()));
    let mut was_down = false;
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => node.clone().handle(cmd),
                None => break,
            },
            ev = ev_rx.recv() => match ev {
                Some(async_nats::Event::Disconnected) => {
                    was_down = true;
                    stats.set_state(LinkState::Disconnected);
                    stats.set_error("disconnected from NATS; reconnecting");
                    tracing::warn!("cluster backbone: disconnected from NATS; reconnecting");
                }
                Some(async_nats::Event::Connected) => {
                    stats.set_state(LinkState::Connected);
                    if was_down {
                        was_down = false;
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!("cluster backbone: reconnected; re-checking every subscribed topic for missed messages");
                        // A NATS that lost its JetStream state (a fresh server, memory storage)
                        // has no stream: create it again before the subscriptions re-read.
                        let n = node.clone();
                        tokio::task::spawn_local(async move {
                            n.ensure_stream().await;
                            n.resync.send_modify(|g| *g += 1);
                        });
                    }
                }
                Some(other) => {
                    tracing::warn!("cluster backbone: {other}");
                    stats.set_error(&other);
                }
                None => {}
            },
        }
    }
}

impl Node {
    fn handle(self: Rc<Self>, cmd: BackboneCmd) {
        match cmd {
            BackboneCmd::Publish(req) => self.enqueue_publish(req),
            BackboneCmd::Subscribe { topic, gen, owner } => self.subscribe(topic, gen, owner),
            BackboneCmd::Unsubscribe { topic, gen } => {
                let mut topics = self.topics.borrow_mut();
                if let Some(t) = topics.get_mut(&topic) {
                    if t.sub.as_ref().is_some_and(|s| s.gen == gen) {
                        if let Some(s) = t.sub.take() {
                            let _ = s.stop.send(());
                        }
                    }
                    if t.sub.is_none() && t.queue.is_empty() && !t.publishing && t.last.is_none() {
                        topics.remove(&topic);
                    }
                }
            }
            BackboneCmd::Replay {
                topic,
                from_seq,
                reply_to,
                partial,
                owner,
            } => {
                tokio::task::spawn_local(async move {
                    let answer = self.replay(&topic, from_seq, partial).await;
                    self.stats.replays.fetch_add(1, Ordering::Relaxed);
                    self.mesh.send_blocking(
                        owner,
                        ShardMsg::BackboneReplayed {
                            topic,
                            reply_to,
                            answer,
                        },
                    );
                });
            }
        }
    }
}
