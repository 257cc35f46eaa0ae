//! `subsocket doctor`: what on this host caps the gateway's scale, and the command that lifts it.
//!
//! Lives here: [`HostFacts`] (the limits, sysctls, io_uring availability, cores and memory of
//! the live host, read by [`HostFacts::read`] and nothing else), [`Targets`] (connections and
//! subscriptions to plan for), the memory model, and [`run_checks`], a pure function from facts,
//! configuration and targets to a [`Report`] of ok / warn / fail checks. Unit tests build
//! `HostFacts` by hand, so every decision is tested without touching the host.
//!
//! May not: change the host (it only reads; `tuning/apply` changes things), start executors, or
//! import glommio. The gateway runs the same checks at startup ([`log_startup_checks`]) and
//! only logs them: it never refuses to start because of a check.
//!
//! The per-connection and per-subscription figures are measurements on Linux 6.18 (see
//! docs/operations.md and docs/performance.md); each constant says where it comes from.
//!
//! # Layout (reading order)
//! - `mod.rs` (this file): the entry points, [`run_checks`] (which checks run, in which order)
//!   and [`log_startup_checks`]; re-exports, so every item is `doctor::X`.
//! - `facts.rs`: [`HostFacts`], the only code that reads the host.
//! - `model.rs`: the measured costs and thresholds, [`Targets`], [`MemoryEstimate`].
//! - [`profile`]: the values of tuning/sysctl.d the fixes suggest.
//! - `checks.rs`: the rules for cores, configuration, io_uring, descriptors, memlock, memory.
//! - `net_checks.rs`: the rules for the network stack's sysctls.
//! - `report.rs`: [`Status`], [`Check`], [`Report`] and its text and JSON renderings.
//!
//! `log_startup_checks` stays in this file: its log lines carry the target `subsocket::doctor`.

mod checks;
mod facts;
#[cfg(test)]
mod fixtures;
mod model;
mod net_checks;
pub mod profile;
mod report;

pub use facts::{HostFacts, IoUringProbe, Limit, UNLIMITED};
pub use model::{
    memlock_needed, MemoryEstimate, Targets, BASE_BYTES_PER_CORE, DEFAULT_MAX_TARGET_CONNECTIONS,
    DEFAULT_MAX_TARGET_SUBSCRIPTIONS, FDS_PER_CORE, FD_BASE, GATEWAY_MEMLOCK_RAISE_BELOW,
    GATEWAY_MEMLOCK_RAISE_TO, GLOMMIO_MIN_MEMLOCK_BYTES, HUGE_PAGE_BYTES, KERNEL_BYTES_PER_SOCKET,
    KERNEL_DEFAULT_RMEM_BYTES, QUEUED_BYTES_PER_SOCKET, REGISTERED_RINGS_PER_CORE,
    USER_BYTES_PER_CONN, USER_BYTES_PER_SUBSCRIPTION,
};
pub use report::{Check, Report, Status};

use crate::config::Config;
use checks::{
    check_config_limits, check_cores, check_file_max, check_io_uring, check_memlock, check_memory,
    check_memory_budget, check_nofile, check_nr_open,
};
use net_checks::{
    check_backlog, check_conntrack, check_port_range, check_tcp_mem, check_tcp_rmem, check_wmem_max,
};
use report::group;

/// Judges the host against the configuration and the targets. Pure: everything it knows is
/// in its arguments.
pub fn run_checks(host: &HostFacts, cfg: &Config, targets: &Targets) -> Report {
    let resolved = cfg.cores.resolve(&host.available_cores);
    let cores = resolved.clone().unwrap_or_default();
    let ncores = (cores.len().max(1)) as u64;
    let memory = MemoryEstimate::new(targets, ncores);
    let fd_overhead = FD_BASE + FDS_PER_CORE * ncores;
    let fds_needed = targets.connections.saturating_add(fd_overhead);
    let checks = vec![
        check_cores(host, &resolved),
        check_config_limits(cfg, targets, ncores),
        check_io_uring(host),
        check_nofile(host, fds_needed, fd_overhead),
        check_nr_open(host, fds_needed),
        check_file_max(host, fds_needed),
        check_memlock(host, cfg, ncores),
        check_memory(host, &memory),
        check_memory_budget(host, cfg, &memory, ncores),
        check_backlog(
            "net.core.somaxconn",
            host.somaxconn,
            cfg.backlog,
            "the kernel silently truncates each listener's backlog to it; a reconnect storm overflows a short accept queue",
        ),
        check_backlog(
            "net.ipv4.tcp_max_syn_backlog",
            host.tcp_max_syn_backlog,
            cfg.backlog,
            "half-open connections per listener during a reconnect storm (beyond it: SYN cookies)",
        ),
        check_tcp_mem(host, targets),
        check_wmem_max(host, cfg),
        check_tcp_rmem(host),
        check_port_range(host, cfg, targets),
        check_conntrack(host, targets),
    ];
    Report {
        kernel: host.kernel.clone(),
        targets: *targets,
        cores,
        memory,
        checks,
    }
}

/// This host read now, checked for `cfg` on the cores it would run on (one when its `cores`
/// do not resolve here), for `connections` and `subscriptions` or the configuration's
/// defaults: what `subsocket doctor` prints and the start-up checks log.
pub fn check_this_host(
    cfg: &Config,
    connections: Option<u64>,
    subscriptions: Option<u64>,
) -> Report {
    let host = HostFacts::read();
    let cores = cfg
        .cores
        .resolve(&host.available_cores)
        .map(|c| c.len())
        .unwrap_or(1);
    let targets = Targets::from_config(cfg, cores, connections, subscriptions);
    run_checks(&host, cfg, &targets)
}

/// What the gateway does at startup: the same checks against the configuration's default
/// targets, each warning and failure logged with `tracing::warn!`. Never fails.
pub fn log_startup_checks(cfg: &Config) {
    let report = check_this_host(cfg, None, None);
    let targets = report.targets;
    for c in report.checks.iter().filter(|c| c.status != Status::Ok) {
        tracing::warn!(
            "host check {} {}: {}; need {}: {}{}",
            c.status.label(),
            c.name,
            c.found,
            c.need,
            c.detail,
            c.fix
                .as_deref()
                .map(|f| format!(" (fix: {f})"))
                .unwrap_or_default()
        );
    }
    if report.count(Status::Ok) < report.checks.len() {
        tracing::warn!(
            "host checks for {} connections / {} subscriptions: {} fail, {} warn (details: subsocket doctor)",
            group(targets.connections),
            group(targets.subscriptions),
            report.count(Status::Fail),
            report.count(Status::Warn)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fixtures::{cfg, find, good_host, million};

    #[test]
    fn a_tuned_host_passes_every_check_for_a_million_connections() {
        let r = run_checks(&good_host(), &cfg(), &million());
        for c in &r.checks {
            assert_eq!(c.status, Status::Ok, "{c:#?}");
            assert!(c.fix.is_none());
        }
        assert!(!r.has_blocker());
        assert_eq!(r.cores, vec![1, 2, 3]);
        assert!(find(&r, "cores").detail.contains("core 0 is left"));
    }
}
