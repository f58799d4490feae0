//! The inventory service's stores: one contract per port (products with their reservations,
//! sagas), written once and run against the PostgreSQL and the SQLite adapters, each test on a
//! database of its own.

use async_trait::async_trait;
use inventory::application::{ProductStore, ReservationSaga, SagaStore};
use inventory::domain::{Money, OrderId, Product, ProductDescription, ProductId, ProductName, Quantity};
use inventory::infrastructure::{
    PgProductStore, PgSagaStore, SqliteProductStore, SqliteSagaStore, migrator, sqlite_migrator,
};
use messaging::testing::{TestDatabase, TestSqlite};
use messaging::{Causation, Effects, LoadError, SaveError, TraceParent};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A fresh database of the inventory service, with both stores on it.
#[async_trait]
trait Backend: Sized {
    async fn new() -> Self;
    fn products(&self) -> Arc<dyn ProductStore>;
    fn sagas(&self) -> Arc<dyn SagaStore>;
    /// Runs a statement whose only parameter (`$1`) is a product id, as a defect would; the SQL
    /// reads the same in both dialects.
    async fn execute(&self, sql: &'static str, product: ProductId) -> Result<u64, sqlx::Error>;
    /// Writes `lines` (JSON) into the saga's row as they are.
    async fn overwrite_saga_lines(&self, order: OrderId, lines: &str);
    async fn outbox_rows(&self) -> i64;
}

struct Postgres(TestDatabase);

#[async_trait]
impl Backend for Postgres {
    async fn new() -> Self {
        let db = TestDatabase::empty().await;
        migrator().run(&db.pool).await.unwrap();
        Self(db)
    }

    fn products(&self) -> Arc<dyn ProductStore> {
        Arc::new(PgProductStore::new(self.0.pool.clone()))
    }

    fn sagas(&self) -> Arc<dyn SagaStore> {
        Arc::new(PgSagaStore::new(self.0.pool.clone()))
    }

    async fn execute(&self, sql: &'static str, product: ProductId) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(sql).bind(product.get()).execute(&self.0.pool).await?.rows_affected())
    }

    async fn overwrite_saga_lines(&self, order: OrderId, lines: &str) {
        sqlx::query("UPDATE reservation_sagas SET lines = $2::jsonb WHERE order_id = $1")
            .bind(order.as_uuid())
            .bind(lines)
            .execute(&self.0.pool)
            .await
            .unwrap();
    }

    async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(&self.0.pool).await.unwrap()
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

    fn products(&self) -> Arc<dyn ProductStore> {
        Arc::new(SqliteProductStore::new(self.0.db.clone()))
    }

    fn sagas(&self) -> Arc<dyn SagaStore> {
        Arc::new(SqliteSagaStore::new(self.0.db.clone()))
    }

    async fn execute(&self, sql: &'static str, product: ProductId) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(sql).bind(product.get()).execute(self.0.db.writer()).await?.rows_affected())
    }

    async fn overwrite_saga_lines(&self, order: OrderId, lines: &str) {
        sqlx::query("UPDATE reservation_sagas SET lines = ? WHERE order_id = ?")
            .bind(lines)
            .bind(order.as_uuid().hyphenated())
            .execute(self.0.db.writer())
            .await
            .unwrap();
    }

    async fn outbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox").fetch_one(self.0.db.reader()).await.unwrap()
    }
}

// Each test once per database: `postgres::<test>` and `sqlite::<test>`.
messaging::contract_tests!(
    [
        product_ids_are_handed_out_once,
        a_product_round_trips_with_its_exact_price,
        reservations_are_stored_as_rows_that_add_up_to_the_reserved_count,
        a_product_saved_at_a_stale_version_is_refused_and_writes_nothing,
        the_database_itself_refuses_an_oversold_product,
        reservations_beyond_the_reserved_count_are_corrupt,
        the_database_itself_refuses_a_second_reservation_of_one_product_for_one_order,
        products_are_listed_by_id_a_page_at_a_time,
        effects_without_a_product_are_committed_alone,
        a_saga_round_trips_and_refuses_a_stale_save,
        a_saga_row_that_does_not_restore_is_corrupt,
    ],
    postgres => Postgres, sqlite => Sqlite,
);

async fn saved_product(store: &dyn ProductStore, stock: u32) -> Product {
    saved_product_for(store, stock, &[]).await
}

/// A new product, saved and loaded again with the reservations of `orders` in hand.
async fn saved_product_for(store: &dyn ProductStore, stock: u32, orders: &[OrderId]) -> Product {
    let id = store.next_id().await.unwrap();
    let mut product = Product::create(
        id,
        ProductName::new("Lamp").unwrap(),
        ProductDescription::new("brass").ok(),
        Money::new(Decimal::new(3000, 2)).unwrap(),
        stock,
    )
    .unwrap();
    let changes = product.take_events();
    store.save(&product, &changes, &Effects::new()).await.unwrap();
    store.load(id, orders).await.unwrap().unwrap()
}

/// A new product of `stock` units with `units` of them reserved for `order`, saved.
async fn saved_product_reserved_for(store: &dyn ProductStore, stock: u32, order: OrderId, units: i64) -> Product {
    let mut product = saved_product_for(store, stock, &[order]).await;
    product.reserve(order, qty(units)).unwrap();
    let changes = product.take_events();
    store.save(&product, &changes, &Effects::new()).await.unwrap();
    product
}

fn qty(units: i64) -> Quantity {
    Quantity::new(units).unwrap()
}

// --- products -------------------------------------------------------------------------------------

async fn product_ids_are_handed_out_once<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let ids = futures::future::join_all((0..20).map(|_| store.next_id())).await;
    let mut ids: Vec<i64> = ids.into_iter().map(|id| id.unwrap().get()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20, "an id was handed out twice");
    assert!(ids[0] > 0);
}

async fn a_product_round_trips_with_its_exact_price<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let mut product = saved_product(store.as_ref(), 5).await;
    product.change_price(Money::new(Decimal::new(123_456_789, 2)).unwrap()).unwrap();
    let changes = product.take_events();
    store.save(&product, &changes, &Effects::new()).await.unwrap();
    product.record_saved();
    let loaded = store.load(product.id(), &[]).await.unwrap().unwrap();
    assert_eq!(loaded, product);
    assert_eq!(loaded.price().to_string(), "1234567.89");
    assert_eq!((loaded.name().as_str(), loaded.description(), loaded.version()), ("Lamp", "brass", 2));
    assert!(store.load(ProductId::new(999).unwrap(), &[]).await.unwrap().is_none());
}

async fn reservations_are_stored_as_rows_that_add_up_to_the_reserved_count<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let (a, b) = (OrderId::generate(), OrderId::generate());
    let mut product = saved_product_for(store.as_ref(), 10, &[a, b]).await;
    product.reserve(a, qty(3)).unwrap();
    product.reserve(b, qty(4)).unwrap();
    let changes = product.take_events();
    store.save(&product, &changes, &Effects::new()).await.unwrap();

    // Only the reservations of the orders asked for are read; the reserved count is all of them.
    let with_a = store.load(product.id(), &[a, OrderId::generate()]).await.unwrap().unwrap();
    assert_eq!((with_a.reserved(), with_a.reservations().len(), with_a.reservation_of(a)), (7, 1, Some(qty(3))));
    let without = store.load(product.id(), &[]).await.unwrap().unwrap();
    assert_eq!((without.reserved(), without.available(), without.reservations().len()), (7, 3, 0));
    let mut loaded = store.load(product.id(), &[a, b]).await.unwrap().unwrap();
    assert_eq!((loaded.stock(), loaded.reserved(), loaded.reservation_of(a)), (10, 7, Some(qty(3))));
    assert_eq!(loaded.reservation_of(b), Some(qty(4)));
    loaded.deduct(a).unwrap();
    loaded.release(b).unwrap();
    let changes = loaded.take_events();
    store.save(&loaded, &changes, &Effects::new()).await.unwrap();

    let current = store.load(product.id(), &[a, b]).await.unwrap().unwrap();
    assert_eq!((current.stock(), current.reserved(), current.reservations().len()), (7, 0, 0));
    // A hold released in the same unit of work (a batch that reserves, then releases) leaves none.
    let c = OrderId::generate();
    let mut held_and_released = store.load(product.id(), &[c]).await.unwrap().unwrap();
    held_and_released.reserve(c, qty(2)).unwrap();
    held_and_released.release(c).unwrap();
    let changes = held_and_released.take_events();
    store.save(&held_and_released, &changes, &Effects::new()).await.unwrap();
    let current = store.load(product.id(), &[c]).await.unwrap().unwrap();
    assert_eq!((current.reserved(), current.reservations().len(), current.version()), (0, 0, 4));
    // No reservation row is left behind to be re-inserted: the deleted rows are really gone.
    let copied =
        db.execute("INSERT INTO reservations SELECT * FROM reservations WHERE product_id = $1", product.id()).await;
    assert_eq!(copied.unwrap(), 0);
}

async fn a_product_saved_at_a_stale_version_is_refused_and_writes_nothing<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let product = saved_product(store.as_ref(), 5).await;
    let (one, another) = (OrderId::generate(), OrderId::generate());
    let mut first = store.load(product.id(), &[one]).await.unwrap().unwrap();
    let mut second = store.load(product.id(), &[another]).await.unwrap().unwrap();
    first.reserve(one, qty(5)).unwrap();
    let changes = first.take_events();
    store.save(&first, &changes, &Effects::new()).await.unwrap();

    // Decided on stale stock: it would oversell, and must not land, nor its message.
    second.reserve(another, qty(5)).unwrap();
    let changes = second.take_events();
    let mut effects = Effects::new();
    effects.send(
        Causation::root("x", TraceParent::new_root())
            .envelope(&contracts::order::OrderShipped { order_id: Uuid::now_v7() }),
    );
    assert!(matches!(store.save(&second, &changes, &effects).await, Err(SaveError::Conflict)));
    let current = store.load(product.id(), &[]).await.unwrap().unwrap();
    assert_eq!((current.reserved(), current.available()), (5, 0));
    assert_eq!(db.outbox_rows().await, 0);
}

async fn the_database_itself_refuses_an_oversold_product<B: Backend>() {
    let db = B::new().await;
    let product = saved_product(db.products().as_ref(), 2).await;
    let oversell = db.execute("UPDATE products SET reserved = 3 WHERE id = $1", product.id()).await;
    assert!(oversell.is_err(), "CHECK (reserved <= stock) let an oversold product through");
}

async fn reservations_beyond_the_reserved_count_are_corrupt<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let order = OrderId::generate();
    let product = saved_product_reserved_for(store.as_ref(), 5, order, 3).await;
    db.execute("UPDATE products SET reserved = 1 WHERE id = $1", product.id()).await.unwrap();

    assert_eq!(store.load(product.id(), &[]).await.unwrap().unwrap().reserved(), 1, "nothing read to disagree");
    let corrupt = store.load(product.id(), &[order]).await.unwrap_err();
    assert!(matches!(&corrupt, LoadError::Corrupt { .. }), "{corrupt:?}");
    assert!(
        messaging::ErrorChain(&corrupt).to_string().contains("1 units reserved of 5 in stock, 3 read"),
        "{corrupt:?}"
    );
}

async fn the_database_itself_refuses_a_second_reservation_of_one_product_for_one_order<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let product = saved_product_reserved_for(store.as_ref(), 5, OrderId::generate(), 1).await;
    let twice =
        db.execute("INSERT INTO reservations SELECT * FROM reservations WHERE product_id = $1", product.id()).await;
    assert!(twice.is_err(), "PRIMARY KEY (product_id, order_id) let a second reservation through");
}

async fn products_are_listed_by_id_a_page_at_a_time<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let mut ids = Vec::new();
    for stock in [3, 1, 4, 1, 5] {
        ids.push(saved_product(store.as_ref(), stock).await.id());
    }
    let order = OrderId::generate();
    let mut reserved = store.load(ids[2], &[order]).await.unwrap().unwrap();
    reserved.reserve(order, qty(2)).unwrap();
    let changes = reserved.take_events();
    store.save(&reserved, &changes, &Effects::new()).await.unwrap();

    let page = store.list(None, 3).await.unwrap();
    assert_eq!(page.iter().map(|p| p.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!((page[2].stock, page[2].reserved, page[2].price.to_string()), (4, 2, "30.00".to_owned()));
    let rest = store.list(Some(ids[2]), 3).await.unwrap();
    assert_eq!(rest.iter().map(|p| p.id).collect::<Vec<_>>(), ids[3..]);
}

async fn effects_without_a_product_are_committed_alone<B: Backend>() {
    let db = B::new().await;
    let store = db.products();
    let refused = Uuid::now_v7();
    let mut effects = Effects::consuming("stock", refused);
    effects.send(
        Causation::root("x", TraceParent::new_root())
            .envelope(&contracts::order::OrderShipped { order_id: Uuid::now_v7() }),
    );
    store.commit(&effects).await.unwrap();
    assert_eq!(db.outbox_rows().await, 1);
    assert!(matches!(store.commit(&effects).await, Err(SaveError::AlreadyConsumed)));
    assert_eq!(db.outbox_rows().await, 1);
}

// --- sagas ----------------------------------------------------------------------------------------

async fn a_saga_round_trips_and_refuses_a_stale_save<B: Backend>() {
    let db = B::new().await;
    let store = db.sagas();
    let product = db.products().next_id().await.unwrap();
    let (mut saga, _) =
        ReservationSaga::start(OrderId::generate(), vec![(product, qty(2))], kernel::now(), Duration::from_secs(60));
    saga.timeout_scheduled(Uuid::now_v7());
    store.save(&saga, &Effects::new()).await.unwrap();
    saga.record_saved();
    assert_eq!(store.load(saga.order_id()).await.unwrap().unwrap(), saga);
    assert!(store.load(OrderId::generate()).await.unwrap().is_none());

    let mut first = saga.clone();
    first.on_stock_rejected(product, "not enough stock".into(), kernel::now()).unwrap();
    store.save(&first, &Effects::new()).await.unwrap();
    first.record_saved();
    let mut stale = saga.clone();
    stale.on_order_cancelled(kernel::now());
    assert!(matches!(store.save(&stale, &Effects::new()).await, Err(SaveError::Conflict)));
    assert_eq!(store.load(saga.order_id()).await.unwrap().unwrap(), first);
    // A second saga for the same order is a conflict too.
    let (twin, _) =
        ReservationSaga::start(saga.order_id(), vec![(product, qty(1))], kernel::now(), Duration::from_secs(60));
    assert!(matches!(store.save(&twin, &Effects::new()).await, Err(SaveError::Conflict)));
}

async fn a_saga_row_that_does_not_restore_is_corrupt<B: Backend>() {
    let db = B::new().await;
    let store = db.sagas();
    let product = db.products().next_id().await.unwrap();
    let (saga, _) =
        ReservationSaga::start(OrderId::generate(), vec![(product, qty(2))], kernel::now(), Duration::from_secs(60));
    store.save(&saga, &Effects::new()).await.unwrap();
    db.overwrite_saga_lines(saga.order_id(), r#"[{"productId": 0, "quantity": 1, "status": "reserved"}]"#).await;
    let corrupt = store.load(saga.order_id()).await.unwrap_err();
    let expected = format!("saga of order {}", saga.order_id());
    assert!(matches!(&corrupt, LoadError::Corrupt { what, .. } if *what == expected), "{corrupt:?}");
    assert!(messaging::ErrorChain(&corrupt).to_string().contains("a product id is a positive integer (got 0)"));
}

#[tokio::test]
async fn a_name_stored_before_names_were_one_line_still_restores() {
    let db = TestDatabase::empty().await;
    let all = migrator();
    let before = sqlx::migrate::Migrator::with_migrations(
        all.migrations.iter().filter(|migration| migration.version < 101).cloned().collect(),
    );
    before.run(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO products (id, name, price, stock, version) VALUES (1, $1, 2, 5, 1), (2, $2, 2, 5, 1)")
        .bind("Two\nline\tname")
        .bind("\u{7}")
        .execute(&db.pool)
        .await
        .unwrap();
    all.run(&db.pool).await.unwrap();

    let store = PgProductStore::new(db.pool.clone());
    let load = async |id| store.load(ProductId::new(id).unwrap(), &[]).await.unwrap().unwrap();
    assert_eq!(load(1).await.name().as_str(), "Two line name");
    assert_eq!(load(2).await.name().as_str(), "?");
}
