use crate::application::{ProductStore, ProductSummary};
use crate::domain::{Money, OrderId, Product, ProductEvent, ProductId, ProductName, Quantity};
use async_trait::async_trait;
use messaging::postgres::{GroupCommit, StateWrites, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Clone)]
pub struct PgProductStore {
    db: GroupCommit,
}

impl PgProductStore {
    /// A store writing through `db` (a pool, or the group commit its database's other stores share).
    pub fn new(db: impl Into<GroupCommit>) -> Self {
        Self { db: db.into() }
    }
}

fn to_u32(value: i64, what: &str) -> Result<u32, BoxError> {
    u32::try_from(value).map_err(|_| format!("{what} out of range: {value}").into())
}

/// A product row with the reservations of the orders in hand, as read from either database,
/// before it is restored.
pub(super) struct ProductRow {
    pub name: String,
    pub description: String,
    pub price: Decimal,
    pub stock: i64,
    /// Units held for orders, all reservations counted.
    pub reserved: i64,
    /// (order, units) of each reservation read.
    pub reservations: Vec<(Uuid, i64)>,
    pub version: i64,
}

impl ProductRow {
    /// The product `id` it holds, read for `orders`; any part that does not restore makes it
    /// corrupt.
    pub fn restore(self, id: ProductId, orders: &[OrderId]) -> Result<Product, BoxError> {
        let reservations = self
            .reservations
            .into_iter()
            .map(|(order, quantity)| Ok((OrderId::from_uuid(order), Quantity::new(quantity)?)))
            .collect::<Result<BTreeMap<_, _>, BoxError>>()?;
        let (stock, reserved) = (to_u32(self.stock, "stock")?, to_u32(self.reserved, "reserved")?);
        let read: u64 = reservations.values().map(|quantity| u64::from(quantity.get())).sum();
        if reserved > stock || read > u64::from(reserved) {
            return Err(format!("{reserved} units reserved of {stock} in stock, {read} read in reservations").into());
        }
        let (name, price) = (ProductName::new(self.name)?, Money::new(self.price)?);
        let in_hand = orders.iter().copied().collect();
        Ok(Product::restore(id, name, self.description, price, stock, reserved, reservations, in_hand, self.version))
    }
}

/// A listed product from the values of its row (either database).
pub(super) fn summary(
    id: i64,
    name: String,
    description: String,
    price: Decimal,
    stock: i64,
    reserved: i64,
) -> Result<ProductSummary, BoxError> {
    Ok(ProductSummary {
        id: ProductId::new(id)?,
        name,
        description,
        price: Money::new(price)?,
        stock: to_u32(stock, "stock")?,
        reserved: to_u32(reserved, "reserved")?,
    })
}

/// How a product's events change its reservation rows (either database).
pub(super) enum ReservationChange {
    /// A new reservation of `quantity` units.
    Hold { product: i64, order: Uuid, quantity: i64 },
    /// The reservation is gone (released or deducted).
    Drop { product: i64, order: Uuid },
}

impl ReservationChange {
    fn key(&self) -> (i64, Uuid) {
        match self {
            Self::Hold { product, order, .. } | Self::Drop { product, order } => (*product, *order),
        }
    }
}

pub(super) fn reservation_changes(events: &[ProductEvent]) -> Vec<ReservationChange> {
    events
        .iter()
        .filter_map(|event| match event {
            ProductEvent::StockReserved { product_id, order_id, quantity } => Some(ReservationChange::Hold {
                product: product_id.get(),
                order: order_id.as_uuid(),
                quantity: i64::from(quantity.get()),
            }),
            ProductEvent::StockReleased { product_id, order_id, .. }
            | ProductEvent::StockDeducted { product_id, order_id, .. } => {
                Some(ReservationChange::Drop { product: product_id.get(), order: order_id.as_uuid() })
            }
            ProductEvent::Created { .. } | ProductEvent::Restocked { .. } | ProductEvent::PriceChanged { .. } => None,
        })
        .collect()
}

/// A product row of PostgreSQL (with the orders' reservations as JSON) as the product it holds.
fn restore(id: ProductId, orders: &[OrderId], row: &PgRow) -> Result<Product, BoxError> {
    ProductRow {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price: row.try_get("price")?,
        stock: row.try_get("stock")?,
        reserved: row.try_get("reserved")?,
        reservations: serde_json::from_value(row.try_get("reservations")?)?,
        version: row.try_get("version")?,
    }
    .restore(id, orders)
}

#[async_trait]
impl ProductStore for PgProductStore {
    async fn next_id(&self) -> Result<ProductId, LoadError> {
        let id: i64 = sqlx::query_scalar("SELECT nextval('product_ids')")
            .fetch_one(self.db.pool())
            .await
            .map_err(|error| load_error(error, "product id sequence"))?;
        ProductId::new(id).map_err(|error| LoadError::corrupt("product id sequence", error))
    }

    async fn load(&self, id: ProductId, orders: &[OrderId]) -> Result<Option<Product>, LoadError> {
        let what = || format!("product {id}");
        // One round trip: the product row with the orders' reservations aggregated as JSON.
        let asked: Vec<Uuid> = orders.iter().map(OrderId::as_uuid).collect();
        let row = sqlx::query(
            "SELECT p.name, p.description, p.price, p.stock, p.reserved, p.version, \
                    coalesce((SELECT json_agg(json_build_array(r.order_id, r.quantity)) \
                              FROM reservations r WHERE r.product_id = p.id AND r.order_id = ANY($2)), '[]') \
                      AS reservations \
             FROM products p WHERE p.id = $1",
        )
        .bind(id.get())
        .bind(asked)
        .fetch_optional(self.db.pool())
        .await
        .map_err(|error| load_error(error, what()))?;
        row.map(|row| restore(id, orders, &row)).transpose().map_err(|error| LoadError::corrupt(what(), error))
    }

    async fn save(&self, product: &Product, changes: &[ProductEvent], effects: &Effects<'_>) -> Result<(), SaveError> {
        let reservations = reservation_changes(changes);
        if changes_a_reservation_twice(&reservations) {
            // The parts of one statement do not see each other's rows: one after the other.
            return self
                .db
                .commit(effects, async |tx| {
                    write_product(tx, product).await?;
                    write_reservations(tx, &reservations).await
                })
                .await;
        }
        let mut writes = StateWrites::default();
        product_writes(&mut writes, product);
        // Every change is to the product's own reservations, named by its id and the orders: the
        // primary key. (A plan that joined the changes to the table would scan it, since a plan
        // is made once per connection, while the table may be empty.)
        let (mut held, mut quantities, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
        for change in reservations {
            match change {
                ReservationChange::Hold { order, quantity, .. } => {
                    held.push(order);
                    quantities.push(quantity as i32);
                }
                ReservationChange::Drop { order, .. } => dropped.push(order),
            }
        }
        if !held.is_empty() {
            writes
                .write(
                    "INSERT INTO reservations (product_id, order_id, quantity) \
                     SELECT $1, * FROM unnest($2::uuid[], $3::int[])",
                )
                .bind(product.id().get())
                .bind(held)
                .bind(quantities);
        }
        if !dropped.is_empty() {
            writes
                .write("DELETE FROM reservations WHERE product_id = $1 AND order_id = ANY($2::uuid[])")
                .bind(product.id().get())
                .bind(dropped);
        }
        self.db.commit_writes(effects, &writes).await
    }

    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        self.db.commit(effects, async |_| Ok(())).await
    }

    async fn list(&self, after: Option<ProductId>, limit: u32) -> Result<Vec<ProductSummary>, LoadError> {
        let rows = sqlx::query(
            "SELECT id, name, description, price, stock, reserved FROM products \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after.map_or(0, ProductId::get))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await
        .map_err(|error| load_error(error, "product list"))?;
        rows.iter()
            .map(|row| -> Result<ProductSummary, BoxError> {
                summary(
                    row.try_get("id")?,
                    row.try_get("name")?,
                    row.try_get("description")?,
                    row.try_get("price")?,
                    row.try_get("stock")?,
                    row.try_get("reserved")?,
                )
            })
            .collect::<Result<_, _>>()
            .map_err(|error| LoadError::corrupt("product list", error))
    }
}

/// The product's row: inserted at version 1, or updated at the version it was loaded at.
fn product_writes(writes: &mut StateWrites, product: &Product) {
    if product.version() == 0 {
        writes
            .must_write(
                "INSERT INTO products (id, name, description, price, stock, reserved, version) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1) RETURNING 1",
            )
            .bind(product.id().get())
            .bind(product.name().as_str())
            .bind(product.description())
            .bind(product.price().amount())
            .bind(i64::from(product.stock()))
            .bind(i64::from(product.reserved()));
    } else {
        writes
            .must_write(
                "UPDATE products SET price = $3, stock = $4, reserved = $5, updated_at = now(), version = version + 1 \
                 WHERE id = $1 AND version = $2 RETURNING 1",
            )
            .bind(product.id().get())
            .bind(product.version())
            .bind(product.price().amount())
            .bind(i64::from(product.stock()))
            .bind(i64::from(product.reserved()));
    }
}

/// Whether two of `changes` concern one reservation (a hold released in the same unit of work).
fn changes_a_reservation_twice(changes: &[ReservationChange]) -> bool {
    let mut seen = std::collections::HashSet::new();
    !changes.iter().all(|change| seen.insert(change.key()))
}

async fn write_product(tx: &mut PgConnection, product: &Product) -> Result<(), SaveError> {
    let mut writes = StateWrites::default();
    product_writes(&mut writes, product);
    writes.execute(tx).await
}

/// Writes the reservation rows the product's events added or removed.
async fn write_reservations(tx: &mut PgConnection, changes: &[ReservationChange]) -> Result<(), SaveError> {
    for change in changes {
        let query = match change {
            ReservationChange::Hold { product, order, quantity } => {
                sqlx::query("INSERT INTO reservations (product_id, order_id, quantity) VALUES ($1, $2, $3)")
                    .bind(*product)
                    .bind(*order)
                    .bind(*quantity as i32)
            }
            ReservationChange::Drop { product, order } => {
                sqlx::query("DELETE FROM reservations WHERE product_id = $1 AND order_id = $2")
                    .bind(*product)
                    .bind(*order)
            }
        };
        query.execute(&mut *tx).await.map_err(save_error)?;
    }
    Ok(())
}
