//! `subsocket-bench`: the load generator. Speaks the Micro Socket protocol to any gateway
//! (subsocket, or the Bun reference peer), opens N subscriber connections spread over source
//! addresses, subscribes them, publishes at a fixed rate or closed-loop, and reports
//! deliveries/s, loss and reordering, end-to-end latency, and — given the gateway's PID — its
//! CPU per delivery and RSS per connection and per subscription.
//!
//! One thread, one epoll loop (mio), pinned to a core of its own. Frames are parsed in place
//! without allocating per delivery. Reuses the gateway crate's frame writer and parser
//! (`subsocket::ws::frame`); nothing else of the gateway.
//! Every loop is bounded in time and stops by itself.

// The result object is one large json! literal.
#![recursion_limit = "256"]

//! # Layout, in the order a run goes
//!
//! - `main.rs` (here): the command line ([`Args`]) and the id ranges of the connection kinds.
//! - [`run`]: one run from start to report, phase by phase: connect, subscribe, publishers,
//!   churners, publish and measure, drain, close; then the JSON result line.
//! - [`conn`]: one client connection (its buffers, the upgrade request, masked frames, acks)
//!   and how it is opened (source addresses, the token).
//! - [`pump`]: the epoll turn: reads, parses server frames in place, and books each delivery
//!   (sequence gaps, reordering, latency, completion of a message).
//! - [`picker`]: which topics a connection subscribes to and a publish goes to (uniform, Zipf).
//! - [`probe`]: the side probe, ping round trips on a thread of its own.
//! - [`sys`]: what the run reads of the machine: CPU and RSS of a process, kernel socket memory,
//!   the gateway's `/stats`.

mod conn;
mod picker;
mod probe;
mod pump;
mod run;
mod sys;

use clap::Parser;
use run::run;
use std::net::SocketAddr;

#[derive(Debug, Parser, Clone)]
#[command(name = "subsocket-bench", about = "Micro Socket load generator")]
struct Args {
    /// Gateway address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Where the publishers (ws or http) connect; subscribers stay on `--target` (e.g. another
    /// node of a cluster, for cross-node fan-out). Default: `--target`.
    #[arg(long)]
    publish_target: Option<SocketAddr>,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// Topics in the topic space.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Topics each subscriber subscribes to.
    #[arg(long, default_value_t = 1)]
    topics_per_conn: usize,
    /// How subscribers pick topics: uniform, zipf, one.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Topics per subscribe request.
    #[arg(long, default_value_t = 100)]
    subscribe_batch: usize,
    /// Milliseconds to wait (still reading) after connecting and after subscribing before the
    /// gateway's RSS is read for the per-connection and per-subscription figures, so they count
    /// what is held, not the transient buffers of the burst (the peak is reported too).
    #[arg(long, default_value_t = 1500)]
    settle_ms: u64,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publish over `ws` or `http`.
    #[arg(long, default_value = "ws")]
    publish_via: String,
    /// Open loop: publishes per second over all publishers (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed loop: at most this many messages published but not yet delivered to all their subscribers.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Payload size in bytes (JSON object with a timestamp, a counter and padding).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// What fills the payload: `pad` (a run of `x`, the default: cheapest to build and parse)
    /// or `ticks` (JSON price ticks, `subsocket::sample::price_ticks`: what compression
    /// measurements need, since padding compresses a hundredfold).
    #[arg(long, default_value = "pad", value_parser = ["pad", "ticks"])]
    payload_kind: String,
    /// Subscribers offer permessage-deflate (`server_no_context_takeover;
    /// client_no_context_takeover`), inflate what comes compressed, and the run reports bytes
    /// on the wire per delivery. The run fails if the server declines on any subscriber.
    #[arg(long)]
    deflate: bool,
    /// Subscribers read Server-Sent Events instead of WebSocket frames: `GET /sse/sub/t{N}`
    /// (`/sse?topic=…` for several topics), subscribed by the request itself; the events'
    /// `data` is parsed like a frame's payload. Publishers stay WebSocket (or `--publish-via`).
    #[arg(long, conflicts_with = "deflate")]
    sse: bool,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// The gateway's PID, for CPU and RSS from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Source addresses for subscriber connections (comma list); default: 127.0.0.2.. as needed.
    #[arg(long)]
    sources: Option<String>,
    /// Connections per source address before moving to the next.
    #[arg(long, default_value_t = 10000)]
    per_source: usize,
    /// Pin this process to this core.
    #[arg(long)]
    core: Option<usize>,
    /// Scenario name for the report.
    #[arg(long, default_value = "custom")]
    scenario: String,
    /// Server label for the report.
    #[arg(long, default_value = "subsocket")]
    server: String,
    /// Append the JSON result line to this file.
    #[arg(long)]
    json: Option<String>,
    /// Print progress every second.
    #[arg(long)]
    progress: bool,
    /// Churn: connections per second that arrive, subscribe to `churn_topics` topics and leave (0: off).
    #[arg(long, default_value_t = 0.0)]
    churn_rate: f64,
    /// Topics each churning connection subscribes to.
    #[arg(long, default_value_t = 20)]
    churn_topics: usize,
    /// Hard cap on the whole run in seconds (connect + subscribe + run + drain).
    #[arg(long, default_value_t = 600.0)]
    max_seconds: f64,
    /// A token for the gateway's `[auth]`, sent as `?token=` on every WebSocket upgrade.
    #[arg(long, conflicts_with = "hs256_secret")]
    token: Option<String>,
    /// Make the `?token=` itself: an HS256 JWT signed with this secret, `sub` "bench",
    /// `read`/`write` ["*"], expiring in a day.
    #[arg(long)]
    hs256_secret: Option<String>,
    /// Publish with this QoS. 1: deliveries carry `"qos":1` and every subscriber acks each one
    /// (`{"type":"ack","topic":…,"seqNo":…}`, one write per read); redeliveries are counted apart.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Subscription churn on top of the steady subscribers: subscribe/unsubscribe operations
    /// per second (one topic each), spread over `churn_conns` connections of their own that
    /// subscribe to random topics of the topic space (published ones included) and unsubscribe
    /// the oldest once they hold `churn_hold`. Their deliveries are read and not counted (0: off).
    #[arg(long, default_value_t = 0.0)]
    churn_ops: f64,
    /// Connections the `churn_ops` operations are spread over.
    #[arg(long, default_value_t = 100)]
    churn_conns: usize,
    /// Topics a churn connection holds before it starts unsubscribing its oldest.
    #[arg(long, default_value_t = 50)]
    churn_hold: usize,
    /// Side probe: a connection of its own, on a thread of its own, sends `{"type":"ping"}`
    /// this often during the publish phase and times each `pong` (0: off). Samples taken while
    /// some publish was still being delivered count as "busy", the others as "idle".
    #[arg(long, default_value_t = 0.0)]
    probe_interval_ms: f64,
    /// Connections being opened at once (connect + upgrade in flight).
    #[arg(long, default_value_t = 512)]
    connect_concurrency: usize,
    /// Seconds allowed for connecting, and again for subscribing.
    #[arg(long, default_value_t = 300.0)]
    phase_seconds: f64,
}

// Connection ids (mio tokens): subscribers count up from 0; the other kinds live far above.
/// Publisher connections (`--publishers`).
const PUBLISHER_BASE: usize = 1 << 30;
/// Connections that arrive, subscribe and leave during the run (`--churn-rate`).
const CHURN_BASE: usize = 1 << 29;
/// Connections that subscribe and unsubscribe during the run (`--churn-ops`).
const CHURN_OPS_BASE: usize = 1 << 28;

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("subsocket-bench: {e}");
        std::process::exit(1);
    }
}
