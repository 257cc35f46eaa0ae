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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::protocol::{ErrorCode, ProtoError};

/// The subject of connections without a token (and of everyone under `mode = "none"`).
pub const ANONYMOUS_SUBJECT: &str = "anonymous";

/// Default clock skew allowed on `exp` / `nbf`, in seconds.
pub const DEFAULT_LEEWAY_S: u64 = 30;

// ---------------------------------------------------------------------------------------------
// Topic rules
// ---------------------------------------------------------------------------------------------

/// One topic rule: an exact name, a prefix wildcard `prices.*`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern(PatternKind);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PatternKind {
    /// `*`: every topic.
    All,
    /// `prices.*`, stored as `prices.` (with the dot): topics that start with it and are longer.
    Prefix(Box<str>),
    /// A topic name compared byte for byte.
    Exact(Box<str>),
}

impl TopicPattern {
    /// The rule that matches every topic.
    pub fn all() -> Self {
        TopicPattern(PatternKind::All)
    }

    /// Parses `*`, `name.*` or an exact name. Refuses an empty rule, a `*` anywhere but as the
    /// whole rule or a final `.*` (`a.*.b`, `*x`, `a*`), and `.*` with nothing before the dot.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty topic rule".to_owned());
        }
        if s == "*" {
            return Ok(TopicPattern(PatternKind::All));
        }
        let (body, is_prefix) = match s.strip_suffix(".*") {
            Some(body) => (body, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "topic rule {s:?}: `*` may only be the whole rule or a final `.*`"
            ));
        }
        if body.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!(
                "topic rule {s:?} must not contain control characters"
            ));
        }
        if is_prefix {
            if body.is_empty() {
                return Err(format!(
                    "topic rule {s:?}: nothing before `.*` (use `*` for every topic)"
                ));
            }
            // Keep the dot: `prices.*` must not match `pricesX`.
            Ok(TopicPattern(PatternKind::Prefix(
                s[..s.len() - 1].to_owned().into_boxed_str(),
            )))
        } else {
            Ok(TopicPattern(PatternKind::Exact(
                s.to_owned().into_boxed_str(),
            )))
        }
    }

    /// Whether `topic` falls under this rule. O(length of the rule).
    pub fn matches(&self, topic: &str) -> bool {
        match &self.0 {
            PatternKind::All => true,
            PatternKind::Prefix(prefix) => {
                topic.len() > prefix.len() && topic.starts_with(&**prefix)
            }
            PatternKind::Exact(name) => topic == &**name,
        }
    }
}

impl FromStr for TopicPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TopicPattern::parse(s)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PatternKind::All => f.write_str("*"),
            PatternKind::Prefix(prefix) => write!(f, "{prefix}*"),
            PatternKind::Exact(name) => f.write_str(name),
        }
    }
}

/// Which right a check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `subscribe`, `replay`, `resume`: receiving a topic's messages.
    Read,
    /// `publish` (WebSocket or HTTP).
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// What an identity may do: the topics it may read and those it may write.
///
/// Checks are a linear scan of the rules (an identity has a handful); `*` is kept first when
/// present, so full access answers at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Rules for `subscribe`, `replay` and `resume`.
    pub read: Vec<TopicPattern>,
    /// Rules for `publish`.
    pub write: Vec<TopicPattern>,
}

impl Grants {
    /// Read and write everything (`mode = "none"`).
    pub fn full() -> Self {
        Grants {
            read: vec![TopicPattern::all()],
            write: vec![TopicPattern::all()],
        }
    }

    /// Whether these grants allow reading `topic`.
    pub fn can_read(&self, topic: &str) -> bool {
        self.read.iter().any(|p| p.matches(topic))
    }

    /// Whether these grants allow writing `topic`.
    pub fn can_write(&self, topic: &str) -> bool {
        self.write.iter().any(|p| p.matches(topic))
    }

    /// Whether these grants allow `access` to `topic`.
    pub fn allows(&self, access: Access, topic: &str) -> bool {
        match access {
            Access::Read => self.can_read(topic),
            Access::Write => self.can_write(topic),
        }
    }

    /// Parses a config entry; `context` (e.g. `auth.roles.admin`) prefixes error messages.
    pub fn from_config(cfg: &GrantsConfig, context: &str) -> Result<Self, String> {
        let parse = |rules: &[String], field: &str| -> Result<Vec<TopicPattern>, String> {
            let mut out = Vec::with_capacity(rules.len());
            for rule in rules {
                let pattern =
                    TopicPattern::parse(rule).map_err(|e| format!("{context}.{field}: {e}"))?;
                push_unique(&mut out, pattern);
            }
            Ok(out)
        };
        Ok(Grants {
            read: parse(&cfg.read, "read")?,
            write: parse(&cfg.write, "write")?,
        })
    }

    /// Adds `other`'s rules to these (a union), skipping duplicates.
    pub fn extend(&mut self, other: &Grants) {
        for p in &other.read {
            push_unique(&mut self.read, p.clone());
        }
        for p in &other.write {
            push_unique(&mut self.write, p.clone());
        }
    }
}

/// Appends `p` unless already present; `*` goes first so a full grant matches on the first try.
fn push_unique(rules: &mut Vec<TopicPattern>, p: TopicPattern) {
    if rules.contains(&p) {
        return;
    }
    if p.0 == PatternKind::All {
        rules.insert(0, p);
    } else {
        rules.push(p);
    }
}

// ---------------------------------------------------------------------------------------------
// Identity and errors
// ---------------------------------------------------------------------------------------------

/// Who a connection (or HTTP publisher) is and what it may do. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`, `anonymous`, or `apikey:<id>`. Also the scope of `messageId`
    /// deduplication (I2).
    pub subject: Arc<str>,
    /// The union of the token's own rules and those of its roles.
    pub grants: Arc<Grants>,
    /// Unix seconds from which the credential is no longer honoured (`exp` + leeway); `None`
    /// for anonymous, API keys, and tokens without `exp` under `require_exp = false`.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// An identity that never expires.
    pub fn new(subject: &str, grants: Grants) -> Self {
        Identity {
            subject: Arc::from(subject),
            grants: Arc::new(grants),
            expires_at: None,
        }
    }

    /// Whether the credential has run out at `now_unix`: the engine then closes the connection
    /// with `UNAUTHORIZED` "token expired" and close code 1008 (see the module doc).
    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expires_at.is_some_and(|at| now_unix >= at)
    }

    /// `FORBIDDEN` naming the topic unless this identity may read it.
    pub fn check_read(&self, topic: &str) -> Result<(), AuthError> {
        self.check(Access::Read, topic)
    }

    /// `FORBIDDEN` naming the topic unless this identity may write it.
    pub fn check_write(&self, topic: &str) -> Result<(), AuthError> {
        self.check(Access::Write, topic)
    }

    /// `FORBIDDEN` naming the topic unless this identity has `access` to it.
    pub fn check(&self, access: Access, topic: &str) -> Result<(), AuthError> {
        if self.grants.allows(access, topic) {
            Ok(())
        } else {
            Err(AuthError::Forbidden {
                subject: self.subject.clone(),
                access,
                topic: topic.to_owned(),
            })
        }
    }
}

/// Why a credential was refused (`UNAUTHORIZED`). Each variant names the rule broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token, and the config grants no anonymous access.
    Missing,
    /// Not a JWT: wrong shape, bad base64 or JSON, an unknown `alg`.
    Malformed(String),
    /// No configured key takes the token's `alg`.
    AlgorithmNotAccepted(String),
    /// The token names a `kid` that no configured key has.
    UnknownKeyId(String),
    /// The signature does not verify with any candidate key.
    BadSignature,
    /// `exp` (+ leeway) has passed.
    Expired,
    /// `nbf` (- leeway) is still ahead.
    NotYetValid,
    /// A required claim (`exp`, `sub`, `iss`, `aud`) is absent.
    MissingClaim(String),
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not name the configured audience (or is present when none is configured).
    WrongAudience,
    /// A claim has the wrong type or holds an invalid topic rule.
    BadClaim {
        /// The claim's name.
        claim: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The API key matches no configured key.
    BadApiKey,
}

impl fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthFailure::Missing => f.write_str("authentication required"),
            AuthFailure::Malformed(why) => write!(f, "malformed token: {why}"),
            AuthFailure::AlgorithmNotAccepted(alg) => write!(f, "algorithm {alg} not accepted"),
            AuthFailure::UnknownKeyId(kid) => write!(f, "unknown key id {kid:?}"),
            AuthFailure::BadSignature => f.write_str("bad token signature"),
            AuthFailure::Expired => f.write_str("token expired"),
            AuthFailure::NotYetValid => f.write_str("token not yet valid"),
            AuthFailure::MissingClaim(claim) => write!(f, "token has no {claim:?} claim"),
            AuthFailure::WrongIssuer => f.write_str("wrong token issuer"),
            AuthFailure::WrongAudience => f.write_str("wrong token audience"),
            AuthFailure::BadClaim { claim, problem } => write!(f, "bad {claim:?} claim: {problem}"),
            AuthFailure::BadApiKey => f.write_str("invalid API key"),
        }
    }
}

/// A refused credential or a refused topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No valid credential (`UNAUTHORIZED`).
    Unauthorized(AuthFailure),
    /// A valid identity without the right to this topic (`FORBIDDEN`).
    Forbidden {
        /// Who asked.
        subject: Arc<str>,
        /// What was asked for.
        access: Access,
        /// The topic refused, echoed in the error answer.
        topic: String,
    },
}

impl AuthError {
    /// The protocol error code: `UNAUTHORIZED` or `FORBIDDEN`.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Unauthorized(_) => ErrorCode::Unauthorized,
            AuthError::Forbidden { .. } => ErrorCode::Forbidden,
        }
    }

    /// The topic refused, for `FORBIDDEN`.
    pub fn topic(&self) -> Option<&str> {
        match self {
            AuthError::Unauthorized(_) => None,
            AuthError::Forbidden { topic, .. } => Some(topic),
        }
    }

    /// The protocol `error` answer, naming the topic for `FORBIDDEN`.
    pub fn to_proto(&self) -> ProtoError {
        let message = match self {
            AuthError::Unauthorized(why) => why.to_string(),
            AuthError::Forbidden { access, topic, .. } => {
                format!("no {access} access to topic {topic:?}")
            }
        };
        let err = ProtoError::new(self.code(), message);
        match self.topic() {
            Some(topic) => err.with_topic(topic),
            None => err,
        }
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Unauthorized(why) => write!(f, "UNAUTHORIZED: {why}"),
            AuthError::Forbidden {
                subject,
                access,
                topic,
            } => write!(
                f,
                "FORBIDDEN: {subject:?} has no {access} access to {topic:?}"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

impl From<AuthFailure> for AuthError {
    fn from(why: AuthFailure) -> Self {
        AuthError::Unauthorized(why)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

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

/// Static read/write rules, as written in the config (parsed by [`Grants::from_config`]).
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

// ---------------------------------------------------------------------------------------------
// Authenticator
// ---------------------------------------------------------------------------------------------

/// One verification key and the algorithms it accepts.
struct VerifyKey {
    /// Where it came from (`hs256_secret`, a PEM path, `jwks.json#kid`), for errors and Debug.
    source: String,
    /// The JWKS `kid`; `None` for the secret and PEM keys, which any `kid` may use.
    kid: Option<String>,
    /// What jsonwebtoken verifies with.
    key: DecodingKey,
    /// Its algorithms, issuer and audience. `exp`/`nbf` are checked by us against `now_unix`
    /// (jsonwebtoken would read the system clock), so its own time checks are off.
    validation: Validation,
}

/// A configured API key.
struct ApiKey {
    /// SHA-256 of the key, compared in constant time.
    digest: [u8; 32],
    /// `apikey:<id>` with the key's write rules.
    identity: Identity,
}

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

        let api_keys = cfg
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| parse_api_key(i, k))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = HashSet::new();
        for k in &cfg.api_keys {
            if !ids.insert(k.id.as_str()) {
                return Err(format!("auth.api_keys: id {:?} appears twice", k.id));
            }
        }

        let (keys, anonymous) = match mode {
            AuthMode::None => (
                Vec::new(),
                Some(Identity::new(ANONYMOUS_SUBJECT, Grants::full())),
            ),
            AuthMode::Jwt => {
                let keys = load_keys(cfg)?;
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

    /// Verifies a JWT (key by `alg`/`kid`, signature, `exp`, `nbf`, `iss`, `aud`) and builds the
    /// identity from `sub` and the rule and role claims. Cost: one signature check per
    /// candidate key (usually one).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Identity, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| malformed(&e))?;
        let alg = header.alg;
        let kid = header.kid.as_deref();

        let mut for_alg = self
            .keys
            .iter()
            .filter(|k| k.validation.algorithms.contains(&alg))
            .peekable();
        if for_alg.peek().is_none() {
            return Err(AuthFailure::AlgorithmNotAccepted(format!("{alg:?}")).into());
        }
        let mut candidates = for_alg
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .peekable();
        if candidates.peek().is_none() {
            // Only reachable with a `kid`: a token without one matches every key of its alg.
            return Err(AuthFailure::UnknownKeyId(kid.unwrap_or_default().to_owned()).into());
        }

        let mut claims = None;
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                // Another key of the same family may still verify it.
                Err(e)
                    if matches!(e.kind(), ErrorKind::InvalidSignature | ErrorKind::Crypto(_)) => {}
                Err(e) => return Err(jwt_failure(&e).into()),
            }
        }
        let claims = claims.ok_or(AuthFailure::BadSignature)?;
        self.identity_from_claims(&claims, now_unix)
    }

    /// Checks `exp`/`nbf` against `now_unix` and builds the identity.
    fn identity_from_claims(
        &self,
        claims: &Map<String, Value>,
        now_unix: u64,
    ) -> Result<Identity, AuthError> {
        let exp = numeric_date(claims, "exp")?;
        let nbf = numeric_date(claims, "nbf")?;
        let expires_at = match exp {
            Some(exp) => Some(exp.saturating_add(self.leeway_s)),
            None if self.require_exp => {
                return Err(AuthFailure::MissingClaim("exp".to_owned()).into())
            }
            None => None,
        };
        if expires_at.is_some_and(|at| now_unix >= at) {
            return Err(AuthFailure::Expired.into());
        }
        if nbf.is_some_and(|nbf| now_unix.saturating_add(self.leeway_s) < nbf) {
            return Err(AuthFailure::NotYetValid.into());
        }

        let subject = match claims.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            Some(Value::String(_)) | None => {
                return Err(AuthFailure::MissingClaim("sub".to_owned()).into())
            }
            Some(_) => return Err(bad_claim("sub", "not a string").into()),
        };

        let mut grants = Grants::default();
        for rule in string_list(claims, &self.claim_read)? {
            let p = TopicPattern::parse(rule).map_err(|e| bad_claim(&self.claim_read, &e))?;
            push_unique(&mut grants.read, p);
        }
        for rule in string_list(claims, &self.claim_write)? {
            let p = TopicPattern::parse(rule).map_err(|e| bad_claim(&self.claim_write, &e))?;
            push_unique(&mut grants.write, p);
        }
        for role in string_list(claims, &self.claim_roles)? {
            if let Some(role_grants) = self.roles.get(role) {
                grants.extend(role_grants);
            }
        }

        Ok(Identity {
            subject: Arc::from(subject),
            grants: Arc::new(grants),
            expires_at,
        })
    }

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

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

/// Every verification key of the config, each with the validation it needs.
fn load_keys(cfg: &AuthConfig) -> Result<Vec<VerifyKey>, String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let mut required = Vec::new();
    if let Some(iss) = &cfg.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    if let Some(aud) = &cfg.audience {
        validation.set_audience(&[aud]);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    let key = |source: String, kid: Option<String>, key: DecodingKey, algs: &[Algorithm]| {
        let mut validation = validation.clone();
        validation.algorithms = algs.to_vec();
        VerifyKey {
            source,
            kid,
            key,
            validation,
        }
    };

    let mut keys = Vec::new();

    let secret = match (&cfg.hs256_secret, &cfg.hs256_secret_file) {
        (Some(_), Some(_)) => {
            return Err("auth: set hs256_secret or hs256_secret_file, not both".to_owned())
        }
        (Some(s), None) => Some(("hs256_secret".to_owned(), s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.hs256_secret_file {}: {e}", path.display()))?;
            Some((
                path.display().to_string(),
                text.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        }
        (None, None) => None,
    };
    if let Some((source, secret)) = secret {
        if secret.is_empty() {
            return Err(format!("auth: the HS256 secret from {source} is empty"));
        }
        keys.push(key(
            source,
            None,
            DecodingKey::from_secret(secret.as_bytes()),
            &[Algorithm::HS256],
        ));
    }

    for path in &cfg.public_key_pem_files {
        let (decoding, algs) = read_pem_key(path)?;
        keys.push(key(path.display().to_string(), None, decoding, algs));
    }

    if let Some(path) = &cfg.jwks_file {
        for (kid, decoding, algs) in read_jwks(path)? {
            let source = format!(
                "{}#{}",
                path.display(),
                kid.as_deref().unwrap_or("(no kid)")
            );
            keys.push(key(source, kid, decoding, &algs));
        }
    }
    Ok(keys)
}

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC_ALGS: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED_ALGS: &[Algorithm] = &[Algorithm::EdDSA];

/// A PEM public key: RSA, EC or Ed25519, told apart by trying each.
fn read_pem_key(path: &Path) -> Result<(DecodingKey, &'static [Algorithm]), String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("auth.public_key_pem_files {}: {e}", path.display()))?;
    if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((k, RSA_ALGS));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
        return Ok((k, EC_ALGS));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
        return Ok((k, ED_ALGS));
    }
    Err(format!(
        "auth.public_key_pem_files {}: not an RSA, EC or Ed25519 public key in PEM",
        path.display()
    ))
}

/// The signing keys of a JWKS file: `(kid, key, algorithms)`.
#[allow(clippy::type_complexity)]
fn read_jwks(path: &Path) -> Result<Vec<(Option<String>, DecodingKey, Vec<Algorithm>)>, String> {
    let context = format!("auth.jwks_file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| format!("{context}: {e}"))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("{context}: {e}"))?;
    let mut out = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        let context = format!("{context}: keys[{i}]");
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let family: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA_ALGS.to_vec(),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Err(format!("{context}: unsupported curve {:?}", p.curve)),
            },
            AlgorithmParameters::OctetKeyPair(_) => ED_ALGS.to_vec(),
            AlgorithmParameters::OctetKey(_) => {
                return Err(format!(
                    "{context}: a symmetric key does not belong in a public JWKS file \
                     (use hs256_secret)"
                ))
            }
        };
        let algs = match jwk.common.key_algorithm {
            Some(ka) => {
                let alg = Algorithm::from_str(&ka.to_string())
                    .ok()
                    .filter(|a| family.contains(a))
                    .ok_or_else(|| format!("{context}: alg {ka} does not fit its key type"))?;
                vec![alg]
            }
            None => family,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{context}: {e}"))?;
        out.push((jwk.common.key_id.clone(), key, algs));
    }
    Ok(out)
}

/// A NumericDate claim (seconds, possibly fractional) rounded down; `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthFailure> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            // `as` saturates: a date past u64::MAX seconds is "never".
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(bad_claim(name, "not a non-negative number of seconds")),
        },
        Some(_) => Err(bad_claim(name, "not a number")),
    }
}

/// A claim holding a string or an array of strings; absent is empty.
fn string_list<'a>(
    claims: &'a Map<String, Value>,
    name: &str,
) -> Result<Vec<&'a str>, AuthFailure> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| bad_claim(name, "not an array of strings"))
            })
            .collect(),
        Some(_) => Err(bad_claim(name, "not an array of strings")),
    }
}

fn bad_claim(claim: &str, problem: &str) -> AuthFailure {
    AuthFailure::BadClaim {
        claim: claim.to_owned(),
        problem: problem.to_owned(),
    }
}

fn malformed(e: &jsonwebtoken::errors::Error) -> AuthFailure {
    AuthFailure::Malformed(e.to_string())
}

/// jsonwebtoken's errors after a key was chosen, as the failure the client is told.
fn jwt_failure(e: &jsonwebtoken::errors::Error) -> AuthFailure {
    match e.kind() {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => AuthFailure::BadSignature,
        ErrorKind::ExpiredSignature => AuthFailure::Expired,
        ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
        ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
        ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthFailure::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm => AuthFailure::AlgorithmNotAccepted(e.to_string()),
        _ => malformed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &str = "a-test-secret-of-thirty-two-bytes!";

    fn key_path(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/keys")
            .join(name)
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            hs256_secret: Some(SECRET.to_owned()),
            ..AuthConfig::default()
        }
    }

    fn auth(cfg: &AuthConfig) -> Authenticator {
        Authenticator::new(cfg).expect("test config is valid")
    }

    fn hs_token(claims: &Value) -> String {
        hs_token_with(claims, SECRET)
    }

    fn hs_token_with(claims: &Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("HS256 encoding cannot fail")
    }

    fn pem_token(alg: Algorithm, kid: Option<&str>, private_pem: &str, claims: &Value) -> String {
        let pem = std::fs::read(key_path(private_pem)).expect("test key present");
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_rsa_pem(&pem),
        }
        .expect("test key parses");
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, &key).expect("signing with a test key")
    }

    fn unauthorized(r: Result<Identity, AuthError>) -> AuthFailure {
        match r {
            Err(AuthError::Unauthorized(why)) => why,
            other => panic!("expected UNAUTHORIZED, got {other:?}"),
        }
    }

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse(s).expect("valid pattern")
    }

    // --- patterns ------------------------------------------------------------------------------

    #[test]
    fn prefix_wildcard_matches_only_below_the_dot() {
        let rule = p("prices.*");
        assert!(rule.matches("prices.BTC"));
        assert!(rule.matches("prices.BTC.usd"));
        assert!(!rule.matches("prices"));
        assert!(!rule.matches("prices."));
        assert!(!rule.matches("pricesX"));
        assert!(!rule.matches("pricesX.BTC"));
        assert!(!rule.matches("other.prices.BTC"));
        assert_eq!(rule.to_string(), "prices.*");
    }

    #[test]
    fn star_matches_everything_and_exact_matches_itself() {
        assert!(p("*").matches("anything"));
        assert!(p("*").matches("a.b.c"));
        let exact = p("orders.42");
        assert!(exact.matches("orders.42"));
        assert!(!exact.matches("orders.420"));
        assert!(!exact.matches("orders.4"));
        assert_eq!(exact.to_string(), "orders.42");
        assert!(p("a.b.*").matches("a.b.c"));
        assert!(!p("a.b.*").matches("a.bc"));
    }

    #[test]
    fn misplaced_stars_and_empty_rules_are_refused() {
        for bad in [
            "", "a.*.b", "*x", "x*", "a*.b", "*.*", ".*", "**", "a.**", "a\u{1}b",
        ] {
            assert!(
                TopicPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn grants_union_keeps_star_first_and_skips_duplicates() {
        let mut g = Grants::from_config(
            &GrantsConfig {
                read: vec!["a".into(), "a".into(), "b.*".into()],
                write: vec![],
            },
            "t",
        )
        .unwrap();
        assert_eq!(g.read, vec![p("a"), p("b.*")]);
        g.extend(&Grants::full());
        assert_eq!(g.read, vec![p("*"), p("a"), p("b.*")]);
        assert!(g.can_write("z"));
        let err = Grants::from_config(
            &GrantsConfig {
                read: vec![],
                write: vec!["a.*.b".into()],
            },
            "auth.roles.x",
        )
        .unwrap_err();
        assert!(err.starts_with("auth.roles.x.write: "), "{err}");
    }

    // --- HS256 -----------------------------------------------------------------------------------

    #[test]
    fn valid_hs256_token_gives_its_identity_and_rules() {
        let a = auth(&hs_config());
        let t = hs_token(&json!({
            "sub": "alice", "exp": NOW + 600, "read": ["prices.*"], "write": "orders.alice"
        }));
        let id = a.verify(&t, NOW).unwrap();
        assert_eq!(&*id.subject, "alice");
        assert_eq!(id.expires_at, Some(NOW + 600 + DEFAULT_LEEWAY_S));
        assert!(id.check_read("prices.BTC").is_ok());
        assert!(id.check_write("orders.alice").is_ok());
        let err = id.check_write("prices.BTC").unwrap_err();
        assert_eq!(err.code(), ErrorCode::Forbidden);
        assert_eq!(err.topic(), Some("prices.BTC"));
        let proto = err.to_proto();
        assert_eq!(proto.topic.as_deref(), Some("prices.BTC"));
        assert_eq!(proto.message, "no write access to topic \"prices.BTC\"");
        assert!(a.required());
        assert_eq!(a.authenticate(Some(&t), NOW).unwrap(), id);
    }

    #[test]
    fn expiry_honours_leeway_and_is_expired_agrees() {
        let a = auth(&hs_config());
        let exp = NOW - 10; // inside the 30 s leeway
        let id = a
            .verify(&hs_token(&json!({"sub": "a", "exp": exp})), NOW)
            .unwrap();
        assert!(!id.is_expired(NOW));
        assert!(!id.is_expired(exp + DEFAULT_LEEWAY_S - 1));
        assert!(id.is_expired(exp + DEFAULT_LEEWAY_S));

        let old = hs_token(&json!({"sub": "a", "exp": NOW - DEFAULT_LEEWAY_S}));
        assert_eq!(unauthorized(a.verify(&old, NOW)), AuthFailure::Expired);
        assert_eq!(
            AuthError::from(AuthFailure::Expired).to_proto().message,
            "token expired"
        );
        // A fractional NumericDate is accepted and rounded down.
        let frac = hs_token(&json!({"sub": "a", "exp": (NOW + 100) as f64 + 0.5}));
        assert_eq!(
            a.verify(&frac, NOW).unwrap().expires_at,
            Some(NOW + 100 + DEFAULT_LEEWAY_S)
        );
    }

    #[test]
    fn not_yet_valid_token_is_refused() {
        let a = auth(&hs_config());
        let early = hs_token(&json!({"sub": "a", "exp": NOW + 999, "nbf": NOW + 100}));
        assert_eq!(
            unauthorized(a.verify(&early, NOW)),
            AuthFailure::NotYetValid
        );
        assert!(a.verify(&early, NOW + 100 - DEFAULT_LEEWAY_S).is_ok());
    }

    #[test]
    fn wrong_secret_and_tampering_are_bad_signatures() {
        let a = auth(&hs_config());
        let claims = json!({"sub": "a", "exp": NOW + 60});
        let forged = hs_token_with(&claims, "another secret");
        assert_eq!(
            unauthorized(a.verify(&forged, NOW)),
            AuthFailure::BadSignature
        );
        // Swap in a payload granting more, keep the signature.
        let good = hs_token(&claims);
        let greedy = hs_token(&json!({"sub": "a", "exp": NOW + 60, "write": ["*"]}));
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = greedy.split('.').nth(1).unwrap();
        assert_eq!(
            unauthorized(a.verify(&parts.join("."), NOW)),
            AuthFailure::BadSignature
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let a = auth(&AuthConfig {
            issuer: Some("https://id.example".into()),
            audience: Some("subsocket".into()),
            ..hs_config()
        });
        let ok = json!({"sub": "a", "exp": NOW + 60, "iss": "https://id.example", "aud": ["x", "subsocket"]});
        assert!(a.verify(&hs_token(&ok), NOW).is_ok());
        let wrong_iss = json!({"sub": "a", "exp": NOW + 60, "iss": "evil", "aud": "subsocket"});
        assert_eq!(
            unauthorized(a.verify(&hs_token(&wrong_iss), NOW)),
            AuthFailure::WrongIssuer
        );
        let wrong_aud =
            json!({"sub": "a", "exp": NOW + 60, "iss": "https://id.example", "aud": "other"});
        assert_eq!(
            unauthorized(a.verify(&hs_token(&wrong_aud), NOW)),
            AuthFailure::WrongAudience
        );
        let no_iss = json!({"sub": "a", "exp": NOW + 60, "aud": "subsocket"});
        assert_eq!(
            unauthorized(a.verify(&hs_token(&no_iss), NOW)),
            AuthFailure::MissingClaim("iss".into())
        );
        // Without a configured audience, a token addressed to someone is refused (RFC 7519).
        let plain = auth(&hs_config());
        let addressed = json!({"sub": "a", "exp": NOW + 60, "aud": "someone"});
        assert_eq!(
            unauthorized(plain.verify(&hs_token(&addressed), NOW)),
            AuthFailure::WrongAudience
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let a = auth(&hs_config());
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c",
            "....",
            "eyJhbGciOiJub25lIn0.e30.",
        ] {
            assert!(
                matches!(unauthorized(a.verify(bad, NOW)), AuthFailure::Malformed(_)),
                "{bad:?}"
            );
        }
        // A signed token whose rules are not strings or not valid rules.
        let t = hs_token(&json!({"sub": "a", "exp": NOW + 60, "read": [1]}));
        assert!(matches!(
            unauthorized(a.verify(&t, NOW)),
            AuthFailure::BadClaim { .. }
        ));
        let t = hs_token(&json!({"sub": "a", "exp": NOW + 60, "write": ["a.*.b"]}));
        assert!(
            matches!(unauthorized(a.verify(&t, NOW)), AuthFailure::BadClaim { claim, .. } if claim == "write")
        );
        let t = hs_token(&json!({"sub": "a", "exp": "tomorrow"}));
        assert!(matches!(
            unauthorized(a.verify(&t, NOW)),
            AuthFailure::BadClaim { .. }
        ));
    }

    #[test]
    fn exp_and_sub_are_required_unless_configured_otherwise() {
        let a = auth(&hs_config());
        let forever = hs_token(&json!({"sub": "a"}));
        assert_eq!(
            unauthorized(a.verify(&forever, NOW)),
            AuthFailure::MissingClaim("exp".into())
        );
        let nobody = hs_token(&json!({"exp": NOW + 60}));
        assert_eq!(
            unauthorized(a.verify(&nobody, NOW)),
            AuthFailure::MissingClaim("sub".into())
        );

        let lax = auth(&AuthConfig {
            require_exp: false,
            ..hs_config()
        });
        let id = lax.verify(&forever, NOW).unwrap();
        assert_eq!(id.expires_at, None);
        assert!(!id.is_expired(u64::MAX));
    }

    #[test]
    fn hs256_secret_is_not_accepted_for_public_key_algorithms() {
        let a = auth(&hs_config());
        let t = pem_token(
            Algorithm::RS256,
            None,
            "rsa1.key.pem",
            &json!({"sub": "a", "exp": NOW + 60}),
        );
        assert_eq!(
            unauthorized(a.verify(&t, NOW)),
            AuthFailure::AlgorithmNotAccepted("RS256".into())
        );
    }

    #[test]
    fn secret_file_is_read_without_its_newline() {
        let dir = std::env::temp_dir().join(format!("subsocket-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let a = auth(&AuthConfig {
            hs256_secret_file: Some(file),
            ..AuthConfig::default()
        });
        assert_eq!(a.mode(), AuthMode::Jwt);
        assert!(a
            .verify(&hs_token(&json!({"sub": "a", "exp": NOW + 60})), NOW)
            .is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    // --- RS256 / ES256 / JWKS --------------------------------------------------------------------

    fn pem_config() -> AuthConfig {
        AuthConfig {
            public_key_pem_files: vec![key_path("rsa1.pub.pem"), key_path("ec1.pub.pem")],
            jwks_file: Some(key_path("jwks.json")),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_pem_keys() {
        let a = auth(&pem_config());
        let claims = json!({"sub": "svc", "exp": NOW + 60, "read": ["*"]});
        let rs = pem_token(Algorithm::RS256, None, "rsa1.key.pem", &claims);
        assert_eq!(&*a.verify(&rs, NOW).unwrap().subject, "svc");
        let es = pem_token(Algorithm::ES256, None, "ec1.key.pem", &claims);
        assert!(a.verify(&es, NOW).unwrap().grants.can_read("x"));
        // A PEM key has no kid, so any kid may use it.
        let rs_kid = pem_token(Algorithm::RS256, Some("whatever"), "rsa1.key.pem", &claims);
        assert!(a.verify(&rs_kid, NOW).is_ok());
    }

    #[test]
    fn jwks_keys_are_selected_by_kid() {
        let a = auth(&AuthConfig {
            jwks_file: Some(key_path("jwks.json")),
            ..AuthConfig::default()
        });
        let claims = json!({"sub": "svc", "exp": NOW + 60});
        let a_signed = pem_token(Algorithm::RS256, Some("rsa-a"), "rsa2.key.pem", &claims);
        assert!(a.verify(&a_signed, NOW).is_ok());
        let b_signed = pem_token(Algorithm::RS256, Some("rsa-b"), "rsa3.key.pem", &claims);
        assert!(a.verify(&b_signed, NOW).is_ok());
        let ec_signed = pem_token(Algorithm::ES256, Some("ec-a"), "ec2.key.pem", &claims);
        assert!(a.verify(&ec_signed, NOW).is_ok());
        // Signed by key b but naming key a: a's key does not verify it.
        let mislabeled = pem_token(Algorithm::RS256, Some("rsa-a"), "rsa3.key.pem", &claims);
        assert_eq!(
            unauthorized(a.verify(&mislabeled, NOW)),
            AuthFailure::BadSignature
        );
        let unknown = pem_token(Algorithm::RS256, Some("rsa-z"), "rsa2.key.pem", &claims);
        assert_eq!(
            unauthorized(a.verify(&unknown, NOW)),
            AuthFailure::UnknownKeyId("rsa-z".into())
        );
        // The JWKS pins rsa-a to RS256: the same key under PS256 is not accepted by kid.
        let ps = pem_token(Algorithm::PS256, Some("rsa-a"), "rsa2.key.pem", &claims);
        assert_eq!(
            unauthorized(a.verify(&ps, NOW)),
            AuthFailure::AlgorithmNotAccepted("PS256".into())
        );
        // Without a kid every key of the algorithm is tried.
        let no_kid = pem_token(Algorithm::RS256, None, "rsa3.key.pem", &claims);
        assert!(a.verify(&no_kid, NOW).is_ok());
        // A key not in the set.
        let stranger = pem_token(Algorithm::RS256, None, "rsa1.key.pem", &claims);
        assert_eq!(
            unauthorized(a.verify(&stranger, NOW)),
            AuthFailure::BadSignature
        );
        assert!(format!("{a:?}").contains("jwks.json#rsa-b"));
    }

    // --- roles, anonymous, modes -----------------------------------------------------------------

    #[test]
    fn roles_expand_into_the_union_of_grants() {
        let mut cfg = hs_config();
        cfg.roles.insert(
            "trader".into(),
            GrantsConfig {
                read: vec!["prices.*".into()],
                write: vec!["orders.*".into()],
            },
        );
        cfg.roles.insert(
            "auditor".into(),
            GrantsConfig {
                read: vec!["audit".into()],
                write: vec![],
            },
        );
        let a = auth(&cfg);
        let t = hs_token(&json!({
            "sub": "bob", "exp": NOW + 60, "roles": ["trader", "auditor", "unknown-role"], "read": ["news"]
        }));
        let id = a.verify(&t, NOW).unwrap();
        for topic in ["prices.BTC", "audit", "news"] {
            assert!(id.check_read(topic).is_ok(), "{topic}");
        }
        assert!(id.check_write("orders.1").is_ok());
        assert!(id.check_write("audit").is_err());
        assert!(id.check_read("orders.1").is_err());
    }

    #[test]
    fn claim_names_are_configurable() {
        let mut cfg = hs_config();
        cfg.claim_read = "sub_topics".into();
        cfg.claim_roles = "groups".into();
        cfg.roles.insert(
            "pub".into(),
            GrantsConfig {
                read: vec![],
                write: vec!["x".into()],
            },
        );
        let a = auth(&cfg);
        let t = hs_token(
            &json!({"sub": "c", "exp": NOW + 60, "sub_topics": ["y"], "groups": ["pub"], "read": ["z"]}),
        );
        let id = a.verify(&t, NOW).unwrap();
        assert!(id.grants.can_read("y"));
        assert!(!id.grants.can_read("z"));
        assert!(id.grants.can_write("x"));
    }

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

    // --- API keys and the Authorization header ---------------------------------------------------

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
