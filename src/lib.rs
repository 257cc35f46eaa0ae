//! subsocket: a thread-per-core WebSocket broadcast gateway speaking the Micro Socket protocol.
//!
//! # Layout (reading order)
//! - [`config`]: `Config`, defaults and limits with units. Parses; never does I/O.
//! - [`ws::frame`]: RFC 6455 frame decoding (client -> server) and encoding (server -> client). Pure.
//! - [`ws::handshake`]: HTTP/1.1 request head parsing, the upgrade answer, plain HTTP answers. Pure.
//! - [`protocol`]: Micro Socket messages: parse client JSON, encode server messages as finished frames. Pure.
//! - [`auth`]: I1 access control: `[auth]` config, JWT -> `Identity`, topic read/write rules, API keys. Pure.
//! - [`topics`]: `TopicTable`, the per-core two-way index topic <-> connection slot. Pure.
//! - [`publish`]: `owner_shard`, the per-topic sequencer the owner core keeps, encode-once. Pure.
//! - [`history`]: the owner's per-topic history of frames (I6) behind `replay`/`resume`. Pure.
//! - [`qos`]: a connection's unacknowledged QoS 1 deliveries (I4). Pure.
//! - [`session`]: sessions kept for `resume` and where each is held (I6). Pure.
//! - [`sse`]: Server-Sent Events: delivery events built once, stream ids, `Last-Event-ID`. Pure.
//! - [`signing`]: HMAC-SHA256 signatures of deliveries (I7). Pure.
//! - [`tls`]: `[tls]`, certificates from PEM and their reloading (I7). No sockets.
//! - [`outbuf`]: a connection's queued bytes and the backlog cap (slow-consumer policy). Pure.
//! - [`memory`]: the process memory budget: what each part costs, pressure, per-identity accounts. Pure.
//! - [`metrics`]: plain per-core counters and their Prometheus / JSON rendering. Pure.
//! - [`mesh`]: cross-core messages (`ShardMsg`) over bounded crossbeam channels plus one waker per core.
//! - [`uring`]: the per-core io_uring ring that submits each loop turn's writes as one batch.
//! - [`readiness`]: owned sockets and the per-core ring that waits for them to be readable or
//!   writable (one-shot `POLL_ADD`s, an eventfd glommio reads).
//! - [`backbone`]: clusters: `[cluster]`, topic <-> NATS subject mapping (pure), and the NATS
//!   thread (async-nats on tokio) that stores publishes in JetStream and feeds owner cores.
//! - [`shard`]: one pinned glommio executor: all `!Send` state lives here, one file per step of a
//!   message's path (accept, reader, messages, publish, inbox, fanout, write, …; its module doc
//!   lists them).
//! - [`gateway`]: binds the listeners, starts the shards, waits for shutdown.
//! - [`sample`]: JSON price ticks of an exact size for benchmarks and tests. Pure.
//! - [`doctor`]: what on this host caps the configured scale (`subsocket doctor`, startup checks).
//!
//! # Data flow of a publish
//! (hop by hop, file and function: docs/architecture.md)
//! ```text
//!  client/HTTP on core A --Publish--> owner core O (seqNo += 1, frame built once)
//!        O --Deliver(frame Bytes)--> every core C (crossbeam + waker)
//!        C: topic table lookup -> append frame bytes to each local subscriber's out buffer
//!        C: once per loop turn, one io_uring SEND per dirty connection, all in one submit
//! ```
//! In a cluster (`[cluster]`), core A hands a clustered topic's publish to the backbone thread
//! instead; JetStream stamps the `seqNo`, and the republished message comes back to owner core O
//! (on every node with a subscriber), which goes on as above.

pub mod auth;
pub mod backbone;
pub mod config;
pub mod doctor;
pub mod gateway;
pub mod history;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod outbuf;
pub mod protocol;
pub mod publish;
pub mod qos;
pub mod readiness;
pub mod sample;
pub mod session;
pub mod shard;
pub mod signing;
pub mod sse;
pub mod tls;
pub mod topics;
pub mod uring;
pub mod ws;
