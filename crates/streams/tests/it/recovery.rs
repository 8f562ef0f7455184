//! A new owner's handling of what a dead consumer left pending.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use streams::{Failure, Message};

use crate::common::*;

/// Send `messages` as (key, seq) and leave them all pending with a consumer
/// of `group` that then vanishes.
async fn pending_with_a_dead_consumer(
    client: &streams::StreamsClient,
    topic: &streams::Topic<Numbered>,
    group: &str,
    messages: &[(&str, u64)],
) {
    let producer = producer(client);
    for (key, seq) in messages {
        producer
            .send(
                topic,
                key,
                &Numbered {
                    key: (*key).into(),
                    seq: *seq,
                },
            )
            .await
            .expect("send");
    }
    streams::ensure_group(client, topic.layout(), group, streams::StartFrom::Beginning)
        .await
        .expect("group");
    let mut conn = redis::cluster::ClusterClient::new(test_support::shared_redis_urls())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connection");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("ghost")
        .arg("COUNT")
        .arg(messages.len())
        .arg("STREAMS")
        .arg(&topic.layout().partitions[0].stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("read as the ghost");
}

/// A handler that fails `key`'s message `seq` once, and records the rest.
fn fails_once(log: &Log, key: &'static str, seq: u64) -> impl streams::Handler<Numbered> + use<> {
    let (log, failed) = (log.clone(), Arc::new(AtomicBool::new(false)));
    streams::per_message(move |m: Message<Numbered>| {
        let (log, failed) = (log.clone(), failed.clone());
        async move {
            if m.payload.key == key && m.payload.seq == seq && !failed.swap(true, Ordering::SeqCst)
            {
                return Err(Failure::Retry("fails once".into()));
            }
            log.lock().expect("log").push(Seen::of("", &m));
            Ok(())
        }
    })
}

fn quick_retries() -> streams::TopicConfig {
    let mut config = topic_config(1);
    config.max_attempts = 6;
    config.retry.min_delay = Duration::ZERO;
    config.retry.max_delay = Duration::ZERO;
    config
}

/// Claimed entries, fewer than a batch, are each handled once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_entries_are_handled_once() {
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let messages: Vec<(&str, u64)> = (0..5).map(|seq| ("a", seq)).collect();
    pending_with_a_dead_consumer(&client, &topic, "g", &messages).await;
    let log = Log::default();
    let consumer = Running::start(&client, &topic, consumer_config("g"), recording("x", &log));
    wait_until(
        Duration::from_secs(10),
        "claimed entries handled",
        || async { seen_count(&log) >= 5 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    consumer.stop().await;
    assert_eq!(per_key(&log)["a"], [0, 1, 2, 3, 4]);
}

/// A claimed entry that fails and is retried is handled once more, not
/// twice, and its key's later entries follow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_claimed_entry_keeps_its_place() {
    let client = shared_client().await;
    let topic = topic(quick_retries());
    pending_with_a_dead_consumer(
        &client,
        &topic,
        "g",
        &[("a", 0), ("b", 0), ("b", 1), ("b", 2), ("a", 1)],
    )
    .await;
    let log = Log::default();
    let mut config = consumer_config("g");
    config.batch_size = 3;
    let consumer = Running::start(&client, &topic, config, fails_once(&log, "a", 0));
    wait_until(Duration::from_secs(10), "everything handled", || async {
        seen_count(&log) >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    consumer.stop().await;
    let keys = per_key(&log);
    assert_eq!(keys["a"], [0, 1]);
    assert_eq!(keys["b"], [0, 1, 2]);
}

/// A backlog bigger than a batch: when a key fails, its later entries
/// still waiting to be handed out go behind it as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_key_holds_back_its_entries_still_waiting() {
    let client = shared_client().await;
    let topic = topic(quick_retries());
    pending_with_a_dead_consumer(
        &client,
        &topic,
        "g",
        &[("k", 0), ("k", 1), ("x", 0), ("x", 1), ("k", 2)],
    )
    .await;
    let log = Log::default();
    let mut config = consumer_config("g");
    config.batch_size = 2;
    let consumer = Running::start(&client, &topic, config, fails_once(&log, "k", 0));
    wait_until(Duration::from_secs(10), "everything handled", || async {
        seen_count(&log) >= 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    consumer.stop().await;
    let keys = per_key(&log);
    assert_eq!(keys["k"], [0, 1, 2]);
    assert_eq!(keys["x"], [0, 1]);
}
