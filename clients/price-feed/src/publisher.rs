//! The gateway connection: one WebSocket, `publish` per message, acks read back.

use super::book::{App, Batch};
use super::feed::Rng;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// How long a connect, the upgrade and the `ready` answer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the publisher waits for the next round before reading acks anyway.
const POLL: Duration = Duration::from_millis(50);
/// A gateway that takes no bytes for this long is given up on and reconnected to.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes the publisher may hold for a slow gateway before dropping publishes.
const MAX_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// Reconnect backoff: exponential from the first to the cap, with full jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Where to publish: the upgrade URL (token included) and the address to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port/path?…&token=…`, what the upgrade request is built from.
    pub url: String,
    /// `host:port`, resolved again on every connect (the gateway may move).
    pub authority: String,
    pub token: Option<String>,
}

impl Target {
    /// `ws://HOST[:PORT][/PATH]`; the path defaults to `/ws`. `wss://` is refused: the
    /// sidecar runs next to the gateway and talks to it over loopback.
    pub fn parse(url: &str, token: Option<&str>) -> Result<Target, String> {
        let rest = url.strip_prefix("ws://").ok_or_else(|| {
            format!("--gateway {url:?}: expected ws://HOST:PORT/ws (plain ws to a local gateway)")
        })?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/ws"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("--gateway {url:?}: no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let path = if path.starts_with('?') {
            format!("/ws{path}")
        } else {
            path.to_owned()
        };
        let mut full = format!("ws://{authority}{path}");
        if let Some(t) = token {
            let sep = if full.contains('?') { '&' } else { '?' };
            full.push(sep);
            full.push_str("token=");
            full.extend(utf8_percent_encode(t, NON_ALPHANUMERIC));
        }
        Ok(Target {
            url: full,
            authority,
            token: token.map(str::to_owned),
        })
    }
}

type Ws = WebSocket<TcpStream>;

/// The publisher thread: connect, publish until the connection fails, back off, again;
/// returns when the generator is gone (shutdown). While disconnected, rounds are dropped
/// (counted): a price feed resumes with fresh quotes rather than a backlog of stale ones.
pub fn run(target: &Target, rx: &Receiver<Batch>, app: &App, stop: &AtomicBool) {
    let mut rng = Rng::new(super::book::now_ms() ^ u64::from(std::process::id()));
    let mut failures: u32 = 0;
    loop {
        match connect(target) {
            Ok(mut ws) => {
                failures = 0;
                app.stats.connects.fetch_add(1, Ordering::Relaxed);
                app.stats.connected.store(true, Ordering::Relaxed);
                tracing::info!(gateway = %target.url_without_token(), "connected to the gateway");
                // Rounds queued while disconnected are stale: drop them.
                discard(rx, app);
                let outcome = pump(&mut ws, rx, app, stop);
                app.stats.connected.store(false, Ordering::Relaxed);
                match outcome {
                    Ok(()) => {
                        close(ws);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("gateway connection lost: {e}");
                        app.set_last_error(e);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot connect to the gateway: {e}");
                app.set_last_error(e);
            }
        }
        failures = failures.saturating_add(1);
        let cap = BACKOFF_FIRST
            .saturating_mul(1u32 << failures.min(16))
            .min(BACKOFF_CAP);
        let wait = cap.mul_f64(rng.unit());
        let until = Instant::now() + wait.max(Duration::from_millis(10));
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) || !discard(rx, app) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Target {
    /// The URL for logs: the token is not written anywhere.
    pub fn url_without_token(&self) -> String {
        match self.url.find("token=") {
            Some(i) => format!("{}token=…", &self.url[..i]),
            None => self.url.clone(),
        }
    }
}

/// Drops every queued round (counted). False when the generator is gone.
fn discard(rx: &Receiver<Batch>, app: &App) -> bool {
    loop {
        match rx.try_recv() {
            Ok(batch) => {
                app.stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return true,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
        }
    }
}

/// TCP connect, upgrade, `setup` (with the token when there is one), wait for `ready`.
fn connect(target: &Target) -> Result<Ws, String> {
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", target.authority))?
        .collect();
    let mut last = format!("{}: no address", target.authority);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default().max_write_buffer_size(MAX_WRITE_BUFFER_BYTES);
    let (mut ws, _) =
        tungstenite::client::client_with_config(target.url.as_str(), stream, Some(config))
            .map_err(|e| format!("upgrade: {e}"))?;
    let setup = match &target.token {
        Some(t) => serde_json::json!({"type": "setup", "token": t}),
        None => serde_json::json!({"type": "setup"}),
    };
    ws.send(Message::text(setup.to_string()))
        .map_err(|e| format!("setup: {e}"))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        if Instant::now() > deadline {
            return Err("no `ready` answer to setup".into());
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                match v["type"].as_str() {
                    Some("ready") => break,
                    Some("error") => {
                        return Err(format!(
                            "setup refused: {} {}",
                            v["code"].as_str().unwrap_or("?"),
                            v["message"].as_str().unwrap_or("")
                        ))
                    }
                    _ => {}
                }
            }
            Ok(Message::Close(frame)) => {
                return Err(format!("closed during setup: {frame:?}"));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("setup: {e}")),
        }
    }
    ws.get_mut()
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == ErrorKind::WouldBlock)
}

/// Publishes rounds as they come and reads the gateway's answers, on a non-blocking socket.
/// `Ok` when the generator is gone (shutdown); `Err` when the connection failed.
fn pump(ws: &mut Ws, rx: &Receiver<Batch>, app: &App, stop: &AtomicBool) -> Result<(), String> {
    let mut last_progress = Instant::now();
    let mut pending = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match rx.recv_timeout(POLL) {
            Ok(batch) => {
                write_batch(ws, batch, app)?;
                // Catch up with whatever else is queued, a bounded number at a time.
                for batch in rx.try_iter().take(64) {
                    write_batch(ws, batch, app)?;
                }
                pending = true;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        if pending {
            match ws.flush() {
                Ok(()) => {
                    pending = false;
                    last_progress = Instant::now();
                }
                Err(e) if would_block(&e) => {
                    if last_progress.elapsed() > STALL_TIMEOUT {
                        return Err(format!("the gateway took no data for {STALL_TIMEOUT:?}"));
                    }
                }
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        read_answers(ws, app)?;
    }
}

/// Queues one round's publishes. A full write buffer (a gateway that stopped reading)
/// drops the publish, counted; `pump`'s stall check then ends the connection.
fn write_batch(ws: &mut Ws, batch: Batch, app: &App) -> Result<(), String> {
    for text in batch {
        match ws.write(Message::text(text)) {
            Ok(()) => {
                app.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            // The message is queued; `flush` finishes it.
            Err(e) if would_block(&e) => {
                app.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(tungstenite::Error::WriteBufferFull(_)) => {
                app.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}

/// Reads every answer already received: acks are counted, errors counted and logged (the
/// first ten, then every thousandth: a wrong token must not flood the log).
fn read_answers(ws: &mut Ws, app: &App) -> Result<(), String> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                match v["type"].as_str() {
                    Some("ack") if v["status"] == "duplicate" => {
                        app.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("ack") => {
                        app.stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("error") => {
                        let n = app.stats.gateway_errors.fetch_add(1, Ordering::Relaxed);
                        let e = format!(
                            "gateway error {} on {}: {}",
                            v["code"].as_str().unwrap_or("?"),
                            v["topic"].as_str().unwrap_or("-"),
                            v["message"].as_str().unwrap_or("")
                        );
                        if n < 10 || n.is_multiple_of(1000) {
                            tracing::warn!("{e} ({} so far)", n + 1);
                        }
                        app.set_last_error(e);
                    }
                    _ => {}
                }
            }
            Ok(Message::Close(frame)) => {
                return Err(match frame {
                    Some(f) => {
                        format!("the gateway closed the connection: {} {}", f.code, f.reason)
                    }
                    None => "the gateway closed the connection".into(),
                })
            }
            Ok(_) => {}
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// A clean close (1000) at shutdown, waiting a moment for the gateway's answer.
fn close(mut ws: Ws) {
    let _ = ws.get_mut().set_nonblocking(false);
    let _ = ws
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(500)));
    if ws.close(None).is_ok() {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match ws.read() {
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}
