//! What monitoring costs Redis: commands per exporter pass, and per second
//! at the default interval, for 3 topics of 6 partitions with two consumer
//! groups each, on a private 3+3 cluster (so nothing else is counted).
//!
//! Run: `cargo run --release -p exporter --example cost`. Writes
//! `target/bench/exporter_cost.json`.

use std::path::PathBuf;

use serde_json::json;
use streams::{
    ClientConfig, Inspector, Outgoing, Producer, ProducerConfig, StartFrom, StreamsClient, Topic,
    TopicConfig,
};
use test_support::RedisCluster;

const PASSES: u64 = 20;

/// Commands all nodes have processed so far.
async fn commands(urls: &[String]) -> u64 {
    let mut total = 0;
    for url in urls {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("node");
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .expect("info");
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("total_commands_processed");
    }
    total
}

#[tokio::main]
async fn main() {
    let cluster = RedisCluster::start().expect("a private cluster");
    let urls = cluster.urls();
    let client = StreamsClient::connect(ClientConfig::new(urls.clone()))
        .await
        .expect("connect");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut layouts = Vec::new();
    for name in [
        "paper.ingested",
        "paper.summarized",
        "notification.requested",
    ] {
        let topic: Topic<events::PaperSummarized> =
            Topic::new(TopicConfig::new(name, 6)).expect("topic");
        for group in ["first", "second"] {
            streams::ensure_group(&client, topic.layout(), group, StartFrom::Beginning)
                .await
                .expect("group");
        }
        let payloads: Vec<events::PaperSummarized> = (0..600)
            .map(|n| events::PaperSummarized {
                arxiv_id: format!("2611.{n:05}"),
                version: 1,
                prompt_version: 1,
                provider: "ollama".into(),
                extractive: false,
            })
            .collect();
        let keys: Vec<String> = (0..600).map(|n| format!("key{n}")).collect();
        for r in producer
            .send_batch(
                &topic,
                keys.iter().zip(&payloads).map(|(k, p)| Outgoing::new(k, p)),
            )
            .await
            .expect("encode")
        {
            r.expect("sent");
        }
        layouts.push(topic.layout().clone());
    }
    let inspector = Inspector::new(client);
    // One pass to warm up slot maps and scripts.
    exporter::export_once(&inspector, &layouts)
        .await
        .expect("export");

    let before = commands(&urls).await;
    let started = std::time::Instant::now();
    for _ in 0..PASSES {
        exporter::export_once(&inspector, &layouts)
            .await
            .expect("export");
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The INFO calls that measure are commands too: one per node each time.
    let after = commands(&urls).await - urls.len() as u64;
    let per_pass = (after - before) as f64 / PASSES as f64;
    let interval = exporter::Config::default().interval_s as f64;
    let report = json!({
        "topics": layouts.len(),
        "partitions_per_topic": 6,
        "groups_per_topic": 2,
        "nodes": urls.len(),
        "commands_per_pass": per_pass,
        "pass_ms": elapsed * 1000.0 / PASSES as f64,
        "interval_s": interval,
        "commands_per_second_at_interval": per_pass / interval,
    });
    println!("{}", serde_json::to_string_pretty(&report).expect("json"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    std::fs::write(
        dir.join("exporter_cost.json"),
        serde_json::to_vec_pretty(&report).expect("json"),
    )
    .expect("write");
}
