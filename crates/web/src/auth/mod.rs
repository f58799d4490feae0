//! Who is calling: a bearer token (JWT) on every `/api` request.
//!
//! - [`Verifier`] checks a token's signature, algorithm, issuer, audience and expiry against
//!   the keys it trusts ([`KeySource`]: the local development key, a PEM public key, or an
//!   identity provider's JWKS) and names the [`Caller`].
//! - [`require_token`] puts an API behind a verifier: a request without a valid token gets a
//!   401 problem with `WWW-Authenticate: Bearer`; the others carry their [`Caller`], which
//!   handlers extract ([`Caller`], or [`Admin`] on admin-only routes: 403 for customers).
//! - [`LocalKey`] and [`Signer`] mint tokens with the local Ed25519 key (`shop token`, the
//!   tests, and any backend that signs its users in and calls the APIs for them).
//! - [`BearerAuth`] declares the scheme, and the 401 answer, on every operation of an OpenAPI
//!   document.
//!
//! Tokens carry `sub`, `iss`, `aud`, `exp`, `iat` and `role` (`customer` or `admin`); a
//! customer's `sub` is its id (a UUID), an admin's is free text. Tokens are never logged.

mod error;
mod jwks;
mod keys;
mod openapi;
mod signer;
mod verifier;

pub use error::{AuthError, KeyError};
pub use jwks::JwksSettings;
pub use keys::LocalKey;
pub use openapi::BearerAuth;
pub use signer::Signer;
pub use verifier::{KeySource, LEEWAY, Verifier};

use crate::Problem;
use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use uuid::Uuid;

/// What a token allows: a customer acts on its own orders, an admin on everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Admin,
}

/// Who signs tokens (`iss`) and whom they are meant for (`aud`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuance {
    pub issuer: String,
    pub audience: String,
}

/// Who is calling, as a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A customer; the token's `sub` is the customer's id.
    Customer(Uuid),
    /// An administrator; `subject` (the token's `sub`) names them.
    Admin { subject: String },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Customer(id) => write!(f, "customer {id}"),
            Caller::Admin { subject } => write!(f, "admin {subject}"),
        }
    }
}

/// Puts every route of `api` behind `verifier`: each request must carry a valid bearer token,
/// and its handlers can extract the [`Caller`].
pub fn require_token(api: Router, verifier: Arc<Verifier>) -> Router {
    api.layer(axum::middleware::from_fn_with_state(verifier, authenticate))
}

async fn authenticate(State(verifier): State<Arc<Verifier>>, mut request: Request, next: Next) -> Response {
    let verified = match bearer_token(request.headers()) {
        Ok(token) => verifier.verify(token).await,
        Err(error) => Err(error),
    };
    match verified {
        Ok(caller) => {
            tracing::Span::current().record("caller", tracing::field::display(&caller));
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            tracing::debug!(reason = %error, "request refused");
            error.into_response()
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    match token.trim() {
        "" => Err(AuthError::Missing),
        token => Ok(token),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Problem::internal("a route that needs its caller is not behind require_token"))
    }
}

/// An admin caller; extracting it answers every other caller with 403.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub subject: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Admin { subject } => Ok(Admin { subject }),
            Caller::Customer(_) => Err(Problem::forbidden("only an admin may do this")),
        }
    }
}

#[cfg(test)]
mod tests;
