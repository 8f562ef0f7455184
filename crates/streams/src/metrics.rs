//! Metrics, through the `metrics` facade; the service picks the exporter.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `streams_produced_total` | counter | topic, partition |
//! | `streams_backpressure_rejected_total` | counter | topic, partition |
//! | `streams_delivered_total` | counter | topic, group, partition |
//! | `streams_acked_total` | counter | topic, group, partition |
//! | `streams_retried_total` | counter | topic, group, partition |
//! | `streams_dead_lettered_total` | counter | topic, group, partition, reason |
//! | `streams_reclaimed_total` | counter | topic, group, partition |
//! | `streams_duplicates_skipped_total` | counter | topic, group, partition |
//! | `streams_trimmed_total` | counter | topic, partition (acknowledged entries removed by retention) |
//! | `streams_unacked_trimmed_total` | counter | topic, group, partition (entries removed before the group acknowledged them, found pending or unread; must stay 0) |
//! | `streams_handler_seconds` | histogram | topic, group |
//! | `streams_lag_entries` | gauge | topic, group, partition |
//! | `streams_lag_seconds` | gauge | topic, group, partition |
//! | `streams_pending` | gauge | topic, group, partition |
//! | `streams_partition_owned` | gauge | topic, group, partition (1 in the owning process) |
//! | `streams_placement_balanced` | gauge | topic (1 when partitions spread evenly over the masters) |

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

/// Register descriptions with the installed recorder. Call once at start.
pub fn describe() {
    describe_counter!(
        "streams_produced_total",
        "Messages appended to a partition."
    );
    describe_counter!(
        "streams_backpressure_rejected_total",
        "Messages refused because their partition or node was full."
    );
    describe_counter!("streams_delivered_total", "Messages handed to a handler.");
    describe_counter!(
        "streams_acked_total",
        "Entries acknowledged: handled, skipped as repeats or as another group's redrive, or found deleted."
    );
    describe_counter!(
        "streams_retried_total",
        "Failed deliveries scheduled for another attempt."
    );
    describe_counter!(
        "streams_dead_lettered_total",
        "Messages moved to the dead-letter stream."
    );
    describe_counter!(
        "streams_reclaimed_total",
        "Pending messages of another consumer claimed after a takeover."
    );
    describe_counter!(
        "streams_duplicates_skipped_total",
        "Deliveries skipped because the message was already processed."
    );
    describe_counter!(
        "streams_trimmed_total",
        "Acknowledged entries removed by retention."
    );
    describe_counter!(
        "streams_unacked_trimmed_total",
        "Pending entries found deleted from their stream before being acknowledged. Must stay 0."
    );
    describe_histogram!(
        "streams_handler_seconds",
        metrics::Unit::Seconds,
        "Time a handler took for one batch."
    );
    describe_gauge!(
        "streams_lag_entries",
        "Entries the group has not acknowledged yet."
    );
    describe_gauge!(
        "streams_lag_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest entry the group has not acknowledged."
    );
    describe_gauge!("streams_pending", "Delivered entries not yet acknowledged.");
    describe_gauge!(
        "streams_partition_owned",
        "1 while this process owns the partition."
    );
}

pub(crate) fn produced(topic: &str, partition: u16, n: usize) {
    if n > 0 {
        counter!("streams_produced_total", "topic" => topic.to_owned(), "partition" => partition.to_string())
            .increment(n as u64);
    }
}

pub(crate) fn rejected(topic: &str, partition: u16, n: usize) {
    if n > 0 {
        counter!(
            "streams_backpressure_rejected_total",
            "topic" => topic.to_owned(),
            "partition" => partition.to_string()
        )
        .increment(n as u64);
    }
}

/// Handles for one (topic, group, partition), resolved once per worker so
/// the hot path does no label lookups.
#[derive(Debug, Clone)]
pub(crate) struct PartitionMetrics {
    labels: [(&'static str, String); 3],
    pub delivered: Counter,
    pub acked: Counter,
    pub retried: Counter,
    pub reclaimed: Counter,
    pub duplicates: Counter,
    pub trimmed: Counter,
    pub unacked_trimmed: Counter,
    pub handler_seconds: Histogram,
    pub lag_entries: Gauge,
    pub lag_seconds: Gauge,
    pub pending: Gauge,
    pub owned: Gauge,
}

/// Every reason an entry is dead-lettered for.
pub const DLQ_REASONS: &[&str] = &["rejected", "max_attempts", "unknown_schema", "decode_error"];

impl PartitionMetrics {
    pub fn new(topic: &str, group: &str, partition: u16) -> Self {
        let labels = [
            ("topic", topic.to_owned()),
            ("group", group.to_owned()),
            ("partition", partition.to_string()),
        ];
        let stream_labels = [labels[0].clone(), labels[2].clone()];
        // Series that may stay at zero exist from the start, so that rates
        // and alerts over them have something to read.
        for reason in DLQ_REASONS {
            let mut with_reason = labels.to_vec();
            with_reason.push(("reason", (*reason).to_owned()));
            counter!("streams_dead_lettered_total", &with_reason).increment(0);
        }
        counter!("streams_backpressure_rejected_total", &stream_labels).increment(0);
        Self {
            delivered: counter!("streams_delivered_total", &labels),
            acked: counter!("streams_acked_total", &labels),
            retried: counter!("streams_retried_total", &labels),
            reclaimed: counter!("streams_reclaimed_total", &labels),
            duplicates: counter!("streams_duplicates_skipped_total", &labels),
            trimmed: counter!("streams_trimmed_total", &stream_labels),
            unacked_trimmed: counter!("streams_unacked_trimmed_total", &labels),
            handler_seconds: histogram!(
                "streams_handler_seconds",
                &[labels[0].clone(), labels[1].clone()]
            ),
            lag_entries: gauge!("streams_lag_entries", &labels),
            lag_seconds: gauge!("streams_lag_seconds", &labels),
            pending: gauge!("streams_pending", &labels),
            owned: gauge!("streams_partition_owned", &labels),
            labels,
        }
    }

    pub fn dead_lettered(&self, reason: &str) {
        let mut labels = self.labels.to_vec();
        labels.push(("reason", reason.to_owned()));
        counter!("streams_dead_lettered_total", &labels).increment(1);
    }
}
