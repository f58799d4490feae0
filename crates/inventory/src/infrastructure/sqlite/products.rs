use crate::application::{ProductStore, ProductSummary};
use crate::domain::{OrderId, Product, ProductEvent, ProductId};
use crate::infrastructure::products::{ProductRow, ReservationChange, reservation_changes, summary};
use async_trait::async_trait;
use messaging::sqlite::{Database, Timestamp, commit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use rust_decimal::Decimal;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};
use std::str::FromStr;
use uuid::Uuid;

#[derive(Clone)]
pub struct SqliteProductStore {
    db: Database,
}

impl SqliteProductStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

/// An amount stored as decimal text.
fn decimal(row: &SqliteRow, column: &str) -> Result<Decimal, BoxError> {
    let text: &str = row.try_get(column)?;
    Decimal::from_str(text).map_err(|error| format!("{column} {text:?} is not a decimal amount: {error}").into())
}

/// A product row (with its reservations as JSON) as the product it holds.
fn restore(id: ProductId, orders: &[OrderId], row: &SqliteRow) -> Result<Product, BoxError> {
    let reservations: Vec<(String, i64)> = serde_json::from_str(row.try_get("reservations")?)?;
    ProductRow {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price: decimal(row, "price")?,
        stock: row.try_get("stock")?,
        reserved: row.try_get("reserved")?,
        reservations: reservations
            .into_iter()
            .map(|(order, quantity)| Ok((Uuid::parse_str(&order)?, quantity)))
            .collect::<Result<_, BoxError>>()?,
        version: row.try_get("version")?,
    }
    .restore(id, orders)
}

#[async_trait]
impl ProductStore for SqliteProductStore {
    async fn next_id(&self) -> Result<ProductId, LoadError> {
        let id: i64 =
            sqlx::query_scalar("UPDATE sequences SET last = last + 1 WHERE name = 'product_ids' RETURNING last")
                .fetch_one(self.db.writer())
                .await
                .map_err(|error| load_error(error, "product id sequence"))?;
        ProductId::new(id).map_err(|error| LoadError::corrupt("product id sequence", error))
    }

    async fn load(&self, id: ProductId, orders: &[OrderId]) -> Result<Option<Product>, LoadError> {
        let what = || format!("product {id}");
        // One round trip: the product row with the orders' reservations aggregated as JSON.
        let asked: Vec<String> = orders.iter().map(|order| order.as_uuid().hyphenated().to_string()).collect();
        let row = sqlx::query(
            "SELECT p.name, p.description, p.price, p.stock, p.reserved, p.version, \
                    coalesce((SELECT json_group_array(json_array(r.order_id, r.quantity)) \
                              FROM reservations r WHERE r.product_id = p.id \
                                AND r.order_id IN (SELECT value FROM json_each(?))), '[]') AS reservations \
             FROM products p WHERE p.id = ?",
        )
        .bind(serde_json::to_string(&asked).expect("strings serialize"))
        .bind(id.get())
        .fetch_optional(self.db.reader())
        .await
        .map_err(|error| load_error(error, what()))?;
        row.map(|row| restore(id, orders, &row)).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(&self, product: &Product, changes: &[ProductEvent], effects: &Effects<'_>) -> Result<(), SaveError> {
        commit(&self.db, effects, async |tx| {
            write_product(tx, product).await?;
            write_reservations(tx, changes).await
        })
        .await
    }

    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        commit(&self.db, effects, async |_| Ok(())).await
    }

    async fn list(&self, after: Option<ProductId>, limit: u32) -> Result<Vec<ProductSummary>, LoadError> {
        let rows = sqlx::query(
            "SELECT id, name, description, price, stock, reserved FROM products WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after.map_or(0, ProductId::get))
        .bind(i64::from(limit))
        .fetch_all(self.db.reader())
        .await
        .map_err(|error| load_error(error, "product list"))?;
        rows.iter()
            .map(|row| -> Result<ProductSummary, BoxError> {
                summary(
                    row.try_get("id")?,
                    row.try_get("name")?,
                    row.try_get("description")?,
                    decimal(row, "price")?,
                    row.try_get("stock")?,
                    row.try_get("reserved")?,
                )
            })
            .collect::<Result<_, _>>()
            .map_err(|error| LoadError::corrupt("product list", error))
    }
}

async fn write_product(tx: &mut SqliteConnection, product: &Product) -> Result<(), SaveError> {
    let now = Timestamp::now();
    let written = if product.version() == 0 {
        sqlx::query(
            "INSERT INTO products (id, name, description, price, stock, reserved, version, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?)",
        )
        .bind(product.id().get())
        .bind(product.name().as_str())
        .bind(product.description())
        .bind(product.price().amount().to_string())
        .bind(i64::from(product.stock()))
        .bind(i64::from(product.reserved()))
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
    } else {
        sqlx::query(
            "UPDATE products SET price = ?, stock = ?, reserved = ?, updated_at = ?, version = version + 1 \
             WHERE id = ? AND version = ?",
        )
        .bind(product.price().amount().to_string())
        .bind(i64::from(product.stock()))
        .bind(i64::from(product.reserved()))
        .bind(now)
        .bind(product.id().get())
        .bind(product.version())
        .execute(&mut *tx)
        .await
    }
    .map_err(save_error)?;
    if written.rows_affected() == 0 { Err(SaveError::Conflict) } else { Ok(()) }
}

/// Writes the reservation rows the product's events added or removed.
async fn write_reservations(tx: &mut SqliteConnection, changes: &[ProductEvent]) -> Result<(), SaveError> {
    for change in reservation_changes(changes) {
        let query = match change {
            ReservationChange::Hold { product, order, quantity } => {
                sqlx::query("INSERT INTO reservations (product_id, order_id, quantity, created_at) VALUES (?, ?, ?, ?)")
                    .bind(product)
                    .bind(order.hyphenated())
                    .bind(quantity)
                    .bind(Timestamp::now())
            }
            ReservationChange::Drop { product, order } => {
                sqlx::query("DELETE FROM reservations WHERE product_id = ? AND order_id = ?")
                    .bind(product)
                    .bind(order.hyphenated())
            }
        };
        query.execute(&mut *tx).await.map_err(save_error)?;
    }
    Ok(())
}
