//! Starting and stopping the gateway: bind one SO_REUSEPORT listener per core, start one pinned
//! glommio executor per core, wait until every core accepts, and on request shut them down.
//!
//! The only code that knows the number of cores at startup. Tests and `main` use the same entry:
//! [`start`] returns once the gateway serves, with the bound address (port 0 works).

use crate::auth::Authenticator;
use crate::config::{available_cores, Config};
use crate::mesh::{self, Mesh, ShardMsg};
use crate::shard::{run_shard, ShardSetup};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::time::Duration;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    cores: Vec<usize>,
    mesh: Mesh,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

/// A cloneable, `Send` way to ask a gateway to stop (for signal handlers).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    mesh: Mesh,
}

impl ShutdownHandle {
    /// Asks every core to stop accepting, close its connections with 1001 and exit.
    pub fn shutdown(&self) {
        for shard in 0..self.mesh.len() {
            self.mesh.send_blocking(shard, ShardMsg::Shutdown);
        }
    }
}

/// Binds the listeners and starts every core. Returns once all cores accept.
pub fn start(cfg: Config) -> Result<Gateway, String> {
    cfg.validate()?;
    let cores = cfg.cores.resolve(&available_cores())?;
    let cfg_memory = cfg.memory_budget_bytes;
    check_memlock();
    raise_nofile();
    let listeners = bind_listeners(cfg.bind, cores.len(), cfg.backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.bind))?;
    let addr = listeners[0]
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or("listener has no address")?;
    crate::history::History::new(cfg.history.clone()).map_err(|e| format!("[history]: {e}"))?;
    let auth = Arc::new(Authenticator::new(&cfg.auth).map_err(|e| format!("[auth]: {e}"))?);
    let tls = match &cfg.tls {
        Some(t) => {
            let server = crate::tls::TlsServer::new(t).map_err(|e| format!("[tls]: {e}"))?;
            server
                .spawn_reloader(t.reload_check_ms)
                .map_err(|e| format!("[tls]: {e}"))?;
            Some(server)
        }
        None => None,
    };
    let (mesh, inboxes) = mesh::build(cores.len(), cfg.inbox_capacity);
    let backbone = match &cfg.cluster {
        Some(c) => {
            let signer = match &cfg.signing {
                Some(s) => Some(
                    crate::signing::Signer::from_file(&s.key_id, &s.key_hex_file)
                        .map_err(|e| format!("[signing]: {e}"))?,
                ),
                None => None,
            };
            let node: Arc<str> = c
                .node_name
                .clone()
                .unwrap_or_else(|| format!("subsocket@{addr}"))
                .into();
            Some(crate::backbone::nats::start(
                crate::backbone::nats::Setup {
                    cluster: c.clone(),
                    node,
                    mesh: mesh.clone(),
                    dedup_window: Duration::from_millis(cfg.dedup_window_ms),
                    signer,
                },
            )?)
        }
        None => None,
    };
    let cfg = Arc::new(cfg);
    let boot = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::with_capacity(cores.len());
    for (id, ((core, inbox), listener)) in cores
        .iter()
        .copied()
        .zip(inboxes)
        .zip(listeners)
        .enumerate()
    {
        let setup = ShardSetup {
            id,
            core,
            cfg: cfg.clone(),
            mesh: mesh.clone(),
            inbox,
            listener_fd: listener.into_raw_fd(),
            auth: auth.clone(),
            tls: tls.as_ref().map(|t| t.config.clone()),
            boot,
            backbone: backbone.clone(),
            ready: ready_tx.clone(),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("subsocket-{id}"))
            .io_memory(cfg.io_memory_bytes)
            .ring_depth(cfg.ring_depth)
            .preempt_timer(Duration::from_millis(10))
            .spawn(move || run_shard(setup))
            .map_err(|e| format!("cannot start the executor on core {core}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    for _ in 0..cores.len() {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a core did not start within 30 s".into()),
        }
    }
    if let Some(rss) = crate::memory::process_rss() {
        crate::memory::note_startup_rss(rss);
    }
    let budget =
        crate::memory::Budget::resolve(cfg_memory, cores.len(), crate::memory::machine_memory());
    tracing::info!(
        budget_bytes = budget.total,
        per_core_bytes = budget.per_core,
        machine_bytes = budget.machine,
        startup_rss_bytes = crate::memory::startup_rss(),
        "memory budget ({}): above 90% of its share a core refuses new subscriptions and connections",
        budget.source.as_str()
    );
    Ok(Gateway {
        addr,
        cores,
        mesh,
        handles,
    })
}

impl Gateway {
    /// The address every core listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CPU ids the shards are pinned to, in shard order.
    pub fn cores(&self) -> &[usize] {
        &self.cores
    }

    /// A handle that can stop the gateway from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            mesh: self.mesh.clone(),
        }
    }

    /// Stops every core (graceful: close 1001, flush within the grace period).
    pub fn shutdown(&self) {
        self.shutdown_handle().shutdown();
    }

    /// Waits until every core has exited.
    pub fn join(self) -> Result<(), String> {
        let mut failed = Vec::new();
        for (i, h) in self.handles.into_iter().enumerate() {
            if let Err(e) = h.join() {
                failed.push(format!("core {}: {e}", self.cores[i]));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// One listener per core on the same address. With port 0 the first picks the port and the
/// others join it.
fn bind_listeners(addr: SocketAddr, n: usize, backlog: i32) -> std::io::Result<Vec<Socket>> {
    let mut out: Vec<Socket> = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let s = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog)?;
        if addr.port() == 0 {
            if let Some(a) = s.local_addr()?.as_socket() {
                addr = a;
            }
        }
        out.push(s);
    }
    Ok(out)
}

/// glommio needs RLIMIT_MEMLOCK >= 512 KiB for its rings; raise the soft limit if we may.
fn check_memlock() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass, which lives on the stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) == 0 && lim.rlim_cur < 8 << 20 {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max.min(64 << 20),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &want) != 0 || want.rlim_cur < 512 << 10 {
                tracing::warn!(
                    "RLIMIT_MEMLOCK is {} bytes; io_uring rings need at least 512 KiB (see tuning/)",
                    lim.rlim_cur
                );
            }
        }
    }
}

/// Every connection is a file descriptor: raise the soft RLIMIT_NOFILE to the hard limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `check_memlock`: the struct lives on the stack for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &want);
        }
    }
}
