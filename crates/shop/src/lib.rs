//! The composition root: wires each service's layers to PostgreSQL, RabbitMQ and HTTP, and
//! runs them with graceful shutdown. The `shop` binary (main.rs) is a thin CLI over this.

pub mod config;
pub mod dead_letters;
mod server;
mod services;
mod storefront;
pub mod supervision;
pub mod telemetry;
pub mod topology;

pub use config::{AuthSettings, BrokerSettings, DataDir, InventorySettings, OrderSettings, Tuning};
pub use config::{StorefrontDatabase, StorefrontSettings};
pub use services::{RunningService, Runtime, start_inventory, start_order};
pub use storefront::{STOREFRONT, StorefrontRuntime, migrate_storefront, start_storefront};

/// Creates both databases if needed and runs their migrations.
pub async fn migrate(orders: &OrderSettings, inventory: &InventorySettings) -> anyhow::Result<()> {
    let tuning = Tuning { db_pool_size: 2, ..Tuning::default() };
    services::database("order", &orders.database_url, &tuning, order::infrastructure::migrator()).await?.close().await;
    let inventory_migrator = inventory::infrastructure::migrator();
    services::database("inventory", &inventory.database_url, &tuning, inventory_migrator).await?.close().await;
    Ok(())
}
