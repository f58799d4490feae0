//! Adapters: the stores behind the application's ports, on PostgreSQL (production) and SQLite
//! (the embedded mode), and each database's migrations.

mod catalog;
mod orders;
mod sqlite;

pub use catalog::PgCatalog;
pub use orders::PgOrderStore;
pub use sqlite::{SqliteCatalog, SqliteOrderStore};

use sqlx::migrate::Migrator;

/// This service's schema (with the messaging tables in front).
pub fn migrator() -> Migrator {
    static ORDER_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");
    messaging::postgres::with_messaging_migrations(&ORDER_MIGRATIONS)
}

/// This service's schema for SQLite (with the messaging tables in front).
pub fn sqlite_migrator() -> Migrator {
    static ORDER_MIGRATIONS: Migrator = sqlx::migrate!("./migrations-sqlite");
    messaging::sqlite::with_messaging_migrations(&ORDER_MIGRATIONS)
}
