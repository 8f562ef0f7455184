//! # outbox: events that commit with the data they announce
//!
//! A service that changes rows and announces the change must not do the
//! one without the other. [`enqueue`] writes the event into the `outbox`
//! table inside the caller's transaction; the [`Relay`] publishes committed
//! rows to their topics and marks them published.
//!
//! Guarantees:
//! * An event is published if and only if its transaction committed.
//! * An event (message id) is enqueued once: a second enqueue is a no-op.
//! * It is appended to its stream once: the relay uses the streams
//!   runtime's idempotent producer, so a relay that crashed between
//!   publishing and marking publishes nothing twice when it comes back
//!   (within the producer's marker TTL, a week).
//! * Per key, events are published in the order they were enqueued: one
//!   relay at a time holds a Postgres advisory lock, works in id order, and
//!   stops at a partition's first refused message.
//! * A relay publishes only the topics it was given, and the lock is per
//!   set of topics: each service relays what it writes, so its Redis user
//!   needs no rights on other services' topics.
//! * A full partition ([`streams::Backpressure`]) makes the relay wait the
//!   hinted time and try again; nothing is dropped.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::{PgConnection, PgPool, Row, postgres::PgListener};
use streams::{
    Error as StreamsError, Event, OutgoingJson, Producer, ProducerConfig, StreamsClient, Topic,
    TopicLayout,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("encode event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("streams: {0}")]
    Streams(#[from] StreamsError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The outbox table's migrations (see `catalog::migrate` on sharing the
/// migrations table).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// Record `event` for publication on `topic`, in the caller's transaction.
/// Returns false when `message_id` was enqueued before.
pub async fn enqueue<T: Event>(
    tx: &mut PgConnection,
    topic: &Topic<T>,
    key: &str,
    message_id: &str,
    event: &T,
) -> Result<bool> {
    let payload = serde_json::to_value(event)?;
    let inserted = sqlx::query(
        "INSERT INTO outbox (topic, message_key, message_id, schema_version, payload)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(topic.name())
    .bind(key)
    .bind(message_id)
    .bind(i32::try_from(T::SCHEMA_VERSION).unwrap_or(i32::MAX))
    .bind(sqlx::types::Json(payload))
    .execute(&mut *tx)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read per round.
    pub batch: i64,
    /// How long to wait for a notification before looking anyway.
    pub idle_poll: Duration,
    /// Published rows are deleted after this long.
    pub retain_published: Duration,
    /// Namespace of the advisory lock that makes one relay at a time the
    /// active one for its set of topics.
    pub lock_namespace: i32,
    /// How long the producer remembers a message id.
    pub idempotency_ttl: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 1000,
            idle_poll: Duration::from_secs(1),
            retain_published: Duration::from_secs(24 * 3600),
            lock_namespace: 0x6f75_7462,
            idempotency_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub published: usize,
    /// Rows left for the next round because a partition was full; wait
    /// this long first.
    pub backpressure: Option<Duration>,
}

/// Publishes committed outbox rows.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    producer: Producer,
    topics: HashMap<String, Arc<TopicLayout>>,
    /// The topic names, sorted, for the query and the lock.
    topic_names: Vec<String>,
    config: RelayConfig,
}

impl Relay {
    pub fn new(
        pool: PgPool,
        client: StreamsClient,
        topics: impl IntoIterator<Item = Arc<TopicLayout>>,
        config: RelayConfig,
    ) -> Self {
        let producer = Producer::new(
            client,
            ProducerConfig {
                idempotency_ttl: Some(config.idempotency_ttl),
                ..ProducerConfig::default()
            },
        );
        let topics: HashMap<String, Arc<TopicLayout>> = topics
            .into_iter()
            .map(|t| (t.config.name.clone(), t))
            .collect();
        let mut topic_names: Vec<String> = topics.keys().cloned().collect();
        topic_names.sort();
        Self {
            pool,
            producer,
            topics,
            topic_names,
            config,
        }
    }

    /// Relay until `shutdown`, while holding the advisory lock; other
    /// instances wait for it.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        while !shutdown.is_cancelled() {
            let mut lock = self.pool.acquire().await?;
            let leader: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
                .bind(self.config.lock_namespace)
                .bind(self.topic_names.join(","))
                .fetch_one(&mut *lock)
                .await?;
            if !leader {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
            tracing::info!("outbox relay is the active one");
            let outcome = self.lead(&shutdown).await;
            // Returning the connection to the pool with the lock held would
            // keep it locked; unlock, and drop the connection if that fails.
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(self.config.lock_namespace)
                .bind(self.topic_names.join(","))
                .execute(&mut *lock)
                .await;
            if unlocked.is_err() {
                lock.detach();
            }
            if let Err(err) = outcome {
                tracing::warn!(%err, "outbox relay failed; starting over");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        Ok(())
    }

    async fn lead(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("outbox").await?;
        let mut next_cleanup = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let round = self.relay_once().await?;
            if tokio::time::Instant::now() >= next_cleanup {
                self.forget_published().await?;
                next_cleanup = tokio::time::Instant::now() + Duration::from_secs(600);
            }
            if let Some(wait) = round.backpressure {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            } else if round.published < self.config.batch as usize {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    notified = listener.recv() => { notified?; }
                    () = tokio::time::sleep(self.config.idle_poll) => {}
                }
            }
        }
        Ok(())
    }

    /// Publish one batch of unpublished rows, oldest first.
    pub async fn relay_once(&self) -> Result<Round> {
        let rows = sqlx::query(
            "SELECT id, topic, message_key, message_id, schema_version, payload::text AS payload
             FROM outbox WHERE published_at IS NULL AND topic = ANY($2) ORDER BY id LIMIT $1",
        )
        .bind(self.config.batch)
        .bind(&self.topic_names)
        .fetch_all(&self.pool)
        .await?;
        let backlog = rows.len();
        let mut per_topic: HashMap<String, Vec<Unpublished>> = HashMap::new();
        for row in rows {
            let row = Unpublished {
                id: row.try_get("id")?,
                topic: row.try_get("topic")?,
                key: row.try_get("message_key")?,
                message_id: row.try_get("message_id")?,
                schema_version: row.try_get::<i32, _>("schema_version")?.max(0) as u32,
                payload: row.try_get("payload")?,
            };
            per_topic.entry(row.topic.clone()).or_default().push(row);
        }
        let mut published: Vec<i64> = Vec::new();
        let mut round = Round::default();
        for (topic, rows) in &per_topic {
            let Some(layout) = self.topics.get(topic) else {
                continue;
            };
            let results = self
                .producer
                .send_json(
                    layout,
                    rows.iter().map(|r| OutgoingJson {
                        key: &r.key,
                        message_id: &r.message_id,
                        schema_version: r.schema_version,
                        json: r.payload.as_bytes(),
                    }),
                )
                .await?;
            for (row, result) in rows.iter().zip(results) {
                match result {
                    Ok(_) => published.push(row.id),
                    Err(StreamsError::Backpressure(b)) => {
                        round.backpressure =
                            Some(round.backpressure.unwrap_or_default().max(b.retry_after));
                    }
                    Err(err) => {
                        tracing::warn!(%topic, message_id = %row.message_id, %err, "could not publish; will retry");
                    }
                }
            }
        }
        if !published.is_empty() {
            sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
                .bind(&published)
                .execute(&self.pool)
                .await?;
        }
        round.published = published.len();
        metrics::counter!("outbox_published_total").increment(published.len() as u64);
        metrics::gauge!("outbox_unpublished").set((backlog - published.len()) as f64);
        if round.backpressure.is_some() {
            metrics::counter!("outbox_backpressure_waits_total").increment(1);
        }
        Ok(round)
    }

    async fn forget_published(&self) -> Result<()> {
        let seconds = self.config.retain_published.as_secs_f64();
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
        )
        .bind(seconds)
        .execute(&self.pool)
        .await?;
        if deleted.rows_affected() > 0 {
            tracing::debug!(
                deleted = deleted.rows_affected(),
                "forgot published outbox rows"
            );
        }
        Ok(())
    }
}

/// An outbox row waiting to be published.
struct Unpublished {
    id: i64,
    topic: String,
    key: String,
    message_id: String,
    schema_version: u32,
    payload: String,
}
