//! Configuration: defaults, then an optional TOML file, then the
//! environment (`PAPERSTREAM_*`).

use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Config {
    #[serde(deserialize_with = "ops::config::list")]
    pub redis_urls: Vec<String>,
    /// Prepended to topic names; empty in production.
    pub topic_prefix: String,
    /// Seconds between passes over every topic. Prometheus scrapes the
    /// last pass; scraping more often than this only repeats it.
    pub interval_s: u64,
    /// `/metrics` and health.
    pub ops_addr: SocketAddr,
    /// Where the runtime settings are, so that backlog shares follow a
    /// changed capacity; without it the code's capacities are used.
    pub database_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_urls: vec!["redis://127.0.0.1:7101".into()],
            topic_prefix: String::new(),
            interval_s: 15,
            ops_addr: ([127, 0, 0, 1], 9105).into(),
            database_url: None,
        }
    }
}

impl std::fmt::Debug for Config {
    // Passwords in the URLs stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_urls", &ops::config::RedactedUrls(&self.redis_urls))
            .field("topic_prefix", &self.topic_prefix)
            .field("interval_s", &self.interval_s)
            .field("ops_addr", &self.ops_addr)
            .field(
                "database_url",
                &self.database_url.as_deref().map(ops::config::redact_url),
            )
            .finish()
    }
}

/// Plain environment variables read besides `PAPERSTREAM_*`.
pub const ENV_ALIASES: &[(&str, &str)] = &[("DATABASE_URL", "database_url")];

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, Box<ops::config::Error>> {
        ops::config::load(Config::default(), file, ENV_ALIASES)
    }

    /// Every environment variable this configuration reads.
    pub fn env_names() -> Vec<String> {
        ops::config::env_names(&Config::default(), ENV_ALIASES)
    }
}
