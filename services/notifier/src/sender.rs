//! The senders: one consumer per channel kind, each behind its own
//! circuit breaker.
//!
//! A delivery is marked `sending` before the send and `sent` right after
//! (see [`delivery::ledger`]). While a channel's breaker is open (the mail
//! server is down), deliveries wait in their handler instead of using up
//! attempts, so an outage delays mail and dead-letters none. A permanent
//! refusal (no such mailbox, a webhook answering 4xx) fails the delivery,
//! turns the channel off with the reason shown to its owner, and sends the
//! message to the DLQ with that reason.

use std::time::Instant;

use accounts::signed::Signer;
use catalog::reading::Card;
use delivery::{
    channel::{self, Channel, Kind},
    ledger::{self, Begin, DeliveryKey, DigestBegin},
    render::Notice,
    send::{HttpSender, Mailer, SendError},
};
use events::{Deliver, DeliveryRequested};
use resilience::Breaker;
use sqlx::PgPool;
use streams::{Failure, Message};
use tokio_util::sync::CancellationToken;

/// What every sender shares.
#[derive(Debug, Clone)]
pub struct Senders {
    pub pool: PgPool,
    pub signer: Signer,
    /// The web UI's base URL, without a trailing slash.
    pub public_url: String,
    /// The domain in Message-IDs.
    pub domain: String,
    pub mailer: Mailer,
    pub http: HttpSender,
}

/// A consumer's handler for one channel kind.
#[derive(Debug, Clone)]
pub struct Send {
    pub kind: Kind,
    pub senders: Senders,
    pub breaker: Breaker,
    pub shutdown: CancellationToken,
}

/// What one delivery message is about, loaded.
struct Work {
    channel: Channel,
    cards: Vec<Card>,
    subscriptions: Vec<String>,
    date: Option<time::Date>,
    /// Stable across attempts: the receiver's key to drop repeats.
    identity: String,
    resumed: bool,
    target: Target,
}

enum Target {
    Paper(DeliveryKey),
    Digest(i64),
}

impl Send {
    pub async fn handle(&self, message: Message<DeliveryRequested>) -> Result<(), Failure> {
        let request = message.payload;
        let retry =
            |what: &str, err: &dyn std::fmt::Display| Failure::Retry(format!("{what}: {err}"));
        let Some(work) = self
            .prepare(&request)
            .await
            .map_err(|e| retry("prepare", &e))?
        else {
            return Ok(());
        };
        let kind = self.kind.as_str();
        if work.resumed {
            metrics::counter!("deliveries_resumed_total", "channel" => kind).increment(1);
        }
        let started = Instant::now();
        let outcome = self
            .breaker
            .call_waiting(
                || self.send(&work),
                |err: &SendError| !err.is_permanent(),
                &self.shutdown,
            )
            .await;
        metrics::histogram!("delivery_seconds", "channel" => kind)
            .record(started.elapsed().as_secs_f64());
        let mut conn = self
            .senders
            .pool
            .acquire()
            .await
            .map_err(|e| retry("record", &e))?;
        let record = async {
            match (&outcome, &work.target) {
                (Some(Ok(())), Target::Paper(key)) => ledger::mark_sent(&mut conn, key).await,
                (Some(Ok(())), Target::Digest(id)) => {
                    ledger::finish_digest(&mut conn, *id, None).await
                }
                (Some(Err(SendError::Permanent(reason))), target) => {
                    match target {
                        Target::Paper(key) => ledger::mark_failed(&mut conn, key, reason).await?,
                        Target::Digest(id) => {
                            ledger::finish_digest(&mut conn, *id, Some(reason)).await?
                        }
                    }
                    let reason = format!("refused by the receiver: {reason}");
                    channel::set_enabled(
                        &mut conn,
                        work.channel.user_id,
                        work.channel.id,
                        false,
                        Some(&reason),
                    )
                    .await
                    .map(|_| ())
                }
                (Some(Err(SendError::Transient(error))), Target::Paper(key)) => {
                    ledger::mark_retry(&mut conn, key, error).await
                }
                (None, Target::Paper(key)) => {
                    ledger::mark_retry(&mut conn, key, "interrupted by shutdown").await
                }
                // A digest stays `sending` and is sent again, as itself.
                (_, Target::Digest(_)) => Ok(()),
            }
        };
        record.await.map_err(|e| retry("record", &e))?;
        match outcome {
            Some(Ok(())) => {
                metrics::counter!("deliveries_total", "channel" => kind, "outcome" => "sent")
                    .increment(1);
                Ok(())
            }
            Some(Err(SendError::Permanent(reason))) => {
                metrics::counter!("deliveries_total", "channel" => kind, "outcome" => "refused")
                    .increment(1);
                tracing::warn!(channel = work.channel.id, %reason, "delivery refused; channel turned off");
                Err(Failure::Reject(format!("{kind} refused: {reason}")))
            }
            Some(Err(SendError::Transient(error))) => {
                metrics::counter!("deliveries_total", "channel" => kind, "outcome" => "retry")
                    .increment(1);
                Err(Failure::Retry(format!("{kind}: {error}")))
            }
            None => Err(Failure::Retry("shutting down".into())),
        }
    }

    /// Load what the message is about and mark it as being sent; `None`
    /// when there is nothing to send.
    async fn prepare(&self, request: &DeliveryRequested) -> crate::Result<Option<Work>> {
        let pool = &self.senders.pool;
        let Some(channel) = channel::get(pool, request.channel_id).await? else {
            tracing::debug!(
                channel = request.channel_id,
                "channel deleted; nothing to send"
            );
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        let (target, resumed, keys, subscription_ids, date) = match &request.what {
            Deliver::Paper {
                arxiv_id,
                subscription_ids,
            } => {
                let key = DeliveryKey {
                    user_id: request.user_id,
                    arxiv_id: arxiv_id.clone(),
                    channel_id: request.channel_id,
                };
                if !channel.enabled {
                    // Unsubscribed since it was queued: it is not sent.
                    ledger::mark_failed(&mut tx, &key, "channel turned off").await?;
                    tx.commit().await?;
                    metrics::counter!("deliveries_total", "channel" => self.kind.as_str(), "outcome" => "skipped").increment(1);
                    return Ok(None);
                }
                match ledger::begin_send(&mut tx, &key).await? {
                    Begin::Send {
                        resumed, version, ..
                    } => (
                        Target::Paper(key),
                        resumed,
                        vec![(arxiv_id.clone(), version)],
                        subscription_ids.clone(),
                        None,
                    ),
                    Begin::AlreadySent | Begin::Missing => {
                        tx.commit().await?;
                        return Ok(None);
                    }
                }
            }
            Deliver::Digest { digest_id } => {
                if !channel.enabled {
                    ledger::finish_digest(&mut tx, *digest_id, Some("channel turned off")).await?;
                    tx.commit().await?;
                    return Ok(None);
                }
                match ledger::begin_digest(&mut tx, *digest_id).await? {
                    DigestBegin::Send { digest, resumed } => (
                        Target::Digest(digest.id),
                        resumed,
                        digest.papers,
                        Vec::new(),
                        Some(digest.local_date),
                    ),
                    DigestBegin::AlreadySent | DigestBegin::Missing => {
                        tx.commit().await?;
                        return Ok(None);
                    }
                }
            }
        };
        tx.commit().await?;
        let cards = catalog::reading::cards(pool, &keys).await?;
        let subscriptions = subscriptions::store::names(pool, &subscription_ids).await?;
        let identity = match &target {
            Target::Paper(key) => format!(
                "u{}c{}p{}",
                key.user_id,
                key.channel_id,
                key.arxiv_id.replace('/', "_")
            ),
            Target::Digest(id) => format!("digest{id}"),
        };
        Ok(Some(Work {
            channel,
            cards,
            subscriptions,
            date,
            identity,
            resumed,
            target,
        }))
    }

    async fn send(&self, work: &Work) -> Result<(), SendError> {
        let s = &self.senders;
        let unsubscribe_url = format!(
            "{}/unsubscribe/{}",
            s.public_url,
            s.signer.sign(
                crate::UNSUBSCRIBE,
                &(work.channel.user_id, work.channel.id),
                None
            )
        );
        let notice = Notice {
            cards: &work.cards,
            subscriptions: work.subscriptions.clone(),
            date: work.date,
            unsubscribe_url: unsubscribe_url.clone(),
            manage_url: format!("{}/subscriptions", s.public_url),
        };
        match self.kind {
            Kind::Email => {
                let email = notice
                    .email()
                    .map_err(|e| SendError::Permanent(format!("rendering: {e}")))?;
                let message_id = format!("paperstream.{}@{}", work.identity, s.domain);
                s.mailer
                    .send(&work.channel.target, &message_id, &email, &unsubscribe_url)
                    .await
            }
            Kind::Webhook => {
                let secret = work.channel.secret.as_deref().unwrap_or_default();
                let payload = notice.webhook_payload(time::OffsetDateTime::now_utc());
                s.http
                    .webhook(
                        &work.channel.target,
                        secret,
                        &format!("msg_{}", work.identity),
                        &payload,
                    )
                    .await
            }
            Kind::Slack => {
                s.http
                    .slack(&work.channel.target, &notice.slack_payload())
                    .await
            }
            Kind::InApp => Ok(()),
        }
    }
}
