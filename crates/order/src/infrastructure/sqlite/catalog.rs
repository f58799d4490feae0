use super::decimal;
use crate::application::Catalog;
use crate::domain::{CatalogItem, ProductId};
use crate::infrastructure::catalog::item;
use async_trait::async_trait;
use messaging::sqlite::{Database, Timestamp, commit, load_error, save_error};
use messaging::{BoxError, Effects, LoadError, SaveError};

#[derive(Clone)]
pub struct SqliteCatalog {
    db: Database,
}

impl SqliteCatalog {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

fn restore((product_id, name, price): (i64, String, String)) -> Result<CatalogItem, LoadError> {
    let price = decimal(&price)
        .map_err(|error: BoxError| LoadError::corrupt(format!("catalog product {product_id}"), error))?;
    item((product_id, name, price))
}

#[async_trait]
impl Catalog for SqliteCatalog {
    async fn find_many(&self, product_ids: &[ProductId]) -> Result<Vec<CatalogItem>, LoadError> {
        // The ids as one JSON array: one statement whatever their number.
        let ids = serde_json::to_string(&product_ids.iter().map(|id| id.get()).collect::<Vec<_>>())
            .expect("integers serialize");
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT product_id, name, price FROM catalog_products \
             WHERE product_id IN (SELECT value FROM json_each(?))",
        )
        .bind(ids)
        .fetch_all(self.db.reader())
        .await
        .map_err(|error| load_error(error, "catalog products"))?;
        rows.into_iter().map(restore).collect()
    }

    async fn list(&self) -> Result<Vec<CatalogItem>, LoadError> {
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT product_id, name, price FROM catalog_products ORDER BY product_id")
                .fetch_all(self.db.reader())
                .await
                .map_err(|error| load_error(error, "catalog"))?;
        rows.into_iter().map(restore).collect()
    }

    async fn upsert(&self, item: &CatalogItem, version: i64, effects: &Effects<'_>) -> Result<(), SaveError> {
        commit(&self.db, effects, async |tx| {
            sqlx::query(
                "INSERT INTO catalog_products (product_id, name, price, version, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (product_id) DO UPDATE \
                 SET name = excluded.name, price = excluded.price, version = excluded.version, \
                     updated_at = excluded.updated_at \
                 WHERE catalog_products.version < excluded.version",
            )
            .bind(item.product_id.get())
            .bind(&item.name)
            .bind(item.price.amount().to_string())
            .bind(version)
            .bind(Timestamp::now())
            .execute(tx)
            .await
            .map_err(save_error)?;
            Ok(())
        })
        .await
    }
}
