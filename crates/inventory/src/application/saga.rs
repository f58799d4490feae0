//! The ReserveStocks saga: the process manager that reserves every line of a placed order.
//!
//! One instance per order, correlated by the order id. It is a pure state machine: each method
//! takes what happened and returns the [`Action`]s to take (commands to send, outcomes to
//! publish, the timeout to schedule or cancel). The handler turns actions into messages and
//! saves the instance with them and the inbox record, atomically.
//!
//! ```text
//!  order.placed ──> Reserving ── every line reserved ──> Reserved ── order.shipped ──> Shipped
//!                     │                                    │
//!                     │ a line rejected / timeout /        │ order.cancelled
//!                     │ order cancelled                    v
//!                     └──────────────> Failed           Released
//! ```
//! Failed and Released give back every reservation held, and any that arrives late.

use crate::domain::{OrderId, ProductId, Quantity};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Where a reservation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    /// Waiting for the answers of the stock handler.
    Reserving,
    /// Every line is held for the order (the order is confirmed).
    Reserved,
    /// The reservation failed (or the order was cancelled first); held stock is released.
    Failed,
    /// The confirmed order was cancelled; its stock is released.
    Released,
    /// The confirmed order shipped; its reserved stock left the warehouse.
    Shipped,
}

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Reserving => "reserving",
            SagaState::Reserved => "reserved",
            SagaState::Failed => "failed",
            SagaState::Released => "released",
            SagaState::Shipped => "shipped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Reserving, Self::Reserved, Self::Failed, Self::Released, Self::Shipped]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// Where one line of the order is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineStatus {
    /// Reserve command sent, no answer yet.
    Pending,
    Reserved,
    Rejected {
        reason: String,
    },
    Released,
    Deducted,
}

/// One line of the order: a product, the units it needs, and where its reservation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub status: LineStatus,
}

/// One change in a saga's life and when it happened: its state, or one line's status. The
/// history of these is the saga's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub change: Change,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The saga entered this state (every saga starts in `Reserving`, or `Failed`).
    State(SagaState),
    /// A line's reservation took this status (every line starts `Pending` with the saga).
    Line { product_id: ProductId, status: LineStatus },
}

/// What the saga wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reserve { product_id: ProductId, quantity: Quantity },
    Release { product_id: ProductId },
    Deduct { product_id: ProductId },
    ScheduleTimeout { at: DateTime<Utc> },
    CancelTimeout { message_id: Uuid },
    PublishCompleted,
    PublishFailed { reason: String },
}

/// Why a message cannot apply to the saga as it stands: a defect upstream, not a race.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    #[error("order {order_id} cannot ship: its stock reservation is {state}")]
    CannotShip { order_id: OrderId, state: &'static str },
    #[error("order {order_id} has no reservation line for product {product_id}")]
    UnknownLine { order_id: OrderId, product_id: ProductId },
}

/// The reservation of one order's stock: its state, each line's reservation, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationSaga {
    order_id: OrderId,
    state: SagaState,
    lines: Vec<SagaLine>,
    failure_reason: Option<String>,
    /// The scheduled timeout message, withdrawn once the outcome is known.
    timeout_message_id: Option<Uuid>,
    started_at: DateTime<Utc>,
    /// Every change, oldest first (empty for sagas saved before changes were recorded).
    history: Vec<Step>,
    /// The version this copy was loaded at (0 for a new instance); stores save against it.
    version: i64,
}

pub const REASON_ORDER_CANCELLED: &str = "order cancelled";

impl ReservationSaga {
    /// Starts on `order.placed`: reserve every line at once and arm the timeout.
    pub fn start(
        order_id: OrderId,
        lines: Vec<(ProductId, Quantity)>,
        now: DateTime<Utc>,
        timeout: std::time::Duration,
    ) -> (Self, Vec<Action>) {
        let mut saga = Self {
            order_id,
            state: SagaState::Reserving,
            lines: lines
                .iter()
                .map(|&(product_id, quantity)| SagaLine { product_id, quantity, status: LineStatus::Pending })
                .collect(),
            failure_reason: None,
            timeout_message_id: None,
            started_at: now,
            history: vec![Step { at: now, change: Change::State(SagaState::Reserving) }],
            version: 0,
        };
        if lines.is_empty() {
            let actions = saga.fail("order has no items".into(), now);
            return (saga, actions);
        }
        let mut actions: Vec<Action> =
            lines.into_iter().map(|(product_id, quantity)| Action::Reserve { product_id, quantity }).collect();
        let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        actions
            .push(Action::ScheduleTimeout { at: now.checked_add_signed(timeout).unwrap_or(DateTime::<Utc>::MAX_UTC) });
        (saga, actions)
    }

    /// The order was cancelled before its `order.placed` arrived: an instance that remembers,
    /// so that the late `order.placed` reserves nothing.
    pub fn cancelled_before_start(order_id: OrderId, now: DateTime<Utc>) -> Self {
        Self {
            order_id,
            state: SagaState::Failed,
            lines: Vec::new(),
            failure_reason: Some(REASON_ORDER_CANCELLED.into()),
            timeout_message_id: None,
            started_at: now,
            history: vec![Step { at: now, change: Change::State(SagaState::Failed) }],
            version: 0,
        }
    }

    /// Rebuilds a saga from storage.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        order_id: OrderId,
        state: SagaState,
        lines: Vec<SagaLine>,
        failure_reason: Option<String>,
        timeout_message_id: Option<Uuid>,
        started_at: DateTime<Utc>,
        history: Vec<Step>,
        version: i64,
    ) -> Self {
        Self { order_id, state, lines, failure_reason, timeout_message_id, started_at, history, version }
    }

    /// Notes the id of the timeout message the handler scheduled, to withdraw it once the
    /// outcome is known.
    pub fn timeout_scheduled(&mut self, message_id: Uuid) {
        self.timeout_message_id = Some(message_id);
    }

    /// Notes that a store saved this copy: it is now one version further.
    pub fn record_saved(&mut self) {
        self.version += 1;
    }

    pub fn order_id(&self) -> OrderId {
        self.order_id
    }

    pub fn state(&self) -> SagaState {
        self.state
    }

    pub fn lines(&self) -> &[SagaLine] {
        &self.lines
    }

    pub fn failure_reason(&self) -> Option<&str> {
        self.failure_reason.as_deref()
    }

    pub fn timeout_message_id(&self) -> Option<Uuid> {
        self.timeout_message_id
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    /// Every recorded change, oldest first.
    pub fn history(&self) -> &[Step] {
        &self.history
    }

    /// When a line last changed status (the saga's start for a line still pending), if known.
    pub fn line_changed_at(&self, product_id: ProductId) -> Option<DateTime<Utc>> {
        self.history
            .iter()
            .rev()
            .find(|step| matches!(&step.change, Change::Line { product_id: id, .. } if *id == product_id))
            .or_else(|| self.history.first())
            .map(|step| step.at)
    }

    pub fn on_stock_reserved(&mut self, product_id: ProductId, now: DateTime<Utc>) -> Result<Vec<Action>, SagaError> {
        if self.line_mut(product_id)?.status != LineStatus::Pending {
            return Ok(Vec::new()); // already answered
        }
        match self.state {
            SagaState::Reserving => {
                self.set_line(product_id, LineStatus::Reserved, now);
                if self.lines.iter().all(|line| line.status == LineStatus::Reserved) {
                    self.set_state(SagaState::Reserved, now);
                    let mut actions = vec![Action::PublishCompleted];
                    actions.extend(self.cancel_timeout());
                    return Ok(actions);
                }
                Ok(Vec::new())
            }
            // Too late: the reservation failed or the order is gone. Give it back.
            _ => {
                self.set_line(product_id, LineStatus::Released, now);
                Ok(vec![Action::Release { product_id }])
            }
        }
    }

    pub fn on_stock_rejected(
        &mut self,
        product_id: ProductId,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, SagaError> {
        if self.line_mut(product_id)?.status != LineStatus::Pending {
            return Ok(Vec::new());
        }
        self.set_line(product_id, LineStatus::Rejected { reason: reason.clone() }, now);
        if self.state == SagaState::Reserving { Ok(self.fail(reason, now)) } else { Ok(Vec::new()) }
    }

    pub fn on_timeout(&mut self, after: std::time::Duration, now: DateTime<Utc>) -> Vec<Action> {
        if self.state != SagaState::Reserving {
            return Vec::new();
        }
        self.timeout_message_id = None; // it fired; nothing to withdraw
        self.fail(format!("stock reservation timed out after {}", humanize(after)), now)
    }

    pub fn on_order_cancelled(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        match self.state {
            SagaState::Reserving => self.fail(REASON_ORDER_CANCELLED.into(), now),
            SagaState::Reserved => {
                self.set_state(SagaState::Released, now);
                self.failure_reason = Some(REASON_ORDER_CANCELLED.into());
                self.release_held(now)
            }
            SagaState::Failed | SagaState::Released | SagaState::Shipped => Vec::new(),
        }
    }

    pub fn on_order_shipped(&mut self, now: DateTime<Utc>) -> Result<Vec<Action>, SagaError> {
        match self.state {
            SagaState::Reserved => {
                self.set_state(SagaState::Shipped, now);
                Ok(self
                    .held()
                    .into_iter()
                    .map(|product_id| {
                        self.set_line(product_id, LineStatus::Deducted, now);
                        Action::Deduct { product_id }
                    })
                    .collect())
            }
            SagaState::Shipped => Ok(Vec::new()),
            other => Err(SagaError::CannotShip { order_id: self.order_id, state: other.as_str() }),
        }
    }

    /// Ends the reservation as failed: releases what is held, publishes the reason.
    fn fail(&mut self, reason: String, now: DateTime<Utc>) -> Vec<Action> {
        self.set_state(SagaState::Failed, now);
        self.failure_reason = Some(reason.clone());
        let mut actions = self.release_held(now);
        actions.extend(self.cancel_timeout());
        actions.push(Action::PublishFailed { reason });
        actions
    }

    fn release_held(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        self.held()
            .into_iter()
            .map(|product_id| {
                self.set_line(product_id, LineStatus::Released, now);
                Action::Release { product_id }
            })
            .collect()
    }

    /// The products of the lines reserved now.
    fn held(&self) -> Vec<ProductId> {
        self.lines.iter().filter(|line| line.status == LineStatus::Reserved).map(|line| line.product_id).collect()
    }

    fn set_state(&mut self, state: SagaState, now: DateTime<Utc>) {
        self.state = state;
        self.history.push(Step { at: now, change: Change::State(state) });
    }

    /// Sets the status of the line of `product_id` (which exists) and records the change.
    fn set_line(&mut self, product_id: ProductId, status: LineStatus, now: DateTime<Utc>) {
        if let Some(line) = self.lines.iter_mut().find(|line| line.product_id == product_id) {
            line.status = status.clone();
            self.history.push(Step { at: now, change: Change::Line { product_id, status } });
        }
    }

    fn cancel_timeout(&mut self) -> Option<Action> {
        self.timeout_message_id.take().map(|message_id| Action::CancelTimeout { message_id })
    }

    fn line_mut(&mut self, product_id: ProductId) -> Result<&mut SagaLine, SagaError> {
        let order_id = self.order_id;
        self.lines
            .iter_mut()
            .find(|line| line.product_id == product_id)
            .ok_or(SagaError::UnknownLine { order_id, product_id })
    }
}

fn humanize(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(600);

    fn product(id: i64) -> ProductId {
        ProductId::new(id).unwrap()
    }

    fn t() -> DateTime<Utc> {
        Utc::now()
    }

    fn qty(units: i64) -> Quantity {
        Quantity::new(units).unwrap()
    }

    fn started(lines: &[(i64, i64)]) -> (ReservationSaga, Vec<Action>) {
        let lines = lines.iter().map(|(p, q)| (product(*p), qty(*q))).collect();
        let (mut saga, actions) = ReservationSaga::start(OrderId::generate(), lines, Utc::now(), TIMEOUT);
        // The handler records the id of the timeout message it scheduled.
        saga.timeout_scheduled(Uuid::from_u128(7));
        (saga, actions)
    }

    fn cancel_timeout() -> Action {
        Action::CancelTimeout { message_id: Uuid::from_u128(7) }
    }

    #[test]
    fn starting_reserves_every_line_at_once_and_arms_the_timeout() {
        let now = Utc::now();
        let (saga, actions) =
            ReservationSaga::start(OrderId::generate(), vec![(product(1), qty(2)), (product(2), qty(1))], now, TIMEOUT);
        assert_eq!(saga.state, SagaState::Reserving);
        assert_eq!(
            actions,
            vec![
                Action::Reserve { product_id: product(1), quantity: qty(2) },
                Action::Reserve { product_id: product(2), quantity: qty(1) },
                Action::ScheduleTimeout { at: now + chrono::Duration::seconds(600) },
            ]
        );
    }

    #[test]
    fn an_order_without_items_fails_at_once() {
        let (saga, actions) = ReservationSaga::start(OrderId::generate(), vec![], Utc::now(), TIMEOUT);
        assert_eq!(saga.state, SagaState::Failed);
        assert_eq!(actions, vec![Action::PublishFailed { reason: "order has no items".into() }]);
    }

    #[test]
    fn the_last_reserved_line_completes_the_saga_and_withdraws_the_timeout() {
        let (mut saga, _) = started(&[(1, 2), (2, 1)]);
        assert_eq!(saga.on_stock_reserved(product(2), t()).unwrap(), vec![]);
        assert_eq!(saga.on_stock_reserved(product(1), t()).unwrap(), vec![Action::PublishCompleted, cancel_timeout()]);
        assert_eq!(saga.state, SagaState::Reserved);
        // A repeated answer changes nothing.
        assert_eq!(saga.on_stock_reserved(product(1), t()).unwrap(), vec![]);
    }

    #[test]
    fn a_rejected_line_fails_the_saga_and_releases_what_is_held() {
        let (mut saga, _) = started(&[(1, 2), (2, 1), (3, 1)]);
        saga.on_stock_reserved(product(1), t()).unwrap();
        let actions = saga.on_stock_rejected(product(2), "not enough stock".into(), t()).unwrap();
        assert_eq!(
            actions,
            vec![
                Action::Release { product_id: product(1) },
                cancel_timeout(),
                Action::PublishFailed { reason: "not enough stock".into() },
            ]
        );
        assert_eq!(saga.state, SagaState::Failed);
        // Line 3 answers late: what it reserved goes straight back.
        assert_eq!(saga.on_stock_reserved(product(3), t()).unwrap(), vec![Action::Release { product_id: product(3) }]);
        assert!(saga.lines.iter().all(|l| !matches!(l.status, LineStatus::Reserved | LineStatus::Pending)));
    }

    #[test]
    fn a_second_rejection_publishes_nothing_more() {
        let (mut saga, _) = started(&[(1, 2), (2, 1)]);
        saga.on_stock_rejected(product(1), "no".into(), t()).unwrap();
        assert_eq!(saga.on_stock_rejected(product(2), "no either".into(), t()).unwrap(), vec![]);
        assert_eq!(saga.failure_reason.as_deref(), Some("no"));
    }

    #[test]
    fn the_timeout_fails_a_saga_still_reserving() {
        let (mut saga, _) = started(&[(1, 2), (2, 1)]);
        saga.on_stock_reserved(product(1), t()).unwrap();
        let actions = saga.on_timeout(TIMEOUT, t());
        assert_eq!(
            actions,
            vec![
                Action::Release { product_id: product(1) },
                Action::PublishFailed { reason: "stock reservation timed out after 10m".into() },
            ]
        );
        assert_eq!(saga.on_stock_reserved(product(2), t()).unwrap(), vec![Action::Release { product_id: product(2) }]);
    }

    #[test]
    fn a_late_timeout_is_ignored() {
        let (mut saga, _) = started(&[(1, 1)]);
        saga.on_stock_reserved(product(1), t()).unwrap();
        assert_eq!(saga.on_timeout(TIMEOUT, t()), vec![]);
        assert_eq!(saga.state, SagaState::Reserved);
    }

    #[test]
    fn cancelling_while_reserving_fails_the_saga() {
        let (mut saga, _) = started(&[(1, 1), (2, 1)]);
        saga.on_stock_reserved(product(2), t()).unwrap();
        assert_eq!(
            saga.on_order_cancelled(t()),
            vec![
                Action::Release { product_id: product(2) },
                cancel_timeout(),
                Action::PublishFailed { reason: "order cancelled".into() },
            ]
        );
    }

    #[test]
    fn cancelling_a_confirmed_order_releases_every_line() {
        let (mut saga, _) = started(&[(1, 1), (2, 3)]);
        saga.on_stock_reserved(product(1), t()).unwrap();
        saga.on_stock_reserved(product(2), t()).unwrap();
        assert_eq!(
            saga.on_order_cancelled(t()),
            vec![Action::Release { product_id: product(1) }, Action::Release { product_id: product(2) }]
        );
        assert_eq!(saga.state, SagaState::Released);
        assert_eq!(saga.on_order_cancelled(t()), vec![]);
    }

    #[test]
    fn shipping_deducts_every_line_once() {
        let (mut saga, _) = started(&[(1, 1), (2, 3)]);
        saga.on_stock_reserved(product(1), t()).unwrap();
        saga.on_stock_reserved(product(2), t()).unwrap();
        assert_eq!(
            saga.on_order_shipped(t()).unwrap(),
            vec![Action::Deduct { product_id: product(1) }, Action::Deduct { product_id: product(2) }]
        );
        assert_eq!(saga.on_order_shipped(t()).unwrap(), vec![]);
        assert_eq!(saga.on_order_cancelled(t()), vec![]);
    }

    #[test]
    fn shipping_an_order_whose_reservation_failed_is_a_defect() {
        let (mut saga, _) = started(&[(1, 1)]);
        saga.on_stock_rejected(product(1), "no".into(), t()).unwrap();
        assert!(matches!(saga.on_order_shipped(t()), Err(SagaError::CannotShip { state: "failed", .. })));
    }

    #[test]
    fn an_answer_for_a_product_not_on_the_order_is_a_defect() {
        let (mut saga, _) = started(&[(1, 1)]);
        assert!(matches!(saga.on_stock_reserved(product(9), t()), Err(SagaError::UnknownLine { .. })));
    }

    #[test]
    fn the_history_records_each_change_with_its_time_and_each_line_knows_when_it_changed() {
        let start = Utc::now();
        let later = |ms| start + chrono::Duration::milliseconds(ms);
        let (mut saga, _) = ReservationSaga::start(
            OrderId::generate(),
            vec![(product(1), qty(1)), (product(2), qty(5))],
            start,
            TIMEOUT,
        );
        assert_eq!(saga.line_changed_at(product(2)), Some(start), "pending since the start");
        saga.on_stock_reserved(product(1), later(5)).unwrap();
        saga.on_stock_rejected(product(2), "not enough".into(), later(9)).unwrap();
        let line = |id, status| Change::Line { product_id: product(id), status };
        let history: Vec<(DateTime<Utc>, Change)> =
            saga.history().iter().map(|step| (step.at, step.change.clone())).collect();
        assert_eq!(
            history,
            vec![
                (start, Change::State(SagaState::Reserving)),
                (later(5), line(1, LineStatus::Reserved)),
                (later(9), line(2, LineStatus::Rejected { reason: "not enough".into() })),
                (later(9), Change::State(SagaState::Failed)),
                (later(9), line(1, LineStatus::Released)),
            ]
        );
        assert_eq!(saga.line_changed_at(product(1)), Some(later(9)));
    }

    #[test]
    fn a_saga_cancelled_before_start_holds_nothing_and_releases_late_answers() {
        let mut saga = ReservationSaga::cancelled_before_start(OrderId::generate(), Utc::now());
        assert_eq!(saga.state, SagaState::Failed);
        assert!(saga.lines.is_empty());
        assert_eq!(saga.on_order_cancelled(t()), vec![]);
    }
}
