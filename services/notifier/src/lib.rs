//! # notifier: from summarized papers to people, once each
//!
//! Runs the stages after summarizing, each a consumer group on its own
//! topic so that each scales and fails on its own:
//!
//! * [`matcher`]: `paper.summarized` → `notification.requested` (keyed by
//!   person), matching each paper against every active subscription with
//!   an index kept current from the subscriptions' change feed;
//! * [`router`]: `notification.requested` → the person's feed, the in-app
//!   inbox, queued deliveries, and `delivery.{email,webhook,slack}` for
//!   instant channels (through the outbox, in the same transaction);
//! * [`sender`]: one consumer per channel kind, each behind a circuit
//!   breaker; every (person, paper, channel) is sent at most once by the
//!   ledger, and a send interrupted by a crash is repeated with the same
//!   identity so receivers can drop it;
//! * [`digest`]: daily digests at each person's local hour.
//!
//! It also relays the outbox, as every service that writes to it does.

pub mod config;
pub mod digest;
pub mod matcher;
pub mod router;
pub mod sender;

use std::{sync::Arc, time::Duration};

use accounts::signed::Signer;
use delivery::{
    channel::Kind,
    send::{HttpSender, Mailer},
};
use events::Topics;
use resilience::Breaker;
use sqlx::PgPool;
use streams::{Consumer, ConsumerConfig, Message, Producer, ProducerConfig, StreamsClient};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The purpose unsubscribe links are signed for; the API verifies them.
pub const UNSUBSCRIBE: &str = "unsubscribe";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::Error),
    #[error("subscriptions: {0}")]
    Subscriptions(#[from] subscriptions::store::Error),
    #[error("delivery: {0}")]
    Delivery(#[from] delivery::Error),
    #[error("accounts: {0}")]
    Accounts(#[from] accounts::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("settings: {0}")]
    Settings(#[from] settings::Error),
    #[error("streams: {0}")]
    Streams(#[from] streams::Error),
    #[error("configuration: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The notifier's connections, ready to run.
#[derive(Debug)]
pub struct Service {
    config: Config,
    pool: PgPool,
    client: StreamsClient,
    topics: Topics,
    senders: sender::Senders,
}

impl Service {
    pub async fn connect(config: &Config) -> Result<Self> {
        let secret = config
            .secret
            .as_deref()
            .filter(|s| s.len() >= 32)
            .ok_or_else(|| {
                Error::Config("set PAPERSTREAM_SECRET to at least 32 random characters".into())
            })?;
        let pool = catalog::connect(&config.database_url, 16).await?;
        catalog::migrate(&pool).await?;
        outbox::migrate(&pool).await?;
        accounts::migrate(&pool).await?;
        subscriptions::store::migrate(&pool).await?;
        delivery::migrate(&pool).await?;
        settings::migrate(&pool).await?;
        let client =
            StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone())).await?;
        let topics = Topics::new(&config.topic_prefix)?;
        let public_url = config.public_url.trim_end_matches('/').to_owned();
        let domain = url::Url::parse(&public_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "paperstream.localhost".into());
        let senders = sender::Senders {
            pool: pool.clone(),
            signer: Signer::new(secret.as_bytes()),
            public_url,
            domain,
            mailer: Mailer::new(&config.smtp).map_err(Error::Config)?,
            http: HttpSender::new(
                Duration::from_secs(config.http_timeout_s),
                delivery::channel::TargetPolicy {
                    allow_private: config.allow_private_targets,
                },
            )
            .map_err(Error::Config)?,
        };
        Ok(Self {
            config: config.clone(),
            pool,
            client,
            topics,
            senders,
        })
    }

    /// Readiness: Postgres and the Redis Cluster answer. (A mail server
    /// outage does not make the notifier unready: its breaker holds mail
    /// back, and everything else goes on.)
    pub fn checks(&self) -> Vec<(&'static str, ops::Check)> {
        vec![
            (
                "postgres",
                ops::check_with(self.pool.clone(), catalog::ping),
            ),
            (
                "redis",
                ops::check_with(self.client.clone(), StreamsClient::ping),
            ),
        ]
    }

    /// Run the configured roles and the outbox relay until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let config = &self.config;
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        let relay = outbox::Relay::new(
            self.pool.clone(),
            self.client.clone(),
            self.topics.notifier_layouts(),
            outbox::RelayConfig::default(),
        );
        tasks.spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await.map_err(Error::from) }
        });
        let (watcher, _) = settings::bus::Watcher::start(
            settings::store::Store::new(self.pool.clone()),
            settings::bus::WatcherConfig::new(
                "notifier",
                &settings::instance_name("notifier"),
                config.redis_urls.clone(),
            ),
            vec![settings::topic_applier(
                [self.topics.summarized.layout().clone()]
                    .into_iter()
                    .chain(self.topics.notifier_layouts())
                    .collect(),
                &config.topic_prefix,
            )],
        )
        .await?;
        tasks.spawn({
            let shutdown = shutdown.clone();
            async move { watcher.run(shutdown).await.map_err(Error::from) }
        });
        let consumer_config = |group: &str| {
            let mut c = ConsumerConfig::new(group);
            c.batch_size = events::batch_size(events::PaperSummarized::TOPIC);
            c.max_concurrent_batches = config.max_concurrent_batches;
            c
        };

        if config.runs("matcher") {
            let (index, cursor) = matcher::SharedIndex::load(&self.pool).await?;
            tasks.spawn(follow(
                self.pool.clone(),
                index.clone(),
                cursor,
                Duration::from_millis(config.change_poll_ms),
                shutdown.clone(),
            ));
            let matching = Arc::new(matcher::Match {
                pool: self.pool.clone(),
                index,
                producer: Producer::new(
                    self.client.clone(),
                    ProducerConfig {
                        idempotency_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
                        ..ProducerConfig::default()
                    },
                ),
                notifications: self.topics.notifications.clone(),
                shutdown: shutdown.clone(),
            });
            let consumer = Consumer::new(
                self.client.clone(),
                &self.topics.summarized,
                consumer_config("matcher"),
                streams::per_message(move |m: Message<events::PaperSummarized>| {
                    let matching = matching.clone();
                    async move { matching.handle(m).await }
                }),
            );
            let shutdown = shutdown.clone();
            tasks.spawn(async move { consumer.run(shutdown).await.map_err(Error::from) });
        }
        if config.runs("router") {
            let route = Arc::new(router::Route {
                pool: self.pool.clone(),
                topics: self.topics.clone(),
            });
            let consumer = Consumer::new(
                self.client.clone(),
                &self.topics.notifications,
                consumer_config("router"),
                streams::per_message(move |m: Message<events::NotificationRequested>| {
                    let route = route.clone();
                    async move { route.handle(m).await }
                }),
            );
            let shutdown = shutdown.clone();
            tasks.spawn(async move { consumer.run(shutdown).await.map_err(Error::from) });
        }
        for kind in [Kind::Email, Kind::Webhook, Kind::Slack] {
            if !config.runs(kind.as_str()) {
                continue;
            }
            // Series that may stay at zero exist from the start, for rates.
            metrics::counter!("deliveries_resumed_total", "channel" => kind.as_str()).increment(0);
            metrics::counter!("digests_opened_total", "channel" => kind.as_str()).increment(0);
            let Some(topic) = router::topic_for(&self.topics, kind) else {
                continue;
            };
            let send = Arc::new(sender::Send {
                kind,
                senders: self.senders.clone(),
                breaker: Breaker::new(
                    kind.as_str(),
                    config.breaker_failures,
                    config.breaker_open(),
                ),
                shutdown: shutdown.clone(),
            });
            let consumer = Consumer::new(
                self.client.clone(),
                topic,
                consumer_config(&format!("sender-{}", kind.as_str())),
                streams::per_message(move |m: Message<events::DeliveryRequested>| {
                    let send = send.clone();
                    async move { send.handle(m).await }
                }),
            );
            let shutdown = shutdown.clone();
            tasks.spawn(async move { consumer.run(shutdown).await.map_err(Error::from) });
        }
        if config.runs("digests") {
            tasks.spawn({
                let pool = self.pool.clone();
                let topics = self.topics.clone();
                let interval = Duration::from_secs(config.digest_interval_s.max(1));
                let shutdown = shutdown.clone();
                async move {
                    digest::run(pool, topics, interval, shutdown).await;
                    Ok(())
                }
            });
        }
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let failure = match joined {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => err.to_string(),
                Err(err) => format!("a task panicked: {err}"),
            };
            tracing::error!(error = %failure, "notifier task stopped; shutting down");
            shutdown.cancel();
            first_error.get_or_insert(failure);
        }
        match first_error {
            Some(err) => Err(Error::Config(err)),
            None => Ok(()),
        }
    }
}

async fn follow(
    pool: PgPool,
    index: matcher::SharedIndex,
    cursor: subscriptions::store::Cursor,
    poll: Duration,
    shutdown: CancellationToken,
) -> Result<()> {
    matcher::follow_changes(pool, index, cursor, poll, shutdown).await;
    Ok(())
}

/// Connect and run until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<()> {
    Service::connect(config).await?.run(shutdown).await
}
