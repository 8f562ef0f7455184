//! The fallback chain: providers tried in a configured order.

use redis::cluster_async::ClusterConnection;

use crate::{
    LlmError, Summarizer, Summary, SummaryRequest, breaker::Guarded, budget::SpendCap,
    extractive::Extractive, ollama::Ollama, openai::OpenAi,
};

/// One link of the chain.
#[derive(Debug, Clone)]
pub enum Provider {
    Ollama(Guarded<Ollama>),
    /// Skipped once today's budget is spent.
    OpenAi(Guarded<OpenAi>, SpendCap<ClusterConnection>),
    Extractive(Extractive),
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Ollama(p) => p.name(),
            Self::OpenAi(p, _) => p.name(),
            Self::Extractive(p) => p.name(),
        }
    }

    async fn summarize(&self, request: &SummaryRequest) -> Result<Summary, LlmError> {
        match self {
            Self::Ollama(ollama) => ollama.summarize(request).await,
            Self::Extractive(extractive) => extractive.summarize(request).await,
            Self::OpenAi(openai, cap) => {
                let worst = openai.inner().worst_case_tokens(request);
                let Some(reservation) = cap.reserve(worst).await? else {
                    return Err(LlmError::BudgetExhausted { provider: "openai" });
                };
                let result = openai.summarize(request).await;
                let used = result
                    .as_ref()
                    .map(|s| u64::from(s.input_tokens) + u64::from(s.output_tokens))
                    // A failed call may still have been billed; keep the reservation.
                    .unwrap_or(worst);
                if let Err(err) = cap.settle(reservation, used).await {
                    tracing::warn!(%err, "could not return unused OpenAI budget");
                }
                result
            }
        }
    }
}

/// Providers in order; the first that answers wins.
#[derive(Debug, Clone)]
pub struct Chain {
    providers: Vec<Provider>,
}

impl Chain {
    pub fn new(providers: Vec<Provider>) -> Self {
        for pair in providers.windows(2) {
            metrics::counter!("llm_fallbacks_total", "from" => pair[0].name(), "to" => pair[1].name())
                .increment(0);
        }
        Self { providers }
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    pub async fn summarize(&self, request: &SummaryRequest) -> Result<Summary, LlmError> {
        let mut last = LlmError::Empty;
        for (i, provider) in self.providers.iter().enumerate() {
            let started = std::time::Instant::now();
            let result = provider.summarize(request).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(LlmError::CircuitOpen { .. }) => "circuit_open",
                Err(LlmError::BudgetExhausted { .. }) => "budget_exhausted",
                Err(LlmError::Busy { .. }) => "busy",
                Err(LlmError::Timeout { .. }) => "timeout",
                Err(_) => "error",
            };
            metrics::counter!("llm_calls_total", "provider" => provider.name(), "outcome" => outcome).increment(1);
            metrics::histogram!("llm_call_seconds", "provider" => provider.name())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(summary) => {
                    metrics::counter!("llm_tokens_total", "provider" => provider.name(), "kind" => "input")
                        .increment(u64::from(summary.input_tokens));
                    metrics::counter!("llm_tokens_total", "provider" => provider.name(), "kind" => "output")
                        .increment(u64::from(summary.output_tokens));
                    metrics::counter!("llm_spend_micro_usd_total", "provider" => provider.name())
                        .increment(summary.cost_micro_usd);
                    return Ok(summary);
                }
                Err(err) => {
                    if let Some(next) = self.providers.get(i + 1) {
                        tracing::debug!(from = provider.name(), to = next.name(), %err, "falling back");
                        metrics::counter!("llm_fallbacks_total", "from" => provider.name(), "to" => next.name())
                            .increment(1);
                    }
                    last = err;
                }
            }
        }
        Err(LlmError::Exhausted(Box::new(last)))
    }
}
