//! Application errors as problem+json: 400 invalid input, 403 not for this caller's role,
//! 404 unknown id (or another customer's order), 409 a transition the state forbids or a
//! concurrent change, 422 a business rule, 500 stored data that cannot be read back, 503 a
//! dependency down.

use crate::application::AppError;
use crate::domain::OrderError;
use web::Problem;

impl From<AppError> for Problem {
    fn from(error: AppError) -> Self {
        let detail = error.to_string();
        match error {
            AppError::OrderNotFound(_) => Problem::not_found(detail),
            AppError::UnknownProduct(_) | AppError::IdempotencyKeyReused => Problem::rule_broken(detail),
            AppError::Forbidden(_) => Problem::forbidden(detail),
            AppError::CustomerRequired => Problem::invalid_input(detail),
            AppError::Rule(rule) => match rule {
                OrderError::NotADraft(_) | OrderError::TransitionRefused { .. } => Problem::conflict(detail),
                OrderError::NoSuchLine(_) => Problem::not_found(detail),
                OrderError::EmptyOrder | OrderError::TooManyLines | OrderError::Quantity(_) | OrderError::Money(_) => {
                    Problem::rule_broken(detail)
                }
            },
            AppError::Load(storage) => storage.into(),
            AppError::Save(storage) => storage.into(),
        }
    }
}
