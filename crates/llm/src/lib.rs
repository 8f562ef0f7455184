//! # llm: paper summaries that keep coming when models fail
//!
//! Owns turning a paper's title and abstract into a short summary. The
//! providers ([`ollama::Ollama`] first, [`openai::OpenAi`] as the fallback,
//! [`extractive::Extractive`] as the offline last resort) share one trait,
//! [`Summarizer`]. Each remote provider runs behind a [`breaker::Guarded`]:
//! a circuit breaker (built on `failsafe`, behind our own type) with a
//! per-call timeout, a bulkhead that bounds concurrent calls, and a
//! half-open state that lets exactly one probe through. A [`chain::Chain`]
//! tries them in the configured order. OpenAI spending is capped per day
//! across every instance by [`budget::SpendCap`], an atomic Lua script that
//! reserves the worst case before a call and settles after it.

pub mod breaker;
pub mod budget;
pub mod chain;
pub mod extractive;
pub mod ollama;
pub mod openai;

use std::future::Future;

/// Version of the prompt; a summary is made once per paper version and
/// prompt version.
pub const PROMPT_VERSION: u32 = 1;

const SYSTEM_PROMPT: &str = "You summarize research papers for researchers deciding whether to read them. \
    Answer with two or three plain sentences: the problem, the approach, the main result. No preamble.";

/// What to summarize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryRequest {
    pub arxiv_id: String,
    pub version: u32,
    pub title: String,
    pub abstract_text: String,
}

impl SummaryRequest {
    pub(crate) fn user_prompt(&self) -> String {
        format!("Title: {}\n\nAbstract: {}", self.title, self.abstract_text)
    }
}

/// A summary and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub text: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: u32,
    pub output_tokens: u32,
    pub cost_micro_usd: u64,
    /// Sentences picked from the abstract, not written by a model.
    pub extractive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("{provider}: request failed: {source}")]
    Http {
        provider: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{provider}: answered {status}: {body}")]
    Status {
        provider: &'static str,
        status: u16,
        body: String,
    },
    #[error("{provider}: answer did not decode: {detail}")]
    BadAnswer {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider}: no answer within {after:?}")]
    Timeout {
        provider: &'static str,
        after: std::time::Duration,
    },
    #[error("{provider}: circuit open")]
    CircuitOpen { provider: &'static str },
    #[error("{provider}: too many calls in flight")]
    Busy { provider: &'static str },
    #[error("{provider}: today's spending cap is reached")]
    BudgetExhausted { provider: &'static str },
    #[error("spend cap: {0}")]
    Budget(#[from] redis::RedisError),
    #[error("nothing to summarize")]
    Empty,
    #[error("every provider failed; last: {0}")]
    Exhausted(Box<LlmError>),
}

/// Something that writes summaries.
pub trait Summarizer: Send + Sync {
    /// Short name for metrics and the `summaries.provider` column.
    fn name(&self) -> &'static str;

    fn summarize(
        &self,
        request: &SummaryRequest,
    ) -> impl Future<Output = Result<Summary, LlmError>> + Send;
}
