//! What a run reads of the machine and of the gateway: CPU seconds and RSS of a process from
//! /proc, the open-files limit, kernel socket memory (sockstat, slabinfo, meminfo), and one
//! `GET` of the gateway's JSON (`/stats`).

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

pub(crate) fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(r.ru_utime) + tv(r.ru_stime)
    }
}

pub(crate) fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only touch the struct on our stack.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Kernel memory that sockets cost, host-wide (both ends of loopback connections): TCP sockets
/// and their buffer pages from /proc/net/sockstat, the slab caches a socket lives in from
/// /proc/slabinfo (root only; absent otherwise), and the slab totals from /proc/meminfo.
pub(crate) fn kernel_snapshot() -> serde_json::Value {
    let mut v = serde_json::Map::new();
    if let Ok(ss) = std::fs::read_to_string("/proc/net/sockstat") {
        for line in ss.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let num = |k: &str| {
                f.iter()
                    .position(|x| *x == k)
                    .and_then(|i| f.get(i + 1))
                    .and_then(|x| x.parse::<u64>().ok())
            };
            match f.first() {
                Some(&"sockets:") => {
                    v.insert("sockets_used".into(), num("used").into());
                }
                Some(&"TCP:") => {
                    v.insert("tcp_inuse".into(), num("inuse").into());
                    v.insert("tcp_alloc".into(), num("alloc").into());
                    v.insert("tcp_tw".into(), num("tw").into());
                    v.insert("tcp_mem_pages".into(), num("mem").into());
                }
                _ => {}
            }
        }
    }
    if let Ok(si) = std::fs::read_to_string("/proc/slabinfo") {
        let mut slab = serde_json::Map::new();
        for line in si.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            const CACHES: [&str; 9] = [
                "TCP",
                "sock_inode_cache",
                "dentry",
                "filp",
                "eventpoll_epi",
                "eventpoll_pwq",
                "skbuff_head_cache",
                "tw_sock_TCP",
                "request_sock_TCP",
            ];
            if f.len() > 3 && CACHES.contains(&f[0]) {
                let (Ok(num), Ok(size)) = (f[2].parse::<u64>(), f[3].parse::<u64>()) else {
                    continue;
                };
                slab.insert(f[0].into(), (num * size).into());
            }
        }
        v.insert("slab_bytes".into(), slab.into());
    }
    if let Ok(mi) = std::fs::read_to_string("/proc/meminfo") {
        for line in mi.lines() {
            let mut f = line.split_whitespace();
            let (Some(k), Some(n)) = (f.next(), f.next()) else {
                continue;
            };
            let key = match k {
                "Slab:" => "slab_total_bytes",
                "SUnreclaim:" => "slab_unreclaimable_bytes",
                "MemAvailable:" => "mem_available_bytes",
                "Percpu:" => "percpu_bytes",
                _ => continue,
            };
            if let Ok(kb) = n.parse::<u64>() {
                v.insert(key.into(), (kb * 1024).into());
            }
        }
    }
    v.into()
}

/// `GET path` over a fresh connection; the JSON body, if any.
pub(crate) fn http_get_json(target: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    let at = memchr::memmem::find(&body, b"\r\n\r\n")? + 4;
    serde_json::from_slice(&body[at..]).ok()
}
