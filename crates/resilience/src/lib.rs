//! # resilience: circuit breakers around the services we call
//!
//! Owns [`Breaker`], shared by the summarizer's LLM providers and the
//! notifier's delivery channels. It is `failsafe`'s state machine, kept
//! behind our own type so that it can be replaced: `failsafe` is
//! unmaintained since 2024, lets every call through while half-open and
//! reads the std clock. [`Breaker`] adds what is missing: while half-open
//! only one probe runs (others are refused as if open), callers decide
//! which errors say the remote is unwell (a rejected address does not),
//! and a caller that would rather wait than fail can wait for the breaker
//! to let it through.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use failsafe::{Config, StateMachine, failure_policy::FailurePolicy};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

/// What [`Breaker::call`] returns when the call did not run or failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<E> {
    /// The breaker is open (or half-open with its probe already out).
    Open,
    /// The call ran and failed.
    Failed(E),
}

/// Records the state machine's transitions for us and for the gauge.
#[derive(Debug, Clone)]
struct StateRecorder {
    name: &'static str,
    state: Arc<AtomicU8>,
}

impl StateRecorder {
    fn set(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::SeqCst);
        metrics::gauge!("breaker_state", "breaker" => self.name).set(f64::from(state as u8));
    }
}

impl failsafe::Instrument for StateRecorder {
    fn on_call_rejected(&self) {
        metrics::counter!("breaker_rejected_total", "breaker" => self.name).increment(1);
    }

    fn on_open(&self) {
        tracing::warn!(breaker = self.name, "circuit opened");
        metrics::counter!("breaker_opened_total", "breaker" => self.name).increment(1);
        self.set(BreakerState::Open);
    }

    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen);
    }

    fn on_closed(&self) {
        tracing::info!(breaker = self.name, "circuit closed");
        self.set(BreakerState::Closed);
    }
}

/// Opens when at least `share` of the recent calls failed (the last
/// `window`, once there are `min_calls` of them).
///
/// A dead remote fails every call and opens the breaker after `min_calls`.
/// A flaky one that still answers half the calls keeps it closed: each
/// failed call is retried or falls back on its own. A breaker on
/// consecutive failures would open on a chance run of them and refuse
/// every call for the whole open period.
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

/// A circuit breaker, cheap to clone (clones share the state). Its state
/// is exported as the gauge `breaker_state{breaker}` (0 closed, 1
/// half-open, 2 open).
#[derive(Clone)]
pub struct Breaker {
    name: &'static str,
    machine: Machine,
    state: Arc<AtomicU8>,
    probe: Arc<Semaphore>,
    open_for: Duration,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish()
    }
}

impl Breaker {
    /// Opens once at least `failures` recent calls failed and they make 90%
    /// of the last 50; stays open `open_for`, then lets one probe decide.
    pub fn new(name: &'static str, failures: u32, open_for: Duration) -> Self {
        let state = Arc::new(AtomicU8::new(BreakerState::Closed as u8));
        let recorder = StateRecorder {
            name,
            state: state.clone(),
        };
        recorder.set(BreakerState::Closed);
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
            name,
            machine,
            state,
            probe: Arc::new(Semaphore::new(1)),
            open_for,
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::SeqCst) {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }

    /// Run `call` if the breaker lets it, and record how it went: errors
    /// for which `counts` is false (the remote answered, and said no) are
    /// recorded as successes.
    pub async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        counts: impl FnOnce(&E) -> bool,
    ) -> Result<T, Refused<E>> {
        if !self.machine.is_call_permitted() {
            return Err(Refused::Open);
        }
        let _probe = if self.state() == BreakerState::HalfOpen {
            match self.probe.try_acquire() {
                Ok(permit) => Some(permit),
                Err(_) => return Err(Refused::Open),
            }
        } else {
            None
        };
        match call.await {
            Ok(value) => {
                self.machine.on_success();
                Ok(value)
            }
            Err(err) => {
                if counts(&err) {
                    self.machine.on_error();
                } else {
                    self.machine.on_success();
                }
                Err(Refused::Failed(err))
            }
        }
    }

    /// Run `call` through the breaker, waiting while it is open instead of
    /// failing: for work that must be done eventually and loses nothing by
    /// waiting (a delivery during a mail server outage). Returns `None`
    /// when `shutdown` fires first.
    pub async fn call_waiting<T, E, F, Fut>(
        &self,
        mut call: F,
        counts: impl Fn(&E) -> bool,
        shutdown: &CancellationToken,
    ) -> Option<Result<T, E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Polling is how failsafe can be asked; a tenth of the open period
        // (within bounds) finds the half-open window soon after it starts.
        let poll = (self.open_for / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            // `call` is only invoked once the breaker lets the call run.
            match self.call(async { call().await }, &counts).await {
                Ok(value) => return Some(Ok(value)),
                Err(Refused::Failed(err)) => return Some(Err(err)),
                Err(Refused::Open) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(poll) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(breaker: &Breaker) {
        let _ = breaker.call(async { Err::<(), _>("down") }, |_| true).await;
    }

    #[tokio::test]
    async fn opens_after_failures_then_lets_one_probe_through() {
        let breaker = Breaker::new("test", 3, Duration::from_millis(100));
        for _ in 0..3 {
            fail(&breaker).await;
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.call(async { Ok::<_, ()>(()) }, |_| true).await,
            Err(Refused::Open)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Half-open: the first call probes; a second one meanwhile is refused.
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let probing = {
            let breaker = breaker.clone();
            tokio::spawn(async move {
                breaker
                    .call(
                        async {
                            let _ = wait.await;
                            Ok::<_, ()>(())
                        },
                        |_| true,
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(
            breaker.call(async { Ok::<_, ()>(()) }, |_| true).await,
            Err(Refused::Open)
        );
        let _ = release.send(());
        assert!(probing.await.expect("join").is_ok());
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn answers_that_say_no_do_not_open_it() {
        let breaker = Breaker::new("test", 3, Duration::from_secs(60));
        for _ in 0..10 {
            let result = breaker
                .call(async { Err::<(), _>("550 no such mailbox") }, |_| false)
                .await;
            assert_eq!(result, Err(Refused::Failed("550 no such mailbox")));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn waiting_callers_go_through_once_it_closes() {
        let breaker = Breaker::new("test", 2, Duration::from_millis(200));
        fail(&breaker).await;
        fail(&breaker).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        let shutdown = CancellationToken::new();
        let started = std::time::Instant::now();
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let result = breaker
            .call_waiting(
                || {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, ()>("sent") }
                },
                |_| true,
                &shutdown,
            )
            .await;
        assert_eq!(result, Some(Ok("sent")));
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "no call while open");

        let breaker = Breaker::new("test", 2, Duration::from_secs(60));
        fail(&breaker).await;
        fail(&breaker).await;
        shutdown.cancel();
        let result = breaker
            .call_waiting(|| async { Ok::<_, ()>(()) }, |_| true, &shutdown)
            .await;
        assert_eq!(result, None, "shutdown ends the wait");
    }
}
