//! Per-core counters and how they are shown.
//!
//! Each core owns one [`Counters`] made of plain `Cell<u64>`: bumping one is an add, never an
//! atomic. `/stats` and `/metrics` ask every core for a [`Snapshot`] by message (see
//! `mesh::ShardMsg::StatsQuery`) and render the list here. Pure: no I/O, no glommio.

use std::cell::Cell;
use std::fmt::Write as _;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The live counters of one core. `!Sync` on purpose: only its core touches it.
        #[derive(Debug, Default)]
        pub struct Counters { $( $(#[$doc])* pub $name: Cell<u64>, )* }

        /// A copy of one core's counters plus its gauges, sent across cores for `/stats`.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
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
    /// `error` answers sent.
    protocol_errors,
    /// Connections closed for silence (no frame within idle_timeout).
    idle_closes,
    /// Connections refused because the core was at max_conns_per_core.
    conns_refused,
    /// Cross-core messages that found the peer's inbox full and waited in the outbox.
    inbox_full,
}

impl Counters {
    /// `counter += n`.
    #[inline]
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
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
        "{{\"connections\":{},\"topics\":{},\"subscriptions\":{},\"backlogBytes\":{},\"dedupEntries\":{},\"dedupEvictions\":{}",
        t.connections, t.owned_topics_with_interest, t.subscriptions, t.backlog_bytes, t.dedup_entries, t.dedup_evictions
    );
    for (name, v) in t.counter_fields() {
        let _ = write!(out, ",\"{}\":{}", camel(name), v);
    }
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
        out.push('}');
    }
    out.push_str("]}");
    out
}

fn camel(snake: &str) -> String {
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
    let gauges: [Gauge; 6] = [
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
    out
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
