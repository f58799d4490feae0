//! Adapters: the PostgreSQL stores behind the application's ports, and the database migrations.

mod catalog;
mod orders;

pub use catalog::PgCatalog;
pub use orders::PgOrderStore;

use sqlx::migrate::Migrator;

/// This service's schema (with the messaging tables in front).
pub fn migrator() -> Migrator {
    static ORDER_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");
    messaging::postgres::with_messaging_migrations(&ORDER_MIGRATIONS)
}
