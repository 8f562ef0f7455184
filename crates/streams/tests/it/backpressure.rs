use std::time::Duration;

use streams::{BackpressureReason, Error, Inspector, Outgoing};

use crate::common::*;

/// A full partition refuses writes with a typed error and a retry hint;
/// the refused tail can be sent again once consumers catch up, and order
/// holds. Retention never removes what a group has not acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_partition_refuses_and_nothing_unacked_is_trimmed() {
    let client = shared_client().await;
    let mut config = topic_config(1);
    config.capacity = 100;
    config.retain_acked = Duration::ZERO;
    let topic = topic(config);
    let producer = producer(&client);

    // Two groups exist; neither consumes yet.
    for group in ["fast", "slow"] {
        streams::ensure_group(
            &client,
            topic.layout(),
            group,
            streams::StartFrom::Beginning,
        )
        .await
        .expect("create group");
    }
    let messages: Vec<Numbered> = (0..150)
        .map(|seq| Numbered {
            key: "k".into(),
            seq,
        })
        .collect();
    let results = producer
        .send_batch(&topic, messages.iter().map(|m| Outgoing::new("k", m)))
        .await
        .expect("encode");
    assert!(results[..100].iter().all(Result::is_ok));
    for result in &results[100..] {
        match result {
            Err(Error::Backpressure(b)) => {
                assert_eq!(b.partition, 0);
                assert!(matches!(
                    b.reason,
                    BackpressureReason::PartitionFull { capacity: 100, .. }
                ));
                assert!(b.retry_after > Duration::ZERO);
            }
            other => panic!("expected backpressure, got {other:?}"),
        }
    }
    let single = producer.send(&topic, "k", &messages[100]).await;
    assert!(matches!(single, Err(Error::Backpressure(_))));

    // The fast group consumes everything; the slow one nothing. Retention
    // (acked entries older than 0 s) must keep all 100 for the slow group,
    // and capacity stays exhausted because the slow group is the backlog.
    let fast_log = Log::default();
    let fast = Running::start(
        &client,
        &topic,
        consumer_config("fast"),
        recording("fast", &fast_log),
    );
    wait_until(Duration::from_secs(10), "fast group done", || async {
        seen_count(&fast_log) == 100
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let inspector = Inspector::new(client.clone());
    let report = inspector
        .partition(topic.layout(), 0)
        .await
        .expect("report");
    assert_eq!(
        report.length, 100,
        "nothing the slow group needs was trimmed"
    );
    assert_eq!(report.backlog, 100);
    let slow = report
        .groups
        .iter()
        .find(|g| g.name == "slow")
        .expect("slow group");
    assert_eq!(slow.lag_entries, 100);
    assert!(producer.send(&topic, "k", &messages[100]).await.is_err());

    // Once the slow group catches up, retention trims and room returns.
    let slow_log = Log::default();
    let slow = Running::start(
        &client,
        &topic,
        consumer_config("slow"),
        recording("slow", &slow_log),
    );
    wait_until(Duration::from_secs(10), "slow group done", || async {
        seen_count(&slow_log) == 100
    })
    .await;
    wait_until(
        Duration::from_secs(10),
        "retention trims acked entries",
        || async {
            inspector
                .partition(topic.layout(), 0)
                .await
                .is_ok_and(|r| r.length == 0)
        },
    )
    .await;
    let rest = producer
        .send_batch(
            &topic,
            messages[100..].iter().map(|m| Outgoing::new("k", m)),
        )
        .await
        .expect("encode");
    assert!(rest.iter().all(Result::is_ok));
    wait_until(Duration::from_secs(10), "the rest consumed", || async {
        seen_count(&fast_log) == 150 && seen_count(&slow_log) == 150
    })
    .await;
    let expected: Vec<u64> = (0..150).collect();
    assert_eq!(per_key(&fast_log)["k"], expected);
    assert_eq!(per_key(&slow_log)["k"], expected);
    fast.stop().await;
    slow.stop().await;
}

/// The original system's loss: a `MAXLEN` trim deletes entries that are
/// still pending. The runtime cannot prevent an operator's trim, but it
/// notices: the next owner reports the lost entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_deleted_while_pending_are_reported() {
    recorded_metrics();
    let urls = test_support::shared_redis_urls();
    let client = connect(urls.clone()).await;
    let topic = topic(topic_config(1));
    produce_numbered(&producer(&client), &topic, 1, 50).await;
    // A consumer that takes a batch and dies holding it.
    let stuck = {
        move |batch: streams::Batch<Numbered>| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            batch.ack_all()
        }
    };
    let victim = Killable::start(urls, &topic, consumer_config("lossy"), stuck);
    let inspector = Inspector::new(client.clone());
    wait_until(
        Duration::from_secs(10),
        "entries pending with the victim",
        || async {
            inspector
                .partition(topic.layout(), 0)
                .await
                .is_ok_and(|r| r.groups.first().is_some_and(|g| g.pending > 0))
        },
    )
    .await;
    victim.kill();
    let mut conn = redis_connection().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&topic.layout().partitions[0].stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("trim");

    let log = Log::default();
    let survivor = Running::start(
        &client,
        &topic,
        consumer_config("lossy"),
        recording("survivor", &log),
    );
    wait_until(Duration::from_secs(10), "loss reported", || async {
        counter_for_topic("streams_unacked_trimmed_total", topic.name()) == 50
    })
    .await;
    survivor.stop().await;
    assert_eq!(
        seen_count(&log),
        0,
        "the deleted entries cannot be delivered"
    );
}

/// Entries trimmed away before the group read them are counted too. (Redis
/// can only tell once the group has read something: its read counter is
/// what the loss is measured against.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_entries_trimmed_away_are_reported() {
    recorded_metrics();
    let client = shared_client().await;
    let mut config = topic_config(1);
    config.retain_acked = Duration::ZERO;
    let topic = topic(config);
    let log = Log::default();
    let consumer = Running::start(
        &client,
        &topic,
        consumer_config("late"),
        recording("late", &log),
    );
    produce_numbered(&producer(&client), &topic, 1, 5).await;
    wait_until(Duration::from_secs(10), "first entries handled", || async {
        seen_count(&log) == 5
    })
    .await;
    consumer.stop().await;

    produce_numbered(&producer(&client), &topic, 1, 30).await;
    let mut conn = redis_connection().await;
    let _: i64 = redis::cmd("XTRIM")
        .arg(&topic.layout().partitions[0].stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(&mut conn)
        .await
        .expect("trim");
    let consumer = Running::start(
        &client,
        &topic,
        consumer_config("late"),
        recording("late", &log),
    );
    wait_until(Duration::from_secs(10), "loss reported", || async {
        counter_for_topic("streams_unacked_trimmed_total", topic.name()) == 30
    })
    .await;
    // New entries flow normally, retention empties the stream again and
    // again, and the loss is not counted twice.
    produce_numbered(&producer(&client), &topic, 1, 5).await;
    wait_until(Duration::from_secs(10), "new entries handled", || async {
        seen_count(&log) == 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        counter_for_topic("streams_unacked_trimmed_total", topic.name()),
        30
    );
    consumer.stop().await;
}

/// A node at `maxmemory` (with `noeviction`) refuses appends, reported as
/// backpressure; consumers still read, acknowledge and trim, so the node
/// drains and producers get through again. Nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_appends_until_consumers_drain_it() {
    let (_cluster, client, topic, master) = topic_on_a_private_cluster("drain").await;
    let used = node_used_memory(master);
    set_maxmemory(master, used + 4 * 1024 * 1024);

    let producer = producer(&client);
    let mut accepted = 0usize;
    let mut refusal = None;
    for round in 0..1000u64 {
        let messages: Vec<Numbered> = (0..1000)
            .map(|i| Numbered {
                key: format!("key-{i:04}-{}", "x".repeat(40)),
                seq: round,
            })
            .collect();
        let results = producer
            .send_batch(&topic, messages.iter().map(|m| Outgoing::new(&m.key, m)))
            .await
            .expect("encode");
        accepted += results.iter().filter(|r| r.is_ok()).count();
        if let Some(Err(err)) = results.into_iter().find(Result::is_err) {
            refusal = Some(err);
            break;
        }
    }
    match refusal {
        Some(Error::Backpressure(b)) => assert_eq!(b.reason, BackpressureReason::NodeOutOfMemory),
        other => panic!("expected the node to fill up, got {other:?}"),
    }
    assert!(accepted > 0);
    // Keep the node full whatever its buffers do meanwhile: only removing
    // stream entries brings it back under the limit.
    set_maxmemory(master, node_used_memory(master) - 1024 * 1024);
    assert!(
        producer
            .send(
                &topic,
                "probe",
                &Numbered {
                    key: "probe".into(),
                    seq: 0
                }
            )
            .await
            .is_err()
    );

    let log = Log::default();
    let consumer = Running::start(
        &client,
        &topic,
        consumer_config("drain"),
        recording("drain", &log),
    );
    wait_until(
        Duration::from_secs(30),
        "every accepted message handled",
        || async { seen_count(&log) >= accepted },
    )
    .await;
    let probe = Numbered {
        key: "probe".into(),
        seq: 0,
    };
    wait_until(
        Duration::from_secs(30),
        "appends accepted again",
        || async { producer.send(&topic, "probe", &probe).await.is_ok() },
    )
    .await;
    consumer.stop().await;
    let handled: usize = per_key(&log)
        .iter()
        .filter(|(key, _)| key.as_str() != "probe")
        .map(|(_, seqs)| seqs.len())
        .sum();
    assert_eq!(handled, accepted, "each accepted message handled once");
}

/// With an idempotency TTL, a message sent again with the same id (a relay
/// retrying after a crash) is not appended twice; the second send reports
/// the first entry. Capacity counts only what was appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producer_appends_a_message_id_once() {
    let client = shared_client().await;
    let mut config = topic_config(2);
    config.capacity = 3;
    let topic = topic(config);
    streams::ensure_group(&client, topic.layout(), "g", streams::StartFrom::Beginning)
        .await
        .expect("group");
    let producer = streams::Producer::new(
        client.clone(),
        streams::ProducerConfig {
            idempotency_ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    let messages: Vec<Numbered> = (0..3)
        .map(|seq| Numbered {
            key: "k".into(),
            seq,
        })
        .collect();
    let ids = ["outbox-1", "outbox-2", "outbox-3"];
    let send = |n: usize| {
        let producer = producer.clone();
        let topic = topic.clone();
        let batch: Vec<Outgoing<'_, Numbered>> = (0..n)
            .map(|i| Outgoing::new("k", &messages[i]).with_id(ids[i]))
            .collect();
        async move { producer.send_batch(&topic, batch).await.expect("encode") }
    };
    let first: Vec<streams::Sent> = send(2)
        .await
        .into_iter()
        .map(|r| r.expect("sent"))
        .collect();
    assert!(first.iter().all(|s| !s.duplicate));
    // After a "crash" the relay sends all three; the first two are repeats.
    let again: Vec<streams::Sent> = send(3)
        .await
        .into_iter()
        .map(|r| r.expect("sent"))
        .collect();
    assert_eq!(
        again.iter().map(|s| s.duplicate).collect::<Vec<_>>(),
        [true, true, false]
    );
    assert_eq!(again[0].entry_id, first[0].entry_id);
    assert_eq!(again[1].entry_id, first[1].entry_id);
    let inspector = Inspector::new(client.clone());
    let partition = topic.partition_for("k");
    let report = inspector
        .partition(topic.layout(), partition)
        .await
        .expect("report");
    assert_eq!(report.length, 3, "three messages, three entries");
    // Capacity 3 is now used up; a repeat still reports its entry.
    assert!(
        send(3)
            .await
            .into_iter()
            .all(|r| r.is_ok_and(|s| s.duplicate))
    );
}

/// A capacity changed at runtime (the config bus retunes the layout)
/// applies to the next append: a full partition takes more after a raise,
/// and refuses again at the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retuned_capacity_applies_to_the_next_append() {
    let client = shared_client().await;
    let mut config = topic_config(1);
    config.capacity = 2;
    let topic = topic(config);
    streams::ensure_group(&client, topic.layout(), "g", streams::StartFrom::Beginning)
        .await
        .expect("group");
    let producer = producer(&client);
    let message = |seq| Numbered {
        key: "k".into(),
        seq,
    };
    for seq in 0..2 {
        producer
            .send(&topic, "k", &message(seq))
            .await
            .expect("room");
    }
    let full = producer.send(&topic, "k", &message(2)).await;
    assert!(
        matches!(full, Err(streams::Error::Backpressure(_))),
        "{full:?}"
    );

    let mut tuning = topic.layout().tuning();
    tuning.capacity = 3;
    topic.layout().retune(tuning).expect("retune");
    producer
        .send(&topic, "k", &message(2))
        .await
        .expect("room after the raise");
    let full = producer.send(&topic, "k", &message(3)).await;
    assert!(
        matches!(full, Err(streams::Error::Backpressure(_))),
        "{full:?}"
    );

    tuning.capacity = 0;
    assert!(
        topic.layout().retune(tuning).is_err(),
        "a zero capacity is refused"
    );
    assert_eq!(topic.layout().tuning().capacity, 3);
}
