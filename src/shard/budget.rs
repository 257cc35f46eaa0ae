//! The core's backlog budget: the bytes queued for all of this core's connections together
//! (`outbuf::queued_on_this_thread`, exact, kept by every out buffer) have a ceiling,
//! `core_backlog_budget_bytes`. Past it, the slow-consumer policy applies at once to the
//! stalled connections with the largest backlogs, biggest first, until the core is back under
//! 7/8 of the budget (those that took nothing for a second or more before those stalled
//! for less): their queued deliveries are discarded (replies, and the frame the socket
//! is in the middle of, stay), so the memory comes back at once, and each discarded delivery's
//! topic policy says what follows ([`super::ladder::shed_for_budget`]: cut, told, refilled). A connection whose socket took bytes within the last
//! `DRAINING_MS` (a reader, however far behind) is never picked; neither is one whose socket
//! takes everything (it holds at most one turn's bytes, `fanout_turn_bytes`).
//!
//! May touch: connections' out buffers (discarding deliveries), the slow-consumer cut, the dirty
//! list. May not: write to sockets.
//!
//! Reached from [`super::fanout`] after each delivery (a cheap comparison; the scan runs at most
//! every `SCAN_EVERY` while over budget) and from the sweeper ([`super::housekeeping`]).

use super::connections::{ConnState, DRAINING_MS};
use super::ladder::shed_for_budget;
use super::write::mark_dirty;
use super::Shard;
use crate::metrics::Counters;
use crate::outbuf::queued_on_this_thread;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// While over budget, the data path rescans the connections at most this often (a core over
/// budget because of readers that drain must not scan on every delivery).
const SCAN_EVERY: Duration = Duration::from_millis(10);

/// A connection whose socket took nothing for this long has stopped reading, not only fallen
/// behind for a moment: the budget sheds these first.
const LONG_STALL_MS: u32 = 4 * DRAINING_MS;

/// The budget's own state.
pub(super) struct Budget {
    /// No scan from the data path before this.
    next_scan: Cell<Option<Instant>>,
    /// `core_backlog_budget_bytes`, or a quarter of the core's memory share when that is less.
    pub ceiling: usize,
}

impl Budget {
    pub fn new(configured: usize, memory_share: usize) -> Budget {
        Budget {
            next_scan: Cell::new(None),
            ceiling: configured.min(memory_share / 4).max(1),
        }
    }
}

impl Shard {
    /// Over budget: shed (at most every `SCAN_EVERY`). One comparison otherwise.
    #[inline]
    pub(super) fn check_backlog_budget(&self) {
        if queued_on_this_thread() > self.budget.ceiling {
            self.shed_backlog(false);
        }
    }

    /// Applies the policy to the largest stalled backlogs until the core is under 7/8 of its
    /// budget. O(connections) when over budget (a scan), nothing otherwise.
    pub(super) fn shed_backlog(&self, from_sweeper: bool) {
        let budget = self.budget.ceiling;
        if queued_on_this_thread() <= budget {
            return;
        }
        let now = Instant::now();
        if !from_sweeper && self.budget.next_scan.get().is_some_and(|t| now < t) {
            return;
        }
        self.budget.next_scan.set(Some(now + SCAN_EVERY));
        self.shed_to(budget - budget / 8, false, budget);
    }

    /// The core is at its memory share: frees `bytes` of backlog, largest first, from any
    /// connection whose socket refuses bytes (draining or not). Returns what was freed.
    pub(super) fn shed_for_memory(&self, bytes: usize) -> usize {
        let before = queued_on_this_thread();
        self.shed_to(
            before.saturating_sub(bytes),
            true,
            self.memory.budget.per_core,
        );
        let freed = before.saturating_sub(queued_on_this_thread());
        if freed > 0 {
            Counters::add(&self.counters.memory_sheds, 1);
        }
        freed
    }

    /// Sheds the stalled connections (with `draining`: every blocked one), those stalled
    /// long first, then the largest backlog first, until the core queues at most `target`.
    fn shed_to(&self, target: usize, draining: bool, budget: usize) {
        let now = Instant::now();
        let mut total = queued_on_this_thread();
        let mut conns = self.conns.borrow_mut();
        // Those that took nothing for a long while first (a reader that a busy client served
        // late is stalled for a few hundred ms, one that stopped for seconds), then the
        // largest backlog first.
        let mut picks: Vec<(bool, usize, u32)> = conns
            .iter()
            .filter(|(_, c)| {
                c.state == ConnState::Open
                    && (c.is_stalled(now) || (draining && c.blocked_since.is_some()))
            })
            .map(|(slot, c)| {
                let long = c.stalled_ms(now) >= LONG_STALL_MS;
                (long, c.out.pending(), slot as u32)
            })
            .filter(|&(_, pending, _)| pending > 0)
            .collect();
        picks.sort_unstable_by_key(|&(long, pending, _)| std::cmp::Reverse((long, pending)));
        let mut dirty = self.writes.dirty.borrow_mut();
        for (_, _, slot) in picks {
            if total <= target {
                break;
            }
            let c = &mut conns[slot as usize];
            let why = || {
                if draining {
                    format!(
                        "the gateway's memory budget ({budget} bytes on this core) is spent \
                         and this connection is behind: closing"
                    )
                } else {
                    format!(
                        "the core's backlog budget ({budget} bytes) is spent and this \
                         connection's socket took nothing for {DRAINING_MS} ms: closing"
                    )
                }
            };
            let (_, bytes) = shed_for_budget(c, &self.ladder, why, &self.counters);
            total = total.saturating_sub(bytes);
            Counters::add(&self.counters.budget_sheds, 1);
            mark_dirty(c, slot, &mut dirty);
        }
        drop((dirty, conns));
        self.wake_flusher();
    }
}
