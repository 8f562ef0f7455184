//! Throughput of the runtime against raw Redis, in one run on one machine.
//!
//! `cargo bench -p streams` starts a private 3+3 Redis Cluster and measures:
//! 1. raw pipelined XADD with `redis-benchmark` (one process per master,
//!    concurrently, into the same stream keys the runtime uses);
//! 2. this runtime's produce throughput (batches, capacity check in Lua);
//! 3. the same end to end with bare commands, as the reference for the next:
//!    pipelined XADD, XREADGROUP and XACK per partition, one connection per
//!    master, no envelope, no capacity check, no leases, no decoding;
//! 4. end-to-end throughput: produce, consume in order across 6 partitions,
//!    acknowledge;
//! 5. memory per partition and how used memory spreads over the masters.
//!
//! It prints the figures and ratios and writes them to
//! `target/bench/streams.json`. Set `BENCH_MESSAGES` to change the load
//! (default 1,000,000).

use std::{
    collections::{BTreeMap, HashMap},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use streams::{
    Batch, ClientConfig, Consumer, ConsumerConfig, Event, Inspector, Outgoing, Producer,
    ProducerConfig, StartFrom, StreamsClient, Topic, TopicConfig,
};
use test_support::RedisCluster;
use tokio_util::sync::CancellationToken;

// As the services do: glibc's allocator costs a quarter of the client's CPU here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paper {
    arxiv_id: String,
    seq: u64,
    title: String,
}

impl Event for Paper {
    const SCHEMA_VERSION: u32 = 1;
}

const PARTITIONS: u16 = 6;
const KEYS: u64 = 10_000;

fn message(seq: u64) -> Paper {
    Paper {
        arxiv_id: format!("2611.{:05}", seq % KEYS),
        seq: seq / KEYS,
        title: "Partitioned streams for per-key ordering at scale".into(),
    }
}

fn main() -> anyhow::Result<()> {
    let total: u64 = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000u64)
        .div_ceil(KEYS)
        * KEYS;
    eprintln!("starting a private Redis Cluster (3 masters, 3 replicas)...");
    let cluster = RedisCluster::start()?;
    for port in cluster.ports() {
        Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CONFIG", "SET", "maxmemory", "4gb"])
            .output()?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cluster, total))?;
    let json = serde_json::to_string_pretty(&report)?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("streams.json"), &json)?;
    println!("{json}");
    println!("written to target/bench/streams.json");
    Ok(())
}

#[derive(Debug, Serialize)]
struct Report {
    messages: u64,
    payload_bytes: usize,
    raw_pipelined_xadd_per_s: f64,
    produce_per_s: f64,
    produce_ratio_to_raw: f64,
    /// Bare XADD → XREADGROUP → XACK over the same 6 partitions: what Redis
    /// itself allows end to end on this machine.
    raw_end_to_end_per_s: f64,
    end_to_end_per_s: f64,
    end_to_end_ratio_to_raw_end_to_end: f64,
    end_to_end_in_order: bool,
    raw_cpu: CpuUse,
    raw_end_to_end_cpu: CpuUse,
    /// Server time per command over the end-to-end run, all nodes:
    /// `(calls, usec)`; commands run inside scripts count on their own.
    end_to_end_commands: BTreeMap<String, (u64, u64)>,
    produce_cpu: CpuUse,
    end_to_end_cpu: CpuUse,
    memory_bytes_per_partition: BTreeMap<u16, u64>,
    master_used_memory_bytes: BTreeMap<String, u64>,
    master_memory_max_over_min: f64,
}

async fn run(cluster: &RedisCluster, total: u64) -> anyhow::Result<Report> {
    let client = StreamsClient::connect(ClientConfig::new(cluster.urls())).await?;
    let payload_bytes = serde_json::to_vec(&message(0))?.len();

    let cpu = CpuMeter::start(&client).await?;
    let raw = raw_xadd(&client, total, payload_bytes).await?;
    let raw_cpu = cpu.stop(&client).await?;
    eprintln!("raw pipelined XADD: {raw:.0}/s; cpu {raw_cpu:?}");

    // Produce only, into a topic with one (idle) group, as in production.
    let produce_topic = topic("bench.produce", total)?;
    streams::ensure_group(
        &client,
        produce_topic.layout(),
        "idle",
        StartFrom::Beginning,
    )
    .await?;
    let baseline = master_memory(&client).await?;
    let cpu = CpuMeter::start(&client).await?;
    let started = Instant::now();
    produce_in_key_order(&client, &produce_topic, total).await?;
    let produce = total as f64 / started.elapsed().as_secs_f64();
    let produce_cpu = cpu.stop(&client).await?;
    eprintln!(
        "produce: {produce:.0}/s ({:.2} x raw); cpu {produce_cpu:?}",
        produce / raw
    );

    let inspector = Inspector::new(client.clone());
    let report = inspector.topic(produce_topic.layout()).await?;
    let memory_bytes_per_partition: BTreeMap<u16, u64> = report
        .partitions
        .iter()
        .map(|p| (p.partition, p.memory_bytes))
        .collect();
    let loaded = master_memory(&client).await?;
    let master_used_memory_bytes: BTreeMap<String, u64> = loaded
        .iter()
        .map(|(node, used)| {
            (
                node.clone(),
                used.saturating_sub(baseline.get(node).copied().unwrap_or(0)),
            )
        })
        .collect();
    let max = master_used_memory_bytes
        .values()
        .copied()
        .max()
        .unwrap_or(0) as f64;
    let min = master_used_memory_bytes
        .values()
        .copied()
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    for keys in &produce_topic.layout().partitions {
        let _: i64 = redis_del(&client, &keys.stream).await?;
    }

    let cpu = CpuMeter::start(&client).await?;
    let raw_end_to_end = raw_end_to_end(&client, total, payload_bytes).await?;
    let raw_end_to_end_cpu = cpu.stop(&client).await?;
    eprintln!("raw end to end: {raw_end_to_end:.0}/s; cpu {raw_end_to_end_cpu:?}");

    reset_command_stats(&client).await?;
    let cpu = CpuMeter::start(&client).await?;
    let (end_to_end, in_order) = end_to_end(&client, total).await?;
    let end_to_end_cpu = cpu.stop(&client).await?;
    let end_to_end_commands = command_stats(&client).await?;
    for (command, (calls, usec)) in &end_to_end_commands {
        eprintln!("  {command:<24} calls {calls:>9} usec {usec:>10}");
    }
    eprintln!(
        "end to end: {end_to_end:.0}/s ({:.2} x raw end to end), in order: {in_order}; cpu {end_to_end_cpu:?}",
        end_to_end / raw_end_to_end
    );

    Ok(Report {
        messages: total,
        payload_bytes,
        raw_pipelined_xadd_per_s: raw,
        produce_per_s: produce,
        produce_ratio_to_raw: produce / raw,
        raw_end_to_end_per_s: raw_end_to_end,
        end_to_end_per_s: end_to_end,
        end_to_end_ratio_to_raw_end_to_end: end_to_end / raw_end_to_end,
        end_to_end_in_order: in_order,
        raw_cpu,
        raw_end_to_end_cpu,
        end_to_end_commands,
        produce_cpu,
        end_to_end_cpu,
        memory_bytes_per_partition,
        master_used_memory_bytes,
        master_memory_max_over_min: max / min,
    })
}

fn topic(name: &str, total: u64) -> anyhow::Result<Topic<Paper>> {
    let mut config = TopicConfig::new(name, PARTITIONS);
    config.capacity = total * 2;
    config.retain_acked = Duration::ZERO;
    Ok(Topic::new(config)?)
}

/// `redis-benchmark -P 32` XADD into each master's first partition stream,
/// one process per master at once, with entries of the runtime's shape and
/// size.
async fn raw_xadd(client: &StreamsClient, total: u64, payload_bytes: usize) -> anyhow::Result<f64> {
    let raw_topic = topic("bench.raw", total)?;
    let placement = client.placement(raw_topic.layout()).await?;
    let mut per_master: BTreeMap<String, String> = BTreeMap::new();
    for (partition, _, master) in &placement.partitions {
        per_master.entry(master.clone()).or_insert_with(|| {
            raw_topic.layout().partitions[usize::from(*partition)]
                .stream
                .clone()
        });
    }
    let data = "x".repeat(payload_bytes);
    let per_process = total / per_master.len() as u64;
    let started = Instant::now();
    let children: Vec<_> = per_master
        .iter()
        .map(|(master, stream)| {
            let port = master
                .rsplit_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default();
            Command::new("redis-benchmark")
                .args([
                    "-p",
                    &port,
                    "-c",
                    "50",
                    "-P",
                    "32",
                    "-q",
                    "-n",
                    &per_process.to_string(),
                ])
                .args([
                    "XADD",
                    stream,
                    "*",
                    "meta",
                    "0192f1c2a4b57c3e9d6f0a1b2c3d4e5f 1 1763770000000 0 2611.00001",
                ])
                .args(["data", &data])
                .stdout(std::process::Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        child.wait()?;
    }
    let rate = (per_process * per_master.len() as u64) as f64 / started.elapsed().as_secs_f64();
    for stream in per_master.values() {
        let _: i64 = redis_del(client, stream).await?;
    }
    Ok(rate)
}

/// The end-to-end loop with bare commands: per partition, one task appends
/// pipelined XADDs (1,000 per round trip) while another reads with
/// XREADGROUP (5,000 per call) and acknowledges what it read with one XACK,
/// each on its own connection to the partition's master. Entries have the
/// runtime's shape and size. Nothing is decoded, checked or trimmed, so this
/// is the ceiling the runtime's end-to-end figure is measured against.
async fn raw_end_to_end(
    client: &StreamsClient,
    total: u64,
    payload_bytes: usize,
) -> anyhow::Result<f64> {
    let raw_topic = topic("bench.raw-e2e", total)?;
    streams::ensure_group(client, raw_topic.layout(), "raw", StartFrom::Beginning).await?;
    let placement = client.placement(raw_topic.layout()).await?;
    let per_partition = total / u64::from(PARTITIONS);
    let data = "x".repeat(payload_bytes);
    let meta = "0192f1c2a4b57c3e9d6f0a1b2c3d4e5f 1 1763770000000 0 2611.00001";
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (partition, _, master) in &placement.partitions {
        let stream = raw_topic.layout().partitions[usize::from(*partition)]
            .stream
            .clone();
        let node = redis::Client::open(format!("redis://{master}"))?;
        let mut writer = node.get_multiplexed_async_connection().await?;
        let mut reader = node.get_multiplexed_async_connection().await?;
        let (key, data) = (stream.clone(), data.clone());
        tasks.spawn(async move {
            let mut sent = 0;
            while sent < per_partition {
                let round = (per_partition - sent).min(1_000);
                let mut pipe = redis::pipe();
                for _ in 0..round {
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("meta")
                        .arg(meta)
                        .arg("data")
                        .arg(&data)
                        .ignore();
                }
                let () = pipe.query_async(&mut writer).await?;
                sent += round;
            }
            Ok::<_, redis::RedisError>(())
        });
        tasks.spawn(async move {
            let mut acked = 0;
            let options = redis::streams::StreamReadOptions::default()
                .group("raw", "reader")
                .count(5_000)
                .block(100);
            while acked < per_partition {
                // Only the ids are taken from the reply, without building
                // a map per entry, so the reference spends as little
                // client time as it can.
                let reply: redis::Value =
                    reader.xread_options(&[&stream], &[">"], &options).await?;
                let ids = entry_ids(reply);
                if ids.is_empty() {
                    continue;
                }
                let _: u64 = reader.xack(&stream, "raw", &ids).await?;
                acked += ids.len() as u64;
            }
            Ok(())
        });
    }
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    let rate = (per_partition * u64::from(PARTITIONS)) as f64 / started.elapsed().as_secs_f64();
    for keys in &raw_topic.layout().partitions {
        let _: i64 = redis_del(client, &keys.stream).await?;
    }
    Ok(rate)
}

/// The entry ids of an XREADGROUP reply for one stream:
/// `[[stream, [[id, fields], ...]]]`, or a map in RESP3.
fn entry_ids(reply: redis::Value) -> Vec<Vec<u8>> {
    let streams = match reply {
        redis::Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                redis::Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        redis::Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|entries| match entries {
            redis::Value::Array(entries) => entries,
            _ => Vec::new(),
        })
        .filter_map(|entry| match entry {
            redis::Value::Array(mut parts) if !parts.is_empty() => match parts.swap_remove(0) {
                redis::Value::BulkString(id) => Some(id),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Produce in key order while a consumer group of one process handles all
/// six partitions, checking that every key's sequence arrives in order.
async fn end_to_end(client: &StreamsClient, total: u64) -> anyhow::Result<(f64, bool)> {
    let topic = topic("bench.e2e", total)?;
    streams::ensure_group(client, topic.layout(), "bench", StartFrom::Beginning).await?;
    let handled = Arc::new(AtomicU64::new(0));
    let last_seq: Arc<Vec<Mutex<HashMap<String, u64>>>> = Arc::new(
        (0..PARTITIONS)
            .map(|_| Mutex::new(HashMap::new()))
            .collect(),
    );
    let in_order = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let handler = {
        let (handled, last_seq, in_order) = (handled.clone(), last_seq.clone(), in_order.clone());
        move |batch: Batch<Paper>| {
            let (handled, last_seq, in_order) =
                (handled.clone(), last_seq.clone(), in_order.clone());
            async move {
                {
                    let mut seen = last_seq[usize::from(batch.partition)]
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    for m in &batch.messages {
                        let expected = seen.get(&m.key).copied().unwrap_or(0);
                        if m.payload.seq != expected {
                            in_order.store(false, Ordering::Relaxed);
                        }
                        match seen.get_mut(&m.key) {
                            Some(next) => *next = m.payload.seq + 1,
                            None => {
                                seen.insert(m.key.clone(), m.payload.seq + 1);
                            }
                        }
                    }
                }
                handled.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.ack_all()
            }
        }
    };
    let mut config = ConsumerConfig::new("bench");
    config.batch_size = 5_000;
    config.max_concurrent_batches = usize::from(PARTITIONS);
    config.block = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let consumer =
        tokio::spawn(Consumer::new(client.clone(), &topic, config, handler).run(shutdown.clone()));
    // Let the consumer take its partitions before timing.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    produce_in_key_order(client, &topic, total).await?;
    let produced_after = started.elapsed();
    let handled_then = handled.load(Ordering::Relaxed);
    while handled.load(Ordering::Relaxed) < total {
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("end-to-end run did not finish");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "end to end: all produced after {produced_after:?} ({handled_then} handled by then), all handled after {:?}",
        started.elapsed()
    );
    shutdown.cancel();
    consumer.await??;
    Ok((rate, in_order.load(Ordering::Relaxed)))
}

/// Every key's messages must be sent in sequence order. Four writers split
/// the keys; each sends a few rounds (one message per key of its share per
/// round) per batch, which keeps each key's order since a batch keeps the
/// order of a partition's messages, and starts the next batch only once the
/// last one was written.
async fn produce_in_key_order(
    client: &StreamsClient,
    topic: &Topic<Paper>,
    total: u64,
) -> anyhow::Result<()> {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let writers = 4u64;
    let rounds_per_batch = 4u64;
    let rounds = total / KEYS;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (producer, topic) = (producer.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            for first in (0..rounds).step_by(rounds_per_batch as usize) {
                let messages: Vec<Paper> = (first..(first + rounds_per_batch).min(rounds))
                    .flat_map(|round| {
                        (w..KEYS)
                            .step_by(writers as usize)
                            .map(move |k| message(round * KEYS + k))
                    })
                    .collect();
                for r in producer
                    .send_batch(
                        &topic,
                        messages.iter().map(|m| Outgoing::new(&m.arxiv_id, m)),
                    )
                    .await?
                {
                    r?;
                }
            }
            Ok::<_, streams::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// CPU seconds spent by this process and by all Redis nodes over a phase,
/// to tell which side limits throughput on a shared 2-core machine.
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuUse {
    wall_s: f64,
    client_cpu_s: f64,
    redis_cpu_s: f64,
}

struct CpuMeter {
    started: Instant,
    client: f64,
    redis: f64,
}

impl CpuMeter {
    async fn start(client: &StreamsClient) -> anyhow::Result<Self> {
        Ok(Self {
            started: Instant::now(),
            client: own_cpu_seconds()?,
            redis: redis_cpu_seconds(client).await?,
        })
    }

    async fn stop(self, client: &StreamsClient) -> anyhow::Result<CpuUse> {
        Ok(CpuUse {
            wall_s: self.started.elapsed().as_secs_f64(),
            client_cpu_s: own_cpu_seconds()? - self.client,
            redis_cpu_s: redis_cpu_seconds(client).await? - self.redis,
        })
    }
}

fn own_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 here.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

async fn redis_cpu_seconds(client: &StreamsClient) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for range in client.slot_ranges().await? {
        for node in std::iter::once(range.master).chain(range.replicas) {
            let port = node
                .rsplit_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default();
            let out = Command::new("redis-cli")
                .args(["-p", &port, "INFO", "cpu"])
                .output()?;
            let info = String::from_utf8_lossy(&out.stdout);
            for field in ["used_cpu_sys:", "used_cpu_user:"] {
                total += info
                    .lines()
                    .find_map(|l| l.strip_prefix(field))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    Ok(total)
}

fn every_node(ranges: &[streams::client::SlotRange]) -> Vec<String> {
    ranges
        .iter()
        .flat_map(|r| std::iter::once(r.master.clone()).chain(r.replicas.iter().cloned()))
        .map(|node| {
            node.rsplit_once(':')
                .map(|(_, p)| p.to_owned())
                .unwrap_or_default()
        })
        .collect()
}

async fn reset_command_stats(client: &StreamsClient) -> anyhow::Result<()> {
    for port in every_node(&client.slot_ranges().await?) {
        Command::new("redis-cli")
            .args(["-p", &port, "CONFIG", "RESETSTAT"])
            .output()?;
    }
    Ok(())
}

async fn command_stats(client: &StreamsClient) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let mut stats: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for port in every_node(&client.slot_ranges().await?) {
        let out = Command::new("redis-cli")
            .args(["-p", &port, "INFO", "commandstats"])
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some((name, fields)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let entry = stats.entry(name.to_owned()).or_default();
            entry.0 += field("calls");
            entry.1 += field("usec");
        }
    }
    Ok(stats)
}

async fn master_memory(client: &StreamsClient) -> anyhow::Result<BTreeMap<String, u64>> {
    let nodes = Inspector::new(client.clone()).node_memory().await?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.role == "master")
        .map(|n| (n.address, n.used_bytes))
        .collect())
}

async fn redis_del(client: &StreamsClient, key: &str) -> anyhow::Result<i64> {
    let mut conn = redis::cluster::ClusterClient::new(client.config().nodes.clone())?
        .get_async_connection()
        .await?;
    Ok(redis::cmd("DEL").arg(key).query_async(&mut conn).await?)
}
