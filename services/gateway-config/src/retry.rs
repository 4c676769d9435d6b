//! `[sources.NAME.retry]`: retries of the failures a fetcher calls retryable, within a budget.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::{Problems, parse_duration};

/// `[sources.NAME.retry]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait before a retry.
    pub backoff: Duration,
    /// Retries allowed, as a fraction of calls (0.1: one retry per ten calls).
    pub budget_percent: f32,
}

/// `[sources.NAME.retry]`: retry failures the source's fetcher calls retryable.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Attempts in all, the first included. Default 2.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Wait before a retry. Default "10ms". A retry that cannot finish inside the request's
    /// deadline is not made.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Retries allowed as a fraction of calls, so retries cannot multiply an outage. Default 0.1.
    #[serde(default)]
    pub budget_percent: Option<f32>,
}

/// Checks a source's retry settings.
pub(crate) fn retry_settings(
    raw: &RawRetry,
    at: &[&str],
    problems: &mut Problems,
) -> Option<RetryConfig> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let backoff = match raw.backoff.as_deref() {
        None => Duration::from_millis(10),
        Some(t) => parse_duration(t)
            .map_err(|msg| problems.add(&field("backoff"), msg))
            .ok()?,
    };
    let max_attempts = raw.max_attempts.unwrap_or(2);
    if max_attempts == 0 {
        problems.add(&field("max_attempts"), "must be at least 1");
        return None;
    }
    let budget_percent = raw.budget_percent.unwrap_or(0.1);
    if !(0.0..=10.0).contains(&budget_percent) {
        problems.add(&field("budget_percent"), "must be in [0, 10]");
        return None;
    }
    Some(RetryConfig {
        max_attempts,
        backoff,
        budget_percent,
    })
}
