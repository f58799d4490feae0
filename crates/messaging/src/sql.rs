//! What the PostgreSQL and SQLite adapters share.

use crate::unit_of_work::LoadError;
use sqlx::migrate::Migrator;

/// Classifies a database error for a read: a value that does not decode means the stored `what`
/// cannot be read back; anything else means the database was in the way.
pub fn load_error(error: sqlx::Error, what: impl Into<String>) -> LoadError {
    match error {
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
            LoadError::corrupt(what, error)
        }
        _ => LoadError::unavailable(error),
    }
}

/// One migrator: the messaging tables' migrations, then the service's (numbered from 100).
pub(crate) fn in_front(messaging: &Migrator, service: &Migrator) -> Migrator {
    let mut migrations = messaging.migrations.to_vec();
    migrations.extend(service.migrations.iter().cloned());
    Migrator::with_migrations(migrations)
}
