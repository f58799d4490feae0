//! Adapters: the stores behind the application's ports, on PostgreSQL (production) and SQLite
//! (the embedded mode), and each database's migrations.

mod products;
mod sagas;
mod sqlite;

pub use products::PgProductStore;
pub use sagas::PgSagaStore;
pub use sqlite::{SqliteProductStore, SqliteSagaStore};

use sqlx::migrate::Migrator;

/// This service's schema (with the messaging tables in front).
pub fn migrator() -> Migrator {
    static INVENTORY_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");
    messaging::postgres::with_messaging_migrations(&INVENTORY_MIGRATIONS)
}

/// This service's schema for SQLite (with the messaging tables in front).
pub fn sqlite_migrator() -> Migrator {
    static INVENTORY_MIGRATIONS: Migrator = sqlx::migrate!("./migrations-sqlite");
    messaging::sqlite::with_messaging_migrations(&INVENTORY_MIGRATIONS)
}
