//! The inventory service's PostgreSQL stores against the real database.

use inventory::application::{ProductStore, ReservationSaga, SagaStore};
use inventory::domain::{Money, OrderId, Product, ProductDescription, ProductName, Quantity};
use inventory::infrastructure::{PgProductStore, PgSagaStore, migrator};
use messaging::testing::TestDatabase;
use messaging::{Effects, SaveError};
use rust_decimal::Decimal;
use std::time::Duration;

async fn database() -> TestDatabase {
    let db = TestDatabase::empty().await;
    migrator().run(&db.pool).await.unwrap();
    db
}

async fn saved_product(store: &PgProductStore, stock: u32) -> Product {
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
    store.load(id).await.unwrap().unwrap()
}

fn qty(units: i64) -> Quantity {
    Quantity::new(units).unwrap()
}

#[tokio::test]
async fn reservations_are_stored_as_rows_that_add_up_to_the_reserved_count() {
    let db = database().await;
    let store = PgProductStore::new(db.pool.clone());
    let mut product = saved_product(&store, 10).await;
    let (a, b) = (OrderId::generate(), OrderId::generate());
    product.reserve(a, qty(3)).unwrap();
    product.reserve(b, qty(4)).unwrap();
    let changes = product.take_events();
    store.save(&product, &changes, &Effects::new()).await.unwrap();

    let mut loaded = store.load(product.id()).await.unwrap().unwrap();
    assert_eq!((loaded.stock(), loaded.reserved(), loaded.reservation_of(a)), (10, 7, Some(qty(3))));
    loaded.deduct(a).unwrap();
    loaded.release(b);
    let changes = loaded.take_events();
    store.save(&loaded, &changes, &Effects::new()).await.unwrap();

    let (rows, reserved, stock): (i64, i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM reservations), reserved, stock FROM products WHERE id = $1")
            .bind(product.id().get())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((rows, reserved, stock), (0, 0, 7));
}

#[tokio::test]
async fn a_product_saved_at_a_stale_version_is_refused_and_writes_nothing() {
    let db = database().await;
    let store = PgProductStore::new(db.pool.clone());
    let product = saved_product(&store, 5).await;
    let mut first = store.load(product.id()).await.unwrap().unwrap();
    let mut second = store.load(product.id()).await.unwrap().unwrap();
    first.reserve(OrderId::generate(), qty(5)).unwrap();
    let changes = first.take_events();
    store.save(&first, &changes, &Effects::new()).await.unwrap();

    // Decided on stale stock: it would oversell, and must not land.
    second.reserve(OrderId::generate(), qty(5)).unwrap();
    let changes = second.take_events();
    assert!(matches!(store.save(&second, &changes, &Effects::new()).await, Err(SaveError::Conflict)));
    let current = store.load(product.id()).await.unwrap().unwrap();
    assert_eq!((current.reserved(), current.reservations().len()), (5, 1));
}

#[tokio::test]
async fn the_database_itself_refuses_an_oversold_product() {
    let db = database().await;
    let store = PgProductStore::new(db.pool.clone());
    let product = saved_product(&store, 2).await;
    let oversell =
        sqlx::query("UPDATE products SET reserved = 3 WHERE id = $1").bind(product.id().get()).execute(&db.pool).await;
    assert!(oversell.is_err(), "CHECK (reserved <= stock) let an oversold product through");
}

#[tokio::test]
async fn a_saga_round_trips_and_refuses_a_stale_save() {
    let db = database().await;
    let store = PgSagaStore::new(db.pool.clone());
    let product = PgProductStore::new(db.pool.clone()).next_id().await.unwrap();
    let (mut saga, _) =
        ReservationSaga::start(OrderId::generate(), vec![(product, qty(2))], kernel::now(), Duration::from_secs(60));
    store.save(&saga, &Effects::new()).await.unwrap();
    saga.record_saved();
    assert_eq!(store.load(saga.order_id()).await.unwrap().unwrap(), saga);

    let mut first = saga.clone();
    first.on_stock_reserved(product, kernel::now()).unwrap();
    store.save(&first, &Effects::new()).await.unwrap();
    let mut stale = saga.clone();
    stale.on_order_cancelled(kernel::now());
    assert!(matches!(store.save(&stale, &Effects::new()).await, Err(SaveError::Conflict)));
    assert_eq!(store.load(saga.order_id()).await.unwrap().unwrap().state(), first.state());
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
    let load = async |id| store.load(inventory::domain::ProductId::new(id).unwrap()).await.unwrap().unwrap();
    assert_eq!(load(1).await.name().as_str(), "Two line name");
    assert_eq!(load(2).await.name().as_str(), "?");
}
