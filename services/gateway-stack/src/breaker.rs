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
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Row};
use futures::future::{Either, Ready, ready};
use tokio::time::Instant;
use tower::{Layer, Service};

use gateway_config::BreakerConfig;

use crate::events::breaker::ResilienceMetrics;

#[derive(Debug)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probes_left: u32 },
}

#[derive(Debug)]
struct Breaker {
    policy: BreakerConfig,
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
    pub fn new(policy: Option<&BreakerConfig>, source: &str) -> Self {
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
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = Either<BreakerFuture<S::Future>, Ready<Result<Vec<Row>, FetchError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        // Without a policy, a pass-through: nothing is locked or recorded.
        let breaker = self.breaker.clone();
        let admitted = breaker
            .as_ref()
            .is_none_or(|b| b.lock().map(|mut b| b.admit()).unwrap_or(true));
        if !admitted {
            return Either::Right(ready(Err(FetchError::new(
                ErrorClass::CircuitOpen,
                "the source's circuit is open after repeated failures",
            ))));
        }
        Either::Left(BreakerFuture {
            call: self.inner.call(request),
            breaker,
        })
    }
}

pin_project_lite::pin_project! {
    /// The future of an admitted [`CircuitBreaker`] call: its outcome recorded by the breaker,
    /// if there is one, when it finishes.
    pub struct BreakerFuture<F> {
        #[pin]
        call: F,
        breaker: Option<Arc<Mutex<Breaker>>>,
    }
}

impl<F> Future for BreakerFuture<F>
where
    F: Future<Output = Result<Vec<Row>, FetchError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        if let Some(Ok(mut b)) = this.breaker.as_ref().map(|b| b.lock()) {
            b.record(result.as_ref().err().is_some_and(counts_as_failure));
        }
        Poll::Ready(result)
    }
}
