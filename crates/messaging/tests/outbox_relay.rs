//! The contracts of the messaging tables, written once and run against PostgreSQL and SQLite
//! (each test on a database of its own), publishing to the in-memory transport: the outbox
//! commits and rolls back with the state, the relay publishes every committed message exactly
//! once and gives up a batch at its deadline, the inbox applies each message once, scheduled
//! messages wait for their time, and the backlog operators see counts what waits.

mod common;

use chrono::{Duration as ChronoDuration, Utc};
use common::stores::{Postgres, Sqlite, Store};
use contracts::order::OrderShipped;
use futures::StreamExt;
use messaging::relay::RelayError;
use messaging::relay::{Relay, RelayConfig};
use messaging::transport::memory::MemoryTransport;
use messaging::transport::{Deliveries, QueueSpec, TransportError};
use messaging::{Causation, Effects, Envelope, SaveError, TraceParent, Transport};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// Each test once per database: `postgres::<test>` and `sqlite::<test>`.
messaging::contract_tests!(
    [
        outbox_rows_commit_with_the_state,
        outbox_rows_roll_back_with_the_state,
        two_relays_publish_every_committed_message_exactly_once,
        a_failed_publish_is_retried_and_marks_nothing_sent,
        the_relay_is_woken_at_commit_not_by_its_sweep,
        sent_rows_and_old_inbox_records_are_cleaned_up,
        a_batch_past_its_deadline_is_abandoned_and_its_rows_stay_unsent,
        the_backlog_counts_due_and_scheduled_messages_and_the_age_of_the_oldest,
        a_consumed_message_is_applied_once,
        a_batch_with_one_message_already_applied_applies_nothing,
        the_inbox_tells_which_consumer_applied_what,
        a_scheduled_message_waits_for_its_time_and_a_cancelled_one_never_goes,
        a_message_scheduled_while_the_relay_idles_goes_at_its_time_not_at_the_sweep,
    ],
    postgres => Postgres, sqlite => Sqlite,
);

fn message() -> Envelope {
    Causation::root("order-1", TraceParent::new_root()).envelope(&OrderShipped { order_id: Uuid::now_v7() })
}

async fn subscribe(transport: &MemoryTransport) -> Deliveries {
    let spec = QueueSpec { name: "observer".into(), message_types: vec!["order.shipped.v1".into()], prefetch: 1000 };
    transport.consume(&spec).await.unwrap()
}

fn relay<S: Store>(store: &S, transport: &MemoryTransport, config: RelayConfig) -> Relay<S::Outbox> {
    Relay::new("test", store.outbox(), Arc::new(transport.clone()), config)
}

fn quick(batch_size: i64) -> RelayConfig {
    RelayConfig { batch_size, sweep_interval: Duration::from_millis(200), ..RelayConfig::default() }
}

// --- outbox and relay ---------------------------------------------------------------------------

async fn outbox_rows_commit_with_the_state<S: Store>() {
    let store = S::new().await;
    let mut effects = Effects::new();
    effects.send(message()).send(message());
    store.set_counter(&effects, 7).await.unwrap();
    assert_eq!(store.outbox_rows().await, (2, 2));
    assert_eq!(store.counter().await, Some(7));
}

async fn outbox_rows_roll_back_with_the_state<S: Store>() {
    let store = S::new().await;
    let mut effects = Effects::new();
    effects.send(message());
    let failed = store.write_then_conflict(&effects).await;
    assert!(matches!(failed, Err(SaveError::Conflict)), "{failed:?}");
    assert_eq!(store.outbox_rows().await, (0, 0));
    assert_eq!(store.counter().await, None);
}

async fn two_relays_publish_every_committed_message_exactly_once<S: Store>() {
    let store = S::new().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let shutdown = CancellationToken::new();
    let relays: Vec<_> =
        (0..2).map(|_| tokio::spawn(relay(&store, &transport, quick(7)).run(shutdown.clone()))).collect();

    // Writers commit while both relays run.
    let mut expected = HashSet::new();
    let mut writers = Vec::new();
    for _ in 0..8 {
        let batch: Vec<Envelope> = (0..25).map(|_| message()).collect();
        expected.extend(batch.iter().map(|m| m.message_id));
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for chunk in batch.chunks(5) {
                let mut effects = Effects::new();
                for envelope in chunk {
                    effects.send(envelope.clone());
                }
                store.commit(&effects).await.unwrap();
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
    assert_eq!(store.outbox_rows().await, (200, 0));
}

async fn a_failed_publish_is_retried_and_marks_nothing_sent<S: Store>() {
    let store = S::new().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let mut effects = Effects::new();
    effects.send(message());
    store.commit(&effects).await.unwrap();

    transport.fail_next_publishes(1);
    let relay = relay(&store, &transport, quick(10));
    assert!(relay.publish_batch().await.is_err());
    assert_eq!(store.outbox_rows().await, (1, 1));
    assert_eq!(relay.publish_batch().await.unwrap(), 1);
    assert_eq!(store.outbox_rows().await, (1, 0));
    assert!(observed.next().await.is_some());
}

async fn the_relay_is_woken_at_commit_not_by_its_sweep<S: Store>() {
    let store = S::new().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let config = RelayConfig { sweep_interval: Duration::from_secs(3600), ..RelayConfig::default() };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay(&store, &transport, config).run(shutdown.clone()));
    // Each commit after the first finds the relay listening with an hour left before its sweep.
    for _ in 0..3 {
        let sent = message();
        let mut effects = Effects::new();
        effects.send(sent.clone());
        store.commit(&effects).await.unwrap();
        let delivered = tokio::time::timeout(Duration::from_secs(5), observed.next()).await;
        let delivery = delivered.expect("the relay did not react to the commit").unwrap();
        assert_eq!(delivery.message.as_ref().unwrap().message_id, sent.message_id);
        delivery.ack().await.unwrap();
    }
    shutdown.cancel();
    running.await.unwrap();
}

async fn sent_rows_and_old_inbox_records_are_cleaned_up<S: Store>() {
    let store = S::new().await;
    let transport = MemoryTransport::new();
    let _observed = subscribe(&transport).await;
    let mut effects = Effects::consuming("counter", Uuid::now_v7());
    effects.send(message());
    store.set_counter(&effects, 1).await.unwrap();
    let mut unsent = Effects::new();
    unsent.schedule(message(), Utc::now() + ChronoDuration::hours(1));
    store.commit(&unsent).await.unwrap();
    assert_eq!(relay(&store, &transport, quick(10)).publish_batch().await.unwrap(), 1);

    // Nothing is kept: the next cleanup deletes every sent row and every inbox record, and it
    // runs as soon as the relay starts.
    let config = RelayConfig { sent_retention: Duration::ZERO, inbox_retention: Duration::ZERO, ..quick(10) };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay(&store, &transport, config).run(shutdown.clone()));
    messaging::testing::eventually(Duration::from_secs(5), "the cleanup ran", async || {
        store.outbox_rows().await == (1, 1) && store.inbox_rows().await == 0
    })
    .await;
    shutdown.cancel();
    running.await.unwrap();
}

/// A broker that takes a publish and never confirms it, as a connection gone silent would.
struct Silent;

#[async_trait::async_trait]
impl Transport for Silent {
    async fn publish(&self, _: &[Envelope]) -> Result<(), TransportError> {
        std::future::pending().await
    }

    async fn declare(&self, _: &QueueSpec) -> Result<(), TransportError> {
        Ok(())
    }

    async fn consume(&self, _: &QueueSpec) -> Result<Deliveries, TransportError> {
        Ok(Box::pin(futures::stream::pending()))
    }

    async fn is_ready(&self) -> bool {
        true
    }
}

async fn a_batch_past_its_deadline_is_abandoned_and_its_rows_stay_unsent<S: Store>() {
    let store = S::new().await;
    let mut effects = Effects::new();
    effects.send(message()).send(message());
    store.commit(&effects).await.unwrap();
    let deadline = Duration::from_millis(200);
    let stuck =
        Relay::<S::Outbox>::new("test", store.outbox(), Arc::new(Silent), RelayConfig { deadline, ..quick(10) });
    let abandoned = stuck.publish_batch().await;
    assert!(matches!(abandoned, Err(RelayError::TimedOut(after)) if after == deadline), "{abandoned:?}");
    assert_eq!(store.outbox_rows().await, (2, 2), "an abandoned batch marked rows sent");

    // Its claim is given up with it: another relay publishes the rows.
    let transport = MemoryTransport::new();
    let _observed = subscribe(&transport).await;
    assert_eq!(relay(&store, &transport, quick(10)).publish_batch().await.unwrap(), 2);
    assert_eq!(store.outbox_rows().await, (2, 0));
}

async fn the_backlog_counts_due_and_scheduled_messages_and_the_age_of_the_oldest<S: Store>() {
    let store = S::new().await;
    let monitor = store.monitor();
    let empty = monitor.backlog().await.unwrap();
    assert_eq!((empty.unsent, empty.scheduled, empty.oldest_unsent_age_secs), (0, 0, None));

    let mut effects = Effects::new();
    effects.send(message()).send(message());
    effects.schedule(message(), Utc::now() + ChronoDuration::hours(1));
    store.commit(&effects).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = monitor.backlog().await.unwrap();
    assert_eq!((waiting.unsent, waiting.scheduled), (2, 1));
    let age = waiting.oldest_unsent_age_secs.expect("an age while messages wait");
    assert!((0.05..60.0).contains(&age), "{age}");

    let transport = MemoryTransport::new();
    let _observed = subscribe(&transport).await;
    assert_eq!(relay(&store, &transport, quick(10)).publish_batch().await.unwrap(), 2);
    let published = monitor.backlog().await.unwrap();
    assert_eq!((published.unsent, published.scheduled, published.oldest_unsent_age_secs), (0, 1, None));
}

// --- inbox --------------------------------------------------------------------------------------

async fn a_consumed_message_is_applied_once<S: Store>() {
    let store = S::new().await;
    let message_id = Uuid::now_v7();
    let mut first = Effects::consuming("counter", message_id);
    first.send(message());
    store.set_counter(&first, 1).await.unwrap();

    let mut copy = Effects::consuming("counter", message_id);
    copy.send(message());
    assert!(matches!(store.set_counter(&copy, 2).await, Err(SaveError::AlreadyConsumed)));
    assert_eq!(store.counter().await, Some(1), "the copy changed the state");
    assert_eq!(store.outbox_rows().await.0, 1, "the copy wrote messages");

    // Another consumer may apply the same message on its own account.
    store.set_counter(&Effects::consuming("other", message_id), 3).await.unwrap();
}

async fn a_batch_with_one_message_already_applied_applies_nothing<S: Store>() {
    let store = S::new().await;
    let (old, new) = (Uuid::now_v7(), Uuid::now_v7());
    store.set_counter(&Effects::consuming("counter", old), 1).await.unwrap();

    let mut batch = Effects::new();
    batch.consume("counter", new).consume("counter", old).send(message());
    assert!(matches!(store.set_counter(&batch, 2).await, Err(SaveError::AlreadyConsumed)));
    assert_eq!(store.counter().await, Some(1));
    assert_eq!(store.inbox_rows().await, 1, "the new message of the failed batch was recorded");

    let mut fresh = Effects::new();
    fresh.consume("counter", new).consume("counter", Uuid::now_v7());
    store.set_counter(&fresh, 3).await.unwrap();
    assert_eq!(store.inbox_rows().await, 3);
}

async fn the_inbox_tells_which_consumer_applied_what<S: Store>() {
    let store = S::new().await;
    let (applied, unknown) = (Uuid::now_v7(), Uuid::now_v7());
    store.set_counter(&Effects::consuming("counter", applied), 1).await.unwrap();
    let inbox = store.inbox();
    assert!(inbox.contains("counter", applied).await.unwrap());
    assert!(!inbox.contains("other", applied).await.unwrap());
    assert!(!inbox.contains("counter", unknown).await.unwrap());
}

// --- scheduled messages -------------------------------------------------------------------------

async fn a_scheduled_message_waits_for_its_time_and_a_cancelled_one_never_goes<S: Store>() {
    let store = S::new().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    let (due_soon, cancelled) = (message(), message());
    let mut effects = Effects::new();
    let at = Utc::now() + ChronoDuration::milliseconds(600);
    effects.schedule(due_soon.clone(), at).schedule(cancelled.clone(), at);
    store.commit(&effects).await.unwrap();
    let mut withdraw = Effects::new();
    withdraw.cancel_scheduled(cancelled.message_id);
    store.commit(&withdraw).await.unwrap();

    let relay = relay(&store, &transport, quick(10));
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

async fn a_message_scheduled_while_the_relay_idles_goes_at_its_time_not_at_the_sweep<S: Store>() {
    let store = S::new().await;
    let transport = MemoryTransport::new();
    let mut observed = subscribe(&transport).await;
    // A sweep too slow to matter: the relay learns of the message from the commit alone.
    let config = RelayConfig { sweep_interval: Duration::from_secs(60), ..quick(10) };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(relay(&store, &transport, config).run(shutdown.clone()));
    // Let it go idle first: a message committed now wakes it; a later one must be foreseen.
    store.commit(Effects::new().send(message())).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), observed.next()).await.unwrap().unwrap().ack().await.unwrap();

    let later = message();
    let at = Utc::now() + ChronoDuration::milliseconds(500);
    store.commit(Effects::new().schedule(later.clone(), at)).await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), observed.next()).await.unwrap().unwrap();
    assert!(Utc::now() >= at, "delivered early");
    assert_eq!(delivery.message.as_ref().unwrap().message_id, later.message_id);
    shutdown.cancel();
    running.await.unwrap();
}

// --- PostgreSQL only ----------------------------------------------------------------------------

#[tokio::test]
async fn the_pool_plans_each_statement_once_and_bounds_statements() {
    let db = common::database().await;
    let setting = |name: &'static str| {
        sqlx::query_scalar::<_, String>("SELECT current_setting($1)").bind(name).fetch_one(&db.pool)
    };
    assert_eq!(setting("plan_cache_mode").await.unwrap(), "force_generic_plan");
    assert_eq!(setting("statement_timeout").await.unwrap(), "30s");
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
async fn a_connection_given_up_mid_query_goes_back_to_the_pool_drained_not_discarded() {
    let db = common::database().await;
    let pool = messaging::postgres::connect(&db.url, 1).await.unwrap();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();

    // The caller gives up while the server is still working on its query.
    let given_up = tokio::time::timeout(Duration::from_millis(50), sqlx::query("SELECT pg_sleep(0.3)").execute(&pool));
    assert!(given_up.await.is_err());

    // The pool's only connection comes back once its answer is read, and answers the next query.
    let next: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert_eq!(next, backend, "the connection was closed instead of drained");
}
