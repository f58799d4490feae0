//! Restarts the real RabbitMQ while messages flow from an outbox through the relay to a
//! consumer. Nothing committed may be lost and nothing may be applied twice.
//!
//! This stops the broker for every client on the machine, so it lives alone in its own test
//! binary: `cargo test` runs test binaries one after another.

mod common;

use common::{Counter, counter, database, shipped};
use messaging::postgres::{PgInbox, Relay, RelayConfig, commit};
use messaging::testing::eventually;
use messaging::testing::{amqp_url, unique_naming};
use messaging::transport::rabbitmq::RabbitMq;
use messaging::{Consumer, ConsumerConfig, Effects};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn rabbitmqctl(command: &str) {
    let status = Command::new("rabbitmqctl").args(["-q", command]).status().expect("rabbitmqctl runs");
    assert!(status.success(), "rabbitmqctl {command} failed");
}

/// Starts the broker again even if the test fails while it is stopped.
struct RestartGuard;
impl Drop for RestartGuard {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_and_applies_nothing_twice() {
    const MESSAGES: i32 = 1_500;
    messaging::testing::init_logs();
    let db = database().await;
    let transport = RabbitMq::connect(&amqp_url(), unique_naming(), "broker-restart-test").await.unwrap();
    let shutdown = CancellationToken::new();

    let consumer =
        Consumer::new("test", transport.naming(), Arc::new(Counter::new(&db.pool)), ConsumerConfig::default())
            .with_inbox(Arc::new(PgInbox::new(db.pool.clone())));
    let spec = consumer.queue().clone();
    let consuming = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    let relay = Relay::new("test", db.pool.clone(), Arc::new(transport.clone()), RelayConfig::default());
    let relaying = tokio::spawn(relay.run(shutdown.clone()));

    // Half the messages before the broker stops, the other half once it is down (committed while
    // the relay cannot publish), however fast the machine.
    let stopped = Arc::new(tokio::sync::Notify::new());
    let pool = db.pool.clone();
    let producing = tokio::spawn({
        let stopped = stopped.clone();
        async move {
            for batch in 0..MESSAGES / 10 {
                if batch == MESSAGES / 20 {
                    stopped.notified().await;
                }
                let mut effects = Effects::new();
                for _ in 0..10 {
                    effects.send(shipped(Uuid::now_v7()));
                }
                commit(&pool, &effects, async |_| Ok(())).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    eventually(Duration::from_secs(30), "messages flowing", async || counter(&db.pool).await >= 200).await;
    {
        let _restart = RestartGuard;
        tokio::task::spawn_blocking(|| rabbitmqctl("stop_app")).await.unwrap();
        stopped.notify_one();
        let during: i32 = counter(&db.pool).await;
        assert!(during < MESSAGES, "everything was through before the broker stopped ({during})");
    }
    producing.await.unwrap();
    eventually(Duration::from_secs(90), "every message applied", async || counter(&db.pool).await >= MESSAGES).await;

    // Let any redelivered copy arrive, then check none was applied twice.
    eventually(Duration::from_secs(30), "outbox drained", async || {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&db.pool).await.unwrap();
        unsent == 0
    })
    .await;
    assert_eq!(counter(&db.pool).await, MESSAGES);
    let consumed: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(&db.pool).await.unwrap();
    assert_eq!(consumed, i64::from(MESSAGES));

    shutdown.cancel();
    consuming.await.unwrap();
    relaying.await.unwrap();
    transport.delete_topology(&[spec]).await.unwrap();
}
