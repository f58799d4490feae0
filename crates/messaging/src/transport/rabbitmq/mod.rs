//! RabbitMQ adapter of the [`Transport`] port (lapin).
//!
//! Topology: one durable topic exchange (`<prefix>.messages`) that every message is published to
//! with its type name as routing key; one durable queue per consumer bound to the types it
//! handles, and a durable error queue beside it. Messages are persistent and published with
//! confirms. Consumers use manual acks and a prefetch window.
//!
//! Recovery is explicit rather than delegated to the client: any failure drops the broken
//! connection; the next publish opens a new one, and each consumer stream resubscribes on its
//! own with exponential backoff. Unacked deliveries of a dead channel are redelivered by the
//! broker, which the consumers' inboxes make harmless.
//!
//! - `connection`: the shared connection and the publisher channel, declarations.
//! - `codec`: the envelope as AMQP properties and headers, and back.
//! - `consuming`: subscriptions that survive reconnections, and how deliveries are settled.
//! - `dead_letters`: the operator tools on error queues.

mod codec;
mod connection;
mod consuming;
mod dead_letters;

pub use connection::RabbitMq;

use super::{DeadLetters, Deliveries, QueueSpec, QueueStats, Transport, TransportError};
use crate::envelope::Envelope;
use async_trait::async_trait;
use connection::{declare_exchange, declare_queue, unavailable};
use consuming::{stream_from, subscribe, supervise_consumer};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
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
        declare_exchange(&channel, &self.inner.naming).await?;
        declare_queue(&channel, &spec.name).await?;
        declare_queue(&channel, &spec.error_queue()).await?;
        for message_type in &spec.message_types {
            channel
                .queue_bind(
                    spec.name.clone().into(),
                    self.inner.naming.exchange().into(),
                    message_type.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
        }
        let _ = channel.close(200, "OK".into()).await;
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
        // Passive: reads the queue as it was declared, whatever its arguments, creating nothing.
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared =
            channel.queue_declare(queue.into(), options, FieldTable::default()).await.map_err(unavailable)?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(Some(QueueStats { depth: declared.message_count(), consumers: declared.consumer_count() }))
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }
}
