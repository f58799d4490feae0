use crate::Problem;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use std::path::PathBuf;

/// Why a request's token was refused. None of these repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this API needs a bearer token: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's signature does not verify with the keys this API trusts")]
    BadSignature,
    #[error("the token is signed with {0:?}, an algorithm this API does not accept")]
    WrongAlgorithm(Algorithm),
    #[error("the token is meant for another audience (aud)")]
    WrongAudience,
    #[error("the token comes from an issuer this API does not trust (iss)")]
    WrongIssuer,
    #[error("the token is signed with a key this API does not know (kid)")]
    UnknownKey,
    /// The identity provider's keys could not be fetched and none are known yet.
    #[error("the keys that tokens are checked with cannot be fetched now")]
    KeysUnavailable,
}

impl AuthError {
    pub(crate) fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::Malformed(format!("the {claim} claim is missing")),
            ErrorKind::InvalidClaimFormat(claim) => {
                AuthError::Malformed(format!("the {claim} claim has the wrong type"))
            }
            ErrorKind::Json(_) => AuthError::Malformed("its header or claims are not the JSON expected".into()),
            // The rest (bad base64, not three parts, ...) and kinds added later.
            _ => AuthError::Malformed("not a JWT (base64url header.claims.signature)".into()),
        }
    }
}

impl IntoResponse for AuthError {
    /// 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750), or 503 when the keys are out
    /// of reach; a problem+json body either way.
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let challenge = match &self {
            AuthError::KeysUnavailable => return Problem::unavailable(detail).into_response(),
            AuthError::Missing | AuthError::NotBearer => "Bearer".to_owned(),
            _ => format!("Bearer error=\"invalid_token\", error_description=\"{}\"", detail.replace(['"', '\\'], "'")),
        };
        let problem = Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Unauthenticated", detail);
        let mut response = problem.into_response();
        let challenge = HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer"));
        response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        response
    }
}

/// Why keys to sign or verify tokens with could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the signing key {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not an Ed25519 private key in PKCS#8 PEM (`openssl genpkey -algorithm ed25519` makes one)",
        path.display()
    )]
    NotEd25519PrivateKey { path: PathBuf },
    #[error("{} is not a PEM public key of a kind this API accepts (Ed25519, RSA, EC P-256 or P-384)", path.display())]
    NotPublicKey { path: PathBuf },
    #[error("the JWKS URL {0:?} is not an absolute http or https URL")]
    JwksUrl(String),
}
