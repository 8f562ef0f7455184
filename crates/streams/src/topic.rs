//! Topics, partitions and the Redis keys behind them.
//!
//! Every key of a partition carries the same hash tag, so the stream, its
//! DLQ, audit stream, leases and dedupe markers live in one cluster slot and a
//! Lua script can touch them together. The tag of partition `i` of `n` is
//! chosen so that its slot falls in the middle of the `i`-th of `n` equal slot
//! ranges. A cluster whose masters own equal contiguous slot ranges (what
//! `redis-cli --cluster create` builds) therefore gets `n / masters`
//! partitions per master, and every client derives the same keys without
//! asking anyone. [`crate::StreamsClient::placement`] checks the real
//! placement against the live slot map.

use std::{
    fmt,
    marker::PhantomData,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use xxhash_rust::xxh3::xxh3_64;

use crate::{Error, Result, envelope::Event};

/// Number of hash slots in a Redis Cluster.
pub const SLOT_COUNT: u32 = 16_384;

/// Settings of one topic. Producers and consumers of a topic must agree on
/// `name` and `partitions`; the rest may differ per process.
#[derive(Debug, Clone)]
pub struct TopicConfig {
    pub name: String,
    pub partitions: u16,
    /// Most entries a partition holds that its slowest group has not
    /// acknowledged. Writes beyond it fail with [`crate::Backpressure`].
    pub capacity: u64,
    /// Deliveries of one message before it moves to the DLQ.
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    /// How long entries acknowledged by every group stay readable (for
    /// browsing and forensics) before retention removes them.
    pub retain_acked: Duration,
    /// Suggested wait before retrying a write refused by backpressure.
    pub backpressure_retry_after: Duration,
}

/// Exponential backoff with jitter between delivery attempts of a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Delay before delivery `attempt + 1`, after `attempt` failed ones.
    pub fn delay_after(&self, failed_attempts: u32) -> Duration {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(failed_attempts.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
    }
}

impl TopicConfig {
    pub fn new(name: impl Into<String>, partitions: u16) -> Self {
        Self {
            name: name.into(),
            partitions,
            capacity: 100_000,
            max_attempts: 5,
            retry: RetryPolicy::default(),
            retain_acked: Duration::from_secs(600),
            backpressure_retry_after: Duration::from_millis(250),
        }
    }

    fn validate(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if !name_ok {
            return Err(Error::Config(format!(
                "topic name {:?} must be 1-64 characters of a-z, 0-9, '.', '_' or '-'",
                self.name
            )));
        }
        if !(1..=1024).contains(&self.partitions) {
            return Err(Error::Config(format!(
                "topic {} needs 1 to 1024 partitions, not {}",
                self.name, self.partitions
            )));
        }
        if self.capacity == 0 || self.max_attempts == 0 {
            return Err(Error::Config(format!(
                "topic {}: capacity and max_attempts must be at least 1",
                self.name
            )));
        }
        Ok(())
    }
}

/// A topic whose messages carry payloads of type `T`.
pub struct Topic<T> {
    layout: Arc<TopicLayout>,
    _payload: PhantomData<fn() -> T>,
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Self {
            layout: self.layout.clone(),
            _payload: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.layout.config.name)
            .field("partitions", &self.layout.config.partitions)
            .finish()
    }
}

impl<T: Event> Topic<T> {
    pub fn new(config: TopicConfig) -> Result<Self> {
        Ok(Self {
            layout: Arc::new(TopicLayout::new(config)?),
            _payload: PhantomData,
        })
    }
}

impl<T> Topic<T> {
    pub fn layout(&self) -> &Arc<TopicLayout> {
        &self.layout
    }

    pub fn name(&self) -> &str {
        &self.layout.config.name
    }

    pub fn config(&self) -> &TopicConfig {
        &self.layout.config
    }

    /// The partition every message with this key goes to.
    pub fn partition_for(&self, key: &str) -> u16 {
        self.layout.partition_for(key)
    }
}

/// The settings of a topic that may change while it is in use, without a
/// restart ([`TopicLayout::retune`]); every producer and consumer of the
/// layout uses the new values from its next call or batch on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    pub capacity: u64,
    pub max_attempts: u32,
    pub retry: RetryPolicy,
    /// Overrides each consumer's `batch_size` when set.
    pub batch_size: Option<usize>,
}

/// The keys and slots of a topic, independent of its payload type. The
/// inspection and redrive APIs work on this.
#[derive(Debug)]
pub struct TopicLayout {
    /// As created; capacity, attempts and retry may since have been
    /// retuned, see [`TopicLayout::tuning`].
    pub config: TopicConfig,
    pub partitions: Vec<PartitionKeys>,
    tuning: RwLock<Tuning>,
}

impl TopicLayout {
    pub fn new(config: TopicConfig) -> Result<Self> {
        config.validate()?;
        let partitions = (0..config.partitions)
            .map(|index| PartitionKeys::new(&config.name, index, config.partitions))
            .collect();
        let tuning = RwLock::new(Tuning {
            capacity: config.capacity,
            max_attempts: config.max_attempts,
            retry: config.retry,
            batch_size: None,
        });
        Ok(Self {
            config,
            partitions,
            tuning,
        })
    }

    /// The settings in force now.
    pub fn tuning(&self) -> Tuning {
        *self.tuning.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Change the settings in force; refused when they make no sense.
    pub fn retune(&self, tuning: Tuning) -> Result<()> {
        if tuning.capacity == 0 || tuning.max_attempts == 0 || tuning.batch_size == Some(0) {
            return Err(Error::Config(format!(
                "topic {}: capacity, max_attempts and batch_size must be at least 1",
                self.config.name
            )));
        }
        if tuning.retry.min_delay > tuning.retry.max_delay
            || !(tuning.retry.factor.is_finite() && tuning.retry.factor >= 1.0)
        {
            return Err(Error::Config(format!(
                "topic {}: retry needs min_delay <= max_delay and a factor of at least 1",
                self.config.name
            )));
        }
        *self.tuning.write().unwrap_or_else(PoisonError::into_inner) = tuning;
        Ok(())
    }

    /// Stable across processes, platforms and releases: xxh3 of the key.
    pub fn partition_for(&self, key: &str) -> u16 {
        (xxh3_64(key.as_bytes()) % u64::from(self.config.partitions)) as u16
    }

    pub fn partition(&self, index: u16) -> Result<&PartitionKeys> {
        self.partitions.get(usize::from(index)).ok_or_else(|| {
            Error::Config(format!(
                "topic {} has no partition {index}",
                self.config.name
            ))
        })
    }

    /// Sorted set of live consumers per group; not tied to a partition.
    pub fn members_key(&self, group: &str) -> String {
        format!("{{{}:members}}:{group}", self.config.name)
    }
}

/// The Redis keys of one partition. All share the partition's hash tag.
#[derive(Debug, Clone)]
pub struct PartitionKeys {
    pub index: u16,
    pub tag: String,
    pub slot: u16,
    pub stream: String,
    pub dlq: String,
    pub audit: String,
    /// Per group, how many entries Redis still counts in the group's lag
    /// although something removed them unread (see the MAINTAIN script).
    pub lost: String,
}

impl PartitionKeys {
    fn new(topic: &str, index: u16, partitions: u16) -> Self {
        let tag = balanced_tag(topic, index, partitions);
        let slot = slot_of(&tag);
        Self {
            index,
            slot,
            stream: format!("{{{tag}}}:stream"),
            dlq: format!("{{{tag}}}:dlq"),
            audit: format!("{{{tag}}}:audit"),
            lost: format!("{{{tag}}}:lost"),
            tag,
        }
    }

    /// Lease naming the one consumer of `group` that owns this partition.
    pub fn lease(&self, group: &str) -> String {
        format!("{{{}}}:lease:{group}", self.tag)
    }

    /// Counter behind the fencing tokens of `group`'s leases on this
    /// partition. It never expires, so tokens only grow.
    pub fn fencing_counter(&self, group: &str) -> String {
        format!("{{{}}}:fence:{group}", self.tag)
    }

    /// Marker that message `message_id` was appended (idempotent producers).
    pub fn produced(&self, message_id: &str) -> String {
        format!("{{{}}}:produced:{message_id}", self.tag)
    }

    /// Marker that `group` has processed message `message_id`.
    pub fn dedupe(&self, group: &str, message_id: &str) -> String {
        format!("{{{}}}:dedupe:{group}:{message_id}", self.tag)
    }
}

/// The cluster slot of keys tagged `{tag}`: CRC16/XMODEM of the tag.
pub(crate) fn slot_of(tag: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOT_COUNT as u16
}

/// The first of `topic:index`, `topic:index:0`, `topic:index:1`, ... whose
/// slot lies in the central half of the partition's slot range, so that a
/// little unevenness in how masters split the slots does not move it.
fn balanced_tag(topic: &str, index: u16, partitions: u16) -> String {
    let width = SLOT_COUNT / u32::from(partitions);
    let center = u32::from(index) * SLOT_COUNT / u32::from(partitions) + width / 2;
    let half = (width / 4).max(1);
    let wanted = center.saturating_sub(half)..center + half;
    let fits = |tag: &str| wanted.contains(&u32::from(slot_of(tag)));
    let plain = format!("{topic}:{index}");
    if fits(&plain) {
        return plain;
    }
    (0u32..)
        .map(|salt| format!("{topic}:{index}:{salt}"))
        .find(|tag| fits(tag))
        .unwrap_or(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(name: &str, partitions: u16) -> TopicLayout {
        TopicLayout::new(TopicConfig::new(name, partitions)).expect("valid topic")
    }

    #[test]
    fn partitions_spread_evenly_over_three_equal_masters() {
        // The slot ranges `redis-cli --cluster create` gives three masters.
        let master_of = |slot: u16| match slot {
            0..=5460 => 0,
            5461..=10922 => 1,
            _ => 2,
        };
        for name in [
            "paper.ingested",
            "paper.summarized",
            "notification.requested",
            "t",
        ] {
            for partitions in [3u16, 6, 9, 12, 48] {
                let mut per_master = [0; 3];
                for p in &layout(name, partitions).partitions {
                    per_master[master_of(p.slot)] += 1;
                }
                let expected = usize::from(partitions / 3);
                assert_eq!(per_master, [expected; 3], "{name} with {partitions}");
            }
        }
    }

    #[test]
    fn all_keys_of_a_partition_share_its_slot() {
        for p in &layout("paper.ingested", 6).partitions {
            for key in [
                &p.stream,
                &p.dlq,
                &p.audit,
                &p.lost,
                &p.lease("g"),
                &p.dedupe("g", "m1"),
                &p.produced("m1"),
            ] {
                // Redis's own slot function must agree with ours.
                let route = redis::cluster_routing::Route::with_key(
                    key,
                    redis::cluster_routing::SlotAddr::Master,
                );
                let expected = redis::cluster_routing::Route::new(
                    p.slot,
                    redis::cluster_routing::SlotAddr::Master,
                );
                assert_eq!(route, expected, "{key}");
            }
        }
    }

    #[test]
    fn same_key_same_partition_and_keys_spread() {
        let topic = layout("paper.ingested", 6);
        let mut counts = [0u32; 6];
        for i in 0..60_000 {
            let key = format!("2401.{i:05}");
            let p = topic.partition_for(&key);
            assert_eq!(p, topic.partition_for(&key));
            counts[usize::from(p)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven key spread {counts:?}");
        }
    }

    #[test]
    fn partition_of_a_key_is_stable_across_releases() {
        // Changing the hash would silently reorder every key in flight.
        let topic = layout("paper.ingested", 6);
        let got: Vec<u16> = ["2104.12255", "astro-ph/0601001", "user-42", ""]
            .iter()
            .map(|k| topic.partition_for(k))
            .collect();
        assert_eq!(got, [5, 1, 5, 4]);
    }

    #[test]
    fn bad_topic_configs_are_refused() {
        for (name, partitions) in [("", 6), ("Has Upper", 6), ("a{b}", 6), ("ok", 0)] {
            assert!(TopicLayout::new(TopicConfig::new(name, partitions)).is_err());
        }
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            factor: 2.0,
        };
        let first = policy.delay_after(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let fourth = policy.delay_after(4);
        assert!(fourth >= Duration::from_millis(800), "{fourth:?}");
        assert!(policy.delay_after(30) <= Duration::from_secs(4));
    }
}
