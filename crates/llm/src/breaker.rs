//! Timeout, bulkhead and circuit breaker around a remote provider.
//!
//! [`Guarded`] bounds each call with a timeout (a timeout counts as a
//! failure) and the number of calls in flight (the bulkhead; a local
//! Ollama serves few at once), and runs it through a
//! [`resilience::Breaker`] named after the provider.

use std::{sync::Arc, time::Duration};

use resilience::Refused;
pub use resilience::{Breaker, BreakerState};
use tokio::sync::Semaphore;

use crate::{LlmError, Summarizer, Summary, SummaryRequest};

/// How a remote provider is guarded.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    pub timeout: Duration,
    pub max_in_flight: usize,
    /// How long a call may wait for a place in the bulkhead.
    pub queue_wait: Duration,
    pub failures_to_open: u32,
    pub open_for: Duration,
}

/// A provider behind breaker, timeout and bulkhead.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
    breaker: Breaker,
    bulkhead: Arc<Semaphore>,
}

impl<S: Summarizer> Guarded<S> {
    pub fn new(inner: S, guard: Guard) -> Self {
        Self {
            breaker: Breaker::new(inner.name(), guard.failures_to_open, guard.open_for),
            bulkhead: Arc::new(Semaphore::new(guard.max_in_flight.max(1))),
            inner,
            guard,
        }
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Summarizer> Summarizer for Guarded<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn summarize(&self, request: &SummaryRequest) -> Result<Summary, LlmError> {
        let provider = self.inner.name();
        let Ok(Ok(_place)) =
            tokio::time::timeout(self.guard.queue_wait, self.bulkhead.acquire()).await
        else {
            return Err(LlmError::Busy { provider });
        };
        let timeout = self.guard.timeout;
        let call = async {
            match tokio::time::timeout(timeout, self.inner.summarize(request)).await {
                Ok(result) => result,
                Err(_) => Err(LlmError::Timeout {
                    provider,
                    after: timeout,
                }),
            }
        };
        // Every failure of a model counts: none of them is the request's
        // fault that another provider would not share.
        self.breaker
            .call(call, |_| true)
            .await
            .map_err(|refused| match refused {
                Refused::Open => LlmError::CircuitOpen { provider },
                Refused::Failed(err) => err,
            })
    }
}
