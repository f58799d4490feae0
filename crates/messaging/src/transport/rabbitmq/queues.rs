//! Queues as this transport declares them: classic or quorum, each consumer queue with its error
//! queue of the same type.
//!
//! Quorum queues are replicated (Raft) across the nodes of a RabbitMQ cluster and survive the
//! loss of a minority of them; they are always durable, never exclusive or auto-deleted, and
//! count deliveries. A quorum consumer queue dead-letters into its error queue, so that a
//! message the broker gives up on (past a delivery limit, such as RabbitMQ 4's default of 20)
//! lands there rather than vanishing.

use super::codec::long_string;
use super::connection::{RPC_TIMEOUT, unavailable};
use crate::transport::{QueueStats, TransportError, error_queue_of};
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use std::fmt;
use std::str::FromStr;

/// The kind of queue every consumer queue and error queue is declared as. A queue keeps the
/// type it was created with: declaring it as the other type fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QueueType {
    /// One node holds each queue: the fastest, for a single broker.
    #[default]
    Classic,
    /// Replicated across a cluster's nodes: survives the loss of a broker node.
    Quorum,
}

impl QueueType {
    fn name(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl fmt::Display for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QueueType {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!("unknown queue type {other:?}: use classic or quorum")),
        }
    }
}

/// Whether a queue is a consumer's queue or the error queue beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Consumer,
    Error,
}

/// The arguments a queue is declared with.
fn arguments(queue: &str, queue_type: QueueType, role: Role) -> FieldTable {
    let mut table = FieldTable::default();
    // The type is always named, so that a queue of the other type is refused, not reused.
    table.insert("x-queue-type".into(), long_string(queue_type.name()));
    if queue_type == QueueType::Quorum && role == Role::Consumer {
        table.insert("x-dead-letter-exchange".into(), long_string(""));
        table.insert("x-dead-letter-routing-key".into(), long_string(&error_queue_of(queue)));
        // Dead-lettered by the broker only once the error queue has confirmed it.
        table.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
        table.insert("x-overflow".into(), long_string("reject-publish"));
    }
    table
}

/// Declares `queue` (durable, of `queue_type`), idempotently; fails with
/// [`TransportError::Inequivalent`] when it exists with other arguments.
pub(super) async fn declare(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
    role: Role,
) -> Result<(), TransportError> {
    let declaring =
        channel.queue_declare(queue.into(), QueueDeclareOptions::durable(), arguments(queue, queue_type, role));
    match tokio::time::timeout(RPC_TIMEOUT, declaring).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => match refusal(&error) {
            Some((AMQPSoftError::PRECONDITIONFAILED, detail)) => {
                Err(TransportError::Inequivalent { queue: queue.to_owned(), detail })
            }
            _ => Err(unavailable(error)),
        },
        Err(_) => Err(TransportError::TimedOut("declaring a queue")),
    }
}

/// How many messages are ready in `queue` and how many consumers it has, without declaring it:
/// `None` if it does not exist.
pub(super) async fn inspect(channel: &Channel, queue: &str) -> Result<Option<QueueStats>, TransportError> {
    let options = QueueDeclareOptions { passive: true, ..Default::default() };
    let inspecting = channel.queue_declare(queue.into(), options, FieldTable::default());
    match tokio::time::timeout(RPC_TIMEOUT, inspecting).await {
        Ok(Ok(queue)) => Ok(Some(QueueStats { depth: queue.message_count(), consumers: queue.consumer_count() })),
        Ok(Err(error)) => match refusal(&error) {
            Some((AMQPSoftError::NOTFOUND, _)) => Ok(None),
            _ => Err(unavailable(error)),
        },
        Err(_) => Err(TransportError::TimedOut("inspecting a queue")),
    }
}

/// The broker's refusal (a channel-level error) and its text, if that is what `error` is.
fn refusal(error: &lapin::Error) -> Option<(AMQPSoftError, String)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(refusal) => match refusal.kind() {
            AMQPErrorKind::Soft(kind) => Some((kind.clone(), refusal.get_message().to_string())),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_types_read_as_they_are_written() {
        for queue_type in [QueueType::Classic, QueueType::Quorum] {
            assert_eq!(queue_type.to_string().parse::<QueueType>(), Ok(queue_type));
        }
        assert_eq!("stream".parse::<QueueType>(), Err("unknown queue type \"stream\": use classic or quorum".into()));
    }

    #[test]
    fn a_quorum_consumer_queue_dead_letters_into_its_error_queue() {
        let table = arguments("shop.order.catalog", QueueType::Quorum, Role::Consumer);
        let routing = table.inner().get("x-dead-letter-routing-key").cloned();
        assert_eq!(routing, Some(long_string("shop.order.catalog.error")));
        let error_queue = arguments("shop.order.catalog.error", QueueType::Quorum, Role::Error);
        assert_eq!(error_queue.inner().len(), 1, "an error queue has only its type");
    }
}
