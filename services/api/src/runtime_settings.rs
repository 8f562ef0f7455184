//! The runtime settings as the admin page, the JSON API and the CLI change
//! them: each change is stored as a version (crate `settings`), then
//! announced so that every running instance applies it at once; the
//! instances report what they applied, and the overview shows who has
//! converged.

use std::time::Duration;

use serde::Serialize;
use settings::{
    Settings,
    store::{Instance, Version},
};

use crate::{AppState, Result};

/// Instances heard from within this long count as running (they report at
/// least every check interval, 5 s).
pub const LIVE_WITHIN: Duration = Duration::from_secs(60);

/// What the admin page and `GET /api/v1/admin/settings` show.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// The latest version; 0 before the first change.
    pub version: i64,
    /// The latest version's settings, or the code's defaults before the
    /// first change (services then run with their own configuration).
    pub settings: Settings,
    pub instances: Vec<Instance>,
    /// Newest first.
    pub history: Vec<Version>,
}

impl Overview {
    /// Running instances that have not applied the latest version.
    pub fn behind(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.applied_version != self.version)
            .count()
    }
}

pub async fn overview(state: &AppState) -> Result<Overview> {
    let latest = state.settings.latest().await?;
    let (version, settings) = match latest {
        Some(v) => (v.version, v.settings),
        None => (0, state.settings_defaults.clone()),
    };
    Ok(Overview {
        version,
        settings,
        instances: state.settings.instances(LIVE_WITHIN).await?,
        history: state.settings.history(50).await?,
    })
}

/// Store a change, then announce it.
pub async fn change(
    state: &AppState,
    change: settings::store::Change<'_>,
) -> settings::Result<i64> {
    let version = state.settings.change(change).await?;
    announce(&state.redis, version).await;
    Ok(version)
}

/// Restore `version`'s settings as a new version, then announce it.
pub async fn rollback(
    state: &AppState,
    version: i64,
    author: &str,
    reason: &str,
) -> settings::Result<i64> {
    let restored = state.settings.rollback(version, author, reason).await?;
    announce(&state.redis, restored).await;
    Ok(restored)
}

/// Tell every instance that `version` exists. Failing to is not fatal:
/// each instance finds the version at its next periodic check.
pub async fn announce(redis: &redis::cluster::ClusterClient, version: i64) {
    let announced = async {
        let mut connection = redis.get_async_connection().await?;
        settings::bus::announce(&mut connection, version).await
    };
    if let Err(err) = announced.await {
        tracing::warn!(version, %err, "could not announce a settings change; instances will find it at their next check");
    }
}
