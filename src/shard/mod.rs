//! `Shard`: everything one core owns, and the tasks that run on it.
//!
//! A shard is one glommio executor pinned to one core. It owns its connections (a slab), its
//! [`TopicTable`], the [`Sequencer`] state of the topics it owns, its counters and its write
//! ring. It is the only place with `Rc`/`RefCell` state, and none of it is `Send`: the compiler
//! keeps it on its core. It may not lock, block, call std::net, or hold anything of another
//! shard's except the [`Mesh`] senders.
//!
//! This file holds the [`Shard`] struct itself, its construction and [`run_shard`] (the tasks
//! it starts and the shutdown drain). Each step a message takes is a room of its own, an
//! `impl Shard` block (or a small type) in the file named after that step. In the order a
//! WebSocket publish walks them (docs/architecture.md walks it hop by hop):
//!
//! | file | what lives there |
//! |---|---|
//! | [`accept`] | the accept loop, one task per socket: request head, plain HTTP or upgrade |
//! | [`socket`] | reads and pre-upgrade writes on a socket, the TLS record plumbing |
//! | [`http`] | plain HTTP: `/publish`, `/stats`, `/metrics`, `/docs` |
//! | [`sse`] | event-stream subscribers (`/sse`): the request checked, registered like a WebSocket, resumed by `Last-Event-ID` |
//! | [`reader`] | a WebSocket connection's task: reads frames until it closes, then tears down |
//! | [`messages`] | one Micro Socket message -> the `Shard` calls it asks for (checks first) |
//! | [`publish`] | accept a publish, route it to the owner; on the owner: sequence, frame once, dispatch |
//! | [`inbox`] | cross-core: the outbox to full peers, the dispatcher that drains the inbox |
//! | [`fanout`] | one delivery -> every local subscriber's out buffer (QoS 1 tracking, replay hold-back) |
//! | [`connections`] | `Conn` and its out buffer, queueing answers, the slow-consumer policy, closing |
//! | [`write`] | the flusher: one io_uring SEND per dirty connection per turn; the blocked writer |
//! | [`budget`] | the core's backlog budget: past it, the largest stalled backlogs are shed |
//! | [`memory`] | the memory budget's share of this core, admission near it, per-identity caps |
//! | [`subscriptions`] | subscribe/unsubscribe on the topic table, admission, answers in request order |
//! | [`interest`] | which cores want a topic: told to its owner, acknowledged before `subscribed` |
//! | [`replay`] | `replay`/`fromSeq`: the owner answers from history, the seam with the live feed |
//! | [`sessions`] | sessions kept for `resume`, and the hand-over between cores and nodes |
//! | [`qos`] | QoS 1 acks (I4); tracking is in `fanout`, redelivery in `housekeeping` |
//! | [`backbone`] | clusters: what the NATS thread hands the owner core (feed, gaps, restarts) |
//! | [`waiters`] | who waits for another core's answer: tokens and `complete` |
//! | [`housekeeping`] | the sweeper (pings, idle and stuck connections, expiry), stats, shutdown |
//!
//! Tasks per shard:
//! - the accept loop ([`accept::accept_loop`]), one task per connection ([`reader`]);
//! - the dispatcher ([`inbox`]): drains the local fan-out queue and the cross-core inbox;
//! - the flusher ([`write`]): once per loop turn, writes every dirty connection once (io_uring batch);
//! - the sweeper ([`housekeeping`]): heartbeats and idle timeouts, once a second;
//! - the outbox drainer ([`inbox`]), only while a peer's inbox is full.
//!
//! Borrow rule: a `RefCell` of the shard is borrowed only between two `.await`s, never across
//! one, and fan-out never calls back into connection code (it only appends bytes and marks
//! connections dirty), so no borrow can be re-entered. The rooms share the `Shard`'s fields
//! (they are private to this module and its rooms); a room's own state lives in a struct of
//! that room where it can.

mod accept;
mod backbone;
mod budget;
mod connections;
mod fanout;
mod housekeeping;
mod http;
mod inbox;
mod interest;
mod ladder;
mod memory;
mod messages;
mod publish;
mod qos;
mod reader;
mod replay;
mod sessions;
mod socket;
mod sse;
mod subscriptions;
mod waiters;
mod write;

use crate::auth::Authenticator;
use crate::backbone::BackboneTx;
use crate::config::Config;
use crate::history::{History, HistoryRule, Pattern};
use crate::mesh::{Inbox, Mesh, ShardId};
use crate::metrics::{Counters, LatencyRecorder};
use crate::publish::{Dedup, IdGen, Sequencer};
use crate::session::{self, Sessions};
use crate::signing::Signer;
use crate::topics::TopicTable;
use crate::uring::Writer;
use glommio::timer::Timer;
use hashbrown::HashMap;
use slab::Slab;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use accept::accept_loop;
use backbone::BbSub;
use connections::{Conn, ConnId};
use inbox::{LocalWork, Outbox};
use waiters::Pending;
use write::WriteQueue;

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
    /// What the next flush writes, and the ring it writes through ([`write`]).
    writes: WriteQueue,
    /// Readiness for this core's sockets (they are owned directly, not glommio streams).
    pub(crate) poller: Rc<crate::readiness::Poller>,
    /// The ceiling on all connections' queued bytes together ([`budget`]).
    budget: budget::Budget,
    /// The memory budget's share of this core, and who holds what ([`memory`]).
    memory: memory::Memory,
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
    /// Per topic with at least one such local subscriber: how many take compressed deliveries
    /// and how many are event streams (the owner is told when a count leaves or reaches 0).
    form_counts: RefCell<HashMap<Arc<str>, (u32, u32)>>,
    /// Per connection, its subscribe answers still waiting (tokens in request order): answers
    /// go out in the order the requests came, even when a later one is ready first.
    subscribe_order: RefCell<HashMap<ConnId, VecDeque<u64>>>,
    /// Sessions held here, and where those made here are (I6 `resume`).
    sessions: RefCell<Sessions<ConnId>>,
    /// `qos1_topics`, parsed.
    qos1_topics: Vec<Pattern>,
    /// The slow-consumer policies per topic.
    ladder: ladder::Ladder,
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
    /// Messages waiting for a full peer inbox ([`inbox`]).
    outbox: Outbox,
    pending: RefCell<HashMap<u64, Pending>>,
    next_token: Cell<u64>,
    pub ids: RefCell<IdGen>,
    /// Bumped by every change of the topic table; a sliced fan-out that sees it move re-checks
    /// each slot of its snapshot before writing.
    table_version: Cell<u64>,
    fanout_scratch: RefCell<Vec<u32>>,
    /// Every idle connection's reads land here first (see `socket::read_via_scratch`).
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
        // Registered files for the sends (the kernel skips a file lookup per send): one slot
        // per connection slot, as many as this core may hold and the descriptor limit allows.
        let writer = Writer::new(cfg.write_path, cfg.write_ring_entries)?
            .with_fixed_files(fixed_file_slots(cfg.max_conns_per_core));
        let poller = crate::readiness::Poller::new(POLLER_ENTRIES)?;
        let latency = LatencyRecorder::new(cfg.latency_objectives_us.clone());
        let memory = memory::Memory::new(&cfg, mesh.len());
        let budget = budget::Budget::new(cfg.core_backlog_budget_bytes, memory.budget.per_core);
        let mut history_cfg = cfg.history.clone();
        // History and backlogs each take at most a quarter of the core's memory share.
        history_cfg.budget_bytes = history_cfg.budget_bytes.min(memory.budget.per_core / 4);
        history_cfg.qos1_fallback = Some(HistoryRule {
            pattern: "*".into(),
            max_messages: Some(cfg.qos1_history_max_messages),
            max_bytes: None,
            max_age_ms: Some(cfg.qos1_history_max_age_ms),
        });
        let history = History::new(history_cfg).map_err(std::io::Error::other)?;
        let ladder = ladder::Ladder::new(&cfg).map_err(std::io::Error::other)?;
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
        // The dedup window, too, takes at most an eighth of the core's memory share.
        let dedup = Dedup::new(
            Duration::from_millis(cfg.dedup_window_ms),
            cfg.dedup_max_entries
                .min(memory.budget.per_core / 8 / crate::memory::DEDUP_ENTRY_BYTES),
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
            writes: WriteQueue::new(writer),
            poller,
            budget,
            memory,
            counters: Counters::default(),
            latency,
            local_fanout: RefCell::new(VecDeque::new()),
            history: RefCell::new(history),
            sessions: RefCell::new(sessions),
            interest_pending: RefCell::new(HashMap::new()),
            form_counts: RefCell::new(HashMap::new()),
            subscribe_order: RefCell::new(HashMap::new()),
            qos1_topics,
            ladder,
            signer,
            backbone,
            local_topics,
            bb_subs: RefCell::new(HashMap::new()),
            bb_gen: Cell::new(0),
            dispatcher_waker: RefCell::new(None),
            outbox: Outbox::new(n),
            pending: RefCell::new(HashMap::new()),
            next_token: Cell::new(1),
            ids: RefCell::new(IdGen::new(boot, id)),
            table_version: Cell::new(0),
            fanout_scratch: RefCell::new(Vec::new()),
            read_scratch: RefCell::new(vec![0u8; socket::BUSY_READ_BYTES].into_boxed_slice()),
            shutting_down: Cell::new(false),
            shutdown_wakers: RefCell::new(Vec::new()),
        })
    }

    fn n_shards(&self) -> usize {
        self.mesh.len()
    }

    fn self_rc(&self) -> Rc<Shard> {
        SELF.with(|s| s.borrow().clone().expect("shard registered on its thread"))
    }
}

/// Registered-file slots for a core's write ring: `max_conns_per_core`, at most the soft
/// RLIMIT_NOFILE (the kernel's cap on the table).
fn fixed_file_slots(max_conns: usize) -> u32 {
    // SAFETY: getrlimit writes one `rlimit` we own.
    let nofile = unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur
        } else {
            0
        }
    };
    max_conns.min(nofile as usize).min(u32::MAX as usize) as u32
}

/// Seconds since the Unix epoch (token expiry is in wall-clock time).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

thread_local! {
    /// The shard running on this thread (set once by [`run_shard`]).
    static SELF: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
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

/// Submission slots of a core's readiness ring: polls queued in one executor pass beyond this
/// are submitted in several calls.
const POLLER_ENTRIES: u32 = 512;

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
    let listener_fd =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(setup.listener_fd) };
    let listener = match crate::readiness::Socket::new(listener_fd, &shard.poller) {
        Ok(l) => l,
        Err(e) => {
            let _ = setup.ready.send(Err(format!(
                "core {}: cannot use the listener: {e}",
                setup.core
            )));
            return;
        }
    };
    let submitter = glommio::spawn_local(shard.poller.clone().submitter());
    let doorbell = glommio::spawn_local(shard.poller.clone().doorbell());
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
    shard.poller.submit_now();
    drop(doorbell);
    drop(submitter);
    SELF.with(|s| *s.borrow_mut() = None);
}
