//! Every metric and log line the gateway emits about its work, in one place.
//!
//! Each function is one typed event: it writes the log line (lowercase, no trailing period,
//! fields as key=value) and updates the metrics. Label values are bounded: names from the
//! configuration, gRPC codes, statuses and error classes; never entity keys.

use std::{sync::Arc, time::Duration};

use fetcher_api::{ErrorClass, FetchError};
use metrics::{Counter, Histogram, counter, gauge, histogram};

use crate::executor::Status;

/// Metric names, documented in the README.
pub mod names {
    /// Counter: gRPC requests by method, feature_service and code.
    pub const REQUESTS: &str = "feature_gateway_requests_total";
    /// Histogram: gRPC request latency in seconds, by method, feature_service and code.
    pub const REQUEST_SECONDS: &str = "feature_gateway_request_duration_seconds";
    /// Counter: served features by feature_service and status.
    pub const FEATURES: &str = "feature_gateway_features_served_total";
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
    /// Counter: calls refused before any work by authentication, by reason
    /// (`unauthenticated`, `rate_limited`, `permission_denied`).
    pub const REQUESTS_REFUSED: &str = "feature_gateway_requests_refused_total";
    /// Gauge: 1, labelled with the version and the configuration's hash.
    pub const BUILD_INFO: &str = "feature_gateway_build_info";
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
    /// Counter: feature requests refused with RESOURCE_EXHAUSTED because the gateway was
    /// saturated (load shedding), by method.
    pub const REQUESTS_SHED: &str = "feature_gateway_requests_shed_total";
    /// Gauge: feature requests in flight (admitted by load shedding).
    pub const REQUESTS_IN_FLIGHT: &str = "feature_gateway_requests_in_flight";
    /// Gauge: entries in a source's cache, by source (refreshed on each scrape).
    pub const CACHE_ENTRIES: &str = "feature_gateway_cache_entries";
    /// Gauge: a source's cache's estimated size in bytes, by source (refreshed on each scrape).
    pub const CACHE_BYTES: &str = "feature_gateway_cache_bytes";
    /// Counter: entries removed from a source's cache by source and cause (`size`: the memory
    /// bound; `expired`: past max staleness).
    pub const CACHE_EVICTIONS: &str = "feature_gateway_cache_evictions_total";
    /// Gauge: records waiting in the training log's in-memory queue.
    pub const TRAINING_LOG_QUEUE: &str = "feature_gateway_training_log_queue_depth";
    /// Counter: records committed to training log files, by feature_service.
    pub const TRAINING_LOG_WRITTEN: &str = "feature_gateway_training_log_records_written_total";
    /// Counter: records appended to the training log's spool, by reason (queue_full,
    /// sink_error, sink_down, closing).
    pub const TRAINING_LOG_SPOOLED: &str = "feature_gateway_training_log_records_spooled_total";
    /// Counter: records replayed from the spool into the log files.
    pub const TRAINING_LOG_REPLAYED: &str = "feature_gateway_training_log_records_replayed_total";
    /// Counter: records that could not be kept, by reason (spool_full, spool_error,
    /// spool_corrupt).
    pub const TRAINING_LOG_DROPPED: &str = "feature_gateway_training_log_records_dropped_total";
    /// Gauge: 1 while the training log's file sink works, 0 while it fails.
    pub const TRAINING_LOG_SINK_UP: &str = "feature_gateway_training_log_sink_up";
}

/// The latency histograms' buckets, in seconds: fine below 10 ms, where the gateway lives.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The gateway started with a configuration.
pub fn started(config_hash: &str) {
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "config_hash" => config_hash.to_owned())
        .set(1.0);
}

/// The circuit-breaker and retry metric handles of one source.
#[derive(Clone, Debug)]
pub struct ResilienceMetrics {
    source: Arc<str>,
    circuit: metrics::Gauge,
    retries: Counter,
    refused: Counter,
}

impl ResilienceMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: &str) -> Self {
        ResilienceMetrics {
            source: source.into(),
            circuit: gauge!(names::CIRCUIT_STATE, "source" => source.to_owned()),
            retries: counter!(names::RETRIES, "source" => source.to_owned()),
            refused: counter!(names::RETRIES_REFUSED, "source" => source.to_owned()),
        }
    }

    /// The circuit changed state (0 closed, 1 open, 2 half-open).
    pub fn circuit(&self, state: u8) {
        self.circuit.set(f64::from(state));
        match state {
            1 => tracing::warn!(source = &*self.source, "circuit opened"),
            2 => tracing::info!(source = &*self.source, "circuit half-open: probing"),
            _ => tracing::debug!(source = &*self.source, "circuit closed"),
        }
    }

    /// A failed call is retried.
    pub fn retried(&self) {
        self.retries.increment(1);
    }

    /// A retry was refused by the budget.
    pub fn retry_refused(&self) {
        self.refused.increment(1);
    }
}

/// The hedging metric handles of one source.
#[derive(Clone, Debug)]
pub struct HedgeMetrics {
    sent: Counter,
    won: Counter,
    refused: Counter,
    late: Counter,
}

impl HedgeMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: &str) -> Self {
        HedgeMetrics {
            sent: counter!(names::HEDGES, "source" => source.to_owned()),
            won: counter!(names::HEDGES_WON, "source" => source.to_owned()),
            refused: counter!(names::HEDGES_SKIPPED, "source" => source.to_owned(), "reason" => "budget"),
            late: counter!(names::HEDGES_SKIPPED, "source" => source.to_owned(), "reason" => "deadline"),
        }
    }

    /// A hedged attempt was sent.
    pub fn sent(&self) {
        self.sent.increment(1);
    }

    /// A hedged attempt answered first.
    pub fn won(&self) {
        self.won.increment(1);
    }

    /// A hedge was not sent: the budget was spent.
    pub fn refused(&self) {
        self.refused.increment(1);
    }

    /// A hedge was not sent: too little of the deadline was left.
    pub fn skipped_deadline(&self) {
        self.late.increment(1);
    }
}

/// The load-shedding metric handles, registered once.
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    shed: [Counter; 2],
    in_flight: metrics::Gauge,
}

impl AdmissionMetrics {
    /// Registers the handles.
    pub fn new() -> Self {
        AdmissionMetrics {
            shed: METHODS.map(|method| counter!(names::REQUESTS_SHED, "method" => method)),
            in_flight: gauge!(names::REQUESTS_IN_FLIGHT),
        }
    }

    /// A request of `method` (a [`METHODS`] index) was refused: the gateway is saturated.
    pub fn shed(&self, method: usize, limit: usize) {
        self.shed[method].increment(1);
        tracing::debug!(
            method = METHODS[method],
            limit,
            "request shed: too many in flight"
        );
    }

    /// The requests in flight are now `n`.
    pub fn in_flight(&self, n: usize) {
        self.in_flight.set(n as f64);
    }
}

impl Default for AdmissionMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The cache metric handles of one source.
#[derive(Clone, Debug)]
pub struct CacheMetrics {
    evicted_size: Counter,
    evicted_expired: Counter,
    hits: Counter,
    misses: Counter,
    stale: Counter,
    background: Counter,
    coalesced: Counter,
    refresh_ahead: Counter,
}

impl CacheMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: &str) -> Self {
        CacheMetrics {
            evicted_size: counter!(names::CACHE_EVICTIONS, "source" => source.to_owned(), "cause" => "size"),
            evicted_expired: counter!(names::CACHE_EVICTIONS, "source" => source.to_owned(), "cause" => "expired"),
            hits: counter!(names::CACHE_LOOKUPS, "source" => source.to_owned(), "outcome" => "hit"),
            misses: counter!(names::CACHE_LOOKUPS, "source" => source.to_owned(), "outcome" => "miss"),
            stale: counter!(names::CACHE_STALE, "source" => source.to_owned()),
            background: counter!(names::CACHE_BACKGROUND, "source" => source.to_owned()),
            coalesced: counter!(names::CACHE_COALESCED, "source" => source.to_owned()),
            refresh_ahead: counter!(names::CACHE_REFRESH_AHEAD, "source" => source.to_owned()),
        }
    }

    /// An entry left the cache to respect its memory bound (`size`), or past its max staleness.
    pub fn evicted(&self, size: bool) {
        if size {
            self.evicted_size.increment(1);
        } else {
            self.evicted_expired.increment(1);
        }
    }

    /// `n` hot keys nearing their TTL are refreshed in the background.
    pub fn refreshing_ahead(&self, n: usize) {
        self.refresh_ahead.increment(n as u64);
    }

    /// A fetch looked its keys up: `hits` fresh, `misses` not.
    pub fn looked_up(&self, hits: usize, misses: usize) {
        self.hits.increment(hits as u64);
        self.misses.increment(misses as u64);
    }

    /// `n` missing keys joined a source call already in flight instead of making their own.
    pub fn coalesced(&self, n: usize) {
        self.coalesced.increment(n as u64);
    }

    /// A value was served stale.
    pub fn served_stale(&self) {
        self.stale.increment(1);
    }

    /// A source call outlived its request and goes on in the background.
    pub fn finished_in_background(&self) {
        self.background.increment(1);
    }
}

/// The metric handles of one feature service (or of ad-hoc requests), registered once. Refused
/// requests, which are rare, record through the dynamic path instead.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    label: Arc<str>,
    ok: [(Counter, Histogram); 2],
    statuses: Arc<[Counter]>,
}

/// The methods with pre-registered handles, in [`ServiceMetrics`] order.
pub const METHODS: [&str; 2] = ["GetFeatures", "GetFeaturesBatch"];

impl ServiceMetrics {
    /// Registers the handles of feature service `label`.
    pub fn new(label: &str) -> Self {
        let ok = METHODS.map(|method| {
            (
                counter!(names::REQUESTS, "method" => method, "feature_service" => label.to_owned(), "code" => "OK"),
                histogram!(names::REQUEST_SECONDS, "method" => method, "feature_service" => label.to_owned(), "code" => "OK"),
            )
        });
        let statuses = Status::ALL
            .iter()
            .map(|s| counter!(names::FEATURES, "feature_service" => label.to_owned(), "status" => s.as_str()))
            .collect();
        ServiceMetrics {
            label: label.into(),
            ok,
            statuses,
        }
    }

    /// A request finished with `code`.
    pub fn request_finished(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        match METHODS.iter().position(|m| *m == method) {
            Some(i) if code == tonic::Code::Ok => {
                self.ok[i].0.increment(1);
                self.ok[i].1.record(elapsed.as_secs_f64());
            }
            _ => request_finished(method, &self.label, code, elapsed),
        }
    }

    /// One vector's features were served, counted by status.
    pub fn features_served(&self, counts: &[u64; Status::ALL.len()]) {
        for (counter, &n) in self.statuses.iter().zip(counts) {
            if n > 0 {
                counter.increment(n);
            }
        }
    }
}

/// A call was refused by authentication, a caller's rate limit, or its permissions.
pub fn auth_refused(reason: &'static str) {
    counter!(names::REQUESTS_REFUSED, "reason" => reason).increment(1);
}

/// A cache whose size the scrape reports: `(entries, estimated bytes)`.
pub trait CacheSize: Send + Sync {
    /// The current size.
    fn size(&self) -> (u64, u64);
}

type SizedCaches = Vec<(
    metrics::Gauge,
    metrics::Gauge,
    std::sync::Weak<dyn CacheSize>,
)>;

fn sized_caches() -> &'static std::sync::Mutex<SizedCaches> {
    static CACHES: std::sync::OnceLock<std::sync::Mutex<SizedCaches>> = std::sync::OnceLock::new();
    CACHES.get_or_init(Default::default)
}

/// Reports `cache`'s size under `source` on every scrape, for as long as it lives.
pub fn register_cache(source: &str, cache: std::sync::Weak<dyn CacheSize>) {
    sized_caches()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((
            gauge!(names::CACHE_ENTRIES, "source" => source.to_owned()),
            gauge!(names::CACHE_BYTES, "source" => source.to_owned()),
            cache,
        ));
}

/// Sets the cache size gauges; the metrics endpoint calls it before rendering.
pub fn refresh_cache_sizes() {
    let mut caches = sized_caches()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    caches.retain(|(entries, bytes, cache)| match cache.upgrade() {
        Some(cache) => {
            let (n, b) = cache.size();
            entries.set(n as f64);
            bytes.set(b as f64);
            true
        }
        None => false,
    });
}

/// A gRPC request finished (the dynamic path, for labels without registered handles).
pub fn request_finished(
    method: &'static str,
    feature_service: &str,
    code: tonic::Code,
    elapsed: Duration,
) {
    let code = code_name(code);
    let fs = feature_service.to_owned();
    counter!(names::REQUESTS, "method" => method, "feature_service" => fs.clone(), "code" => code)
        .increment(1);
    histogram!(names::REQUEST_SECONDS, "method" => method, "feature_service" => fs, "code" => code)
        .record(elapsed.as_secs_f64());
}

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

/// A source's health check changed state.
pub fn source_health(source: &str, up: bool, error: Option<&FetchError>) {
    gauge!(names::SOURCE_UP, "source" => source.to_owned()).set(if up { 1.0 } else { 0.0 });
    match error {
        Some(e) => tracing::warn!(source, "source health check failed: {e}"),
        None => tracing::info!(source, "source health check passes"),
    }
}

/// The name of a gRPC code as a metric label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The training log's events as metrics and log lines.
#[derive(Debug)]
pub struct TrainingLogTelemetry {
    queue: metrics::Gauge,
}

impl TrainingLogTelemetry {
    /// Registers the log's gauges (the sink starts up).
    pub fn new() -> Self {
        gauge!(names::TRAINING_LOG_SINK_UP).set(1.0);
        TrainingLogTelemetry {
            queue: gauge!(names::TRAINING_LOG_QUEUE),
        }
    }
}

impl Default for TrainingLogTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl training_log::Observer for TrainingLogTelemetry {
    fn queue_depth(&self, depth: usize) {
        self.queue.set(depth as f64);
    }

    fn written(&self, feature_service: &str, records: u64) {
        counter!(names::TRAINING_LOG_WRITTEN, "feature_service" => feature_service.to_owned())
            .increment(records);
    }

    fn spooled(&self, records: u64, reason: &'static str) {
        // Per record on the serving path when the queue is full: a counter, not a log line.
        counter!(names::TRAINING_LOG_SPOOLED, "reason" => reason).increment(records);
    }

    fn replayed(&self, records: u64) {
        counter!(names::TRAINING_LOG_REPLAYED).increment(records);
        tracing::info!(records, "training log spool replayed");
    }

    fn dropped(&self, records: u64, reason: &'static str, error: &str) {
        counter!(names::TRAINING_LOG_DROPPED, "reason" => reason).increment(records);
        tracing::error!(records, reason, "training log records dropped: {error}");
    }

    fn sink_down(&self, error: &str) {
        gauge!(names::TRAINING_LOG_SINK_UP).set(0.0);
        tracing::warn!("training log sink failed, spooling records: {error}");
    }

    fn sink_up(&self) {
        gauge!(names::TRAINING_LOG_SINK_UP).set(1.0);
        tracing::info!("training log sink works again");
    }
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
