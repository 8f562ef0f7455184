//! The fault drill: randomized fault schedules against consumer processes,
//! with an order and effects checker.
//!
//! Each schedule runs three consumer processes (this binary, `drill
//! faults-consumer`) over a fresh three-partition topic on the local
//! cluster. Their handler writes every message's effect through
//! `idempotency::postgres` (fenced, deduplicated by message id) into a
//! history table: key, sequence number, fencing token, consumer. A
//! producer sends keyed, numbered messages, each key's next one only after
//! the previous was acknowledged. Meanwhile a nemesis, drawn from the
//! schedule's seed, injects faults one after another:
//! * `pause`: `SIGSTOP` a consumer for longer than its lease, then `SIGCONT`;
//! * `kill`: `SIGKILL` a consumer and start it again;
//! * `kill-master`: `kill -9` the master of a partition, wait for the
//!   failover, start the node again;
//! * `cut`: cut a consumer off from one master: its Redis user is turned
//!   off there and its connections closed, so every command it sends that
//!   node fails as over a broken link, while it reaches the other masters;
//! * `migrate`: move a partition's slot to another master, key by key with
//!   pauses (the slot is half-moved for a while), and back later;
//! * `maxmemory`: lower a master's `maxmemory` under its use, then restore.
//!
//! After healing, the checker requires: every acknowledged send in the
//! history exactly once, each key's sequence strictly increasing in the
//! order the effects were committed, nothing pending with a consumer that
//! does not own its partition, and nothing stuck (every entry read and
//! acknowledged). A failure prints the seed and the key's history around
//! the violation; `drill faults --seed N` runs that schedule again.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    process::{Child, Command},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use streams::{
    Batch, ConsumerConfig, Durability, Event, Outcomes, Outgoing, Producer, ProducerConfig,
    RetryPolicy, StreamsClient, Topic, TopicConfig, idempotency::postgres as pg,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::{
    harness::{self, Env},
    local,
    report::Report,
};

const GROUP: &str = "faults";
const PARTITIONS: u16 = 3;
const CONSUMERS: usize = 3;
const KEYS: usize = 12;
/// Short, so that pauses past it fit in a schedule of a few seconds.
const LEASE_TTL: Duration = Duration::from_millis(2000);
const USER_PASSWORD: &str = "faults-drill";

/// A keyed, numbered message: the checker's unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Step {
    key: String,
    seq: u64,
}

impl Event for Step {
    const SCHEMA_VERSION: u32 = 1;
}

fn topic_config(name: &str) -> TopicConfig {
    let mut config = TopicConfig::new(name, PARTITIONS);
    // Retries, never dead letters: a message that runs out of attempts would
    // leave the sequence, and the checker could not tell it from a loss.
    config.max_attempts = 1000;
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        factor: 2.0,
    };
    config
}

/// What the consumer process needs, passed through its environment.
const ENV_TOPIC: &str = "FAULTS_TOPIC";
const ENV_NAME: &str = "FAULTS_CONSUMER";
const ENV_DB: &str = "FAULTS_DATABASE_URL";

/// `drill faults-consumer`: one consumer process of a schedule. Runs until
/// SIGTERM, then stops gracefully.
pub async fn consumer_process() -> anyhow::Result<()> {
    let urls: Vec<String> = std::env::var("PAPERSTREAM_REDIS_URLS")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let topic_name = std::env::var(ENV_TOPIC)?;
    let name = std::env::var(ENV_NAME)?;
    let pool = PgPool::connect(&std::env::var(ENV_DB)?).await?;
    let client = StreamsClient::connect(streams::ClientConfig::new(urls)).await?;
    let topic = Topic::<Step>::new(topic_config(&topic_name))?;
    let mut config = ConsumerConfig::new(GROUP).with_lease_ttl(LEASE_TTL);
    config.consumer_name = name.clone();
    config.batch_size = 50;
    config.block = Duration::from_millis(200);
    config.maintenance_interval = Duration::from_millis(250);
    let handler = move |batch: Batch<Step>| {
        let (pool, name) = (pool.clone(), name.clone());
        async move { write_history(&pool, &name, &batch).await }
    };
    let consumer = streams::Consumer::new(client, &topic, config, handler);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        stop.cancel();
    });
    consumer.run(shutdown).await?;
    Ok(())
}

/// The handler's effects: one history row per message, in one fenced
/// transaction per batch. A refused fence or any database error retries
/// the batch.
async fn write_history(pool: &PgPool, consumer: &str, batch: &Batch<Step>) -> Outcomes {
    let result: anyhow::Result<bool> = async {
        let mut tx = pool.begin().await?;
        if !pg::fence(&mut tx, &batch.fence).await? {
            return Ok(false);
        }
        for m in &batch.messages {
            if !pg::first_delivery(&mut tx, GROUP, &m.id).await? {
                continue;
            }
            sqlx::query(
                "INSERT INTO history (topic, key, seq, token, consumer, message_id)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&batch.fence.topic)
            .bind(&m.payload.key)
            .bind(i64::try_from(m.payload.seq)?)
            .bind(i64::try_from(batch.fence.token)?)
            .bind(consumer)
            .bind(&m.id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => batch.ack_all(),
        Ok(false) => Outcomes::retry_all(batch.len(), "fenced: the lease passed on"),
        Err(err) => Outcomes::retry_all(batch.len(), err),
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Fault {
    Pause {
        consumer: usize,
        ms: u64,
    },
    Kill {
        consumer: usize,
    },
    KillMaster {
        partition: u16,
    },
    Cut {
        consumer: usize,
        partition: u16,
        ms: u64,
    },
    Migrate {
        partition: u16,
    },
    Maxmemory {
        partition: u16,
        ms: u64,
    },
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Self::Pause { .. } => "pause",
            Self::Kill { .. } => "kill",
            Self::KillMaster { .. } => "kill-master",
            Self::Cut { .. } => "cut",
            Self::Migrate { .. } => "migrate",
            Self::Maxmemory { .. } => "maxmemory",
        }
    }
}

/// A schedule: when each fault starts, drawn from `seed`.
#[derive(Debug, Clone, Serialize)]
struct Schedule {
    seed: u64,
    load_ms: u64,
    faults: Vec<(u64, Fault)>,
}

impl Schedule {
    fn draw(seed: u64, quick: bool) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let load_ms = if quick { 2500 } else { 3000 };
        let count = rng.usize(1..=if quick { 2 } else { 3 });
        let lease = LEASE_TTL.as_millis() as u64;
        let mut at = rng.u64(200..800);
        let mut faults = Vec::with_capacity(count);
        for n in 0..count {
            let consumer = rng.usize(0..CONSUMERS);
            let partition = rng.u16(0..PARTITIONS);
            // The first fault's kind follows the seed, so that any six
            // consecutive seeds (the quick version's included) inject every
            // kind; a master kill costs a failover (seconds), so the rest
            // draw it more rarely.
            let kind = match (n, seed % 6) {
                (0, 0) => 0,
                (0, 1) => 2,
                (0, 2) => 4,
                (0, 3) => 5,
                (0, 4) => 7,
                (0, _) => 9,
                _ => rng.u32(0..11),
            };
            let fault = match kind {
                0 | 1 => Fault::Pause {
                    consumer,
                    ms: lease + rng.u64(300..1500),
                },
                2 | 3 => Fault::Kill { consumer },
                4 => Fault::KillMaster { partition },
                5 | 6 => Fault::Cut {
                    consumer,
                    partition,
                    ms: rng.u64(500..lease + 1500),
                },
                7 | 8 => Fault::Migrate { partition },
                _ => Fault::Maxmemory {
                    partition,
                    ms: rng.u64(300..1500),
                },
            };
            faults.push((at, fault));
            at += rng.u64(300..1200);
        }
        Self {
            seed,
            load_ms,
            faults,
        }
    }
}

/// What one schedule found.
#[derive(Debug, Default, Serialize)]
struct Outcome {
    seed: u64,
    acknowledged: u64,
    lost: u64,
    duplicates: u64,
    order_violations: u64,
    stranded: u64,
    /// The history of the first violating key, when there is one.
    evidence: Vec<String>,
}

impl Outcome {
    fn violations(&self) -> u64 {
        self.lost + self.duplicates + self.order_violations + self.stranded
    }
}

/// `drill faults`: `schedules` schedules from `first_seed` on.
pub async fn faults(
    env: &Env,
    seed: Option<u64>,
    schedules: Option<u64>,
    out: &std::path::Path,
) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "faults",
        "under randomized pauses, kills, master kills, cut links, slot migrations and full \
         nodes: every acknowledged send takes effect exactly once, in key order, and nothing \
         is stranded",
    );
    let schedules = match (seed, schedules) {
        (Some(_), _) => 1,
        (None, Some(count)) => count,
        (None, None) => env.scale(20, 500),
    };
    let first_seed = seed.unwrap_or_else(|| fastrand::u64(..1 << 40));
    let db = test_support::TestDatabase::create()
        .await
        .context("a throwaway database")?;
    prepare_database(&db.pool).await?;
    let logs = out.join("faults-logs");
    std::fs::create_dir_all(&logs)?;
    let started = Instant::now();
    let mut injected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failed: Vec<Outcome> = Vec::new();
    let (mut acknowledged, mut lost, mut duplicates, mut order, mut stranded) = (0, 0, 0, 0, 0);
    for index in 0..schedules {
        let schedule = Schedule::draw(first_seed + index, env.quick);
        for (_, fault) in &schedule.faults {
            *injected.entry(fault.kind()).or_default() += 1;
        }
        let outcome = run_schedule(env, &db, &logs, &schedule)
            .await
            .with_context(|| format!("schedule with seed {}", schedule.seed))?;
        acknowledged += outcome.acknowledged;
        lost += outcome.lost;
        duplicates += outcome.duplicates;
        order += outcome.order_violations;
        stranded += outcome.stranded;
        if outcome.violations() > 0 {
            eprintln!(
                "faults: seed {} broke the invariant: {} lost, {} duplicate, {} out of order, \
                 {} stranded; schedule {:?}\n  {}",
                outcome.seed,
                outcome.lost,
                outcome.duplicates,
                outcome.order_violations,
                outcome.stranded,
                schedule.faults,
                outcome.evidence.join("\n  ")
            );
            failed.push(outcome);
        }
        if (index + 1) % 10 == 0 || index + 1 == schedules {
            eprintln!(
                "faults: {}/{schedules} schedules, {} failed, {:.0} s",
                index + 1,
                failed.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    report.sent = acknowledged;
    report.processed = acknowledged - lost;
    report.lost = lost;
    report.duplicates = duplicates;
    report.recovered_after(started.elapsed());
    report.detail("schedules", schedules);
    report.detail("first_seed", first_seed);
    report.detail("faults_injected", &injected);
    report.detail("faults_injected_total", injected.values().sum::<u64>());
    report.detail("order_violations", order);
    report.detail("stranded", stranded);
    report.detail("failed_schedules", &failed);
    report.passed = failed.is_empty();
    Ok(report)
}

async fn prepare_database(pool: &PgPool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    pg::ensure_table(&mut conn).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS history (
            id bigserial PRIMARY KEY,
            topic text NOT NULL,
            key text NOT NULL,
            seq bigint NOT NULL,
            token bigint NOT NULL,
            consumer text NOT NULL,
            message_id text NOT NULL
        )",
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The consumer processes of one schedule.
struct Consumers {
    children: Vec<Option<Child>>,
    names: Vec<String>,
    topic: String,
    db_url: String,
    logs: PathBuf,
    seed: u64,
}

impl Consumers {
    fn user(index: usize) -> String {
        format!("faults-c{index}")
    }

    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let urls: Vec<String> = std::env::var("PAPERSTREAM_REDIS_URLS")?
            .split(',')
            .map(|u| user_url(u, &Self::user(index)))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}-c{index}.log", self.seed)))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("faults-consumer")
            .env("PAPERSTREAM_REDIS_URLS", urls.join(","))
            .env(ENV_TOPIC, &self.topic)
            .env(ENV_NAME, &self.names[index])
            .env(ENV_DB, &self.db_url)
            .env("RUST_LOG", "warn,streams=warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start a consumer process")?;
        self.children[index] = Some(child);
        Ok(())
    }

    fn signal(&self, index: usize, signal: &str) -> anyhow::Result<()> {
        if let Some(child) = &self.children[index] {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill {signal} failed");
        }
        Ok(())
    }

    fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[index].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGCONT everyone, then SIGTERM and wait: a graceful stop.
    async fn stop_all(&mut self) -> anyhow::Result<()> {
        for index in 0..self.children.len() {
            self.signal(index, "-CONT")?;
            self.signal(index, "-TERM")?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for slot in &mut self.children {
            let Some(child) = slot.as_mut() else { continue };
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    break;
                }
                sleep(Duration::from_millis(50)).await;
            }
            slot.take();
        }
        Ok(())
    }
}

impl Drop for Consumers {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `url` with the consumer's own user and password.
fn user_url(url: &str, user: &str) -> String {
    let rest = url.trim().strip_prefix("redis://").unwrap_or(url);
    let address = rest.rsplit_once('@').map_or(rest, |(_, a)| a);
    format!("redis://{user}:{USER_PASSWORD}@{address}")
}

/// Give every consumer its own Redis user on every node (as the operator),
/// so that a `cut` can turn one off on one master. A node just restarted
/// may refuse for a moment (still loading): it is asked again.
async fn ensure_users(env: &Env) -> anyhow::Result<()> {
    let mut last_error = None;
    for _ in 0..60 {
        match try_ensure_users(env).await {
            Ok(()) => return Ok(()),
            Err(err) => last_error = Some(err),
        }
        sleep(Duration::from_millis(500)).await;
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context("create the consumers' Redis users"))
}

async fn try_ensure_users(env: &Env) -> anyhow::Result<()> {
    for (address, _) in env.client.nodes().await? {
        let mut conn = node_connection(&address).await?;
        for index in 0..CONSUMERS {
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(Consumers::user(index))
                .arg("on")
                .arg(format!(">{USER_PASSWORD}"))
                .arg("~*")
                .arg("&*")
                .arg("+@all")
                .query_async(&mut conn)
                .await
                .with_context(|| format!("ACL SETUSER on {address}"))?;
        }
    }
    Ok(())
}

/// Whether every master has a replica that finished its sync and keeps
/// up, and no node is a master without slots (a restarted node that has
/// not yet become a replica). Killing a master before that would leave its
/// shard with no copy of what was acknowledged.
async fn replicas_in_sync(env: &Env) -> anyhow::Result<bool> {
    let masters: HashSet<String> = env.client.masters().await?.into_iter().collect();
    for (address, role) in env.client.nodes().await? {
        if role == "master" && !masters.contains(&address) {
            return Ok(false);
        }
    }
    for master in masters {
        let mut conn = node_connection(&master).await?;
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await?;
        let online = info
            .lines()
            .any(|l| l.starts_with("slave") && l.contains("state=online") && !l.contains("lag=-"));
        if !online {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn node_connection(address: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(local::node_url(address)?)?;
    Ok(tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await??)
}

async fn master_of(env: &Env, slot: u16) -> anyhow::Result<String> {
    env.client
        .slot_ranges()
        .await?
        .into_iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .map(|r| r.master)
        .context("no master serves the slot")
}

async fn run_schedule(
    env: &Env,
    db: &test_support::TestDatabase,
    logs: &std::path::Path,
    schedule: &Schedule,
) -> anyhow::Result<Outcome> {
    let name = harness::unique_topic("faults");
    let topic = Topic::<Step>::new(topic_config(&name))?;
    streams::ensure_group(
        &env.client,
        topic.layout(),
        GROUP,
        streams::StartFrom::Beginning,
    )
    .await
    .context("create the group")?;
    ensure_users(env).await?;
    let mut consumers = Consumers {
        children: (0..CONSUMERS).map(|_| None).collect(),
        names: (0..CONSUMERS)
            .map(|i| format!("s{}-c{i}", schedule.seed))
            .collect(),
        topic: name.clone(),
        db_url: db.url.clone(),
        logs: logs.to_path_buf(),
        seed: schedule.seed,
    };
    for index in 0..CONSUMERS {
        consumers.spawn(index)?;
    }
    let consumers = Arc::new(tokio::sync::Mutex::new(consumers));

    let acknowledged = Arc::new(Mutex::new(HashSet::<(String, u64)>::new()));
    let stop_producing = CancellationToken::new();
    let producing = tokio::spawn(produce(
        env.client.clone(),
        topic.clone(),
        acknowledged.clone(),
        stop_producing.clone(),
    ));
    let nemesis_started = Instant::now();
    let mut healing = Vec::new();
    for (at, fault) in &schedule.faults {
        let due = nemesis_started + Duration::from_millis(*at);
        tokio::time::sleep_until(due).await;
        let injected = inject(env, &topic, &consumers, *fault)
            .await
            .with_context(|| format!("inject {fault:?}"))?;
        if let Some(heal) = injected {
            healing.push(heal);
        }
    }
    tokio::time::sleep_until(nemesis_started + Duration::from_millis(schedule.load_ms)).await;
    stop_producing.cancel();
    producing.await?.context("produce")?;
    for heal in healing {
        heal.run(env).await.context("heal")?;
    }
    {
        let mut consumers = consumers.lock().await;
        for index in 0..CONSUMERS {
            consumers.signal(index, "-CONT")?;
            if consumers.children[index].is_none() {
                consumers.spawn(index)?;
            }
        }
    }

    let acknowledged: HashSet<(String, u64)> = acknowledged
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let pool = &db.pool;
    let settled = harness::wait_until(Duration::from_secs(60), async || {
        let drained = pending_and_unread(env, &topic).await.is_ok_and(|n| n == 0);
        drained
            && history_keys(pool, &name)
                .await
                .is_ok_and(|seen| acknowledged.is_subset(&seen))
    })
    .await;
    let foreign = retried(async || foreign_pending(env, &topic).await)
        .await
        .context("count entries pending with non-owners")?;
    consumers
        .lock()
        .await
        .stop_all()
        .await
        .context("stop the consumers")?;
    let mut outcome = check(pool, &name, &acknowledged)
        .await
        .context("read the history")?;
    outcome.seed = schedule.seed;
    outcome.stranded = foreign;
    if !settled {
        outcome.stranded += retried(async || pending_and_unread(env, &topic).await)
            .await
            .context("count what is left")?;
    }
    retried(async || harness::remove_topic(env, topic.layout()).await)
        .await
        .context("remove the topic")?;
    if outcome.violations() == 0 {
        for index in 0..CONSUMERS {
            let _ = std::fs::remove_file(logs.join(format!("{}-c{index}.log", schedule.seed)));
        }
    }
    Ok(outcome)
}

/// `op`, tried again for a while: right after a failover a node may still
/// be loading or unknown to the client.
async fn retried<T>(mut op: impl AsyncFnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) if attempt >= 20 => return Err(err),
            Err(_) => attempt += 1,
        }
        sleep(Duration::from_millis(500)).await;
    }
}

/// Send each key's next number once its previous one was acknowledged,
/// until stopped; record what was acknowledged.
async fn produce(
    client: StreamsClient,
    topic: Topic<Step>,
    acknowledged: Arc<Mutex<HashSet<(String, u64)>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // Acknowledged once a replica has it too: a master killed right after
    // an acknowledgement must not take the message with it.
    let producer = Producer::new(
        client,
        ProducerConfig {
            durability: Durability::Replicated {
                replicas: 1,
                timeout: Duration::from_secs(2),
            },
            ..ProducerConfig::default()
        },
    );
    let mut next: Vec<(String, u64, String)> = (0..KEYS)
        .map(|k| (format!("key-{k}"), 0, uuid::Uuid::new_v4().to_string()))
        .collect();
    while !stop.is_cancelled() {
        let steps: Vec<Step> = next
            .iter()
            .map(|(key, seq, _)| Step {
                key: key.clone(),
                seq: *seq,
            })
            .collect();
        // A send that failed is sent again with the same id: if the first
        // attempt did land, the consumers' dedupe keeps one effect.
        let results = producer
            .send_batch(
                &topic,
                steps
                    .iter()
                    .zip(&next)
                    .map(|(step, (_, _, id))| Outgoing::new(&step.key, step).with_id(id)),
            )
            .await?;
        let mut failed = false;
        for (slot, result) in next.iter_mut().zip(results) {
            if result.is_ok() {
                acknowledged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((slot.0.clone(), slot.1));
                slot.1 += 1;
                slot.2 = uuid::Uuid::new_v4().to_string();
            } else {
                failed = true;
            }
        }
        sleep(Duration::from_millis(if failed { 100 } else { 10 })).await;
    }
    Ok(())
}

/// How to undo a fault that outlives its injection.
enum Heal {
    /// Move `slot` back to whichever master serves `neighbour` (a slot that
    /// never moves): its shard's master, even after a failover there.
    MigrateBack {
        slot: u16,
        neighbour: u16,
    },
    Maxmemory {
        address: String,
        limit: String,
    },
}

impl Heal {
    async fn run(self, env: &Env) -> anyhow::Result<()> {
        match self {
            Self::MigrateBack { slot, neighbour } => {
                let from = master_of(env, slot).await?;
                let to = master_of(env, neighbour).await?;
                if from != to {
                    migrate_slot(env, slot, &from, &to, Duration::ZERO).await?;
                }
            }
            Self::Maxmemory { address, limit } => {
                let mut conn = node_connection(&address).await?;
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("maxmemory")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await?;
            }
        }
        Ok(())
    }
}

async fn inject(
    env: &Env,
    topic: &Topic<Step>,
    consumers: &Arc<tokio::sync::Mutex<Consumers>>,
    fault: Fault,
) -> anyhow::Result<Option<Heal>> {
    let slot_of = |partition: u16| topic.layout().partitions[usize::from(partition)].slot;
    match fault {
        Fault::Pause { consumer, ms } => {
            consumers.lock().await.signal(consumer, "-STOP")?;
            sleep(Duration::from_millis(ms)).await;
            consumers.lock().await.signal(consumer, "-CONT")?;
        }
        Fault::Kill { consumer } => {
            let mut consumers = consumers.lock().await;
            consumers.kill(consumer)?;
            consumers.spawn(consumer)?;
        }
        Fault::KillMaster { partition } => {
            // Only a master whose replica is in sync can fail over.
            let synced = harness::wait_until(Duration::from_secs(60), async || {
                replicas_in_sync(env).await.unwrap_or(false)
            })
            .await;
            anyhow::ensure!(synced, "the replicas are not in sync");
            let master = master_of(env, slot_of(partition)).await?;
            local::kill_redis_node(&master)?;
            let failed_over = harness::wait_until(Duration::from_secs(20), async || {
                master_of(env, slot_of(partition))
                    .await
                    .is_ok_and(|m| m != master)
            })
            .await;
            anyhow::ensure!(failed_over, "no failover after killing {master}");
            local::restore_redis()?;
            // A second master kill before its shard's replica has synced
            // would leave the shard without a master for good: the next
            // fault waits for the replicas, as an operator would.
            let synced = harness::wait_until(Duration::from_secs(60), async || {
                replicas_in_sync(env).await.unwrap_or(false)
            })
            .await;
            anyhow::ensure!(
                synced,
                "the replicas did not sync after restarting {master}"
            );
            ensure_users(env).await?;
        }
        Fault::Cut {
            consumer,
            partition,
            ms,
        } => {
            let master = master_of(env, slot_of(partition)).await?;
            let user = Consumers::user(consumer);
            let mut conn = node_connection(&master).await?;
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("off")
                .query_async(&mut conn)
                .await?;
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("USER")
                .arg(&user)
                .query_async(&mut conn)
                .await?;
            sleep(Duration::from_millis(ms)).await;
            let _: () = redis::cmd("ACL")
                .arg("SETUSER")
                .arg(&user)
                .arg("on")
                .query_async(&mut conn)
                .await?;
        }
        Fault::Migrate { partition } => {
            let slot = slot_of(partition);
            let from = master_of(env, slot).await?;
            let masters = env.client.masters().await?;
            let Some(to) = masters.iter().find(|m| **m != from) else {
                return Ok(None);
            };
            migrate_slot(env, slot, &from, to, Duration::from_millis(300)).await?;
            let neighbour = if slot == 0 { 1 } else { slot - 1 };
            return Ok(Some(Heal::MigrateBack { slot, neighbour }));
        }
        Fault::Maxmemory { partition, ms } => {
            let master = master_of(env, slot_of(partition)).await?;
            let mut conn = node_connection(&master).await?;
            let limit: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("maxmemory")
                .query_async(&mut conn)
                .await?;
            let info: String = redis::cmd("INFO")
                .arg("memory")
                .query_async(&mut conn)
                .await?;
            let used: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
                .context("used_memory")?;
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(used.saturating_sub(64 * 1024).max(1024 * 1024))
                .query_async(&mut conn)
                .await?;
            sleep(Duration::from_millis(ms)).await;
            let heal = Heal::Maxmemory {
                address: master,
                limit: limit.get(1).cloned().unwrap_or_else(|| "1gb".into()),
            };
            heal.run(env).await?;
        }
    }
    Ok(None)
}

/// Move `slot` from master `from` to master `to`, the way `redis-cli
/// --cluster reshard` does, pausing `pause` after each key so the slot
/// stays half-moved for a while.
async fn migrate_slot(
    env: &Env,
    slot: u16,
    from: &str,
    to: &str,
    pause: Duration,
) -> anyhow::Result<()> {
    let mut source = node_connection(from).await?;
    let mut target = node_connection(to).await?;
    let source_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut source)
        .await?;
    let target_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut target)
        .await?;
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&source_id)
        .query_async(&mut target)
        .await?;
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&target_id)
        .query_async(&mut source)
        .await?;
    let (host, port) = to.rsplit_once(':').context("target address")?;
    let password = admin_password()?;
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(10)
            .query_async(&mut source)
            .await?;
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg(host)
                .arg(port)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("AUTH2")
                .arg("default")
                .arg(&password)
                .arg("KEYS")
                .arg(&key)
                .query_async(&mut source)
                .await?;
            sleep(pause).await;
        }
    }
    // The target first, then the source, then the others (as redis-cli
    // does); a node that still marks the slot open afterwards is told the
    // slot is stable, so no migration outlives its fault.
    let mut masters = env.client.masters().await?;
    masters.sort_by_key(|m| (m != to, m != from));
    for master in &masters {
        let mut conn = node_connection(master).await?;
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&target_id)
            .query_async(&mut conn)
            .await
            .with_context(|| format!("CLUSTER SETSLOT {slot} NODE on {master}"))?;
    }
    for (address, _) in env.client.nodes().await? {
        let mut conn = node_connection(&address).await?;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        let open = nodes
            .lines()
            .find(|l| l.contains("myself"))
            .is_some_and(|l| l.contains(&format!("[{slot}-")));
        if open {
            let _: redis::Value = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("STABLE")
                .query_async(&mut conn)
                .await?;
        }
    }
    Ok(())
}

/// The operator's password, from the seed URLs.
fn admin_password() -> anyhow::Result<String> {
    let credentials = local::operator_credentials()?.unwrap_or_default();
    Ok(credentials
        .split_once(':')
        .map_or(credentials.as_str(), |(_, p)| p)
        .to_owned())
}

/// Entries of the topic the group has not acknowledged: pending, plus
/// unread.
async fn pending_and_unread(env: &Env, topic: &Topic<Step>) -> anyhow::Result<u64> {
    let inspector = streams::Inspector::new(env.client.clone());
    harness::lag(&inspector, topic.layout(), GROUP).await
}

/// Entries pending with a consumer other than their partition's owner.
async fn foreign_pending(env: &Env, topic: &Topic<Step>) -> anyhow::Result<u64> {
    let inspector = streams::Inspector::new(env.client.clone());
    let mut foreign = 0;
    for partition in 0..PARTITIONS {
        let report = inspector.partition(topic.layout(), partition).await?;
        for group in report.groups.iter().filter(|g| g.name == GROUP) {
            for consumer in &group.consumers {
                if Some(&consumer.name) != group.owner.as_ref() {
                    foreign += consumer.pending;
                }
            }
        }
    }
    Ok(foreign)
}

async fn history_keys(pool: &PgPool, topic: &str) -> anyhow::Result<HashSet<(String, u64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT key, seq FROM history WHERE topic = $1")
        .bind(topic)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(key, seq)| (key, u64::try_from(seq).unwrap_or(0)))
        .collect())
}

/// One effect in the history: `(id, key, seq, token, consumer)`, in the
/// order the effects were committed (the id).
type HistoryRow = (i64, String, i64, i64, String);

async fn check(
    pool: &PgPool,
    topic: &str,
    acknowledged: &HashSet<(String, u64)>,
) -> anyhow::Result<Outcome> {
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT id, key, seq, token, consumer FROM history WHERE topic = $1 ORDER BY id",
    )
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(judge(&rows, acknowledged))
}

/// The checker: lost acknowledged sends, repeated effects, and keys whose
/// sequence does not strictly increase, with the first bad key's history.
fn judge(rows: &[HistoryRow], acknowledged: &HashSet<(String, u64)>) -> Outcome {
    let mut outcome = Outcome {
        acknowledged: acknowledged.len() as u64,
        ..Outcome::default()
    };
    let mut seen: HashMap<(String, i64), u64> = HashMap::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut violating_key: Option<String> = None;
    for (_, key, seq, _, _) in rows {
        *seen.entry((key.clone(), *seq)).or_default() += 1;
        if let Some(previous) = last.get(key)
            && *seq <= *previous
        {
            outcome.order_violations += 1;
            violating_key.get_or_insert_with(|| key.clone());
        }
        last.insert(key.clone(), *seq);
    }
    outcome.duplicates = seen.values().map(|n| n - 1).sum();
    if outcome.duplicates > 0 && violating_key.is_none() {
        violating_key = seen
            .iter()
            .find(|(_, n)| **n > 1)
            .map(|((key, _), _)| key.clone());
    }
    let mut missing: Vec<&(String, u64)> = acknowledged
        .iter()
        .filter(|(key, seq)| !seen.contains_key(&(key.clone(), i64::try_from(*seq).unwrap_or(-1))))
        .collect();
    missing.sort();
    outcome.lost = missing.len() as u64;
    if let Some((key, _)) = missing.first() {
        violating_key.get_or_insert_with(|| key.clone());
    }
    if let Some(key) = violating_key {
        outcome.evidence = rows
            .iter()
            .filter(|r| r.1 == key)
            .map(|(id, key, seq, token, consumer)| {
                format!("#{id} {key} seq {seq} token {token} by {consumer}")
            })
            .collect();
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, key: &str, seq: i64) -> HistoryRow {
        (id, key.to_owned(), seq, 1, "c0".to_owned())
    }

    fn acked(pairs: &[(&str, u64)]) -> HashSet<(String, u64)> {
        pairs.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
    }

    #[test]
    fn a_clean_history_passes() {
        let rows = [row(1, "a", 0), row(2, "b", 0), row(3, "a", 1)];
        let outcome = judge(&rows, &acked(&[("a", 0), ("a", 1), ("b", 0)]));
        assert_eq!(outcome.violations(), 0);
        assert!(outcome.evidence.is_empty());
    }

    #[test]
    fn each_violation_is_counted_with_its_evidence() {
        let rows = [
            row(1, "a", 1),
            row(2, "a", 0),
            row(3, "b", 0),
            row(4, "b", 0),
        ];
        let outcome = judge(&rows, &acked(&[("a", 0), ("a", 1), ("b", 0), ("c", 0)]));
        assert_eq!(outcome.order_violations, 2, "a went back, b repeated");
        assert_eq!(outcome.duplicates, 1);
        assert_eq!(outcome.lost, 1, "c never took effect");
        assert_eq!(
            outcome.evidence,
            ["#1 a seq 1 token 1 by c0", "#2 a seq 0 token 1 by c0"]
        );
    }
}
