use crate::application::SagaStore;
use crate::application::saga::ReservationSaga;
use crate::domain::OrderId;
use crate::infrastructure::sagas::{SagaRow, stored_history, stored_lines};
use async_trait::async_trait;
use messaging::sqlite::{Database, Timestamp, commit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::fmt::Hyphenated;

#[derive(Clone)]
pub struct SqliteSagaStore {
    db: Database,
}

impl SqliteSagaStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

/// A saga row as the saga it holds.
fn restore(order_id: OrderId, row: &SqliteRow) -> Result<ReservationSaga, BoxError> {
    SagaRow {
        state: row.try_get("state")?,
        lines: serde_json::from_str(row.try_get("lines")?)?,
        failure_reason: row.try_get("failure_reason")?,
        timeout_message_id: row.try_get::<Option<Hyphenated>, _>("timeout_message_id")?.map(Hyphenated::into_uuid),
        started_at: row.try_get::<Timestamp, _>("started_at")?.0,
        history: serde_json::from_str(row.try_get("history")?)?,
        version: row.try_get("version")?,
    }
    .restore(order_id)
}

#[async_trait]
impl SagaStore for SqliteSagaStore {
    async fn load(&self, order_id: OrderId) -> Result<Option<ReservationSaga>, LoadError> {
        let what = || format!("saga of order {order_id}");
        let row = sqlx::query(
            "SELECT state, lines, failure_reason, timeout_message_id, started_at, history, version \
             FROM reservation_sagas WHERE order_id = ?",
        )
        .bind(order_id.as_uuid().hyphenated())
        .fetch_optional(self.db.reader())
        .await
        .map_err(|error| load_error(error, what()))?;
        row.map(|row| restore(order_id, &row)).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(&self, saga: &ReservationSaga, effects: &Effects<'_>) -> Result<(), SaveError> {
        let (lines, history) = (stored_lines(saga).to_string(), stored_history(saga).to_string());
        let timeout = saga.timeout_message_id().map(uuid::Uuid::hyphenated);
        let now = Timestamp::now();
        commit(&self.db, effects, async |tx| {
            let written = if saga.version() == 0 {
                sqlx::query(
                    "INSERT INTO reservation_sagas \
                         (order_id, state, lines, failure_reason, timeout_message_id, started_at, history, \
                          updated_at, version) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                )
                .bind(saga.order_id().as_uuid().hyphenated())
                .bind(saga.state().as_str())
                .bind(&lines)
                .bind(saga.failure_reason())
                .bind(timeout)
                .bind(Timestamp(saga.started_at()))
                .bind(&history)
                .bind(now)
                .execute(&mut *tx)
                .await
            } else {
                sqlx::query(
                    "UPDATE reservation_sagas SET state = ?, lines = ?, failure_reason = ?, timeout_message_id = ?, \
                            history = ?, updated_at = ?, version = version + 1 \
                     WHERE order_id = ? AND version = ?",
                )
                .bind(saga.state().as_str())
                .bind(&lines)
                .bind(saga.failure_reason())
                .bind(timeout)
                .bind(&history)
                .bind(now)
                .bind(saga.order_id().as_uuid().hyphenated())
                .bind(saga.version())
                .execute(&mut *tx)
                .await
            }
            .map_err(save_error)?;
            if written.rows_affected() == 0 { Err(SaveError::Conflict) } else { Ok(()) }
        })
        .await
    }
}
