//! Following an order (over the real stores): a wait for a change ends when this process saves
//! the order, when another instance's save is read again, when the wait is over, or when the
//! service stops; and it shows a customer nothing of another's order.

use messaging::testing::TestDatabase;
use messaging::{Effects, TraceParent};
use order::application::{Actor, AppError, Catalog, NewOrder, OrderChanges, OrderService};
use order::domain::{CatalogItem, CustomerId, Order, OrderId, OrderStatus, ProductId, Quantity, Reason};
use order::infrastructure::{PgCatalog, PgOrderStore, migrator};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Longer than any test: a wait that ends did not end by looking again or by running out.
const AN_HOUR: Duration = Duration::from_secs(3600);
/// What a wait that should end at once is given before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

struct Setup {
    db: TestDatabase,
    catalog: Arc<dyn Catalog>,
}

impl Setup {
    async fn new() -> Self {
        let db = TestDatabase::empty().await;
        migrator().run(&db.pool).await.unwrap();
        let catalog: Arc<dyn Catalog> = Arc::new(PgCatalog::new(db.pool.clone()));
        let item = CatalogItem { product_id: product(), name: "Kettle".into(), price: "24.90".parse().unwrap() };
        catalog.upsert(&item, 1, &Effects::new()).await.unwrap();
        Self { db, catalog }
    }

    /// An instance of the service that looks again every `look_again`.
    fn service(&self, look_again: Duration) -> Arc<OrderService> {
        self.service_with(OrderChanges::with(look_again, OrderChanges::DEFAULT_MAX_WAITS))
    }

    fn service_with(&self, changes: OrderChanges) -> Arc<OrderService> {
        let store = Arc::new(PgOrderStore::new(self.db.pool.clone()));
        Arc::new(OrderService::following_changes(store, self.catalog.clone(), changes))
    }
}

fn product() -> ProductId {
    ProductId::new(1).unwrap()
}

fn customer() -> Actor {
    Actor::Customer(CustomerId::from_uuid(Uuid::now_v7()))
}

async fn placed_order(service: &OrderService, actor: Actor) -> Order {
    let lines = vec![(product(), Quantity::new(1).unwrap())];
    let new = NewOrder { customer_id: None, description: None, lines, place: true };
    service.create(actor, new, None, TraceParent::new_root()).await.unwrap().0
}

/// Starts waiting on `service` for `order` to leave the version it has now; returns once the
/// wait has read the order a first time (a change from then on is one it must see).
async fn wait_for_change(
    service: &Arc<OrderService>,
    actor: Actor,
    order: &Order,
    wait: Duration,
) -> tokio::task::JoinHandle<Result<(Order, bool), AppError>> {
    let (service, id, version) = (service.clone(), order.id(), order.version());
    let (read, mut first_read) = tokio::sync::mpsc::unbounded_channel();
    let waiting = tokio::spawn(async move {
        let held = |now: &Order| {
            let _ = read.send(());
            now.version() == version
        };
        service.get_when_changed(actor, id, wait, held).await
    });
    tokio::time::timeout(PATIENCE, first_read.recv()).await.expect("the wait reads the order");
    waiting
}

async fn cancel(service: &OrderService, actor: Actor, id: OrderId) {
    let reason = Reason::new("changed my mind").unwrap();
    service.cancel(actor, id, reason, TraceParent::new_root()).await.unwrap();
}

#[tokio::test]
async fn a_wait_ends_as_soon_as_this_process_saves_the_order() {
    let setup = Setup::new().await;
    let service = setup.service(AN_HOUR);
    let actor = customer();
    let order = placed_order(&service, actor).await;
    let waiting = wait_for_change(&service, actor, &order, AN_HOUR).await;

    cancel(&service, actor, order.id()).await;
    let (changed, waited) =
        tokio::time::timeout(PATIENCE, waiting).await.expect("the save ended the wait").unwrap().unwrap();
    assert_eq!(changed.status(), OrderStatus::Cancelled);
    assert!(changed.version() > order.version() && waited);
    // Answered from the order as this process saved it: exactly as stored.
    assert_eq!(changed, service.get(actor, order.id()).await.unwrap());
}

#[tokio::test]
async fn a_wait_sees_another_instances_save_when_it_looks_again() {
    let setup = Setup::new().await;
    let (here, elsewhere) = (setup.service(Duration::from_millis(50)), setup.service(AN_HOUR));
    let actor = customer();
    let order = placed_order(&here, actor).await;
    let waiting = wait_for_change(&here, actor, &order, AN_HOUR).await;

    cancel(&elsewhere, actor, order.id()).await;
    let (changed, _) =
        tokio::time::timeout(PATIENCE, waiting).await.expect("looking again saw the save").unwrap().unwrap();
    assert_eq!(changed.status(), OrderStatus::Cancelled);
}

#[tokio::test]
async fn an_order_that_did_not_change_is_answered_as_it_is_once_the_wait_is_over() {
    let setup = Setup::new().await;
    let service = setup.service(Duration::from_millis(20));
    let actor = customer();
    let order = placed_order(&service, actor).await;

    let (same, waited) =
        wait_for_change(&service, actor, &order, Duration::from_millis(200)).await.await.unwrap().unwrap();
    assert_eq!((same.status(), same.version(), waited), (OrderStatus::Placed, order.version(), true));
    let not_yours = service.get_when_changed(customer(), order.id(), AN_HOUR, |_| true);
    let refused = tokio::time::timeout(PATIENCE, not_yours).await.expect("refused at once");
    assert!(matches!(refused, Err(AppError::OrderNotFound(id)) if id == order.id()), "{refused:?}");
}

#[tokio::test]
async fn past_its_limit_of_waits_the_service_answers_at_once_and_says_it_did_not_wait() {
    let setup = Setup::new().await;
    let service = setup.service_with(OrderChanges::with(AN_HOUR, 1));
    let actor = customer();
    let order = placed_order(&service, actor).await;
    let waiting = wait_for_change(&service, actor, &order, AN_HOUR).await;

    let second = service.get_when_changed(actor, order.id(), AN_HOUR, |now| now.version() == order.version());
    let (same, waited) = tokio::time::timeout(PATIENCE, second).await.expect("answered at once").unwrap();
    assert_eq!((same.version(), waited), (order.version(), false));
    cancel(&service, actor, order.id()).await;
    assert!(tokio::time::timeout(PATIENCE, waiting).await.unwrap().unwrap().unwrap().1, "the first one waited");
}

#[tokio::test]
async fn stopping_the_service_ends_the_waits_and_starts_no_more() {
    let setup = Setup::new().await;
    let service = setup.service(AN_HOUR);
    let actor = customer();
    let order = placed_order(&service, actor).await;
    let waiting = wait_for_change(&service, actor, &order, AN_HOUR).await;

    service.stop_waiting();
    let (same, _) = tokio::time::timeout(PATIENCE, waiting).await.expect("the stop ended the wait").unwrap().unwrap();
    assert_eq!(same.version(), order.version());
    let after = wait_for_change(&service, actor, &order, AN_HOUR).await;
    let (answered, waited) =
        tokio::time::timeout(PATIENCE, after).await.expect("answered without waiting").unwrap().unwrap();
    assert_eq!((answered.version(), waited), (order.version(), false));
}
