//! Configuration: defaults, then an optional TOML file, then the
//! environment (`PAPERSTREAM_*`; `DATABASE_URL` works too).

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
pub struct Config {
    pub database_url: String,
    #[serde(deserialize_with = "ops::config::list")]
    pub redis_urls: Vec<String>,
    /// Prepended to topic names; empty in production.
    pub topic_prefix: String,
    /// Signs cookies, unsubscribe links and feed URLs; the notifier must
    /// have the same one. At least 32 random bytes.
    pub secret: Option<String>,
    /// Where people reach the web UI, without a trailing slash. Cookies are
    /// `Secure` when it is `https`.
    pub public_url: String,
    /// The web UI and JSON API.
    pub listen: SocketAddr,
    /// `/metrics` and health, kept off the public port.
    pub ops_addr: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered 503: a query stuck
    /// behind a lock must not hold the connection, and one of the
    /// database pool's, for good.
    pub request_timeout_s: u64,
    /// Sign-up and login attempts per client address and minute.
    pub auth_attempts_per_minute: u32,
    /// Login attempts per account and minute, from any address: guessing
    /// one account's password from many addresses is limited too.
    pub login_attempts_per_account_per_minute: u32,
    /// Allow webhook targets on loopback and private networks (the demo's
    /// fake receivers). Never in production: the URLs come from users.
    pub allow_private_targets: bool,
    pub session_idle_hours: u64,
    pub session_absolute_days: u64,
    /// How far back a subscription's preview looks.
    pub preview_days: i32,
}

impl std::fmt::Debug for Config {
    // The secret and passwords stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("redis_urls", &ops::config::RedactedUrls(&self.redis_urls))
            .field("topic_prefix", &self.topic_prefix)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("public_url", &self.public_url)
            .field("listen", &self.listen)
            .field("ops_addr", &self.ops_addr)
            .field("allow_private_targets", &self.allow_private_targets)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:55432/paperstream".into(),
            redis_urls: vec!["redis://127.0.0.1:7101".into()],
            topic_prefix: String::new(),
            secret: None,
            public_url: "http://127.0.0.1:8080".into(),
            listen: ([127, 0, 0, 1], 8080).into(),
            ops_addr: ([127, 0, 0, 1], 9104).into(),
            max_body_bytes: 64 * 1024,
            request_timeout_s: 30,
            auth_attempts_per_minute: 10,
            login_attempts_per_account_per_minute: 10,
            allow_private_targets: false,
            session_idle_hours: 7 * 24,
            session_absolute_days: 30,
            preview_days: 14,
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

    pub fn session_policy(&self) -> accounts::session::SessionPolicy {
        accounts::session::SessionPolicy {
            idle: Duration::from_secs(self.session_idle_hours * 3600),
            absolute: Duration::from_secs(self.session_absolute_days * 24 * 3600),
        }
    }
}
