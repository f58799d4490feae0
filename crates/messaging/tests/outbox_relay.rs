//! The outbox, inbox, scheduled messages and relay against the real PostgreSQL, each test in its
//! own database, publishing to the in-memory transport.

use chrono::{Duration as ChronoDuration, Utc};
use contracts::order::OrderShipped;
use futures::StreamExt;
use messaging::postgres::{Relay, RelayConfig, commit};
use messaging::testing::TestDatabase;
use messaging::transport::memory::MemoryTransport;
use messaging::transport::{Deliveries, QueueSpec};
use messaging::{Causation, Effects, Envelope, SaveError, TraceParent, Transport};
use sqlx::migrate::Migrator;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A stand-in aggregate table, so that the tests commit state beside the outbox rows.
static MIGRATOR: Migrator = Migrator::DEFAULT;

async fn database() -> TestDatabase {
    let db = TestDatabase::new(&MIGRATOR).await;
    sqlx::query("CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL)").execute(&db.pool).await.unwrap();
    db
}

fn message() -> Envelope {
    Causation::root("order-1", TraceParent::new_root()).envelope(&OrderShipped { order_id: Uuid::now_v7() })
}

async fn subscribe(transport: &MemoryTransport) -> Deliveries {
    let spec = QueueSpec { name: "observer".into(), message_types: vec!["order.shipped.v1".into()], prefetch: 1000 };
    transport.consume(&spec).await.unwrap()
}

async fn outbox_count(db: &TestDatabase, condition: &'static str) -> i64 {
    let sql = format!("SELECT count(*) FROM outbox WHERE {condition}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&db.pool).await.unwrap()
}

async fn set_counter(db: &TestDatabase, effects: &Effects<'_>, value: i32) -> Result<(), SaveError> {
    commit(&db.pool, effects, async |tx| {
        sqlx::query("INSERT INTO counters VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET value = $1")
            .bind(value)
            .execute(tx)
            .await
            .map_err(messaging::postgres::save_error)?;
        Ok(())
    })
    .await
}

fn relay(db: &TestDatabase, transport: &MemoryTransport, batch_size: i64) -> Relay {
    let config = RelayConfig { batch_size, sweep_interval: Duration::from_millis(200), ..RelayConfig::default() };
    Relay::new("test", db.pool.clone(), Arc::new(transport.clone()), config)
}

#[tokio::test]
async fn outbox_rows_commit_with_the_state() {
    let db = database().await;
    let mut effects = Effects::new();
    effects.send(message()).send(message());
    set_counter(&db, &effects, 7).await.unwrap();
    assert_eq!(outbox_count(&db, "sent_at IS NULL").await, 2);
    let value: i32 = sqlx::query_scalar("SELECT value FROM counters").fetch_one(&db.pool).await.unwrap();
    assert_eq!(value, 7);
}

#[tokio::test]
async fn outbox_rows_roll_back_with_the_state() {
    let db = database().await;
    let mut effects = Effects::new();
    effects.send(message());
    let failed = commit(&db.pool, &effects, async |tx| {
        sqlx::query("INSERT INTO counters VALUES (1, 1)").execute(&mut *tx).await.unwrap();
        Err(SaveError::Conflict)
    })
    .await;
    assert!(matches!(failed, Err(SaveError::Conflict)));
    assert_eq!(outbox_count(&db, "true").await, 0);
    let counters: i64 = sqlx::query_scalar("SELECT count(*) FROM counters").fetch_one(&db.pool).await.unwrap();
    assert_eq!(counters, 0);
}

#[tokio::test]
async fn a_consumed_message_is_applied_once() {
    let db = database().await;
    let message_id = Uuid::now_v7();
    let mut first = Effects::consuming("counter", message_id);
    first.send(message());
    set_counter(&db, &first, 1).await.unwrap();

    let mut copy = Effects::consuming("counter", message_id);
    copy.send(message());
    assert!(matches!(set_counter(&db, &copy, 2).await, Err(SaveError::AlreadyConsumed)));
    let value: i32 = sqlx::query_scalar("SELECT value FROM counters").fetch_one(&db.pool).await.unwrap();
    assert_eq!(value, 1, "the copy changed the state");
    assert_eq!(outbox_count(&db, "true").await, 1, "the copy wrote messages");

    // Another consumer may apply the same message on its own account.
    set_counter(&db, &Effects::consuming("other", message_id), 3).await.unwrap();
}

#[tokio::test]
async fn two_relays_publish_every_committed_message_exactly_once() {
    let db = database().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let shutdown = CancellationToken::new();
    let relays: Vec<_> = (0..2).map(|_| tokio::spawn(relay(&db, &transport, 7).run(shutdown.clone()))).collect();

    // Writers commit while both relays run.
    let mut expected = HashSet::new();
    let mut writers = Vec::new();
    for _ in 0..8 {
        let batch: Vec<Envelope> = (0..25).map(|_| message()).collect();
        expected.extend(batch.iter().map(|m| m.message_id));
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            for chunk in batch.chunks(5) {
                let mut effects = Effects::new();
                for envelope in chunk {
                    effects.send(envelope.clone());
                }
                commit(&pool, &effects, async |_| Ok(())).await.unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let mut seen = HashSet::new();
    while seen.len() < expected.len() {
        let delivery =
            tokio::time::timeout(Duration::from_secs(10), observed.next()).await.expect("relays stalled").unwrap();
        let id = delivery.message.as_ref().unwrap().message_id;
        assert!(seen.insert(id), "message {id} was published twice");
        delivery.ack().await.unwrap();
    }
    assert_eq!(seen, expected);
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), observed.next()).await.is_err(), "extra publish");
    assert_eq!(outbox_count(&db, "sent_at IS NULL").await, 0);
}

#[tokio::test]
async fn a_failed_publish_is_retried_and_marks_nothing_sent() {
    let db = database().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let mut effects = Effects::new();
    effects.send(message());
    commit(&db.pool, &effects, async |_| Ok(())).await.unwrap();

    transport.fail_next_publishes(1);
    let relay = relay(&db, &transport, 10);
    assert!(relay.publish_batch().await.is_err());
    assert_eq!(outbox_count(&db, "sent_at IS NULL").await, 1);
    assert_eq!(relay.publish_batch().await.unwrap(), 1);
    assert_eq!(outbox_count(&db, "sent_at IS NULL").await, 0);
    assert!(observed.next().await.is_some());
}

#[tokio::test]
async fn a_scheduled_message_waits_for_its_time_and_a_cancelled_one_never_goes() {
    let db = database().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let (due_soon, cancelled) = (message(), message());
    let mut effects = Effects::new();
    let at = Utc::now() + ChronoDuration::milliseconds(600);
    effects.schedule(due_soon.clone(), at).schedule(cancelled.clone(), at);
    commit(&db.pool, &effects, async |_| Ok(())).await.unwrap();
    let mut withdraw = Effects::new();
    withdraw.cancel_scheduled(cancelled.message_id);
    commit(&db.pool, &withdraw, async |_| Ok(())).await.unwrap();

    let relay = relay(&db, &transport, 10);
    assert_eq!(relay.publish_batch().await.unwrap(), 0, "published before its time");

    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let delivery = tokio::time::timeout(Duration::from_secs(5), observed.next()).await.unwrap().unwrap();
    assert!(Utc::now() >= at, "delivered early");
    assert_eq!(delivery.message.as_ref().unwrap().message_id, due_soon.message_id);
    delivery.ack().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(800), observed.next()).await.is_err(), "cancelled message sent");
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn the_relay_is_woken_at_commit_not_by_its_sweep() {
    let db = database().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let config = RelayConfig { sweep_interval: Duration::from_secs(3600), ..RelayConfig::default() };
    let shutdown = CancellationToken::new();
    let running =
        tokio::spawn(Relay::new("test", db.pool.clone(), Arc::new(transport.clone()), config).run(shutdown.clone()));
    // Each commit after the first finds the relay listening with an hour left before its sweep.
    for _ in 0..3 {
        let mut effects = Effects::new();
        effects.send(message());
        commit(&db.pool, &effects, async |_| Ok(())).await.unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(5), observed.next()).await;
        assert!(delivered.is_ok(), "the relay did not react to the commit");
    }
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test]
async fn instances_starting_together_all_get_the_database() {
    // Regression: the loser of a CREATE DATABASE race got a unique-violation error and exited.
    let name = format!("test_{}", Uuid::now_v7().simple());
    let url = format!("{}/{name}", messaging::testing::server_url());
    let creations = (0..6).map(|_| messaging::postgres::create_database_if_missing(&url));
    for outcome in futures::future::join_all(creations).await {
        outcome.expect("every instance sees the database");
    }
    let admin_url = format!("{}/postgres", messaging::testing::server_url());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\" WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_with_one_message_already_applied_applies_nothing() {
    let db = database().await;
    let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
    set_counter(&db, &Effects::consuming("counter", old), 1).await.unwrap();

    let mut batch = Effects::new();
    batch.consume("counter", new).consume("counter", old).send(message());
    assert!(matches!(set_counter(&db, &batch, 2).await, Err(SaveError::AlreadyConsumed)));
    let value: i32 = sqlx::query_scalar("SELECT value FROM counters").fetch_one(&db.pool).await.unwrap();
    assert_eq!(value, 1);
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(&db.pool).await.unwrap();
    assert_eq!(recorded, 1, "the new message of the failed batch was recorded");

    let mut fresh = Effects::new();
    fresh.consume("counter", new).consume("counter", Uuid::now_v7());
    set_counter(&db, &fresh, 3).await.unwrap();
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(&db.pool).await.unwrap();
    assert_eq!(recorded, 3);
}
