//! The order service's stores: one contract per port (orders, idempotency keys, the catalog
//! copy), written once and run against the PostgreSQL and the SQLite adapters, each test on a
//! database of its own.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messaging::testing::{TestDatabase, TestSqlite};
use messaging::{Causation, Effects, HandlerError, LoadError, SaveError, TraceParent};
use order::application::{AppError, Catalog, IdempotencyKeyUse, OrderFilter, OrderStore};
use order::domain::{
    CatalogItem, CustomerId, Order, OrderDescription, OrderId, OrderState, OrderStatus, ProductId, Quantity, Timeline,
};
use order::infrastructure::{PgCatalog, PgOrderStore, SqliteCatalog, SqliteOrderStore, migrator, sqlite_migrator};
use std::sync::Arc;
use uuid::Uuid;

/// A fresh database of the order service, with both stores on it.
#[async_trait]
trait Backend: Sized {
    async fn new() -> Self;
    fn orders(&self) -> Arc<dyn OrderStore>;
    fn catalog(&self) -> Arc<dyn Catalog>;
    async fn outbox_rows(&self) -> i64;
    /// Writes `lines` (JSON) into the order's row as they are, as a defect or damage would.
    async fn overwrite_lines(&self, order: OrderId, lines: &str);
    /// An order store whose database cannot be reached.
    async fn unreachable() -> Arc<dyn OrderStore>;
}

struct Postgres(TestDatabase);

#[async_trait]
impl Backend for Postgres {
    async fn new() -> Self {
        let db = TestDatabase::empty().await;
        migrator().run(&db.pool).await.unwrap();
        Self(db)
    }

    fn orders(&self) -> Arc<dyn OrderStore> {
        Arc::new(PgOrderStore::new(self.0.pool.clone()))
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::new(PgCatalog::new(self.0.pool.clone()))
    }

    async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&self.0.pool).await.unwrap()
    }

    async fn overwrite_lines(&self, order: OrderId, lines: &str) {
        sqlx::query("UPDATE orders SET lines = $2::jsonb WHERE id = $1")
            .bind(order.as_uuid())
            .bind(lines)
            .execute(&self.0.pool)
            .await
            .unwrap();
    }

    async fn unreachable() -> Arc<dyn OrderStore> {
        let away = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_millis(300))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        Arc::new(PgOrderStore::new(away))
    }
}

struct Sqlite(TestSqlite);

#[async_trait]
impl Backend for Sqlite {
    async fn new() -> Self {
        let test = TestSqlite::empty().await;
        test.db.migrate(&sqlite_migrator()).await.unwrap();
        Self(test)
    }

    fn orders(&self) -> Arc<dyn OrderStore> {
        Arc::new(SqliteOrderStore::new(self.0.db.clone()))
    }

    fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::new(SqliteCatalog::new(self.0.db.clone()))
    }

    async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(self.0.db.reader()).await.unwrap()
    }

    async fn overwrite_lines(&self, order: OrderId, lines: &str) {
        sqlx::query("UPDATE orders SET lines = ? WHERE id = ?")
            .bind(lines)
            .bind(order.as_uuid().hyphenated())
            .execute(self.0.db.writer())
            .await
            .unwrap();
    }

    async fn unreachable() -> Arc<dyn OrderStore> {
        let test = TestSqlite::empty().await;
        test.db.close().await;
        Arc::new(SqliteOrderStore::new(test.db.clone()))
    }
}

// Each test once per database: `postgres::<test>` and `sqlite::<test>`.
messaging::contract_tests!(
    [
        an_order_round_trips_with_its_lines_state_and_timeline,
        a_save_at_a_stale_version_is_refused_and_writes_nothing,
        a_new_order_saved_twice_conflicts,
        a_second_copy_of_a_consumed_message_changes_nothing,
        orders_are_listed_newest_first_by_customer_and_status,
        a_row_that_does_not_restore_is_corrupt_while_an_unreachable_database_is_unavailable,
        an_idempotency_key_belongs_to_one_order,
        an_expired_idempotency_key_no_longer_finds_its_order_is_taken_over_and_is_forgotten,
        the_catalog_keeps_the_newest_version_of_a_product,
        the_catalog_lists_products_by_id_with_exact_prices,
        a_catalog_update_commits_with_its_inbox_record,
    ],
    postgres => Postgres, sqlite => Sqlite,
);

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

fn a_message() -> Effects<'static> {
    let mut effects = Effects::new();
    let causation = Causation::root("order", TraceParent::new_root());
    effects.send(causation.envelope(&contracts::order::OrderShipped { order_id: Uuid::now_v7() }));
    effects
}

// --- orders --------------------------------------------------------------------------------------

async fn an_order_round_trips_with_its_lines_state_and_timeline<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
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

async fn a_save_at_a_stale_version_is_refused_and_writes_nothing<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
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
    assert_eq!(db.outbox_rows().await, 1, "the refused save's message was written");
}

async fn a_new_order_saved_twice_conflicts<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
    let order = draft();
    store.save(&order, None, &Effects::new()).await.unwrap();
    assert!(matches!(store.save(&order, None, &a_message()).await, Err(SaveError::Conflict)));
    assert_eq!(db.outbox_rows().await, 0);
}

async fn a_second_copy_of_a_consumed_message_changes_nothing<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
    let order = draft();
    let consumed = Uuid::now_v7();
    store.save(&order, None, &Effects::consuming("outcome", consumed)).await.unwrap();

    let mut copy = store.load(order.id()).await.unwrap().unwrap();
    copy.add_line(&item(1, "1.00"), Quantity::new(1).unwrap()).unwrap();
    let mut effects = a_message();
    effects.consume("outcome", consumed);
    let refused = store.save(&copy, None, &effects).await;
    assert!(matches!(refused, Err(SaveError::AlreadyConsumed)), "{refused:?}");

    let stored = store.load(order.id()).await.unwrap().unwrap();
    assert!(stored.lines().is_empty(), "the copy's change was kept");
    assert_eq!(db.outbox_rows().await, 0, "the copy's message was written");
}

async fn orders_are_listed_newest_first_by_customer_and_status<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
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

async fn a_row_that_does_not_restore_is_corrupt_while_an_unreachable_database_is_unavailable<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
    let order = draft();
    store.save(&order, None, &Effects::new()).await.unwrap();
    let line = r#"[{"product_id": 0, "product_name": "ghost", "unit_price": "1.00", "quantity": 1}]"#;
    db.overwrite_lines(order.id(), line).await;

    let corrupt = store.load(order.id()).await.unwrap_err();
    let expected = format!("order {}", order.id());
    assert!(matches!(&corrupt, LoadError::Corrupt { what, .. } if *what == expected), "{corrupt:?}");
    assert!(
        matches!(HandlerError::from(AppError::from(corrupt)), HandlerError::Permanent(_)),
        "retrying cannot mend it"
    );

    let unavailable = B::unreachable().await.load(order.id()).await.unwrap_err();
    assert!(matches!(unavailable, LoadError::Unavailable(_)), "{unavailable:?}");
    assert!(matches!(HandlerError::from(AppError::from(unavailable)), HandlerError::Transient(_)));
}

// --- idempotency keys ----------------------------------------------------------------------------

async fn an_idempotency_key_belongs_to_one_order<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
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

async fn an_expired_idempotency_key_no_longer_finds_its_order_is_taken_over_and_is_forgotten<B: Backend>() {
    let db = B::new().await;
    let store = db.orders();
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

// --- the catalog copy ----------------------------------------------------------------------------

async fn the_catalog_keeps_the_newest_version_of_a_product<B: Backend>() {
    let db = B::new().await;
    let catalog = db.catalog();
    catalog.upsert(&item(7, "5.00"), 2, &Effects::new()).await.unwrap();
    // Late news of an older version changes nothing.
    catalog.upsert(&item(7, "4.00"), 1, &Effects::new()).await.unwrap();
    let price = async || catalog.find_many(&[ProductId::new(7).unwrap()]).await.unwrap()[0].price.to_string();
    assert_eq!(price().await, "5.00");
    catalog.upsert(&item(7, "6.00"), 3, &Effects::new()).await.unwrap();
    assert_eq!(price().await, "6.00");
    assert_eq!(catalog.list().await.unwrap().len(), 1);
}

async fn the_catalog_lists_products_by_id_with_exact_prices<B: Backend>() {
    let db = B::new().await;
    let catalog = db.catalog();
    for (id, price) in [(12, "0.10"), (3, "19.99"), (7, "1000000.05")] {
        catalog.upsert(&item(id, price), 1, &Effects::new()).await.unwrap();
    }
    let listed: Vec<(i64, String)> =
        catalog.list().await.unwrap().iter().map(|item| (item.product_id.get(), item.price.to_string())).collect();
    assert_eq!(listed, [(3, "19.99".into()), (7, "1000000.05".into()), (12, "0.10".into())]);
    // Several at once, in one read: those the catalog holds, each once.
    let ids = [4, 12, 3, 12].map(|id| ProductId::new(id).unwrap());
    let mut found: Vec<(i64, String)> = catalog
        .find_many(&ids)
        .await
        .unwrap()
        .iter()
        .map(|item| (item.product_id.get(), item.price.to_string()))
        .collect();
    found.sort();
    assert_eq!(found, [(3, "19.99".into()), (12, "0.10".into())]);
    assert!(catalog.find_many(&[]).await.unwrap().is_empty());
}

async fn a_catalog_update_commits_with_its_inbox_record<B: Backend>() {
    let db = B::new().await;
    let catalog = db.catalog();
    let news = Uuid::now_v7();
    catalog.upsert(&item(7, "5.00"), 1, &Effects::consuming("catalog", news)).await.unwrap();
    let copy = catalog.upsert(&item(7, "9.00"), 2, &Effects::consuming("catalog", news)).await;
    assert!(matches!(copy, Err(SaveError::AlreadyConsumed)), "{copy:?}");
    let kept = catalog.find_many(&[ProductId::new(7).unwrap()]).await.unwrap();
    assert_eq!(kept[0].price.to_string(), "5.00");
}

// --- rows written before a rule: PostgreSQL only, no SQLite database ever held them -----------

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
