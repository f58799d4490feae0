//! In-memory transport: the same routing and ack semantics as the RabbitMQ adapter, in one
//! process, and nothing kept when it ends. For fast tests of what runs on top of a transport.

use super::{
    DeadLetter, DeadLetters, Deliveries, Delivery, Failure, QueueSpec, QueueStats, Settle, Subscribed, Transport,
    TransportError, error_queue_of,
};
use crate::envelope::Envelope;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A broker in this process's memory. Cheap to clone; clones share the queues.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    failing_publishes: AtomicU32,
}

#[derive(Default)]
struct State {
    /// message type -> queues bound to it
    bindings: HashMap<String, BTreeSet<String>>,
    queues: HashMap<String, Queue>,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Queued>,
    available: Arc<Notify>,
    /// Streams consuming it now.
    consumers: Arc<AtomicU32>,
}

#[derive(Clone)]
struct Queued {
    message: Envelope,
    redelivered: bool,
    failure: Option<(Failure, DateTime<Utc>, String)>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("memory transport state poisoned")
    }

    fn push(&self, queue: &str, item: Queued, front: bool) {
        let mut state = self.state();
        let queue = state.queues.entry(queue.to_owned()).or_default();
        if front {
            queue.ready.push_front(item);
        } else {
            queue.ready.push_back(item);
        }
        queue.available.notify_waiters();
    }
}

impl MemoryTransport {
    /// A broker without queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `count` publish calls fail as if the broker had refused them.
    pub fn fail_next_publishes(&self, count: u32) {
        self.inner.failing_publishes.store(count, Ordering::SeqCst);
    }

    /// How many messages wait in a queue (not counting unacknowledged ones).
    pub fn ready_count(&self, queue: &str) -> usize {
        self.inner.state().queues.get(queue).map_or(0, |q| q.ready.len())
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn publish(&self, messages: &[Envelope]) -> Result<(), TransportError> {
        let refuse =
            self.inner.failing_publishes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if refuse {
            return Err(TransportError::Nacked);
        }
        let mut routes = Vec::with_capacity(messages.len());
        for message in messages {
            let queues = self.inner.state().bindings.get(&message.message_type).cloned().unwrap_or_default();
            if queues.is_empty() {
                return Err(TransportError::Unroutable { message_type: message.message_type.clone() });
            }
            routes.push(queues);
        }
        for (message, queues) in messages.iter().zip(routes) {
            for queue in queues {
                let item = Queued { message: message.clone(), redelivered: false, failure: None };
                self.inner.push(&queue, item, false);
            }
        }
        Ok(())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), TransportError> {
        let mut state = self.inner.state();
        state.queues.entry(spec.name.clone()).or_default();
        state.queues.entry(spec.error_queue()).or_default();
        for message_type in &spec.message_types {
            state.bindings.entry(message_type.clone()).or_default().insert(spec.name.clone());
        }
        Ok(())
    }

    async fn consume(&self, spec: &QueueSpec) -> Result<Deliveries, TransportError> {
        self.declare(spec).await?;
        let permits = Arc::new(Semaphore::new(spec.prefetch.max(1).into()));
        let consumers = self.inner.state().queues.get(&spec.name).expect("declared above").consumers.clone();
        let source = (self.inner.clone(), spec.name.clone(), permits, Subscribed::new(consumers));
        let deliveries = futures::stream::unfold(source, |(inner, queue, permits, subscribed)| async move {
            let permit = permits.clone().acquire_owned().await.expect("semaphore never closed");
            let available = inner.state().queues.get(&queue).expect("declared above").available.clone();
            loop {
                let notified = available.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = inner.state().queues.get_mut(&queue).and_then(|q| q.ready.pop_front());
                if let Some(item) = next {
                    let settle = MemorySettle {
                        inner: inner.clone(),
                        queue: queue.clone(),
                        item: Some(item.clone()),
                        _permit: permit,
                    };
                    let delivery = Delivery::new(Ok(item.message), item.redelivered, Box::new(settle));
                    return Some((delivery, (inner, queue, permits, subscribed)));
                }
                notified.await;
            }
        });
        Ok(Box::pin(deliveries))
    }

    async fn is_ready(&self) -> bool {
        true
    }

    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, TransportError> {
        let state = self.inner.state();
        Ok(Some(state.queues.get(queue).map_or(QueueStats { depth: 0, consumers: 0 }, |queue| QueueStats {
            depth: u32::try_from(queue.ready.len()).unwrap_or(u32::MAX),
            consumers: queue.consumers.load(Ordering::SeqCst),
        })))
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }
}

struct MemorySettle {
    inner: Arc<Inner>,
    queue: String,
    /// `None` once settled; an unsettled delivery goes back to the head of its queue on drop.
    item: Option<Queued>,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        self.item = None;
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, failure: Failure) -> Result<(), TransportError> {
        let mut item = self.item.take().expect("settled once");
        item.failure = Some((failure, Utc::now(), self.queue.clone()));
        item.redelivered = false;
        self.inner.push(&error_queue_of(&self.queue), item, false);
        Ok(())
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(mut item) = self.item.take() {
            item.redelivered = true;
            self.inner.push(&self.queue, item, true);
        }
    }
}

#[async_trait]
impl DeadLetters for MemoryTransport {
    async fn list(&self, error_queue: &str) -> Result<Vec<DeadLetter>, TransportError> {
        let state = self.inner.state();
        let Some(queue) = state.queues.get(error_queue) else { return Ok(Vec::new()) };
        Ok(queue.ready.iter().map(|item| dead_letter_view(error_queue, item)).collect())
    }

    async fn replay(&self, error_queue: &str) -> Result<usize, TransportError> {
        let items: Vec<Queued> = {
            let mut state = self.inner.state();
            let Some(queue) = state.queues.get_mut(error_queue) else { return Ok(0) };
            queue.ready.drain(..).collect()
        };
        let count = items.len();
        for mut item in items {
            let original = match item.failure.take() {
                Some((_, _, original)) => original,
                None => error_queue.trim_end_matches(".error").to_owned(),
            };
            self.inner.push(&original, item, false);
        }
        Ok(count)
    }

    async fn purge(&self, error_queue: &str) -> Result<usize, TransportError> {
        let mut state = self.inner.state();
        Ok(state.queues.get_mut(error_queue).map_or(0, |queue| queue.ready.drain(..).count()))
    }
}

fn dead_letter_view(error_queue: &str, item: &Queued) -> DeadLetter {
    let (reason, attempts, failed_at) = match &item.failure {
        Some((failure, at, _)) => (failure.reason.clone(), failure.attempts, Some(*at)),
        None => ("unknown".to_owned(), 0, None),
    };
    DeadLetter {
        queue: error_queue.to_owned(),
        message_id: Some(item.message.message_id.to_string()),
        message_type: Some(item.message.message_type.clone()),
        reason,
        attempts,
        failed_at,
        body: item.message.payload.to_string(),
    }
}
