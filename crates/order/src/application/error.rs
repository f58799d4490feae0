use crate::domain::{OrderError, OrderId, ProductId};
use messaging::{BoxError, HandlerError, IsConflict, SaveError};

/// Why an order command did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("order {0} does not exist")]
    OrderNotFound(OrderId),
    #[error("product {0} is not in the catalog")]
    UnknownProduct(ProductId),
    #[error(transparent)]
    Rule(#[from] OrderError),
    #[error("the Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The caller's role may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("customerId: required when an admin creates an order")]
    CustomerRequired,
    /// The store was in the way (still conflicting after the retries, unreachable, ...).
    #[error(transparent)]
    Storage(#[from] SaveError),
}

impl From<BoxError> for AppError {
    fn from(error: BoxError) -> Self {
        AppError::Storage(error.into())
    }
}

impl IsConflict for AppError {
    fn is_conflict(&self) -> bool {
        matches!(self, AppError::Storage(SaveError::Conflict))
    }
}

impl From<AppError> for HandlerError {
    /// Whether a message handler should try again: only when storage was in the way.
    fn from(error: AppError) -> Self {
        match error {
            AppError::Storage(storage) if storage.is_transient() => HandlerError::Transient(storage.to_string()),
            other => HandlerError::Permanent(other.to_string()),
        }
    }
}
