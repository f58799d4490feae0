//! Product commands and queries, as the HTTP API issues them.

use super::error::AppError;
use super::ports::{ProductStore, ProductSummary, SagaStore};
use super::saga::ReservationSaga;
use crate::domain::{Money, OrderId, Product, ProductDescription, ProductEvent, ProductId, ProductName, Quantity};
use contracts::product::{ProductCreated, ProductPriceChanged};
use messaging::{Causation, Effects, Envelope, TraceParent, retry_on_conflict};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct NewProduct {
    pub name: ProductName,
    pub description: Option<ProductDescription>,
    pub price: Money,
    pub stock: u32,
}

pub struct ProductService {
    products: Arc<dyn ProductStore>,
    sagas: Arc<dyn SagaStore>,
}

impl ProductService {
    pub fn new(products: Arc<dyn ProductStore>, sagas: Arc<dyn SagaStore>) -> Self {
        Self { products, sagas }
    }

    pub async fn create(&self, new: NewProduct, trace: TraceParent) -> Result<Product, AppError> {
        let id = self.products.next_id().await?;
        let mut product = Product::create(id, new.name, new.description, new.price, new.stock)?;
        save(&*self.products, &mut product, trace).await?;
        tracing::info!(product_id = %id, stock = product.stock(), "product created");
        Ok(product)
    }

    pub async fn restock(&self, id: ProductId, quantity: Quantity, trace: TraceParent) -> Result<Product, AppError> {
        self.update(id, trace, |product| product.restock(quantity)).await
    }

    pub async fn change_price(&self, id: ProductId, price: Money, trace: TraceParent) -> Result<Product, AppError> {
        self.update(id, trace, |product| product.change_price(price)).await
    }

    pub async fn get(&self, id: ProductId) -> Result<Product, AppError> {
        // No command of this service touches a reservation: none is read.
        self.products.load(id, &[]).await?.ok_or(AppError::ProductNotFound(id))
    }

    pub async fn list(&self, after: Option<ProductId>, limit: u32) -> Result<Vec<ProductSummary>, AppError> {
        Ok(self.products.list(after, limit).await?)
    }

    /// The saga's record of an order's stock reservation.
    pub async fn reservation(&self, order_id: OrderId) -> Result<ReservationSaga, AppError> {
        self.sagas.load(order_id).await?.ok_or(AppError::ReservationNotFound(order_id))
    }

    async fn update(
        &self,
        id: ProductId,
        trace: TraceParent,
        command: impl Fn(&mut Product) -> Result<(), crate::domain::ProductError>,
    ) -> Result<Product, AppError> {
        retry_on_conflict(|| async {
            let mut product = self.get(id).await?;
            command(&mut product)?;
            save(&*self.products, &mut product, trace).await?;
            Ok(product)
        })
        .await
    }
}

async fn save(products: &dyn ProductStore, product: &mut Product, trace: TraceParent) -> Result<(), AppError> {
    let changes = product.take_events();
    if changes.is_empty() {
        return Ok(());
    }
    let causation = Causation::root(format!("product-{}", product.id()), trace);
    let mut effects = Effects::new();
    for event in &changes {
        if let Some(message) = integration_message(event, product.version() + 1, &causation) {
            effects.send(message);
        }
    }
    products.save(product, &changes, &effects).await?;
    product.record_saved();
    Ok(())
}

/// The catalog news other services hear about; stock movements stay inside inventory.
pub(super) fn integration_message(event: &ProductEvent, version: i64, causation: &Causation) -> Option<Envelope> {
    match event {
        ProductEvent::Created { product_id, name, price, stock } => Some(causation.envelope(&ProductCreated {
            product_id: product_id.get(),
            name: name.to_string(),
            price: price.amount(),
            stock: *stock,
            version,
        })),
        ProductEvent::PriceChanged { product_id, name, price } => Some(causation.envelope(&ProductPriceChanged {
            product_id: product_id.get(),
            name: name.to_string(),
            price: price.amount(),
            version,
        })),
        ProductEvent::Restocked { .. }
        | ProductEvent::StockReserved { .. }
        | ProductEvent::StockReleased { .. }
        | ProductEvent::StockDeducted { .. } => None,
    }
}
