//! The stock handler: executes the saga's commands on `Product` aggregates and answers.

use super::applied;
use super::error::AppError;
use super::ports::ProductStore;
use crate::domain::{OrderId, ProductError, ProductId, Quantity};
use async_trait::async_trait;
use contracts::Message;
use contracts::inventory::{DeductStock, ReleaseStock, ReserveStock, StockReservationRejected, StockReserved};
use messaging::{Causation, Effects, Envelope, Handler, HandlerError, retry_on_conflict};
use std::sync::Arc;

pub struct StockHandler {
    products: Arc<dyn ProductStore>,
}

impl StockHandler {
    pub fn new(products: Arc<dyn ProductStore>) -> Self {
        Self { products }
    }
}

fn permanent(error: impl std::fmt::Display) -> HandlerError {
    HandlerError::Permanent(error.to_string())
}

#[async_trait]
impl Handler for StockHandler {
    fn name(&self) -> &'static str {
        "stock"
    }

    fn message_types(&self) -> Vec<&'static str> {
        vec![ReserveStock::TYPE, ReleaseStock::TYPE, DeductStock::TYPE]
    }

    /// Commands on one product run one after another: they would only conflict on its version.
    fn ordering_key(&self, message: &Envelope) -> u64 {
        messaging::consumer::hash(message.payload.get("productId").and_then(|id| id.as_i64()))
    }

    async fn handle(&self, message: &Envelope) -> Result<(), HandlerError> {
        let outcome = match message.message_type.as_str() {
            ReserveStock::TYPE => {
                let command: ReserveStock = message.decode().map_err(permanent)?;
                let quantity = Quantity::new(command.quantity.into()).map_err(permanent)?;
                self.reserve(message, command.order_id, command.product_id, quantity).await
            }
            ReleaseStock::TYPE => {
                let command: ReleaseStock = message.decode().map_err(permanent)?;
                let product_id = ProductId::new(command.product_id).map_err(permanent)?;
                self.release(message, OrderId::from_uuid(command.order_id), product_id).await
            }
            DeductStock::TYPE => {
                let command: DeductStock = message.decode().map_err(permanent)?;
                let product_id = ProductId::new(command.product_id).map_err(permanent)?;
                self.deduct(message, OrderId::from_uuid(command.order_id), product_id).await
            }
            other => return Err(permanent(format!("no handler for {other}"))),
        };
        Ok(outcome?)
    }
}

impl StockHandler {
    /// Holds stock for an order and answers with the result, refusal included (an unknown
    /// product is a refusal too: the saga must hear back).
    async fn reserve(&self, message: &Envelope, order: uuid::Uuid, product: i64, quantity: Quantity) -> Result<(), AppError> {
        let causation = Causation::from_message(message);
        let order_id = OrderId::from_uuid(order);
        let rejected = |reason: String| {
            causation.envelope(&StockReservationRejected { order_id: order, product_id: product, reason })
        };
        retry_on_conflict(|| async {
            let mut effects = Effects::consuming(self.name(), message.message_id);
            let found = match ProductId::new(product) {
                Ok(product_id) => self.products.load(product_id).await?,
                Err(_) => None,
            };
            let Some(mut product_found) = found else {
                effects.send(rejected(format!("unknown product {product}")));
                return applied(self.products.commit(&effects).await);
            };
            let held = match product_found.reserve(order_id, quantity) {
                Ok(()) => quantity,
                // Asked twice: answer the same again.
                Err(ProductError::AlreadyReserved { .. }) => product_found.reservation_of(order_id).unwrap_or(quantity),
                Err(refusal @ ProductError::InsufficientStock { .. }) => {
                    effects.send(rejected(refusal.to_string()));
                    return applied(self.products.commit(&effects).await);
                }
                Err(other) => return Err(other.into()),
            };
            effects.send(causation.envelope(&StockReserved { order_id: order, product_id: product, quantity: held.get() }));
            let changes = product_found.take_events();
            applied(self.products.save(&product_found, &changes, &effects).await)
        })
        .await
    }

    /// Gives back what an order holds; nothing held is nothing to do.
    async fn release(&self, message: &Envelope, order_id: OrderId, product_id: ProductId) -> Result<(), AppError> {
        retry_on_conflict(|| async {
            let Some(mut found) = self.products.load(product_id).await? else {
                return Err(AppError::ProductNotFound(product_id));
            };
            if found.release(order_id).is_none() {
                return Ok(());
            }
            let changes = found.take_events();
            let effects = Effects::consuming(self.name(), message.message_id);
            applied(self.products.save(&found, &changes, &effects).await)
        })
        .await
    }

    /// Takes an order's reserved units out of stock: it shipped.
    async fn deduct(&self, message: &Envelope, order_id: OrderId, product_id: ProductId) -> Result<(), AppError> {
        retry_on_conflict(|| async {
            let Some(mut found) = self.products.load(product_id).await? else {
                return Err(AppError::ProductNotFound(product_id));
            };
            found.deduct(order_id)?;
            let changes = found.take_events();
            let effects = Effects::consuming(self.name(), message.message_id);
            applied(self.products.save(&found, &changes, &effects).await)
        })
        .await
    }
}
