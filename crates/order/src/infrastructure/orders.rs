use crate::application::{IdempotencyKeyUse, OrderFilter, OrderPage, OrderStore, OrderSummary};
use crate::domain::{
    CustomerId, Order, OrderId, OrderLine, OrderState, OrderStatus, ProductId, Quantity, Reason, Timeline,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kernel::Money;
use messaging::postgres::{GroupCommit, StateWrites, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

#[derive(Clone)]
pub struct PgOrderStore {
    db: GroupCommit,
}

impl PgOrderStore {
    /// A store writing through `db` (a pool, or the group commit its database's other stores share).
    pub fn new(db: impl Into<GroupCommit>) -> Self {
        Self { db: db.into() }
    }
}

/// A line as stored in the `lines` JSON column (both databases).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredLine {
    product_id: i64,
    product_name: String,
    unit_price: Decimal,
    quantity: i64,
}

pub(super) fn stored_lines(order: &Order) -> serde_json::Value {
    let lines: Vec<StoredLine> = order
        .lines()
        .iter()
        .map(|line| StoredLine {
            product_id: line.product_id.get(),
            product_name: line.product_name.clone(),
            unit_price: line.unit_price.amount(),
            quantity: i64::from(line.quantity.get()),
        })
        .collect();
    serde_json::to_value(lines).expect("lines serialize")
}

/// An order row as read from either database, before it is restored.
pub(super) struct OrderRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub description: Option<String>,
    pub status: String,
    pub status_reason: Option<String>,
    pub lines: Vec<StoredLine>,
    pub timeline: Timeline,
    pub version: i64,
}

impl OrderRow {
    /// The order it holds; any part that does not restore makes it corrupt.
    pub fn restore(self) -> Result<Order, BoxError> {
        let reason =
            || -> Result<Reason, BoxError> { Ok(Reason::new(self.status_reason.clone().unwrap_or_default())?) };
        let state = match parse_status(&self.status)? {
            OrderStatus::Draft => OrderState::Draft,
            OrderStatus::Placed => OrderState::Placed,
            OrderStatus::Confirmed => OrderState::Confirmed,
            OrderStatus::Rejected => OrderState::Rejected { reason: reason()? },
            OrderStatus::Shipped => OrderState::Shipped,
            OrderStatus::Cancelled => OrderState::Cancelled { reason: reason()? },
        };
        let lines = self
            .lines
            .into_iter()
            .map(|line| {
                Ok(OrderLine {
                    product_id: ProductId::new(line.product_id)?,
                    product_name: line.product_name,
                    unit_price: Money::new(line.unit_price)?,
                    quantity: Quantity::new(line.quantity)?,
                })
            })
            .collect::<Result<Vec<_>, BoxError>>()?;
        Ok(Order::restore(
            OrderId::from_uuid(self.id),
            CustomerId::from_uuid(self.customer_id),
            self.description,
            state,
            lines,
            self.timeline,
            self.version,
        )?)
    }
}

fn parse_status(status: &str) -> Result<OrderStatus, BoxError> {
    OrderStatus::parse(status).ok_or_else(|| format!("unknown order status {status:?}").into())
}

/// A listed order from the values of its row (either database).
pub(super) fn summary(
    id: Uuid,
    customer_id: Uuid,
    status: &str,
    total: Decimal,
    line_count: i64,
    created_at: DateTime<Utc>,
) -> Result<OrderSummary, BoxError> {
    Ok(OrderSummary {
        id: OrderId::from_uuid(id),
        customer_id: CustomerId::from_uuid(customer_id),
        status: parse_status(status)?,
        total: Money::new(total)?,
        line_count: u32::try_from(line_count)?,
        created_at,
    })
}

/// The page of `filter.limit` summaries out of the `limit + 1` rows read: one row more than
/// asked tells whether another page follows.
pub(super) fn page(mut orders: Vec<OrderSummary>, filter: &OrderFilter) -> OrderPage {
    let next_after = if orders.len() > filter.limit as usize {
        orders.truncate(filter.limit as usize);
        orders.last().map(|order| order.id)
    } else {
        None
    };
    OrderPage { orders, next_after }
}

/// An order row of PostgreSQL as the order it holds.
fn restore(row: &sqlx::postgres::PgRow) -> Result<Order, BoxError> {
    OrderRow {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        description: row.try_get("description")?,
        status: row.try_get("status")?,
        status_reason: row.try_get("status_reason")?,
        lines: serde_json::from_value(row.try_get("lines")?)?,
        timeline: Timeline {
            created_at: row.try_get("created_at")?,
            placed_at: row.try_get("placed_at")?,
            decided_at: row.try_get("decided_at")?,
        },
        version: row.try_get("version")?,
    }
    .restore()
}

#[async_trait]
impl OrderStore for PgOrderStore {
    async fn load(&self, id: OrderId) -> Result<Option<Order>, LoadError> {
        let what = || format!("order {id}");
        let row = sqlx::query(
            "SELECT id, customer_id, description, status, status_reason, lines, created_at, placed_at, decided_at, \
                    version \
             FROM orders WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(self.db.pool())
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
        let mut writes = StateWrites::default();
        if order.version() == 0 {
            writes
                .must_write(
                    "INSERT INTO orders (id, customer_id, description, status, status_reason, lines, total, created_at, \
                                         placed_at, decided_at, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) RETURNING 1",
                )
                .bind(order.id().as_uuid())
                .bind(order.customer_id().as_uuid())
                .bind(order.description())
                .bind(order.status().as_str())
                .bind(reason)
                .bind(stored_lines(order))
                .bind(order.total().amount())
                .bind(order.timeline().created_at)
                .bind(order.timeline().placed_at)
                .bind(order.timeline().decided_at);
        } else {
            writes
                .must_write(
                    "UPDATE orders SET status = $3, status_reason = $4, lines = $5, total = $6, placed_at = $7, \
                            decided_at = $8, updated_at = now(), version = version + 1 \
                     WHERE id = $1 AND version = $2 RETURNING 1",
                )
                .bind(order.id().as_uuid())
                .bind(order.version())
                .bind(order.status().as_str())
                .bind(reason)
                .bind(stored_lines(order))
                .bind(order.total().amount())
                .bind(order.timeline().placed_at)
                .bind(order.timeline().decided_at);
        }
        if let Some(used) = idempotency {
            // A key whose last use expired is taken over; one still in use is another request's
            // (a conflict: the retry finds its order).
            writes
                .must_write(
                    "INSERT INTO idempotency_keys (key, order_id, fingerprint, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (key) DO UPDATE \
                        SET order_id = excluded.order_id, fingerprint = excluded.fingerprint, \
                            created_at = excluded.created_at \
                        WHERE idempotency_keys.created_at < $5 \
                     RETURNING 1",
                )
                .bind(used.key)
                .bind(order.id().as_uuid())
                .bind(used.fingerprint)
                .bind(order.timeline().created_at)
                .bind(used.expired_before);
        }
        self.db.commit_writes(effects, &writes).await
    }

    async fn find_by_idempotency_key(
        &self,
        key: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Option<(OrderId, String)>, LoadError> {
        let row: Option<(Uuid, String)> =
            sqlx::query_as("SELECT order_id, fingerprint FROM idempotency_keys WHERE key = $1 AND created_at >= $2")
                .bind(key)
                .bind(expired_before)
                .fetch_optional(self.db.pool())
                .await
                .map_err(|error| load_error(error, "idempotency key"))?;
        Ok(row.map(|(id, fingerprint)| (OrderId::from_uuid(id), fingerprint)))
    }

    async fn forget_idempotency_keys(&self, expired_before: DateTime<Utc>) -> Result<u64, SaveError> {
        let deleted = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(expired_before)
            .execute(self.db.pool())
            .await
            .map_err(save_error)?;
        Ok(deleted.rows_affected())
    }

    async fn list(&self, filter: &OrderFilter) -> Result<OrderPage, LoadError> {
        let rows = sqlx::query(
            "SELECT id, customer_id, status, total, jsonb_array_length(lines) AS line_count, created_at \
             FROM orders \
             WHERE ($1::uuid IS NULL OR customer_id = $1) \
               AND ($2::text IS NULL OR status = $2) \
               AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(filter.customer_id.map(|id| id.as_uuid()))
        .bind(filter.status.map(OrderStatus::as_str))
        .bind(filter.after.map(|id| id.as_uuid()))
        .bind(i64::from(filter.limit) + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(|error| load_error(error, "order list"))?;
        let orders = rows
            .iter()
            .map(|row| -> Result<OrderSummary, BoxError> {
                let line_count: i32 = row.try_get("line_count")?;
                summary(
                    row.try_get("id")?,
                    row.try_get("customer_id")?,
                    row.try_get("status")?,
                    row.try_get("total")?,
                    line_count.into(),
                    row.try_get("created_at")?,
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| LoadError::corrupt("order list", error))?;
        Ok(page(orders, filter))
    }
}
