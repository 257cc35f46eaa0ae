//! Waiting for a condition with a deadline, so that a test that waits for something that never
//! happens fails with a message instead of hanging. Sync (a sleeping loop): callers on a tokio
//! runtime use it only where they already block (process start and stop).

use std::time::{Duration, Instant};

/// Calls `f` until it returns `Some`, sleeping `every` between calls, for at most `within`;
/// `None` when it never did. `f` is always called at least once, and once more at the deadline.
pub fn poll_until<T>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Waits until `ok()` holds, checking every 50 ms; fails the test naming `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    if poll_until(within, Duration::from_millis(50), || ok().then_some(())).is_none() {
        panic!("not within {within:?}: {what}");
    }
}
