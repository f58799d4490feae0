//! The consumer runtime: takes deliveries from a queue, runs a handler on each with bounded
//! concurrency, retries transient failures with exponential backoff, moves messages that cannot
//! be processed to the queue's error queue with the reason, and acknowledges only after the
//! handler has committed.

use crate::envelope::Envelope;
use crate::transport::{Delivery, Failure, Naming, QueueSpec, Transport};
use crate::unit_of_work::Inbox;
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Why a handler did not process a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (database unreachable, ...): retried with backoff.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Will never succeed (unreadable body, unknown type, broken rule): dead-lettered at once.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A permanent failure described by `error` (an undecodable body, a broken rule, ...).
    pub fn permanent(error: impl std::fmt::Display) -> Self {
        HandlerError::Permanent(error.to_string())
    }
}

/// Application code that reacts to messages. It must commit its effects together with the
/// inbox record of the message (see [`crate::Effects::consuming`]) under its [`name`](Self::name).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The consumer name: names its queue and its inbox records.
    fn name(&self) -> &'static str;
    /// The message types routed to this consumer.
    fn message_types(&self) -> Vec<&'static str>;

    /// Messages with the same key are handled one after another (within a process); others
    /// run concurrently. By default, the correlation id: one order's messages never race each
    /// other for the same saga or aggregate version.
    fn ordering_key(&self, message: &Envelope) -> u64 {
        hash(&message.correlation_id)
    }

    async fn handle(&self, message: &Envelope) -> Result<(), HandlerError>;

    /// Applies several messages with one ordering key in one unit of work (one load, one
    /// commit with every inbox record), if the handler knows how; `None` if it does not. On
    /// `None` or an error the runtime handles the messages one by one, so that a message that
    /// fails is retried or dead-lettered on its own.
    async fn handle_many(&self, _messages: &[Envelope]) -> Option<Result<(), HandlerError>> {
        None
    }
}

fn message_id(delivery: &Delivery) -> Option<uuid::Uuid> {
    delivery.message.as_ref().ok().map(|message| message.message_id)
}

/// Most deliveries a lane takes at once for [`Handler::handle_many`].
const MAX_BATCH: usize = 32;

/// A stable hash for ordering keys.
pub fn hash(key: impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 8, initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// The pause after the `attempt`-th failure: exponential, with full jitter on the upper half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponential = self.initial_backoff.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        let capped = exponential.min(self.max_backoff);
        capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Messages handled at once by this consumer (per process): the number of ordering lanes.
    pub concurrency: usize,
    /// Unacknowledged deliveries the broker may push ahead.
    pub prefetch: u16,
    pub retry: RetryPolicy,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self { concurrency: 16, prefetch: 64, retry: RetryPolicy::default() }
    }
}

pub struct Consumer {
    service: &'static str,
    queue: QueueSpec,
    handler: Arc<dyn Handler>,
    inbox: Option<Arc<dyn Inbox>>,
    config: ConsumerConfig,
}

impl Consumer {
    pub fn new(service: &'static str, naming: &Naming, handler: Arc<dyn Handler>, config: ConsumerConfig) -> Self {
        let queue = QueueSpec {
            name: naming.queue(service, handler.name()),
            message_types: handler.message_types().into_iter().map(str::to_owned).collect(),
            prefetch: config.prefetch,
        };
        Self { service, queue, handler, inbox: None, config }
    }

    /// Skips copies of messages the inbox says were applied, without running the handler.
    pub fn with_inbox(mut self, inbox: Arc<dyn Inbox>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    pub fn queue(&self) -> &QueueSpec {
        &self.queue
    }

    /// Consumes until `shutdown`; then stops taking deliveries and finishes those in flight.
    pub async fn run(self, transport: Arc<dyn Transport>, shutdown: CancellationToken) {
        let worker = Arc::new(Worker {
            service: self.service,
            handler: self.handler,
            inbox: self.inbox,
            retry: self.config.retry,
            shutdown: shutdown.clone(),
        });
        let mut deliveries = loop {
            match transport.consume(&self.queue).await {
                Ok(deliveries) => break deliveries,
                Err(error) => {
                    tracing::warn!(queue = %self.queue.name, %error, "cannot consume yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        tracing::info!(queue = %self.queue.name, "consuming");
        // One lane per unit of concurrency; a delivery goes to the lane of its ordering key.
        // Lanes need no bound of their own: the prefetch window bounds what is in hand.
        let mut lanes = Vec::with_capacity(self.config.concurrency.max(1));
        let mut workers = JoinSet::new();
        for _ in 0..self.config.concurrency.max(1) {
            let (lane, mut queued) = mpsc::unbounded_channel::<Delivery>();
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
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break,
                delivery = deliveries.next() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            let key = match &delivery.message {
                Ok(message) => worker.handler.ordering_key(message),
                Err(_) => 0,
            };
            let lane = &lanes[(key % lanes.len() as u64) as usize];
            if lane.send(delivery).is_err() {
                break;
            }
        }
        // Settle what is in flight while the deliveries (and their channel) are still open.
        drop(lanes);
        while workers.join_next().await.is_some() {}
        drop(deliveries);
        tracing::info!(queue = %self.queue.name, "consumer stopped");
    }
}

struct Worker {
    service: &'static str,
    handler: Arc<dyn Handler>,
    inbox: Option<Arc<dyn Inbox>>,
    retry: RetryPolicy,
    shutdown: CancellationToken,
}

impl Worker {
    /// Handles a lane's batch: runs of readable first deliveries with the same ordering key go
    /// to [`Handler::handle_many`] together; everything else, and any run it does not take,
    /// one by one.
    async fn process_all(&self, batch: Vec<Delivery>) {
        let mut deliveries = batch.into_iter().peekable();
        while let Some(first) = deliveries.next() {
            let mut run = vec![first];
            if let Some(key) = self.batch_key(&run[0]) {
                // A copy of a message already in the run ends it: one unit of work must not
                // consume the same message twice.
                let mut ids = std::collections::HashSet::from([message_id(&run[0])]);
                while let Some(next) =
                    deliveries.next_if(|next| self.batch_key(next) == Some(key) && !ids.contains(&message_id(next)))
                {
                    ids.insert(message_id(&next));
                    run.push(next);
                }
            }
            if run.len() > 1 && self.process_together(&mut run).await {
                continue;
            }
            for delivery in run {
                self.process(delivery).await;
            }
        }
    }

    /// The key under which a delivery may join a batch: readable and delivered for the first time.
    fn batch_key(&self, delivery: &Delivery) -> Option<u64> {
        match &delivery.message {
            Ok(message) if !delivery.redelivered => Some(self.handler.ordering_key(message)),
            _ => None,
        }
    }

    /// One unit of work for the whole run; on success every delivery is acknowledged.
    async fn process_together(&self, run: &mut Vec<Delivery>) -> bool {
        let mut messages: Vec<Envelope> = run.iter().filter_map(|d| d.message.as_ref().ok().cloned()).collect();
        let span = self.handling_span(&mut messages);
        let started = std::time::Instant::now();
        match self.handler.handle_many(&messages).instrument(span).await {
            Some(Ok(())) => {
                tracing::debug!(count = messages.len(), took = ?started.elapsed(), "handled together");
                for (delivery, message) in run.drain(..).zip(&messages) {
                    self.ack(delivery, message, "handled").await;
                }
                true
            }
            Some(Err(error)) => {
                tracing::debug!(count = messages.len(), %error, "batch failed; handling its messages one by one");
                false
            }
            None => false,
        }
    }

    async fn process(&self, delivery: Delivery) {
        let mut message = match &delivery.message {
            Ok(message) => message.clone(),
            Err(reason) => {
                let reason = format!("unreadable message: {reason}");
                return self.dead_letter(delivery, "unreadable", Failure { reason, attempts: 0 }).await;
            }
        };
        let span = self.handling_span(std::slice::from_mut(&mut message));
        self.process_message(delivery, &message).instrument(span).await;
    }

    /// The span of handling `messages` (one, or a batch), a child of the span that sent the
    /// first and linked to the senders of the others. Each message's `traceparent` becomes this
    /// span, so that the messages the handler causes name it as their parent.
    fn handling_span(&self, messages: &mut [Envelope]) -> tracing::Span {
        let consumer = self.handler.name();
        let first = &messages[0];
        let span = tracing::info_span!(
            parent: None,
            "consume",
            otel.name = format!("{consumer} {}", first.message_type),
            otel.kind = "consumer",
            service = self.service,
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
        for message in messages.iter_mut() {
            message.traceparent = Some(trace.to_string());
        }
        span
    }

    async fn process_message(&self, delivery: Delivery, message: &Envelope) {
        let consumer = self.handler.name();
        if delivery.redelivered && self.already_consumed(message).await {
            return self.ack(delivery, message, "duplicate").await;
        }
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let outcome = self.handler.handle(message).await;
            metrics::histogram!("message_handling_seconds", "consumer" => consumer, "type" => message.message_type.clone())
                .record(started.elapsed().as_secs_f64());
            let failure = match outcome {
                Ok(()) => {
                    tracing::debug!(took = ?started.elapsed(), "handled");
                    return self.ack(delivery, message, "handled").await;
                }
                Err(HandlerError::Permanent(reason)) => reason,
                Err(HandlerError::Transient(reason)) if attempt < self.retry.max_attempts => {
                    let pause = self.retry.backoff(attempt);
                    tracing::warn!(attempt, %reason, retry_in = ?pause, "handler failed; will retry");
                    tokio::select! {
                        // Not acknowledged: the broker delivers it again after the restart.
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    attempt += 1;
                    continue;
                }
                Err(HandlerError::Transient(reason)) => format!("gave up after {attempt} attempts: {reason}"),
            };
            // A copy that lost a race with its twin fails on the state its twin left; it is no failure.
            if self.already_consumed(message).await {
                return self.ack(delivery, message, "duplicate").await;
            }
            let failure = Failure { reason: failure, attempts: attempt };
            return self.dead_letter(delivery, &message.message_type, failure).await;
        }
    }

    async fn already_consumed(&self, message: &Envelope) -> bool {
        let Some(inbox) = &self.inbox else { return false };
        match inbox.contains(self.handler.name(), message.message_id).await {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "inbox lookup failed; handling the message anyway");
                false
            }
        }
    }

    async fn ack(&self, delivery: Delivery, message: &Envelope, outcome: &'static str) {
        let consumer = self.handler.name();
        metrics::counter!("messages_consumed_total", "consumer" => consumer, "type" => message.message_type.clone(), "outcome" => outcome)
            .increment(1);
        if let Err(error) = delivery.ack().await {
            // The broker will deliver it again; the inbox makes that harmless.
            tracing::warn!(%error, "ack failed after the message was handled");
        }
    }

    async fn dead_letter(&self, delivery: Delivery, message_type: &str, failure: Failure) {
        let consumer = self.handler.name();
        tracing::error!(reason = %failure.reason, attempts = failure.attempts, "message moved to the error queue");
        metrics::counter!("messages_dead_lettered_total", "consumer" => consumer, "type" => message_type.to_owned())
            .increment(1);
        if let Err(error) = delivery.dead_letter(failure).await {
            tracing::warn!(%error, "could not dead-letter the message; it will be delivered again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let first = policy.backoff(1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100), "{first:?}");
        let third = policy.backoff(3);
        assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400), "{third:?}");
        assert!(policy.backoff(30) <= Duration::from_secs(1));
    }
}
