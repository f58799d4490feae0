//! The in-process hand-off: a message goes from the commit that wrote it straight to where it
//! goes next in this process, instead of waiting in the outbox for a relay to claim it. One
//! that a single consumer of the system reads, when that consumer runs in this process (of the
//! same service, or of another service the process runs: [`LocalConsumers`]), goes to it without
//! the broker; any other goes to this process's relay, which publishes it to the broker at once
//! ([`HandOff::subscribe_relay`]).
//!
//! The outbox row is still written in the unit of work's transaction; what changes is who
//! settles it. The row is written *handed off*, with a lease: the relays leave it alone until
//! the lease ends. Once the consumer has committed its unit of work (with its inbox record), or
//! the broker has confirmed the message, the row is stamped sent, with every row settled within
//! [`STAMP_AFTER`] of it, in one transaction ([`HandedOffRows::settle`]). If that never happens
//! (the process died, a stamp failed), the lease runs out and a relay claims and publishes the
//! row as any other: the consumer's inbox drops the copy if the first one was applied after
//! all. What a consumer that stopped never settled is given back when the process stops
//! ([`HandOff::flush`]). A handed-off message the consumer cannot process, or the broker does not
//! take, is given back to the relays at once ([`HandedOffRows::give_back`]), so that it takes the
//! claiming path and is retried (and dead-lettered, with its reason) there, like every message.

use crate::envelope::Envelope;
use crate::transport::{Deliveries, Delivery, Failure, QueueSpec, Settle, TransportError};
use crate::unit_of_work::{BoxError, Outgoing};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
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
    /// Stamps sent the rows of these messages, which their consumer has applied or the broker
    /// has taken.
    async fn settle(&self, message_ids: &[Uuid]) -> Result<(), BoxError>;
    /// Makes the rows of these messages due for the relays now, unless they were sent.
    async fn give_back(&self, message_ids: &[Uuid]) -> Result<(), BoxError>;
}

/// The consumers of this process taking handed-off messages now, by message type. The hand-offs
/// of every service a process runs share one, so that a message reaches its consumer in this
/// process whichever service that consumer belongs to.
#[derive(Default)]
pub struct LocalConsumers {
    subscribed: Mutex<HashMap<String, mpsc::UnboundedSender<Handed>>>,
}

/// A message on its way to a consumer, with the hand-off that settles its outbox row.
struct Handed {
    envelope: Envelope,
    from: Arc<HandOff>,
}

impl LocalConsumers {
    fn takes(&self, message_type: &str) -> bool {
        self.subscribed.lock().expect("hand-off lock").contains_key(message_type)
    }

    /// The deliveries handed off to the consumer of `queue`, for its types; they stop being
    /// handed off when the stream is dropped.
    pub fn subscribe(self: &Arc<Self>, queue: &QueueSpec) -> Deliveries {
        let (sender, receiver) = mpsc::unbounded_channel();
        let types = queue.message_types.clone();
        {
            let mut subscribed = self.subscribed.lock().expect("hand-off lock");
            for message_type in &types {
                subscribed.insert(message_type.clone(), sender.clone());
            }
        }
        let subscription = Subscription { consumers: self.clone(), types, sender, receiver };
        // The subscription lives as long as the stream: it is the unfold's state.
        futures::stream::unfold(subscription, |mut subscription| async move {
            let Handed { envelope, from } = subscription.receiver.recv().await?;
            let settle = HandedOffSettlement { message_id: envelope.message_id, hand_off: from, settled: false };
            Some((Delivery::new(Ok(envelope), false, Box::new(settle)), subscription))
        })
        .boxed()
    }
}

/// The hand-off of one service's database: which of its messages go to which consumer of this
/// process, or to its relay.
pub struct HandOff {
    /// The service whose database this is (labels spans).
    service: &'static str,
    /// The types of this service that a single consumer of the system reads.
    local: HashSet<String>,
    lease: Duration,
    stamp_after: Duration,
    rows: Arc<dyn HandedOffRows>,
    consumers: Arc<LocalConsumers>,
    /// How many handed to a consumer are neither settled nor given back yet.
    in_hand: watch::Sender<usize>,
    /// The relay publishing the others now, if one does.
    relay: Mutex<Option<mpsc::UnboundedSender<Envelope>>>,
    /// Messages settled whose rows are not stamped yet, and whether a stamp is scheduled.
    settled: Mutex<(Vec<Uuid>, bool)>,
    /// Messages handed to a consumer that stopped before settling them: given back at
    /// [`flush`](Self::flush), so that they need not wait for the end of their lease.
    dropped: Mutex<Vec<Uuid>>,
}

impl HandOff {
    /// The hand-off of `service` for the message types in `local` (those of `service` that a
    /// single consumer of the system reads), whose outbox rows are `rows`.
    pub fn new(service: &'static str, local: impl IntoIterator<Item = String>, rows: Arc<dyn HandedOffRows>) -> Self {
        let local = local.into_iter().collect();
        let (consumers, relay, settled, dropped) = Default::default();
        let in_hand = watch::Sender::new(0);
        let (lease, stamp_after) = (LEASE, STAMP_AFTER);
        Self { service, local, lease, stamp_after, rows, consumers, in_hand, relay, settled, dropped }
    }

    /// Hands off to the consumers of `consumers`, which the other hand-offs of this process
    /// share, instead of to those subscribed to this hand-off alone.
    pub fn with_consumers(mut self, consumers: Arc<LocalConsumers>) -> Self {
        self.consumers = consumers;
        self
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
    /// consumer of this process is taking now, or that this process's relay publishes.
    pub fn select(&self, outgoing: &[Outgoing]) -> Vec<bool> {
        let relay = self.relay.lock().expect("hand-off lock").is_some();
        outgoing
            .iter()
            .map(|outgoing| outgoing.deliver_after.is_none() && (relay || self.consumer_takes(&outgoing.envelope)))
            .collect()
    }

    fn consumer_takes(&self, envelope: &Envelope) -> bool {
        self.local.contains(&envelope.message_type) && self.consumers.takes(&envelope.message_type)
    }

    /// Hands the committed messages selected by [`select`](Self::select) to their consumers,
    /// or to the relay. One whose taker stopped meanwhile stays with its lease, for the relays.
    pub fn deliver<'a>(self: &Arc<Self>, envelopes: impl IntoIterator<Item = &'a Envelope>) {
        let subscribed = self.consumers.subscribed.lock().expect("hand-off lock");
        let relay = self.relay.lock().expect("hand-off lock");
        for envelope in envelopes {
            let consumer =
                subscribed.get(&envelope.message_type).filter(|_| self.local.contains(&envelope.message_type));
            let outcome = match (consumer, relay.as_ref()) {
                (Some(consumer), _) if self.hand_to(consumer, envelope) => "consumer",
                // The relay makes the producer span of a message it publishes.
                (_, Some(relay)) if relay.send(envelope.clone()).is_ok() => "relay",
                _ => "left",
            };
            metrics::counter!("messages_handed_off_total", "outcome" => outcome).increment(1);
        }
    }

    fn hand_to(self: &Arc<Self>, consumer: &mpsc::UnboundedSender<Handed>, envelope: &Envelope) -> bool {
        self.in_hand.send_modify(|count| *count += 1);
        let handed = Handed { envelope: self.traced(envelope), from: self.clone() };
        let sent = consumer.send(handed).is_ok();
        if !sent {
            self.out_of_hand();
        }
        sent
    }

    /// One handed to a consumer is settled or given back.
    fn out_of_hand(&self) {
        self.in_hand.send_modify(|in_hand| *in_hand -= 1);
    }

    /// One handed to a consumer that stopped before settling it: given back at
    /// [`flush`](Self::flush).
    fn left_unsettled(&self, message_id: Uuid) {
        self.dropped.lock().expect("hand-off lock").push(message_id);
        self.out_of_hand();
    }

    /// `envelope` handed on under a span of the hand-off (as the relay's `publish` span is for a
    /// message that goes through the broker), which the consumer's span follows.
    fn traced(&self, envelope: &Envelope) -> Envelope {
        let mut envelope = envelope.clone();
        crate::trace::producer_span("hand off", self.service, &mut envelope);
        envelope
    }

    /// The deliveries handed off to the consumer of `queue`, from this hand-off and those
    /// sharing its [`LocalConsumers`]; they stop being handed off when the stream is dropped.
    pub fn subscribe(&self, queue: &QueueSpec) -> Deliveries {
        self.consumers.subscribe(queue)
    }

    /// The messages handed to this process's relay from now on (those sent at once that no
    /// consumer here takes), until the feed is dropped. The relay settles each with
    /// [`settled`](Self::settled) once the broker took it, or [`give_back`](Self::give_back).
    pub fn subscribe_relay(self: &Arc<Self>) -> RelayFeed {
        let (sender, receiver) = mpsc::unbounded_channel();
        *self.relay.lock().expect("hand-off lock") = Some(sender.clone());
        RelayFeed { receiver, sender, hand_off: self.clone() }
    }

    /// Records that these messages were applied by their consumer or taken by the broker. Their
    /// rows are stamped sent within [`STAMP_AFTER`], with all that gathered meanwhile, by one
    /// statement: at most one stamp per [`STAMP_AFTER`]. A stamp that fails (or a process that
    /// dies first) leaves the rows to the relays at the end of their lease, and the consumers'
    /// inboxes drop the copies.
    pub fn settled(self: &Arc<Self>, message_ids: impl IntoIterator<Item = Uuid>) {
        let mut settled = self.settled.lock().expect("hand-off lock");
        settled.0.extend(message_ids);
        if std::mem::replace(&mut settled.1, true) {
            return; // a stamp is scheduled already
        }
        drop(settled);
        let hand_off = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(hand_off.stamp_after).await;
                let batch = {
                    let mut settled = hand_off.settled.lock().expect("hand-off lock");
                    if settled.0.is_empty() {
                        settled.1 = false;
                        return;
                    }
                    std::mem::take(&mut settled.0)
                };
                hand_off.stamp(&batch).await;
            }
        });
    }

    /// When the process stops: once the consumers holding its messages have settled them or
    /// stopped (those of another service of the process may stop later than this service's),
    /// stamps now what was settled and not stamped yet, and gives back what consumers stopped
    /// before settling, rather than leaving either to the relays at the end of its lease.
    pub async fn flush(&self) {
        let mut in_hand = self.in_hand.subscribe();
        if tokio::time::timeout(DEADLINE, in_hand.wait_for(|count| *count == 0)).await.is_err() {
            tracing::warn!(
                count = *in_hand.borrow(),
                "handed-off messages still in consumers' hands; the relay publishes them when their lease ends"
            );
        }
        let batch = std::mem::take(&mut self.settled.lock().expect("hand-off lock").0);
        if !batch.is_empty() {
            self.stamp(&batch).await;
        }
        let dropped = std::mem::take(&mut *self.dropped.lock().expect("hand-off lock"));
        if !dropped.is_empty()
            && let Err(error) = self.give_back(&dropped).await
        {
            tracing::warn!(error = %crate::ErrorChain(&error), count = dropped.len(), "could not give back handed-off messages nobody applied; the relay publishes them when their lease ends");
        }
    }

    async fn stamp(&self, batch: &[Uuid]) {
        let failure = match tokio::time::timeout(DEADLINE, self.rows.settle(batch)).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => crate::ErrorChain(error.as_ref()).to_string(),
            Err(_) => format!("no answer within {DEADLINE:?}"),
        };
        tracing::warn!(error = %failure, count = batch.len(), "could not stamp handed-off messages sent; the relay publishes them when their lease ends");
    }

    /// Gives these messages back to the relays, due now: they take the claiming path.
    pub async fn give_back(&self, message_ids: &[Uuid]) -> Result<(), TransportError> {
        match tokio::time::timeout(DEADLINE, self.rows.give_back(message_ids)).await {
            Ok(given) => given.map_err(TransportError::Unavailable),
            Err(_) => Err(TransportError::TimedOut("giving handed-off messages back")),
        }
    }
}

/// What is handed to this process's relay, as it takes it; dropped, nothing more is.
pub struct RelayFeed {
    receiver: mpsc::UnboundedReceiver<Envelope>,
    /// Tells this feed's subscription from a later one's.
    sender: mpsc::UnboundedSender<Envelope>,
    hand_off: Arc<HandOff>,
}

impl RelayFeed {
    /// Up to `limit` messages: waits for the first, then takes what else is waiting. Cancel-safe.
    pub async fn next_batch(&mut self, limit: usize) -> Vec<Envelope> {
        let mut batch = Vec::new();
        if let Some(first) = self.receiver.recv().await {
            batch.push(first);
            while batch.len() < limit
                && let Ok(next) = self.receiver.try_recv()
            {
                batch.push(next);
            }
        }
        batch
    }

    /// Stops taking messages and returns those handed over and not yet taken.
    pub fn close(mut self) -> Vec<Envelope> {
        self.unsubscribe();
        let mut left = Vec::new();
        while let Ok(envelope) = self.receiver.try_recv() {
            left.push(envelope);
        }
        left
    }

    fn unsubscribe(&self) {
        let mut relay = self.hand_off.relay.lock().expect("hand-off lock");
        if relay.as_ref().is_some_and(|sender| sender.same_channel(&self.sender)) {
            *relay = None;
        }
    }
}

impl Drop for RelayFeed {
    fn drop(&mut self) {
        self.unsubscribe();
    }
}

/// A consumer's subscription; dropped, its types are no longer handed off.
struct Subscription {
    consumers: Arc<LocalConsumers>,
    types: Vec<String>,
    sender: mpsc::UnboundedSender<Handed>,
    receiver: mpsc::UnboundedReceiver<Handed>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut subscribed = self.consumers.subscribed.lock().expect("hand-off lock");
            for message_type in &self.types {
                if subscribed.get(message_type).is_some_and(|sender| sender.same_channel(&self.sender)) {
                    subscribed.remove(message_type);
                }
            }
        }
        // Nothing more is handed here: what was and never reached the consumer is given back.
        while let Ok(Handed { envelope, from }) = self.receiver.try_recv() {
            from.left_unsettled(envelope.message_id);
        }
    }
}

/// How a handed-off delivery is settled: acknowledged, its row is stamped sent; dead-lettered,
/// it is given back to the relay.
struct HandedOffSettlement {
    message_id: Uuid,
    hand_off: Arc<HandOff>,
    /// Acknowledged or dead-lettered; dropped without either, the consumer stopped first.
    settled: bool,
}

#[async_trait]
impl Settle for HandedOffSettlement {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.settled = true;
        self.hand_off.settled([self.message_id]);
        self.hand_off.out_of_hand();
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, failure: Failure) -> Result<(), TransportError> {
        let _ = failure; // the broker's path fails it again, and dead-letters it with its reason
        // Settled only once given back: cancelled meanwhile, it counts as dropped.
        let given_back = self.hand_off.give_back(&[self.message_id]).await;
        self.settled = true;
        self.hand_off.out_of_hand();
        given_back
    }

    fn gives_back(&self) -> bool {
        true
    }
}

impl Drop for HandedOffSettlement {
    fn drop(&mut self) {
        if !self.settled {
            self.hand_off.left_unsettled(self.message_id);
        }
    }
}
