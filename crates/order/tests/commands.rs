//! Who may do what to an order, as the application decides it (over the real stores): another
//! customer's order does not exist for a customer, lists are the customer's own, and only an
//! admin ships; and how the reservation's outcome settles an order.

use contracts::inventory::StockReservationCompleted;
use messaging::testing::TestDatabase;
use messaging::{Causation, Effects, TraceParent};
use order::application::{
    Actor, AppError, Catalog, IdempotencyKey, NewOrder, OrderFilter, OrderService, ReservationOutcomeHandler,
    StockOutcome,
};
use order::domain::{CatalogItem, CustomerId, OrderError, OrderStatus, ProductId, Quantity, Reason};
use order::infrastructure::{PgCatalog, PgOrderStore, migrator};
use std::sync::Arc;
use uuid::Uuid;

struct Setup {
    service: OrderService,
    product: ProductId,
    /// Dropped (and the database with it) when the test ends.
    db: TestDatabase,
}

async fn setup() -> Setup {
    setup_with(|service| service).await
}

async fn setup_with(configure: impl FnOnce(OrderService) -> OrderService) -> Setup {
    let db = TestDatabase::empty().await;
    migrator().run(&db.pool).await.unwrap();
    let catalog = Arc::new(PgCatalog::new(db.pool.clone()));
    let product = ProductId::new(1).unwrap();
    let item = CatalogItem { product_id: product, name: "Kettle".into(), price: "24.90".parse().unwrap() };
    catalog.upsert(&item, 1, &Effects::new()).await.unwrap();
    let service = configure(OrderService::new(Arc::new(PgOrderStore::new(db.pool.clone())), catalog));
    Setup { service, product, db }
}

impl Setup {
    /// Another instance of the service on the same database: it knows nothing of this one's saves.
    fn another_instance(&self) -> OrderService {
        let pool = &self.db.pool;
        OrderService::new(Arc::new(PgOrderStore::new(pool.clone())), Arc::new(PgCatalog::new(pool.clone())))
    }
}

fn customer() -> (CustomerId, Actor) {
    let id = CustomerId::from_uuid(Uuid::now_v7());
    (id, Actor::Customer(id))
}

fn trace() -> TraceParent {
    TraceParent::new_root()
}

fn new(customer_id: Option<CustomerId>) -> NewOrder {
    NewOrder::draft(customer_id, None)
}

#[tokio::test]
async fn a_customer_orders_for_itself_and_an_admin_names_the_customer() {
    let setup = setup().await;
    let service = &setup.service;
    let (alice, as_alice) = customer();
    let (bob, _) = customer();
    let (order, created) = service.create(as_alice, new(None), None, trace()).await.unwrap();
    assert!(created);
    assert_eq!(order.customer_id(), alice);
    assert_eq!(service.create(as_alice, new(Some(alice)), None, trace()).await.unwrap().0.customer_id(), alice);
    let refused = service.create(as_alice, new(Some(bob)), None, trace()).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_))), "{refused:?}");
    assert_eq!(service.create(Actor::Admin, new(Some(bob)), None, trace()).await.unwrap().0.customer_id(), bob);
    let unnamed = service.create(Actor::Admin, new(None), None, trace()).await;
    assert!(matches!(unnamed, Err(AppError::CustomerRequired)), "{unnamed:?}");
}

#[tokio::test]
async fn another_customers_order_does_not_exist_for_a_customer() {
    let setup = setup().await;
    let (service, product) = (&setup.service, setup.product);
    let (_, as_alice) = customer();
    let (_, as_bob) = customer();
    let one = Quantity::new(1).unwrap();
    let order = service.create(as_alice, new(None), None, trace()).await.unwrap().0.id();
    service.add_item(as_alice, order, product, one, trace()).await.unwrap();

    let not_found = |result: Result<_, AppError>| matches!(result, Err(AppError::OrderNotFound(id)) if id == order);
    assert!(not_found(service.get(as_bob, order).await));
    assert!(not_found(service.add_item(as_bob, order, product, one, trace()).await));
    assert!(not_found(service.remove_item(as_bob, order, product, trace()).await));
    assert!(not_found(service.place(as_bob, order, trace()).await));
    assert!(not_found(service.cancel(as_bob, order, Reason::new("mine now").unwrap(), trace()).await));
    // Nor under alice's idempotency key: bob's request differs, so it is not a repeat.
    let key = || Some(IdempotencyKey::new("checkout-7").unwrap());
    let first = service.create(as_alice, new(None), key(), trace()).await.unwrap().0;
    let reused = service.create(as_bob, new(None), key(), trace()).await;
    assert!(matches!(reused, Err(AppError::IdempotencyKeyReused)), "{reused:?}");
    assert_eq!(service.create(as_alice, new(None), key(), trace()).await.unwrap(), (first, false));

    let seen = service.get(as_alice, order).await.unwrap();
    assert_eq!(seen.lines().len(), 1, "a refused command changed the order");
    assert_eq!(service.get(Actor::Admin, order).await.unwrap(), seen);
    service.place(as_alice, order, trace()).await.unwrap();
}

#[tokio::test]
async fn an_order_comes_with_its_lines_and_placed_in_one_commit_or_not_at_all() {
    let setup = setup().await;
    let (service, kettle) = (&setup.service, setup.product);
    let (alice, as_alice) = customer();
    let two = Quantity::new(2).unwrap();
    let checkout = |lines: Vec<(ProductId, Quantity)>, place| NewOrder { lines, place, ..new(Some(alice)) };

    let (order, created) =
        service.create(as_alice, checkout(vec![(kettle, two), (kettle, two)], true), None, trace()).await.unwrap();
    assert!(created);
    assert_eq!((order.status(), order.version()), (OrderStatus::Placed, 1), "one save");
    assert_eq!((order.lines().len(), order.lines()[0].quantity.get()), (1, 4), "a product named twice is one line");
    assert_eq!(order.total().to_string(), "99.60");
    assert_eq!(service.get(as_alice, order.id()).await.unwrap(), order);
    let drafted = service.create(as_alice, checkout(vec![(kettle, two)], false), None, trace()).await.unwrap().0;
    assert_eq!(drafted.status(), OrderStatus::Draft);

    let unknown = ProductId::new(99).unwrap();
    let refused = service.create(as_alice, checkout(vec![(kettle, two), (unknown, two)], true), None, trace()).await;
    assert!(matches!(refused, Err(AppError::UnknownProduct(id)) if id == unknown), "{refused:?}");
    let empty = service.create(as_alice, checkout(Vec::new(), true), None, trace()).await;
    assert!(matches!(empty, Err(AppError::Rule(OrderError::EmptyOrder))), "{empty:?}");
    let listed = service.list(as_alice, OrderFilter { customer_id: None, status: None, after: None, limit: 10 }).await;
    assert_eq!(listed.unwrap().orders.len(), 2, "a refused order left something behind");

    // Under one key, the lines and the placing are part of what a repeat must repeat.
    let key = || Some(IdempotencyKey::new("checkout-3").unwrap());
    let first = service.create(as_alice, checkout(vec![(kettle, two)], true), key(), trace()).await.unwrap().0;
    assert_eq!(
        service.create(as_alice, checkout(vec![(kettle, two)], true), key(), trace()).await.unwrap(),
        (first, false)
    );
    for other in [
        checkout(vec![(kettle, two)], false),
        checkout(vec![(kettle, Quantity::new(1).unwrap())], true),
        new(Some(alice)),
    ] {
        let reused = service.create(as_alice, other, key(), trace()).await;
        assert!(matches!(reused, Err(AppError::IdempotencyKeyReused)), "{reused:?}");
    }
}

#[tokio::test]
async fn only_an_admin_ships() {
    let setup = setup().await;
    let (service, product) = (&setup.service, setup.product);
    let (_, as_alice) = customer();
    let order = service.create(as_alice, new(None), None, trace()).await.unwrap().0.id();
    service.add_item(as_alice, order, product, Quantity::new(1).unwrap(), trace()).await.unwrap();
    let refused = service.ship(as_alice, order, trace()).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_))), "{refused:?}");
    // An admin gets as far as the order's own rule: a draft is not shipped.
    let draft = service.ship(Actor::Admin, order, trace()).await;
    assert!(matches!(draft, Err(AppError::Rule(OrderError::TransitionRefused { .. }))), "{draft:?}");
}

#[tokio::test]
async fn a_customer_lists_its_own_orders_only() {
    let setup = setup().await;
    let service = &setup.service;
    let (alice, as_alice) = customer();
    let (bob, as_bob) = customer();
    let mine = service.create(as_alice, new(None), None, trace()).await.unwrap().0.id();
    let theirs = service.create(as_bob, new(None), None, trace()).await.unwrap().0.id();
    let filter = |customer_id| OrderFilter { customer_id, status: None, after: None, limit: 10 };
    let ids = |page: order::application::OrderPage| page.orders.into_iter().map(|o| o.id).collect::<Vec<_>>();

    assert_eq!(ids(service.list(as_alice, filter(None)).await.unwrap()), vec![mine]);
    assert_eq!(ids(service.list(as_alice, filter(Some(alice))).await.unwrap()), vec![mine]);
    let refused = service.list(as_alice, filter(Some(bob))).await;
    assert!(matches!(refused, Err(AppError::Forbidden(_))), "{refused:?}");
    assert_eq!(ids(service.list(Actor::Admin, filter(None)).await.unwrap()), vec![theirs, mine]);
    assert_eq!(ids(service.list(Actor::Admin, filter(Some(bob))).await.unwrap()), vec![theirs]);
}

#[tokio::test]
async fn an_idempotency_key_holds_for_its_time_to_live_only() {
    let key = || Some(IdempotencyKey::new("checkout-9").unwrap());
    let (_, as_alice) = customer();

    let lasting = setup().await;
    let first = lasting.service.create(as_alice, new(None), key(), trace()).await.unwrap().0;
    assert_eq!(lasting.service.create(as_alice, new(None), key(), trace()).await.unwrap(), (first, false));
    assert_eq!(lasting.service.forget_expired_idempotency_keys().await.unwrap(), 0);

    // Keys that expire at once: a repeat is a new order, and the cleanup finds the old uses.
    let fleeting = setup_with(|service| service.with_idempotency_key_ttl(std::time::Duration::ZERO)).await;
    let first = fleeting.service.create(as_alice, new(None), key(), trace()).await.unwrap().0;
    let (second, created) = fleeting.service.create(as_alice, new(None), key(), trace()).await.unwrap();
    assert!(created && second.id() != first.id(), "an expired key replayed its order");
    assert_eq!(fleeting.service.forget_expired_idempotency_keys().await.unwrap(), 1);
}

#[tokio::test]
async fn an_outcome_starts_from_the_order_as_placed_here_and_stands_only_if_it_commits() {
    let setup = setup().await;
    let (here, kettle) = (&setup.service, setup.product);
    let (alice, as_alice) = customer();
    let checkout = NewOrder { lines: vec![(kettle, Quantity::new(1).unwrap())], place: true, ..new(Some(alice)) };
    let confirmed = here.create(as_alice, checkout.clone(), None, trace()).await.unwrap().0.id();
    let cancelled = here.create(as_alice, checkout, None, trace()).await.unwrap().0.id();
    // Cancelled on another instance: what this one remembers of the order is out of date.
    let reason = Reason::new("changed my mind").unwrap();
    setup.another_instance().cancel(as_alice, cancelled, reason, trace()).await.unwrap();

    for order in [confirmed, cancelled] {
        let report = Causation::root(order.to_string(), trace())
            .envelope(&StockReservationCompleted { order_id: order.as_uuid() });
        here.settle_reservation(order, &StockOutcome::Reserved, ReservationOutcomeHandler::NAME, &report)
            .await
            .unwrap();
    }
    assert_eq!(here.get(as_alice, confirmed).await.unwrap().status(), OrderStatus::Confirmed);
    let stale = here.get(as_alice, cancelled).await.unwrap();
    assert_eq!((stale.status(), stale.version()), (OrderStatus::Cancelled, 2), "settled from a stale memory");
}
