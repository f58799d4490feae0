//! The order service's PostgreSQL stores against the real database, one database per test.

use chrono::{DateTime, Utc};
use messaging::testing::TestDatabase;
use messaging::{Causation, Effects, HandlerError, LoadError, SaveError, TraceParent};
use order::application::{AppError, Catalog, IdempotencyKeyUse, OrderFilter, OrderStore};
use order::domain::{
    CatalogItem, CustomerId, Order, OrderDescription, OrderId, OrderState, OrderStatus, ProductId, Quantity, Timeline,
};
use order::infrastructure::{PgCatalog, PgOrderStore, migrator};
use uuid::Uuid;

async fn database() -> TestDatabase {
    let db = TestDatabase::empty().await;
    migrator().run(&db.pool).await.unwrap();
    db
}

fn item(id: i64, price: &str) -> CatalogItem {
    CatalogItem {
        product_id: ProductId::new(id).unwrap(),
        name: format!("product {id}"),
        price: price.parse().unwrap(),
    }
}

fn draft() -> Order {
    let description = OrderDescription::new("gifts").ok();
    let mut order =
        Order::create(OrderId::generate(), CustomerId::from_uuid(Uuid::now_v7()), description, kernel::now());
    order.take_events();
    order
}

/// A new draft created at `created_at`, as if it had been created then.
fn draft_created_at(created_at: DateTime<Utc>) -> Order {
    let timeline = Timeline { created_at, placed_at: None, decided_at: None };
    let customer = CustomerId::from_uuid(Uuid::now_v7());
    Order::restore(OrderId::generate(), customer, None, OrderState::Draft, Vec::new(), timeline, 0).unwrap()
}

fn key_use(key: &'static str, expired_before: DateTime<Utc>) -> Option<IdempotencyKeyUse<'static>> {
    Some(IdempotencyKeyUse { key, fingerprint: "fingerprint", expired_before })
}

fn hours_ago(hours: i64) -> DateTime<Utc> {
    kernel::now() - chrono::Duration::hours(hours)
}

async fn outbox_rows(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&db.pool).await.unwrap()
}

fn a_message() -> Effects<'static> {
    let mut effects = Effects::new();
    let causation = Causation::root("order", TraceParent::new_root());
    effects.send(causation.envelope(&contracts::order::OrderShipped { order_id: Uuid::now_v7() }));
    effects
}

#[tokio::test]
async fn an_order_round_trips_with_its_lines_state_and_timeline() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let mut order = draft();
    order.add_line(&item(1, "19.99"), Quantity::new(2).unwrap()).unwrap();
    order.add_line(&item(2, "0.10"), Quantity::new(3).unwrap()).unwrap();
    order.place(kernel::now()).unwrap();
    order.take_events();
    store.save(&order, None, &Effects::new()).await.unwrap();
    order.record_saved();

    let loaded = store.load(order.id()).await.unwrap().unwrap();
    assert_eq!(loaded, order);
    assert_eq!(loaded.total().to_string(), "40.28");
    assert_eq!(loaded.version(), 1);
    assert!(store.load(OrderId::generate()).await.unwrap().is_none());
}

#[tokio::test]
async fn a_save_at_a_stale_version_is_refused_and_writes_nothing() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let order = draft();
    store.save(&order, None, &Effects::new()).await.unwrap();

    let mut first = store.load(order.id()).await.unwrap().unwrap();
    let mut second = store.load(order.id()).await.unwrap().unwrap();
    first.add_line(&item(1, "1.00"), Quantity::new(1).unwrap()).unwrap();
    store.save(&first, None, &a_message()).await.unwrap();
    second.add_line(&item(2, "2.00"), Quantity::new(1).unwrap()).unwrap();
    let stale = store.save(&second, None, &a_message()).await;
    assert!(matches!(stale, Err(SaveError::Conflict)), "{stale:?}");

    let stored = store.load(order.id()).await.unwrap().unwrap();
    assert_eq!(stored.lines().len(), 1);
    assert_eq!(stored.lines()[0].product_id, ProductId::new(1).unwrap());
    assert_eq!(outbox_rows(&db).await, 1, "the refused save's message was written");
}

#[tokio::test]
async fn a_new_order_saved_twice_conflicts() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let order = draft();
    store.save(&order, None, &Effects::new()).await.unwrap();
    assert!(matches!(store.save(&order, None, &a_message()).await, Err(SaveError::Conflict)));
    assert_eq!(outbox_rows(&db).await, 0);
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_one_order() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let (first, second) = (draft(), draft());
    store.save(&first, key_use("key-1", hours_ago(24)), &Effects::new()).await.unwrap();
    let reused = store.save(&second, key_use("key-1", hours_ago(24)), &Effects::new()).await;
    assert!(matches!(reused, Err(SaveError::Conflict)));
    assert!(store.load(second.id()).await.unwrap().is_none(), "the second order was created anyway");
    assert_eq!(
        store.find_by_idempotency_key("key-1", hours_ago(24)).await.unwrap(),
        Some((first.id(), "fingerprint".into()))
    );
}

#[tokio::test]
async fn an_expired_idempotency_key_no_longer_finds_its_order_is_taken_over_and_is_forgotten() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let old = draft_created_at(hours_ago(30));
    store.save(&old, key_use("key-1", hours_ago(48)), &Effects::new()).await.unwrap();
    let recent = draft_created_at(hours_ago(1));
    store.save(&recent, key_use("key-2", hours_ago(48)), &Effects::new()).await.unwrap();

    // With a 24 h time to live, the 30 h old use has expired: it finds nothing...
    assert_eq!(store.find_by_idempotency_key("key-1", hours_ago(24)).await.unwrap(), None);
    assert!(store.find_by_idempotency_key("key-1", hours_ago(48)).await.unwrap().is_some());
    // ... and a new order may take the key over, while a live key stays its order's.
    let taker = draft();
    store.save(&taker, key_use("key-1", hours_ago(24)), &Effects::new()).await.unwrap();
    let found = store.find_by_idempotency_key("key-1", hours_ago(24)).await.unwrap();
    assert_eq!(found, Some((taker.id(), "fingerprint".into())));
    let refused = store.save(&draft(), key_use("key-2", hours_ago(24)), &Effects::new()).await;
    assert!(matches!(refused, Err(SaveError::Conflict)), "{refused:?}");

    // Cleaning up deletes the keys used before the moment given, and only those.
    store.save(&draft_created_at(hours_ago(26)), key_use("key-3", hours_ago(48)), &Effects::new()).await.unwrap();
    assert_eq!(store.forget_idempotency_keys(hours_ago(24)).await.unwrap(), 1);
    assert_eq!(store.find_by_idempotency_key("key-3", hours_ago(48)).await.unwrap(), None);
    assert!(store.find_by_idempotency_key("key-2", hours_ago(24)).await.unwrap().is_some());
    assert!(store.find_by_idempotency_key("key-1", hours_ago(24)).await.unwrap().is_some());
    assert!(store.load(old.id()).await.unwrap().is_some(), "forgetting a key keeps its order");
}

#[tokio::test]
async fn orders_are_listed_newest_first_by_customer_and_status() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let customer = CustomerId::from_uuid(Uuid::now_v7());
    let mut ids = Vec::new();
    for n in 0..5 {
        let mut order = Order::create(OrderId::generate(), customer, None, kernel::now());
        if n % 2 == 0 {
            order.add_line(&item(1, "1.00"), Quantity::new(1).unwrap()).unwrap();
            order.place(kernel::now()).unwrap();
        }
        store.save(&order, None, &Effects::new()).await.unwrap();
        ids.push(order.id());
    }
    store.save(&draft(), None, &Effects::new()).await.unwrap(); // someone else's

    let filter = |status, after, limit| OrderFilter { customer_id: Some(customer), status, after, limit };
    let page = store.list(&filter(None, None, 3)).await.unwrap();
    assert_eq!(page.orders.iter().map(|o| o.id).collect::<Vec<_>>(), vec![ids[4], ids[3], ids[2]]);
    assert_eq!(page.next_after, Some(ids[2]));
    let rest = store.list(&filter(None, page.next_after, 3)).await.unwrap();
    assert_eq!(rest.orders.iter().map(|o| o.id).collect::<Vec<_>>(), vec![ids[1], ids[0]]);
    assert_eq!(rest.next_after, None);
    let placed = store.list(&filter(Some(OrderStatus::Placed), None, 10)).await.unwrap();
    assert_eq!(placed.orders.len(), 3);
    assert!(placed.orders.iter().all(|o| o.status == OrderStatus::Placed && o.line_count == 1));
}

#[tokio::test]
async fn the_catalog_keeps_the_newest_version_of_a_product() {
    let db = database().await;
    let catalog = PgCatalog::new(db.pool.clone());
    catalog.upsert(&item(7, "5.00"), 2, &Effects::new()).await.unwrap();
    // Late news of an older version changes nothing.
    catalog.upsert(&item(7, "4.00"), 1, &Effects::new()).await.unwrap();
    assert_eq!(catalog.find(ProductId::new(7).unwrap()).await.unwrap().unwrap().price.to_string(), "5.00");
    catalog.upsert(&item(7, "6.00"), 3, &Effects::new()).await.unwrap();
    assert_eq!(catalog.find(ProductId::new(7).unwrap()).await.unwrap().unwrap().price.to_string(), "6.00");
    assert_eq!(catalog.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_row_that_does_not_restore_is_corrupt_while_an_unreachable_database_is_unavailable() {
    let db = database().await;
    let store = PgOrderStore::new(db.pool.clone());
    let order = draft();
    store.save(&order, None, &Effects::new()).await.unwrap();
    let line = r#"[{"product_id": 0, "product_name": "ghost", "unit_price": "1.00", "quantity": 1}]"#;
    sqlx::query("UPDATE orders SET lines = $2::jsonb WHERE id = $1")
        .bind(order.id().as_uuid())
        .bind(line)
        .execute(&db.pool)
        .await
        .unwrap();

    let corrupt = store.load(order.id()).await.unwrap_err();
    let expected = format!("order {}", order.id());
    assert!(matches!(&corrupt, LoadError::Corrupt { what, .. } if *what == expected), "{corrupt:?}");
    assert!(
        matches!(HandlerError::from(AppError::from(corrupt)), HandlerError::Permanent(_)),
        "retrying cannot mend it"
    );

    let away = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(300))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let unavailable = PgOrderStore::new(away).load(order.id()).await.unwrap_err();
    assert!(matches!(unavailable, LoadError::Unavailable(_)), "{unavailable:?}");
    assert!(matches!(HandlerError::from(AppError::from(unavailable)), HandlerError::Transient(_)));
}

#[tokio::test]
async fn a_reason_stored_before_reasons_refused_control_characters_still_restores() {
    let db = TestDatabase::empty().await;
    let all = migrator();
    let before = sqlx::migrate::Migrator::with_migrations(
        all.migrations.iter().filter(|migration| migration.version < 102).cloned().collect(),
    );
    before.run(&db.pool).await.unwrap();
    let store = PgOrderStore::new(db.pool.clone());
    let mut order = draft();
    order.cancel(order::domain::Reason::new("later").unwrap()).unwrap();
    store.save(&order, None, &Effects::new()).await.unwrap();
    sqlx::query("UPDATE orders SET status_reason = $2 WHERE id = $1")
        .bind(order.id().as_uuid())
        .bind("rang the \u{7}bell\ntwice")
        .execute(&db.pool)
        .await
        .unwrap();
    all.run(&db.pool).await.unwrap();

    let loaded = store.load(order.id()).await.unwrap().unwrap();
    assert_eq!(loaded.state().reason().unwrap().as_str(), "rang the  bell\ntwice");
}
