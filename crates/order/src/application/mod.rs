//! The order application layer: command handlers behind the HTTP API, message handlers behind
//! the broker, and the ports they use. No SQL, no HTTP, no broker client here.

mod changes;
mod commands;
mod error;
mod handlers;
mod messages;
pub mod ports;
mod recent_catalog;

pub use changes::OrderChanges;
pub use commands::{Actor, IdempotencyKey, IdempotencyKeyText, NewOrder, OrderService, StockOutcome};
pub use error::AppError;
pub use handlers::{CatalogHandler, ProductNews, ReservationOutcome, ReservationOutcomeHandler};
pub use ports::{Catalog, IdempotencyKeyUse, OrderFilter, OrderPage, OrderStore, OrderSummary};
pub use recent_catalog::RecentCatalog;

/// Names this service's queues and log lines.
pub const SERVICE: &str = "order";

/// The consumers this service runs; each has the queue `Naming::queue(SERVICE, consumer)`.
pub const CONSUMERS: &[&str] = &[CatalogHandler::NAME, ReservationOutcomeHandler::NAME];
