//! Relay benchmark (not a test): `cargo bench -p messaging --bench relay`.
//!
//! 1. Commit-to-transport latency with the in-memory transport: one message per transaction,
//!    the clock runs from the commit's return to the message's arrival at a subscriber.
//! 2. The same through RabbitMQ (commit to delivery at a consumer).
//! 3. Relay throughput through RabbitMQ: a pre-filled outbox drained to a consumer.
//! 4. Raw lapin publish-with-confirms throughput in the same run, for comparison.
//!
//! Prints a table; with `BENCH_JSON=<file>` also writes the figures as JSON.

use contracts::order::OrderShipped;
use futures::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging::postgres::{Relay, RelayConfig, commit};
use messaging::testing::{TestDatabase, amqp_url, unique_naming};
use messaging::transport::memory::MemoryTransport;
use messaging::transport::rabbitmq::RabbitMq;
use messaging::transport::{Deliveries, QueueSpec};
use messaging::{Causation, Effects, Envelope, TraceParent, Transport};
use sqlx::migrate::Migrator;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const LATENCY_SAMPLES: usize = 2_000;
const THROUGHPUT_MESSAGES: usize = 20_000;

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

fn message() -> Envelope {
    let order_id = Uuid::now_v7();
    Causation::root(order_id.to_string(), TraceParent::new_root()).envelope(&OrderShipped { order_id })
}

fn spec(name: String) -> QueueSpec {
    QueueSpec { name, message_types: vec!["order.shipped.v1".into()], prefetch: 500 }
}

/// Milliseconds at a quantile of a histogram recorded in microseconds.
fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

async fn commit_one(db: &TestDatabase) {
    let mut effects = Effects::new();
    effects.send(message());
    commit(&db.pool, &effects, async |_| Ok(())).await.unwrap();
}

/// Commit-to-arrival latency, one message at a time, with a relay running on `transport`.
async fn latency(transport: Arc<dyn Transport>, deliveries: &mut Deliveries, db: &TestDatabase) -> Histogram<u64> {
    let shutdown = CancellationToken::new();
    let relay =
        tokio::spawn(Relay::new("bench", db.pool.clone(), transport, RelayConfig::default()).run(shutdown.clone()));
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for sample in 0..LATENCY_SAMPLES + 100 {
        commit_one(db).await;
        let committed = Instant::now();
        let delivery = deliveries.next().await.unwrap();
        let elapsed = committed.elapsed();
        delivery.ack().await.unwrap();
        if sample >= 100 {
            histogram.record(elapsed.as_micros() as u64).unwrap(); // the first 100 warm up
        }
    }
    shutdown.cancel();
    relay.await.unwrap();
    histogram
}

#[tokio::main]
async fn main() {
    let mut results = serde_json::Map::new();
    let mut record = |key: &str, value: f64| {
        results.insert(key.to_owned(), serde_json::json!((value * 100.0).round() / 100.0));
    };

    // 1. In-memory transport.
    let db = TestDatabase::new(&NO_MIGRATIONS).await;
    let memory = MemoryTransport::new();
    let mut deliveries = memory.consume(&spec("bench".into())).await.unwrap();
    let histogram = latency(Arc::new(memory.clone()), &mut deliveries, &db).await;
    println!(
        "relay commit-to-transport (in-memory), {LATENCY_SAMPLES} messages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&histogram, 0.5),
        ms(&histogram, 0.99),
        ms(&histogram, 1.0)
    );
    record("memory_latency_p50_ms", ms(&histogram, 0.5));
    record("memory_latency_p99_ms", ms(&histogram, 0.99));
    drop(deliveries);
    drop(db);

    // 2. RabbitMQ latency.
    let db = TestDatabase::new(&NO_MIGRATIONS).await;
    let naming = unique_naming();
    let rabbit = RabbitMq::connect(&amqp_url(), naming.clone(), "bench").await.unwrap();
    let queue = spec(naming.queue("bench", "latency"));
    let mut deliveries = rabbit.consume(&queue).await.unwrap();
    let histogram = latency(Arc::new(rabbit.clone()), &mut deliveries, &db).await;
    println!(
        "relay commit-to-delivery (RabbitMQ), {LATENCY_SAMPLES} messages: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(&histogram, 0.5),
        ms(&histogram, 0.99),
        ms(&histogram, 1.0)
    );
    record("rabbitmq_latency_p50_ms", ms(&histogram, 0.5));
    record("rabbitmq_latency_p99_ms", ms(&histogram, 0.99));

    // 3. RabbitMQ throughput: fill the outbox, let the relay drain it into the queue with no
    //    consumer attached (as the raw publisher below), then consume everything.
    drop(deliveries);
    for _ in 0..THROUGHPUT_MESSAGES / 100 {
        let mut effects = Effects::new();
        for _ in 0..100 {
            effects.send(message());
        }
        commit(&db.pool, &effects, async |_| Ok(())).await.unwrap();
    }
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let relay = tokio::spawn(
        Relay::new("bench", db.pool.clone(), Arc::new(rabbit.clone()), RelayConfig::default()).run(shutdown.clone()),
    );
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&db.pool).await.unwrap();
        if unsent == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let relay_rate = THROUGHPUT_MESSAGES as f64 / started.elapsed().as_secs_f64();
    let mut deliveries = rabbit.consume(&queue).await.unwrap();
    let started = Instant::now();
    for _ in 0..THROUGHPUT_MESSAGES {
        let delivery = deliveries.next().await.unwrap();
        delivery.ack().await.unwrap();
    }
    let consume_rate = THROUGHPUT_MESSAGES as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    relay.await.unwrap();
    println!(
        "relay throughput (RabbitMQ), {THROUGHPUT_MESSAGES} messages: outbox drained at {relay_rate:.0} msg/s; consumed and acked at {consume_rate:.0} msg/s"
    );
    record("relay_throughput_msgs_per_s", relay_rate);
    record("consume_ack_msgs_per_s", consume_rate);
    drop(deliveries);
    rabbit.delete_topology(&[queue]).await.unwrap();

    // 4. Raw lapin: the same number of messages of the same size, confirms awaited per batch of
    //    200 (the relay's batch size), to a durable queue, persistent.
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let raw_queue = format!("{}.raw", naming.prefix());
    channel
        .queue_declare(raw_queue.clone().into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await
        .unwrap();
    let body = serde_json::to_vec(&message().payload).unwrap();
    let started = Instant::now();
    for _ in 0..THROUGHPUT_MESSAGES / 200 {
        let mut confirms = Vec::with_capacity(200);
        for _ in 0..200 {
            let properties =
                BasicProperties::default().with_delivery_mode(2).with_message_id(Uuid::now_v7().to_string().into());
            let confirm = channel
                .basic_publish("".into(), raw_queue.clone().into(), BasicPublishOptions::default(), &body, properties)
                .await
                .unwrap();
            confirms.push(confirm);
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
    }
    let raw_rate = THROUGHPUT_MESSAGES as f64 / started.elapsed().as_secs_f64();
    println!("raw lapin publish with confirms, {THROUGHPUT_MESSAGES} messages: {raw_rate:.0} msg/s");
    record("raw_lapin_confirmed_msgs_per_s", raw_rate);
    channel.queue_delete(raw_queue.into(), QueueDeleteOptions::default()).await.unwrap();
    let _ = connection.close(200, "OK".into()).await;

    if let Ok(path) = std::env::var("BENCH_JSON") {
        std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
        println!("figures written to {path}");
    }
}
