//! The SQLite stores of the embedded mode: the same ports and promises as the PostgreSQL ones,
//! over one file (`messaging::sqlite::Database`). Money is exact decimal text, ids are UUID text,
//! times are `messaging::sqlite::Timestamp`s.

mod catalog;
mod orders;

pub use catalog::SqliteCatalog;
pub use orders::SqliteOrderStore;

use messaging::BoxError;
use rust_decimal::Decimal;
use std::str::FromStr;

/// An amount stored as decimal text.
fn decimal(text: &str) -> Result<Decimal, BoxError> {
    Decimal::from_str(text).map_err(|error| format!("{text:?} is not a decimal amount: {error}").into())
}
