//! The matcher: every summarized paper against every active subscription.
//!
//! It holds all active subscriptions in a [`subscriptions::index::Index`],
//! loaded once at start and kept current from the subscriptions' change
//! feed (woken by Postgres notifications, polled as a fallback). For each
//! `paper.summarized` it emits one `notification.requested` per person
//! whose subscriptions match, keyed by the person, with a message id per
//! person and paper, so a redelivered paper produces no second
//! notification.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use events::{NotificationRequested, PaperSummarized};
use sqlx::{PgPool, postgres::PgListener};
use streams::{Failure, Message, Outgoing, Producer, Topic};
use subscriptions::{
    index::{Index, Paper, Scratch},
    store::{self, Change, Cursor},
};
use tokio_util::sync::CancellationToken;

use crate::Result;

/// The index, shared by the change follower (writer) and the handlers.
#[derive(Debug, Clone, Default)]
pub struct SharedIndex(Arc<RwLock<Index>>);

impl SharedIndex {
    /// Load every active subscription; returns where to follow changes
    /// from.
    pub async fn load(pool: &PgPool) -> Result<(Self, Cursor)> {
        let started = Instant::now();
        let (active, cursor) = store::load_active(pool).await?;
        let index = Index::build(active);
        tracing::info!(
            subscriptions = index.len(),
            predicates = index.predicates(),
            took_ms = started.elapsed().as_millis() as u64,
            "subscription index loaded"
        );
        let shared = Self(Arc::new(RwLock::new(index)));
        shared.report();
        Ok((shared, cursor))
    }

    fn apply(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        // A poisoned lock means a panic mid-update elsewhere; the index is
        // still usable (each update is one call), so carry on with it.
        let mut index = self.0.write().unwrap_or_else(|e| e.into_inner());
        for change in changes {
            match change {
                Change::Upsert(subscription) => index.upsert(subscription),
                Change::Remove(id) => index.remove(id),
            }
        }
        drop(index);
        self.report();
    }

    fn report(&self) {
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        metrics::gauge!("matcher_subscriptions").set(index.len() as f64);
        metrics::gauge!("matcher_predicates").set(index.predicates() as f64);
    }

    /// (user id, subscription ids) for every person `paper` matches.
    pub fn matches(&self, paper: &Paper<'_>) -> BTreeMap<i64, Vec<i64>> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
        }
        let index = self.0.read().unwrap_or_else(|e| e.into_inner());
        let hits = SCRATCH.with(|scratch| index.matches(paper, &mut scratch.borrow_mut()));
        drop(index);
        let mut by_user: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for hit in hits {
            by_user
                .entry(hit.user_id)
                .or_default()
                .push(hit.subscription_id);
        }
        for ids in by_user.values_mut() {
            ids.sort_unstable();
        }
        by_user
    }
}

/// Apply subscription changes until `shutdown`.
pub async fn follow_changes(
    pool: PgPool,
    index: SharedIndex,
    mut cursor: Cursor,
    poll: Duration,
    shutdown: CancellationToken,
) {
    let mut listener = match PgListener::connect_with(&pool).await {
        Ok(mut listener) => match listener.listen("subscription_changes").await {
            Ok(()) => Some(listener),
            Err(err) => {
                tracing::warn!(%err, "cannot listen for subscription changes; polling only");
                None
            }
        },
        Err(err) => {
            tracing::warn!(%err, "cannot listen for subscription changes; polling only");
            None
        }
    };
    loop {
        match store::changes_since(&pool, cursor).await {
            Ok((changes, next)) => {
                let count = changes.len();
                index.apply(changes);
                if count > 0 {
                    metrics::counter!("matcher_subscription_changes_total").increment(count as u64);
                    tracing::debug!(count, "subscription changes applied");
                }
                cursor = next;
            }
            Err(err) => tracing::warn!(%err, "reading subscription changes failed; will retry"),
        }
        let woken = async {
            match listener.as_mut() {
                Some(listener) => {
                    let _ = tokio::time::timeout(poll, listener.recv()).await;
                }
                None => tokio::time::sleep(poll).await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = woken => {}
        }
    }
}

/// Handles `paper.summarized`.
#[derive(Debug, Clone)]
pub struct Match {
    pub pool: PgPool,
    pub index: SharedIndex,
    pub producer: Producer,
    pub notifications: Topic<NotificationRequested>,
    /// Ends a wait for room downstream when the service stops (the
    /// message is then delivered again, to this or another instance).
    pub shutdown: CancellationToken,
}

impl Match {
    pub async fn handle(&self, message: Message<PaperSummarized>) -> Result<(), Failure> {
        let event = message.payload;
        let version = i32::try_from(event.version)
            .map_err(|_| Failure::Reject(format!("bad version {}", event.version)))?;
        let Some(paper) = catalog::paper(&self.pool, &event.arxiv_id, version)
            .await
            .map_err(|e| Failure::Retry(format!("read paper: {e}")))?
        else {
            return Err(Failure::Reject(format!(
                "{}v{} is not in the catalog",
                event.arxiv_id, event.version
            )));
        };
        let authors: Vec<String> = paper.authors.iter().map(|a| a.name.clone()).collect();
        let started = Instant::now();
        let by_user = self.index.matches(&Paper {
            title: &paper.title,
            abstract_text: &paper.abstract_text,
            categories: &paper.categories,
            authors: &authors,
        });
        metrics::histogram!("matcher_match_seconds").record(started.elapsed().as_secs_f64());
        if by_user.is_empty() {
            return Ok(());
        }
        let notifications: Vec<(String, String, NotificationRequested)> = by_user
            .into_iter()
            .map(|(user_id, subscription_ids)| {
                let notification = NotificationRequested {
                    user_id,
                    arxiv_id: paper.arxiv_id.clone(),
                    version: event.version,
                    subscription_ids,
                };
                (user_id.to_string(), notification.message_id(), notification)
            })
            .collect();
        // A full downstream partition is backpressure, not a failure of
        // this message: wait for room as long as it takes (which slows
        // this consumer, and so the pipeline, down) instead of spending
        // the message's attempts and dead-lettering it. Per key, the
        // refused notifications are sent again in their order.
        let mut pending: Vec<&(String, String, NotificationRequested)> =
            notifications.iter().collect();
        while !pending.is_empty() {
            let results = self
                .producer
                .send_batch(
                    &self.notifications,
                    pending
                        .iter()
                        .map(|(key, id, n)| Outgoing::new(key, n).with_id(id)),
                )
                .await
                .map_err(|e| Failure::Retry(format!("send notifications: {e}")))?;
            let mut wait = None;
            let mut refused = Vec::new();
            for (notification, result) in pending.iter().zip(results) {
                match result {
                    Ok(_) => metrics::counter!("matcher_notifications_total").increment(1),
                    Err(streams::Error::Backpressure(b)) => {
                        wait = Some(wait.unwrap_or(b.retry_after).max(b.retry_after));
                        refused.push(*notification);
                    }
                    Err(err) => {
                        // The whole paper is handled again; notifications
                        // already written are recognised by their ids.
                        return Err(Failure::Retry(format!("send notifications: {err}")));
                    }
                }
            }
            pending = refused;
            if let Some(wait) = wait {
                metrics::counter!("matcher_backpressure_waits_total").increment(1);
                tokio::select! {
                    () = self.shutdown.cancelled() => {
                        return Err(Failure::Retry("stopping while downstream is full".into()));
                    }
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        Ok(())
    }
}
