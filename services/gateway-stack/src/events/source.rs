//! A source's fetches: outcome and latency per call, keys answered, calls in flight, health.

use std::{sync::Arc, time::Duration};

use fetcher_api::{ErrorClass, FetchError};
use metrics::{Counter, Histogram, counter, gauge, histogram};

use super::{LogLimit, key_hash, names};

/// The metric handles of one source, registered once so a fetch records without allocating
/// or hashing label sets, and the rate limit of its failure log lines.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    source: Arc<str>,
    /// Index 0: `ok`; index 1 + class: that error class.
    outcomes: Arc<[(Counter, Histogram)]>,
    in_flight: metrics::Gauge,
    found: Counter,
    not_found: Counter,
    /// One per error class.
    log_limits: Arc<[LogLimit]>,
}

/// At most one failure line per source and error class per this interval; the next line says
/// how many were held back.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl SourceMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: Arc<str>) -> Self {
        let outcome = |name: &'static str| {
            (
                counter!(names::FETCHES, "source" => source.to_string(), "outcome" => name),
                histogram!(names::FETCH_SECONDS, "source" => source.to_string(), "outcome" => name),
            )
        };
        let outcomes = std::iter::once(outcome("ok"))
            .chain(ErrorClass::ALL.iter().map(|c| outcome(c.as_str())))
            .collect();
        SourceMetrics {
            in_flight: gauge!(names::FETCHES_IN_FLIGHT, "source" => source.to_string()),
            found: counter!(names::SOURCE_KEYS, "source" => source.to_string(), "outcome" => "found"),
            not_found: counter!(names::SOURCE_KEYS, "source" => source.to_string(), "outcome" => "not_found"),
            log_limits: ErrorClass::ALL
                .iter()
                .map(|_| LogLimit::new(FAILURE_LOG_INTERVAL))
                .collect(),
            source,
            outcomes,
        }
    }

    /// The source's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A call to the source starts; it counts as in flight until the guard is dropped (when
    /// it finishes, or when its caller gives up on it).
    pub fn fetch_started(&self) -> InFlight {
        self.in_flight.increment(1.0);
        InFlight(self.in_flight.clone())
    }

    /// A fetch answered `found` keys with a row and `not_found` without.
    pub fn keys_answered(&self, found: usize, not_found: usize) {
        self.found.increment(found as u64);
        if not_found > 0 {
            self.not_found.increment(not_found as u64);
        }
    }

    /// A fetch of `keys` keys from `view` finished. A failure is logged with its class and the
    /// hash of its first key, at most once per [`FAILURE_LOG_INTERVAL`] per class.
    pub fn fetch_finished(
        &self,
        view: &str,
        keys: usize,
        first_key: Option<&fetcher_api::EntityKey>,
        elapsed: Duration,
        error: Option<&FetchError>,
    ) {
        let (count, seconds) = &self.outcomes[error.map_or(0, |e| 1 + e.class() as usize)];
        count.increment(1);
        seconds.record(elapsed.as_secs_f64());
        let Some(e) = error else { return };
        let Some(suppressed) = self.log_limits[e.class() as usize].admit() else {
            return;
        };
        tracing::warn!(
            source = &*self.source,
            view,
            keys,
            key_hash = first_key.map(key_hash).unwrap_or_default(),
            class = e.class().as_str(),
            retryable = e.retryable(),
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            suppressed,
            "fetch failed: {}",
            e.message()
        );
    }
}

/// A call in flight to a source; see [`SourceMetrics::fetch_started`].
#[derive(Debug)]
pub struct InFlight(metrics::Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A source's health check changed state.
pub fn source_health(source: &str, up: bool, error: Option<&FetchError>) {
    gauge!(names::SOURCE_UP, "source" => source.to_owned()).set(if up { 1.0 } else { 0.0 });
    match error {
        Some(e) => tracing::warn!(source, "source health check failed: {e}"),
        None => tracing::info!(source, "source health check passes"),
    }
}
