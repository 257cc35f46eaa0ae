//! The rules for the network stack's sysctls: accept backlogs (`net.core.somaxconn`,
//! `net.ipv4.tcp_max_syn_backlog`), TCP buffer memory (`net.ipv4.tcp_mem`, `tcp_rmem`,
//! `net.core.wmem_max`), the local port range and connection tracking. None of them keeps the
//! gateway from starting: at worst they warn.
//!
//! Same contract as `checks.rs`, whose helpers they build with: pure functions from facts to
//! one [`Check`] each; may not read the host or print.
//!
//! Read next: `report.rs` (how the checks are printed).

use super::checks::{check, round_k, unreadable};
use super::facts::HostFacts;
use super::model::{Targets, KERNEL_DEFAULT_RMEM_BYTES, QUEUED_BYTES_PER_SOCKET};
use super::profile;
use super::report::{bytes, group, Check, Status};
use crate::config::Config;

pub(super) fn check_backlog(
    name: &'static str,
    value: Option<u64>,
    backlog: i32,
    detail: &str,
) -> Check {
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

pub(super) fn check_tcp_mem(host: &HostFacts, targets: &Targets) -> Check {
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

pub(super) fn check_wmem_max(host: &HostFacts, cfg: &Config) -> Check {
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

pub(super) fn check_tcp_rmem(host: &HostFacts) -> Check {
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

pub(super) fn check_port_range(host: &HostFacts, cfg: &Config, targets: &Targets) -> Check {
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

pub(super) fn check_conntrack(host: &HostFacts, targets: &Targets) -> Check {
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

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::doctor::fixtures::{cfg, find, good_host, million};
    use crate::doctor::{run_checks, Status, Targets};

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
}
