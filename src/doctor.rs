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

use crate::config::Config;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Heap and stack a connection holds in the gateway while idle (its task, slab entry, buffers),
/// measured as RSS growth per idle connection (`many-topics`, docs/performance.md: 2.3 KB).
pub const USER_BYTES_PER_CONN: u64 = 2_300;
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

/// Values of tuning/sysctl.d/90-subsocket.conf: the fixes suggest at least these, so a fixed
/// host also passes `tuning/check`. (A unit test keeps them equal to the file.)
pub mod profile {
    /// `fs.file-max`.
    pub const FILE_MAX: u64 = 4_194_304;
    /// `fs.nr_open`, and the nofile of tuning/limits.d and `LimitNOFILE=`.
    pub const NR_OPEN: u64 = 2_097_152;
    /// `net.core.somaxconn` and `net.ipv4.tcp_max_syn_backlog`.
    pub const SOMAXCONN: u64 = 65_535;
    /// `net.ipv4.tcp_mem` in pages.
    pub const TCP_MEM_PAGES: [u64; 3] = [786_432, 1_048_576, 1_572_864];
    /// `net.core.wmem_max`.
    pub const WMEM_MAX: u64 = 4_194_304;
    /// `net.netfilter.nf_conntrack_max`.
    pub const CONNTRACK_MAX: u64 = 2_097_152;
}

/// A resource limit; [`UNLIMITED`] stands for RLIM_INFINITY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limit {
    /// What the process gets now.
    pub soft: u64,
    /// What the soft limit may be raised to without privilege.
    pub hard: u64,
}

/// RLIM_INFINITY.
pub const UNLIMITED: u64 = u64::MAX;

/// Whether an io_uring could be set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoUringProbe {
    /// `io_uring_setup` returned a ring.
    Works,
    /// It failed with this errno.
    Failed {
        /// errno of `io_uring_setup`.
        errno: i32,
        /// Its text.
        message: String,
    },
}

/// Everything the checks need to know about the host. `None` means "could not be read" (or,
/// for the optional knobs, "not on this kernel").
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel: Option<String>,
    /// RLIMIT_NOFILE of this process.
    pub nofile: Option<Limit>,
    /// RLIMIT_MEMLOCK of this process.
    pub memlock: Option<Limit>,
    /// CAP_IPC_LOCK in the effective set: locked memory is not limited.
    pub cap_ipc_lock: bool,
    /// `fs.file-max`.
    pub file_max: Option<u64>,
    /// Files open host-wide now (`fs.file-nr`, first field).
    pub files_open: Option<u64>,
    /// `fs.nr_open`: ceiling of any RLIMIT_NOFILE.
    pub nr_open: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// `net.ipv4.tcp_max_syn_backlog`.
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.ip_local_port_range`.
    pub ip_local_port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_mem` in pages: min, pressure, max.
    pub tcp_mem_pages: Option<[u64; 3]>,
    /// `net.ipv4.tcp_rmem` in bytes: min, default, max.
    pub tcp_rmem: Option<[u64; 3]>,
    /// `net.ipv4.tcp_wmem` in bytes: min, default, max.
    pub tcp_wmem: Option<[u64; 3]>,
    /// `net.core.wmem_max`: ceiling of SO_SNDBUF.
    pub wmem_max: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`; `None` when conntrack is not loaded.
    pub conntrack_max: Option<u64>,
    /// `kernel.io_uring_disabled` (Linux >= 6.6); `None` when absent.
    pub io_uring_disabled: Option<u64>,
    /// Result of setting up a small io_uring.
    pub io_uring: IoUringProbe,
    /// Bytes per page (the unit of `tcp_mem`).
    pub page_size: u64,
    /// CPU ids this process may run on.
    pub available_cores: Vec<usize>,
    /// `MemAvailable` of /proc/meminfo in bytes.
    pub mem_available_bytes: Option<u64>,
    /// `MemTotal` in bytes.
    pub mem_total_bytes: Option<u64>,
}

impl HostFacts {
    /// Reads the live host: /proc/sys, /proc/meminfo, /proc/self/status, getrlimit, an
    /// io_uring setup, the affinity mask. Never fails: what cannot be read is `None`.
    pub fn read() -> HostFacts {
        let sys = Path::new("/proc/sys");
        let one = |key: &str| read_sysctl(sys, key).and_then(|v| v.first().copied());
        let three =
            |key: &str| read_sysctl(sys, key).and_then(|v| <[u64; 3]>::try_from(v.as_slice()).ok());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        HostFacts {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            nofile: get_rlimit(libc::RLIMIT_NOFILE),
            memlock: get_rlimit(libc::RLIMIT_MEMLOCK),
            cap_ipc_lock: has_capability(&status, CAP_IPC_LOCK),
            file_max: one("fs.file-max"),
            files_open: one("fs.file-nr"),
            nr_open: one("fs.nr_open"),
            somaxconn: one("net.core.somaxconn"),
            tcp_max_syn_backlog: one("net.ipv4.tcp_max_syn_backlog"),
            ip_local_port_range: read_sysctl(sys, "net.ipv4.ip_local_port_range")
                .and_then(|v| (v.len() == 2).then(|| (v[0], v[1]))),
            tcp_mem_pages: three("net.ipv4.tcp_mem"),
            tcp_rmem: three("net.ipv4.tcp_rmem"),
            tcp_wmem: three("net.ipv4.tcp_wmem"),
            wmem_max: one("net.core.wmem_max"),
            conntrack_max: one("net.netfilter.nf_conntrack_max"),
            io_uring_disabled: one("kernel.io_uring_disabled"),
            io_uring: probe_io_uring(),
            page_size: page_size(),
            available_cores: crate::config::available_cores(),
            mem_available_bytes: meminfo_bytes(&meminfo, "MemAvailable"),
            mem_total_bytes: meminfo_bytes(&meminfo, "MemTotal"),
        }
    }
}

/// Reads a sysctl as whitespace-separated integers (`net.ipv4.tcp_mem` -> three numbers).
fn read_sysctl(root: &Path, key: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(root.join(key.replace('.', "/"))).ok()?;
    text.split_whitespace().map(|w| w.parse().ok()).collect()
}

/// Capability number of CAP_IPC_LOCK (linux/capability.h; not exported by the libc crate).
const CAP_IPC_LOCK: u32 = 14;

/// A `Key:   123 kB` line of /proc/meminfo, in bytes.
fn meminfo_bytes(meminfo: &str, key: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.split(':').next() == Some(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whether capability `cap` is in the `CapEff:` mask of a /proc/PID/status text.
fn has_capability(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| cap < 64 && mask & (1 << cap) != 0)
}

fn get_rlimit(resource: libc::__rlimit_resource_t) -> Option<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives on the stack.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return None;
    }
    let conv = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            UNLIMITED
        } else {
            v
        }
    };
    Some(Limit {
        soft: conv(lim.rlim_cur),
        hard: conv(lim.rlim_max),
    })
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is passed.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Sets up (and drops) an 8-entry ring: the cheapest proof the gateway's rings will work.
fn probe_io_uring() -> IoUringProbe {
    match io_uring::IoUring::new(8) {
        Ok(_) => IoUringProbe::Works,
        Err(e) => IoUringProbe::Failed {
            errno: e.raw_os_error().unwrap_or(0),
            message: e.to_string(),
        },
    }
}

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

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Meets what the targets need.
    Ok,
    /// Works, but costs latency, memory or some of the targets; not a blocker.
    Warn,
    /// A blocker: the gateway cannot start, or cannot reach the targets.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check: what was found, what the targets need, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short stable name (a sysctl key, `nofile`, `memory`, ...).
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What the host has.
    pub found: String,
    /// What the targets need.
    pub need: String,
    /// Why it matters, in a sentence.
    pub detail: String,
    /// The command (or config change) that fixes it; `None` when ok.
    pub fix: Option<String>,
}

/// Everything `subsocket doctor` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Kernel release.
    pub kernel: Option<String>,
    /// What was planned for.
    pub targets: Targets,
    /// Cores the shards would run on (empty when the config cannot be resolved).
    pub cores: Vec<usize>,
    /// What the targets need in memory.
    pub memory: MemoryEstimate,
    /// Every check, in a fixed order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Number of checks with this status.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// Whether a check failed (the exit status of `subsocket doctor` is then 1).
    pub fn has_blocker(&self) -> bool {
        self.count(Status::Fail) > 0
    }

    /// The human-readable report: one line per check, the fix indented under it.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "subsocket doctor: {} connections, {} subscriptions on {} cores {:?} (kernel {})",
            group(self.targets.connections),
            group(self.targets.subscriptions),
            self.cores.len(),
            self.cores,
            self.kernel.as_deref().unwrap_or("?"),
        );
        let m = &self.memory;
        let _ = writeln!(
            s,
            "memory: {} steady (gateway: {} connections + {} subscriptions + {} base; kernel: {} sockets)\n        + {} of socket buffers while a broadcast to every connection drains",
            bytes(m.steady_bytes),
            bytes(m.connections_bytes),
            bytes(m.subscriptions_bytes),
            bytes(m.base_bytes),
            bytes(m.kernel_sockets_bytes),
            bytes(m.broadcast_buffers_bytes),
        );
        for c in &self.checks {
            let _ = writeln!(
                s,
                "{:<4}  {:<30} {}; need {}",
                c.status.label(),
                c.name,
                c.found,
                c.need,
            );
            if c.status != Status::Ok {
                let _ = writeln!(s, "      {}", c.detail);
            }
            if let Some(fix) = &c.fix {
                let _ = writeln!(s, "      fix: {fix}");
            }
        }
        let verdict = if self.has_blocker() {
            "this host cannot serve the targets: fix the failures"
        } else if self.count(Status::Warn) > 0 {
            "the host can serve the targets; the warnings cost latency, memory or headroom"
        } else {
            "the host can serve the targets"
        };
        let _ = writeln!(
            s,
            "{} ok, {} warn, {} fail: {verdict}",
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        s
    }

    /// The report as pretty JSON (`subsocket doctor --json`).
    pub fn to_json(&self) -> String {
        // The report is plain strings and integers: serializing it cannot fail.
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

/// 1234567 -> "1,234,567".
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Bytes in the largest binary unit that keeps one decimal ("6.3 GiB").
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn limit(n: u64) -> String {
    if n == UNLIMITED {
        "unlimited".into()
    } else {
        group(n)
    }
}

/// Rounds up to a multiple of 1024 (the suggested limits read better).
fn round_k(n: u64) -> u64 {
    n.div_ceil(1024).saturating_mul(1024)
}

fn check(
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
fn unreadable(name: &'static str, need: String) -> Check {
    check(
        name,
        Status::Warn,
        "unreadable".into(),
        need,
        format!("cannot read /proc/sys/{}", name.replace('.', "/")),
        Some(format!("sysctl {name}")),
    )
}

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

fn check_cores(host: &HostFacts, resolved: &Result<Vec<usize>, String>) -> Check {
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

fn check_config_limits(cfg: &Config, targets: &Targets, cores: u64) -> Check {
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

fn check_io_uring(host: &HostFacts) -> Check {
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

/// `overhead`: descriptors besides connections (see [`FD_BASE`]).
fn check_nofile(host: &HostFacts, need: u64, overhead: u64) -> Check {
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

fn check_nr_open(host: &HostFacts, need: u64) -> Check {
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

fn check_file_max(host: &HostFacts, need: u64) -> Check {
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

/// Locked memory the gateway's registered io_uring buffers take on `cores` cores.
pub fn memlock_needed(cfg: &Config, cores: u64) -> u64 {
    let per_ring = (cfg.io_memory_bytes as u64).div_ceil(HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES;
    cores * REGISTERED_RINGS_PER_CORE * per_ring
}

fn check_memlock(host: &HostFacts, cfg: &Config, cores: u64) -> Check {
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

fn check_memory(host: &HostFacts, m: &MemoryEstimate) -> Check {
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

fn check_backlog(name: &'static str, value: Option<u64>, backlog: i32, detail: &str) -> Check {
    let want = backlog.max(0) as u64;
    let Some(v) = value else {
        return unreadable(name, group(want));
    };
    let need = format!("{} (config backlog)", group(want));
    if v < want {
        check(
            name,
            Status::Warn,
            group(v),
            need,
            detail,
            Some(format!("sysctl -w {name}={}", want.max(profile::SOMAXCONN))),
        )
    } else {
        check(name, Status::Ok, group(v), need, detail, None)
    }
}

fn check_tcp_mem(host: &HostFacts, targets: &Targets) -> Check {
    let need_bytes = targets.connections.saturating_mul(QUEUED_BYTES_PER_SOCKET);
    let page = host.page_size.max(1);
    let need_pages = need_bytes.div_ceil(page);
    let Some(mem) = host.tcp_mem_pages else {
        return unreadable("net.ipv4.tcp_mem", format!("max >= {need_pages} pages"));
    };
    let found = format!(
        "{} {} {} pages (max {})",
        mem[0],
        mem[1],
        mem[2],
        bytes(mem[2].saturating_mul(page))
    );
    let need = format!(
        "max >= {need_pages} pages ({}: one small frame queued per connection)",
        bytes(need_bytes)
    );
    if mem[2] < need_pages {
        // The profile's shape: pressure = the need, min 3/4 of it, max 1.5x.
        let p = need_pages.max(profile::TCP_MEM_PAGES[1]);
        check(
            "net.ipv4.tcp_mem",
            Status::Warn,
            found,
            need,
            "a broadcast to every connection runs into the host's TCP memory ceiling: sends stall and slow consumers are cut off",
            Some(format!(
                "sysctl -w net.ipv4.tcp_mem=\"{} {} {}\"",
                p / 4 * 3,
                p,
                p / 2 * 3
            )),
        )
    } else {
        check(
            "net.ipv4.tcp_mem",
            Status::Ok,
            found,
            need,
            "TCP buffer memory host-wide (idle sockets hold none)",
            None,
        )
    }
}

fn check_wmem_max(host: &HostFacts, cfg: &Config) -> Check {
    let sndbuf = cfg.socket_send_buffer_bytes as u64;
    if sndbuf == 0 {
        let found = host
            .tcp_wmem
            .map(|w| format!("tcp_wmem {} {} {}", w[0], w[1], w[2]))
            .unwrap_or_else(|| "unreadable".into());
        return check(
            "net.core.wmem_max",
            Status::Ok,
            found,
            "nothing (socket_send_buffer_bytes = 0)".into(),
            "send buffers autotune within net.ipv4.tcp_wmem",
            None,
        );
    }
    let Some(max) = host.wmem_max else {
        return unreadable("net.core.wmem_max", bytes(sndbuf));
    };
    let need = format!("{} (socket_send_buffer_bytes)", bytes(sndbuf));
    if max < sndbuf {
        check(
            "net.core.wmem_max",
            Status::Warn,
            bytes(max),
            need,
            format!(
                "the kernel silently clamps SO_SNDBUF to {}: subscribers get smaller send buffers than configured",
                bytes(max)
            ),
            Some(format!(
                "sysctl -w net.core.wmem_max={}",
                sndbuf.max(profile::WMEM_MAX)
            )),
        )
    } else {
        check(
            "net.core.wmem_max",
            Status::Ok,
            bytes(max),
            need,
            "SO_SNDBUF is applied as configured",
            None,
        )
    }
}

fn check_tcp_rmem(host: &HostFacts) -> Check {
    let Some(r) = host.tcp_rmem else {
        return unreadable("net.ipv4.tcp_rmem", "default <= 128 KiB".into());
    };
    let found = format!("{} {} {}", r[0], r[1], r[2]);
    let need = format!("default <= {}", bytes(KERNEL_DEFAULT_RMEM_BYTES));
    if r[1] > KERNEL_DEFAULT_RMEM_BYTES {
        check(
            "net.ipv4.tcp_rmem",
            Status::Warn,
            found,
            need,
            "a host tuned for bulk transfer: every mostly-idle socket may pin this much unread data",
            Some("sysctl -w net.ipv4.tcp_rmem=\"4096 16384 4194304\"".into()),
        )
    } else {
        check(
            "net.ipv4.tcp_rmem",
            Status::Ok,
            found,
            need,
            "receive buffers are a cap, not an allocation: idle sockets hold nothing",
            None,
        )
    }
}

fn check_port_range(host: &HostFacts, cfg: &Config, targets: &Targets) -> Check {
    let Some((lo, hi)) = host.ip_local_port_range else {
        return unreadable("net.ipv4.ip_local_port_range", "outbound only".into());
    };
    let span = (hi + 1).saturating_sub(lo).max(1);
    let detail = if cfg.bind.ip().is_loopback() {
        format!(
            "the gateway only accepts; a load generator on this host needs {} source addresses (127.0.0.x) for the target",
            targets.connections.div_ceil(span)
        )
    } else {
        "the gateway only accepts: this limits outbound connections from this host, not the gateway"
            .to_string()
    };
    check(
        "net.ipv4.ip_local_port_range",
        Status::Ok,
        format!("{lo}-{hi} ({} ports)", group(span)),
        "outbound only".into(),
        detail,
        None,
    )
}

fn check_conntrack(host: &HostFacts, targets: &Targets) -> Check {
    let Some(max) = host.conntrack_max else {
        return check(
            "net.netfilter.nf_conntrack_max",
            Status::Ok,
            "not loaded".into(),
            group(targets.connections),
            "no connection tracking on this host",
            None,
        );
    };
    if max < targets.connections {
        check(
            "net.netfilter.nf_conntrack_max",
            Status::Warn,
            group(max),
            group(targets.connections),
            "a tracked connection needs an entry: beyond it the kernel drops packets of new connections (unless the port is NOTRACK)",
            Some(format!(
                "sysctl -w net.netfilter.nf_conntrack_max={}",
                round_k(targets.connections.saturating_mul(2)).max(profile::CONNTRACK_MAX)
            )),
        )
    } else {
        check(
            "net.netfilter.nf_conntrack_max",
            Status::Ok,
            group(max),
            group(targets.connections),
            "every connection fits in the connection-tracking table",
            None,
        )
    }
}

/// What the gateway does at startup: the same checks against the configuration's default
/// targets, each warning and failure logged with `tracing::warn!`. Never fails.
pub fn log_startup_checks(cfg: &Config) {
    let host = HostFacts::read();
    let cores = cfg
        .cores
        .resolve(&host.available_cores)
        .map(|c| c.len())
        .unwrap_or(1);
    let targets = Targets::from_config(cfg, cores, None, None);
    let report = run_checks(&host, cfg, &targets);
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

    /// A host that meets every check for 1M connections on 4 cores.
    fn good_host() -> HostFacts {
        HostFacts {
            kernel: Some("6.18.0".into()),
            nofile: Some(Limit {
                soft: 2_097_152,
                hard: 2_097_152,
            }),
            memlock: Some(Limit {
                soft: UNLIMITED,
                hard: UNLIMITED,
            }),
            cap_ipc_lock: false,
            file_max: Some(4_194_304),
            files_open: Some(2_000),
            nr_open: Some(2_097_152),
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(65_535),
            ip_local_port_range: Some((10_000, 65_535)),
            tcp_mem_pages: Some(profile::TCP_MEM_PAGES),
            tcp_rmem: Some([4096, 16_384, 4_194_304]),
            tcp_wmem: Some([4096, 16_384, 4_194_304]),
            wmem_max: Some(4_194_304),
            conntrack_max: None,
            io_uring_disabled: Some(0),
            io_uring: IoUringProbe::Works,
            page_size: 4096,
            available_cores: vec![0, 1, 2, 3],
            mem_available_bytes: Some(64 << 30),
            mem_total_bytes: Some(64 << 30),
        }
    }

    fn cfg() -> Config {
        Config::from_toml("cores = 3").unwrap()
    }

    fn million() -> Targets {
        Targets {
            connections: 1_000_000,
            subscriptions: 10_000_000,
        }
    }

    fn find<'a>(r: &'a Report, name: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in {r:#?}"))
    }

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

    #[test]
    fn memory_estimate_uses_the_measured_figures() {
        let m = MemoryEstimate::new(&million(), 2);
        assert_eq!(m.connections_bytes, 2_300_000_000);
        assert_eq!(m.subscriptions_bytes, 410_000_000);
        assert_eq!(m.kernel_sockets_bytes, 3_900_000_000);
        assert_eq!(m.base_bytes, 48 << 20);
        assert_eq!(
            m.steady_bytes,
            2_300_000_000 + 410_000_000 + 3_900_000_000 + (48 << 20)
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
    fn a_backlog_above_somaxconn_is_truncated_and_warned_about() {
        let mut h = good_host();
        h.somaxconn = Some(4096);
        h.tcp_max_syn_backlog = Some(2048);
        let c = Config::from_toml("cores = 3\nbacklog = 65535").unwrap();
        let r = run_checks(&h, &c, &million());
        let s = find(&r, "net.core.somaxconn");
        assert_eq!(s.status, Status::Warn);
        assert_eq!(s.fix.as_deref(), Some("sysctl -w net.core.somaxconn=65535"));
        assert_eq!(
            find(&r, "net.ipv4.tcp_max_syn_backlog").status,
            Status::Warn
        );
        assert!(!r.has_blocker());
        // The default backlog of 4096 fits a default somaxconn.
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(find(&r, "net.core.somaxconn").status, Status::Ok);
    }

    #[test]
    fn tcp_mem_below_one_page_per_connection_warns_with_a_sized_fix() {
        let mut h = good_host();
        h.tcp_mem_pages = Some([287_901, 383_868, 575_802]);
        let r = run_checks(&h, &cfg(), &million());
        let c = find(&r, "net.ipv4.tcp_mem");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.ipv4.tcp_mem=\"786432 1048576 1572864\"")
        );
        // 100k connections need 400 MB: the stock 2.2 GiB is plenty.
        let small = Targets {
            connections: 100_000,
            subscriptions: 1_000_000,
        };
        assert_eq!(
            find(&run_checks(&h, &cfg(), &small), "net.ipv4.tcp_mem").status,
            Status::Ok
        );
    }

    #[test]
    fn wmem_max_below_the_configured_sndbuf_warns() {
        let mut h = good_host();
        h.wmem_max = Some(65_536);
        let r = run_checks(&h, &cfg(), &million());
        let c = find(&r, "net.core.wmem_max");
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.fix.as_deref(),
            Some("sysctl -w net.core.wmem_max=4194304")
        );
        let c = Config::from_toml("cores = 3\nsocket_send_buffer_bytes = 0").unwrap();
        assert_eq!(
            find(&run_checks(&h, &c, &million()), "net.core.wmem_max").status,
            Status::Ok
        );
    }

    #[test]
    fn conntrack_is_checked_only_when_loaded() {
        let mut h = good_host();
        h.conntrack_max = Some(262_144);
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(
            find(&r, "net.netfilter.nf_conntrack_max").status,
            Status::Warn
        );
        h.conntrack_max = None;
        let r = run_checks(&h, &cfg(), &million());
        assert_eq!(
            find(&r, "net.netfilter.nf_conntrack_max").status,
            Status::Ok
        );
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

    #[test]
    fn text_and_json_carry_every_check() {
        let mut h = good_host();
        h.nr_open = Some(1_000);
        let r = run_checks(&h, &cfg(), &million());
        let text = r.render_text();
        assert!(text.starts_with(
            "subsocket doctor: 1,000,000 connections, 10,000,000 subscriptions on 3 cores [1, 2, 3]"
        ));
        assert!(text.contains("fail  fs.nr_open"));
        assert!(text.contains("      fix: sysctl -w fs.nr_open=2097152"));
        assert!(text
            .trim_end()
            .ends_with("fail: this host cannot serve the targets: fix the failures"));
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["targets"]["connections"], 1_000_000);
        assert_eq!(v["checks"].as_array().unwrap().len(), r.checks.len());
        let nr = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "fs.nr_open")
            .unwrap();
        assert_eq!(nr["status"], "fail");
        assert_eq!(nr["fix"], "sysctl -w fs.nr_open=2097152");
    }

    #[test]
    fn parsers_read_proc_formats() {
        let meminfo = "MemTotal:       24589292 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(
            meminfo_bytes(meminfo, "MemAvailable"),
            Some(23_000_000 * 1024)
        );
        assert_eq!(meminfo_bytes(meminfo, "Mem"), None);
        // CAP_IPC_LOCK is bit 14.
        assert!(has_capability("CapEff:\t000001fffeffffff\n", 14));
        assert!(!has_capability("CapEff:\t0000000000000000\n", 14));
        assert!(!has_capability("", 14));
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(999), "999");
        assert_eq!(bytes(6 << 20), "6.0 MiB");
        assert_eq!(bytes(512), "512 B");
    }

    #[test]
    fn the_profile_constants_match_tuning_sysctl_d() {
        let conf = include_str!("../tuning/sysctl.d/90-subsocket.conf");
        let value = |key: &str| -> Vec<u64> {
            conf.lines()
                .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
                .unwrap_or_else(|| panic!("{key} not in the profile"))
                .split_whitespace()
                .map(|w| w.parse().unwrap())
                .collect()
        };
        assert_eq!(value("fs.file-max"), [profile::FILE_MAX]);
        assert_eq!(value("fs.nr_open"), [profile::NR_OPEN]);
        assert_eq!(value("net.core.somaxconn"), [profile::SOMAXCONN]);
        assert_eq!(value("net.ipv4.tcp_max_syn_backlog"), [profile::SOMAXCONN]);
        assert_eq!(value("net.ipv4.tcp_mem"), profile::TCP_MEM_PAGES);
        assert_eq!(value("net.core.wmem_max"), [profile::WMEM_MAX]);
        assert_eq!(
            value("net.netfilter.nf_conntrack_max"),
            [profile::CONNTRACK_MAX]
        );
        // The profile's tcp_mem pressure is one small frame queued on each of 1M sockets.
        assert_eq!(
            profile::TCP_MEM_PAGES[1] * 4096,
            1_048_576 * QUEUED_BYTES_PER_SOCKET
        );
    }
}
