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

pub use model::{
    CrawlerSettings, Invalid, LlmSettings, PROVIDERS, Settings, TopicSettings, defaults,
};

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

/// A name for this process among the instances of `service`: host, pid
/// and a random suffix (a restarted process is a new instance).
pub fn instance_name(service: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{service}-{host}-{}-{suffix}", std::process::id())
}

/// An applier that retunes each of `layouts` named in the settings (by
/// its name without `prefix`); topics the settings do not name keep their
/// tuning.
pub fn topic_applier(
    layouts: Vec<std::sync::Arc<streams::TopicLayout>>,
    prefix: &str,
) -> bus::Applier {
    let prefix = prefix.to_owned();
    Box::new(move |applied| {
        let outcome = match &applied.settings {
            None => Ok(()),
            Some(settings) => layouts
                .iter()
                .filter_map(|layout| {
                    let name = layout.config.name.strip_prefix(prefix.as_str())?;
                    Some((layout, settings.topics.get(name)?))
                })
                .try_for_each(|(layout, topic)| {
                    layout.retune(topic.tuning()).map_err(|e| e.to_string())
                }),
        };
        Box::pin(std::future::ready(outcome))
    })
}

/// The settings tables' migrations (see `catalog::migrate` on sharing the
/// migrations table).
pub async fn migrate(pool: &sqlx::PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
