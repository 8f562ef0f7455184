use std::time::Duration;

use streams::inspect::{Direction, Inspector, Log as StreamLog};

use crate::common::*;

/// Entries with an unknown schema version, a payload that does not decode,
/// no envelope at all, or a field name that is not UTF-8 go to the DLQ with that reason; the consumer keeps
/// running and handles the good messages around them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_entries_are_dead_lettered_and_the_consumer_goes_on() {
    let client = shared_client().await;
    let topic = topic(topic_config(1));
    let producer = producer(&client);
    let log = Log::default();
    let consumer = Running::start(
        &client,
        &topic,
        consumer_config("bad"),
        recording("bad", &log),
    );

    producer
        .send(
            &topic,
            "k",
            &Numbered {
                key: "k".into(),
                seq: 0,
            },
        )
        .await
        .expect("send");
    let stream = &topic.layout().partitions[0].stream;
    let mut conn = redis::cluster::ClusterClient::new(test_support::shared_redis_urls())
        .expect("client")
        .get_async_connection()
        .await
        .expect("connection");
    let raw_entries: [&[(&str, &str)]; 3] = [
        &[
            ("meta", "future 99 0 0 k"),
            ("data", r#"{"key":"k","seq":1}"#),
        ],
        &[("meta", "garbage 1 0 0 k"), ("data", "{not json")],
        &[("hello", "world")],
    ];
    for fields in raw_entries {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(fields)
            .query_async(&mut conn)
            .await
            .expect("xadd");
    }
    // Another writer's bytes: once, such a name made the whole read fail
    // and stranded the entries read with it.
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(&b"\xffname"[..])
        .arg("value")
        .query_async(&mut conn)
        .await
        .expect("xadd");
    producer
        .send(
            &topic,
            "k",
            &Numbered {
                key: "k".into(),
                seq: 1,
            },
        )
        .await
        .expect("send");

    wait_until(Duration::from_secs(10), "good messages handled", || async {
        seen_count(&log) == 2
    })
    .await;
    wait_for_dead_letters(&client, &topic, 0, 4).await;
    let dlq = Inspector::new(client.clone())
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
    // The DLQ keeps each key's order; across keys, in stream order of origin.
    let mut dead: Vec<_> = dlq.entries.iter().collect();
    dead.sort_by_key(|e| {
        e.field_str("dlq.origin")
            .and_then(|id| id.parse::<streams::EntryId>().ok())
    });
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|e| {
            (
                e.field_str("dlq.reason").unwrap_or(""),
                e.field_str("dlq.error").unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(reasons[0].0, "unknown_schema", "{reasons:?}");
    assert!(reasons[0].1.contains("99"), "{}", reasons[0].1);
    assert_eq!(reasons[1].0, "decode_error");
    assert!(reasons[1].1.contains("payload"), "{}", reasons[1].1);
    assert_eq!(reasons[2].0, "decode_error");
    assert!(reasons[2].1.contains("no field `meta`"), "{}", reasons[2].1);
    assert_eq!(reasons[3].0, "decode_error");
    assert!(reasons[3].1.contains("no field `meta`"), "{}", reasons[3].1);
    assert_eq!(per_key(&log)["k"], [0, 1]);
    consumer.stop().await;
}
