//! The circuit breaker and retries, through the assembled stack.

use std::{sync::Arc, time::Duration};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Row};
use gateway_config::{BreakerConfig, RetryConfig};
use tokio::time::Instant;

use crate::source_stack;
use async_trait::async_trait;
use fetcher_api::{Fetcher, KeyPart};
use gateway_config::SourceConfig;
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

fn policy(breaker: Option<BreakerConfig>, retry: Option<RetryConfig>) -> SourceConfig {
    SourceConfig {
        timeout: None,
        max_concurrency: 16,
        cache: None,
        circuit_breaker: breaker,
        retry,
        hedge: None,
        ..SourceConfig::new("s", "test")
    }
}

fn breaker() -> BreakerConfig {
    BreakerConfig {
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
    let settings = RetryConfig {
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
    let settings = RetryConfig {
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

    // With time and budget to spare, a failure the fetcher calls non-retryable is tried once;
    // the same failure marked retryable is tried `max_attempts` times.
    let settings = RetryConfig {
        max_attempts: 5,
        backoff: Duration::from_millis(1),
        budget_percent: 1000.0,
    };
    for (retryable, calls) in [(false, 1), (true, 5)] {
        let failing = Arc::new(Failing {
            calls: AtomicUsize::new(0),
            error: FetchError::rejected("bad request").with_retryable(retryable),
        });
        let stack = source_stack(failing.clone(), &policy(None, Some(settings.clone())));
        let e = stack.oneshot(request()).await.unwrap_err();
        assert_eq!(
            (e.class(), e.retryable()),
            (ErrorClass::Rejected, retryable)
        );
        assert_eq!(failing.calls.load(Ordering::SeqCst), calls, "{e}");
    }
}

/// Fails every call with `error`.
#[derive(Debug)]
struct Failing {
    calls: AtomicUsize,
    error: FetchError,
}

#[async_trait]
impl Fetcher for Failing {
    async fn fetch(&self, _: FetchRequest) -> Result<Vec<Row>, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(self.error.clone())
    }
}
