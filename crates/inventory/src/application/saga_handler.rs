//! Runs the ReserveStocks saga: loads the instance of the order a message is about, feeds it
//! the message, and saves it with the messages its actions produce.

use super::error::AppError;
use super::ports::SagaStore;
use super::saga::{Action, ReservationSaga};
use crate::domain::{OrderId, ProductId, Quantity};
use async_trait::async_trait;
use contracts::Message;
use contracts::inventory::{
    DeductStock, ReleaseStock, ReservationTimedOut, ReserveStock, StockReservationCompleted, StockReservationFailed,
    StockReservationRejected, StockReserved,
};
use contracts::order::{CancelledFrom, OrderCancelled, OrderPlaced, OrderShipped};
use messaging::{Causation, Effects, Envelope, Handler, HandlerError, retry_on_conflict};
use std::sync::Arc;
use std::time::Duration;

pub struct ReservationSagaHandler {
    sagas: Arc<dyn SagaStore>,
    /// How long the saga waits for every line before it gives up.
    timeout: Duration,
}

impl ReservationSagaHandler {
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "saga";

    pub fn new(sagas: Arc<dyn SagaStore>, timeout: Duration) -> Self {
        Self { sagas, timeout }
    }
}

/// A message, as the saga sees it.
enum Event {
    Placed(Vec<(ProductId, Quantity)>),
    Cancelled,
    Shipped,
    Reserved(ProductId),
    Rejected(ProductId, String),
    TimedOut,
}

/// The order a message is about and what it tells the saga; `None` if it tells it nothing.
fn read(message: &Envelope) -> Result<Option<(OrderId, Event)>, HandlerError> {
    let product = |id: i64| ProductId::new(id).map_err(HandlerError::permanent);
    let (order_id, event) = match message.message_type.as_str() {
        OrderPlaced::TYPE => {
            let placed: OrderPlaced = message.decode().map_err(HandlerError::permanent)?;
            let lines = placed
                .items
                .iter()
                .map(|item| {
                    Ok((
                        product(item.product_id)?,
                        Quantity::new(item.quantity.into()).map_err(HandlerError::permanent)?,
                    ))
                })
                .collect::<Result<_, HandlerError>>()?;
            (placed.order_id, Event::Placed(lines))
        }
        OrderCancelled::TYPE => {
            let cancelled: OrderCancelled = message.decode().map_err(HandlerError::permanent)?;
            if cancelled.cancelled_from == CancelledFrom::Draft {
                return Ok(None); // a draft never reached inventory
            }
            (cancelled.order_id, Event::Cancelled)
        }
        OrderShipped::TYPE => {
            (message.decode::<OrderShipped>().map_err(HandlerError::permanent)?.order_id, Event::Shipped)
        }
        StockReserved::TYPE => {
            let reserved: StockReserved = message.decode().map_err(HandlerError::permanent)?;
            (reserved.order_id, Event::Reserved(product(reserved.product_id)?))
        }
        StockReservationRejected::TYPE => {
            let rejected: StockReservationRejected = message.decode().map_err(HandlerError::permanent)?;
            (rejected.order_id, Event::Rejected(product(rejected.product_id)?, rejected.reason))
        }
        ReservationTimedOut::TYPE => {
            (message.decode::<ReservationTimedOut>().map_err(HandlerError::permanent)?.order_id, Event::TimedOut)
        }
        other => return Err(HandlerError::permanent(format!("no handler for {other}"))),
    };
    Ok(Some((OrderId::from_uuid(order_id), event)))
}

#[async_trait]
impl Handler for ReservationSagaHandler {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn message_types(&self) -> Vec<&'static str> {
        vec![
            OrderPlaced::TYPE,
            OrderCancelled::TYPE,
            OrderShipped::TYPE,
            StockReserved::TYPE,
            StockReservationRejected::TYPE,
            ReservationTimedOut::TYPE,
        ]
    }

    async fn handle(&self, message: &Envelope) -> Result<(), HandlerError> {
        let Some((order_id, event)) = read(message)? else { return Ok(()) };
        let single = [(message, &event)];
        let handled = retry_on_conflict(|| self.apply(order_id, &single)).await;
        Ok(handled?)
    }

    /// Several messages about one order (the answers for its lines, typically) in one load
    /// and one commit.
    async fn handle_many(&self, messages: &[Envelope]) -> Option<Result<(), HandlerError>> {
        let mut batch = Vec::with_capacity(messages.len());
        for message in messages {
            batch.push((message, read(message).ok()??));
        }
        let order_id = batch[0].1.0;
        if batch.iter().any(|(_, (id, _))| *id != order_id) {
            return None; // different orders that share a lane
        }
        let events: Vec<(&Envelope, &Event)> = batch.iter().map(|(message, (_, event))| (*message, event)).collect();
        Some(retry_on_conflict(|| self.apply(order_id, &events)).await.map_err(Into::into))
    }
}

impl ReservationSagaHandler {
    /// One attempt: load (or start) the order's saga, feed it each event in turn, and save it
    /// with the messages its actions produce and every message's inbox record.
    async fn apply(&self, order_id: OrderId, events: &[(&Envelope, &Event)]) -> Result<(), AppError> {
        let loaded = self.sagas.load(order_id).await?;
        let previous = loaded.as_ref().map(|saga| saga.state);
        let mut saga = loaded.clone();
        let mut effects = Effects::new();
        for (message, event) in events {
            let actions = match (&mut saga, event) {
                (None, Event::Placed(lines)) => {
                    let (started, actions) =
                        ReservationSaga::start(order_id, lines.clone(), kernel::now(), self.timeout);
                    saga = Some(started);
                    actions
                }
                (None, Event::Cancelled) => {
                    saga = Some(ReservationSaga::cancelled_before_start(order_id, kernel::now()));
                    Vec::new()
                }
                // A timeout whose saga is gone has nothing to end.
                (None, Event::TimedOut) => Vec::new(),
                (None, _) => return Err(AppError::ReservationNotFound(order_id)),
                // Already started (or cancelled first): a second start changes nothing.
                (Some(_), Event::Placed(_)) => Vec::new(),
                (Some(saga), Event::Cancelled) => saga.on_order_cancelled(),
                (Some(saga), Event::Shipped) => saga.on_order_shipped()?,
                (Some(saga), Event::Reserved(product_id)) => saga.on_stock_reserved(*product_id)?,
                (Some(saga), Event::Rejected(product_id, reason)) => {
                    saga.on_stock_rejected(*product_id, reason.clone())?
                }
                (Some(saga), Event::TimedOut) => saga.on_timeout(self.timeout),
            };
            effects.consume(self.name(), message.message_id);
            let causation = Causation::from_message(message);
            for action in actions {
                let saga = saga.as_mut().expect("actions come from a saga");
                self.enact(action, saga, &causation, &mut effects);
            }
        }
        let Some(mut saga) = saga else { return Ok(()) };
        if loaded.as_ref() == Some(&saga) && effects.outgoing.is_empty() && effects.cancelled.is_empty() {
            return Ok(()); // late or repeated answers: nothing to record
        }
        messaging::applied(&effects, self.sagas.save(&saga, &effects).await)?;
        saga.version += 1;
        if previous != Some(saga.state) {
            let state = saga.state.as_str();
            tracing::info!(%order_id, state, reason = saga.failure_reason.as_deref(), "stock reservation {state}");
            metrics::counter!("stock_reservations_total", "state" => state).increment(1);
        }
        Ok(())
    }

    /// Turns an action into the message that carries it out.
    fn enact(&self, action: Action, saga: &mut ReservationSaga, causation: &Causation, effects: &mut Effects<'_>) {
        let order_id = saga.order_id.as_uuid();
        match action {
            Action::Reserve { product_id, quantity } => effects.send(causation.envelope(&ReserveStock {
                order_id,
                product_id: product_id.get(),
                quantity: quantity.get(),
            })),
            Action::Release { product_id } => {
                effects.send(causation.envelope(&ReleaseStock { order_id, product_id: product_id.get() }))
            }
            Action::Deduct { product_id } => {
                effects.send(causation.envelope(&DeductStock { order_id, product_id: product_id.get() }))
            }
            Action::ScheduleTimeout { at } => {
                let timeout = causation.envelope(&ReservationTimedOut { order_id });
                saga.timeout_message_id = Some(timeout.message_id);
                effects.schedule(timeout, at)
            }
            Action::CancelTimeout { message_id } => effects.cancel_scheduled(message_id),
            Action::PublishCompleted => effects.send(causation.envelope(&StockReservationCompleted { order_id })),
            Action::PublishFailed { reason } => {
                effects.send(causation.envelope(&StockReservationFailed { order_id, reason }))
            }
        };
    }
}
