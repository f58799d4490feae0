//! The in-process hand-off on PostgreSQL: a message for a consumer of the same database goes to
//! it at commit, without the relay or the broker, and its row is stamped sent once the consumer
//! applied it; a row nobody settles goes through the relay when its lease runs out; a message
//! the consumer cannot process is given back and dead-lettered through the broker, with its
//! reason. A message for another service goes at commit to the relay of the process, which
//! publishes it without claiming it; one the broker refuses is given back to the claiming path.
//! A message for a consumer of another service of the process goes to it the same way, and the
//! sender's hand-off waits for that consumer before it flushes.

mod common;

use common::{Counter, shipped};
use futures::StreamExt;
use messaging::hand_off::HandedOffRows;
use messaging::postgres::{GroupCommit, PgInbox, PgOutbox, Relay, RelayConfig};
use messaging::relay::OutboxStore;
use messaging::testing::{TestDatabase, eventually, unique_naming};
use messaging::transport::memory::MemoryTransport;
use messaging::transport::{DeadLetters, QueueSpec, error_queue_of};
use messaging::{Consumer, ConsumerConfig, Effects, HandOff, LocalConsumers, Outgoing, RetryPolicy};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SHIPPED: &str = "order.shipped.v1";
const WAIT: Duration = Duration::from_secs(10);

fn hand_off(pool: &PgPool) -> Arc<HandOff> {
    Arc::new(HandOff::new("test", [SHIPPED.to_owned()], Arc::new(PgOutbox::from(pool.clone()))))
}

/// Runs the counter's consumer on `transport`, taking what `hand_off` hands it, until the
/// token is cancelled; returns once it takes handed-off messages, with its queue's name.
async fn consume(
    db: &TestDatabase,
    hand_off: &Arc<HandOff>,
    transport: &MemoryTransport,
) -> (CancellationToken, String) {
    let group = GroupCommit::from(db.pool.clone()).with_hand_off(hand_off.clone());
    let config =
        ConsumerConfig { retry: RetryPolicy { max_attempts: 2, ..RetryPolicy::default() }, ..Default::default() };
    let consumer = Consumer::new("test", &unique_naming(), Arc::new(Counter { db: group }), config)
        .with_inbox(Arc::new(PgInbox::new(db.pool.clone())))
        .with_hand_off(hand_off.clone());
    let queue = consumer.queue().name.clone();
    let stop = CancellationToken::new();
    tokio::spawn(consumer.run(Arc::new(transport.clone()), stop.clone()));
    eventually(WAIT, "the consumer takes handed-off messages", async || takes(hand_off)).await;
    (stop, queue)
}

fn takes(hand_off: &HandOff) -> bool {
    hand_off.select(&[Outgoing { envelope: shipped(Uuid::now_v7()), deliver_after: None }]) == [true]
}

/// Commits a unit of work that sends `envelope`, through a group commit with `hand_off`.
async fn send(db: &TestDatabase, hand_off: &Arc<HandOff>, envelope: messaging::Envelope) {
    let group = GroupCommit::from(db.pool.clone()).with_hand_off(hand_off.clone());
    let mut effects = Effects::new();
    effects.send(envelope);
    group.commit(&effects, async |_| Ok(())).await.unwrap();
}

/// The row of `message_id`: whether it was handed off, and whether it is stamped sent.
async fn row(pool: &PgPool, message_id: Uuid) -> (bool, bool) {
    sqlx::query_as("SELECT handed_off, sent_at IS NOT NULL FROM outbox WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_message_for_a_consumer_of_the_same_database_goes_to_it_at_commit_and_never_through_the_broker() {
    let db = common::database().await;
    let hand_off = hand_off(&db.pool);
    assert!(!takes(&hand_off), "nobody consumes yet: nothing is handed off");
    let transport = MemoryTransport::new();
    let (stop, _) = consume(&db, &hand_off, &transport).await;

    // No relay runs: only the hand-off can bring the message to the consumer.
    let envelope = shipped(Uuid::now_v7());
    send(&db, &hand_off, envelope.clone()).await;
    eventually(WAIT, "the consumer applied the message", async || common::counter(&db.pool).await == 1).await;
    eventually(WAIT, "its row is stamped sent", async || row(&db.pool, envelope.message_id).await == (true, true))
        .await;
    let outbox = PgOutbox::from(db.pool.clone());
    assert!(outbox.claim_due(10).await.unwrap().envelopes.is_empty(), "the relay finds nothing to publish");
    assert_eq!(outbox.next_due().await.unwrap(), None, "and nothing to wait for");

    // A scheduled message is never handed off: it waits for its time in the outbox.
    let scheduled = Outgoing { envelope: shipped(Uuid::now_v7()), deliver_after: Some(chrono::Utc::now()) };
    assert_eq!(hand_off.select(&[scheduled]), [false]);

    // Once the consumer stops, its messages take the broker's path again.
    stop.cancel();
    eventually(WAIT, "the consumer no longer takes handed-off messages", async || !takes(&hand_off)).await;
}

#[tokio::test]
async fn a_handed_off_message_nobody_applies_goes_through_the_relay_once_its_lease_runs_out() {
    let db = common::database().await;
    let lease = Duration::from_millis(500);
    let hand_off = Arc::new(
        HandOff::new("test", [SHIPPED.to_owned()], Arc::new(PgOutbox::from(db.pool.clone()))).with_lease(lease),
    );
    // A consumer that takes the message and never applies it: the process died, say.
    let spec = QueueSpec { name: "lost".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    let deliveries = hand_off.subscribe(&spec);
    let envelope = shipped(Uuid::now_v7());
    send(&db, &hand_off, envelope.clone()).await;
    drop(deliveries);

    let outbox = PgOutbox::from(db.pool.clone());
    assert!(outbox.claim_due(10).await.unwrap().envelopes.is_empty(), "within its lease, the relay leaves it");
    assert_eq!(row(&db.pool, envelope.message_id).await, (true, false));
    let mut claimed = Vec::new();
    eventually(WAIT, "the relay claims the message after its lease", async || {
        claimed = outbox.claim_due(10).await.unwrap().envelopes;
        !claimed.is_empty()
    })
    .await;
    let claimed: Vec<Uuid> = claimed.iter().map(|claimed| claimed.message_id).collect();
    assert_eq!(claimed, [envelope.message_id]);
}

#[tokio::test]
async fn a_handed_off_message_that_fails_is_given_back_and_dead_lettered_through_the_broker_with_its_reason() {
    let db = common::database().await;
    let hand_off = hand_off(&db.pool);
    let transport = MemoryTransport::new();
    let stop = CancellationToken::new();
    let relay_config = RelayConfig { sweep_interval: Duration::from_secs(60), ..RelayConfig::default() };
    let relay = Relay::new("test", db.pool.clone(), Arc::new(transport.clone()), relay_config);
    tokio::spawn(relay.run(stop.clone()));
    let (consuming, queue) = consume(&db, &hand_off, &transport).await;

    let poison = shipped(common::POISON);
    send(&db, &hand_off, poison.clone()).await;
    // Given back, it is published at once (not at the sweep, a minute away), fails again on the
    // broker's path and lands in the error queue.
    let mut dead = Vec::new();
    eventually(WAIT, "the poison message is dead-lettered", async || {
        dead = transport.list(&error_queue_of(&queue)).await.unwrap();
        !dead.is_empty()
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id, Some(poison.message_id.to_string()));
    assert!(dead[0].reason.contains("order id is nil"), "{}", dead[0].reason);
    assert_eq!(row(&db.pool, poison.message_id).await, (false, true), "given back, then sent by the relay");
    consuming.cancel();
    stop.cancel();
}

/// A relay taking what the hand-off of `db` hands it, for a service none of whose consumers
/// reads the messages the tests send: they are for another service's queue.
struct RelayTaking {
    hand_off: Arc<HandOff>,
    transport: MemoryTransport,
    /// The other service's queue.
    queue: String,
    /// Stops the relay.
    stop: CancellationToken,
}

/// Runs a relay with the hand-off that sweeps only every minute (so that within a test only a
/// notification or the hand-off can set it off); returns once it takes what it is handed.
async fn relay_taking(db: &TestDatabase) -> RelayTaking {
    let hand_off = Arc::new(HandOff::new("test", [], Arc::new(PgOutbox::from(db.pool.clone()))));
    let transport = MemoryTransport::new();
    let spec = QueueSpec { name: "elsewhere".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    messaging::Transport::declare(&transport, &spec).await.unwrap();
    let config = RelayConfig { sweep_interval: Duration::from_secs(60), ..RelayConfig::default() };
    let relay =
        Relay::new("test", db.pool.clone(), Arc::new(transport.clone()), config).with_hand_off(hand_off.clone());
    let stop = CancellationToken::new();
    tokio::spawn(relay.run(stop.clone()));
    eventually(WAIT, "the relay takes handed-over messages", async || takes(&hand_off)).await;
    RelayTaking { hand_off, transport, queue: spec.name, stop }
}

#[tokio::test]
async fn a_message_no_consumer_here_takes_goes_at_commit_to_the_relay_which_publishes_it_unclaimed() {
    let db = common::database().await;
    let RelayTaking { hand_off, transport, queue, stop } = relay_taking(&db).await;

    let envelope = shipped(Uuid::now_v7());
    send(&db, &hand_off, envelope.clone()).await;
    // Its commit woke no relay (the row is handed off) and the sweep is a minute away: only
    // the hand-off can have brought it to the broker.
    eventually(WAIT, "the message is published", async || transport.ready_count(&queue) == 1).await;
    eventually(WAIT, "its row is stamped sent", async || row(&db.pool, envelope.message_id).await == (true, true))
        .await;

    // Stopped, the relay takes nothing more: the claiming path has the messages again.
    stop.cancel();
    eventually(WAIT, "the relay no longer takes handed-over messages", async || !takes(&hand_off)).await;
}

#[tokio::test]
async fn a_handed_over_message_the_broker_refuses_is_given_back_and_published_by_a_claim() {
    let db = common::database().await;
    let RelayTaking { hand_off, transport, queue, stop } = relay_taking(&db).await;

    transport.fail_next_publishes(1);
    let envelope = shipped(Uuid::now_v7());
    send(&db, &hand_off, envelope.clone()).await;
    eventually(WAIT, "the message is published after all", async || transport.ready_count(&queue) == 1).await;
    assert_eq!(row(&db.pool, envelope.message_id).await, (false, true), "given back, then claimed and sent");
    stop.cancel();
}

#[tokio::test]
async fn what_a_stopped_consumer_never_applied_is_given_back_when_the_process_stops() {
    let db = common::database().await;
    let hand_off = hand_off(&db.pool);
    let spec = QueueSpec { name: "q".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    let mut deliveries = hand_off.subscribe(&spec);
    let (taken, waiting) = (shipped(Uuid::now_v7()), shipped(Uuid::now_v7()));
    send(&db, &hand_off, taken.clone()).await;
    send(&db, &hand_off, waiting.clone()).await;
    // The consumer took the first and stopped before settling it; the second never reached it.
    drop(deliveries.next().await.expect("the first message"));
    drop(deliveries);
    let outbox = PgOutbox::from(db.pool.clone());
    assert!(outbox.claim_due(10).await.unwrap().envelopes.is_empty(), "within their lease, the relay leaves them");

    hand_off.flush().await;
    let mut claimed: Vec<Uuid> = outbox.claim_due(10).await.unwrap().envelopes.iter().map(|e| e.message_id).collect();
    claimed.sort();
    let mut expected = vec![taken.message_id, waiting.message_id];
    expected.sort();
    assert_eq!(claimed, expected, "both are due for the relay at once");
}

/// The hand-offs of two services of one process, each on its own database, sharing their
/// consumers: `(sender, receiver)`.
async fn two_services() -> ((TestDatabase, Arc<HandOff>), (TestDatabase, Arc<HandOff>)) {
    let local = Arc::new(LocalConsumers::default());
    let mut services = Vec::new();
    for name in ["sender", "receiver"] {
        let db = common::database().await;
        let rows = Arc::new(PgOutbox::from(db.pool.clone()));
        let hand_off = Arc::new(HandOff::new(name, [SHIPPED.to_owned()], rows).with_consumers(local.clone()));
        services.push((db, hand_off));
    }
    let receiver = services.pop().unwrap();
    (services.pop().unwrap(), receiver)
}

#[tokio::test]
async fn a_message_for_a_consumer_of_another_service_of_the_process_goes_to_it_and_is_stamped_where_it_was_sent() {
    let ((sender_db, sender), (receiver_db, receiver)) = two_services().await;
    let transport = MemoryTransport::new();
    let (stop, _) = consume(&receiver_db, &receiver, &transport).await;
    assert!(takes(&sender), "the receiver's consumer takes what the sender hands off");

    let envelope = shipped(Uuid::now_v7());
    send(&sender_db, &sender, envelope.clone()).await;
    eventually(WAIT, "the receiver applied the message", async || common::counter(&receiver_db.pool).await == 1).await;
    eventually(WAIT, "its row is stamped sent in the sender's database", async || {
        row(&sender_db.pool, envelope.message_id).await == (true, true)
    })
    .await;
    stop.cancel();
    eventually(WAIT, "once the consumer stops, the sender hands nothing to it", async || !takes(&sender)).await;
}

#[tokio::test]
async fn the_sender_flushes_once_the_consumer_of_another_service_has_settled_what_it_holds() {
    let ((sender_db, sender), (_receiver_db, receiver)) = two_services().await;
    let spec = QueueSpec { name: "q".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    let mut deliveries = receiver.subscribe(&spec);
    let envelope = shipped(Uuid::now_v7());
    send(&sender_db, &sender, envelope.clone()).await;
    let delivery = deliveries.next().await.expect("the message");

    let mut flushing = tokio::spawn({
        let sender = sender.clone();
        async move { sender.flush().await }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut flushing).await;
    assert!(early.is_err(), "the sender's flush waits while the message is in the consumer's hands");
    delivery.ack().await.unwrap();
    tokio::time::timeout(WAIT, flushing).await.expect("the flush ends once it is settled").unwrap();
    assert_eq!(row(&sender_db.pool, envelope.message_id).await, (true, true), "and stamps it at once");
}

#[tokio::test]
async fn giving_back_a_message_already_sent_changes_nothing() {
    let db = common::database().await;
    let outbox = PgOutbox::from(db.pool.clone());
    let hand_off = hand_off(&db.pool);
    let spec = QueueSpec { name: "q".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    let _deliveries = hand_off.subscribe(&spec);
    let envelope = shipped(Uuid::now_v7());
    send(&db, &hand_off, envelope.clone()).await;
    sqlx::query("UPDATE outbox SET sent_at = now()").execute(&db.pool).await.unwrap();
    outbox.give_back(&[envelope.message_id]).await.unwrap();
    assert_eq!(row(&db.pool, envelope.message_id).await, (true, true));
}

#[tokio::test]
async fn the_relays_hear_of_rows_due_now_of_rows_only_scheduled_and_nothing_of_handed_off_ones() {
    let db = common::database().await;
    let hand_off = hand_off(&db.pool);
    let spec = QueueSpec { name: "q".into(), message_types: vec![SHIPPED.into()], prefetch: 1 };
    let deliveries = hand_off.subscribe(&spec);
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("outbox").await.unwrap();
    let group = GroupCommit::from(db.pool.clone()).with_hand_off(hand_off.clone());
    let commit = async |outgoing: Vec<Outgoing>| {
        let mut effects = Effects::new();
        effects.outgoing = outgoing;
        group.commit(&effects, async |_| Ok(())).await.unwrap();
    };
    let at_once = || Outgoing { envelope: shipped(Uuid::now_v7()), deliver_after: None };
    let due = chrono::Utc::now() + chrono::Duration::minutes(5);
    let later = || Outgoing { envelope: shipped(Uuid::now_v7()), deliver_after: Some(due) };
    let micros = due.timestamp_micros();

    commit(vec![at_once()]).await; // handed off: no notification
    commit(vec![later(), at_once()]).await; // a schedule, and nothing due for the relay now
    drop(deliveries); // nobody takes them any more: due for the relay
    commit(vec![at_once(), later()]).await;

    let mut heard = Vec::new();
    for _ in 0..2 {
        let notification = tokio::time::timeout(WAIT, listener.recv()).await.unwrap().unwrap();
        heard.push(notification.payload().to_owned());
    }
    assert_eq!(heard, [format!("later:{micros}"), micros.to_string()]);
}

#[tokio::test]
async fn the_stamps_of_messages_applied_close_together_share_one_transaction() {
    let db = common::database().await;
    let hand_off = Arc::new(
        HandOff::new("test", [SHIPPED.to_owned()], Arc::new(PgOutbox::from(db.pool.clone())))
            .with_stamp_after(Duration::from_secs(1)),
    );
    let transport = MemoryTransport::new();
    let (_stop, _) = consume(&db, &hand_off, &transport).await;
    let (first, second) = (shipped(Uuid::now_v7()), shipped(Uuid::now_v7()));
    send(&db, &hand_off, first.clone()).await;
    send(&db, &hand_off, second.clone()).await;
    eventually(WAIT, "both are applied", async || common::counter(&db.pool).await == 2).await;
    eventually(WAIT, "both rows are stamped", async || {
        row(&db.pool, first.message_id).await == (true, true) && row(&db.pool, second.message_id).await == (true, true)
    })
    .await;
    let stamped_by: Vec<String> = sqlx::query_scalar("SELECT xmin::text FROM outbox WHERE message_id = ANY($1)")
        .bind([first.message_id, second.message_id])
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stamped_by.len(), 2);
    assert_eq!(stamped_by[0], stamped_by[1], "one transaction stamped both");
}
