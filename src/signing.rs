//! Message signatures (I7): an HMAC-SHA256 over what a delivery says, so a client can check
//! that a message came from the gateway (or whoever holds the key) unaltered, whatever carried
//! it (proxies, a cluster backbone, a replay from history).
//!
//! The signed bytes are `topic` + `"\n"` + `seqNo` in decimal + `"\n"` + the payload's JSON
//! text exactly as it appears in the frame's `data` (the bytes the publisher sent). The
//! signature is lowercase hex, carried as `"sig"` next to `"kid"` (the key's id, so keys can
//! rotate). The owner core signs once per publish, when it builds the frame.
//!
//! Pure: no I/O except [`Signer::from_file`], which reads the key once at startup.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

/// Shortest accepted key: 32 bytes (HMAC-SHA256's block-size guidance is 32 to 64).
pub const MIN_KEY_BYTES: usize = 32;

/// Signs deliveries with one key.
#[derive(Clone)]
pub struct Signer {
    key_id: String,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `key` (at least [`MIN_KEY_BYTES`]) named `key_id`.
    pub fn new(key_id: &str, key: &[u8]) -> Result<Signer, String> {
        if key_id.is_empty()
            || !key_id
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(
                "signing key_id must be non-empty printable ASCII without quotes or backslashes"
                    .into(),
            );
        }
        if key.len() < MIN_KEY_BYTES {
            return Err(format!(
                "signing key is {} bytes; at least {MIN_KEY_BYTES} are required",
                key.len()
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
        Ok(Signer {
            key_id: key_id.to_owned(),
            mac,
        })
    }

    /// Reads the key as hex from `path` (whitespace ignored).
    pub fn from_file(key_id: &str, path: &Path) -> Result<Signer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read signing key {}: {e}", path.display()))?;
        let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let key = hex::decode(&hex)
            .map_err(|e| format!("signing key {}: not hex: {e}", path.display()))?;
        Signer::new(key_id, &key)
    }

    /// The key's id (`kid`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The lowercase hex HMAC-SHA256 of `topic \n seqNo \n data`.
    pub fn sign(&self, topic: &str, seq_no: u64, data: &[u8]) -> String {
        let mut mac = self.mac.clone();
        feed(&mut mac, topic, seq_no, data);
        hex::encode(mac.finalize().into_bytes())
    }
}

/// Checks a signature the way a client does (used by tests and the Rust client docs).
/// Constant-time comparison.
pub fn verify(key: &[u8], topic: &str, seq_no: u64, data: &[u8], sig_hex: &str) -> bool {
    let Ok(sig) = hex::decode(sig_hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    feed(&mut mac, topic, seq_no, data);
    mac.verify_slice(&sig).is_ok()
}

fn feed(mac: &mut Hmac<Sha256>, topic: &str, seq_no: u64, data: &[u8]) {
    mac.update(topic.as_bytes());
    mac.update(b"\n");
    mac.update(seq_no.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn sign_then_verify_and_any_change_breaks_it() {
        let s = Signer::new("k1", KEY).unwrap();
        let sig = s.sign("prices.eu", 42, br#"{"p":1}"#);
        assert_eq!(sig.len(), 64);
        assert!(verify(KEY, "prices.eu", 42, br#"{"p":1}"#, &sig));
        assert!(!verify(KEY, "prices.eu", 43, br#"{"p":1}"#, &sig), "seqNo");
        assert!(!verify(KEY, "prices.us", 42, br#"{"p":1}"#, &sig), "topic");
        assert!(
            !verify(KEY, "prices.eu", 42, br#"{"p":2}"#, &sig),
            "payload"
        );
        assert!(!verify(
            b"another key, 32 bytes long......",
            "prices.eu",
            42,
            br#"{"p":1}"#,
            &sig
        ));
        assert!(!verify(KEY, "prices.eu", 42, br#"{"p":1}"#, "zz"));
    }

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // Computed independently with Python's hmac module over "a\n1\n{}":
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"0123456789abcdef0123456789abcdef", b"a\n1\n{}", hashlib.sha256).hexdigest())'
        let s = Signer::new("k", KEY).unwrap();
        assert_eq!(
            s.sign("a", 1, b"{}"),
            "0225329dcd002053d754d1657228e936ac1ffa77a0ba759c8a63ec48696c256c"
        );
    }

    #[test]
    fn short_keys_and_bad_ids_are_refused() {
        assert!(Signer::new("k", b"short").is_err());
        assert!(Signer::new("", KEY).is_err());
        assert!(Signer::new("a\"b", KEY).is_err());
        assert!(!format!("{:?}", Signer::new("k", KEY).unwrap()).contains("0123"));
    }
}
