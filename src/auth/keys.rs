//! Verification keys: the HS256 shared secret (inline or from a file), PEM public keys and the
//! keys of a JWKS file, each with the algorithms it accepts ([`VerifyKey`]).
//!
//! Lives here: reading the key files (once, from `Authenticator::new`) and fixing each key's
//! algorithm family, so a token cannot pick a weaker algorithm or use a public key as an HMAC
//! secret. Also the `iss` / `aud` part of each key's `Validation`. May touch: [`AuthConfig`].
//! May not: look at a token (that is `jwt.rs`), or read the files again later: there is no
//! refresh; a changed key file takes a restart.
//!
//! Read next: `jwt.rs`, how a token picks among these keys.

use std::path::Path;
use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::AuthConfig;

/// One verification key and the algorithms it accepts.
pub(super) struct VerifyKey {
    /// Where it came from (`hs256_secret`, a PEM path, `jwks.json#kid`), for errors and Debug.
    pub(super) source: String,
    /// The JWKS `kid`; `None` for the secret and PEM keys, which any `kid` may use.
    pub(super) kid: Option<String>,
    /// What jsonwebtoken verifies with.
    pub(super) key: DecodingKey,
    /// Its algorithms, issuer and audience. `exp`/`nbf` are checked by us against `now_unix`
    /// (jsonwebtoken would read the system clock), so its own time checks are off.
    pub(super) validation: Validation,
}

/// Every verification key of the config, each with the validation it needs.
pub(super) fn load_keys(cfg: &AuthConfig) -> Result<Vec<VerifyKey>, String> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::auth::{AuthConfig, AuthFailure, AuthMode};
    use jsonwebtoken::Algorithm;
    use serde_json::json;

    // --- the HS256 secret ------------------------------------------------------------------------

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
}
