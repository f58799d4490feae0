//! The PostgreSQL outbox as the relay works on it: rows claimed `FOR UPDATE SKIP LOCKED` in a
//! transaction that stamps them sent, woken by the `outbox` notification a trigger sends at
//! commit.

use super::envelope_from_row;
use crate::ErrorChain;
use crate::relay::{Claimed, CommitWatch, OutboxStore, RelayError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Row};
use uuid::Uuid;

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
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let envelopes = rows
            .iter()
            .map(|row| {
                envelope_from_row(row)
                    .map_err(|error| RelayError::Corrupt(row.try_get("message_id").unwrap_or_default(), error))
            })
            .collect::<Result<_, _>>()?;
        Ok(Claimed { envelopes, claim: tx })
    }

    async fn mark_sent(&self, mut tx: Self::Claim, ids: &[Uuid]) -> Result<(), RelayError> {
        sqlx::query("UPDATE outbox SET sent_at = clock_timestamp() WHERE message_id = ANY($1)")
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, RelayError> {
        Ok(sqlx::query_scalar("SELECT min(deliver_after) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn delete_old(
        &self,
        sent_before: DateTime<Utc>,
        consumed_before: DateTime<Utc>,
    ) -> Result<(u64, u64), RelayError> {
        let sent = sqlx::query("DELETE FROM outbox WHERE sent_at < $1").bind(sent_before).execute(&self.pool).await?;
        let consumed =
            sqlx::query("DELETE FROM inbox WHERE processed_at < $1").bind(consumed_before).execute(&self.pool).await?;
        Ok((sent.rows_affected(), consumed.rows_affected()))
    }

    async fn watch(&self) -> Box<dyn CommitWatch> {
        Box::new(Notifications { pool: self.pool.clone(), listener: listen(&self.pool).await })
    }
}

/// The `outbox` notifications, over a listening connection that is opened again when lost.
struct Notifications {
    pool: PgPool,
    listener: Option<PgListener>,
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen("outbox").await.ok()?;
    Some(listener)
}

#[async_trait]
impl CommitWatch for Notifications {
    async fn committed(&mut self) {
        let Some(active) = &mut self.listener else {
            // Listening again; whatever was notified meanwhile is lost, so resolve to sweep. Until
            // it succeeds, the relay relies on its periodic sweep.
            self.listener = listen(&self.pool).await;
            if self.listener.is_none() {
                std::future::pending::<()>().await;
            }
            return;
        };
        match active.try_recv().await {
            Ok(Some(_)) => {
                // Coalesce the notifications already buffered: one sweep serves them all.
                while active.next_buffered().is_some() {}
            }
            Ok(None) => {} // reconnected: notifications may have been lost, so sweep
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "outbox listener failed; relying on the periodic sweep");
                self.listener = None;
            }
        }
    }
}
