use crate::application::{AccountStore, InsertError, StoreError};
use crate::domain::{Account, Email, Role};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messaging::sqlite::{Database, Timestamp};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accounts in the storefront's PostgreSQL database (table `accounts`).
#[derive(Clone)]
pub struct PgAccountStore {
    pool: PgPool,
}

impl PgAccountStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// Accounts in the storefront's SQLite file, in the embedded mode (table `accounts`).
#[derive(Clone)]
pub struct SqliteAccountStore {
    db: Database,
}

impl SqliteAccountStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

fn unavailable(error: impl Into<BoxError>) -> StoreError {
    StoreError::Unavailable(error.into())
}

/// An account row as read from either database, before it is restored. The email is read
/// first: it names the account when another column does not read back.
struct AccountRow {
    email: String,
    fields: Result<(Uuid, String, String, DateTime<Utc>), sqlx::Error>,
}

impl AccountRow {
    fn restore(self) -> Result<Account, StoreError> {
        let email = self.email;
        let corrupt = |source: BoxError| StoreError::Corrupt { what: email.clone(), source };
        let (id, password_hash, role, created_at) = self.fields.map_err(|error| corrupt(error.into()))?;
        Ok(Account {
            id,
            email: Email::parse(&email).map_err(|error| corrupt(error.into()))?,
            password_hash,
            role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}").into()))?,
            created_at,
        })
    }
}

fn pg_restore(row: &PgRow) -> Result<Account, StoreError> {
    let fields = || -> Result<_, sqlx::Error> {
        Ok((row.try_get("id")?, row.try_get("password_hash")?, row.try_get("role")?, row.try_get("created_at")?))
    };
    AccountRow { email: row.try_get("email").map_err(unavailable)?, fields: fields() }.restore()
}

fn sqlite_restore(row: &SqliteRow) -> Result<Account, StoreError> {
    let fields = || -> Result<_, sqlx::Error> {
        Ok((
            row.try_get::<Hyphenated, _>("id")?.into_uuid(),
            row.try_get("password_hash")?,
            row.try_get("role")?,
            row.try_get::<Timestamp, _>("created_at")?.0,
        ))
    };
    AccountRow { email: row.try_get("email").map_err(unavailable)?, fields: fields() }.restore()
}

/// What an insert's failure means: the email's unique key refused it, or the store failed.
fn insert_error(error: sqlx::Error) -> InsertError {
    match error {
        sqlx::Error::Database(error) if error.is_unique_violation() => InsertError::EmailTaken,
        error => unavailable(error).into(),
    }
}

#[async_trait]
impl AccountStore for PgAccountStore {
    async fn insert(&self, account: &Account) -> Result<(), InsertError> {
        sqlx::query("INSERT INTO accounts (id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(account.id)
            .bind(account.email.as_str())
            .bind(&account.password_hash)
            .bind(account.role.as_str())
            .bind(account.created_at)
            .execute(&self.pool)
            .await
            .map_err(insert_error)?;
        Ok(())
    }

    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, role, created_at FROM accounts WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(pg_restore).transpose()
    }
}

#[async_trait]
impl AccountStore for SqliteAccountStore {
    async fn insert(&self, account: &Account) -> Result<(), InsertError> {
        sqlx::query("INSERT INTO accounts (id, email, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(account.id.hyphenated())
            .bind(account.email.as_str())
            .bind(&account.password_hash)
            .bind(account.role.as_str())
            .bind(Timestamp(account.created_at))
            .execute(self.db.writer())
            .await
            .map_err(insert_error)?;
        // On disk before the new account is told it exists, as a PostgreSQL commit is.
        self.db.make_durable().await.map_err(unavailable)?;
        Ok(())
    }

    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, role, created_at FROM accounts WHERE email = ?")
            .bind(email.as_str())
            .fetch_optional(self.db.reader())
            .await
            .map_err(unavailable)?;
        row.as_ref().map(sqlite_restore).transpose()
    }
}
