//! A tokio client for the Micro Socket protocol (`shared/PROTOCOL.md`) spoken by the subsocket
//! gateway.
//!
//! The methodology's client idea: one [`MicroSocket`] per purpose (prices, risk alerts,
//! payments), each with its own URL, token, topics, QoS and retry policy, each run by its own
//! tokio task with bounded channels, so one socket's failure, backoff or slow consumer never
//! stalls another.
//!
//! ```no_run
//! # async fn demo() -> Result<(), subsocket_client::Error> {
//! use futures_util::StreamExt;
//! use subsocket_client::{MicroSocket, Qos};
//!
//! let prices = MicroSocket::builder("ws://127.0.0.1:8080/ws/sub/prices").connect()?;
//! let mut stream = prices.stream("prices").expect("the URL's topic");
//! prices.publish("prices", &serde_json::json!({"px": 101.5}), Qos::AtMostOnce).await?;
//! while let Some(m) = stream.next().await {
//!     println!("{} #{}: {}", m.topic, m.seq_no, m.data);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`socket`]: [`MicroSocket`], its builder and the task that connects, resumes, orders,
//!   acks and publishes.
//! - `order`: per-topic ordering, duplicates, gaps, losses (pure).
//! - [`wire`]: the protocol's messages and the signature check (pure).
//! - [`retry`]: backoff with full jitter and give-up rules.
//! - [`event`]: connection states and events.
//! - [`error`]: the error type.
//!
//! # Guarantees
//! Per topic, the application receives each `(topic, seqNo)` at most once and in order; a
//! message is skipped only when an [`Event::Lost`] (the gateway no longer holds it),
//! [`Event::Restarted`] (the gateway restarted and numbers again from 1) or
//! [`Event::BadSignature`] says so. QoS 1 deliveries are acked once handed to the stream's
//! channel. Publishes not acked when a connection drops are sent again with the same
//! `messageId` on the next one, so the gateway answers `duplicate` instead of delivering twice.

pub mod error;
pub mod event;
mod order;
pub mod retry;
pub mod socket;
pub mod wire;

pub use error::Error;
pub use event::{ConnectionState, Event, Recovery};
pub use retry::RetryPolicy;
pub use socket::{MessageStream, MicroSocket, MicroSocketBuilder, PublishAck};
pub use wire::{Message, Qos, SignatureKey};
