//! Per-core counters and how they are shown.
//!
//! Each core owns one [`Counters`] made of plain `Cell<u64>`: bumping one is an add, never an
//! atomic. `/stats` and `/metrics` ask every core for a [`Snapshot`] by message (see
//! `mesh::ShardMsg::StatsQuery`) and render the list here. Pure: no I/O, no glommio.

use hdrhistogram::Histogram;
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Duration;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The live counters of one core. `!Sync` on purpose: only its core touches it.
        #[derive(Debug, Default)]
        pub struct Counters { $( $(#[$doc])* pub $name: Cell<u64>, )* }

        /// A copy of one core's counters plus its gauges, sent across cores for `/stats`.
        #[derive(Debug, Default, Clone)]
        pub struct Snapshot {
            /// Core id the shard is pinned to.
            pub core: usize,
            /// Open WebSocket connections.
            pub connections: u64,
            /// Topics with at least one local subscriber.
            pub local_topics: u64,
            /// Topics owned (sequenced) by this core that have a subscriber on any core.
            pub owned_topics_with_interest: u64,
            /// Subscriptions held on this core.
            pub subscriptions: u64,
            /// Bytes queued for connections but not yet accepted by the kernel.
            pub backlog_bytes: u64,
            /// Client `messageId`s remembered in this core's duplicate window (I2).
            pub dedup_entries: u64,
            /// Ids forgotten because the duplicate window was full before they expired.
            pub dedup_evictions: u64,
            /// Sessions held here whose connection is gone, waiting for a `resume` (I6).
            pub sessions_detached: u64,
            /// QoS 1 deliveries sent and not yet acknowledged, over this core's connections (I4).
            pub qos1_unacked: u64,
            /// Publish-to-write latency of this core's deliveries (I5).
            pub latency: Option<Box<LatencySnapshot>>,
            /// This core's memory, part by part, as the memory budget counts it.
            pub memory: crate::memory::Usage,
            /// This core's share of the memory budget.
            pub memory_share: u64,
            /// The process RSS at this core's last look (the same process-wide figure on
            /// every core, up to a second apart).
            pub rss: u64,
            /// Identities with a connection on this core.
            pub identities: u64,
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            /// Copies the counters into a snapshot (gauges are filled by the caller).
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $( $name: self.$name.get(), )* ..Snapshot::default() }
            }
        }

        impl Snapshot {
            fn counter_fields(&self) -> Vec<(&'static str, u64)> {
                vec![ $( (stringify!($name), self.$name), )* ]
            }

            fn add_counters(&mut self, o: &Snapshot) {
                $( self.$name = self.$name.wrapping_add(o.$name); )*
            }
        }
    };
}

counters! {
    /// Connections accepted (TCP), WebSocket or HTTP.
    accepted,
    /// WebSocket upgrades completed.
    ws_opened,
    /// WebSocket connections closed, for any reason.
    ws_closed,
    /// HTTP requests answered.
    http_requests,
    /// Handshakes refused or timed out.
    handshake_failures,
    /// TLS handshakes (or later records) that failed: bad client hello, no shared cipher, bad MAC.
    tls_handshake_failures,
    /// Client messages received (text frames).
    messages_in,
    /// Publishes accepted on this core (from clients or HTTP), before routing to the owner.
    publishes_in,
    /// Publishes sequenced by this core as the topic's owner.
    publishes_sequenced,
    /// Publishes answered `duplicate` (a `messageId` repeated within the window) and not delivered.
    duplicates,
    /// Frames handed to local subscribers (one per subscriber per publish).
    deliveries,
    /// Bytes accepted by the kernel for all connections (deliveries and replies).
    bytes_out,
    /// Write operations issued (io_uring SEND or send(2)), one per connection per flush.
    writes,
    /// Writes that found the socket full (EAGAIN or short write).
    writes_blocked,
    /// Deliveries dropped by the `drop` slow-consumer policy.
    drops,
    /// Connections closed by the `disconnect` slow-consumer policy.
    slow_consumer_disconnects,
    /// Connections the core's backlog budget picked (largest stalled backlogs first): their
    /// queued deliveries discarded, then cut (`disconnect`) or kept (`drop`).
    budget_sheds,
    /// `SLOW_CONSUMER` reports of a range `drop` dropped (one per range told).
    drop_reports,
    /// Times a connection began a refill (`refill` policy): its queued deliveries of `refill`
    /// topics discarded, to be replayed once its socket drains.
    refill_entries,
    /// Deliveries discarded for a refill (the replay brings them back while history holds them).
    refill_discards,
    /// Refill replays asked for (one per topic per refill).
    refill_replays,
    /// `error` answers sent.
    protocol_errors,
    /// Connections closed for silence (no frame within idle_timeout).
    idle_closes,
    /// Connections refused because the core was at max_conns_per_core.
    conns_refused,
    /// Times the accept loop waited for max_accepts_per_sec_per_core (a connection storm).
    accepts_throttled,
    /// Subscriptions refused by max_subscriptions_per_core / max_subscriptions.
    subscriptions_refused,
    /// Cross-core messages that found the peer's inbox full and waited in the outbox.
    inbox_full,
    /// Delivery frames handed to this core by the topics' owners on other cores (with interest
    /// routing, only frames of topics this core has a subscriber of).
    remote_frames_in,
    /// QoS 1 deliveries queued for a subscriber (first sends; each is tracked until its ack).
    qos1_deliveries,
    /// QoS 1 deliveries sent again because no ack came within `qos1_redeliver_ms`.
    qos1_redeliveries,
    /// Acks that matched an unacknowledged QoS 1 delivery.
    qos1_acks,
    /// Connections closed for having `qos1_window` deliveries unacknowledged.
    qos1_window_closes,
    /// Sessions made by `setup`.
    sessions_created,
    /// Sessions resumed by `resume` on this core.
    sessions_resumed,
    /// Clusters: of those, sessions made on another node (a stateless resume).
    sessions_resumed_across_nodes,
    /// `resume` requests answered `SESSION_EXPIRED` on this core.
    sessions_resume_failed,
    /// Detached sessions dropped because their time to live ran out.
    sessions_expired,
    /// Detached sessions dropped because the core held `max_detached_sessions_per_core`, or
    /// because the memory budget was spent.
    sessions_evicted,
    /// Requests refused because the core was near its memory budget: subscriptions
    /// (`LIMIT_EXCEEDED`), upgrades (HTTP 503), publishes to new topics.
    memory_refusals,
    /// Requests refused by a per-identity cap (connections, subscriptions, unique topics).
    identity_refusals,
    /// History messages evicted early to give memory back (the budget was near).
    memory_history_evictions,
    /// Backlogs shed because the core was at its memory budget.
    memory_sheds,
    /// WebSocket upgrades that negotiated permessage-deflate.
    deflate_negotiated,
    /// Compressed forms built by this core as a topic's owner (once per publish, for every
    /// core; only when some subscriber of the topic takes compressed frames).
    deflate_built,
    /// Bytes those compressions took in (message payloads) …
    deflate_bytes_in,
    /// … and gave out (compressed frames; the plain frame's size when compressing did not help).
    deflate_bytes_out,
    /// Nanoseconds spent compressing them.
    deflate_ns,
    /// Deliveries queued compressed (a subset of `deliveries`).
    deliveries_deflated,
    /// Server-Sent Event streams (`/sse`) opened …
    sse_opened,
    /// … and closed.
    sse_closed,
    /// Streams opened with a `Last-Event-ID` (header or `?lastEventId=`): resumed from history.
    sse_resumes,
    /// Delivery events built by this core as a topic's owner (once per publish, for every core;
    /// only when some event stream is subscribed to the topic).
    sse_built,
    /// Events built for one stream only: replayed deliveries, answers, and a live delivery the
    /// owner had not built an event for (a stream subscribed while it was on its way).
    sse_built_for_one,
    /// Deliveries queued as events (a subset of `deliveries`).
    deliveries_sse,
}

impl Counters {
    /// `counter += n`.
    #[inline]
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }
}

/// Quantiles with a latency objective, in the order of [`LatencyObjectives::as_array`].
pub const OBJECTIVE_QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")];
/// Largest latency recorded (longer ones are clamped): one minute.
const LATENCY_MAX_US: u64 = 60_000_000;

/// Latency objectives in microseconds (TOML table `latency_objectives_us`): a one-second window
/// whose quantile is above its objective counts one breach.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LatencyObjectives {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
}

impl LatencyObjectives {
    /// p50, p95, p99.
    pub fn as_array(&self) -> [Option<u64>; 3] {
        [self.p50, self.p95, self.p99]
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("static histogram bounds are valid")
}

/// One core's publish-to-write latency: a histogram since start and one for the current second
/// (for the objectives). Recording is a few nanoseconds and touches only this core's memory.
#[derive(Debug)]
pub struct LatencyRecorder {
    total: RefCell<Histogram<u64>>,
    window: RefCell<Histogram<u64>>,
    objectives: LatencyObjectives,
    breaches: [Cell<u64>; 3],
}

impl LatencyRecorder {
    /// An empty recorder with these objectives.
    pub fn new(objectives: LatencyObjectives) -> Self {
        LatencyRecorder {
            total: RefCell::new(new_histogram()),
            window: RefCell::new(new_histogram()),
            objectives,
            breaches: Default::default(),
        }
    }

    /// `count` deliveries written `latency` after their publish.
    #[inline]
    pub fn record(&self, latency: Duration, count: u64) {
        let us = (latency.as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let count = count.max(1);
        let _ = self.total.borrow_mut().record_n(us, count);
        let _ = self.window.borrow_mut().record_n(us, count);
    }

    /// Ends the current one-second window: counts breached objectives, starts a new window.
    pub fn tick(&self) {
        let mut w = self.window.borrow_mut();
        if w.is_empty() {
            return;
        }
        for (i, objective) in self.objectives.as_array().into_iter().enumerate() {
            if let Some(limit) = objective {
                if w.value_at_quantile(OBJECTIVE_QUANTILES[i].0) > limit {
                    self.breaches[i].set(self.breaches[i].get() + 1);
                }
            }
        }
        w.reset();
    }

    /// A copy to send to the core that renders `/stats` or `/metrics`.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            histogram: self.total.borrow().clone(),
            objectives: self.objectives.clone(),
            breaches: [
                self.breaches[0].get(),
                self.breaches[1].get(),
                self.breaches[2].get(),
            ],
        }
    }
}

/// A core's latency histogram and breach counts, as sent across cores.
#[derive(Debug, Clone)]
pub struct LatencySnapshot {
    /// Microseconds from publish to the write that carried the delivery.
    pub histogram: Histogram<u64>,
    pub objectives: LatencyObjectives,
    /// One-second windows over each objective (p50, p95, p99).
    pub breaches: [u64; 3],
}

impl LatencySnapshot {
    fn merge(&mut self, o: &LatencySnapshot) {
        let _ = self.histogram.add(&o.histogram);
        for i in 0..3 {
            self.breaches[i] += o.breaches[i];
        }
    }

    fn json(&self) -> String {
        let h = &self.histogram;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        let obj = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
        let o = self.objectives.as_array();
        format!(
            "{{\"count\":{},\"p50\":{},\"p95\":{},\"p99\":{},\"max\":{},\"objectives\":{{\"p50\":{},\"p95\":{},\"p99\":{}}},\"breaches\":{{\"p50\":{},\"p95\":{},\"p99\":{}}}}}",
            h.len(), q(0.5), q(0.95), q(0.99), h.max(), obj(o[0]), obj(o[1]), obj(o[2]),
            self.breaches[0], self.breaches[1], self.breaches[2]
        )
    }
}

/// Sums per-core snapshots (the `core` field of the result is meaningless).
pub fn total(snaps: &[Snapshot]) -> Snapshot {
    let mut t = Snapshot::default();
    for s in snaps {
        t.connections += s.connections;
        t.local_topics += s.local_topics;
        t.owned_topics_with_interest += s.owned_topics_with_interest;
        t.subscriptions += s.subscriptions;
        t.backlog_bytes += s.backlog_bytes;
        t.dedup_entries += s.dedup_entries;
        t.dedup_evictions += s.dedup_evictions;
        t.sessions_detached += s.sessions_detached;
        t.qos1_unacked += s.qos1_unacked;
        t.memory.add(&s.memory);
        t.memory_share += s.memory_share;
        t.rss = t.rss.max(s.rss);
        t.identities += s.identities;
        if let Some(l) = &s.latency {
            match &mut t.latency {
                Some(tl) => tl.merge(l),
                None => t.latency = Some(l.clone()),
            }
        }
        t.add_counters(s);
    }
    t
}

/// `/stats`: totals at the top level (what PROTOCOL.md names: connections, topics,
/// subscriptions) and the same per core under `cores`.
pub fn render_stats_json(snaps: &[Snapshot]) -> String {
    let t = total(snaps);
    let mut out = String::with_capacity(256 + snaps.len() * 512);
    let _ = write!(
        out,
        "{{\"connections\":{},\"topics\":{},\"subscriptions\":{},\"backlogBytes\":{},\"dedupEntries\":{},\"dedupEvictions\":{},\"sessionsDetached\":{},\"qos1Unacked\":{}",
        t.connections, t.owned_topics_with_interest, t.subscriptions, t.backlog_bytes, t.dedup_entries, t.dedup_evictions, t.sessions_detached, t.qos1_unacked
    );
    for (name, v) in t.counter_fields() {
        let _ = write!(out, ",\"{}\":{}", camel(name), v);
    }
    if let Some(l) = &t.latency {
        let _ = write!(out, ",\"latencyUs\":{}", l.json());
    }
    let _ = write!(
        out,
        ",\"memory\":{{\"budgetBytes\":{},\"usedBytes\":{},\"rssBytes\":{},\"identities\":{},\"parts\":{}}}",
        t.memory_share,
        t.memory.total(),
        t.rss,
        t.identities,
        memory_parts_json(&t.memory)
    );
    out.push_str(",\"cores\":[");
    for (i, s) in snaps.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"core\":{},\"connections\":{},\"topics\":{},\"subscriptions\":{},\"backlogBytes\":{}",
            s.core, s.connections, s.local_topics, s.subscriptions, s.backlog_bytes
        );
        for (name, v) in s.counter_fields() {
            let _ = write!(out, ",\"{}\":{}", camel(name), v);
        }
        let _ = write!(
            out,
            ",\"memory\":{{\"shareBytes\":{},\"usedBytes\":{},\"parts\":{}}}",
            s.memory_share,
            s.memory.total(),
            memory_parts_json(&s.memory)
        );
        if let Some(l) = &s.latency {
            let _ = write!(out, ",\"latencyUs\":{}", l.json());
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `{"base":…,"connections":…}`: a usage's parts.
fn memory_parts_json(u: &crate::memory::Usage) -> String {
    let mut out = String::from("{");
    for (i, (name, v)) in u.parts().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":{v}");
    }
    out.push('}');
    out
}

/// `snake_case` -> `camelCase` (the `/stats` spelling of a counter name).
pub(crate) fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for ch in snake.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.push(ch.to_ascii_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// `/metrics`: Prometheus text exposition, one series per core (label `core`) plus gauges of
/// the process totals for topics (a topic on two cores counts once).
pub fn render_prometheus(snaps: &[Snapshot]) -> String {
    let mut out = String::with_capacity(4096);
    type Gauge = (&'static str, &'static str, fn(&Snapshot) -> u64);
    let gauges: [Gauge; 8] = [
        ("connections", "Open WebSocket connections", |s| {
            s.connections
        }),
        ("subscriptions", "Subscriptions held", |s| s.subscriptions),
        (
            "local_topics",
            "Topics with a subscriber on this core",
            |s| s.local_topics,
        ),
        (
            "backlog_bytes",
            "Bytes queued, not yet accepted by the kernel",
            |s| s.backlog_bytes,
        ),
        (
            "dedup_entries",
            "Client messageIds in the duplicate window",
            |s| s.dedup_entries,
        ),
        (
            "dedup_evictions",
            "Ids forgotten because the duplicate window was full",
            |s| s.dedup_evictions,
        ),
        (
            "sessions_detached",
            "Sessions whose connection is gone, kept for resume",
            |s| s.sessions_detached,
        ),
        (
            "qos1_unacked",
            "QoS 1 deliveries sent and not yet acknowledged",
            |s| s.qos1_unacked,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP subsocket_{name} {help}.");
        let _ = writeln!(out, "# TYPE subsocket_{name} gauge");
        for s in snaps {
            let _ = writeln!(out, "subsocket_{name}{{core=\"{}\"}} {}", s.core, get(s));
        }
    }
    let t = total(snaps);
    let _ = writeln!(
        out,
        "# HELP subsocket_topics Distinct topics with at least one subscriber."
    );
    let _ = writeln!(out, "# TYPE subsocket_topics gauge");
    let _ = writeln!(out, "subsocket_topics {}", t.owned_topics_with_interest);
    if let Some(first) = snaps.first() {
        for (i, (name, _)) in first.counter_fields().into_iter().enumerate() {
            let _ = writeln!(out, "# TYPE subsocket_{name}_total counter");
            for s in snaps {
                let _ = writeln!(
                    out,
                    "subsocket_{name}_total{{core=\"{}\"}} {}",
                    s.core,
                    s.counter_fields()[i].1
                );
            }
        }
    }
    render_memory(&mut out, snaps, &t);
    render_latency(&mut out, snaps, &t);
    out
}

/// The memory budget: each core's share and use by part, the process RSS.
fn render_memory(out: &mut String, snaps: &[Snapshot], total: &Snapshot) {
    let _ = writeln!(
        out,
        "# HELP subsocket_memory_budget_bytes The process memory budget (memory_budget_bytes)."
    );
    let _ = writeln!(out, "# TYPE subsocket_memory_budget_bytes gauge");
    let _ = writeln!(out, "subsocket_memory_budget_bytes {}", total.memory_share);
    let _ = writeln!(
        out,
        "# HELP subsocket_memory_share_bytes Each core's share of the memory budget."
    );
    let _ = writeln!(out, "# TYPE subsocket_memory_share_bytes gauge");
    for s in snaps {
        let _ = writeln!(
            out,
            "subsocket_memory_share_bytes{{core=\"{}\"}} {}",
            s.core, s.memory_share
        );
    }
    let _ = writeln!(
        out,
        "# HELP subsocket_memory_used_bytes Memory held per core and part, as the budget counts it."
    );
    let _ = writeln!(out, "# TYPE subsocket_memory_used_bytes gauge");
    for s in snaps {
        for (part, v) in s.memory.parts() {
            let _ = writeln!(
                out,
                "subsocket_memory_used_bytes{{core=\"{}\",part=\"{part}\"}} {v}",
                s.core
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP subsocket_rss_bytes Resident set of the process."
    );
    let _ = writeln!(out, "# TYPE subsocket_rss_bytes gauge");
    let _ = writeln!(out, "subsocket_rss_bytes {}", total.rss);
}

/// The publish-to-write latency as a Prometheus summary per core and for the process, plus the
/// objective breach counters.
fn render_latency(out: &mut String, snaps: &[Snapshot], total: &Snapshot) {
    let name = "subsocket_delivery_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from publish accepted to the write carrying the delivery."
    );
    let _ = writeln!(out, "# TYPE {name} summary");
    let series = snaps
        .iter()
        .map(|s| (format!("core=\"{}\",", s.core), s))
        .chain(std::iter::once((String::new(), total)));
    for (label, s) in series {
        let Some(l) = &s.latency else { continue };
        let h = &l.histogram;
        for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            };
            let _ = writeln!(out, "{name}{{{label}quantile=\"{q}\"}} {}", v as f64 / 1e6);
        }
        let sum = h.mean() * h.len() as f64 / 1e6;
        let label = label.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{label}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{label}}} {}", h.len());
    }
    let b = "subsocket_latency_objective_breaches_total";
    let _ = writeln!(
        out,
        "# HELP {b} One-second windows whose latency quantile was above its objective."
    );
    let _ = writeln!(out, "# TYPE {b} counter");
    for s in snaps {
        let Some(l) = &s.latency else { continue };
        for (i, (q, _)) in OBJECTIVE_QUANTILES.iter().enumerate() {
            if l.objectives.as_array()[i].is_some() {
                let _ = writeln!(
                    out,
                    "{b}{{core=\"{}\",quantile=\"{q}\"}} {}",
                    s.core, l.breaches[i]
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(core: usize, conns: u64, deliveries: u64) -> Snapshot {
        let c = Counters::default();
        Counters::add(&c.deliveries, deliveries);
        Counters::add(&c.slow_consumer_disconnects, 1);
        let mut s = c.snapshot();
        s.core = core;
        s.connections = conns;
        s.owned_topics_with_interest = 1;
        s
    }

    #[test]
    fn totals_sum_every_counter() {
        let t = total(&[snap(0, 2, 10), snap(1, 3, 5)]);
        assert_eq!(t.connections, 5);
        assert_eq!(t.deliveries, 15);
        assert_eq!(t.slow_consumer_disconnects, 2);
        assert_eq!(t.owned_topics_with_interest, 2);
    }

    #[test]
    fn stats_json_is_valid_and_has_the_protocol_fields() {
        let j = render_stats_json(&[snap(0, 2, 10), snap(1, 3, 5)]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["connections"], 5);
        assert_eq!(v["topics"], 2);
        assert_eq!(v["subscriptions"], 0);
        assert_eq!(v["deliveries"], 15);
        assert_eq!(v["slowConsumerDisconnects"], 2);
        assert_eq!(v["cores"][1]["core"], 1);
        assert_eq!(v["cores"][1]["deliveries"], 5);
    }

    #[test]
    fn latency_is_merged_across_cores_and_breaches_are_counted() {
        let objectives = LatencyObjectives {
            p50: None,
            p95: None,
            p99: Some(1_000),
        };
        let fast = LatencyRecorder::new(objectives.clone());
        let slow = LatencyRecorder::new(objectives);
        fast.record(Duration::from_micros(100), 99);
        slow.record(Duration::from_millis(5), 1);
        fast.tick();
        slow.tick();
        let mut a = snap(0, 0, 0);
        a.latency = Some(Box::new(fast.snapshot()));
        let mut b = snap(1, 0, 0);
        b.latency = Some(Box::new(slow.snapshot()));
        let t = total(&[a.clone(), b.clone()]);
        let l = t.latency.as_ref().unwrap();
        assert_eq!(l.histogram.len(), 100);
        assert!(l.histogram.value_at_quantile(0.5) < 200);
        assert!(l.histogram.max() >= 4_900);
        // Only the slow core's window broke its p99 objective.
        assert_eq!(a.latency.as_ref().unwrap().breaches, [0, 0, 0]);
        assert_eq!(l.breaches, [0, 0, 1]);
        let j: serde_json::Value =
            serde_json::from_str(&render_stats_json(&[a.clone(), b.clone()])).unwrap();
        assert_eq!(j["latencyUs"]["count"], 100);
        assert_eq!(j["latencyUs"]["breaches"]["p99"], 1);
        assert_eq!(j["latencyUs"]["objectives"]["p99"], 1000);
        assert_eq!(j["cores"][1]["latencyUs"]["count"], 1);
        let p = render_prometheus(&[a, b]);
        assert!(
            p.contains("subsocket_delivery_latency_seconds_count{core=\"0\"} 99"),
            "{p}"
        );
        assert!(
            p.contains("subsocket_delivery_latency_seconds_count{} 100"),
            "{p}"
        );
        assert!(
            p.contains(
                "subsocket_latency_objective_breaches_total{core=\"1\",quantile=\"0.99\"} 1"
            ),
            "{p}"
        );
    }

    #[test]
    fn prometheus_text_has_per_core_series() {
        let p = render_prometheus(&[snap(0, 2, 10), snap(1, 3, 5)]);
        assert!(
            p.contains("subsocket_deliveries_total{core=\"1\"} 5"),
            "{p}"
        );
        assert!(p.contains("subsocket_connections{core=\"0\"} 2"));
        assert!(p.contains("subsocket_topics 2"));
        assert!(p.contains("subsocket_drops_total{core=\"0\"} 0"));
    }
}
