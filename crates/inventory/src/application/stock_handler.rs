//! The stock handler: executes the saga's commands on `Product` aggregates and answers.

use super::error::AppError;
use super::ports::ProductStore;
use crate::domain::{OrderId, Product, ProductError, ProductEvent, ProductId, Quantity};
use async_trait::async_trait;
use contracts::inventory::{DeductStock, ReleaseStock, ReserveStock, StockReservationRejected, StockReserved};
use messaging::{BatchHandler, Causation, Effects, Envelope, Received, Remembered, Worked};
use std::sync::Arc;

messaging::inbound! {
    /// What the stock handler reads: the saga's commands on one product each.
    #[derive(Debug, Clone, PartialEq)]
    pub enum StockCommand {
        Reserve(ReserveStock),
        Release(ReleaseStock),
        Deduct(DeductStock),
    }
}

impl StockCommand {
    /// The order the command is for.
    fn order_id(&self) -> OrderId {
        OrderId::from_uuid(match self {
            StockCommand::Reserve(reserve) => reserve.order_id,
            StockCommand::Release(release) => release.order_id,
            StockCommand::Deduct(deduct) => deduct.order_id,
        })
    }
}

pub struct StockHandler {
    products: Arc<dyn ProductStore>,
    /// The products as this handler last saved them, with no order in hand: new reservations
    /// spare the load.
    recent: Remembered<ProductId, Product>,
}

impl StockHandler {
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "stock";

    pub fn new(products: Arc<dyn ProductStore>) -> Self {
        Self { products, recent: Remembered::default() }
    }
}

/// Commands on one product run one after another (they would only conflict on its version),
/// and those that queued up (a popular product, under load) are applied in one load and one
/// commit.
#[async_trait]
impl BatchHandler for StockHandler {
    type Message = StockCommand;
    /// The product id as the command names it: an id that names no product is answered too.
    type Key = i64;
    type Error = AppError;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn key(&self, command: &StockCommand) -> i64 {
        match command {
            StockCommand::Reserve(reserve) => reserve.product_id,
            StockCommand::Release(release) => release.product_id,
            StockCommand::Deduct(deduct) => deduct.product_id,
        }
    }

    /// One attempt: load the product, apply each command in turn, answer reservations (a
    /// refusal included: the saga must hear back), and commit the product's changes with the
    /// answers and the inbox records. A reservation of an id that names no product is refused;
    /// releasing what an order does not hold is nothing to do; releasing or deducting on an id
    /// that cannot name a product is a defect.
    async fn apply(&self, &product: &i64, commands: &[&Received<StockCommand>]) -> Result<(), AppError> {
        let product_id = ProductId::new(product);
        let orders: Vec<OrderId> = commands.iter().map(|received| received.message.order_id()).collect();
        // New reservations start from the product as this handler last saved it, trusting that
        // their orders hold nothing of it yet: the save checks that (see
        // `Product::assuming_nothing_held_by`) and the version the rest, as for any remembered
        // aggregate. Anything else is done again on a load.
        let reserving = commands.iter().all(|received| matches!(received.message, StockCommand::Reserve(_)));
        if let Ok(id) = product_id
            && reserving
            && let Some(remembered) = self.recent.take(&id)
        {
            let trusted = remembered.assuming_nothing_held_by(orders.iter().copied());
            if let Ok(Worked::Committed) = self.apply_to(product, Some(trusted), &orders, commands).await {
                return Ok(());
            }
        }
        let found = match product_id {
            Ok(id) => self.products.load(id, &orders).await?,
            Err(_) => None,
        };
        self.apply_to(product, found, &[], commands).await?;
        Ok(())
    }
}

impl StockHandler {
    /// Applies `commands` to the product as `found` and commits its changes with the answers
    /// and the inbox records; unless a reservation of each of the `trusted` orders is among the
    /// changes, in which case it commits nothing.
    async fn apply_to(
        &self,
        product: i64,
        mut found: Option<Product>,
        trusted: &[OrderId],
        commands: &[&Received<StockCommand>],
    ) -> Result<Worked, AppError> {
        let product_id = ProductId::new(product);
        let mut effects = Effects::new();
        for received in commands {
            effects.consume(BatchHandler::name(self), received.envelope.message_id);
            let causation = Causation::from_message(&received.envelope);
            let rejected = |order_id: OrderId, reason: String| {
                causation.envelope(&StockReservationRejected {
                    order_id: order_id.as_uuid(),
                    product_id: product,
                    reason,
                })
            };
            match &received.message {
                StockCommand::Reserve(command) => {
                    let order_id = OrderId::from_uuid(command.order_id);
                    let quantity = Quantity::new(command.quantity.into()).map_err(AppError::invalid_message)?;
                    let answer = match found.as_mut().map(|found| (found.reserve(order_id, quantity), found)) {
                        None => rejected(order_id, format!("unknown product {product}")),
                        Some((Ok(()), _)) => reserved(&causation, order_id, product, quantity),
                        // Asked twice: answer the same again.
                        Some((Err(ProductError::AlreadyReserved { .. }), found)) => {
                            reserved(&causation, order_id, product, found.reservation_of(order_id).unwrap_or(quantity))
                        }
                        Some((Err(refusal @ ProductError::InsufficientStock { .. }), _)) => {
                            rejected(order_id, refusal.to_string())
                        }
                        Some((Err(other), _)) => return Err(other.into()),
                    };
                    effects.send(answer);
                }
                StockCommand::Release(command) => {
                    product_id.clone().map_err(AppError::invalid_message)?;
                    // A product that does not exist holds nothing to release.
                    if let Some(found) = found.as_mut() {
                        found.release(OrderId::from_uuid(command.order_id))?;
                    }
                }
                StockCommand::Deduct(command) => {
                    let id = product_id.clone().map_err(AppError::invalid_message)?;
                    found
                        .as_mut()
                        .ok_or(AppError::ProductNotFound(id))?
                        .deduct(OrderId::from_uuid(command.order_id))?;
                }
            }
        }
        let changes = found.as_mut().map(Product::take_events).unwrap_or_default();
        let was_reserved = |order: &OrderId| {
            changes
                .iter()
                .any(|change| matches!(change, ProductEvent::StockReserved { order_id, .. } if order_id == order))
        };
        if !trusted.iter().all(was_reserved) {
            return Ok(Worked::Unchanged);
        }
        let saved = match found {
            Some(mut product) if !changes.is_empty() => {
                let saved = self.products.save(&product, &changes, &effects).await;
                if saved.is_ok() {
                    product.record_saved();
                    self.recent.put(product.id(), product.assuming_nothing_held_by([]));
                }
                saved
            }
            // A refusal leaves the product as it was: no version to bump, no conflict to risk.
            _ if effects.outgoing.is_empty() => Ok(()),
            _ => self.products.commit(&effects).await,
        };
        messaging::applied(&effects, saved)?;
        Ok(Worked::Committed)
    }
}

fn reserved(causation: &Causation, order_id: OrderId, product_id: i64, quantity: Quantity) -> Envelope {
    causation.envelope(&StockReserved { order_id: order_id.as_uuid(), product_id, quantity: quantity.get() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging::{DecodeError, Inbound, TraceParent};
    use uuid::Uuid;

    #[test]
    fn the_stock_handler_reads_the_three_stock_commands_and_refuses_any_other_type() {
        assert_eq!(
            StockCommand::TYPES,
            ["inventory.reserve-stock.v1", "inventory.release-stock.v1", "inventory.deduct-stock.v1"]
        );
        let causation = Causation::root("order", TraceParent::new_root());
        let release = causation.envelope(&ReleaseStock { order_id: Uuid::nil(), product_id: 3 });
        assert_eq!(
            StockCommand::decode(&release).unwrap(),
            StockCommand::Release(ReleaseStock { order_id: Uuid::nil(), product_id: 3 })
        );
        let answer = causation.envelope(&StockReserved { order_id: Uuid::nil(), product_id: 3, quantity: 1 });
        let refused = StockCommand::decode(&answer).unwrap_err();
        assert!(
            matches!(&refused, DecodeError::UnknownType(message_type) if message_type == "inventory.stock-reserved.v1"),
            "{refused:?}"
        );
    }
}
