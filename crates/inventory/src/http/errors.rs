//! Application errors as problem+json.

use crate::application::AppError;
use crate::domain::ProductError;
use web::Problem;

impl From<AppError> for Problem {
    fn from(error: AppError) -> Self {
        let detail = error.to_string();
        match error {
            AppError::ProductNotFound(_) | AppError::ReservationNotFound(_) => Problem::not_found(detail),
            AppError::Rule(rule) => match rule {
                ProductError::PriceNotPositive => Problem::invalid_input(detail),
                ProductError::StockTooLarge
                | ProductError::InsufficientStock { .. }
                | ProductError::AlreadyReserved { .. }
                | ProductError::NoReservation { .. } => Problem::rule_broken(detail),
                // No HTTP command touches a reservation.
                defect @ ProductError::NotInHand { .. } => Problem::internal(defect),
            },
            AppError::Saga(_) => Problem::rule_broken(detail),
            // Only messages carry these; an HTTP command that met one would be a defect.
            AppError::InvalidMessage(_) => Problem::internal(error),
            AppError::Load(storage) => storage.into(),
            AppError::Save(storage) => storage.into(),
        }
    }
}
