//! Values of tuning/sysctl.d/90-subsocket.conf: the fixes suggest at least these, so a fixed
//! host also passes `tuning/check`. (A unit test keeps them equal to the file.)
//!
//! Constants only. May not: hold anything the file does not say (measured costs live in
//! `model.rs`). Changes together with tuning/sysctl.d/90-subsocket.conf, tuning/limits.d and
//! tuning/systemd.
//!
//! Read next: `checks.rs` (the fixes that suggest these values).

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

#[cfg(test)]
mod tests {
    use crate::doctor::{profile, QUEUED_BYTES_PER_SOCKET};

    #[test]
    fn the_profile_constants_match_tuning_sysctl_d() {
        let conf = include_str!("../../tuning/sysctl.d/90-subsocket.conf");
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
