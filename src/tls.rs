//! TLS (I7): `wss://` and `https://` on the gateway's port, with rustls, and certificates that
//! can be replaced without a restart.
//!
//! Lives here: the `[tls]` configuration, loading a certificate chain and private key from PEM
//! files, the rustls `ServerConfig` every core shares, and the reloader: a certificate resolver
//! whose current key is swapped when the files change (checked every `reload_check_ms`) or on
//! `SIGHUP`. A failed reload keeps the old certificate and logs why. Handshakes in progress and
//! open connections are not disturbed; new handshakes get the new certificate.
//!
//! The per-connection part (decrypting reads, sealing each flush's coalesced bytes into TLS
//! records) lives with the connection in `shard/`. May not: touch sockets or executors.

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

/// `[tls]`: serve `wss://` and `https://` instead of plain text on `bind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
    /// How often to look at the files' modification times and reload when they changed
    /// (milliseconds; 0: only on `SIGHUP`).
    #[serde(default = "default_reload_check_ms")]
    pub reload_check_ms: u64,
}

fn default_reload_check_ms() -> u64 {
    5_000
}

/// Reads and checks a certificate chain and its private key.
pub fn load_certified_key(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad PEM in {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key_file.display()))?;
    let signing_key = provider::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key in {}: {e}", key_file.display()))?;
    let ck = CertifiedKey::new(certs, signing_key);
    ck.keys_match().map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(ck)
}

/// Hands every handshake the current certificate; [`CertResolver::reload`] swaps it.
#[derive(Debug)]
pub struct CertResolver {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of (cert, key) when last loaded.
    loaded_mtimes: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
    /// Successful reloads since start.
    pub reloads: AtomicU64,
    /// Reloads that failed (the old certificate stayed).
    pub reload_failures: AtomicU64,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl CertResolver {
    /// Loads the files once; an error here stops the gateway from starting.
    pub fn new(cfg: &TlsConfig) -> Result<CertResolver, String> {
        let mtimes = (mtime(&cfg.cert_file), mtime(&cfg.key_file));
        let ck = load_certified_key(&cfg.cert_file, &cfg.key_file)?;
        Ok(CertResolver {
            cert_file: cfg.cert_file.clone(),
            key_file: cfg.key_file.clone(),
            current: RwLock::new(Arc::new(ck)),
            loaded_mtimes: Mutex::new(mtimes),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Reloads when forced or when either file's modification time changed. `Ok(true)`: a new
    /// certificate is in use. On error the old one stays.
    pub fn reload(&self, force: bool) -> Result<bool, String> {
        let now = (mtime(&self.cert_file), mtime(&self.key_file));
        let mut loaded = self.loaded_mtimes.lock().unwrap_or_else(|e| e.into_inner());
        if !force && *loaded == now {
            return Ok(false);
        }
        match load_certified_key(&self.cert_file, &self.key_file) {
            Ok(ck) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
                *loaded = now;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                // Remember the failed state so a broken pair is reported once, not every tick.
                *loaded = now;
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What the cores share: the rustls configuration (cheap to clone: an `Arc`).
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub config: Arc<ServerConfig>,
    pub resolver: Arc<CertResolver>,
}

impl TlsServer {
    /// Loads the certificate and builds the server configuration (TLS 1.2 and 1.3, ALPN
    /// `http/1.1`: WebSocket upgrades and plain HTTP are both HTTP/1.1).
    pub fn new(cfg: &TlsConfig) -> Result<TlsServer, String> {
        let resolver = Arc::new(CertResolver::new(cfg)?);
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsServer {
            config: Arc::new(config),
            resolver,
        })
    }

    /// Starts the reloader thread: every `reload_check_ms` (if non-zero) and on `SIGHUP`. It
    /// stops by itself once the resolver is dropped (the gateway stopped).
    pub fn spawn_reloader(&self, reload_check_ms: u64) -> Result<(), String> {
        let hup = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())
            .map_err(|e| format!("cannot watch SIGHUP: {e}"))?;
        let weak: Weak<CertResolver> = Arc::downgrade(&self.resolver);
        let tick = Duration::from_millis(if reload_check_ms == 0 {
            250
        } else {
            reload_check_ms.clamp(10, 250)
        });
        std::thread::Builder::new()
            .name("subsocket-tls-reload".into())
            .spawn(move || {
                let mut since_check = Duration::ZERO;
                loop {
                    std::thread::sleep(tick);
                    since_check += tick;
                    let Some(r) = weak.upgrade() else { return };
                    let forced = hup.swap(false, Ordering::Relaxed);
                    let due = reload_check_ms > 0
                        && since_check >= Duration::from_millis(reload_check_ms);
                    if !forced && !due {
                        continue;
                    }
                    since_check = Duration::ZERO;
                    match r.reload(forced) {
                        Ok(true) => tracing::info!(
                            cert = %r.cert_file.display(),
                            "TLS certificate reloaded{}",
                            if forced { " (SIGHUP)" } else { "" }
                        ),
                        Ok(false) => {}
                        Err(e) => tracing::error!(
                            "TLS certificate reload failed, keeping the old one: {e}"
                        ),
                    }
                }
            })
            .map_err(|e| format!("cannot start the TLS reloader: {e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("subsocket-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_a_pair_and_refuses_mismatches_and_garbage() {
        let d = tmp("load");
        let (c1, k1) = write_pair(&d, "one.test");
        let (_c2, k2) = write_pair(&d, "two.test");
        assert!(load_certified_key(&c1, &k1).is_ok());
        let e = load_certified_key(&c1, &k2).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let junk = d.join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        assert!(load_certified_key(&junk, &k1)
            .unwrap_err()
            .contains("no certificate"));
        assert!(load_certified_key(&c1, &junk).is_err());
        assert!(load_certified_key(&d.join("missing"), &k1).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reload_swaps_on_change_and_keeps_the_old_one_on_error() {
        let d = tmp("reload");
        let (c, k) = write_pair(&d, "a.test");
        let cfg = TlsConfig {
            cert_file: c.clone(),
            key_file: k.clone(),
            reload_check_ms: 0,
        };
        let r = CertResolver::new(&cfg).unwrap();
        let first = r.current();
        assert_eq!(r.reload(false), Ok(false), "unchanged files: nothing to do");
        // New pair under the same names.
        let (c2, k2) = write_pair(&d, "b.test");
        std::fs::rename(&c2, &c).unwrap();
        std::fs::rename(&k2, &k).unwrap();
        assert_eq!(r.reload(true), Ok(true));
        assert_ne!(r.current().cert[0], first.cert[0]);
        // A broken key: the error is reported, the current certificate stays.
        let now = r.current();
        std::fs::write(&k, "broken").unwrap();
        assert!(r.reload(true).is_err());
        assert_eq!(r.current().cert[0], now.cert[0]);
        assert_eq!(r.reload_failures.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&d);
    }
}
