//! A tour of the streams runtime on the local cluster (`scripts/demo`).
//!
//! The demo starts two consumer processes (`demo worker`), produces papers
//! at a steady rate, kills one consumer with `kill -9` in the middle, starts
//! a replacement, and sends one poison message that ends in the DLQ. Each
//! worker appends the ids it handled to a file; at the end the demo reads
//! them and reports what was sent, handled, repeated, lost and
//! dead-lettered, plus the time the partitions of the killed worker went
//! unprocessed.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use streams::{
    ClientConfig, Consumer, ConsumerConfig, Event, Failure, Inspector, Outgoing, Producer,
    ProducerConfig, RetryPolicy, StreamsClient, Topic, TopicConfig,
    inspect::{Direction, Log},
};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Paper {
    arxiv_id: String,
    version: u32,
    poison: bool,
}

impl Event for Paper {
    const SCHEMA_VERSION: u32 = 1;
}

const TOPIC: &str = "demo.papers";
const GROUP: &str = "demo";
const PAPERS: u32 = 400;
const VERSIONS: u32 = 25;

fn topic() -> anyhow::Result<Topic<Paper>> {
    let mut config = TopicConfig::new(TOPIC, 6);
    config.max_attempts = 3;
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(300),
        max_delay: Duration::from_secs(1),
        factor: 2.0,
    };
    Ok(Topic::new(config)?)
}

fn redis_urls() -> anyhow::Result<Vec<String>> {
    let urls = std::env::var("PAPERSTREAM_REDIS_URLS")
        .map_err(|_| anyhow::anyhow!("PAPERSTREAM_REDIS_URLS is not set: run scripts/demo"))?;
    Ok(urls.split(',').map(str::to_owned).collect())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("worker") => {
            let name = args.get(2).cloned().unwrap_or_else(|| "worker".into());
            let log = PathBuf::from(
                args.get(3)
                    .cloned()
                    .unwrap_or_else(|| format!("{name}.log")),
            );
            runtime.block_on(worker(name, log))
        }
        _ => runtime.block_on(tour()),
    }
}

/// One consumer process: handles papers in order, fails poison forever,
/// and appends every handled message id to its log file.
async fn worker(name: String, log_path: PathBuf) -> anyhow::Result<()> {
    let client = StreamsClient::connect(ClientConfig::new(redis_urls()?)).await?;
    let log = Arc::new(Mutex::new(std::fs::File::create(&log_path)?));
    let last_version: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let handler = {
        let name = name.clone();
        streams::per_message(move |m: streams::Message<Paper>| {
            let (log, last_version, name) = (log.clone(), last_version.clone(), name.clone());
            async move {
                if m.payload.poison {
                    return Err(Failure::Retry(format!(
                        "{} cannot be summarized",
                        m.payload.arxiv_id
                    )));
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
                let mut seen = last_version.lock().unwrap_or_else(|e| e.into_inner());
                let previous = seen.insert(m.key.clone(), m.payload.version);
                if previous.is_some_and(|p| p > m.payload.version) {
                    println!(
                        "  [{name}] ORDER BROKEN for {}: {previous:?} then {}",
                        m.key, m.payload.version
                    );
                }
                let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
                writeln!(file, "{} {} {}", m.id, m.partition, m.attempt)
                    .map_err(|e| Failure::Retry(e.to_string()))?;
                Ok(())
            }
        })
    };
    let mut config = ConsumerConfig::new(GROUP).with_lease_ttl(Duration::from_secs(3));
    config.consumer_name = name.clone();
    config.batch_size = 50;
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        on_signal.cancel();
    });
    Consumer::new(client, &topic()?, config, handler)
        .run(shutdown)
        .await?;
    Ok(())
}

struct Worker {
    name: String,
    child: Child,
    log: PathBuf,
}

fn spawn_worker(name: &str, dir: &Path) -> anyhow::Result<Worker> {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .arg(name)
        .arg(&log)
        .spawn()?;
    println!("  started consumer {name} (pid {})", child.id());
    Ok(Worker {
        name: name.to_owned(),
        child,
        log,
    })
}

async fn tour() -> anyhow::Result<()> {
    let client = StreamsClient::connect(ClientConfig::new(redis_urls()?)).await?;
    let topic = topic()?;
    let dir = std::env::temp_dir().join("paperstream-demo");
    std::fs::create_dir_all(&dir)?;
    reset(&client, &topic).await?;

    println!("\n== paperstream streams demo ==");
    let placement = client.placement(topic.layout()).await?;
    println!("topic {TOPIC}: {} partitions", placement.partitions.len());
    for (partition, slot, master) in &placement.partitions {
        println!("  partition {partition}: slot {slot:>5} on master {master}");
    }
    println!(
        "  partitions per master: {:?} (balanced: {})",
        placement.per_master,
        placement.is_balanced()
    );
    streams::ensure_group(
        &client,
        topic.layout(),
        GROUP,
        streams::StartFrom::Beginning,
    )
    .await?;

    println!("\n1. two consumers share the partitions");
    let mut workers = vec![spawn_worker("alice", &dir)?, spawn_worker("bob", &dir)?];
    tokio::time::sleep(Duration::from_secs(2)).await;
    show_owners(&client, &topic).await?;

    println!(
        "\n2. producing {} papers x {VERSIONS} versions, one poison paper among them",
        PAPERS
    );
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let poison = Paper {
        arxiv_id: "2611.66666".into(),
        version: 1,
        poison: true,
    };
    producer.send(&topic, &poison.arxiv_id, &poison).await?;
    let mut sent = 1u64;
    let mut killed_at = None;
    let mut recovery = None;
    for version in 1..=VERSIONS {
        let papers: Vec<Paper> = (0..PAPERS)
            .map(|i| Paper {
                arxiv_id: format!("2611.{i:05}"),
                version,
                poison: false,
            })
            .collect();
        for result in producer
            .send_batch(&topic, papers.iter().map(|p| Outgoing::new(&p.arxiv_id, p)))
            .await?
        {
            result?;
            sent += 1;
        }
        if version == 8 {
            let victim = &mut workers[0];
            println!(
                "\n3. kill -9 consumer {} (pid {}) while it works",
                victim.name,
                victim.child.id()
            );
            Command::new("kill")
                .arg("-9")
                .arg(victim.child.id().to_string())
                .status()?;
            victim.child.wait()?;
            killed_at = Some(Instant::now());
            recovery = Some(tokio::spawn(time_to_take_over(
                client.clone(),
                topic.clone(),
                victim.name.clone(),
            )));
        }
        if version == 16 {
            println!("\n4. a replacement consumer joins");
            workers.push(spawn_worker("carol", &dir)?);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("  sent {sent} messages");

    println!("\n5. waiting for the group to drain");
    let inspector = Inspector::new(client.clone());
    let drained = Instant::now();
    loop {
        let report = inspector.topic(topic.layout()).await?;
        let lag: u64 = report
            .partitions
            .iter()
            .flat_map(|p| &p.groups)
            .map(|g| g.lag_entries)
            .sum();
        let dlq: u64 = report.partitions.iter().map(|p| p.dlq_length).sum();
        if lag == 0 && dlq == 1 {
            break;
        }
        if drained.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the group did not drain: lag {lag}, dlq {dlq}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    show_owners(&client, &topic).await?;

    println!("\n6. the poison message in the DLQ");
    let dead_partition = topic.partition_for(&poison.arxiv_id);
    let page = inspector
        .browse(
            topic.layout(),
            dead_partition,
            Log::Dlq,
            Direction::Forward,
            None,
            10,
        )
        .await?;
    for entry in &page.entries {
        println!(
            "  {} key={} reason={} attempts={} error={:?}",
            entry.entry_id,
            entry.key(),
            entry.field_str("dlq.reason").unwrap_or("?"),
            entry.field_str("dlq.attempts").unwrap_or("?"),
            entry.field_str("dlq.error").unwrap_or("?"),
        );
    }

    for worker in workers.iter_mut().skip(1) {
        Command::new("kill")
            .arg("-TERM")
            .arg(worker.child.id().to_string())
            .status()?;
        worker.child.wait()?;
    }
    let report = tally(&workers, sent - 1)?;
    println!("\n7. report");
    println!("  sent:            {sent} (1 poison)");
    println!("  handled:         {} distinct", report.distinct);
    println!("  lost:            {}", report.lost);
    println!(
        "  handled twice:   {} (the batch in flight when the consumer was killed)",
        report.repeats
    );
    println!("  dead-lettered:   {}", page.entries.len());
    for (name, count) in &report.per_worker {
        println!("  handled by {name}: {count}");
    }
    if let (Some(at), Some(recovery)) = (killed_at, recovery) {
        let taken_over = recovery.await??;
        println!(
            "  the killed consumer's partitions had new owners {taken_over:.1?} after the kill (lease TTL 3 s)"
        );
        println!("  demo finished {:.1?} after the kill", at.elapsed());
    }
    if report.lost > 0 || page.entries.len() != 1 {
        anyhow::bail!("something was lost");
    }
    println!("\nok: nothing lost, order kept, poison isolated.");
    Ok(())
}

/// How long until no partition is leased by `victim` any more and every
/// partition has an owner again.
async fn time_to_take_over(
    client: StreamsClient,
    topic: Topic<Paper>,
    victim: String,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let inspector = Inspector::new(client);
    loop {
        let report = inspector.topic(topic.layout()).await?;
        let owners: Vec<Option<String>> = report
            .partitions
            .iter()
            .map(|p| p.groups.first().and_then(|g| g.owner.clone()))
            .collect();
        if owners
            .iter()
            .all(|o| o.as_ref().is_some_and(|o| *o != victim))
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("partitions of {victim} were not taken over: {owners:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn show_owners(client: &StreamsClient, topic: &Topic<Paper>) -> anyhow::Result<()> {
    let report = Inspector::new(client.clone()).topic(topic.layout()).await?;
    for p in &report.partitions {
        let owner = p
            .groups
            .first()
            .and_then(|g| g.owner.clone())
            .unwrap_or_else(|| "-".into());
        println!(
            "  partition {} owned by {owner:<6} length {:>5}",
            p.partition, p.length
        );
    }
    Ok(())
}

struct Tally {
    distinct: usize,
    lost: u64,
    repeats: usize,
    per_worker: BTreeMap<String, usize>,
}

fn tally(workers: &[Worker], expected: u64) -> anyhow::Result<Tally> {
    let mut times: HashMap<String, usize> = HashMap::new();
    let mut per_worker = BTreeMap::new();
    for worker in workers {
        let text = std::fs::read_to_string(&worker.log).unwrap_or_default();
        let mut count = 0;
        for line in text.lines() {
            if let Some(id) = line.split(' ').next() {
                *times.entry(id.to_owned()).or_default() += 1;
                count += 1;
            }
        }
        per_worker.insert(worker.name.clone(), count);
    }
    Ok(Tally {
        distinct: times.len(),
        lost: expected.saturating_sub(times.len() as u64),
        repeats: times.values().filter(|n| **n > 1).count(),
        per_worker,
    })
}

/// Start from an empty topic so that every run tells the same story.
async fn reset(client: &StreamsClient, topic: &Topic<Paper>) -> anyhow::Result<()> {
    let mut conn = redis::cluster::ClusterClient::new(client.config().nodes.clone())?
        .get_async_connection()
        .await?;
    for keys in &topic.layout().partitions {
        for key in [&keys.stream, &keys.dlq, &keys.audit, &keys.lease(GROUP)] {
            let _: i64 = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
        }
    }
    let _: i64 = redis::cmd("DEL")
        .arg(topic.layout().members_key(GROUP))
        .query_async(&mut conn)
        .await?;
    Ok(())
}
