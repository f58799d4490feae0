//! The two databases the messaging tables live in, behind one interface, so that the outbox,
//! inbox, scheduled-message, relay and backlog contracts are written once and run against both. Each
//! store holds the messaging tables and a `counters (id, value)` table that stands in for an
//! aggregate.

use async_trait::async_trait;
use messaging::postgres::PgOutbox;
use messaging::relay::OutboxStore;
use messaging::sqlite::SqliteOutbox;
use messaging::testing::{TestDatabase, TestSqlite};
use messaging::{Effects, Inbox, OutboxMonitor, SaveError};
use sqlx::migrate::Migrator;
use std::sync::Arc;

static NO_SERVICE_MIGRATIONS: Migrator = Migrator::DEFAULT;

/// A fresh database with the messaging tables and `counters`. Clones share it.
#[async_trait]
pub trait Store: Clone + Send + Sync + 'static {
    type Outbox: OutboxStore + Clone;

    async fn new() -> Self;

    /// One unit of work: sets counter 1 to `value` and commits `effects` with it.
    async fn set_counter(&self, effects: &Effects<'_>, value: i32) -> Result<(), SaveError>;

    /// One unit of work that writes counter 1, then fails with a conflict.
    async fn write_then_conflict(&self, effects: &Effects<'_>) -> Result<(), SaveError>;

    /// One unit of work that changes no state.
    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError>;

    /// Counter 1, if it was written.
    async fn counter(&self) -> Option<i32>;

    /// Rows of the outbox, and how many of them are not sent yet.
    async fn outbox_rows(&self) -> (i64, i64);

    async fn inbox_rows(&self) -> i64;

    fn outbox(&self) -> Self::Outbox;

    /// The outbox's backlog, as operators see it.
    fn monitor(&self) -> Arc<dyn OutboxMonitor>;

    fn inbox(&self) -> Arc<dyn Inbox>;
}

#[derive(Clone)]
pub struct Postgres(Arc<TestDatabase>);

#[async_trait]
impl Store for Postgres {
    type Outbox = PgOutbox;

    async fn new() -> Self {
        let db = TestDatabase::new(&NO_SERVICE_MIGRATIONS).await;
        sqlx::query("CREATE TABLE counters (id int PRIMARY KEY, value int NOT NULL)").execute(&db.pool).await.unwrap();
        Self(Arc::new(db))
    }

    async fn set_counter(&self, effects: &Effects<'_>, value: i32) -> Result<(), SaveError> {
        messaging::postgres::commit(&self.0.pool, effects, async |tx| {
            sqlx::query("INSERT INTO counters VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET value = excluded.value")
                .bind(value)
                .execute(tx)
                .await
                .map_err(messaging::postgres::save_error)?;
            Ok(())
        })
        .await
    }

    async fn write_then_conflict(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        messaging::postgres::commit(&self.0.pool, effects, async |tx| {
            sqlx::query("INSERT INTO counters VALUES (1, 1)").execute(tx).await.unwrap();
            Err(SaveError::Conflict)
        })
        .await
    }

    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        messaging::postgres::commit(&self.0.pool, effects, async |_| Ok(())).await
    }

    async fn counter(&self) -> Option<i32> {
        sqlx::query_scalar("SELECT value FROM counters WHERE id = 1").fetch_optional(&self.0.pool).await.unwrap()
    }

    async fn outbox_rows(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM outbox")
            .fetch_one(&self.0.pool)
            .await
            .unwrap()
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(&self.0.pool).await.unwrap()
    }

    fn outbox(&self) -> PgOutbox {
        PgOutbox::from(self.0.pool.clone())
    }

    fn monitor(&self) -> Arc<dyn OutboxMonitor> {
        Arc::new(messaging::postgres::PgOutboxMonitor::new(self.0.pool.clone()))
    }

    fn inbox(&self) -> Arc<dyn Inbox> {
        Arc::new(messaging::postgres::PgInbox::new(self.0.pool.clone()))
    }
}

#[derive(Clone)]
pub struct Sqlite(Arc<TestSqlite>);

#[async_trait]
impl Store for Sqlite {
    type Outbox = SqliteOutbox;

    async fn new() -> Self {
        let test = TestSqlite::new(&NO_SERVICE_MIGRATIONS).await;
        sqlx::query("CREATE TABLE counters (id INTEGER PRIMARY KEY, value INTEGER NOT NULL) STRICT")
            .execute(test.db.writer())
            .await
            .unwrap();
        Self(Arc::new(test))
    }

    async fn set_counter(&self, effects: &Effects<'_>, value: i32) -> Result<(), SaveError> {
        messaging::sqlite::commit(&self.0.db, effects, async |tx| {
            sqlx::query("INSERT INTO counters VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET value = excluded.value")
                .bind(value)
                .execute(tx)
                .await
                .map_err(messaging::sqlite::save_error)?;
            Ok(())
        })
        .await
    }

    async fn write_then_conflict(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        messaging::sqlite::commit(&self.0.db, effects, async |tx| {
            sqlx::query("INSERT INTO counters VALUES (1, 1)").execute(tx).await.unwrap();
            Err(SaveError::Conflict)
        })
        .await
    }

    async fn commit(&self, effects: &Effects<'_>) -> Result<(), SaveError> {
        messaging::sqlite::commit(&self.0.db, effects, async |_| Ok(())).await
    }

    async fn counter(&self) -> Option<i32> {
        sqlx::query_scalar("SELECT value FROM counters WHERE id = 1").fetch_optional(self.0.db.reader()).await.unwrap()
    }

    async fn outbox_rows(&self) -> (i64, i64) {
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE sent_at IS NULL) FROM outbox")
            .fetch_one(self.0.db.reader())
            .await
            .unwrap()
    }

    async fn inbox_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM inbox").fetch_one(self.0.db.reader()).await.unwrap()
    }

    fn outbox(&self) -> SqliteOutbox {
        SqliteOutbox::from(self.0.db.clone())
    }

    fn monitor(&self) -> Arc<dyn OutboxMonitor> {
        Arc::new(messaging::sqlite::SqliteOutboxMonitor::new(self.0.db.clone()))
    }

    fn inbox(&self) -> Arc<dyn Inbox> {
        Arc::new(messaging::sqlite::SqliteInbox::new(self.0.db.clone()))
    }
}
