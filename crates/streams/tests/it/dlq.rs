use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use streams::{
    Batch, Outcomes,
    inspect::{Direction, Inspector, Log as StreamLog},
    redrive::{Selection, redrive},
};

use crate::common::*;

/// A message whose handler always fails is delivered exactly
/// `max_attempts` times, then dead-lettered with the reason; later messages
/// of its key wait for it and then follow in order, other keys never wait.
/// Redrive brings it back into the same partition, with an audit record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_goes_to_dlq_after_max_attempts_and_redrives() {
    let client = shared_client().await;
    let mut config = topic_config(2);
    config.max_attempts = 4;
    config.retry.min_delay = Duration::from_millis(300);
    config.retry.max_delay = Duration::from_millis(300);
    config.retry.factor = 1.0;
    let topic = topic(config);
    let producer = producer(&client);

    let healed = Arc::new(AtomicBool::new(false));
    let log = Log::default();
    let attempts = Arc::new(Mutex::new(Vec::<(u64, u32, Instant)>::new()));
    let handler = {
        let (healed, log, attempts) = (healed.clone(), log.clone(), attempts.clone());
        streams::per_message(move |m: streams::Message<Numbered>| {
            let (healed, log, attempts) = (healed.clone(), log.clone(), attempts.clone());
            async move {
                if m.payload.key == "poison" && m.payload.seq == 0 {
                    attempts
                        .lock()
                        .expect("lock")
                        .push((m.payload.seq, m.attempt, Instant::now()));
                    if !healed.load(Ordering::SeqCst) {
                        return Err(streams::Failure::Retry("poison is poisonous".into()));
                    }
                }
                record_one(&log, &m);
                Ok(())
            }
        })
    };
    let consumer = Running::start(&client, &topic, consumer_config("dlq"), handler);

    let poison: Vec<Numbered> = (0..3)
        .map(|seq| Numbered {
            key: "poison".into(),
            seq,
        })
        .collect();
    for m in &poison {
        producer.send(&topic, &m.key, m).await.expect("send poison");
    }
    let started = Instant::now();
    produce_numbered(&producer, &topic, 8, 20).await;
    wait_until(Duration::from_secs(10), "healthy keys", || async {
        per_key(&log)
            .iter()
            .filter(|(k, _)| k.starts_with("key-"))
            .map(|(_, v)| v.len())
            .sum::<usize>()
            == 160
    })
    .await;
    let healthy_done = started.elapsed();
    wait_until(Duration::from_secs(10), "poison dead-lettered", || async {
        per_key(&log).get("poison").is_some_and(|s| s.len() == 2)
    })
    .await;
    assert!(
        healthy_done < Duration::from_millis(900),
        "other keys waited for the poison key: {healthy_done:?}"
    );

    let tries = attempts.lock().expect("lock").clone();
    let numbers: Vec<u32> = tries.iter().map(|t| t.1).collect();
    assert_eq!(numbers, [1, 2, 3, 4], "exactly max_attempts deliveries");
    for pair in tries.windows(2) {
        assert!(
            pair[1].2 - pair[0].2 >= Duration::from_millis(280),
            "backoff respected"
        );
    }
    assert_eq!(
        per_key(&log)["poison"],
        [1, 2],
        "followers of the poison key ran after it, in order"
    );

    let partition = topic.partition_for("poison");
    let inspector = Inspector::new(client.clone());
    let dlq = inspector
        .browse(
            topic.layout(),
            partition,
            StreamLog::Dlq,
            Direction::Forward,
            None,
            10,
        )
        .await
        .expect("browse dlq");
    assert_eq!(dlq.entries.len(), 1);
    let dead = &dlq.entries[0];
    assert_eq!(dead.field_str("dlq.reason"), Some("max_attempts"));
    assert_eq!(dead.field_str("dlq.error"), Some("poison is poisonous"));
    assert_eq!(dead.field_str("dlq.attempts"), Some("4"));
    assert_eq!(dead.field_str("dlq.group"), Some("dlq"));
    assert_eq!(dead.key(), "poison");
    let origin = dead.field_str("dlq.origin").expect("origin").to_owned();
    // Acknowledged by its only group, so deleted from the stream.
    assert!(
        inspector
            .entry(
                topic.layout(),
                partition,
                StreamLog::Stream,
                origin.parse().expect("id")
            )
            .await
            .expect("lookup")
            .is_none()
    );

    healed.store(true, Ordering::SeqCst);
    let report = redrive(
        &client,
        topic.layout(),
        partition,
        Selection::All,
        "test-admin",
    )
    .await
    .expect("redrive");
    assert_eq!(report.replayed, 1);
    wait_until(
        Duration::from_secs(10),
        "redriven poison handled",
        || async { per_key(&log)["poison"].len() == 3 },
    )
    .await;
    let replayed = log
        .lock()
        .expect("lock")
        .iter()
        .rfind(|s| s.key == "poison" && s.seq == 0)
        .cloned()
        .expect("replayed message");
    assert_eq!(replayed.partition, partition);
    assert_eq!(replayed.message_id, dead.message_id());
    assert_eq!(
        replayed.attempt, 5,
        "attempts carried over from the first life"
    );
    let audit = inspector
        .browse(
            topic.layout(),
            partition,
            StreamLog::Audit,
            Direction::Forward,
            None,
            10,
        )
        .await
        .expect("audit");
    assert_eq!(audit.entries.len(), 1);
    assert_eq!(audit.entries[0].field_str("actor"), Some("test-admin"));
    assert_eq!(audit.entries[0].field_str("origin"), Some(origin.as_str()));
    let dlq_after = inspector
        .browse(
            topic.layout(),
            partition,
            StreamLog::Dlq,
            Direction::Forward,
            None,
            10,
        )
        .await
        .expect("browse dlq");
    assert!(dlq_after.entries.is_empty());
    consumer.stop().await;
}

/// A handler's permanent rejection dead-letters at once; a redrive of a
/// range replays in order and reaches only the group that failed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_redrive_in_order_to_their_group_only() {
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let producer = producer(&client);
    let healed = Arc::new(AtomicBool::new(false));
    let picky_log = Log::default();
    let other_log = Log::default();
    let picky = {
        let (healed, log) = (healed.clone(), picky_log.clone());
        move |batch: Batch<Numbered>| {
            let (healed, log) = (healed.clone(), log.clone());
            async move {
                let mut outcomes = batch.ack_all();
                for (i, m) in batch.messages.iter().enumerate() {
                    if m.payload.key == "odd" && !healed.load(Ordering::SeqCst) {
                        outcomes.reject(i, "odd is not welcome");
                    }
                }
                record_acked(&log, &batch, &outcomes);
                outcomes
            }
        }
    };
    let a = Running::start(&client, &topic, consumer_config("picky"), picky);
    let b = Running::start(
        &client,
        &topic,
        consumer_config("other"),
        recording("other", &other_log),
    );
    let odd: Vec<Numbered> = (0..5)
        .map(|seq| Numbered {
            key: "odd".into(),
            seq,
        })
        .collect();
    for m in &odd {
        producer.send(&topic, &m.key, m).await.expect("send");
    }
    wait_for_dead_letters(&client, &topic, 0, 5).await;
    wait_until(Duration::from_secs(10), "other group done", || async {
        seen_count(&other_log) == 5
    })
    .await;

    let inspector = Inspector::new(client.clone());
    let dlq = inspector
        .browse(
            topic.layout(),
            0,
            StreamLog::Dlq,
            Direction::Forward,
            None,
            10,
        )
        .await
        .expect("dlq");
    assert!(
        dlq.entries
            .iter()
            .all(|e| e.field_str("dlq.reason") == Some("rejected"))
    );
    healed.store(true, Ordering::SeqCst);
    let report = redrive(
        &client,
        topic.layout(),
        0,
        Selection::Range {
            from: dlq.entries[1].entry_id,
            to: dlq.entries[3].entry_id,
        },
        "test",
    )
    .await
    .expect("redrive range");
    assert_eq!(report.replayed, 3);
    wait_until(Duration::from_secs(10), "replays handled", || async {
        seen_count(&picky_log) == 3
    })
    .await;
    assert_eq!(per_key(&picky_log)["odd"], [1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        seen_count(&other_log),
        5,
        "the other group does not see the replays"
    );
    a.stop().await;
    b.stop().await;
}

/// With dedupe markers on, a message sent twice with the same id (a
/// producer retry) is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_markers_skip_a_resent_message() {
    let client = shared_client().await;
    let topic = topic(topic_config(2));
    let producer = producer(&client);
    let log = Log::default();
    let mut config = consumer_config("dedupe");
    config.dedupe_ttl = Some(Duration::from_secs(60));
    let consumer = Running::start(&client, &topic, config, recording("dedupe", &log));
    let m = Numbered {
        key: "k".into(),
        seq: 7,
    };
    let message = streams::Outgoing::new("k", &m).with_id("fixed-id-1");
    producer
        .send_batch(&topic, [message])
        .await
        .expect("encode")[0]
        .as_ref()
        .expect("send");
    wait_until(Duration::from_secs(10), "first delivery", || async {
        seen_count(&log) == 1
    })
    .await;
    producer
        .send_batch(&topic, [message])
        .await
        .expect("encode")[0]
        .as_ref()
        .expect("send again");
    producer
        .send(
            &topic,
            "k",
            &Numbered {
                key: "k".into(),
                seq: 8,
            },
        )
        .await
        .expect("send next");
    wait_until(Duration::from_secs(10), "the next message", || async {
        per_key(&log).get("k").is_some_and(|s| s.contains(&8))
    })
    .await;
    assert_eq!(per_key(&log)["k"], [7, 8], "the resent message was skipped");
    consumer.stop().await;
}

/// Record only the messages acknowledged in this batch.
fn record_acked(log: &Log, batch: &Batch<Numbered>, outcomes: &Outcomes) {
    let mut log = log.lock().expect("log lock");
    for (m, outcome) in batch.messages.iter().zip(&outcomes.0) {
        if *outcome == streams::Outcome::Ack {
            log.push(Seen::of("", m));
        }
    }
}

/// A handler that panics fails its batch; the batch is retried and the
/// consumer keeps its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_its_batch_only() {
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let log = Log::default();
    let panicked = Arc::new(AtomicBool::new(false));
    let handler = {
        let (log, panicked) = (log.clone(), panicked.clone());
        move |batch: Batch<Numbered>| {
            let (log, panicked) = (log.clone(), panicked.clone());
            async move {
                if !panicked.swap(true, Ordering::SeqCst) {
                    panic!("the handler's bug");
                }
                for m in &batch.messages {
                    record_one(&log, m);
                }
                batch.ack_all()
            }
        }
    };
    let consumer = Running::start(&client, &topic, consumer_config("panic"), handler);
    produce_numbered(&producer(&client), &topic, 2, 10).await;
    wait_until(
        Duration::from_secs(10),
        "all handled after the panic",
        || async { seen_count(&log) == 20 },
    )
    .await;
    assert!(panicked.load(Ordering::SeqCst));
    assert!(
        log.lock().expect("log").iter().any(|s| s.attempt == 2),
        "the failed batch was delivered again"
    );
    consumer.stop().await;
}

/// A handler that fails a repeat of a message it already handled (as a
/// unique constraint would) must not leave the key stuck: with dedupe on,
/// the repeat is skipped, and later messages of the key still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedupe_skips_repeats_in_the_same_batch_and_the_key_flows_on() {
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let producer = producer(&client);
    let log = Log::default();
    let handler = {
        let log = log.clone();
        streams::per_message(move |m: streams::Message<Numbered>| {
            let log = log.clone();
            async move {
                let mut log = log.lock().expect("log");
                if log.iter().any(|s| s.message_id == m.id) {
                    return Err(streams::Failure::Retry("already handled".into()));
                }
                log.push(Seen::of("", &m));
                Ok(())
            }
        })
    };
    let first = Numbered {
        key: "k".into(),
        seq: 1,
    };
    let second = Numbered {
        key: "k".into(),
        seq: 2,
    };
    // Both copies and the next message before the consumer starts, so
    // they arrive in one batch.
    for message in [
        streams::Outgoing::new("k", &first).with_id("same-id"),
        streams::Outgoing::new("k", &first).with_id("same-id"),
        streams::Outgoing::new("k", &second),
    ] {
        producer
            .send_batch(&topic, [message])
            .await
            .expect("encode")[0]
            .as_ref()
            .expect("send");
    }
    let mut config = consumer_config("dedupe-batch");
    config.dedupe_ttl = Some(Duration::from_secs(60));
    let consumer = Running::start(&client, &topic, config, handler);
    wait_until(
        Duration::from_secs(10),
        "the next message of the key",
        || async { per_key(&log).get("k").is_some_and(|s| s.contains(&2)) },
    )
    .await;
    assert_eq!(per_key(&log)["k"], [1, 2]);
    consumer.stop().await;
}

/// Redis failing in the middle of a retry (here: refusing the XCLAIM that
/// counts the attempt) loses nothing and keeps the key's order: the retry
/// happens once Redis answers again, and the key's later messages follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_retry_step_is_retried_without_losing_the_key() {
    let user = TestUser::new("flaky");
    let as_user = user.urls();
    let client = connect(as_user).await;
    let mut config = topic_config(1);
    config.retry.min_delay = Duration::from_millis(400);
    config.retry.max_delay = Duration::from_millis(400);
    let topic = topic(config);
    let log = Log::default();
    let failed_once = Arc::new(AtomicBool::new(false));
    let handler = {
        let (log, failed_once) = (log.clone(), failed_once.clone());
        streams::per_message(move |m: streams::Message<Numbered>| {
            let (log, failed_once) = (log.clone(), failed_once.clone());
            async move {
                if m.payload.seq == 0 && !failed_once.swap(true, Ordering::SeqCst) {
                    return Err(streams::Failure::Retry("first try fails".into()));
                }
                record_one(&log, &m);
                Ok(())
            }
        })
    };
    let consumer = Running::start(&client, &topic, consumer_config("flaky"), handler);
    produce_numbered(&producer(&client), &topic, 1, 3).await;
    wait_until(Duration::from_secs(10), "the first failure", || async {
        failed_once.load(Ordering::SeqCst)
    })
    .await;
    // During the backoff, take XCLAIM away, then give it back.
    user.acl("-xclaim");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        seen_count(&log),
        0,
        "nothing of the key runs while its retry cannot be counted"
    );
    user.acl("+xclaim");
    wait_until(Duration::from_secs(10), "the key's messages", || async {
        seen_count(&log) == 3
    })
    .await;
    assert_eq!(per_key(&log)["key-0"], [0, 1, 2]);
    consumer.stop().await;
}

/// A handler that never returns holds its batch only until the handler
/// timeout: the batch is retried like a failed one, dead-lettered after the
/// topic's attempts with that reason, and the partition moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_handler_times_out_and_its_message_is_dead_lettered() {
    let client = shared_client().await;
    let config = topic_config(1);
    let max_attempts = config.max_attempts;
    let topic = topic(config);
    let log = Log::default();
    let handler = {
        let log = log.clone();
        move |batch: Batch<Numbered>| {
            let log = log.clone();
            async move {
                if batch.messages.iter().any(|m| m.key == "stuck") {
                    std::future::pending::<()>().await;
                }
                for m in &batch.messages {
                    record_one(&log, m);
                }
                batch.ack_all()
            }
        }
    };
    let mut config = consumer_config("hung");
    config.handler_timeout = Some(Duration::from_millis(200));
    let consumer = Running::start(&client, &topic, config, handler);
    let producer = producer(&client);
    let stuck = Numbered {
        key: "stuck".into(),
        seq: 0,
    };
    producer.send(&topic, "stuck", &stuck).await.expect("send");
    let inspector = Inspector::new(client.clone());
    wait_until(
        Duration::from_secs(20),
        "the hung message dead-lettered",
        || async {
            inspector
                .partition(topic.layout(), 0)
                .await
                .is_ok_and(|r| r.dlq_length == 1)
        },
    )
    .await;
    let dlq = inspector
        .browse(
            topic.layout(),
            0,
            StreamLog::Dlq,
            Direction::Forward,
            None,
            10,
        )
        .await
        .expect("dlq");
    let entry = &dlq.entries[0];
    assert!(
        entry
            .field_str("dlq.error")
            .is_some_and(|e| e.contains("handler took longer than")),
        "{entry:?}"
    );
    assert_eq!(
        entry.field_str("dlq.attempts"),
        Some(max_attempts.to_string().as_str())
    );

    let fine = Numbered {
        key: "fine".into(),
        seq: 0,
    };
    producer.send(&topic, "fine", &fine).await.expect("send");
    wait_until(
        Duration::from_secs(10),
        "the next message handled",
        || async { seen_count(&log) == 1 },
    )
    .await;
    let stopping = Instant::now();
    consumer.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10));
}
