//! `Config`: every setting of the gateway, its default, and its unit.
//!
//! Lives here: the TOML file format (`--config`), the defaults of the local demo configuration,
//! and validation. May not: do I/O other than reading the config file it is pointed at, or know
//! about sockets and executors. The CLI (`main.rs`) parses flags into [`Overrides`] and applies
//! them on top of the file, so a flag and a file key always set the same thing.

use crate::auth::{AuthConfig, AuthMode};
use crate::history::HistoryConfig;
use crate::metrics::LatencyObjectives;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::Path;

/// Largest client message on `/ws` by default: 64 KiB. Bigger ones are closed with 1009.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest message on the conformance `/echo` endpoint: Autobahn's 9.x cases send 16 MiB.
pub const ECHO_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024 + 1024;

/// Which cores run a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cores {
    /// The first N cores counted from the highest id down, so core 0 (where most hosts route
    /// NIC interrupts) is left to the kernel whenever N is smaller than the core count.
    Count(usize),
    /// Exactly these core ids, one shard each.
    List(Vec<usize>),
}

impl Cores {
    /// Parses a count `4`, a list `0,2,3` (a single id as `2,`), or ranges `0-3`, `0-1,4`.
    pub fn parse(s: &str) -> Result<Cores, String> {
        let s = s.trim();
        if s.contains(',') || s.contains('-') {
            let mut ids = Vec::new();
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let bad = || format!("--cores: '{s}' is not a list of core ids or ranges");
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b): (usize, usize) =
                            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                        if a > b {
                            return Err(bad());
                        }
                        ids.extend(a..=b);
                    }
                    None => ids.push(part.parse().map_err(|_| bad())?),
                }
            }
            if ids.is_empty() {
                return Err("--cores: empty list".into());
            }
            Ok(Cores::List(ids))
        } else {
            let n: usize = s
                .parse()
                .map_err(|_| format!("--cores: '{s}' is neither a count nor a list of core ids"))?;
            if n == 0 {
                return Err("--cores: a count must be at least 1 (to pin to core 0 write a list: '0,' or '0-0')".into());
            }
            Ok(Cores::Count(n))
        }
    }

    /// Resolves to concrete core ids given the ids this process may run on.
    pub fn resolve(&self, available: &[usize]) -> Result<Vec<usize>, String> {
        match self {
            Cores::Count(n) => {
                if *n > available.len() {
                    return Err(format!(
                        "--cores {n}: only {} cores are available",
                        available.len()
                    ));
                }
                let mut ids: Vec<usize> = available.iter().rev().take(*n).copied().collect();
                ids.sort_unstable();
                Ok(ids)
            }
            Cores::List(ids) => {
                for id in ids {
                    if !available.contains(id) {
                        return Err(format!(
                            "--cores: core {id} is not available to this process"
                        ));
                    }
                }
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                sorted.dedup();
                if sorted.len() != ids.len() {
                    return Err("--cores: a core id appears twice".into());
                }
                Ok(ids.clone())
            }
        }
    }
}

/// What happens to a subscriber whose socket refuses bytes while its outbound queue stays over
/// `max_backlog_bytes` for longer than `slow_consumer_grace_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    /// Send `error` `SLOW_CONSUMER`, then close 1008 (the default: like NATS, cut it off).
    Disconnect,
    /// Drop the delivery for that connection only (counted in `drops`); the connection is told
    /// the range it missed (`SLOW_CONSUMER` with `topic`, `fromSeq`, `toSeq`) before its next
    /// delivery of the topic, or once its socket drains.
    Drop,
    /// Keep the connection: discard its queued deliveries of the topic and every later one
    /// until its socket drains, then replay the missed range from the owner's history (in
    /// order, exactly once, joined to the live stream like `replay`); what history no longer
    /// holds is reported with `REPLAY_UNAVAILABLE`.
    Refill,
}

impl SlowConsumerPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SlowConsumerPolicy::Disconnect => "disconnect",
            SlowConsumerPolicy::Drop => "drop",
            SlowConsumerPolicy::Refill => "refill",
        }
    }
}

/// `[[slow_consumer_rules]]`: the policy for the topics `topics` matches (an exact name,
/// `name.*` or `*`); the first matching rule wins, `slow_consumer` applies to the rest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConsumerRule {
    pub topics: String,
    pub policy: SlowConsumerPolicy,
}

/// How a core writes its connections' pending bytes each loop turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WritePath {
    /// One io_uring `SEND` per dirty connection, all of a turn's sends in one submit.
    Uring,
    /// One `send(2)` per dirty connection (the coalesced baseline).
    Send,
}

/// Every setting. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every core listens on (SO_REUSEPORT).
    pub bind: SocketAddr,
    /// Cores to run shards on: a count or a list (`cores = 2` or `cores = [0, 1]`).
    #[serde(deserialize_with = "de_cores")]
    pub cores: Cores,
    /// listen(2) backlog of each core's listener (glommio's own `bind` hard-codes 1024).
    pub backlog: i32,
    /// Serve the Autobahn conformance echo endpoint `/echo`.
    pub echo: bool,
    /// Serve `GET /demo/publish/{topic}?k=v` (publishes the query pairs).
    pub demo_publish: bool,
    /// Largest client WebSocket message in bytes (close 1009 above it) and largest HTTP body.
    pub max_message_bytes: usize,
    /// Largest topic name in bytes.
    pub max_topic_bytes: usize,
    /// Most topics one connection may be subscribed to (`LIMIT_EXCEEDED` beyond).
    pub max_topics_per_conn: usize,
    /// Most topics in one `subscribe`/`unsubscribe`/`setup` request (`LIMIT_EXCEEDED` beyond).
    pub max_topics_per_request: usize,
    /// Most connections one core holds; further ones are refused at accept.
    pub max_conns_per_core: usize,
    /// Admission control: most subscriptions one core holds (`LIMIT_EXCEEDED` beyond).
    pub max_subscriptions_per_core: usize,
    /// Admission control: most subscriptions in the process (0: no process cap). Each core
    /// enforces an equal share (`max_subscriptions / cores`), so no count is shared.
    pub max_subscriptions: usize,
    /// The memory budget of the process in bytes (0: half of the machine's memory, or of its
    /// cgroup's limit). Split per core like `max_subscriptions`; above 90 % of its share a core
    /// refuses new subscriptions (`LIMIT_EXCEEDED`), new connections (HTTP 503) and publishes
    /// to new topics, and its history gives back oldest first; at its share it also sheds
    /// backlogs that drain and evicts detached sessions. Reported at startup, by `doctor`,
    /// `/stats` (`memory`) and `/metrics`.
    pub memory_budget_bytes: usize,
    /// Most WebSocket connections one identity holds (a token's `sub`; anonymous: the peer's
    /// IP address). Each core enforces its share (rounded up); 0: no cap.
    pub max_conns_per_identity: usize,
    /// Most subscriptions one identity holds (0: no cap; per core as above).
    pub max_subscriptions_per_identity: usize,
    /// Most topics one identity's subscriptions bring onto the gateway, i.e. unique topics
    /// nobody else subscribed first (0: no cap; per core as above).
    pub max_topics_per_identity: usize,
    /// Admission control: connections one core accepts per second (a token bucket with a
    /// one-second burst; 0: unlimited). A reconnect storm then waits in the kernel's listen
    /// backlog instead of starving the live connections of CPU.
    pub max_accepts_per_sec_per_core: u32,
    /// Largest HTTP request head (upgrade or plain) in bytes.
    pub max_request_head_bytes: usize,
    /// A client must finish its HTTP request head within this many milliseconds.
    pub handshake_timeout_ms: u64,
    /// Per-connection cap on bytes queued but not yet accepted by the kernel. A connection is
    /// judged against it only while its socket refuses bytes: one that takes what it is given
    /// is never over it, whatever a burst queues in one turn (`fanout_turn_bytes` bounds that).
    pub max_backlog_bytes: usize,
    /// The write deadline: a connection whose socket refuses bytes may stay over
    /// `max_backlog_bytes` this long (it is reading, only behind) before `slow_consumer`
    /// applies to it. 0: at once.
    pub slow_consumer_grace_ms: u64,
    /// What to do with a connection over `max_backlog_bytes` for longer than
    /// `slow_consumer_grace_ms`.
    pub slow_consumer: SlowConsumerPolicy,
    /// Per-topic policies ahead of `slow_consumer` (first match wins).
    pub slow_consumer_rules: Vec<SlowConsumerRule>,
    /// The ceiling on the bytes queued for all of one core's connections together. Past it
    /// the policy applies at once to the stalled connections with the largest backlogs (never
    /// to one whose socket is taking bytes), their queued deliveries discarded.
    pub core_backlog_budget_bytes: usize,
    /// SO_SNDBUF set on every accepted socket (0 keeps the kernel's autotuning).
    pub socket_send_buffer_bytes: usize,
    /// A connection that has sent nothing (not even a pong) for this long is closed.
    pub idle_timeout_ms: u64,
    /// The server sends a WebSocket ping after this long without one.
    pub ping_interval_ms: u64,
    /// On SIGINT/SIGTERM: how long to wait for close frames to flush before exiting.
    pub shutdown_grace_ms: u64,
    /// io_uring batch writes or plain send(2).
    pub write_path: WritePath,
    /// Depth of each core's io_uring write ring (sends per submit).
    pub write_ring_entries: u32,
    /// Capacity of each core's cross-core inbox, in messages.
    pub inbox_capacity: usize,
    /// glommio io_memory per executor in bytes (its default of 10 MiB is pinned RAM we don't use).
    pub io_memory_bytes: usize,
    /// glommio ring depth per executor.
    pub ring_depth: usize,
    /// Topics with more local subscribers than this are fanned out in slices with a yield
    /// between them. A slice only copies frame bytes (tens of ns per subscriber), so it can be
    /// large; yielding mid-fan-out would split subscribers' frames over more writes.
    pub fanout_slice_subscribers: usize,
    /// Bytes one core's fan-out may queue (over all its connections) before the writer runs:
    /// past it the fan-out yields to the flusher, so a burst is offered to the sockets in
    /// slices of this size instead of piling up in out buffers first. Large enough that a
    /// closed-loop window of publishes to thousands of subscribers still goes out in one write
    /// per connection (coalescing is worth 10-25x; 4 MiB split a 1,000-subscriber window of 32
    /// and doubled the cost per delivery).
    pub fanout_turn_bytes: usize,
    /// I1: authentication and access rules (`[auth]` table; see `auth.rs` for every key).
    pub auth: AuthConfig,
    /// I6: per-topic history kept by each topic's owner for `replay`, `resume` and `subscribe`
    /// with `fromSeq` (`[history]` with `budget_bytes` and `[[history.rules]]`). Default: every
    /// topic keeps its last 1,000 messages for 5 minutes within 64 MiB per core;
    /// `[history]` `rules = []` turns it off.
    pub history: HistoryConfig,
    /// I5: latency objectives in µs for the publish-to-write p50/p95/p99 (each optional); a
    /// one-second window above an objective counts a breach in `/metrics` and `/stats`.
    pub latency_objectives_us: LatencyObjectives,
    /// I2: a client-given `messageId` repeated on the same topic within this window is answered
    /// `duplicate` and not delivered again.
    pub dedup_window_ms: u64,
    /// I2: most ids remembered per core (the oldest are forgotten first; 0 turns dedup off).
    pub dedup_max_entries: usize,
    /// A flush of more dirty connections than this is written in chunks of this size (one
    /// io_uring submit each) with a yield between, so one huge flush cannot starve reads.
    pub flush_chunk_conns: usize,
    /// I6: how long a session outlives its connection, waiting for a `resume` (0: sessions
    /// end with their connection and `resume` answers `SESSION_EXPIRED`).
    pub session_ttl_ms: u64,
    /// I6: most sessions one core keeps waiting for a `resume` (the oldest goes first).
    pub max_detached_sessions_per_core: usize,
    /// I4: topics whose every publish is QoS 1 (`payments.*`, exact names, `*`), whatever the
    /// publish's own `qos`.
    pub qos1_topics: Vec<String>,
    /// I4: most unacknowledged QoS 1 deliveries per connection; one more closes it with
    /// `SLOW_CONSUMER` (QoS 1 deliveries are never dropped; its session keeps them for `resume`).
    pub qos1_window: usize,
    /// I4: an unacknowledged QoS 1 delivery is sent again after this long.
    pub qos1_redeliver_ms: u64,
    /// I4: QoS 1 messages of topics no `[[history.rules]]` matches are still kept by the owner
    /// (so a resumed session gets them again): at most this many per topic …
    pub qos1_history_max_messages: usize,
    /// … and for at most this long.
    pub qos1_history_max_age_ms: u64,
    /// I7: HMAC-SHA256 signatures on every delivery (`[signing]`; off when absent).
    pub signing: Option<SigningConfig>,
    /// I7: serve `wss://`/`https://` with these certificates (`[tls]`; plain text when absent).
    pub tls: Option<crate::tls::TlsConfig>,
    /// permessage-deflate (RFC 7692) on the WebSocket endpoints (`[deflate]`: `enabled`,
    /// `level`, `min_bytes`, `client_context_takeover`, `client_max_window_bits`). On by
    /// default: deliveries of at least `min_bytes` are compressed once per publish for every
    /// subscriber that negotiated it.
    pub deflate: crate::ws::deflate::DeflateConfig,
    /// Many gateways over a NATS backbone (`[cluster]`, or `--backbone nats://…`); absent: one
    /// node, sequenced in memory by each topic's owner core.
    pub cluster: Option<crate::backbone::ClusterConfig>,
}

/// `[signing]`: the key every delivery is signed with (I7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Sent in each delivery as `kid`, so clients can pick the key (and keys can rotate).
    pub key_id: String,
    /// A file holding the key as hex (at least 32 bytes = 64 hex digits; whitespace ignored).
    pub key_hex_file: std::path::PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1:8080".parse().expect("literal address parses"),
            cores: Cores::Count(available_cores().len().max(1)),
            backlog: 4096,
            echo: false,
            demo_publish: true,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_topic_bytes: 256,
            max_topics_per_conn: 10_000,
            max_topics_per_request: 1_000,
            max_conns_per_core: 1_000_000,
            max_subscriptions_per_core: 50_000_000,
            max_subscriptions: 0,
            max_accepts_per_sec_per_core: 20_000,
            memory_budget_bytes: 0,
            max_conns_per_identity: 100_000,
            max_subscriptions_per_identity: 10_000_000,
            max_topics_per_identity: 1_000_000,
            max_request_head_bytes: 8 * 1024,
            handshake_timeout_ms: 10_000,
            max_backlog_bytes: 1024 * 1024,
            slow_consumer_grace_ms: 2_000,
            core_backlog_budget_bytes: 256 * 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            slow_consumer_rules: Vec::new(),
            socket_send_buffer_bytes: 128 * 1024,
            idle_timeout_ms: 90_000,
            ping_interval_ms: 25_000,
            shutdown_grace_ms: 3_000,
            write_path: WritePath::Uring,
            write_ring_entries: 1024,
            inbox_capacity: 64 * 1024,
            io_memory_bytes: 64 * 1024,
            ring_depth: 1024,
            auth: AuthConfig::default(),
            history: HistoryConfig::default(),
            latency_objectives_us: LatencyObjectives::default(),
            dedup_window_ms: 120_000,
            dedup_max_entries: 1_000_000,
            fanout_slice_subscribers: 16 * 1024,
            fanout_turn_bytes: 64 * 1024 * 1024,
            flush_chunk_conns: 1024,
            session_ttl_ms: 120_000,
            max_detached_sessions_per_core: 100_000,
            qos1_topics: Vec::new(),
            qos1_window: 1_000,
            qos1_redeliver_ms: 5_000,
            qos1_history_max_messages: 10_000,
            qos1_history_max_age_ms: 300_000,
            signing: None,
            tls: None,
            deflate: Default::default(),
            cluster: None,
        }
    }
}

fn de_cores<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Cores, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Count(usize),
        List(Vec<usize>),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Count(0) => Err(serde::de::Error::custom(
            "cores: at least one core is needed",
        )),
        Raw::Count(n) => Ok(Cores::Count(n)),
        Raw::List(v) if v.is_empty() => Err(serde::de::Error::custom("cores: empty list")),
        Raw::List(v) => Ok(Cores::List(v)),
        Raw::Text(s) => Cores::parse(&s).map_err(serde::de::Error::custom),
    }
}

/// Values given on the command line; each replaces the file's (or default) value when set.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub bind: Option<SocketAddr>,
    pub cores: Option<Cores>,
    pub echo: bool,
    pub demo_publish: Option<bool>,
    pub write_path: Option<WritePath>,
    pub slow_consumer: Option<SlowConsumerPolicy>,
    pub max_backlog_bytes: Option<usize>,
    pub slow_consumer_grace_ms: Option<u64>,
    pub core_backlog_budget_bytes: Option<usize>,
    pub memory_budget_bytes: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    pub ping_interval_ms: Option<u64>,
    /// `--deflate BOOL`: permessage-deflate on or off.
    pub deflate: Option<bool>,
    /// `--auth none|jwt`.
    pub auth_mode: Option<AuthMode>,
    /// `--backbone nats://host:port[,nats://…]`: join a cluster over NATS.
    pub backbone: Option<String>,
    /// `--node-name NAME`: this gateway's name in the cluster.
    pub node_name: Option<String>,
}

impl Config {
    /// Reads a TOML file. Unknown keys are an error, so a typo never silently keeps a default.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies command-line values on top.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(b) = o.bind {
            self.bind = b;
        }
        if let Some(c) = &o.cores {
            self.cores = c.clone();
        }
        if o.echo {
            self.echo = true;
        }
        if let Some(d) = o.demo_publish {
            self.demo_publish = d;
        }
        if let Some(w) = o.write_path {
            self.write_path = w;
        }
        if let Some(s) = o.slow_consumer {
            self.slow_consumer = s;
        }
        if let Some(v) = o.max_backlog_bytes {
            self.max_backlog_bytes = v;
        }
        if let Some(v) = o.slow_consumer_grace_ms {
            self.slow_consumer_grace_ms = v;
        }
        if let Some(v) = o.core_backlog_budget_bytes {
            self.core_backlog_budget_bytes = v;
        }
        if let Some(v) = o.memory_budget_bytes {
            self.memory_budget_bytes = v;
        }
        if let Some(v) = o.max_message_bytes {
            self.max_message_bytes = v;
        }
        if let Some(v) = o.idle_timeout_ms {
            self.idle_timeout_ms = v;
        }
        if let Some(v) = o.ping_interval_ms {
            self.ping_interval_ms = v;
        }
        if let Some(d) = o.deflate {
            self.deflate.enabled = d;
        }
        if let Some(m) = o.auth_mode {
            self.auth.mode = Some(m);
        }
        if let Some(url) = &o.backbone {
            self.cluster.get_or_insert_with(Default::default).backbone = url.clone();
        }
        if let Some(n) = &o.node_name {
            self.cluster.get_or_insert_with(Default::default).node_name = Some(n.clone());
        }
    }

    /// Checks values that would make the gateway misbehave rather than fail loudly.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_message_bytes < 128 {
            return Err("max_message_bytes must be at least 128".into());
        }
        self.deflate.validate()?;
        if self.max_topic_bytes == 0 || self.max_topic_bytes > 64 * 1024 {
            return Err("max_topic_bytes must be between 1 and 65536".into());
        }
        if self.max_backlog_bytes < 1024 {
            return Err("max_backlog_bytes must be at least 1024".into());
        }
        if self.write_ring_entries < 8 || !self.write_ring_entries.is_power_of_two() {
            return Err("write_ring_entries must be a power of two >= 8".into());
        }
        if self.inbox_capacity < 16 {
            return Err("inbox_capacity must be at least 16".into());
        }
        if self.max_topics_per_request == 0 || self.max_topics_per_conn == 0 {
            return Err("topic limits must be at least 1".into());
        }
        if self.ping_interval_ms == 0 || self.idle_timeout_ms == 0 {
            return Err("ping_interval_ms and idle_timeout_ms must be positive".into());
        }
        if self.slow_consumer_grace_ms > 60_000 {
            return Err("slow_consumer_grace_ms must be at most 60000".into());
        }
        if self.core_backlog_budget_bytes < self.max_backlog_bytes {
            return Err("core_backlog_budget_bytes must be at least max_backlog_bytes".into());
        }
        if self.memory_budget_bytes > 0 && self.memory_budget_bytes < 16 << 20 {
            return Err("memory_budget_bytes must be at least 16777216 (16 MiB), or 0 for half of the machine's memory".into());
        }
        if self.fanout_turn_bytes < 64 * 1024 {
            return Err("fanout_turn_bytes must be at least 65536".into());
        }
        if self.fanout_slice_subscribers == 0 || self.flush_chunk_conns == 0 {
            return Err("fanout_slice_subscribers and flush_chunk_conns must be positive".into());
        }
        if self.io_memory_bytes < 64 * 1024 {
            return Err("io_memory_bytes must be at least 65536 (glommio's minimum)".into());
        }
        if self.qos1_window == 0 || self.qos1_redeliver_ms == 0 {
            return Err("qos1_window and qos1_redeliver_ms must be positive".into());
        }
        for r in &self.slow_consumer_rules {
            crate::history::Pattern::parse(&r.topics)
                .map_err(|e| format!("slow_consumer_rules: {e}"))?;
        }
        for p in &self.qos1_topics {
            crate::history::Pattern::parse(p).map_err(|e| format!("qos1_topics: {e}"))?;
        }
        if let Some(c) = &self.cluster {
            c.validate().map_err(|e| format!("[cluster]: {e}"))?;
            if self.max_topic_bytes > crate::backbone::MAX_CLUSTER_TOPIC_BYTES {
                return Err(format!(
                    "with [cluster], max_topic_bytes must be at most {} (a NATS subject line is limited to 4 KB and escaping can triple a topic)",
                    crate::backbone::MAX_CLUSTER_TOPIC_BYTES
                ));
            }
        }
        Ok(())
    }
}

/// Core ids this process may run on (its affinity mask), ascending.
pub fn available_cores() -> Vec<usize> {
    let mut ids: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort_unstable();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_serve_the_local_demo() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:8080");
        assert!(c.demo_publish);
        assert!(!c.echo);
    }

    #[test]
    fn toml_sets_the_same_things_as_flags() {
        let c = Config::from_toml(
            "bind = \"127.0.0.1:9000\"\ncores = [0, 1]\necho = true\nslow_consumer = \"drop\"\nwrite_path = \"send\"\n",
        )
        .unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.cores, Cores::List(vec![0, 1]));
        assert!(c.echo);
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Drop);
        assert_eq!(c.write_path, WritePath::Send);
        let c = Config::from_toml("cores = 3").unwrap();
        assert_eq!(c.cores, Cores::Count(3));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let e = Config::from_toml("bnid = \"x\"").unwrap_err();
        assert!(e.contains("bnid"), "{e}");
    }

    #[test]
    fn slow_consumer_limits_are_checked() {
        let check = |toml: &str| Config::from_toml(toml).unwrap().validate();
        let c = Config::from_toml("core_backlog_budget_bytes = 268435456").unwrap();
        assert_eq!(c.core_backlog_budget_bytes, 256 << 20);
        assert!(c.validate().is_ok());
        let e = check("max_backlog_bytes = 2048\ncore_backlog_budget_bytes = 1024").unwrap_err();
        assert!(e.contains("core_backlog_budget_bytes"), "{e}");
        let e = check("slow_consumer_grace_ms = 60001").unwrap_err();
        assert!(e.contains("slow_consumer_grace_ms"), "{e}");
    }

    #[test]
    fn core_counts_leave_core_zero_when_they_can() {
        assert_eq!(
            Cores::parse("2").unwrap().resolve(&[0, 1, 2, 3]).unwrap(),
            vec![2, 3]
        );
        assert_eq!(
            Cores::parse("0,2").unwrap().resolve(&[0, 1, 2]).unwrap(),
            vec![0, 2]
        );
        assert!(Cores::parse("5").unwrap().resolve(&[0, 1]).is_err());
        assert!(Cores::parse("0,9").unwrap().resolve(&[0, 1]).is_err());
        assert!(Cores::parse("0").is_err());
        assert_eq!(Cores::parse("0,").unwrap(), Cores::List(vec![0]));
        assert_eq!(
            Cores::parse("0-2,5").unwrap(),
            Cores::List(vec![0, 1, 2, 5])
        );
        assert!(Cores::parse("3-1").is_err());
        assert!(Cores::parse("x").is_err());
    }
}
