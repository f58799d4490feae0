//! PostgreSQL adapter of the reliable-messaging tables: atomic commit of state + outbox + inbox,
//! the outbox the relay works on ([`PgOutbox`]) and its backlog ([`PgOutboxMonitor`]), database
//! creation and migrations.

mod group;
mod outbox;

pub use crate::relay::{RelayConfig, RelayError};
pub use group::GroupCommit;
pub use outbox::{PgOutbox, PgOutboxMonitor};

/// The relay of a PostgreSQL outbox: `Relay::new(name, pool, transport, config)`.
pub type Relay = crate::relay::Relay<PgOutbox>;

use crate::unit_of_work::{BoxError, Effects, Inbox, SaveError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use uuid::Uuid;

/// The messaging tables' migrations. Their versions stay below 100; services number theirs from 100.
static MESSAGING_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// A service's migrator with the messaging tables' migrations in front of its own.
pub fn with_messaging_migrations(service: &Migrator) -> Migrator {
    crate::sql::in_front(&MESSAGING_MIGRATIONS, service)
}

/// How a pool of connections to a service's database is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    /// Most connections open at once.
    pub max_connections: u32,
    /// Longest wait for a connection, including opening a new one.
    pub acquire_timeout: Duration,
    /// The server's `statement_timeout` and `idle_in_transaction_session_timeout` on every
    /// connection (zero: the server's own). The first bounds lock waits; the second ends a
    /// transaction whose client went silent, which would otherwise hold its locks (and the
    /// outbox rows it claimed) for as long as the server believes the client is there.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

/// How long a connection may take to answer a ping, or to finish what it was given up in the
/// middle of. sqlx pings a connection handed back to the pool without a deadline: on one left
/// in the middle of a query (its caller's deadline passed) whose server went silent, that ping
/// would wait forever and hold a pool slot. The pool first waits for the rest of that query's
/// answer, within this.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle for less than this is handed out without a ping (a server that went away
/// meanwhile shows as a transient failure of the query); one idle longer is pinged first.
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// Pings `connection`, within [`PING_TIMEOUT`].
async fn ping(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    within_ping_timeout(sqlx::Connection::ping(connection)).await
}

/// Reads what `connection` still owes (the answer to a query whose caller gave up, the
/// rollback of a dropped transaction), within [`PING_TIMEOUT`]. On a connection that owes
/// nothing, the usual case, this costs no round trip: sqlx's own ping follows.
/// (`Connection::flush` is public but hidden from sqlx's docs: if a release drops it, the build
/// breaks; the ping above would then do, at one more round trip.)
async fn drain(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    within_ping_timeout(sqlx::Connection::flush(connection)).await
}

async fn within_ping_timeout(answer: impl Future<Output = Result<(), sqlx::Error>>) -> Result<bool, sqlx::Error> {
    match tokio::time::timeout(PING_TIMEOUT, answer).await {
        Ok(answer) => answer.map(|()| true),
        Err(_) => Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Creates the database named in `url` if it does not exist yet, then opens a pool of up to
/// `max_connections` on it (the other settings as [`PoolSettings::default`]).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    connect_with(url, &PoolSettings { max_connections, ..PoolSettings::default() }).await
}

/// Creates the database named in `url` if it does not exist yet, then opens a pool on it.
pub async fn connect_with(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    create_database_if_missing(url).await?;
    // Every statement is prepared once per connection and planned once: PostgreSQL would plan
    // the first five executions of each again, and keep doing so for a statement whose generic
    // plan it estimates dearer (unnest over array parameters), for plans that come out the same
    // (primary keys and appends). Measured at 16 customers: 6 to 10 % less PostgreSQL CPU.
    let mut options = PgConnectOptions::from_str(url)?.options([("plan_cache_mode", "force_generic_plan")]);
    if !settings.statement_timeout.is_zero() {
        let timeout = format!("{}ms", settings.statement_timeout.as_millis());
        options = options.options([("statement_timeout", &timeout), ("idle_in_transaction_session_timeout", &timeout)]);
    }
    // Bounded waits: on release, for what the connection still owes (before sqlx's own ping,
    // which has no deadline), and on acquire a ping only after a second of idleness (instead of
    // sqlx's unbounded ping on every acquire), so that the bounds cost no round trip under load.
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move { if metadata.idle_for < TRUSTED_IDLE { Ok(true) } else { ping(connection).await } })
        })
        .after_release(|connection, _| Box::pin(drain(connection)))
        .connect_with(options)
        .await
}

/// Runs `migrator` on a connection of its own without the pool's statement timeouts: a
/// migration may rewrite a large table, or wait for another instance's.
pub async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
    let mut connection = pool.acquire().await?.detach();
    sqlx::raw_sql("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .execute(&mut connection)
        .await?;
    migrator.run(&mut connection).await?;
    sqlx::Connection::close(connection).await?;
    Ok(())
}

/// Creates the database named in `url` unless it exists; safe when several instances race.
pub async fn create_database_if_missing(url: &str) -> Result<(), sqlx::Error> {
    if Postgres::database_exists(url).await? {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        // Another instance created it between our check and our create: depending on the
        // timing, PostgreSQL says duplicate_database or trips over the catalog's unique index.
        Err(sqlx::Error::Database(error)) if matches!(error.code().as_deref(), Some("42P04" | "23505")) => Ok(()),
        outcome => outcome,
    }
}

/// Commits one unit of work on its own (see [`GroupCommit::commit`]); a store that runs
/// beside others holds a [`GroupCommit`] instead, so that overlapping units share commits.
pub async fn commit(
    pool: &PgPool,
    effects: &Effects<'_>,
    write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError> + Clone,
) -> Result<(), SaveError> {
    GroupCommit::from(pool.clone()).commit(effects, write_state).await
}

/// What a unit of work's outgoing messages become in the outbox beside their envelopes.
struct Outbound<'a> {
    /// Per outgoing message, whether it is handed off (see [`crate::hand_off`]).
    handed: &'a [bool],
    /// Until when the relay leaves the handed-off rows alone.
    lease_until: DateTime<Utc>,
}

/// Writes one unit of work on `conn`, inside a transaction: its effects first (the consumed
/// messages' inbox records, refusing a second copy; the outgoing messages; the withdrawn
/// scheduled ones), then the aggregate through `write_state`.
async fn write_unit(
    conn: &mut PgConnection,
    effects: &Effects<'_>,
    outbound: &Outbound<'_>,
    write_state: impl AsyncFnOnce(&mut PgConnection) -> Result<(), SaveError>,
) -> Result<(), SaveError> {
    if !effects.is_empty() {
        write_in_one(&mut *conn, effects, outbound, &StateWrites::default()).await?;
    }
    write_state(conn).await
}

/// Writes one unit of work on `conn` in one statement: its effects and the aggregate's `writes`.
/// The statement refuses itself (an error undoes all of it) on a second copy of a consumed
/// message or a stale version (a write that had to write a row and wrote none), so that it is
/// a whole unit of work inside a transaction or on its own.
async fn write_in_one(
    conn: &mut PgConnection,
    effects: &Effects<'_>,
    outbound: &Outbound<'_>,
    writes: &StateWrites,
) -> Result<(), SaveError> {
    // The aggregate's parameters come first, the effects' after them.
    let offset = sqlx::Arguments::len(&writes.arguments);
    let (parts, first_copy) = &EFFECTS_PARTS[effects_kind(effects)];
    let parts = parts.iter().map(|part| renumbered(part, offset)).collect();
    let sql = writes.statement(parts, &renumbered(first_copy, offset))?;
    let arguments = effects_arguments(writes.arguments.clone(), effects, outbound).map_err(SaveError::Refused)?;
    run_unit(conn, sql, arguments).await
}

/// Runs a unit of work's statement; its refusals come back as [`save_error`] reads them.
async fn run_unit(conn: &mut PgConnection, sql: String, arguments: PgArguments) -> Result<(), SaveError> {
    let query = sqlx::query_with(sqlx::AssertSqlSafe(sql), arguments);
    query.execute(conn).await.map(drop).map_err(save_error)
}

/// What a unit of work writes of its aggregate, as parts of the statement that writes its
/// effects ([`GroupCommit::commit_writes`]): one round trip for the whole unit instead of one
/// per statement. Each part is an `INSERT`, `UPDATE` or `DELETE` numbering its parameters from
/// `$1`, as if it stood alone. The parts run on one snapshot and do not see each other's rows:
/// two parts must not write the same row.
#[derive(Clone, Default)]
pub struct StateWrites {
    /// Each part's statement, its parameters numbered in the whole statement, and whether it
    /// must write a row (`RETURNING 1`; none written means a stale version).
    parts: Vec<(String, bool)>,
    arguments: PgArguments,
    /// A value that could not be encoded.
    error: Option<Arc<str>>,
}

impl StateWrites {
    /// A part that must write a row, or the unit of work is a conflict: `sql` ends with
    /// `RETURNING 1` (an `UPDATE ... WHERE version = $n`, say).
    pub fn must_write(&mut self, sql: &str) -> Bind<'_> {
        self.part(sql, true)
    }

    /// A part that may write any number of rows.
    pub fn write(&mut self, sql: &str) -> Bind<'_> {
        self.part(sql, false)
    }

    /// Runs the parts alone, as one statement on `conn` (in the unit of work's transaction).
    pub async fn execute(&self, conn: &mut PgConnection) -> Result<(), SaveError> {
        run_unit(conn, self.statement(Vec::new(), "true")?, self.arguments.clone()).await
    }

    /// The statement of `before` (common table expressions) and the parts. It refuses itself
    /// unless `first_copy` holds and every part that must write a row wrote one.
    fn statement(&self, before: Vec<String>, first_copy: &str) -> Result<String, SaveError> {
        if let Some(error) = &self.error {
            return Err(SaveError::Refused(error.to_string().into()));
        }
        let parts = self.parts.iter().enumerate().map(|(n, (sql, _))| format!("state_{n} AS ({sql})"));
        let ctes: Vec<String> = before.into_iter().chain(parts).collect();
        let must_write = self.parts.iter().enumerate().filter(|(_, (_, must_write))| *must_write);
        let written: Vec<String> = must_write.map(|(n, _)| format!("EXISTS (SELECT FROM state_{n})")).collect();
        let written = if written.is_empty() { "true".to_owned() } else { written.join(" AND ") };
        let check = format!(
            "SELECT CASE WHEN NOT ({first_copy}) THEN unit_of_work_refused('{ALREADY_CONSUMED}', 'a copy of a consumed message') \
                         WHEN NOT ({written}) THEN unit_of_work_refused('{SERIALIZATION_FAILURE}', 'a stale version') \
                         ELSE true END"
        );
        Ok(if ctes.is_empty() { check } else { format!("WITH {} {check}", ctes.join(", ")) })
    }

    fn part(&mut self, sql: &str, must_write: bool) -> Bind<'_> {
        let offset = sqlx::Arguments::len(&self.arguments);
        self.parts.push((renumbered(sql, offset), must_write));
        Bind { writes: self }
    }
}

/// Binds the parameters of a part of [`StateWrites`], in order.
pub struct Bind<'a> {
    writes: &'a mut StateWrites,
}

impl Bind<'_> {
    /// The part's next parameter.
    pub fn bind<'t, T: sqlx::Encode<'t, Postgres> + sqlx::Type<Postgres>>(self, value: T) -> Self {
        if let Err(error) = sqlx::Arguments::add(&mut self.writes.arguments, value) {
            self.writes.error.get_or_insert_with(|| error.to_string().into());
        }
        self
    }
}

/// `sql` with each parameter `$n` renumbered `$n+offset`.
fn renumbered(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        // A `$` followed by no digits is no parameter, and stays as it is.
        if let Ok(n) = rest[..digits].parse::<usize>() {
            out.push_str(&(n + offset).to_string());
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Which parts a unit's effects need: inbox records 1, withdrawn scheduled messages 2,
/// outgoing messages 4.
fn effects_kind(effects: &Effects<'_>) -> usize {
    usize::from(!effects.consumed.is_empty())
        | usize::from(!effects.cancelled.is_empty()) << 1
        | usize::from(!effects.outgoing.is_empty()) << 2
}

/// The common table expressions writing a unit of work's effects, for each kind
/// ([`effects_kind`]), and the condition that they recorded every consumed message (none was
/// consumed before: this is its first copy). Only the parts there is something for: the outbox
/// trigger wakes the relays for every INSERT statement, even one that inserts nothing.
static EFFECTS_PARTS: LazyLock<[(Vec<String>, &'static str); 8]> = LazyLock::new(|| {
    std::array::from_fn(|which| {
        let consumes = which & 1 != 0;
        // A second copy of a consumed message writes nothing (its outgoing messages may carry
        // the ids of the first copy's).
        let first_copy = if consumes { "(SELECT count(*) FROM consumed) = cardinality($2::uuid[])" } else { "true" };
        let parts = [
            "consumed AS (INSERT INTO inbox (consumer, message_id) SELECT * FROM unnest($1::text[], $2::uuid[]) \
                          ON CONFLICT DO NOTHING RETURNING 1)"
                .to_owned(),
            format!(
                "withdrawn AS (DELETE FROM outbox WHERE message_id = ANY($3::uuid[]) AND sent_at IS NULL AND {first_copy})"
            ),
            format!(
                "sent AS (INSERT INTO outbox (message_id, message_type, correlation_id, causation_id, occurred_at, \
                                             traceparent, payload, deliver_after, handed_off) \
                          SELECT id, type, correlation, causation, occurred, trace, payload, \
                                 CASE WHEN handed THEN $12 ELSE coalesce(due, now()) END, handed \
                          FROM unnest($4::uuid[], $5::text[], $6::text[], $7::uuid[], $8::timestamptz[], $9::text[], \
                                      $10::jsonb[], $11::timestamptz[], $13::bool[]) \
                               AS m(id, type, correlation, causation, occurred, trace, payload, due, handed) \
                          WHERE {first_copy})"
            ),
        ];
        let chosen = (0..3).filter(|bit| which & (1 << bit) != 0).map(|bit| parts[bit].clone()).collect();
        (chosen, first_copy)
    })
});

/// `arguments` followed by the parameters of the effects' statement or parts.
fn effects_arguments(
    mut arguments: PgArguments,
    effects: &Effects<'_>,
    outbound: &Outbound<'_>,
) -> Result<PgArguments, sqlx::error::BoxDynError> {
    use sqlx::Arguments;
    let consumers: Vec<&str> = effects.consumed.iter().map(|consumed| consumed.consumer).collect();
    let consumed: Vec<Uuid> = effects.consumed.iter().map(|consumed| consumed.message_id).collect();
    let count = effects.outgoing.len();
    let (mut ids, mut types, mut correlations, mut causations) =
        (Vec::with_capacity(count), Vec::with_capacity(count), Vec::with_capacity(count), Vec::with_capacity(count));
    let (mut occurred, mut traces, mut payloads, mut due) =
        (Vec::with_capacity(count), Vec::with_capacity(count), Vec::with_capacity(count), Vec::with_capacity(count));
    let mut handed = Vec::with_capacity(count);
    for (n, outgoing) in effects.outgoing.iter().enumerate() {
        let envelope = &outgoing.envelope;
        ids.push(envelope.message_id);
        types.push(envelope.message_type.as_str());
        correlations.push(envelope.correlation_id.as_str());
        causations.push(envelope.causation_id);
        occurred.push(envelope.occurred_at);
        traces.push(envelope.traceparent.as_deref());
        payloads.push(&envelope.payload);
        due.push(outgoing.deliver_after);
        handed.push(outbound.handed.get(n).copied().unwrap_or(false));
    }
    arguments.add(consumers)?;
    arguments.add(consumed)?;
    arguments.add(&effects.cancelled)?;
    arguments.add(ids)?;
    arguments.add(types)?;
    arguments.add(correlations)?;
    arguments.add(causations)?;
    arguments.add(occurred)?;
    arguments.add(traces)?;
    arguments.add(payloads)?;
    arguments.add(due)?;
    arguments.add(outbound.lease_until)?;
    arguments.add(handed)?;
    Ok(arguments)
}

/// The SQLSTATE of a unit of work that refused itself on a second copy of a consumed message.
const ALREADY_CONSUMED: &str = "UW001";
/// The SQLSTATE of a unit of work that refused itself on a stale version, as PostgreSQL's own
/// serialization failures.
const SERIALIZATION_FAILURE: &str = "40001";

/// Classifies a database error for a save: lost connections and deadlocks are worth retrying,
/// serialization failures and duplicate keys are conflicts, other refusals are final.
pub fn save_error(error: sqlx::Error) -> SaveError {
    match &error {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some(ALREADY_CONSUMED) => SaveError::AlreadyConsumed,
            // serialization_failure, unique_violation (two creators of one aggregate)
            Some(SERIALIZATION_FAILURE | "23505") => SaveError::Conflict,
            // deadlock_detected, lock_not_available, admin shutdown and friends, query canceled
            Some(code) if code == "40P01" || code == "55P03" || code.starts_with("57") || code.starts_with("08") => {
                SaveError::Unavailable(Box::new(error))
            }
            _ => SaveError::Refused(Box::new(error)),
        },
        _ => SaveError::Unavailable(Box::new(error)),
    }
}

pub use crate::sql::load_error;

/// The outbox columns that make an envelope, in the order [`envelope_from_row`] reads them.
pub const ENVELOPE_COLUMNS: &str =
    "message_id, message_type, correlation_id, causation_id, occurred_at, traceparent, payload";

/// An outbox row (selected with [`ENVELOPE_COLUMNS`]) as the envelope it holds.
pub fn envelope_from_row(row: &sqlx::postgres::PgRow) -> Result<crate::Envelope, sqlx::Error> {
    use sqlx::Row;
    Ok(crate::Envelope {
        message_id: row.try_get("message_id")?,
        message_type: row.try_get("message_type")?,
        correlation_id: row.try_get("correlation_id")?,
        causation_id: row.try_get("causation_id")?,
        occurred_at: row.try_get("occurred_at")?,
        traceparent: row.try_get("traceparent")?,
        payload: row.try_get("payload")?,
    })
}

/// The inbox table, read by the consumer runtime to skip messages already applied.
#[derive(Clone)]
pub struct PgInbox {
    pool: PgPool,
}

impl PgInbox {
    /// The inbox of the database behind `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl Inbox for PgInbox {
    async fn contains(&self, consumer: &str, message_id: Uuid) -> Result<bool, BoxError> {
        let found: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox WHERE consumer = $1 AND message_id = $2)")
                .bind(consumer)
                .bind(message_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::renumbered;

    #[test]
    fn a_part_of_a_statement_numbers_its_parameters_after_those_before_it() {
        assert_eq!(
            renumbered("UPDATE t SET a = $2, b = $10::int[] WHERE id = $1 RETURNING 1", 13),
            "UPDATE t SET a = $15, b = $23::int[] WHERE id = $14 RETURNING 1"
        );
        assert_eq!(renumbered("SELECT $1, '$', $", 2), "SELECT $3, '$', $");
    }
}
