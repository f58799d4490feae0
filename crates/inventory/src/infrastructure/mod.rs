//! Adapters: the PostgreSQL stores behind the application's ports, and the migrations.

mod products;
mod sagas;

pub use products::PgProductStore;
pub use sagas::PgSagaStore;

use sqlx::migrate::Migrator;

/// This service's schema (with the messaging tables in front).
pub fn migrator() -> Migrator {
    static INVENTORY_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");
    messaging::postgres::with_messaging_migrations(&INVENTORY_MIGRATIONS)
}
