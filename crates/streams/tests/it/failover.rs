use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use streams::{Durability, Outgoing, Producer, ProducerConfig};
use test_support::RedisCluster;

use crate::common::*;

/// Kill the master of a partition with `kill -9` while producing durably
/// (WAIT for one replica) and consuming. After the failover both carry on,
/// and every message whose send was acknowledged is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failover_loses_no_durable_acknowledged_message() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(RedisCluster::start)
            .await
            .expect("join")
            .expect("private cluster"),
    );
    let client = connect(cluster.urls()).await;
    let topic = topic(topic_config(6));
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            durability: Durability::Replicated {
                replicas: 1,
                timeout: Duration::from_millis(500),
            },
            ..ProducerConfig::default()
        },
    );
    let log = Log::default();
    let consumer = Running::start(
        &client,
        &topic,
        consumer_config("failover"),
        recording("failover", &log),
    );

    let victim_slot = topic.layout().partitions[0].slot;
    let victim = cluster
        .master_of_slot(victim_slot)
        .expect("master of partition 0");
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let mut killed_at = None;
    let mut recovery = None;
    let mut failed_sends = 0usize;
    let keys = 12;
    for round in 0..60u64 {
        if round == 20 {
            cluster.kill_node(victim).expect("kill master");
            killed_at = Some(Instant::now());
            // Once a replica took over, bring the old master back as its
            // replica: until then the partition has no replica, and durable
            // writes to it must fail rather than pretend.
            let cluster = cluster.clone();
            recovery = Some(tokio::task::spawn_blocking(move || {
                let promoted =
                    cluster.wait_for_failover(victim_slot, victim, Duration::from_secs(20))?;
                cluster.restart_node(victim)?;
                Ok::<_, std::io::Error>(promoted)
            }));
        }
        let messages: Vec<Numbered> = (0..keys)
            .map(|k| Numbered {
                key: format!("key-{k}"),
                seq: round,
            })
            .collect();
        let ids: Vec<String> = messages
            .iter()
            .map(|m| format!("{}-{}", m.key, m.seq))
            .collect();
        // Resend what failed, with the same message ids, until it is acknowledged.
        let mut unsent: Vec<usize> = (0..messages.len()).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !unsent.is_empty() {
            assert!(
                Instant::now() < deadline,
                "sends did not recover after the failover"
            );
            let results = producer
                .send_batch(
                    &topic,
                    unsent
                        .iter()
                        .map(|&i| Outgoing::new(&messages[i].key, &messages[i]).with_id(&ids[i])),
                )
                .await
                .expect("encode");
            let mut still = Vec::new();
            for (&i, result) in unsent.iter().zip(results) {
                match result {
                    Ok(_) => {
                        acknowledged.insert(ids[i].clone());
                    }
                    Err(_) => {
                        failed_sends += 1;
                        still.push(i);
                    }
                }
            }
            unsent = still;
            if !unsent.is_empty() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered_in = killed_at.map(|t| t.elapsed());
    let promoted = recovery
        .expect("the master was killed")
        .await
        .expect("join")
        .expect("failover and restart");
    assert_ne!(promoted, victim);

    wait_until(
        Duration::from_secs(60),
        "every acknowledged message consumed",
        || async {
            let seen: BTreeSet<String> = log
                .lock()
                .expect("log")
                .iter()
                .map(|s| format!("{}-{}", s.key, s.seq))
                .collect();
            acknowledged.is_subset(&seen)
        },
    )
    .await;
    consumer.stop().await;
    assert_eq!(acknowledged.len(), 60 * keys);
    println!(
        "failed sends during failover: {failed_sends}; run finished {recovered_in:?} after the kill"
    );
    // Per-key order survives the failover: a redelivery may repeat
    // messages, but the first time each one is seen follows the send order.
    for (key, seqs) in per_key(&log) {
        let mut first_seen = Vec::new();
        for seq in seqs {
            if !first_seen.contains(&seq) {
                first_seen.push(seq);
            }
        }
        let expected: Vec<u64> = (0..60).collect();
        assert_eq!(first_seen, expected, "{key}");
    }
}

/// With a partition's replica down, a durable send waits out its `WAIT`
/// and fails with `NotReplicated`; meanwhile everything else sent to that
/// master (a plain send here; lease renewals and acknowledgements in a
/// service) goes through at once instead of queueing behind the `WAIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_durable_send_does_not_hold_up_other_commands() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("join")
        .expect("private cluster");
    let client = connect(cluster.urls()).await;
    let topic = topic(topic_config(1));
    let master = cluster
        .master_of_slot(topic.layout().partitions[0].slot)
        .expect("master of partition 0");
    let replication = std::process::Command::new("redis-cli")
        .args(["-p", &master.to_string(), "INFO", "replication"])
        .output()
        .expect("redis-cli");
    let replica: u16 = String::from_utf8_lossy(&replication.stdout)
        .lines()
        .find_map(|line| {
            line.strip_prefix("slave0:")?
                .split(',')
                .find_map(|field| field.strip_prefix("port=")?.parse().ok())
        })
        .expect("the master's replica");
    cluster.kill_node(replica).expect("kill the replica");

    let wait = Duration::from_secs(3);
    let durable = Producer::new(
        client.clone(),
        ProducerConfig {
            durability: Durability::Replicated {
                replicas: 1,
                timeout: wait,
            },
            ..ProducerConfig::default()
        },
    );
    let plain = producer(&client);
    let message = |seq| Numbered {
        key: "k".into(),
        seq,
    };
    let started = Instant::now();
    let waiting = tokio::spawn({
        let (durable, topic) = (durable.clone(), topic.clone());
        async move { durable.send(&topic, "k", &message(0)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_at = Instant::now();
    plain
        .send(&topic, "k", &message(1))
        .await
        .expect("plain send");
    let plain_took = sent_at.elapsed();
    let durable_result = waiting.await.expect("join");
    assert!(
        matches!(durable_result, Err(streams::Error::NotReplicated { .. })),
        "{durable_result:?}"
    );
    assert!(
        started.elapsed() >= wait,
        "the durable send gave up before its WAIT timeout"
    );
    assert!(
        plain_took < Duration::from_secs(1),
        "a plain send waited {plain_took:?} behind the durable send's WAIT"
    );
}
