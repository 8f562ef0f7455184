//! Configuration: defaults, then an optional TOML file, then the
//! environment (`PAPERSTREAM_*`, nested keys joined by `__`, e.g.
//! `PAPERSTREAM_LLM__OPENAI_API_KEY`; `DATABASE_URL` and `OPENAI_API_KEY`
//! work too).

use std::{net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub database_url: String,
    #[serde(deserialize_with = "ops::config::list")]
    pub redis_urls: Vec<String>,
    pub llm: LlmSettings,
    /// Batches handled at once over all owned partitions.
    pub max_concurrent_batches: usize,
    pub ops_addr: SocketAddr,
    /// Prepended to topic names; empty in production.
    pub topic_prefix: String,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct LlmSettings {
    /// Provider names in the order to try them: `ollama`, `openai`,
    /// `extractive`.
    #[serde(deserialize_with = "ops::config::list")]
    pub order: Vec<String>,
    pub ollama_url: String,
    pub ollama_model: String,
    pub ollama_timeout_s: u64,
    /// A local Ollama serves few calls at once.
    pub ollama_max_in_flight: usize,
    pub openai_url: String,
    /// Without a key the chain skips OpenAI.
    pub openai_api_key: Option<String>,
    pub openai_model: String,
    pub openai_timeout_s: u64,
    pub openai_max_output_tokens: u32,
    pub openai_daily_tokens: u64,
    pub openai_input_price_per_1k_micro_usd: u64,
    pub openai_output_price_per_1k_micro_usd: u64,
    /// Failures in a row that open a provider's breaker.
    pub breaker_failures: u32,
    pub breaker_open_s: u64,
}

impl std::fmt::Debug for LlmSettings {
    // The API key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("order", &self.order)
            .field("ollama_url", &self.ollama_url)
            .field("ollama_model", &self.ollama_model)
            .field("openai_url", &self.openai_url)
            .field(
                "openai_api_key",
                &self.openai_api_key.as_ref().map(|_| "<set>"),
            )
            .field("openai_model", &self.openai_model)
            .field("openai_daily_tokens", &self.openai_daily_tokens)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:55432/paperstream".into(),
            redis_urls: vec!["redis://127.0.0.1:7101".into()],
            llm: LlmSettings {
                order: settings::defaults::LLM_ORDER.map(String::from).to_vec(),
                ollama_url: "http://127.0.0.1:11434".into(),
                ollama_model: "gemma3".into(),
                ollama_timeout_s: 60,
                ollama_max_in_flight: 2,
                openai_url: "https://api.openai.com/v1".into(),
                openai_api_key: None,
                openai_model: "gpt-4o-mini".into(),
                openai_timeout_s: 30,
                openai_max_output_tokens: 200,
                openai_daily_tokens: 2_000_000,
                openai_input_price_per_1k_micro_usd: 150,
                openai_output_price_per_1k_micro_usd: 600,
                breaker_failures: settings::defaults::BREAKER_FAILURES,
                breaker_open_s: settings::defaults::BREAKER_OPEN_S,
            },
            max_concurrent_batches: 6,
            ops_addr: ([127, 0, 0, 1], 9102).into(),
            topic_prefix: String::new(),
        }
    }
}

/// Plain environment variables read besides `PAPERSTREAM_*`.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database_url"),
    ("OPENAI_API_KEY", "llm.openai_api_key"),
];

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, Box<ops::config::Error>> {
        ops::config::load(Config::default(), file, ENV_ALIASES)
    }

    /// Every environment variable this configuration reads.
    pub fn env_names() -> Vec<String> {
        ops::config::env_names(&Config::default(), ENV_ALIASES)
    }
}

impl LlmSettings {
    pub fn breaker_open(&self) -> Duration {
        Duration::from_secs(self.breaker_open_s)
    }
}
