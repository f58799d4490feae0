use super::jwks::{Jwks, JwksSettings};
use super::{AuthError, Caller, Issuance, KeyError, LocalKey};
use hashlink::LruCache;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

/// How far a token's `exp` (and `nbf`) may be off, for clocks that disagree a little.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Every algorithm a token may be signed with: asymmetric ones only. A shared-secret (HS*)
/// token or an unsigned one (`alg: none`) is refused whatever the keys.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::EdDSA,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

const RSA: [Algorithm; 6] =
    [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512, Algorithm::PS256, Algorithm::PS384, Algorithm::PS512];

/// The keys a [`Verifier`] trusts.
#[derive(Debug)]
pub enum KeySource {
    /// The public half of the local development key.
    Local(LocalKey),
    /// A PEM public key file (Ed25519, RSA, or EC P-256/P-384), e.g. an identity provider's.
    PublicKeyFile(PathBuf),
    /// An identity provider's JWKS, fetched when needed and cached.
    Jwks(JwksSettings),
}

/// How long a token this verifier accepted is accepted again without checking its signature
/// (never past its expiry). A key set refetched meanwhile may have dropped its key: that is
/// seen at most this late, where a key set itself is trusted for 15 minutes.
const ACCEPTED_FOR: Duration = Duration::from_secs(60);
/// Most tokens remembered as accepted (the least recently used is forgotten first), and the
/// longest one remembered.
const MAX_ACCEPTED: usize = 4096;
const MAX_REMEMBERED_TOKEN: usize = 2048;

/// Checks bearer tokens: signature (with an algorithm fixed by the key), issuer, audience,
/// expiry; names the caller.
pub struct Verifier {
    keys: Keys,
    description: String,
    /// Tokens accepted lately, with their caller and until when: a client sends the same token
    /// with every request, and a signature check costs 30 to 120 µs of CPU.
    accepted: Mutex<LruCache<String, (Caller, Instant)>>,
}

enum Keys {
    Fixed(TrustedKey),
    Jwks(Jwks),
}

/// A key and what a token signed with it must satisfy.
pub(crate) struct TrustedKey {
    pub(crate) kid: Option<String>,
    key: DecodingKey,
    pub(crate) validation: Validation,
}

impl TrustedKey {
    /// `algorithms`: those of the key's kind, so no token can choose another kind of check.
    pub(crate) fn new(kid: Option<String>, key: DecodingKey, algorithms: Vec<Algorithm>, issuance: &Issuance) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = algorithms;
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuance.issuer]);
        validation.set_audience(&[&issuance.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        Self { kid, key, validation }
    }
}

/// The claims a verified token is read for; `jsonwebtoken` checks the others.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: Option<String>,
    exp: f64,
}

impl Verifier {
    pub fn new(source: KeySource, issuance: &Issuance) -> Result<Self, KeyError> {
        let (keys, description) = match source {
            KeySource::Local(key) => (
                Keys::Fixed(TrustedKey::new(None, key.decoding_key(), vec![Algorithm::EdDSA], issuance)),
                "the local signing key".to_owned(),
            ),
            KeySource::PublicKeyFile(path) => {
                let pem = std::fs::read(&path).map_err(|source| KeyError::Read { path: path.clone(), source })?;
                let (key, algorithms) =
                    public_key(&pem).ok_or_else(|| KeyError::NotPublicKey { path: path.clone() })?;
                let description = format!("the public key {} ({algorithms:?})", path.display());
                (Keys::Fixed(TrustedKey::new(None, key, algorithms, issuance)), description)
            }
            KeySource::Jwks(settings) => {
                let description = format!("the JWKS at {}", settings.url);
                (Keys::Jwks(Jwks::new(settings, issuance.clone())?), description)
            }
        };
        Ok(Self {
            keys,
            description: format!("{description}, issuer {:?}, audience {:?}", issuance.issuer, issuance.audience),
            accepted: Mutex::new(LruCache::new(MAX_ACCEPTED)),
        })
    }

    /// Which keys, issuer and audience this verifier trusts (no key material), for logs.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// The caller a token names, if it is valid here.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let now = Instant::now();
        if let Some((caller, until)) = self.accepted().get(token)
            && now < *until
        {
            return Ok(caller.clone());
        }
        let (caller, expires) = self.check(token).await?;
        if token.len() <= MAX_REMEMBERED_TOKEN {
            let until = now + expires.duration_since(SystemTime::now()).unwrap_or_default().min(ACCEPTED_FOR);
            self.accepted().insert(token.to_owned(), (caller.clone(), until));
        }
        Ok(caller)
    }

    /// Until when `token` is accepted without a check, if it is remembered.
    #[cfg(test)]
    pub(super) fn remembered_until(&self, token: &str) -> Option<Instant> {
        self.accepted().peek(token).map(|(_, until)| *until)
    }

    fn accepted(&self) -> MutexGuard<'_, LruCache<String, (Caller, Instant)>> {
        self.accepted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks `token` in full: the caller it names, and when it expires.
    async fn check(&self, token: &str) -> Result<(Caller, SystemTime), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| AuthError::from_jwt(&error))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::WrongAlgorithm(header.alg));
        }
        let fetched;
        let key = match &self.keys {
            Keys::Fixed(key) => key,
            Keys::Jwks(jwks) => {
                fetched = jwks.key_for(header.kid.as_deref(), header.alg).await?;
                &*fetched
            }
        };
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(AuthError::WrongAlgorithm(header.alg));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|error| AuthError::from_jwt(&error))?
            .claims;
        let caller = match claims.role.as_deref() {
            Some("customer") => Uuid::parse_str(&claims.sub)
                .map(Caller::Customer)
                .map_err(|_| AuthError::Malformed("a customer token's sub must be the customer's id (a UUID)".into())),
            Some("admin") => Ok(Caller::Admin { subject: claims.sub }),
            Some(_) | None => Err(AuthError::Malformed("the role claim must be \"customer\" or \"admin\"".into())),
        }?;
        Ok((caller, UNIX_EPOCH + Duration::try_from_secs_f64(claims.exp).unwrap_or_default()))
    }
}

/// A PEM public key and the algorithms of its kind.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, Vec<Algorithm>)> {
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        // The EdDSA check slices 32 bytes off the key: anything shorter is no Ed25519 key.
        return (key.try_get_as_bytes().ok()?.len() == 32).then_some((key, vec![Algorithm::EdDSA]));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, RSA.to_vec()));
    }
    let key = DecodingKey::from_ec_pem(pem).ok()?;
    // An uncompressed point: 65 bytes on P-256, 97 on P-384.
    let algorithm = match key.try_get_as_bytes().ok()?.len() {
        65 => Algorithm::ES256,
        97 => Algorithm::ES384,
        _ => return None,
    };
    Some((key, vec![algorithm]))
}

/// The algorithms a JWK's kind allows, narrowed to its `alg` when it names one.
pub(crate) fn jwk_algorithms(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Vec<Algorithm>> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, PublicKeyUse};
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return None;
    }
    let of_kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => RSA.to_vec(),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
        // A shared secret (`oct`) in a published key set would let anyone sign; other curves
        // and kinds of key sign no algorithm accepted here.
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(of_kind),
        Some(named) => {
            let named: Algorithm = named.to_string().parse().ok()?;
            of_kind.contains(&named).then(|| vec![named])
        }
    }
}

/// A JWK's key, if it is one a token can be checked with.
pub(crate) fn jwk_key(jwk: &jsonwebtoken::jwk::Jwk, issuance: &Issuance) -> Option<TrustedKey> {
    let algorithms = jwk_algorithms(jwk)?;
    let key = DecodingKey::from_jwk(jwk).ok()?;
    if algorithms == [Algorithm::EdDSA] && key.try_get_as_bytes().ok()?.len() != 32 {
        return None;
    }
    Some(TrustedKey::new(jwk.common.key_id.clone(), key, algorithms, issuance))
}
