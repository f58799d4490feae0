//! The embedded broker: the [`Transport`] port over one SQLite file, for the embedded mode.
//! Same semantics as RabbitMQ, and what it holds survives the process being killed (a publish
//! is on disk before it is confirmed, see [`crate::sqlite`] on durability).
//!
//! Queues are rows of one table. Publishing inserts a row per queue bound to the message's type,
//! all in one transaction (a message no queue is bound for is refused, as RabbitMQ's
//! `mandatory` does). A consumer takes the oldest rows that nobody holds and marks them in
//! hand; acknowledging deletes the row, dead-lettering moves it to the error queue with its
//! reason, and a delivery dropped unsettled goes back, flagged redelivered. Consumers are woken
//! by publishes in this process, and look every second for what other processes put there (an
//! operator replaying dead letters). A process that is killed leaves its deliveries in hand:
//! [`SqliteTransport::requeue_unsettled`], run when the system starts again, hands them back,
//! flagged redelivered.

use super::{
    DeadLetter, DeadLetters, Deliveries, Delivery, Failure, QueueSpec, QueueStats, Settle, Subscribed, Transport,
    TransportError, error_queue_of,
};
use crate::ErrorChain;
use crate::backoff::Backoff;
use crate::envelope::{Envelope, UnreadableEnvelope};
use crate::sqlite::{Database, Timestamp};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

static BROKER_MIGRATIONS: Migrator = sqlx::migrate!("./migrations-sqlite-broker");

/// How often an idle consumer looks for messages put there by another process.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Most deliveries taken from the file at once (within the prefetch window).
const TAKE_AT_ONCE: usize = 64;

/// Pauses after failed attempts to take deliveries.
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Rows inserted per statement when publishing (SQLite limits the bound values per statement).
const ROWS_PER_INSERT: usize = 500;

/// A broker in a SQLite file. Cheap to clone; clones share the file and the wake-ups.
#[derive(Clone)]
pub struct SqliteTransport {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// message type -> queues bound to it, as declared (the file holds them too).
    bindings: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Consumers of this process waiting for a queue.
    wakers: Mutex<HashMap<String, Arc<Notify>>>,
    /// How many consuming streams of this process each queue has (the only process that
    /// consumes: the data directory's lock says which).
    consumers: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

fn unavailable(error: impl Into<crate::BoxError>) -> TransportError {
    TransportError::Unavailable(error.into())
}

impl SqliteTransport {
    /// Opens the broker's file, creating it if missing. Deliveries a killed process left in hand
    /// stay there until [`requeue_unsettled`](Self::requeue_unsettled).
    pub async fn open(file: &Path) -> Result<Self, TransportError> {
        let db = Database::open(file, 4).await.map_err(unavailable)?;
        db.migrate(&BROKER_MIGRATIONS).await.map_err(unavailable)?;
        let inner = Inner { db, bindings: Mutex::default(), wakers: Mutex::default(), consumers: Mutex::default() };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The broker's file.
    pub fn file(&self) -> &Path {
        self.inner.db.file()
    }

    /// Hands every delivery still in hand back to its queue, flagged redelivered: what a process
    /// that was killed had taken and not settled. Only the process that owns the file may call
    /// it (the data directory's lock says which), before it consumes. Returns how many.
    pub async fn requeue_unsettled(&self) -> Result<u64, TransportError> {
        let requeued = sqlx::query("UPDATE messages SET in_hand = 0, redelivered = 1 WHERE in_hand = 1")
            .execute(self.inner.db.writer())
            .await
            .map_err(unavailable)?;
        Ok(requeued.rows_affected())
    }

    /// Messages in a queue: waiting, or delivered and not settled yet.
    pub async fn depth(&self, queue: &str) -> Result<u64, TransportError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE queue = ?")
            .bind(queue)
            .fetch_one(self.inner.db.reader())
            .await
            .map_err(unavailable)?;
        Ok(count as u64)
    }

    /// Closes the file.
    pub async fn close(&self) {
        self.inner.db.close().await;
    }
}

impl Inner {
    fn consumer_count(&self, queue: &str) -> Arc<AtomicU32> {
        self.consumers.lock().expect("consumer counts poisoned").entry(queue.to_owned()).or_default().clone()
    }

    fn waker(&self, queue: &str) -> Arc<Notify> {
        self.wakers.lock().expect("wakers poisoned").entry(queue.to_owned()).or_default().clone()
    }

    fn wake(&self, queue: &str) {
        if let Some(waker) = self.wakers.lock().expect("wakers poisoned").get(queue) {
            waker.notify_waiters();
        }
    }

    fn wake_all(&self) {
        for waker in self.wakers.lock().expect("wakers poisoned").values() {
            waker.notify_waiters();
        }
    }

    /// The queues bound to `message_type`, from memory, or from the file if another process
    /// declared them.
    async fn queues_of(&self, message_type: &str) -> Result<BTreeSet<String>, TransportError> {
        if let Some(queues) = self.bindings.lock().expect("bindings poisoned").get(message_type) {
            return Ok(queues.clone());
        }
        let queues: Vec<String> = sqlx::query_scalar("SELECT queue FROM bindings WHERE message_type = ?")
            .bind(message_type)
            .fetch_all(self.db.reader())
            .await
            .map_err(unavailable)?;
        let queues: BTreeSet<String> = queues.into_iter().collect();
        if !queues.is_empty() {
            self.bindings.lock().expect("bindings poisoned").insert(message_type.to_owned(), queues.clone());
        }
        Ok(queues)
    }

    /// Takes up to `count` of the oldest messages of `queue` that nobody holds, marking them in
    /// hand; oldest first.
    async fn take(&self, queue: &str, count: usize) -> Result<Vec<SqliteRow>, sqlx::Error> {
        let mut rows = sqlx::query(
            "UPDATE messages SET in_hand = 1 \
             WHERE seq IN (SELECT seq FROM messages WHERE queue = ? AND in_hand = 0 ORDER BY seq LIMIT ?) \
             RETURNING seq, message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, \
                       payload, redelivered",
        )
        .bind(queue)
        .bind(count as i64)
        .fetch_all(self.db.writer())
        .await?;
        rows.sort_by_key(|row| row.get::<i64, _>("seq"));
        Ok(rows)
    }

    /// Puts a delivery that was not settled back where it was, flagged redelivered.
    async fn hand_back(&self, queue: &str, seq: i64) {
        let handed_back = sqlx::query("UPDATE messages SET in_hand = 0, redelivered = 1 WHERE seq = ?")
            .bind(seq)
            .execute(self.db.writer())
            .await;
        match handed_back {
            Ok(_) => self.wake(queue),
            Err(error) => tracing::warn!(
                queue, error = %ErrorChain(&error),
                "could not hand an unsettled delivery back; it is redelivered when the system starts again"
            ),
        }
    }
}

/// A row of `messages` as the envelope it holds; a part that does not read makes it unreadable.
fn envelope_of(row: &SqliteRow) -> Result<Envelope, UnreadableEnvelope> {
    use UnreadableEnvelope::Missing;
    let text = |column: &'static str| row.try_get::<Option<String>, _>(column).ok().flatten();
    let uuid = |field: &'static str, value: String| {
        Uuid::parse_str(&value).map_err(|source| UnreadableEnvelope::NotAUuid { field, value, source })
    };
    let occurred_at = text("occurred_at")
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc))
        .ok_or(Missing("occurrence time"))?;
    Ok(Envelope {
        message_id: uuid("message id", text("message_id").ok_or(Missing("message id"))?)?,
        message_type: text("message_type").ok_or(Missing("message type"))?,
        correlation_id: text("correlation_id").ok_or(Missing("correlation id"))?,
        causation_id: text("causation_id").map(|id| uuid("causation id", id)).transpose()?,
        occurred_at,
        traceparent: text("traceparent"),
        payload: serde_json::from_str(&text("payload").unwrap_or_default()).map_err(UnreadableEnvelope::NotJson)?,
    })
}

#[async_trait]
impl Transport for SqliteTransport {
    async fn publish(&self, messages: &[Envelope]) -> Result<(), TransportError> {
        // Route every message before writing any: one that no queue is bound for fails the call.
        let mut routed = Vec::with_capacity(messages.len());
        for message in messages {
            let queues = self.inner.queues_of(&message.message_type).await?;
            if queues.is_empty() {
                return Err(TransportError::Unroutable { message_type: message.message_type.clone() });
            }
            routed.extend(queues.into_iter().map(|queue| (queue, message)));
        }
        let mut tx = self.inner.db.begin().await.map_err(unavailable)?;
        for chunk in routed.chunks(ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO messages (queue, message_id, message_type, correlation_id, causation_id, occurred_at, \
                                       traceparent, payload) ",
            );
            insert.push_values(chunk, |mut row, (queue, envelope)| {
                row.push_bind(queue.as_str())
                    .push_bind(envelope.message_id.to_string())
                    .push_bind(envelope.message_type.as_str())
                    .push_bind(envelope.correlation_id.as_str())
                    .push_bind(envelope.causation_id.map(|id| id.to_string()))
                    .push_bind(envelope.occurred_at.to_rfc3339())
                    .push_bind(envelope.traceparent.as_deref())
                    .push_bind(envelope.payload.to_string());
            });
            insert.build().execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        self.inner.db.make_durable().await.map_err(unavailable)?;
        let queues: BTreeSet<&str> = routed.iter().map(|(queue, _)| queue.as_str()).collect();
        for queue in queues {
            self.inner.wake(queue);
        }
        Ok(())
    }

    async fn declare(&self, spec: &QueueSpec) -> Result<(), TransportError> {
        if !spec.message_types.is_empty() {
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO bindings (message_type, queue) ");
            insert.push_values(&spec.message_types, |mut row, message_type| {
                row.push_bind(message_type.as_str()).push_bind(spec.name.as_str());
            });
            insert.push(" ON CONFLICT DO NOTHING");
            insert.build().execute(self.inner.db.writer()).await.map_err(unavailable)?;
        }
        let mut bindings = self.inner.bindings.lock().expect("bindings poisoned");
        for message_type in &spec.message_types {
            bindings.entry(message_type.clone()).or_default().insert(spec.name.clone());
        }
        Ok(())
    }

    async fn consume(&self, spec: &QueueSpec) -> Result<Deliveries, TransportError> {
        self.declare(spec).await?;
        let consuming = Consuming {
            inner: self.inner.clone(),
            queue: spec.name.clone(),
            permits: Arc::new(Semaphore::new(spec.prefetch.max(1).into())),
            taken: VecDeque::new(),
            _counted: Subscribed::new(self.inner.consumer_count(&spec.name)),
        };
        let deliveries = futures::stream::unfold(consuming, |mut consuming| async move {
            let delivery = consuming.next().await;
            Some((delivery, consuming))
        });
        Ok(Box::pin(deliveries))
    }

    async fn is_ready(&self) -> bool {
        sqlx::query("SELECT 1").execute(self.inner.db.reader()).await.is_ok()
    }

    /// Every queue exists here (an empty one holds no rows): waiting messages are those nobody
    /// holds, consumers those of this process.
    async fn queue_stats(&self, queue: &str) -> Result<Option<QueueStats>, TransportError> {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE queue = ? AND in_hand = 0")
            .bind(queue)
            .fetch_one(self.inner.db.reader())
            .await
            .map_err(unavailable)?;
        let consumers = self.inner.consumers.lock().expect("consumer counts poisoned").get(queue).cloned();
        Ok(Some(QueueStats {
            depth: u32::try_from(waiting).unwrap_or(u32::MAX),
            consumers: consumers.map_or(0, |count| count.load(Ordering::SeqCst)),
        }))
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }
}

/// One consumer's stream: deliveries taken from the file and not handed out yet.
struct Consuming {
    inner: Arc<Inner>,
    queue: String,
    /// The prefetch window: one permit per delivery in hand.
    permits: Arc<Semaphore>,
    taken: VecDeque<Delivery>,
    _counted: Subscribed,
}

impl Consuming {
    async fn next(&mut self) -> Delivery {
        if let Some(delivery) = self.taken.pop_front() {
            return delivery;
        }
        let first = self.permits.clone().acquire_owned().await.expect("the window is never closed");
        let mut permits = vec![first];
        while permits.len() < TAKE_AT_ONCE
            && let Ok(permit) = self.permits.clone().try_acquire_owned()
        {
            permits.push(permit);
        }
        let waker = self.inner.waker(&self.queue);
        let mut failures = 0;
        loop {
            // Registered before looking, so that a publish in between is not missed.
            let published = waker.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            match self.inner.take(&self.queue, permits.len()).await {
                Ok(rows) if rows.is_empty() => {
                    failures = 0;
                    tokio::select! {
                        _ = published => {}
                        _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    }
                }
                Ok(rows) => {
                    for (row, permit) in rows.iter().zip(permits) {
                        self.taken.push_back(self.delivery(row, permit));
                    }
                    return self.taken.pop_front().expect("at least one row");
                }
                Err(error) => {
                    failures += 1;
                    let pause = RETRY_BACKOFF.pause(failures);
                    tracing::warn!(queue = %self.queue, error = %ErrorChain(&error), retry_in = ?pause, "cannot take deliveries");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    fn delivery(&self, row: &SqliteRow, permit: OwnedSemaphorePermit) -> Delivery {
        let settle = SqliteSettle {
            inner: self.inner.clone(),
            queue: self.queue.clone(),
            seq: row.get("seq"),
            settled: false,
            _permit: permit,
        };
        Delivery::new(envelope_of(row), row.get::<i64, _>("redelivered") != 0, Box::new(settle))
    }
}

struct SqliteSettle {
    inner: Arc<Inner>,
    queue: String,
    seq: i64,
    /// Once settled, dropping it changes nothing; unsettled, the delivery goes back on drop.
    settled: bool,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Settle for SqliteSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), TransportError> {
        sqlx::query("DELETE FROM messages WHERE seq = ?")
            .bind(self.seq)
            .execute(self.inner.db.writer())
            .await
            .map_err(unavailable)?;
        self.settled = true;
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, failure: Failure) -> Result<(), TransportError> {
        sqlx::query(
            "UPDATE messages SET queue = ?, in_hand = 0, redelivered = 0, failure_reason = ?, failure_attempts = ?, \
                    failed_at = ?, original_queue = ? \
             WHERE seq = ?",
        )
        .bind(error_queue_of(&self.queue))
        .bind(&failure.reason)
        .bind(i64::from(failure.attempts))
        .bind(Timestamp::now())
        .bind(&self.queue)
        .bind(self.seq)
        .execute(self.inner.db.writer())
        .await
        .map_err(unavailable)?;
        self.settled = true;
        Ok(())
    }
}

impl Drop for SqliteSettle {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Without a runtime (the process is ending) it stays in hand until the next start.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (inner, queue, seq) = (self.inner.clone(), self.queue.clone(), self.seq);
            runtime.spawn(async move { inner.hand_back(&queue, seq).await });
        }
    }
}

#[async_trait]
impl DeadLetters for SqliteTransport {
    async fn list(&self, error_queue: &str) -> Result<Vec<DeadLetter>, TransportError> {
        let rows = sqlx::query(
            "SELECT message_id, message_type, payload, failure_reason, failure_attempts, failed_at \
             FROM messages WHERE queue = ? ORDER BY seq",
        )
        .bind(error_queue)
        .fetch_all(self.inner.db.reader())
        .await
        .map_err(unavailable)?;
        Ok(rows
            .iter()
            .map(|row| DeadLetter {
                queue: error_queue.to_owned(),
                message_id: row.get("message_id"),
                message_type: row.get("message_type"),
                reason: row.get::<Option<String>, _>("failure_reason").unwrap_or_else(|| "unknown".into()),
                attempts: row.get::<Option<i64>, _>("failure_attempts").unwrap_or(0).clamp(0, i64::from(u32::MAX))
                    as u32,
                failed_at: row.try_get::<Option<Timestamp>, _>("failed_at").ok().flatten().map(|at| at.0),
                body: row.get("payload"),
            })
            .collect())
    }

    async fn replay(&self, error_queue: &str) -> Result<usize, TransportError> {
        let mut tx = self.inner.db.begin().await.map_err(unavailable)?;
        // Appended to the end of the queue it failed on, as new messages.
        sqlx::query(
            "INSERT INTO messages (queue, message_id, message_type, correlation_id, causation_id, occurred_at, \
                                   traceparent, payload) \
             SELECT coalesce(original_queue, ?), message_id, message_type, correlation_id, causation_id, occurred_at, \
                    traceparent, payload \
             FROM messages WHERE queue = ? ORDER BY seq",
        )
        .bind(error_queue.trim_end_matches(".error"))
        .bind(error_queue)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let replayed = sqlx::query("DELETE FROM messages WHERE queue = ?")
            .bind(error_queue)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.inner.db.make_durable().await.map_err(unavailable)?;
        self.inner.wake_all();
        Ok(replayed.rows_affected() as usize)
    }

    async fn purge(&self, error_queue: &str) -> Result<usize, TransportError> {
        let purged = sqlx::query("DELETE FROM messages WHERE queue = ?")
            .bind(error_queue)
            .execute(self.inner.db.writer())
            .await
            .map_err(unavailable)?;
        Ok(purged.rows_affected() as usize)
    }
}
