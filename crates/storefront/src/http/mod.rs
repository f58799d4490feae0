//! The storefront's pages: customers' (catalog, sign-up and sign-in, cart, checkout, orders
//! that follow themselves live) and the operators' console (products, orders and their sagas,
//! the system's queues and dead letters). Rendered on the server; every form works without
//! JavaScript, and `app.js` only makes the order page live.

mod admin;
mod customer;
mod errors;
mod session;
mod views;

pub use axum_extra::extract::cookie::Key as CookieKey;
pub use errors::PageError;

use crate::application::Accounts;
use crate::infrastructure::api::{Acting, ApiError, ShopApi};
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::Key;
use session::{SessionHandle, SessionUser};
use std::sync::Arc;

/// What the pages need.
#[derive(Clone)]
pub struct Storefront {
    pub accounts: Arc<Accounts>,
    pub api: ShopApi,
    /// Encrypts and authenticates the session cookies.
    pub cookie_key: Key,
    /// Mark cookies `Secure` (the storefront is served over https).
    pub secure_cookies: bool,
    /// Cancelled when the storefront stops: live pages' streams end, so that stopping does
    /// not wait for them.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// Every page and the static files. Operational endpoints (`/health/*`) are added by whoever
/// runs it.
pub fn router(app: Storefront) -> Router {
    Router::new()
        .route("/", get(customer::catalog))
        .route("/signup", get(customer::sign_up_form).post(customer::sign_up))
        .route("/signin", get(customer::sign_in_form).post(customer::sign_in))
        .route("/signout", post(customer::sign_out))
        .route("/cart", get(customer::cart))
        .route("/cart/items", post(customer::add_to_cart))
        .route("/cart/items/{product_id}", post(customer::change_quantity))
        .route("/cart/items/{product_id}/remove", post(customer::remove_from_cart))
        .route("/cart/checkout", post(customer::checkout))
        .route("/orders", get(customer::orders))
        .route("/orders/{id}", get(customer::order))
        .route("/orders/{id}/events", get(customer::order_events))
        .route("/orders/{id}/cancel", post(customer::cancel))
        .route("/admin", get(admin::home))
        .route("/admin/products", get(admin::products).post(admin::create_product))
        .route("/admin/products/{id}/restock", post(admin::restock))
        .route("/admin/products/{id}/price", post(admin::change_price))
        .route("/admin/orders", get(admin::orders))
        .route("/admin/orders/{id}", get(admin::order))
        .route("/admin/orders/{id}/ship", post(admin::ship))
        .route("/admin/system", get(admin::system))
        .route("/admin/system/{service}/{consumer}/{action}", post(admin::dead_letters))
        .layer(axum::middleware::from_fn_with_state(app.clone(), session::sessions))
        .route("/static/app.css", get(|| static_file("text/css; charset=utf-8", include_str!("../../static/app.css"))))
        .route(
            "/static/app.js",
            get(|| static_file("text/javascript; charset=utf-8", include_str!("../../static/app.js"))),
        )
        .fallback(|| async { PageError::NotFound })
        .with_state(app)
        .layer(axum::middleware::from_fn(security_headers))
}

async fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Headers on every answer: scripts and styles only from this origin (no inline script), no
/// framing, no MIME sniffing, no referrer sent elsewhere; pages are not cached.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'",
    );
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "same-origin");
    set(header::X_FRAME_OPTIONS, "DENY");
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A form body; one that cannot be read is a 400 page.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Form), rejection(PageError))]
struct Form<T>(T);

/// Path parameters; ones of the wrong shape name nothing (404).
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(PageError))]
struct Path<T>(T);

/// Query parameters; a bad one is a 400 page.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(PageError))]
struct Query<T>(T);

/// A page as HTML.
fn html(page: impl askama::Template) -> Result<axum::response::Html<String>, PageError> {
    Ok(axum::response::Html(page.render()?))
}

/// The frame of a page for this session (taking the message left for it).
fn chrome(session: &SessionHandle, title: impl Into<String>, section: &'static str) -> views::Chrome {
    let notice = session.take_notice();
    let snapshot = session.snapshot();
    views::Chrome { title: title.into(), user: snapshot.user, csrf: snapshot.csrf, notice, section }
}

/// Whom the storefront acts for when it calls the APIs for this session.
fn acting(session: &SessionHandle) -> Acting {
    match session.user() {
        Some(user) if user.admin => Acting::Admin(user.id),
        Some(user) => Acting::Customer(user.id),
        None => Acting::Visitor,
    }
}

/// After a form: a message for the next page, and that page. A refusal by a service (a rule,
/// a conflict) is shown to the user; a service that is down is an error page.
fn after<T>(
    session: &SessionHandle,
    to: &str,
    outcome: Result<T, ApiError>,
    notice: impl FnOnce(T) -> String,
) -> Result<Redirect, PageError> {
    match outcome {
        Ok(value) => session.notify(notice(value)),
        Err(ApiError::Refused { detail, .. }) => session.warn(detail),
        Err(error) => return Err(error.into()),
    }
    Ok(Redirect::to(to))
}

/// The signed-in user, or the sign-in page.
fn signed_in(session: &SessionHandle) -> Result<SessionUser, PageError> {
    session.user().ok_or(PageError::SignInRequired)
}
