//! Password hashing with argon2id, off the async threads.
//!
//! Parameters are the `argon2` crate's defaults (argon2id, 19 MiB, two
//! passes, one lane: OWASP's minimum recommendation), recorded in each PHC
//! string, so that raising them later leaves old hashes verifiable.

use std::sync::LazyLock;

use tokio::sync::Semaphore;

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash},
};

use crate::{Error, Result};

static HASHING: LazyLock<Semaphore> = LazyLock::new(|| {
    Semaphore::new(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
});

/// Hash a password for storage.
pub async fn hash(password: &str) -> Result<String> {
    let password = password.to_owned();
    let _turn = HASHING
        .acquire()
        .await
        .map_err(|err| Error::Hashing(err.to_string()))?;
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|err| Error::Hashing(err.to_string()))
    })
    .await
    .map_err(|err| Error::Hashing(err.to_string()))?
}

/// Whether `password` matches the stored `hash`.
pub async fn verify(password: &str, hash: &str) -> Result<bool> {
    let password = password.to_owned();
    let hash = hash.to_owned();
    let _turn = HASHING
        .acquire()
        .await
        .map_err(|err| Error::Hashing(err.to_string()))?;
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|err| Error::Hashing(err.to_string()))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|err| Error::Hashing(err.to_string()))?
}

/// A hash no password matches, computed once.
static DUMMY: LazyLock<Option<String>> = LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"no account has this password")
        .ok()
        .map(|hash| hash.to_string())
});

/// Spend the time a verification takes, for a login to an unknown email.
pub async fn verify_nothing(password: &str) {
    if let Some(dummy) = DUMMY.as_deref() {
        let _ = verify(password, dummy).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_are_salted() {
        let first = hash("correct horse battery").await.expect("hash");
        let second = hash("correct horse battery").await.expect("hash");
        assert!(first.starts_with("$argon2id$"));
        assert_ne!(first, second, "each hash has its own salt");
        assert!(
            verify("correct horse battery", &first)
                .await
                .expect("verify")
        );
        assert!(
            !verify("correct horse battery!", &first)
                .await
                .expect("verify")
        );
        assert!(verify("x", "not a phc string").await.is_err());
    }
}
