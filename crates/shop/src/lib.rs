//! The composition root: wires each service's layers to its database (PostgreSQL, or SQLite in
//! the embedded mode), the broker (RabbitMQ, or the embedded one) and HTTP, and runs them with
//! graceful shutdown. The `shop` binary (main.rs) is a thin CLI over this.

pub mod config;
pub mod dead_letters;
mod server;
mod services;
mod storefront;
pub mod supervision;
pub mod telemetry;
pub mod topology;

pub use config::{AuthSettings, BrokerSettings, DataDir, InventorySettings, Mode, OrderSettings, Storage, Tuning};
pub use config::{StorefrontDatabase, StorefrontSettings};
pub use services::{Database, RunningService, Runtime, start_inventory, start_order, storage};
pub use storefront::{STOREFRONT, StorefrontRuntime, migrate_storefront, start_storefront};

use std::path::Path;

/// Creates the services' databases if needed and runs their migrations: PostgreSQL where a URL
/// is set, else the SQLite files in `embedded_dir`.
pub async fn migrate(
    orders: &OrderSettings,
    inventory: &InventorySettings,
    embedded_dir: Option<&Path>,
) -> anyhow::Result<()> {
    use config::embedded;
    let tuning = Tuning { db_pool_size: 2, ..Tuning::default() };
    let orders_url = orders.database_url.as_deref();
    let orders = storage(orders_url, embedded_dir, embedded::ORDERS, "SHOP_ORDERS_DATABASE_URL")?;
    let (postgres, sqlite) = (order::infrastructure::migrator, order::infrastructure::sqlite_migrator);
    Database::open("order", &orders, &tuning, postgres, sqlite).await?.close().await;
    let inventory_url = inventory.database_url.as_deref();
    let inventory = storage(inventory_url, embedded_dir, embedded::INVENTORY, "SHOP_INVENTORY_DATABASE_URL")?;
    let (postgres, sqlite) = (inventory::infrastructure::migrator, inventory::infrastructure::sqlite_migrator);
    Database::open("inventory", &inventory, &tuning, postgres, sqlite).await?.close().await;
    Ok(())
}
