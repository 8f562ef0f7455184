//! The outbox and its relay against real Postgres and a real Redis Cluster.

use std::time::Duration;

use streams::{
    ClientConfig, Event, Inspector, StreamsClient, Topic, TopicConfig, inspect::Direction,
    inspect::Log,
};
use test_support::TestDatabase;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ingested {
    arxiv_id: String,
    version: u32,
}

impl Event for Ingested {
    const SCHEMA_VERSION: u32 = 1;
}

struct Setup {
    db: TestDatabase,
    client: StreamsClient,
    topic: Topic<Ingested>,
}

async fn setup(capacity: u64) -> Setup {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("database");
    outbox::migrate(&db.pool).await.expect("migrate");
    let client = StreamsClient::connect(ClientConfig::new(test_support::shared_redis_urls()))
        .await
        .expect("redis");
    let mut config = TopicConfig::new(test_support::unique_name("ingested"), 2);
    config.capacity = capacity;
    config.backpressure_retry_after = Duration::from_millis(100);
    let topic = Topic::new(config).expect("topic");
    streams::ensure_group(
        &client,
        topic.layout(),
        "summarizer",
        streams::StartFrom::Beginning,
    )
    .await
    .expect("group");
    Setup { db, client, topic }
}

impl Setup {
    fn relay(&self) -> outbox::Relay {
        outbox::Relay::new(
            self.db.pool.clone(),
            self.client.clone(),
            [self.topic.layout().clone()],
            outbox::RelayConfig {
                batch: 50,
                ..Default::default()
            },
        )
    }

    async fn enqueue(&self, papers: &[(&str, u32)], commit: bool) {
        let mut tx = self.db.pool.begin().await.expect("begin");
        for (id, version) in papers {
            let event = Ingested {
                arxiv_id: (*id).into(),
                version: *version,
            };
            outbox::enqueue(&mut tx, &self.topic, id, &format!("{id}v{version}"), &event)
                .await
                .expect("enqueue");
        }
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
    }

    /// Every message in the topic's streams, by key, in stream order.
    async fn published(&self) -> Vec<(String, String)> {
        let inspector = Inspector::new(self.client.clone());
        let mut out = Vec::new();
        for p in &self.topic.layout().partitions {
            let page = inspector
                .browse(
                    self.topic.layout(),
                    p.index,
                    Log::Stream,
                    Direction::Forward,
                    None,
                    1000,
                )
                .await
                .expect("browse");
            out.extend(
                page.entries
                    .iter()
                    .map(|e| (e.key().to_owned(), e.message_id().to_owned())),
            );
        }
        out
    }

    async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&self.db.pool)
            .await
            .expect("count")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_committed_events_are_published_each_once() {
    let s = setup(1000).await;
    s.enqueue(&[("2104.12255", 1), ("2104.12255", 2)], true)
        .await;
    s.enqueue(&[("9999.99999", 1)], false).await;
    s.enqueue(&[("2104.12255", 1)], true).await;
    let relay = s.relay();
    assert_eq!(relay.relay_once().await.expect("relay").published, 2);
    let published = s.published().await;
    assert_eq!(
        published,
        [
            ("2104.12255".to_owned(), "2104.12255v1".to_owned()),
            ("2104.12255".to_owned(), "2104.12255v2".to_owned())
        ]
    );
    // A relay that crashed after publishing, before marking, publishes again:
    // the stream still holds each event once.
    sqlx::query("UPDATE outbox SET published_at = NULL")
        .execute(&s.db.pool)
        .await
        .expect("unmark");
    assert_eq!(relay.relay_once().await.expect("relay").published, 2);
    assert_eq!(s.published().await, published);
    assert_eq!(s.unpublished().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_partition_makes_the_relay_wait_and_keep_order() {
    let s = setup(3).await;
    let papers: Vec<(String, u32)> = (1..=6).map(|v| ("2611.00001".to_owned(), v)).collect();
    let refs: Vec<(&str, u32)> = papers.iter().map(|(id, v)| (id.as_str(), *v)).collect();
    s.enqueue(&refs, true).await;
    let relay = s.relay();
    let round = relay.relay_once().await.expect("relay");
    assert_eq!(round.published, 3);
    assert!(round.backpressure.is_some(), "the partition is full");
    assert_eq!(s.unpublished().await, 3);

    // A consumer drains the partition; the relay then publishes the rest.
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let handler = {
        let log = log.clone();
        move |batch: streams::Batch<Ingested>| {
            let log = log.clone();
            async move {
                log.lock()
                    .expect("log")
                    .extend(batch.messages.iter().map(|m| m.payload.version));
                batch.ack_all()
            }
        }
    };
    let mut consumer_config =
        streams::ConsumerConfig::new("summarizer").with_lease_ttl(Duration::from_millis(1500));
    consumer_config.maintenance_interval = Duration::from_millis(100);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(
        streams::Consumer::new(s.client.clone(), &s.topic, consumer_config, handler)
            .run(shutdown.clone()),
    );
    let relaying = tokio::spawn({
        let relay = relay.clone();
        let shutdown = shutdown.clone();
        async move { relay.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log.lock().expect("log").len() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all events arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    consumer.await.expect("join").expect("consumer");
    relaying.await.expect("join").expect("relay");
    assert_eq!(
        *log.lock().expect("log"),
        [1, 2, 3, 4, 5, 6],
        "one key, in order"
    );
    assert_eq!(s.unpublished().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_at_a_time() {
    let s = setup(1000).await;
    let first = s.relay();
    let second = s.relay();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let a = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { first.run(shutdown).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { second.run(shutdown).await }
    });
    s.enqueue(&[("2611.00002", 1)], true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.unpublished().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the active relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
           AND classid::text::bigint = $1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(i64::from(outbox::RelayConfig::default().lock_namespace))
    .fetch_one(&s.db.pool)
    .await
    .expect("locks");
    assert_eq!(held, 1, "exactly one relay holds the lock");
    shutdown.cancel();
    a.await.expect("join").expect("relay a");
    b.await.expect("join").expect("relay b");
    assert_eq!(s.published().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_relay_publishes_only_its_own_topics_and_they_run_side_by_side() {
    let s = setup(1000).await;
    let other = Topic::<Ingested>::new(TopicConfig::new(test_support::unique_name("other"), 2))
        .expect("topic");
    let mut tx = s.db.pool.begin().await.expect("begin");
    let event = Ingested {
        arxiv_id: "2611.00003".into(),
        version: 1,
    };
    outbox::enqueue(&mut tx, &other, "2611.00003", "2611.00003v1", &event)
        .await
        .expect("enqueue");
    tx.commit().await.expect("commit");
    s.enqueue(&[("2611.00004", 1)], true).await;

    let ours = s.relay();
    assert_eq!(ours.relay_once().await.expect("relay").published, 1);
    assert_eq!(
        s.unpublished().await,
        1,
        "the other topic's row waits for its own relay"
    );

    let theirs = outbox::Relay::new(
        s.db.pool.clone(),
        s.client.clone(),
        [other.layout().clone()],
        outbox::RelayConfig::default(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = [ours, theirs].map(|relay| {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { relay.run(shutdown).await })
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.unpublished().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other topic's relay did not lead beside ours"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    for relay in running {
        relay.await.expect("join").expect("relay");
    }
}
