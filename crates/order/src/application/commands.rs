//! Commands on orders, as the HTTP API issues them. Each loads one order, applies one domain
//! method and saves the order with the messages it produced in one transaction, retrying from a
//! fresh load when another writer got there first.

use super::error::AppError;
use super::messages::integration_message;
use super::ports::{Catalog, OrderFilter, OrderPage, OrderStore};
use crate::domain::{CatalogItem, CustomerId, Order, OrderError, OrderId, OrderStatus, ProductId, Quantity, Reason};
use messaging::{Causation, Effects, SaveError, TraceParent, retry_on_conflict};
use std::sync::Arc;

/// Who asks: a customer acts on its own orders only (anyone else's do not exist for it); an
/// admin acts on every order, and alone ships them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Customer(CustomerId),
    Admin,
}

impl Actor {
    fn may_see(self, order: &Order) -> bool {
        match self {
            Actor::Customer(customer) => order.customer_id() == customer,
            Actor::Admin => true,
        }
    }
}

/// What a client asks for when it creates an order. A customer's order is its own (naming
/// another customer is refused); an admin names the customer.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub customer_id: Option<CustomerId>,
    pub description: Option<String>,
}

impl NewOrder {
    fn customer(&self, actor: Actor) -> Result<CustomerId, AppError> {
        match (actor, self.customer_id) {
            (Actor::Customer(own), None) => Ok(own),
            (Actor::Customer(own), Some(named)) if named == own => Ok(own),
            (Actor::Customer(_), Some(_)) => Err(AppError::Forbidden("a customer creates orders for itself only")),
            (Actor::Admin, Some(named)) => Ok(named),
            (Actor::Admin, None) => Err(AppError::CustomerRequired),
        }
    }
}

/// Two requests under one idempotency key must agree on this.
fn fingerprint(customer: CustomerId, description: Option<&str>) -> String {
    format!("{customer}|{}", description.unwrap_or_default())
}

/// A client-chosen key that makes order creation safe to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an Idempotency-Key is 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    pub fn new(key: &str) -> Result<Self, InvalidIdempotencyKey> {
        let valid = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
        if valid { Ok(Self(key.to_owned())) } else { Err(InvalidIdempotencyKey) }
    }
}

pub struct OrderService {
    orders: Arc<dyn OrderStore>,
    catalog: Arc<dyn Catalog>,
}

impl OrderService {
    pub fn new(orders: Arc<dyn OrderStore>, catalog: Arc<dyn Catalog>) -> Self {
        Self { orders, catalog }
    }

    /// Creates a draft order. Under an idempotency key already used for the same request, it
    /// returns the order created then (and `false`) instead of creating another.
    pub async fn create(
        &self,
        actor: Actor,
        new: NewOrder,
        key: Option<IdempotencyKey>,
        trace: TraceParent,
    ) -> Result<(Order, bool), AppError> {
        let customer = new.customer(actor)?;
        let fingerprint = fingerprint(customer, new.description.as_deref());
        retry_on_conflict(|| async {
            if let Some(IdempotencyKey(key)) = &key
                && let Some((id, used_for)) = self.orders.find_by_idempotency_key(key).await?
            {
                if used_for != fingerprint {
                    return Err(AppError::IdempotencyKeyReused);
                }
                return Ok((self.get(actor, id).await?, false));
            }
            let mut order = Order::create(OrderId::generate(), customer, new.description.clone(), kernel::now())?;
            let idempotency = key.as_ref().map(|IdempotencyKey(key)| (key.as_str(), fingerprint.as_str()));
            let causation = Causation::root(order.id().to_string(), trace);
            save(&*self.orders, &mut order, None, idempotency, &causation, &mut Effects::new()).await?;
            Ok((order, true))
        })
        .await
    }

    /// Adds a product from the catalog, at the catalog's price.
    pub async fn add_item(
        &self,
        actor: Actor,
        id: OrderId,
        product_id: ProductId,
        quantity: Quantity,
        trace: TraceParent,
    ) -> Result<Order, AppError> {
        let item = self.catalog.find(product_id).await?.ok_or(AppError::UnknownProduct(product_id))?;
        self.update(actor, id, trace, |order| order.add_line(&item, quantity)).await
    }

    pub async fn remove_item(
        &self,
        actor: Actor,
        id: OrderId,
        product_id: ProductId,
        trace: TraceParent,
    ) -> Result<Order, AppError> {
        self.update(actor, id, trace, |order| order.remove_line(product_id)).await
    }

    pub async fn place(&self, actor: Actor, id: OrderId, trace: TraceParent) -> Result<Order, AppError> {
        self.update(actor, id, trace, |order| order.place(kernel::now())).await
    }

    pub async fn cancel(
        &self,
        actor: Actor,
        id: OrderId,
        reason: Reason,
        trace: TraceParent,
    ) -> Result<Order, AppError> {
        self.update(actor, id, trace, |order| order.cancel(reason.clone())).await
    }

    /// Only an admin ships (the warehouse, not the customer, says the parcel left).
    pub async fn ship(&self, actor: Actor, id: OrderId, trace: TraceParent) -> Result<Order, AppError> {
        if actor != Actor::Admin {
            return Err(AppError::Forbidden("only an admin ships orders"));
        }
        self.update(actor, id, trace, Order::ship).await
    }

    /// The order, if `actor` may see it: another customer's order does not exist for a customer.
    pub async fn get(&self, actor: Actor, id: OrderId) -> Result<Order, AppError> {
        match self.orders.load(id).await? {
            Some(order) if actor.may_see(&order) => Ok(order),
            Some(_) | None => Err(AppError::OrderNotFound(id)),
        }
    }

    /// A customer lists its own orders only (naming another customer is refused); an admin
    /// lists anyone's.
    pub async fn list(&self, actor: Actor, filter: OrderFilter) -> Result<OrderPage, AppError> {
        let filter = match (actor, filter.customer_id) {
            (Actor::Customer(own), None) => OrderFilter { customer_id: Some(own), ..filter },
            (Actor::Customer(own), Some(named)) if named != own => {
                return Err(AppError::Forbidden("a customer lists its own orders only"));
            }
            (Actor::Customer(_) | Actor::Admin, _) => filter,
        };
        Ok(self.orders.list(&filter).await?)
    }

    /// The products orders can be made of.
    pub async fn catalog(&self) -> Result<Vec<CatalogItem>, AppError> {
        Ok(self.catalog.list().await?)
    }

    async fn update(
        &self,
        actor: Actor,
        id: OrderId,
        trace: TraceParent,
        command: impl Fn(&mut Order) -> Result<(), OrderError>,
    ) -> Result<Order, AppError> {
        retry_on_conflict(|| async {
            let mut order = self.get(actor, id).await?;
            let before = order.status();
            command(&mut order)?;
            let causation = Causation::root(id.to_string(), trace);
            save(&*self.orders, &mut order, Some(before), None, &causation, &mut Effects::new()).await?;
            Ok(order)
        })
        .await
    }
}

/// Saves an order with the integration messages of its new events added to `effects`, and logs
/// the transition from `before` if its status changed.
pub(super) async fn save(
    orders: &dyn OrderStore,
    order: &mut Order,
    before: Option<OrderStatus>,
    idempotency: Option<(&str, &str)>,
    causation: &Causation,
    effects: &mut Effects<'_>,
) -> Result<(), SaveError> {
    for event in order.take_events() {
        if let Some(message) = integration_message(&event, causation) {
            effects.send(message);
        }
    }
    orders.save(order, idempotency, effects).await?;
    order.record_saved();
    let after = order.status();
    if before != Some(after) {
        let from = before.map_or("new", OrderStatus::as_str);
        tracing::info!(order_id = %order.id(), from, to = after.as_str(), "order {}", after);
        metrics::counter!("order_transitions_total", "to" => after.as_str()).increment(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::new("order-2026-11-25-0001").is_ok());
        assert!(IdempotencyKey::new("").is_err());
        assert!(IdempotencyKey::new("has space").is_err());
        assert!(IdempotencyKey::new(&"k".repeat(256)).is_err());
    }
}
