//! The Redis users of `infra/redis/users.acl` on a real cluster: each
//! service does its real work as its own user (the same library calls its
//! code makes), and is refused what it has no business doing.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use events::{Deliver, DeliveryRequested, NotificationRequested, PaperIngested, PaperSummarized};
use redis::{cluster::ClusterClient, cluster_async::ClusterConnection};
use streams::{
    ClientConfig, Consumer, ConsumerConfig, Durability, Failure, Inspector, Message, Producer,
    ProducerConfig, StreamsClient, inspect::Log, redrive::Selection,
};
use test_support::RedisCluster;
use tokio_util::sync::CancellationToken;

const SERVICES: [&str; 5] = ["crawler", "summarizer", "notifier", "api", "exporter"];

struct Users {
    cluster: RedisCluster,
    passwords: Vec<(String, String)>,
}

impl Users {
    fn start() -> Self {
        let passwords: Vec<(String, String)> = std::iter::once("admin")
            .chain(SERVICES)
            .map(|user| (user.to_owned(), uuid::Uuid::new_v4().simple().to_string()))
            .collect();
        let placeholders: Vec<(String, &str)> = passwords
            .iter()
            .map(|(user, password)| (user.to_uppercase(), password.as_str()))
            .collect();
        let placeholders: Vec<(&str, &str)> =
            placeholders.iter().map(|(n, p)| (n.as_str(), *p)).collect();
        let acl = infra_checks::render_acl(&placeholders).expect("render users.acl");
        let cluster = RedisCluster::start_with_users(&acl, &passwords[0].1).expect("cluster");
        Self { cluster, passwords }
    }

    fn urls(&self, user: &str) -> Vec<String> {
        let password = self
            .passwords
            .iter()
            .find(|(name, _)| name == user)
            .map(|(_, password)| password.as_str())
            .expect("a known user");
        self.cluster.urls_as(user, password)
    }

    async fn streams(&self, user: &str) -> StreamsClient {
        let mut config = ClientConfig::new(self.urls(user));
        // A refusal is not transient; a short bound shows it if it were retried.
        config.operation_timeout = Duration::from_secs(3);
        StreamsClient::connect(config).await.expect(user)
    }

    async fn raw(&self, user: &str) -> ClusterConnection {
        ClusterClient::new(self.urls(user))
            .expect("client")
            .get_async_connection()
            .await
            .expect(user)
    }
}

fn assert_refused<T: std::fmt::Debug>(what: &str, result: Result<T, impl std::fmt::Display>) {
    match result {
        Ok(value) => panic!("{what} was allowed: {value:?}"),
        Err(err) => assert!(
            err.to_string().to_lowercase().contains("noperm"),
            "{what} failed, but not by a permission refusal: {err}"
        ),
    }
}

/// Commands no service may run, each checked for `user`.
async fn assert_no_admin_commands(conn: &mut ClusterConnection, user: &str) {
    let forbidden: [&[&str]; 7] = [
        &["FLUSHALL"],
        &["SCRIPT", "FLUSH"],
        &["CONFIG", "SET", "maxmemory", "1"],
        &["ACL", "LIST"],
        &["CLUSTER", "FORGET", "0123"],
        &["CLIENT", "KILL", "ID", "1"],
        &["SAVE"],
    ];
    for args in forbidden {
        let mut cmd = redis::cmd(args[0]);
        cmd.arg(&args[1..]);
        assert_refused(
            &format!("{user}: {}", args.join(" ")),
            query(conn, &cmd).await,
        );
    }
}

async fn query(conn: &mut ClusterConnection, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    cmd.query_async(conn).await
}

fn ingested(n: usize) -> PaperIngested {
    PaperIngested {
        arxiv_id: format!("2611.{n:05}"),
        version: 1,
        title: format!("Paper {n}"),
        primary_category: "cs.LG".into(),
        categories: vec!["cs.LG".into()],
    }
}

fn summarized(paper: &PaperIngested) -> PaperSummarized {
    PaperSummarized {
        arxiv_id: paper.arxiv_id.clone(),
        version: paper.version,
        prompt_version: 1,
        provider: "extractive".into(),
        extractive: true,
    }
}

fn consumer_config(group: &str) -> ConsumerConfig {
    let mut config = ConsumerConfig::new(group);
    config.block = Duration::from_millis(100);
    config.dedupe_ttl = Some(Duration::from_secs(60));
    config
}

/// Wait until `count` returns at least `want`.
async fn eventually(what: &str, want: usize, count: impl Fn() -> usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} of {want}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_does_its_work_as_its_own_user_and_nothing_else() {
    test_support::init_tracing();
    let users = Users::start();
    let topics = events::Topics::new("").expect("topics");

    // Every service listens for settings changes; only the api announces.
    for user in SERVICES {
        let client = redis::Client::open(users.urls(user)[0].as_str()).expect("client");
        let mut pubsub = client.get_async_pubsub().await.expect(user);
        pubsub
            .subscribe(settings::bus::CHANNEL)
            .await
            .unwrap_or_else(|e| panic!("{user} may listen for settings: {e}"));
        let mut raw = users.raw(user).await;
        let announce = redis::cmd("PUBLISH")
            .arg(settings::bus::CHANNEL)
            .arg(1)
            .to_owned();
        if user == "api" {
            query(&mut raw, &announce).await.expect("the api announces");
        } else {
            assert_refused(
                &format!("{user} announcing settings"),
                query(&mut raw, &announce).await,
            );
        }
    }

    // crawler: create the summarizer's group (so backpressure counts it from
    // the start), publish papers (the relay's idempotent, replicated
    // appends) and take turns at arXiv.
    let crawler = users.streams("crawler").await;
    streams::ensure_group(
        &crawler,
        topics.ingested.layout(),
        "summarizer",
        streams::StartFrom::Beginning,
    )
    .await
    .expect("the crawler creates the summarizer's group");
    let publisher = Producer::new(
        crawler.clone(),
        ProducerConfig {
            idempotency_ttl: Some(Duration::from_secs(60)),
            durability: Durability::Replicated {
                replicas: 1,
                timeout: Duration::from_secs(2),
            },
            ..ProducerConfig::default()
        },
    );
    let papers: Vec<PaperIngested> = (0..20).map(ingested).collect();
    for paper in &papers {
        publisher
            .send_batch(
                &topics.ingested,
                [streams::Outgoing::new(&paper.arxiv_id, paper).with_id(&paper.message_id())],
            )
            .await
            .expect("crawler publishes paper.ingested")
            .into_iter()
            .for_each(|sent| {
                sent.expect("appended");
            });
    }
    let pacer = arxiv::pace::RedisPacer::new(
        users.raw("crawler").await,
        "arxiv:pace",
        Duration::from_millis(10),
        Duration::from_secs(5),
    );
    let turn = arxiv::pace::Pacer::turn(&pacer)
        .await
        .expect("crawler paces arXiv");
    arxiv::pace::Pacer::done(&pacer, turn).await;
    assert_refused(
        "crawler publishing paper.summarized",
        publisher
            .send(&topics.summarized, "x", &summarized(&papers[0]))
            .await,
    );
    assert_no_admin_commands(&mut users.raw("crawler").await, "crawler").await;

    // summarizer: consume paper.ingested (one paper is rejected into the
    // DLQ), publish paper.summarized, spend the shared budget.
    let summarizer = users.streams("summarizer").await;
    let shutdown = CancellationToken::new();
    streams::ensure_group(
        &summarizer,
        topics.ingested.layout(),
        "summarizer",
        streams::StartFrom::Beginning,
    )
    .await
    .expect("summarizer creates its group");
    let summaries = Arc::new(Mutex::new(0_usize));
    let summarizing = {
        let producer = Producer::new(summarizer.clone(), ProducerConfig::default());
        let summarized_topic = topics.summarized.clone();
        let summaries = summaries.clone();
        let rejected = papers[0].arxiv_id.clone();
        let handler = streams::per_message(move |m: Message<PaperIngested>| {
            let (producer, topic, summaries, rejected) = (
                producer.clone(),
                summarized_topic.clone(),
                summaries.clone(),
                rejected.clone(),
            );
            async move {
                if m.payload.arxiv_id == rejected {
                    return Err(Failure::Reject("not a paper".into()));
                }
                producer
                    .send(&topic, &m.payload.arxiv_id, &summarized(&m.payload))
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))?;
                *summaries.lock().expect("lock") += 1;
                Ok(())
            }
        });
        let consumer = Consumer::new(
            summarizer.clone(),
            &topics.ingested,
            consumer_config("summarizer"),
            handler,
        );
        tokio::spawn(consumer.run(shutdown.clone()))
    };
    eventually("papers summarized", papers.len() - 1, || {
        *summaries.lock().expect("lock")
    })
    .await;
    let budget = llm::budget::SpendCap::new(users.raw("summarizer").await, "openai", 1000);
    assert!(
        budget
            .reserve(10)
            .await
            .expect("summarizer spends the budget")
            .is_some()
    );
    let mut summarizer_raw = users.raw("summarizer").await;
    assert_refused(
        "summarizer reading notification.requested",
        query(
            &mut summarizer_raw,
            redis::cmd("XLEN").arg(&topics.notifications.layout().partitions[0].stream),
        )
        .await,
    );
    assert_refused(
        "summarizer destroying its group",
        query(
            &mut summarizer_raw,
            redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&topics.ingested.layout().partitions[0].stream)
                .arg("summarizer"),
        )
        .await,
    );
    assert_no_admin_commands(&mut summarizer_raw, "summarizer").await;

    // notifier: consume paper.summarized, publish notification.requested
    // and deliveries.
    let notifier = users.streams("notifier").await;
    streams::ensure_group(
        &notifier,
        topics.summarized.layout(),
        "matcher",
        streams::StartFrom::Beginning,
    )
    .await
    .expect("notifier creates its group");
    let notified = Arc::new(Mutex::new(0_usize));
    let notifying = {
        let producer = Producer::new(notifier.clone(), ProducerConfig::default());
        let t = topics.clone();
        let notified = notified.clone();
        let handler = streams::per_message(move |m: Message<PaperSummarized>| {
            let (producer, t, notified) = (producer.clone(), t.clone(), notified.clone());
            async move {
                let request = NotificationRequested {
                    user_id: 7,
                    arxiv_id: m.payload.arxiv_id.clone(),
                    version: m.payload.version,
                    subscription_ids: vec![1],
                };
                let delivery = DeliveryRequested {
                    user_id: 7,
                    channel_id: 1,
                    what: Deliver::Paper {
                        arxiv_id: m.payload.arxiv_id.clone(),
                        subscription_ids: vec![1],
                    },
                };
                let retry = |e: streams::Error| Failure::Retry(e.to_string());
                producer
                    .send(&t.notifications, "7", &request)
                    .await
                    .map_err(retry)?;
                producer
                    .send(&t.email, "7", &delivery)
                    .await
                    .map_err(retry)?;
                *notified.lock().expect("lock") += 1;
                Ok(())
            }
        });
        let consumer = Consumer::new(
            notifier.clone(),
            &topics.summarized,
            consumer_config("matcher"),
            handler,
        );
        tokio::spawn(consumer.run(shutdown.clone()))
    };
    eventually("papers notified", papers.len() - 1, || {
        *notified.lock().expect("lock")
    })
    .await;
    assert_refused(
        "notifier publishing paper.ingested",
        Producer::new(notifier.clone(), ProducerConfig::default())
            .send(&topics.ingested, "x", &papers[1])
            .await,
    );
    assert_no_admin_commands(&mut users.raw("notifier").await, "notifier").await;

    // api: the admin pages inspect every topic and replay the dead letter.
    let api = users.streams("api").await;
    let inspector = Inspector::new(api.clone());
    let mut dead_letters = 0;
    for layout in topics.all_layouts() {
        let report = inspector.topic(&layout).await.expect("api inspects");
        dead_letters += report.partitions.iter().map(|p| p.dlq_length).sum::<u64>();
    }
    assert_eq!(dead_letters, 1, "the rejected paper is in a DLQ");
    let partition = topics.ingested.partition_for(&papers[0].arxiv_id);
    let dead = inspector
        .browse(
            topics.ingested.layout(),
            partition,
            Log::Dlq,
            streams::inspect::Direction::Forward,
            None,
            10,
        )
        .await
        .expect("api browses the DLQ");
    let report = streams::redrive::redrive(
        &api,
        topics.ingested.layout(),
        partition,
        Selection::One(dead.entries[0].entry_id),
        "admin@example.com",
    )
    .await
    .expect("api replays a dead letter");
    assert_eq!(report.replayed, 1);
    let mut api_raw = users.raw("api").await;
    assert_refused(
        "api reading a stream as a consumer group",
        query(
            &mut api_raw,
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("summarizer")
                .arg("api")
                .arg("STREAMS")
                .arg(&topics.ingested.layout().partitions[0].stream)
                .arg(">"),
        )
        .await,
    );
    assert_no_admin_commands(&mut api_raw, "api").await;

    // exporter: reads everything the metrics need, writes nothing.
    let exporter = users.streams("exporter").await;
    exporter::export_once(&Inspector::new(exporter), &topics.all_layouts())
        .await
        .expect("exporter exports");
    let mut exporter_raw = users.raw("exporter").await;
    let stream = &topics.ingested.layout().partitions[0].stream;
    assert_refused(
        "exporter appending",
        query(
            &mut exporter_raw,
            redis::cmd("XADD").arg(stream).arg("*").arg("a").arg("b"),
        )
        .await,
    );
    assert_refused(
        "exporter deleting",
        query(&mut exporter_raw, redis::cmd("DEL").arg(stream)).await,
    );
    assert_no_admin_commands(&mut exporter_raw, "exporter").await;

    shutdown.cancel();
    summarizing.await.expect("join").expect("summarizer");
    notifying.await.expect("join").expect("notifier");
}
