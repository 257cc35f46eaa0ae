//! The `[auth]` table as written in the config: [`AuthConfig`], its parts ([`AuthMode`],
//! [`GrantsConfig`], [`ApiKeyConfig`]) and its defaults.
//!
//! Lives here: serde shapes and defaults, which mode is in force
//! ([`AuthConfig::effective_mode`]), and a `Debug` that never prints the HS256 secret. May
//! touch: nothing else of the crate. May not: read files, parse topic rules or keys (that is
//! `rules.rs` and `keys.rs`, reached through `Authenticator::new` in `mod.rs`).
//!
//! Read next: `rules.rs`, what a [`GrantsConfig`] becomes.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// Default clock skew allowed on `exp` / `nbf`, in seconds.
pub const DEFAULT_LEEWAY_S: u64 = 30;

/// Whether connections must present a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication: everyone is `anonymous` with read/write `*` (local demos).
    None,
    /// JWTs, with the configured anonymous grants for connections without one.
    Jwt,
}

impl FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(AuthMode::None),
            "jwt" => Ok(AuthMode::Jwt),
            other => Err(format!("auth mode {other:?}: expected \"none\" or \"jwt\"")),
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Jwt => "jwt",
        })
    }
}

/// Static read/write rules, as written in the config (parsed by [`Grants::from_config`](super::Grants::from_config)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsConfig {
    /// Topic rules this entry may read.
    pub read: Vec<String>,
    /// Topic rules this entry may write.
    pub write: Vec<String>,
}

/// One API key for HTTP publish. Only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs and the identity `apikey:<id>`; unique.
    pub id: String,
    /// Hex SHA-256 of the key (64 digits).
    pub sha256: String,
    /// Topic rules the key may publish to; must not be empty.
    pub write: Vec<String>,
}

/// The `[auth]` table.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `jwt`. Absent: `jwt` when a key (secret, PEM, JWKS) is configured, `none`
    /// otherwise, so writing a key without a mode never leaves the gateway open by mistake.
    pub mode: Option<AuthMode>,
    /// The HS256 shared secret, inline. Use at least 32 random bytes.
    pub hs256_secret: Option<String>,
    /// A file holding the HS256 secret (trailing newline ignored); excludes `hs256_secret`.
    pub hs256_secret_file: Option<PathBuf>,
    /// Public keys in PEM (RSA or EC SubjectPublicKeyInfo, or PKCS#1 RSA), one per file.
    pub public_key_pem_files: Vec<PathBuf>,
    /// A JWKS JSON file (`{"keys":[…]}`); its keys are selected by the token's `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's), when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    /// Refuse tokens without `exp` (default true).
    pub require_exp: bool,
    /// Claim holding the read rules.
    pub claim_read: String,
    /// Claim holding the write rules.
    pub claim_write: String,
    /// Claim holding role names.
    pub claim_roles: String,
    /// Role name -> rules, expanded from the roles claim.
    pub roles: HashMap<String, GrantsConfig>,
    /// What a connection without a token may do under `jwt`; absent: it is refused.
    pub anonymous: Option<GrantsConfig>,
    /// API keys for `POST /publish/{topic}`, in either mode.
    pub api_keys: Vec<ApiKeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: None,
            hs256_secret: None,
            hs256_secret_file: None,
            public_key_pem_files: Vec::new(),
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_s: DEFAULT_LEEWAY_S,
            require_exp: true,
            claim_read: "read".to_owned(),
            claim_write: "write".to_owned(),
            claim_roles: "roles".to_owned(),
            roles: HashMap::new(),
            anonymous: None,
            api_keys: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// The mode in force: the configured one, or `jwt` when a key is configured, else `none`.
    pub fn effective_mode(&self) -> AuthMode {
        self.mode.unwrap_or(
            if self.hs256_secret.is_some()
                || self.hs256_secret_file.is_some()
                || !self.public_key_pem_files.is_empty()
                || self.jwks_file.is_some()
            {
                AuthMode::Jwt
            } else {
                AuthMode::None
            },
        )
    }
}

/// Hand-written so the HS256 secret never reaches a log.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("mode", &self.mode)
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("hs256_secret_file", &self.hs256_secret_file)
            .field("public_key_pem_files", &self.public_key_pem_files)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_s", &self.leeway_s)
            .field("require_exp", &self.require_exp)
            .field("claim_read", &self.claim_read)
            .field("claim_write", &self.claim_write)
            .field("claim_roles", &self.claim_roles)
            .field("roles", &self.roles)
            .field("anonymous", &self.anonymous)
            .field("api_keys", &self.api_keys)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;

    #[test]
    fn config_parses_from_toml() {
        let cfg: AuthConfig = toml::from_str(
            r#"
            hs256_secret = "s3cret"
            issuer = "me"
            leeway_s = 5
            [anonymous]
            read = ["public.*"]
            [roles.admin]
            read = ["*"]
            write = ["*"]
            [[api_keys]]
            id = "feed"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            write = ["prices.*"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.effective_mode(), AuthMode::Jwt);
        assert_eq!(cfg.leeway_s, 5);
        assert!(cfg.require_exp);
        assert_eq!(cfg.claim_roles, "roles");
        assert!(!format!("{cfg:?}").contains("s3cret"));
        assert!(Authenticator::new(&cfg).is_ok());
        assert!(toml::from_str::<AuthConfig>("mode = \"jwt\"\nsecret = \"x\"").is_err());
    }
}
