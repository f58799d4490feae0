use crate::application::SagaStore;
use crate::application::saga::{LineStatus, ReservationSaga, SagaLine, SagaState};
use crate::domain::{OrderId, ProductId, Quantity};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messaging::postgres::{commit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

#[derive(Clone)]
pub struct PgSagaStore {
    pool: PgPool,
}

impl PgSagaStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
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

pub(super) fn stored_lines(saga: &ReservationSaga) -> serde_json::Value {
    let lines: Vec<StoredLine> = saga
        .lines()
        .iter()
        .map(|line| StoredLine {
            product_id: line.product_id.get(),
            quantity: line.quantity.get(),
            status: match &line.status {
                LineStatus::Pending => StoredStatus::Pending,
                LineStatus::Reserved => StoredStatus::Reserved,
                LineStatus::Rejected { reason } => StoredStatus::Rejected { reason: reason.clone() },
                LineStatus::Released => StoredStatus::Released,
                LineStatus::Deducted => StoredStatus::Deducted,
            },
        })
        .collect();
    serde_json::to_value(lines).expect("saga lines serialize")
}

fn restore_line(stored: StoredLine) -> Result<SagaLine, BoxError> {
    Ok(SagaLine {
        product_id: ProductId::new(stored.product_id)?,
        quantity: Quantity::new(stored.quantity.into())?,
        status: match stored.status {
            StoredStatus::Pending => LineStatus::Pending,
            StoredStatus::Reserved => LineStatus::Reserved,
            StoredStatus::Rejected { reason } => LineStatus::Rejected { reason },
            StoredStatus::Released => LineStatus::Released,
            StoredStatus::Deducted => LineStatus::Deducted,
        },
    })
}

/// A saga row as read from either database, before it is restored.
pub(super) struct SagaRow {
    pub state: String,
    pub lines: Vec<StoredLine>,
    pub failure_reason: Option<String>,
    pub timeout_message_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
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
        version: row.try_get("version")?,
    }
    .restore(order_id)
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn load(&self, order_id: OrderId) -> Result<Option<ReservationSaga>, LoadError> {
        let what = || format!("saga of order {order_id}");
        let row = sqlx::query(
            "SELECT state, lines, failure_reason, timeout_message_id, started_at, version \
             FROM reservation_sagas WHERE order_id = $1",
        )
        .bind(order_id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| load_error(error, what()))?;
        row.map(|row| restore(order_id, &row)).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(&self, saga: &ReservationSaga, effects: &Effects<'_>) -> Result<(), SaveError> {
        let lines = stored_lines(saga);
        commit(&self.pool, effects, async |tx| {
            let written = if saga.version() == 0 {
                sqlx::query(
                    "INSERT INTO reservation_sagas \
                         (order_id, state, lines, failure_reason, timeout_message_id, started_at, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1)",
                )
                .bind(saga.order_id().as_uuid())
                .bind(saga.state().as_str())
                .bind(&lines)
                .bind(saga.failure_reason())
                .bind(saga.timeout_message_id())
                .bind(saga.started_at())
                .execute(&mut *tx)
                .await
            } else {
                sqlx::query(
                    "UPDATE reservation_sagas SET state = $3, lines = $4, failure_reason = $5, \
                            timeout_message_id = $6, updated_at = now(), version = version + 1 \
                     WHERE order_id = $1 AND version = $2",
                )
                .bind(saga.order_id().as_uuid())
                .bind(saga.version())
                .bind(saga.state().as_str())
                .bind(&lines)
                .bind(saga.failure_reason())
                .bind(saga.timeout_message_id())
                .execute(&mut *tx)
                .await
            }
            .map_err(save_error)?;
            if written.rows_affected() == 0 { Err(SaveError::Conflict) } else { Ok(()) }
        })
        .await
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
    fn a_stored_line_that_names_no_product_does_not_restore() {
        let stored = StoredLine { product_id: 0, quantity: 1, status: StoredStatus::Pending };
        assert!(restore_line(stored).is_err());
    }
}
