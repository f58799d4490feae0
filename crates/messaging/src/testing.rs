//! Test support: a fresh PostgreSQL database (or SQLite file) per test and unique broker names
//! per test, all removed when the test ends, so tests run in parallel against the real servers.

use crate::transport::Naming;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::time::Duration;

/// Server URL used by tests; `TEST_DATABASE_URL` overrides it.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Broker URL used by tests; `TEST_AMQP_URL` overrides it.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A database that exists for the lifetime of this value.
pub struct TestDatabase {
    /// Its name (unique).
    pub name: String,
    /// Its URL.
    pub url: String,
    /// A pool of connections to it.
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates an empty database and runs `migrator` (with the messaging tables) on it.
    pub async fn new(migrator: &Migrator) -> Self {
        let db = Self::empty().await;
        crate::postgres::with_messaging_migrations(migrator).run(&db.pool).await.expect("migrations run");
        db
    }

    /// Creates an empty database, for tests that run the migrations themselves.
    pub async fn empty() -> Self {
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        let url = format!("{}/{name}", server_url());
        let pool = crate::postgres::connect(&url, 8).await.expect("test database created");
        Self { name, url, pool }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = format!("{}/postgres", server_url());
        let name = self.name.clone();
        // Drop runs outside async: use a private runtime on a plain thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                use sqlx::Connection;
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                    .execute(&mut admin)
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// A SQLite database in a directory of its own; both are removed when this value is dropped.
pub struct TestSqlite {
    /// The database.
    pub db: crate::sqlite::Database,
    /// Its directory (the file is `db.sqlite` in it).
    pub dir: tempfile::TempDir,
}

impl TestSqlite {
    /// Creates a database and runs `migrator` (with the messaging tables) on it.
    pub async fn new(migrator: &Migrator) -> Self {
        let test = Self::empty().await;
        test.db.migrate(&crate::sqlite::with_messaging_migrations(migrator)).await.expect("migrations run");
        test
    }

    /// Creates an empty database, for tests that run the migrations themselves.
    pub async fn empty() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = crate::sqlite::Database::open(&dir.path().join("db.sqlite"), 4).await.expect("SQLite file opened");
        Self { db, dir }
    }
}

/// Broker names no other test uses.
pub fn unique_naming() -> Naming {
    Naming::new(format!("test-{}", uuid::Uuid::now_v7().simple()))
}

/// Polls `condition` every 10 ms until it holds, or panics after `limit` naming what it awaited.
pub async fn eventually<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Shows the code's logs in failing tests (`RUST_LOG` picks the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One contract, written once as generic test functions, run against every implementation:
///
/// ```ignore
/// contract_tests!([a_saved_order_loads_back, a_stale_save_is_refused], postgres => Postgres, sqlite => Sqlite);
/// ```
///
/// generates `mod postgres` and `mod sqlite`, each with a `#[tokio::test]` per function that
/// awaits `super::<function>::<super::Postgres>()` (or `Sqlite`), from `async fn <function><B:
/// Backend>()` and the implementations (types) beside the invocation.
#[macro_export]
macro_rules! contract_tests {
    ($tests:tt, $($module:ident => $implementation:ident),+ $(,)?) => {
        $($crate::contract_tests!(@module $module, $implementation, $tests);)+
    };
    (@module $module:ident, $implementation:ident, [$($test:ident),* $(,)?]) => {
        mod $module {
            $(#[tokio::test]
            async fn $test() {
                super::$test::<super::$implementation>().await;
            })*
        }
    };
}
