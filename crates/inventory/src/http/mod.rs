//! The inventory service's HTTP API (axum): products, stock and the saga's reservation records.

mod dto;
mod errors;
mod routes;

pub use routes::{ApiDoc, router};
