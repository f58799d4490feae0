use super::saga::SagaError;
use crate::domain::{OrderId, ProductError, ProductId};
use messaging::{BoxError, IsConflict, IsTransient, LoadError, SaveError};

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
    /// A message carries a value the domain refuses (a product id of 0, say): a defect upstream.
    #[error("the message carries an invalid value")]
    InvalidMessage(#[source] BoxError),
    /// The store could not be read (unreachable), or holds what cannot be read back (corrupt).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The store was in the way of a save (still conflicting after the retries, unreachable, ...).
    #[error(transparent)]
    Save(#[from] SaveError),
}

impl AppError {
    /// A message that carries a value the domain refuses, because of `error`.
    pub fn invalid_message(error: impl Into<BoxError>) -> Self {
        AppError::InvalidMessage(error.into())
    }
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
            AppError::ProductNotFound(_)
            | AppError::ReservationNotFound(_)
            | AppError::Rule(_)
            | AppError::Saga(_)
            | AppError::InvalidMessage(_) => false,
        }
    }
}
