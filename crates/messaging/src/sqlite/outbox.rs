//! The SQLite outbox as the relay works on it. The embedded mode runs one process per data
//! directory, so claims are kept in this process's memory rather than as row locks, and the
//! relay is woken by the commits of this process.

use super::{Database, OutboxState, Timestamp, envelope_from_row};
use crate::relay::{Claimed, CommitWatch, OutboxStore, Relay, RelayError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::sync::Arc;
use uuid::Uuid;
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

    async fn mark_sent(&self, mut claim: Self::Claim, _ids: &[Uuid]) -> Result<(), RelayError> {
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

    async fn delete_old(
        &self,
        sent_before: DateTime<Utc>,
        consumed_before: DateTime<Utc>,
    ) -> Result<(u64, u64), RelayError> {
        let sent = sqlx::query("DELETE FROM outbox WHERE sent_at < ?")
            .bind(Timestamp(sent_before))
            .execute(self.db.writer())
            .await?;
        let consumed = sqlx::query("DELETE FROM inbox WHERE processed_at < ?")
            .bind(Timestamp(consumed_before))
            .execute(self.db.writer())
            .await?;
        Ok((sent.rows_affected(), consumed.rows_affected()))
    }

    async fn watch(&self) -> Box<dyn CommitWatch> {
        Box::new(Commits(self.db.outbox.clone()))
    }
}

/// The commits of this process that wrote outbox rows.
struct Commits(Arc<OutboxState>);

#[async_trait]
impl CommitWatch for Commits {
    async fn committed(&mut self) {
        self.0.committed.notified().await;
    }
}
