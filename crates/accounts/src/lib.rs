//! # accounts: who people are and how they prove it
//!
//! Owns the `users`, `sessions`, `api_tokens` and `idempotency_keys`
//! tables and their migrations, and the security primitives around them:
//! argon2id password hashing ([`password`]), sessions and API tokens that
//! are random and stored only as hashes ([`session`], [`api_token`]),
//! purpose-bound signed tokens for links that work without a login
//! (unsubscribe, feed URLs; [`signed`]), and idempotency keys for POSTs
//! ([`idempotency`]). The web and JSON front ends in `services/api` are
//! thin over it, so that the rules live in one place and are tested here.

pub mod api_token;
pub mod idempotency;
pub mod password;
pub mod session;
pub mod signed;
mod user;

pub use user::{
    Email, NewUser, Password, Role, TimeZoneName, User, authenticate, create_user, set_profile,
    user,
};

use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("password hashing: {0}")]
    Hashing(String),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The accounts migrations. They record themselves in the shared
/// `_sqlx_migrations` table next to other crates' migrations, so each crate
/// ignores versions it does not know.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// 32 random bytes from the operating system, URL-safe base64, after
/// `prefix`: for session, API and CSRF tokens.
pub fn random_token(prefix: &str) -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    // The OS random source failing leaves no safe way on; every token
    // generator in the process would be compromised.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// How tokens are stored: their SHA-256, never the token.
pub(crate) fn token_hash(token: &str) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}
