//! Sessions in a cookie the browser cannot read or forge: JSON encrypted and authenticated
//! with the storefront's key (`PrivateCookieJar`), HttpOnly, SameSite=Lax, Secure (and named
//! `__Host-...`) when served over https, expiring 12 hours after sign-in.
//!
//! Every visitor gets one, signed in or not, because it carries the CSRF token: every form has
//! it in a hidden field and every POST must send it back (checked here, for every route at
//! once), from a page of this origin (`Origin` / `Sec-Fetch-Site`).

use super::Storefront;
use super::errors::PageError;
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, PrivateCookieJar, SameSite};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// How long a session lasts.
const LIFETIME_SECS: i64 = 12 * 3600;
/// The largest form body a POST may send.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// The hidden field every form carries.
pub const CSRF_FIELD: &str = "csrf";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub csrf: String,
    pub user: Option<SessionUser>,
    /// A message for the next page (after a redirect).
    pub notice: Option<Notice>,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionUser {
    pub id: Uuid,
    pub email: String,
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub error: bool,
    pub text: String,
}

impl Session {
    fn fresh() -> Self {
        use base64::Engine;
        let csrf =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::infrastructure::files::random_bytes(32));
        Self { csrf, user: None, notice: None, expires_at: chrono::Utc::now().timestamp() + LIFETIME_SECS }
    }

    fn expired(&self) -> bool {
        chrono::Utc::now().timestamp() >= self.expires_at
    }
}

/// The request's session; changes are written back to the cookie with the response.
#[derive(Clone)]
pub struct SessionHandle(Arc<Mutex<Session>>);

impl SessionHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.0.lock().expect("session lock poisoned")
    }

    pub fn snapshot(&self) -> Session {
        self.lock().clone()
    }

    pub fn user(&self) -> Option<SessionUser> {
        self.lock().user.clone()
    }

    pub fn csrf(&self) -> String {
        self.lock().csrf.clone()
    }

    /// Signs `user` in: a new session (new CSRF token), so nothing from before carries over.
    pub fn sign_in(&self, user: SessionUser) {
        *self.lock() = Session { user: Some(user), ..Session::fresh() };
    }

    pub fn sign_out(&self) {
        *self.lock() = Session::fresh();
    }

    pub fn notify(&self, text: impl Into<String>) {
        self.lock().notice = Some(Notice { error: false, text: text.into() });
    }

    pub fn warn(&self, text: impl Into<String>) {
        self.lock().notice = Some(Notice { error: true, text: text.into() });
    }

    /// The message left for this page, once.
    pub fn take_notice(&self) -> Option<Notice> {
        self.lock().notice.take()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionHandle {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<SessionHandle>().cloned().ok_or_else(|| PageError::internal("no session middleware"))
    }
}

impl Storefront {
    fn cookie_name(&self) -> &'static str {
        if self.secure_cookies { "__Host-storefront" } else { "storefront" }
    }
}

/// Middleware: the session from the cookie (or a new one), the CSRF and origin checks of every
/// POST, and the cookie written back when the session changed.
pub async fn sessions(State(app): State<Storefront>, request: Request, next: Next) -> Response {
    let jar = PrivateCookieJar::from_headers(request.headers(), app.cookie_key.clone());
    let stored = jar
        .get(app.cookie_name())
        .and_then(|cookie| serde_json::from_str::<Session>(cookie.value()).ok())
        .filter(|session| !session.expired());
    let handle = SessionHandle(Arc::new(Mutex::new(stored.clone().unwrap_or_else(Session::fresh))));
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(handle.clone());
    let request = if parts.method == Method::POST {
        match checked_form(&parts.headers, body, &handle.csrf()).await {
            Ok(body) => Request::from_parts(parts, body),
            Err(refusal) => {
                tracing::info!(path = %parts.uri.path(), reason = refusal, "form refused");
                return PageError::Forbidden(format!("{refusal}. Reload the page and send the form again."))
                    .into_response();
            }
        }
    } else {
        Request::from_parts(parts, body)
    };
    let response = next.run(request).await;
    let session = handle.snapshot();
    if stored.as_ref() == Some(&session) {
        return response;
    }
    let value = serde_json::to_string(&session).expect("a session serializes");
    let cookie = Cookie::build((app.cookie_name(), value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(app.secure_cookies)
        .path("/")
        .build();
    (jar.add(cookie), response).into_response()
}

/// The body of a POST that came from a form of this site with the session's token, or why not.
async fn checked_form(headers: &HeaderMap, body: Body, expected: &str) -> Result<Body, &'static str> {
    same_origin(headers)?;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Err("a form must be sent as application/x-www-form-urlencoded");
    }
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|_| "the form is too large")?;
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes).map_err(|_| "the form is malformed")?;
    let sent = fields.iter().find(|(name, _)| name == CSRF_FIELD).map(|(_, value)| value.as_bytes());
    let matches = sent.is_some_and(|sent| bool::from(subtle::ConstantTimeEq::ct_eq(sent, expected.as_bytes())));
    if !matches {
        return Err("this form has expired or was not sent from this site");
    }
    Ok(Body::from(bytes))
}

/// Refuses requests a browser says came from another site. Requests without these headers
/// (not from a browser) still need the token.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if text("sec-fetch-site").is_some_and(|site| site == "cross-site" || site == "same-site") {
        return Err("the form was sent from another site");
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or_default();
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("null");
        if origin_host != host {
            return Err("the form was sent from another origin");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn a_post_from_another_origin_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("shop.example:8080"));
        headers.insert("origin", HeaderValue::from_static("http://shop.example:8080"));
        assert!(same_origin(&headers).is_ok());
        headers.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert!(same_origin(&headers).is_err());
        headers.insert("origin", HeaderValue::from_static("null"));
        assert!(same_origin(&headers).is_err());
        headers.remove("origin");
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin(&headers).is_err());
    }

    #[tokio::test]
    async fn a_form_needs_the_sessions_token() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        let form = |body: &'static str| Body::from(body);
        assert!(checked_form(&headers, form("csrf=right&x=1"), "right").await.is_ok());
        assert!(checked_form(&headers, form("csrf=wrong&x=1"), "right").await.is_err());
        assert!(checked_form(&headers, form("x=1"), "right").await.is_err());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(checked_form(&headers, form("csrf=right"), "right").await.is_err());
    }
}
