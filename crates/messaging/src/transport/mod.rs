//! The `Transport` port: publish envelopes with confirmation, consume a queue with manual acks.
//!
//! Two adapters share these semantics: [`rabbitmq`] (production) and [`memory`] (tests and the
//! single-process mode). A delivery is acknowledged only by an explicit [`Delivery::ack`]; one
//! that is dropped unacknowledged is delivered again, flagged as redelivered.

pub mod memory;
pub mod rabbitmq;

use crate::envelope::Envelope;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("broker unreachable: {0}")]
    Unavailable(String),
    #[error("broker refused the message (negative confirm): {0}")]
    Nacked(String),
    /// No queue is bound for the message's type (yet): publishing it now would lose it.
    #[error("message unroutable: {0}")]
    Unroutable(String),
    #[error("broker error: {0}")]
    Broker(String),
}

/// A consumer's queue: its name, the message types routed to it, how many unacknowledged
/// deliveries it may hold at once. Every queue has an error queue beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: String,
    pub message_types: Vec<String>,
    pub prefetch: u16,
}

impl QueueSpec {
    pub fn error_queue(&self) -> String {
        error_queue_of(&self.name)
    }
}

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
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

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
}

pub type Deliveries = BoxStream<'static, Delivery>;

/// One delivery of a message. It must be settled with [`ack`](Self::ack) or
/// [`dead_letter`](Self::dead_letter); dropping it leaves the message to be delivered again.
pub struct Delivery {
    /// The message, or why its envelope could not be read (then it can only be dead-lettered).
    pub message: Result<Envelope, String>,
    /// Set when the broker delivered this message before and got no ack.
    pub redelivered: bool,
    settle: Box<dyn Settle>,
}

/// Why a message was moved to its queue's error queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub attempts: u32,
}

/// How an adapter settles a delivery.
#[async_trait]
pub trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    /// Copies the message to the error queue with the failure (confirmed), then acks it.
    async fn dead_letter(self: Box<Self>, failure: Failure) -> Result<(), TransportError>;
}

impl Delivery {
    pub fn new(message: Result<Envelope, String>, redelivered: bool, settle: Box<dyn Settle>) -> Self {
        Self { message, redelivered, settle }
    }

    pub async fn ack(self) -> Result<(), TransportError> {
        self.settle.ack().await
    }

    pub async fn dead_letter(self, failure: Failure) -> Result<(), TransportError> {
        self.settle.dead_letter(failure).await
    }
}

/// A message in an error queue, as operators see it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub queue: String,
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    pub reason: String,
    pub attempts: u32,
    pub failed_at: Option<DateTime<Utc>>,
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
