//! The `Transport` port: publish envelopes with confirmation, consume a queue with manual acks.
//!
//! Three adapters share these semantics: [`rabbitmq`] (production), [`sqlite`] (the embedded
//! mode: a durable broker in one file) and [`memory`] (fast tests). A delivery is acknowledged only by an explicit [`Delivery::ack`]; one
//! that is dropped unacknowledged is delivered again, flagged as redelivered.

pub mod memory;
pub mod rabbitmq;
pub mod sqlite;

use crate::envelope::{Envelope, UnreadableEnvelope};
use crate::unit_of_work::BoxError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the transport could not do what it was asked. Every one but
/// [`Inequivalent`](Self::Inequivalent) is worth trying again later.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The broker could not be reached, or the connection or channel failed.
    #[error("broker unreachable")]
    Unavailable(#[source] BoxError),
    /// The broker did not answer in time; the connection is presumed dead.
    #[error("no answer from the broker in time ({0})")]
    TimedOut(&'static str),
    /// The broker refused a message (a negative confirm).
    #[error("the broker refused the message (negative confirm)")]
    Nacked,
    /// No queue is bound for the message's type (yet): publishing it now would lose it.
    #[error("no queue is bound for {message_type}")]
    Unroutable {
        /// The type (routing key) nobody is bound for.
        message_type: String,
    },
    /// A queue exists with other arguments than declared (such as another queue type): it
    /// keeps them until it is deleted, so trying again cannot help.
    #[error("queue {queue} exists with other arguments than declared ({detail})")]
    Inequivalent {
        /// The queue.
        queue: String,
        /// What the broker said.
        detail: String,
    },
}

/// A consumer's queue: its name, the message types routed to it, how many unacknowledged
/// deliveries it may hold at once. Every queue has an error queue beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue's name (see [`Naming::queue`]).
    pub name: String,
    /// The message types bound to it.
    pub message_types: Vec<String>,
    /// Unacknowledged deliveries a consumer of it may hold.
    pub prefetch: u16,
}

impl QueueSpec {
    /// The error queue beside this queue.
    pub fn error_queue(&self) -> String {
        error_queue_of(&self.name)
    }
}

/// The error queue beside `queue`, where messages that could not be processed go.
pub fn error_queue_of(queue: &str) -> String {
    format!("{queue}.error")
}

/// Names of broker objects. The prefix lets several systems (or test runs) share one broker
/// without seeing each other's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    prefix: String,
}

impl Naming {
    /// Names under `prefix` (e.g. `shop`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The prefix of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic exchange every message is published to, routed by its type name.
    pub fn exchange(&self) -> String {
        format!("{}.messages", self.prefix)
    }

    /// The queue of one consumer of one service, e.g. `shop.inventory.saga`.
    pub fn queue(&self, service: &str, consumer: &str) -> String {
        format!("{}.{service}.{consumer}", self.prefix)
    }
}

/// A message broker as the rest of the system needs it.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes every message and returns once the broker has confirmed all of them into at
    /// least one queue each. On error, any subset may have been delivered: callers publish
    /// again (consumers dedupe). A message that no queue is bound for is an error, not a loss.
    async fn publish(&self, messages: &[Envelope]) -> Result<(), TransportError>;

    /// Declares the queue, its error queue and its bindings, idempotently. Declaring the queues
    /// of every consumer before publishing means no message is published into the void.
    async fn declare(&self, queue: &QueueSpec) -> Result<(), TransportError>;

    /// Declares the queue (as [`declare`](Self::declare)) and consumes it.
    /// The stream survives reconnections; it ends only when dropped.
    async fn consume(&self, queue: &QueueSpec) -> Result<Deliveries, TransportError>;

    /// Whether the broker is reachable right now (for readiness probes).
    async fn is_ready(&self) -> bool;

    /// How many messages wait in `queue` and how many consumers take from it; `None` when
    /// this adapter cannot tell.
    async fn queue_stats(&self, _queue: &str) -> Result<Option<QueueStats>, TransportError> {
        Ok(None)
    }

    /// The operator tools on error queues, when this adapter has them.
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        None
    }
}

/// A queue as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready to be delivered (not counting those delivered and not yet acknowledged).
    pub depth: u32,
    /// Consumers subscribed to it, in every process.
    pub consumers: u32,
}

/// The deliveries of one queue, as they arrive.
pub type Deliveries = BoxStream<'static, Delivery>;

/// One delivery of a message. It must be settled with [`ack`](Self::ack) or
/// [`dead_letter`](Self::dead_letter); dropping it leaves the message to be delivered again.
pub struct Delivery {
    /// The message, or why its envelope could not be read (then it can only be dead-lettered).
    pub message: Result<Envelope, UnreadableEnvelope>,
    /// Set when the broker delivered this message before and got no ack.
    pub redelivered: bool,
    /// How to settle it; [`ack`](Self::ack) and [`dead_letter`](Self::dead_letter) use it.
    pub settlement: Settlement,
}

/// Why a message was moved to its queue's error queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, with its causes, for operators.
    pub reason: String,
    /// How many times a handler tried it (0 if none could).
    pub attempts: u32,
}

/// How an adapter settles a delivery.
#[async_trait]
pub trait Settle: Send + Sync {
    /// Removes the message from its queue: it was handled.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// Copies the message to the error queue with the failure (confirmed), then acks it.
    async fn dead_letter(self: Box<Self>, failure: Failure) -> Result<(), TransportError>;
    /// Whether [`dead_letter`](Self::dead_letter) gives the message back to be delivered
    /// through the broker rather than moving it to an error queue (a handed-off delivery).
    fn gives_back(&self) -> bool {
        false
    }
}

/// The settling half of a delivery; dropped unsettled, the message is delivered again.
pub struct Settlement(Box<dyn Settle>);

impl Settlement {
    /// Acknowledges the delivery: the message leaves its queue.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.0.ack().await
    }

    /// Moves the message to its error queue with why it failed.
    pub async fn dead_letter(self, failure: Failure) -> Result<(), TransportError> {
        self.0.dead_letter(failure).await
    }

    /// Whether a failure gives the message back to the broker's path instead of moving it to
    /// an error queue (see [`crate::hand_off`]).
    pub fn gives_back(&self) -> bool {
        self.0.gives_back()
    }
}

impl Delivery {
    /// A delivery that an adapter settles with `settle`.
    pub fn new(message: Result<Envelope, UnreadableEnvelope>, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Self { message, redelivered, settlement: Settlement(settle) }
    }

    /// Acknowledges the delivery: the message leaves its queue.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.settlement.ack().await
    }

    /// Moves the message to its error queue with why it failed.
    pub async fn dead_letter(self, failure: Failure) -> Result<(), TransportError> {
        self.settlement.dead_letter(failure).await
    }
}

/// A message in an error queue, as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The error queue it is in.
    pub queue: String,
    /// Its message id, if its envelope had one.
    pub message_id: Option<String>,
    /// Its type, if its envelope had one.
    pub message_type: Option<String>,
    /// Why it failed.
    pub reason: String,
    /// How many times a handler tried it.
    pub attempts: u32,
    /// When it was dead-lettered.
    pub failed_at: Option<DateTime<Utc>>,
    /// The body as text.
    pub body: String,
}

/// Operator tools for error queues.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// The dead letters of one error queue, without removing them.
    async fn list(&self, error_queue: &str) -> Result<Vec<DeadLetter>, TransportError>;
    /// Moves every dead letter of an error queue back to its original queue; returns how many.
    async fn replay(&self, error_queue: &str) -> Result<usize, TransportError>;
    /// Deletes every dead letter of an error queue; returns how many.
    async fn purge(&self, error_queue: &str) -> Result<usize, TransportError>;
}

/// Header names shared by the adapters.
pub(crate) mod headers {
    pub const TRACEPARENT: &str = "traceparent";
    pub const CAUSATION_ID: &str = "causation-id";
    pub const FAILURE_REASON: &str = "x-failure-reason";
    pub const FAILURE_ATTEMPTS: &str = "x-failure-attempts";
    pub const FAILED_AT: &str = "x-failed-at";
    pub const ORIGINAL_QUEUE: &str = "x-original-queue";
}

/// Counts a consuming stream of an in-process broker while it lives (its
/// [`QueueStats::consumers`]).
struct Subscribed(Arc<AtomicU32>);

impl Subscribed {
    fn new(consumers: Arc<AtomicU32>) -> Self {
        consumers.fetch_add(1, Ordering::SeqCst);
        Self(consumers)
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
