//! The summarizer between real Postgres, the Redis Cluster and fake LLMs.

use std::time::Duration;

use events::{PaperIngested, Topics};
use fakes::llm::{Behaviour, FakeLlm};
use streams::{
    Inspector, Outgoing, Producer, ProducerConfig, StreamsClient, inspect::Direction, inspect::Log,
};
use summarizer::Config;
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;

struct Setup {
    db: TestDatabase,
    client: StreamsClient,
    topics: Topics,
    ollama: FakeLlm,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<summarizer::Result<()>>,
}

async fn setup() -> Setup {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("database");
    catalog::migrate(&db.pool).await.expect("migrate");
    outbox::migrate(&db.pool).await.expect("migrate");
    let ollama = FakeLlm::start(Behaviour::default(), 0)
        .await
        .expect("fake ollama");
    let prefix = format!("{}.", test_support::unique_name("t"));
    let defaults = Config::default();
    let config = Config {
        database_url: db.url.clone(),
        redis_urls: test_support::shared_redis_urls(),
        llm: summarizer::config::LlmSettings {
            ollama_url: ollama.ollama_url(),
            ..defaults.llm.clone()
        },
        topic_prefix: prefix.clone(),
        ..defaults
    };
    let client = StreamsClient::connect(streams::ClientConfig::new(config.redis_urls.clone()))
        .await
        .expect("redis");
    let topics = Topics::new(&prefix).expect("topics");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { summarizer::run(&config, shutdown).await }
    });
    Setup {
        db,
        client,
        topics,
        ollama,
        shutdown,
        running,
    }
}

impl Setup {
    async fn store(&self, paper: &arxiv::Paper) {
        let mut tx = self.db.pool.begin().await.expect("begin");
        catalog::store_paper(&mut tx, paper).await.expect("store");
        tx.commit().await.expect("commit");
    }

    async fn announce(&self, event: &PaperIngested, message_id: &str) {
        let producer = Producer::new(self.client.clone(), ProducerConfig::default());
        producer
            .send_batch(
                &self.topics.ingested,
                [Outgoing::new(&event.arxiv_id, event).with_id(message_id)],
            )
            .await
            .expect("encode")[0]
            .as_ref()
            .expect("sent");
    }

    async fn summaries(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM summaries")
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }

    async fn summarized_events(&self) -> usize {
        let inspector = Inspector::new(self.client.clone());
        let mut count = 0;
        for p in &self.topics.summarized.layout().partitions {
            count += inspector
                .browse(
                    self.topics.summarized.layout(),
                    p.index,
                    Log::Stream,
                    Direction::Forward,
                    None,
                    1000,
                )
                .await
                .expect("browse")
                .entries
                .len();
        }
        count
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.running.await.expect("join").expect("summarizer");
    }
}

fn paper() -> (arxiv::Paper, PaperIngested) {
    let xml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../crates/arxiv/tests/fixtures/arxiv-api/id_2104.12255v1_s0_m100_6ae69987ffe1.xml"
    ))
    .expect("fixture");
    let paper = arxiv::query::parse(&xml).expect("parses").papers.remove(0);
    let event = PaperIngested {
        arxiv_id: paper.id.to_string(),
        version: 1,
        title: paper.title.clone(),
        primary_category: paper.primary_category.clone(),
        categories: paper.categories.clone(),
    };
    (paper, event)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A paper announced twice (a redelivery, a republished event) is
/// summarized once, by Ollama, and announced once on `paper.summarized`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_is_summarized_and_announced_once() {
    let s = setup().await;
    let (paper, event) = paper();
    s.store(&paper).await;
    s.announce(&event, "first").await;
    eventually("the summary", async || s.summaries().await == 1).await;
    eventually("the summarized event", async || {
        s.summarized_events().await == 1
    })
    .await;
    s.announce(&event, "again").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.summaries().await, 1);
    assert_eq!(s.summarized_events().await, 1);
    assert_eq!(s.ollama.served(), 1, "the repeat called no model");
    let (provider, text): (String, String) = sqlx::query_as("SELECT provider, text FROM summaries")
        .fetch_one(&s.db.pool)
        .await
        .expect("summary");
    assert_eq!(provider, "ollama");
    assert!(text.contains("\"0\""), "{text}");
    s.stop().await;
}

/// An event for a paper the catalog does not hold cannot succeed: it is
/// dead-lettered with the reason, and the next papers flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_paper_is_dead_lettered() {
    let s = setup().await;
    let (paper, event) = paper();
    let ghost = PaperIngested {
        arxiv_id: "2611.99999".into(),
        ..event.clone()
    };
    s.announce(&ghost, "ghost").await;
    s.store(&paper).await;
    s.announce(&event, "real").await;
    eventually("the real paper's summary", async || {
        s.summaries().await == 1
    })
    .await;
    let inspector = Inspector::new(s.client.clone());
    let found = inspector
        .search(s.topics.ingested.layout(), "key", "2611.99999", 1000)
        .await
        .expect("search");
    let dead = found
        .iter()
        .find(|f| f.log == Log::Dlq)
        .expect("in the DLQ");
    assert_eq!(dead.entry.field_str("dlq.reason"), Some("rejected"));
    s.stop().await;
}
