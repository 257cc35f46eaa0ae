//! The gateway as a process: the real `subsocket` binary, started with a config file from a
//! [`Scratch`] directory, its stdout and stderr in files there, and ready once it printed its
//! listening line (which it prints after its signal handlers are in, so a SIGTERM right after is
//! a graceful stop).
//!
//! The caller builds the [`Command`] (the binary and every flag: `--bind`, `--cores`,
//! `--config`); this module only runs it, waits, stops and cleans up. Crates other than the
//! gateway's own (whose tests have `CARGO_BIN_EXE_subsocket`) find the binary with
//! [`gateway_bin`]. Next to read: [`crate::http`].

use crate::poll::poll_until;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The gateway binary for the tests of another workspace crate (the Rust client, the price-feed
/// sidecar): `SUBSOCKET_BIN`, or the workspace's `target/ci/subsocket`. Building it is the
/// caller's job (`cargo build --profile ci --bins`, the build stage of `scripts/test.sh`); a
/// missing binary fails the test with that command in the message.
pub fn gateway_bin() -> PathBuf {
    let bin = std::env::var_os("SUBSOCKET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci/subsocket"));
    assert!(
        bin.is_file(),
        "no gateway binary at {} (build it with `cargo build --profile ci --bins` or set SUBSOCKET_BIN)",
        bin.display()
    );
    bin
}

/// How long a gateway may take to print its listening line (a loaded 2-core CI machine, a
/// cluster node waiting for its backbone).
pub const START_WITHIN: Duration = Duration::from_secs(30);

/// How long a gateway may take to exit after SIGTERM.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);

/// A fresh, empty directory under the system's temp dir, removed when dropped (unless kept).
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// `$TMPDIR/subsocket-{tag}-{pid}-{n}`, `n` counting up within the process; emptied first if
    /// a process with the same pid left one behind.
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "subsocket-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Scratch { path, keep: false }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to the file `name` in the directory; returns the file's path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, contents).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        file
    }

    /// Leaves the directory in place (its logs stay readable after the test); returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The address of the gateway's listening line, "subsocket listening on ws://HOST:PORT (N
/// cores)" (`wss://` with TLS); `None` for any other line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let url = line.strip_prefix("subsocket listening on ")?;
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))?;
    rest.split([' ', '/']).next()?.parse().ok()
}

/// A running gateway process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl GatewayProcess {
    /// Runs `cmd` with stdin closed, stdout into the file `stdout` and stderr into the file
    /// `stderr` (both created afresh), and waits up to [`START_WITHIN`] for its listening line.
    /// Fails the test, with what the gateway wrote on stderr, when it exits first or never
    /// listens.
    pub fn spawn(mut cmd: Command, stdout: &Path, stderr: &Path) -> GatewayProcess {
        let out = std::fs::File::create(stdout).expect("stdout file");
        let err = std::fs::File::create(stderr).expect("stderr file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn the gateway");
        // Owned from here on: a panic below kills it (Drop).
        let mut gw = GatewayProcess {
            child: Some(child),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr: stderr.to_path_buf(),
        };
        let found = poll_until(START_WITHIN, Duration::from_millis(20), || {
            let text = std::fs::read_to_string(stdout).unwrap_or_default();
            if let Some(addr) = text.lines().find_map(listening_addr) {
                return Some(addr);
            }
            if let Some(status) = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "the gateway exited ({status}) before listening: {}",
                    gw.stderr_text()
                );
            }
            None
        });
        match found {
            Some(addr) => gw.addr = addr,
            None => panic!(
                "the gateway did not listen within {START_WITHIN:?}: {}",
                gw.stderr_text()
            ),
        }
        gw
    }

    /// The address from its listening line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id (`None` once stopped or killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its resident set in bytes now (VmRSS of /proc/PID/status).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// What it wrote on stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM (a graceful stop: every connection gets close 1001) and waits up to
    /// [`STOP_WITHIN`] for the exit, which must be clean; kills it and fails the test otherwise.
    /// Does nothing when it was already stopped or killed.
    pub fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let exited: Option<ExitStatus> = poll_until(STOP_WITHIN, Duration::from_millis(20), || {
            child.try_wait().expect("wait")
        });
        match exited {
            Some(status) => assert!(
                status.success(),
                "the gateway did not exit cleanly: {status}"
            ),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the gateway was still running {STOP_WITHIN:?} after SIGTERM");
            }
        }
    }

    /// Kills it (SIGKILL, no graceful stop) and reaps it; nothing when it is already gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
