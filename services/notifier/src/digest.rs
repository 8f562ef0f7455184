//! The digest scheduler: at each person's hour, gather the papers waiting
//! for a daily channel into one digest and ask its sender to send it.
//!
//! Any number of notifiers may run it: a digest is unique per channel and
//! local day, so only one of them opens it, and the open and its
//! `delivery.*` message commit together through the outbox.

use std::time::Duration;

use delivery::{channel, ledger};
use events::{Deliver, DeliveryRequested, Topics};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::router::topic_for;

pub async fn run(pool: PgPool, topics: Topics, interval: Duration, shutdown: CancellationToken) {
    loop {
        match open_due(&pool, &topics).await {
            Ok(0) => {}
            Ok(opened) => tracing::info!(opened, "digests opened"),
            Err(err) => tracing::warn!(%err, "opening digests failed; will retry"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Open every due digest; returns how many were opened.
pub async fn open_due(pool: &PgPool, topics: &Topics) -> crate::Result<usize> {
    let mut opened = 0;
    for due in ledger::due_digests(pool).await? {
        let Some(channel) = channel::get(pool, due.channel_id).await? else {
            continue;
        };
        let Some(topic) = topic_for(topics, channel.kind) else {
            continue;
        };
        let mut tx = pool.begin().await?;
        let Some(digest_id) = ledger::open_digest(&mut tx, due.channel_id, due.local_date).await?
        else {
            tx.commit().await?;
            continue;
        };
        let request = DeliveryRequested {
            user_id: due.user_id,
            channel_id: due.channel_id,
            what: Deliver::Digest { digest_id },
        };
        outbox::enqueue(
            &mut tx,
            topic,
            &due.user_id.to_string(),
            &request.message_id(),
            &request,
        )
        .await?;
        tx.commit().await?;
        metrics::counter!("digests_opened_total", "channel" => channel.kind.as_str()).increment(1);
        opened += 1;
    }
    Ok(opened)
}
