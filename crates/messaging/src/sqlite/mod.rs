//! SQLite adapter of the reliable-messaging tables, for the embedded mode: a service's whole
//! state in one file. Atomic commit of state + outbox + inbox, the outbox the relay works on and
//! its backlog ([`SqliteOutboxMonitor`]), migrations, and how values are stored.
//!
//! Every file is in WAL mode (readers never wait for the writer), with `foreign_keys` on and a
//! `busy_timeout` for other processes on the same file (the operator tools). Writes go through
//! one connection per file, in the order they asked for it, instead of contending in SQLite's
//! busy loop; reads use a pool of their own (`query_only`).
//!
//! **Durability.** A commit that others rely on (a unit of work of a service, a publish into
//! the embedded broker) is on disk before it returns: it survives a power loss, not only a
//! killed process, exactly as a PostgreSQL commit does. That matters across files: a message is
//! published into the broker's file only after its outbox row is durable, and a delivery is
//! acknowledged only after the handler's commit is. Rather than `synchronous = FULL` (one fsync
//! per commit, one commit at a time per file), the files run with `synchronous = NORMAL` and
//! [`Database::make_durable`] fsyncs the write-ahead log once for every commit that finished
//! meanwhile (group commit): under load one fsync covers many commits. Writes whose loss is
//! harmless skip it, as PostgreSQL's relay skips `synchronous_commit`: "sent" stamps (the rows
//! are published again, the inboxes drop the copies), acknowledgements (redelivered), cleanup.
mod outbox;

pub use outbox::{SqliteOutbox, SqliteOutboxMonitor, SqliteRelay};

use crate::unit_of_work::{BoxError, Effects, Inbox, SaveError};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::error::ErrorKind;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::sqlite::{
    SqliteArgumentsBuffer, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous, SqliteTypeInfo, SqliteValueRef,
};
use sqlx::{Decode, Encode, QueryBuilder, Row, Sqlite, SqlitePool, Transaction, Type};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;
use uuid::fmt::Hyphenated;

/// The messaging tables' migrations for SQLite. Versions stay below 100, as for PostgreSQL.
static MESSAGING_MIGRATIONS: Migrator = sqlx::migrate!("./migrations-sqlite");

/// A service's SQLite migrator with the messaging tables' migrations in front of its own.
pub fn with_messaging_migrations(service: &Migrator) -> Migrator {
    crate::sql::in_front(&MESSAGING_MIGRATIONS, service)
}

/// How long a write waits for another process's lock on the file before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One SQLite file: a writer connection, a pool of readers, what makes its commits durable and
/// what the relay of its outbox needs to know about commits. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct Database {
    writer: SqlitePool,
    reader: SqlitePool,
    file: Arc<PathBuf>,
    durability: Arc<Durability>,
    outbox: Arc<OutboxState>,
}

/// Group commit: commits are counted as they finish, and one fsync of the write-ahead log makes
/// every commit counted before it started durable.
#[derive(Default)]
struct Durability {
    /// Commits finished so far.
    committed: AtomicU64,
    /// Commits known to be on disk.
    synced: AtomicU64,
    /// One fsync at a time; those who wait meanwhile are usually covered by the next.
    syncing: tokio::sync::Mutex<()>,
}

/// What the commits and the relays of one file share in this process.
#[derive(Default)]
struct OutboxState {
    /// Signalled after each commit that wrote outbox rows.
    committed: Notify,
    /// Rows a relay of this process claimed and has not stamped yet (by `seq`).
    claimed: Mutex<HashSet<i64>>,
    /// One claim at a time, so that two relays never take the same rows.
    claiming: tokio::sync::Mutex<()>,
}

impl Database {
    /// Opens the file (and its directory) if needed, creating it if missing, with `readers`
    /// read connections besides the writer.
    pub async fn open(file: &Path, readers: u32) -> Result<Self, sqlx::Error> {
        if let Some(directory) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(directory)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // The writer first: it creates the file and switches it to WAL.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(readers.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.pragma("query_only", "ON"))
            .await?;
        Ok(Self { writer, reader, file: Arc::new(file.to_owned()), durability: Arc::default(), outbox: Arc::default() })
    }

    /// Returns once every transaction committed on this file before the call is on disk. Call
    /// it after a commit whose loss in a power cut would break a promise (an answer given, a
    /// message published or acknowledged on the strength of it).
    pub async fn make_durable(&self) -> std::io::Result<()> {
        let durability = &self.durability;
        let mine = durability.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = durability.syncing.lock().await;
        if durability.synced.load(Ordering::SeqCst) >= mine {
            return Ok(()); // an fsync that started after this commit finished covered it
        }
        let covered = durability.committed.load(Ordering::SeqCst);
        // The log of a file in WAL mode is `<file>-wal`; fsync of any descriptor of it flushes
        // what SQLite wrote. Without a log (every connection closed), the commits are in the
        // file itself, synced when the log was checkpointed.
        let log = format!("{}-wal", self.file.display());
        tokio::task::spawn_blocking(move || match std::fs::File::open(&log) {
            Ok(log) => log.sync_data(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        })
        .await
        .map_err(std::io::Error::other)??;
        durability.synced.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    /// Brings the schema up to date.
    pub async fn migrate(&self, migrator: &Migrator) -> Result<(), MigrateError> {
        migrator.run(&self.writer).await
    }

    /// The file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Connections for reading (they refuse to write).
    pub fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// The one connection that writes, for statements outside [`commit`].
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock at once, so the transaction
    /// never fails half-way because another process started writing after it read.
    pub async fn begin(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Commits one unit of work: records the consumed messages (refusing a second copy), lets
/// `write_state` write the aggregate, writes the outgoing messages and withdraws cancelled
/// scheduled ones, all in one transaction; then wakes the relay if messages were written.
pub async fn commit(
    db: &Database,
    effects: &Effects<'_>,
    write_state: impl AsyncFnOnce(&mut SqliteConnection) -> Result<(), SaveError>,
) -> Result<(), SaveError> {
    let mut tx = db.begin().await.map_err(save_error)?;
    if !effects.consumed.is_empty() {
        let now = Timestamp::now();
        let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO inbox (consumer, message_id, processed_at) ");
        insert.push_values(&effects.consumed, |mut row, consumed| {
            row.push_bind(consumed.consumer).push_bind(consumed.message_id.hyphenated()).push_bind(now);
        });
        insert.push(" ON CONFLICT DO NOTHING");
        let recorded = insert.build().execute(&mut *tx).await.map_err(save_error)?;
        if recorded.rows_affected() < effects.consumed.len() as u64 {
            return Err(SaveError::AlreadyConsumed);
        }
    }
    write_state(&mut tx).await?;
    write_outbox(&mut tx, effects).await.map_err(save_error)?;
    tx.commit().await.map_err(save_error)?;
    db.make_durable().await.map_err(|error| SaveError::Unavailable(Box::new(error)))?;
    if !effects.outgoing.is_empty() {
        db.outbox.committed.notify_one();
    }
    Ok(())
}

async fn write_outbox(conn: &mut SqliteConnection, effects: &Effects<'_>) -> Result<(), sqlx::Error> {
    if !effects.cancelled.is_empty() {
        let mut delete = QueryBuilder::<Sqlite>::new("DELETE FROM outbox WHERE sent_at IS NULL AND message_id IN ");
        delete.push_tuples(&effects.cancelled, |mut row, id| {
            row.push_bind(id.hyphenated());
        });
        delete.build().execute(&mut *conn).await?;
    }
    if effects.outgoing.is_empty() {
        return Ok(());
    }
    let now = Timestamp::now();
    let mut insert = QueryBuilder::<Sqlite>::new(
        "INSERT INTO outbox (message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, \
                             payload, deliver_after) ",
    );
    insert.push_values(&effects.outgoing, |mut row, outgoing| {
        let envelope = &outgoing.envelope;
        row.push_bind(envelope.message_id.hyphenated())
            .push_bind(envelope.message_type.as_str())
            .push_bind(envelope.correlation_id.as_str())
            .push_bind(envelope.causation_id.map(Uuid::hyphenated))
            .push_bind(Timestamp(envelope.occurred_at))
            .push_bind(envelope.traceparent.as_deref())
            .push_bind(envelope.payload.to_string())
            .push_bind(outgoing.deliver_after.map_or(now, Timestamp));
    });
    insert.build().execute(conn).await?;
    Ok(())
}

/// Classifies a SQLite error for a save: a second writer of one key is a conflict, a lock held
/// too long or a file that cannot be written is worth retrying, other refusals are final.
pub fn save_error(error: sqlx::Error) -> SaveError {
    match &error {
        sqlx::Error::Database(db) => match db.kind() {
            ErrorKind::UniqueViolation => SaveError::Conflict,
            ErrorKind::ForeignKeyViolation | ErrorKind::NotNullViolation | ErrorKind::CheckViolation => {
                SaveError::Refused(Box::new(error))
            }
            // `ErrorKind` is not exhaustive: what it does not name is told by the result code.
            _ if is_transient_code(db.code().as_deref()) => SaveError::Unavailable(Box::new(error)),
            _ => SaveError::Refused(Box::new(error)),
        },
        _ => SaveError::Unavailable(Box::new(error)),
    }
}

/// Whether an extended SQLite result code means "not now" rather than "never": BUSY, LOCKED,
/// NOMEM, IOERR, FULL, CANTOPEN, PROTOCOL.
fn is_transient_code(code: Option<&str>) -> bool {
    let primary = code.and_then(|code| code.parse::<i32>().ok()).map(|code| code & 0xff);
    matches!(primary, Some(5 | 6 | 7 | 10 | 13 | 14 | 15))
}

pub use crate::sql::load_error;

/// The outbox columns that make an envelope, in the order [`envelope_from_row`] reads them.
pub const ENVELOPE_COLUMNS: &str =
    "message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, payload";

/// An outbox row (selected with [`ENVELOPE_COLUMNS`]) as the envelope it holds.
pub fn envelope_from_row(row: &SqliteRow) -> Result<crate::Envelope, sqlx::Error> {
    Ok(crate::Envelope {
        message_id: row.try_get::<Hyphenated, _>("message_id")?.into_uuid(),
        message_type: row.try_get("message_type")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get::<Option<Hyphenated>, _>("causation_id")?.map(Hyphenated::into_uuid),
        occurred_at: row.try_get::<Timestamp, _>("occurred_at")?.0,
        traceparent: row.try_get("traceparent")?,
        payload: row.try_get("payload")?,
    })
}

/// The inbox table, read by the consumer runtime to skip messages already applied.
#[derive(Clone)]
pub struct SqliteInbox {
    db: Database,
}

impl SqliteInbox {
    /// The inbox of `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl Inbox for SqliteInbox {
    async fn contains(&self, consumer: &str, message_id: Uuid) -> Result<bool, BoxError> {
        let found: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = ? AND message_id = ?)")
                .bind(consumer)
                .bind(message_id.hyphenated())
                .fetch_one(self.db.reader())
                .await?;
        Ok(found)
    }
}

/// A point in time as the SQLite tables hold it: RFC 3339 text in UTC with exactly six
/// fractional digits (`2026-01-31T09:15:02.123456Z`). Fixed width makes text order time order,
/// so comparisons and indexes work on it, and microseconds read back exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Now.
    pub fn now() -> Self {
        Self(Utc::now())
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        Self(at)
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<sqlx::encode::IsNull, BoxError> {
        Encode::<Sqlite>::encode(self.0.to_rfc3339_opts(SecondsFormat::Micros, true), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Self(DateTime::parse_from_rfc3339(text)?.with_timezone(&Utc)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fixed_width_so_text_order_is_time_order() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc);
        let text = |at: DateTime<Utc>| at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let (whole, later) = (at("2026-01-31T09:15:02Z"), at("2026-01-31T09:15:02.5Z"));
        assert_eq!(text(whole), "2026-01-31T09:15:02.000000Z");
        assert!(text(whole) < text(later));
    }

    #[test]
    fn busy_and_io_errors_are_transient_and_others_are_not() {
        assert!(is_transient_code(Some("5"))); // SQLITE_BUSY
        assert!(is_transient_code(Some("517"))); // SQLITE_BUSY_SNAPSHOT
        assert!(is_transient_code(Some("1034"))); // SQLITE_IOERR_FSYNC
        assert!(!is_transient_code(Some("1811"))); // SQLITE_CONSTRAINT_TRIGGER
        assert!(!is_transient_code(Some("1"))); // SQLITE_ERROR
        assert!(!is_transient_code(None));
    }
}
