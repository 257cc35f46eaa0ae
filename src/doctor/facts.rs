//! Reading the live host: [`HostFacts`] and [`HostFacts::read`], the one place `subsocket doctor`
//! looks at the machine (/proc/sys, /proc/meminfo, /proc/self/status, getrlimit, an io_uring
//! setup, the affinity mask), with the small parsers of the /proc formats and the types of what
//! it finds ([`Limit`], [`IoUringProbe`]).
//!
//! May touch: the host, read-only. May not: change anything on it, judge what it reads (the
//! rules are in `checks.rs` and `net_checks.rs`), format it for people (`report.rs`), or import
//! glommio. What cannot be read is `None`, never a guess.
//!
//! Read next: `model.rs` (what the targets cost).

use crate::memory::meminfo_bytes;
use serde::Serialize;
use std::path::Path;

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
    /// What this process may use: `MemTotal`, or its cgroup's limit when lower.
    pub machine_memory_bytes: Option<u64>,
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
            machine_memory_bytes: crate::memory::machine_memory(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
