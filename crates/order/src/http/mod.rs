//! The order service's HTTP API (axum): routes, request and response shapes, and how
//! application errors become problem+json responses.

mod dto;
mod errors;
mod routes;

pub use routes::{ApiDoc, router};
