//! Message handlers of the order service.

use super::commands::save;
use super::error::AppError;
use super::ports::{Catalog, OrderStore};
use crate::domain::{CatalogItem, OrderId, OrderStatus, ProductId, Reason};
use async_trait::async_trait;
use contracts::inventory::{StockReservationCompleted, StockReservationFailed};
use contracts::product::{ProductCreated, ProductPriceChanged};
use kernel::Money;
use messaging::{Causation, Effects, Handler, HandlerError, Received, retry_on_conflict};
use std::sync::Arc;

messaging::inbound! {
    /// What the catalog handler reads: inventory's news about its products.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ProductNews {
        Created(ProductCreated),
        PriceChanged(ProductPriceChanged),
    }
}

messaging::inbound! {
    /// What the reservation outcome handler reads: how inventory's reservation of an order ended.
    #[derive(Debug, Clone, PartialEq)]
    pub enum ReservationOutcome {
        Completed(StockReservationCompleted),
        Failed(StockReservationFailed),
    }
}

/// Keeps the catalog copy in step with inventory's product events.
pub struct CatalogHandler {
    catalog: Arc<dyn Catalog>,
}

impl CatalogHandler {
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "catalog";

    pub fn new(catalog: Arc<dyn Catalog>) -> Self {
        Self { catalog }
    }
}

#[async_trait]
impl Handler for CatalogHandler {
    type Message = ProductNews;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn handle(&self, message: &Received<ProductNews>) -> Result<(), HandlerError> {
        let (product_id, name, price, version) = match &message.message {
            ProductNews::Created(created) => (created.product_id, &created.name, created.price, created.version),
            ProductNews::PriceChanged(changed) => (changed.product_id, &changed.name, changed.price, changed.version),
        };
        let item = CatalogItem {
            product_id: ProductId::new(product_id).map_err(HandlerError::permanent)?,
            name: name.clone(),
            price: Money::new(price).map_err(HandlerError::permanent)?,
        };
        let effects = Effects::consuming(self.name(), message.envelope.message_id);
        let saved = self.catalog.upsert(&item, version, &effects).await;
        Ok(messaging::applied(&effects, saved)?)
    }
}

/// Confirms or rejects placed orders when inventory reports the reservation's outcome.
pub struct ReservationOutcomeHandler {
    orders: Arc<dyn OrderStore>,
}

impl ReservationOutcomeHandler {
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "reservations";

    pub fn new(orders: Arc<dyn OrderStore>) -> Self {
        Self { orders }
    }
}

/// What inventory reported for an order.
enum Outcome {
    Reserved,
    Failed(Reason),
}

#[async_trait]
impl Handler for ReservationOutcomeHandler {
    type Message = ReservationOutcome;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn handle(&self, received: &Received<ReservationOutcome>) -> Result<(), HandlerError> {
        let (order_id, outcome) = match &received.message {
            ReservationOutcome::Completed(completed) => (completed.order_id, Outcome::Reserved),
            ReservationOutcome::Failed(failed) => {
                (failed.order_id, Outcome::Failed(Reason::new(failed.reason.clone()).map_err(HandlerError::permanent)?))
            }
        };
        let message = &received.envelope;
        let order_id = OrderId::from_uuid(order_id);
        let causation = Causation::from_message(message);
        let handled = retry_on_conflict(|| async {
            let mut order = self.orders.load(order_id).await?.ok_or(AppError::OrderNotFound(order_id))?;
            let before = order.status();
            if before != OrderStatus::Placed {
                // Cancelled while inventory was reserving: inventory releases what it held.
                tracing::info!(%order_id, status = %before, outcome = %message.message_type, "reservation outcome for an order no longer placed; ignored");
                return Ok(());
            }
            match &outcome {
                Outcome::Reserved => order.confirm(kernel::now())?,
                Outcome::Failed(reason) => order.reject(reason.clone(), kernel::now())?,
            }
            let mut effects = Effects::consuming(self.name(), message.message_id);
            let saved = save(&*self.orders, &mut order, Some(before), None, &causation, &mut effects).await;
            Ok::<_, AppError>(messaging::applied(&effects, saved)?)
        })
        .await;
        Ok(handled?)
    }
}
