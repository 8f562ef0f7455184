//! Settings changes against real Postgres and a real Redis Cluster: they
//! reach every instance through Pub/Sub, an instance that missed the
//! message catches up, invalid changes are refused with their reasons, and
//! rollback restores an old version as a new one.

use std::{sync::Arc, time::Duration};

use settings::{
    Error, Settings,
    bus::{Applied, Applier, Watcher, WatcherConfig},
    store::{Change, Store},
};
use test_support::TestDatabase;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn defaults() -> Settings {
    Settings::defaults(&events::Topics::new("").expect("topics"), "")
}

async fn store() -> (TestDatabase, Store) {
    test_support::init_tracing();
    let db = TestDatabase::create().await.expect("database");
    settings::migrate(&db.pool).await.expect("migrate");
    let store = Store::new(db.pool.clone());
    (db, store)
}

async fn redis() -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(test_support::shared_redis_urls())
        .expect("client")
        .get_async_connection()
        .await
        .expect("redis")
}

struct Instance {
    topics: events::Topics,
    applied: watch::Receiver<Arc<Applied>>,
    task: tokio::task::JoinHandle<settings::Result<()>>,
}

async fn start_instance(
    store: &Store,
    name: &str,
    urls: Vec<String>,
    check_interval: Duration,
    shutdown: &CancellationToken,
) -> Instance {
    let topics = events::Topics::new("").expect("topics");
    let appliers: Vec<Applier> = vec![settings::topic_applier(topics.all_layouts(), "")];
    let mut config = WatcherConfig::new("summarizer", name, urls);
    config.check_interval = check_interval;
    let (watcher, applied) = Watcher::start(store.clone(), config, appliers)
        .await
        .expect("watcher");
    let task = tokio::spawn(watcher.run(shutdown.clone()));
    Instance {
        topics,
        applied,
        task,
    }
}

async fn wait_for_version(instance: &mut Instance, version: i64, within: Duration) {
    tokio::time::timeout(within, instance.applied.wait_for(|a| a.version == version))
        .await
        .unwrap_or_else(|_| panic!("version {version} not applied within {within:?}"))
        .expect("watcher alive");
}

fn with_capacity(capacity: u64) -> Settings {
    let mut settings = defaults();
    for topic in settings.topics.values_mut() {
        topic.capacity = capacity;
    }
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_instance_through_pubsub_and_each_reports_it() {
    let (_db, store) = store().await;
    let shutdown = CancellationToken::new();
    // The periodic check is an hour away: only the Pub/Sub nudge can
    // deliver the change in time.
    let mut instances = Vec::new();
    for i in 0..5 {
        let instance = start_instance(
            &store,
            &format!("summarizer-{i}"),
            test_support::shared_redis_urls(),
            Duration::from_secs(3600),
            &shutdown,
        )
        .await;
        assert_eq!(instance.applied.borrow().version, 0, "no change yet");
        instances.push(instance);
    }
    // Subscriptions are made in the background; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let changed = with_capacity(50_000);
    let version = store
        .change(Change {
            settings: &changed,
            author: "ops@example.com",
            reason: "smaller partitions",
            expected_version: Some(0),
        })
        .await
        .expect("change");
    settings::bus::announce(&mut redis().await, version)
        .await
        .expect("announce");
    for instance in &mut instances {
        wait_for_version(instance, version, Duration::from_secs(5)).await;
        assert_eq!(instance.applied.borrow().settings.as_ref(), Some(&changed));
        // Applied before it was published to the instance's components.
        assert_eq!(instance.topics.ingested.layout().tuning().capacity, 50_000);
        assert_eq!(
            instance.topics.email.layout().tuning().max_attempts,
            changed.topics["delivery.email"].max_attempts
        );
    }
    // Each reports right after applying.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reported = store
            .instances(Duration::from_secs(60))
            .await
            .expect("instances");
        if reported.len() == 5 && reported.iter().all(|i| i.applied_version == version) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reports: {reported:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    shutdown.cancel();
    for instance in instances {
        instance.task.await.expect("join").expect("watcher");
    }
    assert!(
        store
            .instances(Duration::from_secs(60))
            .await
            .expect("instances")
            .is_empty(),
        "instances that stopped leave the convergence view"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_misses_the_message_catches_up_by_checking() {
    let (_db, store) = store().await;
    let shutdown = CancellationToken::new();
    // Nothing listens on this port: the instance never hears Pub/Sub.
    let deaf = vec!["redis://127.0.0.1:1".to_owned()];
    let mut instance =
        start_instance(&store, "deaf", deaf, Duration::from_millis(300), &shutdown).await;
    let version = store
        .change(Change {
            settings: &with_capacity(70_000),
            author: "ops@example.com",
            reason: "",
            expected_version: None,
        })
        .await
        .expect("change");
    settings::bus::announce(&mut redis().await, version)
        .await
        .expect("announce");
    wait_for_version(&mut instance, version, Duration::from_secs(5)).await;
    shutdown.cancel();
    instance.task.await.expect("join").expect("watcher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_changes_are_refused_with_every_reason_and_nothing_is_stored() {
    let (_db, store) = store().await;
    let mut invalid = defaults();
    invalid.llm.order = vec!["ollama".into(), "bard".into()];
    invalid.crawler.categories.clear();
    let err = store
        .change(Change {
            settings: &invalid,
            author: "ops@example.com",
            reason: "",
            expected_version: None,
        })
        .await
        .expect_err("invalid");
    let Error::Invalid(problems) = &err else {
        panic!("{err}")
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["llm.order[1]", "crawler.categories"]);
    assert!(err.to_string().contains("unknown provider"), "{err}");

    let nobody = store
        .change(Change {
            settings: &defaults(),
            author: " ",
            reason: "",
            expected_version: None,
        })
        .await;
    assert!(matches!(nobody, Err(Error::NoAuthor)));
    assert_eq!(store.latest_version().await.expect("latest"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_an_old_version_as_a_new_one_and_stale_edits_are_refused() {
    let (_db, store) = store().await;
    let change = |settings: &Settings, expected| {
        let store = store.clone();
        let settings = settings.clone();
        async move {
            store
                .change(Change {
                    settings: &settings,
                    author: "ops@example.com",
                    reason: "test",
                    expected_version: expected,
                })
                .await
        }
    };
    let first = change(&with_capacity(10_000), Some(0))
        .await
        .expect("first");
    let second = change(&with_capacity(20_000), Some(first))
        .await
        .expect("second");
    let stale = change(&with_capacity(30_000), Some(first)).await;
    assert!(
        matches!(stale, Err(Error::Conflict { expected, latest }) if expected == first && latest == second),
        "{stale:?}"
    );
    let restored = store
        .rollback(first, "oncall@example.com", "capacity too high")
        .await
        .expect("rollback");
    assert_eq!(restored, 3);
    let latest = store.latest().await.expect("latest").expect("a version");
    assert_eq!(latest.settings, with_capacity(10_000));
    assert_eq!(latest.restores, Some(first));
    assert_eq!(latest.author, "oncall@example.com");
    let history: Vec<i64> = store
        .history(10)
        .await
        .expect("history")
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(history, [3, 2, 1]);
    assert_eq!(latest.reason, "capacity too high");
    let unexplained = store
        .rollback(second, "oncall@example.com", "  ")
        .await
        .expect("rollback without a reason");
    let latest = store.latest().await.expect("latest").expect("a version");
    assert_eq!(latest.version, unexplained);
    assert_eq!(latest.reason, format!("rollback to version {second}"));
    assert!(matches!(
        store.rollback(99, "ops@example.com", "").await,
        Err(Error::NoSuchVersion(99))
    ));
}
