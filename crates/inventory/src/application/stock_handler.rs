//! The stock handler: executes the saga's commands on `Product` aggregates and answers.

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
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "stock";

    pub fn new(products: Arc<dyn ProductStore>) -> Self {
        Self { products }
    }
}

/// A command on one product.
enum Command {
    Reserve { order_id: OrderId, quantity: Quantity },
    Release { order_id: OrderId },
    Deduct { order_id: OrderId },
}

/// The product a command is about and the command. A reservation of an id that names no
/// product is answered with a refusal; releasing or deducting one is a defect.
fn read(message: &Envelope) -> Result<(i64, Command), HandlerError> {
    Ok(match message.message_type.as_str() {
        ReserveStock::TYPE => {
            let command: ReserveStock = message.decode().map_err(HandlerError::permanent)?;
            let quantity = Quantity::new(command.quantity.into()).map_err(HandlerError::permanent)?;
            (command.product_id, Command::Reserve { order_id: OrderId::from_uuid(command.order_id), quantity })
        }
        ReleaseStock::TYPE => {
            let command: ReleaseStock = message.decode().map_err(HandlerError::permanent)?;
            ProductId::new(command.product_id).map_err(HandlerError::permanent)?;
            (command.product_id, Command::Release { order_id: OrderId::from_uuid(command.order_id) })
        }
        DeductStock::TYPE => {
            let command: DeductStock = message.decode().map_err(HandlerError::permanent)?;
            ProductId::new(command.product_id).map_err(HandlerError::permanent)?;
            (command.product_id, Command::Deduct { order_id: OrderId::from_uuid(command.order_id) })
        }
        other => return Err(HandlerError::permanent(format!("no handler for {other}"))),
    })
}

#[async_trait]
impl Handler for StockHandler {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn message_types(&self) -> Vec<&'static str> {
        vec![ReserveStock::TYPE, ReleaseStock::TYPE, DeductStock::TYPE]
    }

    /// Commands on one product run one after another: they would only conflict on its version.
    fn ordering_key(&self, message: &Envelope) -> u64 {
        messaging::consumer::hash(message.payload.get("productId").and_then(serde_json::Value::as_i64))
    }

    async fn handle(&self, message: &Envelope) -> Result<(), HandlerError> {
        let (product, command) = read(message)?;
        let single = [(message, &command)];
        Ok(retry_on_conflict(|| self.apply(product, &single)).await?)
    }

    /// Several commands on one product (a popular one, under load) in one load and one commit.
    async fn handle_many(&self, messages: &[Envelope]) -> Option<Result<(), HandlerError>> {
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            batch.push((message, read(message).ok()?));
        }
        let product = batch[0].1.0;
        if batch.iter().any(|(_, (id, _))| *id != product) {
            return None; // different products that share a lane
        }
        let commands: Vec<(&Envelope, &Command)> =
            batch.iter().map(|(message, (_, command))| (*message, command)).collect();
        Some(retry_on_conflict(|| self.apply(product, &commands)).await.map_err(Into::into))
    }
}

impl StockHandler {
    /// One attempt: load the product, apply each command in turn, answer reservations (a refusal
    /// included: the saga must hear back), and commit the product's changes with the answers
    /// and the inbox records. Releasing what an order does not hold is nothing to do.
    async fn apply(&self, product: i64, commands: &[(&Envelope, &Command)]) -> Result<(), AppError> {
        let product_id = ProductId::new(product).ok();
        let mut found = match product_id {
            Some(id) => self.products.load(id).await?,
            None => None,
        };
        let mut effects = Effects::new();
        for (message, command) in commands {
            effects.consume(self.name(), message.message_id);
            let causation = Causation::from_message(message);
            let rejected = |order_id: OrderId, reason: String| {
                causation.envelope(&StockReservationRejected {
                    order_id: order_id.as_uuid(),
                    product_id: product,
                    reason,
                })
            };
            match (command, found.as_mut()) {
                (Command::Reserve { order_id, .. }, None) => {
                    effects.send(rejected(*order_id, format!("unknown product {product}")));
                }
                (Command::Reserve { order_id, quantity }, Some(found)) => {
                    let answer = match found.reserve(*order_id, *quantity) {
                        Ok(()) => reserved(&causation, *order_id, product, *quantity),
                        // Asked twice: answer the same again.
                        Err(ProductError::AlreadyReserved { .. }) => reserved(
                            &causation,
                            *order_id,
                            product,
                            found.reservation_of(*order_id).unwrap_or(*quantity),
                        ),
                        Err(refusal @ ProductError::InsufficientStock { .. }) => {
                            rejected(*order_id, refusal.to_string())
                        }
                        Err(other) => return Err(other.into()),
                    };
                    effects.send(answer);
                }
                (Command::Release { order_id }, Some(found)) => {
                    found.release(*order_id);
                }
                (Command::Release { .. }, None) => {}
                (Command::Deduct { order_id }, Some(found)) => {
                    found.deduct(*order_id)?;
                }
                (Command::Deduct { .. }, None) => {
                    let id = product_id.expect("read() accepts deductions of valid product ids only");
                    return Err(AppError::ProductNotFound(id));
                }
            }
        }
        let changes = found.as_mut().map(crate::domain::Product::take_events).unwrap_or_default();
        let saved = match &found {
            // A refusal leaves the product as it was: no version to bump, no conflict to risk.
            Some(product) if !changes.is_empty() => self.products.save(product, &changes, &effects).await,
            _ if effects.outgoing.is_empty() => Ok(()),
            _ => self.products.commit(&effects).await,
        };
        Ok(messaging::applied(&effects, saved)?)
    }
}

fn reserved(causation: &Causation, order_id: OrderId, product_id: i64, quantity: Quantity) -> Envelope {
    causation.envelope(&StockReserved { order_id: order_id.as_uuid(), product_id, quantity: quantity.get() })
}
