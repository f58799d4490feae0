//! A whole system for end-to-end tests: both services on ephemeral ports in this process, in
//! either mode: each with a fresh PostgreSQL database, talking through the real RabbitMQ under
//! names no other test uses, or embedded (SQLite files and the embedded broker in a temporary
//! data directory). Tests drive it through its HTTP APIs only, with tokens of the system's own
//! signing key: an admin's, and one customer's (the customer of `new_order` and friends).
#![allow(dead_code)]

use messaging::Naming;
pub use messaging::testing::eventually;
use messaging::testing::{TestDatabase, amqp_url, init_logs, unique_naming};
use messaging::transport::rabbitmq::RabbitMq;
use messaging::transport::sqlite::SqliteTransport;
use messaging::transport::{DeadLetter, DeadLetters, Transport, error_queue_of};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use shop::config::embedded;
use shop::{InventorySettings, OrderSettings, RunningService, Runtime, Tuning};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use web::auth::{Issuance, KeySource, LocalKey, Role, Signer, Verifier};

/// The engines a system runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PostgreSQL and RabbitMQ.
    Postgres,
    /// SQLite files and the embedded broker.
    Embedded,
}

/// Where the system keeps its state, kept alive (and removed) with it.
enum Storage {
    Postgres {
        orders: TestDatabase,
        inventory: TestDatabase,
    },
    /// The SQLite files are in the system's data directory.
    Embedded,
}

/// The broker, for dead letters and cleanup.
enum Broker {
    Rabbit(RabbitMq),
    Embedded(SqliteTransport),
}

pub struct System {
    pub mode: Mode,
    pub orders_url: String,
    pub inventory_url: String,
    pub http: Client,
    storage: Storage,
    /// The key the services trust (in `data_dir`, where `shop token` and `harness load` find
    /// it), and a signer with it.
    pub key: LocalKey,
    pub data_dir: tempfile::TempDir,
    pub signer: Signer,
    pub admin: String,
    /// The customer whose token `new_order`, `add` and `command` use.
    pub customer: Uuid,
    pub customer_token: String,
    broker: Broker,
    naming: Naming,
    services: Vec<RunningService>,
}

/// What a test may change about the system it starts.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// PostgreSQL and RabbitMQ unless a test says otherwise.
    pub mode: Mode,
    pub reservation_timeout: Duration,
    /// High by default: tests that are not about overload must not meet it.
    pub max_requests_in_flight: usize,
    pub idempotency_key_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Postgres,
            reservation_timeout: Duration::from_secs(600),
            max_requests_in_flight: 10_000,
            idempotency_key_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl System {
    /// A system on PostgreSQL and RabbitMQ (the mode of every test that names none).
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    /// A system in `mode`.
    pub async fn start_in(mode: Mode) -> Self {
        Self::with(Options { mode, ..Options::default() }).await
    }

    pub async fn with_reservation_timeout(mode: Mode, reservation_timeout: Duration) -> Self {
        Self::with(Options { mode, reservation_timeout, ..Options::default() }).await
    }

    pub async fn with(options: Options) -> Self {
        let Options { mode, reservation_timeout, max_requests_in_flight, idempotency_key_ttl } = options;
        init_logs();
        let naming = unique_naming();
        let data_dir = tempfile::tempdir().expect("a data directory");
        let (storage, broker, transport, urls): (_, _, Arc<dyn Transport>, _) = match mode {
            Mode::Postgres => {
                let (orders, inventory) = (TestDatabase::empty().await, TestDatabase::empty().await);
                let rabbit = RabbitMq::connect(&amqp_url(), naming.clone(), "e2e").await.expect("RabbitMQ reachable");
                let urls = (Some(orders.url.clone()), Some(inventory.url.clone()));
                (Storage::Postgres { orders, inventory }, Broker::Rabbit(rabbit.clone()), Arc::new(rabbit), urls)
            }
            Mode::Embedded => {
                let file = data_dir.path().join(embedded::BROKER);
                let broker = SqliteTransport::open(&file).await.expect("broker opens");
                (Storage::Embedded, Broker::Embedded(broker.clone()), Arc::new(broker), (None, None))
            }
        };
        let key = LocalKey::load_or_create(&data_dir.path().join(LocalKey::PATH_IN_DATA_DIR)).expect("a key");
        let verifier = Verifier::new(KeySource::Local(key.clone()), &issuance()).expect("the key is usable");
        let signer = Signer::new(&key, issuance());
        let runtime = Runtime {
            transport,
            naming: naming.clone(),
            tuning: Tuning { db_pool_size: 8, max_requests_in_flight, ..Tuning::default() },
            metrics: None,
            verifier: Arc::new(verifier),
            local_consumers: Arc::default(),
            embedded_dir: match &storage {
                Storage::Postgres { .. } => None,
                Storage::Embedded => Some(data_dir.path().to_owned()),
            },
        };
        let ephemeral = || "127.0.0.1:0".parse().unwrap();
        let (orders_database_url, inventory_database_url) = urls;
        let inventory_settings =
            InventorySettings { database_url: inventory_database_url, http_addr: ephemeral(), reservation_timeout };
        let inventory = shop::start_inventory(&inventory_settings, &runtime).await.expect("inventory starts");
        let order_settings =
            OrderSettings { database_url: orders_database_url, http_addr: ephemeral(), idempotency_key_ttl };
        let orders = shop::start_order(&order_settings, &runtime).await.expect("orders start");
        let admin = signer.sign("e2e-admin", Role::Admin, TOKEN_TTL);
        let customer = Uuid::now_v7();
        let customer_token = signer.sign(&customer.to_string(), Role::Customer, TOKEN_TTL);
        Self {
            mode,
            orders_url: format!("http://{}", orders.http_addr),
            inventory_url: format!("http://{}", inventory.http_addr),
            http: Client::new(),
            storage,
            key,
            data_dir,
            signer,
            admin,
            customer,
            customer_token,
            broker,
            naming,
            services: vec![orders, inventory],
        }
    }

    pub async fn stop(mut self) {
        for service in self.services.drain(..) {
            service.stop().await;
        }
        match &self.broker {
            Broker::Rabbit(rabbit) => {
                let _ = rabbit.delete_topology(&shop::topology::consumer_queues(&self.naming)).await;
            }
            Broker::Embedded(broker) => broker.close().await,
        }
    }

    /// What a consumer could not process: its error queue, left as it is.
    pub async fn dead_letters(&self, service: &str, consumer: &str) -> Vec<DeadLetter> {
        let error_queue = error_queue_of(&self.naming.queue(service, consumer));
        let letters = match &self.broker {
            Broker::Rabbit(rabbit) => rabbit.list(&error_queue).await,
            Broker::Embedded(broker) => broker.list(&error_queue).await,
        };
        letters.expect("error queue readable")
    }

    /// Writes `lines` (JSON) into the saga row of `order` as they are, as a defect would, at a new
    /// version as every writer does (one that kept the version would go unseen by a handler that
    /// starts from the saga as it last saved it, and be overwritten).
    pub async fn overwrite_saga_lines(&self, order: &str, lines: &str) {
        let order = Uuid::parse_str(order).unwrap();
        match &self.storage {
            Storage::Postgres { inventory, .. } => {
                sqlx::query(
                    "UPDATE reservation_sagas SET lines = $2::jsonb, version = version + 1 WHERE order_id = $1",
                )
                .bind(order)
                .bind(lines)
                .execute(&inventory.pool)
                .await
                .unwrap();
            }
            Storage::Embedded => {
                let inventory = self.embedded_inventory().await;
                sqlx::query("UPDATE reservation_sagas SET lines = ?, version = version + 1 WHERE order_id = ?")
                    .bind(lines)
                    .bind(order.hyphenated())
                    .execute(inventory.writer())
                    .await
                    .unwrap();
                inventory.close().await;
            }
        }
    }

    /// Keeps the stock of `product` from being written until the stall is released, as a slow
    /// warehouse database would: with PostgreSQL the product's row lock is held, so the stock
    /// handler's write waits; SQLite has no row locks (and one write lock per file would stall
    /// the saga too), so a trigger makes the product's writes miss, as if someone else kept
    /// changing it, and the stock handler keeps retrying. Either way the product's reservations
    /// land only after the release, while the rest of the system goes on.
    pub async fn stall_product_writes(&self, product: i64) -> Stall {
        match &self.storage {
            Storage::Postgres { inventory, .. } => {
                let mut lock = inventory.pool.begin().await.unwrap();
                sqlx::query("SELECT 1 FROM products WHERE id = $1 FOR UPDATE")
                    .bind(product)
                    .execute(&mut *lock)
                    .await
                    .unwrap();
                Stall::RowLock(lock)
            }
            Storage::Embedded => {
                let inventory = self.embedded_inventory().await;
                let trigger = format!(
                    "CREATE TRIGGER stall_product_{product} BEFORE UPDATE ON products WHEN old.id = {product} \
                     BEGIN SELECT RAISE(IGNORE); END"
                );
                sqlx::query(sqlx::AssertSqlSafe(trigger)).execute(inventory.writer()).await.unwrap();
                Stall::Trigger { inventory, product }
            }
        }
    }

    /// How many idempotency keys the order service keeps.
    pub async fn idempotency_keys(&self) -> i64 {
        const COUNT: &str = "SELECT count(*) FROM idempotency_keys";
        match &self.storage {
            Storage::Postgres { orders, .. } => sqlx::query_scalar(COUNT).fetch_one(&orders.pool).await.unwrap(),
            Storage::Embedded => {
                let orders = self.embedded(embedded::ORDERS).await;
                let count = sqlx::query_scalar(COUNT).fetch_one(orders.reader()).await.unwrap();
                orders.close().await;
                count
            }
        }
    }

    /// How many connections to the inventory database wait for a lock (PostgreSQL only: an
    /// embedded system has no row locks).
    pub async fn inventory_lock_waits(&self) -> i64 {
        let Storage::Postgres { inventory, .. } = &self.storage else { panic!("PostgreSQL only") };
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&inventory.pool)
        .await
        .unwrap()
    }

    /// The embedded inventory database, opened beside the running service.
    async fn embedded_inventory(&self) -> messaging::sqlite::Database {
        self.embedded(embedded::INVENTORY).await
    }

    /// One of the embedded system's SQLite files, opened beside the running service.
    async fn embedded(&self, file: &str) -> messaging::sqlite::Database {
        assert!(matches!(self.storage, Storage::Embedded), "not an embedded system");
        messaging::sqlite::Database::open(&self.data_dir.path().join(file), 1).await.unwrap()
    }

    /// Publishes a message through the system's broker, as any service would.
    pub async fn publish(&self, message: messaging::Envelope) {
        let published = match &self.broker {
            Broker::Rabbit(rabbit) => rabbit.publish(&[message]).await,
            Broker::Embedded(broker) => broker.publish(&[message]).await,
        };
        published.expect("the broker confirms");
    }

    /// A customer's token, valid for the rest of the test.
    pub fn token_of(&self, customer: Uuid) -> String {
        self.signer.sign(&customer.to_string(), Role::Customer, TOKEN_TTL)
    }

    /// Sends a request as the admin, with an optional JSON body; returns the status and the
    /// JSON answer.
    pub async fn call(&self, method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call_as(&self.admin, method, url, body).await
    }

    /// Sends a request with `token` (none if empty).
    pub async fn call_as(&self, token: &str, method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, url);
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn order_url(&self, path: &str) -> String {
        format!("{}{path}", self.orders_url)
    }

    pub fn inventory_url(&self, path: &str) -> String {
        format!("{}{path}", self.inventory_url)
    }

    /// Creates a product and waits until the order service's catalog knows it.
    pub async fn product(&self, name: &str, price: &str, stock: u32) -> i64 {
        let body = json!({ "name": name, "price": price, "stock": stock });
        let (status, product) = self.call(Method::POST, &self.inventory_url("/api/products"), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{product}");
        let id = product["id"].as_i64().unwrap();
        eventually(Duration::from_secs(10), "the catalog knows the product", async || {
            let (_, catalog) = self.call(Method::GET, &self.order_url("/api/catalog"), None).await;
            catalog.as_array().is_some_and(|items| items.iter().any(|item| item["productId"] == id))
        })
        .await;
        id
    }

    pub async fn stock_of(&self, product: i64) -> (u64, u64, u64) {
        let (status, body) =
            self.call(Method::GET, &self.inventory_url(&format!("/api/products/{product}")), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let n = |field: &str| body[field].as_u64().unwrap();
        (n("stock"), n("reserved"), n("available"))
    }

    /// A new draft of the customer's.
    pub async fn new_order(&self) -> String {
        let (status, order) =
            self.call_as(&self.customer_token, Method::POST, &self.order_url("/api/orders"), Some(json!({}))).await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        order["id"].as_str().unwrap().to_owned()
    }

    /// Adds a line as the customer.
    pub async fn add(&self, order: &str, product: i64, quantity: i64) -> (StatusCode, Value) {
        let body = json!({ "productId": product, "quantity": quantity });
        let url = self.order_url(&format!("/api/orders/{order}/items"));
        self.call_as(&self.customer_token, Method::POST, &url, Some(body)).await
    }

    /// Places or cancels as the customer.
    pub async fn command(&self, order: &str, action: &str, body: Option<Value>) -> (StatusCode, Value) {
        let url = self.order_url(&format!("/api/orders/{order}/{action}"));
        self.call_as(&self.customer_token, Method::POST, &url, body).await
    }

    /// Ships as the admin.
    pub async fn ship(&self, order: &str) -> (StatusCode, Value) {
        self.call(Method::POST, &self.order_url(&format!("/api/orders/{order}/ship")), None).await
    }

    /// An order with `lines` (product, quantity), placed.
    pub async fn placed_order(&self, lines: &[(i64, i64)]) -> String {
        let order = self.new_order().await;
        for (product, quantity) in lines {
            let (status, body) = self.add(&order, *product, *quantity).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        let (status, body) = self.command(&order, "place", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        order
    }

    pub async fn order(&self, order: &str) -> Value {
        let (status, body) = self.call(Method::GET, &self.order_url(&format!("/api/orders/{order}")), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Waits until the order leaves `placed`; returns it.
    pub async fn settled(&self, order: &str) -> Value {
        let mut last = Value::Null;
        eventually(Duration::from_secs(20), "the order settles", async || {
            last = self.order(order).await;
            last["status"] != "placed"
        })
        .await;
        last
    }

    pub async fn reservation(&self, order: &str) -> (StatusCode, Value) {
        self.call(Method::GET, &self.inventory_url(&format!("/api/reservations/{order}")), None).await
    }

    /// Waits until the saga of `order` is in `state` with no line still pending or reserved
    /// (for states that hold nothing).
    pub async fn reservation_in(&self, order: &str, state: &str) -> Value {
        let mut last = Value::Null;
        eventually(Duration::from_secs(20), &format!("the reservation becomes {state}"), async || {
            let (status, body) = self.reservation(order).await;
            last = body;
            status == StatusCode::OK && last["state"] == state
        })
        .await;
        last
    }
}

/// Writes to one product held back by [`System::stall_product_writes`].
pub enum Stall {
    RowLock(sqlx::Transaction<'static, sqlx::Postgres>),
    Trigger { inventory: messaging::sqlite::Database, product: i64 },
}

impl Stall {
    pub async fn release(self) {
        match self {
            Stall::RowLock(lock) => lock.rollback().await.unwrap(),
            Stall::Trigger { inventory, product } => {
                let drop = format!("DROP TRIGGER stall_product_{product}");
                sqlx::query(sqlx::AssertSqlSafe(drop)).execute(inventory.writer()).await.unwrap();
                inventory.close().await;
            }
        }
    }
}

pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

pub fn issuance() -> Issuance {
    Issuance { issuer: shop::config::DEFAULT_ISSUER.into(), audience: shop::config::DEFAULT_AUDIENCE.into() }
}
