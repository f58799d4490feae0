//! Operator tools on error queues: list, replay, purge.

use super::RabbitMq;
use super::codec::{header_number, header_text};
use super::connection::{close_quietly, rpc};
use super::consuming::settle;
use super::queues::inspect;
use crate::transport::{DeadLetter, DeadLetters, TransportError, headers};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use std::time::Duration;

/// Longest wait for the dead letters a listing looked at to be back in their queue.
const GIVE_BACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Every message an error queue holds now (none if it does not exist), taken on `channel`
/// without acks: those not acknowledged go back to the queue when the channel closes.
async fn take_all(channel: &Channel, error_queue: &str) -> Result<Vec<lapin::message::Delivery>, TransportError> {
    let count = inspect(channel, error_queue).await?.map_or(0, |stats| stats.depth);
    let mut taken = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match rpc("taking a dead letter", channel.basic_get(error_queue.into(), BasicGetOptions::default())).await? {
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
        let letters: Vec<DeadLetter> =
            take_all(&channel, error_queue).await?.iter().map(|d| dead_letter_view(error_queue, d)).collect();
        close_quietly(channel).await;
        self.until_back(error_queue, letters.len()).await?;
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
        close_quietly(channel).await;
        Ok(replayed)
    }

    async fn purge(&self, error_queue: &str) -> Result<usize, TransportError> {
        let channel = self.channel().await?;
        if inspect(&channel, error_queue).await?.is_none() {
            return Ok(0);
        }
        let purged =
            rpc("purging a queue", channel.queue_purge(error_queue.into(), QueuePurgeOptions::default())).await?;
        close_quietly(channel).await;
        Ok(purged as usize)
    }
}

impl RabbitMq {
    /// Waits (at most [`GIVE_BACK_TIMEOUT`]: an operator may have moved them meanwhile) until
    /// `error_queue` holds at least the `count` messages a listing took and gave back by closing
    /// its channel. A quorum queue takes them back asynchronously, after the close is confirmed:
    /// without the wait, a replay or purge right after a listing could find them still on their
    /// way back, and move nothing.
    async fn until_back(&self, error_queue: &str, count: usize) -> Result<(), TransportError> {
        if count == 0 {
            return Ok(());
        }
        let channel = self.channel().await?;
        let deadline = tokio::time::Instant::now() + GIVE_BACK_TIMEOUT;
        loop {
            let depth = inspect(&channel, error_queue).await?.map_or(0, |stats| stats.depth as usize);
            if depth >= count || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        close_quietly(channel).await;
        Ok(())
    }
}

fn dead_letter_view(error_queue: &str, delivery: &lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    DeadLetter {
        queue: error_queue.to_owned(),
        message_id: properties.message_id().as_ref().map(|id| id.as_str().to_owned()),
        message_type: properties.kind().as_ref().map(|kind| kind.as_str().to_owned()),
        // A message the broker dead-lettered itself (a quorum queue's delivery limit) carries
        // the broker's reason and delivery count instead of ours.
        reason: header_text(properties, headers::FAILURE_REASON)
            .or_else(|| {
                header_text(properties, "x-first-death-reason").map(|why| format!("dead-lettered by the broker: {why}"))
            })
            .unwrap_or_else(|| "unknown".into()),
        attempts: header_number(properties, headers::FAILURE_ATTEMPTS)
            .or_else(|| header_number(properties, "x-delivery-count"))
            .unwrap_or(0)
            .max(0) as u32,
        failed_at: header_text(properties, headers::FAILED_AT)
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|at| at.with_timezone(&Utc)),
        body: String::from_utf8_lossy(&delivery.data).into_owned(),
    }
}
