//! Versions in Postgres: each change a new, complete, validated version,
//! with its author and reason; rollback is a change too, so history only
//! grows.

use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use time::OffsetDateTime;

use crate::{Error, Result, Settings};

/// One stored version.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub version: i64,
    pub settings: Settings,
    pub author: String,
    pub reason: String,
    /// The earlier version this one restores, for a rollback.
    pub restores: Option<i64>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What one running instance last applied.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub instance: String,
    pub service: String,
    pub applied_version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub applied_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub seen_at: OffsetDateTime,
}

/// A change to make.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub settings: &'a Settings,
    pub author: &'a str,
    pub reason: &'a str,
    /// Refuse the change unless this is still the latest version, so two
    /// people editing at once cannot overwrite each other unknowingly.
    pub expected_version: Option<i64>,
}

/// Serialises changes: versions are numbered without gaps.
const CHANGE_LOCK: i64 = 0x7365_7474_696e_6773;

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The newest version number; 0 before the first change.
    pub async fn latest_version(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM settings_versions")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The newest version, or `None` before the first change (the code's
    /// defaults apply then).
    pub async fn latest(&self) -> Result<Option<Version>> {
        let row = sqlx::query(
            "SELECT version, settings, author, reason, restores, created_at
             FROM settings_versions ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(version_from_row).transpose()
    }

    pub async fn version(&self, version: i64) -> Result<Option<Version>> {
        let row = sqlx::query(
            "SELECT version, settings, author, reason, restores, created_at
             FROM settings_versions WHERE version = $1",
        )
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(version_from_row).transpose()
    }

    /// Newest first.
    pub async fn history(&self, limit: i64) -> Result<Vec<Version>> {
        sqlx::query(
            "SELECT version, settings, author, reason, restores, created_at
             FROM settings_versions ORDER BY version DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(version_from_row)
        .collect()
    }

    /// Validate and store a change; returns its version. Announce it with
    /// [`crate::bus::announce`] afterwards.
    pub async fn change(&self, change: Change<'_>) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let version = insert(&mut tx, change, None).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// [`Store::change`] inside the caller's transaction (with an
    /// idempotency record, say); the version exists once it commits.
    pub async fn change_in(&self, tx: &mut PgConnection, change: Change<'_>) -> Result<i64> {
        insert(tx, change, None).await
    }

    /// Make version `version`'s settings current again, as a new version.
    /// An empty `reason` is recorded as "rollback to version N".
    pub async fn rollback(&self, version: i64, author: &str, reason: &str) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        let restored = self.rollback_in(&mut tx, version, author, reason).await?;
        tx.commit().await?;
        Ok(restored)
    }

    /// [`Store::rollback`] inside the caller's transaction.
    pub async fn rollback_in(
        &self,
        tx: &mut PgConnection,
        version: i64,
        author: &str,
        reason: &str,
    ) -> Result<i64> {
        let old = self
            .version(version)
            .await?
            .ok_or(Error::NoSuchVersion(version))?;
        let default_reason;
        let reason = match reason.trim() {
            "" => {
                default_reason = format!("rollback to version {version}");
                &default_reason
            }
            given => given,
        };
        insert(
            tx,
            Change {
                settings: &old.settings,
                author,
                reason,
                expected_version: None,
            },
            Some(version),
        )
        .await
    }

    /// Record that `instance` of `service` runs with `version`.
    pub async fn report(&self, instance: &str, service: &str, version: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO settings_instances (instance, service, applied_version, applied_at, seen_at)
             VALUES ($1, $2, $3, now(), now())
             ON CONFLICT (instance) DO UPDATE SET
               service = EXCLUDED.service,
               applied_at = CASE WHEN settings_instances.applied_version = EXCLUDED.applied_version
                                 THEN settings_instances.applied_at ELSE now() END,
               applied_version = EXCLUDED.applied_version,
               seen_at = now()",
        )
        .bind(instance)
        .bind(service)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// An instance that stops cleanly leaves the convergence view.
    pub async fn forget(&self, instance: &str) -> Result<()> {
        sqlx::query("DELETE FROM settings_instances WHERE instance = $1")
            .bind(instance)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Instances heard from within `within`, by service and name.
    pub async fn instances(&self, within: std::time::Duration) -> Result<Vec<Instance>> {
        sqlx::query(
            "SELECT instance, service, applied_version, applied_at, seen_at
             FROM settings_instances
             WHERE seen_at > now() - make_interval(secs => $1)
             ORDER BY service, instance",
        )
        .bind(within.as_secs_f64())
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok(Instance {
                instance: row.try_get("instance")?,
                service: row.try_get("service")?,
                applied_version: row.try_get("applied_version")?,
                applied_at: row.try_get("applied_at")?,
                seen_at: row.try_get("seen_at")?,
            })
        })
        .collect()
    }
}

async fn insert(tx: &mut PgConnection, change: Change<'_>, restores: Option<i64>) -> Result<i64> {
    let problems = change.settings.problems();
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    if change.author.trim().is_empty() {
        return Err(Error::NoAuthor);
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHANGE_LOCK)
        .execute(&mut *tx)
        .await?;
    let latest: i64 = sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM settings_versions")
        .fetch_one(&mut *tx)
        .await?;
    if let Some(expected) = change.expected_version
        && expected != latest
    {
        return Err(Error::Conflict { expected, latest });
    }
    let version = latest + 1;
    sqlx::query(
        "INSERT INTO settings_versions (version, settings, author, reason, restores)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(version)
    .bind(sqlx::types::Json(change.settings))
    .bind(change.author)
    .bind(change.reason)
    .bind(restores)
    .execute(&mut *tx)
    .await?;
    tracing::info!(
        version,
        author = change.author,
        ?restores,
        "settings changed"
    );
    Ok(version)
}

fn version_from_row(row: sqlx::postgres::PgRow) -> Result<Version> {
    let sqlx::types::Json(settings) = row.try_get("settings")?;
    Ok(Version {
        version: row.try_get("version")?,
        settings,
        author: row.try_get("author")?,
        reason: row.try_get("reason")?,
        restores: row.try_get("restores")?,
        created_at: row.try_get("created_at")?,
    })
}
