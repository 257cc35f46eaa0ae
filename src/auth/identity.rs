//! Who a connection is and why it was refused: [`Identity`] (subject, grants, expiry),
//! [`AuthFailure`] (why a credential was refused) and [`AuthError`] (`UNAUTHORIZED` or
//! `FORBIDDEN`, as the protocol answer).
//!
//! Lives here: the per-topic checks ([`Identity::check_read`], [`Identity::check_write`]), the
//! expiry test ([`Identity::is_expired`]) and the mapping to [`ProtoError`]. May touch:
//! [`Grants`] (`rules.rs`) and the protocol's error types. May not: verify credentials (that is
//! `jwt.rs` and `api_keys.rs`) or keep time (the caller passes `now_unix`).
//!
//! Read next: `keys.rs`, the keys a token is verified with.

use std::fmt;
use std::sync::Arc;

use super::{Access, Grants};
use crate::protocol::{ErrorCode, ProtoError};

/// The subject of connections without a token (and of everyone under `mode = "none"`).
pub const ANONYMOUS_SUBJECT: &str = "anonymous";

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
