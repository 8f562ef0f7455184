use std::time::Duration;

use crate::common::*;

/// Consumers join and leave while messages flow; every key's messages are
/// processed exactly once and in order, and each partition is processed by
/// one consumer at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_holds_while_consumers_join_and_leave() {
    let client = shared_client().await;
    let topic = topic(topic_config(6));
    let group = "order";
    let log = Log::default();
    let keys = 24;
    let per_key_count = 250;

    let first = Running::start(&client, &topic, consumer_config(group), {
        let log = log.clone();
        let name = "first".to_owned();
        move |batch: streams::Batch<Numbered>| {
            let (log, name) = (log.clone(), name.clone());
            async move {
                record(&log, &name, &batch);
                tokio::time::sleep(Duration::from_millis(2)).await;
                batch.ack_all()
            }
        }
    });
    // Production runs for a few seconds, so that every membership change
    // below happens while messages flow.
    let producing = {
        let producer = producer(&client);
        let topic = topic.clone();
        tokio::spawn(async move {
            for round in 0..per_key_count / 25 {
                let messages: Vec<Numbered> = (round * 25..(round + 1) * 25)
                    .flat_map(|seq| {
                        (0..keys).map(move |k| Numbered {
                            key: format!("key-{k}"),
                            seq,
                        })
                    })
                    .collect();
                for r in producer
                    .send_batch(
                        &topic,
                        messages.iter().map(|m| streams::Outgoing::new(&m.key, m)),
                    )
                    .await
                    .expect("encode")
                {
                    r.expect("send");
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    let total = keys * per_key_count as usize;
    let handled_by = |name: &'static str| {
        let log = log.clone();
        move || {
            let log = log.clone();
            async move { log.lock().expect("log").iter().any(|s| s.consumer == name) }
        }
    };
    wait_until(Duration::from_secs(20), "first messages", || async {
        seen_count(&log) > 200
    })
    .await;
    let second = Running::start(
        &client,
        &topic,
        consumer_config(group),
        recording("second", &log),
    );
    wait_until(
        Duration::from_secs(20),
        "the second consumer at work",
        handled_by("second"),
    )
    .await;
    let third = Running::start(
        &client,
        &topic,
        consumer_config(group),
        recording("third", &log),
    );
    wait_until(
        Duration::from_secs(20),
        "the third consumer at work",
        handled_by("third"),
    )
    .await;
    first.stop().await;
    let after_first = seen_count(&log);
    wait_until(Duration::from_secs(20), "more messages", || async {
        seen_count(&log) > after_first + 500
    })
    .await;
    second.stop().await;
    producing.await.expect("producer");
    wait_until(Duration::from_secs(30), "all messages", || async {
        seen_count(&log) >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    third.stop().await;

    let sequences = per_key(&log);
    assert_eq!(sequences.len(), keys);
    let expected: Vec<u64> = (0..per_key_count).collect();
    for (key, seqs) in &sequences {
        assert_eq!(seqs, &expected, "{key} out of order or duplicated");
    }
    let seen = log.lock().expect("log").clone();
    let consumers: std::collections::BTreeSet<&str> =
        seen.iter().map(|s| s.consumer.as_str()).collect();
    assert_eq!(
        consumers.len(),
        3,
        "every consumer took part: {consumers:?}"
    );
    // A partition's messages form runs per consumer; a consumer never comes
    // back to a partition while another holds it, so runs do not interleave
    // beyond the hand-overs (at most one per membership change per partition).
    for partition in 0..6u16 {
        let owners: Vec<&str> = seen
            .iter()
            .filter(|s| s.partition == partition)
            .map(|s| s.consumer.as_str())
            .collect();
        let handovers = owners.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            handovers <= 6,
            "partition {partition} changed hands {handovers} times"
        );
    }
}

/// Partition tags put two of six partitions on each master of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_balanced_over_the_masters() {
    let client = shared_client().await;
    let topic = topic(topic_config(6));
    let placement = client.placement(topic.layout()).await.expect("placement");
    assert_eq!(placement.per_master.len(), 3);
    assert!(placement.is_balanced(), "{:?}", placement.per_master);
    assert!(placement.per_master.values().all(|n| *n == 2));
}

/// A hand-over waits for the old owner's batch: with batches longer than
/// the lease TTL, the new owner still never handles a partition while the
/// old one is at work on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_over_never_overlaps_a_running_batch() {
    let client = shared_client().await;
    let topic = topic(topic_config(2));
    produce_numbered(&producer(&client), &topic, 8, 20).await;
    type Span = (String, u16, std::time::Instant, std::time::Instant, usize);
    let spans: std::sync::Arc<std::sync::Mutex<Vec<Span>>> = Default::default();
    let slow = |name: &'static str| {
        let spans = spans.clone();
        move |batch: streams::Batch<Numbered>| {
            let spans = spans.clone();
            async move {
                let started = std::time::Instant::now();
                // Longer than the 1.5 s lease TTL of the test consumers.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                spans.lock().expect("spans").push((
                    name.to_owned(),
                    batch.partition,
                    started,
                    std::time::Instant::now(),
                    batch.len(),
                ));
                batch.ack_all()
            }
        }
    };
    let mut config = consumer_config("handover");
    config.batch_size = 40;
    let first = Running::start(&client, &topic, config.clone(), slow("first"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    config.consumer_name = test_support::unique_name("c");
    let second = Running::start(&client, &topic, config, slow("second"));
    let all_handled = || {
        let spans = spans.clone();
        async move {
            spans
                .lock()
                .expect("spans")
                .iter()
                .map(|s| s.4)
                .sum::<usize>()
                >= 160
        }
    };
    wait_until(
        Duration::from_secs(60),
        "every message handled",
        all_handled,
    )
    .await;
    first.stop().await;
    second.stop().await;
    let spans = spans.lock().expect("spans").clone();
    assert!(
        spans.iter().any(|s| s.0 == "second"),
        "the second consumer took a partition over"
    );
    for a in &spans {
        for b in &spans {
            if a.0 != b.0 && a.1 == b.1 {
                let overlap = a.2 < b.3 && b.2 < a.3;
                assert!(
                    !overlap,
                    "partition {} handled by {} and {} at once",
                    a.1, a.0, b.0
                );
            }
        }
    }
}
