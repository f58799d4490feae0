//! HTTP conventions shared by the order and inventory APIs.
//!
//! - [`Problem`]: RFC 7807 `application/problem+json` errors.
//! - [`Json`], [`Path`], [`Query`], [`header`]: extractors whose rejections are problems naming
//!   the field, parameter or header (400; 413 and 415 for bodies), never axum's plain-text
//!   defaults.
//! - [`shed_load`] and [`time_limit`]: past a number of requests in flight, 503 with
//!   `Retry-After` at once; a request that runs too long, 503.
//! - [`Conditional`]: a GET that holds the current version (`If-None-Match`) and asks to wait
//!   (`Prefer: wait=N`) is answered when the resource changes, or 304 after the wait.
//! - [`PageSize`]: the size of a page of a list, in range.
//! - [`SharedResponses`]: the answers the shared extractors and middleware give, declared on
//!   every operation of an OpenAPI document.
//! - [`RequestTrace`] and [`trace_request`]: a span per request, named by its route, continuing
//!   the caller's W3C trace context, and that context for the commands the request runs.
//! - [`operations_router`]: `/health/live`, `/health/ready`, `/metrics`.
//! - [`auth`]: bearer tokens, who is calling, and minting tokens with the local key.
//! - [`admin`]: the operators' routes every service mounts (outbox, queues, dead letters).

pub mod admin;
pub mod auth;
mod conditional;
mod extract;
mod limits;
mod openapi;
mod operations;
mod page;
mod problem;
mod trace;

pub use conditional::{Conditional, MAX_WAIT, tagged, version_tag};
pub use extract::{Json, MAX_BODY_BYTES, Path, Query, header};
pub use limits::{InFlightLimit, InFlightPlace, RETRY_AFTER, RequestDeadline, shed_load, time_limit};
pub use openapi::SharedResponses;
pub use operations::{ReadinessCheck, operations_router};
pub use page::PageSize;
pub use problem::Problem;
pub use trace::{RequestTrace, trace_request};

/// Fallback for unknown routes: a 404 problem.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route for {}", uri.path()))
}
