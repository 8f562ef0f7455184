//! Helpers shared by the integration tests.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use streams::{
    Batch, ClientConfig, Consumer, ConsumerConfig, Event, Handler, Producer, ProducerConfig,
    RetryPolicy, StreamsClient, Topic, TopicConfig,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A message that knows its place in its key's sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Numbered {
    pub key: String,
    pub seq: u64,
}

impl Event for Numbered {
    const SCHEMA_VERSION: u32 = 1;
}

pub async fn connect(urls: Vec<String>) -> StreamsClient {
    test_support::init_tracing();
    StreamsClient::connect(ClientConfig::new(urls))
        .await
        .expect("connect to the test cluster")
}

pub async fn shared_client() -> StreamsClient {
    connect(test_support::shared_redis_urls()).await
}

pub fn topic_config(partitions: u16) -> TopicConfig {
    let mut config = TopicConfig::new(test_support::unique_name("t"), partitions);
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        factor: 2.0,
    };
    config.max_attempts = 3;
    config.retain_acked = Duration::from_secs(3600);
    config
}

pub fn topic(config: TopicConfig) -> Topic<Numbered> {
    Topic::new(config).expect("valid topic")
}

/// Short leases and reads, so that tests see takeovers in seconds.
pub fn consumer_config(group: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group).with_lease_ttl(Duration::from_millis(1500));
    config.consumer_name = test_support::unique_name("c");
    config.block = Duration::from_millis(100);
    config.batch_size = 100;
    config.maintenance_interval = Duration::from_millis(200);
    config
}

pub fn producer(client: &StreamsClient) -> Producer {
    Producer::new(client.clone(), ProducerConfig::default())
}

/// Send `count` messages for each of `keys` keys, interleaved, in batches.
pub async fn produce_numbered(
    producer: &Producer,
    topic: &Topic<Numbered>,
    keys: usize,
    count: u64,
) {
    let messages: Vec<Numbered> = (0..count)
        .flat_map(|seq| {
            (0..keys).map(move |k| Numbered {
                key: format!("key-{k}"),
                seq,
            })
        })
        .collect();
    for chunk in messages.chunks(500) {
        let results = producer
            .send_batch(
                topic,
                chunk.iter().map(|m| streams::Outgoing::new(&m.key, m)),
            )
            .await
            .expect("encode");
        for r in results {
            r.expect("send");
        }
    }
}

/// One processed message, as the recording handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub key: String,
    pub seq: u64,
    pub consumer: String,
    pub partition: u16,
    pub attempt: u32,
    pub message_id: String,
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

/// A handler that records every message and acknowledges it.
pub fn recording(consumer: &str, log: &Log) -> impl Handler<Numbered> + use<> {
    let consumer = consumer.to_owned();
    let log = log.clone();
    move |batch: Batch<Numbered>| {
        let consumer = consumer.clone();
        let log = log.clone();
        async move {
            let outcomes = batch.ack_all();
            record(&log, &consumer, &batch);
            outcomes
        }
    }
}

impl Seen {
    pub fn of(consumer: &str, m: &streams::Message<Numbered>) -> Self {
        Self {
            key: m.payload.key.clone(),
            seq: m.payload.seq,
            consumer: consumer.to_owned(),
            partition: m.partition,
            attempt: m.attempt,
            message_id: m.id.clone(),
        }
    }
}

pub fn record(log: &Log, consumer: &str, batch: &Batch<Numbered>) {
    let mut log = log.lock().expect("log lock");
    log.extend(batch.messages.iter().map(|m| Seen::of(consumer, m)));
}

/// A consumer running on the test's runtime, stopped gracefully.
pub struct Running {
    pub name: String,
    shutdown: CancellationToken,
    task: JoinHandle<streams::Result<()>>,
}

impl Running {
    pub fn start<H: Handler<Numbered>>(
        client: &StreamsClient,
        topic: &Topic<Numbered>,
        config: ConsumerConfig,
        handler: H,
    ) -> Self {
        let name = config.consumer_name.clone();
        let shutdown = CancellationToken::new();
        let consumer = Consumer::new(client.clone(), topic, config, handler);
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        Self {
            name,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("consumer task")
            .expect("consumer run");
    }
}

/// A consumer on a runtime of its own, which can be killed: every task
/// and connection of it vanishes at once, as in a crashed process.
pub struct Killable {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Killable {
    pub fn start<H: Handler<Numbered>>(
        urls: Vec<String>,
        topic: &Topic<Numbered>,
        config: ConsumerConfig,
        handler: H,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let topic = topic.clone();
        runtime.spawn(async move {
            let client = StreamsClient::connect(ClientConfig::new(urls))
                .await
                .expect("connect");
            let consumer = Consumer::new(client, &topic, config, handler);
            consumer.run(CancellationToken::new()).await
        });
        Self {
            runtime: Some(runtime),
        }
    }

    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn seen_count(log: &Log) -> usize {
    log.lock().expect("log lock").len()
}

/// Every key's sequence, in processing order.
pub fn per_key(log: &Log) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut out: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for seen in log.lock().expect("log lock").iter() {
        out.entry(seen.key.clone()).or_default().push(seen.seq);
    }
    out
}

/// The metrics this process records, for tests that check a counter.
pub fn recorded_metrics() -> &'static metrics_util::debugging::Snapshotter {
    static SNAPSHOTTER: std::sync::OnceLock<metrics_util::debugging::Snapshotter> =
        std::sync::OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("install the metrics recorder");
        snapshotter
    })
}

/// Total of counter `name` over the series labelled with `topic`. The
/// recorder hands out counter increments since the last snapshot, so the
/// totals are kept here.
pub fn counter_for_topic(name: &str, topic: &str) -> u64 {
    static TOTALS: std::sync::OnceLock<Mutex<std::collections::HashMap<(String, String), u64>>> =
        std::sync::OnceLock::new();
    let mut totals = TOTALS
        .get_or_init(Default::default)
        .lock()
        .expect("totals lock");
    for (key, _, _, value) in recorded_metrics().snapshot().into_vec() {
        let metrics_util::debugging::DebugValue::Counter(n) = value else {
            continue;
        };
        let topic_label = key
            .key()
            .labels()
            .find(|l| l.key() == "topic")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        *totals
            .entry((key.key().name().to_owned(), topic_label))
            .or_default() += n;
    }
    totals
        .get(&(name.to_owned(), topic.to_owned()))
        .copied()
        .unwrap_or(0)
}

/// A plain cluster connection to the shared test cluster, for commands
/// the runtime does not send (a ghost read, a trim by hand).
pub async fn redis_connection() -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(test_support::shared_redis_urls())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connection")
}

/// Record one message as handled.
pub fn record_one(log: &Log, m: &streams::Message<Numbered>) {
    log.lock().expect("log lock").push(Seen::of("", m));
}

pub fn node_used_memory(port: u16) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "memory"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory")
}

pub fn set_maxmemory(port: u16, bytes: u64) {
    let status = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &port.to_string(),
            "CONFIG",
            "SET",
            "maxmemory",
            &bytes.to_string(),
        ])
        .status()
        .expect("redis-cli");
    assert!(status.success());
}

/// A one-partition topic on a private cluster, with `group` created, for
/// tests that fill a node: retention keeps nothing acknowledged, and the
/// capacity never refuses first. Returns the cluster, a client, the topic
/// and the port of the partition's master.
pub async fn topic_on_a_private_cluster(
    group: &str,
) -> (
    test_support::RedisCluster,
    StreamsClient,
    Topic<Numbered>,
    u16,
) {
    let cluster = tokio::task::spawn_blocking(test_support::RedisCluster::start)
        .await
        .expect("join")
        .expect("private cluster");
    let client = connect(cluster.urls()).await;
    let mut config = topic_config(1);
    config.retain_acked = Duration::ZERO;
    config.capacity = 10_000_000;
    let topic = topic(config);
    streams::ensure_group(
        &client,
        topic.layout(),
        group,
        streams::StartFrom::Beginning,
    )
    .await
    .expect("group");
    let master = cluster
        .master_of_slot(topic.layout().partitions[0].slot)
        .expect("master");
    (cluster, client, topic, master)
}

/// A Redis user on every node of the shared cluster, allowed everything
/// but what a test takes away; deleted when dropped.
pub struct TestUser {
    name: String,
    urls: Vec<String>,
}

impl TestUser {
    pub fn new(prefix: &str) -> Self {
        let user = Self {
            name: test_support::unique_name(prefix),
            urls: test_support::shared_redis_urls(),
        };
        for rule in ["reset", "on", ">secret", "~*", "&*", "+@all"] {
            user.acl(rule);
        }
        user
    }

    /// Apply one `ACL SETUSER` rule on every node, e.g. `-xadd`.
    pub fn acl(&self, rule: &str) {
        for url in &self.urls {
            let out = test_support::redis_cli_for(url)
                .args(["ACL", "SETUSER", &self.name, rule])
                .output()
                .expect("redis-cli");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK", "{out:?}");
        }
    }

    /// Seed URLs that log in as this user.
    pub fn urls(&self) -> Vec<String> {
        self.urls
            .iter()
            .map(|u| test_support::url_as(u, &self.name, "secret"))
            .collect()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for url in &self.urls {
            let _ = test_support::redis_cli_for(url)
                .args(["ACL", "DELUSER", &self.name])
                .output();
        }
    }
}

/// Wait until partition `partition` of `topic` holds `count` dead letters.
pub async fn wait_for_dead_letters(
    client: &StreamsClient,
    topic: &Topic<Numbered>,
    partition: u16,
    count: u64,
) {
    let inspector = streams::Inspector::new(client.clone());
    wait_until(
        Duration::from_secs(10),
        &format!("{count} dead letter(s)"),
        || async {
            inspector
                .partition(topic.layout(), partition)
                .await
                .is_ok_and(|r| r.dlq_length == count)
        },
    )
    .await;
}
