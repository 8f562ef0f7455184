//! # delivery: getting matched papers to people, once each
//!
//! Owns the tables of what happens after a paper matches: `channels`
//! (email, webhook, Slack, in-app; instant or daily), `matches` (a
//! person's feed), `deliveries` (at most one per person, paper and
//! channel, with its send state), `digests` and `feedback`, and their
//! migrations ([`channel`], [`ledger`]). It renders what is sent
//! ([`render`]) and sends it ([`send`]): email over SMTP with
//! List-Unsubscribe (RFC 8058), webhooks signed the Standard Webhooks way,
//! Slack incoming webhooks. Every sender tells a transient failure (try
//! again) from a permanent one (the target said no for good), which is what
//! the notifier's retries, circuit breakers and dead letters turn on.

pub mod channel;
pub mod ledger;
pub mod render;
pub mod send;

use sqlx::PgPool;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::Error),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("unexpected data: {0}")]
    Corrupt(String),
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

/// The delivery migrations (they need the accounts' `users` table).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
