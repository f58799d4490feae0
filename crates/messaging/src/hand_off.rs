//! The in-process hand-off: a message that a consumer of the same service (and database) takes,
//! and nobody else, goes from the commit that wrote it straight to that consumer, instead of
//! from the outbox through the relay and the broker.
//!
//! The outbox row is still written in the unit of work's transaction; what changes is who
//! settles it. The row is written *handed off*, with a lease: the relay leaves it alone until
//! the lease ends. Once the consumer has committed its unit of work (with its inbox record),
//! the row is stamped sent, with every row applied within [`STAMP_AFTER`] of it, in one
//! transaction ([`HandedOffRows::settle`]). If that never happens (the process died, the consumer stopped
//! first), the lease runs out and the relay publishes the row through the broker as any other:
//! the consumer's inbox drops the copy if the first one was applied after all. A handed-off
//! message the consumer cannot process is given back to the relay at once
//! ([`HandedOffRows::give_back`]), so that it takes the broker's path and is retried and
//! dead-lettered there, with its reason, like every message.

use crate::envelope::Envelope;
use crate::transport::{Deliveries, Delivery, Failure, QueueSpec, Settle, TransportError};
use crate::unit_of_work::{BoxError, Outgoing};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// How long the relay leaves a handed-off row alone: longer than a consumer takes to apply a
/// message under load, short enough that a crash delays its messages only by this.
pub const LEASE: Duration = Duration::from_secs(10);

/// How long the stamps of applied messages gather before one transaction stamps them all: a
/// transaction per message, alone in the system, would cost a commit per handed-off message;
/// gathered, at 100 orders/s, one serves about ten orders. The lease is a hundred times longer.
pub const STAMP_AFTER: Duration = Duration::from_millis(100);

/// Longest a stamp or a give-back may take: a database connection that went silent must not
/// hold either forever (the lease covers what they did not do).
const DEADLINE: Duration = Duration::from_secs(20);

/// The outbox rows of handed-off messages, as the hand-off settles them.
#[async_trait]
pub trait HandedOffRows: Send + Sync + 'static {
    /// Stamps sent the rows of these messages, which their consumer has applied.
    async fn settle(&self, message_ids: &[Uuid]) -> Result<(), BoxError>;
    /// Makes the row of `message_id` due for the relay now, unless it was sent.
    async fn give_back(&self, message_id: Uuid) -> Result<(), BoxError>;
}

/// The hand-off of one service's database: which message types go to which of its consumers.
pub struct HandOff {
    /// The service whose database and consumers these are (labels spans).
    service: &'static str,
    /// The types a consumer of this service alone reads.
    local: HashSet<String>,
    lease: Duration,
    stamp_after: Duration,
    rows: Arc<dyn HandedOffRows>,
    /// The consumers taking deliveries now, by message type.
    subscribed: Mutex<HashMap<String, mpsc::UnboundedSender<Envelope>>>,
    /// Messages applied whose rows are not stamped yet, and whether a stamp is scheduled.
    applied: Mutex<(Vec<Uuid>, bool)>,
}

impl HandOff {
    /// The hand-off of `service` for the message types in `local` (those a single consumer of
    /// this service reads, and no other service), whose outbox rows are `rows`.
    pub fn new(service: &'static str, local: impl IntoIterator<Item = String>, rows: Arc<dyn HandedOffRows>) -> Self {
        let local = local.into_iter().collect();
        let (subscribed, applied) = (Mutex::default(), Mutex::default());
        Self { service, local, lease: LEASE, stamp_after: STAMP_AFTER, rows, subscribed, applied }
    }

    /// Another lease than [`LEASE`] (tests).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Another gathering time than [`STAMP_AFTER`] (tests).
    pub fn with_stamp_after(mut self, stamp_after: Duration) -> Self {
        self.stamp_after = stamp_after;
        self
    }

    /// How long the relay leaves a handed-off row alone.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Which of `outgoing` will be handed off once committed: those sent at once whose type a
    /// consumer of this process is taking now.
    pub fn select(&self, outgoing: &[Outgoing]) -> Vec<bool> {
        let subscribed = self.subscribed.lock().expect("hand-off lock");
        outgoing
            .iter()
            .map(|outgoing| {
                outgoing.deliver_after.is_none() && subscribed.contains_key(&outgoing.envelope.message_type)
            })
            .collect()
    }

    /// Hands the committed messages selected by [`select`](Self::select) to their consumers. One
    /// whose consumer stopped meanwhile stays with its lease, for the relay.
    pub fn deliver<'a>(&self, envelopes: impl IntoIterator<Item = &'a Envelope>) {
        let subscribed = self.subscribed.lock().expect("hand-off lock");
        for envelope in envelopes {
            let taken = subscribed
                .get(&envelope.message_type)
                .is_some_and(|consumer| consumer.send(self.traced(envelope)).is_ok());
            metrics::counter!("messages_handed_off_total", "outcome" => if taken { "taken" } else { "left" })
                .increment(1);
        }
    }

    /// `envelope` handed on under a span of the hand-off (as the relay's `publish` span is for a
    /// message that goes through the broker), which the consumer's span follows.
    fn traced(&self, envelope: &Envelope) -> Envelope {
        let mut envelope = envelope.clone();
        crate::trace::producer_span("hand off", self.service, &mut envelope);
        envelope
    }

    /// The deliveries handed off to the consumer of `queue`, for the types of it that are
    /// local; they stop being handed off when the stream is dropped.
    pub fn subscribe(self: &Arc<Self>, queue: &QueueSpec) -> Deliveries {
        let (sender, receiver) = mpsc::unbounded_channel();
        let types: Vec<String> =
            queue.message_types.iter().filter(|message_type| self.local.contains(*message_type)).cloned().collect();
        {
            let mut subscribed = self.subscribed.lock().expect("hand-off lock");
            for message_type in &types {
                subscribed.insert(message_type.clone(), sender.clone());
            }
        }
        let subscription = Subscription { hand_off: self.clone(), types, sender };
        // The subscription lives as long as the stream: it is part of the unfold's state.
        futures::stream::unfold((receiver, subscription), |(mut receiver, subscription)| async move {
            let envelope = receiver.recv().await?;
            let settle =
                HandedOffSettlement { message_id: envelope.message_id, hand_off: subscription.hand_off.clone() };
            Some((Delivery::new(Ok(envelope), false, Box::new(settle)), (receiver, subscription)))
        })
        .boxed()
    }

    /// Records that a consumer applied `message_id`. Its row is stamped sent within
    /// [`STAMP_AFTER`], with all that gathered meanwhile, by one statement: at most one stamp per
    /// [`STAMP_AFTER`]. A stamp that fails (or a process that stops first) leaves the rows to
    /// the relay at the end of their lease, and the consumer's inbox drops the copies.
    fn applied(self: &Arc<Self>, message_id: Uuid) {
        let mut applied = self.applied.lock().expect("hand-off lock");
        applied.0.push(message_id);
        if std::mem::replace(&mut applied.1, true) {
            return; // a stamp is scheduled already
        }
        drop(applied);
        let hand_off = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(hand_off.stamp_after).await;
                let batch = {
                    let mut applied = hand_off.applied.lock().expect("hand-off lock");
                    if applied.0.is_empty() {
                        applied.1 = false;
                        return;
                    }
                    std::mem::take(&mut applied.0)
                };
                let failure = match tokio::time::timeout(DEADLINE, hand_off.rows.settle(&batch)).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => crate::ErrorChain(error.as_ref()).to_string(),
                    Err(_) => format!("no answer within {DEADLINE:?}"),
                };
                tracing::warn!(error = %failure, count = batch.len(), "could not stamp handed-off messages sent; the relay publishes them when their lease ends");
            }
        });
    }
}

/// A consumer's subscription; dropped, its types are no longer handed off.
struct Subscription {
    hand_off: Arc<HandOff>,
    types: Vec<String>,
    sender: mpsc::UnboundedSender<Envelope>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribed = self.hand_off.subscribed.lock().expect("hand-off lock");
        for message_type in &self.types {
            if subscribed.get(message_type).is_some_and(|sender| sender.same_channel(&self.sender)) {
                subscribed.remove(message_type);
            }
        }
    }
}

/// How a handed-off delivery is settled: acknowledged, its row is stamped sent; dead-lettered,
/// it is given back to the relay.
struct HandedOffSettlement {
    message_id: Uuid,
    hand_off: Arc<HandOff>,
}

#[async_trait]
impl Settle for HandedOffSettlement {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.hand_off.applied(self.message_id);
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, failure: Failure) -> Result<(), TransportError> {
        let _ = failure; // the broker's path fails it again, and dead-letters it with its reason
        match tokio::time::timeout(DEADLINE, self.hand_off.rows.give_back(self.message_id)).await {
            Ok(given) => given.map_err(TransportError::Unavailable),
            Err(_) => Err(TransportError::TimedOut("giving a handed-off message back")),
        }
    }

    fn gives_back(&self) -> bool {
        true
    }
}
