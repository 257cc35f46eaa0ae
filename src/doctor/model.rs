//! The figures the checks plan with: what a connection, a subscription and a core cost (measured
//! on Linux 6.18, see docs/operations.md and docs/performance.md; each constant says where it
//! comes from), the thresholds of other code the checks must respect (glommio's, the gateway's
//! own memlock raise, the kernel's defaults), [`Targets`] (what to plan for) and
//! [`MemoryEstimate`] / [`memlock_needed`] (what the targets need).
//!
//! Pure arithmetic. May not: read the host (`facts.rs`), decide ok / warn / fail (`checks.rs`),
//! or format anything (`report.rs`). A new measurement changes a constant here and nothing else.
//!
//! Read next: `checks.rs` (the rules that compare the host with these figures).

use crate::config::Config;
use serde::Serialize;

/// Heap a connection holds in the gateway while idle: the memory budget's own figure
/// ([`crate::memory::CONN_BYTES`]).
pub const USER_BYTES_PER_CONN: u64 = crate::memory::CONN_BYTES as u64;
/// Gateway RSS per subscription (topic table entries both ways; `many-topics`: 41 B).
pub const USER_BYTES_PER_SUBSCRIPTION: u64 = 41;
/// Kernel slab per established TCP socket, not counted in `tcp_mem`: `tcp_sock` 2.4 KB,
/// `sock_inode_cache` 0.8 KB, `filp` + `dentry` 0.4 KB (8,000 loopback pairs, /proc/slabinfo).
pub const KERNEL_BYTES_PER_SOCKET: u64 = 3_900;
/// Socket buffer memory (`tcp_mem`) a socket holds with one small frame queued: about a page
/// (7,731 pages for 8,000 sockets with 200 B queued each). A broadcast to every connection
/// queues this much per connection until the frames drain.
pub const QUEUED_BYTES_PER_SOCKET: u64 = 4_096;
/// Gateway RSS with no connections, per core (executor, rings, inbox, tables): 20-24 MB
/// measured at 1 and 2 cores, rounded up.
pub const BASE_BYTES_PER_CORE: u64 = 24 << 20;
/// File descriptors besides connections: stdio, log, signal thread, per-core listener,
/// four io_uring rings and eventfds (`FD_BASE + FDS_PER_CORE * cores`).
pub const FD_BASE: u64 = 64;
/// See [`FD_BASE`].
pub const FDS_PER_CORE: u64 = 8;
/// glommio refuses to start a core below this RLIMIT_MEMLOCK (its `MIN_MEMLOCK_LIMIT`).
pub const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 << 10;
/// glommio registers its `io_memory` buffer in three rings per core, and the kernel accounts
/// the whole transparent huge page the buffer lies in: 6 MiB locked per core measured (VmPin)
/// with the default 64 KiB `io_memory_bytes`.
pub const REGISTERED_RINGS_PER_CORE: u64 = 3;
/// Transparent huge page size the registered buffers are rounded to (x86-64, arm64 4K pages).
pub const HUGE_PAGE_BYTES: u64 = 2 << 20;
/// The gateway raises a soft RLIMIT_MEMLOCK below 8 MiB to `min(hard, 64 MiB)` at startup
/// (`gateway::check_memlock`); the check judges the limit it will run with.
pub const GATEWAY_MEMLOCK_RAISE_BELOW: u64 = 8 << 20;
/// See [`GATEWAY_MEMLOCK_RAISE_BELOW`].
pub const GATEWAY_MEMLOCK_RAISE_TO: u64 = 64 << 20;
/// Default connection target when none is given: the configured capacity
/// (`max_conns_per_core` x cores), capped at the one-box goal of 1M connections.
pub const DEFAULT_MAX_TARGET_CONNECTIONS: u64 = 1_000_000;
/// Default subscription target: connections x `max_topics_per_conn`, capped at 10M.
pub const DEFAULT_MAX_TARGET_SUBSCRIPTIONS: u64 = 10_000_000;
/// Kernel default of `tcp_rmem[1]` since Linux 4.20; more is a host tuned for bulk transfer.
pub const KERNEL_DEFAULT_RMEM_BYTES: u64 = 131_072;

/// What to plan for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Targets {
    /// Concurrent WebSocket connections.
    pub connections: u64,
    /// Subscriptions summed over all connections.
    pub subscriptions: u64,
}

impl Targets {
    /// The configuration's capacity, capped at the one-box goal (1M connections, 10M
    /// subscriptions); `connections` and `subscriptions` replace either when given.
    pub fn from_config(
        cfg: &Config,
        cores: usize,
        connections: Option<u64>,
        subscriptions: Option<u64>,
    ) -> Targets {
        let connections = connections.unwrap_or_else(|| {
            (cfg.max_conns_per_core as u64)
                .saturating_mul(cores as u64)
                .min(DEFAULT_MAX_TARGET_CONNECTIONS)
        });
        let subscriptions = subscriptions.unwrap_or_else(|| {
            connections
                .saturating_mul(cfg.max_topics_per_conn as u64)
                .min(DEFAULT_MAX_TARGET_SUBSCRIPTIONS)
        });
        Targets {
            connections,
            subscriptions,
        }
    }
}

/// Memory the targets need, by where it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryEstimate {
    /// Gateway RSS for the connections (`USER_BYTES_PER_CONN` each).
    pub connections_bytes: u64,
    /// Gateway RSS for the subscriptions (`USER_BYTES_PER_SUBSCRIPTION` each).
    pub subscriptions_bytes: u64,
    /// Gateway RSS with nothing connected (`BASE_BYTES_PER_CORE` per core).
    pub base_bytes: u64,
    /// Kernel slab for the sockets (`KERNEL_BYTES_PER_SOCKET` each).
    pub kernel_sockets_bytes: u64,
    /// The sum of the above: held all the time.
    pub steady_bytes: u64,
    /// Socket buffers while a broadcast to everyone drains (`QUEUED_BYTES_PER_SOCKET` each).
    pub broadcast_buffers_bytes: u64,
}

impl MemoryEstimate {
    /// The estimate for `targets` on `cores` cores.
    pub fn new(targets: &Targets, cores: u64) -> MemoryEstimate {
        let connections_bytes = targets.connections.saturating_mul(USER_BYTES_PER_CONN);
        let subscriptions_bytes = targets
            .subscriptions
            .saturating_mul(USER_BYTES_PER_SUBSCRIPTION);
        let base_bytes = cores.saturating_mul(BASE_BYTES_PER_CORE);
        let kernel_sockets_bytes = targets.connections.saturating_mul(KERNEL_BYTES_PER_SOCKET);
        MemoryEstimate {
            connections_bytes,
            subscriptions_bytes,
            base_bytes,
            kernel_sockets_bytes,
            steady_bytes: connections_bytes
                .saturating_add(subscriptions_bytes)
                .saturating_add(base_bytes)
                .saturating_add(kernel_sockets_bytes),
            broadcast_buffers_bytes: targets.connections.saturating_mul(QUEUED_BYTES_PER_SOCKET),
        }
    }
}

/// Locked memory the gateway's registered io_uring buffers take on `cores` cores.
pub fn memlock_needed(cfg: &Config, cores: u64) -> u64 {
    let per_ring = (cfg.io_memory_bytes as u64).div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
    cores * REGISTERED_RINGS_PER_CORE * per_ring
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::{cfg, million};

    #[test]
    fn memory_estimate_uses_the_measured_figures() {
        let m = MemoryEstimate::new(&million(), 2);
        assert_eq!(m.connections_bytes, 2_000_000_000);
        assert_eq!(m.subscriptions_bytes, 410_000_000);
        assert_eq!(m.kernel_sockets_bytes, 3_900_000_000);
        assert_eq!(m.base_bytes, 48 << 20);
        assert_eq!(
            m.steady_bytes,
            2_000_000_000 + 410_000_000 + 3_900_000_000 + (48 << 20)
        );
        assert_eq!(m.broadcast_buffers_bytes, 4_096_000_000);
    }

    #[test]
    fn default_targets_are_the_config_capacity_capped_at_the_one_box_goal() {
        let mut c = cfg();
        assert_eq!(
            Targets::from_config(&c, 2, None, None),
            Targets {
                connections: 1_000_000,
                subscriptions: 10_000_000
            }
        );
        c.max_conns_per_core = 1_000;
        c.max_topics_per_conn = 5;
        assert_eq!(
            Targets::from_config(&c, 3, None, None),
            Targets {
                connections: 3_000,
                subscriptions: 15_000
            }
        );
        assert_eq!(
            Targets::from_config(&c, 3, Some(7), Some(9)),
            Targets {
                connections: 7,
                subscriptions: 9
            }
        );
    }
}
