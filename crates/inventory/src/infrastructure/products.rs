use crate::application::{ProductStore, ProductSummary};
use crate::domain::{Money, OrderId, Product, ProductEvent, ProductId, ProductName, Quantity};
use async_trait::async_trait;
use messaging::postgres::{commit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Clone)]
pub struct PgProductStore {
    pool: PgPool,
}

impl PgProductStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn to_u32(value: i64, what: &str) -> Result<u32, BoxError> {
    u32::try_from(value).map_err(|_| format!("{what} out of range: {value}").into())
}

/// A product row (with its reservations as JSON) as the product it holds.
fn restore(id: ProductId, row: &PgRow) -> Result<Product, BoxError> {
    let held: Vec<(Uuid, i64)> = serde_json::from_value(row.try_get("reservations")?)?;
    let reservations = held
        .into_iter()
        .map(|(order, quantity)| Ok((OrderId::from_uuid(order), Quantity::new(quantity)?)))
        .collect::<Result<BTreeMap<_, _>, BoxError>>()?;
    let price: Decimal = row.try_get("price")?;
    Ok(Product::restore(
        id,
        ProductName::new(row.try_get::<String, _>("name")?)?,
        row.try_get("description")?,
        Money::new(price)?,
        to_u32(row.try_get("stock")?, "stock")?,
        reservations,
        row.try_get("version")?,
    ))
}

#[async_trait]
impl ProductStore for PgProductStore {
    async fn next_id(&self) -> Result<ProductId, LoadError> {
        let id: i64 = sqlx::query_scalar("SELECT nextval('product_ids')")
            .fetch_one(&self.pool)
            .await
            .map_err(|error| load_error(error, "product id sequence"))?;
        ProductId::new(id).map_err(|error| LoadError::corrupt("product id sequence", error))
    }

    async fn load(&self, id: ProductId) -> Result<Option<Product>, LoadError> {
        let what = || format!("product {id}");
        // One round trip: the product row with its reservations aggregated as JSON.
        let row = sqlx::query(
            "SELECT p.name, p.description, p.price, p.stock, p.version, \
                    coalesce((SELECT json_agg(json_build_array(r.order_id, r.quantity)) \
                              FROM reservations r WHERE r.product_id = p.id), '[]') AS reservations \
             FROM products p WHERE p.id = $1",
        )
        .bind(id.get())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| load_error(error, what()))?;
        row.map(|row| restore(id, &row)).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(&self, product: &Product, changes: &[ProductEvent], effects: &Effects<'_>) -> Result<(), SaveError> {
        commit(&self.pool, effects, async |tx| {
            write_product(tx, product).await?;
            write_reservations(tx, changes).await
        })
        .await
    }

    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        commit(&self.pool, effects, async |_| Ok(())).await
    }

    async fn list(&self, after: Option<ProductId>, limit: u32) -> Result<Vec<ProductSummary>, LoadError> {
        let rows = sqlx::query(
            "SELECT id, name, description, price, stock, reserved FROM products \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.map_or(0, ProductId::get))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| load_error(error, "product list"))?;
        rows.iter()
            .map(|row| -> Result<ProductSummary, BoxError> {
                let price: Decimal = row.try_get("price")?;
                Ok(ProductSummary {
                    id: ProductId::new(row.try_get("id")?)?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    price: Money::new(price)?,
                    stock: to_u32(row.try_get("stock")?, "stock")?,
                    reserved: to_u32(row.try_get("reserved")?, "reserved")?,
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|error| LoadError::corrupt("product list", error))
    }
}

async fn write_product(tx: &mut PgConnection, product: &Product) -> Result<(), SaveError> {
    let written = if product.version() == 0 {
        sqlx::query(
            "INSERT INTO products (id, name, description, price, stock, reserved, version) \
             VALUES ($1, $2, $3, $4, $5, $6, 1)",
        )
        .bind(product.id().get())
        .bind(product.name().as_str())
        .bind(product.description())
        .bind(product.price().amount())
        .bind(i64::from(product.stock()))
        .bind(i64::from(product.reserved()))
        .execute(&mut *tx)
        .await
    } else {
        sqlx::query(
            "UPDATE products SET price = $3, stock = $4, reserved = $5, updated_at = now(), version = version + 1 \
             WHERE id = $1 AND version = $2",
        )
        .bind(product.id().get())
        .bind(product.version())
        .bind(product.price().amount())
        .bind(i64::from(product.stock()))
        .bind(i64::from(product.reserved()))
        .execute(&mut *tx)
        .await
    }
    .map_err(save_error)?;
    if written.rows_affected() == 0 { Err(SaveError::Conflict) } else { Ok(()) }
}

/// Writes the reservation rows the product's events added or removed.
async fn write_reservations(tx: &mut PgConnection, changes: &[ProductEvent]) -> Result<(), SaveError> {
    for change in changes {
        let query = match change {
            ProductEvent::StockReserved { product_id, order_id, quantity } => {
                sqlx::query("INSERT INTO reservations (product_id, order_id, quantity) VALUES ($1, $2, $3)")
                    .bind(product_id.get())
                    .bind(order_id.as_uuid())
                    .bind(quantity.get() as i32)
            }
            ProductEvent::StockReleased { product_id, order_id, .. }
            | ProductEvent::StockDeducted { product_id, order_id, .. } => {
                sqlx::query("DELETE FROM reservations WHERE product_id = $1 AND order_id = $2")
                    .bind(product_id.get())
                    .bind(order_id.as_uuid())
            }
            ProductEvent::Created { .. } | ProductEvent::Restocked { .. } | ProductEvent::PriceChanged { .. } => {
                continue;
            }
        };
        query.execute(&mut *tx).await.map_err(save_error)?;
    }
    Ok(())
}
