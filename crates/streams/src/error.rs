use std::time::Duration;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    #[error("{operation} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        after: Duration,
    },

    #[error(transparent)]
    Backpressure(#[from] Backpressure),

    #[error(
        "write reached {reached} of {wanted} replica(s) within {timeout:?}; it may be lost in a failover"
    )]
    NotReplicated {
        wanted: u32,
        reached: u32,
        timeout: Duration,
    },

    #[error("encode payload: {0}")]
    Encode(#[source] serde_json::Error),

    #[error("invalid configuration: {0}")]
    Config(String),

    /// A partition's lease passed to another consumer: this one may no
    /// longer change what the group holds there.
    #[error("fenced: the lease on partition {partition} passed to another consumer")]
    Fenced { partition: u16 },

    #[error("unexpected reply to {command}: {detail}")]
    Protocol {
        command: &'static str,
        detail: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn protocol(command: &'static str, detail: impl Into<String>) -> Self {
        Self::Protocol {
            command,
            detail: detail.into(),
        }
    }

    /// True for failures that a later attempt may not meet: connection loss,
    /// timeouts, redirections and failovers.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(err) => is_transient_redis(err),
            Self::Timeout { .. } | Self::NotReplicated { .. } => true,
            _ => false,
        }
    }
}

pub(crate) fn is_transient_redis(err: &redis::RedisError) -> bool {
    use redis::{RetryMethod, ServerErrorKind};
    if err.is_timeout() || err.is_io_error() || err.is_connection_dropped() {
        return true;
    }
    if matches!(
        err.kind(),
        redis::ErrorKind::Server(ServerErrorKind::NoScript | ServerErrorKind::ReadOnly)
    ) {
        return true;
    }
    !matches!(err.retry_method(), RetryMethod::NoRetry)
}

pub(crate) fn is_out_of_memory(err: &redis::RedisError) -> bool {
    err.code() == Some("OOM")
}

/// A write refused because the partition (or the node holding it) is full.
///
/// Nothing was written for the refused messages; sending them again after
/// `retry_after` is safe and keeps their order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "topic {topic} partition {partition} refused the write ({reason}); retry after {retry_after:?}"
)]
pub struct Backpressure {
    pub topic: String,
    pub partition: u16,
    pub reason: BackpressureReason,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackpressureReason {
    /// The slowest consumer group has `backlog` unacknowledged entries.
    PartitionFull { backlog: u64, capacity: u64 },
    /// The node reached `maxmemory` (it runs with `noeviction`).
    NodeOutOfMemory,
}

impl std::fmt::Display for BackpressureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::PartitionFull { backlog, capacity } => {
                write!(f, "backlog {backlog} of capacity {capacity}")
            }
            Self::NodeOutOfMemory => f.write_str("node out of memory"),
        }
    }
}

/// Why an entry could not be turned into a typed message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("entry has no field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` is not valid: {detail}")]
    BadField { field: &'static str, detail: String },
    #[error("schema version {found} is not supported (this consumer reads up to {supported})")]
    UnknownSchema { found: u32, supported: u32 },
    #[error("payload does not decode: {0}")]
    Payload(#[from] serde_json::Error),
}

impl DecodeError {
    /// The reason recorded in the dead-letter entry.
    pub fn dlq_reason(&self) -> &'static str {
        match self {
            Self::UnknownSchema { .. } => "unknown_schema",
            _ => "decode_error",
        }
    }
}
