//! What every request handler shares.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    ops::Deref,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use accounts::{session::SessionPolicy, signed::Signer};
use axum::extract::FromRef;
use axum_extra::extract::cookie::Key;
use catalog::reading::Card;
use delivery::channel::TargetPolicy;
use events::Topics;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sqlx::PgPool;
use streams::{Inspector, StreamsClient};
use tokio_util::sync::CancellationToken;

use crate::{Config, Error, Result};

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub pool: PgPool,
    pub client: StreamsClient,
    pub topics: Topics,
    pub inspector: Inspector,
    pub signer: Signer,
    pub cookie_key: Key,
    pub sessions: SessionPolicy,
    /// Cookies only over HTTPS when the site is served over HTTPS.
    pub secure_cookies: bool,
    pub public_url: String,
    /// Keyed by [`crate::web::auth::limit_key`]: an address, or an IPv6 /64.
    pub auth_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Keyed by the lowercased email a login names.
    pub account_limiter: DefaultKeyedRateLimiter<String>,
    pub channel_policy: TargetPolicy,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub preview_days: i32,
    /// The runtime settings' versions (see `crate::runtime_settings`).
    pub settings: settings::store::Store,
    /// What the settings form starts from before the first change.
    pub settings_defaults: settings::Settings,
    /// For announcing settings changes.
    pub redis: redis::cluster::ClusterClient,
    recent: RwLock<Option<(Instant, Arc<Vec<Card>>)>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for Inner {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("topics", &self.topics)
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl FromRef<AppState> for Key {
    fn from_ref(state: &AppState) -> Self {
        state.cookie_key.clone()
    }
}

/// Papers a subscription preview scans: the recent ones, refreshed this
/// often rather than read per keystroke.
const RECENT_TTL: Duration = Duration::from_secs(60);
const RECENT_LIMIT: i64 = 5_000;

impl AppState {
    pub async fn connect(config: &Config) -> Result<Self> {
        let pool = catalog::connect(&config.database_url, 16).await?;
        catalog::migrate(&pool).await?;
        outbox::migrate(&pool).await?;
        accounts::migrate(&pool).await?;
        subscriptions::store::migrate(&pool).await?;
        delivery::migrate(&pool).await?;
        settings::migrate(&pool).await?;
        let client =
            StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone())).await?;
        Self::new(config, pool, client)
    }

    pub fn new(config: &Config, pool: PgPool, client: StreamsClient) -> Result<Self> {
        let secret = config
            .secret
            .as_deref()
            .filter(|s| s.len() >= 32)
            .ok_or_else(|| {
                Error::Config("set PAPERSTREAM_SECRET to at least 32 random characters".into())
            })?;
        let topics = Topics::new(&config.topic_prefix)?;
        let per_minute = NonZeroU32::new(config.auth_attempts_per_minute.max(1))
            .ok_or_else(|| Error::Config("auth_attempts_per_minute must be positive".into()))?;
        let per_account = NonZeroU32::new(config.login_attempts_per_account_per_minute.max(1))
            .ok_or_else(|| {
                Error::Config("login_attempts_per_account_per_minute must be positive".into())
            })?;
        let public_url = config.public_url.trim_end_matches('/').to_owned();
        let settings_defaults = settings::Settings::defaults(&topics, &config.topic_prefix);
        let redis = redis::cluster::ClusterClient::new(config.redis_urls.clone())
            .map_err(|e| Error::Config(format!("redis_urls: {e}")))?;
        Ok(Self(Arc::new(Inner {
            settings: settings::store::Store::new(pool.clone()),
            settings_defaults,
            redis,
            inspector: Inspector::new(client.clone()),
            pool,
            client,
            topics,
            signer: Signer::new(secret.as_bytes()),
            cookie_key: Key::derive_from(secret.as_bytes()),
            sessions: config.session_policy(),
            secure_cookies: public_url.starts_with("https://"),
            public_url,
            auth_limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            account_limiter: RateLimiter::keyed(Quota::per_minute(per_account)),
            channel_policy: TargetPolicy {
                allow_private: config.allow_private_targets,
            },
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_secs(config.request_timeout_s),
            preview_days: config.preview_days,
            recent: RwLock::new(None),
        })))
    }

    /// The papers announced in the last `preview_days`, newest first,
    /// cached for a minute.
    pub async fn recent_papers(&self) -> Result<Arc<Vec<Card>>> {
        if let Ok(guard) = self.recent.read()
            && let Some((at, cards)) = guard.as_ref()
            && at.elapsed() < RECENT_TTL
        {
            return Ok(cards.clone());
        }
        let cards =
            Arc::new(catalog::reading::recent(&self.pool, self.preview_days, RECENT_LIMIT).await?);
        if let Ok(mut guard) = self.recent.write() {
            *guard = Some((Instant::now(), cards.clone()));
        }
        Ok(cards)
    }

    /// Housekeeping while serving: forget expired sessions, old
    /// idempotency keys and the rate limiter's idle entries.
    pub async fn maintain(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = accounts::session::prune(&self.pool).await {
                tracing::warn!(%err, "pruning sessions failed");
            }
            if let Err(err) = accounts::idempotency::prune(&self.pool).await {
                tracing::warn!(%err, "pruning idempotency keys failed");
            }
            self.auth_limiter.retain_recent();
            self.account_limiter.retain_recent();
        }
    }
}
