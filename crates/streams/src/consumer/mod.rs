//! Consuming a topic in a group, with one owner per partition.
//!
//! # Ownership
//! Every consumer of a group heartbeats into a members set (judged by the
//! server's clock). From the sorted live members each consumer derives the
//! same assignment, partition `p` to member `p mod n`, and runs a worker for
//! each partition it both is assigned and holds the lease of. The lease is
//! a key in the partition's slot with a TTL, renewed every `heartbeat`. A
//! consumer that joins or leaves changes the assignment; the old owner
//! finishes its batch, acknowledges, and releases the lease before the new
//! one can take it. A consumer that dies stops renewing; its leases and
//! membership expire after `lease_ttl` and the partitions move.
//!
//! A worker stops by itself once its lease may have expired (it could not
//! renew for `lease_ttl` minus a margin). Without fencing, two workers
//! could then only overlap when a batch outlives that margin; with it, the
//! old worker's late acknowledgements and dead letters are refused, and
//! only its handler's effects can still land (see "Fencing").
//!
//! # Takeover
//! A new owner first claims every pending entry of the partition (any
//! consumer's: only the owner processes a partition) and runs them through
//! the handler before reading new entries, oldest first, so a key's order
//! survives the move. Pending ids whose entries were deleted are counted in
//! `streams_unacked_trimmed_total` and dropped. Consumers no longer alive
//! with nothing pending are removed from the group, in a script that checks
//! "nothing pending" in the same step as the removal.
//!
//! # Fencing
//! Each acquisition of a lease gets a fencing token from Redis, higher than
//! any before it for that partition and group; the lease holds
//! `<token>:<owner>`. Acknowledgements, dead letters, retry claims and
//! sweeps run in scripts that compare the lease with the caller's and
//! change nothing on a mismatch, so a consumer that was paused or cut off
//! past its lease cannot act for the partition any more, even if its own
//! clock says otherwise. Every read is followed on the same connection by
//! a look at the lease: an owner that lost it leaves what it read to the
//! next owner. The token travels with every batch ([`Batch::fence`],
//! [`crate::Message::fencing_token`]) so that the handler's own store can
//! refuse a late write too ([`crate::idempotency`]).
//!
//! The owner also guards against anyone else's reads. Each read is
//! followed by a look at the first entry pending after the last one the
//! owner read; one that comes before this read's entries was taken by
//! someone else in between. Those entries are claimed and handled first,
//! before the later entries of their keys. A periodic check (with
//! retention) claims whatever else is pending with another consumer, so
//! nothing stays stranded with a consumer that will never handle it.
//!
//! # Retries and the DLQ
//! A failed message stays pending in Redis (its delivery count, set with
//! `XCLAIM ... RETRYCOUNT` before each retry, survives a crash), and its key
//! is *blocked* in memory: later messages of that key queue behind it, while
//! messages of every other key keep flowing. When the backoff expires the
//! failed message is delivered alone; on success (or once it is
//! written to the DLQ) the queued messages of its key follow, in order. A
//! message dead-lettered at once (rejected, or failed on its last attempt)
//! holds its key the same way until the DLQ has it: were the consumer to
//! stop first, the next owner would run it again, and it must not run after
//! its successors.
//!
//! The trade-off: a poison key stalls only itself, and only for the sum of
//! its backoffs (bounded by `max_attempts` and the policy's `max_delay`).
//! Its order is kept up to the dead-lettering of the poison message, which
//! then leaves the sequence; a later redrive delivers it after messages that
//! were produced after it. Blocking the whole partition instead would keep
//! strict order across the DLQ at the price of stalling every key behind one
//! bad message, which is what the design avoids. Held messages live in
//! memory but remain pending in Redis, so a crash loses none of them: the
//! next owner claims them in id order. A handover restarts their backoffs,
//! and counts as a delivery of every pending message, held ones included.
//!
//! A dead letter records why (`dlq.reason`): `max_attempts` (the handler
//! kept failing), `rejected` (the handler said it never will succeed),
//! `unknown_schema` or `decode_error` (the entry cannot become a message;
//! the handler never sees it), `max_deliveries` (delivered more often than
//! `max_attempts` without an outcome: consumers crashed on it). It also
//! keeps the error, the attempts, the origin entry id, the group, the
//! consumer and the time.
//!

mod handler;
mod worker;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub use handler::{Batch, Failure, Fence, Handler, Outcome, Outcomes, per_message};

use crate::{
    Result,
    client::{StreamsClient, evalsha},
    envelope::Event,
    scripts,
    topic::{Topic, TopicLayout},
};

/// Where a new group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Everything still in the stream.
    Beginning,
    /// Only entries added after the group is created.
    Latest,
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub group: String,
    /// Unique per process; the default is host, pid and a random suffix.
    pub consumer_name: String,
    pub batch_size: usize,
    /// How long an idle read blocks; also bounds how long shutdown waits
    /// for a worker that is waiting for entries.
    pub block: Duration,
    /// Handler calls running at once, over all partitions of this consumer.
    pub max_concurrent_batches: usize,
    /// How long a partition stays leased without renewal: a dead consumer's
    /// partitions move after about this long. Keep it well above the
    /// longest batch a handler may take; a batch that outlives the lease can
    /// overlap with the next owner's work (the worker logs a warning when
    /// that happens).
    pub lease_ttl: Duration,
    /// How often membership and leases are renewed; a quarter of the TTL.
    pub heartbeat: Duration,
    pub start_from: StartFrom,
    /// Skip messages this group already processed (by message id), for
    /// this long after processing. See [`crate::idempotency`].
    pub dedupe_ttl: Option<Duration>,
    /// How often a worker runs retention and refreshes its gauges.
    pub maintenance_interval: Duration,
    /// Longest a handler may take over a batch. A batch that takes longer
    /// is dropped and retried like a failed one (and dead-lettered after
    /// the topic's attempts), so a call that never returns cannot hold its
    /// partition, and shutdown, for good. `None` trusts the handler.
    pub handler_timeout: Option<Duration>,
}

/// A zero heartbeat would make the ticker panic; anything this short is a
/// mistake, so it is raised to this.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

impl ConsumerConfig {
    pub fn new(group: impl Into<String>) -> Self {
        let lease_ttl = Duration::from_secs(10);
        Self {
            group: group.into(),
            consumer_name: default_consumer_name(),
            batch_size: 500,
            block: Duration::from_millis(500),
            max_concurrent_batches: 4,
            lease_ttl,
            heartbeat: lease_ttl / 4,
            start_from: StartFrom::Beginning,
            dedupe_ttl: None,
            maintenance_interval: Duration::from_secs(1),
            handler_timeout: Some(Duration::from_secs(600)),
        }
    }

    /// Set the lease TTL and a heartbeat of a quarter of it.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self.heartbeat = ttl / 4;
        self
    }
}

fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{suffix}", std::process::id())
}

/// Create `group` on every partition of a topic if it does not exist yet.
///
/// Consumers do this for the partitions they take, but a service should
/// call it at startup: until a group exists, producers' backpressure and
/// retention cannot account for it.
pub async fn ensure_group(
    client: &StreamsClient,
    layout: &TopicLayout,
    group: &str,
    start_from: StartFrom,
) -> Result<()> {
    for keys in &layout.partitions {
        ensure_partition_group(client, keys, group, start_from).await?;
    }
    Ok(())
}

pub(crate) async fn ensure_partition_group(
    client: &StreamsClient,
    keys: &crate::topic::PartitionKeys,
    group: &str,
    start_from: StartFrom,
) -> Result<()> {
    let start = match start_from {
        StartFrom::Beginning => "0",
        StartFrom::Latest => "$",
    };
    let cmd = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&keys.stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .to_owned();
    match client.query::<()>("create group", &cmd).await {
        Err(crate::Error::Redis(err)) if err.code() == Some("BUSYGROUP") => Ok(()),
        // A full node refuses XGROUP CREATE even when the group exists;
        // consumers must still start there, to drain it.
        Err(crate::Error::Redis(err)) if crate::error::is_out_of_memory(&err) => {
            let groups: Vec<std::collections::HashMap<String, redis::Value>> = client
                .query(
                    "list groups",
                    redis::cmd("XINFO").arg("GROUPS").arg(&keys.stream),
                )
                .await?;
            let exists = groups.iter().any(|g| {
                g.get("name")
                    .cloned()
                    .and_then(|v| crate::envelope::text(v).ok())
                    .is_some_and(|name| name == group)
            });
            if exists {
                Ok(())
            } else {
                Err(crate::Error::Redis(err))
            }
        }
        other => other,
    }
}

/// A partition lease this process holds: its fencing token and the time
/// until which the process may treat it as its own.
#[derive(Debug)]
pub(crate) struct Lease {
    epoch: Instant,
    valid_until_ms: AtomicU64,
    /// Issued by Redis with the lease, higher than any before it.
    pub token: u64,
    /// The lease key's value while this lease holds: `<token>:<owner>`.
    pub value: String,
}

impl Lease {
    fn new(epoch: Instant, token: u64, owner: &str) -> Self {
        Self {
            epoch,
            valid_until_ms: AtomicU64::new(0),
            token,
            value: format!("{token}:{owner}"),
        }
    }

    /// Record a renewal sent at `sent`: Redis set the TTL no earlier, so the
    /// key lives at least until `sent + ttl - margin` on any sane clock.
    fn renewed(&self, sent: Instant, usable: Duration) {
        let until = (sent + usable).saturating_duration_since(self.epoch);
        self.valid_until_ms
            .store(until.as_millis() as u64, Ordering::Release);
    }

    fn revoke(&self) {
        self.valid_until_ms.store(0, Ordering::Release);
    }

    pub fn is_valid(&self) -> bool {
        (self.epoch.elapsed().as_millis() as u64) < self.valid_until_ms.load(Ordering::Acquire)
    }
}

struct OwnedPartition {
    lease: Arc<Lease>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Everything a worker shares with the consumer that started it.
pub(crate) struct Shared<H> {
    pub client: StreamsClient,
    pub layout: Arc<TopicLayout>,
    pub config: ConsumerConfig,
    pub handler: Arc<H>,
    pub permits: Arc<Semaphore>,
    pub members: watch::Receiver<Arc<Vec<String>>>,
}

/// A member of a consumer group on one topic.
pub struct Consumer<T, H> {
    shared: Arc<Shared<H>>,
    members_tx: watch::Sender<Arc<Vec<String>>>,
    owned: BTreeMap<u16, OwnedPartition>,
    epoch: Instant,
    _payload: std::marker::PhantomData<fn() -> T>,
}

impl<T, H> std::fmt::Debug for Consumer<T, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.shared.layout.config.name)
            .field("group", &self.shared.config.group)
            .field("consumer", &self.shared.config.consumer_name)
            .field("owned", &self.owned.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<T: Event, H: Handler<T>> Consumer<T, H> {
    pub fn new(
        client: StreamsClient,
        topic: &Topic<T>,
        config: ConsumerConfig,
        handler: H,
    ) -> Self {
        let (members_tx, members) = watch::channel(Arc::new(Vec::new()));
        Self {
            shared: Arc::new(Shared {
                client,
                layout: topic.layout().clone(),
                permits: Arc::new(Semaphore::new(config.max_concurrent_batches.max(1))),
                config,
                handler: Arc::new(handler),
                members,
            }),
            members_tx,
            owned: BTreeMap::new(),
            epoch: Instant::now(),
            _payload: std::marker::PhantomData,
        }
    }

    /// Consume until `shutdown` fires, then finish in-flight batches,
    /// release the leases and leave the group.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(
            topic = %self.shared.layout.config.name,
            group = %self.shared.config.group,
            consumer = %self.shared.config.consumer_name,
            "consumer starting"
        );
        match self.shared.client.placement(&self.shared.layout).await {
            Ok(placement) => {
                metrics::gauge!("streams_placement_balanced", "topic" => placement.topic.clone())
                    .set(if placement.is_balanced() { 1.0 } else { 0.0 });
            }
            Err(err) => tracing::warn!(%err, "could not check the partitions' placement"),
        }
        let mut ticker = tokio::time::interval(self.shared.config.heartbeat.max(MIN_HEARTBEAT));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => self.tick().await,
            }
        }
        self.stop_all().await;
        if let Err(err) = self.membership("leave").await {
            tracing::warn!(%err, "could not leave the group; membership will expire");
        }
        tracing::info!(consumer = %self.shared.config.consumer_name, "consumer stopped");
        Ok(())
    }

    /// One heartbeat: renew the leases held, learn the members, hand over
    /// and take partitions. Every call is bounded by a heartbeat, renewals
    /// run beside the membership call and acquisitions all at once, so a
    /// tick lasts at most two heartbeats however many calls hang on an
    /// unreachable node, and leases on healthy nodes are renewed in time.
    async fn tick(&mut self) {
        self.reap_finished().await;
        let (members, ()) = tokio::join!(self.membership("join"), self.renew_leases());
        let members = match members {
            Ok(members) => members,
            Err(err) => {
                tracing::warn!(%err, "heartbeat failed; keeping current partitions while the leases last");
                return;
            }
        };
        let wanted = assignment(
            &members,
            &self.shared.config.consumer_name,
            self.shared.layout.config.partitions,
        );
        self.members_tx.send_replace(Arc::new(members));
        for (partition, owned) in &self.owned {
            if !wanted.contains(partition) && !owned.stop.is_cancelled() {
                tracing::info!(partition, "handing partition over");
                owned.stop.cancel();
            }
        }
        let missing: Vec<u16> = wanted
            .into_iter()
            .filter(|partition| !self.owned.contains_key(partition))
            .collect();
        self.acquire(missing).await;
    }

    async fn membership(&self, mode: &str) -> Result<Vec<String>> {
        let key = self.shared.layout.members_key(&self.shared.config.group);
        let mut cmd = evalsha(&scripts::MEMBERSHIP, &[key]);
        cmd.arg(&self.shared.config.consumer_name)
            .arg(self.shared.config.lease_ttl.as_millis() as u64)
            .arg(mode);
        let mut members: Vec<String> = self
            .shared
            .client
            .eval_within(
                "membership",
                self.shared.config.heartbeat,
                &scripts::MEMBERSHIP,
                &cmd,
            )
            .await?;
        members.sort();
        Ok(members)
    }

    async fn renew_leases(&self) {
        let ttl = self.shared.config.lease_ttl;
        // Partitions being handed over are renewed too, until their worker
        // has finished its batch and released the lease: the next owner must
        // not take over while the old one is still at work.
        let renewals = self
            .owned
            .iter()
            .filter(|(_, owned)| !owned.task.is_finished())
            .map(|(partition, owned)| async move {
                let sent = Instant::now();
                let result = self
                    .lease_call(&scripts::LEASE_RENEW, *partition, &owned.lease.value, ttl)
                    .await;
                match result {
                    Ok(held) if held > 0 => owned.lease.renewed(sent, usable_lease(ttl)),
                    Ok(_) => {
                        tracing::warn!(
                            partition,
                            "lease lost to another consumer; stopping the worker"
                        );
                        owned.lease.revoke();
                        owned.stop.cancel();
                    }
                    Err(err) => tracing::warn!(partition, %err, "lease renewal failed"),
                }
            });
        join_all(renewals).await;
    }

    /// Run a lease script: `who` is the owner's name to acquire, the lease
    /// value to renew. Returns the script's answer: the token or 0 for an
    /// acquisition, 1 or 0 for a renewal.
    async fn lease_call(
        &self,
        script: &redis::Script,
        partition: u16,
        who: &str,
        ttl: Duration,
    ) -> Result<u64> {
        let keys = self.shared.layout.partition(partition)?;
        let group = &self.shared.config.group;
        let mut cmd = evalsha(script, &[keys.lease(group), keys.fencing_counter(group)]);
        cmd.arg(who).arg(ttl.as_millis() as u64);
        // Bounded by a heartbeat: one slow node must not delay the next
        // round of renewals for the partitions on healthy nodes.
        self.shared
            .client
            .eval_within("lease", self.shared.config.heartbeat, script, &cmd)
            .await
    }

    /// Try to lease each of `partitions`, all at once, and start a worker
    /// for each lease taken.
    async fn acquire(&mut self, partitions: Vec<u16>) {
        let me = self.shared.config.consumer_name.clone();
        let ttl = self.shared.config.lease_ttl;
        let this = &*self;
        let attempts = partitions.into_iter().map(|partition| {
            let me = &me;
            async move {
                let sent = Instant::now();
                let result = this
                    .lease_call(&scripts::LEASE_ACQUIRE, partition, me, ttl)
                    .await;
                (partition, sent, result)
            }
        });
        let results = join_all(attempts).await;
        for (partition, sent, result) in results {
            self.start_if_acquired(partition, sent, ttl, result);
        }
    }

    fn start_if_acquired(
        &mut self,
        partition: u16,
        sent: Instant,
        ttl: Duration,
        acquired: Result<u64>,
    ) {
        match acquired {
            Ok(token) if token > 0 => {
                let lease = Arc::new(Lease::new(
                    self.epoch,
                    token,
                    &self.shared.config.consumer_name,
                ));
                lease.renewed(sent, usable_lease(ttl));
                let stop = CancellationToken::new();
                let task = tokio::spawn(worker::run::<T, H>(
                    self.shared.clone(),
                    partition,
                    lease.clone(),
                    stop.clone(),
                ));
                tracing::info!(partition, token, "partition acquired");
                self.owned
                    .insert(partition, OwnedPartition { lease, stop, task });
            }
            Ok(_) => tracing::debug!(partition, "partition still leased by another consumer"),
            Err(err) => tracing::warn!(partition, %err, "lease acquisition failed"),
        }
    }

    /// Forget workers that ended (handed over, lost their lease, or failed).
    async fn reap_finished(&mut self) {
        let finished: Vec<u16> = self
            .owned
            .iter()
            .filter(|(_, o)| o.task.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for partition in finished {
            if let Some(owned) = self.owned.remove(&partition)
                && let Err(err) = owned.task.await
            {
                tracing::error!(partition, %err, "partition worker panicked");
            }
        }
    }

    /// Stop every worker, renewing the leases until each has finished its
    /// batch, acknowledged it and released its partition.
    async fn stop_all(&mut self) {
        for owned in self.owned.values() {
            owned.stop.cancel();
        }
        let mut ticker = tokio::time::interval(self.shared.config.heartbeat.max(MIN_HEARTBEAT));
        while self.owned.values().any(|o| !o.task.is_finished()) {
            tokio::select! {
                _ = ticker.tick() => self.renew_leases().await,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        self.reap_finished().await;
    }
}

/// Part of the TTL a holder may use: it stops a third of a TTL early so
/// that a renewal lost in flight cannot let two owners overlap.
fn usable_lease(ttl: Duration) -> Duration {
    ttl - ttl / 3
}

/// Partitions `me` should own: `p` goes to the `p mod n`-th of the sorted
/// live members, so every member computes the same answer.
fn assignment(members: &[String], me: &str, partitions: u16) -> BTreeSet<u16> {
    let Some(position) = members.iter().position(|m| m == me) else {
        return BTreeSet::new();
    };
    (0..partitions)
        .filter(|p| usize::from(*p) % members.len() == position)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_covers_every_partition_exactly_once() {
        for n in 1..=7usize {
            let members: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            let mut seen = BTreeMap::new();
            for m in &members {
                for p in assignment(&members, m, 6) {
                    *seen.entry(p).or_insert(0) += 1;
                }
            }
            assert_eq!(seen.len(), 6);
            assert!(seen.values().all(|c| *c == 1));
        }
        assert!(assignment(&["a".into()], "stranger", 6).is_empty());
    }

    #[test]
    fn lease_clock_expires_early() {
        let epoch = Instant::now();
        let clock = Lease::new(epoch, 7, "me");
        assert_eq!(clock.value, "7:me");
        assert!(!clock.is_valid());
        clock.renewed(Instant::now(), usable_lease(Duration::from_secs(3)));
        assert!(clock.is_valid());
        clock.revoke();
        assert!(!clock.is_valid());
        clock.renewed(
            Instant::now() - Duration::from_secs(5),
            usable_lease(Duration::from_secs(3)),
        );
        assert!(!clock.is_valid());
    }
}
