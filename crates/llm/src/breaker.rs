//! Circuit breaker, timeout and bulkhead around a remote provider.
//!
//! The breaker is `failsafe`'s state machine, kept behind [`Breaker`] so
//! that it can be replaced: `failsafe` is unmaintained since 2024, lets
//! every call through while half-open, has no timeout of its own and reads
//! the std clock. [`Breaker`] adds the missing parts: while half-open only
//! one probe runs (others are refused as if open), and [`Guarded`] bounds
//! each call with a timeout (a timeout counts as a failure) and the number
//! of calls in flight (the bulkhead; a local Ollama serves few at once).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use std::collections::VecDeque;

use failsafe::{Config, StateMachine, failure_policy::FailurePolicy};
use tokio::sync::Semaphore;

use crate::{LlmError, Summarizer, Summary, SummaryRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// Records the state machine's transitions for us and for the gauge.
#[derive(Debug, Clone)]
struct StateRecorder {
    provider: &'static str,
    state: Arc<AtomicU8>,
}

impl StateRecorder {
    fn set(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::SeqCst);
        metrics::gauge!("llm_breaker_state", "provider" => self.provider)
            .set(f64::from(state as u8));
    }
}

impl failsafe::Instrument for StateRecorder {
    fn on_call_rejected(&self) {}

    fn on_open(&self) {
        tracing::warn!(provider = self.provider, "circuit opened");
        self.set(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        self.set(BreakerState::Closed);
    }
}

/// Opens when at least `share` of the recent calls failed (the last
/// `window`, once there are `min_calls` of them).
///
/// A dead provider fails every call and opens the breaker after
/// `min_calls`. A flaky one that still answers half the calls keeps it
/// closed: each failed call falls back on its own, and the fallback, which
/// costs money, is used only as much as the failures force. A breaker on
/// consecutive failures would open on a chance run of them and send every
/// call to the fallback for the whole open period.
#[derive(Debug, Clone)]
struct FailureShare {
    recent: VecDeque<bool>,
    window: usize,
    min_calls: usize,
    share: f64,
    open_for: Duration,
}

impl FailureShare {
    fn record(&mut self, failed: bool) {
        if self.recent.len() == self.window {
            self.recent.pop_front();
        }
        self.recent.push_back(failed);
    }
}

impl FailurePolicy for FailureShare {
    fn record_success(&mut self) {
        self.record(false);
    }

    fn mark_dead_on_failure(&mut self) -> Option<Duration> {
        self.record(true);
        let calls = self.recent.len();
        let failures = self.recent.iter().filter(|f| **f).count();
        (calls >= self.min_calls && failures as f64 >= self.share * calls as f64)
            .then_some(self.open_for)
    }

    fn revived(&mut self) {
        self.recent.clear();
    }
}

type Machine = StateMachine<FailureShare, StateRecorder>;

#[derive(Clone)]
pub struct Breaker {
    provider: &'static str,
    machine: Machine,
    state: Arc<AtomicU8>,
    probe: Arc<Semaphore>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("provider", &self.provider)
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    /// Opens once at least `failures` recent calls failed and they make 90%
    /// of the last 50; stays open `open_for`, then lets one probe decide.
    pub fn new(provider: &'static str, failures: u32, open_for: Duration) -> Self {
        let state = Arc::new(AtomicU8::new(BreakerState::Closed as u8));
        let recorder = StateRecorder {
            provider,
            state: state.clone(),
        };
        let policy = FailureShare {
            recent: VecDeque::new(),
            window: 50,
            min_calls: failures.max(1) as usize,
            share: 0.9,
            open_for,
        };
        let machine = Config::new()
            .failure_policy(policy)
            .instrument(recorder)
            .build();
        Self {
            provider,
            machine,
            state,
            probe: Arc::new(Semaphore::new(1)),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::SeqCst) {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// Run `call` if the breaker lets it, and record how it went.
    pub async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, LlmError>>,
    ) -> Result<T, LlmError> {
        if !self.machine.is_call_permitted() {
            return Err(LlmError::CircuitOpen {
                provider: self.provider,
            });
        }
        let _probe = if self.state() == BreakerState::HalfOpen {
            match self.probe.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return Err(LlmError::CircuitOpen {
                        provider: self.provider,
                    });
                }
            }
        } else {
            None
        };
        let result = call.await;
        match &result {
            Ok(_) => self.machine.on_success(),
            Err(_) => self.machine.on_error(),
        }
        result
    }
}

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
        self.breaker
            .call(async {
                match tokio::time::timeout(timeout, self.inner.summarize(request)).await {
                    Ok(result) => result,
                    Err(_) => Err(LlmError::Timeout {
                        provider,
                        after: timeout,
                    }),
                }
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Result<(), LlmError> {
        Err(LlmError::Empty)
    }

    #[tokio::test]
    async fn opens_after_failures_then_lets_one_probe_through() {
        let breaker = Breaker::new("test", 3, Duration::from_millis(100));
        for _ in 0..3 {
            let _ = breaker.call(async { fail() }).await;
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(matches!(
            breaker.call(async { Ok(()) }).await,
            Err(LlmError::CircuitOpen { .. })
        ));
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Half-open: the first call probes; a second one meanwhile is refused.
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let probing = {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                breaker
                    .call(async {
                        let _ = wait.await;
                        Ok(())
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(matches!(
            breaker.call(async { Ok(()) }).await,
            Err(LlmError::CircuitOpen { .. })
        ));
        let _ = release.send(());
        assert!(probing.await.expect("join").is_ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.call(async { Ok(()) }).await.is_ok());
    }
}
