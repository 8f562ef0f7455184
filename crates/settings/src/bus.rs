//! How a change reaches every running instance: a Redis Pub/Sub message
//! names the new version, and each instance's [`Watcher`] loads it from
//! Postgres, applies it and reports it. Pub/Sub delivers at most once and
//! drops messages for a subscriber that is disconnected, so the watcher
//! also checks the latest version on a timer; a missed message delays a
//! change by at most that interval, never loses it.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, future::BoxFuture};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{Result, Settings, store::Store};

/// Puts a version into effect in one component (retune the topics, rebuild
/// the LLM chain, ...). An error is logged and counted; the version still
/// counts as applied by the others.
pub type Applier =
    Box<dyn Fn(Arc<Applied>) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The Pub/Sub channel (each service's Redis user may use only this one).
pub const CHANNEL: &str = "paperstream.settings";

/// Tell every watcher that `version` exists. In a Redis Cluster a
/// `PUBLISH` reaches subscribers on every node.
pub async fn announce(
    connection: &mut impl redis::aio::ConnectionLike,
    version: i64,
) -> redis::RedisResult<()> {
    redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(version)
        .query_async::<i64>(connection)
        .await
        .map(drop)
}

/// The settings an instance runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub version: i64,
    /// `None` (version 0) until the first change: each service runs with
    /// its own configuration until then.
    pub settings: Option<Settings>,
}

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// e.g. `summarizer`.
    pub service: String,
    /// Unique per process, e.g. host and pid.
    pub instance: String,
    /// Seed nodes; the watcher subscribes on one of them.
    pub redis_urls: Vec<String>,
    /// How often the latest version is checked without a message.
    pub check_interval: Duration,
}

impl WatcherConfig {
    pub fn new(service: &str, instance: &str, redis_urls: Vec<String>) -> Self {
        Self {
            service: service.to_owned(),
            instance: instance.to_owned(),
            redis_urls,
            check_interval: Duration::from_secs(5),
        }
    }
}

/// Follows the latest settings for one instance.
pub struct Watcher {
    store: Store,
    config: WatcherConfig,
    applied: watch::Sender<Arc<Applied>>,
    appliers: Vec<Applier>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("config", &self.config)
            .field("version", &self.applied.borrow().version)
            .field("appliers", &self.appliers.len())
            .finish()
    }
}

impl Watcher {
    /// Load the current settings, apply them with `appliers` and report
    /// them, before the service starts its work. Components that read
    /// settings when they use them follow the receiver instead.
    pub async fn start(
        store: Store,
        config: WatcherConfig,
        appliers: Vec<Applier>,
    ) -> Result<(Self, watch::Receiver<Arc<Applied>>)> {
        let (applied, receiver) = watch::channel(Arc::new(Applied {
            version: 0,
            settings: None,
        }));
        let watcher = Self {
            store,
            config,
            applied,
            appliers,
        };
        watcher.check().await?;
        Ok((watcher, receiver))
    }

    /// Follow changes until `shutdown`, then leave the convergence view.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let (nudge_tx, mut nudges) = mpsc::channel::<()>(16);
        let listening = tokio::spawn(listen(
            self.config.redis_urls.clone(),
            nudge_tx,
            shutdown.clone(),
        ));
        let mut tick = tokio::time::interval(self.config.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = nudges.recv() => {}
                _ = tick.tick() => {}
            }
            if let Err(err) = self.check().await {
                tracing::warn!(%err, "settings check failed; trying again");
            }
        }
        listening.abort();
        self.store.forget(&self.config.instance).await
    }

    async fn check(&self) -> Result<()> {
        let applied = self.applied.borrow().version;
        let latest = self.store.latest_version().await?;
        if latest != applied {
            let next = Arc::new(current(&self.store).await?);
            tracing::info!(from = applied, to = next.version, "applying settings");
            for apply in &self.appliers {
                if let Err(err) = apply(next.clone()).await {
                    tracing::error!(version = next.version, %err, "could not apply settings");
                    metrics::counter!("settings_apply_failures_total").increment(1);
                }
            }
            metrics::gauge!("settings_applied_version").set(next.version as f64);
            self.applied.send_replace(next);
        }
        let version = self.applied.borrow().version;
        self.store
            .report(&self.config.instance, &self.config.service, version)
            .await
    }
}

async fn current(store: &Store) -> Result<Applied> {
    Ok(match store.latest().await? {
        Some(v) => Applied {
            version: v.version,
            settings: Some(v.settings),
        },
        None => Applied {
            version: 0,
            settings: None,
        },
    })
}

/// Subscribe on the first node that answers and nudge the watcher for every
/// message; on a lost connection, try again (and the next node) after a
/// pause. The message body is not trusted: the watcher reads Postgres.
async fn listen(urls: Vec<String>, nudge: mpsc::Sender<()>, shutdown: CancellationToken) {
    let mut next = 0;
    while !shutdown.is_cancelled() {
        let Some(url) = urls.get(next % urls.len().max(1)) else {
            return;
        };
        next += 1;
        match subscribe(url).await {
            Ok(pubsub) => {
                metrics::gauge!("settings_subscribed").set(1.0);
                // A message may have been published while we were away.
                let _ = nudge.try_send(());
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        message = messages.next() => match message {
                            Some(_) => { let _ = nudge.try_send(()); }
                            None => break,
                        },
                    }
                }
                metrics::gauge!("settings_subscribed").set(0.0);
                tracing::warn!("settings subscription lost; resubscribing");
            }
            Err(err) => tracing::warn!(%err, "cannot subscribe to settings changes"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn subscribe(url: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub)
}
