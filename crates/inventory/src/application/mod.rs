//! The inventory application layer: product commands behind the HTTP API, the stock handler
//! and the ReserveStocks saga behind the broker, and the ports they use.

mod error;
mod products;
pub mod ports;
pub mod saga;
mod saga_handler;
mod stock_handler;

pub use error::AppError;
pub use ports::{ProductStore, ProductSummary, SagaStore};
pub use products::{NewProduct, ProductService};
pub use saga::{ReservationSaga, SagaState};
pub use saga_handler::ReservationSagaHandler;
pub use stock_handler::StockHandler;

/// Names this service's queues and log lines.
pub const SERVICE: &str = "inventory";

use messaging::SaveError;

/// A save's outcome for a message handler: a copy that was already applied is a success.
fn applied(outcome: Result<(), SaveError>) -> Result<(), AppError> {
    match outcome {
        Ok(()) | Err(SaveError::AlreadyConsumed) => Ok(()),
        Err(error) => Err(error.into()),
    }
}
