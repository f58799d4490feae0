use crate::application::SagaStore;
use crate::application::saga::{ReservationSaga, SagaLine, SagaState};
use crate::domain::OrderId;
use async_trait::async_trait;
use messaging::postgres::{commit, save_error};
use messaging::{BoxError, Effects, SaveError};
use sqlx::{PgPool, Row};

#[derive(Clone)]
pub struct PgSagaStore {
    pool: PgPool,
}

impl PgSagaStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl SagaStore for PgSagaStore {
    async fn load(&self, order_id: OrderId) -> Result<Option<ReservationSaga>, BoxError> {
        let row = sqlx::query(
            "SELECT state, lines, failure_reason, timeout_message_id, started_at, version \
             FROM reservation_sagas WHERE order_id = $1",
        )
        .bind(order_id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let state: String = row.try_get("state")?;
        let lines: Vec<SagaLine> = serde_json::from_value(row.try_get("lines")?)?;
        Ok(Some(ReservationSaga {
            order_id,
            state: SagaState::parse(&state).ok_or_else(|| format!("unknown saga state {state:?}"))?,
            lines,
            failure_reason: row.try_get("failure_reason")?,
            timeout_message_id: row.try_get("timeout_message_id")?,
            started_at: row.try_get("started_at")?,
            version: row.try_get("version")?,
        }))
    }

    async fn save(&self, saga: &ReservationSaga, effects: &Effects<'_>) -> Result<(), SaveError> {
        let lines = serde_json::to_value(&saga.lines).expect("saga lines serialize");
        commit(&self.pool, effects, async |tx| {
            let written = if saga.version == 0 {
                sqlx::query(
                    "INSERT INTO reservation_sagas \
                         (order_id, state, lines, failure_reason, timeout_message_id, started_at, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, 1)",
                )
                .bind(saga.order_id.as_uuid())
                .bind(saga.state.as_str())
                .bind(&lines)
                .bind(&saga.failure_reason)
                .bind(saga.timeout_message_id)
                .bind(saga.started_at)
                .execute(&mut *tx)
                .await
            } else {
                sqlx::query(
                    "UPDATE reservation_sagas SET state = $3, lines = $4, failure_reason = $5, \
                            timeout_message_id = $6, updated_at = now(), version = version + 1 \
                     WHERE order_id = $1 AND version = $2",
                )
                .bind(saga.order_id.as_uuid())
                .bind(saga.version)
                .bind(saga.state.as_str())
                .bind(&lines)
                .bind(&saga.failure_reason)
                .bind(saga.timeout_message_id)
                .execute(&mut *tx)
                .await
            }
            .map_err(save_error)?;
            if written.rows_affected() == 0 { Err(SaveError::Conflict) } else { Ok(()) }
        })
        .await
    }
}
