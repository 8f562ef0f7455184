//! # crawler: new arXiv papers into Postgres and `paper.ingested`
//!
//! * `backfill` harvests a date window over OAI-PMH (`arXivRaw`, which
//!   carries versions), page by page. Each page's papers, their events and
//!   the resumption point commit in one transaction, so a crash resumes
//!   where it stopped, with no paper or event stored twice.
//! * `daily` reads the announcement feeds, then looks the announced
//!   versions up in batches for full metadata.
//! * `scheduled` runs `daily` and a short backfill (for replacements)
//!   periodically, keeps the outbox relay going and probes arXiv.
//! * `parse FILE` prints the papers of a saved response as JSON lines.
//!
//! Only new paper versions produce events; a repeat, a cross-listing or a
//! metadata change does not.

pub mod config;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use arxiv::{
    Paper,
    client::{Client, ClientError, Listing, MetadataFormat},
    pace::RedisPacer,
};
use catalog::Stored;
use events::PaperIngested;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use streams::StreamsClient;
use time::Date;
use tokio_util::sync::CancellationToken;

pub use config::Config;

type ArxivClient = Client<RedisPacer<redis::cluster_async::ClusterConnection>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("arXiv: {0}")]
    Arxiv(#[from] ClientError),
    #[error("catalog: {0}")]
    Catalog(#[from] catalog::Error),
    #[error("outbox: {0}")]
    Outbox(#[from] outbox::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("settings: {0}")]
    Settings(#[from] settings::Error),
    #[error("streams: {0}")]
    Streams(#[from] streams::Error),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a crawl stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub new: u64,
    pub updated: u64,
    pub unchanged: u64,
}

impl Tally {
    fn add(&mut self, stored: Stored) {
        let (field, label) = match stored {
            Stored::New => (&mut self.new, "new"),
            Stored::Updated => (&mut self.updated, "updated"),
            Stored::Unchanged => (&mut self.unchanged, "unchanged"),
        };
        *field += 1;
        metrics::counter!("crawler_papers_total", "outcome" => label).increment(1);
    }

    fn merge(&mut self, other: Tally) {
        self.new += other.new;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
    }
}

/// A backfill's saved position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillState {
    pub token: Option<String>,
    pub pages: u64,
    pub records: u64,
    pub done: bool,
}

/// The crawler's connections.
#[derive(Clone)]
pub struct Crawler {
    pool: PgPool,
    arxiv: Arc<ArxivClient>,
    streams: StreamsClient,
    topics: events::Topics,
}

impl std::fmt::Debug for Crawler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crawler")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Crawler {
    pub async fn connect(config: &Config) -> Result<Self> {
        let pool = catalog::connect(&config.database_url, 8).await?;
        catalog::migrate(&pool).await?;
        outbox::migrate(&pool).await?;
        settings::migrate(&pool).await?;
        let streams =
            StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone())).await?;
        let pace_connection = redis::cluster::ClusterClient::new(config.redis_urls.clone())?
            .get_async_connection()
            .await?;
        let pacer = RedisPacer::new(
            pace_connection,
            &config.arxiv.pace_key,
            config.arxiv.pace_interval(),
            config.arxiv.request_timeout() * 2,
        );
        let arxiv = Client::new(config.arxiv.client_config(), pacer)?;
        let topics = events::Topics::new(&config.topic_prefix)?;
        // The summarizer's group exists from the start, so that backpressure
        // and retention count it before it first runs.
        streams::ensure_group(
            &streams,
            topics.ingested.layout(),
            "summarizer",
            streams::StartFrom::Beginning,
        )
        .await?;
        Ok(Self {
            pool,
            arxiv: Arc::new(arxiv),
            streams,
            topics,
        })
    }

    /// Readiness: Postgres and the Redis Cluster answer. (arXiv's health
    /// is the `arxiv_up` gauge: the crawler can wait out an arXiv outage.)
    pub fn checks(&self) -> Vec<(&'static str, ops::Check)> {
        vec![
            (
                "postgres",
                ops::check_with(self.pool.clone(), catalog::ping),
            ),
            (
                "redis",
                ops::check_with(self.streams.clone(), StreamsClient::ping),
            ),
        ]
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn streams(&self) -> &StreamsClient {
        &self.streams
    }

    pub fn relay(&self) -> outbox::Relay {
        outbox::Relay::new(
            self.pool.clone(),
            self.streams.clone(),
            [self.topics.ingested.layout().clone()],
            outbox::RelayConfig::default(),
        )
    }

    /// Store `papers` and announce the new versions, with the checkpoint,
    /// in one transaction.
    async fn store_page(
        &self,
        papers: &[Paper],
        checkpoint: Option<(&str, &BackfillState)>,
    ) -> Result<Tally> {
        let mut tx = self.pool.begin().await?;
        let mut tally = Tally::default();
        for paper in papers {
            let stored = catalog::store_paper(&mut tx, paper).await?;
            if stored == Stored::New {
                let event = PaperIngested {
                    arxiv_id: paper.id.to_string(),
                    version: paper.version.unwrap_or(1),
                    title: paper.title.clone(),
                    primary_category: paper.primary_category.clone(),
                    categories: paper.categories.clone(),
                };
                outbox::enqueue(
                    &mut tx,
                    &self.topics.ingested,
                    paper.id.as_str(),
                    &event.message_id(),
                    &event,
                )
                .await?;
            }
            tally.add(stored);
        }
        if let Some((name, state)) = checkpoint {
            catalog::save_checkpoint(&mut tx, name, state).await?;
        }
        tx.commit().await?;
        Ok(tally)
    }

    /// Harvest `[from, until]` for each OAI set, resuming saved progress.
    pub async fn backfill(
        &self,
        from: Date,
        until: Option<Date>,
        sets: &[String],
        progress: &Progress,
        shutdown: &CancellationToken,
    ) -> Result<Tally> {
        let mut total = Tally::default();
        for set in sets {
            let name = format!(
                "backfill:{set}:{from}:{}",
                until
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "open".into())
            );
            let mut state: BackfillState = catalog::checkpoint(&self.pool, &name)
                .await?
                .unwrap_or_default();
            if state.done {
                tracing::info!(%set, "window already harvested");
                continue;
            }
            if state.pages > 0 {
                tracing::info!(%set, pages = state.pages, records = state.records, "resuming backfill");
            }
            progress.start(&format!("backfill {set}"), None, state.records);
            while !shutdown.is_cancelled() {
                let listing = match &state.token {
                    Some(token) => Listing::Resume(token),
                    None => Listing::Window {
                        format: MetadataFormat::ArxivRaw,
                        set: Some(set),
                        from,
                        until,
                    },
                };
                let page = match self.arxiv.list_records(listing).await {
                    Err(ClientError::Parse(arxiv::ParseError::Oai { code, .. }))
                        if code == "badResumptionToken" =>
                    {
                        // Tokens expire at UTC midnight; storing is idempotent,
                        // so the window starts over.
                        tracing::warn!(%set, "resumption token expired; harvesting the window again");
                        state.token = None;
                        continue;
                    }
                    other => other?,
                };
                let papers: Vec<Paper> = page.records.into_iter().filter_map(|r| r.paper).collect();
                state.records += papers.len() as u64;
                state.pages += 1;
                state.token = page.resumption.as_ref().map(|r| r.token.clone());
                state.done = state.token.is_none();
                if let Some(size) = page.resumption.as_ref().and_then(|r| r.complete_list_size) {
                    progress.set_length(size);
                }
                total.merge(self.store_page(&papers, Some((&name, &state))).await?);
                progress.set_position(state.records);
                metrics::counter!("crawler_pages_total", "interface" => "oai").increment(1);
                if state.done {
                    break;
                }
            }
            progress.finish();
        }
        if !shutdown.is_cancelled() {
            mark_success();
        }
        Ok(total)
    }

    /// Today's announcements in `categories`, looked up for full metadata.
    pub async fn daily(&self, categories: &[String]) -> Result<Tally> {
        let cats: Vec<&str> = categories.iter().map(String::as_str).collect();
        let announced = self.arxiv.announcements(&cats).await?;
        let mut ids: Vec<String> = announced
            .iter()
            .map(|a| match a.paper.version {
                Some(v) => format!("{}v{v}", a.paper.id),
                None => a.paper.id.to_string(),
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        ids.sort();
        let mut total = Tally::default();
        for chunk in ids.chunks(100) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let papers = match self.arxiv.papers(&refs).await {
                Ok(page) => page.papers,
                Err(err) => {
                    // The feed's own metadata beats none: store what it said.
                    tracing::warn!(%err, "look-up failed; storing the announcement's metadata");
                    announced
                        .iter()
                        .filter(|a| chunk.iter().any(|id| id.starts_with(a.paper.id.as_str())))
                        .map(|a| a.paper.clone())
                        .collect()
                }
            };
            total.merge(self.store_page(&papers, None).await?);
        }
        mark_success();
        Ok(total)
    }

    /// Whether arXiv answers; sets the `arxiv_up` gauge.
    pub async fn probe(&self) -> bool {
        let up = self.arxiv.probe().await.is_ok();
        metrics::gauge!("arxiv_up").set(if up { 1.0 } else { 0.0 });
        up
    }

    /// Run the relay until the outbox is empty or `within` passes.
    pub async fn drain_outbox(&self, within: Duration) -> Result<()> {
        let relay = self.relay();
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            let round = relay.relay_once().await?;
            if round.published == 0 && round.backpressure.is_none() {
                return Ok(());
            }
            if let Some(wait) = round.backpressure {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }
}

fn mark_success() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    metrics::gauge!("crawler_last_success_timestamp_seconds").set(now);
}

/// Progress of a long crawl: a bar on a terminal, log lines elsewhere.
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(show_bar: bool) -> Self {
        Self {
            bar: show_bar.then(|| {
                let bar = indicatif::ProgressBar::new(0);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} records ({per_sec}, eta {eta})",
                ) {
                    bar.set_style(style);
                }
                bar
            }),
        }
    }

    fn start(&self, what: &str, length: Option<u64>, position: u64) {
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_message(what.to_owned());
            bar.set_length(length.unwrap_or(0));
            bar.set_position(position);
        }
        tracing::info!(what, position, "started");
    }

    fn set_length(&self, length: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(length);
        }
    }

    fn set_position(&self, position: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(position),
            None => tracing::info!(records = position, "progress"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// The papers in a saved response of any of the three interfaces.
pub fn parse_saved(text: &str) -> Result<Vec<Paper>> {
    let parsed = if text.contains("<OAI-PMH") {
        arxiv::oai::parse(text)
            .map(|page| page.records.into_iter().filter_map(|r| r.paper).collect())
    } else if text.contains("announce_type") {
        arxiv::announce::parse(text).map(|all| all.into_iter().map(|a| a.paper).collect())
    } else {
        arxiv::query::parse(text).map(|page| page.papers)
    };
    parsed.map_err(|err| Error::Input(err.to_string()))
}

/// Run the scheduled mode until `shutdown`. The schedule (interval and
/// categories) follows the runtime settings; the configuration's applies
/// until the first change.
pub async fn run_scheduled(
    crawler: Crawler,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<()> {
    let (watcher, mut settings) = settings::bus::Watcher::start(
        settings::store::Store::new(crawler.pool.clone()),
        settings::bus::WatcherConfig::new(
            "crawler",
            &settings::instance_name("crawler"),
            config.redis_urls.clone(),
        ),
        vec![settings::topic_applier(
            vec![crawler.topics.ingested.layout().clone()],
            &config.topic_prefix,
        )],
    )
    .await?;
    let watching = tokio::spawn(watcher.run(shutdown.clone()));
    let schedule = |applied: &settings::bus::Applied| match &applied.settings {
        Some(s) => (
            Duration::from_secs(s.crawler.interval_s),
            s.crawler.categories.clone(),
        ),
        None => (
            config.schedule.interval(),
            config.schedule.categories.clone(),
        ),
    };
    let relay = crawler.relay();
    let relaying = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let mut next_probe = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        if started >= next_probe {
            crawler.probe().await;
            next_probe = tokio::time::Instant::now() + config.schedule.probe_interval();
        }
        let categories = schedule(&settings.borrow()).1;
        match crawler.daily(&categories).await {
            Ok(tally) => tracing::info!(?tally, "daily crawl done"),
            Err(err) => tracing::error!(%err, "daily crawl failed"),
        }
        let today = time::OffsetDateTime::now_utc().date();
        let from = today.saturating_sub(time::Duration::days(i64::from(
            config.schedule.backfill_days,
        )));
        match crawler
            .backfill(
                from,
                Some(today),
                &config.schedule.sets,
                &Progress::new(false),
                &shutdown,
            )
            .await
        {
            Ok(tally) => tracing::info!(?tally, "recent backfill done"),
            Err(err) => tracing::error!(%err, "recent backfill failed"),
        }
        // Until the next run is due; a changed interval moves it.
        loop {
            let interval = schedule(&settings.borrow_and_update()).0;
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(started + interval) => break,
                Ok(()) = settings.changed() => {}
            }
        }
    }
    if let Ok(Err(err)) = relaying.await {
        tracing::warn!(%err, "outbox relay stopped with an error");
    }
    if let Ok(Err(err)) = watching.await {
        tracing::warn!(%err, "settings watcher stopped with an error");
    }
    Ok(())
}
