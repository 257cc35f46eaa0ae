//! Reconnect policy: exponential backoff with full jitter, caps and give-up rules.
//!
//! Full jitter (the AWS architecture blog's "Exponential Backoff And Jitter"): the delay before
//! attempt `n` is uniform in `[0, min(max, base * 2^(n-1))]`, so a fleet of clients that lost the
//! gateway at the same instant does not come back at the same instant.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::Error;

/// A predicate over the error of the failed attempt: `true` = stop reconnecting.
type GiveUpRule = Arc<dyn Fn(&Error) -> bool + Send + Sync>;

/// When and how often a micro socket reconnects. Cheap to clone.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Cap of the first delay; doubles per consecutive failure.
    base: Duration,
    /// Largest cap, whatever the attempt number.
    max: Duration,
    /// Consecutive failed attempts after which the socket gives up (`None`: never).
    max_attempts: Option<u32>,
    /// Time since the first consecutive failure after which it gives up (`None`: never).
    max_elapsed: Option<Duration>,
    /// Errors that are not worth retrying (default: `FORBIDDEN` and an HTTP 403 upgrade).
    give_up_on: GiveUpRule,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("base", &self.base)
            .field("max", &self.max)
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .finish_non_exhaustive()
    }
}

impl Default for RetryPolicy {
    /// 100 ms doubling up to 10 s, retrying for ever except on `FORBIDDEN`.
    fn default() -> Self {
        RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl RetryPolicy {
    /// Backoff capped at `base * 2^(n-1)` and at `max`; retries for ever, except on errors
    /// that a reconnect cannot fix (`FORBIDDEN`, HTTP 403).
    pub fn exponential(base: Duration, max: Duration) -> Self {
        RetryPolicy {
            base,
            max: max.max(base),
            max_attempts: None,
            max_elapsed: None,
            give_up_on: Arc::new(|e: &Error| {
                e.server_code() == Some("FORBIDDEN") || e.http_status() == Some(403)
            }),
        }
    }

    /// Gives up after `n` consecutive failed attempts (a connection that became ready resets
    /// the count).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Gives up when the gateway has been unreachable for `d` since the first failure.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = Some(d);
        self
    }

    /// Replaces the rule for errors that are not retried (`true` = give up at once).
    pub fn give_up_on(mut self, rule: impl Fn(&Error) -> bool + Send + Sync + 'static) -> Self {
        self.give_up_on = Arc::new(rule);
        self
    }

    /// The cap of the delay before retry number `attempt` (1-based): `min(max, base * 2^(attempt-1))`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << shift)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before retry number `attempt`: uniform in `[0, cap(attempt)]` (full jitter).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.cap(attempt).mul_f64(fastrand::f64())
    }

    /// Whether to stop after `attempt` consecutive failures, `elapsed` since the first, the
    /// last one being `err`.
    pub fn should_give_up(&self, attempt: u32, elapsed: Duration, err: &Error) -> bool {
        (self.give_up_on)(err)
            || self.max_attempts.is_some_and(|n| attempt >= n)
            || self.max_elapsed.is_some_and(|d| elapsed >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_doubles_from_base_and_stops_at_max() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let caps: Vec<u128> = (1..=6).map(|n| p.cap(n).as_millis()).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.cap(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_are_jittered_within_the_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10));
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(4)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(800)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "full jitter spreads the delays");
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
    }

    #[test]
    fn gives_up_by_attempts_elapsed_or_rule() {
        let closed = Error::Closed("x".into());
        let p = RetryPolicy::default().max_attempts(3);
        assert!(!p.should_give_up(2, Duration::ZERO, &closed));
        assert!(p.should_give_up(3, Duration::ZERO, &closed));
        let p = RetryPolicy::default().max_elapsed(Duration::from_secs(5));
        assert!(!p.should_give_up(100, Duration::from_secs(4), &closed));
        assert!(p.should_give_up(1, Duration::from_secs(5), &closed));
        let forbidden = Error::Server {
            code: "FORBIDDEN".into(),
            message: String::new(),
            topic: None,
        };
        assert!(RetryPolicy::default().should_give_up(1, Duration::ZERO, &forbidden));
        let p = RetryPolicy::default().give_up_on(|_| false);
        assert!(!p.should_give_up(1, Duration::ZERO, &forbidden));
    }
}
