//! Replaying dead letters back into their partition.
//!
//! A replay appends the original message (same message id, same key) to the
//! partition it came from, marked for the group that failed it (other
//! groups acknowledge it without handling it), with the attempts it already
//! spent carried in `att`. Entries are replayed oldest first, so the keys
//! among them keep their order. The append, the removal from the DLQ and an
//! audit record happen in one script; replays respect the partition's
//! capacity and stop, reporting it, when the partition is full.

use crate::{
    Error, Result,
    client::{StreamsClient, evalsha},
    envelope::EntryId,
    scripts,
    topic::TopicLayout,
};

/// Which dead letters of a partition to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    One(EntryId),
    /// Inclusive range of DLQ entry ids.
    Range {
        from: EntryId,
        to: EntryId,
    },
    All,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    pub replayed: u64,
    /// Replay stopped because the partition reached its capacity; the rest
    /// is still in the DLQ.
    pub stopped_by_backpressure: bool,
}

/// Entries moved per script call, bounding how long one call blocks a node.
const CHUNK: u64 = 200;

/// Replay `selection` of partition `partition`'s DLQ. `actor` names who
/// asked, for the audit stream.
pub async fn redrive(
    client: &StreamsClient,
    layout: &TopicLayout,
    partition: u16,
    selection: Selection,
    actor: &str,
) -> Result<RedriveReport> {
    let keys = layout.partition(partition)?;
    let (mut from, to) = match selection {
        Selection::One(id) => (id, id),
        Selection::Range { from, to } => (from, to),
        Selection::All => (EntryId::MIN, EntryId::MAX),
    };
    if from > to {
        return Err(Error::Config(format!("empty range {from}..={to}")));
    }
    let mut report = RedriveReport::default();
    loop {
        let mut cmd = evalsha(
            &scripts::REDRIVE,
            &[&keys.dlq, &keys.stream, &keys.audit, &keys.lost],
        );
        cmd.arg(layout.tuning().capacity)
            .arg(actor)
            .arg(from)
            .arg(to)
            .arg(CHUNK);
        let (replayed, last, full): (u64, String, u8) =
            client.eval("redrive", &scripts::REDRIVE, &cmd).await?;
        report.replayed += replayed;
        tracing::info!(topic = %layout.config.name, partition, replayed, actor, "redrove dead letters");
        if full == 1 {
            report.stopped_by_backpressure = true;
            return Ok(report);
        }
        if replayed < CHUNK || last.is_empty() {
            return Ok(report);
        }
        let last: EntryId = last
            .parse()
            .map_err(|e: crate::DecodeError| Error::protocol("redrive", e.to_string()))?;
        if last >= to {
            return Ok(report);
        }
        from = last.next();
    }
}

/// Replay every dead letter of every partition of the topic.
pub async fn redrive_all(
    client: &StreamsClient,
    layout: &TopicLayout,
    actor: &str,
) -> Result<Vec<(u16, RedriveReport)>> {
    let mut reports = Vec::with_capacity(layout.partitions.len());
    for p in &layout.partitions {
        reports.push((
            p.index,
            redrive(client, layout, p.index, Selection::All, actor).await?,
        ));
    }
    Ok(reports)
}
