//! Drills of the streams runtime on the local Redis Cluster: a full
//! partition, poison messages, a master killed, and how memory spreads.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use streams::{
    Consumer, ConsumerConfig, Durability, Error as StreamsError, Inspector, Producer,
    ProducerConfig, StartFrom, Topic, TopicConfig,
};
use tokio_util::sync::CancellationToken;

use crate::{
    harness::{self, Env, LagWatch, Probe, Tally},
    report::Report,
};

const GROUP: &str = "drill";

fn consumer_config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new(GROUP);
    config.block = Duration::from_millis(100);
    config
}

/// Start consuming `topic` into `tally`; cancel the token to stop.
fn consume(
    env: &Env,
    topic: &Topic<Probe>,
    tally: &Arc<Tally>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<streams::Result<()>>,
) {
    let stop = CancellationToken::new();
    let consumer = Consumer::new(
        env.client.clone(),
        topic,
        consumer_config(),
        harness::counting(tally.clone()),
    );
    let task = tokio::spawn(consumer.run(stop.clone()));
    (stop, task)
}

/// Consumers stop; producers write until every partition refuses with
/// `Backpressure`; consumers resume and producers send what was refused.
/// Nothing is lost or trimmed, nothing processed twice.
pub async fn stream_full(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "stream-full",
        "producers meet Backpressure instead of silent trimming; after the consumers resume, \
         every message is processed exactly once and in key order",
    );
    let capacity = env.scale(200, 5_000);
    let mut config = TopicConfig::new(harness::unique_topic("full"), 3);
    config.capacity = capacity;
    config.backpressure_retry_after = Duration::from_millis(50);
    let topic: Topic<Probe> = Topic::new(config)?;
    streams::ensure_group(&env.client, topic.layout(), GROUP, StartFrom::Beginning).await?;
    let producer = Producer::new(env.client.clone(), ProducerConfig::default());
    let lag_watch = LagWatch::start(&env.client, topic.layout().clone(), GROUP);

    // Twice what fits, with nobody consuming.
    let total = capacity * 3 * 2;
    let keys = 30;
    let mut refused = Vec::new();
    let mut accepted = 0_u64;
    for n in 0..total {
        let probe = Probe::new(n, keys);
        match producer.send(&topic, &probe.key, &probe).await {
            Ok(_) => accepted += 1,
            Err(StreamsError::Backpressure(_)) => refused.push(probe),
            Err(err) => return Err(err.into()),
        }
    }
    let inspector = Inspector::new(env.client.clone());
    let stored: u64 = inspector
        .partitions(topic.layout())
        .await?
        .iter()
        .map(|p| p.length)
        .sum();
    // The peak: everything stored is waiting for the stopped consumers.
    let lag_while_stopped = harness::lag(&inspector, topic.layout(), GROUP).await?;
    report.detail("capacity_per_partition", capacity);
    report.detail("accepted_while_stopped", accepted);
    report.detail("refused_with_backpressure", refused.len());
    report.detail("stored_while_stopped", stored);

    // Resume, and send the refused ones again, in order per key, waiting
    // out the hint whenever a partition is still full.
    let tally = Arc::new(Tally::default());
    let resumed = tokio::time::Instant::now();
    let (stop, consuming) = consume(env, &topic, &tally);
    let mut waits = 0_u64;
    for probe in &refused {
        loop {
            match producer.send(&topic, &probe.key, probe).await {
                Ok(_) => break,
                Err(StreamsError::Backpressure(b)) => {
                    waits += 1;
                    tokio::time::sleep(b.retry_after).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    let caught_up = harness::wait_until(Duration::from_secs(120), async || {
        tally.processed() >= total
    })
    .await;
    report.recovered_after(resumed.elapsed());
    stop.cancel();
    consuming.await??;
    report.detail("backpressure_waits_after_resume", waits);
    report.sent = total;
    report.processed = tally.processed();
    report.duplicates = tally.duplicates();
    report.lost = tally.missing(&(0..total).collect::<Vec<_>>());
    report.dead_lettered = harness::dead_letters(&inspector, topic.layout()).await?;
    report.peak_lag = lag_watch.finish().await.max(lag_while_stopped);
    let out_of_order = tally.out_of_order_keys();
    report.detail("keys_out_of_order", out_of_order);
    report.passed = caught_up
        && !refused.is_empty()
        && stored == accepted
        && report.lost == 0
        && report.duplicates == 0
        && report.dead_lettered == 0
        && out_of_order == 0;
    harness::remove_topic(env, topic.layout()).await?;
    Ok(report)
}

/// Malformed entries (no envelope, an unknown schema version, a payload
/// that does not decode) among good messages: each goes to the DLQ with its
/// reason and the consumer handles every good message.
pub async fn poison(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "poison",
        "every malformed entry is dead-lettered with its reason, every good message is \
         processed once, and the consumer keeps running",
    );
    let topic: Topic<Probe> = Topic::new(TopicConfig::new(harness::unique_topic("poison"), 3))?;
    streams::ensure_group(&env.client, topic.layout(), GROUP, StartFrom::Beginning).await?;
    let tally = Arc::new(Tally::default());
    let (stop, consuming) = consume(env, &topic, &tally);
    let lag_watch = LagWatch::start(&env.client, topic.layout().clone(), GROUP);
    let producer = Producer::new(env.client.clone(), ProducerConfig::default());
    let good = env.scale(300, 10_000);
    let poison_every = 10;
    let mut redis = env.redis().await?;
    let mut injected = 0_u64;
    let started = tokio::time::Instant::now();
    for n in 0..good {
        let probe = Probe::new(n, 12);
        producer.send(&topic, &probe.key, &probe).await?;
        if n % poison_every == 0 {
            let partition = &topic.layout().partitions[(n % 3) as usize];
            let fields: &[(&str, &str)] = match (n / poison_every) % 3 {
                0 => &[("hello", "world")],
                1 => &[
                    ("meta", "future 99 0 0 key-x"),
                    ("data", r#"{"n":0,"key":"x"}"#),
                ],
                _ => &[("meta", "garbage 1 0 0 key-y"), ("data", "{not json")],
            };
            let _: String = redis::cmd("XADD")
                .arg(&partition.stream)
                .arg("*")
                .arg(fields)
                .query_async(&mut redis)
                .await?;
            injected += 1;
        }
    }
    let inspector = Inspector::new(env.client.clone());
    let done = harness::wait_until(Duration::from_secs(60), async || {
        tally.processed() >= good
            && harness::dead_letters(&inspector, topic.layout())
                .await
                .is_ok_and(|d| d >= injected)
    })
    .await;
    report.recovered_after(started.elapsed());
    let still_running = !consuming.is_finished();
    stop.cancel();
    consuming.await??;
    let reasons = harness::dead_letter_reasons(&inspector, topic.layout(), false).await?;
    report.sent = good + injected;
    report.processed = tally.processed();
    report.duplicates = tally.duplicates();
    report.lost = tally.missing(&(0..good).collect::<Vec<_>>());
    report.dead_lettered = harness::dead_letters(&inspector, topic.layout()).await?;
    report.peak_lag = lag_watch.finish().await;
    report.detail("malformed_injected", injected);
    report.detail("dead_letter_reasons", &reasons);
    report.detail("consumer_alive_throughout", still_running);
    report.passed = done
        && still_running
        && report.lost == 0
        && report.duplicates == 0
        && report.dead_lettered == injected
        && !reasons.contains_key("none");
    harness::remove_topic(env, topic.layout()).await?;
    Ok(report)
}

/// Used memory of each master, by address.
async fn master_memory(inspector: &Inspector) -> anyhow::Result<BTreeMap<String, u64>> {
    Ok(inspector
        .node_memory()
        .await?
        .into_iter()
        .filter(|n| n.role == "master")
        .map(|n| (n.address, n.used_bytes))
        .collect())
}

async fn load_and_measure(
    env: &Env,
    partitions: u16,
    messages: u64,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let inspector = Inspector::new(env.client.clone());
    let mut config = TopicConfig::new(harness::unique_topic("memory"), partitions);
    config.capacity = messages + 1;
    let topic: Topic<Probe> = Topic::new(config)?;
    streams::ensure_group(&env.client, topic.layout(), GROUP, StartFrom::Beginning).await?;
    let before = master_memory(&inspector).await?;
    let producer = Producer::new(env.client.clone(), ProducerConfig::default());
    let batch = 1000;
    let mut n = 0;
    while n < messages {
        let probes: Vec<Probe> = (n..(n + batch).min(messages))
            .map(|i| Probe::new(i, 10_000))
            .collect();
        for sent in producer
            .send_batch(
                &topic,
                probes.iter().map(|p| streams::Outgoing::new(&p.key, p)),
            )
            .await?
        {
            sent?;
        }
        n += batch;
    }
    let after = master_memory(&inspector).await?;
    harness::remove_topic(env, topic.layout()).await?;
    Ok(after
        .into_iter()
        .map(|(node, used)| {
            let base = before.get(&node).copied().unwrap_or(0);
            (node, used.saturating_sub(base))
        })
        .collect())
}

fn spread(per_master: &BTreeMap<String, u64>) -> f64 {
    let max = per_master.values().copied().max().unwrap_or(0) as f64;
    let min = per_master.values().copied().min().unwrap_or(0).max(1) as f64;
    max / min
}

/// The original system's finding, repeated: the same messages in one
/// partition load one master; spread over partitions they load all three
/// evenly.
pub async fn memory_spread(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "memory-spread",
        "partitioned, the memory the messages take on each master is within 10% \
         (max/min <= 1.1)",
    );
    let messages = env.scale(60_000, 1_000_000);
    let single = load_and_measure(env, 1, messages).await?;
    let partitioned = load_and_measure(env, 6, messages).await?;
    let mib = |m: &BTreeMap<String, u64>| -> BTreeMap<String, f64> {
        m.iter()
            .map(|(k, v)| (k.clone(), (*v as f64 / 1_048_576.0 * 10.0).round() / 10.0))
            .collect()
    };
    report.sent = messages * 2;
    report.processed = messages * 2;
    report.detail("messages_per_load", messages);
    report.detail("single_partition_mib_per_master", mib(&single));
    report.detail("six_partitions_mib_per_master", mib(&partitioned));
    let partitioned_spread = spread(&partitioned);
    let single_total: u64 = single.values().sum();
    let busiest = single.values().copied().max().unwrap_or(0);
    report.detail(
        "single_partition_share_on_one_master",
        (busiest as f64 / single_total.max(1) as f64 * 100.0).round() / 100.0,
    );
    report.detail("six_partitions_max_over_min", partitioned_spread);
    report.passed = partitioned.len() == 3 && partitioned_spread <= 1.1;
    Ok(report)
}

/// `kill -9` the master of a partition while producing durably (WAIT for
/// a replica) and consuming: after the failover both carry on, and every
/// message the producer saw acknowledged is processed.
pub async fn redis_failover(env: &Env) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "redis-failover",
        "every message acknowledged to the producer (durably, WAIT 1) is processed after a \
         master is killed; repeats only from redelivery",
    );
    let topic: Topic<Probe> = Topic::new(TopicConfig::new(harness::unique_topic("failover"), 6))?;
    streams::ensure_group(&env.client, topic.layout(), GROUP, StartFrom::Beginning).await?;
    let tally = Arc::new(Tally::default());
    let (stop, consuming) = consume(env, &topic, &tally);
    let lag_watch = LagWatch::start(&env.client, topic.layout().clone(), GROUP);
    let producer = Producer::new(
        env.client.clone(),
        ProducerConfig {
            durability: Durability::Replicated {
                replicas: 1,
                timeout: Duration::from_secs(1),
            },
            ..ProducerConfig::default()
        },
    );
    let total = env.scale(2_000, 20_000);
    let victim = env
        .client
        .placement(topic.layout())
        .await?
        .partitions
        .first()
        .map(|(_, _, master)| master.clone())
        .ok_or_else(|| anyhow::anyhow!("no placement"))?;
    let mut acknowledged = Vec::new();
    let mut refused = 0_u64;
    let mut killed_at = None;
    let mut first_success_after_kill = None;
    let mut restoring = None;
    for n in 0..total {
        if n == total / 3 {
            crate::local::kill_redis_node(&victim)?;
            killed_at = Some(tokio::time::Instant::now());
            // As a supervisor would: once a replica has taken over, start
            // the dead node again so that it replicates the new master
            // (durable writes need a replica to answer WAIT).
            let client = env.client.clone();
            let layout = topic.layout().clone();
            let victim = victim.clone();
            restoring = Some(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while tokio::time::Instant::now() < deadline {
                    let master = client
                        .placement(&layout)
                        .await
                        .ok()
                        .and_then(|p| p.partitions.first().map(|(_, _, m)| m.clone()));
                    if master.is_some_and(|m| m != victim) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                tokio::task::spawn_blocking(crate::local::restore_redis).await
            }));
        }
        let probe = Probe::new(n, 24);
        match producer.send(&topic, &probe.key, &probe).await {
            Ok(_) => {
                acknowledged.push(n);
                if killed_at.is_some()
                    && first_success_after_kill.is_none()
                    && topic.partition_for(&probe.key) == 0
                {
                    first_success_after_kill = Some(tokio::time::Instant::now());
                }
            }
            Err(err) => {
                refused += 1;
                tracing::debug!(%err, n, "send failed during the failover");
            }
        }
    }
    let caught_up = harness::wait_until(Duration::from_secs(60), async || {
        tally.missing(&acknowledged) == 0
    })
    .await;
    if let (Some(killed), Some(resumed)) = (killed_at, first_success_after_kill) {
        report.recovered_after(resumed - killed);
    }
    stop.cancel();
    consuming.await??;
    if let Some(restoring) = restoring {
        restoring.await???;
    }
    report.sent = total;
    report.processed = tally.processed();
    report.duplicates = tally.duplicates();
    report.lost = tally.missing(&acknowledged);
    report.peak_lag = lag_watch.finish().await;
    report.detail("killed_master", &victim);
    report.detail("acknowledged", acknowledged.len());
    report.detail("refused_during_failover", refused);
    report.passed = caught_up && report.lost == 0 && first_success_after_kill.is_some();
    harness::remove_topic(env, topic.layout()).await?;
    Ok(report)
}
