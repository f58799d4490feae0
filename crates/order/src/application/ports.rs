//! Ports: what the application needs from storage. PostgreSQL adapters live in
//! `infrastructure`; each save commits the aggregate with its messages and inbox record.

use crate::domain::{CatalogItem, CustomerId, Order, OrderId, OrderStatus, ProductId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kernel::Money;
use messaging::{Effects, LoadError, SaveError};

#[async_trait]
pub trait OrderStore: Send + Sync {
    /// The order, if it exists. A stored order that does not restore is [`LoadError::Corrupt`].
    async fn load(&self, id: OrderId) -> Result<Option<Order>, LoadError>;

    /// Saves the order if it is still at the version it was loaded at (a new order at version
    /// 0), with `effects`, atomically. `idempotency` ties a new order to the key it was created
    /// under (used at the order's creation time); a key whose last use has expired is taken
    /// over, one still in use is a [`SaveError::Conflict`].
    async fn save(
        &self,
        order: &Order,
        idempotency: Option<IdempotencyKeyUse<'_>>,
        effects: &Effects<'_>,
    ) -> Result<(), SaveError>;

    /// The order created under an idempotency key, with the fingerprint of its request, unless
    /// that use of the key expired (was before `expired_before`).
    async fn find_by_idempotency_key(
        &self,
        key: &str,
        expired_before: DateTime<Utc>,
    ) -> Result<Option<(OrderId, String)>, LoadError>;

    /// Deletes the idempotency keys used before `expired_before`; returns how many.
    async fn forget_idempotency_keys(&self, expired_before: DateTime<Utc>) -> Result<u64, SaveError>;

    async fn list(&self, filter: &OrderFilter) -> Result<OrderPage, LoadError>;
}

/// A new order's idempotency key, as the store records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyKeyUse<'a> {
    pub key: &'a str,
    /// What the request asked for: a repeat under the key must ask the same.
    pub fingerprint: &'a str,
    /// Uses of the key before this moment have expired: the key is free again.
    pub expired_before: DateTime<Utc>,
}

/// Which orders to list: newest first, `limit` at a time, continuing after an id.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFilter {
    pub customer_id: Option<CustomerId>,
    pub status: Option<OrderStatus>,
    pub after: Option<OrderId>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderSummary {
    pub id: OrderId,
    pub customer_id: CustomerId,
    pub status: OrderStatus,
    pub total: Money,
    pub line_count: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderPage {
    pub orders: Vec<OrderSummary>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<OrderId>,
}

/// The order service's copy of the inventory catalog.
#[async_trait]
pub trait Catalog: Send + Sync {
    /// The products among `product_ids` that the catalog holds, in any order; one read for all.
    async fn find_many(&self, product_ids: &[ProductId]) -> Result<Vec<CatalogItem>, LoadError>;

    async fn list(&self) -> Result<Vec<CatalogItem>, LoadError>;

    /// Records a product as of `version` of the inventory's product, unless a newer version is
    /// already known, with `effects` (the inbox record), atomically.
    async fn upsert(&self, item: &CatalogItem, version: i64, effects: &Effects<'_>) -> Result<(), SaveError>;
}
