use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{PgPool, Row};
use streams::{Batch, Outcomes, idempotency::postgres as pg_idempotency};
use test_support::TestDatabase;

use crate::common::*;

/// A handler whose effects live in Postgres, made exactly-once by recording
/// the message id in the same transaction. After committing a batch it
/// pauses, the window in which a crash leaves the batch handled but not
/// acknowledged. Its pool is opened on the runtime that runs it, so that
/// killing that runtime also cuts its database connections.
fn transactional(
    url: String,
    group: &'static str,
    invocations: Arc<Mutex<Vec<String>>>,
    committed_batches: Arc<AtomicUsize>,
) -> impl streams::Handler<Numbered> {
    let pool = Arc::new(tokio::sync::OnceCell::<PgPool>::new());
    move |batch: Batch<Numbered>| {
        let (url, pool, invocations, committed_batches) = (
            url.clone(),
            pool.clone(),
            invocations.clone(),
            committed_batches.clone(),
        );
        async move {
            let Ok(pool) = pool.get_or_try_init(|| PgPool::connect(&url)).await else {
                return Outcomes::retry_all(batch.len(), "database unavailable");
            };
            let Ok(mut tx) = pool.begin().await else {
                return Outcomes::retry_all(batch.len(), "database unavailable");
            };
            for m in &batch.messages {
                invocations.lock().expect("lock").push(m.id.clone());
                let first = pg_idempotency::first_delivery(&mut tx, group, &m.id).await;
                match first {
                    Ok(true) => {
                        let inserted = sqlx::query(
                            "INSERT INTO effects (message_id, key, seq) VALUES ($1, $2, $3)",
                        )
                        .bind(&m.id)
                        .bind(&m.payload.key)
                        .bind(m.payload.seq as i64)
                        .execute(&mut *tx)
                        .await;
                        if inserted.is_err() {
                            return Outcomes::retry_all(batch.len(), "insert failed");
                        }
                    }
                    Ok(false) => {}
                    Err(_) => return Outcomes::retry_all(batch.len(), "dedupe failed"),
                }
            }
            if tx.commit().await.is_err() {
                return Outcomes::retry_all(batch.len(), "commit failed");
            }
            committed_batches.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            batch.ack_all()
        }
    }
}

/// Kill a consumer (its whole runtime, as a crash would) after it committed
/// a batch but before it acknowledged it. The survivor takes the partitions
/// over, runs the pending entries through the handler again, and the
/// idempotency record turns the repeats into no-ops: every message has
/// exactly one effect, and each key's effects are in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_consumer_loses_nothing_and_idempotency_removes_repeats() {
    let db = TestDatabase::create().await.expect("test database");
    let mut conn = db.pool.acquire().await.expect("connection");
    pg_idempotency::ensure_table(&mut conn)
        .await
        .expect("idempotency table");
    sqlx::query("CREATE TABLE effects (n bigserial PRIMARY KEY, message_id text NOT NULL, key text NOT NULL, seq bigint NOT NULL)")
        .execute(&mut *conn)
        .await
        .expect("effects table");
    drop(conn);

    let urls = test_support::shared_redis_urls();
    let client = connect(urls.clone()).await;
    let topic = topic(topic_config(6));
    let (keys, per_key_count) = (12, 100u64);
    produce_numbered(&producer(&client), &topic, keys, per_key_count).await;

    let invocations = Arc::new(Mutex::new(Vec::new()));
    let victim_batches = Arc::new(AtomicUsize::new(0));
    let victim = Killable::start(
        urls.clone(),
        &topic,
        consumer_config("crash"),
        transactional(
            db.url.clone(),
            "crash",
            invocations.clone(),
            victim_batches.clone(),
        ),
    );
    wait_until(
        Duration::from_secs(20),
        "the victim to commit batches",
        || async { victim_batches.load(Ordering::SeqCst) >= 3 },
    )
    .await;
    // Mid-batch: committed, sleeping before its acknowledgement.
    victim.kill();

    let survivor_batches = Arc::new(AtomicUsize::new(0));
    let survivor = Running::start(
        &client,
        &topic,
        consumer_config("crash"),
        transactional(
            db.url.clone(),
            "crash",
            invocations.clone(),
            survivor_batches,
        ),
    );
    let total = keys * per_key_count as usize;
    wait_until(
        Duration::from_secs(30),
        "every message's effect",
        || async { effect_count(&db.pool).await >= total },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    survivor.stop().await;

    let rows = sqlx::query("SELECT message_id, key, seq FROM effects ORDER BY n")
        .fetch_all(&db.pool)
        .await
        .expect("effects");
    let ids: BTreeSet<String> = rows
        .iter()
        .map(|r| r.get::<String, _>("message_id"))
        .collect();
    assert_eq!(rows.len(), total, "one effect per message, no duplicates");
    assert_eq!(ids.len(), total);
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for r in &rows {
        per_key.entry(r.get("key")).or_default().push(r.get("seq"));
    }
    let expected: Vec<i64> = (0..per_key_count as i64).collect();
    for (key, seqs) in per_key {
        assert_eq!(seqs, expected, "{key}");
    }
    // The crash did cause redeliveries, and only of what was in flight:
    // at most one batch per partition the victim held.
    let invocations = invocations.lock().expect("lock").clone();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for id in &invocations {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let repeated = times.values().filter(|n| **n > 1).count();
    assert!(
        repeated > 0,
        "the kill landed between commit and ack, so something was redelivered"
    );
    assert!(
        repeated <= 6 * 100,
        "only in-flight batches repeat, not {repeated}"
    );
    assert!(times.values().all(|n| *n <= 2));
}

async fn effect_count(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM effects")
        .fetch_one(pool)
        .await
        .unwrap_or(0) as usize
}
