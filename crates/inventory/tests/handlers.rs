//! The stock handler and the saga handler against the real PostgreSQL, one message at a time
//! and in batches.

use contracts::inventory::{ReleaseStock, ReserveStock, StockReserved};
use contracts::order::{CancelledFrom, OrderCancelled, OrderPlaced, OrderPlacedItem, OrderShipped};
use inventory::application::{
    NewProduct, ProductService, ProductStore, ReservationSagaHandler, SagaState, SagaStore, StockCommand, StockHandler,
};
use inventory::domain::{Money, OrderId, ProductId, ProductName, Quantity};
use inventory::infrastructure::{PgProductStore, PgSagaStore, migrator};
use messaging::testing::TestDatabase;
use messaging::{Causation, Envelope, ErrorChain, Handler, HandlerError, Inbound, Received, TraceParent};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

struct Inventory {
    db: TestDatabase,
    products: Arc<PgProductStore>,
    sagas: Arc<PgSagaStore>,
}

async fn inventory() -> Inventory {
    let db = TestDatabase::empty().await;
    migrator().run(&db.pool).await.unwrap();
    Inventory {
        products: Arc::new(PgProductStore::new(db.pool.clone())),
        sagas: Arc::new(PgSagaStore::new(db.pool.clone())),
        db,
    }
}

impl Inventory {
    async fn product(&self, stock: u32) -> ProductId {
        let service = ProductService::new(self.products.clone(), self.sagas.clone());
        let new = NewProduct {
            name: ProductName::new("Kettle").unwrap(),
            description: None,
            price: Money::new(Decimal::new(1990, 2)).unwrap(),
            stock,
        };
        service.create(new, TraceParent::new_root()).await.unwrap().id()
    }

    async fn reserved(&self, product: ProductId) -> u32 {
        self.products.load(product, &[]).await.unwrap().unwrap().reserved()
    }
}

fn reserve(order: Uuid, product: ProductId, quantity: u32) -> Envelope {
    let command = ReserveStock { order_id: order, product_id: product.get(), quantity };
    Causation::root(order.to_string(), TraceParent::new_root()).envelope(&command)
}

/// The order service's news that `order` was placed with `items` (product, quantity).
fn placed(order: Uuid, items: &[(ProductId, u32)]) -> OrderPlaced {
    OrderPlaced {
        order_id: order,
        customer_id: Uuid::now_v7(),
        total_amount: Decimal::new(100, 0),
        items: items
            .iter()
            .map(|&(product, quantity)| OrderPlacedItem { product_id: product.get(), quantity })
            .collect(),
    }
}

/// A message as the consumer runtime hands it to a handler.
fn received<M: Inbound>(envelope: &Envelope) -> Received<M> {
    Received::decode(envelope.clone()).expect("a message the handler reads")
}

fn received_all<M: Inbound>(envelopes: &[Envelope]) -> Vec<Received<M>> {
    envelopes.iter().map(received).collect()
}

#[tokio::test]
async fn a_batch_with_a_message_applied_before_is_refused_whole_and_then_applied_one_by_one() {
    let inventory = inventory().await;
    let product = inventory.product(10).await;
    let handler = StockHandler::new(inventory.products.clone());
    let (first, second) = (reserve(Uuid::now_v7(), product, 2), reserve(Uuid::now_v7(), product, 3));
    handler.handle(&received(&first)).await.unwrap();
    assert_eq!(inventory.reserved(product).await, 2);

    // Regression: "already consumed" once meant success for the whole batch, which lost the
    // messages that had not been applied yet.
    let batch = received_all(&[first.clone(), second.clone()]);
    let outcome =
        handler.handle_many(&batch.iter().collect::<Vec<_>>()).await.expect("the stock handler takes batches");
    assert!(outcome.is_err(), "a partly applied batch must not count as handled");
    assert_eq!(inventory.reserved(product).await, 2, "nothing of the refused batch was committed");

    // One by one, as the runtime then does: the copy is skipped, the new one applied.
    handler.handle(&received(&first)).await.unwrap();
    handler.handle(&received(&second)).await.unwrap();
    assert_eq!(inventory.reserved(product).await, 5);
}

#[tokio::test]
async fn a_batch_of_reservations_on_one_product_is_one_commit_with_every_answer() {
    let inventory = inventory().await;
    let product = inventory.product(4).await;
    let handler = StockHandler::new(inventory.products.clone());
    let batch: Vec<Envelope> = (0..3).map(|_| reserve(Uuid::now_v7(), product, 2)).collect();
    let batch = received_all(&batch);
    handler.handle_many(&batch.iter().collect::<Vec<_>>()).await.unwrap().unwrap();
    assert_eq!(inventory.reserved(product).await, 4, "two fit, the third is refused");
    let answers: Vec<String> =
        sqlx::query_scalar("SELECT message_type FROM outbox WHERE message_type LIKE 'inventory.stock-%' ORDER BY seq")
            .fetch_all(&inventory.db.pool)
            .await
            .unwrap();
    assert_eq!(
        answers,
        ["inventory.stock-reserved.v1", "inventory.stock-reserved.v1", "inventory.stock-reservation-rejected.v1"]
    );
    let version: i64 = sqlx::query_scalar("SELECT version FROM products").fetch_one(&inventory.db.pool).await.unwrap();
    assert_eq!(version, 2, "one save for the whole batch");
    let consumed: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(&inventory.db.pool).await.unwrap();
    assert_eq!(consumed, 3);
}

#[tokio::test]
async fn a_reservation_starts_from_the_product_as_saved_here_and_trusts_only_what_its_save_checks() {
    let inventory = inventory().await;
    let product = inventory.product(10).await;
    let handler = StockHandler::new(inventory.products.clone());
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let answers = || async {
        let sent: Vec<String> = sqlx::query_scalar(
            "SELECT message_type FROM outbox WHERE message_type LIKE 'inventory.stock-%' ORDER BY seq",
        )
        .fetch_all(&inventory.db.pool)
        .await
        .unwrap();
        sent
    };
    handler.handle(&received(&reserve(first, product, 2))).await.unwrap();

    // Restocked on another instance: what the handler remembers of the product is out of date.
    // From memory, 12 do not fit; a refusal proves nothing, and from the load they do.
    let service = ProductService::new(inventory.products.clone(), inventory.sagas.clone());
    let restock = |units| service.restock(product, Quantity::new(units).unwrap(), TraceParent::new_root());
    restock(5).await.unwrap();
    handler.handle(&received(&reserve(second, product, 12))).await.unwrap();
    let stored = inventory.products.load(product, &[]).await.unwrap().unwrap();
    assert_eq!((stored.stock(), stored.reserved(), stored.version()), (15, 14, 4));
    // Out of date again: from memory the reservation fits, but its save is at an old version.
    restock(1).await.unwrap();
    handler.handle(&received(&reserve(Uuid::now_v7(), product, 1))).await.unwrap();
    let stored = inventory.products.load(product, &[]).await.unwrap().unwrap();
    assert_eq!((stored.stock(), stored.reserved(), stored.version()), (16, 15, 6));

    // The first order asks again in another message: remembered, the product holds nothing for
    // it, but the save of that reservation fails, and the load finds what it holds.
    handler.handle(&received(&reserve(first, product, 1))).await.unwrap();
    assert_eq!(inventory.reserved(product).await, 15, "reserved twice for one order");
    assert_eq!(answers().await, ["inventory.stock-reserved.v1"; 4]);
}

#[tokio::test]
async fn the_answers_for_an_order_complete_its_saga_in_one_batch() {
    let inventory = inventory().await;
    let (p1, p2) = (inventory.product(5).await, inventory.product(5).await);
    let handler = ReservationSagaHandler::new(inventory.sagas.clone(), Duration::from_secs(600));
    let order = Uuid::now_v7();
    let causation = Causation::root(order.to_string(), TraceParent::new_root());
    handler.handle(&received(&causation.envelope(&placed(order, &[(p1, 1), (p2, 2)])))).await.unwrap();
    let answers = [
        causation.envelope(&StockReserved { order_id: order, product_id: p1.get(), quantity: 1 }),
        causation.envelope(&StockReserved { order_id: order, product_id: p2.get(), quantity: 2 }),
    ];
    let answers = received_all(&answers);
    handler.handle_many(&answers.iter().collect::<Vec<_>>()).await.unwrap().unwrap();
    let saga = inventory.sagas.load(OrderId::from_uuid(order)).await.unwrap().unwrap();
    assert_eq!(saga.state(), SagaState::Reserved);
    assert_eq!(saga.version(), 2, "started, then one save for both answers");
    let completed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE message_type = 'inventory.stock-reservation-completed.v1'",
    )
    .fetch_one(&inventory.db.pool)
    .await
    .unwrap();
    assert_eq!(completed, 1);
    let timeouts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE message_type = 'inventory.reservation-timed-out.v1'")
            .fetch_one(&inventory.db.pool)
            .await
            .unwrap();
    assert_eq!(timeouts, 0, "the completed saga withdrew its timeout");
}

#[tokio::test]
async fn an_answer_starts_from_the_saga_as_saved_here_and_stands_only_if_it_commits() {
    let inventory = inventory().await;
    let (p1, p2) = (inventory.product(5).await, inventory.product(5).await);
    let here = ReservationSagaHandler::new(inventory.sagas.clone(), Duration::from_secs(600));
    let elsewhere = ReservationSagaHandler::new(inventory.sagas.clone(), Duration::from_secs(600));
    let order = Uuid::now_v7();
    let causation = Causation::root(order.to_string(), TraceParent::new_root());
    let answer = |product: ProductId| {
        received(&causation.envelope(&StockReserved { order_id: order, product_id: product.get(), quantity: 1 }))
    };
    here.handle(&received(&causation.envelope(&placed(order, &[(p1, 1), (p2, 1)])))).await.unwrap();

    // The first answer is applied on another instance: what this one remembers is out of date.
    elsewhere.handle(&answer(p1)).await.unwrap();
    here.handle(&answer(p2)).await.unwrap();
    let saga = inventory.sagas.load(OrderId::from_uuid(order)).await.unwrap().unwrap();
    assert_eq!((saga.state(), saga.version()), (SagaState::Reserved, 3), "both answers count");
}

#[tokio::test]
async fn a_placement_that_finds_its_saga_started_or_cancelled_changes_nothing() {
    let inventory = inventory().await;
    let product = inventory.product(5).await;
    let handler = ReservationSagaHandler::new(inventory.sagas.clone(), Duration::from_secs(600));
    let reservations = || async {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE message_type = 'inventory.reserve-stock.v1'")
                .fetch_one(&inventory.db.pool)
                .await
                .unwrap();
        sent
    };

    // Placed twice (two messages, as if the order service had placed it again).
    let order = Uuid::now_v7();
    let causation = Causation::root(order.to_string(), TraceParent::new_root());
    for _ in 0..2 {
        handler.handle(&received(&causation.envelope(&placed(order, &[(product, 1)])))).await.unwrap();
    }
    let saga = inventory.sagas.load(OrderId::from_uuid(order)).await.unwrap().unwrap();
    assert_eq!((saga.state(), saga.version()), (SagaState::Reserving, 1));
    assert_eq!(reservations().await, 1, "one reservation asked for");

    // Cancelled before its placement arrived.
    let order = Uuid::now_v7();
    let causation = Causation::root(order.to_string(), TraceParent::new_root());
    let cancelled =
        OrderCancelled { order_id: order, reason: "changed my mind".into(), cancelled_from: CancelledFrom::Placed };
    handler.handle(&received(&causation.envelope(&cancelled))).await.unwrap();
    handler.handle(&received(&causation.envelope(&placed(order, &[(product, 1)])))).await.unwrap();
    let saga = inventory.sagas.load(OrderId::from_uuid(order)).await.unwrap().unwrap();
    assert_eq!((saga.state(), saga.version()), (SagaState::Failed, 1), "cancelled before it started");
    assert_eq!(reservations().await, 1, "a cancelled order asked for stock");
}

#[tokio::test]
async fn a_saga_row_that_does_not_restore_fails_its_message_for_good() {
    let inventory = inventory().await;
    let product = inventory.product(5).await;
    let handler = ReservationSagaHandler::new(inventory.sagas.clone(), Duration::from_secs(600));
    let order = Uuid::now_v7();
    let causation = Causation::root(order.to_string(), TraceParent::new_root());
    handler.handle(&received(&causation.envelope(&placed(order, &[(product, 1)])))).await.unwrap();
    sqlx::query("UPDATE reservation_sagas SET lines = '{\"not\": \"a list\"}' WHERE order_id = $1")
        .bind(order)
        .execute(&inventory.db.pool)
        .await
        .unwrap();

    let failed = handler.handle(&received(&causation.envelope(&OrderShipped { order_id: order }))).await.unwrap_err();
    let HandlerError::Permanent(cause) = &failed else { panic!("corrupt data retried as if transient: {failed:?}") };
    let reason = ErrorChain(cause.as_ref()).to_string();
    assert!(reason.starts_with(&format!("stored saga of order {order} cannot be read back: ")), "{reason}");
}

#[tokio::test]
async fn the_ordering_key_of_a_stock_command_is_the_product_of_the_decoded_message() {
    // The key needs no database: a pool that never connects will do.
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    let handler = StockHandler::new(Arc::new(PgProductStore::new(pool)));
    let key = |message: &Received<StockCommand>| handler.ordering_key(message);
    let (seven, eight) = (ProductId::new(7).unwrap(), ProductId::new(8).unwrap());

    let reserve_seven = received(&reserve(Uuid::now_v7(), seven, 1));
    let other_order = Uuid::now_v7();
    let release_seven = received(
        &Causation::root(other_order.to_string(), TraceParent::new_root())
            .envelope(&ReleaseStock { order_id: other_order, product_id: 7 }),
    );
    assert_eq!(key(&reserve_seven), key(&release_seven), "one product's commands share a lane, whatever the order");
    assert_ne!(key(&reserve_seven), key(&received(&reserve(Uuid::now_v7(), eight, 1))));

    // Read from the typed message, not from the raw JSON beside it.
    let mut raw_says_eight = reserve_seven.clone();
    raw_says_eight.envelope.payload["productId"] = 8.into();
    assert_eq!(key(&raw_says_eight), key(&reserve_seven));
}
