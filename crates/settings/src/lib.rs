//! # settings: runtime settings, changed without a restart
//!
//! Some settings must change while the system runs: a topic's capacity,
//! attempts, backoff and batch size; the LLM chain's order and breaker
//! thresholds; the crawler's schedule. This crate owns their model and
//! validation ([`Settings`]), their versioned history in Postgres
//! ([`store::Store`]: author, reason, rollback) and how a change reaches
//! every running instance ([`bus`]: a Redis Pub/Sub nudge, a periodic check
//! for the nudges Pub/Sub drops, and a report of the version each instance
//! applied, which the admin page shows as convergence).
//!
//! A change is always a whole, validated document: an instance never runs
//! a mix of two versions, and an invalid change is refused with every
//! reason before anyone sees it.

pub mod bus;
mod model;
pub mod store;

pub use model::{CrawlerSettings, Invalid, LlmSettings, PROVIDERS, Settings, TopicSettings};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid settings: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Invalid>),
    #[error(
        "version {latest} is the latest, not {expected}: someone changed the settings meanwhile"
    )]
    Conflict { expected: i64, latest: i64 },
    #[error("no settings version {0}")]
    NoSuchVersion(i64),
    #[error("a change needs an author")]
    NoAuthor,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The settings tables' migrations (see `catalog::migrate` on sharing the
/// migrations table).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
