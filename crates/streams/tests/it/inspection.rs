use std::{sync::Arc, time::Duration};

use streams::{
    Batch, Outcomes,
    inspect::{Direction, Inspector, Log as StreamLog},
};
use tokio::sync::Notify;

use crate::common::*;

/// The inspection API reports what the admin UI and exporter need, pages
/// through entries both ways, finds entries by id and by field value
/// across partitions and DLQs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspection_reports_lag_owners_memory_and_finds_messages() {
    let client = shared_client().await;
    let topic = topic(topic_config(3));
    let producer = producer(&client);
    produce_numbered(&producer, &topic, 6, 50).await;

    // A handler that rejects one message and then holds its batch, so the
    // partition shows pending entries, an owner and a dead letter.
    let release = Arc::new(Notify::new());
    let handler = {
        let release = release.clone();
        move |batch: Batch<Numbered>| {
            let release = release.clone();
            async move {
                let mut outcomes: Outcomes = batch.ack_all();
                for (i, m) in batch.messages.iter().enumerate() {
                    if m.payload.key == "key-1" && m.payload.seq == 3 {
                        outcomes.reject(i, "not this one");
                    }
                }
                if batch.messages.iter().any(|m| m.payload.seq >= 45) {
                    release.notified().await;
                }
                outcomes
            }
        }
    };
    let mut config = consumer_config("inspect");
    config.batch_size = 40;
    let consumer = Running::start(&client, &topic, config, handler);
    let inspector = Inspector::new(client.clone());
    wait_until(
        Duration::from_secs(10),
        "pending entries and a dead letter",
        || async {
            inspector.topic(topic.layout()).await.is_ok_and(|r| {
                r.partitions.iter().any(|p| p.dlq_length == 1)
                    && r.partitions
                        .iter()
                        .all(|p| p.length == 0 || p.groups.first().is_some_and(|g| g.pending > 0))
            })
        },
    )
    .await;

    let report = inspector.topic(topic.layout()).await.expect("report");
    assert_eq!(report.partitions.len(), 3);
    assert_eq!(report.nodes.len(), 6);
    assert!(
        report
            .nodes
            .iter()
            .all(|n| n.used_bytes > 0 && n.max_bytes > 0)
    );
    assert_eq!(
        report.nodes.iter().filter(|n| n.role == "master").count(),
        3
    );
    let total: u64 = report.partitions.iter().map(|p| p.length).sum();
    assert_eq!(total, 300 - 1, "one entry moved to the DLQ and was deleted");
    for p in &report.partitions {
        assert!(!p.master.is_empty());
        let g = &p.groups[0];
        assert_eq!(g.name, "inspect");
        assert_eq!(g.owner.as_deref(), Some(consumer.name.as_str()));
        if p.length == 0 {
            continue;
        }
        assert!(p.memory_bytes > 0);
        assert!(g.pending > 0 && g.lag_entries >= g.pending);
        assert_eq!(p.backlog, g.lag_entries);
        assert!(g.oldest_pending_idle_ms.is_some());
        assert!(g.lag_seconds >= 0.0 && g.lag_seconds < 60.0);
        assert!(
            g.consumers
                .iter()
                .any(|c| c.name == consumer.name && c.pending == g.pending)
        );
    }

    // Paging forward and backward over one partition visits every entry once.
    let partition = topic.partition_for("key-0");
    let length = report.partitions[usize::from(partition)].length as usize;
    let forward = all_pages(&inspector, &topic, partition, Direction::Forward, 7).await;
    let mut backward = all_pages(&inspector, &topic, partition, Direction::Backward, 9).await;
    assert_eq!(forward.len(), length);
    backward.reverse();
    assert_eq!(forward, backward);
    let found = inspector
        .entry(topic.layout(), partition, StreamLog::Stream, forward[3])
        .await
        .expect("lookup")
        .expect("entry exists");
    assert_eq!(found.entry_id, forward[3]);

    // Search by key reads one partition; by payload field, all of them;
    // both look in the DLQ too.
    let by_key = inspector
        .search(topic.layout(), "key", "key-1", 10_000)
        .await
        .expect("search");
    assert_eq!(by_key.len(), 50);
    assert_eq!(by_key.iter().filter(|f| f.log == StreamLog::Dlq).count(), 1);
    let by_payload = inspector
        .search(topic.layout(), "data.seq", "3", 10_000)
        .await
        .expect("search");
    assert_eq!(by_payload.len(), 6);
    let by_reason = inspector
        .search(topic.layout(), "dlq.reason", "rejected", 10_000)
        .await
        .expect("search");
    assert_eq!(by_reason.len(), 1);
    assert_eq!(
        by_reason[0].entry.field_str("dlq.error"),
        Some("not this one")
    );

    release.notify_waiters();
    for _ in 0..20 {
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    consumer.stop().await;
}

/// Every entry id of a partition's stream, page by page.
async fn all_pages(
    inspector: &Inspector,
    topic: &streams::Topic<Numbered>,
    partition: u16,
    direction: Direction,
    page_size: usize,
) -> Vec<streams::EntryId> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = inspector
            .browse(
                topic.layout(),
                partition,
                StreamLog::Stream,
                direction,
                cursor,
                page_size,
            )
            .await
            .expect("page");
        ids.extend(page.entries.iter().map(|e| e.entry_id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}
