//! Runs the ReserveStocks saga: loads the instance of the order a message is about, feeds it
//! the message, and saves it with the messages its actions produce.

use super::error::AppError;
use super::ports::SagaStore;
use super::saga::{Action, ReservationSaga};
use crate::domain::{OrderId, ProductId, Quantity};
use async_trait::async_trait;
use contracts::inventory::{
    DeductStock, ReleaseStock, ReservationTimedOut, ReserveStock, StockReservationCompleted, StockReservationFailed,
    StockReservationRejected, StockReserved,
};
use contracts::order::{CancelledFrom, OrderCancelled, OrderPlaced, OrderShipped};
use messaging::{BatchHandler, Causation, Effects, Received, Remembered, Worked};
use std::sync::Arc;
use std::time::Duration;

messaging::inbound! {
    /// What the saga reads: the order's life, and the stock handler's answers and the timeout.
    #[derive(Debug, Clone, PartialEq)]
    pub enum SagaMessage {
        Placed(OrderPlaced),
        Cancelled(OrderCancelled),
        Shipped(OrderShipped),
        StockReserved(StockReserved),
        StockRejected(StockReservationRejected),
        TimedOut(ReservationTimedOut),
    }
}

pub struct ReservationSagaHandler {
    sagas: Arc<dyn SagaStore>,
    /// The sagas as this handler last saved them: an order's next answer spares a load.
    recent: Remembered<OrderId, ReservationSaga>,
    /// How long the saga waits for every line before it gives up.
    timeout: Duration,
}

impl ReservationSagaHandler {
    /// The consumer name: its queue and its inbox records.
    pub const NAME: &'static str = "saga";

    pub fn new(sagas: Arc<dyn SagaStore>, timeout: Duration) -> Self {
        Self { sagas, recent: Remembered::default(), timeout }
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

/// What a message tells the saga, in domain terms; `None` if it tells it nothing.
fn event(message: &SagaMessage) -> Result<Option<Event>, AppError> {
    let product = |id: i64| ProductId::new(id).map_err(AppError::invalid_message);
    Ok(Some(match message {
        SagaMessage::Placed(placed) => {
            let lines = placed
                .items
                .iter()
                .map(|item| {
                    let quantity = Quantity::new(item.quantity.into()).map_err(AppError::invalid_message)?;
                    Ok((product(item.product_id)?, quantity))
                })
                .collect::<Result<_, AppError>>()?;
            Event::Placed(lines)
        }
        // A draft never reached inventory.
        SagaMessage::Cancelled(cancelled) if cancelled.cancelled_from == CancelledFrom::Draft => return Ok(None),
        SagaMessage::Cancelled(_) => Event::Cancelled,
        SagaMessage::Shipped(_) => Event::Shipped,
        SagaMessage::StockReserved(reserved) => Event::Reserved(product(reserved.product_id)?),
        SagaMessage::StockRejected(rejected) => Event::Rejected(product(rejected.product_id)?, rejected.reason.clone()),
        SagaMessage::TimedOut(_) => Event::TimedOut,
    }))
}

/// Messages about one order (the answers for its lines, typically) are applied together: one
/// load and one commit.
#[async_trait]
impl BatchHandler for ReservationSagaHandler {
    type Message = SagaMessage;
    type Key = OrderId;
    type Error = AppError;

    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn key(&self, message: &SagaMessage) -> OrderId {
        OrderId::from_uuid(match message {
            SagaMessage::Placed(placed) => placed.order_id,
            SagaMessage::Cancelled(cancelled) => cancelled.order_id,
            SagaMessage::Shipped(shipped) => shipped.order_id,
            SagaMessage::StockReserved(reserved) => reserved.order_id,
            SagaMessage::StockRejected(rejected) => rejected.order_id,
            SagaMessage::TimedOut(timed_out) => timed_out.order_id,
        })
    }

    /// One attempt: load (or start) the order's saga, feed it each message in turn, and save
    /// it with the messages its actions produce and every message's inbox record.
    async fn apply(&self, &order_id: &OrderId, messages: &[&Received<SagaMessage>]) -> Result<(), AppError> {
        // An order's placement starts its saga: it is applied as to no saga, without a load. If
        // the saga exists after all (a second copy, or the cancellation came first), the save
        // conflicts, nothing of it is kept, and the placement is applied to the stored saga.
        // Later messages start from the saga as this handler last saved it, which likewise
        // counts only if it commits.
        let placement = messages.iter().all(|received| matches!(received.message, SagaMessage::Placed(_)));
        if placement && let Ok(Worked::Committed) = self.apply_to(order_id, None, messages).await {
            return Ok(());
        }
        let load = || async move { Ok(self.sagas.load(order_id).await?) };
        self.recent.work_on(&order_id, load, |saga| self.apply_to(order_id, saga, messages)).await?;
        Ok(())
    }
}

impl ReservationSagaHandler {
    /// Feeds `messages` to the order's saga as `loaded`, and saves it with the messages its
    /// actions produce and every message's inbox record.
    async fn apply_to(
        &self,
        order_id: OrderId,
        loaded: Option<ReservationSaga>,
        messages: &[&Received<SagaMessage>],
    ) -> Result<Worked, AppError> {
        let previous = loaded.as_ref().map(ReservationSaga::state);
        let mut saga = loaded.clone();
        let mut effects = Effects::new();
        let now = kernel::now();
        for received in messages {
            let Some(event) = event(&received.message)? else { continue };
            let actions = match (&mut saga, event) {
                (None, Event::Placed(lines)) => {
                    let (started, actions) = ReservationSaga::start(order_id, lines, now, self.timeout);
                    saga = Some(started);
                    actions
                }
                (None, Event::Cancelled) => {
                    saga = Some(ReservationSaga::cancelled_before_start(order_id, now));
                    Vec::new()
                }
                // A timeout whose saga is gone has nothing to end.
                (None, Event::TimedOut) => Vec::new(),
                (None, Event::Shipped | Event::Reserved(_) | Event::Rejected(..)) => {
                    return Err(AppError::ReservationNotFound(order_id));
                }
                // Already started (or cancelled first): a second start changes nothing.
                (Some(_), Event::Placed(_)) => Vec::new(),
                (Some(saga), Event::Cancelled) => saga.on_order_cancelled(now),
                (Some(saga), Event::Shipped) => saga.on_order_shipped(now)?,
                (Some(saga), Event::Reserved(product_id)) => saga.on_stock_reserved(product_id, now)?,
                (Some(saga), Event::Rejected(product_id, reason)) => saga.on_stock_rejected(product_id, reason, now)?,
                (Some(saga), Event::TimedOut) => saga.on_timeout(self.timeout, now),
            };
            effects.consume(BatchHandler::name(self), received.envelope.message_id);
            let causation = Causation::from_message(&received.envelope);
            if let Some(saga) = saga.as_mut() {
                for action in actions {
                    enact(action, saga, &causation, &mut effects);
                }
            }
        }
        let Some(mut saga) = saga else { return Ok(Worked::Unchanged) };
        if loaded.as_ref() == Some(&saga) && effects.outgoing.is_empty() && effects.cancelled.is_empty() {
            return Ok(Worked::Unchanged); // late or repeated answers: nothing to record
        }
        let saved = self.sagas.save(&saga, &effects).await;
        if saved.is_err() {
            messaging::applied(&effects, saved)?;
            return Ok(Worked::Committed); // a copy of messages applied before: nothing new
        }
        saga.record_saved();
        if previous != Some(saga.state()) {
            let state = saga.state().as_str();
            tracing::info!(%order_id, state, reason = saga.failure_reason(), "stock reservation {state}");
            metrics::counter!("stock_reservations_total", "state" => state).increment(1);
        }
        self.recent.put(order_id, saga);
        Ok(Worked::Committed)
    }
}

/// Turns an action into the message that carries it out.
fn enact(action: Action, saga: &mut ReservationSaga, causation: &Causation, effects: &mut Effects<'_>) {
    let order_id = saga.order_id().as_uuid();
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
            saga.timeout_scheduled(timeout.message_id);
            effects.schedule(timeout, at)
        }
        Action::CancelTimeout { message_id } => effects.cancel_scheduled(message_id),
        Action::PublishCompleted => effects.send(causation.envelope(&StockReservationCompleted { order_id })),
        Action::PublishFailed { reason } => {
            effects.send(causation.envelope(&StockReservationFailed { order_id, reason }))
        }
    };
}
