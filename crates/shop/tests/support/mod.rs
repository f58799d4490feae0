//! A whole system for end-to-end tests: both services on ephemeral ports in this process, each
//! with a fresh database, talking through the real RabbitMQ under names no other test uses.
//! Tests drive it through its HTTP APIs only, with tokens of the system's own signing key: an
//! admin's, and one customer's (the customer of `new_order` and friends).
#![allow(dead_code)]

use messaging::Naming;
pub use messaging::testing::eventually;
use messaging::testing::{TestDatabase, amqp_url, init_logs, unique_naming};
use messaging::transport::rabbitmq::RabbitMq;
use messaging::transport::{DeadLetter, DeadLetters, error_queue_of};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use shop::{InventorySettings, OrderSettings, RunningService, Runtime, Tuning};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use web::auth::{Issuance, KeySource, LocalKey, Role, Signer, Verifier};

pub struct System {
    pub orders_url: String,
    pub inventory_url: String,
    pub http: Client,
    pub inventory_db: TestDatabase,
    pub orders_db: TestDatabase,
    /// The key the services trust (in `data_dir`, where `shop token` and `harness load` find
    /// it), and a signer with it.
    pub key: LocalKey,
    pub data_dir: tempfile::TempDir,
    pub signer: Signer,
    pub admin: String,
    /// The customer whose token `new_order`, `add` and `command` use.
    pub customer: Uuid,
    pub customer_token: String,
    transport: RabbitMq,
    naming: Naming,
    services: Vec<RunningService>,
}

/// What a test may change about the system it starts.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub reservation_timeout: Duration,
    /// High by default: tests that are not about overload must not meet it.
    pub max_requests_in_flight: usize,
    pub idempotency_key_ttl: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            reservation_timeout: Duration::from_secs(600),
            max_requests_in_flight: 10_000,
            idempotency_key_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl System {
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    pub async fn with_reservation_timeout(reservation_timeout: Duration) -> Self {
        Self::with(Options { reservation_timeout, ..Options::default() }).await
    }

    pub async fn with(options: Options) -> Self {
        let Options { reservation_timeout, max_requests_in_flight, idempotency_key_ttl } = options;
        init_logs();
        let (orders_db, inventory_db) = (TestDatabase::empty().await, TestDatabase::empty().await);
        let naming = unique_naming();
        let transport = RabbitMq::connect(&amqp_url(), naming.clone(), "e2e").await.expect("RabbitMQ reachable");
        let data_dir = tempfile::tempdir().expect("a data directory");
        let key = LocalKey::load_or_create(&data_dir.path().join(LocalKey::PATH_IN_DATA_DIR)).expect("a key");
        let verifier = Verifier::new(KeySource::Local(key.clone()), &issuance()).expect("the key is usable");
        let signer = Signer::new(&key, issuance());
        let runtime = Runtime {
            transport: Arc::new(transport.clone()),
            naming: naming.clone(),
            tuning: Tuning { db_pool_size: 8, max_requests_in_flight, ..Tuning::default() },
            metrics: None,
            verifier: Arc::new(verifier),
        };
        let ephemeral = || "127.0.0.1:0".parse().unwrap();
        let inventory_settings =
            InventorySettings { database_url: inventory_db.url.clone(), http_addr: ephemeral(), reservation_timeout };
        let inventory = shop::start_inventory(&inventory_settings, &runtime).await.expect("inventory starts");
        let order_settings =
            OrderSettings { database_url: orders_db.url.clone(), http_addr: ephemeral(), idempotency_key_ttl };
        let orders = shop::start_order(&order_settings, &runtime).await.expect("orders start");
        let admin = signer.sign("e2e-admin", Role::Admin, TOKEN_TTL);
        let customer = Uuid::now_v7();
        let customer_token = signer.sign(&customer.to_string(), Role::Customer, TOKEN_TTL);
        Self {
            orders_url: format!("http://{}", orders.http_addr),
            inventory_url: format!("http://{}", inventory.http_addr),
            http: Client::new(),
            inventory_db,
            orders_db,
            key,
            data_dir,
            signer,
            admin,
            customer,
            customer_token,
            transport,
            naming,
            services: vec![orders, inventory],
        }
    }

    pub async fn stop(mut self) {
        for service in self.services.drain(..) {
            service.stop().await;
        }
        let _ = self.transport.delete_topology(&shop::topology::consumer_queues(&self.naming)).await;
    }

    /// What a consumer could not process: its error queue, left as it is.
    pub async fn dead_letters(&self, service: &str, consumer: &str) -> Vec<DeadLetter> {
        let error_queue = error_queue_of(&self.naming.queue(service, consumer));
        self.transport.list(&error_queue).await.expect("error queue readable")
    }

    /// Publishes a message through the system's broker, as any service would.
    pub async fn publish(&self, message: messaging::Envelope) {
        use messaging::Transport;
        self.transport.publish(&[message]).await.expect("the broker confirms");
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

pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

pub fn issuance() -> Issuance {
    Issuance { issuer: shop::config::DEFAULT_ISSUER.into(), audience: shop::config::DEFAULT_AUDIENCE.into() }
}
