//! The consumer runtime: takes deliveries from a queue, decodes them into what the handler
//! reads, runs the handler on each with bounded concurrency, retries transient failures with
//! backoff, moves messages that cannot be processed to the queue's error queue with the reason,
//! and acknowledges only after the handler has committed.
//!
//! A handler that panics or overruns its deadline costs one attempt at one message (or batch),
//! never its lane: each unit of work runs under `catch_unwind` and a timeout.

use crate::ErrorChain;
use crate::backoff::{Backoff, Jitter};
use crate::envelope::{DecodeError, Envelope, UnreadableEnvelope};
use crate::hand_off::HandOff;
use crate::handler::{Handler, HandlerError, Inbound, Received};
use crate::stats::ConsumerStats;
use crate::transport::{Deliveries, Delivery, Failure, Naming, QueueSpec, Settlement, Transport};
use crate::unit_of_work::Inbox;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Most deliveries a lane takes at once for [`Handler::handle_many`].
const MAX_BATCH: usize = 32;

/// How often a transiently failing message is tried, and how long to wait in between.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    /// The pause after each failed attempt.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5)).with_jitter(Jitter::Equal);
        Self { max_attempts: 8, backoff }
    }
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Messages handled at once by this consumer (per process): the number of ordering lanes.
    pub concurrency: usize,
    /// Unacknowledged deliveries the broker may push ahead.
    pub prefetch: u16,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Longest a unit of work (one message or a batch) may run; past it, it is abandoned and
    /// counts as a transient failure. It bounds every wait a handler cannot bound itself, such
    /// as a query on a database connection that went silent.
    pub handler_timeout: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self { concurrency: 16, prefetch: 64, retry: RetryPolicy::default(), handler_timeout: Duration::from_secs(10) }
    }
}

/// Why a unit of work was abandoned by the runtime rather than failed by the handler.
#[derive(Debug, thiserror::Error)]
pub enum Abandoned {
    /// The handler panicked (most likely a defect); the message is retried like a transient
    /// failure, and its panic message becomes the dead letter's reason.
    #[error("the handler panicked: {0}")]
    Panicked(String),
    /// The handler ran past [`ConsumerConfig::handler_timeout`].
    #[error("the handler did not finish within {0:?}")]
    TimedOut(Duration),
}

/// The message a panic was raised with (`panic!("...")`), or a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_owned(),
        (None, Some(message)) => message.clone(),
        (None, None) => "a panic without a message".to_owned(),
    }
}

/// One handler consuming its queue.
pub struct Consumer {
    name: &'static str,
    queue: QueueSpec,
    settings: Settings,
    handler: Arc<dyn Dispatch>,
    hand_off: Option<Arc<HandOff>>,
}

/// What the lanes of a consumer share besides the handler.
#[derive(Clone)]
struct Settings {
    service: &'static str,
    inbox: Option<Arc<dyn Inbox>>,
    concurrency: usize,
    retry: RetryPolicy,
    stats: Arc<ConsumerStats>,
    handler_timeout: Duration,
}

impl Consumer {
    /// The consumer of `handler` in `service`: its queue is named after both and bound to the
    /// types the handler reads.
    pub fn new<H: Handler>(service: &'static str, naming: &Naming, handler: Arc<H>, config: ConsumerConfig) -> Self {
        let name = handler.name();
        let queue = QueueSpec {
            name: naming.queue(service, name),
            message_types: H::Message::TYPES.iter().map(|&message_type| message_type.to_owned()).collect(),
            prefetch: config.prefetch,
        };
        let settings = Settings {
            service,
            inbox: None,
            concurrency: config.concurrency.max(1),
            retry: config.retry,
            stats: Arc::default(),
            handler_timeout: config.handler_timeout,
        };
        Self { name, queue, settings, handler, hand_off: None }
    }

    /// Skips copies of messages the inbox says were applied, without running the handler.
    pub fn with_inbox(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.settings.inbox = Some(inbox);
        self
    }

    /// Also takes the messages of its queue's types that `hand_off` hands over straight after
    /// their commit in this process.
    pub fn with_hand_off(mut self, hand_off: Arc<HandOff>) -> Self {
        self.hand_off = Some(hand_off);
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The queue it consumes.
    pub fn queue(&self) -> &QueueSpec {
        &self.queue
    }

    /// What it has handled and dead-lettered, counted as it runs.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.settings.stats.clone()
    }

    /// Consumes until `shutdown`; then stops taking deliveries and finishes those in flight.
    pub async fn run(self, transport: Arc<dyn Transport>, shutdown: CancellationToken) {
        let deliveries = loop {
            match transport.consume(&self.queue).await {
                Ok(deliveries) => break deliveries,
                Err(error) => {
                    tracing::warn!(queue = %self.queue.name, error = %ErrorChain(&error), "cannot consume yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let deliveries = match &self.hand_off {
            Some(hand_off) => with_handed_off(deliveries, hand_off.subscribe(&self.queue)),
            None => deliveries,
        };
        tracing::info!(queue = %self.queue.name, "consuming");
        self.handler.dispatch(self.settings, deliveries, shutdown).await;
        tracing::info!(queue = %self.queue.name, "consumer stopped");
    }
}

/// The broker's deliveries and the handed-off ones as one stream, which ends when the broker's
/// ends (the consumer then stops, as without a hand-off).
fn with_handed_off(broker: Deliveries, handed_off: Deliveries) -> Deliveries {
    let broker = broker.map(Some).chain(futures::stream::once(async { None }));
    futures::stream::select(broker, handed_off.map(Some))
        .take_while(|delivery| std::future::ready(delivery.is_some()))
        .filter_map(std::future::ready)
        .boxed()
}

/// A handler of any message type, as a [`Consumer`] holds it.
trait Dispatch: Send + Sync {
    fn dispatch(
        self: Arc<Self>,
        settings: Settings,
        deliveries: Deliveries,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()>;
}

impl<H: Handler> Dispatch for H {
    fn dispatch(
        self: Arc<Self>,
        settings: Settings,
        deliveries: Deliveries,
        shutdown: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let worker = Worker { handler: self, settings, shutdown };
        Box::pin(worker.dispatch(deliveries))
    }
}

/// A delivery as a lane holds it: decoded, or why it cannot be.
enum Taken<M> {
    Ready(Ready<M>),
    Unreadable(UnreadableEnvelope, Settlement),
    Undecodable(Envelope, DecodeError, Settlement),
}

/// A decoded delivery.
struct Ready<M> {
    key: u64,
    received: Received<M>,
    redelivered: bool,
    settlement: Settlement,
}

impl<M> Ready<M> {
    fn id(&self) -> uuid::Uuid {
        self.received.envelope.message_id
    }
}

struct Worker<H> {
    handler: Arc<H>,
    settings: Settings,
    shutdown: CancellationToken,
}

impl<H: Handler> Worker<H> {
    /// Feeds deliveries to the lanes until `shutdown`, then lets the lanes finish.
    async fn dispatch(self, mut deliveries: Deliveries) {
        let worker = Arc::new(self);
        // One lane per unit of concurrency; a delivery goes to the lane of its ordering key.
        // Lanes need no bound of their own: the prefetch window bounds what is in hand.
        let mut lanes = Vec::with_capacity(worker.settings.concurrency);
        let mut workers = JoinSet::new();
        for _ in 0..worker.settings.concurrency {
            let (lane, mut queued) = mpsc::unbounded_channel::<Taken<H::Message>>();
            let worker = worker.clone();
            workers.spawn(async move {
                while let Some(first) = queued.recv().await {
                    // Deliveries that queued up behind a busy lane are taken together.
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH
                        && let Ok(next) = queued.try_recv()
                    {
                        batch.push(next);
                    }
                    if worker.shutdown.is_cancelled() {
                        continue; // not started: dropped unacknowledged, so delivered again later
                    }
                    worker.process_all(batch).await;
                }
            });
            lanes.push(lane);
        }
        // A lane ends before shutdown only through a defect of the runtime itself (handlers
        // cannot end it): the consumer then stops too, with the lane's panic, so that its
        // supervisor sees it stop rather than a queue nobody reads.
        let mut lane_crashed = None;
        loop {
            let delivery = tokio::select! {
                _ = worker.shutdown.cancelled() => break,
                Some(ended) = workers.join_next() => {
                    let consumer = worker.handler.name();
                    match ended {
                        Err(crash) if crash.is_panic() => {
                            let panic = crash.into_panic();
                            tracing::error!(consumer, panic = %panic_message(panic.as_ref()), "a lane of the consumer panicked; stopping it");
                            lane_crashed = Some(panic);
                        }
                        Ok(()) | Err(_) => tracing::error!(consumer, "a lane of the consumer ended; stopping it"),
                    }
                    break;
                }
                delivery = deliveries.next() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let taken = worker.take(delivery);
            let key = match &taken {
                Taken::Ready(ready) => ready.key,
                Taken::Unreadable(..) | Taken::Undecodable(..) => 0,
            };
            let lane = &lanes[(key % lanes.len() as u64) as usize];
            if lane.send(taken).is_err() {
                break;
            }
        }
        // Settle what is in flight while the deliveries (and their channel) are still open.
        drop(lanes);
        while workers.join_next().await.is_some() {}
        drop(deliveries);
        if let Some(panic) = lane_crashed {
            std::panic::resume_unwind(panic);
        }
    }

    /// Decodes a delivery and finds its ordering key.
    fn take(&self, delivery: Delivery) -> Taken<H::Message> {
        let Delivery { message, redelivered, settlement } = delivery;
        let envelope = match message {
            Ok(envelope) => envelope,
            Err(unreadable) => return Taken::Unreadable(unreadable, settlement),
        };
        match H::Message::decode(&envelope) {
            Ok(message) => {
                let received = Received { envelope, message };
                let key = self.handler.ordering_key(&received);
                Taken::Ready(Ready { key, received, redelivered, settlement })
            }
            Err(error) => Taken::Undecodable(envelope, error, settlement),
        }
    }

    /// Handles a lane's batch: the decoded first deliveries of one ordering key go to
    /// [`Handler::handle_many`] together, wherever they stand in the batch (deliveries of
    /// different keys need no order between them, and a lane holds several keys); everything
    /// else, and any run it does not take, one by one. A key's deliveries keep their order.
    async fn process_all(&self, batch: Vec<Taken<H::Message>>) {
        let mut runs: Vec<Vec<Ready<H::Message>>> = Vec::new();
        // Per key, the run that still takes its deliveries: the key's latest.
        let mut taking: HashMap<u64, usize> = HashMap::new();
        for taken in batch {
            let ready = match taken {
                Taken::Ready(ready) => ready,
                Taken::Unreadable(error, settlement) => {
                    let reason = format!("unreadable message: {}", ErrorChain(&error));
                    self.dead_letter(settlement, "unreadable", Failure { reason, attempts: 0 }).await;
                    continue;
                }
                Taken::Undecodable(mut envelope, error, settlement) => {
                    let span = self.handling_span([&mut envelope]);
                    // The handler cannot read it: as if it had refused it on its first attempt.
                    let failure = Failure { reason: ErrorChain(&error).to_string(), attempts: 1 };
                    self.dead_letter(settlement, &envelope.message_type, failure).instrument(span).await;
                    continue;
                }
            };
            // A redelivery runs alone (it may have been applied), and a copy of a message
            // already in the run starts another: one unit of work must not consume a message twice.
            let joins = taking
                .get(&ready.key)
                .copied()
                .filter(|&run| !ready.redelivered && runs[run].iter().all(|other| other.id() != ready.id()));
            match joins {
                Some(run) => runs[run].push(ready),
                None => {
                    if ready.redelivered {
                        taking.remove(&ready.key);
                    } else {
                        taking.insert(ready.key, runs.len());
                    }
                    runs.push(vec![ready]);
                }
            }
        }
        for mut run in runs {
            if run.len() > 1 {
                match self.process_together(run).await {
                    Ok(()) => continue,
                    Err(unsettled) => run = unsettled,
                }
            }
            for ready in run {
                self.process(ready).await;
            }
        }
    }

    /// One unit of work for the whole run; on success every delivery is acknowledged, otherwise
    /// the run is handed back to be handled one by one.
    async fn process_together(&self, mut run: Vec<Ready<H::Message>>) -> Result<(), Vec<Ready<H::Message>>> {
        let span = self.handling_span(run.iter_mut().map(|ready| &mut ready.received.envelope));
        let started = std::time::Instant::now();
        let messages: Vec<&Received<H::Message>> = run.iter().map(|ready| &ready.received).collect();
        let outcome = self.guarded(self.handler.handle_many(&messages)).instrument(span).await;
        match outcome.unwrap_or_else(|abandoned| Some(Err(HandlerError::transient(abandoned)))) {
            Some(Ok(())) => {
                tracing::debug!(count = run.len(), took = ?started.elapsed(), "handled together");
                for ready in run {
                    self.ack(ready.settlement, &ready.received.envelope, "handled").await;
                }
                Ok(())
            }
            Some(Err(error)) => {
                tracing::debug!(count = run.len(), error = %ErrorChain(&error), "batch failed; handling its messages one by one");
                Err(run)
            }
            None => Err(run),
        }
    }

    /// The span of handling `messages` (one, or a batch), a child of the span that sent the
    /// first and linked to the senders of the others. Each message's `traceparent` becomes this
    /// span, so that the messages the handler causes name it as their parent.
    fn handling_span<'a>(&self, messages: impl IntoIterator<Item = &'a mut Envelope>) -> tracing::Span {
        let mut messages: Vec<&mut Envelope> = messages.into_iter().collect();
        let consumer = self.handler.name();
        let first = &messages[0];
        let span = tracing::info_span!(
            parent: None,
            "consume",
            otel.name = format!("{consumer} {}", first.message_type),
            otel.kind = "consumer",
            service = self.settings.service,
            consumer,
            message_type = %first.message_type,
            message_id = %first.message_id,
            correlation_id = %first.correlation_id,
            batch_size = messages.len(),
            trace_id = tracing::field::Empty,
        );
        for other in &messages[1..] {
            if let Some(sender) = other.trace_context() {
                crate::trace::link(&span, sender);
            }
        }
        let trace = crate::trace::continue_trace(&span, first.trace_context());
        span.record("trace_id", trace.trace_id_hex());
        for message in &mut messages {
            message.traceparent = Some(trace.to_string());
        }
        span
    }

    async fn process(&self, mut ready: Ready<H::Message>) {
        let span = self.handling_span([&mut ready.received.envelope]);
        self.process_message(ready).instrument(span).await;
    }

    async fn process_message(&self, ready: Ready<H::Message>) {
        let Ready { received, redelivered, settlement, .. } = ready;
        let message = &received.envelope;
        let consumer = self.handler.name();
        if redelivered && self.already_consumed(message).await {
            return self.ack(settlement, message, "duplicate").await;
        }
        let retry = &self.settings.retry;
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let outcome = self.guarded(self.handler.handle(&received)).await;
            let outcome = outcome.unwrap_or_else(|abandoned| Err(HandlerError::transient(abandoned)));
            metrics::histogram!("message_handling_seconds", "consumer" => consumer, "type" => message.message_type.clone())
                .record(started.elapsed().as_secs_f64());
            let reason = match outcome {
                Ok(()) => {
                    tracing::debug!(took = ?started.elapsed(), "handled");
                    return self.ack(settlement, message, "handled").await;
                }
                Err(HandlerError::Permanent(cause)) => ErrorChain(cause.as_ref()).to_string(),
                // A handed-off message is not retried here: given back, it is retried on the broker's path.
                Err(HandlerError::Transient(cause)) if attempt < retry.max_attempts && !settlement.gives_back() => {
                    let pause = retry.backoff.pause(attempt);
                    tracing::warn!(attempt, error = %ErrorChain(cause.as_ref()), retry_in = ?pause, "handler failed; will retry");
                    tokio::select! {
                        // Not acknowledged: the broker delivers it again after the restart.
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    attempt += 1;
                    continue;
                }
                Err(HandlerError::Transient(cause)) => {
                    format!("gave up after {attempt} attempts: {}", ErrorChain(cause.as_ref()))
                }
            };
            // A copy that lost a race with its twin fails on the state its twin left; it is no failure.
            if self.already_consumed(message).await {
                return self.ack(settlement, message, "duplicate").await;
            }
            let failure = Failure { reason, attempts: attempt };
            return self.dead_letter(settlement, &message.message_type, failure).await;
        }
    }

    /// Runs one unit of work of the handler under its deadline, catching a panic.
    async fn guarded<T>(&self, work: impl Future<Output = T>) -> Result<T, Abandoned> {
        let deadline = self.settings.handler_timeout;
        match tokio::time::timeout(deadline, AssertUnwindSafe(work).catch_unwind()).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(panic)) => {
                let consumer = self.handler.name();
                let message = panic_message(panic.as_ref());
                tracing::error!(panic = %message, "handler panicked");
                metrics::counter!("handler_panics_total", "consumer" => consumer).increment(1);
                Err(Abandoned::Panicked(message))
            }
            Err(_) => Err(Abandoned::TimedOut(deadline)),
        }
    }

    async fn already_consumed(&self, message: &Envelope) -> bool {
        let Some(inbox) = &self.settings.inbox else { return false };
        let lookup = inbox.contains(self.handler.name(), message.message_id);
        match tokio::time::timeout(self.settings.handler_timeout, lookup).await {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::warn!(error = %ErrorChain(error.as_ref()), "inbox lookup failed; handling the message anyway");
                false
            }
            Err(_) => {
                tracing::warn!("inbox lookup timed out; handling the message anyway");
                false
            }
        }
    }

    async fn ack(&self, settlement: Settlement, message: &Envelope, outcome: &'static str) {
        let consumer = self.handler.name();
        metrics::counter!("messages_consumed_total", "consumer" => consumer, "type" => message.message_type.clone(), "outcome" => outcome)
            .increment(1);
        self.settings.stats.record_handled();
        if let Err(error) = settlement.ack().await {
            // The broker will deliver it again; the inbox makes that harmless.
            tracing::warn!(error = %ErrorChain(&error), "ack failed after the message was handled");
        }
    }

    async fn dead_letter(&self, settlement: Settlement, message_type: &str, failure: Failure) {
        let consumer = self.handler.name();
        if settlement.gives_back() {
            tracing::warn!(reason = %failure.reason, attempts = failure.attempts, "a handed-off message failed; it goes through the broker");
            if let Err(error) = settlement.dead_letter(failure).await {
                tracing::warn!(error = %ErrorChain(&error), "could not give the message back; the relay takes it when its lease ends");
            }
            return;
        }
        tracing::error!(reason = %failure.reason, attempts = failure.attempts, "message moved to the error queue");
        metrics::counter!("messages_dead_lettered_total", "consumer" => consumer, "type" => message_type.to_owned())
            .increment(1);
        self.settings.stats.record_dead_lettered();
        if let Err(error) = settlement.dead_letter(failure).await {
            tracing::warn!(error = %ErrorChain(&error), "could not dead-letter the message; it will be delivered again");
        }
    }
}
