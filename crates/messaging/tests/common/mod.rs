//! Shared pieces of the messaging integration tests: a handler whose effect is a counter in
//! PostgreSQL (guarded by the inbox), a fresh database for it, and both databases behind one
//! interface (`stores`).
#![allow(dead_code)]

pub mod stores;

use async_trait::async_trait;
use contracts::order::OrderShipped;
use messaging::postgres::{GroupCommit, save_error};
use messaging::testing::TestDatabase;
use messaging::{Causation, Effects, Envelope, Handler, HandlerError, Received, SaveError, TraceParent};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

static NO_SERVICE_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// A database with the messaging tables and a `counters` table.
pub async fn database() -> TestDatabase {
    let db = TestDatabase::new(&NO_SERVICE_MIGRATIONS).await;
    sqlx::query("CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL)").execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO counters VALUES (1, 0)").execute(&db.pool).await.unwrap();
    db
}

pub fn shipped(order_id: Uuid) -> Envelope {
    Causation::root(order_id.to_string(), TraceParent::new_root()).envelope(&OrderShipped { order_id })
}

messaging::inbound! {
    /// What the test handlers read.
    pub enum Shipping {
        Shipped(OrderShipped),
    }
}

/// The id that [`Counter`] refuses as a broken business rule.
pub const POISON: Uuid = Uuid::nil();

/// Adds one to the counter per `order.shipped.v1`, once per message id, committing through its
/// group commit (as a service's handlers commit through their stores').
pub struct Counter {
    pub db: GroupCommit,
}

impl Counter {
    /// The counter of the database behind `pool`.
    pub fn new(pool: &PgPool) -> Self {
        Self { db: GroupCommit::from(pool.clone()) }
    }
}

#[async_trait]
impl Handler for Counter {
    type Message = Shipping;

    fn name(&self) -> &'static str {
        "counter"
    }

    async fn handle(&self, message: &Received<Shipping>) -> Result<(), HandlerError> {
        let Shipping::Shipped(shipped) = &message.message;
        if shipped.order_id == POISON {
            return Err(HandlerError::permanent("order id is nil"));
        }
        let effects = Effects::consuming(self.name(), message.envelope.message_id);
        let outcome = self
            .db
            .commit(&effects, async |tx| {
                sqlx::query("UPDATE counters SET value = value + 1 WHERE id = 1")
                    .execute(tx)
                    .await
                    .map_err(save_error)?;
                Ok(())
            })
            .await;
        match outcome {
            Ok(()) | Err(SaveError::AlreadyConsumed) => Ok(()),
            Err(error) => Err(HandlerError::transient(error)),
        }
    }
}

pub async fn counter(pool: &PgPool) -> i32 {
    sqlx::query_scalar("SELECT value FROM counters WHERE id = 1").fetch_one(pool).await.unwrap()
}
