//! Every metric and log line the gateway emits about its work, in one place.
//!
//! Each function is one typed event: it writes the log line (lowercase, no trailing period,
//! fields as key=value) and updates the metrics. Label values are bounded: names from the
//! configuration, gRPC codes, statuses and error classes; never entity keys.

use std::{collections::HashMap, sync::Arc, time::Duration};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::status::Status;

/// Metric names of the server, documented in the README (the stack's are in
/// `gateway_stack::events::names`).
pub mod names {
    /// Counter: gRPC requests by method, feature_service and code.
    pub const REQUESTS: &str = "feature_gateway_requests_total";
    /// Histogram: gRPC request latency in seconds, by method, feature_service and code.
    pub const REQUEST_SECONDS: &str = "feature_gateway_request_duration_seconds";
    /// Counter: served features by feature_service and status.
    pub const FEATURES: &str = "feature_gateway_features_served_total";
    /// Counter: calls refused before any work by authentication, by reason
    /// (`unauthenticated`, `rate_limited`, `permission_denied`).
    pub const REQUESTS_REFUSED: &str = "feature_gateway_requests_refused_total";
    /// Gauge: 1, labelled with the version and the configuration's hash (0 for a configuration
    /// replaced by a reload).
    pub const BUILD_INFO: &str = "feature_gateway_build_info";
    /// Counter: configuration reloads by result (`ok`, `unchanged`, `invalid`, `build_failed`).
    pub const CONFIG_RELOADS: &str = "feature_gateway_config_reloads_total";
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
    /// Counter: vectors sampled for the drift monitor that it did not observe because its queue
    /// was full.
    pub const DRIFT_DROPPED: &str = "feature_gateway_drift_observations_dropped_total";
    /// Gauge: vectors observed in a monitored feature service's rolling window (sampled: see
    /// the next gauge), by feature_service.
    pub const DRIFT_WINDOW_ROWS: &str = "feature_gateway_drift_window_rows";
    /// Gauge: the share of a monitored feature service's served vectors the drift monitor
    /// observes (its `sample` times the rate budget's share), by feature_service.
    pub const DRIFT_OBSERVED_SHARE: &str = "feature_gateway_drift_observed_share";
    /// Gauge: population stability index of the rolling window against the reference, by
    /// feature_service and feature (NaN when not known: an empty window, a `pii` feature).
    pub const DRIFT_PSI: &str = "feature_gateway_drift_psi";
    /// Gauge: the null rate's change from the reference, percentage points, by feature_service
    /// and feature.
    pub const DRIFT_NULL_RATE_CHANGE: &str = "feature_gateway_drift_null_rate_change";
    /// Gauge: the change of a non-PRESENT status's share from the reference, percentage points,
    /// by feature_service, feature and status.
    pub const DRIFT_STATUS_SHARE_CHANGE: &str = "feature_gateway_drift_status_share_change";
    /// Gauge: the change of the share of defaults served from the reference, percentage points,
    /// by feature_service and feature.
    pub const DRIFT_DEFAULT_SHARE_CHANGE: &str = "feature_gateway_drift_default_share_change";
    /// Histogram: the CPU time of each of the drift monitor worker's passes (the vectors queued
    /// counted, and each window ended compared and published), in seconds: how long it holds a
    /// core each time it wakes. Buckets [`DRIFT_PASS_BUCKETS`].
    pub const DRIFT_WORKER_PASS_SECONDS: &str = "feature_gateway_drift_worker_pass_cpu_seconds";
}

/// The buckets of [`names::DRIFT_WORKER_PASS_SECONDS`], from 2.5 µs: a pass is far shorter
/// than a request's latency, which the other `_seconds` histograms' buckets are for.
pub const DRIFT_PASS_BUCKETS: &[f64] = &[
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_015,
    0.000_02,
    0.000_03,
    0.000_04,
    0.000_05,
    0.000_075,
    0.000_1,
    0.000_15,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
];

/// The gateway started with a configuration.
pub fn started(config_hash: &str) {
    gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "config_hash" => config_hash.to_owned())
        .set(1.0);
}

/// The results a configuration reload counts.
pub const RELOAD_RESULTS: [&str; 4] = ["ok", "unchanged", "invalid", "build_failed"];

/// Registers the reload counters at 0, so a dashboard or alert sees them before the first reload.
pub fn reloads_registered() {
    for result in RELOAD_RESULTS {
        counter!(names::CONFIG_RELOADS, "result" => result).absolute(0);
    }
}

/// A configuration reload that swapped a new configuration in.
#[derive(Debug)]
pub struct Reloaded<'a> {
    /// What asked for it: `signal`, `file`, `admin`.
    pub trigger: &'static str,
    /// The hash of the configuration replaced.
    pub old: &'a str,
    /// The hash of the configuration now serving.
    pub new: &'a str,
    /// Sources kept as they were, built, and removed.
    pub kept: &'a [String],
    /// Sources built.
    pub built: &'a [String],
    /// Sources removed.
    pub removed: &'a [String],
    /// From reading the file to the swap.
    pub took: Duration,
}

/// A reload swapped a configuration in: the build info now names it.
pub fn reloaded(r: Reloaded<'_>) {
    if r.old != r.new {
        gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "config_hash" => r.old.to_owned())
            .set(0.0);
    }
    started(r.new);
    counter!(names::CONFIG_RELOADS, "result" => "ok").increment(1);
    tracing::info!(
        trigger = r.trigger,
        old_config_hash = r.old,
        config_hash = r.new,
        kept = %r.kept.join(","),
        built = %r.built.join(","),
        removed = %r.removed.join(","),
        took_ms = r.took.as_secs_f64() * 1e3,
        "configuration reloaded"
    );
}

/// A reload found the file as the running configuration was read from it.
pub fn reload_unchanged(trigger: &'static str, hash: &str) {
    counter!(names::CONFIG_RELOADS, "result" => "unchanged").increment(1);
    tracing::info!(
        trigger,
        config_hash = hash,
        "configuration reload: the file is unchanged"
    );
}

/// A reload was refused, `result` `invalid` (the file) or `build_failed` (a source): the
/// running configuration stays. `errors` are every problem, one per line.
pub fn reload_failed(trigger: &'static str, result: &'static str, hash: &str, errors: &str) {
    counter!(names::CONFIG_RELOADS, "result" => result).increment(1);
    tracing::error!(
        trigger,
        result,
        config_hash = hash,
        "configuration reload refused, the running configuration stays:\n{errors}"
    );
}

/// `records` served while the training log restarted after a reload could not be held for it
/// (more than its `queue_capacity`, or it could not start): counted as dropped, reason
/// `reloading`.
pub fn training_log_reload_dropped(records: u64) {
    if records > 0 {
        counter!(names::TRAINING_LOG_DROPPED, "reason" => "reloading").increment(records);
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

/// The drift monitor's worker started: its drop counter is registered at 0.
pub fn drift_monitor_started() {
    counter!(names::DRIFT_DROPPED).absolute(0);
}

/// The drift monitor's worker made one pass, using `took` of CPU time.
pub fn drift_worker_pass(took: Duration) {
    histogram!(names::DRIFT_WORKER_PASS_SECONDS).record(took.as_secs_f64());
}

/// A served vector was not observed by the drift monitor: its queue was full. Counted; no log
/// line on the serving path.
pub fn drift_observation_dropped() {
    counter!(names::DRIFT_DROPPED).increment(1);
}

/// The drift gauges of one monitored feature service, registered once (a feature's when it is
/// first published) so that publishing a comparison sets each with an atomic store instead of
/// building its labels and looking it up again.
#[derive(Debug)]
pub struct DriftGauges {
    feature_service: String,
    rows: Gauge,
    observed_share: Gauge,
    features: HashMap<String, FeatureGauges>,
}

/// One feature's drift gauges; `statuses` in the order of [`drift::Status::ALL`] without
/// PRESENT.
#[derive(Debug)]
struct FeatureGauges {
    psi: Gauge,
    null_rate: Gauge,
    default_share: Gauge,
    statuses: Vec<(drift::Status, Gauge)>,
}

impl DriftGauges {
    pub fn new(feature_service: &str) -> DriftGauges {
        let label = || feature_service.to_owned();
        DriftGauges {
            feature_service: feature_service.to_owned(),
            rows: gauge!(names::DRIFT_WINDOW_ROWS, "feature_service" => label()),
            observed_share: gauge!(names::DRIFT_OBSERVED_SHARE, "feature_service" => label()),
            features: HashMap::new(),
        }
    }

    /// The rolling window compared with its reference: every gauge set, with the share of the
    /// vectors observed now. A window without vectors sets them to NaN (nothing is known), as
    /// is a `pii` feature's PSI.
    pub fn publish(&mut self, comparison: &drift::Comparison, observed_share: f64) {
        self.rows.set(comparison.rows as f64);
        self.observed_share.set(observed_share);
        for f in &comparison.features {
            let known = |x: f64| if f.served_count == 0 { f64::NAN } else { x };
            let gauges = match self.features.get(&f.feature) {
                Some(g) => g,
                None => {
                    let g = FeatureGauges::new(&self.feature_service, &f.feature);
                    self.features.entry(f.feature.clone()).or_insert(g)
                }
            };
            gauges.psi.set(known(f.psi.unwrap_or(f64::NAN)));
            gauges.null_rate.set(known(f.null_rate.points()));
            gauges.default_share.set(known(f.default_share.points()));
            for (status, gauge) in &gauges.statuses {
                // A status neither side has is left out of the comparison: no change.
                let points = f
                    .statuses
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0.0, |(_, c)| c.points());
                gauge.set(known(points));
            }
        }
    }
}

impl FeatureGauges {
    fn new(feature_service: &str, feature: &str) -> FeatureGauges {
        let labels = [
            ("feature_service", feature_service.to_owned()),
            ("feature", feature.to_owned()),
        ];
        FeatureGauges {
            psi: gauge!(names::DRIFT_PSI, &labels),
            null_rate: gauge!(names::DRIFT_NULL_RATE_CHANGE, &labels),
            default_share: gauge!(names::DRIFT_DEFAULT_SHARE_CHANGE, &labels),
            statuses: drift::Status::ALL
                .into_iter()
                .filter(|&s| s != drift::Status::Present)
                .map(|status| {
                    let gauge = gauge!(
                        names::DRIFT_STATUS_SHARE_CHANGE,
                        "feature_service" => feature_service.to_owned(),
                        "feature" => feature.to_owned(),
                        "status" => status_label(status),
                    );
                    (status, gauge)
                })
                .collect(),
        }
    }
}

/// A drift status as the metrics label it (as `feature_gateway_features_served_total` does).
fn status_label(status: drift::Status) -> &'static str {
    match status {
        drift::Status::Present => Status::Present.as_str(),
        drift::Status::NotFound => Status::NotFound.as_str(),
        drift::Status::NullValue => Status::NullValue.as_str(),
        drift::Status::OutsideMaxAge => Status::OutsideMaxAge.as_str(),
        drift::Status::TimedOut => Status::TimedOut.as_str(),
        drift::Status::SourceError => Status::SourceError.as_str(),
        drift::Status::Stale => Status::Stale.as_str(),
    }
}

/// A call was refused by authentication, a caller's rate limit, or its permissions.
pub fn auth_refused(reason: &'static str) {
    counter!(names::REQUESTS_REFUSED, "reason" => reason).increment(1);
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
