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

use super::{BackboneCmd, BackboneStats, BackboneTx, ClusterConfig, LinkState, Storage};
use crate::history::{HeldFrame, ReplayError};
use crate::mesh::{Delivery, Mesh, PublishReq, Published, ReplayAnswer, ShardId, ShardMsg};
use crate::protocol::{self, ErrorCode, ProtoError};
use crate::signing::Signer;
use crate::ws::frame::{write_server_frame, OpCode};
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use hashbrown::HashMap;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let node = match connect(&setup, &stats, ev_tx).await {
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

async fn connect(
    setup: &Setup,
    stats: &Arc<BackboneStats>,
    events: tokio::sync::mpsc::UnboundedSender<async_nats::Event>,
) -> Result<Node, String> {
    let cc = &setup.cluster;
    let req_timeout = Duration::from_millis(cc.request_timeout_ms);
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("subsocket {}", setup.node))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(req_timeout))
        .max_reconnects(None)
        .subscription_capacity(64 * 1024)
        .client_capacity(64 * 1024)
        .retain_servers_order()
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((50u64 << attempt.min(5)).min(1_000))
        })
        .event_callback(move |ev| {
            let events = events.clone();
            async move {
                let _ = events.send(ev);
            }
        });
    if let Some(f) = &cc.creds_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("creds_file {}: {e}", f.display()))?;
    }
    if let Some(t) = &cc.token {
        opts = opts.token(t.clone());
    }
    if let Some(ca) = &cc.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&cc.tls_cert_file, &cc.tls_key_file) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    if cc.require_tls {
        opts = opts.require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> = cc
        .urls()
        .iter()
        .map(|u| u.parse().map_err(|e| format!("'{u}': {e}")))
        .collect::<Result<_, String>>()?;
    let client = opts.connect(urls).await.map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new()
        .timeout(req_timeout)
        .ack_timeout(req_timeout)
        .max_ack_inflight(1 << 20)
        .build(client.clone());
    let in_prefix = format!("{}.in", cc.subject_prefix);
    let atomic_batches = server_at_least(&client.server_info().version, (2, 12));
    let config = stream::Config {
        name: cc.stream.clone(),
        subjects: vec![format!("{in_prefix}.>")],
        max_messages_per_subject: cc.history_per_topic,
        max_age: Duration::from_millis(cc.history_max_age_ms),
        max_bytes: cc.history_max_bytes,
        storage: match cc.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: cc.replicas,
        duplicate_window: setup.dedup_window,
        allow_direct: true,
        allow_atomic_publish: atomic_batches,
        republish: Some(stream::Republish {
            source: format!("{in_prefix}.>"),
            destination: format!("{}.out.>", cc.subject_prefix),
            headers_only: false,
        }),
        ..Default::default()
    };
    // A freshly started NATS cluster may still be electing its JetStream leader: retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => match js.get_stream(&cc.stream).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("stream {}: {e}; retrying", cc.stream)
                }
                Err(e) => return Err(format!("stream {}: {e}", cc.stream)),
            },
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("stream {}: {e}; retrying", cc.stream)
            }
            Err(e) => return Err(format!("cannot create stream {}: {e}", cc.stream)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (resync, _) = tokio::sync::watch::channel(0u64);
    Ok(Node {
        stream_config: config,
        client,
        js,
        stream,
        cc: cc.clone(),
        node: setup.node.clone(),
        mesh: setup.mesh.clone(),
        stats: stats.clone(),
        signer: setup.signer.clone(),
        topics: RefCell::new(HashMap::new()),
        resync,
        waiting_since: RefCell::new(std::collections::BTreeMap::new()),
        atomic_batches,
        next_batch: std::cell::Cell::new(0),
        node_tag: crate::session::tag_of_node(&setup.node),
    })
}

/// A stored message, read back.
struct Stored {
    stream_seq: u64,
    seq: u64,
    json: Bytes,
    qos1: Option<Arc<str>>,
    at_us: u64,
    node: Option<String>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

impl Stored {
    fn from_parts(stream_seq: u64, headers: Option<&HeaderMap>, payload: Bytes) -> Option<Stored> {
        let h = headers?;
        let seq = header(h, H_SEQ)?.parse().ok()?;
        let qos1 = (header(h, H_QOS) == Some("1"))
            .then(|| header(h, H_ID).map(Arc::from))
            .flatten();
        Some(Stored {
            stream_seq,
            seq,
            json: payload,
            qos1,
            at_us: header(h, H_AT).and_then(|v| v.parse().ok()).unwrap_or(0),
            node: header(h, H_NODE).map(String::from),
        })
    }

    fn frame(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.json.len() + 10);
        write_server_frame(&mut out, OpCode::Text, &self.json);
        Bytes::from(out)
    }
}

/// Why a JetStream read failed.
enum ReadErr {
    /// Nothing there (no message of the subject at or after the sequence).
    NotFound,
    /// The link or the server: try again later.
    Io(String),
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

    // ----- publishing ------------------------------------------------------------------------

    fn enqueue_publish(self: Rc<Self>, req: PublishReq) {
        let now_us = super::unix_us();
        let at = now_us.saturating_sub(req.accepted_at.elapsed().as_micros() as u64);
        self.stats.pending_publishes.fetch_add(1, Ordering::Relaxed);
        {
            let mut w = self.waiting_since.borrow_mut();
            *w.entry(at / 1000).or_default() += 1;
            let oldest = w.keys().next().copied().unwrap_or(0);
            self.stats
                .oldest_pending_unix_ms
                .store(oldest, Ordering::Relaxed);
        }
        let topic = req.topic.clone();
        let start = {
            let mut topics = self.topics.borrow_mut();
            let t = topics.entry(topic.clone()).or_default();
            t.queue.push_back(Waiting {
                req,
                accepted_unix_us: at,
            });
            !std::mem::replace(&mut t.publishing, true)
        };
        if start {
            tokio::task::spawn_local(self.publisher(topic));
        }
    }

    /// Stores `topic`'s waiting publishes in order: as atomic batches of up to [`MAX_BATCH`]
    /// when the server has them (one round trip each), else one after the other.
    async fn publisher(self: Rc<Self>, topic: Arc<str>) {
        loop {
            let batch: Vec<Waiting> = {
                let mut topics = self.topics.borrow_mut();
                let Some(t) = topics.get_mut(&topic) else {
                    return;
                };
                if t.queue.is_empty() {
                    // The entry stays: its `last` saves a read before the next store.
                    t.publishing = false;
                    return;
                }
                let n = if self.atomic_batches {
                    t.queue.len().min(MAX_BATCH)
                } else {
                    1
                };
                t.queue.drain(..n).collect()
            };
            let results = if batch.len() > 1 {
                match self.store_batch(&topic, &batch).await {
                    Some(r) => r.into_iter().map(Ok).collect(),
                    None => {
                        let mut out = Vec::with_capacity(batch.len());
                        for w in &batch {
                            out.push(self.store(&topic, w).await);
                        }
                        out
                    }
                }
            } else {
                vec![self.store(&topic, &batch[0]).await]
            };
            for (w, result) in batch.iter().zip(results) {
                self.finished(w, result);
            }
        }
    }

    /// A publish is stored (or failed): update the counters and answer its core.
    fn finished(&self, w: &Waiting, result: Result<Published, ProtoError>) {
        self.stats.pending_publishes.fetch_sub(1, Ordering::Relaxed);
        {
            let mut ws = self.waiting_since.borrow_mut();
            let ms = w.accepted_unix_us / 1000;
            if let Some(c) = ws.get_mut(&ms) {
                *c -= 1;
                if *c == 0 {
                    ws.remove(&ms);
                }
            }
            let oldest = ws.keys().next().copied().unwrap_or(0);
            self.stats
                .oldest_pending_unix_ms
                .store(oldest, Ordering::Relaxed);
        }
        if let Some((shard, token)) = w.req.reply_to {
            let msg = match result {
                Ok(result) => ShardMsg::Published { token, result },
                Err(error) => {
                    self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
                    ShardMsg::PublishFailed { token, error }
                }
            };
            self.mesh.send_blocking(shard, msg);
        }
    }

    /// Stores `ws` (2 or more publishes of `topic`, in order) as one atomic batch: `seqNo`s
    /// n+1.. with the expected-last check on the first, all or nothing. `None` when the batch
    /// cannot settle it (a `messageId` inside it is a duplicate, or the outcome is unknown):
    /// the caller then stores them one by one, which sorts out duplicates and earlier stores.
    async fn store_batch(&self, topic: &Arc<str>, ws: &[Waiting]) -> Option<Vec<Published>> {
        let subject = self.cc.in_subject(topic);
        for _attempt in 0..3 {
            let (last_stream, last_seq) = self.chain_end(topic).await.ok()?;
            let id = self.next_batch.get() + 1;
            self.next_batch.set(id);
            let batch_id = format!("{}-{id}", self.node_tag);
            let sent = Instant::now();
            let mut reply = None;
            for (i, w) in ws.iter().enumerate() {
                let seq = last_seq + 1 + i as u64;
                let (json, mut h) = self.outbound(topic, w, seq);
                h.insert("Nats-Batch-Id", batch_id.as_str());
                h.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
                if i == 0 {
                    h.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last_stream.to_string().as_str(),
                    );
                }
                if i + 1 < ws.len() {
                    self.client
                        .publish_with_headers(subject.clone(), h, json)
                        .await
                        .ok()?;
                } else {
                    h.insert("Nats-Batch-Commit", "1");
                    reply = Some(
                        self.client
                            .request_with_headers(subject.clone(), h, json)
                            .await
                            .ok()?,
                    );
                }
            }
            let reply = reply?;
            let v: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            if let Some(stream_seq) = v["seq"].as_u64().filter(|_| v["error"].is_null()) {
                let last = last_seq + ws.len() as u64;
                self.stats
                    .last_store_us
                    .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                self.stats
                    .published
                    .fetch_add(ws.len() as u64, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.learn(topic, stream_seq, last);
                return Some(
                    ws.iter()
                        .enumerate()
                        .map(|(i, w)| Published {
                            seq_no: last_seq + 1 + i as u64,
                            message_id: w.req.message_id.clone(),
                            duplicate: false,
                        })
                        .collect(),
                );
            }
            match v["error"]["err_code"].as_u64() {
                // Wrong last sequence: another node stored this topic's next message first.
                Some(10071) | Some(10164) => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    self.forget_last(topic);
                }
                _ => {
                    tracing::debug!(%topic, "atomic batch not stored: {v}; storing one by one");
                    return None;
                }
            }
        }
        None
    }

    /// The stored form of publish `w` as `seqNo` `seq`: the delivery JSON (built once, here)
    /// and the headers every node reads.
    fn outbound(&self, topic: &Arc<str>, w: &Waiting, seq: u64) -> (Bytes, HeaderMap) {
        let req = &w.req;
        let sig = self
            .signer
            .as_ref()
            .map(|s| s.sign(topic, seq, &req.payload));
        let extras = protocol::FrameExtras {
            qos1: req.qos1,
            signature: self
                .signer
                .as_ref()
                .zip(sig.as_deref())
                .map(|(s, sig)| (s.key_id(), sig)),
        };
        let frame =
            protocol::encode_message_frame_with(topic, seq, &req.message_id, &extras, &req.payload);
        let json = frame.slice(crate::ws::frame::header_len(&frame)..);
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", self.nats_msg_id(req).as_str());
        h.insert(H_SEQ, seq.to_string().as_str());
        h.insert(H_ID, &*req.message_id);
        if req.qos1 {
            h.insert(H_QOS, "1");
        }
        h.insert(H_AT, w.accepted_unix_us.to_string().as_str());
        h.insert(H_NODE, &*self.node);
        (json, h)
    }

    fn nats_msg_id(&self, req: &PublishReq) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        if req.is_client_id {
            // The duplicate window is per identity and topic (as on one node).
            h.update(b"c\0");
            h.update(req.identity.as_bytes());
            h.update(b"\0");
            h.update(req.topic.as_bytes());
            h.update(b"\0");
        } else {
            h.update(b"g\0");
        }
        h.update(req.message_id.as_bytes());
        hex::encode(&h.finalize()[..16])
    }

    /// Stores one publish: stamps the next `seqNo` of the topic's chain, retrying on a lost
    /// race or a broken link until `publish_timeout_ms`.
    async fn store(&self, topic: &Arc<str>, w: &Waiting) -> Result<Published, ProtoError> {
        let req = &w.req;
        let deadline = req.accepted_at + Duration::from_millis(self.cc.publish_timeout_ms);
        let subject = self.cc.in_subject(topic);
        let mut backoff = Duration::from_millis(20);
        let mut last_err = String::new();
        let fail = |why: &str| {
            ProtoError::new(
                ErrorCode::BackboneUnavailable,
                format!(
                    "not stored by the cluster backbone within {} ms ({why}); it may still have been: publish again with the same messageId",
                    self.cc.publish_timeout_ms
                ),
            )
            .with_topic(topic)
            .with_message_id(&req.message_id)
        };
        loop {
            if Instant::now() >= deadline {
                return Err(fail(&last_err));
            }
            let (last_stream, last_seq) = match self.chain_end(topic).await {
                Ok(l) => l,
                Err(e) => {
                    last_err = e;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            let seq = last_seq + 1;
            let (json, mut h) = self.outbound(topic, w, seq);
            h.insert(
                "Nats-Expected-Last-Subject-Sequence",
                last_stream.to_string().as_str(),
            );
            let sent = Instant::now();
            let res = match self.js.publish_with_headers(subject.clone(), h, json).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match res {
                Ok(ack) if !ack.duplicate => {
                    self.stats
                        .last_store_us
                        .store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    self.learn(topic, ack.sequence, seq);
                    return Ok(Published {
                        seq_no: seq,
                        message_id: req.message_id.clone(),
                        duplicate: false,
                    });
                }
                Ok(ack) => {
                    // Stored before: by an earlier try of this very publish (then it is ours and
                    // "ok"), or by an earlier publish with the same id ("duplicate").
                    match self.read_seq(ack.sequence).await {
                        Ok(orig) => {
                            self.learn(topic, orig.stream_seq, orig.seq);
                            let ours = orig.node.as_deref() == Some(&*self.node)
                                && orig.at_us == w.accepted_unix_us;
                            if !ours {
                                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            } else {
                                self.stats.published.fetch_add(1, Ordering::Relaxed);
                            }
                            return Ok(Published {
                                seq_no: orig.seq,
                                message_id: req.message_id.clone(),
                                duplicate: !ours,
                            });
                        }
                        Err(ReadErr::NotFound) => {
                            // The original aged out of the stream but not out of the window.
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            return Ok(Published {
                                seq_no: 0,
                                message_id: req.message_id.clone(),
                                duplicate: true,
                            });
                        }
                        Err(ReadErr::Io(e)) => last_err = e,
                    }
                }
                Err(e) => {
                    use async_nats::jetstream::context::PublishErrorKind as K;
                    match e.kind() {
                        K::WrongLastSequence => {
                            // Another node stored this topic's next message first.
                            self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                            self.forget_last(topic);
                            continue;
                        }
                        K::StreamNotFound => {
                            // A leader election in progress, or a NATS that lost the stream.
                            last_err = format!("stream {} not found", self.cc.stream);
                            self.ensure_stream().await;
                        }
                        _ => last_err = e.to_string(),
                    }
                    // The outcome is unknown: the message may be stored. Re-read the chain.
                    self.forget_last(topic);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// (stream sequence, `seqNo`) of the topic's last stored message: as this node knows it, or
    /// read from JetStream when it does not.
    async fn chain_end(&self, topic: &Arc<str>) -> Result<(u64, u64), String> {
        if let Some(l) = self.topics.borrow().get(topic).and_then(|t| t.last) {
            return Ok(l);
        }
        let l = self.last_of(topic).await?;
        self.learn(topic, l.0, l.1);
        Ok(l)
    }

    /// Records that the topic's chain reached (`stream_seq`, `seq`), if that is news.
    fn learn(&self, topic: &Arc<str>, stream_seq: u64, seq: u64) {
        let mut topics = self.topics.borrow_mut();
        if let Some(t) = topics.get_mut(topic) {
            match t.last {
                Some((s, _)) if s >= stream_seq => {}
                _ => t.last = Some((stream_seq, seq)),
            }
        }
    }

    fn forget_last(&self, topic: &Arc<str>) {
        if let Some(t) = self.topics.borrow_mut().get_mut(topic) {
            t.last = None;
        }
    }

    // ----- reading JetStream -----------------------------------------------------------------

    /// (stream sequence, `seqNo`) of the topic's last stored message; (0, 0) when none.
    async fn last_of(&self, topic: &str) -> Result<(u64, u64), String> {
        let subject = self.cc.in_subject(topic);
        match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let s = Stored::from_parts(m.sequence, Some(&m.headers), m.payload)
                    .ok_or("a stored message without Ss-Seq")?;
                Ok((s.stream_seq, s.seq))
            }
            Err(e) if is_not_found(&e.to_string()) => Ok((0, 0)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn read_seq(&self, stream_seq: u64) -> Result<Stored, ReadErr> {
        match self.stream.get_raw_message(stream_seq).await {
            Ok(m) => Stored::from_parts(m.sequence, Some(&m.headers), m.payload)
                .ok_or_else(|| ReadErr::Io("a stored message without Ss-Seq".into())),
            Err(e) if is_not_found(&e.to_string()) => Err(ReadErr::NotFound),
            Err(e) => Err(ReadErr::Io(e.to_string())),
        }
    }

    /// The topic's first stored message at or after stream sequence `from`.
    async fn next_of(&self, subject: &str, from: u64) -> Result<Stored, ReadErr> {
        match self
            .stream
            .raw_message_builder()
            .sequence(from.max(1))
            .next_by_subject(subject)
            .send()
            .await
        {
            Ok(m) => Stored::from_parts(m.sequence, Some(&m.headers), m.payload)
                .ok_or_else(|| ReadErr::Io("a stored message without Ss-Seq".into())),
            Err(e) if is_not_found(&e.to_string()) => Err(ReadErr::NotFound),
            Err(e) => Err(ReadErr::Io(e.to_string())),
        }
    }

    /// Up to `max` of the subject's stored messages from stream sequence `from` on, in stream
    /// order, with one request: JetStream's batched direct get (NATS 2.11+; the server streams
    /// them to an inbox and ends with a status). Never empty: when the batch brings nothing
    /// (a replica behind the leader, an older server) one read from the leader decides.
    async fn next_many(
        &self,
        subject: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<Stored>, ReadErr> {
        let got = self
            .direct_batch(subject, from, max)
            .await
            .unwrap_or_default();
        if !got.is_empty() {
            return Ok(got);
        }
        self.next_of(subject, from).await.map(|m| vec![m])
    }

    async fn direct_batch(&self, subject: &str, from: u64, max: usize) -> Option<Vec<Stored>> {
        let inbox = self.client.new_inbox();
        let mut sub = self.client.subscribe(inbox.clone()).await.ok()?;
        let req = serde_json::json!({"seq": from.max(1), "next_by_subj": subject, "batch": max});
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{}", self.cc.stream),
                inbox,
                Bytes::from(req.to_string()),
            )
            .await
            .ok()?;
        let mut out = Vec::new();
        let wait = Duration::from_millis(self.cc.request_timeout_ms);
        loop {
            match tokio::time::timeout(wait, sub.next()).await {
                Ok(Some(m)) if m.status.is_none() => {
                    let seq = m
                        .headers
                        .as_ref()
                        .and_then(|h| header(h, "Nats-Sequence"))
                        .and_then(|v| v.parse().ok())?;
                    out.push(Stored::from_parts(seq, m.headers.as_ref(), m.payload)?);
                    if out.len() >= max {
                        break;
                    }
                }
                // The end-of-batch status (204), or not found (404): done.
                Ok(Some(_)) | Ok(None) => break,
                Err(_) => {
                    if out.is_empty() {
                        return None;
                    }
                    break;
                }
            }
        }
        let _ = sub.unsubscribe().await;
        Some(out)
    }

    /// A stream sequence from which the topic's first stored message with `seqNo >= seq` is
    /// the next one of the subject. `f(x)` = "the subject's first message at or after stream
    /// sequence x" grows with x, and `f(hi)` qualifies: binary search for the smallest x in
    /// `[lo, hi]` whose `f(x)` does (O(log(hi - lo)) reads).
    async fn find(
        &self,
        subject: &str,
        seq: u64,
        mut lo: u64,
        mut hi: u64,
    ) -> Result<u64, ReadErr> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let m = self.next_of(subject, mid).await?;
            if m.seq < seq {
                lo = m.stream_seq + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// A replay out of JetStream: the frames from `from_seq` to the topic's last, or the error
    /// the owner's own history would give (partial: the frames still held after it).
    async fn replay(&self, topic: &str, from_seq: u64, partial: bool) -> ReplayAnswer {
        let err = |e: String| {
            tracing::warn!(topic, "replay from the backbone failed: {e}");
            ReplayAnswer {
                last_seq: 0,
                frames: Vec::new(),
                error: Some(ReplayError::Unavailable {
                    oldest_held: None,
                    last_seq: 0,
                }),
            }
        };
        let subject = self.cc.in_subject(topic);
        let (last_stream, last_seq) = match self.last_of(topic).await {
            Ok(l) => l,
            Err(e) => return err(e),
        };
        let from_seq = if from_seq == u64::MAX {
            last_seq + 1
        } else {
            from_seq.max(1)
        };
        if from_seq > last_seq + 1 {
            return ReplayAnswer {
                last_seq,
                frames: Vec::new(),
                error: Some(ReplayError::FromSeqInFuture { from_seq, last_seq }),
            };
        }
        if from_seq == last_seq + 1 {
            return ReplayAnswer {
                last_seq,
                frames: Vec::new(),
                error: None,
            };
        }
        let first = match self.next_of(&subject, 1).await {
            Ok(f) => f,
            Err(ReadErr::NotFound) => {
                return ReplayAnswer {
                    last_seq,
                    frames: Vec::new(),
                    error: Some(ReplayError::Unavailable {
                        oldest_held: None,
                        last_seq,
                    }),
                }
            }
            Err(ReadErr::Io(e)) => return err(e),
        };
        let mut error = None;
        let start_seq = if from_seq < first.seq {
            error = Some(ReplayError::Unavailable {
                oldest_held: Some(first.seq),
                last_seq,
            });
            if !partial {
                return ReplayAnswer {
                    last_seq,
                    frames: Vec::new(),
                    error,
                };
            }
            first.seq
        } else {
            from_seq
        };
        let start = if start_seq == first.seq {
            first.stream_seq
        } else {
            match self
                .find(&subject, start_seq, first.stream_seq, last_stream)
                .await
            {
                Ok(s) => s,
                Err(ReadErr::NotFound) => last_stream,
                Err(ReadErr::Io(e)) => return err(e),
            }
        };
        let mut frames = Vec::with_capacity((last_seq + 1 - start_seq).min(65_536) as usize);
        let mut at = start;
        let mut expect = start_seq;
        let mut buf: VecDeque<Stored> = VecDeque::new();
        while expect <= last_seq {
            let m = match buf.pop_front() {
                Some(m) => m,
                None => {
                    let want = (last_seq + 1 - expect).min(READ_BATCH as u64) as usize;
                    match self.next_many(&subject, at, want).await {
                        Ok(v) => {
                            buf.extend(v);
                            continue;
                        }
                        Err(ReadErr::NotFound) => break,
                        Err(ReadErr::Io(e)) => return err(e),
                    }
                }
            };
            if m.seq < expect {
                at = m.stream_seq + 1;
                continue;
            }
            if m.seq > expect {
                // A hole inside the stream (a message removed): only what follows it is whole.
                frames.clear();
                error = Some(ReplayError::Unavailable {
                    oldest_held: Some(m.seq),
                    last_seq,
                });
                if !partial {
                    return ReplayAnswer {
                        last_seq,
                        frames,
                        error,
                    };
                }
            }
            expect = m.seq + 1;
            at = m.stream_seq + 1;
            frames.push(HeldFrame {
                seq_no: m.seq,
                frame: m.frame(),
                qos1: m.qos1,
            });
        }
        let last = frames.last().map_or(last_seq, |f| f.seq_no);
        ReplayAnswer {
            last_seq: last,
            frames,
            error,
        }
    }

    // ----- subscriptions ---------------------------------------------------------------------

    fn subscribe(self: Rc<Self>, topic: Arc<str>, gen: u64, owner: ShardId) {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        {
            let mut topics = self.topics.borrow_mut();
            let t = topics.entry(topic.clone()).or_default();
            if let Some(old) = t.sub.replace(SubHandle { gen, stop: stop_tx }) {
                let _ = old.stop.send(());
            }
        }
        tokio::task::spawn_local(self.subscription(topic, gen, owner, stop_rx));
    }

    /// One topic's live feed: subscribe, tell the owner where live delivery starts, then
    /// forward every message in order, filling gaps from JetStream.
    async fn subscription(
        self: Rc<Self>,
        topic: Arc<str>,
        gen: u64,
        owner: ShardId,
        mut stop: tokio::sync::oneshot::Receiver<()>,
    ) {
        let out = self.cc.out_subject(&topic);
        let subject = self.cc.in_subject(&topic);
        let mut sub = loop {
            match self.client.subscribe(out.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    self.stats.set_error(format!("subscribe {out}: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = &mut stop => return,
                    }
                }
            }
        };
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        // The server has processed the SUB once a request on this connection has come back
        // (`flush` only empties the client's buffer): everything stored after the last message
        // read below reaches this subscription (from a NATS cluster's other servers, once the
        // interest has spread: the re-check below covers that window).
        let base = if self.round_trip().await {
            self.last_of(&topic).await.ok()
        } else {
            None
        };
        if let Some((s, n)) = base {
            self.learn(&topic, s, n);
        }
        // Where live delivery continues: `None` while the link is down at subscribe time
        // (then the first message received sets it).
        let mut at: Option<(u64, u64)> = base;
        self.mesh.send_blocking(
            owner,
            ShardMsg::BackboneSubscribed {
                topic: topic.clone(),
                gen,
                last_seq: base.map_or(0, |b| b.1),
            },
        );
        let mut resync = self.resync.subscribe();
        // Re-read the topic's last message twice shortly after subscribing: in a NATS cluster
        // the new interest reaches the stream leader's server a moment later, and a message
        // republished before it did would otherwise wait for the next one to be noticed.
        let mut settle = [Duration::from_millis(250), Duration::from_millis(1_000)].into_iter();
        let mut settle_at = tokio::time::Instant::now() + settle.next().unwrap_or_default();
        let mut settling = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(settle_at), if settling => {
                    match settle.next() {
                        Some(d) => settle_at = tokio::time::Instant::now() + d,
                        None => settling = false,
                    }
                    if let (Ok((s, n)), Some((_, have))) = (self.last_of(&topic).await, at) {
                        if n > have {
                            self.learn(&topic, s, n);
                            self.fill(&topic, &subject, owner, &mut at, n).await;
                        }
                    }
                }
                m = sub.next() => {
                    let Some(m) = m else { break };
                    let stream_seq = m
                        .headers
                        .as_ref()
                        .and_then(|h| header(h, "Nats-Sequence"))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let Some(s) = Stored::from_parts(stream_seq, m.headers.as_ref(), m.payload) else {
                        tracing::warn!(subject = %m.subject, "a message without Ss-Seq on the backbone; ignored");
                        continue;
                    };
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if s.at_us > 0 {
                        self.stats.last_receive_lag_us.store(
                            super::unix_us().saturating_sub(s.at_us),
                            Ordering::Relaxed,
                        );
                    }
                    self.learn(&topic, s.stream_seq, s.seq);
                    if let Some((at_stream, n)) = at {
                        if s.stream_seq < at_stream && s.seq <= n {
                            // Stream sequences went back: the stream was created again and the
                            // topic numbers from 1 again. Say so, and follow the new chain.
                            self.restarted(&topic, owner, s.seq - 1);
                            at = None;
                        }
                    }
                    if let Some((_, n)) = at {
                        if s.seq <= n {
                            continue;
                        }
                        if s.seq > n + 1 {
                            self.fill(&topic, &subject, owner, &mut at, s.seq - 1).await;
                        }
                    }
                    at = Some((s.stream_seq, s.seq));
                    self.forward(&topic, owner, &s);
                }
                changed = resync.changed() => {
                    if changed.is_err() { break; }
                    if let Ok((s, n)) = self.last_of(&topic).await {
                        self.learn(&topic, s, n);
                        match at {
                            Some((at_stream, _)) if s < at_stream => {
                                self.restarted(&topic, owner, n);
                                at = Some((s, n));
                            }
                            Some((_, have)) if n > have => {
                                self.fill(&topic, &subject, owner, &mut at, n).await;
                            }
                            None => at = Some((s, n)),
                            _ => {}
                        }
                    }
                }
                _ = &mut stop => break,
            }
        }
        let _ = sub.unsubscribe().await;
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Creates the stream again if it is missing (a NATS that lost its JetStream state). An
    /// existing stream is left as it is.
    async fn ensure_stream(&self) {
        if self.js.get_stream(&self.cc.stream).await.is_ok() {
            return;
        }
        match self
            .js
            .create_or_update_stream(self.stream_config.clone())
            .await
        {
            Ok(_) => tracing::warn!(
                stream = %self.cc.stream,
                "cluster backbone: the stream was gone (NATS lost its JetStream state) and is created again; topics number from 1 again"
            ),
            Err(e) => tracing::debug!("stream {} not there yet: {e}", self.cc.stream),
        }
    }

    /// A request on the backbone connection that nobody answers: when NATS's "no responders"
    /// comes back, the server has processed everything this connection sent before it.
    async fn round_trip(&self) -> bool {
        use async_nats::RequestErrorKind as K;
        match tokio::time::timeout(
            Duration::from_millis(self.cc.request_timeout_ms),
            self.client
                .request(format!("_subsocket.sync.{}", self.cc.stream), Bytes::new()),
        )
        .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == K::NoResponders,
            Err(_) => false,
        }
    }

    /// Reads the topic's messages after `at` up to `seqNo` `to` from JetStream and forwards
    /// them; what JetStream no longer holds is reported lost.
    async fn fill(
        &self,
        topic: &Arc<str>,
        subject: &str,
        owner: ShardId,
        at: &mut Option<(u64, u64)>,
        to: u64,
    ) {
        let Some((mut stream_at, mut have)) = *at else {
            return;
        };
        let mut tries = 0;
        while have < to {
            let want = (to - have).min(READ_BATCH as u64) as usize;
            match self.next_many(subject, stream_at + 1, want).await {
                Ok(batch) => {
                    for m in batch {
                        if m.seq <= have {
                            stream_at = m.stream_seq;
                            continue;
                        }
                        if m.seq > have + 1 {
                            self.lost(topic, owner, have + 1, m.seq - 1);
                        }
                        self.stats.gap_filled.fetch_add(1, Ordering::Relaxed);
                        self.forward(topic, owner, &m);
                        stream_at = m.stream_seq;
                        have = m.seq;
                    }
                }
                Err(ReadErr::NotFound) => {
                    self.lost(topic, owner, have + 1, to);
                    have = to;
                }
                Err(ReadErr::Io(e)) => {
                    tries += 1;
                    if tries > 20 {
                        tracing::warn!(%topic, "cannot read missed messages back: {e}");
                        self.lost(topic, owner, have + 1, to);
                        have = to;
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        *at = Some((stream_at, have));
    }

    /// The topic's chain restarted in JetStream (its stream was created again): live delivery
    /// continues after `last_seq` of the new numbering.
    fn restarted(&self, topic: &Arc<str>, owner: ShardId, last_seq: u64) {
        tracing::warn!(%topic, last_seq, "the topic's history restarted in JetStream; numbering starts again");
        self.mesh.send_blocking(
            owner,
            ShardMsg::BackboneRestarted {
                topic: topic.clone(),
                last_seq,
            },
        );
    }

    fn lost(&self, topic: &Arc<str>, owner: ShardId, from: u64, to: u64) {
        tracing::warn!(%topic, from, to, "messages lost by the backbone (no longer in JetStream)");
        self.stats.lost.fetch_add(to + 1 - from, Ordering::Relaxed);
        self.mesh.send_blocking(
            owner,
            ShardMsg::BackboneLost {
                topic: topic.clone(),
                from,
                to,
            },
        );
    }

    fn forward(&self, topic: &Arc<str>, owner: ShardId, s: &Stored) {
        let age = Duration::from_micros(super::unix_us().saturating_sub(s.at_us));
        let published_at = if s.at_us > 0 {
            Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
        } else {
            Instant::now()
        };
        self.mesh.send_blocking(
            owner,
            ShardMsg::FromBackbone(Delivery {
                topic: topic.clone(),
                seq_no: s.seq,
                frame: s.frame(),
                published_at,
                qos1: s.qos1.clone(),
            }),
        );
    }
}

/// Most messages read back from JetStream with one request (replays, gap fills).
pub const READ_BATCH: usize = 256;

/// Most publishes of one topic stored as one atomic batch (NATS allows 1,000).
pub const MAX_BATCH: usize = 256;

/// Whether server version `v` ("2.15.1") is at least `want`.
fn server_at_least(v: &str, want: (u32, u32)) -> bool {
    let mut it = v.trim_start_matches('v').split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= want
}

fn is_not_found(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("not found") || e.contains("no message") || e.contains("10037")
}
