use super::decimal;
use crate::application::{IdempotencyKeyUse, OrderFilter, OrderPage, OrderStore, OrderSummary};
use crate::domain::{Order, OrderId, OrderStatus, Reason, Timeline};
use crate::infrastructure::orders::{OrderRow, page, stored_lines, summary};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messaging::sqlite::{Database, Timestamp, commit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

#[derive(Clone)]
pub struct SqliteOrderStore {
    db: Database,
}

impl SqliteOrderStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

fn uuid(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
    Ok(row.try_get::<Hyphenated, _>(column)?.into_uuid())
}

fn time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    Ok(row.try_get::<Option<Timestamp>, _>(column)?.map(|at| at.0))
}

/// An order row as the order it holds.
fn restore(row: &SqliteRow) -> Result<Order, BoxError> {
    OrderRow {
        id: uuid(row, "id")?,
        customer_id: uuid(row, "customer_id")?,
        description: row.try_get("description")?,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        lines: serde_json::from_str(row.try_get("lines")?)?,
        timeline: Timeline {
            created_at: row.try_get::<Timestamp, _>("created_at")?.0,
            placed_at: time(row, "placed_at")?,
            decided_at: time(row, "decided_at")?,
        },
        version: row.try_get("version")?,
    }
    .restore()
}

#[async_trait]
impl OrderStore for SqliteOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, LoadError> {
        let what = || format!("order {id}");
        let row = sqlx::query(
            "SELECT id, customer_id, description, status, status_reason, lines, created_at, placed_at, decided_at, \
                    version \
             FROM orders WHERE id = ?",
        )
        .bind(id.as_uuid().hyphenated())
        .fetch_optional(self.db.reader())
        .await
        .map_err(|error| load_error(error, what()))?;
        row.as_ref().map(restore).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(
        &self,
        order: &Order,
        idempotency: Option<IdempotencyKeyUse<'_>>,
        effects: &Effects<'_>,
    ) -> Result<(), SaveError> {
        let reason = order.state().reason().map(Reason::as_str);
        let lines = stored_lines(order).to_string();
        let total = order.total().amount().to_string();
        let timeline = order.timeline();
        let now = Timestamp::now();
        commit(&self.db, effects, async |tx| {
            let written = if order.version() == 0 {
                sqlx::query(
                    "INSERT INTO orders (id, customer_id, description, status, status_reason, lines, total, created_at, \
                                         placed_at, decided_at, updated_at, version) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                )
                .bind(order.id().as_uuid().hyphenated())
                .bind(order.customer_id().as_uuid().hyphenated())
                .bind(order.description())
                .bind(order.status().as_str())
                .bind(reason)
                .bind(&lines)
                .bind(&total)
                .bind(Timestamp(timeline.created_at))
                .bind(timeline.placed_at.map(Timestamp))
                .bind(timeline.decided_at.map(Timestamp))
                .bind(now)
                .execute(&mut *tx)
                .await
            } else {
                sqlx::query(
                    "UPDATE orders SET status = ?, status_reason = ?, lines = ?, total = ?, placed_at = ?, \
                            decided_at = ?, updated_at = ?, version = version + 1 \
                     WHERE id = ? AND version = ?",
                )
                .bind(order.status().as_str())
                .bind(reason)
                .bind(&lines)
                .bind(&total)
                .bind(timeline.placed_at.map(Timestamp))
                .bind(timeline.decided_at.map(Timestamp))
                .bind(now)
                .bind(order.id().as_uuid().hyphenated())
                .bind(order.version())
                .execute(&mut *tx)
                .await
            }
            .map_err(save_error)?;
            if written.rows_affected() == 0 {
                return Err(SaveError::Conflict);
            }
            if let Some(used) = idempotency {
                // A key whose last use expired is taken over; one still in use is another
                // request's (a conflict: the retry finds its order).
                let claimed = sqlx::query(
                    "INSERT INTO idempotency_keys (key, order_id, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (key) DO UPDATE \
                        SET order_id = excluded.order_id, fingerprint = excluded.fingerprint, \
                            created_at = excluded.created_at \
                        WHERE idempotency_keys.created_at < ?5",
                )
                .bind(used.key)
                .bind(order.id().as_uuid().hyphenated())
                .bind(used.fingerprint)
                .bind(Timestamp(timeline.created_at))
                .bind(Timestamp(used.expired_before))
                .execute(&mut *tx)
                .await
                .map_err(save_error)?;
                if claimed.rows_affected() == 0 {
                    return Err(SaveError::Conflict);
                }
            }
            Ok(())
        })
        .await
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Option<(OrderId, String)>, LoadError> {
        let row: Option<(Hyphenated, String)> =
            sqlx::query_as("SELECT order_id, fingerprint FROM idempotency_keys WHERE key = ? AND created_at >= ?")
                .bind(key)
                .bind(Timestamp(expired_before))
                .fetch_optional(self.db.reader())
                .await
                .map_err(|error| load_error(error, "idempotency key"))?;
        Ok(row.map(|(id, fingerprint)| (OrderId::from_uuid(id.into_uuid()), fingerprint)))
    }

    async fn forget_idempotency_keys(&self, expired_before: DateTime<Utc>) -> Result<u64, SaveError> {
        let deleted = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(Timestamp(expired_before))
            .execute(self.db.writer())
            .await
            .map_err(save_error)?;
        Ok(deleted.rows_affected())
    }

    async fn list(&self, filter: &OrderFilter) -> Result<OrderPage, LoadError> {
        let rows = sqlx::query(
            "SELECT id, customer_id, status, total, json_array_length(lines) AS line_count, created_at \
             FROM orders \
             WHERE (?1 IS NULL OR customer_id = ?1) \
               AND (?2 IS NULL OR status = ?2) \
               AND (?3 IS NULL OR id < ?3) \
             ORDER BY id DESC LIMIT ?4",
        )
        .bind(filter.customer_id.map(|id| id.as_uuid().hyphenated()))
        .bind(filter.status.map(OrderStatus::as_str))
        .bind(filter.after.map(|id| id.as_uuid().hyphenated()))
        .bind(i64::from(filter.limit) + 1)
        .fetch_all(self.db.reader())
        .await
        .map_err(|error| load_error(error, "order list"))?;
        let orders = rows
            .iter()
            .map(|row| -> Result<OrderSummary, BoxError> {
                summary(
                    uuid(row, "id")?,
                    uuid(row, "customer_id")?,
                    row.try_get("status")?,
                    decimal(row.try_get("total")?)?,
                    row.try_get("line_count")?,
                    row.try_get::<Timestamp, _>("created_at")?.0,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| LoadError::corrupt("order list", error))?;
        Ok(page(orders, filter))
    }
}
