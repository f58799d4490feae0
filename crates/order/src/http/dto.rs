//! Request and response bodies: JSON, camelCase, money as decimal strings. Request values are
//! the domain's own types (text, quantities, ids), so a body deserializes only when each value
//! is valid, and the document states the same rules.

use crate::application::{OrderPage, OrderSummary};
use crate::domain::{CatalogItem, Order, OrderDescription, OrderLine, OrderStatus, ProductId, Quantity, Reason};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use web::PageSize;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateOrderRequest {
    /// The customer the order is for: a customer's token decides it (naming another customer
    /// is refused); an admin must name one.
    pub customer_id: Option<Uuid>,
    /// What the customer calls the order; blank means none.
    pub description: Option<OrderDescription>,
    /// Products to put on the order at once, at the catalog's price; a product named twice
    /// gets one line with the quantities added.
    #[serde(default, deserialize_with = "at_most_max_lines")]
    #[schema(max_items = 100)]
    pub lines: Vec<AddItemRequest>,
    /// Place the order in the same request, once its lines are on it (it needs at least one).
    #[serde(default)]
    pub place: bool,
}

/// An order never has more lines than the domain allows, so a request never names more.
fn at_most_max_lines<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<AddItemRequest>, D::Error> {
    let lines = Vec::<AddItemRequest>::deserialize(deserializer)?;
    if lines.len() > Order::MAX_LINES {
        return Err(serde::de::Error::custom(format!("at most {} lines (got {})", Order::MAX_LINES, lines.len())));
    }
    Ok(lines)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddItemRequest {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    pub reason: Reason,
}

/// Orders per page of a list.
pub type OrderPageSize = PageSize<200, 50>;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListOrdersQuery {
    /// Whose orders; a customer always gets its own (naming another customer is refused).
    pub customer_id: Option<Uuid>,
    pub status: Option<OrderStatusName>,
    /// The `nextAfter` of the previous page.
    pub after: Option<Uuid>,
    pub limit: Option<OrderPageSize>,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatusName {
    Draft,
    Placed,
    Confirmed,
    Rejected,
    Shipped,
    Cancelled,
}

impl From<OrderStatus> for OrderStatusName {
    fn from(status: OrderStatus) -> Self {
        match status {
            OrderStatus::Draft => Self::Draft,
            OrderStatus::Placed => Self::Placed,
            OrderStatus::Confirmed => Self::Confirmed,
            OrderStatus::Rejected => Self::Rejected,
            OrderStatus::Shipped => Self::Shipped,
            OrderStatus::Cancelled => Self::Cancelled,
        }
    }
}

impl From<OrderStatusName> for OrderStatus {
    fn from(status: OrderStatusName) -> Self {
        match status {
            OrderStatusName::Draft => Self::Draft,
            OrderStatusName::Placed => Self::Placed,
            OrderStatusName::Confirmed => Self::Confirmed,
            OrderStatusName::Rejected => Self::Rejected,
            OrderStatusName::Shipped => Self::Shipped,
            OrderStatusName::Cancelled => Self::Cancelled,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderResponse {
    pub id: Uuid,
    pub customer_id: Uuid,
    #[schema(required = true)]
    pub description: Option<String>,
    pub status: OrderStatusName,
    /// Why the order was cancelled or rejected.
    #[schema(required = true)]
    pub status_reason: Option<String>,
    pub lines: Vec<LineResponse>,
    #[schema(example = "39.98")]
    pub total: String,
    pub created_at: DateTime<Utc>,
    #[schema(required = true)]
    pub placed_at: Option<DateTime<Utc>>,
    /// When inventory's answer confirmed or rejected the order.
    #[schema(required = true)]
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
    pub status: OrderStatusName,
    pub total: String,
    pub line_count: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderPageResponse {
    pub orders: Vec<OrderSummaryResponse>,
    /// Pass as `after` for the next page; null on the last page.
    #[schema(required = true)]
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
            status: order.status().into(),
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
            status: order.status.into(),
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
