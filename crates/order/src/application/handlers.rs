//! Message handlers of the order service.

use super::commands::{OrderService, StockOutcome};
use super::ports::Catalog;
use crate::domain::{CatalogItem, OrderId, ProductId, Reason};
use async_trait::async_trait;
use contracts::inventory::{StockReservationCompleted, StockReservationFailed};
use contracts::product::{ProductCreated, ProductPriceChanged};
use kernel::Money;
use messaging::{Effects, Handler, HandlerError, Received};
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
    service: Arc<OrderService>,
}

impl ReservationOutcomeHandler {
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "reservations";

    pub fn new(service: Arc<OrderService>) -> Self {
        Self { service }
    }
}

#[async_trait]
impl Handler for ReservationOutcomeHandler {
    type Message = ReservationOutcome;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn handle(&self, received: &Received<ReservationOutcome>) -> Result<(), HandlerError> {
        let (order_id, outcome) = match &received.message {
            ReservationOutcome::Completed(completed) => (completed.order_id, StockOutcome::Reserved),
            ReservationOutcome::Failed(failed) => {
                let reason = Reason::new(failed.reason.clone()).map_err(HandlerError::permanent)?;
                (failed.order_id, StockOutcome::Failed(reason))
            }
        };
        let order_id = OrderId::from_uuid(order_id);
        Ok(self.service.settle_reservation(order_id, &outcome, self.name(), &received.envelope).await?)
    }
}
