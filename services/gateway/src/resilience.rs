//! Resilience layers of a source's stack: a circuit breaker, and retries under a budget.
//!
//! - [`CircuitBreakerLayer`]: after `consecutive_failures` failures in a row, or a failure rate
//!   of at least `failure_rate` over the last `window` calls (once `window` calls were seen),
//!   the circuit opens: calls fail at once with [`ErrorClass::CircuitOpen`] for `open_for`, so a
//!   dead source costs no time and no load. Then up to `half_open_probes` calls go through: a
//!   success closes the circuit, a failure opens it again. Refusals by the gateway's own
//!   bulkhead and requests the source rejected as such do not count as the source failing.
//! - [`RetryPolicy`] (for tower's `Retry`): a failure the fetcher classified as retryable is
//!   tried again, up to `max_attempts` in all, after `backoff`, only while the request's deadline
//!   leaves time for it, and only while the source's retry budget allows: retries are at most
//!   `budget_percent` of calls (tower's `TpsBudget`), so retries cannot multiply an outage.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Row};
use tokio::time::Instant;
use tower::{
    Layer, Service,
    retry::budget::{Budget, TpsBudget},
};

use crate::{stack::BoxFuture, telemetry::ResilienceMetrics};

/// `[sources.NAME.circuit_breaker]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerPolicy {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure rate over the window that opens the circuit.
    pub failure_rate: f64,
    /// Calls the failure rate is computed over.
    pub window: usize,
    /// How long the circuit stays open before probing.
    pub open_for: Duration,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
}

/// `[sources.NAME.retry]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before a retry.
    pub backoff: Duration,
    /// Retries allowed, as a fraction of calls (0.1: one retry per ten calls).
    pub budget_percent: f32,
}

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probes_left: u32 },
}

#[derive(Debug)]
struct Breaker {
    policy: BreakerPolicy,
    state: State,
    consecutive: u32,
    /// The last `window` outcomes, `true` for a failure.
    recent: VecDeque<bool>,
    metrics: ResilienceMetrics,
}

impl Breaker {
    /// Whether a call may go through now.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        match self.state {
            State::Closed => true,
            State::Open { until } if now < until => false,
            State::Open { .. } => {
                self.set(State::HalfOpen {
                    probes_left: self.policy.half_open_probes.saturating_sub(1),
                });
                true
            }
            State::HalfOpen { probes_left: 0 } => false,
            State::HalfOpen { probes_left } => {
                self.state = State::HalfOpen {
                    probes_left: probes_left - 1,
                };
                true
            }
        }
    }

    fn record(&mut self, failed: bool) {
        if let State::HalfOpen { .. } = self.state {
            if failed {
                self.open();
            } else {
                self.recent.clear();
                self.consecutive = 0;
                self.set(State::Closed);
            }
            return;
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        self.recent.push_back(failed);
        if self.recent.len() > self.policy.window {
            self.recent.pop_front();
        }
        let failures = self.recent.iter().filter(|f| **f).count();
        let rate_exceeded = self.recent.len() >= self.policy.window
            && failures as f64 >= self.policy.failure_rate * self.recent.len() as f64;
        if self.consecutive >= self.policy.consecutive_failures || rate_exceeded {
            self.open();
        }
    }

    fn open(&mut self) {
        self.recent.clear();
        self.consecutive = 0;
        self.set(State::Open {
            until: Instant::now() + self.policy.open_for,
        });
    }

    fn set(&mut self, state: State) {
        self.metrics.circuit(match state {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        });
        self.state = state;
    }
}

/// Whether an error says the source is unwell (as opposed to our own refusal, or a request the
/// source rejected as such).
fn counts_as_failure(e: &FetchError) -> bool {
    !matches!(
        e.class(),
        ErrorClass::Overloaded | ErrorClass::Rejected | ErrorClass::CircuitOpen
    )
}

/// Opens a source's circuit while it keeps failing.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    breaker: Option<Arc<Mutex<Breaker>>>,
}

impl CircuitBreakerLayer {
    /// A breaker with `policy`; with `None`, a pass-through.
    pub fn new(policy: Option<&BreakerPolicy>, source: &str) -> Self {
        CircuitBreakerLayer {
            breaker: policy.map(|policy| {
                let metrics = ResilienceMetrics::new(source);
                metrics.circuit(0);
                Arc::new(Mutex::new(Breaker {
                    policy: policy.clone(),
                    state: State::Closed,
                    consecutive: 0,
                    recent: VecDeque::with_capacity(policy.window + 1),
                    metrics,
                }))
            }),
        }
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// See [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S> {
    inner: S,
    breaker: Option<Arc<Mutex<Breaker>>>,
}

impl<S> Service<FetchRequest> for CircuitBreaker<S>
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError>,
    S::Future: Send + 'static,
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = BoxFuture<Result<Vec<Row>, FetchError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        let Some(breaker) = self.breaker.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let admitted = breaker.lock().map(|mut b| b.admit()).unwrap_or(true);
        if !admitted {
            return Box::pin(async {
                Err(FetchError::new(
                    ErrorClass::CircuitOpen,
                    "the source's circuit is open after repeated failures",
                ))
            });
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            if let Ok(mut b) = breaker.lock() {
                b.record(result.as_ref().err().is_some_and(counts_as_failure));
            }
            result
        })
    }
}

/// Retries retryable failures within the deadline and the source's budget (tower's `Retry`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    settings: Arc<RetrySettings>,
    budget: Arc<TpsBudget>,
    metrics: ResilienceMetrics,
    /// Attempts made by the call this copy of the policy serves.
    attempts: u32,
}

impl RetryPolicy {
    /// The policy of a source.
    pub fn new(settings: &RetrySettings, source: &str) -> Self {
        RetryPolicy {
            settings: Arc::new(settings.clone()),
            // Deposits live 10 s; no floor of retries per second: with no traffic, no retries.
            budget: Arc::new(TpsBudget::new(
                Duration::from_secs(10),
                0,
                settings.budget_percent,
            )),
            metrics: ResilienceMetrics::new(source),
            attempts: 0,
        }
    }
}

impl tower::retry::Policy<FetchRequest, Vec<Row>, FetchError> for RetryPolicy {
    type Future = Pin<Box<tokio::time::Sleep>>;

    fn retry(
        &mut self,
        request: &mut FetchRequest,
        result: &mut Result<Vec<Row>, FetchError>,
    ) -> Option<Self::Future> {
        let Err(error) = result else { return None };
        if !error.retryable() || self.attempts >= self.settings.max_attempts {
            return None;
        }
        // Only if the retry can still answer inside the deadline.
        if request
            .deadline
            .is_some_and(|d| Instant::now() + self.settings.backoff >= d)
        {
            return None;
        }
        if !self.budget.withdraw() {
            self.metrics.retry_refused();
            tracing::debug!(
                class = error.class().as_str(),
                "retry refused: budget spent"
            );
            return None;
        }
        self.metrics.retried();
        // On the source call's span: how many retries this call made so far.
        tracing::Span::current().record("retries", self.attempts);
        tracing::debug!(
            attempt = self.attempts + 1,
            class = error.class().as_str(),
            "retrying"
        );
        Some(Box::pin(tokio::time::sleep(self.settings.backoff)))
    }

    fn clone_request(&mut self, request: &FetchRequest) -> Option<FetchRequest> {
        // Called once per attempt: the first one pays into the budget.
        if self.attempts == 0 {
            self.budget.deposit();
        }
        self.attempts += 1;
        Some(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{SourcePolicy, source_stack};
    use async_trait::async_trait;
    use fetcher_api::{Fetcher, KeyPart};
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// Fails the first `fail_first` calls (retryably), then answers.
    #[derive(Debug, Default)]
    struct Flaky {
        calls: AtomicUsize,
        fail_first: AtomicU32,
    }

    #[async_trait]
    impl Fetcher for Flaky {
        async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let failing = self
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(FetchError::unavailable("flaky"));
            }
            Ok(request.keys.iter().map(|_| Row::NotFound).collect())
        }
    }

    fn request() -> FetchRequest {
        FetchRequest {
            view: "v".into(),
            features: vec!["f".to_owned()].into(),
            keys: vec![vec![KeyPart::Int64(1)]],
            deadline: Some(Instant::now() + Duration::from_secs(1)),
        }
    }

    fn policy(breaker: Option<BreakerPolicy>, retry: Option<RetrySettings>) -> SourcePolicy {
        SourcePolicy {
            name: "s".into(),
            kind: "test".into(),
            timeout: None,
            max_concurrency: 16,
            cache: None,
            circuit_breaker: breaker,
            retry,
            hedge: None,
        }
    }

    fn breaker() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: 10,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_probes_and_closes() {
        let flaky = Arc::new(Flaky::default());
        flaky.fail_first.store(4, Ordering::SeqCst);
        let stack = source_stack(flaky.clone(), &policy(Some(breaker()), None));
        for _ in 0..3 {
            let e = stack.clone().oneshot(request()).await.unwrap_err();
            assert_eq!(e.class(), ErrorClass::Unavailable);
        }
        // Open: refused at once, the source not called.
        let e = stack.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::CircuitOpen);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);

        // Half-open after `open_for`: the probe fails (4th failure), so open again.
        tokio::time::advance(Duration::from_secs(5)).await;
        let e = stack.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Unavailable);
        let e = stack.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::CircuitOpen);

        // The next probe succeeds: closed, calls flow.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(stack.clone().oneshot(request()).await.is_ok());
        assert!(stack.clone().oneshot(request()).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_rate_over_the_window_opens_the_circuit() {
        // Alternate failures and successes: never 3 in a row, but half of the window.
        #[derive(Debug, Default)]
        struct Alternating(AtomicUsize);
        #[async_trait]
        impl Fetcher for Alternating {
            async fn fetch(&self, r: FetchRequest) -> Result<Vec<Row>, FetchError> {
                if self.0.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    Err(FetchError::timeout("slow"))
                } else {
                    Ok(r.keys.iter().map(|_| Row::NotFound).collect())
                }
            }
        }
        let source = Arc::new(Alternating::default());
        let stack = source_stack(source.clone(), &policy(Some(breaker()), None));
        for _ in 0..10 {
            let _ = stack.clone().oneshot(request()).await;
        }
        let e = stack.clone().oneshot(request()).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::CircuitOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_retried_within_the_budget() {
        let settings = RetrySettings {
            max_attempts: 3,
            backoff: Duration::from_millis(5),
            budget_percent: 0.2,
        };
        // Calls that succeed pay into the budget; then a call failing twice is retried to success.
        let flaky = Arc::new(Flaky::default());
        let stack = source_stack(flaky.clone(), &policy(None, Some(settings.clone())));
        for _ in 0..20 {
            assert!(stack.clone().oneshot(request()).await.is_ok());
        }
        flaky.fail_first.store(2, Ordering::SeqCst);
        assert!(stack.clone().oneshot(request()).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 23);

        // A source that always fails: 100 calls make about 20% retries, not 200% more calls.
        let down = Arc::new(Flaky::default());
        down.fail_first.store(u32::MAX, Ordering::SeqCst);
        let stack = source_stack(down.clone(), &policy(None, Some(settings)));
        for _ in 0..100 {
            let e = stack.clone().oneshot(request()).await.unwrap_err();
            assert_eq!(e.class(), ErrorClass::Unavailable);
        }
        let calls = down.calls.load(Ordering::SeqCst);
        assert!(
            (100..=125).contains(&calls),
            "{calls} upstream calls for 100 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_past_the_deadline_or_for_non_retryable_errors() {
        let settings = RetrySettings {
            max_attempts: 5,
            backoff: Duration::from_millis(500),
            budget_percent: 1000.0,
        };
        let down = Arc::new(Flaky::default());
        down.fail_first.store(u32::MAX, Ordering::SeqCst);
        let stack = source_stack(down.clone(), &policy(None, Some(settings)));
        let mut r = request();
        r.deadline = Some(Instant::now() + Duration::from_millis(100));
        assert!(stack.clone().oneshot(r).await.is_err());
        // A 500 ms backoff does not fit a 100 ms deadline: one call only.
        assert_eq!(down.calls.load(Ordering::SeqCst), 1);
    }
}
