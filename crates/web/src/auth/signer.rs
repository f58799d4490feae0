use super::{Issuance, LocalKey, Role};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Mints tokens with the local key: EdDSA, for the issuer and audience the services expect.
pub struct Signer {
    key: EncodingKey,
    issuance: Issuance,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    role: Role,
}

impl Signer {
    pub fn new(key: &LocalKey, issuance: Issuance) -> Self {
        Self { key: key.encoding_key(), issuance }
    }

    /// A token for `subject` in `role`, valid from now for `ttl`. A customer's subject is its
    /// id (a UUID); the services refuse customer tokens whose subject is not.
    pub fn sign(&self, subject: &str, role: Role, ttl: Duration) -> String {
        self.sign_issued_at(subject, role, SystemTime::now(), ttl)
    }

    /// A token issued at another moment (an expired one, for tests).
    pub fn sign_issued_at(&self, subject: &str, role: Role, issued_at: SystemTime, ttl: Duration) -> String {
        let iat = issued_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let claims = Claims {
            sub: subject,
            iss: &self.issuance.issuer,
            aud: &self.issuance.audience,
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            role,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.key)
            .expect("a LocalKey always signs and the claims always serialize")
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("issuance", &self.issuance).finish_non_exhaustive()
    }
}
