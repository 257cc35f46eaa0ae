//! Test-only: the hand-made host, configuration and targets the unit tests of every file in
//! `doctor/` start from, so each test changes only the fact it is about.
//!
//! Compiled only for tests. May not: read the live host.

use super::{profile, Check, Config, HostFacts, IoUringProbe, Limit, Report, Targets, UNLIMITED};

/// A host that meets every check for 1M connections on 4 cores.
pub(super) fn good_host() -> HostFacts {
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
        machine_memory_bytes: Some(64 << 30),
    }
}

pub(super) fn cfg() -> Config {
    Config::from_toml("cores = 3").unwrap()
}

pub(super) fn million() -> Targets {
    Targets {
        connections: 1_000_000,
        subscriptions: 10_000_000,
    }
}

pub(super) fn find<'a>(r: &'a Report, name: &str) -> &'a Check {
    r.checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {r:#?}"))
}
