//! The crawler against the fake arXiv, real Postgres and the Redis Cluster.

use std::collections::BTreeSet;

use crawler::{Config, Crawler, Progress};
use fakes::arxiv::{FakeArxiv, Fault, corpus, day};
use test_support::TestDatabase;
use tokio_util::sync::CancellationToken;

struct Setup {
    fake: FakeArxiv,
    db: TestDatabase,
    config: Config,
    crawler: Crawler,
}

async fn setup(papers: usize, page_size: usize) -> Setup {
    test_support::init_tracing();
    let fake = FakeArxiv::start(corpus(papers, day(2026, 11, 2), 25), page_size, None, 0)
        .await
        .expect("fake arXiv");
    let db = TestDatabase::create().await.expect("database");
    let defaults = Config::default();
    let config = Config {
        database_url: db.url.clone(),
        redis_urls: test_support::shared_redis_urls(),
        arxiv: crawler::config::ArxivSettings {
            query_url: fake.query_url(),
            oai_url: fake.oai_url(),
            rss_url: fake.rss_url(),
            pace_interval_ms: 10,
            attempts: 2,
            ..defaults.arxiv.clone()
        },
        topic_prefix: format!("{}.", test_support::unique_name("t")),
        ..defaults
    };
    let crawler = Crawler::connect(&config).await.expect("crawler");
    Setup {
        fake,
        db,
        config,
        crawler,
    }
}

impl Setup {
    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_stores_every_paper_once_and_announces_new_versions() {
    let s = setup(120, 25).await;
    let shutdown = CancellationToken::new();
    let tally = s
        .crawler
        .backfill(
            day(2026, 11, 1),
            None,
            &["cs".into(), "stat".into()],
            &Progress::new(false),
            &shutdown,
        )
        .await
        .expect("backfill");
    let in_sets = s
        .fake
        .papers()
        .iter()
        .filter(|p| {
            p.categories
                .iter()
                .any(|c| c.starts_with("cs.") || c.starts_with("stat."))
        })
        .count() as u64;
    // A paper in both sets is met twice; the second time it is unchanged.
    assert_eq!(tally.new, in_sets);
    assert_eq!(s.count("SELECT count(*) FROM papers").await as u64, in_sets);
    assert_eq!(s.count("SELECT count(*) FROM outbox").await as u64, in_sets);
    assert_eq!(
        s.count("SELECT count(DISTINCT message_id) FROM outbox")
            .await as u64,
        in_sets
    );

    // The same window again: nothing new, no events.
    let again = s
        .crawler
        .backfill(
            day(2026, 11, 1),
            None,
            &["cs".into()],
            &Progress::new(false),
            &shutdown,
        )
        .await
        .expect("again");
    assert_eq!(again.new, 0, "the window was done");
    let other_window = s
        .crawler
        .backfill(
            day(2026, 11, 3),
            Some(day(2026, 11, 30)),
            &["cs".into()],
            &Progress::new(false),
            &shutdown,
        )
        .await
        .expect("overlapping window");
    assert_eq!(other_window.new, 0);
    assert!(other_window.unchanged > 0);
    assert_eq!(s.count("SELECT count(*) FROM outbox").await as u64, in_sets);
}

/// A backfill that stops after a few pages (here: the server fails every
/// attempt of a page) resumes from its checkpoint: it asks for the next
/// page with the saved token and stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_from_its_checkpoint() {
    let s = setup(200, 20).await;
    let shutdown = CancellationToken::new();
    let sets = ["cs".to_owned()];
    // Pages 1-3 succeed, then both attempts of page 4 fail.
    s.fake.inject([
        Fault::Slow(std::time::Duration::ZERO),
        Fault::Slow(std::time::Duration::ZERO),
        Fault::Slow(std::time::Duration::ZERO),
        Fault::Status {
            code: 500,
            retry_after: None,
        },
        Fault::Status {
            code: 500,
            retry_after: None,
        },
    ]);
    let crashed = s
        .crawler
        .backfill(
            day(2026, 11, 1),
            None,
            &sets,
            &Progress::new(false),
            &shutdown,
        )
        .await;
    assert!(crashed.is_err());
    let stored_before = s.count("SELECT count(*) FROM papers").await;
    assert_eq!(stored_before, 60, "three pages committed");
    let requests_before = s.fake.requests().len();

    let resumed = s
        .crawler
        .backfill(
            day(2026, 11, 1),
            None,
            &sets,
            &Progress::new(false),
            &shutdown,
        )
        .await
        .expect("resumed");
    let first_after = &s.fake.requests()[requests_before];
    assert!(
        first_after.query.contains("resumptionToken"),
        "resumed with the saved token: {}",
        first_after.query
    );
    let in_cs = s
        .fake
        .papers()
        .iter()
        .filter(|p| p.categories.iter().any(|c| c.starts_with("cs.")))
        .count() as i64;
    assert_eq!(resumed.new as i64 + stored_before, in_cs);
    assert_eq!(s.count("SELECT count(*) FROM papers").await, in_cs);
    assert_eq!(
        s.count("SELECT count(*) FROM outbox").await,
        in_cs,
        "one event per paper version"
    );

    // The relay publishes each event once.
    s.crawler
        .drain_outbox(std::time::Duration::from_secs(30))
        .await
        .expect("drain");
    assert_eq!(
        s.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_reads_the_feed_and_looks_the_papers_up() {
    let s = setup(60, 25).await;
    // Today's announcements: the papers changed on the corpus's last day.
    let latest = s
        .fake
        .papers()
        .iter()
        .map(|p| p.last_changed())
        .max()
        .expect("corpus");
    let announced: Vec<_> = s
        .fake
        .papers()
        .iter()
        .filter(|p| p.last_changed() == latest)
        .collect();
    let categories: Vec<String> = announced
        .iter()
        .map(|p| p.categories[0].clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tally = s.crawler.daily(&categories).await.expect("daily");
    let stored: Vec<(String, i32)> = sqlx::query_as("SELECT arxiv_id, version FROM papers")
        .fetch_all(&s.db.pool)
        .await
        .expect("papers");
    let expected: BTreeSet<(String, i32)> = announced
        .iter()
        .map(|p| (p.id.clone(), p.versions as i32))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(tally.new as usize, expected.len());
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
    let looked_up = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/query")
        .count();
    assert!(looked_up >= 1, "the announced ids were looked up");
    assert_eq!(s.crawler.daily(&categories).await.expect("again").new, 0);
}

#[test]
fn parse_reads_every_interface() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/arxiv/tests/fixtures");
    for (file, count) in [
        ("arxiv-api/id_2104.12255v1_s0_m100_6ae69987ffe1.xml", 1),
        ("oai_arxivraw_page1.xml", 2),
        ("rss_cs_lg_ai.xml", 5),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).expect("fixture");
        assert_eq!(
            crawler::parse_saved(&text).expect(file).len(),
            count,
            "{file}"
        );
    }
    assert!(crawler::parse_saved("<feed><entry>").is_err());
}

/// Two crawler processes running at once share arXiv's pace through Redis:
/// never two requests within three seconds, never two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_crawler_processes_keep_one_pace() {
    let s = setup(40, 25).await;
    s.fake
        .inject([fakes::arxiv::Fault::Slow(std::time::Duration::from_millis(200)); 8]);
    let latest = s
        .fake
        .papers()
        .iter()
        .map(|p| p.last_changed())
        .max()
        .expect("corpus");
    let category = s
        .fake
        .papers()
        .iter()
        .find(|p| p.last_changed() == latest)
        .map(|p| p.categories[0].clone())
        .expect("announced paper");
    let pace_key = test_support::unique_name("pace");
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_crawler"))
            .args(["daily", "--categories", &category])
            .env("DATABASE_URL", &s.db.url)
            .env(
                "PAPERSTREAM_REDIS_URLS",
                test_support::shared_redis_urls().join(","),
            )
            .env("PAPERSTREAM_ARXIV__QUERY_URL", s.fake.query_url())
            .env("PAPERSTREAM_ARXIV__OAI_URL", s.fake.oai_url())
            .env("PAPERSTREAM_ARXIV__RSS_URL", s.fake.rss_url())
            .env("PAPERSTREAM_ARXIV__PACE_KEY", &pace_key)
            .env(
                "PAPERSTREAM_TOPIC_PREFIX",
                format!("{}.", test_support::unique_name("t")),
            )
            .env("PAPERSTREAM_OPS_ADDR", "127.0.0.1:0")
            .kill_on_drop(true)
            .output()
    };
    let (a, b) = tokio::join!(spawn(), spawn());
    for out in [a.expect("crawler a"), b.expect("crawler b")] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut log = s.fake.requests();
    log.sort_by_key(|r| r.started);
    assert!(
        log.len() >= 4,
        "each process sent its requests: {}",
        log.len()
    );
    for pair in log.windows(2) {
        assert!(pair[1].started >= pair[0].finished, "two requests at once");
        assert!(
            pair[1].started - pair[0].started >= std::time::Duration::from_millis(2980),
            "requests {:?} apart",
            pair[1].started - pair[0].started
        );
    }
}

/// The scheduled mode crawls, relays the events and probes arXiv, and
/// stops cleanly when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_mode_crawls_relays_and_stops_on_request() {
    let s = setup(60, 25).await;
    let latest = s
        .fake
        .papers()
        .iter()
        .map(|p| p.last_changed())
        .max()
        .expect("corpus");
    let mut config = s.config.clone();
    config.schedule.categories = s
        .fake
        .papers()
        .iter()
        .filter(|p| p.last_changed() == latest)
        .map(|p| p.categories[0].clone())
        .collect();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let (crawler, shutdown) = (s.crawler.clone(), shutdown.clone());
        async move { crawler::run_scheduled(crawler, &config, shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let published = s
            .count("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
            .await;
        if published > 0
            && s.count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .await
                == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was crawled and relayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        s.fake
            .requests()
            .iter()
            .any(|r| r.query.contains("id_list=2104.12255")),
        "arXiv was probed"
    );
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("stops within 10 s")
        .expect("join")
        .expect("scheduled run");
}
