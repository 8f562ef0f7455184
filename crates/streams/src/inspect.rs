//! Read-only views of topics for the admin UI and the metrics exporter:
//! per-partition figures, node memory, paged browsing, lookup and search.
//!
//! Lag is counted per group as entries not yet acknowledged (undelivered
//! plus pending), and in seconds as the age of the oldest of them, read off
//! its entry id against the server's clock.

use std::collections::HashMap;

use futures_util::future::try_join_all;
use redis::Value;

use crate::{
    Error, Result,
    client::StreamsClient,
    envelope::{EntryId, RawEntry, text},
    topic::{PartitionKeys, TopicLayout},
};

#[derive(Debug, Clone)]
pub struct TopicReport {
    pub topic: String,
    pub partitions: Vec<PartitionReport>,
    pub nodes: Vec<NodeMemory>,
}

#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub partition: u16,
    pub stream_key: String,
    pub slot: u16,
    pub master: String,
    pub length: u64,
    pub dlq_length: u64,
    /// Bytes used by the stream key (`MEMORY USAGE`), 0 if it does not exist.
    pub memory_bytes: u64,
    pub dlq_memory_bytes: u64,
    pub capacity: u64,
    /// Unacknowledged entries of the slowest group.
    pub backlog: u64,
    pub groups: Vec<GroupReport>,
}

#[derive(Debug, Clone)]
pub struct GroupReport {
    pub name: String,
    /// Entries not yet delivered to the group, if Redis can tell.
    pub undelivered: Option<u64>,
    pub pending: u64,
    /// Undelivered plus pending.
    pub lag_entries: u64,
    /// Age of the oldest entry the group has not acknowledged.
    pub lag_seconds: f64,
    pub oldest_pending_id: Option<EntryId>,
    pub oldest_pending_idle_ms: Option<u64>,
    pub last_delivered: EntryId,
    /// The consumer holding the partition's lease.
    pub owner: Option<String>,
    pub consumers: Vec<ConsumerReport>,
}

#[derive(Debug, Clone)]
pub struct ConsumerReport {
    pub name: String,
    pub pending: u64,
    /// Since the consumer's last attempted interaction.
    pub idle_ms: u64,
    /// Since its last successful read or claim (Redis 7.2+; 7.0 reports
    /// only `idle`, which is used instead).
    pub inactive_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMemory {
    pub address: String,
    pub role: String,
    pub used_bytes: u64,
    /// 0 when the node has no `maxmemory`.
    pub max_bytes: u64,
}

/// Which stream of a partition to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    Stream,
    Dlq,
    Audit,
}

impl Log {
    fn key(self, keys: &PartitionKeys) -> &str {
        match self {
            Self::Stream => &keys.stream,
            Self::Dlq => &keys.dlq,
            Self::Audit => &keys.audit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first, from the cursor on.
    Forward,
    /// Newest first, from the cursor back.
    Backward,
}

#[derive(Debug, Clone)]
pub struct Page {
    pub entries: Vec<RawEntry>,
    /// Cursor for the next page in the same direction, if there may be one.
    pub next: Option<EntryId>,
}

#[derive(Debug, Clone)]
pub struct Found {
    pub partition: u16,
    pub log: Log,
    pub entry: RawEntry,
}

/// Read-only access to topics.
#[derive(Debug, Clone)]
pub struct Inspector {
    client: StreamsClient,
}

impl Inspector {
    pub fn new(client: StreamsClient) -> Self {
        Self { client }
    }

    pub async fn topic(&self, layout: &TopicLayout) -> Result<TopicReport> {
        Ok(TopicReport {
            topic: layout.config.name.clone(),
            partitions: self.partitions(layout).await?,
            nodes: self.node_memory().await?,
        })
    }

    /// Every partition's report, without the nodes' memory (which
    /// [`Self::node_memory`] gives once for all topics).
    pub async fn partitions(&self, layout: &TopicLayout) -> Result<Vec<PartitionReport>> {
        let placement = self.client.placement(layout).await?;
        let partitions = try_join_all(layout.partitions.iter().map(|keys| {
            let master = placement
                .partitions
                .iter()
                .find(|(p, _, _)| *p == keys.index)
                .map(|(_, _, m)| m.clone())
                .unwrap_or_default();
            self.partition_report(layout, keys, master)
        }))
        .await?;
        Ok(partitions)
    }

    pub async fn partition(&self, layout: &TopicLayout, partition: u16) -> Result<PartitionReport> {
        let keys = layout.partition(partition)?;
        let placement = self.client.placement(layout).await?;
        let master = placement
            .partitions
            .into_iter()
            .find(|(p, _, _)| *p == partition)
            .map(|(_, _, m)| m)
            .unwrap_or_default();
        self.partition_report(layout, keys, master).await
    }

    async fn partition_report(
        &self,
        layout: &TopicLayout,
        keys: &PartitionKeys,
        master: String,
    ) -> Result<PartitionReport> {
        let c = &self.client;
        let length: u64 = c
            .query("xlen", redis::cmd("XLEN").arg(&keys.stream))
            .await?;
        let dlq_length: u64 = c.query("xlen", redis::cmd("XLEN").arg(&keys.dlq)).await?;
        let memory_bytes = self.memory_usage(&keys.stream).await?;
        let dlq_memory_bytes = self.memory_usage(&keys.dlq).await?;
        let now_ms = self.server_time_ms(&master).await?;
        let groups = if length > 0 || self.exists(&keys.stream).await? {
            let raw: Vec<HashMap<String, Value>> = c
                .query(
                    "xinfo groups",
                    redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream),
                )
                .await?;
            let mut groups = Vec::with_capacity(raw.len());
            for g in raw {
                groups.push(self.group_report(keys, &g, length, now_ms).await?);
            }
            groups
        } else {
            Vec::new()
        };
        let backlog = groups
            .iter()
            .map(|g| g.lag_entries)
            .max()
            .unwrap_or(length)
            .min(length);
        Ok(PartitionReport {
            partition: keys.index,
            stream_key: keys.stream.clone(),
            slot: keys.slot,
            master,
            length,
            dlq_length,
            memory_bytes,
            dlq_memory_bytes,
            capacity: layout.tuning().capacity,
            backlog,
            groups,
        })
    }

    async fn group_report(
        &self,
        keys: &PartitionKeys,
        info: &HashMap<String, Value>,
        length: u64,
        now_ms: u64,
    ) -> Result<GroupReport> {
        let c = &self.client;
        let name = field_text(info, "name")?;
        let pending = field_u64(info, "pending").unwrap_or(0);
        let last_delivered = parse_id(&field_text(info, "last-delivered-id")?)?;
        // Entries something else removed unread stay in Redis 7.0's lag;
        // the consumer records how many (see the MAINTAIN script).
        let known_lost: Option<u64> = c
            .query("lost count", redis::cmd("HGET").arg(&keys.lost).arg(&name))
            .await?;
        let undelivered =
            field_u64(info, "lag").map(|lag| lag.saturating_sub(known_lost.unwrap_or(0)));
        let oldest: Vec<(String, String, u64, u64)> = c
            .query(
                "xpending",
                redis::cmd("XPENDING")
                    .arg(&keys.stream)
                    .arg(&name)
                    .arg("-")
                    .arg("+")
                    .arg(1),
            )
            .await?;
        let oldest_pending = oldest.first().map(|(id, _, idle, _)| (id.clone(), *idle));
        let oldest_pending_id = oldest_pending
            .as_ref()
            .map(|(id, _)| parse_id(id))
            .transpose()?;
        let first_undelivered: Value = c
            .query(
                "xrange",
                redis::cmd("XRANGE")
                    .arg(&keys.stream)
                    .arg(last_delivered.next())
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        let first_undelivered = RawEntry::list_from_value(first_undelivered)?
            .first()
            .map(|e| e.entry_id);
        let oldest_unacked = oldest_pending_id.or(first_undelivered);
        let lag_seconds = oldest_unacked
            .map(|id| now_ms.saturating_sub(id.ms) as f64 / 1000.0)
            .unwrap_or(0.0);
        let lease: Option<String> = c
            .query("get lease", redis::cmd("GET").arg(keys.lease(&name)))
            .await?;
        // `<fencing token>:<owner>`
        let owner = lease.map(|value| match value.split_once(':') {
            Some((token, owner)) if token.bytes().all(|b| b.is_ascii_digit()) => owner.to_owned(),
            _ => value,
        });
        let consumers: Vec<HashMap<String, Value>> = c
            .query(
                "xinfo consumers",
                redis::cmd("XINFO")
                    .arg("CONSUMERS")
                    .arg(&keys.stream)
                    .arg(&name),
            )
            .await?;
        let consumers = consumers
            .iter()
            .map(|info| {
                let idle_ms = field_u64(info, "idle").unwrap_or(0);
                Ok(ConsumerReport {
                    name: field_text(info, "name")?,
                    pending: field_u64(info, "pending").unwrap_or(0),
                    idle_ms,
                    inactive_ms: field_u64(info, "inactive").unwrap_or(idle_ms),
                })
            })
            .collect::<Result<_>>()?;
        Ok(GroupReport {
            lag_entries: undelivered.unwrap_or(length) + pending,
            name,
            undelivered,
            pending,
            lag_seconds,
            oldest_pending_id,
            oldest_pending_idle_ms: oldest_pending.map(|(_, idle)| idle),
            last_delivered,
            owner,
            consumers,
        })
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.client
            .query("exists", redis::cmd("EXISTS").arg(key))
            .await
    }

    async fn memory_usage(&self, key: &str) -> Result<u64> {
        let bytes: Option<u64> = self
            .client
            .query("memory usage", redis::cmd("MEMORY").arg("USAGE").arg(key))
            .await?;
        Ok(bytes.unwrap_or(0))
    }

    async fn server_time_ms(&self, node: &str) -> Result<u64> {
        if node.is_empty() {
            return Ok(crate::producer::now_ms());
        }
        let (secs, micros): (u64, u64) = self
            .client
            .query_node("time", node, &redis::cmd("TIME"))
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Used and maximum memory of every node.
    pub async fn node_memory(&self) -> Result<Vec<NodeMemory>> {
        let nodes = self.client.nodes().await?;
        try_join_all(nodes.into_iter().map(|(address, role)| async move {
            let info: String = self
                .client
                .query_node("info memory", &address, redis::cmd("INFO").arg("memory"))
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            Ok(NodeMemory {
                used_bytes: field("used_memory"),
                max_bytes: field("maxmemory"),
                role: role.to_owned(),
                address,
            })
        }))
        .await
    }

    /// A page of entries of one partition's stream, DLQ or audit log.
    /// `cursor` is where to start (inclusive); `None` starts at the oldest
    /// (forward) or newest (backward) entry.
    pub async fn browse(
        &self,
        layout: &TopicLayout,
        partition: u16,
        log: Log,
        direction: Direction,
        cursor: Option<EntryId>,
        count: usize,
    ) -> Result<Page> {
        let key = log.key(layout.partition(partition)?);
        let count = count.clamp(1, 1000);
        let cmd = match direction {
            Direction::Forward => redis::cmd("XRANGE")
                .arg(key)
                .arg(cursor.map_or("-".to_owned(), |c| c.to_string()))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .to_owned(),
            Direction::Backward => redis::cmd("XREVRANGE")
                .arg(key)
                .arg(cursor.map_or("+".to_owned(), |c| c.to_string()))
                .arg("-")
                .arg("COUNT")
                .arg(count)
                .to_owned(),
        };
        let reply: Value = self.client.query("browse", &cmd).await?;
        let entries = RawEntry::list_from_value(reply)?;
        let next = (entries.len() == count)
            .then(|| entries.last().map(|e| e.entry_id))
            .flatten()
            .map(|last| match direction {
                Direction::Forward => last.next(),
                Direction::Backward => last.prev(),
            });
        Ok(Page { entries, next })
    }

    /// One entry by id.
    pub async fn entry(
        &self,
        layout: &TopicLayout,
        partition: u16,
        log: Log,
        id: EntryId,
    ) -> Result<Option<RawEntry>> {
        let key = log.key(layout.partition(partition)?);
        let reply: Value = self
            .client
            .query("lookup", redis::cmd("XRANGE").arg(key).arg(id).arg(id))
            .await?;
        Ok(RawEntry::list_from_value(reply)?.pop())
    }

    /// Entries of the topic's streams and DLQs whose `field` equals `value`.
    /// `field` is `key` or `id` (from `meta`), another entry field
    /// (`dlq.reason`, ...), or `data.<path>` for a value inside the JSON
    /// payload (dots separate object keys). A search by `key` reads only
    /// the key's partition.
    /// At most `scan_limit` entries are read per stream, newest first.
    pub async fn search(
        &self,
        layout: &TopicLayout,
        field: &str,
        value: &str,
        scan_limit: usize,
    ) -> Result<Vec<Found>> {
        let partitions: Vec<u16> = if field == "key" {
            vec![layout.partition_for(value)]
        } else {
            layout.partitions.iter().map(|p| p.index).collect()
        };
        let mut found = Vec::new();
        for partition in partitions {
            for log in [Log::Stream, Log::Dlq] {
                let mut cursor = None;
                let mut scanned = 0;
                while scanned < scan_limit {
                    let page = self
                        .browse(
                            layout,
                            partition,
                            log,
                            Direction::Backward,
                            cursor,
                            (scan_limit - scanned).min(500),
                        )
                        .await?;
                    scanned += page.entries.len();
                    found.extend(
                        page.entries
                            .into_iter()
                            .filter(|e| matches_field(e, field, value))
                            .map(|entry| Found {
                                partition,
                                log,
                                entry,
                            }),
                    );
                    match page.next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
            }
        }
        Ok(found)
    }
}

fn matches_field(entry: &RawEntry, field: &str, value: &str) -> bool {
    match field {
        "key" => return entry.meta().is_ok_and(|m| m.key == value),
        "id" => return entry.meta().is_ok_and(|m| m.message_id == value),
        _ => {}
    }
    match field.strip_prefix("data.") {
        Some(path) => entry
            .field(crate::envelope::fields::DATA)
            .and_then(|data| serde_json::from_slice::<serde_json::Value>(data).ok())
            .and_then(|json| {
                path.split('.')
                    .try_fold(&json, |node, key| node.get(key))
                    .map(|found| match found {
                        serde_json::Value::String(s) => s == value,
                        other => serde_json::from_str::<serde_json::Value>(value)
                            .is_ok_and(|v| v == *other),
                    })
            })
            .unwrap_or(false),
        None => entry.field(field) == Some(value.as_bytes()),
    }
}

fn parse_id(id: &str) -> Result<EntryId> {
    id.parse()
        .map_err(|e: crate::DecodeError| Error::protocol("entry id", e.to_string()))
}

fn field_text(map: &HashMap<String, Value>, name: &'static str) -> Result<String> {
    map.get(name)
        .cloned()
        .map(text)
        .transpose()?
        .ok_or_else(|| Error::protocol("xinfo", format!("no field {name}")))
}

fn field_u64(map: &HashMap<String, Value>, name: &str) -> Option<u64> {
    match map.get(name)? {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_search_reads_envelope_and_payload_paths() {
        let entry = RawEntry::new(
            EntryId { ms: 1, seq: 0 },
            vec![
                ("meta".into(), b"m9 1 0 0 2104.12255".to_vec()),
                (
                    "data".into(),
                    br#"{"paper":{"id":"2104.12255","version":2}}"#.to_vec(),
                ),
                ("dlq.reason".into(), b"rejected".to_vec()),
            ],
        );
        assert!(matches_field(&entry, "key", "2104.12255"));
        assert!(!matches_field(&entry, "key", "2104.1225"));
        assert!(matches_field(&entry, "id", "m9"));
        assert!(matches_field(&entry, "dlq.reason", "rejected"));
        assert!(matches_field(&entry, "data.paper.id", "2104.12255"));
        assert!(matches_field(&entry, "data.paper.version", "2"));
        assert!(!matches_field(&entry, "data.paper.missing", "2"));
    }
}
