//! What can change at runtime, and what a valid change looks like.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

/// Every runtime setting. A change replaces the whole document, so a
/// version is always a complete, validated set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// By topic name.
    pub topics: BTreeMap<String, TopicSettings>,
    pub llm: LlmSettings,
    pub crawler: CrawlerSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Unacknowledged entries a partition holds before producers meet
    /// backpressure.
    pub capacity: u64,
    /// Deliveries of a message before it is dead-lettered.
    pub max_attempts: u32,
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    pub retry_factor: f32,
    /// Entries a consumer reads and hands its handler at once.
    pub batch_size: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// Providers in the order the summarizer tries them.
    pub order: Vec<String>,
    /// Consecutive failures that open a provider's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe.
    pub breaker_open_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrawlerSettings {
    /// Time between scheduled crawls.
    pub interval_s: u64,
    pub categories: Vec<String>,
}

/// The providers the summarizer knows.
pub const PROVIDERS: [&str; 3] = ["ollama", "openai", "extractive"];

/// What the services run with before any change: the code's defaults (the
/// summarizer's and crawler's configurations start from these too).
pub mod defaults {
    pub const LLM_ORDER: [&str; 3] = super::PROVIDERS;
    pub const BREAKER_FAILURES: u32 = 5;
    pub const BREAKER_OPEN_S: u64 = 30;
    pub const CRAWL_INTERVAL_S: u64 = 6 * 3600;
    pub const CRAWL_CATEGORIES: [&str; 3] = ["cs.LG", "cs.AI", "cs.CL"];
}

impl Settings {
    /// The code's defaults for every topic of `topics` (named without
    /// `prefix`), the LLM chain and the crawler.
    pub fn defaults(topics: &events::Topics, prefix: &str) -> Self {
        Self {
            topics: topics
                .all_layouts()
                .iter()
                .map(|layout| {
                    let name = layout
                        .config
                        .name
                        .strip_prefix(prefix)
                        .unwrap_or(&layout.config.name)
                        .to_owned();
                    let settings =
                        TopicSettings::from_config(&layout.config, events::batch_size(&name));
                    (name, settings)
                })
                .collect(),
            llm: LlmSettings {
                order: defaults::LLM_ORDER.map(String::from).to_vec(),
                breaker_failures: defaults::BREAKER_FAILURES,
                breaker_open_s: defaults::BREAKER_OPEN_S,
            },
            crawler: CrawlerSettings {
                interval_s: defaults::CRAWL_INTERVAL_S,
                categories: defaults::CRAWL_CATEGORIES.map(String::from).to_vec(),
            },
        }
    }
}

/// One reason a settings document was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    /// Where, e.g. `topics.paper.ingested.capacity`.
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl TopicSettings {
    /// The settings a topic starts with: its code's configuration.
    pub fn from_config(config: &streams::TopicConfig, batch_size: usize) -> Self {
        Self {
            capacity: config.capacity,
            max_attempts: config.max_attempts,
            retry_min_ms: duration_ms(config.retry.min_delay),
            retry_max_ms: duration_ms(config.retry.max_delay),
            retry_factor: config.retry.factor,
            batch_size,
        }
    }

    /// What a running topic takes from these settings.
    pub fn tuning(&self) -> streams::Tuning {
        streams::Tuning {
            capacity: self.capacity,
            max_attempts: self.max_attempts,
            retry: streams::RetryPolicy {
                min_delay: Duration::from_millis(self.retry_min_ms),
                max_delay: Duration::from_millis(self.retry_max_ms),
                factor: self.retry_factor,
            },
            batch_size: Some(self.batch_size),
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Settings {
    /// Every reason this document cannot be applied; empty when it can.
    pub fn problems(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let mut refuse = |field: String, reason: &str| {
            problems.push(Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        for (name, topic) in &self.topics {
            let field = |f: &str| format!("topics.{name}.{f}");
            if !(1..=10_000_000).contains(&topic.capacity) {
                refuse(field("capacity"), "must be between 1 and 10,000,000");
            }
            if !(1..=100).contains(&topic.max_attempts) {
                refuse(field("max_attempts"), "must be between 1 and 100");
            }
            if topic.retry_min_ms == 0 {
                refuse(field("retry_min_ms"), "must be at least 1");
            }
            if topic.retry_max_ms < topic.retry_min_ms {
                refuse(field("retry_max_ms"), "must not be below retry_min_ms");
            }
            if topic.retry_max_ms > 24 * 3600 * 1000 {
                refuse(field("retry_max_ms"), "must be at most a day");
            }
            if !(topic.retry_factor.is_finite() && (1.0..=10.0).contains(&topic.retry_factor)) {
                refuse(field("retry_factor"), "must be between 1 and 10");
            }
            if !(1..=10_000).contains(&topic.batch_size) {
                refuse(field("batch_size"), "must be between 1 and 10,000");
            }
        }
        if self.llm.order.is_empty() {
            refuse("llm.order".into(), "needs at least one provider");
        }
        for (i, provider) in self.llm.order.iter().enumerate() {
            if !PROVIDERS.contains(&provider.as_str()) {
                refuse(
                    format!("llm.order[{i}]"),
                    "unknown provider (ollama, openai or extractive)",
                );
            } else if self.llm.order[..i].contains(provider) {
                refuse(format!("llm.order[{i}]"), "listed twice");
            }
        }
        if !(1..=1000).contains(&self.llm.breaker_failures) {
            refuse("llm.breaker_failures".into(), "must be between 1 and 1000");
        }
        if !(1..=86_400).contains(&self.llm.breaker_open_s) {
            refuse("llm.breaker_open_s".into(), "must be between 1 s and a day");
        }
        if !(60..=7 * 86_400).contains(&self.crawler.interval_s) {
            refuse(
                "crawler.interval_s".into(),
                "must be between a minute and a week",
            );
        }
        if self.crawler.categories.is_empty() {
            refuse("crawler.categories".into(), "needs at least one category");
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Settings {
        let config = streams::TopicConfig::new("paper.ingested", 6);
        Settings {
            topics: [(
                "paper.ingested".to_owned(),
                TopicSettings::from_config(&config, 500),
            )]
            .into(),
            llm: LlmSettings {
                order: vec!["ollama".into(), "openai".into(), "extractive".into()],
                breaker_failures: 5,
                breaker_open_s: 30,
            },
            crawler: CrawlerSettings {
                interval_s: 6 * 3600,
                categories: vec!["cs.LG".into()],
            },
        }
    }

    #[test]
    fn the_code_defaults_are_valid_and_name_every_topic_without_its_prefix() {
        let topics = events::Topics::new("test.").expect("topics");
        let defaults = Settings::defaults(&topics, "test.");
        assert_eq!(defaults.problems(), []);
        assert_eq!(defaults.topics.len(), 6);
        assert_eq!(defaults.topics["paper.ingested"].batch_size, 20);
        assert_eq!(defaults.topics["delivery.email"].max_attempts, 10);
    }

    #[test]
    fn defaults_from_code_are_valid_and_round_trip() {
        let settings = valid();
        assert_eq!(settings.problems(), []);
        let config = streams::TopicConfig::new("paper.ingested", 6);
        let tuning = settings.topics["paper.ingested"].tuning();
        assert_eq!(tuning.capacity, config.capacity);
        assert_eq!(tuning.retry, config.retry);
        assert_eq!(tuning.batch_size, Some(500));
    }

    #[test]
    fn each_invalid_field_is_named_with_its_reason() {
        let mut settings = valid();
        let topic = settings.topics.get_mut("paper.ingested").expect("topic");
        topic.capacity = 0;
        topic.retry_min_ms = 500;
        topic.retry_max_ms = 100;
        topic.retry_factor = f32::NAN;
        settings.llm.order = vec!["ollama".into(), "gpt".into(), "ollama".into()];
        settings.crawler.interval_s = 5;
        let fields: Vec<String> = settings.problems().into_iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "topics.paper.ingested.capacity",
                "topics.paper.ingested.retry_max_ms",
                "topics.paper.ingested.retry_factor",
                "llm.order[1]",
                "llm.order[2]",
                "crawler.interval_s",
            ]
        );
    }

    #[test]
    fn unknown_fields_are_refused_not_ignored() {
        let mut json = serde_json::to_value(valid()).expect("json");
        json["llm"]["breaker_failure"] = 3.into();
        let err = serde_json::from_value::<Settings>(json).expect_err("typo");
        assert!(err.to_string().contains("breaker_failure"), "{err}");
    }
}
