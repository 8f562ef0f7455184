//! Configuration: defaults, then an optional TOML file, then the
//! environment (`PAPERSTREAM_*`, nested keys joined by `__`, e.g.
//! `PAPERSTREAM_SMTP__HOST`; `DATABASE_URL` works too).

use std::{net::SocketAddr, path::Path, time::Duration};

use delivery::send::{SmtpConfig, SmtpSecurity};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Config {
    pub database_url: String,
    #[serde(deserialize_with = "ops::config::list")]
    pub redis_urls: Vec<String>,
    /// Prepended to topic names; empty in production.
    pub topic_prefix: String,
    /// Signs unsubscribe links; the API must have the same one. At least
    /// 32 bytes, random.
    pub secret: Option<String>,
    /// Where the web UI is, for links in what is sent.
    pub public_url: String,
    pub smtp: SmtpConfig,
    pub http_timeout_s: u64,
    /// Let webhook hosts resolve to loopback and private addresses (the
    /// demo's fake receivers). Never in production: the URLs come from
    /// users, and must not reach into our network.
    pub allow_private_targets: bool,
    /// Failed calls that open a channel's breaker (once they are 90% of
    /// the recent ones), and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_open_s: u64,
    /// Which parts run here: `matcher`, `router`, `email`, `webhook`,
    /// `slack`, `digests`. All by default; split them to scale or isolate.
    #[serde(deserialize_with = "ops::config::list")]
    pub roles: Vec<String>,
    /// How often the matcher reads subscription changes when no
    /// notification woke it.
    pub change_poll_ms: u64,
    pub digest_interval_s: u64,
    pub max_concurrent_batches: usize,
    pub ops_addr: SocketAddr,
}

impl std::fmt::Debug for Config {
    // The secret and the SMTP password stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_urls", &ops::config::RedactedUrls(&self.redis_urls))
            .field("topic_prefix", &self.topic_prefix)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("public_url", &self.public_url)
            .field("smtp", &self.smtp)
            .field("roles", &self.roles)
            .field("ops_addr", &self.ops_addr)
            .field("allow_private_targets", &self.allow_private_targets)
            .finish_non_exhaustive()
    }
}

pub const ALL_ROLES: [&str; 6] = ["matcher", "router", "email", "webhook", "slack", "digests"];

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:55432/paperstream".into(),
            redis_urls: vec!["redis://127.0.0.1:7101".into()],
            topic_prefix: String::new(),
            secret: None,
            public_url: "http://127.0.0.1:8080".into(),
            smtp: SmtpConfig {
                host: "127.0.0.1".into(),
                port: 2525,
                security: SmtpSecurity::None,
                username: None,
                password: None,
                from: "paperstream <papers@paperstream.localhost>".into(),
                timeout_s: 20,
            },
            http_timeout_s: 10,
            allow_private_targets: false,
            breaker_failures: 5,
            breaker_open_s: 15,
            roles: ALL_ROLES.iter().map(|r| (*r).to_owned()).collect(),
            change_poll_ms: 1_000,
            digest_interval_s: 30,
            max_concurrent_batches: 6,
            ops_addr: ([127, 0, 0, 1], 9103).into(),
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

    pub fn runs(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn breaker_open(&self) -> Duration {
        Duration::from_secs(self.breaker_open_s)
    }
}
