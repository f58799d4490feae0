//! The account store on the real PostgreSQL: accounts round-trip, an email is unique whatever
//! its case, and sign-up and sign-in work over it.

use std::sync::Arc;
use storefront::application::{AccountStore, Accounts, AppError, InsertError};
use storefront::domain::{Email, Role};
use storefront::infrastructure::{PgAccountStore, migrator};

async fn store() -> (messaging::testing::TestDatabase, PgAccountStore) {
    let db = messaging::testing::TestDatabase::empty().await;
    migrator().run(&db.pool).await.expect("migrations run");
    let store = PgAccountStore::new(db.pool.clone());
    (db, store)
}

#[tokio::test]
async fn accounts_round_trip_and_an_email_has_one_account_whatever_its_case() {
    let (_db, store) = store().await;
    let accounts = Accounts::new(Arc::new(store.clone()));
    let created = accounts.sign_up("Carol@Example.com", "a long password".into()).await.unwrap();
    let loaded = store.by_email(&Email::parse("carol@example.COM").unwrap()).await.unwrap().unwrap();
    assert_eq!(loaded, created);
    assert_eq!(loaded.role, Role::Customer);
    assert!(loaded.password_hash.starts_with("$argon2id$"), "{}", loaded.password_hash);

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
