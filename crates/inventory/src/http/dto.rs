//! Request and response bodies: JSON, camelCase, money as decimal strings. Request values are
//! the domain's own types where it has them (text, quantities, ids), so a body deserializes only
//! when each value is valid, and the document states the same rules.

use crate::application::ProductSummary;
use crate::application::saga::{Change, LineStatus, ReservationSaga};
use crate::domain::{Money, Product, ProductDescription, ProductId, ProductName, Quantity};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use web::PageSize;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateProductRequest {
    pub name: ProductName,
    pub description: Option<ProductDescription>,
    /// More than zero.
    pub price: Money,
    /// Units in the warehouse to start with.
    #[schema(minimum = 0, maximum = 1_000_000_000, example = 100)]
    pub stock: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestockRequest {
    pub quantity: Quantity,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangePriceRequest {
    /// More than zero.
    pub price: Money,
}

/// Products per page of a list.
pub type ProductPageSize = PageSize<500, 100>;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListProductsQuery {
    /// List products with ids above this one.
    pub after: Option<ProductId>,
    pub limit: Option<ProductPageSize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductResponse {
    pub id: i64,
    pub name: String,
    pub description: String,
    #[schema(example = "24.90")]
    pub price: String,
    /// Units in the warehouse.
    pub stock: u32,
    /// Units held for placed or confirmed orders.
    pub reserved: u32,
    /// Units that can still be reserved: stock minus reserved.
    pub available: u32,
    /// Null in lists.
    #[schema(required = true)]
    pub version: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationResponse {
    pub order_id: Uuid,
    /// reserving, reserved, failed, released or shipped.
    #[schema(example = "reserved")]
    pub state: String,
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    pub lines: Vec<ReservationLineResponse>,
    pub started_at: DateTime<Utc>,
    /// Every change of the saga and its lines, oldest first: the saga's timeline (empty for
    /// sagas recorded before the timeline was kept).
    pub history: Vec<ReservationStepResponse>,
    pub version: i64,
}

/// One change: the saga's `state`, or one line's (`productId`) `status` with its `reason`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationStepResponse {
    pub at: DateTime<Utc>,
    /// The saga's new state, for a change of the saga.
    #[schema(example = "reserved")]
    pub state: Option<String>,
    /// The line's product, for a change of a line.
    pub product_id: Option<i64>,
    /// The line's new status, for a change of a line.
    pub status: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationLineResponse {
    pub product_id: i64,
    pub quantity: u32,
    /// pending, reserved, rejected, released or deducted.
    pub status: String,
    #[schema(required = true)]
    pub reason: Option<String>,
    /// When the line took its status (the saga's start for a pending line), if recorded.
    pub changed_at: Option<DateTime<Utc>>,
}

/// A line status as text, with the reason of a rejection.
fn line_status(status: &LineStatus) -> (&'static str, Option<String>) {
    match status {
        LineStatus::Pending => ("pending", None),
        LineStatus::Reserved => ("reserved", None),
        LineStatus::Rejected { reason } => ("rejected", Some(reason.clone())),
        LineStatus::Released => ("released", None),
        LineStatus::Deducted => ("deducted", None),
    }
}

impl From<&Product> for ProductResponse {
    fn from(product: &Product) -> Self {
        Self {
            id: product.id().get(),
            name: product.name().to_string(),
            description: product.description().to_owned(),
            price: product.price().to_string(),
            stock: product.stock(),
            reserved: product.reserved(),
            available: product.available(),
            version: Some(product.version()),
        }
    }
}

impl From<ProductSummary> for ProductResponse {
    fn from(product: ProductSummary) -> Self {
        Self {
            id: product.id.get(),
            name: product.name,
            description: product.description,
            price: product.price.to_string(),
            stock: product.stock,
            reserved: product.reserved,
            available: product.stock.saturating_sub(product.reserved),
            version: None,
        }
    }
}

impl From<ReservationSaga> for ReservationResponse {
    fn from(saga: ReservationSaga) -> Self {
        Self {
            order_id: saga.order_id().as_uuid(),
            state: saga.state().as_str().to_owned(),
            failure_reason: saga.failure_reason().map(str::to_owned),
            lines: saga
                .lines()
                .iter()
                .map(|line| {
                    let (status, reason) = line_status(&line.status);
                    ReservationLineResponse {
                        product_id: line.product_id.get(),
                        quantity: line.quantity.get(),
                        status: status.to_owned(),
                        reason,
                        changed_at: saga.line_changed_at(line.product_id),
                    }
                })
                .collect(),
            started_at: saga.started_at(),
            history: saga
                .history()
                .iter()
                .map(|step| match &step.change {
                    Change::State(state) => ReservationStepResponse {
                        at: step.at,
                        state: Some(state.as_str().to_owned()),
                        product_id: None,
                        status: None,
                        reason: None,
                    },
                    Change::Line { product_id, status } => {
                        let (status, reason) = line_status(status);
                        ReservationStepResponse {
                            at: step.at,
                            state: None,
                            product_id: Some(product_id.get()),
                            status: Some(status.to_owned()),
                            reason,
                        }
                    }
                })
                .collect(),
            version: saga.version(),
        }
    }
}
