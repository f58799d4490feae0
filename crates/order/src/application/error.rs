use crate::domain::{OrderError, OrderId, ProductId};
use messaging::{IsConflict, IsTransient, LoadError, SaveError};

/// Why an order command or message was not applied.
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
    /// The store could not be read (unreachable), or holds what cannot be read back (corrupt).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The store was in the way of a save (still conflicting after the retries, unreachable, ...).
    #[error(transparent)]
    Save(#[from] SaveError),
}

impl IsConflict for AppError {
    fn is_conflict(&self) -> bool {
        matches!(self, AppError::Save(SaveError::Conflict))
    }
}

impl IsTransient for AppError {
    /// Whether a message handler should try again: only when a store was in the way.
    fn is_transient(&self) -> bool {
        match self {
            AppError::Load(error) => error.is_transient(),
            AppError::Save(error) => error.is_transient(),
            AppError::OrderNotFound(_)
            | AppError::UnknownProduct(_)
            | AppError::Rule(_)
            | AppError::IdempotencyKeyReused
            | AppError::Forbidden(_)
            | AppError::CustomerRequired => false,
        }
    }
}
