//! How long a settings change takes to reach every instance: ten watchers
//! (as ten service processes would run, each retuning its own topics), a
//! hundred changes, each timed from the change's commit to the moment the
//! last watcher applied it.
//! The periodic check is set to an hour, so only Pub/Sub carries changes.
//!
//! Run against the local infrastructure:
//!     eval "$(scripts/infra env)"
//!     cargo run --release -p settings --example apply_latency
//! Writes target/bench/settings_apply.json. Uses a throwaway database.

use std::time::{Duration, Instant};

use anyhow::Context;
use settings::{
    Settings,
    bus::{Watcher, WatcherConfig},
    store::{Change, Store},
};
use tokio_util::sync::CancellationToken;

const INSTANCES: usize = 10;
const CHANGES: usize = 100;

fn settings(capacity: u64) -> Settings {
    let mut settings = Settings::defaults(&events::Topics::new("").expect("topics"), "");
    for topic in settings.topics.values_mut() {
        topic.capacity = capacity;
    }
    settings
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let urls: Vec<String> = std::env::var("PAPERSTREAM_REDIS_URLS")
        .context("PAPERSTREAM_REDIS_URLS: run eval \"$(scripts/infra env)\"")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let database = test_support::TestDatabase::create().await?;
    let pool = database.pool.clone();
    settings::migrate(&pool).await?;
    let store = Store::new(pool.clone());

    let shutdown = CancellationToken::new();
    let mut receivers = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..INSTANCES {
        let mut config = WatcherConfig::new("bench", &format!("bench-{i}"), urls.clone());
        config.check_interval = Duration::from_secs(3600);
        // Each instance retunes its own topics, as a service does.
        let topics = events::Topics::new("")?;
        let appliers = vec![settings::topic_applier(topics.all_layouts(), "")];
        let (watcher, applied) = Watcher::start(store.clone(), config, appliers).await?;
        receivers.push(applied);
        tasks.push(tokio::spawn(watcher.run(shutdown.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut redis = redis::cluster::ClusterClient::new(urls)?
        .get_async_connection()
        .await?;

    let mut latencies = Vec::with_capacity(CHANGES);
    for n in 0..CHANGES {
        let document = settings(100_000 + n as u64 + 1);
        let version = store
            .change(Change {
                settings: &document,
                author: "bench",
                reason: "",
                expected_version: None,
            })
            .await?;
        let started = Instant::now();
        settings::bus::announce(&mut redis, version).await?;
        for applied in &mut receivers {
            tokio::time::timeout(
                Duration::from_secs(10),
                applied.wait_for(|a| a.version == version),
            )
            .await
            .context("a change did not arrive within 10 s")??;
        }
        latencies.push(started.elapsed());
    }
    shutdown.cancel();
    for task in tasks {
        task.await??;
    }
    drop(database);

    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    let (p50, p99, max) = (ms(pick(0.5)), ms(pick(0.99)), ms(pick(1.0)));
    println!(
        "{CHANGES} changes to {INSTANCES} instances: all applied after p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms (target 1,000 ms)"
    );
    std::fs::create_dir_all("target/bench")?;
    std::fs::write(
        "target/bench/settings_apply.json",
        serde_json::to_string_pretty(&serde_json::json!({
            "instances": INSTANCES,
            "changes": CHANGES,
            "all_applied_ms": { "p50": p50, "p99": p99, "max": max },
            "target_ms": 1000,
        }))?,
    )?;
    println!("written to target/bench/settings_apply.json");
    Ok(())
}
