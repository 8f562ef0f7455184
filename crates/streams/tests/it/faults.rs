//! Faults that break naive consumers: a read by a consumer that does not
//! own the partition, a node at `maxmemory` with a message to dead-letter,
//! a failure on the last attempt, a dead letter that cannot be written.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use streams::{Batch, Error, Failure, Message, Outgoing, inspect::Inspector};
use tokio::sync::{Notify, Semaphore};

use crate::common::*;

fn numbered(key: &str, seq: u64) -> Numbered {
    Numbered {
        key: key.into(),
        seq,
    }
}

async fn pending_of(stream: &str, group: &str, consumer: &str) -> usize {
    let mut conn = redis_connection().await;
    let rows: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(100)
        .arg(consumer)
        .query_async(&mut conn)
        .await
        .expect("xpending");
    rows.len()
}

/// Entries that a consumer other than the owner took with `XREADGROUP >`
/// (a stale owner's late read, a stray client) are swept by the owner and
/// handled before the later entries of their keys, within a bounded time,
/// and nothing stays pending with the intruder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_ghost_read_are_swept_and_handled_in_key_order() {
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let producer = producer(&client);
    let log = Log::default();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let handler = {
        let (log, entered, release) = (log.clone(), entered.clone(), release.clone());
        move |batch: Batch<Numbered>| {
            let (log, entered, release) = (log.clone(), entered.clone(), release.clone());
            async move {
                if batch.messages.iter().any(|m| m.payload.key == "slow") {
                    entered.notify_one();
                    release.acquire().await.expect("semaphore").forget();
                }
                record(&log, "owner", &batch);
                batch.ack_all()
            }
        }
    };
    let consumer = Running::start(&client, &topic, consumer_config("ghosted"), handler);
    producer
        .send(&topic, "slow", &numbered("slow", 0))
        .await
        .expect("send");
    entered.notified().await;

    for seq in 0..3 {
        producer
            .send(&topic, "k", &numbered("k", seq))
            .await
            .expect("send");
    }
    let stream = topic.layout().partitions[0].stream.clone();
    let mut conn = redis_connection().await;
    let ghost_read: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("ghosted")
        .arg("ghost")
        .arg("COUNT")
        .arg(3)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("ghost read");
    assert_ne!(ghost_read, redis::Value::Nil, "the ghost took entries");
    assert_eq!(pending_of(&stream, "ghosted", "ghost").await, 3);
    for seq in 3..5 {
        producer
            .send(&topic, "k", &numbered("k", seq))
            .await
            .expect("send");
    }
    release.add_permits(1);

    wait_until(Duration::from_secs(10), "every entry of k", || async {
        per_key(&log).get("k").is_some_and(|s| s.len() >= 5)
    })
    .await;
    assert_eq!(per_key(&log)["k"], [0, 1, 2, 3, 4], "in key order, once");
    wait_until(
        Duration::from_secs(10),
        "nothing pending with the ghost",
        || async { pending_of(&stream, "ghosted", "ghost").await == 0 },
    )
    .await;
    consumer.stop().await;
}

/// On a node at `maxmemory`, a message the handler rejects still reaches
/// the DLQ, so retention can pass it and the node drains: appends are
/// accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_on_a_full_node_lets_it_drain() {
    let (_cluster, client, topic, master) = topic_on_a_private_cluster("full").await;
    let producer = producer(&client);
    producer
        .send(&topic, "poison", &numbered("poison", 0))
        .await
        .expect("send poison");
    let padding = "x".repeat(100);
    for round in 0..25u64 {
        let messages: Vec<Numbered> = (0..1000)
            .map(|i| numbered(&format!("key-{i:04}-{padding}"), round))
            .collect();
        for result in producer
            .send_batch(&topic, messages.iter().map(|m| Outgoing::new(&m.key, m)))
            .await
            .expect("encode")
        {
            result.expect("send");
        }
    }
    set_maxmemory(master, node_used_memory(master) - 1024 * 1024);
    match producer.send(&topic, "probe", &numbered("probe", 0)).await {
        Err(Error::Backpressure(_)) => {}
        other => panic!("expected the full node to refuse, got {other:?}"),
    }

    let handled = Arc::new(AtomicU32::new(0));
    let handler = {
        let handled = handled.clone();
        streams::per_message(move |m: Message<Numbered>| {
            let handled = handled.clone();
            async move {
                if m.payload.key == "poison" {
                    return Err(Failure::Reject("poison".into()));
                }
                handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
    };
    let consumer = Running::start(&client, &topic, consumer_config("full"), handler);
    let inspector = Inspector::new(client.clone());
    wait_until(
        Duration::from_secs(30),
        "the poison message in the DLQ and appends accepted again",
        || async {
            inspector
                .partition(topic.layout(), 0)
                .await
                .is_ok_and(|r| r.dlq_length == 1)
                && producer
                    .send(&topic, "probe", &numbered("probe", 0))
                    .await
                    .is_ok()
        },
    )
    .await;
    consumer.stop().await;
}

/// With one attempt, a message that fails is dead-lettered; the later
/// messages of its key that `per_message` held behind it never ran, so they
/// are delivered again after it, not dead-lettered unrun.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_on_the_last_attempt_does_not_dead_letter_its_followers() {
    let client = shared_client().await;
    let mut config = topic_config(1);
    config.max_attempts = 1;
    let topic = topic(config);
    let log = Log::default();
    let handler = {
        let log = log.clone();
        streams::per_message(move |m: Message<Numbered>| {
            let log = log.clone();
            async move {
                if m.payload.seq == 0 {
                    return Err(Failure::Retry("the first always fails".into()));
                }
                record_one(&log, &m);
                Ok(())
            }
        })
    };
    let producer = producer(&client);
    let messages: Vec<Numbered> = (0..4).map(|seq| numbered("k", seq)).collect();
    for result in producer
        .send_batch(&topic, messages.iter().map(|m| Outgoing::new("k", m)))
        .await
        .expect("encode")
    {
        result.expect("send");
    }
    let consumer = Running::start(&client, &topic, consumer_config("once"), handler);
    let inspector = Inspector::new(client.clone());
    wait_until(Duration::from_secs(10), "the followers handled", || async {
        per_key(&log).get("k").is_some_and(|s| s.len() == 3)
    })
    .await;
    assert_eq!(per_key(&log)["k"], [1, 2, 3]);
    let report = inspector
        .partition(topic.layout(), 0)
        .await
        .expect("report");
    assert_eq!(report.dlq_length, 1, "only the failed message is dead");
    consumer.stop().await;
}

/// A rejected message keeps its key blocked until its dead letter is
/// written. While the DLQ append is refused (XADD taken from the consumer's
/// user), the key's next message waits; after a restart the rejected one
/// is handled again first, never after its successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_waits_until_its_dead_letter_is_written() {
    let user = TestUser::new("nodlq");
    user.acl("-xadd");
    let as_user = user.urls();
    let restricted = connect(as_user).await;
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let handled = Arc::new(Mutex::new(Vec::<u64>::new()));
    let handler = || {
        let handled = handled.clone();
        streams::per_message(move |m: Message<Numbered>| {
            let handled = handled.clone();
            async move {
                handled.lock().expect("lock").push(m.payload.seq);
                if m.payload.seq == 0 {
                    return Err(Failure::Reject("never".into()));
                }
                Ok(())
            }
        })
    };
    let producer = producer(&client);
    let consumer = Running::start(&restricted, &topic, consumer_config("nodlq"), handler());
    producer
        .send(&topic, "k", &numbered("k", 0))
        .await
        .expect("send");
    wait_until(Duration::from_secs(10), "the rejection", || async {
        !handled.lock().expect("lock").is_empty()
    })
    .await;
    producer
        .send(&topic, "k", &numbered("k", 1))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    consumer.stop().await;

    user.acl("+xadd");
    let consumer = Running::start(&client, &topic, consumer_config("nodlq"), handler());
    wait_until(Duration::from_secs(10), "the successor handled", || async {
        handled.lock().expect("lock").contains(&1)
    })
    .await;
    wait_for_dead_letters(&client, &topic, 0, 1).await;
    consumer.stop().await;
    let order = handled.lock().expect("lock").clone();
    let successor = order.iter().position(|s| *s == 1).expect("handled");
    assert!(
        !order[successor..].contains(&0),
        "the rejected message ran after its successor: {order:?}"
    );
}

/// A consumer that loses its lease in the middle of a batch (here the
/// lease is deleted, the extreme of a lease that expired early: a pause
/// past it, a promoted replica whose clock runs ahead) is fenced: the next
/// owner takes the batch over with a higher token, and when the old
/// handler finally writes, `idempotency::postgres::fence` refuses it. Each
/// message's effect lands once, written under the new owner's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_lost_its_lease_mid_batch_is_fenced_out_of_postgres() {
    use streams::idempotency::postgres as pg;
    let client = shared_client().await;
    let db = test_support::TestDatabase::create()
        .await
        .expect("test database");
    let mut conn = db.pool.acquire().await.expect("connection");
    pg::ensure_table(&mut conn).await.expect("tables");
    sqlx::query(
        "CREATE TABLE history (message_id text PRIMARY KEY, seq bigint, token bigint, consumer text)",
    )
    .execute(&mut *conn)
    .await
    .expect("history table");
    drop(conn);
    let topic = topic(topic_config(1));
    let refused = Arc::new(AtomicU32::new(0));
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Semaphore::new(0));
    let handler = |consumer: &'static str, hold: bool| {
        let (pool, refused, entered, release) = (
            db.pool.clone(),
            refused.clone(),
            entered.clone(),
            release.clone(),
        );
        move |batch: Batch<Numbered>| {
            let (pool, refused, entered, release) = (
                pool.clone(),
                refused.clone(),
                entered.clone(),
                release.clone(),
            );
            async move {
                if hold {
                    entered.notify_one();
                    release.acquire().await.expect("semaphore").forget();
                }
                let Ok(mut tx) = pool.begin().await else {
                    return streams::Outcomes::retry_all(batch.len(), "database");
                };
                match pg::fence(&mut tx, &batch.fence).await {
                    Ok(true) => {}
                    Ok(false) => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        return streams::Outcomes::retry_all(batch.len(), "fenced");
                    }
                    Err(_) => return streams::Outcomes::retry_all(batch.len(), "database"),
                }
                for m in &batch.messages {
                    if !pg::first_delivery(&mut tx, "fenced", &m.id)
                        .await
                        .unwrap_or(false)
                    {
                        continue;
                    }
                    sqlx::query("INSERT INTO history VALUES ($1, $2, $3, $4)")
                        .bind(&m.id)
                        .bind(m.payload.seq as i64)
                        .bind(batch.fence.token as i64)
                        .bind(consumer)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                }
                tx.commit().await.expect("commit");
                batch.ack_all()
            }
        }
    };
    // The successor sorts first, so the partition is assigned to it once
    // it joins; the first consumer hands over only when its lease is gone.
    let mut first_config = consumer_config("fenced");
    first_config.consumer_name = format!("z-{}", first_config.consumer_name);
    let first = Running::start(&client, &topic, first_config, handler("first", true));
    let producer = producer(&client);
    for seq in 0..3 {
        producer
            .send(&topic, "k", &numbered("k", seq))
            .await
            .expect("send");
    }
    entered.notified().await;
    let mut second_config = consumer_config("fenced");
    second_config.consumer_name = format!("a-{}", second_config.consumer_name);
    let second = Running::start(&client, &topic, second_config, handler("second", false));
    let lease = topic.layout().partitions[0].lease("fenced");
    let mut redis = redis_connection().await;
    let _: i64 = redis::cmd("DEL")
        .arg(&lease)
        .query_async(&mut redis)
        .await
        .expect("delete the lease");

    wait_until(
        Duration::from_secs(15),
        "the successor's writes",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM history")
                .fetch_one(&db.pool)
                .await
                .is_ok_and(|n| n == 3)
        },
    )
    .await;
    release.add_permits(1);
    wait_until(Duration::from_secs(10), "the old owner refused", || async {
        refused.load(Ordering::SeqCst) == 1
    })
    .await;
    let rows: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT seq, token, consumer FROM history ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .expect("history");
    let tokens: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert!(
        rows.iter().all(|r| r.2 == "second"),
        "only the successor wrote: {rows:?}"
    );
    assert!(tokens.iter().all(|t| *t > 1), "{rows:?}");
    first.stop().await;
    second.stop().await;
}

/// A group that vanishes while one of its messages waits for a retry, and
/// is created again at the end of the stream (an operator's reset), no
/// longer holds that message: nothing would ever deliver it again. It goes
/// to the DLQ with the reason, and its key's next message follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_group_was_reset_during_its_backoff_is_dead_lettered() {
    let client = shared_client().await;
    let mut config = topic_config(1);
    config.retry.min_delay = Duration::from_millis(1500);
    config.retry.max_delay = Duration::from_millis(1500);
    let topic = topic(config);
    let log = Log::default();
    let failures = Arc::new(AtomicU32::new(0));
    let handler = {
        let (log, failures) = (log.clone(), failures.clone());
        streams::per_message(move |m: Message<Numbered>| {
            let (log, failures) = (log.clone(), failures.clone());
            async move {
                if m.payload.seq == 0 {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return Err(Failure::Retry("not yet".into()));
                }
                record_one(&log, &m);
                Ok(())
            }
        })
    };
    let consumer = Running::start(&client, &topic, consumer_config("reset"), handler);
    let producer = producer(&client);
    for seq in 0..2 {
        producer
            .send(&topic, "k", &numbered("k", seq))
            .await
            .expect("send");
    }
    wait_until(Duration::from_secs(10), "the first failure", || async {
        failures.load(Ordering::SeqCst) == 1
    })
    .await;
    let stream = topic.layout().partitions[0].stream.clone();
    let mut redis = redis_connection().await;
    // In one step, so that the consumer cannot create it again first.
    let _: String = redis::cmd("EVAL")
        .arg(
            "redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1]) \
             return redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$')",
        )
        .arg(1)
        .arg(&stream)
        .arg("reset")
        .query_async(&mut redis)
        .await
        .expect("reset the group");

    wait_for_dead_letters(&client, &topic, 0, 1).await;
    let dlq = Inspector::new(client.clone())
        .browse(
            topic.layout(),
            0,
            streams::inspect::Log::Dlq,
            streams::inspect::Direction::Forward,
            None,
            10,
        )
        .await
        .expect("dlq");
    assert_eq!(dlq.entries[0].field_str("dlq.reason"), Some("group_reset"));
    wait_until(Duration::from_secs(10), "the next message", || async {
        per_key(&log).get("k").is_some_and(|s| s == &[1])
    })
    .await;
    consumer.stop().await;
}
