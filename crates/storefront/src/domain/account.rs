use chrono::{DateTime, Utc};
use std::fmt;
use uuid::Uuid;

/// Why an email address or a password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("enter an email address like name@example.com")]
    InvalidEmail,
    #[error("an email address has at most {max} characters")]
    EmailTooLong { max: usize },
    #[error("a password has at least {min} characters")]
    PasswordTooShort { min: usize },
    #[error("a password has at most {max} characters")]
    PasswordTooLong { max: usize },
}

/// An email address, trimmed and lowercased: two spellings that differ only in case are one
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(text: &str) -> Result<Self, AccountError> {
        let text = text.trim();
        if text.chars().count() > Self::MAX_LEN {
            return Err(AccountError::EmailTooLong { max: Self::MAX_LEN });
        }
        let (local, domain) = text.split_once('@').ok_or(AccountError::InvalidEmail)?;
        let well_formed = !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with(['.', '-'])
            && !domain.ends_with(['.', '-'])
            && !domain.contains("..")
            && !text.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';'));
        if !well_formed {
            return Err(AccountError::InvalidEmail);
        }
        Ok(Self(text.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password as typed at sign-up: long enough to resist guessing, short enough to hash
/// quickly. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN_LEN: usize = 10;
    pub const MAX_LEN: usize = 256;

    pub fn new(text: String) -> Result<Self, AccountError> {
        let length = text.chars().count();
        if length < Self::MIN_LEN {
            return Err(AccountError::PasswordTooShort { min: Self::MIN_LEN });
        }
        if length > Self::MAX_LEN {
            return Err(AccountError::PasswordTooLong { max: Self::MAX_LEN });
        }
        Ok(Self(text))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What an account may do: shop (customer) or run the shop (admin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Customer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Role::Customer, Role::Admin].into_iter().find(|role| role.as_str() == text)
    }
}

/// Someone who can sign in. A customer's `id` is its customer id in the services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: Uuid,
    pub email: Email,
    /// The password's argon2id hash as a PHC string; never the password.
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_is_trimmed_and_lowercased() {
        assert_eq!(Email::parse("  Alice@Example.COM ").unwrap().as_str(), "alice@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@@example.com",
            "alice@.example.com",
            "alice@example..com",
            "alice@example.com.",
            "<a>@example.com",
        ] {
            assert_eq!(Email::parse(bad), Err(AccountError::InvalidEmail), "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(Email::parse(&long), Err(AccountError::EmailTooLong { max: 254 }));
    }

    #[test]
    fn passwords_have_a_length_window_and_stay_out_of_debug_output() {
        assert_eq!(Password::new("short".into()), Err(AccountError::PasswordTooShort { min: 10 }));
        assert_eq!(Password::new("x".repeat(257)), Err(AccountError::PasswordTooLong { max: 256 }));
        let password = Password::new("correct horse battery".into()).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}
