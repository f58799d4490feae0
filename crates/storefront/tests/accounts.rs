//! The account store's contract, written once and run against the PostgreSQL adapter (on the
//! real server) and the SQLite one (the embedded mode): accounts round-trip, an email is unique
//! whatever its case, and sign-up and sign-in work over it.

use async_trait::async_trait;
use messaging::testing::{TestDatabase, TestSqlite};
use std::sync::Arc;
use storefront::application::{AccountStore, Accounts, AppError, InsertError};
use storefront::domain::{Email, Role};
use storefront::infrastructure::{PgAccountStore, SqliteAccountStore, migrator, sqlite_migrator};

/// A fresh, migrated database of the storefront with its account store on it.
#[async_trait]
trait Backend: Sized {
    async fn new() -> Self;
    fn accounts(&self) -> Arc<dyn AccountStore>;
}

struct Postgres(TestDatabase);

#[async_trait]
impl Backend for Postgres {
    async fn new() -> Self {
        let db = TestDatabase::empty().await;
        migrator().run(&db.pool).await.expect("migrations run");
        Self(db)
    }

    fn accounts(&self) -> Arc<dyn AccountStore> {
        Arc::new(PgAccountStore::new(self.0.pool.clone()))
    }
}

struct Sqlite(TestSqlite);

#[async_trait]
impl Backend for Sqlite {
    async fn new() -> Self {
        let test = TestSqlite::empty().await;
        test.db.migrate(&sqlite_migrator()).await.expect("migrations run");
        Self(test)
    }

    fn accounts(&self) -> Arc<dyn AccountStore> {
        Arc::new(SqliteAccountStore::new(self.0.db.clone()))
    }
}

// Each test once per database: `postgres::<test>` and `sqlite::<test>`.
messaging::contract_tests!(
    [accounts_round_trip_and_an_email_has_one_account_whatever_its_case],
    postgres => Postgres, sqlite => Sqlite,
);

async fn accounts_round_trip_and_an_email_has_one_account_whatever_its_case<B: Backend>() {
    let backend = B::new().await;
    let store = backend.accounts();
    let accounts = Accounts::new(store.clone());
    let created = accounts.sign_up("Carol@Example.com", "a long password".into()).await.unwrap();
    let loaded = store.by_email(&Email::parse("carol@example.COM").unwrap()).await.unwrap().unwrap();
    assert_eq!(loaded, created);
    assert_eq!(loaded.role, Role::Customer);
    assert!(loaded.password_hash.starts_with("$argon2id$"), "{}", loaded.password_hash);
    assert!(store.by_email(&Email::parse("dave@example.com").unwrap()).await.unwrap().is_none());

    let twin = storefront::domain::Account { id: uuid::Uuid::now_v7(), ..created.clone() };
    assert!(matches!(store.insert(&twin).await, Err(InsertError::EmailTaken)));
    assert!(matches!(
        accounts.sign_up("CAROL@example.com", "another password".into()).await,
        Err(AppError::EmailTaken)
    ));
    assert_eq!(accounts.sign_in("carol@example.com", "a long password".into()).await.unwrap().id, created.id);
    assert!(matches!(
        accounts.sign_in("carol@example.com", "wrong password".into()).await,
        Err(AppError::WrongCredentials)
    ));
}
