//! Adapters: the accounts in PostgreSQL or, embedded, in SQLite, the client of the two services' APIs, and the files
//! the storefront keeps in the data directory (its cookie key, a generated admin password).

mod accounts;
pub mod api;
pub mod files;

pub use accounts::{PgAccountStore, SqliteAccountStore};

use sqlx::migrate::Migrator;

/// The storefront database's migrations.
pub fn migrator() -> Migrator {
    static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");
    Migrator::with_migrations(MIGRATIONS.migrations.to_vec())
}

/// The migrations of the storefront's SQLite file (the embedded mode).
pub fn sqlite_migrator() -> Migrator {
    static MIGRATIONS: Migrator = sqlx::migrate!("./migrations-sqlite");
    Migrator::with_migrations(MIGRATIONS.migrations.to_vec())
}
