//! The SQLite outbox as the relay works on it. The embedded mode runs one process per data
//! directory, so claims are kept in this process's memory rather than as row locks, and the
//! relay is woken by the commits of this process. And its backlog as operators see it.

use super::{Database, OutboxState, Timestamp, envelope_from_row};
use crate::outbox::{OutboxBacklog, OutboxMonitor};
use crate::relay::{Claimed, CommitWatch, Committed, OutboxStore, Relay, RelayError};
use crate::unit_of_work::BoxError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::sync::Arc;
use uuid::fmt::Hyphenated;

/// The outbox of a SQLite file. Relays of one process may share it: each claims rows the
/// others have not claimed.
#[derive(Clone)]
pub struct SqliteOutbox {
    db: Database,
}

/// The relay of a SQLite outbox: `SqliteRelay::new(name, database, transport, config)`.
pub type SqliteRelay = Relay<SqliteOutbox>;

impl From<Database> for SqliteOutbox {
    fn from(db: Database) -> Self {
        Self { db }
    }
}

/// Rows claimed by one relay; dropped, they can be claimed again.
pub struct ClaimedRows {
    seqs: Vec<i64>,
    state: Arc<OutboxState>,
}

impl ClaimedRows {
    /// Lets other claims take the rows (unsent), or forgets them (stamped).
    fn release(&mut self) {
        let mut claimed = self.state.claimed.lock().expect("claims poisoned");
        for seq in self.seqs.drain(..) {
            claimed.remove(&seq);
        }
    }
}

impl Drop for ClaimedRows {
    fn drop(&mut self) {
        self.release();
    }
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    type Claim = ClaimedRows;

    async fn claim_due(&self, limit: i64) -> Result<Claimed<Self::Claim>, RelayError> {
        let state = &self.db.outbox;
        let _one_claim_at_a_time = state.claiming.lock().await;
        let skipped = state.claimed.lock().expect("claims poisoned").len() as i64;
        // Enough rows to make a batch of those no other relay of this process holds.
        let rows = sqlx::query(
            "SELECT seq, message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, payload \
             FROM outbox WHERE sent_at IS NULL AND deliver_after <= ? ORDER BY seq LIMIT ?",
        )
        .bind(Timestamp::now())
        .bind(limit + skipped)
        .fetch_all(self.db.reader())
        .await?;
        let mut claimed = state.claimed.lock().expect("claims poisoned");
        let mut seqs = Vec::new();
        let mut envelopes = Vec::new();
        for row in &rows {
            let seq: i64 = row.try_get("seq")?;
            if envelopes.len() as i64 == limit || claimed.contains(&seq) {
                continue;
            }
            let envelope = envelope_from_row(row).map_err(|error| {
                let id = row.try_get::<Hyphenated, _>("message_id").map(Hyphenated::into_uuid);
                RelayError::Corrupt(id.unwrap_or_default(), error)
            })?;
            envelopes.push(envelope);
            seqs.push(seq);
        }
        claimed.extend(&seqs);
        Ok(Claimed { envelopes, claim: ClaimedRows { seqs, state: state.clone() } })
    }

    async fn mark_sent(&self, mut claim: Self::Claim) -> Result<(), RelayError> {
        let mut stamp = QueryBuilder::<Sqlite>::new("UPDATE outbox SET sent_at = ");
        stamp.push_bind(Timestamp::now()).push(" WHERE seq IN ");
        stamp.push_tuples(&claim.seqs, |mut row, seq| {
            row.push_bind(*seq);
        });
        stamp.build().execute(self.db.writer()).await?;
        // Released between two claims, never during one: a claim that read the rows before the
        // stamp would otherwise find them unsent and no longer claimed, and publish them again.
        let _between_claims = self.db.outbox.claiming.lock().await;
        claim.release();
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RelayError> {
        let due: Option<Timestamp> = sqlx::query_scalar("SELECT min(deliver_after) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(self.db.reader())
            .await?;
        Ok(due.map(|due| due.0))
    }

    async fn delete_sent(&self, sent_before: DateTime<Utc>, limit: i64) -> Result<u64, RelayError> {
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE sent_at < ? LIMIT ?)")
            .bind(Timestamp(sent_before))
            .bind(limit)
            .execute(self.db.writer())
            .await?;
        Ok(deleted.rows_affected())
    }

    async fn delete_consumed(&self, consumed_before: DateTime<Utc>, limit: i64) -> Result<u64, RelayError> {
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE (consumer, message_id) IN \
             (SELECT consumer, message_id FROM inbox WHERE processed_at < ? LIMIT ?)",
        )
        .bind(Timestamp(consumed_before))
        .bind(limit)
        .execute(self.db.writer())
        .await?;
        Ok(deleted.rows_affected())
    }

    async fn watch(&self) -> Box<dyn CommitWatch> {
        Box::new(Commits(self.db.outbox.clone()))
    }
}

/// The commits of this process that wrote outbox rows.
struct Commits(Arc<OutboxState>);

#[async_trait]
impl CommitWatch for Commits {
    async fn committed(&mut self) -> Committed {
        self.0.committed.notified().await;
        Committed::UNKNOWN
    }
}

/// The backlog of the outbox of a SQLite file.
#[derive(Clone)]
pub struct SqliteOutboxMonitor {
    db: Database,
}

impl SqliteOutboxMonitor {
    /// The monitor of the outbox of `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl OutboxMonitor for SqliteOutboxMonitor {
    async fn backlog(&self) -> Result<OutboxBacklog, BoxError> {
        let now = Timestamp::now();
        // `outbox_due` covers `sent_at IS NULL`: this reads only unsent rows.
        let (unsent, scheduled, oldest): (i64, i64, Option<Timestamp>) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE deliver_after <= ?1), \
                    count(*) FILTER (WHERE deliver_after > ?1), \
                    min(deliver_after) FILTER (WHERE deliver_after <= ?1) \
             FROM outbox WHERE sent_at IS NULL",
        )
        .bind(now)
        .fetch_one(self.db.reader())
        .await?;
        Ok(OutboxBacklog {
            unsent: unsent.max(0) as u64,
            scheduled: scheduled.max(0) as u64,
            oldest_unsent_age_secs: oldest.map(|due| (now.0 - due.0).as_seconds_f64().max(0.0)),
        })
    }
}
