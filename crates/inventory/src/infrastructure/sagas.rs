use crate::application::SagaStore;
use crate::application::saga::{Change, LineStatus, ReservationSaga, SagaLine, SagaState, Step};
use crate::domain::{OrderId, ProductId, Quantity};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messaging::postgres::{GroupCommit, StateWrites, load_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

#[derive(Clone)]
pub struct PgSagaStore {
    db: GroupCommit,
}

impl PgSagaStore {
    /// A store writing through `db` (a pool, or the group commit its database's other stores share).
    pub fn new(db: impl Into<GroupCommit>) -> Self {
        Self { db: db.into() }
    }
}

/// A line as stored in the `lines` JSON column, its status inline:
/// `{"productId": 4, "quantity": 2, "status": "rejected", "reason": "no stock"}`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StoredLine {
    product_id: i64,
    quantity: u32,
    #[serde(flatten)]
    status: StoredStatus,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
enum StoredStatus {
    Pending,
    Reserved,
    Rejected { reason: String },
    Released,
    Deducted,
}

/// A step of the `history` JSON column: `{"at": ..., "state": "failed"}` or
/// `{"at": ..., "productId": 4, "status": "rejected", "reason": "no stock"}`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct StoredStep {
    at: DateTime<Utc>,
    #[serde(flatten)]
    change: StoredChange,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum StoredChange {
    State {
        state: String,
    },
    Line {
        #[serde(rename = "productId")]
        product_id: i64,
        #[serde(flatten)]
        status: StoredStatus,
    },
}

impl From<&LineStatus> for StoredStatus {
    fn from(status: &LineStatus) -> Self {
        match status {
            LineStatus::Pending => StoredStatus::Pending,
            LineStatus::Reserved => StoredStatus::Reserved,
            LineStatus::Rejected { reason } => StoredStatus::Rejected { reason: reason.clone() },
            LineStatus::Released => StoredStatus::Released,
            LineStatus::Deducted => StoredStatus::Deducted,
        }
    }
}

impl From<StoredStatus> for LineStatus {
    fn from(status: StoredStatus) -> Self {
        match status {
            StoredStatus::Pending => LineStatus::Pending,
            StoredStatus::Reserved => LineStatus::Reserved,
            StoredStatus::Rejected { reason } => LineStatus::Rejected { reason },
            StoredStatus::Released => LineStatus::Released,
            StoredStatus::Deducted => LineStatus::Deducted,
        }
    }
}

pub(super) fn stored_lines(saga: &ReservationSaga) -> serde_json::Value {
    let lines: Vec<StoredLine> = saga
        .lines()
        .iter()
        .map(|line| StoredLine {
            product_id: line.product_id.get(),
            quantity: line.quantity.get(),
            status: StoredStatus::from(&line.status),
        })
        .collect();
    serde_json::to_value(lines).expect("saga lines serialize")
}

pub(super) fn stored_history(saga: &ReservationSaga) -> serde_json::Value {
    let steps: Vec<StoredStep> = saga
        .history()
        .iter()
        .map(|step| StoredStep {
            at: step.at,
            change: match &step.change {
                Change::State(state) => StoredChange::State { state: state.as_str().to_owned() },
                Change::Line { product_id, status } => {
                    StoredChange::Line { product_id: product_id.get(), status: StoredStatus::from(status) }
                }
            },
        })
        .collect();
    serde_json::to_value(steps).expect("saga history serializes")
}

fn restore_line(stored: StoredLine) -> Result<SagaLine, BoxError> {
    Ok(SagaLine {
        product_id: ProductId::new(stored.product_id)?,
        quantity: Quantity::new(stored.quantity.into())?,
        status: stored.status.into(),
    })
}

fn restore_step(stored: StoredStep) -> Result<Step, BoxError> {
    let change = match stored.change {
        StoredChange::State { state } => {
            Change::State(SagaState::parse(&state).ok_or_else(|| format!("unknown saga state {state:?}"))?)
        }
        StoredChange::Line { product_id, status } => {
            Change::Line { product_id: ProductId::new(product_id)?, status: status.into() }
        }
    };
    Ok(Step { at: stored.at, change })
}

/// A saga row as read from either database, before it is restored.
pub(super) struct SagaRow {
    pub state: String,
    pub lines: Vec<StoredLine>,
    pub failure_reason: Option<String>,
    pub timeout_message_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub history: Vec<StoredStep>,
    pub version: i64,
}

impl SagaRow {
    /// The saga of `order_id` it holds; any part that does not restore makes it corrupt.
    pub fn restore(self, order_id: OrderId) -> Result<ReservationSaga, BoxError> {
        let state = &self.state;
        Ok(ReservationSaga::restore(
            order_id,
            SagaState::parse(state).ok_or_else(|| format!("unknown saga state {state:?}"))?,
            self.lines.into_iter().map(restore_line).collect::<Result<_, _>>()?,
            self.failure_reason,
            self.timeout_message_id,
            self.started_at,
            self.history.into_iter().map(restore_step).collect::<Result<_, _>>()?,
            self.version,
        ))
    }
}

/// A saga row of PostgreSQL as the saga it holds.
fn restore(order_id: OrderId, row: &PgRow) -> Result<ReservationSaga, BoxError> {
    SagaRow {
        state: row.try_get("state")?,
        lines: serde_json::from_value(row.try_get("lines")?)?,
        failure_reason: row.try_get("failure_reason")?,
        timeout_message_id: row.try_get("timeout_message_id")?,
        started_at: row.try_get("started_at")?,
        history: serde_json::from_value(row.try_get("history")?)?,
        version: row.try_get("version")?,
    }
    .restore(order_id)
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn load(&self, order_id: OrderId) -> Result<Option<ReservationSaga>, LoadError> {
        let what = || format!("saga of order {order_id}");
        let row = sqlx::query(
            "SELECT state, lines, failure_reason, timeout_message_id, started_at, history, version \
             FROM reservation_sagas WHERE order_id = $1",
        )
        .bind(order_id.as_uuid())
        .fetch_optional(self.db.pool())
        .await
        .map_err(|error| load_error(error, what()))?;
        row.map(|row| restore(order_id, &row)).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(&self, saga: &ReservationSaga, effects: &Effects<'_>) -> Result<(), SaveError> {
        let (lines, history) = (stored_lines(saga), stored_history(saga));
        let mut writes = StateWrites::default();
        if saga.version() == 0 {
            writes
                .must_write(
                    "INSERT INTO reservation_sagas \
                        (order_id, state, lines, failure_reason, timeout_message_id, started_at, history, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 1) RETURNING 1",
                )
                .bind(saga.order_id().as_uuid())
                .bind(saga.state().as_str())
                .bind(&lines)
                .bind(saga.failure_reason())
                .bind(saga.timeout_message_id())
                .bind(saga.started_at())
                .bind(&history);
        } else {
            writes
                .must_write(
                    "UPDATE reservation_sagas SET state = $3, lines = $4, failure_reason = $5, \
                            timeout_message_id = $6, history = $7, updated_at = now(), version = version + 1 \
                     WHERE order_id = $1 AND version = $2 RETURNING 1",
                )
                .bind(saga.order_id().as_uuid())
                .bind(saga.version())
                .bind(saga.state().as_str())
                .bind(&lines)
                .bind(saga.failure_reason())
                .bind(saga.timeout_message_id())
                .bind(&history);
        }
        self.db.commit_writes(effects, &writes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_serialize_with_their_status_inline() {
        let line = StoredLine { product_id: 4, quantity: 2, status: StoredStatus::Rejected { reason: "no".into() } };
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json, serde_json::json!({ "productId": 4, "quantity": 2, "status": "rejected", "reason": "no" }));
        assert_eq!(serde_json::from_value::<StoredLine>(json).unwrap(), line);
    }

    #[test]
    fn history_steps_serialize_flat_and_read_back() {
        let at: DateTime<Utc> = "2025-01-02T03:04:05.123456Z".parse().unwrap();
        let state = StoredStep { at, change: StoredChange::State { state: "failed".into() } };
        let line = StoredStep {
            at,
            change: StoredChange::Line { product_id: 4, status: StoredStatus::Rejected { reason: "no".into() } },
        };
        let json = serde_json::to_value([&state, &line]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                { "at": "2025-01-02T03:04:05.123456Z", "state": "failed" },
                { "at": "2025-01-02T03:04:05.123456Z", "productId": 4, "status": "rejected", "reason": "no" },
            ])
        );
        assert_eq!(serde_json::from_value::<Vec<StoredStep>>(json).unwrap(), vec![state, line]);
    }

    #[test]
    fn a_stored_line_that_names_no_product_does_not_restore() {
        let stored = StoredLine { product_id: 0, quantity: 1, status: StoredStatus::Pending };
        assert!(restore_line(stored).is_err());
    }
}
