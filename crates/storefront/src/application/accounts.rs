//! Signing up, signing in, and the operator's account.

use super::passwords;
use crate::domain::{Account, AccountError, Email, Password, Role};
use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The storefront's account storage (a port: PostgreSQL, or a SQLite file in the embedded mode).
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Stores a new account; refuses an email that already has one.
    async fn insert(&self, account: &Account) -> Result<(), InsertError>;
    /// The account of an email, if any.
    async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    #[error("this email address already has an account")]
    EmailTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store could not be used (unreachable), or holds a row that does not read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the account database cannot be reached")]
    Unavailable(#[source] BoxError),
    #[error("stored account {what} cannot be read back")]
    Corrupt {
        what: String,
        #[source]
        source: BoxError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Invalid(#[from] AccountError),
    #[error("this email address already has an account: sign in instead")]
    EmailTaken,
    /// The same answer whether the email is unknown or the password wrong.
    #[error("the email address or the password is wrong")]
    WrongCredentials,
    #[error("cannot hash the password: {0}")]
    Hashing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What happened to the operator's account at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminBootstrap {
    Created,
    /// An account with the email exists: it is left as it is (its password is not reset).
    Exists {
        role: Role,
    },
}

pub struct Accounts {
    store: Arc<dyn AccountStore>,
}

impl Accounts {
    pub fn new(store: Arc<dyn AccountStore>) -> Self {
        Self { store }
    }

    /// A new customer account, signed in.
    pub async fn sign_up(&self, email: &str, password: String) -> Result<Account, AppError> {
        let email = Email::parse(email)?;
        let password = Password::new(password)?;
        let account = self.new_account(email, &password, Role::Customer).await?;
        match self.store.insert(&account).await {
            Ok(()) => {
                tracing::info!(account = %account.id, "customer signed up");
                Ok(account)
            }
            Err(InsertError::EmailTaken) => Err(AppError::EmailTaken),
            Err(InsertError::Store(error)) => Err(error.into()),
        }
    }

    /// The account whose email and password these are. An unknown email costs the same hash
    /// check as a wrong password and gets the same answer.
    pub async fn sign_in(&self, email: &str, password: String) -> Result<Account, AppError> {
        let account = match Email::parse(email) {
            Ok(email) => self.store.by_email(&email).await?,
            Err(_) => None,
        };
        let hash = account.as_ref().map(|account| account.password_hash.clone());
        let matches = passwords::verify(password, hash).await;
        match account {
            Some(account) if matches => Ok(account),
            Some(_) | None => Err(AppError::WrongCredentials),
        }
    }

    /// Creates the operator's account unless its email has one already.
    pub async fn ensure_admin(&self, email: &str, password: String) -> Result<AdminBootstrap, AppError> {
        let email = Email::parse(email)?;
        if let Some(existing) = self.store.by_email(&email).await? {
            return Ok(AdminBootstrap::Exists { role: existing.role });
        }
        let password = Password::new(password)?;
        let account = self.new_account(email, &password, Role::Admin).await?;
        match self.store.insert(&account).await {
            Ok(()) => Ok(AdminBootstrap::Created),
            // Another instance created it at the same moment.
            Err(InsertError::EmailTaken) => Ok(AdminBootstrap::Exists { role: Role::Admin }),
            Err(InsertError::Store(error)) => Err(error.into()),
        }
    }

    async fn new_account(&self, email: Email, password: &Password, role: Role) -> Result<Account, AppError> {
        let password_hash = passwords::hash(password.expose().to_owned()).await.map_err(AppError::Hashing)?;
        Ok(Account { id: Uuid::now_v7(), email, password_hash, role, created_at: now() })
    }
}

/// Now, to the microsecond the database keeps.
fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct MemoryStore(Mutex<Vec<Account>>);

    #[async_trait]
    impl AccountStore for MemoryStore {
        async fn insert(&self, account: &Account) -> Result<(), InsertError> {
            let mut accounts = self.0.lock().unwrap();
            if accounts.iter().any(|known| known.email == account.email) {
                return Err(InsertError::EmailTaken);
            }
            accounts.push(account.clone());
            Ok(())
        }

        async fn by_email(&self, email: &Email) -> Result<Option<Account>, StoreError> {
            Ok(self.0.lock().unwrap().iter().find(|known| known.email == *email).cloned())
        }
    }

    fn accounts() -> Accounts {
        Accounts::new(Arc::new(MemoryStore::default()))
    }

    #[tokio::test]
    async fn a_customer_signs_up_then_in_whatever_the_case_of_the_email() {
        let accounts = accounts();
        let created = accounts.sign_up("Alice@Example.com", "a long password".into()).await.unwrap();
        assert_eq!((created.role, created.email.as_str()), (Role::Customer, "alice@example.com"));
        assert_eq!(created.id.get_version_num(), 7);
        let signed_in = accounts.sign_in("ALICE@example.com", "a long password".into()).await.unwrap();
        assert_eq!(signed_in.id, created.id);
        let again = accounts.sign_up("alice@example.COM", "another password".into()).await;
        assert!(matches!(again, Err(AppError::EmailTaken)), "{again:?}");
    }

    #[tokio::test]
    async fn a_wrong_password_and_an_unknown_email_get_the_same_answer() {
        let accounts = accounts();
        accounts.sign_up("bob@example.com", "a long password".into()).await.unwrap();
        let wrong = accounts.sign_in("bob@example.com", "not his password".into()).await.unwrap_err();
        let unknown = accounts.sign_in("nobody@example.com", "a long password".into()).await.unwrap_err();
        let malformed = accounts.sign_in("nobody", "a long password".into()).await.unwrap_err();
        assert_eq!(wrong.to_string(), unknown.to_string());
        assert_eq!(wrong.to_string(), malformed.to_string());
    }

    #[tokio::test]
    async fn the_admin_account_is_created_once_and_never_reset() {
        let accounts = accounts();
        assert_eq!(
            accounts.ensure_admin("ops@shop.local", "first password".into()).await.unwrap(),
            AdminBootstrap::Created
        );
        let second = accounts.ensure_admin("ops@shop.local", "second password".into()).await.unwrap();
        assert_eq!(second, AdminBootstrap::Exists { role: Role::Admin });
        assert_eq!(accounts.sign_in("ops@shop.local", "first password".into()).await.unwrap().role, Role::Admin);
    }
}
