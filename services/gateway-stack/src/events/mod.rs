//! Every metric and log line the stack emits, one file per layer (typed events: each function
//! writes the log line and updates the metrics; label values are bounded: names from the
//! configuration, outcomes and error classes, never entity keys). A leaf: it imports no layer.

pub mod breaker;
pub mod cache;
pub mod hedge;
pub mod source;

use std::time::Duration;

use metrics::counter;

/// Metric names of the stack, documented in the README.
pub mod names {
    /// Counter: shared cache tier lookups by source and outcome (hit, miss).
    pub const CACHE_SHARED_LOOKUPS: &str = "feature_gateway_cache_shared_lookups_total";
    /// Counter: shared cache tier commands that failed or timed out, by source and op (get,
    /// set, del).
    pub const CACHE_SHARED_ERRORS: &str = "feature_gateway_cache_shared_errors_total";
    /// Counter: webhook invalidations by source and event (published, publish_failed,
    /// received, applied, malformed, lost, subscribed).
    pub const CACHE_INVALIDATIONS: &str = "feature_gateway_cache_invalidations_total";
    /// Counter: source fetches by source and outcome (ok or an error class).
    pub const FETCHES: &str = "feature_gateway_source_fetches_total";
    /// Histogram: source fetch latency in seconds, by source and outcome.
    pub const FETCH_SECONDS: &str = "feature_gateway_source_fetch_duration_seconds";
    /// Counter: keys a source answered, by source and outcome (`found`, `not_found`).
    pub const SOURCE_KEYS: &str = "feature_gateway_source_keys_total";
    /// Gauge: calls in flight to a source (through its stack, retries included), by source.
    pub const FETCHES_IN_FLIGHT: &str = "feature_gateway_source_fetches_in_flight";
    /// Counter: failure log lines held back by the rate limit of repeated errors.
    pub const LOG_LINES_SUPPRESSED: &str = "feature_gateway_log_lines_suppressed_total";
    /// Gauge: 1 while a source's health check passes, 0 while it fails.
    pub const SOURCE_UP: &str = "feature_gateway_source_up";
    /// Gauge: a source's circuit: 0 closed, 1 open, 2 half-open.
    pub const CIRCUIT_STATE: &str = "feature_gateway_circuit_state";
    /// Counter: retries of failed source calls, by source.
    pub const RETRIES: &str = "feature_gateway_source_retries_total";
    /// Counter: retries refused because the source's retry budget was spent, by source.
    pub const RETRIES_REFUSED: &str = "feature_gateway_source_retries_refused_total";
    /// Counter: cache lookups by source and outcome (hit, miss).
    pub const CACHE_LOOKUPS: &str = "feature_gateway_cache_lookups_total";
    /// Counter: values served stale (past TTL, within max staleness) by source.
    pub const CACHE_STALE: &str = "feature_gateway_cache_stale_served_total";
    /// Counter: source calls that outlived their request's deadline and finished in the
    /// background to fill the cache, by source.
    pub const CACHE_BACKGROUND: &str = "feature_gateway_cache_background_calls_total";
    /// Counter: cache misses that joined a source call already in flight, by source.
    pub const CACHE_COALESCED: &str = "feature_gateway_cache_coalesced_total";
    /// Counter: background refreshes of hot entries nearing their TTL (refresh-ahead), by
    /// source.
    pub const CACHE_REFRESH_AHEAD: &str = "feature_gateway_cache_refresh_ahead_total";
    /// Counter: hedged (extra) attempts sent to a source, by source.
    pub const HEDGES: &str = "feature_gateway_source_hedges_total";
    /// Counter: calls a hedged attempt answered first, by source.
    pub const HEDGES_WON: &str = "feature_gateway_source_hedges_won_total";
    /// Counter: hedges not sent, by source and reason (budget: the hedge budget was spent;
    /// deadline: too little of the deadline was left).
    pub const HEDGES_SKIPPED: &str = "feature_gateway_source_hedges_skipped_total";
    /// Gauge: entries in a source's cache, by source (refreshed on each scrape).
    pub const CACHE_ENTRIES: &str = "feature_gateway_cache_entries";
    /// Gauge: a source's cache's estimated size in bytes, by source (refreshed on each scrape).
    pub const CACHE_BYTES: &str = "feature_gateway_cache_bytes";
    /// Counter: entries removed from a source's cache by source and cause (`size`: the memory
    /// bound; `expired`: past max staleness).
    pub const CACHE_EVICTIONS: &str = "feature_gateway_cache_evictions_total";
}

/// The latency histograms' buckets, in seconds: fine below 10 ms, where the gateway lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Lets one log line through per interval, counting the ones it holds back. Lock-free: two
/// atomics per (source, error class).
#[derive(Debug)]
pub struct LogLimit {
    interval_ms: u64,
    /// Milliseconds since [`process_start`] of the last line let through, plus one (0: never).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogLimit {
    /// A limit of one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimit {
            interval_ms: interval.as_millis() as u64,
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` if a line may be written now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(process_start().elapsed().as_millis() as u64 + 1)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last.load(Relaxed);
        if last != 0 && now_ms < last + self.interval_ms
            || self
                .last
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            counter!(names::LOG_LINES_SUPPRESSED).increment(1);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

/// A short, salted hash of an entity key for log lines: the same key gives the same hash within
/// one process, so repeated failures of one key can be told apart from many keys failing, and
/// the key itself (often personal data) never reaches a log.
pub fn key_hash(key: &fetcher_api::EntityKey) -> String {
    use sha2::{Digest, Sha256};
    static SALT: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    let salt = SALT.get_or_init(rand::random);
    let mut hasher = Sha256::new();
    hasher.update(salt);
    for part in key {
        match part {
            fetcher_api::KeyPart::Int64(i) => {
                hasher.update([0]);
                hasher.update(i.to_le_bytes());
            }
            fetcher_api::KeyPart::String(s) => {
                hasher.update([1]);
                hasher.update((s.len() as u64).to_le_bytes());
                hasher.update(s.as_bytes());
            }
        }
    }
    hex::encode(&hasher.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_are_logged_once_per_interval_with_the_count_held_back() {
        let limit = LogLimit::new(Duration::from_secs(5));
        assert_eq!(limit.admit_at(1), Some(0));
        assert_eq!(limit.admit_at(2), None);
        assert_eq!(limit.admit_at(4_999), None);
        assert_eq!(limit.admit_at(5_001), Some(2));
        assert_eq!(limit.admit_at(5_002), None);
        assert_eq!(limit.admit_at(20_000), Some(1));
    }

    #[test]
    fn key_hashes_are_stable_distinct_and_do_not_contain_the_key() {
        use fetcher_api::KeyPart;
        let a = vec![KeyPart::String("user_42".into())];
        let b = vec![KeyPart::String("user_43".into())];
        assert_eq!(key_hash(&a), key_hash(&a));
        assert_ne!(key_hash(&a), key_hash(&b));
        assert_ne!(
            key_hash(&[KeyPart::Int64(1)].to_vec()),
            key_hash(&[KeyPart::String("1".into())].to_vec())
        );
        assert_eq!(key_hash(&a).len(), 16);
    }
}
