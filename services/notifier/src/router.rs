//! The router: from `notification.requested` to deliveries per channel.
//!
//! In one transaction it records the match (the person's feed), delivers
//! to the in-app inbox, queues a delivery for every other enabled channel,
//! and for instant channels enqueues the `delivery.*` message in the
//! outbox. A redelivered notification finds the match recorded and does
//! nothing: the transaction did everything or nothing.

use delivery::{
    channel::{self, Frequency, Kind},
    ledger::{self, DeliveryKey},
};
use events::{Deliver, DeliveryRequested, NotificationRequested, Topics};
use sqlx::PgPool;
use streams::{Failure, Message};

#[derive(Debug, Clone)]
pub struct Route {
    pub pool: PgPool,
    pub topics: Topics,
}

impl Route {
    pub async fn handle(&self, message: Message<NotificationRequested>) -> Result<(), Failure> {
        let n = message.payload;
        let version = i32::try_from(n.version)
            .map_err(|_| Failure::Reject(format!("bad version {}", n.version)))?;
        self.route(&n, version)
            .await
            .map_err(|e| Failure::Retry(format!("route: {e}")))
    }

    async fn route(&self, n: &NotificationRequested, version: i32) -> crate::Result<()> {
        let mut tx = self.pool.begin().await?;
        if !ledger::record_match(
            &mut tx,
            n.user_id,
            &n.arxiv_id,
            version,
            &n.subscription_ids,
        )
        .await?
        {
            tx.commit().await?;
            metrics::counter!("router_notifications_total", "outcome" => "repeat").increment(1);
            return Ok(());
        }
        for channel in channel::enabled(&mut tx, n.user_id).await? {
            let key = DeliveryKey {
                user_id: n.user_id,
                arxiv_id: n.arxiv_id.clone(),
                channel_id: channel.id,
            };
            let Some(topic) = topic_for(&self.topics, channel.kind) else {
                ledger::deliver_in_app(&mut tx, &key, version).await?;
                continue;
            };
            if !ledger::queue(&mut tx, &key, version).await? {
                continue;
            }
            if channel.frequency == Frequency::Daily {
                continue;
            }
            let request = DeliveryRequested {
                user_id: n.user_id,
                channel_id: channel.id,
                what: Deliver::Paper {
                    arxiv_id: n.arxiv_id.clone(),
                    subscription_ids: n.subscription_ids.clone(),
                },
            };
            outbox::enqueue(
                &mut tx,
                topic,
                &n.user_id.to_string(),
                &request.message_id(),
                &request,
            )
            .await?;
        }
        tx.commit().await?;
        metrics::counter!("router_notifications_total", "outcome" => "routed").increment(1);
        Ok(())
    }
}

/// The topic of a channel kind; in-app has none, it is delivered inline.
pub fn topic_for(topics: &Topics, kind: Kind) -> Option<&streams::Topic<DeliveryRequested>> {
    match kind {
        Kind::Email => Some(&topics.email),
        Kind::Webhook => Some(&topics.webhook),
        Kind::Slack => Some(&topics.slack),
        Kind::InApp => None,
    }
}
