//! Test harness: the real gateway binary on a free port, an HTTP publish helper, and a TCP
//! proxy that can cut every connection through it (a forced disconnect the gateway does not
//! choose) or refuse new ones.
//!
//! Running the gateway process (its scratch directory, the wait for its listening line, the
//! SIGTERM stop) and the blocking HTTP request are the shared `subsocket-testkit`'s
//! (`tests/support/` at the workspace root), which the gateway's own tests use too; what is
//! async (the proxy, message and event waits) is this harness's own.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use subsocket_client::{Event, Message, MessageStream};
use subsocket_testkit::process::{gateway_bin, GatewayProcess, Scratch};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

/// History for every topic, so replay and `fromSeq` work.
pub const HISTORY: &str = "[history]\n\n[[history.rules]]\npattern = \"*\"\nmax_messages = 1000\n";

/// One gateway process with its own config file and logs in a temporary directory.
pub struct Gateway {
    process: Option<GatewayProcess>,
    dir: Scratch,
    args: Vec<String>,
    pub port: u16,
    starts: u32,
}

impl Gateway {
    /// Starts the gateway on `127.0.0.1:0` (one core) with `config` (TOML) and extra flags,
    /// and waits for its "subsocket listening on ws://HOST:PORT" (or `wss://`) line.
    pub fn start(config: &str, args: &[&str]) -> Gateway {
        let dir = Scratch::new("client-test");
        dir.file("gateway.toml", config);
        let mut gw = Gateway {
            process: None,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            port: 0,
            starts: 0,
        };
        gw.spawn("127.0.0.1:0");
        gw
    }

    fn spawn(&mut self, bind: &str) {
        self.starts += 1;
        let out = self.dir.path().join(format!("stdout.{}", self.starts));
        let err = self.dir.path().join(format!("stderr.{}", self.starts));
        let mut cmd = Command::new(gateway_bin());
        cmd.arg("--bind")
            .arg(bind)
            .arg("--cores")
            .arg("1")
            .arg("--config")
            .arg(self.dir.path().join("gateway.toml"))
            .args(&self.args);
        let process = GatewayProcess::spawn(cmd, &out, &err);
        self.port = process.addr().port();
        self.process = Some(process);
    }

    /// `ws://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the process (SIGTERM, graceful: every connection gets close 1001) and asserts a
    /// clean exit.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.terminate();
        }
    }

    /// Stops the gateway and starts a new process on the same port (history, sessions and
    /// sequence numbers are gone, as after any restart).
    pub fn restart(&mut self) {
        self.stop();
        let bind = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port can linger for a moment; try again until it binds.
            let attempt =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.spawn(&bind)));
            match attempt {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `POST /publish/{topic}` with `body`; the gateway's JSON answer.
    pub async fn http_publish(&self, topic: &str, body: &serde_json::Value) -> serde_json::Value {
        http_post(self.port, &format!("/publish/{topic}"), &body.to_string()).await
    }

    /// `GET /stats` as JSON.
    pub async fn stats(&self) -> serde_json::Value {
        http_request(self.port, "GET", "/stats", "").await
    }
}

async fn http_post(port: u16, path: &str, body: &str) -> serde_json::Value {
    http_request(port, "POST", path, body).await
}

/// One request with `Connection: close`, read to EOF by the shared blocking reader on tokio's
/// blocking pool (the runtime's workers go on serving the client under test meanwhile).
async fn http_request(port: u16, method: &str, path: &str, body: &str) -> serde_json::Value {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = tokio::task::spawn_blocking(move || {
        subsocket_testkit::http::request_to_eof(("127.0.0.1", port), req.as_bytes())
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let (head, body) = (reply.head, reply.body);
    assert!(head.starts_with("HTTP/1.1 200"), "{method} {path}: {head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body:?}"))
}

/// A TCP proxy to a gateway port: `cut` drops every connection through it, `refuse` makes it
/// drop new ones at once.
pub struct Proxy {
    pub port: u16,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    refusing: Arc<AtomicBool>,
    accept: AbortHandle,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let refusing = Arc::new(AtomicBool::new(false));
        let (c, r) = (conns.clone(), refusing.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if r.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            port,
            conns,
            refusing,
            accept,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Drops every connection through the proxy; returns how many were open.
    pub fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        let open = conns.iter().filter(|h| !h.is_finished()).count();
        for h in conns {
            h.abort();
        }
        open
    }

    pub fn refuse(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The next `n` messages of `stream`, failing the test after `limit`.
pub async fn take(stream: &mut MessageStream, n: usize, limit: Duration) -> Vec<Message> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("the stream ended after {} of {n} messages", got.len()),
            Err(_) => panic!(
                "only {} of {n} messages within {limit:?}; seqNos {:?}",
                got.len(),
                got.iter().map(|m| m.seq_no).collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// Asserts that nothing more arrives on `stream` within `quiet`.
pub async fn assert_quiet(stream: &mut MessageStream, quiet: Duration) {
    if let Ok(Some(m)) = tokio::time::timeout(quiet, stream.next()).await {
        panic!(
            "unexpected extra message {} #{}: {}",
            m.topic, m.seq_no, m.data
        );
    }
}

/// Waits for the first event matching `pred`, failing after `limit`.
pub async fn wait_event(
    events: &mut broadcast::Receiver<Event>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                panic!("events closed waiting for {what}")
            }
            Err(_) => panic!("no {what} within {limit:?}"),
        }
    }
}

/// The seqNos of `msgs`.
pub fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq_no).collect()
}

/// Cuts the proxied connection of a socket `times` times: each time waits until the socket is
/// connected (ready), lets it run for `run`, cuts, and waits until it noticed. Returns the
/// number of cuts that hit a ready connection.
pub fn cut_repeatedly(
    proxy: Arc<Proxy>,
    mut state: tokio::sync::watch::Receiver<subsocket_client::ConnectionState>,
    times: usize,
    run: Duration,
) -> tokio::task::JoinHandle<usize> {
    use subsocket_client::ConnectionState;
    tokio::spawn(async move {
        let mut cuts = 0;
        for _ in 0..times {
            let connected = |s: &ConnectionState| matches!(s, ConnectionState::Connected { .. });
            if state.wait_for(connected).await.is_err() {
                break;
            }
            tokio::time::sleep(run).await;
            if proxy.cut() > 0 {
                cuts += 1;
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| !connected(s)))
                .await;
        }
        cuts
    })
}
