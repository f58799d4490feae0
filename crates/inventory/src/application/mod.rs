//! The inventory application layer: product commands behind the HTTP API, the stock handler
//! and the ReserveStocks saga behind the broker, and the ports they use.

mod error;
pub mod ports;
mod products;
pub mod saga;
mod saga_handler;
mod stock_handler;

pub use error::AppError;
pub use ports::{ProductStore, ProductSummary, SagaStore};
pub use products::{NewProduct, ProductService};
pub use saga::{ReservationSaga, SagaLine, SagaState};
pub use saga_handler::{ReservationSagaHandler, SagaMessage};
pub use stock_handler::{StockCommand, StockHandler};

/// Names this service's queues and log lines.
pub const SERVICE: &str = "inventory";

/// The consumers this service runs; each has the queue `Naming::queue(SERVICE, consumer)`.
pub const CONSUMERS: &[&str] = &[ReservationSagaHandler::NAME, StockHandler::NAME];
