//! Retries (tower's `Retry` with [`RetryPolicy`]): a failure the fetcher classified as retryable
//! is tried again, up to `max_attempts` in all, after `backoff`, only while the request's
//! deadline leaves time for it, and only while the source's retry budget allows: retries are at
//! most `budget_percent` of calls (tower's `TpsBudget`), so retries cannot multiply an outage.

use std::{pin::Pin, sync::Arc, time::Duration};

use fetcher_api::{FetchError, FetchRequest, Row};
use gateway_config::RetryConfig;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};

use crate::events::breaker::ResilienceMetrics;

/// Retries retryable failures within the deadline and the source's budget (tower's `Retry`).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    settings: Arc<RetryConfig>,
    budget: Arc<TpsBudget>,
    metrics: ResilienceMetrics,
    /// Attempts made by the call this copy of the policy serves.
    attempts: u32,
}

impl RetryPolicy {
    /// The policy of a source.
    pub fn new(settings: &RetryConfig, source: &str) -> Self {
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
