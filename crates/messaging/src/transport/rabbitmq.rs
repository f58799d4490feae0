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

use super::headers;
use super::{DeadLetter, DeadLetters, Deliveries, Delivery, Failure, QueueSpec, Settle, Transport, TransportError};
use crate::envelope::Envelope;
use crate::transport::Naming;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use uuid::Uuid;

const PERSISTENT: u8 = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the broker's confirms of one batch before the publish counts as failed.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// An ack on a channel that died can wait forever; past this, the broker redelivers anyway.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs an ack or nack with a deadline.
async fn settle(operation: impl Future<Output = lapin::Result<bool>>) -> Result<(), TransportError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, operation).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(unavailable(error)),
        Err(_) => Err(TransportError::Unavailable("no answer from the broker to an ack".into())),
    }
}
const JSON: &str = "application/json";

/// The RabbitMQ transport. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RabbitMq {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    naming: Naming,
    /// Shown in the broker's connection list.
    connection_name: String,
    link: Mutex<Link>,
}

#[derive(Default)]
struct Link {
    connection: Option<Arc<Connection>>,
    /// A channel in confirm mode shared by every publish of this process.
    publisher: Option<Channel>,
}

fn unavailable(error: lapin::Error) -> TransportError {
    TransportError::Unavailable(error.to_string())
}

impl RabbitMq {
    /// Connects once to check the broker is reachable (and declares the exchange).
    pub async fn connect(url: &str, naming: Naming, connection_name: &str) -> Result<Self, TransportError> {
        let transport = Self::lazy(url, naming, connection_name);
        transport.publisher().await?;
        Ok(transport)
    }

    /// A transport that connects on first use.
    pub fn lazy(url: &str, naming: Naming, connection_name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                naming,
                connection_name: connection_name.to_owned(),
                link: Mutex::new(Link::default()),
            }),
        }
    }

    pub fn naming(&self) -> &Naming {
        &self.inner.naming
    }

    /// A live connection, opening a new one if there is none or it died.
    async fn connection(&self, link: &mut Link) -> Result<Arc<Connection>, TransportError> {
        if let Some(connection) = &link.connection
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        link.publisher = None;
        let properties =
            ConnectionProperties::default().with_connection_name(self.inner.connection_name.clone().into());
        // A broker that is still booting may accept TCP and never answer the handshake.
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.inner.url, properties))
            .await
            .map_err(|_| TransportError::Unavailable("timed out connecting to the broker".into()))?
            .map_err(unavailable)?;
        let connection = Arc::new(connection);
        let channel = connection.create_channel().await.map_err(unavailable)?;
        declare_exchange(&channel, &self.inner.naming).await?;
        let _ = channel.close(200, "OK".into()).await;
        tracing::info!(url = %crate::redact_url(&self.inner.url), "connected to RabbitMQ");
        link.connection = Some(connection.clone());
        Ok(connection)
    }

    async fn channel(&self) -> Result<Channel, TransportError> {
        let mut link = self.inner.link.lock().await;
        let connection = self.connection(&mut link).await?;
        connection.create_channel().await.map_err(unavailable)
    }

    async fn publisher(&self) -> Result<Channel, TransportError> {
        let mut link = self.inner.link.lock().await;
        if let Some(channel) = &link.publisher
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = self.connection(&mut link).await?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        link.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// Forgets the connection if it died, so that the next use opens a new one. A healthy
    /// connection (perhaps just reopened by another task) is left alone.
    async fn forget_dead_connection(&self) {
        let dead = {
            let mut link = self.inner.link.lock().await;
            match &link.connection {
                Some(connection) if !connection.status().connected() => {
                    link.publisher = None;
                    link.connection.take()
                }
                _ => None,
            }
        };
        if let Some(connection) = dead {
            // Closing a dead connection can wait forever: never hold anything while it does.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(SETTLE_TIMEOUT, connection.close(200, "reconnecting".into())).await;
            });
        }
    }

    /// Publishes `(exchange, routing key, body, properties)` messages and waits for every confirm.
    async fn publish_raw(
        &self,
        messages: Vec<(String, String, Vec<u8>, BasicProperties)>,
    ) -> Result<(), TransportError> {
        let channel = self.publisher().await?;
        let publishing = async {
            let mut confirms = Vec::with_capacity(messages.len());
            for (exchange, routing_key, body, properties) in messages {
                // Mandatory: a message no queue is bound for comes back instead of vanishing. That
                // happens to every message published while a restarting broker recovers its bindings.
                let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                let confirm = channel
                    .basic_publish(exchange.into(), routing_key.into(), options, &body, properties)
                    .await
                    .map_err(unavailable)?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                match confirm.await.map_err(unavailable)? {
                    Confirmation::Ack(None) => {}
                    Confirmation::Ack(Some(returned)) => {
                        let routing_key = returned.delivery.routing_key;
                        return Err(TransportError::Unroutable(format!("no queue is bound for {routing_key}")));
                    }
                    Confirmation::Nack(_) => return Err(TransportError::Nacked("broker nacked a publish".into())),
                    Confirmation::NotRequested => unreachable!("the publisher channel is in confirm mode"),
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, publishing)
            .await
            .unwrap_or_else(|_| Err(TransportError::Unavailable("no confirm from the broker in time".into())));
        if matches!(outcome, Err(TransportError::Unavailable(_))) {
            self.forget_dead_connection().await;
        }
        outcome
    }

    /// Messages ready in a queue (not counting those delivered and not yet acknowledged).
    pub async fn depth(&self, queue: &str) -> Result<u32, TransportError> {
        let channel = self.channel().await?;
        let count = declare_queue(&channel, queue).await?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(count)
    }

    /// Deletes every queue of `specs` (with their error queues) and the exchange: test cleanup.
    pub async fn delete_topology(&self, specs: &[QueueSpec]) -> Result<(), TransportError> {
        let channel = self.channel().await?;
        for spec in specs {
            for queue in [spec.name.clone(), spec.error_queue()] {
                channel.queue_delete(queue.into(), QueueDeleteOptions::default()).await.map_err(unavailable)?;
            }
        }
        channel.exchange_delete(self.inner.naming.exchange().into(), Default::default()).await.map_err(unavailable)?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }
}

async fn declare_exchange(channel: &Channel, naming: &Naming) -> Result<(), TransportError> {
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(naming.exchange().into(), ExchangeKind::Topic, options, FieldTable::default())
        .await
        .map_err(unavailable)
}

async fn declare_queue(channel: &Channel, name: &str) -> Result<u32, TransportError> {
    let queue = channel
        .queue_declare(name.into(), QueueDeclareOptions::durable(), FieldTable::default())
        .await
        .map_err(unavailable)?;
    Ok(queue.message_count())
}

#[async_trait]
impl Transport for RabbitMq {
    async fn publish(&self, messages: &[Envelope]) -> Result<(), TransportError> {
        let exchange = self.inner.naming.exchange();
        let raw = messages
            .iter()
            .map(|envelope| {
                let body = serde_json::to_vec(&envelope.payload).expect("JSON values serialize");
                (exchange.clone(), envelope.message_type.clone(), body, properties_of(envelope))
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
}

fn stream_from(receiver: mpsc::Receiver<Delivery>) -> Deliveries {
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|delivery| (delivery, receiver))
    }))
}

/// Keeps a consumer subscribed across connection losses until the receiving side is dropped.
async fn supervise_consumer(
    transport: RabbitMq,
    spec: QueueSpec,
    first: (Channel, lapin::Consumer),
    sender: mpsc::Sender<Delivery>,
) {
    let mut failures = 0u32;
    let mut subscription = Some(Ok(first));
    while !sender.is_closed() {
        let attempt = match subscription.take() {
            Some(first) => first,
            None => subscribe(&transport, &spec).await,
        };
        match attempt {
            Ok((channel, mut consumer)) => {
                if failures > 0 {
                    tracing::info!(queue = %spec.name, "resubscribed after {failures} failed attempts");
                }
                failures = 0;
                loop {
                    let next = tokio::select! {
                        _ = sender.closed() => {
                            let _ = channel.close(200, "consumer stopped".into()).await;
                            return;
                        }
                        next = consumer.next() => next,
                    };
                    match next {
                        Some(Ok(delivery)) => {
                            let delivery = delivery_from(transport.clone(), &spec.name, delivery);
                            if sender.send(delivery).await.is_err() {
                                let _ = channel.close(200, "consumer stopped".into()).await;
                                return;
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(queue = %spec.name, %error, "consumer lost its channel");
                            break;
                        }
                        None => {
                            tracing::warn!(queue = %spec.name, "consumer cancelled by the broker");
                            break;
                        }
                    }
                }
                transport.forget_dead_connection().await;
            }
            Err(error) => {
                failures += 1;
                tracing::warn!(queue = %spec.name, %error, attempt = failures, "cannot subscribe; retrying");
                transport.forget_dead_connection().await;
            }
        }
        let pause = Duration::from_millis((100u64 << failures.min(6)).min(5_000));
        tokio::select! {
            _ = sender.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn subscribe(transport: &RabbitMq, spec: &QueueSpec) -> Result<(Channel, lapin::Consumer), TransportError> {
    transport.declare(spec).await?;
    let channel = transport.channel().await?;
    channel.basic_qos(spec.prefetch, BasicQosOptions::default()).await.map_err(unavailable)?;
    let consumer = channel
        .basic_consume(spec.name.clone().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map_err(unavailable)?;
    Ok((channel, consumer))
}

fn delivery_from(transport: RabbitMq, queue: &str, delivery: lapin::message::Delivery) -> Delivery {
    let message = envelope_from(&delivery.properties, &delivery.data);
    let redelivered = delivery.redelivered;
    let settle = RabbitSettle { transport, queue: queue.to_owned(), delivery: Some(delivery) };
    Delivery::new(message, redelivered, Box::new(settle))
}

struct RabbitSettle {
    transport: RabbitMq,
    queue: String,
    /// `None` once settled; an unsettled delivery is nacked back to its queue on drop.
    delivery: Option<lapin::message::Delivery>,
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        let delivery = self.delivery.take().expect("settled once");
        settle(delivery.acker.ack(BasicAckOptions::default())).await
    }

    async fn dead_letter(mut self: Box<Self>, failure: Failure) -> Result<(), TransportError> {
        let delivery = self.delivery.take().expect("settled once");
        let mut table = delivery.properties.headers().clone().unwrap_or_default();
        table.insert(headers::FAILURE_REASON.into(), long_string(&failure.reason));
        table.insert(headers::FAILURE_ATTEMPTS.into(), AMQPValue::LongInt(failure.attempts as i32));
        table.insert(headers::FAILED_AT.into(), long_string(&Utc::now().to_rfc3339()));
        table.insert(headers::ORIGINAL_QUEUE.into(), long_string(&self.queue));
        let properties = delivery.properties.clone().with_headers(table);
        let error_queue = super::error_queue_of(&self.queue);
        let published =
            self.transport.publish_raw(vec![(String::new(), error_queue, delivery.data.clone(), properties)]).await;
        match published {
            Ok(()) => settle(delivery.acker.ack(BasicAckOptions::default())).await,
            Err(error) => {
                let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                let _ = settle(delivery.acker.nack(requeue)).await;
                Err(error)
            }
        }
    }
}

impl Drop for RabbitSettle {
    fn drop(&mut self) {
        if let Some(delivery) = self.delivery.take() {
            // Hand it back now rather than when the channel closes.
            tokio::spawn(async move {
                let requeue = BasicNackOptions { requeue: true, ..Default::default() };
                let _ = settle(delivery.acker.nack(requeue)).await;
            });
        }
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text.as_bytes().to_vec()))
}

fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let table = properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

fn header_number(properties: &BasicProperties, name: &str) -> Option<i64> {
    let table = properties.headers().as_ref()?;
    match table.inner().get(name)? {
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The envelope in AMQP terms: ids and type in the standard properties, the rest in headers.
fn properties_of(envelope: &Envelope) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert("occurred-at".into(), long_string(&envelope.occurred_at.to_rfc3339()));
    if let Some(causation) = envelope.causation_id {
        table.insert(headers::CAUSATION_ID.into(), long_string(&causation.to_string()));
    }
    if let Some(traceparent) = &envelope.traceparent {
        table.insert(headers::TRACEPARENT.into(), long_string(traceparent));
    }
    BasicProperties::default()
        .with_message_id(envelope.message_id.to_string().into())
        .with_type(envelope.message_type.clone().into())
        .with_correlation_id(ShortString::from(envelope.correlation_id.clone()))
        .with_timestamp(envelope.occurred_at.timestamp().max(0) as u64)
        .with_content_type(JSON.into())
        .with_delivery_mode(PERSISTENT)
        .with_headers(table)
}

/// Reads an envelope back; any missing or malformed part makes the message unreadable.
fn envelope_from(properties: &BasicProperties, body: &[u8]) -> Result<Envelope, String> {
    let message_id = properties.message_id().as_ref().ok_or("no message id")?;
    let message_id =
        Uuid::parse_str(message_id.as_str()).map_err(|_| format!("message id {message_id} is not a UUID"))?;
    let message_type = properties.kind().as_ref().ok_or("no message type")?.as_str().to_owned();
    let correlation_id = properties.correlation_id().as_ref().ok_or("no correlation id")?.as_str().to_owned();
    let causation_id = match header_text(properties, headers::CAUSATION_ID) {
        Some(text) => Some(Uuid::parse_str(&text).map_err(|_| format!("causation id {text} is not a UUID"))?),
        None => None,
    };
    let occurred_at = header_text(properties, "occurred-at")
        .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
        .map(|at| at.with_timezone(&Utc))
        .or_else(|| properties.timestamp().and_then(|secs| DateTime::from_timestamp(secs as i64, 0)))
        .ok_or("no occurrence time")?;
    let payload = serde_json::from_slice(body).map_err(|error| format!("body is not JSON: {error}"))?;
    Ok(Envelope {
        message_id,
        message_type,
        correlation_id,
        causation_id,
        occurred_at,
        traceparent: header_text(properties, headers::TRACEPARENT),
        payload,
    })
}

/// Every message an error queue holds now, taken on `channel` without acks: those not
/// acknowledged go back to the queue when the channel closes.
async fn take_all(channel: &Channel, error_queue: &str) -> Result<Vec<lapin::message::Delivery>, TransportError> {
    let count = declare_queue(channel, error_queue).await?;
    let mut taken = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match channel.basic_get(error_queue.into(), BasicGetOptions::default()).await.map_err(unavailable)? {
            Some(message) => taken.push(message.delivery),
            None => break,
        }
    }
    Ok(taken)
}

#[async_trait]
impl DeadLetters for RabbitMq {
    async fn list(&self, error_queue: &str) -> Result<Vec<DeadLetter>, TransportError> {
        let channel = self.channel().await?;
        let letters = take_all(&channel, error_queue).await?.iter().map(|d| dead_letter_view(error_queue, d)).collect();
        let _ = channel.close(200, "OK".into()).await;
        Ok(letters)
    }

    async fn replay(&self, error_queue: &str) -> Result<usize, TransportError> {
        let channel = self.channel().await?;
        let mut replayed = 0;
        for delivery in take_all(&channel, error_queue).await? {
            let original = header_text(&delivery.properties, headers::ORIGINAL_QUEUE)
                .unwrap_or_else(|| error_queue.trim_end_matches(".error").to_owned());
            let mut cleaned = FieldTable::default();
            for (key, value) in delivery.properties.headers().clone().unwrap_or_default().inner() {
                if !key.as_str().starts_with("x-fail") && key.as_str() != headers::ORIGINAL_QUEUE {
                    cleaned.insert(key.clone(), value.clone());
                }
            }
            let properties = delivery.properties.clone().with_headers(cleaned);
            self.publish_raw(vec![(String::new(), original, delivery.data.clone(), properties)]).await?;
            settle(delivery.acker.ack(BasicAckOptions::default())).await?;
            replayed += 1;
        }
        let _ = channel.close(200, "OK".into()).await;
        Ok(replayed)
    }

    async fn purge(&self, error_queue: &str) -> Result<usize, TransportError> {
        let channel = self.channel().await?;
        declare_queue(&channel, error_queue).await?;
        let purged =
            channel.queue_purge(error_queue.into(), QueuePurgeOptions::default()).await.map_err(unavailable)?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(purged as usize)
    }
}

fn dead_letter_view(error_queue: &str, delivery: &lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    DeadLetter {
        queue: error_queue.to_owned(),
        message_id: properties.message_id().as_ref().map(|id| id.as_str().to_owned()),
        message_type: properties.kind().as_ref().map(|kind| kind.as_str().to_owned()),
        reason: header_text(properties, headers::FAILURE_REASON).unwrap_or_else(|| "unknown".into()),
        attempts: header_number(properties, headers::FAILURE_ATTEMPTS).unwrap_or(0).max(0) as u32,
        failed_at: header_text(properties, headers::FAILED_AT)
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|at| at.with_timezone(&Utc)),
        body: String::from_utf8_lossy(&delivery.data).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Causation, TraceParent};

    #[test]
    fn every_contract_message_survives_the_amqp_mapping() {
        for (message_type, payload) in contracts::samples() {
            let mut envelope = Causation::root("order-7", TraceParent::new_root())
                .envelope(&contracts::order::OrderShipped { order_id: Uuid::nil() });
            envelope.message_type = message_type.to_owned();
            envelope.payload = payload;
            envelope.causation_id = Some(Uuid::now_v7());
            let body = serde_json::to_vec(&envelope.payload).unwrap();
            let decoded = envelope_from(&properties_of(&envelope), &body).unwrap();
            assert_eq!(decoded, envelope, "{message_type}");
        }
    }

    #[test]
    fn a_message_without_its_envelope_is_unreadable() {
        let reason = envelope_from(&BasicProperties::default(), b"{}").unwrap_err();
        assert_eq!(reason, "no message id");
        let envelope = Causation::root("x", TraceParent::new_root())
            .envelope(&contracts::order::OrderShipped { order_id: Uuid::nil() });
        let reason = envelope_from(&properties_of(&envelope), b"not json").unwrap_err();
        assert!(reason.starts_with("body is not JSON"), "{reason}");
    }
}
