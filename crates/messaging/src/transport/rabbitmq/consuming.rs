//! Consuming a queue: a subscription that survives connection losses, and deliveries that are
//! settled (acked, dead-lettered, or handed back) on their channel.

use super::RabbitMq;
use super::codec::{envelope_from, long_string};
use super::connection::{SETTLE_TIMEOUT, close_quietly, rpc, unavailable};
use crate::ErrorChain;
use crate::backoff::Backoff;
use crate::transport::{
    Deliveries, Delivery, Failure, QueueSpec, Settle, Transport, TransportError, error_queue_of, headers,
};
use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::time::Duration;
use tokio::sync::mpsc;

/// Pauses between attempts to subscribe again.
const RESUBSCRIBE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Runs an ack or nack with a deadline.
pub(super) async fn settle(operation: impl Future<Output = lapin::Result<bool>>) -> Result<(), TransportError> {
    match tokio::time::timeout(SETTLE_TIMEOUT, operation).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(unavailable(error)),
        Err(_) => Err(TransportError::TimedOut("settling a delivery")),
    }
}

pub(super) fn stream_from(receiver: mpsc::Receiver<Delivery>) -> Deliveries {
    Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|delivery| (delivery, receiver))
    }))
}

/// Keeps a consumer subscribed across connection losses until the receiving side is dropped.
pub(super) async fn supervise_consumer(
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
                            close_quietly(channel).await;
                            return;
                        }
                        next = consumer.next() => next,
                    };
                    match next {
                        Some(Ok(delivery)) => {
                            let delivery = delivery_from(transport.clone(), &spec.name, delivery);
                            if sender.send(delivery).await.is_err() {
                                close_quietly(channel).await;
                                return;
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(queue = %spec.name, error = %ErrorChain(&error), "consumer lost its channel");
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
                tracing::warn!(queue = %spec.name, error = %ErrorChain(&error), attempt = failures, "cannot subscribe; retrying");
                transport.forget_dead_connection().await;
            }
        }
        // A lost subscription counts as a failure too: it waits before resubscribing.
        let pause = RESUBSCRIBE_BACKOFF.pause(failures + 1);
        tokio::select! {
            _ = sender.closed() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

pub(super) async fn subscribe(
    transport: &RabbitMq,
    spec: &QueueSpec,
) -> Result<(Channel, lapin::Consumer), TransportError> {
    transport.declare(spec).await?;
    let channel = transport.channel().await?;
    rpc("setting the prefetch", channel.basic_qos(spec.prefetch, BasicQosOptions::default())).await?;
    let consuming = channel.basic_consume(
        spec.name.clone().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    let consumer = rpc("subscribing", consuming).await?;
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
        let error_queue = error_queue_of(&self.queue);
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
