//! The worker that processes one owned partition.
//!
//! How retries wait is described in the [`consumer`](super) module.
//!
//! # Invariant
//! Every entry delivered to this consumer and not yet acknowledged or
//! dead-lettered is in exactly one place: `ready`, a blocked key's queue, the
//! batch being handled, `unacked`/the acknowledgement in flight, or
//! `undead`. Error paths put a batch back into `ready` rather than drop it,
//! and a periodic check of this consumer's pending list adopts entries a
//! lost read reply left behind.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::FutureExt;
use redis::{Value, cluster_async::ClusterConnection};
use tokio_util::sync::CancellationToken;

use super::{
    Handler, Lease, Outcome, Outcomes, Shared,
    handler::{Batch, Fence},
};
use crate::{
    Error, Result,
    client::evalsha,
    envelope::{EntryId, Event, Message, RawEntry, text},
    metrics::PartitionMetrics,
    producer::now_ms,
    scripts,
    topic::PartitionKeys,
};

type AckTask = tokio::task::JoinHandle<std::result::Result<usize, (Vec<Ack>, Error)>>;

/// An acknowledgement to send: the entry, and the message id to mark as
/// processed when dedupe is on.
type Ack = (EntryId, Option<String>);

/// An entry this worker holds: delivered to it, not yet acknowledged.
#[derive(Debug)]
struct Held {
    raw: RawEntry,
    deliveries: u32,
    /// This is the failed message of a blocked key, out for another attempt.
    retry: bool,
}

impl Held {
    fn new(raw: RawEntry, deliveries: u32) -> Self {
        Self {
            raw,
            deliveries,
            retry: false,
        }
    }
}

/// A key whose oldest message failed and waits for its next attempt.
#[derive(Debug, Default)]
struct Blocked {
    /// The failed message first (unless it is out for a retry), then later
    /// messages of the key.
    queue: VecDeque<Held>,
    /// The failed message is out for another attempt.
    retrying: bool,
    /// The failed message is on its way to the DLQ: the key's later
    /// messages wait until it is there, or a consumer that stopped before
    /// writing it would hand the next owner a rejected message to run after
    /// its successors.
    awaiting_dead_letter: bool,
}

#[derive(Debug)]
struct DeadLetter {
    entry_id: EntryId,
    key: String,
    /// Move it even though it is pending with no one: its group lost the
    /// record (recreated or reset), and nothing else would deliver it.
    unpending: bool,
    reason: &'static str,
    error: String,
    attempts: u32,
}

pub(crate) async fn run<T: Event, H: Handler<T>>(
    shared: Arc<Shared<H>>,
    partition: u16,
    lease: Arc<Lease>,
    stop: CancellationToken,
) {
    let worker = Worker::<T, H>::start(shared.clone(), partition, lease.clone(), stop).await;
    let mut worker = match worker {
        Ok(worker) => worker,
        Err(err) => {
            tracing::error!(partition, %err, "partition worker could not start");
            release_lease(&shared, partition, &lease).await;
            return;
        }
    };
    worker.run().await;
    worker.metrics.owned.set(0.0);
    release_lease(&shared, partition, &lease).await;
}

async fn release_lease<H>(shared: &Shared<H>, partition: u16, lease: &Lease) {
    let Ok(keys) = shared.layout.partition(partition) else {
        return;
    };
    let mut cmd = evalsha(&scripts::LEASE_RELEASE, &[keys.lease(&shared.config.group)]);
    cmd.arg(&lease.value);
    if let Err(err) = shared
        .client
        .eval::<i64>("lease release", &scripts::LEASE_RELEASE, &cmd)
        .await
    {
        tracing::warn!(partition, %err, "could not release the lease; it will expire");
    }
}

struct Worker<T, H> {
    shared: Arc<Shared<H>>,
    keys: PartitionKeys,
    lease: Arc<Lease>,
    stop: CancellationToken,
    /// Connection for reads; replaced after a failed read.
    reader: Option<ClusterConnection>,
    lease_key: String,
    /// The group's last delivered id after this worker's latest read. A
    /// read that finds another means someone else read in between.
    last_seen: Option<EntryId>,
    metrics: PartitionMetrics,
    blocked: HashMap<String, Blocked>,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Entries to deliver before reading anything new, oldest first.
    ready: VecDeque<Held>,
    unacked: Vec<Ack>,
    acks_in_flight: Option<AckTask>,
    /// Message ids marked processed whose markers may not be in Redis yet.
    marks_in_flight: HashSet<String>,
    undead: Vec<DeadLetter>,
    next_maintenance: Instant,
    next_cleanup: Instant,
    /// Set once the worker must not handle anything more.
    fenced: bool,
    next_dead_letter_attempt: Instant,
    _payload: std::marker::PhantomData<fn() -> T>,
}

impl<T: Event, H: Handler<T>> Worker<T, H> {
    async fn start(
        shared: Arc<Shared<H>>,
        partition: u16,
        lease: Arc<Lease>,
        stop: CancellationToken,
    ) -> Result<Self> {
        let keys = shared.layout.partition(partition)?.clone();
        let metrics =
            PartitionMetrics::new(&shared.layout.config.name, &shared.config.group, partition);
        metrics.owned.set(1.0);
        let lease_key = keys.lease(&shared.config.group);
        let mut worker = Self {
            shared,
            keys,
            lease,
            stop,
            reader: None,
            lease_key,
            last_seen: None,
            metrics,
            blocked: HashMap::new(),
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            unacked: Vec::new(),
            acks_in_flight: None,
            marks_in_flight: HashSet::new(),
            undead: Vec::new(),
            next_maintenance: Instant::now(),
            next_cleanup: Instant::now(),
            fenced: false,
            next_dead_letter_attempt: Instant::now(),
            _payload: std::marker::PhantomData,
        };
        worker.ensure_group().await?;
        worker.take_over_pending().await?;
        Ok(worker)
    }

    fn group(&self) -> &str {
        &self.shared.config.group
    }

    fn me(&self) -> &str {
        &self.shared.config.consumer_name
    }

    fn partition(&self) -> u16 {
        self.keys.index
    }

    async fn run(&mut self) {
        let mut failures = 0u32;
        while !self.stop.is_cancelled() {
            if self.fenced || !self.lease.is_valid() {
                tracing::warn!(
                    partition = self.partition(),
                    "lease may have expired; stopping"
                );
                break;
            }
            match self.step().await {
                Ok(()) => failures = 0,
                Err(err) => {
                    failures += 1;
                    let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tracing::warn!(partition = self.partition(), %err, ?pause, "partition step failed");
                    tokio::select! {
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        // Finish what was handled: dead letters and acknowledgements. Not
        // after losing the lease: the next owner may hold those entries now.
        if !self.fenced
            && self.lease.is_valid()
            && let Err(err) = self.flush_dead_letters().await
        {
            tracing::warn!(partition = self.partition(), %err, "could not dead-letter on stop; the next owner will retry");
        }
        for attempt in 1..=3 {
            match self.flush_acks().await {
                Ok(()) => break,
                Err(err) if attempt == 3 => {
                    tracing::warn!(partition = self.partition(), %err, "could not acknowledge on stop; the next owner will handle those entries again");
                }
                Err(_) => {}
            }
        }
    }

    async fn step(&mut self) -> Result<()> {
        self.try_dead_letters().await;
        let batch = self.next_batch().await?;
        if !self.lease.is_valid() {
            // The read outlived the lease (a failover, say). Keep what it got
            // held; it stays pending here and the next owner claims it.
            self.put_back(batch);
            self.fenced = true;
            return Ok(());
        }
        if !batch.is_empty() {
            self.process(batch).await?;
            self.try_dead_letters().await;
        }
        self.settle_acks().await?;
        self.start_acks();
        self.maintain_if_due().await
    }

    /// Move queued dead letters, unless a recent attempt failed. A failure
    /// (a full node refuses the DLQ append) must not stop the partition:
    /// reads, acknowledgements and retention go on, and retention is what
    /// lets a full node drain.
    async fn try_dead_letters(&mut self) {
        if self.undead.is_empty() || Instant::now() < self.next_dead_letter_attempt {
            return;
        }
        if let Err(err) = self.flush_dead_letters().await {
            tracing::warn!(partition = self.partition(), %err, "could not move dead letters; will try again");
            self.next_dead_letter_attempt =
                Instant::now() + self.shared.config.maintenance_interval;
        }
    }

    async fn ensure_group(&self) -> Result<()> {
        super::ensure_partition_group(
            &self.shared.client,
            &self.keys,
            self.group(),
            self.shared.config.start_from,
        )
        .await
    }

    /// Claim every pending entry of the partition, whoever holds it, and
    /// queue them before anything new. Claiming counts as a delivery, so a
    /// message that keeps killing its consumers reaches `max_attempts`. The
    /// group's last delivered id comes with the last claim, in the same
    /// step: whatever anyone reads after it, this worker finds at its first
    /// read.
    async fn take_over_pending(&mut self) -> Result<()> {
        let (claimed, last_delivered) = self.sweep("-", "+", Sweep::All).await?;
        if !claimed.is_empty() {
            tracing::info!(
                partition = self.partition(),
                count = claimed.len(),
                "claimed pending entries"
            );
            self.metrics.reclaimed.increment(claimed.len() as u64);
        }
        self.ready.extend(claimed);
        self.last_seen = Some(last_delivered);
        self.remove_dead_consumers().await
    }

    /// Claim the entries pending between `from` and `to` (`XPENDING`
    /// bounds), oldest first, and return them with the group's last
    /// delivered id as of the last claim.
    async fn sweep(&mut self, from: &str, to: &str, which: Sweep) -> Result<(Vec<Held>, EntryId)> {
        let mut start = from.to_owned();
        let mut claimed = Vec::new();
        loop {
            let mut cmd = evalsha(&scripts::SWEEP, &[&self.keys.stream, &self.lease_key]);
            cmd.arg(self.group())
                .arg(self.me())
                .arg(&self.lease.value)
                .arg(&start)
                .arg(to)
                .arg(SWEEP_PAGE)
                .arg(which.as_arg());
            let reply: Value = self
                .shared
                .client
                .eval("sweep", &scripts::SWEEP, &cmd)
                .await?;
            let Some(page) = parse_sweep(reply)? else {
                return Err(self.fence_off());
            };
            self.report_lost(page.lost, None);
            claimed.extend(page.entries);
            match page.next {
                Some(next) => start = next,
                None => return Ok((claimed, page.last_delivered)),
            }
        }
    }

    /// The lease passed on: stop, and say so.
    fn fence_off(&mut self) -> Error {
        self.fenced = true;
        Error::Fenced {
            partition: self.partition(),
        }
    }

    /// Delivery counts of the entries pending with this consumer.
    async fn own_pending_counts(&self) -> Result<HashMap<EntryId, u32>> {
        let mut counts = HashMap::new();
        let mut start = "-".to_owned();
        loop {
            let cmd = redis::cmd("XPENDING")
                .arg(&self.keys.stream)
                .arg(self.group())
                .arg(&start)
                .arg("+")
                .arg(1000)
                .arg(self.me())
                .to_owned();
            let rows: Vec<(String, String, u64, u32)> =
                self.shared.client.query("pending counts", &cmd).await?;
            for (id, _, _, deliveries) in &rows {
                counts.insert(parse_id(id)?, *deliveries);
            }
            match rows.last() {
                Some((last, ..)) if rows.len() == 1000 => {
                    start = parse_id(last)?.next().to_string()
                }
                _ => break,
            }
        }
        Ok(counts)
    }

    /// Entries pending with this consumer that it holds nowhere: delivered
    /// by a read whose reply was lost. Queue them, oldest first, so they are
    /// not stranded until the next takeover.
    async fn adopt_orphans(&mut self) -> Result<()> {
        self.settle_acks().await?;
        // What a lost read delivered lies after the last entry seen, maybe
        // behind another consumer's reads: all of it, in order.
        if self.last_seen.is_some() {
            self.catch_up("+").await?;
        }
        let counts = self.own_pending_counts().await?;
        let held = self.held_ids();
        let mut orphans: Vec<(EntryId, u32)> = counts
            .into_iter()
            .filter(|(id, _)| !held.contains(id))
            .collect();
        orphans.sort();
        if !orphans.is_empty() {
            tracing::warn!(
                partition = self.partition(),
                count = orphans.len(),
                "adopting entries a lost read left pending"
            );
        }
        for (id, deliveries) in orphans {
            match self.entry(id).await? {
                Some(raw) => self.enqueue(Held::new(raw, deliveries)),
                None => {
                    self.report_lost(1, Some(&id));
                    self.unacked.push((id, None));
                }
            }
        }
        Ok(())
    }

    /// Entries this worker holds between steps.
    fn held_ids(&self) -> HashSet<EntryId> {
        self.ready
            .iter()
            .chain(self.blocked.values().flat_map(|b| b.queue.iter()))
            .map(|h| h.raw.entry_id)
            .chain(self.unacked.iter().map(|(id, _)| *id))
            .chain(self.undead.iter().map(|d| d.entry_id))
            .collect()
    }

    /// Take over entries pending with other consumers. Reads are checked
    /// as they happen (see [`Self::read_new`]); this catches the rest, such
    /// as a claim by a consumer that lost its lease a moment before, so
    /// that nothing stays stranded with a consumer that will never handle
    /// it, and retention is not held back by it.
    async fn sweep_foreign(&mut self) -> Result<()> {
        let (swept, last_delivered) = self.sweep("-", "+", Sweep::Others).await?;
        // Nothing up to there is anyone else's now: the reads' check may
        // start from it.
        self.last_seen = Some(
            self.last_seen
                .map_or(last_delivered, |s| s.max(last_delivered)),
        );
        let held = self.held_ids();
        let strays: Vec<Held> = swept
            .into_iter()
            .filter(|h| !held.contains(&h.raw.entry_id))
            .collect();
        if !strays.is_empty() {
            tracing::warn!(
                partition = self.partition(),
                count = strays.len(),
                "took over entries pending with other consumers"
            );
            self.metrics.reclaimed.increment(strays.len() as u64);
        }
        for held in strays {
            self.enqueue(held);
        }
        Ok(())
    }

    async fn entry(&self, id: EntryId) -> Result<Option<RawEntry>> {
        let cmd = redis::cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg(id)
            .arg(id)
            .to_owned();
        let reply: Value = self.shared.client.query("read entry", &cmd).await?;
        Ok(RawEntry::list_from_value(reply)?.pop())
    }

    fn report_lost(&self, count: u64, first: Option<&EntryId>) {
        if count == 0 {
            return;
        }
        tracing::error!(
            partition = self.partition(),
            count,
            first = ?first,
            "pending entries were deleted from the stream before being acknowledged; they are lost"
        );
        self.metrics.unacked_trimmed.increment(count);
    }

    /// Queue an entry behind its key if the key is blocked, else to `ready`.
    fn enqueue(&mut self, held: Held) {
        match self.blocked.get_mut(held.raw.key()) {
            Some(blocked) => blocked.queue.push_back(held),
            None => self.ready.push_back(held),
        }
    }

    /// Return a batch that was not handled to the front of `ready`, in order.
    fn put_back(&mut self, batch: Vec<Held>) {
        for held in batch.into_iter().rev() {
            self.ready.push_front(held);
        }
    }

    async fn next_batch(&mut self) -> Result<Vec<Held>> {
        let size = self
            .shared
            .layout
            .tuning()
            .batch_size
            .unwrap_or(self.shared.config.batch_size)
            .max(1);
        if self.reader.is_none() {
            // A new connection, at start or after a failed read: first take
            // in what a lost reply delivered, while everything held is in
            // `ready`, the blocked queues or the acknowledgements.
            let reader = self
                .shared
                .client
                .dedicated_connection(self.shared.config.block)
                .await?;
            self.adopt_orphans().await?;
            self.reader = Some(reader);
        }
        self.promote_due_retries().await?;
        let mut batch = Vec::new();
        while batch.len() < size {
            let Some(held) = self.ready.pop_front() else {
                break;
            };
            // A key may have failed since this entry was queued.
            match self.blocked.get_mut(held.raw.key()) {
                Some(blocked) if !held.retry => blocked.queue.push_back(held),
                _ => batch.push(held),
            }
        }
        // Only read new entries once everything older has been handed out,
        // or a key's new entry could overtake an older one still waiting.
        if batch.len() < size && self.ready.is_empty() {
            let block = if batch.is_empty() {
                let until_due = self
                    .timers
                    .peek()
                    .map(|Reverse((due, _))| due.saturating_duration_since(Instant::now()));
                match until_due {
                    Some(wait) if wait.is_zero() => None,
                    Some(wait) => Some(wait.min(self.shared.config.block)),
                    None => Some(self.shared.config.block),
                }
            } else {
                None
            };
            match self.read_new(size - batch.len(), block).await {
                Ok(entries) => {
                    for raw in entries {
                        let held = Held::new(raw, 1);
                        match self.blocked.get_mut(held.raw.key()) {
                            Some(blocked) => blocked.queue.push_back(held),
                            None => batch.push(held),
                        }
                    }
                }
                Err(err) => {
                    self.put_back(batch);
                    return Err(err);
                }
            }
        }
        Ok(batch)
    }

    /// Move failed messages whose backoff expired to the front of `ready`,
    /// each counted as its next delivery in Redis first. `RETRYCOUNT` sets
    /// the count, so repeating it after an error changes nothing.
    async fn promote_due_retries(&mut self) -> Result<()> {
        // The claim script refuses a lease that passed on; a lease this
        // process already gave up saves the call.
        if !self.lease.is_valid() {
            return Ok(());
        }
        let now = Instant::now();
        while self
            .timers
            .peek()
            .is_some_and(|Reverse((at, _))| *at <= now)
        {
            let Some(Reverse((at, key))) = self.timers.pop() else {
                break;
            };
            let Some((entry_id, deliveries)) = self
                .blocked
                .get(&key)
                .filter(|b| !b.retrying && !b.awaiting_dead_letter)
                .and_then(|b| b.queue.front())
                .map(|head| (head.raw.entry_id, head.deliveries + 1))
            else {
                continue;
            };
            let mut cmd = evalsha(&scripts::RETRY_CLAIM, &[&self.keys.stream, &self.lease_key]);
            cmd.arg(self.group())
                .arg(self.me())
                .arg(&self.lease.value)
                .arg(entry_id)
                .arg(deliveries);
            let status: i64 = match self
                .shared
                .client
                .eval("count retry", &scripts::RETRY_CLAIM, &cmd)
                .await
            {
                Ok(status) => status,
                Err(err) => {
                    // Keep the key's timer, or nothing would ever release
                    // the key: the next step tries again.
                    self.timers.push(Reverse((at, key)));
                    return Err(err);
                }
            };
            match status {
                1 => {}
                FENCED => {
                    self.timers.push(Reverse((at, key)));
                    return Err(self.fence_off());
                }
                -1 => {
                    self.report_lost(1, Some(&entry_id));
                    if let Some(blocked) = self.blocked.get_mut(&key) {
                        blocked.queue.pop_front();
                    }
                    self.unblock(&key);
                    continue;
                }
                _ => {
                    // The entry is pending with no one: its group was
                    // recreated or reset. Nothing would deliver it again, so
                    // it goes to the DLQ, and the key's later messages
                    // follow once it is there.
                    let Some(head) = self.blocked.get_mut(&key).and_then(|b| b.queue.pop_front())
                    else {
                        continue;
                    };
                    self.dead_letter_unpending(&head);
                    continue;
                }
            }
            let Some(blocked) = self.blocked.get_mut(&key) else {
                continue;
            };
            if let Some(mut head) = blocked.queue.pop_front() {
                head.deliveries = deliveries;
                head.retry = true;
                blocked.retrying = true;
                self.metrics.retried.increment(1);
                self.ready.push_front(head);
            }
        }
        Ok(())
    }

    /// Read entries never delivered to the group.
    ///
    /// The read is pipelined with two checks that run right after it on
    /// the same connection: the lease, and the first entry pending after
    /// the last one this worker read. A lease value other than this
    /// worker's means the read must not be handled (values never repeat, so
    /// an equal value after the read means the lease held during it): what
    /// it took stays pending here and the owner sweeps it. A pending entry
    /// before the first one this read returned means someone else read in
    /// between (a consumer that lost its lease, any other client): those
    /// entries are swept first and everything goes to `ready` behind them,
    /// so no key's later entry overtakes them. A transaction would make
    /// this one step, but a node at `maxmemory` refuses every transaction,
    /// and reads must go on there for the node to drain.
    ///
    /// A read is sent once and never retried: a retry after a lost reply
    /// would skip the entries the first attempt delivered. After a failure
    /// the connection is replaced and this consumer's pending list is
    /// checked for what the lost reply carried before anything new is read.
    async fn read_new(&mut self, count: usize, block: Option<Duration>) -> Result<Vec<RawEntry>> {
        let Some((lease, first_pending, entries)) = self.read_once(count, block).await? else {
            return Ok(Vec::new());
        };
        if lease.as_deref() != Some(self.lease.value.as_str()) {
            tracing::warn!(
                partition = self.partition(),
                read = entries.len(),
                "the lease passed to another consumer; leaving what this read took to the owner"
            );
            self.fenced = true;
            return Ok(Vec::new());
        }
        let first_read = entries.first().map(|e| e.entry_id);
        if self.last_seen.is_none() {
            self.last_seen = entries.last().map(|e| e.entry_id);
            return Ok(entries);
        };
        let intruded = match (first_pending, first_read) {
            (Some(pending), Some(read)) => pending < read,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !intruded {
            if let Some(last) = entries.last() {
                self.last_seen = Some(last.entry_id);
            }
            return Ok(entries);
        }
        let until = first_read.map_or_else(|| "+".to_owned(), |id| format!("({id}"));
        let swept = self.catch_up(&until).await?;
        tracing::warn!(
            partition = self.partition(),
            count = swept,
            "another consumer read from the partition; handling what it took first"
        );
        if let Some(last) = entries.last() {
            self.last_seen = Some(last.entry_id);
        }
        for raw in entries {
            self.enqueue(Held::new(raw, 1));
        }
        Ok(Vec::new())
    }

    /// Claim what is pending after the last entry this worker read, up to
    /// `until`, that it does not hold (another consumer's reads, or its own
    /// whose reply was lost), and queue it, oldest first. With `until` at
    /// the end of the stream, the check of later reads then starts from
    /// the group's last delivered id. Returns how many were queued.
    async fn catch_up(&mut self, until: &str) -> Result<usize> {
        let from = self
            .last_seen
            .map_or_else(|| "-".to_owned(), |seen| format!("({seen}"));
        let (swept, last_delivered) = self.sweep(&from, until, Sweep::Adopt).await?;
        if until == "+" {
            self.last_seen = Some(last_delivered);
        }
        let held = self.held_ids();
        let mut queued = 0;
        for entry in swept {
            if !held.contains(&entry.raw.entry_id) {
                self.enqueue(entry);
                queued += 1;
            }
        }
        self.metrics.reclaimed.increment(queued as u64);
        Ok(queued)
    }

    /// One read with its checks: `(lease value after the read, first entry
    /// pending after the last one this worker read, entries)`, or `None`
    /// when the group had vanished (it is created again).
    async fn read_once(
        &mut self,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Option<(Option<String>, Option<EntryId>, Vec<RawEntry>)>> {
        let Some(mut conn) = self.reader.clone() else {
            return Ok(None);
        };
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(self.group())
            .arg(self.me())
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        read.arg("STREAMS").arg(&self.keys.stream).arg(">");
        let after = self
            .last_seen
            .map_or_else(|| "-".to_owned(), |seen| format!("({seen}"));
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .add_command(read)
            .cmd("GET")
            .arg(&self.lease_key)
            .cmd("XPENDING")
            .arg(&self.keys.stream)
            .arg(self.group())
            .arg(after)
            .arg("+")
            .arg(1);
        let timeout = self.shared.client.config().command_timeout + block.unwrap_or_default();
        let replies: Vec<Value> =
            match tokio::time::timeout(timeout, pipe.query_async(&mut conn)).await {
                Ok(Ok(replies)) => replies,
                Ok(Err(err)) => {
                    self.reader = None;
                    return Err(err.into());
                }
                Err(_) => {
                    self.reader = None;
                    return Err(Error::Timeout {
                        operation: "read",
                        after: timeout,
                    });
                }
            };
        let [read, lease, pending]: [Value; 3] = replies.try_into().map_err(|replies| {
            self.reader = None;
            Error::protocol("read", format!("{replies:?}"))
        })?;
        if let Value::ServerError(err) = &read {
            if err.code() == "NOGROUP" {
                tracing::warn!(
                    partition = self.partition(),
                    "consumer group vanished; recreating it"
                );
                self.last_seen = None;
                self.ensure_group().await?;
                return Ok(None);
            }
            self.reader = None;
            return Err(Error::protocol("XREADGROUP", err.to_string()));
        }
        // Entries in a reply that cannot be read are pending here all the
        // same; a new reader looks for them, as after a lost reply.
        let parsed = parse_read(read).and_then(|entries| {
            let lease = match lease {
                Value::Nil => None,
                other => Some(text(other)?),
            };
            Ok((lease, first_pending_id(pending)?, entries))
        });
        parsed.map(Some).inspect_err(|_| self.reader = None)
    }

    async fn process(&mut self, batch: Vec<Held>) -> Result<()> {
        let max_attempts = self.shared.layout.tuning().max_attempts;
        let dedupe = self.shared.config.dedupe_ttl.is_some();
        let mut already_done = if dedupe {
            match self.processed_markers(&batch).await {
                Ok(done) => done,
                Err(err) => {
                    self.put_back(batch);
                    return Err(err);
                }
            }
        } else {
            HashSet::new()
        };
        let mut messages: Vec<Message<T>> = Vec::with_capacity(batch.len());
        let mut delivered: Vec<Held> = Vec::with_capacity(batch.len());
        for held in batch {
            let entry_id = held.raw.entry_id;
            // Its key's earlier message was just dead-lettered below: it
            // waits until that is written.
            if !held.retry && self.blocked.contains_key(held.raw.key()) {
                self.enqueue(held);
                continue;
            }
            let for_other_group = held
                .raw
                .target_group()
                .is_some_and(|g| !g.is_empty() && g != self.group());
            if for_other_group || already_done.contains(held.raw.message_id()) {
                // A redrive meant for another group, or a repeat of a
                // message this group already handled.
                if !for_other_group {
                    self.metrics.duplicates.increment(1);
                }
                self.release_if_head(&held);
                self.unacked.push((entry_id, None));
                continue;
            }
            if held.deliveries > max_attempts {
                self.dead_letter(
                    &held,
                    "max_deliveries",
                    "delivered too often without an outcome (crashed consumers?)".into(),
                );
                continue;
            }
            match held.raw.decode::<T>(self.partition(), held.deliveries) {
                Ok(mut message) => {
                    message.fencing_token = self.lease.token;
                    if dedupe {
                        // A repeat later in this same batch is skipped too.
                        already_done.insert(message.id.clone());
                    }
                    messages.push(message);
                    delivered.push(held);
                }
                Err(err) => self.dead_letter(&held, err.dlq_reason(), err.to_string()),
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let outcomes = self.handle(messages).await;
        let mut outcomes = outcomes.0.into_iter();
        let mut failed_keys: HashSet<String> = HashSet::new();
        for held in delivered {
            let outcome = outcomes.next().unwrap_or_else(|| {
                Outcome::Retry("handler returned no outcome for this message".into())
            });
            if !failed_keys.is_empty() && failed_keys.contains(held.raw.key()) {
                self.blocked
                    .entry(held.raw.key().to_owned())
                    .or_default()
                    .queue
                    .push_back(held);
                continue;
            }
            match outcome {
                Outcome::Ack => {
                    self.release_if_head(&held);
                    let mark = dedupe.then(|| held.raw.message_id().to_owned());
                    self.unacked.push((held.raw.entry_id, mark));
                }
                // A dead-lettered message holds its key like a failed one:
                // later messages of the key in this batch are delivered
                // again once it is in the DLQ, whatever their outcome here
                // (`per_message` did not even run them).
                Outcome::Reject(reason) => {
                    failed_keys.insert(held.raw.key().to_owned());
                    self.dead_letter(&held, "rejected", reason);
                }
                Outcome::Retry(error) if held.deliveries >= max_attempts => {
                    failed_keys.insert(held.raw.key().to_owned());
                    self.dead_letter(&held, "max_attempts", error);
                }
                Outcome::Retry(error) => {
                    let key = held.raw.key().to_owned();
                    tracing::debug!(partition = self.partition(), %key, attempt = held.deliveries, %error, "will retry");
                    let wait = self
                        .shared
                        .layout
                        .tuning()
                        .retry
                        .delay_after(held.deliveries);
                    let blocked = self.blocked.entry(key.clone()).or_default();
                    blocked.queue.push_front(Held {
                        retry: false,
                        ..held
                    });
                    blocked.retrying = false;
                    blocked.awaiting_dead_letter = false;
                    self.timers
                        .push(Reverse((Instant::now() + wait, key.clone())));
                    failed_keys.insert(key);
                }
            }
        }
        // Later messages of a key that just failed may still wait in
        // `ready` (a backlog bigger than a batch): they go behind it too.
        if !failed_keys.is_empty() && !self.ready.is_empty() {
            let (behind, rest): (VecDeque<Held>, VecDeque<Held>) = std::mem::take(&mut self.ready)
                .into_iter()
                .partition(|h| failed_keys.contains(h.raw.key()));
            self.ready = rest;
            for held in behind {
                self.blocked
                    .entry(held.raw.key().to_owned())
                    .or_default()
                    .queue
                    .push_back(held);
            }
        }
        Ok(())
    }

    /// Run the handler on one batch, within the consumer's concurrency limit.
    async fn handle(&self, messages: Vec<Message<T>>) -> Outcomes {
        let count = messages.len();
        let Ok(_permit) = self.shared.permits.acquire().await else {
            return Outcomes::retry_all(count, "consumer is closing");
        };
        self.metrics.delivered.increment(count as u64);
        let started = Instant::now();
        let handling = self.shared.handler.handle(Batch {
            partition: self.partition(),
            fence: Fence {
                topic: self.shared.layout.config.name.clone(),
                group: self.group().to_owned(),
                partition: self.partition(),
                token: self.lease.token,
            },
            messages,
        });
        // A panicking handler fails its batch; it does not take the worker
        // (and the partition's lease) down with it.
        let guarded = AssertUnwindSafe(handling).catch_unwind();
        let finished = match self.shared.config.handler_timeout {
            Some(limit) => tokio::time::timeout(limit, guarded)
                .await
                .map_err(|_| limit),
            None => Ok(guarded.await),
        };
        let outcomes = match finished {
            Ok(Ok(outcomes)) => outcomes,
            Err(limit) => {
                tracing::error!(
                    partition = self.partition(),
                    ?limit,
                    "handler did not finish its batch in time; retrying it"
                );
                Outcomes::retry_all(count, format!("handler took longer than {limit:?}"))
            }
            Ok(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".into());
                tracing::error!(partition = self.partition(), panic = %what, "handler panicked; retrying its batch");
                Outcomes::retry_all(count, format!("handler panicked: {what}"))
            }
        };
        self.metrics
            .handler_seconds
            .record(started.elapsed().as_secs_f64());
        if !self.lease.is_valid() {
            tracing::warn!(
                partition = self.partition(),
                took = ?started.elapsed(),
                "a batch outlived the lease; another consumer may have handled the partition meanwhile \
                 (raise lease_ttl above the longest batch)"
            );
        }
        outcomes
    }

    /// `held` is done (acknowledged, skipped or dead-lettered). If it was
    /// its blocked key's failed message, let the key's queue follow.
    fn release_if_head(&mut self, held: &Held) {
        if held.retry {
            self.unblock(held.raw.key());
        }
    }

    fn unblock(&mut self, key: &str) {
        if let Some(blocked) = self.blocked.remove(key) {
            self.ready.extend(blocked.queue);
        }
    }

    /// Queue `held` for the DLQ and hold its key until it is there.
    fn dead_letter(&mut self, held: &Held, reason: &'static str, error: String) {
        tracing::warn!(
            partition = self.partition(),
            entry = %held.raw.entry_id,
            key = held.raw.key(),
            reason,
            %error,
            "moving message to the DLQ"
        );
        self.undead.push(DeadLetter {
            entry_id: held.raw.entry_id,
            key: held.raw.key().to_owned(),
            unpending: false,
            reason,
            error,
            attempts: held.raw.earlier_attempts().saturating_add(held.deliveries),
        });
        let blocked = self.blocked.entry(held.raw.key().to_owned()).or_default();
        blocked.retrying = false;
        blocked.awaiting_dead_letter = true;
    }

    /// [`Self::dead_letter`] for a failed message whose pending record its
    /// group lost.
    fn dead_letter_unpending(&mut self, held: &Held) {
        self.dead_letter(
            held,
            "group_reset",
            "its consumer group lost the pending record (recreated or reset) while it waited for a retry".into(),
        );
        if let Some(dead) = self.undead.last_mut() {
            dead.unpending = true;
        }
    }

    /// Message ids of `batch` that this group already handled: marked in
    /// Redis, or marked by acknowledgements not yet confirmed.
    async fn processed_markers(&self, batch: &[Held]) -> Result<HashSet<String>> {
        let ids: Vec<&str> = batch.iter().map(|h| h.raw.message_id()).collect();
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.keys.dedupe(self.group(), id))
            .collect();
        let cmd = redis::cmd("MGET").arg(&keys).to_owned();
        let values: Vec<Option<String>> = self.shared.client.query("check processed", &cmd).await?;
        let unconfirmed: HashSet<&str> = self
            .unacked
            .iter()
            .filter_map(|(_, mark)| mark.as_deref())
            .chain(self.marks_in_flight.iter().map(String::as_str))
            .collect();
        Ok(ids
            .into_iter()
            .zip(values)
            .filter(|(id, v)| v.is_some() || unconfirmed.contains(id))
            .map(|(id, _)| id.to_owned())
            .collect())
    }

    /// Move the queued dead letters, and let each one's key go on once it
    /// is in the DLQ. Each move is idempotent, so one whose reply was lost is
    /// simply sent again.
    async fn flush_dead_letters(&mut self) -> Result<()> {
        while let Some(dead) = self.undead.first() {
            let mut cmd = evalsha(
                &scripts::DEAD_LETTER,
                &[&self.keys.stream, &self.keys.dlq, &self.lease_key],
            );
            cmd.arg(self.group())
                .arg(dead.entry_id)
                .arg(dead.reason)
                .arg(&dead.error)
                .arg(dead.attempts)
                .arg(self.me())
                .arg(if self.shared.client.capabilities().xackdel {
                    "1"
                } else {
                    "0"
                })
                .arg(&self.lease.value)
                .arg(if dead.unpending { "1" } else { "0" });
            let status: i64 = self
                .shared
                .client
                .eval("dead-letter", &scripts::DEAD_LETTER, &cmd)
                .await?;
            match status {
                FENCED => return Err(self.fence_off()),
                // 0: no longer pending here; after a lost reply, the first
                // attempt moved it.
                1 | 0 => self.metrics.dead_lettered(dead.reason),
                _ => self.report_lost(1, Some(&dead.entry_id)),
            }
            let dead = self.undead.remove(0);
            if self
                .blocked
                .get(&dead.key)
                .is_some_and(|b| b.awaiting_dead_letter)
            {
                self.unblock(&dead.key);
            }
        }
        Ok(())
    }

    /// Send the queued acknowledgements and wait for them.
    async fn flush_acks(&mut self) -> Result<()> {
        self.settle_acks().await?;
        self.start_acks();
        self.settle_acks().await
    }

    /// Send the queued acknowledgements without waiting: the next read
    /// overlaps with them. [`Self::settle_acks`] collects the result.
    fn start_acks(&mut self) {
        if self.unacked.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.unacked);
        self.marks_in_flight
            .extend(batch.iter().filter_map(|(_, mark)| mark.clone()));
        let client = self.shared.client.clone();
        let keys = self.keys.clone();
        let group = self.group().to_owned();
        let lease = self.lease.clone();
        let lease_key = self.lease_key.clone();
        let ttl = self.shared.config.dedupe_ttl;
        self.acks_in_flight = Some(tokio::spawn(async move {
            // Bounded calls: a script takes a few thousand arguments at most.
            for part in batch.chunks(ACK_CHUNK) {
                let ids: Vec<EntryId> = part.iter().map(|(id, _)| *id).collect();
                let marks: Vec<String> = part
                    .iter()
                    .filter_map(|(_, mark)| mark.as_deref())
                    .map(|id| keys.dedupe(&group, id))
                    .collect();
                let acks = Acks {
                    partition: keys.index,
                    stream: &keys.stream,
                    lease_key: &lease_key,
                    lease_value: &lease.value,
                    group: &group,
                };
                if let Err(err) = acks.send(&client, &ids, marks, ttl).await {
                    return Err((batch, err));
                }
            }
            Ok(batch.len())
        }));
    }

    /// Wait for the acknowledgements in flight; on failure queue them again.
    async fn settle_acks(&mut self) -> Result<()> {
        let Some(task) = self.acks_in_flight.take() else {
            return Ok(());
        };
        let result = task.await;
        self.marks_in_flight.clear();
        match result {
            Ok(Ok(count)) => {
                self.metrics.acked.increment(count as u64);
                Ok(())
            }
            Ok(Err((batch, Error::Fenced { .. }))) => {
                // Not ours to acknowledge any more: the owner claims them.
                tracing::warn!(
                    partition = self.partition(),
                    count = batch.len(),
                    "acknowledgements refused: the lease passed to another consumer"
                );
                Err(self.fence_off())
            }
            Ok(Err((batch, err))) => {
                self.unacked.splice(0..0, batch);
                Err(err)
            }
            Err(join) => Err(Error::protocol("ack", join.to_string())),
        }
    }

    async fn maintain_if_due(&mut self) -> Result<()> {
        let now = Instant::now();
        if now < self.next_maintenance {
            return Ok(());
        }
        self.next_maintenance = now + self.shared.config.maintenance_interval;
        // Settled first, so this consumer's pending count below compares
        // with what it holds.
        self.settle_acks().await?;
        let retain = self.shared.layout.config.retain_acked.as_millis() as u64;
        let cutoff = EntryId {
            ms: now_ms().saturating_sub(retain),
            seq: 0,
        };
        let mut cmd = evalsha(&scripts::MAINTAIN, &[&self.keys.stream, &self.keys.lost]);
        cmd.arg(cutoff)
            .arg(self.group())
            .arg(if self.shared.client.capabilities().acked_trim {
                "1"
            } else {
                "0"
            })
            .arg(self.me());
        let (trimmed, unread, pending, oldest, server_now, missing, own_pending): (
            u64,
            u64,
            u64,
            String,
            u64,
            u64,
            u64,
        ) = self
            .shared
            .client
            .eval("maintain", &scripts::MAINTAIN, &cmd)
            .await?;
        self.metrics.trimmed.increment(trimmed);
        if missing > 0 {
            tracing::error!(
                partition = self.partition(),
                missing,
                "entries were removed from the stream before this group read them; they are lost"
            );
            self.metrics.unacked_trimmed.increment(missing);
        }
        self.metrics.lag_entries.set((unread + pending) as f64);
        self.metrics.pending.set(pending as f64);
        let age_ms = parse_id(&oldest)
            .map(|id| server_now.saturating_sub(id.ms))
            .unwrap_or(0);
        self.metrics.lag_seconds.set(age_ms as f64 / 1000.0);
        if own_pending as usize > self.held_count() {
            self.adopt_orphans().await?;
        }
        if pending > own_pending {
            self.sweep_foreign().await?;
        }
        if now >= self.next_cleanup {
            self.next_cleanup = now + Duration::from_secs(30);
            self.remove_dead_consumers().await?;
        }
        Ok(())
    }

    /// Entries this worker holds between steps, not counting
    /// acknowledgements in flight.
    fn held_count(&self) -> usize {
        self.ready.len()
            + self.blocked.values().map(|b| b.queue.len()).sum::<usize>()
            + self.unacked.len()
            + self.undead.len()
    }

    /// Remove consumers that are no longer members and hold nothing.
    async fn remove_dead_consumers(&self) -> Result<()> {
        let members = self.shared.members.borrow().clone();
        if members.is_empty() {
            return Ok(());
        }
        let cmd = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.keys.stream)
            .arg(self.group())
            .to_owned();
        let consumers: Vec<HashMap<String, Value>> =
            self.shared.client.query("list consumers", &cmd).await?;
        for consumer in consumers {
            let name = consumer
                .get("name")
                .cloned()
                .map(text)
                .transpose()?
                .unwrap_or_default();
            let idle = matches!(consumer.get("pending"), Some(Value::Int(0)));
            if idle && name != self.me() && !members.contains(&name) {
                // Checked again in the script, in the same step as the
                // removal: a read by that consumer since XINFO would
                // otherwise vanish with it.
                let mut cmd = evalsha(&scripts::REMOVE_IDLE_CONSUMER, &[&self.keys.stream]);
                cmd.arg(self.group()).arg(&name);
                let removed: i64 = self
                    .shared
                    .client
                    .eval("remove consumer", &scripts::REMOVE_IDLE_CONSUMER, &cmd)
                    .await?;
                if removed == 0 {
                    continue;
                }
                tracing::info!(partition = self.partition(), consumer = %name, "removed dead consumer");
            }
        }
        Ok(())
    }
}

/// Most acknowledgements per call.
const ACK_CHUNK: usize = 1000;

/// Most pending entries one sweep call looks at.
const SWEEP_PAGE: usize = 1000;

/// Which pending entries a sweep claims.
#[derive(Debug, Clone, Copy)]
enum Sweep {
    /// Every one, each counted as delivered again: a takeover.
    All,
    /// Other consumers' (counted as delivered again) and this one's
    /// (counts unchanged): catching up after a read.
    Adopt,
    /// Only other consumers'.
    Others,
}

impl Sweep {
    fn as_arg(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Adopt => "adopt",
            Self::Others => "others",
        }
    }
}

/// One page of [`scripts::SWEEP`].
struct SweepPage {
    last_delivered: EntryId,
    next: Option<String>,
    lost: u64,
    entries: Vec<Held>,
}

/// Scripts answer `-2` (or `{-2}`) when the caller's lease is gone.
const FENCED: i64 = -2;

/// `None` when the caller's lease is gone.
fn parse_sweep(reply: Value) -> Result<Option<SweepPage>> {
    let Value::Array(parts) = reply else {
        return Err(Error::protocol("sweep", format!("{reply:?}")));
    };
    let mut parts = parts.into_iter();
    match parts.next() {
        Some(Value::Int(1)) => {}
        Some(Value::Int(FENCED)) => return Ok(None),
        other => return Err(Error::protocol("sweep", format!("status {other:?}"))),
    }
    let last_delivered = parse_id(&text(parts.next().unwrap_or(Value::Nil))?)?;
    let next = text(parts.next().unwrap_or(Value::Nil))?;
    let lost = match parts.next() {
        Some(Value::Int(n)) => u64::try_from(n).unwrap_or(0),
        other => return Err(Error::protocol("sweep", format!("lost {other:?}"))),
    };
    let entries = parts
        .map(|entry| {
            let (raw, deliveries) = RawEntry::from_value(entry)?;
            Ok(Held::new(raw, deliveries.unwrap_or(1)))
        })
        .collect::<Result<_>>()?;
    Ok(Some(SweepPage {
        last_delivered,
        next: (!next.is_empty()).then_some(next),
        lost,
        entries,
    }))
}

/// Where one worker's acknowledgements go, and the lease they need.
struct Acks<'a> {
    partition: u16,
    stream: &'a str,
    lease_key: &'a str,
    lease_value: &'a str,
    group: &'a str,
}

impl Acks<'_> {
    /// Acknowledge `ids` and set their dedupe markers, if the lease still
    /// holds; [`Error::Fenced`] when it does not.
    async fn send(
        &self,
        client: &crate::StreamsClient,
        ids: &[EntryId],
        marks: Vec<String>,
        dedupe_ttl: Option<Duration>,
    ) -> Result<()> {
        let mut keys = Vec::with_capacity(marks.len() + 2);
        keys.push(self.stream.to_owned());
        keys.push(self.lease_key.to_owned());
        // `PX 0` is an error, raised after the script's XACK took effect; a
        // TTL under a millisecond is one millisecond.
        let ttl_ms = match dedupe_ttl {
            Some(ttl) => {
                keys.extend(marks);
                ttl.as_millis().max(1) as u64
            }
            None => 0,
        };
        let mut cmd = evalsha(&scripts::ACK, &keys);
        cmd.arg(self.group)
            .arg(self.lease_value)
            .arg(ttl_ms)
            .arg(ids);
        let acked: i64 = client.eval("ack", &scripts::ACK, &cmd).await?;
        if acked == FENCED {
            return Err(Error::Fenced {
                partition: self.partition,
            });
        }
        Ok(())
    }
}

/// The id in an extended `XPENDING ... 1` reply, if any.
fn first_pending_id(reply: Value) -> Result<Option<EntryId>> {
    let Value::Array(rows) = reply else {
        return Err(Error::protocol("XPENDING", format!("{reply:?}")));
    };
    let Some(Value::Array(row)) = rows.into_iter().next() else {
        return Ok(None);
    };
    let id = row.into_iter().next().unwrap_or(Value::Nil);
    parse_id(&text(id)?).map(Some)
}

fn parse_id(id: &str) -> Result<EntryId> {
    id.parse()
        .map_err(|e: crate::DecodeError| Error::protocol("entry id", e.to_string()))
}

/// `XREADGROUP` reply: nil, or `[[stream, [entry...]]]`.
fn parse_read(reply: Value) -> Result<Vec<RawEntry>> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => return Err(Error::protocol("XREADGROUP", format!("{other:?}"))),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut parts) = stream else {
            return Err(Error::protocol("XREADGROUP", "stream is not an array"));
        };
        if let Some(entries) = parts.pop() {
            out.extend(RawEntry::list_from_value(entries)?);
        }
    }
    Ok(out)
}
