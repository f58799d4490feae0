//! RabbitMQ adapter of the [`Transport`] port (lapin).
//!
//! Topology: one durable topic exchange (`<prefix>.messages`) that every message is published to
//! with its type name as routing key; one durable queue per consumer bound to the types it
//! handles, and a durable error queue beside it, both classic or both quorum ([`QueueType`]).
//! Messages are persistent and published with confirms. Consumers use manual acks and a
//! prefetch window.
//!
//! Recovery is explicit rather than delegated to the client: any failure drops the broken
//! connection; the next publish opens a new one, and each consumer stream resubscribes on its
//! own with exponential backoff. Unacked deliveries of a dead channel are redelivered by the
//! broker, which the consumers' inboxes make harmless. A connection that goes silent without
//! closing is found by the AMQP heartbeat, and every request to the broker has a deadline.
//!
//! - `connection`: the shared connection and the publisher channel, the exchange.
//! - `queues`: queue types and how queues are declared.
//! - `codec`: the envelope as AMQP properties and headers, and back.
//! - `consuming`: subscriptions that survive reconnections, and how deliveries are settled.
//! - `dead_letters`: the operator tools on error queues.

mod codec;
mod connection;
mod consuming;
mod dead_letters;
mod queues;

pub use connection::{RabbitMq, RabbitMqSettings};
pub use queues::QueueType;

use super::{DeadLetters, Deliveries, QueueSpec, QueueStats, Transport, TransportError};
use crate::envelope::Envelope;
use async_trait::async_trait;
use connection::{close_quietly, declare_exchange, rpc};
use consuming::{stream_from, subscribe, supervise_consumer};
use lapin::options::QueueBindOptions;
use lapin::types::FieldTable;
use queues::Role;
use tokio::sync::mpsc;

#[async_trait]
impl Transport for RabbitMq {
    async fn publish(&self, messages: &[Envelope]) -> Result<(), TransportError> {
        let exchange = self.inner.naming.exchange();
        let raw = messages
            .iter()
            .map(|envelope| {
                let body = serde_json::to_vec(&envelope.payload).expect("JSON values serialize");
                (exchange.clone(), envelope.message_type.clone(), body, codec::properties_of(envelope))
            })
            .collect();
        self.publish_raw(raw).await
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), TransportError> {
        let channel = self.channel().await?;
        let queue_type = self.inner.settings.queue_type;
        declare_exchange(&channel, &self.inner.naming).await?;
        // The error queue first: a quorum queue dead-letters into it.
        queues::declare(&channel, &spec.error_queue(), queue_type, Role::Error).await?;
        queues::declare(&channel, &spec.name, queue_type, Role::Consumer).await?;
        for message_type in &spec.message_types {
            let binding = channel.queue_bind(
                spec.name.clone().into(),
                self.inner.naming.exchange().into(),
                message_type.clone().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            );
            rpc("binding a queue", binding).await?;
        }
        close_quietly(channel).await;
        Ok(())
    }

    async fn consume(&self, spec: &QueueSpec) -> Result<Deliveries, TransportError> {
        let subscription = subscribe(self, spec).await?;
        let (sender, receiver) = mpsc::channel(usize::from(spec.prefetch.max(1)));
        tokio::spawn(supervise_consumer(self.clone(), spec.clone(), subscription, sender));
        Ok(stream_from(receiver))
    }

    async fn is_ready(&self) -> bool {
        self.publisher().await.is_ok()
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, TransportError> {
        let channel = self.channel().await?;
        let stats = queues::inspect(&channel, queue).await?;
        close_quietly(channel).await;
        Ok(stats)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }
}
