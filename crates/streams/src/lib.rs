//! # streams: Redis Streams as a partitioned message bus
//!
//! This crate owns every interaction paperstream's services have with each
//! other: they publish events to topics and consume them in groups, and
//! nothing else connects them. It exists so that the hard parts (ordering,
//! ownership, retries, dead letters, crash recovery, backpressure) are
//! solved once, tested against a real Redis Cluster, and reused.
//!
//! ## Model
//! * A [`Topic`] has N partitions. Partition = one stream key with its own
//!   hash tag; its DLQ, audit log, leases and dedupe markers share the tag,
//!   hence the slot, so Lua scripts can change them atomically. Tags are
//!   chosen so partitions spread evenly over the masters
//!   ([`topic`], [`StreamsClient::placement`]).
//! * A message's key picks its partition (stable hash), so one key's
//!   messages stay in order.
//! * [`Producer`] appends in batches through a Lua script that checks the
//!   partition's backlog (entries its slowest group has not acknowledged)
//!   against its capacity in the same atomic step. A full partition refuses
//!   with [`Backpressure`]; nothing is ever trimmed to make room.
//! * [`Consumer`] runs a group member. Each partition is processed by one
//!   live consumer at a time (leases + heartbeat), so per-key order holds
//!   while partitions run in parallel. Failed messages retry with backoff
//!   without stalling other keys, then go to the DLQ ([`consumer`]). Dead
//!   consumers' pending entries are claimed and handled again.
//! * Retention only removes entries every group has acknowledged.
//! * [`inspect`] and [`redrive`] serve the admin UI and monitoring.
//!
//! ## Guarantees
//! * At-least-once delivery; per-key order within a partition, including
//!   across consumer changes, crashes, paused consumers and reads by anyone
//!   else. Effectively-once with [`idempotency`].
//! * Fencing: a consumer that lost a partition's lease can no longer
//!   acknowledge, dead-letter, claim or handle entries there; each batch
//!   carries the lease's token ([`Fence`]) so the handler's own store can
//!   refuse its late writes too ([`idempotency`]).
//! * A message acknowledged to the producer with
//!   [`Durability::Replicated`] survives the failover of its master.
//! * Nothing unacknowledged is trimmed; if anything else deletes it, the
//!   loss is counted in `streams_unacked_trimmed_total` ([`metrics`]).
//!
//! Works with Redis 7.0 and later, and with Valkey; newer commands are
//! found by asking every master, and Redis 8.2's are used only when
//! [`ClientConfig::newer_stream_commands`] allows ([`Capabilities`]).

pub mod client;
pub mod consumer;
pub mod envelope;
mod error;
pub mod idempotency;
pub mod inspect;
pub mod metrics;
pub mod producer;
pub mod redrive;
mod scripts;
pub mod topic;

pub use client::{Capabilities, ClientConfig, Placement, StreamsClient};
pub use consumer::{
    Batch, Consumer, ConsumerConfig, Failure, Fence, Handler, Outcome, Outcomes, StartFrom,
    ensure_group, per_message,
};
pub use envelope::{EntryId, Event, Message, RawEntry};
pub use error::{Backpressure, BackpressureReason, DecodeError, Error, Result};
pub use inspect::Inspector;
pub use producer::{Durability, Outgoing, OutgoingJson, Producer, ProducerConfig, Sent};
pub use topic::{RetryPolicy, Topic, TopicConfig, TopicLayout, Tuning};
