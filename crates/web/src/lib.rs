//! HTTP conventions shared by the order and inventory APIs.
//!
//! - [`Problem`]: RFC 7807 `application/problem+json` errors.
//! - [`Json`], [`Path`], [`Query`]: extractors whose rejections are problems (400), never
//!   axum's plain-text defaults.
//! - [`RequestTrace`] and [`trace_request`]: a span per request, named by its route, continuing
//!   the caller's W3C trace context, and that context for the commands the request runs.
//! - [`operations_router`]: `/health/live`, `/health/ready`, `/metrics`.
//! - [`auth`]: bearer tokens, who is calling, and minting tokens with the local key.
//! - [`admin`]: the operators' routes every service mounts (outbox, queues, dead letters).

pub mod admin;
pub mod auth;
mod extract;
mod operations;
mod problem;
mod trace;

pub use extract::{Json, Path, Query};
pub use operations::{ReadinessCheck, operations_router};
pub use problem::Problem;
pub use trace::{RequestTrace, trace_request};

/// Fallback for unknown routes: a 404 problem.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route for {}", uri.path()))
}
