//! Writing messages: partition by key, batch per partition, one atomic
//! capacity check and append per batch.
//!
//! Batches for different partitions are sent concurrently over the shared
//! multiplexed connection, so the requests for one node leave in one write
//! (pipelined per node) without ever mixing slots in one command. Batches
//! for the same partition go one after another, and after the first refused
//! message of a partition nothing later of that partition is sent, so a
//! caller that resends the refused tail keeps every key's order.
//!
//! A send that times out may still have been applied; the retry then writes
//! the messages twice with the same message ids. Consumers that must not see
//! duplicates use [`crate::idempotency`].

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::future::join_all;
use redis::{Value, cluster_async::ClusterConnection};
use tokio::sync::OnceCell;

use crate::{
    Backpressure, BackpressureReason, Error, Result,
    client::{StreamsClient, evalsha},
    envelope::{Encoded, EntryId, Event},
    error::is_out_of_memory,
    metrics, scripts,
    topic::{Topic, TopicLayout},
};

/// How sure a send is that a write survives the loss of its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged by the master. A failover right after can lose it.
    Master,
    /// Acknowledged by the master and `replicas` replicas (`WAIT`), or the
    /// send fails with [`Error::NotReplicated`].
    Replicated { replicas: u32, timeout: Duration },
}

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Most messages per script call; bounds how long one call blocks a node.
    pub max_batch: usize,
    pub durability: Durability,
    /// Append each message id at most once within this long: a message sent
    /// again (by a caller retrying after a crash) is reported as
    /// [`Sent::duplicate`] with its first entry id instead of appended. For
    /// callers that give their own message ids ([`Outgoing::with_id`]);
    /// costs a marker key per message for the TTL.
    pub idempotency_ttl: Option<Duration>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            durability: Durability::Master,
            idempotency_ttl: None,
        }
    }
}

/// A message to send. Without an explicit id the producer assigns a
/// UUIDv7; give one (an outbox row id, say) when the caller itself may send
/// the message again, so consumers can recognise the repeat.
#[derive(Debug)]
pub struct Outgoing<'a, T> {
    pub key: &'a str,
    pub payload: &'a T,
    pub message_id: Option<&'a str>,
}

impl<T> Clone for Outgoing<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Outgoing<'_, T> {}

impl<'a, T> Outgoing<'a, T> {
    pub fn new(key: &'a str, payload: &'a T) -> Self {
        Self {
            key,
            payload,
            message_id: None,
        }
    }

    pub fn with_id(mut self, message_id: &'a str) -> Self {
        self.message_id = Some(message_id);
        self
    }
}

/// A message whose payload is already JSON.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingJson<'a> {
    pub key: &'a str,
    pub message_id: &'a str,
    pub schema_version: u32,
    pub json: &'a [u8],
}

/// A message that was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    pub partition: u16,
    pub entry_id: EntryId,
    /// The message had been appended before (see
    /// [`ProducerConfig::idempotency_ttl`]); `entry_id` is that first entry.
    pub duplicate: bool,
}

#[derive(Clone)]
pub struct Producer {
    client: StreamsClient,
    config: ProducerConfig,
    /// Durable sends end with `WAIT`, which holds its connection on the
    /// server until the replicas answer; on the shared connection it would
    /// hold up every other command to that node (lease renewals among
    /// them) while a replica is down. Made at the first durable send.
    durable_connection: Arc<OnceCell<ClusterConnection>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(client: StreamsClient, config: ProducerConfig) -> Self {
        Self {
            client,
            config,
            durable_connection: Arc::default(),
        }
    }

    /// Send one message.
    pub async fn send<T: Event>(&self, topic: &Topic<T>, key: &str, payload: &T) -> Result<Sent> {
        let mut results = self
            .send_batch(topic, [Outgoing::new(key, payload)])
            .await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::protocol("produce", "no result for the message")))
    }

    /// Send many messages. The outer error means nothing was sent (a payload
    /// did not encode). Otherwise there is one result per message, in input
    /// order: written, or refused with the reason (typically
    /// [`Error::Backpressure`]); every message of a partition after a
    /// refused one is refused too.
    pub async fn send_batch<'a, T: Event>(
        &self,
        topic: &Topic<T>,
        messages: impl IntoIterator<Item = Outgoing<'a, T>>,
    ) -> Result<Vec<Result<Sent>>> {
        let now = now_ms();
        let encoded = messages
            .into_iter()
            .map(|m| Encoded::new(m.key, m.payload, m.message_id, now))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.send_encoded(topic.layout(), encoded).await)
    }

    /// Send payloads that are already JSON, such as rows of a transactional
    /// outbox, each with its schema version and message id. Results as for
    /// [`Self::send_batch`].
    pub async fn send_json<'a>(
        &self,
        layout: &TopicLayout,
        messages: impl IntoIterator<Item = OutgoingJson<'a>>,
    ) -> Result<Vec<Result<Sent>>> {
        let now = now_ms();
        let encoded = messages
            .into_iter()
            .map(|m| {
                Encoded::from_json(
                    m.key,
                    m.schema_version,
                    m.json.to_vec(),
                    Some(m.message_id),
                    now,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.send_encoded(layout, encoded).await)
    }

    async fn send_encoded(
        &self,
        layout: &TopicLayout,
        messages: Vec<Encoded>,
    ) -> Vec<Result<Sent>> {
        let mut per_partition: Vec<Vec<(usize, Encoded)>> =
            (0..layout.partitions.len()).map(|_| Vec::new()).collect();
        let count = messages.len();
        for (index, encoded) in messages.into_iter().enumerate() {
            let partition = layout.partition_for(encoded.key());
            per_partition[usize::from(partition)].push((index, encoded));
        }
        let sends = per_partition
            .into_iter()
            .enumerate()
            .filter(|(_, batch)| !batch.is_empty())
            .map(|(partition, batch)| self.send_partition(layout, partition as u16, batch));
        let mut results: Vec<Option<Result<Sent>>> = (0..count).map(|_| None).collect();
        for outcome in join_all(sends).await {
            for (index, result) in outcome {
                results[index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::protocol("produce", "message was not sent"))))
            .collect()
    }

    async fn send_partition(
        &self,
        layout: &TopicLayout,
        partition: u16,
        batch: Vec<(usize, Encoded)>,
    ) -> Vec<(usize, Result<Sent>)> {
        let mut out = Vec::with_capacity(batch.len());
        let mut refusal: Option<Error> = None;
        for chunk in batch.chunks(self.config.max_batch.max(1)) {
            if let Some(err) = &refusal {
                out.extend(chunk.iter().map(|(i, _)| (*i, Err(copy_refusal(err)))));
                continue;
            }
            match self.append(layout, partition, chunk).await {
                Ok(ids) => {
                    let written = ids.len();
                    let appended = ids.iter().filter(|(_, duplicate)| !duplicate).count();
                    for ((index, encoded), (entry_id, duplicate)) in chunk.iter().zip(ids) {
                        out.push((
                            *index,
                            Ok(Sent {
                                message_id: encoded.message_id().to_owned(),
                                partition,
                                entry_id,
                                duplicate,
                            }),
                        ));
                    }
                    metrics::produced(&layout.config.name, partition, appended);
                    if written < chunk.len() {
                        let err = refused(layout, partition, None);
                        out.extend(
                            chunk[written..]
                                .iter()
                                .map(|(i, _)| (*i, Err(copy_refusal(&err)))),
                        );
                        refusal = Some(err);
                    }
                }
                Err(err) => {
                    out.extend(chunk.iter().map(|(i, _)| (*i, Err(copy_refusal(&err)))));
                    refusal = Some(err);
                }
            }
        }
        let rejected = out
            .iter()
            .filter(|(_, r)| matches!(r, Err(Error::Backpressure(_))))
            .count();
        metrics::rejected(&layout.config.name, partition, rejected);
        out
    }

    /// Append one chunk; returns the ids of the prefix that fit.
    async fn append(
        &self,
        layout: &TopicLayout,
        partition: u16,
        chunk: &[(usize, Encoded)],
    ) -> Result<Vec<(EntryId, bool)>> {
        let keys = layout.partition(partition)?;
        let (script, mut cmd) = match self.config.idempotency_ttl {
            None => {
                let mut cmd = evalsha(&scripts::PRODUCE, &[&keys.stream, &keys.lost]);
                cmd.arg(layout.tuning().capacity).arg(Encoded::WIDTH);
                (&*scripts::PRODUCE, cmd)
            }
            Some(ttl) => {
                let mut marker_keys = vec![keys.stream.clone(), keys.lost.clone()];
                marker_keys.extend(chunk.iter().map(|(_, e)| keys.produced(e.message_id())));
                let mut cmd = evalsha(&scripts::PRODUCE_ONCE, &marker_keys);
                cmd.arg(layout.tuning().capacity)
                    .arg(Encoded::WIDTH)
                    // `PX 0` would fail after the first append took effect.
                    .arg(ttl.as_millis().max(1) as u64);
                (&*scripts::PRODUCE_ONCE, cmd)
            }
        };
        for (_, encoded) in chunk {
            encoded.write_fields(&mut cmd);
        }
        let reply: Value = match self.config.durability {
            Durability::Master => self.client.eval("produce", script, &cmd).await,
            Durability::Replicated { replicas, timeout } => {
                let mut pipe = redis::pipe();
                pipe.add_command(cmd)
                    .cmd("WAIT")
                    .arg(replicas)
                    .arg(timeout.as_millis() as u64);
                let connection = self
                    .durable_connection
                    .get_or_try_init(|| self.client.dedicated_connection(timeout))
                    .await?;
                // Each attempt may wait the whole WAIT timeout: cutting it
                // short would only send the appends again.
                let attempt_timeout = self.client.config().command_timeout + timeout;
                let total = self.client.config().operation_timeout.max(attempt_timeout);
                let (reply, reached): (Value, u32) = self
                    .client
                    .eval_on(
                        connection,
                        "produce durably",
                        attempt_timeout,
                        total,
                        script,
                        &pipe,
                    )
                    .await?;
                if reached < replicas {
                    return Err(Error::NotReplicated {
                        wanted: replicas,
                        reached,
                        timeout,
                    });
                }
                Ok(reply)
            }
        }
        .map_err(|err| match err {
            Error::Redis(e) if is_out_of_memory(&e) => refused_oom(layout, partition),
            other => other,
        })?;
        let (backlog, ids) = parse_produce_reply(reply)?;
        if ids.is_empty() && !chunk.is_empty() {
            return Err(refused(layout, partition, Some(backlog)));
        }
        Ok(ids)
    }
}

/// `{backlog, id...}`; an id prefixed with `=` was appended before.
fn parse_produce_reply(reply: Value) -> Result<(u64, Vec<(EntryId, bool)>)> {
    let Value::Array(items) = reply else {
        return Err(Error::protocol("produce", format!("{reply:?}")));
    };
    let mut items = items.into_iter();
    let backlog = match items.next() {
        Some(Value::Int(n)) => n.max(0) as u64,
        other => return Err(Error::protocol("produce", format!("backlog {other:?}"))),
    };
    let ids = items
        .map(|v| {
            let text = crate::envelope::text(v)?;
            let (id, duplicate) = match text.strip_prefix('=') {
                Some(id) => (id, true),
                None => (text.as_str(), false),
            };
            let id = id
                .parse()
                .map_err(|e: crate::DecodeError| Error::protocol("produce", e.to_string()))?;
            Ok((id, duplicate))
        })
        .collect::<Result<_>>()?;
    Ok((backlog, ids))
}

fn refused(layout: &TopicLayout, partition: u16, backlog: Option<u64>) -> Error {
    let capacity = layout.tuning().capacity;
    Error::Backpressure(Backpressure {
        topic: layout.config.name.clone(),
        partition,
        reason: BackpressureReason::PartitionFull {
            backlog: backlog.unwrap_or(capacity),
            capacity,
        },
        retry_after: layout.config.backpressure_retry_after,
    })
}

fn refused_oom(layout: &TopicLayout, partition: u16) -> Error {
    Error::Backpressure(Backpressure {
        topic: layout.config.name.clone(),
        partition,
        reason: BackpressureReason::NodeOutOfMemory,
        retry_after: layout.config.backpressure_retry_after,
    })
}

/// The same refusal for every message of a partition's tail.
fn copy_refusal(err: &Error) -> Error {
    match err {
        Error::Backpressure(b) => Error::Backpressure(b.clone()),
        Error::Timeout { operation, after } => Error::Timeout {
            operation,
            after: *after,
        },
        Error::NotReplicated {
            wanted,
            reached,
            timeout,
        } => Error::NotReplicated {
            wanted: *wanted,
            reached: *reached,
            timeout: *timeout,
        },
        other => Error::protocol(
            "produce",
            format!("not sent after an earlier failure: {other}"),
        ),
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
