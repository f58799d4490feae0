//! Commands on orders, as the HTTP API issues them. Each loads one order, applies one domain
//! method and saves the order with the messages it produced in one transaction, retrying from a
//! fresh load when another writer got there first.

use super::changes::OrderChanges;
use super::error::AppError;
use super::messages::integration_message;
use super::ports::IdempotencyKeyUse;
use super::ports::{Catalog, OrderFilter, OrderPage, OrderStore};
use crate::domain::{
    CatalogItem, CustomerId, Order, OrderDescription, OrderError, OrderId, OrderStatus, ProductId, Quantity, Reason,
};
use kernel::{Chars, Text, TextKind};
use messaging::{Causation, Effects, Envelope, SaveError, TraceParent, Worked, retry_on_conflict};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
/// another customer is refused); an admin names the customer. The order may come with its lines
/// and be placed at once: one request and one commit instead of one per step.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    pub customer_id: Option<CustomerId>,
    pub description: Option<OrderDescription>,
    /// Products at the catalog's price, in this order; a product named twice gets one line with
    /// the quantities added, as when it is added twice.
    pub lines: Vec<(ProductId, Quantity)>,
    /// Place the order once its lines are on it.
    pub place: bool,
}

impl NewOrder {
    /// An empty draft.
    pub fn draft(customer_id: Option<CustomerId>, description: Option<OrderDescription>) -> Self {
        Self { customer_id, description, lines: Vec::new(), place: false }
    }

    fn customer(&self, actor: Actor) -> Result<CustomerId, AppError> {
        match (actor, self.customer_id) {
            (Actor::Customer(own), None) => Ok(own),
            (Actor::Customer(own), Some(named)) if named == own => Ok(own),
            (Actor::Customer(_), Some(_)) => Err(AppError::Forbidden("a customer creates orders for itself only")),
            (Actor::Admin, Some(named)) => Ok(named),
            (Actor::Admin, None) => Err(AppError::CustomerRequired),
        }
    }

    /// Two requests under one idempotency key must agree on this. An empty draft keeps the form
    /// keys have always been recorded in, so that a retry across an upgrade still matches; the
    /// rest is JSON, which cannot be mistaken for it (it starts with `{`, not a UUID).
    fn fingerprint(&self, customer: CustomerId) -> String {
        let description = self.description.as_ref().map(OrderDescription::as_str).unwrap_or_default();
        if self.lines.is_empty() && !self.place {
            return format!("{customer}|{description}");
        }
        let lines: Vec<(i64, u32)> =
            self.lines.iter().map(|(product, quantity)| (product.get(), quantity.get())).collect();
        serde_json::json!({ "customer": customer.to_string(), "description": description, "lines": lines, "place": self.place })
            .to_string()
    }
}

/// How inventory's reservation of an order's stock ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StockOutcome {
    Reserved,
    Failed(Reason),
}

/// A client-chosen key that makes order creation safe to retry: 1 to 255 visible ASCII
/// characters.
pub type IdempotencyKey = Text<IdempotencyKeyText>;

pub struct IdempotencyKeyText;

impl TextKind for IdempotencyKeyText {
    const WHAT: &'static str = "an Idempotency-Key";
    const SCHEMA_NAME: &'static str = "IdempotencyKey";
    const MAX_CHARS: usize = 255;
    const CHARS: Chars = Chars::VisibleAscii;
}

pub struct OrderService {
    /// Saves through it end the waits for the order saved.
    orders: Arc<dyn OrderStore>,
    catalog: Arc<dyn Catalog>,
    changes: Arc<OrderChanges>,
    idempotency_key_ttl: Duration,
}

impl OrderService {
    /// How long an idempotency key holds unless [`OrderService::with_idempotency_key_ttl`] says
    /// otherwise.
    pub const DEFAULT_IDEMPOTENCY_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

    pub fn new(orders: Arc<dyn OrderStore>, catalog: Arc<dyn Catalog>) -> Self {
        Self::following_changes(orders, catalog, OrderChanges::new())
    }

    /// With the waits for orders to change kept by `changes`.
    pub fn following_changes(orders: Arc<dyn OrderStore>, catalog: Arc<dyn Catalog>, changes: OrderChanges) -> Self {
        let changes = Arc::new(changes);
        let orders = changes.announcing(orders);
        Self { orders, catalog, changes, idempotency_key_ttl: Self::DEFAULT_IDEMPOTENCY_KEY_TTL }
    }

    /// Ends the waits for changes and starts no more: the service is stopping.
    pub fn stop_waiting(&self) {
        self.changes.close();
    }

    /// How long a key holds: a request under a key used longer ago creates a new order.
    pub fn with_idempotency_key_ttl(mut self, ttl: Duration) -> Self {
        self.idempotency_key_ttl = ttl;
        self
    }

    /// The moment before which a use of an idempotency key has expired.
    fn idempotency_keys_expired_before(&self) -> chrono::DateTime<chrono::Utc> {
        let ttl = chrono::Duration::from_std(self.idempotency_key_ttl).unwrap_or(chrono::Duration::MAX);
        kernel::now().checked_sub_signed(ttl).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
    }

    /// Creates an order: a draft, with the lines asked for, placed if asked. Under an idempotency
    /// key used for the same request within its time to live, it returns the order created then
    /// (and `false`) instead of creating another.
    pub async fn create(
        &self,
        actor: Actor,
        new: NewOrder,
        key: Option<IdempotencyKey>,
        trace: TraceParent,
    ) -> Result<(Order, bool), AppError> {
        let customer = new.customer(actor)?;
        let fingerprint = new.fingerprint(customer);
        // A key is nearly always new: the first attempt claims it with the order, without
        // looking it up first, and only one that finds it in use looks for its order.
        let first_attempt = AtomicBool::new(true);
        retry_on_conflict(|| async {
            let expired_before = self.idempotency_keys_expired_before();
            if let Some(key) = &key
                && !first_attempt.swap(false, Ordering::Relaxed)
                && let Some((id, used_for)) = self.orders.find_by_idempotency_key(key.as_str(), expired_before).await?
            {
                if used_for != fingerprint {
                    return Err(AppError::IdempotencyKeyReused);
                }
                return Ok((self.get(actor, id).await?, false));
            }
            let mut order = Order::create(OrderId::generate(), customer, new.description.clone(), kernel::now());
            for (item, quantity) in self.priced(&new.lines).await? {
                order.add_line(&item, quantity)?;
            }
            if new.place {
                order.place(kernel::now())?;
            }
            let idempotency = key.as_ref().map(|key| IdempotencyKeyUse {
                key: key.as_str(),
                fingerprint: &fingerprint,
                expired_before,
            });
            let causation = Causation::root(order.id().to_string(), trace);
            save(&*self.orders, &mut order, None, idempotency, &causation, &mut Effects::new()).await?;
            Ok((order, true))
        })
        .await
    }

    /// Deletes the idempotency keys that have expired; returns how many.
    pub async fn forget_expired_idempotency_keys(&self) -> Result<u64, AppError> {
        Ok(self.orders.forget_idempotency_keys(self.idempotency_keys_expired_before()).await?)
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
        let [(item, quantity)] =
            self.priced(&[(product_id, quantity)]).await?.try_into().expect("one line in, one out");
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

    /// Confirms or rejects the placed order `id` as inventory's reservation ended, recording
    /// `report` in `consumer`'s inbox; an order no longer placed (cancelled while inventory was
    /// reserving, and inventory releases what it held) is left as it is.
    pub async fn settle_reservation(
        &self,
        id: OrderId,
        outcome: &StockOutcome,
        consumer: &'static str,
        report: &Envelope,
    ) -> Result<(), AppError> {
        let causation = Causation::from_message(report);
        let settle = |order: Option<Order>| async {
            let mut order = order.ok_or(AppError::OrderNotFound(id))?;
            let before = order.status();
            if before != OrderStatus::Placed {
                return Ok(Worked::Unchanged);
            }
            match outcome {
                StockOutcome::Reserved => order.confirm(kernel::now())?,
                StockOutcome::Failed(reason) => order.reject(reason.clone(), kernel::now())?,
            }
            let mut effects = Effects::consuming(consumer, report.message_id);
            let saved = save(&*self.orders, &mut order, Some(before), None, &causation, &mut effects).await;
            messaging::applied(&effects, saved)?;
            Ok::<_, AppError>(Worked::Committed)
        };
        // Most often the order was placed here a moment ago: it starts from memory.
        let load = || async { Ok(self.orders.load(id).await?) };
        let worked = retry_on_conflict(|| self.changes.recent().work_on(&id, load, settle)).await?;
        if worked == Worked::Unchanged {
            tracing::info!(order_id = %id, outcome = %report.message_type, "reservation outcome for an order no longer placed; ignored");
        }
        Ok(())
    }

    /// The order, if `actor` may see it: another customer's order does not exist for a customer.
    pub async fn get(&self, actor: Actor, id: OrderId) -> Result<Order, AppError> {
        match self.orders.load(id).await? {
            Some(order) if actor.may_see(&order) => Ok(order),
            Some(_) | None => Err(AppError::OrderNotFound(id)),
        }
    }

    /// The order once `held` no longer holds for it (the client's copy is out of date), or after
    /// `wait` as it is then, with whether it could wait (not while the service stops, nor past
    /// [`OrderChanges::with`]'s limit). A save by this process ends the wait at once; one by
    /// another instance is seen within [`OrderChanges::look_again`].
    pub async fn get_when_changed(
        &self,
        actor: Actor,
        id: OrderId,
        wait: Duration,
        held: impl Fn(&Order) -> bool,
    ) -> Result<(Order, bool), AppError> {
        self.changes.when_changed(id, wait, held, || self.get(actor, id)).await
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

    /// Each line's product as the catalog has it, read at once; the first unknown product named
    /// is [`AppError::UnknownProduct`].
    async fn priced(&self, lines: &[(ProductId, Quantity)]) -> Result<Vec<(CatalogItem, Quantity)>, AppError> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<ProductId> = lines.iter().map(|(product, _)| *product).collect();
        let found: HashMap<ProductId, CatalogItem> =
            self.catalog.find_many(&ids).await?.into_iter().map(|item| (item.product_id, item)).collect();
        lines
            .iter()
            .map(|(product, quantity)| {
                let item = found.get(product).ok_or(AppError::UnknownProduct(*product))?;
                Ok((item.clone(), *quantity))
            })
            .collect()
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
    idempotency: Option<IdempotencyKeyUse<'_>>,
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
        assert!(IdempotencyKey::new("naïve").is_err());
        assert!(IdempotencyKey::new("k".repeat(256)).is_err());
    }
}
