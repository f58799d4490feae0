//! Password hashes: argon2id with the crate's defaults (19 MiB, 2 passes; OWASP's minimum),
//! computed off the async threads.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::sync::LazyLock;

/// The hash of a password nobody has: checked against when an email is unknown, so that a
/// failed sign-in takes as long whether or not the address has an account.
static NOBODY: LazyLock<String> = LazyLock::new(|| hash_now("no account has this password").expect("argon2 hashes"));

fn hash_now(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default().hash_password(password.as_bytes())?.to_string())
}

fn verify_now(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

/// The PHC string of `password` with a fresh random salt.
pub(super) async fn hash(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || hash_now(&password).map_err(|error| error.to_string()))
        .await
        .map_err(|error| error.to_string())?
}

/// Whether `password` matches `hash` (`None`: check against a hash nobody matches, for the time it takes).
pub(super) async fn verify(password: String, hash: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_now(&password, &hash),
        None => {
            let _ = verify_now(&password, &NOBODY);
            false
        }
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_hash_is_argon2id_salted_and_verifies_only_its_password() {
        let first = super::hash("correct horse".into()).await.unwrap();
        let second = super::hash("correct horse".into()).await.unwrap();
        assert!(first.starts_with("$argon2id$v=19$"), "{first}");
        assert_ne!(first, second, "each hash has its own salt");
        assert!(super::verify("correct horse".into(), Some(first.clone())).await);
        assert!(!super::verify("correct horsE".into(), Some(first)).await);
        assert!(!super::verify("correct horse".into(), None).await);
    }
}
