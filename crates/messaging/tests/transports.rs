//! The `Transport` and `DeadLetters` contract, written once and run against every adapter:
//! RabbitMQ (the real broker, under names of each test's own, with classic and with quorum
//! queues), the embedded SQLite broker (a file of each test's own) and the in-memory one. Then what only the embedded broker has to
//! show: what it holds outlives the process.

use async_trait::async_trait;
use contracts::order::OrderShipped;
use futures::StreamExt;
use messaging::testing::{amqp_url, unique_naming};
use messaging::transport::memory::MemoryTransport;
use messaging::transport::rabbitmq::{QueueType, RabbitMq, RabbitMqSettings};
use messaging::transport::sqlite::SqliteTransport;
use messaging::transport::{DeadLetters, Deliveries, Failure, QueueSpec, QueueStats, Transport, TransportError};
use messaging::{Causation, Envelope, TraceParent};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// A broker of one test's own.
#[async_trait]
trait Broker: Sized + Send + Sync {
    type Adapter: Transport + DeadLetters + Clone;

    async fn new() -> Self;

    fn transport(&self) -> &Self::Adapter;

    /// A queue name no other test uses.
    fn queue(&self, name: &str) -> String;

    /// Removes what the test declared.
    async fn clean_up(self, queues: &[QueueSpec]);
}

/// RabbitMQ with queues of the type `QUORUM` says.
struct Rabbit<const QUORUM: bool>(RabbitMq);
type RabbitClassic = Rabbit<false>;
type RabbitQuorum = Rabbit<true>;

#[async_trait]
impl<const QUORUM: bool> Broker for Rabbit<QUORUM> {
    type Adapter = RabbitMq;

    async fn new() -> Self {
        let queue_type = if QUORUM { QueueType::Quorum } else { QueueType::Classic };
        let settings = RabbitMqSettings { queue_type, ..RabbitMqSettings::default() };
        let transport = RabbitMq::connect_with(&amqp_url(), unique_naming(), "transport-tests", settings).await;
        Self(transport.expect("RabbitMQ reachable"))
    }

    fn transport(&self) -> &RabbitMq {
        &self.0
    }

    fn queue(&self, name: &str) -> String {
        self.0.naming().queue("test", name)
    }

    async fn clean_up(self, queues: &[QueueSpec]) {
        self.0.delete_topology(queues).await.unwrap();
    }
}

struct Sqlite {
    transport: SqliteTransport,
    /// Removed with the file when the test ends.
    _dir: tempfile::TempDir,
}

#[async_trait]
impl Broker for Sqlite {
    type Adapter = SqliteTransport;

    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self { transport: SqliteTransport::open(&dir.path().join("broker.sqlite")).await.unwrap(), _dir: dir }
    }

    fn transport(&self) -> &SqliteTransport {
        &self.transport
    }

    fn queue(&self, name: &str) -> String {
        name.to_owned()
    }

    async fn clean_up(self, _: &[QueueSpec]) {}
}

struct Memory(MemoryTransport);

#[async_trait]
impl Broker for Memory {
    type Adapter = MemoryTransport;

    async fn new() -> Self {
        Self(MemoryTransport::new())
    }

    fn transport(&self) -> &MemoryTransport {
        &self.0
    }

    fn queue(&self, name: &str) -> String {
        name.to_owned()
    }

    async fn clean_up(self, _: &[QueueSpec]) {}
}

// Each test once per adapter: `rabbitmq::<test>`, `rabbitmq_quorum::<test>`, `sqlite::<test>`,
// `memory::<test>`.
messaging::contract_tests!(
    [
        every_contract_message_round_trips,
        a_message_no_queue_is_bound_for_is_refused_not_lost,
        every_queue_bound_to_a_type_gets_its_own_copy,
        an_unacked_delivery_comes_back_flagged_as_redelivered,
        prefetch_bounds_unacknowledged_deliveries,
        competing_consumers_share_a_queue_without_duplicates,
        dead_letters_can_be_listed_replayed_and_purged,
        queue_stats_count_waiting_messages_and_live_consumers,
    ],
    rabbitmq => RabbitClassic, rabbitmq_quorum => RabbitQuorum, sqlite => Sqlite, memory => Memory,
);

const SHIPPED: &str = "order.shipped.v1";

fn shipped() -> Envelope {
    Causation::root("order", TraceParent::new_root()).envelope(&OrderShipped { order_id: Uuid::now_v7() })
}

fn spec<B: Broker>(broker: &B, name: &str, types: &[&str], prefetch: u16) -> QueueSpec {
    QueueSpec { name: broker.queue(name), message_types: types.iter().map(|&t| t.to_owned()).collect(), prefetch }
}

async fn next(deliveries: &mut Deliveries) -> messaging::transport::Delivery {
    tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await.expect("a delivery in time").unwrap()
}

async fn nothing_more(deliveries: &mut Deliveries) -> bool {
    tokio::time::timeout(Duration::from_millis(100), deliveries.next()).await.is_err()
}

async fn every_contract_message_round_trips<B: Broker>() {
    let broker = B::new().await;
    let samples = contracts::samples();
    let types: Vec<&str> = samples.iter().map(|(name, _)| *name).collect();
    let observer = spec(&broker, "observer", &types, 100);
    let mut deliveries = broker.transport().consume(&observer).await.unwrap();

    let sent: Vec<_> = samples
        .iter()
        .map(|(message_type, payload)| {
            let mut envelope = shipped();
            envelope.message_type = (*message_type).to_owned();
            envelope.payload = payload.clone();
            envelope.causation_id = Some(Uuid::now_v7());
            envelope
        })
        .collect();
    broker.transport().publish(&sent).await.unwrap();

    let mut received = HashMap::new();
    while received.len() < sent.len() {
        let delivery = next(&mut deliveries).await;
        let envelope = delivery.message.as_ref().unwrap().clone();
        assert!(!delivery.redelivered);
        delivery.ack().await.unwrap();
        received.insert(envelope.message_id, envelope);
    }
    for envelope in &sent {
        assert_eq!(received.get(&envelope.message_id), Some(envelope), "{}", envelope.message_type);
    }
    drop(deliveries);
    broker.clean_up(&[observer]).await;
}

async fn a_message_no_queue_is_bound_for_is_refused_not_lost<B: Broker>() {
    let broker = B::new().await;
    let bound = spec(&broker, "bound", &[SHIPPED], 10);
    broker.transport().declare(&bound).await.unwrap();
    let mut unbound = shipped();
    unbound.message_type = "order.nobody-listens.v1".into();
    let refused = broker.transport().publish(&[shipped(), unbound]).await;
    assert!(
        matches!(&refused, Err(TransportError::Unroutable { message_type }) if message_type == "order.nobody-listens.v1"),
        "{refused:?}"
    );
    broker.clean_up(&[bound]).await;
}

async fn every_queue_bound_to_a_type_gets_its_own_copy<B: Broker>() {
    let broker = B::new().await;
    let (first, second) = (spec(&broker, "first", &[SHIPPED], 10), spec(&broker, "second", &[SHIPPED], 10));
    let mut firsts = broker.transport().consume(&first).await.unwrap();
    let mut seconds = broker.transport().consume(&second).await.unwrap();
    let message = shipped();
    broker.transport().publish(std::slice::from_ref(&message)).await.unwrap();
    for deliveries in [&mut firsts, &mut seconds] {
        let delivery = next(deliveries).await;
        assert_eq!(delivery.message.as_ref().unwrap(), &message);
        delivery.ack().await.unwrap();
        assert!(nothing_more(deliveries).await);
    }
    drop((firsts, seconds));
    broker.clean_up(&[first, second]).await;
}

async fn an_unacked_delivery_comes_back_flagged_as_redelivered<B: Broker>() {
    let broker = B::new().await;
    let queue = spec(&broker, "q", &[SHIPPED], 1);
    let mut deliveries = broker.transport().consume(&queue).await.unwrap();
    let message = shipped();
    broker.transport().publish(std::slice::from_ref(&message)).await.unwrap();

    let first = next(&mut deliveries).await;
    assert!(!first.redelivered);
    drop(first);
    let again = next(&mut deliveries).await;
    assert!(again.redelivered);
    assert_eq!(again.message.as_ref().unwrap(), &message);
    again.ack().await.unwrap();
    assert!(nothing_more(&mut deliveries).await, "an acknowledged message came back");
    drop(deliveries);
    broker.clean_up(&[queue]).await;
}

async fn prefetch_bounds_unacknowledged_deliveries<B: Broker>() {
    let broker = B::new().await;
    let queue = spec(&broker, "q", &[SHIPPED], 2);
    let mut deliveries = broker.transport().consume(&queue).await.unwrap();
    broker.transport().publish(&[shipped(), shipped(), shipped()]).await.unwrap();
    let (first, second) = (next(&mut deliveries).await, next(&mut deliveries).await);
    assert!(nothing_more(&mut deliveries).await, "a third delivery arrived while two were unacked");
    first.ack().await.unwrap();
    next(&mut deliveries).await.ack().await.unwrap();
    second.ack().await.unwrap();
    drop(deliveries);
    broker.clean_up(&[queue]).await;
}

async fn competing_consumers_share_a_queue_without_duplicates<B: Broker>() {
    let broker = B::new().await;
    let queue = spec(&broker, "shared", &[SHIPPED], 4);
    let consumers =
        [broker.transport().consume(&queue).await.unwrap(), broker.transport().consume(&queue).await.unwrap()];
    let sent: Vec<Envelope> = (0..40).map(|_| shipped()).collect();
    broker.transport().publish(&sent).await.unwrap();
    let seen = std::sync::Mutex::new(HashSet::new());
    let consume = |mut deliveries: Deliveries| {
        let seen = &seen;
        async move {
            while let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await {
                let id = delivery.message.as_ref().unwrap().message_id;
                assert!(seen.lock().unwrap().insert(id), "{id} was delivered twice");
                delivery.ack().await.unwrap();
            }
        }
    };
    let [a, b] = consumers;
    futures::join!(consume(a), consume(b));
    assert_eq!(*seen.lock().unwrap(), sent.iter().map(|m| m.message_id).collect());
    broker.clean_up(&[queue]).await;
}

async fn dead_letters_can_be_listed_replayed_and_purged<B: Broker>() {
    let broker = B::new().await;
    let transport = broker.transport();
    let queue = spec(&broker, "q", &[SHIPPED], 10);
    let mut deliveries = transport.consume(&queue).await.unwrap();
    let sent = [shipped(), shipped()];
    transport.publish(&sent).await.unwrap();
    for attempts in [3, 1] {
        let delivery = next(&mut deliveries).await;
        delivery.dead_letter(Failure { reason: format!("boom {attempts}"), attempts }).await.unwrap();
    }
    let mut letters = Vec::new();
    messaging::testing::eventually(Duration::from_secs(5), "two dead letters", async || {
        letters = transport.list(&queue.error_queue()).await.unwrap();
        letters.len() == 2
    })
    .await;
    letters.sort_by_key(|letter| std::cmp::Reverse(letter.attempts));
    assert_eq!((letters[0].reason.as_str(), letters[0].attempts), ("boom 3", 3));
    assert_eq!(letters[0].message_type.as_deref(), Some(SHIPPED));
    assert!(letters[0].failed_at.is_some());
    let ids: HashSet<String> = letters.iter().filter_map(|letter| letter.message_id.clone()).collect();
    assert_eq!(ids, sent.iter().map(|m| m.message_id.to_string()).collect());
    assert!(nothing_more(&mut deliveries).await, "a dead letter was delivered again");

    assert_eq!(transport.replay(&queue.error_queue()).await.unwrap(), 2);
    let replayed = next(&mut deliveries).await;
    assert!(sent.contains(replayed.message.as_ref().unwrap()));
    replayed.dead_letter(Failure { reason: "again".into(), attempts: 1 }).await.unwrap();
    next(&mut deliveries).await.ack().await.unwrap();
    messaging::testing::eventually(Duration::from_secs(5), "the dead letter is back", async || {
        transport.list(&queue.error_queue()).await.unwrap().len() == 1
    })
    .await;
    assert_eq!(transport.purge(&queue.error_queue()).await.unwrap(), 1);
    assert!(transport.list(&queue.error_queue()).await.unwrap().is_empty());
    drop(deliveries);
    broker.clean_up(&[queue]).await;
}

async fn queue_stats_count_waiting_messages_and_live_consumers<B: Broker>() {
    let broker = B::new().await;
    let transport = broker.transport();
    let queue = spec(&broker, "q", &[SHIPPED], 1);
    let stats = async || transport.queue_stats(&queue.name).await.unwrap();
    transport.declare(&queue).await.unwrap();
    transport.publish(&[shipped(), shipped()]).await.unwrap();
    messaging::testing::eventually(Duration::from_secs(5), "two waiting, nobody consuming", async || {
        stats().await == Some(QueueStats { depth: 2, consumers: 0 })
    })
    .await;

    let mut deliveries = transport.consume(&queue).await.unwrap();
    let delivery = next(&mut deliveries).await;
    // One in hand is no longer waiting.
    messaging::testing::eventually(Duration::from_secs(5), "one waiting, one consumer", async || {
        stats().await == Some(QueueStats { depth: 1, consumers: 1 })
    })
    .await;
    delivery.dead_letter(Failure { reason: "boom".into(), attempts: 1 }).await.unwrap();
    let error_queue = async || transport.queue_stats(&queue.error_queue()).await.unwrap().map(|stats| stats.depth);
    messaging::testing::eventually(Duration::from_secs(5), "a dead letter counted", async || {
        error_queue().await == Some(1)
    })
    .await;

    drop(deliveries);
    messaging::testing::eventually(Duration::from_secs(5), "the consumer gone", async || {
        stats().await.map(|stats| stats.consumers) == Some(0)
    })
    .await;
    broker.clean_up(&[queue]).await;
}

// --- what only the embedded broker shows ---------------------------------------------------------

#[tokio::test]
async fn what_the_embedded_broker_holds_outlives_the_process_and_deliveries_in_hand_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.sqlite");
    // One delivery at a time: the second message stays waiting while the first is in hand.
    let queue = QueueSpec { name: "q".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    let (in_hand, waiting) = (shipped(), shipped());
    {
        let killed = SqliteTransport::open(&file).await.unwrap();
        let mut deliveries = killed.consume(&queue).await.unwrap();
        killed.publish(&[in_hand.clone(), waiting.clone()]).await.unwrap();
        let delivery = next(&mut deliveries).await;
        assert_eq!(delivery.message.as_ref().unwrap(), &in_hand);
        // Killed while handling it: nothing runs the delivery's drop.
        std::mem::forget(delivery);
        std::mem::forget(deliveries);
    }

    let restarted = SqliteTransport::open(&file).await.unwrap();
    assert_eq!(restarted.depth("q").await.unwrap(), 2);
    assert_eq!(restarted.requeue_unsettled().await.unwrap(), 1);
    let mut deliveries = restarted.consume(&queue).await.unwrap();
    let again = next(&mut deliveries).await;
    assert_eq!((again.message.as_ref().unwrap(), again.redelivered), (&in_hand, true));
    again.ack().await.unwrap();
    let first_time = next(&mut deliveries).await;
    assert_eq!((first_time.message.as_ref().unwrap(), first_time.redelivered), (&waiting, false));
    first_time.ack().await.unwrap();
    assert_eq!(restarted.depth("q").await.unwrap(), 0);
    // Bindings are kept too: a restarted system can publish before its consumers declare again.
    let reopened = SqliteTransport::open(&file).await.unwrap();
    reopened.publish(&[shipped()]).await.unwrap();
    assert_eq!(reopened.depth("q").await.unwrap(), 1);
}

#[tokio::test]
async fn dead_letters_replayed_by_another_process_reach_the_running_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.sqlite");
    let running = SqliteTransport::open(&file).await.unwrap();
    let queue = QueueSpec { name: "q".into(), message_types: vec![SHIPPED.into()], prefetch: 10 };
    let mut deliveries = running.consume(&queue).await.unwrap();
    let message = shipped();
    running.publish(std::slice::from_ref(&message)).await.unwrap();
    next(&mut deliveries).await.dead_letter(Failure { reason: "bug".into(), attempts: 8 }).await.unwrap();

    // The operator's `shop dead-letters replay`, in a process of its own.
    let operator = SqliteTransport::open(&file).await.unwrap();
    assert_eq!(operator.list("q.error").await.unwrap().len(), 1);
    assert_eq!(operator.replay("q.error").await.unwrap(), 1);
    let replayed = next(&mut deliveries).await;
    assert_eq!(replayed.message.as_ref().unwrap(), &message);
    replayed.ack().await.unwrap();
}
