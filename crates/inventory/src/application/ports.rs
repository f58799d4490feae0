//! Ports: what the application needs from storage. Each save commits the aggregate (or saga)
//! with its outgoing messages and the inbox record, atomically.

use super::saga::ReservationSaga;
use crate::domain::{Money, OrderId, Product, ProductEvent, ProductId};
use async_trait::async_trait;
use messaging::{Effects, LoadError, SaveError};

#[async_trait]
pub trait ProductStore: Send + Sync {
    /// A fresh product id.
    async fn next_id(&self) -> Result<ProductId, LoadError>;

    /// The product, if it exists, with the reservations of `orders` (a popular product holds
    /// many; a command concerns a few). A stored product that does not restore is
    /// [`LoadError::Corrupt`].
    async fn load(&self, id: ProductId, orders: &[OrderId]) -> Result<Option<Product>, LoadError>;

    /// Saves the product if it is still at the version it was loaded at (0 for a new one).
    /// `changes` are the events it raised since: they say which reservations to write.
    async fn save(&self, product: &Product, changes: &[ProductEvent], effects: &Effects<'_>) -> Result<(), SaveError>;

    /// Commits effects that change no product (a refusal sent back, say).
    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError>;

    /// Products by id, `limit` at a time, continuing after an id.
    async fn list(&self, after: Option<ProductId>, limit: u32) -> Result<Vec<ProductSummary>, LoadError>;
}

/// A product as listed: its stock figures without the individual reservations.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSummary {
    pub id: ProductId,
    pub name: String,
    pub description: String,
    pub price: Money,
    pub stock: u32,
    pub reserved: u32,
}

#[async_trait]
pub trait SagaStore: Send + Sync {
    /// The saga of an order, if inventory heard of the order. A stored saga that does not
    /// restore is [`LoadError::Corrupt`].
    async fn load(&self, order_id: OrderId) -> Result<Option<ReservationSaga>, LoadError>;

    /// Saves the saga if it is still at the version it was loaded at (0 for a new one).
    async fn save(&self, saga: &ReservationSaga, effects: &Effects<'_>) -> Result<(), SaveError>;
}
