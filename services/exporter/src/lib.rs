//! # exporter: the streams as Prometheus sees them
//!
//! Services report what they do (`streams_produced_total`, handler
//! latency, backpressure refusals); this small service reports what the
//! streams *are*, read from Redis with the inspection API every interval:
//! per topic and partition the length, DLQ length, backlog against
//! capacity and key memory; per consumer group the lag in entries and
//! seconds, pending entries, the idle time of the oldest pending entry,
//! consumers and whether the partition has an owner; and each Redis node's
//! used and maximum memory.
//!
//! One exporter is enough for a deployment (several would only repeat the
//! reads). It runs apart from the services so that a stalled consumer
//! cannot hide its own lag, and so that its cost on Redis is one known
//! loop.

pub mod config;

use std::time::{Duration, Instant};

use metrics::gauge;
use streams::{
    Inspector, StreamsClient, TopicLayout,
    inspect::{NodeMemory, PartitionReport},
};
use tokio_util::sync::CancellationToken;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("streams: {0}")]
    Streams(#[from] streams::Error),
    #[error("settings: {0}")]
    Settings(#[from] settings::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Describe the exported gauges, for `# HELP` lines.
pub fn describe() {
    use metrics::describe_gauge;
    describe_gauge!(
        "streams_partition_length",
        "Entries in the partition's stream."
    );
    describe_gauge!("streams_dlq_length", "Entries in the partition's DLQ.");
    describe_gauge!(
        "streams_backlog",
        "Entries of the partition not yet acknowledged by its slowest group."
    );
    describe_gauge!("streams_capacity", "The partition's capacity.");
    describe_gauge!(
        "streams_backlog_ratio",
        "Backlog as a share of capacity; producers meet backpressure at 1."
    );
    describe_gauge!(
        "streams_key_memory_bytes",
        "MEMORY USAGE of the stream and its DLQ."
    );
    describe_gauge!(
        "streams_group_lag_entries",
        "Entries the group has not acknowledged (undelivered plus pending)."
    );
    describe_gauge!(
        "streams_group_lag_seconds",
        "Age of the oldest entry the group has not acknowledged."
    );
    describe_gauge!(
        "streams_group_pending",
        "Delivered, unacknowledged entries."
    );
    describe_gauge!(
        "streams_group_oldest_pending_idle_seconds",
        "Idle time of the group's oldest pending entry."
    );
    describe_gauge!(
        "streams_group_consumers",
        "Consumers registered in the group."
    );
    describe_gauge!(
        "streams_group_has_owner",
        "1 when a live consumer holds the partition's lease for the group."
    );
    describe_gauge!("redis_node_used_memory_bytes", "used_memory of each node.");
    describe_gauge!(
        "redis_node_max_memory_bytes",
        "maxmemory of each node; 0 when unlimited."
    );
    describe_gauge!(
        "exporter_last_success_timestamp_seconds",
        "When a pass last succeeded."
    );
    describe_gauge!("exporter_pass_seconds", "How long the last pass took.");
}

/// Read every topic once and publish the gauges.
pub async fn export_once(
    inspector: &Inspector,
    layouts: &[std::sync::Arc<TopicLayout>],
) -> Result<()> {
    let started = Instant::now();
    for layout in layouts {
        for partition in inspector.partitions(layout).await? {
            publish_partition(&layout.config.name, &partition);
        }
    }
    for node in inspector.node_memory().await? {
        publish_node(&node);
    }
    gauge!("exporter_last_success_timestamp_seconds").set(unix_now());
    gauge!("exporter_pass_seconds").set(started.elapsed().as_secs_f64());
    Ok(())
}

fn publish_partition(topic: &str, p: &PartitionReport) {
    let labels = [
        ("topic", topic.to_owned()),
        ("partition", p.partition.to_string()),
    ];
    gauge!("streams_partition_length", &labels).set(p.length as f64);
    gauge!("streams_dlq_length", &labels).set(p.dlq_length as f64);
    gauge!("streams_backlog", &labels).set(p.backlog as f64);
    gauge!("streams_capacity", &labels).set(p.capacity as f64);
    let ratio = if p.capacity == 0 {
        0.0
    } else {
        p.backlog as f64 / p.capacity as f64
    };
    gauge!("streams_backlog_ratio", &labels).set(ratio);
    gauge!("streams_key_memory_bytes", &labels).set((p.memory_bytes + p.dlq_memory_bytes) as f64);
    for g in &p.groups {
        let labels = [
            ("topic", topic.to_owned()),
            ("partition", p.partition.to_string()),
            ("group", g.name.clone()),
        ];
        gauge!("streams_group_lag_entries", &labels).set(g.lag_entries as f64);
        gauge!("streams_group_lag_seconds", &labels).set(g.lag_seconds);
        gauge!("streams_group_pending", &labels).set(g.pending as f64);
        gauge!("streams_group_oldest_pending_idle_seconds", &labels).set(
            g.oldest_pending_idle_ms
                .map_or(0.0, |ms| ms as f64 / 1000.0),
        );
        gauge!("streams_group_consumers", &labels).set(g.consumers.len() as f64);
        gauge!("streams_group_has_owner", &labels).set(if g.owner.is_some() { 1.0 } else { 0.0 });
    }
}

fn publish_node(node: &NodeMemory) {
    let labels = [("node", node.address.clone()), ("role", node.role.clone())];
    gauge!("redis_node_used_memory_bytes", &labels).set(node.used_bytes as f64);
    gauge!("redis_node_max_memory_bytes", &labels).set(node.max_bytes as f64);
}

/// Export every `interval` until `shutdown`. A failed pass is logged and
/// counted; the gauges keep their last values, and
/// `exporter_last_success_timestamp_seconds` tells how old they are.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let client =
        StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone())).await?;
    let inspector = Inspector::new(client);
    let layouts = events::Topics::new(&config.topic_prefix)?.all_layouts();
    let watching = match &config.database_url {
        Some(url) => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await?;
            settings::migrate(&pool).await?;
            let (watcher, _) = settings::bus::Watcher::start(
                settings::store::Store::new(pool),
                settings::bus::WatcherConfig::new(
                    "exporter",
                    &settings::instance_name("exporter"),
                    config.redis_urls.clone(),
                ),
                vec![settings::topic_applier(
                    layouts.clone(),
                    &config.topic_prefix,
                )],
            )
            .await?;
            Some(tokio::spawn(watcher.run(shutdown.clone())))
        }
        None => None,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(config.interval_s.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(err) = export_once(&inspector, &layouts).await {
            metrics::counter!("exporter_failures_total").increment(1);
            tracing::warn!(%err, "reading the streams failed; will retry");
        }
    }
    if let Some(task) = watching
        && let Ok(Err(err)) = task.await
    {
        tracing::warn!(%err, "settings watcher stopped with an error");
    }
    Ok(())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
