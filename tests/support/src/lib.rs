//! Test helpers that the gateway's integration tests (`tests/*.rs` at the workspace root), the
//! Rust client's (`clients/rust/tests`) and the price-feed sidecar's share: the jobs they do the
//! same way, and only those.
//!
//! # Layout
//!
//! - [`poll`]: wait for a condition with a deadline ([`poll::poll_until`], [`poll::wait_until`]).
//! - [`process`]: a gateway *process*, the real `subsocket` binary: a [`process::Scratch`]
//!   directory for its config file and logs, [`process::GatewayProcess`] that spawns it and waits
//!   for its "subsocket listening on ws://…" line, stops it with SIGTERM (asserting a clean exit)
//!   and kills it when dropped.
//! - [`http`]: one blocking HTTP/1.1 request read to EOF ([`http::request_to_eof`]).
//!
//! # Why a crate
//!
//! A `#[path]`-included source file would also work, but every test binary would compile it again
//! and need `#[allow(dead_code)]` for the helpers it does not call, and nothing would hold the file
//! to the client's MSRV. As a workspace member (dev-only, `publish = false`), it compiles once, its
//! unused helpers are not dead code, and `rust-version = "1.80"` lets clippy's `incompatible_msrv`
//! refuse newer std APIs. It depends on std alone, so neither side gains a dependency.
//!
//! # What is not here
//!
//! What differs between the two sides stays with its side. The gateway tests drive the gateway
//! in-process through the library and speak WebSocket with sync tungstenite or raw frames
//! (`tests/common/`); the client tests are async (tokio) and cut connections with a tokio proxy
//! (`clients/rust/tests/common/`). The gateway's flags are not chosen here, and its own tests
//! find the binary with `CARGO_BIN_EXE_subsocket`; the other crates' tests (the client, the
//! price-feed sidecar in `clients/price-feed`) with [`process::gateway_bin`].
//! Byte-exact HTTP with keep-alive is the gateway tests' own (`tests/common/http.rs`): it tests
//! the gateway's HTTP, where [`http`] only reads an answer.

pub mod http;
pub mod poll;
pub mod process;
