//! The connection to RabbitMQ: opened lazily with a heartbeat, shared by every channel of this
//! process, dropped and reopened when it dies; publishing with confirms; the exchange; a
//! deadline on every request.

use super::queues::{self, QueueType};
use crate::transport::{Naming, QueueSpec, TransportError};
use lapin::options::BasicPublishOptions;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the broker's confirms of one batch before the publish counts as failed.
/// Confirms take milliseconds (a second when the broker's disk is busy); a connection that went
/// silent is found by the heartbeat sooner than this.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for the answer to any other request (open a channel, declare, consume, ...):
/// without it, a request on a silent connection waits until the heartbeat gives up on it, or
/// forever when heartbeats are off.
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// An ack on a channel that died can wait forever; past this, the broker redelivers anyway.
pub(super) const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the transport talks to the broker and what it declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RabbitMqSettings {
    /// The AMQP heartbeat interval asked of the broker (the lower of both sides' wins; zero
    /// takes the broker's). A connection on which nothing arrived for twice this long is taken
    /// for dead (a peer or network that went silent without closing it), dropped and reopened.
    pub heartbeat: Duration,
    /// The type of every queue and error queue it declares.
    pub queue_type: QueueType,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self { heartbeat: Duration::from_secs(5), queue_type: QueueType::Classic }
    }
}

/// The RabbitMQ transport. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RabbitMq {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    url: String,
    pub(super) naming: Naming,
    pub(super) settings: RabbitMqSettings,
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

pub(super) fn unavailable(error: lapin::Error) -> TransportError {
    TransportError::Unavailable(Box::new(error))
}

impl RabbitMq {
    /// Connects once to check the broker is reachable (and declares the exchange), with the
    /// default settings (classic queues).
    pub async fn connect(url: &str, naming: Naming, connection_name: &str) -> Result<Self, TransportError> {
        Self::connect_with(url, naming, connection_name, RabbitMqSettings::default()).await
    }

    /// Connects once to check the broker is reachable (and declares the exchange).
    pub async fn connect_with(
        url: &str,
        naming: Naming,
        connection_name: &str,
        settings: RabbitMqSettings,
    ) -> Result<Self, TransportError> {
        let transport = Self::lazy(url, naming, connection_name, settings);
        transport.publisher().await?;
        Ok(transport)
    }

    /// A transport that connects on first use.
    pub fn lazy(url: &str, naming: Naming, connection_name: &str, settings: RabbitMqSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                naming,
                settings,
                connection_name: connection_name.to_owned(),
                link: Mutex::new(Link::default()),
            }),
        }
    }

    /// The names of its exchange and queues.
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
        let mut uri: AMQPUri =
            self.inner.url.parse().map_err(|error: String| TransportError::Unavailable(error.into()))?;
        if !self.inner.settings.heartbeat.is_zero() {
            uri.query.heartbeat = Some(self.inner.settings.heartbeat.as_secs().clamp(1, u64::from(u16::MAX)) as u16);
        }
        let properties =
            ConnectionProperties::default().with_connection_name(self.inner.connection_name.clone().into());
        // A broker that is still booting may accept TCP and never answer the handshake.
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
            .await
            .map_err(|_| TransportError::TimedOut("connecting"))?
            .map_err(unavailable)?;
        let connection = Arc::new(connection);
        let channel = rpc("opening a channel", connection.create_channel()).await?;
        declare_exchange(&channel, &self.inner.naming).await?;
        close_quietly(channel).await;
        tracing::info!(url = %crate::redact_url(&self.inner.url), "connected to RabbitMQ");
        link.connection = Some(connection.clone());
        Ok(connection)
    }

    pub(super) async fn channel(&self) -> Result<Channel, TransportError> {
        let mut link = self.inner.link.lock().await;
        let connection = self.connection(&mut link).await?;
        rpc("opening a channel", connection.create_channel()).await
    }

    pub(super) async fn publisher(&self) -> Result<Channel, TransportError> {
        let mut link = self.inner.link.lock().await;
        if let Some(channel) = &link.publisher
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = self.connection(&mut link).await?;
        let channel = rpc("opening a channel", connection.create_channel()).await?;
        rpc("selecting confirms", channel.confirm_select(ConfirmSelectOptions::default())).await?;
        link.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// Forgets the connection if it died, so that the next use opens a new one. A healthy
    /// connection (perhaps just reopened by another task) is left alone.
    pub(super) async fn forget_dead_connection(&self) {
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
    pub(super) async fn publish_raw(
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
                        let message_type = returned.delivery.routing_key.to_string();
                        return Err(TransportError::Unroutable { message_type });
                    }
                    Confirmation::Nack(_) => return Err(TransportError::Nacked),
                    Confirmation::NotRequested => unreachable!("the publisher channel is in confirm mode"),
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(CONFIRM_TIMEOUT, publishing)
            .await
            .unwrap_or_else(|_| Err(TransportError::TimedOut("confirms")));
        if matches!(outcome, Err(TransportError::Unavailable(_) | TransportError::TimedOut(_))) {
            self.forget_dead_connection().await;
        }
        outcome
    }

    /// Messages ready in a queue (not counting those delivered and not yet acknowledged); 0 if
    /// it does not exist.
    pub async fn depth(&self, queue: &str) -> Result<u32, TransportError> {
        let channel = self.channel().await?;
        let stats = queues::inspect(&channel, queue).await?;
        close_quietly(channel).await;
        Ok(stats.map_or(0, |stats| stats.depth))
    }

    /// Deletes every queue of `specs` (with their error queues) and the exchange: test cleanup.
    pub async fn delete_topology(&self, specs: &[QueueSpec]) -> Result<(), TransportError> {
        let channel = self.channel().await?;
        for spec in specs {
            for queue in [spec.name.clone(), spec.error_queue()] {
                rpc("deleting a queue", channel.queue_delete(queue.into(), QueueDeleteOptions::default())).await?;
            }
        }
        let exchange = self.inner.naming.exchange().into();
        rpc("deleting the exchange", channel.exchange_delete(exchange, Default::default())).await?;
        close_quietly(channel).await;
        Ok(())
    }
}

/// Runs one request to the broker with a deadline (see [`RPC_TIMEOUT`]).
pub(super) async fn rpc<T>(
    what: &'static str,
    request: impl Future<Output = lapin::Result<T>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(RPC_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(unavailable),
        Err(_) => Err(TransportError::TimedOut(what)),
    }
}

/// Closes a channel that served its purpose, without waiting long for the broker's answer.
pub(super) async fn close_quietly(channel: Channel) {
    let _ = tokio::time::timeout(SETTLE_TIMEOUT, channel.close(200, "OK".into())).await;
}

pub(super) async fn declare_exchange(channel: &Channel, naming: &Naming) -> Result<(), TransportError> {
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let declaring =
        channel.exchange_declare(naming.exchange().into(), ExchangeKind::Topic, options, FieldTable::default());
    rpc("declaring the exchange", declaring).await
}
