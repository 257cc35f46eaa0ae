//! I1 access control: token -> [`Identity`] -> topic read/write rules.
//!
//! Lives here: the `[auth]` configuration ([`AuthConfig`]), topic rules ([`TopicPattern`],
//! [`Grants`]), JWT verification (HS256 shared secret; RS256/ES256 public keys from PEM files or
//! a JWKS file, via `jsonwebtoken`), the anonymous identity, and API keys for HTTP publish. May
//! not: touch sockets or executors, or keep time. Pure and synchronous: files are read once in
//! [`Authenticator::new`], and every check takes the current time as `now_unix` from the caller,
//! so tests can pin it. An [`Authenticator`] is `Send + Sync`: build it once, share it with
//! every shard behind an `Arc`. An [`Identity`] is two `Arc`s and an integer, cheap to clone
//! and free to cross cores.
//!
//! # Where checks happen (the engine's duty)
//! - A connection gets its identity from a token in `setup.token`, `?token=` on the upgrade URL,
//!   or an `Authorization: Bearer` header ([`bearer_token`]), through
//!   [`Authenticator::authenticate`]. Without a token it is the anonymous identity, if the
//!   config grants one; otherwise `UNAUTHORIZED`.
//! - Every `subscribe`, `replay` and `resume` topic is checked with [`Identity::check_read`],
//!   every `publish` with [`Identity::check_write`]; a refusal is `FORBIDDEN` naming the topic
//!   ([`AuthError::to_proto`]).
//! - `POST /publish/{topic}` takes an API key ([`Authenticator::verify_api_key`]) when keys are
//!   configured ([`Authenticator::has_api_keys`]), then [`Identity::check_write`].
//!
//! # Token expiry on a live connection (a documented choice)
//! A token is checked in full once, when it is presented. [`Identity::expires_at`] keeps the
//! moment it stops being honoured (`exp` plus the configured leeway). When that moment passes
//! on a live connection, the engine sends `{"type":"error","code":"UNAUTHORIZED","message":
//! "token expired"}` and closes the connection with close code 1008 (policy violation); the
//! client reconnects with a fresh token and `resume`s. We close rather than keep serving
//! because a subscription would otherwise outlive the rights it was granted, and we do not add
//! a "refresh token in place" message because the protocol has none. The engine does the timing
//! (a timer per connection, or a sweep); this module only answers [`Identity::is_expired`].
//!
//! # Topic rules
//! A rule is an exact topic name (`orders.42`), a prefix wildcard (`prices.*` matches
//! `prices.` followed by at least one byte, at any depth: `prices.BTC`, `prices.BTC.usd`, but
//! not `prices` nor `pricesX`), or `*` (every topic). A `*` anywhere else is a config or token
//! error, so a typo never silently grants less or more than meant.
//!
//! # Claims
//! `sub` is the identity and is required. `read` and `write` (names configurable) are arrays
//! of rules (a single string is accepted as a one-element array). `roles` is an array of role
//! names expanded through `[auth.roles]`; a role the config does not know grants nothing (an
//! identity provider may carry roles meant for other services). The identity's grants are the
//! union of all of these. `exp` is required unless `require_exp = false`; `exp` and `nbf` are
//! checked against `now_unix` with `leeway_s` of clock skew either way. `iss` and `aud` are
//! required and checked when `issuer` / `audience` are configured; a token that carries an
//! `aud` is rejected when no `audience` is configured (RFC 7519 4.1.3: a recipient that does
//! not identify itself with the audience must reject the token).
//!
//! # Keys and algorithms
//! Each key accepts only its own family, so a token cannot pick a weaker algorithm or use a
//! public key as an HMAC secret: the shared secret takes HS256; an RSA key RS256/RS384/RS512
//! (PS256/PS384/PS512 too); an EC key ES256/ES384; an Ed25519 key EdDSA. A JWKS key with an
//! `alg` takes only that one. A token with a `kid` header is checked against the keys with that
//! `kid` and the keys without one (PEM files, the shared secret); a token without `kid` against
//! every key of its algorithm, first match wins. JWKS keys with `"use": "enc"` are skipped.
//! Paths are used as given (relative ones against the working directory).
//!
//! # API keys
//! The config holds only the SHA-256 of each key (`printf %s "$KEY" | sha256sum`), never the key.
//! A presented key is hashed and compared with every configured digest by
//! `subtle::ConstantTimeEq`, without stopping at a match, so timing reveals neither which key
//! matched nor how many leading bytes did.
//!
//! # Example
//! ```toml
//! [auth]
//! mode = "jwt"                      # "none": everyone is "anonymous" with read/write "*"
//! hs256_secret_file = "/etc/subsocket/hs256.secret"   # or hs256_secret = "…"
//! public_key_pem_files = ["/etc/subsocket/issuer-rsa.pub.pem", "/etc/subsocket/issuer-ec.pub.pem"]
//! jwks_file = "/etc/subsocket/jwks.json"              # keys selected by `kid`
//! issuer = "https://id.example.com/"
//! audience = "subsocket"
//! leeway_s = 30                     # clock skew allowed on exp / nbf, seconds
//! require_exp = true
//! claim_read = "read"               # claim names holding rule arrays and role names
//! claim_write = "write"
//! claim_roles = "roles"
//!
//! [auth.anonymous]                  # no token: may read public topics; omit to refuse (UNAUTHORIZED)
//! read = ["public.*"]
//!
//! [auth.roles.trader]
//! read = ["prices.*", "orders.*"]
//! write = ["orders.*"]
//!
//! [auth.roles.admin]
//! read = ["*"]
//! write = ["*"]
//!
//! [[auth.api_keys]]                 # for POST /publish/{topic}: Authorization: Bearer <key>
//! id = "price-feed"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! write = ["prices.*"]
//! ```
//!
//! # Reading order
//! This file is the facade: the public names (re-exported from the files below, so every item
//! is reached as `crate::auth::X`), the [`Authenticator`] and how it is built, and
//! [`bearer_token`]. Then, one job per file:
//! 1. `config.rs`: the `[auth]` table as written ([`AuthConfig`]) and its defaults. Parses only.
//! 2. `rules.rs`: topic rules ([`TopicPattern`]) and what an identity may do ([`Grants`]).
//! 3. `identity.rs`: [`Identity`] and the errors of a refused credential or topic.
//! 4. `keys.rs`: verification keys from the shared secret, PEM files and a JWKS file.
//! 5. `jwt.rs`: [`Authenticator::verify`]: a token -> its claims -> an [`Identity`].
//! 6. `api_keys.rs`: API keys for HTTP publish ([`Authenticator::verify_api_key`]).
//!
//! Only this file and `jwt.rs` / `api_keys.rs` (which add `impl Authenticator` blocks) see the
//! [`Authenticator`]'s fields; the other files know nothing of it.

mod api_keys;
mod config;
mod identity;
mod jwt;
mod keys;
mod rules;
#[cfg(test)]
mod test_support;

use std::collections::HashMap;
use std::fmt;

use api_keys::ApiKey;
use keys::VerifyKey;

pub use config::{ApiKeyConfig, AuthConfig, AuthMode, GrantsConfig, DEFAULT_LEEWAY_S};
pub use identity::{AuthError, AuthFailure, Identity, ANONYMOUS_SUBJECT};
pub use rules::{Access, Grants, TopicPattern};

/// Verifies credentials. Built once from [`AuthConfig`]; `Send + Sync`, share it by `Arc`.
pub struct Authenticator {
    /// The mode in force ([`AuthConfig::effective_mode`]).
    mode: AuthMode,
    /// Every key a token may be signed with.
    keys: Vec<VerifyKey>,
    /// Clock skew on `exp` / `nbf`, seconds.
    leeway_s: u64,
    /// Refuse tokens without `exp`.
    require_exp: bool,
    /// Claim names (configurable).
    claim_read: String,
    /// See `claim_read`.
    claim_write: String,
    /// See `claim_read`.
    claim_roles: String,
    /// Parsed `[auth.roles]`.
    roles: HashMap<String, Grants>,
    /// The identity of connections without a token, if any may connect.
    anonymous: Option<Identity>,
    /// Parsed `[[auth.api_keys]]`.
    api_keys: Vec<ApiKey>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(|k| k.source.as_str()).collect();
        let roles: Vec<&str> = self.roles.keys().map(String::as_str).collect();
        let api_keys: Vec<&str> = self.api_keys.iter().map(|k| &*k.identity.subject).collect();
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("keys", &keys)
            .field("roles", &roles)
            .field("anonymous", &self.anonymous)
            .field("api_keys", &api_keys)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Reads the key files and parses every rule. Errors name the setting at fault.
    pub fn new(cfg: &AuthConfig) -> Result<Self, String> {
        let mode = cfg.effective_mode();

        let mut roles = HashMap::with_capacity(cfg.roles.len());
        for (name, grants) in &cfg.roles {
            roles.insert(
                name.clone(),
                Grants::from_config(grants, &format!("auth.roles.{name}"))?,
            );
        }

        let api_keys = api_keys::parse_api_keys(&cfg.api_keys)?;

        let (keys, anonymous) = match mode {
            AuthMode::None => (
                Vec::new(),
                Some(Identity::new(ANONYMOUS_SUBJECT, Grants::full())),
            ),
            AuthMode::Jwt => {
                let keys = keys::load_keys(cfg)?;
                if keys.is_empty() {
                    return Err("auth.mode = \"jwt\" needs a key: hs256_secret, \
                                hs256_secret_file, public_key_pem_files or jwks_file"
                        .to_owned());
                }
                let anonymous = match &cfg.anonymous {
                    Some(g) => Some(Identity::new(
                        ANONYMOUS_SUBJECT,
                        Grants::from_config(g, "auth.anonymous")?,
                    )),
                    None => None,
                };
                (keys, anonymous)
            }
        };

        Ok(Authenticator {
            mode,
            keys,
            leeway_s: cfg.leeway_s,
            require_exp: cfg.require_exp,
            claim_read: cfg.claim_read.clone(),
            claim_write: cfg.claim_write.clone(),
            claim_roles: cfg.claim_roles.clone(),
            roles,
            anonymous,
            api_keys,
        })
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether connections authenticate (`setup` before anything else): false for `none`.
    pub fn required(&self) -> bool {
        self.mode == AuthMode::Jwt
    }

    /// The identity of a connection without a token: full access under `none`; under `jwt`
    /// the configured anonymous grants, or `None` when anonymous connections are refused.
    pub fn anonymous(&self) -> Option<Identity> {
        self.anonymous.clone()
    }

    /// A connection's identity from its token, if any. Under `none` the token is ignored (not
    /// even parsed) and everyone is anonymous with full access; under `jwt` a token is verified
    /// and no token means [`Authenticator::anonymous`] or `UNAUTHORIZED`.
    pub fn authenticate(&self, token: Option<&str>, now_unix: u64) -> Result<Identity, AuthError> {
        match (self.mode, token) {
            (AuthMode::None, _) | (AuthMode::Jwt, None) => {
                self.anonymous().ok_or(AuthFailure::Missing.into())
            }
            (AuthMode::Jwt, Some(token)) => self.verify(token, now_unix),
        }
    }
}

/// The token of an `Authorization` header value: `Bearer <token>`, scheme case-insensitive.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let value = header_value.trim();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    // --- anonymous, modes, config errors ---------------------------------------------------------

    #[test]
    fn anonymous_access_follows_the_config() {
        let closed = auth(&hs_config());
        assert_eq!(closed.anonymous(), None);
        assert_eq!(
            unauthorized(closed.authenticate(None, NOW)),
            AuthFailure::Missing
        );

        let open = auth(&AuthConfig {
            anonymous: Some(GrantsConfig {
                read: vec!["public.*".into()],
                write: vec![],
            }),
            ..hs_config()
        });
        let anon = open.authenticate(None, NOW).unwrap();
        assert_eq!(&*anon.subject, ANONYMOUS_SUBJECT);
        assert!(anon.check_read("public.news").is_ok());
        assert!(anon.check_read("private").is_err());
        assert!(anon.check_write("public.news").is_err());
        assert!(!anon.is_expired(u64::MAX));
        // A bad token is not silently downgraded to anonymous.
        assert!(open.authenticate(Some("garbage"), NOW).is_err());
    }

    #[test]
    fn mode_none_lets_everyone_do_everything() {
        let a = auth(&AuthConfig::default());
        assert_eq!(a.mode(), AuthMode::None);
        assert!(!a.required());
        let id = a.authenticate(Some("not even a jwt"), NOW).unwrap();
        assert!(id.check_read("any").is_ok() && id.check_write("any").is_ok());
        assert_eq!(a.anonymous(), Some(id));
        // An explicit "none" wins over configured keys (`--auth none` for local demos).
        let demo = auth(&AuthConfig {
            mode: Some(AuthMode::None),
            ..hs_config()
        });
        assert!(!demo.required());
        assert_eq!("none".parse::<AuthMode>(), Ok(AuthMode::None));
        assert!("jwtt".parse::<AuthMode>().is_err());
    }

    #[test]
    fn config_errors_name_the_setting() {
        let err = |cfg: AuthConfig| Authenticator::new(&cfg).unwrap_err();
        assert!(err(AuthConfig {
            mode: Some(AuthMode::Jwt),
            ..AuthConfig::default()
        })
        .contains("needs a key"));
        assert!(err(AuthConfig {
            public_key_pem_files: vec![key_path("jwks.json")],
            ..AuthConfig::default()
        })
        .contains("not an RSA, EC or Ed25519 public key"));
        assert!(err(AuthConfig {
            public_key_pem_files: vec![key_path("missing.pem")],
            ..AuthConfig::default()
        })
        .contains("missing.pem"));
        assert!(err(AuthConfig {
            hs256_secret: Some(String::new()),
            ..AuthConfig::default()
        })
        .contains("empty"));
        let mut cfg = hs_config();
        cfg.anonymous = Some(GrantsConfig {
            read: vec!["*x".into()],
            write: vec![],
        });
        assert!(err(cfg).starts_with("auth.anonymous.read"));
    }

    // --- the Authorization header ----------------------------------------------------------------

    #[test]
    fn bearer_token_takes_the_credentials_of_the_bearer_scheme() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer   xyz "), Some("xyz"));
        assert_eq!(bearer_token(" BEARER\txyz"), Some("xyz"));
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token("Bearerxyz"), None);
        assert_eq!(bearer_token(""), None);
    }

    #[test]
    fn authenticator_and_identity_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Authenticator>();
        send_sync::<Identity>();
    }
}
