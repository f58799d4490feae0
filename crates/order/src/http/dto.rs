//! Request and response bodies: JSON, camelCase, money as decimal strings.

use crate::application::{OrderPage, OrderSummary};
use crate::domain::{CatalogItem, Order, OrderLine, OrderStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrderRequest {
    /// The customer the order is for: a customer's token decides it (naming another customer
    /// is refused); an admin must name one.
    pub customer_id: Option<Uuid>,
    #[schema(example = "Birthday presents")]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddItemRequest {
    #[schema(example = 1)]
    pub product_id: i64,
    #[schema(example = 2)]
    pub quantity: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    #[schema(example = "Ordered by mistake")]
    pub reason: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListOrdersQuery {
    /// Whose orders; a customer always gets its own (naming another customer is refused).
    pub customer_id: Option<Uuid>,
    /// One of draft, placed, confirmed, rejected, shipped, cancelled.
    pub status: Option<String>,
    /// The `nextAfter` of the previous page.
    pub after: Option<Uuid>,
    /// Orders per page, 1 to 200 (default 50).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub description: Option<String>,
    #[schema(example = "confirmed")]
    pub status: String,
    /// Why the order was cancelled or rejected.
    pub status_reason: Option<String>,
    pub lines: Vec<LineResponse>,
    #[schema(example = "39.98")]
    pub total: String,
    pub created_at: DateTime<Utc>,
    pub placed_at: Option<DateTime<Utc>>,
    /// When inventory's answer confirmed or rejected the order.
    pub decided_at: Option<DateTime<Utc>>,
    pub version: i64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LineResponse {
    pub product_id: i64,
    pub product_name: String,
    #[schema(example = "19.99")]
    pub unit_price: String,
    pub quantity: u32,
    #[schema(example = "39.98")]
    pub line_total: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummaryResponse {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub status: String,
    pub total: String,
    pub line_count: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPageResponse {
    pub orders: Vec<OrderSummaryResponse>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<Uuid>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CatalogItemResponse {
    pub product_id: i64,
    pub name: String,
    #[schema(example = "19.99")]
    pub price: String,
}

impl From<&OrderLine> for LineResponse {
    fn from(line: &OrderLine) -> Self {
        Self {
            product_id: line.product_id.get(),
            product_name: line.product_name.clone(),
            unit_price: line.unit_price.to_string(),
            quantity: line.quantity.get(),
            line_total: line.total().map(|total| total.to_string()).unwrap_or_default(),
        }
    }
}

impl From<&Order> for OrderResponse {
    fn from(order: &Order) -> Self {
        Self {
            id: order.id().as_uuid(),
            customer_id: order.customer_id().as_uuid(),
            description: order.description().map(str::to_owned),
            status: order.status().as_str().to_owned(),
            status_reason: order.state().reason().map(ToString::to_string),
            lines: order.lines().iter().map(LineResponse::from).collect(),
            total: order.total().to_string(),
            created_at: order.timeline().created_at,
            placed_at: order.timeline().placed_at,
            decided_at: order.timeline().decided_at,
            version: order.version(),
        }
    }
}

impl From<OrderSummary> for OrderSummaryResponse {
    fn from(order: OrderSummary) -> Self {
        Self {
            id: order.id.as_uuid(),
            customer_id: order.customer_id.as_uuid(),
            status: order.status.as_str().to_owned(),
            total: order.total.to_string(),
            line_count: order.line_count,
            created_at: order.created_at,
        }
    }
}

impl From<OrderPage> for OrderPageResponse {
    fn from(page: OrderPage) -> Self {
        Self {
            orders: page.orders.into_iter().map(Into::into).collect(),
            next_after: page.next_after.map(|id| id.as_uuid()),
        }
    }
}

impl From<CatalogItem> for CatalogItemResponse {
    fn from(item: CatalogItem) -> Self {
        Self { product_id: item.product_id.get(), name: item.name, price: item.price.to_string() }
    }
}

pub fn parse_status(text: &str) -> Option<OrderStatus> {
    OrderStatus::parse(text)
}
