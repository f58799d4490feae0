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
    /// Still conflicting after the retries: the caller may try again.
    #[error("the order was changed concurrently; try again")]
    Conflict,
    /// Some message of a batch was applied before: the batch was not, and its messages must be
    /// applied one by one.
    #[error("a message of the batch was already applied")]
    PartlyApplied,
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The database refused a write: a defect, not bad input.
    #[error("storage refused the write: {0}")]
    StorageRefused(#[source] BoxError),
}

impl From<SaveError> for AppError {
    fn from(error: SaveError) -> Self {
        match error {
            SaveError::Conflict => AppError::Conflict,
            SaveError::AlreadyConsumed => AppError::PartlyApplied,
            SaveError::Unavailable(source) => AppError::Unavailable(source),
            SaveError::Refused(source) => AppError::StorageRefused(source),
        }
    }
}

impl From<BoxError> for AppError {
    fn from(error: BoxError) -> Self {
        AppError::Unavailable(error)
    }
}

impl IsConflict for AppError {
    fn is_conflict(&self) -> bool {
        matches!(self, AppError::Conflict)
    }
}

impl From<AppError> for HandlerError {
    /// Whether a message handler should try again: only when storage was in the way.
    fn from(error: AppError) -> Self {
        match error {
            AppError::Conflict | AppError::PartlyApplied | AppError::Unavailable(_) => {
                HandlerError::Transient(error.to_string())
            }
            other => HandlerError::Permanent(other.to_string()),
        }
    }
}
