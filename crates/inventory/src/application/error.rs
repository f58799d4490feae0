use super::saga::SagaError;
use crate::domain::{OrderId, ProductError, ProductId};
use messaging::{BoxError, HandlerError, IsConflict, SaveError};

/// Why an inventory command or message was not applied.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("product {0} does not exist")]
    ProductNotFound(ProductId),
    #[error("there is no stock reservation for order {0}")]
    ReservationNotFound(OrderId),
    #[error(transparent)]
    Rule(#[from] ProductError),
    #[error(transparent)]
    Saga(#[from] SagaError),
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
