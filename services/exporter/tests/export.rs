//! The exporter against the real Redis Cluster, rendered as Prometheus
//! would scrape it.

use std::collections::HashMap;

use streams::{Inspector, Outgoing, Producer, ProducerConfig, StartFrom, StreamsClient};

/// `name{labels} value` lines of a Prometheus text page, by name and labels.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn every_partition_group_and_node_is_exported() {
    test_support::init_tracing();
    let handle = ops::init_metrics().expect("recorder");
    exporter::describe();
    let prefix = format!("{}.", test_support::unique_name("x"));
    let topics = events::Topics::new(&prefix).expect("topics");
    let client =
        StreamsClient::connect(streams::ClientConfig::new(test_support::shared_redis_urls()))
            .await
            .expect("redis");
    let topic = &topics.summarized;
    streams::ensure_group(&client, topic.layout(), "matcher", StartFrom::Beginning)
        .await
        .expect("group");
    let events: Vec<events::PaperSummarized> = (0..5)
        .map(|n| events::PaperSummarized {
            arxiv_id: format!("2611.0000{n}"),
            version: 1,
            prompt_version: 1,
            provider: "ollama".into(),
            extractive: false,
        })
        .collect();
    for r in Producer::new(client.clone(), ProducerConfig::default())
        .send_batch(topic, events.iter().map(|e| Outgoing::new(&e.arxiv_id, e)))
        .await
        .expect("encode")
    {
        r.expect("sent");
    }

    exporter::export_once(&Inspector::new(client), &topics.all_layouts())
        .await
        .expect("export");
    let page = handle.render();
    let samples = samples(&page);
    let name = topic.name();
    let partitions = topic.layout().partitions.len();

    let mut lag = 0.0;
    for p in 0..partitions {
        let partition = format!("topic=\"{name}\",partition=\"{p}\"");
        let group = format!("{partition},group=\"matcher\"");
        let get = |series: &str| {
            samples
                .get(series)
                .copied()
                .unwrap_or_else(|| panic!("{series} is exported:\n{page}"))
        };
        let length = get(&format!("streams_partition_length{{{partition}}}"));
        assert_eq!(get(&format!("streams_backlog{{{partition}}}")), length);
        assert_eq!(get(&format!("streams_dlq_length{{{partition}}}")), 0.0);
        assert!(get(&format!("streams_capacity{{{partition}}}")) > 0.0);
        assert_eq!(
            get(&format!("streams_group_lag_entries{{{group}}}")),
            length
        );
        assert_eq!(get(&format!("streams_group_pending{{{group}}}")), 0.0);
        assert_eq!(
            get(&format!("streams_group_has_owner{{{group}}}")),
            0.0,
            "no consumer runs"
        );
        if length > 0.0 {
            assert!(get(&format!("streams_group_lag_seconds{{{group}}}")) >= 0.0);
            assert!(get(&format!("streams_key_memory_bytes{{{partition}}}")) > 0.0);
        }
        lag += length;
    }
    assert_eq!(lag, 5.0, "every message is counted once");
    let nodes = samples
        .keys()
        .filter(|k| k.starts_with("redis_node_used_memory_bytes{"))
        .count();
    assert_eq!(nodes, 6, "3 masters and 3 replicas:\n{page}");
    assert!(page.contains("# HELP streams_group_lag_seconds"));
}
