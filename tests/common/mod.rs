//! Shared helpers of the integration tests: start a gateway, talk to it as a WebSocket client
//! (tungstenite, for JSON messages), as a raw-socket WebSocket client (for byte-exact frames and
//! protocol violations), and as a raw HTTP/1.1 client.
//!
//! Every wait is bounded: sockets get read timeouts and every poll has a deadline, so a broken
//! gateway fails a test with a message instead of hanging it.
//!
//! A test file says `mod common; use common::*;` and gets every helper: this file only holds the
//! socket every client starts from, the thread-with-a-deadline, and re-exports of the modules by
//! job. Read them in this order:
//!
//! - `gateway.rs`: start and stop an in-process gateway, its test configuration, `/stats` polls,
//!   subscribers spread over every core;
//! - `ws.rs`: the tungstenite client (JSON messages, `subscribe`, `publish`, deliveries);
//! - `raw.rs`: the raw-socket WebSocket client (upgrade by hand, frames byte for byte);
//! - `http.rs`: the raw HTTP/1.1 client (keep-alive, byte-exact requests);
//! - `sse.rs`: the Server-Sent Events client (`/sse`, events parsed as `EventSource` does);
//! - `checks.rs`: the assertions several test files share (error answers, the bystander that
//!   bad input must not disturb, a violation's close code).
//!
//! What is also needed by the Rust client's tests (a gateway *process*, polling with a deadline,
//! a read-to-EOF HTTP request) lives in the shared dev-only crate `subsocket-testkit`
//! (`tests/support/`), not here: these helpers drive the gateway in-process through the library.

#![allow(dead_code)] // each test binary uses a different subset of the helpers

mod checks;
mod gateway;
mod http;
mod raw;
mod sse;
mod ws;

// Each test binary uses a different subset of these, so a glob may be unused in one of them.
#[allow(unused_imports)]
pub use checks::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use sse::*;
#[allow(unused_imports)]
pub use ws::*;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Read timeout on every test socket: long enough for a loaded 2-core machine, short enough
/// that a missing answer fails the test quickly.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A plain TCP connection with the test read timeout.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Runs `f` on a thread and fails the test if it has not finished within `within`.
pub fn within<T: Send + 'static>(
    within: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(within) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            // The thread panicked: re-raise its panic here.
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("finished without sending"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} did not finish within {within:?}")
        }
    }
}
