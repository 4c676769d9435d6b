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
            hits: counter!(names::CACHE_LOOKUPS, "source" => source.to_owned(), "outcome" => "hit"),
            misses: counter!(names::CACHE_LOOKUPS, "source" => source.to_owned(), "outcome" => "miss"),
            stale: counter!(names::CACHE_STALE, "source" => source.to_owned()),
            background: counter!(names::CACHE_BACKGROUND, "source" => source.to_owned()),
            coalesced: counter!(names::CACHE_COALESCED, "source" => source.to_owned()),
            refresh_ahead: counter!(names::CACHE_REFRESH_AHEAD, "source" => source.to_owned()),
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
/// or hashing label sets.
#[derive(Clone, Debug)]
pub struct SourceMetrics {
    source: Arc<str>,
    /// Index 0: `ok`; index 1 + class: that error class.
    outcomes: Arc<[(Counter, Histogram)]>,
}

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
        SourceMetrics { source, outcomes }
    }

    /// A fetch of `keys` keys from `view` finished.
    pub fn fetch_finished(
        &self,
        view: &str,
        keys: usize,
        elapsed: Duration,
        error: Option<&FetchError>,
    ) {
        let (count, seconds) = &self.outcomes[error.map_or(0, |e| 1 + e.class() as usize)];
        count.increment(1);
        seconds.record(elapsed.as_secs_f64());
        if let Some(e) = error {
            tracing::warn!(
                source = &*self.source,
                view,
                keys,
                class = e.class().as_str(),
                retryable = e.retryable(),
                elapsed_ms = elapsed.as_secs_f64() * 1e3,
                "fetch failed: {}",
                e.message()
            );
        }
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
