//! Configuration: every setting is a flag with an environment variable fallback and a default
//! that works on a developer machine (PostgreSQL and RabbitMQ on localhost).

use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct OrderSettings {
    /// PostgreSQL database of the order service (created if missing).
    #[arg(
        id = "orders_database_url",
        value_name = "URL",
        long = "orders-database-url",
        env = "SHOP_ORDERS_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/shop_orders"
    )]
    pub database_url: String,
    /// Address the order API listens on.
    #[arg(
        id = "orders_http_addr",
        value_name = "ADDR",
        long = "orders-http-addr",
        env = "SHOP_ORDERS_HTTP_ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub http_addr: SocketAddr,
}

#[derive(Debug, Clone, Args)]
pub struct InventorySettings {
    /// PostgreSQL database of the inventory service (created if missing).
    #[arg(
        id = "inventory_database_url",
        value_name = "URL",
        long = "inventory-database-url",
        env = "SHOP_INVENTORY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/shop_inventory"
    )]
    pub database_url: String,
    /// Address the inventory API listens on.
    #[arg(
        id = "inventory_http_addr",
        value_name = "ADDR",
        long = "inventory-http-addr",
        env = "SHOP_INVENTORY_HTTP_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    pub http_addr: SocketAddr,
    /// How long a stock reservation may take before the order is rejected (e.g. 10m, 30s).
    #[arg(long, env = "SHOP_RESERVATION_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    pub reservation_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct BrokerSettings {
    /// RabbitMQ URL.
    #[arg(long, env = "SHOP_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name, so several systems can share one broker.
    #[arg(long, env = "SHOP_QUEUE_PREFIX", default_value = "shop")]
    pub queue_prefix: String,
}

#[derive(Debug, Clone, Args)]
pub struct Tuning {
    /// Database connections per service.
    #[arg(long, env = "SHOP_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// Messages each consumer handles at once.
    #[arg(long, env = "SHOP_CONSUMER_CONCURRENCY", default_value_t = 16)]
    pub consumer_concurrency: usize,
    /// Unacknowledged messages the broker may push to each consumer.
    #[arg(long, env = "SHOP_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Longest wait of the outbox relay between sweeps (it is woken at commit anyway).
    #[arg(long, env = "SHOP_RELAY_SWEEP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub relay_sweep: Duration,
    /// How long a request may run before it is answered with 503.
    #[arg(long, env = "SHOP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            db_pool_size: 16,
            consumer_concurrency: 16,
            prefetch: 64,
            relay_sweep: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
        }
    }
}
