//! The consumer runtime over the in-memory transport: ordering lanes, batches, retries and
//! dead letters, with handlers that record what they were given.

use async_trait::async_trait;
use contracts::order::OrderShipped;
use messaging::transport::memory::MemoryTransport;
use messaging::transport::{DeadLetters, Transport};
use messaging::{
    Backoff, Causation, Consumer, ConsumerConfig, Envelope, Handler, HandlerError, Naming, Received, RetryPolicy,
    TraceParent,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn shipped(correlation: &str) -> Envelope {
    Causation::root(correlation, TraceParent::new_root()).envelope(&OrderShipped { order_id: Uuid::now_v7() })
}

messaging::inbound! {
    enum Shipping {
        Shipped(OrderShipped),
    }
}

/// Records single and batched handling; the first message it sees blocks until released, so
/// that the next ones queue up behind it. Fails messages whose correlation id is "poison".
struct Recorder {
    gate: Semaphore,
    singles: Mutex<Vec<Uuid>>,
    batches: Mutex<Vec<Vec<Uuid>>>,
    batching: bool,
}

impl Recorder {
    fn new(batching: bool) -> Arc<Self> {
        Arc::new(Self { gate: Semaphore::new(0), singles: Mutex::default(), batches: Mutex::default(), batching })
    }

    fn handled(&self) -> usize {
        self.singles.lock().unwrap().len() + self.batches.lock().unwrap().iter().map(Vec::len).sum::<usize>()
    }
}

#[async_trait]
impl Handler for Recorder {
    type Message = Shipping;

    fn name(&self) -> &'static str {
        "recorder"
    }

    async fn handle(&self, message: &Received<Shipping>) -> Result<(), HandlerError> {
        if self.singles.lock().unwrap().is_empty() && self.batches.lock().unwrap().is_empty() {
            self.gate.acquire().await.unwrap().forget();
        }
        if message.envelope.correlation_id == "poison" {
            return Err(HandlerError::permanent("poison"));
        }
        self.singles.lock().unwrap().push(message.envelope.message_id);
        Ok(())
    }

    async fn handle_many(&self, messages: &[&Received<Shipping>]) -> Option<Result<(), HandlerError>> {
        if !self.batching {
            return None;
        }
        if messages.iter().any(|m| m.envelope.correlation_id == "poison") {
            return Some(Err(HandlerError::permanent("a poison message in the batch")));
        }
        self.batches.lock().unwrap().push(messages.iter().map(|m| m.envelope.message_id).collect());
        Some(Ok(()))
    }
}

async fn run(handler: Arc<Recorder>, messages: Vec<Envelope>) -> MemoryTransport {
    let transport = MemoryTransport::new();
    let config = ConsumerConfig {
        concurrency: 4,
        prefetch: 64,
        retry: RetryPolicy {
            max_attempts: 2,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
        },
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new("test", &Naming::new("t"), handler.clone(), config);
    let queue = consumer.queue().clone();
    transport.declare(&queue).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    let expected = messages.iter().filter(|m| m.correlation_id != "poison").count();
    transport.publish(&messages).await.unwrap();
    // Let the queue fill up behind the first message, then release it.
    tokio::task::yield_now().await;
    while transport.ready_count(&queue.name) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handler.gate.add_permits(1);
    while handler.handled() < expected {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    transport
}

#[tokio::test]
async fn messages_of_one_key_that_queued_up_are_handled_as_one_batch_in_order() {
    let handler = Recorder::new(true);
    let messages: Vec<Envelope> = (0..6).map(|_| shipped("order-1")).collect();
    run(handler.clone(), messages.clone()).await;
    let batches = handler.batches.lock().unwrap();
    assert!(batches.iter().any(|batch| batch.len() > 1), "no batch: {batches:?}");
    let mut handled = handler.singles.lock().unwrap().clone();
    handled.extend(batches.iter().flatten());
    assert_eq!(handled, messages.iter().map(|m| m.message_id).collect::<Vec<_>>(), "each once, in order");
}

#[tokio::test]
async fn a_lane_takes_each_key_s_messages_together_wherever_they_stand_in_its_batch() {
    // Two keys that share a lane (4 lanes, by the key's hash), their messages interleaved.
    let lane = |correlation: &str| messaging::hash(correlation) % 4;
    let other = (2..).map(|n| format!("order-{n}")).find(|other| lane(other) == lane("order-1")).unwrap();
    let handler = Recorder::new(true);
    let messages: Vec<Envelope> =
        (0..8).map(|n| shipped(if n % 2 == 0 { "order-1" } else { other.as_str() })).collect();
    run(handler.clone(), messages.clone()).await;

    // The first message held the lane while the rest queued up: no two messages of one key
    // stood side by side, yet they were batched.
    let batches = handler.batches.lock().unwrap();
    assert!(batches.iter().any(|batch| batch.len() > 1), "no batch: {batches:?}");
    let key_of = |id: &Uuid| messages.iter().find(|m| m.message_id == *id).unwrap().correlation_id.clone();
    for batch in batches.iter() {
        assert!(batch.iter().all(|id| key_of(id) == key_of(&batch[0])), "a batch of two keys: {batch:?}");
    }
    let mut handled = handler.singles.lock().unwrap().clone();
    handled.extend(batches.iter().flatten());
    for key in ["order-1", other.as_str()] {
        let sent: Vec<Uuid> = messages.iter().filter(|m| m.correlation_id == key).map(|m| m.message_id).collect();
        let seen: Vec<Uuid> = handled.iter().copied().filter(|id| sent.contains(id)).collect();
        assert_eq!(seen, sent, "{key}'s messages, each once and in order");
    }
}

#[tokio::test]
async fn a_failing_batch_is_retried_message_by_message_and_only_the_culprit_is_dead_lettered() {
    let handler = Recorder::new(true);
    let mut messages: Vec<Envelope> = (0..4).map(|_| shipped("order-1")).collect();
    let mut poison = shipped("order-1");
    poison.correlation_id = "poison".into();
    // Same lane as the others: the key is the correlation id, so give it its own and check.
    messages.insert(2, poison.clone());
    let transport = run(handler.clone(), messages.clone()).await;
    let singles = handler.singles.lock().unwrap().clone();
    let good: Vec<Uuid> = messages.iter().filter(|m| m.correlation_id != "poison").map(|m| m.message_id).collect();
    let mut handled = singles.clone();
    handled.extend(handler.batches.lock().unwrap().iter().flatten());
    handled.sort();
    let mut expected = good.clone();
    expected.sort();
    assert_eq!(handled, expected);
    let letters = transport.list("t.test.recorder.error").await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, Some(poison.message_id.to_string()));
}

#[tokio::test]
async fn a_handler_without_batches_gets_every_message_alone_in_order() {
    let handler = Recorder::new(false);
    let messages: Vec<Envelope> = (0..5).map(|_| shipped("order-1")).collect();
    run(handler.clone(), messages.clone()).await;
    assert!(handler.batches.lock().unwrap().is_empty());
    assert_eq!(*handler.singles.lock().unwrap(), messages.iter().map(|m| m.message_id).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_batch_never_holds_two_copies_of_one_message() {
    // Regression: a copy next to its original in one batch made the batch's inbox insert trip
    // over itself; the batch was taken as "already applied", acknowledged, and lost.
    let handler = Recorder::new(true);
    let original = shipped("order-1");
    let messages = vec![shipped("order-1"), original.clone(), original.clone(), shipped("order-1")];
    run(handler.clone(), messages).await;
    for batch in handler.batches.lock().unwrap().iter() {
        let mut ids = batch.clone();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), batch.len(), "a batch with a message twice: {batch:?}");
    }
    assert_eq!(handler.handled(), 4, "every delivery, copies included, reached the handler once");
}

#[tokio::test]
async fn a_message_the_handler_cannot_read_is_dead_lettered_without_reaching_it() {
    let handler = Recorder::new(true);
    let transport = MemoryTransport::new();
    let consumer = Consumer::new("test", &Naming::new("t"), handler.clone(), ConsumerConfig::default());
    transport.declare(consumer.queue()).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    let mut broken = shipped("order-1");
    broken.payload = serde_json::json!({ "orderId": "not an id" });
    transport.publish(std::slice::from_ref(&broken)).await.unwrap();

    let mut letters = Vec::new();
    messaging::testing::eventually(Duration::from_secs(5), "the message is dead-lettered", async || {
        letters = transport.list("t.test.recorder.error").await.unwrap();
        !letters.is_empty()
    })
    .await;
    assert_eq!(handler.handled(), 0);
    assert_eq!((letters[0].message_id.clone(), letters[0].attempts), (Some(broken.message_id.to_string()), 1));
    assert!(
        letters[0].reason.starts_with("body of order.shipped.v1 does not match its contract: "),
        "{}",
        letters[0].reason
    );
    shutdown.cancel();
    running.await.unwrap();
}

/// Panics on messages correlated "panic" (alone or in a batch), hangs on those correlated
/// "hang", and records the others; the one correlated "gate" waits until it is released.
struct Defective {
    gate: Semaphore,
    handled: Mutex<Vec<Uuid>>,
    attempts_on_culprit: Mutex<u32>,
    batch_panics: Mutex<u32>,
}

impl Defective {
    fn culprit(&self, message: &Received<Shipping>) -> Option<&'static str> {
        match message.envelope.correlation_id.as_str() {
            "panic" => Some("panic"),
            "hang" => Some("hang"),
            _ => None,
        }
    }
}

#[async_trait]
impl Handler for Defective {
    type Message = Shipping;

    fn name(&self) -> &'static str {
        "defective"
    }

    fn ordering_key(&self, _: &Received<Shipping>) -> u64 {
        0 // one lane for everything: it must outlive the culprit
    }

    async fn handle(&self, message: &Received<Shipping>) -> Result<(), HandlerError> {
        match self.culprit(message) {
            Some(kind) => {
                *self.attempts_on_culprit.lock().unwrap() += 1;
                if kind == "hang" {
                    std::future::pending::<()>().await;
                }
                panic!("index out of bounds: the len is 0 but the index is 0");
            }
            None => {
                if message.envelope.correlation_id == "gate" {
                    self.gate.acquire().await.unwrap().forget();
                }
                self.handled.lock().unwrap().push(message.envelope.message_id);
                Ok(())
            }
        }
    }

    async fn handle_many(&self, messages: &[&Received<Shipping>]) -> Option<Result<(), HandlerError>> {
        if messages.iter().any(|message| self.culprit(message).is_some()) {
            *self.batch_panics.lock().unwrap() += 1;
            panic!("a batch with a culprit");
        }
        self.handled.lock().unwrap().extend(messages.iter().map(|message| message.envelope.message_id));
        Some(Ok(()))
    }
}

/// Publishes a message that holds the lane until the culprit and four good ones queued up behind
/// it (so that they make one batch), then three more once the culprit was dead-lettered;
/// returns the handler and its dead letters.
async fn run_defective(
    culprit: &str,
    handler_timeout: Duration,
) -> (Arc<Defective>, Vec<messaging::transport::DeadLetter>) {
    let handler = Arc::new(Defective {
        gate: Semaphore::new(0),
        handled: Mutex::default(),
        attempts_on_culprit: Mutex::default(),
        batch_panics: Mutex::default(),
    });
    let transport = MemoryTransport::new();
    let config = ConsumerConfig {
        concurrency: 1,
        retry: RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
        },
        handler_timeout,
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new("test", &Naming::new("t"), handler.clone(), config);
    let consumer_queue = consumer.queue().name.clone();
    transport.declare(consumer.queue()).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(Arc::new(transport.clone()), shutdown.clone()));
    let mut messages: Vec<Envelope> = (0..5).map(|_| shipped("order-1")).collect();
    messages[0].correlation_id = "gate".into();
    messages.insert(2, shipped(culprit));
    transport.publish(&messages).await.unwrap();
    while transport.ready_count(&consumer_queue) > 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handler.gate.add_permits(1);
    let mut letters = Vec::new();
    messaging::testing::eventually(Duration::from_secs(10), "the culprit is dead-lettered", async || {
        letters = transport.list("t.test.defective.error").await.unwrap();
        !letters.is_empty()
    })
    .await;
    let later: Vec<Envelope> = (0..3).map(|_| shipped("order-2")).collect();
    transport.publish(&later).await.unwrap();
    messaging::testing::eventually(Duration::from_secs(10), "every other message is handled", async || {
        handler.handled.lock().unwrap().len() == 8
    })
    .await;
    let handled = handler.handled.lock().unwrap().clone();
    for message in messages.iter().chain(&later).filter(|message| message.correlation_id != culprit) {
        assert!(handled.contains(&message.message_id), "{} was not handled", message.message_id);
    }
    assert_eq!(letters[0].message_type.as_deref(), Some("order.shipped.v1"));
    assert_eq!(letters[0].message_id, Some(messages[2].message_id.to_string()));
    assert_eq!(*handler.batch_panics.lock().unwrap(), 1, "the culprit's batch panicked and was split");
    shutdown.cancel();
    running.await.expect("the consumer ends at shutdown, not before");
    (handler, letters)
}

#[tokio::test]
async fn a_panic_costs_one_message_never_the_lane() {
    let (handler, letters) = run_defective("panic", Duration::from_secs(10)).await;
    // Retried like a transient failure, then dead-lettered with the panic message.
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(
        letters[0].reason,
        "gave up after 3 attempts: the handler panicked: index out of bounds: the len is 0 but the index is 0"
    );
    // Its batch's panic split the batch and cost it no attempt.
    assert_eq!(*handler.attempts_on_culprit.lock().unwrap(), 3);
}

#[tokio::test]
async fn a_handler_that_never_finishes_is_abandoned_at_its_deadline() {
    let (handler, letters) = run_defective("hang", Duration::from_millis(50)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].attempts, *handler.attempts_on_culprit.lock().unwrap()), (3, 3));
    assert_eq!(letters[0].reason, "gave up after 3 attempts: the handler did not finish within 50ms");
}
