//! Benchmark: a 10,000-paper backfill from the fake arXiv with the rate
//! limit off, through the whole pipeline: crawler (OAI-PMH pages, papers
//! and events in Postgres), outbox relay, `paper.ingested`, summarizer
//! (extractive provider), `paper.summarized`.
//!
//! `cargo run --release -p summarizer --example backfill_bench` with the
//! local infrastructure up (`scripts/infra up`; it uses a fresh database
//! and its own topic prefix). Reports the time from the first request to
//! the last `paper.summarized` and papers per second, and writes them to
//! `target/bench/backfill.json`. `BENCH_PAPERS` changes the count.

use std::time::{Duration, Instant};

use fakes::arxiv::{FakeArxiv, corpus, day};
use streams::{Inspector, inspect::Direction, inspect::Log};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let papers: usize = std::env::var("BENCH_PAPERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let fake = FakeArxiv::start(corpus(papers, day(2026, 11, 2), 500), 1000, None, 0).await?;
    let db = test_support::TestDatabase::create().await?;
    let redis_urls = test_support::shared_redis_urls();
    let prefix = format!("{}.", test_support::unique_name("bench"));

    let crawler_defaults = crawler::Config::default();
    let crawler_config = crawler::Config {
        database_url: db.url.clone(),
        redis_urls: redis_urls.clone(),
        arxiv: crawler::config::ArxivSettings {
            query_url: fake.query_url(),
            oai_url: fake.oai_url(),
            rss_url: fake.rss_url(),
            pace_interval_ms: 0,
            ..crawler_defaults.arxiv.clone()
        },
        topic_prefix: prefix.clone(),
        ..crawler_defaults
    };
    let summarizer_defaults = summarizer::Config::default();
    let summarizer_config = summarizer::Config {
        database_url: db.url.clone(),
        redis_urls: redis_urls.clone(),
        llm: summarizer::config::LlmSettings {
            order: vec!["extractive".into()],
            ..summarizer_defaults.llm.clone()
        },
        topic_prefix: prefix.clone(),
        ..summarizer_defaults
    };
    let crawler = crawler::Crawler::connect(&crawler_config).await?;
    let shutdown = CancellationToken::new();
    let summarizing = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { summarizer::run(&summarizer_config, shutdown).await }
    });

    let started = Instant::now();
    let relay = crawler.relay();
    let relaying = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let tally = crawler
        .backfill(
            day(2026, 11, 1),
            None,
            &[String::new()],
            &crawler::Progress::new(false),
            &shutdown,
        )
        .await?;
    let crawled = started.elapsed();

    let topics = events::Topics::new(&prefix)?;
    let inspector = Inspector::new(crawler.streams().clone());
    let summarized = loop {
        let mut count = 0;
        for p in &topics.summarized.layout().partitions {
            let mut cursor = None;
            loop {
                let page = inspector
                    .browse(
                        topics.summarized.layout(),
                        p.index,
                        Log::Stream,
                        Direction::Forward,
                        cursor,
                        1000,
                    )
                    .await?;
                count += page.entries.len();
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        if count >= papers || started.elapsed() > Duration::from_secs(600) {
            break count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let elapsed = started.elapsed();
    shutdown.cancel();
    let _ = summarizing.await;
    let _ = relaying.await;

    let report = serde_json::json!({
        "papers": papers,
        "stored_new": tally.new,
        "summarized_events": summarized,
        "crawl_seconds": crawled.as_secs_f64(),
        "first_request_to_last_summarized_seconds": elapsed.as_secs_f64(),
        "papers_per_second": summarized as f64 / elapsed.as_secs_f64(),
        "oai_pages": fake.requests().len(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("backfill.json"), text)?;
    anyhow::ensure!(
        summarized == papers,
        "only {summarized} of {papers} papers were summarized"
    );
    Ok(())
}
