//! # summarizer: one summary per paper version
//!
//! Consumes `paper.ingested` in the `summarizer` group, summarizes each new
//! paper version through the LLM chain (Ollama, then OpenAI within its
//! budget, then the offline extractive summary), stores the summary and
//! announces it on `paper.summarized` in one transaction (through the
//! outbox).
//!
//! Redelivery is harmless: a version that already has a summary for the
//! current prompt is acknowledged without calling a model, and the summary
//! and its event are each written once (primary key, outbox message id).

pub mod config;

use std::{
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use events::{PaperIngested, PaperSummarized};
use llm::{
    PROMPT_VERSION, SummaryRequest,
    breaker::{Guard, Guarded},
    budget::SpendCap,
    chain::{Chain, Provider},
    extractive::Extractive,
    ollama::Ollama,
    openai::{OpenAi, OpenAiConfig},
};
use sqlx::PgPool;
use streams::{Consumer, ConsumerConfig, Failure, Message, StreamsClient};
use tokio_util::sync::CancellationToken;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("streams: {0}")]
    Streams(#[from] streams::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("llm: {0}")]
    Llm(#[from] llm::LlmError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("settings: {0}")]
    Settings(#[from] settings::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Build the fallback chain the configuration asks for.
pub async fn chain(config: &config::LlmSettings, redis_urls: &[String]) -> Result<Chain> {
    let guard = |timeout_s: u64, max_in_flight: usize| Guard {
        timeout: Duration::from_secs(timeout_s),
        max_in_flight,
        queue_wait: Duration::from_secs(timeout_s),
        failures_to_open: config.breaker_failures,
        open_for: config.breaker_open(),
    };
    let mut providers = Vec::new();
    for name in &config.order {
        match name.as_str() {
            "ollama" => providers.push(Provider::Ollama(Guarded::new(
                Ollama::new(
                    &config.ollama_url,
                    &config.ollama_model,
                    Duration::from_secs(config.ollama_timeout_s),
                )?,
                guard(config.ollama_timeout_s, config.ollama_max_in_flight),
            ))),
            "openai" => {
                let Some(api_key) = config.openai_api_key.clone().filter(|key| !key.is_empty())
                else {
                    tracing::info!("no OpenAI API key configured; the chain goes without OpenAI");
                    continue;
                };
                let openai = OpenAi::new(OpenAiConfig {
                    base_url: config.openai_url.clone(),
                    api_key,
                    model: config.openai_model.clone(),
                    max_output_tokens: config.openai_max_output_tokens,
                    input_price_per_1k_micro_usd: config.openai_input_price_per_1k_micro_usd,
                    output_price_per_1k_micro_usd: config.openai_output_price_per_1k_micro_usd,
                    timeout: Duration::from_secs(config.openai_timeout_s),
                })?;
                let connection = redis::cluster::ClusterClient::new(redis_urls.to_vec())?
                    .get_async_connection()
                    .await?;
                providers.push(Provider::OpenAi(
                    Guarded::new(openai, guard(config.openai_timeout_s, 16)),
                    SpendCap::new(connection, "openai", config.openai_daily_tokens),
                ));
            }
            "extractive" => providers.push(Provider::Extractive(Extractive::default())),
            other => return Err(Error::Config(format!("unknown LLM provider {other:?}"))),
        }
    }
    if providers.is_empty() {
        return Err(Error::Config("the LLM chain has no providers".into()));
    }
    Ok(Chain::new(providers))
}

/// Summarize one paper version, idempotently.
#[derive(Debug, Clone)]
pub struct Summarize {
    pool: PgPool,
    /// Replaced whole when the runtime settings change the chain.
    chain: Arc<RwLock<Arc<Chain>>>,
    topic: streams::Topic<PaperSummarized>,
}

impl Summarize {
    pub fn new(pool: PgPool, chain: Chain, topic: streams::Topic<PaperSummarized>) -> Self {
        metrics::counter!("summarizer_skipped_total", "reason" => "already_summarized")
            .increment(0);
        Self {
            pool,
            chain: Arc::new(RwLock::new(Arc::new(chain))),
            topic,
        }
    }

    /// The chain later messages use; calls in flight finish on the old one.
    pub fn replace_chain(&self, chain: Chain) {
        *self.chain.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(chain);
    }

    fn current_chain(&self) -> Arc<Chain> {
        self.chain
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub async fn handle(&self, message: Message<PaperIngested>) -> Result<(), Failure> {
        let event = message.payload;
        let version = i32::try_from(event.version)
            .map_err(|_| Failure::Reject(format!("bad version {}", event.version)))?;
        let retry =
            |what: &str, err: &dyn std::fmt::Display| Failure::Retry(format!("{what}: {err}"));
        if catalog::has_summary(&self.pool, &event.arxiv_id, version, PROMPT_VERSION as i32)
            .await
            .map_err(|e| retry("check", &e))?
        {
            metrics::counter!("summarizer_skipped_total", "reason" => "already_summarized")
                .increment(1);
            return Ok(());
        }
        let Some(paper) = catalog::paper(&self.pool, &event.arxiv_id, version)
            .await
            .map_err(|e| retry("read paper", &e))?
        else {
            return Err(Failure::Reject(format!(
                "{}v{} is not in the catalog",
                event.arxiv_id, event.version
            )));
        };
        let request = SummaryRequest {
            arxiv_id: paper.arxiv_id.clone(),
            version: event.version,
            title: paper.title.clone(),
            abstract_text: paper.abstract_text.clone(),
        };
        let summary = self
            .current_chain()
            .summarize(&request)
            .await
            .map_err(|e| retry("summarize", &e))?;
        let announced = PaperSummarized {
            arxiv_id: paper.arxiv_id.clone(),
            version: event.version,
            prompt_version: PROMPT_VERSION,
            provider: summary.provider.clone(),
            extractive: summary.extractive,
        };
        let store = async {
            let mut tx = self.pool.begin().await.map_err(catalog::Error::from)?;
            let stored = catalog::store_summary(
                &mut tx,
                &catalog::NewSummary {
                    arxiv_id: &paper.arxiv_id,
                    version,
                    prompt_version: PROMPT_VERSION as i32,
                    provider: &summary.provider,
                    model: &summary.model,
                    text: &summary.text,
                    extractive: summary.extractive,
                    input_tokens: summary.input_tokens as i32,
                    output_tokens: summary.output_tokens as i32,
                    cost_micro_usd: summary.cost_micro_usd as i64,
                },
            )
            .await?;
            if stored {
                outbox::enqueue(
                    &mut tx,
                    &self.topic,
                    &paper.arxiv_id,
                    &announced.message_id(),
                    &announced,
                )
                .await?;
            }
            tx.commit().await.map_err(catalog::Error::from)?;
            Ok::<bool, Error>(stored)
        };
        let stored = store.await.map_err(|e| retry("store", &e))?;
        metrics::counter!(
            "summarizer_summaries_total",
            "provider" => summary.provider.clone(),
            "stored" => if stored { "new" } else { "repeat" }
        )
        .increment(1);
        Ok(())
    }
}

/// The summarizer's connections, ready to run.
#[derive(Debug)]
pub struct Service {
    pool: PgPool,
    client: StreamsClient,
    topics: events::Topics,
    summarize: Summarize,
    settings: settings::bus::Watcher,
    max_concurrent_batches: usize,
}

/// Rebuilds the chain when the runtime settings change its order or
/// breaker thresholds. New breakers start closed: an open one gets its
/// probe right away instead of after its wait.
fn chain_applier(
    summarize: Summarize,
    configured: config::LlmSettings,
    redis_urls: Vec<String>,
) -> settings::bus::Applier {
    let in_force = Arc::new(std::sync::Mutex::new(configured.clone()));
    Box::new(move |applied| {
        let (summarize, configured, redis_urls, in_force) = (
            summarize.clone(),
            configured.clone(),
            redis_urls.clone(),
            in_force.clone(),
        );
        Box::pin(async move {
            let mut wanted = configured;
            if let Some(settings) = &applied.settings {
                wanted.order = settings.llm.order.clone();
                wanted.breaker_failures = settings.llm.breaker_failures;
                wanted.breaker_open_s = settings.llm.breaker_open_s;
            }
            let unchanged = {
                let current = in_force.lock().unwrap_or_else(PoisonError::into_inner);
                current.order == wanted.order
                    && current.breaker_failures == wanted.breaker_failures
                    && current.breaker_open_s == wanted.breaker_open_s
            };
            if unchanged {
                return Ok(());
            }
            let rebuilt = chain(&wanted, &redis_urls)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(order = ?wanted.order, "LLM chain rebuilt from the runtime settings");
            summarize.replace_chain(rebuilt);
            *in_force.lock().unwrap_or_else(PoisonError::into_inner) = wanted;
            Ok(())
        })
    })
}

impl Service {
    pub async fn connect(config: &Config) -> Result<Self> {
        let pool = catalog::connect(&config.database_url, 16).await?;
        catalog::migrate(&pool).await?;
        outbox::migrate(&pool).await?;
        settings::migrate(&pool).await?;
        let client =
            StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone())).await?;
        let chain = chain(&config.llm, &config.redis_urls).await?;
        let topics = events::Topics::new(&config.topic_prefix)?;
        let summarize = Summarize::new(pool.clone(), chain, topics.summarized.clone());
        let (settings, _) = settings::bus::Watcher::start(
            settings::store::Store::new(pool.clone()),
            settings::bus::WatcherConfig::new(
                "summarizer",
                &settings::instance_name("summarizer"),
                config.redis_urls.clone(),
            ),
            vec![
                settings::topic_applier(
                    vec![
                        topics.ingested.layout().clone(),
                        topics.summarized.layout().clone(),
                    ],
                    &config.topic_prefix,
                ),
                chain_applier(
                    summarize.clone(),
                    config.llm.clone(),
                    config.redis_urls.clone(),
                ),
            ],
        )
        .await?;
        Ok(Self {
            pool,
            client,
            topics,
            summarize,
            settings,
            max_concurrent_batches: config.max_concurrent_batches,
        })
    }

    /// Readiness: Postgres and the Redis Cluster answer.
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

    /// Consume `paper.ingested` and relay the outbox until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let relay = outbox::Relay::new(
            self.pool.clone(),
            self.client.clone(),
            [self.topics.summarized.layout().clone()],
            outbox::RelayConfig::default(),
        );
        let relaying = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { relay.run(shutdown).await }
        });
        let watching = tokio::spawn(self.settings.run(shutdown.clone()));
        let mut consumer_config = ConsumerConfig::new("summarizer");
        consumer_config.batch_size = events::batch_size(PaperIngested::TOPIC);
        consumer_config.max_concurrent_batches = self.max_concurrent_batches;
        let summarize = self.summarize;
        let handler = streams::per_message(move |message: Message<PaperIngested>| {
            let summarize = summarize.clone();
            async move { summarize.handle(message).await }
        });
        Consumer::new(self.client, &self.topics.ingested, consumer_config, handler)
            .run(shutdown)
            .await?;
        match relaying.await {
            Ok(Err(err)) => tracing::warn!(%err, "outbox relay stopped with an error"),
            Err(err) => tracing::warn!(%err, "outbox relay panicked"),
            Ok(Ok(())) => {}
        }
        if let Ok(Err(err)) = watching.await {
            tracing::warn!(%err, "settings watcher stopped with an error");
        }
        Ok(())
    }
}

/// Connect and run until `shutdown`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<()> {
    Service::connect(config).await?.run(shutdown).await
}
