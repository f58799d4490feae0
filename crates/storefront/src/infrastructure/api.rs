//! The client of the order and inventory APIs. Every call carries a short-lived token that the
//! storefront signs for the person it acts for: a customer's (subject: the account's id) or an
//! admin's. Bodies are the services' JSON, read into the few fields the pages show.

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use web::auth::{Role, Signer};

/// How long a token the storefront signs for one call is valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Whom a call acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acting {
    Customer(Uuid),
    Admin(Uuid),
    /// Someone not signed in, browsing the catalog: a customer token for the nil id, which
    /// may read products and owns no order.
    Visitor,
}

/// Which service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Orders,
    Inventory,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Orders, Service::Inventory];

    pub fn name(self) -> &'static str {
        match self {
            Service::Orders => "order",
            Service::Inventory => "inventory",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|service| service.name() == text)
    }
}

/// Why a call did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The service refused the request (4xx) and said why.
    #[error("{detail}")]
    Refused { status: StatusCode, detail: String },
    /// The service could not be reached, failed (5xx) or answered what cannot be read.
    #[error("the {service} service is unavailable")]
    Unavailable {
        service: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Refused { status: StatusCode::NOT_FOUND, .. })
    }
}

#[derive(Clone)]
pub struct ShopApi {
    http: reqwest::Client,
    orders_url: String,
    inventory_url: String,
    signer: Arc<Signer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub description: String,
    pub price: String,
    pub stock: u32,
    pub reserved: u32,
    pub available: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub status_reason: Option<String>,
    pub lines: Vec<OrderLine>,
    pub total: String,
    pub created_at: DateTime<Utc>,
    pub placed_at: Option<DateTime<Utc>>,
    pub decided_at: Option<DateTime<Utc>>,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub product_id: i64,
    pub product_name: String,
    pub unit_price: String,
    pub quantity: u32,
    pub line_total: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPage {
    pub orders: Vec<OrderSummary>,
    pub next_after: Option<Uuid>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub total: String,
    pub line_count: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub state: String,
    pub failure_reason: Option<String>,
    pub lines: Vec<ReservationLine>,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub history: Vec<ReservationStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationLine {
    pub product_id: i64,
    pub quantity: u32,
    pub status: String,
    pub reason: Option<String>,
    pub changed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationStep {
    pub at: DateTime<Utc>,
    pub state: Option<String>,
    pub product_id: Option<i64>,
    pub status: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outbox {
    pub unsent: u64,
    pub scheduled: u64,
    pub oldest_unsent_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueInfo {
    pub consumer: String,
    pub queue: String,
    pub depth: Option<u32>,
    pub consumers: Option<u32>,
    pub dead_letters: Option<u32>,
    pub handled: u64,
    pub handled_per_second: f64,
    pub dead_lettered_per_second: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    pub reason: String,
    pub attempts: u32,
    pub failed_at: Option<DateTime<Utc>>,
    pub body: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Moved {
    count: usize,
}

#[derive(Deserialize)]
struct ProblemBody {
    detail: Option<String>,
}

/// What [`ShopApi::page_of_orders`] lists.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
    pub limit: u32,
}

impl ShopApi {
    pub fn new(orders_url: &str, inventory_url: &str, signer: Arc<Signer>) -> Self {
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().expect("a plain HTTP client builds");
        Self {
            http,
            orders_url: orders_url.trim_end_matches('/').to_owned(),
            inventory_url: inventory_url.trim_end_matches('/').to_owned(),
            signer,
        }
    }

    fn base(&self, service: Service) -> &str {
        match service {
            Service::Orders => &self.orders_url,
            Service::Inventory => &self.inventory_url,
        }
    }

    fn token(&self, acting: &Acting) -> String {
        match acting {
            Acting::Customer(id) => self.signer.sign(&id.to_string(), Role::Customer, TOKEN_TTL),
            Acting::Admin(id) => self.signer.sign(&format!("storefront-admin-{id}"), Role::Admin, TOKEN_TTL),
            Acting::Visitor => self.signer.sign(&Uuid::nil().to_string(), Role::Customer, TOKEN_TTL),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        acting: &Acting,
        method: Method,
        service: Service,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, ApiError> {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base(service))).bearer_auth(self.token(acting));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|error| unavailable(service, error.into()))?;
        read(service, response).await
    }

    /// Whether a service answers its liveness probe.
    pub async fn is_up(&self, service: Service) -> bool {
        let url = format!("{}/health/live", self.base(service));
        self.http.get(url).send().await.is_ok_and(|response| response.status().is_success())
    }

    // Products

    /// Every product (all pages), with live stock figures.
    pub async fn products(&self, acting: &Acting) -> Result<Vec<Product>, ApiError> {
        let mut all: Vec<Product> = Vec::new();
        loop {
            let after = all.last().map(|product| format!("&after={}", product.id)).unwrap_or_default();
            let page: Vec<Product> = self
                .call(acting, Method::GET, Service::Inventory, &format!("/api/products?limit=500{after}"), None)
                .await?;
            let done = page.len() < 500;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    pub async fn create_product(
        &self,
        acting: &Acting,
        name: &str,
        description: &str,
        price: &str,
        stock: i64,
    ) -> Result<Product, ApiError> {
        let body = json!({ "name": name, "description": description, "price": price, "stock": stock });
        self.call(acting, Method::POST, Service::Inventory, "/api/products", Some(body)).await
    }

    pub async fn restock(&self, acting: &Acting, product: i64, quantity: i64) -> Result<Product, ApiError> {
        let path = format!("/api/products/{product}/restock");
        self.call(acting, Method::POST, Service::Inventory, &path, Some(json!({ "quantity": quantity }))).await
    }

    pub async fn change_price(&self, acting: &Acting, product: i64, price: &str) -> Result<Product, ApiError> {
        let path = format!("/api/products/{product}/price");
        self.call(acting, Method::PUT, Service::Inventory, &path, Some(json!({ "price": price }))).await
    }

    pub async fn reservation(&self, acting: &Acting, order: Uuid) -> Result<Reservation, ApiError> {
        self.call(acting, Method::GET, Service::Inventory, &format!("/api/reservations/{order}"), None).await
    }

    // Orders

    pub async fn order(&self, acting: &Acting, order: Uuid) -> Result<Order, ApiError> {
        self.call(acting, Method::GET, Service::Orders, &format!("/api/orders/{order}"), None).await
    }

    /// The order once it is no longer at `version`, or `None` if it still is after `wait`: the
    /// order service answers when the order changes (`If-None-Match`, `Prefer: wait`).
    pub async fn order_after(
        &self,
        acting: &Acting,
        order: Uuid,
        version: i64,
        wait: Duration,
    ) -> Result<Option<Order>, ApiError> {
        let url = format!("{}/api/orders/{order}", self.base(Service::Orders));
        let request = self.http.get(url).bearer_auth(self.token(acting));
        let request = request.header(reqwest::header::IF_NONE_MATCH, web::version_tag(version));
        let request = request.header("Prefer", format!("wait={}", wait.as_secs())).timeout(wait + CALL_TIMEOUT);
        let response = request.send().await.map_err(|error| unavailable(Service::Orders, error.into()))?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        read(Service::Orders, response).await.map(Some)
    }

    pub async fn page_of_orders(&self, acting: &Acting, query: &OrderQuery) -> Result<OrderPage, ApiError> {
        let query = serde_urlencoded::to_string(query).expect("a query serializes");
        self.call(acting, Method::GET, Service::Orders, &format!("/api/orders?{query}"), None).await
    }

    /// The customer's newest draft: the cart.
    pub async fn cart(&self, acting: &Acting) -> Result<Option<Order>, ApiError> {
        let query = OrderQuery { status: Some("draft".into()), after: None, limit: 1 };
        match self.page_of_orders(acting, &query).await?.orders.first() {
            Some(draft) => Ok(Some(self.order(acting, draft.id).await?)),
            None => Ok(None),
        }
    }

    /// A new draft with one line, in one request: nothing is created if the line is refused.
    pub async fn create_order_with(&self, acting: &Acting, product: i64, quantity: i64) -> Result<Order, ApiError> {
        let body = json!({ "lines": [{ "productId": product, "quantity": quantity }] });
        self.call(acting, Method::POST, Service::Orders, "/api/orders", Some(body)).await
    }

    pub async fn add_item(&self, acting: &Acting, order: Uuid, product: i64, quantity: i64) -> Result<Order, ApiError> {
        let body = json!({ "productId": product, "quantity": quantity });
        self.call(acting, Method::POST, Service::Orders, &format!("/api/orders/{order}/items"), Some(body)).await
    }

    pub async fn remove_item(&self, acting: &Acting, order: Uuid, product: i64) -> Result<Order, ApiError> {
        self.call(acting, Method::DELETE, Service::Orders, &format!("/api/orders/{order}/items/{product}"), None).await
    }

    /// `action`: `place`, `ship` or `cancel` (with a reason).
    pub async fn order_command(
        &self,
        acting: &Acting,
        order: Uuid,
        action: &str,
        body: Option<Value>,
    ) -> Result<Order, ApiError> {
        self.call(acting, Method::POST, Service::Orders, &format!("/api/orders/{order}/{action}"), body).await
    }

    // Operations

    pub async fn outbox(&self, acting: &Acting, service: Service) -> Result<Outbox, ApiError> {
        self.call(acting, Method::GET, service, "/api/admin/outbox", None).await
    }

    pub async fn queues(&self, acting: &Acting, service: Service) -> Result<Vec<QueueInfo>, ApiError> {
        self.call(acting, Method::GET, service, "/api/admin/queues", None).await
    }

    pub async fn dead_letters(
        &self,
        acting: &Acting,
        service: Service,
        consumer: &str,
    ) -> Result<Vec<DeadLetter>, ApiError> {
        self.call(acting, Method::GET, service, &format!("/api/admin/queues/{consumer}/dead-letters"), None).await
    }

    /// `action`: `replay` or `purge`; returns how many dead letters moved.
    pub async fn dead_letter_action(
        &self,
        acting: &Acting,
        service: Service,
        consumer: &str,
        action: &str,
    ) -> Result<usize, ApiError> {
        let path = format!("/api/admin/queues/{consumer}/dead-letters/{action}");
        let moved: Moved = self.call(acting, Method::POST, service, &path, None).await?;
        Ok(moved.count)
    }
}

fn unavailable(service: Service, source: Box<dyn std::error::Error + Send + Sync>) -> ApiError {
    ApiError::Unavailable { service: service.name(), source }
}

/// A service's answer: its body on success, the problem's detail when it refused.
async fn read<T: DeserializeOwned>(service: Service, response: reqwest::Response) -> Result<T, ApiError> {
    let status = response.status();
    let bytes = response.bytes().await.map_err(|error| unavailable(service, error.into()))?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|error| unavailable(service, error.into()));
    }
    if status.is_client_error() {
        let detail = serde_json::from_slice::<ProblemBody>(&bytes)
            .ok()
            .and_then(|problem| problem.detail)
            .unwrap_or_else(|| status.to_string());
        return Err(ApiError::Refused { status, detail });
    }
    Err(unavailable(service, format!("{status}: {}", String::from_utf8_lossy(&bytes)).into()))
}
