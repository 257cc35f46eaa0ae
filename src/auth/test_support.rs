//! Test helpers shared by the unit tests of every `auth` file: a pinned clock, a test secret,
//! the key files under `tests/keys`, and token builders.
//!
//! Lives here: only code for `#[cfg(test)]`. May not: be used outside tests.

use std::path::{Path, PathBuf};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

use super::{AuthConfig, AuthError, AuthFailure, Authenticator, Identity};

pub(super) const NOW: u64 = 1_700_000_000;
pub(super) const SECRET: &str = "a-test-secret-of-thirty-two-bytes!";

pub(super) fn key_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

pub(super) fn hs_config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..AuthConfig::default()
    }
}

pub(super) fn auth(cfg: &AuthConfig) -> Authenticator {
    Authenticator::new(cfg).expect("test config is valid")
}

pub(super) fn hs_token(claims: &Value) -> String {
    hs_token_with(claims, SECRET)
}

pub(super) fn hs_token_with(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding cannot fail")
}

pub(super) fn pem_token(
    alg: Algorithm,
    kid: Option<&str>,
    private_pem: &str,
    claims: &Value,
) -> String {
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

pub(super) fn unauthorized(r: Result<Identity, AuthError>) -> AuthFailure {
    match r {
        Err(AuthError::Unauthorized(why)) => why,
        other => panic!("expected UNAUTHORIZED, got {other:?}"),
    }
}
