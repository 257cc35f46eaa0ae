//! I7: TLS on a running gateway: `wss://` subscribe and publish, `https://` HTTP, large
//! messages over many records, a slow reader (the blocked-writer path seals records too),
//! a plain-text client on the TLS port, an event stream (`/sse`) resumed over TLS, and
//! certificates replaced on disk without a restart.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subsocket::tls::TlsConfig;

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;
type Wss = tungstenite::WebSocket<TlsStream>;

/// A test CA and a way to issue `localhost` certificates from it.
struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "subsocket test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let dir = std::env::temp_dir().join(format!("subsocket-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { ca, ca_key, dir }
    }

    /// Issues a `localhost` certificate and writes it (and its key) to server.crt/server.key;
    /// returns its DER.
    fn issue(&self, cn: &str) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        // Write to temp names, then rename: a reload never sees half a file.
        let (c, k) = (
            self.dir.join("server.crt.tmp"),
            self.dir.join("server.key.tmp"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::rename(&k, self.key_path()).unwrap();
        std::fs::rename(&c, self.cert_path()).unwrap();
        cert.der().clone()
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join("server.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_tls(pki: &Pki, tweak: impl FnOnce(&mut subsocket::config::Config)) -> TestGateway {
    let (cert, key) = (pki.cert_path(), pki.key_path());
    start_with(move |c| {
        c.tls = Some(TlsConfig {
            cert_file: cert,
            key_file: key,
            reload_check_ms: 100,
        });
        tweak(c);
    })
}

fn tls_connect(pki: &Pki, addr: SocketAddr) -> TlsStream {
    let tcp = tcp(addr);
    let conn = rustls::ClientConnection::new(
        pki.client_config(),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn wss(pki: &Pki, addr: SocketAddr, path: &str) -> Wss {
    let stream = tls_connect(pki, addr);
    match tungstenite::client::client(format!("wss://localhost:{}{path}", addr.port()), stream) {
        Ok((ws, _)) => ws,
        Err(e) => panic!("wss upgrade failed: {e}"),
    }
}

fn recv(ws: &mut Wss) -> Value {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return serde_json::from_str(&t).unwrap(),
            Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

fn send(ws: &mut Wss, v: Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

/// One HTTP/1.1 request over TLS; returns (status, body).
fn https(pki: &Pki, addr: SocketAddr, raw: &str) -> (u16, String) {
    let mut s = tls_connect(pki, addr);
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out); // the server closes (Connection: close)
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn peer_cert(pki: &Pki, addr: SocketAddr) -> CertificateDer<'static> {
    let mut s = tls_connect(pki, addr);
    // Drive the handshake with a request.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    s.conn.peer_certificates().expect("a certificate")[0].clone()
}

#[test]
fn an_event_stream_over_tls_gets_its_deliveries_and_resumes() {
    let pki = Pki::new("sse");
    pki.issue("sse");
    let gw = start_tls(&pki, |_| {});
    let mut s = tls_connect(&pki, gw.addr);
    s.write_all(&sse_request("/sse/sub/secure", "")).unwrap();
    let mut s = SseClient::start(s);
    assert_eq!(s.expect_event("subscribed").json()["topic"], "secure");
    let mut p = wss(&pki, gw.addr, "/ws");
    for i in 1..=3 {
        send(
            &mut p,
            json!({"type": "publish", "topic": "secure", "payload": {"i": i}}),
        );
        assert_eq!(recv(&mut p)["type"], "ack");
    }
    for i in 1..=3u64 {
        let (id, v) = s.next_delivery();
        assert_eq!(id, i.to_string());
        assert_eq!(v["data"], json!({"i": i}));
    }
    drop(s);
    let mut r = tls_connect(&pki, gw.addr);
    r.write_all(&sse_request("/sse/sub/secure", "Last-Event-ID: 1\r\n"))
        .unwrap();
    let mut r = SseClient::start(r);
    r.expect_event("subscribed");
    let seqs: Vec<String> = (0..2).map(|_| r.next_delivery().0).collect();
    assert_eq!(seqs, ["2", "3"], "resumed over TLS from history");
}

#[test]
fn wss_and_https_carry_the_protocol() {
    let pki = Pki::new("basic");
    pki.issue("first");
    let gw = start_tls(&pki, |_| {});
    let mut sub = wss(&pki, gw.addr, "/ws/sub/prices");
    assert_eq!(
        recv(&mut sub),
        json!({"type":"subscribed","topic":"prices"})
    );
    let mut publisher = wss(&pki, gw.addr, "/ws");
    send(
        &mut publisher,
        json!({"type":"publish","topic":"prices","messageId":"m1","payload":{"p":1}}),
    );
    assert_eq!(recv(&mut publisher)["status"], "ok");
    assert_eq!(recv(&mut sub)["data"], json!({"p":1}));
    // A large message crosses several TLS records both ways.
    let big = "x".repeat(60_000);
    send(
        &mut publisher,
        json!({"type":"publish","topic":"prices","messageId":"m2","payload":big}),
    );
    assert_eq!(recv(&mut publisher)["seqNo"], 2);
    assert_eq!(recv(&mut sub)["data"].as_str().map(str::len), Some(60_000));
    // HTTPS on the same port.
    let (status, body) = https(
        &pki,
        gw.addr,
        "POST /publish/prices HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 7\r\n\r\n{\"p\":3}",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(recv(&mut sub)["seqNo"], 3);
    let (status, body) = https(
        &pki,
        gw.addr,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["subscriptions"], 1, "{s}");
}

#[test]
fn a_burst_to_a_slow_reader_arrives_whole_and_in_order() {
    let pki = Pki::new("burst");
    pki.issue("first");
    // A tiny send buffer makes writes block, so the blocked-writer path seals records too.
    let gw = start_tls(&pki, |c| c.socket_send_buffer_bytes = 4096);
    let mut sub = wss(&pki, gw.addr, "/ws/sub/t");
    recv(&mut sub);
    let mut publisher = connect_plain_publisher(&pki, gw.addr);
    const N: u64 = 2_000;
    let payload = format!("\"{}\"", "y".repeat(300));
    for i in 1..=N {
        send(
            &mut publisher,
            serde_json::from_str(&format!(
                r#"{{"type":"publish","topic":"t","payload":{payload}}}"#
            ))
            .unwrap(),
        );
        if i % 200 == 0 {
            // Let acks drain now and then (the publisher reads them at the end otherwise).
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(300)); // the subscriber is slow to start reading
    for i in 1..=N {
        let m = recv(&mut sub);
        assert_eq!(m["seqNo"], i, "{m}");
    }
    let blocked = stats_tls(&pki, gw.addr)["writesBlocked"].as_u64().unwrap();
    assert!(
        blocked > 0,
        "the test must exercise the blocked-writer path"
    );
}

fn connect_plain_publisher(pki: &Pki, addr: SocketAddr) -> Wss {
    wss(pki, addr, "/ws")
}

fn stats_tls(pki: &Pki, addr: SocketAddr) -> Value {
    let (status, body) = https(
        pki,
        addr,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[test]
fn plain_text_on_the_tls_port_is_refused_and_others_are_unaffected() {
    let pki = Pki::new("plain");
    pki.issue("first");
    let gw = start_tls(&pki, |_| {});
    let mut sub = wss(&pki, gw.addr, "/ws/sub/t");
    recv(&mut sub);
    // A plain HTTP request to the TLS port: not a ClientHello; the socket is closed.
    let mut plain = tcp(gw.addr);
    plain
        .write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(socket_ends_within(&mut plain, Duration::from_secs(3)));
    // A client that does not trust the certificate fails its handshake.
    let other = Pki::new("other-ca");
    let mut s = tls_connect(&other, gw.addr);
    assert!(
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() || {
            let mut b = [0u8; 1];
            s.read(&mut b).is_err()
        }
    );
    let st = stats_tls(&pki, gw.addr);
    assert!(st["tlsHandshakeFailures"].as_u64() >= Some(1), "{st}");
    // The subscriber still works.
    let (status, _) = https(
        &pki,
        gw.addr,
        "POST /publish/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\n1",
    );
    assert_eq!(status, 200);
    assert_eq!(recv(&mut sub)["seqNo"], 1);
}

#[test]
fn certificates_are_reloaded_from_disk_without_a_restart() {
    let pki = Pki::new("reload");
    let first = pki.issue("first");
    let gw = start_tls(&pki, |_| {});
    assert_eq!(peer_cert(&pki, gw.addr), first);
    let mut open = wss(&pki, gw.addr, "/ws/sub/t");
    recv(&mut open);
    // mtime granularity: make sure the new files look different.
    std::thread::sleep(Duration::from_millis(20));
    let second = pki.issue("second");
    assert_ne!(first, second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer_cert(&pki, gw.addr) != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Connections opened before the reload carry on.
    let (status, _) = https(
        &pki,
        gw.addr,
        "POST /publish/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\n\r\n7",
    );
    assert_eq!(status, 200);
    assert_eq!(recv(&mut open)["data"], 7);
    // A broken pair on disk is refused: the gateway keeps serving the last good one.
    std::fs::write(pki.key_path(), "garbage").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(peer_cert(&pki, gw.addr), second);
}

#[test]
fn a_missing_certificate_stops_the_gateway_from_starting() {
    let mut cfg = test_config();
    cfg.tls = Some(TlsConfig {
        cert_file: Path::new("/nonexistent/server.crt").into(),
        key_file: Path::new("/nonexistent/server.key").into(),
        reload_check_ms: 0,
    });
    let Err(e) = subsocket::gateway::start(cfg) else {
        panic!("must not start without its certificate");
    };
    assert!(e.contains("[tls]") && e.contains("server.crt"), "{e}");
}
