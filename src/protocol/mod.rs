//! Micro Socket messages, exactly as `PROTOCOL.md` (the contract) defines them.
//!
//! What lives here: [`parse_client_msg`] (one client text message -> [`ClientMsg`] or a
//! `BAD_REQUEST` [`ProtoError`]), [`validate_topic`], the stable error codes ([`ErrorCode`]) and
//! the encoders of every server message. Each `encode_*` appends ONE complete unmasked WebSocket
//! text frame (header + JSON) to a caller's buffer; [`encode_message_frame`] builds a delivery
//! once per publish as a finished frame in one `Bytes` shared by every subscriber.
//!
//! What may not: sockets, glommio, async, topic state, authorization, sequence numbers. This
//! module is pure: bytes in, bytes out.
//!
//! # Invariants
//! - A published `payload` is never re-encoded: it is kept as the `&RawValue` slice of the
//!   client's own text and written into the delivery's `data` byte for byte.
//! - Strings are borrowed from the client's text whenever they contain no escape (`Cow`).
//! - Output JSON has a fixed field order (as in `PROTOCOL.md`), optional fields are omitted when
//!   absent, and every string is escaped by `serde_json`.
//! - Every parse error is `BAD_REQUEST` with a message naming the problem, and carries the
//!   request's `topic` / `messageId` when they could be read.
//!
//! # Layout
//! - `error.rs`: [`ErrorCode`] and [`ProtoError`], the `error` message's content.
//! - `parse.rs`: client -> server, [`parse_client_msg`] -> [`ClientMsg`], and [`validate_topic`].
//! - `encode.rs`: server -> client, every `encode_*` (one finished frame each), the delivery
//!   frame built once per publish, and [`parse_delivery`] (its client side).
//! - `tests.rs`: unit and property tests of all three.
//!
//! Read `error.rs`, then `parse.rs`, then `encode.rs`; the shard's `messages.rs` is where
//! parsed messages are acted on.

mod encode;
mod error;
mod parse;

pub use encode::*;
pub use error::*;
pub use parse::*;

/// Longest accepted `messageId`, in bytes: ids are dedup keys held per identity for a window, so
/// their size bounds that memory.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Longest `type` value echoed back in an "unknown type" error, in bytes.
const MAX_ECHOED_TYPE_BYTES: usize = 64;

#[cfg(test)]
mod tests;
