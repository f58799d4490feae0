use crate::application::{AccountStore, InsertError, StoreError};
use crate::domain::{Account, Email, Role};
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

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

fn unavailable(error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

fn restore(row: &PgRow) -> Result<Account, StoreError> {
    let email: String = row.try_get("email").map_err(unavailable)?;
    let corrupt =
        |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Corrupt { what: email.clone(), source };
    let role: String = row.try_get("role").map_err(|error| corrupt(error.into()))?;
    Ok(Account {
        id: row.try_get("id").map_err(|error| corrupt(error.into()))?,
        email: Email::parse(&email).map_err(|error| corrupt(error.into()))?,
        password_hash: row.try_get("password_hash").map_err(|error| corrupt(error.into()))?,
        role: Role::parse(&role).ok_or_else(|| corrupt(format!("unknown role {role:?}").into()))?,
        created_at: row.try_get("created_at").map_err(|error| corrupt(error.into()))?,
    })
}

#[async_trait]
impl AccountStore for PgAccountStore {
    async fn insert(&self, account: &Account) -> Result<(), InsertError> {
        let inserted = sqlx::query(
            "INSERT INTO accounts (id, email, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account.id)
        .bind(account.email.as_str())
        .bind(&account.password_hash)
        .bind(account.role.as_str())
        .bind(account.created_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Err(InsertError::EmailTaken),
            Err(error) => Err(unavailable(error).into()),
        }
    }

    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
        let row = sqlx::query("SELECT id, email, password_hash, role, created_at FROM accounts WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(restore).transpose()
    }
}
