//! What the drills share: the local system's connections, a message type
//! that can be counted, a tally of what consumers processed, a lag watch,
//! and cleanup.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use streams::{Event, Failure, Inspector, Message, StreamsClient, TopicLayout};
use tokio_util::sync::CancellationToken;

/// The local system, as `scripts/infra env` describes it.
pub struct Env {
    /// The operator's seed URLs (drills create their own topics).
    pub redis_urls: Vec<String>,
    pub client: StreamsClient,
    /// The short version CI runs.
    pub quick: bool,
}

impl Env {
    pub async fn from_env(quick: bool) -> anyhow::Result<Self> {
        let urls = std::env::var("PAPERSTREAM_REDIS_URLS")
            .context("PAPERSTREAM_REDIS_URLS is not set: run eval \"$(scripts/infra env)\" (scripts/drill does)")?;
        let redis_urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).collect();
        let client = StreamsClient::connect(streams::ClientConfig::new(redis_urls.clone())).await?;
        Ok(Self {
            redis_urls,
            client,
            quick,
        })
    }

    /// `quick` in CI, `full` otherwise.
    pub fn scale(&self, quick: u64, full: u64) -> u64 {
        if self.quick { quick } else { full }
    }

    pub async fn redis(&self) -> anyhow::Result<redis::cluster_async::ClusterConnection> {
        Ok(redis::cluster::ClusterClient::new(self.redis_urls.clone())?
            .get_async_connection()
            .await?)
    }
}

/// A topic name no other run uses.
pub fn unique_topic(drill: &str) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("drill.{drill}.{suffix}")
}

/// A countable message: its number is its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub n: u64,
    pub key: String,
}

impl Event for Probe {
    const SCHEMA_VERSION: u32 = 1;
}

impl Probe {
    /// Keys spread messages over partitions; `keys` of them.
    pub fn new(n: u64, keys: u64) -> Self {
        Self {
            n,
            key: format!("key-{}", n % keys.max(1)),
        }
    }
}

/// How often each message was processed, and in which order per key.
#[derive(Debug, Default)]
pub struct Tally {
    seen: Mutex<HashMap<u64, u32>>,
    order: Mutex<HashMap<String, Vec<u64>>>,
}

impl Tally {
    pub fn record(&self, probe: &Probe) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let count = seen.entry(probe.n).or_default();
        *count += 1;
        if *count == 1 {
            self.order
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(probe.key.clone())
                .or_default()
                .push(probe.n);
        }
    }

    pub fn processed(&self) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64
    }

    pub fn duplicates(&self) -> u64 {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|c| u64::from(c.saturating_sub(1)))
            .sum()
    }

    /// Of `sent`, those never processed.
    pub fn missing<'a>(&self, sent: impl IntoIterator<Item = &'a u64>) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        sent.into_iter().filter(|n| !seen.contains_key(n)).count() as u64
    }

    /// Keys whose first deliveries did not come in send order (messages
    /// of a key are numbered in the order they were sent).
    pub fn out_of_order_keys(&self) -> u64 {
        self.order
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|ns| ns.windows(2).any(|w| w[0] > w[1]))
            .count() as u64
    }
}

/// A handler that records every delivery in `tally`.
pub fn counting(tally: Arc<Tally>) -> impl streams::Handler<Probe> {
    streams::per_message(move |m: Message<Probe>| {
        let tally = tally.clone();
        async move {
            tally.record(&m.payload);
            Ok::<(), Failure>(())
        }
    })
}

/// Sample the group's total lag every 200 ms until cancelled; the highest
/// value is kept.
pub struct LagWatch {
    peak: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl LagWatch {
    pub fn start(client: &StreamsClient, layout: Arc<TopicLayout>, group: &str) -> Self {
        let peak = Arc::new(Mutex::new(0));
        let stop = CancellationToken::new();
        let inspector = Inspector::new(client.clone());
        let group = group.to_owned();
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.is_cancelled() {
                    if let Ok(lag) = lag(&inspector, &layout, &group).await {
                        let mut peak = peak.lock().unwrap_or_else(PoisonError::into_inner);
                        *peak = (*peak).max(lag);
                    }
                    tokio::select! {
                        () = stop.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        });
        Self { peak, stop, task }
    }

    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        *self.peak.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Entries of the topic the group has not acknowledged yet.
pub async fn lag(inspector: &Inspector, layout: &TopicLayout, group: &str) -> anyhow::Result<u64> {
    Ok(inspector
        .partitions(layout)
        .await?
        .iter()
        .flat_map(|p| p.groups.iter())
        .filter(|g| g.name == group)
        .map(|g| g.lag_entries)
        .sum())
}

pub async fn dead_letters(inspector: &Inspector, layout: &TopicLayout) -> anyhow::Result<u64> {
    Ok(inspector
        .partitions(layout)
        .await?
        .iter()
        .map(|p| p.dlq_length)
        .sum())
}

/// Every entry of the topic's streams or DLQs, partition by partition.
pub async fn entries(
    inspector: &Inspector,
    layout: &TopicLayout,
    log: streams::inspect::Log,
) -> anyhow::Result<Vec<streams::RawEntry>> {
    let mut all = Vec::new();
    for p in &layout.partitions {
        let mut cursor = None;
        loop {
            let page = inspector
                .browse(
                    layout,
                    p.index,
                    log,
                    streams::inspect::Direction::Forward,
                    cursor,
                    1000,
                )
                .await?;
            all.extend(page.entries);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
    }
    Ok(all)
}

/// How many dead letters of the topic carry each reason; with
/// `with_error`, reason and error.
pub async fn dead_letter_reasons(
    inspector: &Inspector,
    layout: &TopicLayout,
    with_error: bool,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let mut reasons = std::collections::BTreeMap::new();
    for entry in entries(inspector, layout, streams::inspect::Log::Dlq).await? {
        let field = |name: &str| {
            entry
                .fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let reason = field("dlq.reason").unwrap_or_else(|| "none".into());
        let key = if with_error {
            let error: String = field("dlq.error")
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect();
            format!("{reason}: {error}")
        } else {
            reason
        };
        *reasons.entry(key).or_default() += 1;
    }
    Ok(reasons)
}

/// Delete every key of a drill topic (streams, DLQs, leases, members, and
/// the producers' and consumers' idempotency markers), on every master.
pub async fn remove_topic(env: &Env, layout: &TopicLayout) -> anyhow::Result<()> {
    let pattern = format!("{{{}:*", layout.config.name);
    for master in env.client.masters().await? {
        let mut node = redis::Client::open(crate::local::node_url(&master)?)?
            .get_multiplexed_async_connection()
            .await?;
        let mut cursor = 0_u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut node)
                .await?;
            // One key per command: a topic's partitions live in different
            // slots, and multi-key commands must stay within one.
            let mut unlink = redis::pipe();
            for key in &keys {
                unlink.cmd("UNLINK").arg(key).ignore();
            }
            if !keys.is_empty() {
                let () = unlink.query_async(&mut node).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Wait until `done`, checking every 50 ms, for at most `within`.
pub async fn wait_until(within: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
