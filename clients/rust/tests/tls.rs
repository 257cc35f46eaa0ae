//! `wss://` against the real gateway with `[tls]`: a private CA given to the client with
//! `tls_config`, subscribe, publish with ack, delivery; a client that does not trust the CA
//! never connects (and says why), while the trusting one keeps working.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{take, wait_event, Gateway};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;
use subsocket_client::{ConnectionState, Event, MicroSocket, RetryPolicy};

const LIMIT: Duration = Duration::from_secs(20);

/// A CA and a `localhost`/`127.0.0.1` certificate it signed, written under `dir`; returns the
/// CA certificate (DER) and the `[tls]` config section.
fn pki(dir: &std::path::Path) -> (rustls::pki_types::CertificateDer<'static>, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    let section = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    (ca.der().clone(), section)
}

fn trusting(ca: rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_subscribe_publish_and_an_untrusting_client_is_refused() {
    let dir = std::env::temp_dir().join(format!("subsocket-client-tls-{}", std::process::id()));
    let (ca, tls) = pki(&dir);
    let gw = Gateway::start(&tls, &[]);
    let wss = |path: &str| format!("wss://localhost:{}{path}", gw.port);
    let cfg = trusting(ca);

    let sub = MicroSocket::builder(wss("/ws/sub/secure"))
        .tls_config(cfg.clone())
        .connect()
        .unwrap();
    let mut stream = sub.stream("secure").unwrap();
    tokio::time::timeout(LIMIT, sub.wait_connected())
        .await
        .expect("connects over wss")
        .unwrap();
    let publisher = MicroSocket::builder(wss("/ws"))
        .tls_config(cfg)
        .connect()
        .unwrap();
    publisher.wait_connected().await.unwrap();
    for i in 1..=5u64 {
        let ack = publisher
            .publish("secure", &json!({ "n": i }), None)
            .await
            .unwrap();
        assert_eq!(ack.seq_no, Some(i));
    }
    let got = take(&mut stream, 5, LIMIT).await;
    assert_eq!(
        got.iter().map(|m| m.seq_no).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(got[4].data.get(), r#"{"n":5}"#);

    // Default roots (webpki) do not know the private CA: the handshake fails, the client
    // reports it and backs off; nothing else is disturbed.
    let stranger = MicroSocket::builder(wss("/ws/sub/secure"))
        .retry(
            RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(100))
                .max_attempts(2),
        )
        .connect()
        .unwrap();
    let mut events = stranger.events();
    let failed = wait_event(&mut events, LIMIT, "gave up", |e| {
        matches!(e, Event::GaveUp { .. })
    })
    .await;
    assert!(
        format!("{failed:?}").to_lowercase().contains("certificate"),
        "{failed:?}"
    );
    assert!(!matches!(
        *stranger.state().borrow(),
        ConnectionState::Connected { .. }
    ));
    publisher
        .publish("secure", &json!({ "n": 6 }), None)
        .await
        .unwrap();
    assert_eq!(take(&mut stream, 1, LIMIT).await[0].seq_no, 6);
    let _ = std::fs::remove_dir_all(&dir);
}
