//! The relay: moves committed outbox rows to the transport.
//!
//! It claims due rows with `FOR UPDATE SKIP LOCKED` (so relays of several instances share the
//! table without publishing a row twice), publishes them, waits for the broker's confirms and
//! only then stamps them sent, in the same transaction as the claim. A crash or a failed
//! publish rolls the claim back and the rows are published again later: at-least-once, with
//! duplicates absorbed by the consumers' inboxes.
//!
//! It sleeps until woken by the `outbox` notification (sent at commit by a trigger), by the due
//! time of the next scheduled row, or by the periodic sweep that catches lost notifications.
//!
//! Nothing it waits for may take forever: a batch, each query, and the listener's connection
//! (probed when it has been quiet) have deadlines, so that a database connection that went
//! silent is abandoned instead of stalling publication.

use crate::ErrorChain;
use crate::backoff::Backoff;
use crate::envelope::Envelope;
use crate::transport::Transport;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Pauses after failed publishes: a broker that is down must not be hammered by new commits.
const PUBLISH_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// A listener that heard nothing for this long is asked to prove it is still connected.
const LISTENER_PROBE_AFTER: Duration = Duration::from_secs(10);
/// Longest wait for the listener to connect, or to answer a probe.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(5);

/// How a relay claims, publishes and cleans up.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Most rows claimed and published in one transaction.
    pub batch_size: i64,
    /// Batches in flight at once: one claims the next rows while another awaits its confirms.
    pub workers: usize,
    /// Longest sleep without a notification: bounds the delay of a lost notification.
    pub sweep_interval: Duration,
    /// How long sent rows are kept (for inspection) before deletion.
    pub sent_retention: Duration,
    /// How long inbox records are kept; must exceed the longest time a copy can arrive late.
    pub inbox_retention: Duration,
    /// How often sent outbox rows and old inbox records are deleted.
    pub cleanup_interval: Duration,
    /// Longest a batch (claim, publish, confirms, stamp) or any other query may take before it
    /// is abandoned (its rows stay unsent); longer than the transport's wait for confirms.
    pub deadline: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 200,
            workers: 4,
            sweep_interval: Duration::from_secs(2),
            sent_retention: Duration::from_secs(3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            cleanup_interval: Duration::from_secs(60),
            deadline: Duration::from_secs(20),
        }
    }
}

/// Publishes one database's outbox (several relays may share it).
pub struct Relay {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    config: RelayConfig,
    /// Labels this relay's metrics and logs (the service name).
    name: &'static str,
}

/// Why a batch was not published. Its rows stay unsent and are claimed again later.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or stamped.
    #[error("outbox query failed")]
    Database(#[from] sqlx::Error),
    /// The transport did not confirm the batch.
    #[error("publish failed")]
    Transport(#[from] crate::transport::TransportError),
    /// A row does not hold a valid envelope.
    #[error("outbox row {0} holds an unreadable envelope")]
    Corrupt(Uuid, #[source] sqlx::Error),
    /// A publishing task panicked or was cancelled.
    #[error("relay task crashed")]
    Crashed(#[source] tokio::task::JoinError),
    /// The batch took longer than [`RelayConfig::deadline`].
    #[error("the batch did not finish within {0:?}")]
    TimedOut(Duration),
}

impl Relay {
    /// A relay labelled `name` (in logs and metrics) of the outbox behind `pool`.
    pub fn new(name: &'static str, pool: PgPool, transport: Arc<dyn Transport>, config: RelayConfig) -> Self {
        Self { pool, transport, config, name }
    }

    /// Runs until `shutdown`, then publishes what is due one last time and returns.
    ///
    /// Batches are pipelined: a commit notification starts a new batch even while earlier ones
    /// wait for their confirms (up to `workers` at once), so one slow confirm does not delay
    /// the messages committed after it.
    pub async fn run(self, shutdown: CancellationToken) {
        let relay = Arc::new(self);
        let workers = relay.config.workers.max(1);
        let mut listener = relay.listen().await;
        // When the listener last proved alive (a notification, a probe), or was last tried.
        let mut heard_at = Instant::now();
        let mut in_flight: JoinSet<Result<usize, RelayError>> = JoinSet::new();
        // Batches worth starting: rows may be due.
        let mut wanted = 1usize;
        let mut failures = 0u32;
        let mut resume_at: Option<Instant> = None;
        let mut next_cleanup = Instant::now();
        loop {
            if listener.is_none() {
                // Not more often than the sweep: while the database is away, each try waits.
                if heard_at.elapsed() >= relay.config.sweep_interval {
                    listener = relay.listen().await;
                    heard_at = Instant::now();
                }
            } else if heard_at.elapsed() >= LISTENER_PROBE_AFTER {
                if let Some(active) = &mut listener
                    && !probe(active).await
                {
                    tracing::warn!(relay = relay.name, "outbox listener stopped answering; connecting again");
                    listener = relay.listen().await;
                }
                heard_at = Instant::now();
            }
            if Instant::now() >= next_cleanup {
                relay.clean_up().await;
                next_cleanup = Instant::now() + relay.config.cleanup_interval;
            }
            let backing_off = resume_at.is_some_and(|at| Instant::now() < at);
            if !backing_off && wanted > 0 && in_flight.len() < workers {
                wanted -= 1;
                let relay = relay.clone();
                in_flight.spawn(async move { relay.publish_batch().await });
                continue;
            }
            let pause = match resume_at {
                Some(at) if backing_off => at - Instant::now(),
                _ if in_flight.is_empty() => relay.time_to_next_due().await,
                _ => relay.config.sweep_interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    match done.unwrap_or_else(|crash| Err(RelayError::Crashed(crash))) {
                        Ok(published) => {
                            failures = 0;
                            resume_at = None;
                            // A full batch means more are probably due: drain with every worker.
                            if published == relay.config.batch_size as usize {
                                wanted = workers;
                            }
                        }
                        Err(error) => {
                            failures += 1;
                            let pause = PUBLISH_BACKOFF.pause(failures);
                            tracing::warn!(relay = relay.name, error = %ErrorChain(&error), retry_in = ?pause, "relay could not publish");
                            resume_at = Some(Instant::now() + pause);
                            wanted = 1;
                        }
                    }
                }
                _ = wait_for_notification(&mut listener), if !backing_off => {
                    heard_at = Instant::now();
                    wanted = wanted.max(1);
                }
                _ = tokio::time::sleep(pause) => wanted = wanted.max(1),
            }
        }
        while in_flight.join_next().await.is_some() {}
        if let Err(error) = relay.publish_all_due().await {
            tracing::warn!(relay = relay.name, error = %ErrorChain(&error), "relay stopped with messages left to publish");
        }
        tracing::info!(relay = relay.name, "relay stopped");
    }

    /// A listener on a connection of its own: one abandoned (it stopped answering) is left to
    /// sqlx to clean up, and must not take a slot of the pool with it.
    async fn listen(&self) -> Option<PgListener> {
        let own = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(LISTENER_TIMEOUT)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let connecting = async {
            let mut listener = PgListener::connect_with(&own).await.ok()?;
            listener.listen("outbox").await.ok()?;
            Some(listener)
        };
        tokio::time::timeout(LISTENER_TIMEOUT, connecting).await.ok().flatten()
    }

    /// Publishes batches until nothing due is left; a backlog is drained `workers` batches at a time.
    pub async fn publish_all_due(&self) -> Result<(), RelayError> {
        if self.publish_batch().await? < self.config.batch_size as usize {
            return Ok(());
        }
        let worker = || async {
            while self.publish_batch().await? == self.config.batch_size as usize {}
            Ok::<_, RelayError>(())
        };
        futures::future::try_join_all((0..self.config.workers.max(1)).map(|_| worker())).await?;
        Ok(())
    }

    /// Claims, publishes and stamps one batch of due rows, within the deadline; returns how many.
    pub async fn publish_batch(&self) -> Result<usize, RelayError> {
        tokio::time::timeout(self.config.deadline, self.claim_and_publish())
            .await
            .unwrap_or(Err(RelayError::TimedOut(self.config.deadline)))
    }

    async fn claim_and_publish(&self) -> Result<usize, RelayError> {
        let mut tx = self.pool.begin().await?;
        // Walk the pending index in order and stop after one batch. Left alone, the planner can
        // pick a bitmap scan and sort every pending row when its statistics are stale (a burst
        // into a fresh table), which makes each claim cost as much as the whole backlog.
        // Its commit need not wait for the disk: if the "sent" stamps are lost in a crash, the
        // rows are published again and the consumers' inboxes drop the copies.
        sqlx::raw_sql(
            "SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; SET LOCAL synchronous_commit = off",
        )
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, payload \
             FROM outbox WHERE sent_at IS NULL AND deliver_after <= now() \
             ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut envelopes = rows.iter().map(envelope_from_row).collect::<Result<Vec<_>, _>>()?;
        let spans: Vec<tracing::Span> = envelopes.iter_mut().map(|envelope| self.publish_span(envelope)).collect();
        let claimed = Instant::now();
        if let Err(error) = self.transport.publish(&envelopes).await {
            for span in &spans {
                span.record("otel.status_code", "error");
            }
            return Err(error.into());
        }
        let confirmed = Instant::now();
        let ids: Vec<Uuid> = envelopes.iter().map(|e| e.message_id).collect();
        sqlx::query("UPDATE outbox SET sent_at = clock_timestamp() WHERE message_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        drop(spans);

        let now = Utc::now();
        for envelope in &envelopes {
            let lag = (now - envelope.occurred_at).to_std().unwrap_or_default();
            metrics::histogram!("outbox_publish_lag_seconds", "service" => self.name).record(lag.as_secs_f64());
        }
        metrics::counter!("outbox_published_total", "service" => self.name).increment(envelopes.len() as u64);
        tracing::debug!(
            relay = self.name,
            count = envelopes.len(),
            publish = ?(confirmed - claimed),
            mark = ?confirmed.elapsed(),
            "published"
        );
        Ok(envelopes.len())
    }

    /// A span from claim to confirm of one message, a child of the span that wrote it. When
    /// spans are exported, the message names this span as its parent from here on, so that
    /// the consumer's span follows the publish.
    fn publish_span(&self, envelope: &mut Envelope) -> tracing::Span {
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = format!("publish {}", envelope.message_type),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            service = self.name,
            message_type = %envelope.message_type,
            message_id = %envelope.message_id,
            correlation_id = %envelope.correlation_id,
        );
        if let Some(exported) = envelope.trace_context().and_then(|writer| crate::trace::follow(&span, writer)) {
            envelope.traceparent = Some(exported.to_string());
        }
        span
    }

    /// How long to sleep before the next scheduled row is due (or the sweep interval).
    async fn time_to_next_due(&self) -> Duration {
        let next = sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT min(deliver_after) FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.pool);
        match tokio::time::timeout(self.config.deadline, next).await {
            Ok(Ok(Some(due))) => {
                // A due row we could not claim is being published by another relay: let it be.
                let until_due = (due - Utc::now()).to_std().unwrap_or(self.config.sweep_interval);
                until_due.min(self.config.sweep_interval)
            }
            _ => self.config.sweep_interval,
        }
    }

    /// Deletes sent outbox rows and inbox records past their retention, a bounded batch per
    /// statement, so that a large backlog (after a long stop) is worked off within the deadline.
    async fn clean_up(&self) {
        const BATCH: i64 = 10_000;
        let tables = [
            ("outbox", "sent_at", Utc::now() - self.config.sent_retention),
            ("inbox", "processed_at", Utc::now() - self.config.inbox_retention),
        ];
        for (table, stamp, before) in tables {
            let statement = format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {stamp} < $1 LIMIT $2))"
            );
            let mut deleted = 0;
            loop {
                let deleting =
                    sqlx::query(sqlx::AssertSqlSafe(statement.as_str())).bind(before).bind(BATCH).execute(&self.pool);
                match tokio::time::timeout(self.config.deadline, deleting).await {
                    Ok(Ok(done)) => {
                        deleted += done.rows_affected();
                        if done.rows_affected() < BATCH as u64 {
                            break;
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(relay = self.name, table, error = %ErrorChain(&error), "cleanup failed");
                        break;
                    }
                    Err(_) => {
                        tracing::warn!(relay = self.name, table, "cleanup did not finish in time");
                        break;
                    }
                }
            }
            if deleted > 0 {
                tracing::debug!(relay = self.name, table, deleted, "cleaned up old rows");
            }
        }
    }
}

/// Whether the listener's connection still answers.
async fn probe(listener: &mut PgListener) -> bool {
    let answer = sqlx::query("SELECT 1").execute(&mut *listener);
    matches!(tokio::time::timeout(LISTENER_TIMEOUT, answer).await, Ok(Ok(_)))
}

/// Resolves at the next notification. Without a listener (or once it lost its connection,
/// when notifications may have been missed) it resolves at once so the caller sweeps.
async fn wait_for_notification(listener: &mut Option<PgListener>) {
    let Some(active) = listener else {
        return std::future::pending().await;
    };
    match active.try_recv().await {
        Ok(Some(_)) => {
            // Coalesce the notifications already buffered: one sweep serves them all.
            while active.next_buffered().is_some() {}
        }
        Ok(None) => {} // reconnected: notifications may have been lost, so sweep
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), "outbox listener failed; relying on the periodic sweep");
            *listener = None;
        }
    }
}

fn envelope_from_row(row: &sqlx::postgres::PgRow) -> Result<Envelope, RelayError> {
    super::envelope_from_row(row)
        .map_err(|error| RelayError::Corrupt(row.try_get("message_id").unwrap_or_default(), error))
}
