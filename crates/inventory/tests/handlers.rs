//! The stock handler and the saga handler against the real PostgreSQL, one message at a time
//! and in batches.

use contracts::inventory::{ReserveStock, StockReserved};
use contracts::order::{OrderPlaced, OrderPlacedItem};
use inventory::application::{
    NewProduct, ProductService, ProductStore, ReservationSagaHandler, SagaState, SagaStore, StockHandler,
};
use inventory::domain::{Money, OrderId, ProductId, ProductName};
use inventory::infrastructure::{PgProductStore, PgSagaStore, migrator};
use messaging::testing::TestDatabase;
use messaging::{Causation, Envelope, Handler, TraceParent};
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
            description: String::new(),
            price: Money::new(Decimal::new(1990, 2)).unwrap(),
            stock,
        };
        service.create(new, TraceParent::new_root()).await.unwrap().id()
    }

    async fn reserved(&self, product: ProductId) -> u32 {
        self.products.load(product).await.unwrap().unwrap().reserved()
    }
}

fn reserve(order: Uuid, product: ProductId, quantity: u32) -> Envelope {
    let command = ReserveStock { order_id: order, product_id: product.get(), quantity };
    Causation::root(order.to_string(), TraceParent::new_root()).envelope(&command)
}

#[tokio::test]
async fn a_batch_with_a_message_applied_before_is_refused_whole_and_then_applied_one_by_one() {
    let inventory = inventory().await;
    let product = inventory.product(10).await;
    let handler = StockHandler::new(inventory.products.clone());
    let (first, second) = (reserve(Uuid::now_v7(), product, 2), reserve(Uuid::now_v7(), product, 3));
    handler.handle(&first).await.unwrap();
    assert_eq!(inventory.reserved(product).await, 2);

    // Regression: "already consumed" once meant success for the whole batch, which lost the
    // messages that had not been applied yet.
    let batch = [first.clone(), second.clone()];
    let outcome = handler.handle_many(&batch).await.expect("the stock handler takes batches");
    assert!(outcome.is_err(), "a partly applied batch must not count as handled");
    assert_eq!(inventory.reserved(product).await, 2, "nothing of the refused batch was committed");

    // One by one, as the runtime then does: the copy is skipped, the new one applied.
    handler.handle(&first).await.unwrap();
    handler.handle(&second).await.unwrap();
    assert_eq!(inventory.reserved(product).await, 5);
}

#[tokio::test]
async fn a_batch_of_reservations_on_one_product_is_one_commit_with_every_answer() {
    let inventory = inventory().await;
    let product = inventory.product(4).await;
    let handler = StockHandler::new(inventory.products.clone());
    let batch: Vec<Envelope> = (0..3).map(|_| reserve(Uuid::now_v7(), product, 2)).collect();
    handler.handle_many(&batch).await.unwrap().unwrap();
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
async fn the_answers_for_an_order_complete_its_saga_in_one_batch() {
    let inventory = inventory().await;
    let (p1, p2) = (inventory.product(5).await, inventory.product(5).await);
    let handler = ReservationSagaHandler::new(inventory.sagas.clone(), Duration::from_secs(600));
    let order = Uuid::now_v7();
    let causation = Causation::root(order.to_string(), TraceParent::new_root());
    let placed = OrderPlaced {
        order_id: order,
        customer_id: Uuid::now_v7(),
        total_amount: Decimal::new(100, 0),
        items: vec![
            OrderPlacedItem { product_id: p1.get(), quantity: 1 },
            OrderPlacedItem { product_id: p2.get(), quantity: 2 },
        ],
    };
    handler.handle(&causation.envelope(&placed)).await.unwrap();
    let answers = [
        causation.envelope(&StockReserved { order_id: order, product_id: p1.get(), quantity: 1 }),
        causation.envelope(&StockReserved { order_id: order, product_id: p2.get(), quantity: 2 }),
    ];
    handler.handle_many(&answers).await.unwrap().unwrap();
    let saga = inventory.sagas.load(OrderId::from_uuid(order)).await.unwrap().unwrap();
    assert_eq!(saga.state, SagaState::Reserved);
    assert_eq!(saga.version, 2, "started, then one save for both answers");
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
