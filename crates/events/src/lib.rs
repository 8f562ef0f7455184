//! # events: the topics services exchange, and what their messages say
//!
//! One place defines each topic's name, partition count and payload type, so
//! that producer and consumers cannot disagree. Payloads are versioned
//! ([`streams::Event::SCHEMA_VERSION`]): a field added with a default keeps
//! the version; anything else bumps it, and consumers are rolled out first.

use serde::{Deserialize, Serialize};
use streams::{Event, Topic, TopicConfig};

/// Partitions of every topic: two per master of a three-master cluster.
pub const PARTITIONS: u16 = 6;

/// Entries a consumer of `topic` (its name without a prefix) takes at once,
/// until the runtime settings say otherwise. Summarizing costs an LLM call
/// per entry, so its batches are small; the others are database work.
pub fn batch_size(topic: &str) -> usize {
    match topic {
        PaperIngested::TOPIC => 20,
        _ => 50,
    }
}

/// A paper version was stored for the first time. Key: the arXiv id, so a
/// paper's versions stay in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperIngested {
    pub arxiv_id: String,
    pub version: u32,
    pub title: String,
    pub primary_category: String,
    pub categories: Vec<String>,
}

impl Event for PaperIngested {
    const SCHEMA_VERSION: u32 = 1;
}

impl PaperIngested {
    pub const TOPIC: &'static str = "paper.ingested";

    /// The message id: one event per paper version, ever.
    pub fn message_id(&self) -> String {
        format!("{}v{}", self.arxiv_id.replace('/', "_"), self.version)
    }
}

/// A paper version has a summary. Key: the arXiv id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaperSummarized {
    pub arxiv_id: String,
    pub version: u32,
    pub prompt_version: u32,
    pub provider: String,
    /// The summary came from the offline extractive summarizer, not an LLM.
    pub extractive: bool,
}

impl Event for PaperSummarized {
    const SCHEMA_VERSION: u32 = 1;
}

impl PaperSummarized {
    pub const TOPIC: &'static str = "paper.summarized";

    pub fn message_id(&self) -> String {
        format!(
            "{}v{}p{}",
            self.arxiv_id.replace('/', "_"),
            self.version,
            self.prompt_version
        )
    }
}

/// A paper matched some of a person's subscriptions. Key: the user id, so
/// each person's notifications keep their order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRequested {
    pub user_id: i64,
    pub arxiv_id: String,
    pub version: u32,
    pub subscription_ids: Vec<i64>,
}

impl Event for NotificationRequested {
    const SCHEMA_VERSION: u32 = 1;
}

impl NotificationRequested {
    pub const TOPIC: &'static str = "notification.requested";

    /// One per person and paper: a new version is not news again.
    pub fn message_id(&self) -> String {
        format!("u{}:{}", self.user_id, self.arxiv_id.replace('/', "_"))
    }
}

/// Something to send on one channel. Each channel kind has its own topic,
/// so that a mail server outage holds up email only. Key: the user id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRequested {
    pub user_id: i64,
    pub channel_id: i64,
    pub what: Deliver,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Deliver {
    /// One paper, now.
    Paper {
        arxiv_id: String,
        subscription_ids: Vec<i64>,
    },
    /// A day's papers, gathered in a digest.
    Digest { digest_id: i64 },
}

impl Event for DeliveryRequested {
    const SCHEMA_VERSION: u32 = 1;
}

impl DeliveryRequested {
    pub const EMAIL: &'static str = "delivery.email";
    pub const WEBHOOK: &'static str = "delivery.webhook";
    pub const SLACK: &'static str = "delivery.slack";

    pub fn message_id(&self) -> String {
        match &self.what {
            Deliver::Paper { arxiv_id, .. } => format!(
                "u{}:c{}:{}",
                self.user_id,
                self.channel_id,
                arxiv_id.replace('/', "_")
            ),
            Deliver::Digest { digest_id } => format!("digest:{digest_id}"),
        }
    }
}

/// The topics of one deployment. A prefix (empty in production) keeps
/// test runs and side-by-side deployments on one cluster apart.
#[derive(Debug, Clone)]
pub struct Topics {
    pub ingested: Topic<PaperIngested>,
    pub summarized: Topic<PaperSummarized>,
    pub notifications: Topic<NotificationRequested>,
    pub email: Topic<DeliveryRequested>,
    pub webhook: Topic<DeliveryRequested>,
    pub slack: Topic<DeliveryRequested>,
}

impl Topics {
    /// `prefix` is prepended to every name, e.g. `staging.`; it must keep
    /// the names valid (lowercase letters, digits, `.`, `_`, `-`).
    pub fn new(prefix: &str) -> Result<Self, streams::Error> {
        fn topic<T: Event>(prefix: &str, name: &str) -> Result<Topic<T>, streams::Error> {
            Topic::new(TopicConfig::new(format!("{prefix}{name}"), PARTITIONS))
        }
        // Receivers fail for minutes at a time (a webhook redeploys, a
        // mailbox is over quota); more attempts, further apart, before a
        // delivery is dead-lettered. Whole outages do not use attempts up:
        // the senders' circuit breakers hold deliveries back meanwhile.
        fn delivery_topic(
            prefix: &str,
            name: &str,
        ) -> Result<Topic<DeliveryRequested>, streams::Error> {
            let mut config = TopicConfig::new(format!("{prefix}{name}"), PARTITIONS);
            config.max_attempts = 10;
            config.retry.max_delay = std::time::Duration::from_secs(120);
            Topic::new(config)
        }
        Ok(Self {
            ingested: topic(prefix, PaperIngested::TOPIC)?,
            summarized: topic(prefix, PaperSummarized::TOPIC)?,
            notifications: topic(prefix, NotificationRequested::TOPIC)?,
            email: delivery_topic(prefix, DeliveryRequested::EMAIL)?,
            webhook: delivery_topic(prefix, DeliveryRequested::WEBHOOK)?,
            slack: delivery_topic(prefix, DeliveryRequested::SLACK)?,
        })
    }

    /// Every topic's layout, for inspection and monitoring.
    pub fn all_layouts(&self) -> Vec<std::sync::Arc<streams::TopicLayout>> {
        vec![
            self.ingested.layout().clone(),
            self.summarized.layout().clone(),
            self.notifications.layout().clone(),
            self.email.layout().clone(),
            self.webhook.layout().clone(),
            self.slack.layout().clone(),
        ]
    }

    /// The topics the notifier writes: requests and deliveries.
    pub fn notifier_layouts(&self) -> Vec<std::sync::Arc<streams::TopicLayout>> {
        vec![
            self.notifications.layout().clone(),
            self.email.layout().clone(),
            self.webhook.layout().clone(),
            self.slack.layout().clone(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_one_per_version() {
        let event = PaperIngested {
            arxiv_id: "astro-ph/0601001".into(),
            version: 2,
            title: "t".into(),
            primary_category: "astro-ph".into(),
            categories: vec![],
        };
        assert_eq!(event.message_id(), "astro-ph_0601001v2");
        let topics = Topics::new("").expect("valid");
        assert_eq!(topics.ingested.name(), "paper.ingested");
        assert_eq!(
            Topics::new("t-1.").expect("valid").summarized.name(),
            "t-1.paper.summarized"
        );
        assert!(Topics::new("Bad Prefix").is_err());
        assert_eq!(topics.summarized.config().partitions, PARTITIONS);
    }
}
