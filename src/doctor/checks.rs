//! The rules for the process and the machine: cores, the configuration's own caps, io_uring,
//! file descriptors (`nofile`, `fs.nr_open`, `fs.file-max`), locked memory and memory. Each
//! `check_*` is a pure function from [`HostFacts`] (and the configuration, the targets) to one
//! [`Check`]: found, need, why it matters, and the command that fixes it. Also the helpers every
//! check builds with ([`check`], [`unreadable`], [`round_k`]), which `net_checks.rs` uses too.
//!
//! May not: read the host (the facts arrive as arguments, so unit tests build hosts by hand),
//! print, or change the order of the checks (that is `run_checks` in `mod.rs`).
//!
//! Read next: `net_checks.rs` (the network stack's sysctls).

use super::facts::{HostFacts, IoUringProbe, Limit, UNLIMITED};
use super::model::{
    memlock_needed, MemoryEstimate, Targets, GATEWAY_MEMLOCK_RAISE_BELOW, GATEWAY_MEMLOCK_RAISE_TO,
    GLOMMIO_MIN_MEMLOCK_BYTES,
};
use super::profile;
use super::report::{bytes, group, limit, Check, Status};
use crate::config::Config;

/// Rounds up to a multiple of 1024 (the suggested limits read better).
pub(super) fn round_k(n: u64) -> u64 {
    n.div_ceil(1024).saturating_mul(1024)
}

pub(super) fn check(
    name: &'static str,
    status: Status,
    found: String,
    need: String,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name,
        status,
        found,
        need,
        detail: detail.into(),
        fix: if status == Status::Ok { None } else { fix },
    }
}

/// A sysctl that could not be read: a warning (the checks cannot judge it), never a failure.
pub(super) fn unreadable(name: &'static str, need: String) -> Check {
    check(
        name,
        Status::Warn,
        "unreadable".into(),
        need,
        format!("cannot read /proc/sys/{}", name.replace('.', "/")),
        Some(format!("sysctl {name}")),
    )
}

pub(super) fn check_cores(host: &HostFacts, resolved: &Result<Vec<usize>, String>) -> Check {
    let found = format!(
        "{} available {:?}",
        host.available_cores.len(),
        host.available_cores
    );
    match resolved {
        Err(e) => check(
            "cores",
            Status::Fail,
            found,
            "the configured cores".into(),
            format!("the gateway would not start: {e}"),
            Some(format!(
                "subsocket --cores {} (or `cores = {}` in the config)",
                host.available_cores.len().max(1),
                host.available_cores.len().max(1)
            )),
        ),
        Ok(ids) => {
            let detail = if ids.contains(&0) && host.available_cores.len() > ids.len() {
                "shards include core 0 while other cores are free: NIC interrupts share it (tuning/NIC.md)".to_string()
            } else if ids.contains(&0) {
                "shards use every core, core 0 included: NIC interrupts share one (tuning/NIC.md)"
                    .to_string()
            } else {
                "core 0 is left to interrupts (tuning/NIC.md)".to_string()
            };
            check(
                "cores",
                Status::Ok,
                found,
                format!("{} {ids:?}", ids.len()),
                detail,
                None,
            )
        }
    }
}

pub(super) fn check_config_limits(cfg: &Config, targets: &Targets, cores: u64) -> Check {
    let conns_cap = (cfg.max_conns_per_core as u64).saturating_mul(cores);
    let subs_cap = targets
        .connections
        .saturating_mul(cfg.max_topics_per_conn as u64);
    let found = format!(
        "max_conns_per_core {} x {cores} cores, max_topics_per_conn {}",
        group(cfg.max_conns_per_core as u64),
        group(cfg.max_topics_per_conn as u64)
    );
    let need = format!(
        "{} connections, {} subscriptions",
        group(targets.connections),
        group(targets.subscriptions)
    );
    if targets.connections > conns_cap {
        let per_core = targets.connections.div_ceil(cores);
        check(
            "config limits",
            Status::Fail,
            found,
            need,
            format!(
                "the gateway refuses connections beyond {} at accept",
                group(conns_cap)
            ),
            Some(format!(
                "max_conns_per_core = {per_core} in the config file"
            )),
        )
    } else if targets.subscriptions > subs_cap {
        let per_conn = targets.subscriptions.div_ceil(targets.connections.max(1));
        check(
            "config limits",
            Status::Fail,
            found,
            need,
            format!(
                "{} connections may hold at most {} subscriptions (LIMIT_EXCEEDED beyond)",
                group(targets.connections),
                group(subs_cap)
            ),
            Some(format!(
                "max_topics_per_conn = {per_conn} in the config file"
            )),
        )
    } else {
        check(
            "config limits",
            Status::Ok,
            found,
            need,
            "the configuration admits the targets",
            None,
        )
    }
}

pub(super) fn check_io_uring(host: &HostFacts) -> Check {
    let disabled = host
        .io_uring_disabled
        .map(|d| format!(", kernel.io_uring_disabled = {d}"))
        .unwrap_or_default();
    match &host.io_uring {
        IoUringProbe::Works => check(
            "io_uring",
            Status::Ok,
            format!("io_uring_setup works{disabled}"),
            "io_uring".into(),
            "every core runs its executor and its write path on io_uring",
            None,
        ),
        IoUringProbe::Failed { errno, message } => {
            let (detail, fix) = match (*errno, host.io_uring_disabled) {
                (libc::EPERM, Some(d)) if d > 0 => (
                    "io_uring is disabled by sysctl (1: only for CAP_SYS_ADMIN or kernel.io_uring_group, 2: for everyone)",
                    "sysctl -w kernel.io_uring_disabled=0".to_string(),
                ),
                (libc::EPERM, _) => (
                    "a seccomp filter denies io_uring (container runtimes' default profiles do)",
                    "run with a seccomp profile that allows io_uring_setup, io_uring_enter and io_uring_register (docker run --security-opt seccomp=<profile>)".to_string(),
                ),
                (libc::ENOSYS, _) => (
                    "the kernel has no io_uring",
                    "boot a kernel with CONFIG_IO_URING=y, Linux 5.10 or newer".to_string(),
                ),
                (libc::ENOMEM, _) => (
                    "the kernel accounts io_uring rings to RLIMIT_MEMLOCK (before Linux 5.12) and the limit is too low",
                    "ulimit -l unlimited (or LimitMEMLOCK=infinity in the systemd unit)".to_string(),
                ),
                _ => (
                    "io_uring_setup failed",
                    "check dmesg and the kernel configuration (CONFIG_IO_URING)".to_string(),
                ),
            };
            check(
                "io_uring",
                Status::Fail,
                format!("io_uring_setup failed: {message}{disabled}"),
                "io_uring".into(),
                format!("{detail}; the gateway cannot start without it"),
                Some(fix),
            )
        }
    }
}

/// `overhead`: descriptors besides connections (see [`FD_BASE`](super::FD_BASE)).
pub(super) fn check_nofile(host: &HostFacts, need: u64, overhead: u64) -> Check {
    let Some(lim) = host.nofile else {
        return check(
            "nofile",
            Status::Warn,
            "unreadable".into(),
            group(need),
            "getrlimit(RLIMIT_NOFILE) failed",
            None,
        );
    };
    let want = need.max(profile::NR_OPEN);
    let found = format!("soft {} hard {}", limit(lim.soft), limit(lim.hard));
    let fix = format!(
        "ulimit -Hn {want} && ulimit -n {want} in the shell that starts subsocket (as root), or LimitNOFILE={want} in the systemd unit (tuning/systemd), or nofile in tuning/limits.d"
    );
    if lim.hard < need {
        check(
            "nofile",
            Status::Fail,
            found,
            group(need),
            format!(
                "one file descriptor per connection: the hard limit caps connections at about {}",
                group(lim.hard.saturating_sub(overhead))
            ),
            Some(fix),
        )
    } else if lim.soft < need {
        check(
            "nofile",
            Status::Ok,
            found,
            group(need),
            "the gateway raises the soft limit to the hard one at startup",
            None,
        )
    } else {
        check(
            "nofile",
            Status::Ok,
            found,
            group(need),
            "one file descriptor per connection",
            None,
        )
    }
}

pub(super) fn check_nr_open(host: &HostFacts, need: u64) -> Check {
    let Some(nr_open) = host.nr_open else {
        return unreadable("fs.nr_open", group(need));
    };
    if nr_open < need {
        check(
            "fs.nr_open",
            Status::Fail,
            group(nr_open),
            group(need),
            "no process may have RLIMIT_NOFILE above it (LimitNOFILE= fails beyond it)",
            Some(format!(
                "sysctl -w fs.nr_open={}",
                round_k(need).max(profile::NR_OPEN)
            )),
        )
    } else {
        check(
            "fs.nr_open",
            Status::Ok,
            group(nr_open),
            group(need),
            "ceiling of any process's RLIMIT_NOFILE",
            None,
        )
    }
}

pub(super) fn check_file_max(host: &HostFacts, need: u64) -> Check {
    let Some(max) = host.file_max else {
        return unreadable("fs.file-max", group(need));
    };
    let open = host.files_open.unwrap_or(0);
    let fix = Some(format!(
        "sysctl -w fs.file-max={}",
        round_k(need.saturating_add(open).saturating_mul(2)).max(profile::FILE_MAX)
    ));
    let found = format!("{} ({} open now)", group(max), group(open));
    if max < need {
        check(
            "fs.file-max",
            Status::Fail,
            found,
            group(need),
            "open files host-wide: the gateway alone needs more",
            fix,
        )
    } else if max < need.saturating_add(open) {
        check(
            "fs.file-max",
            Status::Warn,
            found,
            group(need),
            "enough for the gateway, but not with the files already open on this host",
            fix,
        )
    } else {
        check(
            "fs.file-max",
            Status::Ok,
            found,
            group(need),
            "open files host-wide",
            None,
        )
    }
}

/// The memory lock the gateway will run with: it raises a soft limit below 8 MiB to
/// `min(hard, 64 MiB)` itself (`gateway::check_memlock`).
fn effective_memlock(lim: Limit) -> u64 {
    if lim.soft < GATEWAY_MEMLOCK_RAISE_BELOW {
        lim.soft.max(lim.hard.min(GATEWAY_MEMLOCK_RAISE_TO))
    } else {
        lim.soft
    }
}

pub(super) fn check_memlock(host: &HostFacts, cfg: &Config, cores: u64) -> Check {
    let need = memlock_needed(cfg, cores);
    let fix = Some(
        "ulimit -l unlimited in the shell that starts subsocket (as root), or LimitMEMLOCK=infinity in the systemd unit (tuning/systemd), or memlock in tuning/limits.d".to_string(),
    );
    if host.cap_ipc_lock {
        return check(
            "memlock",
            Status::Ok,
            "CAP_IPC_LOCK".into(),
            bytes(need),
            "the process may lock memory without limit",
            None,
        );
    }
    let Some(lim) = host.memlock else {
        return check(
            "memlock",
            Status::Warn,
            "unreadable".into(),
            bytes(need),
            "getrlimit(RLIMIT_MEMLOCK) failed",
            fix,
        );
    };
    let eff = effective_memlock(lim);
    let found = if lim.soft == UNLIMITED {
        "unlimited".to_string()
    } else {
        format!(
            "soft {} hard {} (the gateway runs with {})",
            bytes(lim.soft),
            if lim.hard == UNLIMITED {
                "unlimited".to_string()
            } else {
                bytes(lim.hard)
            },
            bytes(eff)
        )
    };
    if eff < GLOMMIO_MIN_MEMLOCK_BYTES {
        check(
            "memlock",
            Status::Fail,
            found,
            bytes(need),
            "glommio cannot start a core below 512 KiB of locked memory",
            fix,
        )
    } else if eff < need {
        check(
            "memlock",
            Status::Warn,
            found,
            bytes(need),
            "io_uring registered buffers are locked memory (6 MiB per core): glommio skips registering them",
            fix,
        )
    } else {
        check(
            "memlock",
            Status::Ok,
            found,
            bytes(need),
            "io_uring registered buffers fit",
            None,
        )
    }
}

/// The memory budget (`memory_budget_bytes`): what it resolves to here, against the machine
/// (a budget past it cannot stop the OOM killer) and the targets (a budget below them refuses
/// subscriptions before the targets are reached).
pub(super) fn check_memory_budget(
    host: &HostFacts,
    cfg: &Config,
    m: &MemoryEstimate,
    cores: u64,
) -> Check {
    let b = crate::memory::Budget::resolve(
        cfg.memory_budget_bytes,
        cores as usize,
        host.machine_memory_bytes,
    );
    let found = format!(
        "{} ({}), {} per core",
        bytes(b.total as u64),
        b.source.as_str(),
        bytes(b.per_core as u64)
    );
    let need = format!("{} for the targets", bytes(m.steady_bytes));
    let fix = Some("set memory_budget_bytes in the config (or --memory-budget-bytes)".to_string());
    match b.machine {
        Some(machine) if b.total as u64 > machine => check(
            "memory budget",
            Status::Fail,
            found,
            need,
            "the budget is larger than the memory this process may use: the OOM killer would act before the budget does",
            fix,
        ),
        _ if m.steady_bytes > b.total as u64 => check(
            "memory budget",
            Status::Warn,
            found,
            need,
            "new subscriptions and connections are refused (LIMIT_EXCEEDED, HTTP 503) before the targets are reached",
            fix,
        ),
        _ => check(
            "memory budget",
            Status::Ok,
            found,
            need,
            "near 90% of its share a core refuses new subscriptions and connections; history gives back first",
            None,
        ),
    }
}

pub(super) fn check_memory(host: &HostFacts, m: &MemoryEstimate) -> Check {
    let Some(avail) = host.mem_available_bytes else {
        return check(
            "memory",
            Status::Warn,
            "unreadable".into(),
            bytes(m.steady_bytes),
            "cannot read MemAvailable from /proc/meminfo",
            None,
        );
    };
    let found = format!("{} available", bytes(avail));
    let need = format!(
        "{} steady + {} during a broadcast",
        bytes(m.steady_bytes),
        bytes(m.broadcast_buffers_bytes)
    );
    let fix = Some(
        "lower the targets (--connections/--subscriptions; max_conns_per_core in the config) or add memory"
            .to_string(),
    );
    let peak = m.steady_bytes.saturating_add(m.broadcast_buffers_bytes);
    if m.steady_bytes > avail {
        check(
            "memory",
            Status::Fail,
            found,
            need,
            "the connections and subscriptions alone do not fit: the OOM killer would end the gateway",
            fix,
        )
    } else if peak > avail / 10 * 9 {
        check(
            "memory",
            Status::Warn,
            found,
            need,
            "fits while idle; a broadcast to everyone leaves under 10% free (tcp_mem pressure)",
            fix,
        )
    } else {
        check(
            "memory",
            Status::Ok,
            found,
            need,
            "connections, subscriptions, kernel sockets and a broadcast's buffers fit",
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::{cfg, find, good_host, million};
    use crate::doctor::run_checks;

    #[test]
    fn a_hard_nofile_below_the_connections_fails_with_the_ulimit_fix() {
        let mut h = good_host();
        h.nofile = Some(Limit {
            soft: 1024,
            hard: 20_000,
        });
        let r = run_checks(&h, &cfg(), &million());
        let c = find(&r, "nofile");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.fix.as_deref().unwrap().contains("ulimit -Hn 2097152"),
            "{c:?}"
        );
        assert!(c.fix.as_deref().unwrap().contains("LimitNOFILE=2097152"));
        assert!(r.has_blocker());
        assert!(r.render_text().contains("fail  nofile"));
    }

    #[test]
    fn a_low_soft_nofile_is_fine_because_the_gateway_raises_it() {
        let mut h = good_host();
        h.nofile = Some(Limit {
            soft: 1024,
            hard: 2_097_152,
        });
        let c = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&c, "nofile").status, Status::Ok);
    }

    #[test]
    fn nr_open_and_file_max_below_the_need_fail_and_name_the_sysctl() {
        let mut h = good_host();
        h.nr_open = Some(1_048_576);
        h.file_max = Some(500_000);
        let targets = Targets {
            connections: 1_500_000,
            subscriptions: 1_500_000,
        };
        let r = run_checks(&h, &cfg(), &targets);
        let nr = find(&r, "fs.nr_open");
        assert_eq!(nr.status, Status::Fail);
        assert_eq!(nr.fix.as_deref(), Some("sysctl -w fs.nr_open=2097152"));
        let fm = find(&r, "fs.file-max");
        assert_eq!(fm.status, Status::Fail);
        assert_eq!(fm.fix.as_deref(), Some("sysctl -w fs.file-max=4194304"));
    }

    #[test]
    fn file_max_shared_with_files_already_open_is_a_warning() {
        let mut h = good_host();
        h.file_max = Some(1_010_000);
        h.files_open = Some(100_000);
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "fs.file-max").status, Status::Warn);
        assert!(!r.has_blocker());
    }

    #[test]
    fn memlock_decisions_follow_glommio_and_the_gateway_raise() {
        let mut h = good_host();
        let c = cfg();
        // 3 cores x 3 rings x one 2 MiB huge page = 18 MiB.
        assert_eq!(memlock_needed(&c, 3), 18 << 20);
        h.memlock = Some(Limit {
            soft: 64 << 10,
            hard: 64 << 10,
        });
        assert_eq!(
            find(&run_checks(&h, &c, &million()), "memlock").status,
            Status::Fail
        );
        // Soft 64 KiB but hard 8 MiB: the gateway raises it to 8 MiB, which runs but does not
        // register the buffers on 3 cores.
        h.memlock = Some(Limit {
            soft: 64 << 10,
            hard: 8 << 20,
        });
        let r = run_checks(&h, &c, &million());
        let m = find(&r, "memlock");
        assert_eq!(m.status, Status::Warn, "{m:?}");
        assert!(m.fix.as_deref().unwrap().contains("LimitMEMLOCK=infinity"));
        // Unlimited hard: raised to 64 MiB.
        h.memlock = Some(Limit {
            soft: 64 << 10,
            hard: UNLIMITED,
        });
        assert_eq!(
            find(&run_checks(&h, &c, &million()), "memlock").status,
            Status::Ok
        );
        // CAP_IPC_LOCK makes the limit irrelevant.
        h.memlock = Some(Limit { soft: 0, hard: 0 });
        h.cap_ipc_lock = true;
        assert_eq!(
            find(&run_checks(&h, &c, &million()), "memlock").status,
            Status::Ok
        );
    }

    #[test]
    fn io_uring_failures_are_blockers_with_the_matching_fix() {
        let mut h = good_host();
        h.io_uring = IoUringProbe::Failed {
            errno: libc::EPERM,
            message: "Operation not permitted".into(),
        };
        h.io_uring_disabled = Some(2);
        let r = run_checks(&h, &cfg(), &million());
        let c = find(&r, "io_uring");
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w kernel.io_uring_disabled=0")
        );
        h.io_uring_disabled = Some(0);
        let r = run_checks(&h, &cfg(), &million());
        assert!(find(&r, "io_uring")
            .fix
            .as_deref()
            .unwrap()
            .contains("seccomp"));
        h.io_uring = IoUringProbe::Failed {
            errno: libc::ENOSYS,
            message: "Function not implemented".into(),
        };
        let r = run_checks(&h, &cfg(), &million());
        assert!(find(&r, "io_uring")
            .fix
            .as_deref()
            .unwrap()
            .contains("CONFIG_IO_URING"));
    }

    #[test]
    fn the_memory_budget_is_reported_and_checked_against_the_machine_and_targets() {
        let mut h = good_host();
        h.machine_memory_bytes = Some(64 << 30);
        // Default: half of the machine; a million connections (about 6.6 GB steady) fit in 32 GiB.
        let r = run_checks(&h, &cfg(), &million());
        let c = find(&r, "memory budget");
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.found.contains("half of the machine"), "{c:?}");
        // A budget below the targets refuses before they are reached.
        let mut small = cfg();
        small.memory_budget_bytes = 1 << 30;
        assert_eq!(
            find(&run_checks(&h, &small, &million()), "memory budget").status,
            Status::Warn
        );
        // A budget past what the process may use cannot stop the OOM killer.
        let mut big = cfg();
        big.memory_budget_bytes = 128 << 30;
        assert_eq!(
            find(&run_checks(&h, &big, &million()), "memory budget").status,
            Status::Fail
        );
    }

    #[test]
    fn memory_that_does_not_fit_fails_and_a_tight_fit_warns() {
        let mut h = good_host();
        h.mem_available_bytes = Some(4 << 30);
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "memory").status, Status::Fail);
        // Steady ~6.6 GB fits in 8 GiB, plus 4.1 GB of broadcast buffers does not.
        h.mem_available_bytes = Some(8 << 30);
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "memory").status, Status::Warn);
        h.mem_available_bytes = Some(16 << 30);
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "memory").status, Status::Ok);
    }

    #[test]
    fn targets_beyond_the_config_fail_with_the_config_key_to_raise() {
        let c = Config::from_toml("cores = 2\nmax_conns_per_core = 1000\nmax_topics_per_conn = 10")
            .unwrap();
        let mut h = good_host();
        h.available_cores = vec![0, 1];
        let r = run_checks(
            &h,
            &c,
            &Targets {
                connections: 5_000,
                subscriptions: 10,
            },
        );
        let k = find(&r, "config limits");
        assert_eq!(k.status, Status::Fail);
        assert_eq!(
            k.fix.as_deref(),
            Some("max_conns_per_core = 2500 in the config file")
        );
        let r = run_checks(
            &h,
            &c,
            &Targets {
                connections: 100,
                subscriptions: 5_000,
            },
        );
        assert_eq!(
            find(&r, "config limits").fix.as_deref(),
            Some("max_topics_per_conn = 50 in the config file")
        );
    }

    #[test]
    fn cores_the_host_lacks_are_a_blocker() {
        let mut h = good_host();
        h.available_cores = vec![0, 1];
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "cores").status, Status::Fail);
        assert!(r.cores.is_empty());
    }

    #[test]
    fn unreadable_sysctls_warn_instead_of_guessing() {
        let mut h = good_host();
        h.nr_open = None;
        h.tcp_mem_pages = None;
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "fs.nr_open").status, Status::Warn);
        assert_eq!(find(&r, "net.ipv4.tcp_mem").status, Status::Warn);
        assert!(!r.has_blocker());
    }
}
