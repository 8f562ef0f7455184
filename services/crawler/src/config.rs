//! Configuration: defaults, then an optional TOML file, then the
//! environment (`PAPERSTREAM_*`, nested keys joined by `__`, e.g.
//! `PAPERSTREAM_ARXIV__PACE_INTERVAL_MS`; `DATABASE_URL` works too).

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub database_url: String,
    #[serde(deserialize_with = "ops::config::list")]
    pub redis_urls: Vec<String>,
    pub arxiv: ArxivSettings,
    pub schedule: Schedule,
    pub ops_addr: SocketAddr,
    /// Prepended to topic names; empty in production.
    pub topic_prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArxivSettings {
    pub query_url: String,
    pub oai_url: String,
    pub rss_url: String,
    /// arXiv asks for one request every 3 s across all instances.
    pub pace_interval_ms: u64,
    /// Redis key of the shared pace; every instance must use the same.
    pub pace_key: String,
    pub request_timeout_s: u64,
    pub attempts: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Schedule {
    #[serde(deserialize_with = "ops::config::list")]
    pub categories: Vec<String>,
    #[serde(deserialize_with = "ops::config::list")]
    pub sets: Vec<String>,
    /// How many past days each scheduled run harvests again, for
    /// replacements announced late.
    pub backfill_days: u32,
    pub interval_s: u64,
    pub probe_interval_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        let client = arxiv::client::ClientConfig::default();
        Self {
            database_url: "postgres://postgres@127.0.0.1:55432/paperstream".into(),
            redis_urls: vec!["redis://127.0.0.1:7101".into()],
            arxiv: ArxivSettings {
                query_url: client.query_url,
                oai_url: client.oai_url,
                rss_url: client.rss_url,
                pace_interval_ms: 3000,
                pace_key: "arxiv:pace".into(),
                request_timeout_s: client.request_timeout.as_secs(),
                attempts: client.attempts,
            },
            schedule: Schedule {
                categories: settings::defaults::CRAWL_CATEGORIES
                    .map(String::from)
                    .to_vec(),
                sets: vec!["cs".into()],
                backfill_days: 2,
                interval_s: settings::defaults::CRAWL_INTERVAL_S,
                probe_interval_s: 600,
            },
            ops_addr: ([127, 0, 0, 1], 9101).into(),
            topic_prefix: String::new(),
        }
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

impl ArxivSettings {
    pub fn pace_interval(&self) -> Duration {
        Duration::from_millis(self.pace_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }

    pub fn client_config(&self) -> arxiv::client::ClientConfig {
        arxiv::client::ClientConfig {
            query_url: self.query_url.clone(),
            oai_url: self.oai_url.clone(),
            rss_url: self.rss_url.clone(),
            request_timeout: self.request_timeout(),
            attempts: self.attempts,
            ..arxiv::client::ClientConfig::default()
        }
    }
}

impl Schedule {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_s)
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.probe_interval_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::result_large_err,
        reason = "figment's Jail API returns its own large error"
    )]
    fn environment_overrides_the_file_and_lists_split_on_commas() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "crawler.toml",
                "[schedule]\ncategories = [\"math.OC\"]\nbackfill_days = 5\n",
            )?;
            jail.set_env("PAPERSTREAM_REDIS_URLS", "redis://a:1, redis://b:2");
            jail.set_env("PAPERSTREAM_SCHEDULE__BACKFILL_DAYS", "3");
            jail.set_env("DATABASE_URL", "postgres://db/x");
            let config =
                Config::load(Some(Path::new("crawler.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.redis_urls, ["redis://a:1", "redis://b:2"]);
            assert_eq!(config.schedule.categories, ["math.OC"]);
            assert_eq!(config.schedule.backfill_days, 3);
            assert_eq!(config.database_url, "postgres://db/x");
            assert_eq!(config.arxiv.pace_interval_ms, 3000);
            Ok(())
        });
    }
}
