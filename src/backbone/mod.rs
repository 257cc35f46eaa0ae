//! The cluster backbone: how the gateways of a cluster share publishes, `seqNo`s and history.
//!
//! Two implementations sit behind one contract — "who stamps a topic's `seqNo`, who hears about
//! a publish, where history that outlives a node lives":
//!
//! - **In memory** (the default, one node): the topic's owner core stamps `seqNo`
//!   ([`crate::publish::Sequencer`]), hands the frame to the interested cores over the mesh and
//!   keeps the history. Nothing here runs.
//! - **NATS** (`[cluster] backbone = "nats://…"`, [`nats`]): JetStream stamps the order. A
//!   publish is stored in one stream with an optimistic-concurrency check
//!   (`Nats-Expected-Last-Subject-Sequence`), so each topic's `seqNo` chain is gap-free
//!   cluster-wide; the stream republishes every *stored* message on a core-NATS subject
//!   (`<prefix>.out.<topic>`), which each node subscribes to only while one of its cores has a
//!   subscriber. The owner core of the receiving node turns it into one frame and fans it out as
//!   it does for a local publish.
//!
//! The NATS client (async-nats, on tokio) runs on one dedicated thread. Cores reach it through
//! an unbounded lock-free channel ([`BackboneTx`]); it answers through the cores' own inboxes
//! (crossbeam + waker, [`crate::mesh`]). Nothing on a core's data path takes a lock or waits for
//! the backbone: a core that publishes gets its `ack` later, as a message.
//!
//! What crosses: [`BackboneCmd`] (plain data, `Arc<str>`, `Bytes`) and counters in
//! [`BackboneStats`] (atomics, read by `/stats` and `/metrics`).

pub mod nats;
pub mod subject;

use crate::mesh::{PublishReq, ShardId};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Longest topic a cluster allows: escaped (up to 3 bytes per byte) plus the prefix it must
/// stay well inside NATS's 4,096-byte protocol line (a longer subject drops the connection).
pub const MAX_CLUSTER_TOPIC_BYTES: usize = 1024;

/// `[cluster]`: join other gateways over a NATS backbone.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server URLs, comma-separated (`nats://host:4222,nats://host2:4222`); `tls://` forces
    /// TLS. User and password may be in the URL.
    pub backbone: String,
    /// This node's name (in `/stats`, and the NATS connection name). Default: `subsocket@<bind>`.
    pub node_name: Option<String>,
    /// The JetStream stream that holds every topic's history (created or updated at startup).
    pub stream: String,
    /// Subjects are `<prefix>.in.<topic>` (what is stored) and `<prefix>.out.<topic>` (what the
    /// stream republishes and nodes subscribe to).
    pub subject_prefix: String,
    /// History per topic kept in JetStream (`max_msgs_per_subject`).
    pub history_per_topic: i64,
    /// How long JetStream keeps a message (`max_age`); 0: no age limit.
    pub history_max_age_ms: u64,
    /// The stream's total size cap in bytes (`max_bytes`); -1: none.
    pub history_max_bytes: i64,
    /// `file` (survives a NATS restart) or `memory`.
    pub storage: Storage,
    /// Stream replicas (3 on a 3-node NATS cluster survives the loss of one server).
    pub replicas: usize,
    /// A NATS `.creds` file (JWT + NKey seed).
    pub creds_file: Option<PathBuf>,
    /// A NATS auth token.
    pub token: Option<String>,
    /// CA certificate(s) (PEM) to trust for a TLS connection to NATS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS with NATS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS to NATS even for `nats://` URLs.
    pub require_tls: bool,
    /// A publish not stored by JetStream within this long is answered `BACKBONE_UNAVAILABLE`
    /// (it may still have been stored: retrying with the same `messageId` is safe).
    pub publish_timeout_ms: u64,
    /// How long one JetStream request (a store, a history read) may take before it is retried.
    pub request_timeout_ms: u64,
    /// Publishes waiting for JetStream on this node at most; more are refused at once with
    /// `BACKBONE_UNAVAILABLE`.
    pub max_pending_publishes: u64,
    /// Topics kept on this node only (patterns as in `qos1_topics`): sequenced in memory, never
    /// sent over the backbone, served while NATS is away.
    pub local_topics: Vec<String>,
}

/// Where JetStream keeps the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    File,
    Memory,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            backbone: String::new(),
            node_name: None,
            stream: "SUBSOCKET".into(),
            subject_prefix: "subsocket".into(),
            history_per_topic: 10_000,
            history_max_age_ms: 24 * 3600 * 1000,
            history_max_bytes: -1,
            storage: Storage::File,
            replicas: 1,
            creds_file: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            require_tls: false,
            publish_timeout_ms: 30_000,
            request_timeout_ms: 2_000,
            max_pending_publishes: 100_000,
            local_topics: Vec::new(),
        }
    }
}

impl ClusterConfig {
    /// Checks what would only fail later.
    pub fn validate(&self) -> Result<(), String> {
        if self.backbone.trim().is_empty() {
            return Err("backbone (nats://host:port) is required".into());
        }
        for url in self.urls() {
            if !["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                return Err(format!(
                    "backbone '{url}': expected a nats:// or tls:// URL"
                ));
            }
        }
        let p = format!("{}.in", self.subject_prefix);
        if !subject::is_literal_subject(&p) {
            return Err(format!(
                "subject_prefix '{}' is not a valid NATS subject",
                self.subject_prefix
            ));
        }
        if self.stream.is_empty()
            || !self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "stream '{}': use letters, digits, _ and -",
                self.stream
            ));
        }
        if self.history_per_topic < 1 {
            return Err("history_per_topic must be at least 1".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("replicas must be between 1 and 5".into());
        }
        if self.publish_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err("publish_timeout_ms and request_timeout_ms must be positive".into());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err("tls_cert_file and tls_key_file go together".into());
        }
        for p in &self.local_topics {
            crate::history::Pattern::parse(p).map_err(|e| format!("local_topics: {e}"))?;
        }
        Ok(())
    }

    /// The server URLs.
    pub fn urls(&self) -> Vec<String> {
        self.backbone
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// `<prefix>.in.<topic>`: where a publish is stored.
    pub fn in_subject(&self, topic: &str) -> String {
        subject::subject(&format!("{}.in", self.subject_prefix), topic)
    }

    /// `<prefix>.out.<topic>`: where the stream republishes it.
    pub fn out_subject(&self, topic: &str) -> String {
        subject::subject(&format!("{}.out", self.subject_prefix), topic)
    }
}

/// What a core asks of the backbone thread.
#[derive(Debug)]
pub enum BackboneCmd {
    /// Store this publish (JetStream stamps its `seqNo`); answer `reply_to` with
    /// `ShardMsg::Published` or `ShardMsg::PublishFailed`. `qos1` is final (`qos1_topics`
    /// applied by the accepting core).
    Publish(PublishReq),
    /// From the owner core: this node gained its first subscriber of `topic`. Subscribe to its
    /// subject, then answer `ShardMsg::BackboneSubscribed` with the `seqNo` live delivery
    /// continues after.
    Subscribe {
        topic: Arc<str>,
        gen: u64,
        owner: ShardId,
    },
    /// From the owner core: the last subscriber left. `gen` names the subscription to end.
    Unsubscribe { topic: Arc<str>, gen: u64 },
    /// From the owner core: the frames of `topic` from `from_seq` on, out of JetStream (the
    /// owner's own history did not reach back far enough). Answered to `owner` with
    /// `ShardMsg::BackboneReplayed`.
    Replay {
        topic: Arc<str>,
        from_seq: u64,
        reply_to: (ShardId, u64),
        partial: bool,
        owner: ShardId,
    },
}

/// Connection state, as `/stats` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    Connecting = 0,
    Connected = 1,
    Disconnected = 2,
}

impl LinkState {
    fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Connected,
            2 => LinkState::Disconnected,
            _ => LinkState::Connecting,
        }
    }

    /// The word `/stats` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// Counters of the backbone thread (written there, read by `/stats` and `/metrics`).
#[derive(Debug, Default)]
pub struct BackboneStats {
    state: AtomicU8,
    /// Times the link came back after being lost.
    pub reconnects: AtomicU64,
    /// Publishes stored by JetStream for this node.
    pub published: AtomicU64,
    /// Atomic batches stored (each holds 2 or more publishes of one topic).
    pub batches: AtomicU64,
    /// Publishes answered `duplicate` (JetStream's window, cluster-wide).
    pub duplicates: AtomicU64,
    /// Stores refused because another node stored a message of the topic first (then retried
    /// with the next `seqNo`).
    pub conflicts: AtomicU64,
    /// Publishes that failed (`BACKBONE_UNAVAILABLE`).
    pub publish_failures: AtomicU64,
    /// Publishes waiting for JetStream now.
    pub pending_publishes: AtomicU64,
    /// Unix ms when the oldest waiting publish was accepted (0: none waiting).
    pub oldest_pending_unix_ms: AtomicU64,
    /// Messages received live from the backbone.
    pub received: AtomicU64,
    /// Messages missed live and read back from JetStream (a gap filled).
    pub gap_filled: AtomicU64,
    /// Messages missed and no longer in JetStream: reported to subscribers as lost.
    pub lost: AtomicU64,
    /// Subjects subscribed now (topics with a local subscriber).
    pub subscriptions: AtomicU64,
    /// Replays served out of JetStream.
    pub replays: AtomicU64,
    /// Publish (accepted here) to receipt (from the backbone) of the last message, in µs:
    /// the backbone's delivery lag as this node sees it.
    pub last_receive_lag_us: AtomicU64,
    /// Store round trip of the last publish, in µs.
    pub last_store_us: AtomicU64,
    /// The last error the link reported (empty: none).
    pub last_error: Mutex<String>,
}

impl BackboneStats {
    /// The link state now.
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, s: LinkState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, e: impl std::fmt::Display) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e.to_string();
        }
    }

    /// Age in ms of the oldest publish still waiting for JetStream (0: none).
    pub fn oldest_pending_ms(&self) -> u64 {
        match self.oldest_pending_unix_ms.load(Ordering::Relaxed) {
            0 => 0,
            t => crate::backbone::unix_ms().saturating_sub(t),
        }
    }
}

/// The cores' handle on the backbone thread: a lock-free sender plus its counters. Cloned into
/// every core.
#[derive(Debug, Clone)]
pub struct BackboneTx {
    tx: tokio::sync::mpsc::UnboundedSender<BackboneCmd>,
    /// Shared with the thread.
    pub stats: Arc<BackboneStats>,
    /// This node's name.
    pub node: Arc<str>,
    max_pending: u64,
}

impl BackboneTx {
    /// Hands `cmd` to the backbone thread (never blocks). False when the thread is gone.
    pub fn send(&self, cmd: BackboneCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Whether one more publish may wait for JetStream.
    pub fn has_room(&self) -> bool {
        self.stats.pending_publishes.load(Ordering::Relaxed) < self.max_pending
    }
}

impl BackboneTx {
    fn fields(&self) -> [(&'static str, &'static str, u64, bool); 15] {
        let s = &self.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        // (name, help, value, is a counter)
        [
            (
                "reconnects",
                "Times the NATS link came back after being lost",
                g(&s.reconnects),
                true,
            ),
            (
                "published",
                "Publishes stored in JetStream by this node",
                g(&s.published),
                true,
            ),
            (
                "batches",
                "Atomic batches stored (2 or more publishes of one topic in one round trip)",
                g(&s.batches),
                true,
            ),
            (
                "duplicates",
                "Publishes answered duplicate by JetStream's window",
                g(&s.duplicates),
                true,
            ),
            (
                "conflicts",
                "Stores retried because another node stored the topic's next seqNo first",
                g(&s.conflicts),
                true,
            ),
            (
                "publish_failures",
                "Publishes answered BACKBONE_UNAVAILABLE",
                g(&s.publish_failures),
                true,
            ),
            (
                "received",
                "Messages received live from the backbone",
                g(&s.received),
                true,
            ),
            (
                "gap_filled",
                "Messages missed live and read back from JetStream",
                g(&s.gap_filled),
                true,
            ),
            (
                "lost",
                "Messages missed and no longer in JetStream (reported to subscribers)",
                g(&s.lost),
                true,
            ),
            (
                "replays",
                "Replays served out of JetStream",
                g(&s.replays),
                true,
            ),
            (
                "pending_publishes",
                "Publishes waiting for JetStream",
                g(&s.pending_publishes),
                false,
            ),
            (
                "oldest_pending_ms",
                "Age of the oldest publish waiting for JetStream, ms",
                s.oldest_pending_ms(),
                false,
            ),
            (
                "subscriptions",
                "Backbone subjects subscribed (topics with a local subscriber)",
                g(&s.subscriptions),
                false,
            ),
            (
                "receive_lag_us",
                "Publish (on any node) to receipt here of the last message, us",
                g(&s.last_receive_lag_us),
                false,
            ),
            (
                "store_us",
                "JetStream store round trip of the last publish, us",
                g(&s.last_store_us),
                false,
            ),
        ]
    }

    /// The `"backbone":{…}` member of `/stats`.
    pub fn stats_json(&self) -> String {
        use std::fmt::Write;
        let state = self.stats.state();
        let mut out = String::with_capacity(512);
        let _ = write!(
            out,
            "\"backbone\":{{\"kind\":\"nats\",\"node\":{},\"state\":\"{}\",\"connected\":{}",
            serde_json::Value::from(&*self.node),
            state.as_str(),
            state == LinkState::Connected
        );
        for (name, _, v, _) in self.fields() {
            let _ = write!(out, ",\"{}\":{v}", crate::metrics::camel(name));
        }
        let err = self
            .stats
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let _ = write!(out, ",\"lastError\":{}}}", serde_json::Value::from(err));
        out
    }

    /// The `subsocket_backbone_*` series of `/metrics`.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(2048);
        let up = u64::from(self.stats.state() == LinkState::Connected);
        let _ = writeln!(
            out,
            "# HELP subsocket_backbone_connected 1 while the NATS link is up."
        );
        let _ = writeln!(out, "# TYPE subsocket_backbone_connected gauge");
        let _ = writeln!(out, "subsocket_backbone_connected {up}");
        for (name, help, v, counter) in self.fields() {
            let (suffix, kind) = if counter {
                ("_total", "counter")
            } else {
                ("", "gauge")
            };
            let _ = writeln!(out, "# HELP subsocket_backbone_{name}{suffix} {help}.");
            let _ = writeln!(out, "# TYPE subsocket_backbone_{name}{suffix} {kind}");
            let _ = writeln!(out, "subsocket_backbone_{name}{suffix} {v}");
        }
        out
    }
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix time in microseconds.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_a_nats_url_and_sane_limits() {
        let mut c = ClusterConfig::default();
        assert!(c.validate().unwrap_err().contains("backbone"));
        c.backbone = "nats://127.0.0.1:4222, nats://127.0.0.1:4223".into();
        c.validate().unwrap();
        assert_eq!(c.urls().len(), 2);
        c.backbone = "http://x".into();
        assert!(c.validate().is_err());
        c.backbone = "nats://x:1".into();
        c.subject_prefix = "a b".into();
        assert!(c.validate().is_err());
        c.subject_prefix = "ss".into();
        c.stream = "A.B".into();
        assert!(c.validate().is_err());
        c.stream = "S".into();
        c.local_topics = vec!["node.*".into()];
        c.validate().unwrap();
        assert_eq!(c.in_subject("prices.BTC"), "ss.in.prices.BTC");
        assert_eq!(c.out_subject("a b"), "ss.out.a%20b");
    }
}
