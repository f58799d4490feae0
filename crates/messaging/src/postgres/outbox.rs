//! The PostgreSQL outbox as the relay works on it: rows claimed `FOR UPDATE SKIP LOCKED` and
//! stamped sent by one statement of a transaction committed once they are published, woken by
//! the `outbox` notification a trigger sends at commit; and its backlog as operators see it.

use super::envelope_from_row;
use crate::ErrorChain;
use crate::hand_off::HandedOffRows;
use crate::outbox::{OutboxBacklog, OutboxMonitor};
use crate::relay::{Claimed, CommitWatch, Committed, OutboxStore, RelayError, Scheduled};
use crate::unit_of_work::BoxError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

/// A listener that heard nothing for this long is asked to prove it is still connected.
const LISTENER_PROBE_AFTER: Duration = Duration::from_secs(10);
/// Longest wait for the listener to connect, or to answer a probe.
const LISTENER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts to listen while the database is away (the relay's default sweep:
/// meanwhile the sweep finds what was committed).
const LISTENER_RETRY: Duration = Duration::from_secs(2);

/// The outbox of the PostgreSQL database behind a pool. Relays of several processes may share
/// it: each claims rows the others have not locked.
#[derive(Clone)]
pub struct PgOutbox {
    pool: PgPool,
}

impl From<PgPool> for PgOutbox {
    fn from(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl OutboxStore for PgOutbox {
    /// The transaction holding the claimed rows' locks.
    type Claim = sqlx::Transaction<'static, Postgres>;

    async fn claim_due(&self, limit: i64) -> Result<Claimed<Self::Claim>, RelayError> {
        // Three round trips: the transaction opens with its settings, one statement claims and
        // stamps the rows (the stamp is seen by nobody until the commit, which comes only after
        // the broker confirmed them; a failed publish rolls it back), and the commit.
        // Walking the pending index in order and stopping after one batch: left alone, the
        // planner can pick a bitmap scan and sort every pending row when its statistics are stale
        // (a burst into a fresh table), which makes each claim cost as much as the whole backlog.
        // The commit need not wait for the disk: if the "sent" stamps are lost in a crash, the
        // rows are published again and the consumers' inboxes drop the copies.
        let mut tx = self
            .pool
            .begin_with(
                "BEGIN; SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off; \
                 SET LOCAL synchronous_commit = off",
            )
            .await?;
        let mut rows = sqlx::query(
            "UPDATE outbox SET sent_at = clock_timestamp() \
             WHERE message_id IN (SELECT message_id FROM outbox WHERE sent_at IS NULL AND deliver_after <= now() \
                                  ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING seq, message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, payload",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        // RETURNING keeps no order: publish oldest first.
        rows.sort_by_key(|row| row.try_get::<i64, _>("seq").unwrap_or_default());
        let envelopes = rows
            .iter()
            .map(|row| {
                envelope_from_row(row)
                    .map_err(|error| RelayError::Corrupt(row.try_get("message_id").unwrap_or_default(), error))
            })
            .collect::<Result<_, _>>()?;
        Ok(Claimed { envelopes, claim: tx })
    }

    async fn mark_sent(&self, tx: Self::Claim) -> Result<(), RelayError> {
        tx.commit().await?; // the claim stamped them
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RelayError> {
        // A lease is no schedule: the sweep finds the rows whose lease ran out.
        Ok(sqlx::query_scalar("SELECT min(deliver_after) FROM outbox WHERE sent_at IS NULL AND NOT handed_off")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn delete_sent(&self, sent_before: DateTime<Utc>, limit: i64) -> Result<u64, RelayError> {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM outbox WHERE sent_at < $1 LIMIT $2))",
        )
        .bind(sent_before)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn delete_consumed(&self, consumed_before: DateTime<Utc>, limit: i64) -> Result<u64, RelayError> {
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE ctid = ANY(ARRAY(SELECT ctid FROM inbox WHERE processed_at < $1 LIMIT $2))",
        )
        .bind(consumed_before)
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn watch(&self) -> Box<dyn CommitWatch> {
        let heard = Arc::new(Heard::default());
        let stop = CancellationToken::new();
        tokio::spawn(listen_for_commits(self.pool.clone(), heard.clone(), stop.clone()));
        Box::new(Notifications { heard, _stop: stop.drop_guard() })
    }
}

#[async_trait]
impl HandedOffRows for PgOutbox {
    async fn settle(&self, message_ids: &[Uuid]) -> Result<(), BoxError> {
        // As the relay's stamp, the commit need not wait for the disk: a stamp lost in a crash
        // leaves the rows to the relay after their lease, and the inbox drops the copies.
        let mut tx = self.pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await?;
        // Rows a relay holds (their lease ran out) are skipped: it publishes them, and the
        // inbox drops the copy. So a stamp never waits for a lock.
        sqlx::query(
            "UPDATE outbox SET sent_at = now() \
             WHERE message_id IN (SELECT message_id FROM outbox \
                                  WHERE message_id = ANY($1) AND sent_at IS NULL FOR UPDATE SKIP LOCKED)",
        )
        .bind(message_ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn give_back(&self, message_ids: &[Uuid]) -> Result<(), BoxError> {
        sqlx::query(
            "WITH given AS (UPDATE outbox SET deliver_after = now(), handed_off = false \
                            WHERE message_id = ANY($1) AND sent_at IS NULL RETURNING 1) \
             SELECT pg_notify('outbox', '') WHERE EXISTS (SELECT FROM given)",
        )
        .bind(message_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The `outbox` notifications, heard by a task of their own that ends when this is dropped.
struct Notifications {
    heard: Arc<Heard>,
    _stop: DropGuard,
}

/// Notifications heard and not yet taken, folded into one.
#[derive(Default)]
struct Heard {
    wake: Notify,
    committed: std::sync::Mutex<Option<Committed>>,
}

impl Heard {
    fn tell(&self, committed: Committed) {
        let mut pending = self.committed.lock().expect("notification lock");
        *pending = Some(pending.map_or(committed, |earlier| earlier.and(committed)));
        self.wake.notify_one();
    }
}

#[async_trait]
impl CommitWatch for Notifications {
    async fn committed(&mut self) -> Committed {
        self.heard.wake.notified().await;
        self.heard.committed.lock().expect("notification lock").take().unwrap_or(Committed::UNKNOWN)
    }
}

/// What a notification's payload says of the rows its statement wrote: the trigger sends the
/// earliest due time of those scheduled for later in microseconds since the epoch (or nothing
/// when none is), prefixed with `later:` when none is due now.
fn committed(payload: &str) -> Committed {
    let (due_now, earliest) = match payload.strip_prefix("later:") {
        Some(earliest) => (false, earliest),
        None => (true, payload),
    };
    if earliest.is_empty() {
        return Committed { due_now, scheduled: Scheduled::Earliest(None) };
    }
    match earliest.parse().ok().and_then(DateTime::from_timestamp_micros) {
        Some(due) => Committed { due_now, scheduled: Scheduled::Earliest(Some(due)) },
        None => Committed::UNKNOWN,
    }
}

/// Listens for the `outbox` notification until `stop`, and wakes `heard` for each (coalesced),
/// and whenever notifications may have been missed: when the listener reconnected, or was
/// opened again after it failed or stopped answering a probe. Its waits are its own, so that
/// no caller's cancellation can leave the listening connection in the middle of a query.
async fn listen_for_commits(pool: PgPool, heard: Arc<Heard>, stop: CancellationToken) {
    let mut listener: Option<PgListener> = None;
    // When the listener last proved alive (a notification, a probe).
    let mut heard_at = Instant::now();
    loop {
        let Some(active) = &mut listener else {
            listener = tokio::select! {
                _ = stop.cancelled() => return,
                listening = listen(&pool) => listening,
            };
            if listener.is_some() {
                heard_at = Instant::now();
                heard.tell(Committed::UNKNOWN);
            } else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(LISTENER_RETRY) => {}
                }
            }
            continue;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            received = active.try_recv() => match received {
                Ok(Some(notification)) => {
                    // Coalesce the notifications already buffered: one sweep serves them all.
                    let mut told = committed(notification.payload());
                    while let Some(buffered) = active.next_buffered() {
                        told = told.and(committed(buffered.payload()));
                    }
                    heard_at = Instant::now();
                    heard.tell(told);
                }
                // Reconnected: notifications may have been lost.
                Ok(None) => heard.tell(Committed::UNKNOWN),
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "outbox listener failed; relying on the periodic sweep");
                    listener = None;
                    heard.tell(Committed::UNKNOWN);
                }
            },
            _ = tokio::time::sleep_until(heard_at + LISTENER_PROBE_AFTER) => {
                if probe(active).await {
                    heard_at = Instant::now();
                } else {
                    tracing::warn!("outbox listener stopped answering; connecting again");
                    listener = None;
                    heard.tell(Committed::UNKNOWN);
                }
            }
        }
    }
}

/// A listener on a connection of its own: one abandoned (it stopped answering) is left to sqlx
/// to clean up, and must not take a slot of the pool with it.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LISTENER_TIMEOUT)
        .connect_lazy_with((*pool.connect_options()).clone());
    let connecting = async {
        let mut listener = PgListener::connect_with(&own).await.ok()?;
        listener.listen("outbox").await.ok()?;
        Some(listener)
    };
    tokio::time::timeout(LISTENER_TIMEOUT, connecting).await.ok().flatten()
}

/// Whether the listener's connection still answers.
async fn probe(listener: &mut PgListener) -> bool {
    let answer = sqlx::query("SELECT 1").execute(&mut *listener);
    matches!(tokio::time::timeout(LISTENER_TIMEOUT, answer).await, Ok(Ok(_)))
}

/// The backlog of the outbox table behind a pool.
#[derive(Clone)]
pub struct PgOutboxMonitor {
    pool: PgPool,
}

impl PgOutboxMonitor {
    /// The monitor of the outbox of the database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl OutboxMonitor for PgOutboxMonitor {
    async fn backlog(&self) -> Result<OutboxBacklog, BoxError> {
        // Both partial indexes cover `sent_at IS NULL`: this reads only unsent rows.
        let (unsent, scheduled, oldest): (i64, i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE deliver_after <= now()), \
                    count(*) FILTER (WHERE deliver_after > now() AND NOT handed_off), \
                    extract(epoch FROM now() - min(deliver_after) FILTER (WHERE deliver_after <= now()))::float8 \
             FROM outbox WHERE sent_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(OutboxBacklog {
            unsent: unsent.max(0) as u64,
            scheduled: scheduled.max(0) as u64,
            oldest_unsent_age_secs: oldest.map(|age| age.max(0.0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_says_whether_anything_is_due_now_and_when_the_rest_falls_due() {
        let due = DateTime::from_timestamp_micros(1_800_000_000_000_000).unwrap();
        assert_eq!(committed(""), Committed { due_now: true, scheduled: Scheduled::Earliest(None) });
        assert_eq!(
            committed("1800000000000000"),
            Committed { due_now: true, scheduled: Scheduled::Earliest(Some(due)) }
        );
        assert_eq!(
            committed("later:1800000000000000"),
            Committed { due_now: false, scheduled: Scheduled::Earliest(Some(due)) }
        );
        assert_eq!(committed("later:soon"), Committed::UNKNOWN, "what it cannot read, it claims for");
        let later = Committed { due_now: false, scheduled: Scheduled::Earliest(Some(due)) };
        assert!(later.and(committed("")).due_now, "heard together with a commit due now");
    }
}
