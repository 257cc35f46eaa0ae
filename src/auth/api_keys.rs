//! API keys for `POST /publish/{topic}`: parsing `[[auth.api_keys]]` ([`ApiKey`]) and
//! [`Authenticator::verify_api_key`], which compares the SHA-256 of a presented key with every
//! configured digest in constant time.
//!
//! Lives here: the digest checks and the `apikey:<id>` identity (write rules only). May touch:
//! the [`Authenticator`]'s `api_keys` (`mod.rs`), [`ApiKeyConfig`], [`Grants`]. May not: see
//! tokens or keys, or stop comparing at the first match (timing would tell which key matched).
//!
//! Read next: nothing further in `auth`; back to `mod.rs` for how the engine uses it.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::{ApiKeyConfig, AuthError, AuthFailure, Authenticator, Grants, GrantsConfig, Identity};

/// A configured API key.
pub(super) struct ApiKey {
    /// SHA-256 of the key, compared in constant time.
    digest: [u8; 32],
    /// `apikey:<id>` with the key's write rules.
    pub(super) identity: Identity,
}

/// Every `[[auth.api_keys]]` entry, parsed; ids must be unique. Errors name the entry.
pub(super) fn parse_api_keys(cfg: &[ApiKeyConfig]) -> Result<Vec<ApiKey>, String> {
    let api_keys = cfg
        .iter()
        .enumerate()
        .map(|(i, k)| parse_api_key(i, k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ids = HashSet::new();
    for k in cfg {
        if !ids.insert(k.id.as_str()) {
            return Err(format!("auth.api_keys: id {:?} appears twice", k.id));
        }
    }
    Ok(api_keys)
}

impl Authenticator {
    /// Whether API keys are configured: then `POST /publish` requires one.
    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// The identity (`apikey:<id>`, write rules only) of an API key from
    /// `Authorization: Bearer <key>`. The key's SHA-256 is compared in constant time with every
    /// configured digest, without stopping at a match.
    pub fn verify_api_key(&self, key: &str) -> Result<Identity, AuthError> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, k) in self.api_keys.iter().enumerate() {
            let eq = k.digest.ct_eq(&digest);
            // An index fits u32: a config holds a handful of keys, far below u32::MAX.
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        if key.is_empty() || !bool::from(found) {
            return Err(AuthFailure::BadApiKey.into());
        }
        Ok(self.api_keys[index as usize].identity.clone())
    }
}

fn parse_api_key(i: usize, k: &ApiKeyConfig) -> Result<ApiKey, String> {
    let context = format!("auth.api_keys[{i}] ({:?})", k.id);
    if k.id.is_empty() {
        return Err(format!("{context}: id must not be empty"));
    }
    let digest: [u8; 32] = hex::decode(k.sha256.trim())
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| {
            format!(
                "{context}: sha256 must be 64 hex digits, the SHA-256 of the key \
                 (printf %s \"$KEY\" | sha256sum)"
            )
        })?;
    let grants = Grants::from_config(
        &GrantsConfig {
            read: Vec::new(),
            write: k.write.clone(),
        },
        &context,
    )?;
    if grants.write.is_empty() {
        return Err(format!(
            "{context}: write is empty, the key could publish nowhere"
        ));
    }
    Ok(ApiKey {
        digest,
        identity: Identity::new(&format!("apikey:{}", k.id), grants),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::auth::AuthConfig;

    // --- API keys --------------------------------------------------------------------------------

    fn api_config() -> AuthConfig {
        let key = |id: &str, key: &str, write: &str| ApiKeyConfig {
            id: id.into(),
            sha256: hex::encode(Sha256::digest(key.as_bytes())),
            write: vec![write.into()],
        };
        AuthConfig {
            api_keys: vec![
                key("feed", "feed-key", "prices.*"),
                key("ops", "ops-key", "*"),
            ],
            ..AuthConfig::default()
        }
    }

    #[test]
    fn api_keys_match_in_constant_time_by_digest() {
        let a = auth(&api_config());
        assert!(a.has_api_keys());
        let feed = a.verify_api_key("feed-key").unwrap();
        assert_eq!(&*feed.subject, "apikey:feed");
        assert!(feed.check_write("prices.BTC").is_ok());
        assert!(feed.check_write("orders.1").is_err());
        assert!(feed.check_read("prices.BTC").is_err());
        assert_eq!(&*a.verify_api_key("ops-key").unwrap().subject, "apikey:ops");
        for wrong in ["", "feed-key ", "FEED-KEY", "ops", "feed-key\n"] {
            assert_eq!(
                unauthorized(a.verify_api_key(wrong)),
                AuthFailure::BadApiKey,
                "{wrong:?}"
            );
        }
        assert!(!auth(&AuthConfig::default()).has_api_keys());
        assert_eq!(
            unauthorized(auth(&AuthConfig::default()).verify_api_key("x")),
            AuthFailure::BadApiKey
        );
    }

    #[test]
    fn api_key_config_errors() {
        let mut cfg = api_config();
        cfg.api_keys[0].sha256 = "abc".into();
        assert!(Authenticator::new(&cfg)
            .unwrap_err()
            .contains("64 hex digits"));
        let mut cfg = api_config();
        cfg.api_keys[1].id = "feed".into();
        assert!(Authenticator::new(&cfg).unwrap_err().contains("twice"));
        let mut cfg = api_config();
        cfg.api_keys[0].write.clear();
        assert!(Authenticator::new(&cfg)
            .unwrap_err()
            .contains("publish nowhere"));
    }
}
