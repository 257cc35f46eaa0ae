//! The price-feed sidecar end to end: the real `subsocket` binary (`SUBSOCKET_BIN` or
//! `target/ci/subsocket`, see `subsocket_testkit::process::gateway_bin`), the real
//! `subsocket-pricefeed` sidecar publishing to it, a tungstenite subscriber and a raw HTTP/1.1
//! client for the REST API. What it shows: a derived channel's quote is the main stream's quote
//! of the same upstream tick widened by the channel's margin; a margin change applies from the
//! tick the API names; a deleted channel publishes nothing after the tick the API names; bad
//! REST input gets a JSON 4xx and the feed keeps running; the sidecar reconnects to a gateway
//! that went away.
//!
//! Every wait is bounded (a deadline or a read timeout), and both processes are killed when a
//! test ends, also when it fails.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subsocket_testkit::process::gateway_bin;

/// Time a process has to print its listening line (a loaded 2-core CI machine).
const STARTUP: Duration = Duration::from_secs(30);
/// Time a condition over the live feed has to come true.
const WITHIN: Duration = Duration::from_secs(15);
/// The same as the sidecar's rounding allows: prices are rounded to 5 digits below 10 and 3
/// below 1000, so a derived price is within 1e-5 (relative) of the exact one. A margin change
/// of even 1 bp (1e-4) is ten times that.
const RELATIVE_TOLERANCE: f64 = 1e-5;

/// A child process, killed and reaped on drop; its stderr kept for failure messages.
struct Proc {
    name: &'static str,
    child: Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let (tx, stdout) = channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            name,
            child,
            stdout,
            stderr,
        }
    }

    /// The last lines of its stderr, for assertion messages.
    fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap();
        let from = lines.len().saturating_sub(20);
        lines[from..].join("\n")
    }

    /// Waits for the stdout line starting with `prefix` and returns the `HOST:PORT` after it.
    fn wait_for_address(&mut self, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        let hostport = rest.split([' ', '/']).next().unwrap();
                        return hostport
                            .parse()
                            .unwrap_or_else(|e| panic!("{}: address in {line:?}: {e}", self.name));
                    }
                }
                Err(_) => panic!(
                    "{} printed no {prefix:?} line within {STARTUP:?}; exit: {:?}; stderr:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.stderr_tail()
                ),
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway binary on `bind` (port 0 = a free one); returns it and its address.
fn start_gateway(bind: &str) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(gateway_bin());
    cmd.args(["--bind", bind, "--cores", "1", "--log", "warn"]);
    let mut gw = Proc::spawn("subsocket", cmd);
    let addr = gw.wait_for_address("subsocket listening on ws://");
    (gw, addr)
}

/// The sidecar, publishing EURUSD and USDJPY 20 times a second each to `gateway`.
fn start_pricefeed(gateway: SocketAddr, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_subsocket-pricefeed"));
    cmd.args([
        "--gateway",
        &format!("ws://{gateway}/ws"),
        "--listen",
        "127.0.0.1:0",
        "--symbols",
        "EURUSD,USDJPY",
        "--rate",
        "20",
        "--seed",
        "7",
        "--log",
        "info",
    ]);
    cmd.args(extra);
    let mut pf = Proc::spawn("subsocket-pricefeed", cmd);
    let addr = pf.wait_for_address("subsocket-pricefeed listening on http://");
    (pf, addr)
}

// ----- a raw HTTP/1.1 client ----------------------------------------------------------------

struct HttpAnswer {
    status: u16,
    head: String,
    body: Value,
}

/// Sends `raw` as is and reads the answer to the end (the sidecar closes after each one).
fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("read the answer to {:?}: {e}", String::from_utf8_lossy(raw)));
    let text = String::from_utf8(buf).expect("a UTF-8 answer");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head/body in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body {body:?}: {e}"));
    HttpAnswer {
        status,
        head: head.to_owned(),
        body,
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> HttpAnswer {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, raw.as_bytes())
}

// ----- a subscriber -------------------------------------------------------------------------

type Ws = tungstenite::WebSocket<TcpStream>;

/// A `/ws` connection subscribed to `topics`.
fn subscriber(gateway: SocketAddr, topics: &[&str]) -> Ws {
    let stream = TcpStream::connect(gateway).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (mut ws, _) = tungstenite::client::client(format!("ws://{gateway}/ws"), stream)
        .expect("WebSocket upgrade");
    ws.send(tungstenite::Message::text(
        json!({"type": "subscribe", "topics": topics}).to_string(),
    ))
    .unwrap();
    let deadline = Instant::now() + WITHIN;
    while Instant::now() < deadline {
        if let Some(v) = next_json(&mut ws) {
            if v["type"] == "subscribed" {
                return ws;
            }
            assert_ne!(v["type"], "error", "subscribe refused: {v}");
        }
    }
    panic!("no `subscribed` within {WITHIN:?}");
}

/// The next JSON message, or `None` after the socket's short read timeout.
fn next_json(ws: &mut Ws) -> Option<Value> {
    match ws.read() {
        Ok(tungstenite::Message::Text(t)) => Some(serde_json::from_str(t.as_str()).unwrap()),
        Ok(_) => None,
        Err(tungstenite::Error::Io(e))
            if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut =>
        {
            None
        }
        Err(e) => panic!("subscriber: {e}"),
    }
}

/// Deliveries seen so far: the `data` of every `message`, by source (`main`, a channel) and
/// upstream tick.
#[derive(Default)]
struct Seen {
    by_source: HashMap<String, HashMap<u64, Value>>,
}

impl Seen {
    /// Reads deliveries until `done(self)` holds; fails after `within`.
    fn read_until(&mut self, ws: &mut Ws, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + WITHIN;
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if let Some(v) = next_json(ws) {
                if v["type"] == "message" {
                    let data = v["data"].clone();
                    let topic = v["topic"].as_str().unwrap();
                    let source = data["source"].as_str().unwrap().to_owned();
                    assert_eq!(
                        topic,
                        format!("prices.{source}.{}", data["symbol"].as_str().unwrap()),
                        "{v}"
                    );
                    let tick = data["tick"].as_u64().unwrap();
                    self.by_source.entry(source).or_default().insert(tick, data);
                }
            }
        }
    }

    fn ticks(&self, source: &str) -> Vec<u64> {
        let mut t: Vec<u64> = self
            .by_source
            .get(source)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        t.sort_unstable();
        t
    }

    /// (main, derived) pairs of `channel` for `symbol` with `tick >= from`.
    fn pairs(&self, channel: &str, symbol: &str, from: u64) -> Vec<(&Value, &Value)> {
        let (Some(main), Some(derived)) = (self.by_source.get("main"), self.by_source.get(channel))
        else {
            return Vec::new();
        };
        let mut pairs: Vec<(&Value, &Value)> = derived
            .iter()
            .filter(|(tick, d)| **tick >= from && d["symbol"] == symbol)
            .filter_map(|(tick, d)| main.get(tick).map(|m| (m, d)))
            .collect();
        pairs.sort_by_key(|(m, _)| m["tick"].as_u64());
        pairs
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= RELATIVE_TOLERANCE * b.abs()
}

/// The derived quote is the main quote of the same tick widened by `bps` on each side.
fn assert_derived(main: &Value, derived: &Value, channel: &str, bps: f64) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert_eq!(main["source"], "main");
    assert_eq!(f(main, "marginBps"), 0.0);
    assert_eq!(derived["source"], channel);
    assert_eq!(derived["symbol"], main["symbol"]);
    assert_eq!(derived["ts"], main["ts"], "one upstream update, one time");
    assert_eq!(f(derived, "marginBps"), bps, "{derived}");
    let m = bps / 10_000.0;
    let (bid, ask) = (f(main, "bid") * (1.0 - m), f(main, "ask") * (1.0 + m));
    assert!(
        close(f(derived, "bid"), bid) && close(f(derived, "ask"), ask),
        "derived {derived} is not main {main} widened by {bps} bp (expected bid {bid}, ask {ask})"
    );
}

/// Waits until the sidecar says it is connected and has sent something.
fn wait_connected(pricefeed: SocketAddr, min_connects: u64) -> Value {
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = http(pricefeed, "GET", "/stats", "").body;
        if s["connected"] == true && s["connects"].as_u64().unwrap() >= min_connects {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not connect to the gateway: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn derived_channels_follow_the_main_stream_and_their_rest_api() {
    let (_gw, gateway) = start_gateway("127.0.0.1:0");
    let (mut pf, api) = start_pricefeed(gateway, &[]);
    wait_connected(api, 1);

    // Create: 25 bp on EURUSD, 10 bp on everything else.
    let created = http(
        api,
        "POST",
        "/channels",
        r#"{"name":"vip","defaultMarginBps":10,"margins":{"EURUSD":25}}"#,
    );
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(
        created.head.contains("Location: /channels/vip"),
        "{}",
        created.head
    );
    assert_eq!(created.body["topics"], "prices.vip.{SYMBOL}");
    let listed = http(api, "GET", "/channels", "");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["channels"][0]["name"], "vip");

    let mut ws = subscriber(
        gateway,
        &[
            "prices.main.EURUSD",
            "prices.vip.EURUSD",
            "prices.main.USDJPY",
            "prices.vip.USDJPY",
        ],
    );
    let mut seen = Seen::default();
    seen.read_until(&mut ws, "5 matched EURUSD and USDJPY ticks", |s| {
        s.pairs("vip", "EURUSD", 0).len() >= 5 && s.pairs("vip", "USDJPY", 0).len() >= 5
    });
    for (main, vip) in seen.pairs("vip", "EURUSD", 0) {
        assert_derived(main, vip, "vip", 25.0);
    }
    for (main, vip) in seen.pairs("vip", "USDJPY", 0) {
        assert_derived(main, vip, "vip", 10.0);
    }

    // Update: from `effectiveFromTick` on, the new margins; before it, the old ones.
    let updated = http(
        api,
        "PUT",
        "/channels/vip",
        r#"{"defaultMarginBps":5,"margins":{"EURUSD":40}}"#,
    );
    assert_eq!(updated.status, 200, "{}", updated.body);
    let from = updated.body["effectiveFromTick"].as_u64().unwrap();
    seen.read_until(&mut ws, "5 EURUSD ticks with the new margin", |s| {
        s.pairs("vip", "EURUSD", from).len() >= 5 && s.pairs("vip", "USDJPY", from).len() >= 5
    });
    for symbol in ["EURUSD", "USDJPY"] {
        for (main, vip) in seen.pairs("vip", symbol, 0) {
            let tick = main["tick"].as_u64().unwrap();
            let bps = match (symbol, tick >= from) {
                ("EURUSD", false) => 25.0,
                ("EURUSD", true) => 40.0,
                (_, false) => 10.0,
                (_, true) => 5.0,
            };
            assert_derived(main, vip, "vip", bps);
        }
    }
    let got = http(api, "GET", "/channels/vip", "");
    assert_eq!(got.status, 200);
    assert_eq!(got.body["defaultMarginBps"], 5.0);
    assert_eq!(got.body["margins"], json!({"EURUSD": 40.0}));

    // Delete: nothing derived after `lastTick`, while the main stream goes on (a full second
    // of it: 40 ticks at 2 × 20/s).
    let deleted = http(api, "DELETE", "/channels/vip", "");
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    let last = deleted.body["lastTick"].as_u64().unwrap();
    seen.read_until(&mut ws, "a second of main ticks after the delete", |s| {
        s.ticks("main").last().is_some_and(|t| *t > last + 40)
    });
    let late: Vec<u64> = seen
        .ticks("vip")
        .into_iter()
        .filter(|t| *t > last)
        .collect();
    assert!(
        late.is_empty(),
        "derived ticks after the delete at {last}: {late:?}"
    );
    assert_eq!(http(api, "GET", "/channels/vip", "").status, 404);
    assert_eq!(
        http(api, "GET", "/channels", "").body["channels"],
        json!([])
    );

    // One id per upstream update and none lost: from the first main tick seen to the last,
    // every id arrived (the two subscribed symbols are the feed's only ones).
    let main_ticks = seen.ticks("main");
    let (first, last) = (main_ticks[0], *main_ticks.last().unwrap());
    assert_eq!(
        main_ticks.len() as u64,
        last - first + 1,
        "gaps in {main_ticks:?}"
    );

    assert!(pf.is_running(), "the sidecar died:\n{}", pf.stderr_tail());
}

#[test]
fn bad_rest_input_gets_json_4xx_and_the_feed_keeps_running() {
    let (_gw, gateway) = start_gateway("127.0.0.1:0");
    let (mut pf, api) = start_pricefeed(gateway, &["--channel", "gold:5"]);
    wait_connected(api, 1);

    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/channels", "", 400, "BAD_REQUEST"),
        ("POST", "/channels", "{not json", 400, "BAD_REQUEST"),
        ("POST", "/channels", r#"{"name":"x"}"#, 400, "BAD_REQUEST"),
        (
            "POST",
            "/channels",
            r#"{"name":"x","defaultMarginBps":"ten"}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"x","defaultMargin":1}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"a.b","defaultMarginBps":1}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"x","defaultMarginBps":-3}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"x","defaultMarginBps":1e9}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"x","defaultMarginBps":1,"margins":{"NOPE":1}}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"gold","defaultMarginBps":1}"#,
            409,
            "CONFLICT",
        ),
        (
            "POST",
            "/channels",
            r#"{"name":"main","defaultMarginBps":1}"#,
            409,
            "CONFLICT",
        ),
        (
            "PUT",
            "/channels/gold",
            r#"{"name":"silver","defaultMarginBps":1}"#,
            400,
            "BAD_REQUEST",
        ),
        (
            "PUT",
            "/channels/nope",
            r#"{"defaultMarginBps":1}"#,
            404,
            "NOT_FOUND",
        ),
        ("GET", "/channels/nope", "", 404, "NOT_FOUND"),
        ("DELETE", "/channels/nope", "", 404, "NOT_FOUND"),
        ("GET", "/channels/..%2Fetc", "", 400, "BAD_REQUEST"),
        ("GET", "/nothing-here", "", 404, "NOT_FOUND"),
        ("PATCH", "/channels", "", 405, "METHOD_NOT_ALLOWED"),
    ];
    for (method, path, body, status, code) in cases {
        let a = http(api, method, path, body);
        assert_eq!(a.status, *status, "{method} {path} {body}: {}", a.body);
        assert_eq!(a.body["error"], *code, "{method} {path} {body}: {}", a.body);
        assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Not HTTP at all, a body over the limit, a chunked body, a client that sends half a
    // request and goes away.
    assert_eq!(http_raw(api, b"\x16\x03\x01garbage\r\n\r\n").status, 400);
    let big = format!(
        "POST /channels HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    assert_eq!(http_raw(api, big.as_bytes()).status, 413);
    let chunked = b"POST /channels HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(http_raw(api, chunked).status, 411);
    {
        let mut s = TcpStream::connect(api).unwrap();
        s.write_all(b"POST /channels HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"na")
            .unwrap();
    }

    // Still serving, still publishing, the existing channel untouched.
    let before = http(api, "GET", "/stats", "").body["ticks"]
        .as_u64()
        .unwrap();
    let gold = http(api, "GET", "/channels/gold", "");
    assert_eq!(gold.status, 200);
    assert_eq!(gold.body["defaultMarginBps"], 5.0);
    let deadline = Instant::now() + WITHIN;
    loop {
        let s = http(api, "GET", "/stats", "").body;
        if s["ticks"].as_u64().unwrap() > before + 10 && s["acked"].as_u64().unwrap() > 0 {
            assert_eq!(s["gatewayErrors"], 0, "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "the feed stopped: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pf.is_running(), "the sidecar died:\n{}", pf.stderr_tail());
}

#[test]
fn the_sidecar_reconnects_to_a_gateway_that_went_away() {
    let (gw, gateway) = start_gateway("127.0.0.1:0");
    let (mut pf, api) = start_pricefeed(gateway, &["--channel", "vip:10"]);
    wait_connected(api, 1);

    drop(gw); // SIGKILL: the connection ends without a close frame
    let deadline = Instant::now() + WITHIN;
    while http(api, "GET", "/stats", "").body["connected"] == true {
        assert!(
            Instant::now() < deadline,
            "the sidecar did not notice the gateway is gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pf.is_running(), "the sidecar died:\n{}", pf.stderr_tail());

    // A new gateway on the same address: the sidecar finds it on its own.
    let (_gw2, again) = start_gateway(&gateway.to_string());
    assert_eq!(again, gateway);
    wait_connected(api, 2);
    let mut ws = subscriber(gateway, &["prices.main.EURUSD", "prices.vip.EURUSD"]);
    let mut seen = Seen::default();
    seen.read_until(&mut ws, "main and vip ticks from the new gateway", |s| {
        s.pairs("vip", "EURUSD", 0).len() >= 3
    });
    for (main, vip) in seen.pairs("vip", "EURUSD", 0) {
        assert_derived(main, vip, "vip", 10.0);
    }
    assert!(pf.is_running(), "the sidecar died:\n{}", pf.stderr_tail());
}
