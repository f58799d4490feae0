//! The RabbitMQ transport and the consumer runtime against the real broker, beyond the contract
//! every transport keeps (`transports.rs`), with classic and with quorum queues (each test runs
//! once per type). Every test uses its own exchange and queue names and deletes them at the end.

mod common;

use common::{Counter, POISON, counter, database, shipped};
use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging::postgres::{PgInbox, Relay, RelayConfig, commit};
use messaging::testing::eventually;
use messaging::testing::{amqp_url, unique_naming};
use messaging::transport::rabbitmq::{QueueType, RabbitMq, RabbitMqSettings};
use messaging::transport::{DeadLetters, QueueSpec, Transport, TransportError};
use messaging::{Backoff, Consumer, ConsumerConfig, Effects, Handler, Naming, RetryPolicy};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Runs each named test once with classic and once with quorum queues.
macro_rules! with_both_queue_types {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn classic() {
                super::$test(messaging::transport::rabbitmq::QueueType::Classic).await;
            }

            #[tokio::test]
            async fn quorum() {
                super::$test(messaging::transport::rabbitmq::QueueType::Quorum).await;
            }
        }
    )+};
}

with_both_queue_types!(
    an_unconfirmed_publish_is_retried_by_the_relay,
    poison_messages_go_to_the_error_queue_while_good_ones_flow,
    transient_failures_are_retried_then_dead_lettered_with_the_attempt_count,
    a_panicking_handler_costs_one_message_and_its_lane_consumes_on,
    a_replayed_dead_letter_is_delivered_again_and_purge_empties_the_error_queue,
);

async fn transport_under(naming: Naming, queue_type: QueueType) -> RabbitMq {
    let settings = RabbitMqSettings { queue_type, ..RabbitMqSettings::default() };
    RabbitMq::connect_with(&amqp_url(), naming, "messaging-tests", settings).await.expect("RabbitMQ reachable")
}

async fn transport(queue_type: QueueType) -> RabbitMq {
    transport_under(unique_naming(), queue_type).await
}

fn spec(transport: &RabbitMq, types: Vec<String>) -> QueueSpec {
    QueueSpec { name: transport.naming().queue("test", "observer"), message_types: types, prefetch: 100 }
}

async fn an_unconfirmed_publish_is_retried_by_the_relay(queue_type: QueueType) {
    let db = database().await;
    let transport = transport(queue_type).await;
    let spec = spec(&transport, vec!["order.shipped.v1".into()]);
    let mut deliveries = transport.consume(&spec).await.unwrap();
    // Without its exchange the broker refuses every publish.
    transport.delete_topology(&[]).await.unwrap();

    let message = shipped(Uuid::now_v7());
    let mut effects = Effects::new();
    effects.send(message.clone());
    commit(&db.pool, &effects, async |_| Ok(())).await.unwrap();
    let relay = Relay::new("test", db.pool.clone(), Arc::new(transport.clone()), RelayConfig::default());
    assert!(relay.publish_batch().await.is_err(), "the broker confirmed a publish to a missing exchange");
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetch_one(&db.pool).await.unwrap();
    assert_eq!(unsent, 1);

    transport.declare(&spec).await.unwrap();
    assert_eq!(relay.publish_batch().await.unwrap(), 1);
    let delivery = tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await.unwrap().unwrap();
    assert_eq!(delivery.message.as_ref().unwrap().message_id, message.message_id);
    delivery.ack().await.unwrap();
    drop(deliveries);
    transport.delete_topology(&[spec]).await.unwrap();
}

async fn poison_messages_go_to_the_error_queue_while_good_ones_flow(queue_type: QueueType) {
    let db = database().await;
    let transport = transport(queue_type).await;
    let handler = Arc::new(Counter::new(&db.pool));
    let config = ConsumerConfig { concurrency: 4, prefetch: 8, ..ConsumerConfig::default() };
    let consumer = Consumer::new("test", transport.naming(), handler.clone(), config)
        .with_inbox(Arc::new(PgInbox::new(db.pool.clone())));
    let spec = consumer.queue().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    transport.declare(&spec).await.unwrap();

    // An envelope without a message id, a message that breaks the handler's rule, then good ones.
    let raw = Connection::connect(&amqp_url(), ConnectionProperties::default()).await.unwrap();
    let channel = raw.create_channel().await.unwrap();
    channel
        .basic_publish(
            transport.naming().exchange().into(),
            "order.shipped.v1".into(),
            BasicPublishOptions::default(),
            b"{\"orderId\": 1}",
            BasicProperties::default().with_type("order.shipped.v1".into()),
        )
        .await
        .unwrap();
    let poison = shipped(POISON);
    transport.publish(std::slice::from_ref(&poison)).await.unwrap();
    let good: Vec<_> = (0..20).map(|_| shipped(Uuid::now_v7())).collect();
    transport.publish(&good).await.unwrap();

    eventually(Duration::from_secs(10), "good messages handled", async || counter(&db.pool).await == 20).await;
    let error_queue = spec.error_queue();
    let mut letters = Vec::new();
    eventually(Duration::from_secs(10), "both poison messages dead-lettered", async || {
        letters = transport.list(&error_queue).await.unwrap();
        letters.len() == 2
    })
    .await;
    letters.sort_by_key(|letter| letter.message_id.is_some());
    assert!(letters[0].reason.contains("no message id"), "{:?}", letters[0]);
    assert_eq!(letters[1].message_id, Some(poison.message_id.to_string()));
    assert_eq!(letters[1].reason, "order id is nil");
    assert_eq!(letters[1].attempts, 1);
    assert!(letters[1].failed_at.is_some());
    // Listing leaves them in place.
    assert_eq!(transport.list(&error_queue).await.unwrap().len(), 2);

    shutdown.cancel();
    running.await.unwrap();
    let _ = raw.close(200, "OK".into()).await;
    transport.delete_topology(&[spec]).await.unwrap();
}

async fn transient_failures_are_retried_then_dead_lettered_with_the_attempt_count(queue_type: QueueType) {
    use async_trait::async_trait;
    use common::Shipping;
    use messaging::{HandlerError, Received};
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Flaky {
        calls: AtomicU32,
    }
    #[async_trait]
    impl Handler for Flaky {
        type Message = Shipping;
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn handle(&self, _: &Received<Shipping>) -> Result<(), HandlerError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Err(HandlerError::transient("database away"))
        }
    }

    let transport = transport(queue_type).await;
    let handler = Arc::new(Flaky { calls: AtomicU32::new(0) });
    let retry =
        RetryPolicy { max_attempts: 3, backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)) };
    let consumer =
        Consumer::new("test", transport.naming(), handler.clone(), ConsumerConfig { retry, ..Default::default() });
    let spec = consumer.queue().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    transport.declare(&spec).await.unwrap();
    transport.publish(&[shipped(Uuid::now_v7())]).await.unwrap();

    let mut letters = Vec::new();
    eventually(Duration::from_secs(10), "dead letter", async || {
        letters = transport.list(&spec.error_queue()).await.unwrap();
        !letters.is_empty()
    })
    .await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3);
    assert_eq!(letters[0].attempts, 3);
    assert!(letters[0].reason.contains("gave up after 3 attempts: database away"), "{}", letters[0].reason);
    shutdown.cancel();
    running.await.unwrap();
    transport.delete_topology(&[spec]).await.unwrap();
}

async fn a_replayed_dead_letter_is_delivered_again_and_purge_empties_the_error_queue(queue_type: QueueType) {
    let db = database().await;
    let transport = transport(queue_type).await;
    let spec = QueueSpec {
        name: transport.naming().queue("test", "counter"),
        message_types: vec!["order.shipped.v1".into()],
        prefetch: 10,
    };
    // Dead-letter two messages by hand, as a failing consumer would.
    let mut deliveries = transport.consume(&spec).await.unwrap();
    transport.publish(&[shipped(Uuid::now_v7()), shipped(Uuid::now_v7())]).await.unwrap();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await.unwrap().unwrap();
        delivery
            .dead_letter(messaging::transport::Failure { reason: "bug fixed later".into(), attempts: 1 })
            .await
            .unwrap();
    }
    drop(deliveries);
    eventually(Duration::from_secs(5), "two dead letters", async || {
        transport.list(&spec.error_queue()).await.unwrap().len() == 2
    })
    .await;

    // The "fixed" consumer now runs; one replay brings both back.
    let consumer = Consumer::new("test", transport.naming(), Arc::new(Counter::new(&db.pool)), Default::default());
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    assert_eq!(transport.replay(&spec.error_queue()).await.unwrap(), 2);
    eventually(Duration::from_secs(10), "replayed messages handled", async || counter(&db.pool).await == 2).await;
    assert!(transport.list(&spec.error_queue()).await.unwrap().is_empty());

    // The running consumer dead-letters a poison message; purge removes it.
    transport.publish(&[shipped(POISON)]).await.unwrap();
    eventually(Duration::from_secs(5), "a dead letter to purge", async || {
        transport.list(&spec.error_queue()).await.unwrap().len() == 1
    })
    .await;
    assert_eq!(transport.purge(&spec.error_queue()).await.unwrap(), 1);
    assert!(transport.list(&spec.error_queue()).await.unwrap().is_empty());
    shutdown.cancel();
    running.await.unwrap();
    transport.delete_topology(&[spec]).await.unwrap();
}

async fn a_panicking_handler_costs_one_message_and_its_lane_consumes_on(queue_type: QueueType) {
    use async_trait::async_trait;
    use common::Shipping;
    use messaging::{HandlerError, Received};

    /// Panics on the poison message, counts the others.
    struct Panicky(Counter);
    #[async_trait]
    impl Handler for Panicky {
        type Message = Shipping;
        fn name(&self) -> &'static str {
            "panicky"
        }
        async fn handle(&self, message: &Received<Shipping>) -> Result<(), HandlerError> {
            let Shipping::Shipped(shipped) = &message.message;
            assert_ne!(shipped.order_id, POISON, "a defect in the handler");
            self.0.handle(message).await
        }
    }

    let db = database().await;
    let transport = transport(queue_type).await;
    let retry =
        RetryPolicy { max_attempts: 3, backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(50)) };
    // One lane: the message after the panic is handled by the lane that panicked.
    let config = ConsumerConfig { concurrency: 1, retry, ..ConsumerConfig::default() };
    let handler = Arc::new(Panicky(Counter::new(&db.pool)));
    let consumer =
        Consumer::new("test", transport.naming(), handler, config).with_inbox(Arc::new(PgInbox::new(db.pool.clone())));
    let spec = consumer.queue().clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    transport.declare(&spec).await.unwrap();

    let poison = shipped(POISON);
    let mut first: Vec<_> = (0..5).map(|_| shipped(Uuid::now_v7())).collect();
    first.insert(2, poison.clone());
    transport.publish(&first).await.unwrap();
    let mut letters = Vec::new();
    eventually(Duration::from_secs(10), "the poison is dead-lettered", async || {
        letters = transport.list(&spec.error_queue()).await.unwrap();
        !letters.is_empty()
    })
    .await;
    assert_eq!(letters[0].message_id, Some(poison.message_id.to_string()));
    assert_eq!(letters[0].attempts, 3);
    assert!(
        letters[0].reason.starts_with(
            "gave up after 3 attempts: the handler panicked: assertion `left != right` failed: a defect in the handler"
        ),
        "{}",
        letters[0].reason
    );
    // The lane lives on: what arrives after the panic is handled too.
    transport.publish(&(0..5).map(|_| shipped(Uuid::now_v7())).collect::<Vec<_>>()).await.unwrap();
    eventually(Duration::from_secs(10), "every good message handled", async || counter(&db.pool).await == 10).await;
    assert_eq!(transport.list(&spec.error_queue()).await.unwrap().len(), 1);
    shutdown.cancel();
    running.await.expect("the consumer ends at shutdown, not before");
    transport.delete_topology(&[spec]).await.unwrap();
}

#[tokio::test]
async fn a_queue_of_the_other_type_is_refused_with_what_to_do() {
    let naming = unique_naming();
    for (existing, wanted) in [(QueueType::Classic, QueueType::Quorum), (QueueType::Quorum, QueueType::Classic)] {
        let first = transport_under(naming.clone(), existing).await;
        let spec = spec(&first, vec!["order.shipped.v1".into()]);
        first.declare(&spec).await.unwrap();
        first.declare(&spec).await.expect("declaring again with the same type is fine");
        let other = transport_under(naming.clone(), wanted).await;
        match other.declare(&spec).await {
            Err(TransportError::Inequivalent { queue, detail }) => {
                assert!(queue == spec.name || queue == spec.error_queue(), "{queue}");
                assert!(detail.contains("x-queue-type"), "{detail}");
            }
            outcome => panic!("{existing} queues declared as {wanted}: {outcome:?}"),
        }
        first.delete_topology(&[spec]).await.unwrap();
    }
}

#[tokio::test]
async fn a_message_the_broker_gives_up_on_lands_in_the_error_queue() {
    // RabbitMQ 4 gives up on a quorum queue's message after 20 deliveries (3.x only when told,
    // here by a policy on this test's queues): it must be dead-lettered, never dropped.
    let transport = transport(QueueType::Quorum).await;
    let spec = spec(&transport, vec!["order.shipped.v1".into()]);
    let policy = transport.naming().prefix().to_owned();
    let rabbitmqctl = |args: &[&str]| {
        let status = std::process::Command::new("rabbitmqctl").arg("-q").args(args).status().expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    };
    let pattern = format!("^{}\\.", regex_escape(&policy));
    rabbitmqctl(&["set_policy", "--apply-to", "queues", &policy, &pattern, r#"{"delivery-limit": 1}"#]);
    let mut deliveries = transport.consume(&spec).await.unwrap();
    let message = shipped(Uuid::now_v7());
    transport.publish(std::slice::from_ref(&message)).await.unwrap();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await.unwrap().unwrap();
        drop(delivery); // handed back unhandled, as by a consumer that crashes on it
    }
    let mut letters = Vec::new();
    eventually(Duration::from_secs(10), "the broker dead-letters it", async || {
        letters = transport.list(&spec.error_queue()).await.unwrap();
        !letters.is_empty()
    })
    .await;
    rabbitmqctl(&["clear_policy", &policy]);
    assert_eq!(letters[0].message_id, Some(message.message_id.to_string()));
    assert_eq!(letters[0].reason, "dead-lettered by the broker: delivery_limit");
    drop(deliveries);
    transport.delete_topology(&[spec]).await.unwrap();
}

fn regex_escape(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_ascii_alphanumeric() { vec![c] } else { vec!['\\', c] }).collect()
}
