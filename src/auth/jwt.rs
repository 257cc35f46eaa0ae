//! JWT verification: [`Authenticator::verify`] picks the candidate keys by `alg` and `kid`,
//! checks the signature (and `iss` / `aud`) with `jsonwebtoken`, then `exp` / `nbf` against the
//! caller's `now_unix`, and builds the [`Identity`] from `sub`, the rule claims and the roles.
//!
//! Lives here: that path and the claim readers (NumericDate, string-or-array), and the mapping
//! of `jsonwebtoken` errors to [`AuthFailure`]. May touch: the [`Authenticator`]'s fields
//! (`mod.rs`), the keys of `keys.rs`, the rules of `rules.rs`. May not: read files or the
//! clock; every time check uses `now_unix`.
//!
//! Read next: `api_keys.rs`, the other credential.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};

use super::rules::push_unique;
use super::{AuthError, AuthFailure, Authenticator, Grants, Identity, TopicPattern};

impl Authenticator {
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
    use super::super::test_support::*;
    use crate::auth::{AuthConfig, AuthError, AuthFailure, GrantsConfig, DEFAULT_LEEWAY_S};
    use crate::protocol::ErrorCode;
    use serde_json::json;

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

    // --- roles and claim names -------------------------------------------------------------------

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
}
