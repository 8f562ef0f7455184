//! The HTTP client against the fake arXiv, paced through the real Redis
//! Cluster.

use std::time::Duration;

use arxiv::{
    client::{Client, ClientConfig, ClientError, Listing, MetadataFormat},
    pace::{RedisPacer, Unpaced},
};
use fakes::arxiv::{FakeArxiv, Fault, corpus, day};

async fn fake(papers: usize, page_size: usize) -> FakeArxiv {
    test_support::init_tracing();
    let recorded =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arxiv-api");
    FakeArxiv::start(
        corpus(papers, day(2026, 11, 2), 20),
        page_size,
        Some(&recorded),
        0,
    )
    .await
    .expect("fake arXiv")
}

fn config(fake: &FakeArxiv) -> ClientConfig {
    ClientConfig {
        query_url: fake.query_url(),
        oai_url: fake.oai_url(),
        rss_url: fake.rss_url(),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

async fn redis() -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(test_support::shared_redis_urls())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_listings_and_announcements() {
    let fake = fake(95, 20).await;
    let client = Client::new(config(&fake), Unpaced).expect("client");
    let wanted: Vec<&str> = fake.papers()[..3].iter().map(|p| p.id.as_str()).collect();
    let found = client.papers(&wanted).await.expect("lookup");
    assert_eq!(
        found
            .papers
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        wanted
    );
    // A recorded response is served byte for byte at its URL.
    let recorded = client.papers(&["2104.12255v1"]).await;
    assert!(recorded.is_ok_and(|page| page.papers.first().is_some_and(|p| p.title == "0")));

    let mut seen = Vec::new();
    let mut page = client
        .list_records(Listing::Window {
            format: MetadataFormat::ArxivRaw,
            set: None,
            from: day(2026, 11, 1),
            until: None,
        })
        .await
        .expect("first page");
    loop {
        seen.extend(
            page.records
                .iter()
                .filter_map(|r| r.paper.as_ref())
                .map(|p| p.id.to_string()),
        );
        let Some(next) = page.resumption.take() else {
            break;
        };
        page = client
            .list_records(Listing::Resume(&next.token))
            .await
            .expect("next page");
    }
    let distinct: std::collections::BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 95, "every record");
    assert_eq!(distinct.len(), 95, "each once");

    let today = client
        .announcements(&["cs.LG", "cs.AI"])
        .await
        .expect("feed");
    assert!(!today.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_for_429_and_503() {
    let fake = fake(5, 20).await;
    let client = Client::new(config(&fake), Unpaced).expect("client");
    fake.inject([
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        Fault::Status {
            code: 503,
            retry_after: Some(2),
        },
    ]);
    let id = fake.papers()[0].id.clone();
    client
        .papers(&[&id])
        .await
        .expect("succeeds after the faults");
    let log = fake.requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 503, 200]
    );
    assert!(
        log[1].started - log[0].finished >= Duration::from_millis(990),
        "waited for the 429's Retry-After"
    );
    assert!(
        log[2].started - log[1].finished >= Duration::from_millis(1990),
        "waited for the 503's Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_errors_and_server_errors_give_up_eventually() {
    let fake = fake(5, 20).await;
    let client = Client::new(
        ClientConfig {
            attempts: 3,
            ..config(&fake)
        },
        Unpaced,
    )
    .expect("client");
    let id = fake.papers()[0].id.clone();
    fake.inject([Fault::Truncated]);
    assert!(matches!(
        client.papers(&[&id]).await,
        Err(ClientError::Parse(_))
    ));
    fake.inject([Fault::Malformed]);
    assert!(matches!(
        client.papers(&[&id]).await,
        Err(ClientError::Parse(_))
    ));
    fake.inject(
        [Fault::Status {
            code: 500,
            retry_after: None,
        }; 3],
    );
    assert!(matches!(
        client.papers(&[&id]).await,
        Err(ClientError::Status { status: 500, .. })
    ));
    // An unknown id is a 400 with the error feed: final, not retried.
    let before = fake.requests().len();
    assert!(matches!(
        client.papers(&["abc"]).await,
        Err(ClientError::Parse(arxiv::ParseError::Api { .. }))
    ));
    assert_eq!(fake.requests().len(), before + 1);
}

/// Two clients (two crawler processes) share one pacer through Redis:
/// never two requests within the interval, never two at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_share_one_pace() {
    let fake = fake(5, 20).await;
    let key = test_support::unique_name("arxiv-pace");
    let interval = Duration::from_secs(3);
    let pacer = |conn| RedisPacer::new(conn, &key, interval, Duration::from_secs(30));
    let a = Client::new(config(&fake), pacer(redis().await)).expect("client a");
    let b = Client::new(config(&fake), pacer(redis().await)).expect("client b");
    // Each request slow enough that overlapping turns would show.
    fake.inject([Fault::Slow(Duration::from_millis(300)); 4]);
    let id = fake.papers()[0].id.clone();
    let started = std::time::Instant::now();
    tokio::join!(
        async {
            for _ in 0..2 {
                a.papers(&[&id]).await.expect("a");
            }
        },
        async {
            for _ in 0..2 {
                b.papers(&[&id]).await.expect("b");
            }
        }
    );
    let mut log = fake.requests();
    log.sort_by_key(|r| r.started);
    assert_eq!(log.len(), 4);
    for pair in log.windows(2) {
        assert!(pair[1].started >= pair[0].finished, "two requests at once");
        assert!(
            pair[1].started - pair[0].started >= interval - Duration::from_millis(20),
            "requests closer than 3 s"
        );
    }
    assert!(started.elapsed() >= interval * 3);
}
