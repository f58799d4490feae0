use crate::application::Catalog;
use crate::domain::{CatalogItem, ProductId};
use async_trait::async_trait;
use kernel::Money;
use messaging::postgres::{GroupCommit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};
use rust_decimal::Decimal;

#[derive(Clone)]
pub struct PgCatalog {
    db: GroupCommit,
}

impl PgCatalog {
    /// A store writing through `db` (a pool, or the group commit its database's other stores share).
    pub fn new(db: impl Into<GroupCommit>) -> Self {
        Self { db: db.into() }
    }
}

pub(super) fn item((product_id, name, price): (i64, String, Decimal)) -> Result<CatalogItem, LoadError> {
    let restore = || -> Result<CatalogItem, BoxError> {
        Ok(CatalogItem { product_id: ProductId::new(product_id)?, name, price: Money::new(price)? })
    };
    restore().map_err(|error| LoadError::corrupt(format!("catalog product {product_id}"), error))
}

#[async_trait]
impl Catalog for PgCatalog {
    async fn find_many(&self, product_ids: &[ProductId]) -> Result<Vec<CatalogItem>, LoadError> {
        let ids: Vec<i64> = product_ids.iter().map(|id| id.get()).collect();
        let rows: Vec<(i64, String, Decimal)> =
            sqlx::query_as("SELECT product_id, name, price FROM catalog_products WHERE product_id = ANY($1)")
                .bind(ids)
                .fetch_all(self.db.pool())
                .await
                .map_err(|error| load_error(error, "catalog products"))?;
        rows.into_iter().map(item).collect()
    }

    async fn list(&self) -> Result<Vec<CatalogItem>, LoadError> {
        let rows: Vec<(i64, String, Decimal)> =
            sqlx::query_as("SELECT product_id, name, price FROM catalog_products ORDER BY product_id")
                .fetch_all(self.db.pool())
                .await
                .map_err(|error| load_error(error, "catalog"))?;
        rows.into_iter().map(item).collect()
    }

    async fn upsert(&self, item: &CatalogItem, version: i64, effects: &Effects<'_>) -> Result<(), SaveError> {
        self.db
            .commit(effects, async |tx| {
                sqlx::query(
                    "INSERT INTO catalog_products (product_id, name, price, version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (product_id) DO UPDATE \
                     SET name = excluded.name, price = excluded.price, version = excluded.version, updated_at = now() \
                     WHERE catalog_products.version < excluded.version",
                )
                .bind(item.product_id.get())
                .bind(&item.name)
                .bind(item.price.amount())
                .bind(version)
                .execute(tx)
                .await
                .map_err(save_error)?;
                Ok(())
            })
            .await
    }
}
