//! The configuration file: entities, sources, feature views and feature services.
//!
//! Loading has three steps, kept apart so each can be tested and run on its own:
//! 1. **parse** the TOML into [`RawConfig`] (a syntax error stops here, with its position);
//! 2. **validate** with no I/O into a [`Config`]: every unknown field, unknown name, bad type,
//!    bad duration, bad option of a source kind and dependency cycle is collected, each with its
//!    file position, and all are reported together;
//! 3. **build** (in [`crate::gateway`]): connect the sources. `feature-gateway validate` runs
//!    only the first two.
//!
//! See `README.md` ("Configuration") for the reference with an example.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use fetcher_api::{FeatureType, KeySpec, Options, Registry, SourceSpec, Value, ViewSpec};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::de::{DeTable, DeValue};

use crate::plan;

/// The source kind served by the gateway itself from the request's context.
pub const REQUEST_KIND: &str = "request";

// ---------------------------------------------------------------------------------------------
// Step 1: the file as written.

/// The configuration as written. Fields the gateway does not know are collected separately
/// (see [`parse`]) so that every one of them is reported, not just the first.
#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Entities: the keys features are looked up by.
    #[serde(default)]
    pub entities: BTreeMap<String, RawEntity>,
    /// Sources: where feature values live.
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
    /// Feature views: groups of features read from one source with one key.
    #[serde(default)]
    pub views: BTreeMap<String, RawView>,
    /// Feature services: a model's ordered feature set.
    #[serde(default)]
    pub feature_services: BTreeMap<String, RawFeatureService>,
    /// The training log; off when absent.
    #[serde(default)]
    pub training_log: Option<RawTrainingLog>,
    /// Plaid webhooks (`POST /webhooks/plaid` on the admin port); off when absent.
    #[serde(default)]
    pub plaid_webhooks: Option<RawPlaidWebhooks>,
    /// Traces; off when absent.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[server]`: TLS on the gRPC port.
    #[serde(default)]
    pub server: RawServer,
    /// `[auth]`: callers, what each may read, their rates; everyone may call when absent.
    #[serde(default)]
    pub auth: Option<crate::auth::RawAuth>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    /// `[server.tls]`: TLS (and mutual TLS) on the gRPC port; plaintext when absent.
    #[serde(default)]
    pub tls: Option<crate::tls::RawTls>,
    /// Threads serving requests; default one per CPU (or `TOKIO_WORKER_THREADS`).
    #[serde(default)]
    pub worker_threads: Option<usize>,
}

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawTelemetry {
    /// `[telemetry.traces]`: OpenTelemetry traces over OTLP/gRPC; off when absent.
    #[serde(default)]
    pub traces: Option<RawTraces>,
}

/// `[telemetry.traces]`.
#[derive(Debug, Deserialize)]
pub struct RawTraces {
    /// The OTLP/gRPC collector, e.g. `"http://127.0.0.1:4317"`.
    pub endpoint: String,
    /// Fraction (0 to 1) of requests without a sampled caller span that are traced. Default
    /// 0.01. A caller's `traceparent` sampling decision is always followed.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// The `service.name` resource attribute. Default `feature-gateway`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// How long one export may take, e.g. `"5s"` (the default).
    #[serde(default)]
    pub export_timeout: Option<String>,
}

/// `[plaid_webhooks]`: accept Plaid's webhooks and refresh the cached views of the Items they
/// name (see `crate::webhooks`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlaidWebhooks {
    /// The `plaid` source whose cache the webhooks refresh; its `base_url` and credentials
    /// fetch the verification keys.
    pub source: String,
    /// Oldest `iat` (issue time of the webhook's JWT) accepted. Default "5m", as Plaid advises.
    #[serde(default)]
    pub max_age: Option<String>,
}

/// `[entities.NAME]`.
#[derive(Debug, Deserialize)]
pub struct RawEntity {
    /// `int64` or `string`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Where the key's value comes from: omitted, the request's `entities`; `context:NAME`, the
    /// request's context; `VIEW:FEATURE`, a feature of another view (a dependent key, fetched
    /// in an earlier stage).
    #[serde(default)]
    pub from: Option<String>,
    /// Free text, shown by DescribeFeatureService.
    #[serde(default)]
    pub description: String,
}

/// `[sources.NAME]`: the fields every kind has; everything else is the kind's own options.
#[derive(Debug, Deserialize)]
pub struct RawSource {
    /// The source kind: `request`, or a registered fetcher kind (`static`, `http`, ...).
    pub kind: String,
    /// Longest a fetch may take, e.g. `"20ms"`; the request's remaining deadline applies if
    /// shorter. Default: the request's deadline alone.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Most fetches in flight at once to this source; more are refused at once (the features
    /// read as SOURCE_ERROR) rather than queued. Default 1024.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Whether the gateway reports NOT_SERVING on its health service while this source's health
    /// check fails. Default false.
    #[serde(default)]
    pub required: bool,
    /// The source's cache (`[sources.NAME.cache]`); none when absent.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// The source's circuit breaker (`[sources.NAME.circuit_breaker]`); none when absent.
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Retries of the source's retryable failures (`[sources.NAME.retry]`); none when absent.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Hedged requests (`[sources.NAME.hedge]`); none when absent.
    #[serde(default)]
    pub hedge: Option<RawHedge>,
    /// Options of the source's kind.
    #[serde(flatten)]
    pub options: toml::Table,
}

/// `[sources.NAME.cache]`: the in-process cache in front of a source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// How long a value is served without asking the source again, e.g. `"30s"`.
    pub ttl: String,
    /// How old a value may be to be served, as STALE, when the source fails or misses the
    /// deadline. Default: the TTL (nothing stale is served).
    #[serde(default)]
    pub max_staleness: Option<String>,
    /// How long a NOT_FOUND answer is remembered. Default: not remembered.
    #[serde(default)]
    pub negative_ttl: Option<String>,
    /// Memory bound, in bytes: each entry is charged what it takes in memory (its encoded
    /// row, key and the table's bookkeeping; about 100 bytes for 8 numbers). Default 64 MiB.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Most source calls finishing in the background after their request's deadline, to fill
    /// the cache. Default 256. They are bounded by the source's `timeout`; a source without one
    /// never calls in the background.
    #[serde(default)]
    pub max_background_calls: Option<usize>,
    /// Refresh-ahead: a value read when older than this fraction of its TTL (0..1, e.g. 0.8) is
    /// fetched again in the background while the cached one is served, so hot keys never go
    /// cold. Once per key at a time, within `max_background_calls`; needs the source's
    /// `timeout`. Default: off.
    #[serde(default)]
    pub refresh_ahead: Option<f64>,
    /// A second tier in Redis shared by every gateway replica (`shared = { url = ... }`); none
    /// when absent. For expensive third-party views (Plaid): one replica's call serves all.
    #[serde(default)]
    pub shared: Option<RawSharedTier>,
}

/// `[sources.NAME.cache.shared]`: the shared second cache tier (see `crate::shared_cache`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharedTier {
    /// `redis://[:${PASSWORD}@]host:port[/db]` or `rediss://...`; `${NAME}` is read from the
    /// environment when the gateway starts.
    pub url: String,
    /// Prepended to every Redis key. Default `"feature-gateway:"`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// How long Redis keeps an entry. Default: the cache's `max_staleness`. Freshness is still
    /// the cache's `ttl`, reckoned from the original fetch.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Longest one Redis command may take; the request's deadline applies if earlier. A slower
    /// or failed command is a miss. Default "20ms".
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `[sources.NAME.circuit_breaker]`: stop calling a source that keeps failing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Failures in a row that open the circuit. Default 5.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Failure rate over the last `window` calls that opens the circuit, 0..1. Default 0.5.
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// Calls the failure rate is computed over. Default 20.
    #[serde(default)]
    pub window: Option<usize>,
    /// How long the circuit stays open (calls fail at once) before probing. Default "5s".
    #[serde(default)]
    pub open_for: Option<String>,
    /// Calls let through to probe a half-open circuit. Default 1.
    #[serde(default)]
    pub half_open_probes: Option<u32>,
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

/// `[sources.NAME.hedge]`: hedged requests. A call that has not answered after the hedge delay
/// is sent again; the first answer wins and the other is cancelled. Give one of `after` or
/// `delay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHedge {
    /// Hedge after this percentile of the source's observed latency, e.g. `"p95"` or `"p99.5"`.
    /// No hedge until 20 calls have been observed.
    #[serde(default)]
    pub after: Option<String>,
    /// Hedge after a fixed delay, e.g. `"30ms"`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Most extra attempts per call, one per hedge delay. Default 1, at most 3.
    #[serde(default)]
    pub max_extra: Option<u32>,
    /// Hedges allowed as a fraction of calls, in (0, 1], so hedging cannot double the load of
    /// a slow source. Default 0.1.
    #[serde(default)]
    pub budget_percent: Option<f32>,
}

/// `[views.NAME]`: the fields every view has; everything else is its source kind's options.
#[derive(Debug, Deserialize)]
pub struct RawView {
    /// The source the view reads from.
    pub source: String,
    /// The entities the view is keyed by, in key order. Empty for `request` views.
    #[serde(default)]
    pub entities: Vec<String>,
    /// Values older than this (by the source's event time) are not served: OUTSIDE_MAX_AGE.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The view's features.
    #[serde(default)]
    pub features: BTreeMap<String, RawFeature>,
    /// Options of the source's kind.
    #[serde(flatten)]
    pub options: toml::Table,
}

/// `[views.VIEW.features.NAME]`.
#[derive(Debug, Deserialize)]
pub struct RawFeature {
    /// The feature's type: int64, double, string, bool, bytes, timestamp, list<int64>,
    /// list<double>, list<string>.
    #[serde(rename = "type")]
    pub ty: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Personal data: the training log hashes or drops its value (`[training_log] pii`).
    /// Serving is unaffected. Default false.
    #[serde(default)]
    pub pii: bool,
}

/// `[training_log]`: log every served vector to Parquet files or a Kafka topic (see the
/// training-log crate's docs for the record schema and the Kafka message). Relative paths are
/// resolved against the configuration file's directory.
#[derive(Debug, Deserialize)]
pub struct RawTrainingLog {
    /// Where records go: `"parquet"` (files under `dir`) or `"kafka"` (`[training_log.kafka]`).
    /// Default `"parquet"`.
    #[serde(default)]
    pub sink: Option<String>,
    /// Directory of the Parquet files, partitioned `feature_service=NAME/date=YYYY-MM-DD/`.
    /// Required by the Parquet sink; with Kafka it only places the default spool directory.
    #[serde(default)]
    pub dir: Option<String>,
    /// Commit a file once its records reach about this many bytes (uncompressed estimate).
    /// Default 16 MiB.
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    /// Commit a file at the latest this long after its first record, e.g. `"1m"`. Default 1m.
    #[serde(default)]
    pub rotate_interval: Option<String>,
    /// Records held in memory for the writer; beyond it they spill to the spool. Default 16384.
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Directory of the on-disk spool (overflow and sink outages). Default `DIR.spool`.
    #[serde(default)]
    pub spool_dir: Option<String>,
    /// Most bytes the spool may hold; records beyond it are dropped and counted. Default 1 GiB.
    #[serde(default)]
    pub spool_max_bytes: Option<u64>,
    /// Fraction of requests logged (0 to 1) by feature service. Default 1 (all).
    #[serde(default)]
    pub sample: BTreeMap<String, f64>,
    /// How features marked `pii = true` are logged: `"hash"` (salted SHA-256, hex) or `"drop"`
    /// (no value column). Default `"hash"`.
    #[serde(default)]
    pub pii: Option<String>,
    /// The environment variable holding the salt of `pii = "hash"`. Default
    /// `FEATURE_GATEWAY_PII_SALT`. The gateway refuses to start when pii features are hashed
    /// and it is unset.
    #[serde(default)]
    pub pii_salt_env: Option<String>,
    /// The Kafka sink's settings (`sink = "kafka"`).
    #[serde(default)]
    pub kafka: Option<RawKafka>,
}

/// `[training_log.kafka]`: the topic the Kafka sink produces to.
#[derive(Debug, Deserialize)]
pub struct RawKafka {
    /// Bootstrap brokers, `["host:port", ...]`.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// The topic; it must exist (the gateway does not create topics).
    #[serde(default)]
    pub topic: Option<String>,
    /// Produce every record to this partition. Default: by key (the request id), as the Java
    /// client's default partitioner does, over all of the topic's partitions.
    #[serde(default)]
    pub partition: Option<i32>,
    /// Produce a batch once it holds this many records. Default 1000.
    #[serde(default)]
    pub batch_records: Option<usize>,
    /// Produce a batch at the latest this long after its first record, e.g. `"20ms"`.
    /// Default 20ms.
    #[serde(default)]
    pub linger: Option<String>,
    /// Longest a produce may take (connecting and retries included) before its records are
    /// spooled and the broker counted as down, e.g. `"10s"`. Default 10s.
    #[serde(default)]
    pub delivery_timeout: Option<String>,
    /// `"snappy"` or `"none"`. Default `"snappy"`.
    #[serde(default)]
    pub compression: Option<String>,
    /// The client id the brokers see. Default `feature-gateway`.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// `[feature_services.NAME]`.
#[derive(Debug, Deserialize)]
pub struct RawFeatureService {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The most time a request may take; the caller's deadline applies if earlier.
    /// Default `"50ms"`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The features, in output order: `"VIEW:FEATURE"`, or `"VIEW:*"` for all of a view's
    /// features in name order.
    pub features: Vec<String>,
    /// Values served when a feature cannot be (with the status that says why), by feature ref.
    #[serde(default)]
    pub defaults: BTreeMap<String, toml::Value>,
}

/// `[limits]`: bounds on what one request may ask, each refused with INVALID_ARGUMENT.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct LimitsConfig {
    /// Most rows in one GetFeaturesBatch call.
    pub max_batch_rows: usize,
    /// Longest entity key or string context value, in bytes.
    pub max_key_bytes: usize,
    /// Most entity keys or context values in one row.
    pub max_entities_per_row: usize,
    /// Most explicit feature refs in one request.
    pub max_features_per_request: usize,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Most GetFeatures / GetFeaturesBatch calls in flight at once; more are refused at once
    /// with RESOURCE_EXHAUSTED (load shedding) instead of queueing past their deadlines.
    /// Health and reflection are never refused. Default: 512 per CPU core.
    pub max_in_flight: Option<usize>,
    /// Longest deadline a feature service may have (a request never runs longer than its
    /// feature service's deadline, whatever its caller's timeout). Default 10s.
    #[serde(with = "duration_text")]
    pub max_deadline: Duration,
}

/// `max_deadline` as a duration string such as `"10s"`.
mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_batch_rows: 1000,
            max_key_bytes: 256,
            max_entities_per_row: 64,
            max_features_per_request: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            max_in_flight: None,
            max_deadline: Duration::from_secs(10),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Step 2: the validated configuration.

/// `[plaid_webhooks]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaidWebhooksConfig {
    /// The `plaid` source.
    pub source: String,
    /// Oldest accepted `iat`.
    pub max_age: Duration,
}

/// A validated configuration: every name resolves, every type is known.
#[derive(Debug)]
pub struct Config {
    /// Request limits.
    pub limits: LimitsConfig,
    /// Entities by name.
    pub entities: BTreeMap<String, Entity>,
    /// Sources by name.
    pub sources: BTreeMap<String, Source>,
    /// Views by name.
    pub views: BTreeMap<String, View>,
    /// Feature services by name.
    pub feature_services: BTreeMap<String, FeatureService>,
    /// The training log, when configured.
    pub training_log: Option<training_log::TrainingLogConfig>,
    /// Where traces are exported, when configured.
    pub traces: Option<crate::traces::TracesConfig>,
    /// TLS on the gRPC port, when configured.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Threads serving requests, when set (`[server] worker_threads`).
    pub worker_threads: Option<usize>,
    /// The callers allowed, when `[auth]` is configured.
    pub auth: Option<Vec<crate::auth::CallerConfig>>,
    /// Plaid webhooks, when configured.
    pub plaid_webhooks: Option<PlaidWebhooksConfig>,
    /// Hash of the whole file, exported as a metric label so a fleet's configs can be compared.
    pub hash: String,
}

impl Config {
    /// The views of `source` keyed by a single entity key (those an outside event about one
    /// key part, such as a Plaid webhook, can name).
    pub fn single_key_views(&self, source: &str) -> Vec<std::sync::Arc<str>> {
        self.views
            .values()
            .filter(|v| v.source == source && v.entities.len() == 1)
            .map(|v| std::sync::Arc::from(v.name.as_str()))
            .collect()
    }
}

/// An entity key.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// Its name.
    pub name: String,
    /// int64 or string.
    pub ty: FeatureType,
    /// Where its value comes from.
    pub from: EntityFrom,
    /// Free text.
    pub description: String,
}

/// Where an entity key's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum EntityFrom {
    /// The request's `entities` map.
    Request,
    /// The request's `context` map, under this name.
    Context(String),
    /// A feature of another view.
    Feature {
        /// The view.
        view: String,
        /// The feature.
        feature: String,
    },
}

/// A source.
#[derive(Clone, Debug)]
pub struct Source {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Its own timeout, if any.
    pub timeout: Option<Duration>,
    /// Most fetches in flight at once.
    pub max_concurrency: usize,
    /// Whether health depends on it.
    pub required: bool,
    /// Its cache, if any.
    pub cache: Option<crate::cache::CachePolicy>,
    /// Its circuit breaker, if any.
    pub circuit_breaker: Option<crate::resilience::BreakerPolicy>,
    /// Its retries, if any.
    pub retry: Option<crate::resilience::RetrySettings>,
    /// Its hedged requests, if any.
    pub hedge: Option<crate::hedge::HedgePolicy>,
    /// What its fetcher factory is given.
    pub spec: SourceSpec,
}

/// A feature view.
#[derive(Clone, Debug)]
pub struct View {
    /// Its name.
    pub name: String,
    /// Its source's name.
    pub source: String,
    /// Its entity keys, in key order.
    pub entities: Vec<String>,
    /// Its max age.
    pub max_age: Option<Duration>,
    /// Free text.
    pub description: String,
    /// Its features by name.
    pub features: BTreeMap<String, Feature>,
    /// Its source-kind options, rendered canonically (part of definition hashes).
    pub options: Options,
}

/// A feature of a view.
#[derive(Clone, Debug)]
pub struct Feature {
    /// Its type.
    pub ty: FeatureType,
    /// Free text.
    pub description: String,
    /// Personal data, hashed or dropped in the training log.
    pub pii: bool,
}

/// A reference `VIEW:FEATURE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureRef {
    /// The view.
    pub view: String,
    /// The feature.
    pub feature: String,
}

impl FeatureRef {
    /// Splits `VIEW:FEATURE`.
    pub fn parse(text: &str) -> Result<FeatureRef, String> {
        match text.split_once(':') {
            Some((view, feature)) if !view.is_empty() && !feature.is_empty() => Ok(FeatureRef {
                view: view.to_owned(),
                feature: feature.to_owned(),
            }),
            _ => Err(format!(
                "`{text}` is not a feature reference `VIEW:FEATURE`"
            )),
        }
    }
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

/// A feature service.
#[derive(Clone, Debug)]
pub struct FeatureService {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Its own deadline.
    pub deadline: Duration,
    /// Its features, in output order.
    pub features: Vec<FeatureRef>,
    /// Default values by feature.
    pub defaults: HashMap<FeatureRef, Value>,
}

/// The default feature service deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);
/// The default per-source concurrency bound.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Errors.

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `line:column` (1-based) of the problem, when it can be placed.
    pub position: Option<(usize, usize)>,
    /// Dotted path of the offending field, e.g. `views.user.source`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, as named to the user.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some((line, col)) = e.position {
                write!(f, ":{line}:{col}")?;
            }
            if e.path.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// Collects problems with their paths while validating; resolves positions at the end.
#[derive(Default)]
struct Problems(Vec<(Vec<String>, String)>);

impl Problems {
    fn add(&mut self, path: &[&str], message: impl Into<String>) {
        self.0.push((
            path.iter().map(|s| (*s).to_owned()).collect(),
            message.into(),
        ));
    }

    /// An optional duration field: `default` when absent; reported at `path` and replaced by
    /// `default` when it does not parse, or is zero and `allow_zero` is false.
    fn duration(
        &mut self,
        path: &[&str],
        value: Option<&str>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) if allow_zero || !d.is_zero() => d,
            Some(Ok(_)) => {
                self.add(path, "must be positive");
                default
            }
            Some(Err(msg)) => {
                self.add(path, msg);
                default
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

/// Reads, parses and validates the file at `path`. Relative paths in source options are
/// resolved against the file's directory.
pub fn load(path: &Path, registry: &Registry) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        file: path.display().to_string(),
        errors: vec![ConfigError {
            position: None,
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    load_str(&text, &path.display().to_string(), &base_dir, registry)
}

/// Parses and validates `text`; `file` names it in errors.
pub fn load_str(
    text: &str,
    file: &str,
    base_dir: &Path,
    registry: &Registry,
) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        file: file.to_owned(),
        errors,
    };
    let document = DeTable::parse(text).map_err(|e| fail(vec![from_toml_error(text, &e)]))?;
    let (raw, unknown) = parse(text).map_err(|e| fail(vec![from_toml_error(text, &e)]))?;
    let mut problems = Problems::default();
    for path in unknown {
        let field = path.last().cloned().unwrap_or_default();
        problems.0.push((path, format!("unknown field `{field}`")));
    }
    let config = validate(raw, text, base_dir, registry, &mut problems);
    if problems.0.is_empty() {
        return Ok(config);
    }
    let mut errors: Vec<ConfigError> = problems
        .0
        .into_iter()
        .map(|(path, message)| ConfigError {
            position: locate(document.get_ref(), &path).map(|span| line_col(text, span.start)),
            path: path.join("."),
            message,
        })
        .collect();
    errors.sort_by(|a, b| a.position.cmp(&b.position).then(a.path.cmp(&b.path)));
    errors.dedup();
    Err(fail(errors))
}

/// Parses `text` into a [`RawConfig`], returning the paths of every field it does not know.
pub fn parse(text: &str) -> Result<(RawConfig, Vec<Vec<String>>), toml::de::Error> {
    let mut unknown = Vec::new();
    let deserializer = toml::Deserializer::parse(text)?;
    let raw = serde_ignored::deserialize(deserializer, |path| unknown.push(path_segments(&path)))?;
    Ok((raw, unknown))
}

fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path as P;
    let mut segments = match path {
        P::Root => return Vec::new(),
        P::Seq { parent, index } => {
            let mut s = path_segments(parent);
            s.push(index.to_string());
            return s;
        }
        P::Map { parent, key } => {
            let mut s = path_segments(parent);
            s.push(key.clone());
            return s;
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            path_segments(parent)
        }
    };
    segments.shrink_to_fit();
    segments
}

fn from_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        position: e.span().map(|s| line_col(text, s.start)),
        path: String::new(),
        message: e.message().trim().to_owned(),
    }
}

/// The span of the key at `path` in the document (the key itself, so the caret points at the
/// field's name), or of the closest ancestor that exists.
fn locate(root: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let mut table = Some(root);
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    let mut found = None;
    for segment in path {
        let value = if let Some(t) = table {
            let (key, value) = t.iter().find(|(k, _)| k.get_ref().as_ref() == segment)?;
            found = Some(key.span());
            value
        } else if let Some(items) = array {
            let item = items.get(segment.parse::<usize>().ok()?)?;
            found = Some(item.span());
            item
        } else {
            break;
        };
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(&a[..])),
            _ => (None, None),
        };
    }
    found
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like \"20ms\" or \"5s\": {e}"))
}

// ---------------------------------------------------------------------------------------------
// Validation.

fn validate(
    raw: RawConfig,
    text: &str,
    base_dir: &Path,
    registry: &Registry,
    problems: &mut Problems,
) -> Config {
    let limits = raw.limits.clone();
    if limits.max_batch_rows == 0 {
        problems.add(&["limits", "max_batch_rows"], "must be at least 1");
    }
    if limits.max_in_flight == Some(0) {
        problems.add(&["limits", "max_in_flight"], "must be at least 1");
    }

    // Entities: their own fields; `from` is resolved once views are known.
    let mut entities = BTreeMap::new();
    for (name, e) in &raw.entities {
        let ty = match e.ty.parse::<FeatureType>() {
            Ok(ty) if ty.is_key_type() => ty,
            Ok(ty) => {
                problems.add(
                    &["entities", name, "type"],
                    format!("an entity key must be int64 or string, not {ty}"),
                );
                FeatureType::String
            }
            Err(msg) => {
                problems.add(&["entities", name, "type"], msg);
                FeatureType::String
            }
        };
        let from = match e.from.as_deref() {
            None => EntityFrom::Request,
            Some(from) => match from.split_once(':') {
                Some(("context", key)) if !key.is_empty() => EntityFrom::Context(key.to_owned()),
                _ => match FeatureRef::parse(from) {
                    Ok(r) => EntityFrom::Feature {
                        view: r.view,
                        feature: r.feature,
                    },
                    Err(_) => {
                        problems.add(
                            &["entities", name, "from"],
                            format!("`{from}` is neither `context:NAME` nor `VIEW:FEATURE`"),
                        );
                        EntityFrom::Request
                    }
                },
            },
        };
        entities.insert(
            name.clone(),
            Entity {
                name: name.clone(),
                ty,
                from,
                description: e.description.clone(),
            },
        );
    }

    // Views, minus what depends on sources.
    let mut views = BTreeMap::new();
    for (name, v) in &raw.views {
        let mut features = BTreeMap::new();
        for (fname, f) in &v.features {
            // A feature with a bad type is kept (as a string) so references to it do not
            // report a second, misleading error.
            let ty = f.ty.parse::<FeatureType>().unwrap_or_else(|msg| {
                problems.add(&["views", name, "features", fname, "type"], msg);
                FeatureType::String
            });
            features.insert(
                fname.clone(),
                Feature {
                    ty,
                    description: f.description.clone(),
                    pii: f.pii,
                },
            );
        }
        if v.features.is_empty() {
            problems.add(&["views", name], "a view needs at least one feature");
        }
        for (i, entity) in v.entities.iter().enumerate() {
            if !raw.entities.contains_key(entity) {
                problems.add(
                    &["views", name, "entities", &i.to_string()],
                    format!(
                        "the view is keyed by `{entity}`, which no entity declares{}",
                        known(raw.entities.keys())
                    ),
                );
            }
        }
        if has_duplicates(&v.entities) {
            problems.add(&["views", name, "entities"], "an entity is listed twice");
        }
        let max_age = v.max_age.as_deref().and_then(|t| {
            parse_duration(t)
                .map_err(|msg| problems.add(&["views", name, "max_age"], msg))
                .ok()
        });
        views.insert(
            name.clone(),
            View {
                name: name.clone(),
                source: v.source.clone(),
                entities: v.entities.clone(),
                max_age,
                description: v.description.clone(),
                features,
                options: Options(v.options.clone()),
            },
        );
    }

    // Sources, with the views that read from them, validated by their kind's factory.
    let mut sources = BTreeMap::new();
    for (name, s) in &raw.sources {
        let timeout = s.timeout.as_deref().and_then(|t| {
            parse_duration(t)
                .map_err(|msg| problems.add(&["sources", name, "timeout"], msg))
                .ok()
        });
        if s.max_concurrency == Some(0) {
            problems.add(&["sources", name, "max_concurrency"], "must be at least 1");
        }
        let cache = s
            .cache
            .as_ref()
            .and_then(|c| cache_policy(c, &["sources", name, "cache"], problems));
        let circuit_breaker = s
            .circuit_breaker
            .as_ref()
            .and_then(|b| breaker_policy(b, &["sources", name, "circuit_breaker"], problems));
        let retry = s
            .retry
            .as_ref()
            .and_then(|r| retry_settings(r, &["sources", name, "retry"], problems));
        let hedge = s
            .hedge
            .as_ref()
            .and_then(|h| hedge_policy(h, &["sources", name, "hedge"], problems));
        let source_views: Vec<ViewSpec> = views
            .values()
            .filter(|v| &v.source == name)
            .map(|v| ViewSpec {
                name: v.name.clone(),
                keys: v
                    .entities
                    .iter()
                    .map(|e| KeySpec {
                        name: e.clone(),
                        ty: entities.get(e).map_or(FeatureType::String, |e| e.ty),
                    })
                    .collect(),
                features: v.features.iter().map(|(n, f)| (n.clone(), f.ty)).collect(),
                options: v.options.clone(),
            })
            .collect();
        let spec = SourceSpec {
            name: name.clone(),
            kind: s.kind.clone(),
            options: Options(s.options.clone()),
            views: source_views,
            base_dir: base_dir.to_owned(),
        };
        if s.kind == REQUEST_KIND {
            if !s.options.is_empty() {
                for key in s.options.keys() {
                    problems.add(&["sources", name, key], format!("unknown field `{key}`"));
                }
            }
            for v in &spec.views {
                if !v.keys.is_empty() {
                    problems.add(
                        &["views", &v.name, "entities"],
                        "a view of a `request` source reads the request's context and has no entities",
                    );
                }
                for key in v.options.0.keys() {
                    problems.add(&["views", &v.name, key], format!("unknown field `{key}`"));
                }
            }
        } else {
            match registry.get(&s.kind) {
                Err(mut unknown) => {
                    unknown.known.push(REQUEST_KIND);
                    unknown.known.sort_unstable();
                    problems.add(&["sources", name, "kind"], unknown.to_string());
                }
                Ok(factory) => {
                    for msg in factory.validate(&spec) {
                        // Place each message on the view it names, and on the unknown field it
                        // names when there is one.
                        let view = spec
                            .views
                            .iter()
                            .find(|v| msg.starts_with(&format!("view `{}`", v.name)));
                        let mut path = match view {
                            Some(v) => vec!["views", v.name.as_str()],
                            None => vec!["sources", name.as_str()],
                        };
                        let field = unknown_field(&msg);
                        path.extend(field);
                        let msg = msg.replace(", there are no fields", "");
                        problems.add(&path, msg);
                    }
                }
            }
        }
        sources.insert(
            name.clone(),
            Source {
                name: name.clone(),
                kind: s.kind.clone(),
                timeout,
                max_concurrency: s.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
                cache,
                circuit_breaker,
                retry,
                hedge,
                required: s.required,
                spec,
            },
        );
    }
    for (name, v) in &views {
        if !sources.contains_key(&v.source) {
            problems.add(
                &["views", name, "source"],
                format!("unknown source `{}`{}", v.source, known(sources.keys())),
            );
        }
    }

    // Entities derived from features must name a real feature of the entity's type.
    for (name, e) in &entities {
        if let EntityFrom::Feature { view, feature } = &e.from {
            match views.get(view).map(|v| v.features.get(feature)) {
                None => problems.add(
                    &["entities", name, "from"],
                    format!("unknown view `{view}`{}", known(views.keys())),
                ),
                Some(None) => problems.add(
                    &["entities", name, "from"],
                    format!("view `{view}` has no feature `{feature}`"),
                ),
                Some(Some(f)) if f.ty != e.ty => problems.add(
                    &["entities", name, "from"],
                    format!(
                        "`{view}:{feature}` is {}, but entity `{name}` is {}",
                        f.ty, e.ty
                    ),
                ),
                Some(Some(_)) => {}
            }
        }
    }

    // Feature services.
    let mut feature_services = BTreeMap::new();
    for (name, fs) in &raw.feature_services {
        let deadline = match fs.deadline.as_deref() {
            None => DEFAULT_DEADLINE,
            Some(t) => match parse_duration(t) {
                Ok(d) if d.is_zero() => {
                    problems.add(&["feature_services", name, "deadline"], "must be positive");
                    DEFAULT_DEADLINE
                }
                Ok(d) if d > limits.max_deadline => {
                    problems.add(
                        &["feature_services", name, "deadline"],
                        format!(
                            "{} is longer than `[limits] max_deadline` ({})",
                            t,
                            humantime::format_duration(limits.max_deadline)
                        ),
                    );
                    limits.max_deadline
                }
                Ok(d) => d,
                Err(msg) => {
                    problems.add(&["feature_services", name, "deadline"], msg);
                    DEFAULT_DEADLINE
                }
            },
        };
        if fs.features.is_empty() {
            problems.add(
                &["feature_services", name, "features"],
                "a feature service needs at least one feature",
            );
        }
        let mut features = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, text) in fs.features.iter().enumerate() {
            let at = ["feature_services", name, "features", &i.to_string()];
            match resolve_refs(text, &views) {
                Ok(refs) => {
                    for r in refs {
                        if !seen.insert(r.clone()) {
                            problems.add(&at, format!("`{r}` is listed twice"));
                        } else {
                            features.push(r);
                        }
                    }
                }
                Err(msg) => problems.add(&at, msg),
            }
        }
        let mut defaults = HashMap::new();
        for (text, value) in &fs.defaults {
            let at = ["feature_services", name, "defaults", text.as_str()];
            let r = match FeatureRef::parse(text) {
                Ok(r) if seen.contains(&r) => r,
                Ok(r) => {
                    problems.add(
                        &at,
                        format!("`{r}` is not a feature of this feature service"),
                    );
                    continue;
                }
                Err(msg) => {
                    problems.add(&at, msg);
                    continue;
                }
            };
            let ty = views[&r.view].features[&r.feature].ty;
            match toml_to_value(value, ty) {
                Ok(v) => {
                    defaults.insert(r, v);
                }
                Err(msg) => problems.add(&at, msg),
            }
        }
        feature_services.insert(
            name.clone(),
            FeatureService {
                name: name.clone(),
                description: fs.description.clone(),
                deadline,
                features,
                defaults,
            },
        );
    }

    let training_log = raw
        .training_log
        .as_ref()
        .map(|t| validate_training_log(t, base_dir, &feature_services, problems));
    let traces = raw
        .telemetry
        .traces
        .as_ref()
        .map(|t| validate_traces(t, problems));
    let plaid_webhooks = raw.plaid_webhooks.as_ref().and_then(|w| {
        match sources.get(&w.source) {
            Some(s) if s.kind == "plaid" => {}
            Some(s) => {
                problems.add(
                    &["plaid_webhooks", "source"],
                    format!("`{}` is a `{}` source, not a `plaid` one", w.source, s.kind),
                );
                return None;
            }
            None => {
                problems.add(
                    &["plaid_webhooks", "source"],
                    format!("unknown source `{}`{}", w.source, known(sources.keys())),
                );
                return None;
            }
        }
        let max_age = match w.max_age.as_deref() {
            None => Duration::from_secs(300),
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    problems.add(&["plaid_webhooks", "max_age"], "must be positive");
                    return None;
                }
                Err(msg) => {
                    problems.add(&["plaid_webhooks", "max_age"], msg);
                    return None;
                }
            },
        };
        Some(PlaidWebhooksConfig {
            source: w.source.clone(),
            max_age,
        })
    });
    let tls = raw
        .server
        .tls
        .as_ref()
        .map(|t| validate_tls(t, base_dir, problems));
    let worker_threads = raw.server.worker_threads;
    if worker_threads.is_some_and(|n| n == 0 || n > 1024) {
        problems.add(&["server", "worker_threads"], "must be from 1 to 1024");
    }
    let auth = raw.auth.as_ref().map(|a| {
        let names = feature_services.keys().cloned().collect();
        let read = |file: &str| {
            let path = base_dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
        };
        let (callers, found) = crate::auth::validate(a, read, &names);
        for (path, message) in found {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            problems.add(&path, message);
        }
        callers
    });
    let config = Config {
        plaid_webhooks,
        limits,
        entities,
        sources,
        views,
        feature_services,
        training_log,
        traces,
        tls,
        worker_threads,
        auth,
        hash: short_hash(text.as_bytes()),
    };

    // Planning finds dependency cycles; only worth it once names resolve.
    if problems.0.is_empty() {
        for fs in config.feature_services.values() {
            if let Err(msg) = plan::check(&config, &fs.features) {
                problems.add(&["feature_services", &fs.name], msg);
            }
        }
    }
    config
}

/// Validates `[training_log]`; a bad field is reported and replaced by its default.
fn validate_training_log(
    raw: &RawTrainingLog,
    base_dir: &Path,
    feature_services: &BTreeMap<String, FeatureService>,
    problems: &mut Problems,
) -> training_log::TrainingLogConfig {
    const AT: &str = "training_log";
    let sink = match raw.sink.as_deref() {
        None | Some("parquet") => training_log::SinkConfig::Parquet,
        Some("kafka") => match &raw.kafka {
            Some(k) => training_log::SinkConfig::Kafka(validate_kafka(k, problems)),
            None => {
                problems.add(
                    &[AT, "sink"],
                    "sink = \"kafka\" needs a [training_log.kafka] section",
                );
                training_log::SinkConfig::Parquet
            }
        },
        Some(other) => {
            problems.add(
                &[AT, "sink"],
                format!("`{other}` is not a sink: \"parquet\" or \"kafka\""),
            );
            training_log::SinkConfig::Parquet
        }
    };
    if raw.kafka.is_some() && !matches!(sink, training_log::SinkConfig::Kafka(_)) {
        problems.add(
            &[AT, "kafka"],
            "[training_log.kafka] is only read with sink = \"kafka\"",
        );
    }
    match raw.dir.as_deref() {
        Some("") => problems.add(&[AT, "dir"], "must name a directory"),
        None if sink == training_log::SinkConfig::Parquet => problems.add(
            &[AT],
            "the parquet sink needs `dir`, the directory of its files",
        ),
        None if raw.spool_dir.is_none() => problems.add(
            &[AT],
            "the kafka sink needs `spool_dir` (or `dir`, beside which the spool goes)",
        ),
        _ => {}
    }
    let dir = raw
        .dir
        .as_ref()
        .map_or_else(PathBuf::new, |d| base_dir.join(d));
    let positive =
        |value: Option<u64>, field: &str, default: u64, problems: &mut Problems| match value {
            Some(0) => {
                problems.add(&[AT, field], "must be at least 1");
                default
            }
            Some(v) => v,
            None => default,
        };
    let rotate_bytes = positive(
        raw.rotate_bytes,
        "rotate_bytes",
        training_log::DEFAULT_ROTATE_BYTES,
        problems,
    );
    let spool_max_bytes = positive(
        raw.spool_max_bytes,
        "spool_max_bytes",
        training_log::DEFAULT_SPOOL_MAX_BYTES,
        problems,
    );
    let queue_capacity = positive(
        raw.queue_capacity.map(|q| q as u64),
        "queue_capacity",
        training_log::DEFAULT_QUEUE_CAPACITY as u64,
        problems,
    ) as usize;
    let rotate_interval = problems.duration(
        &[AT, "rotate_interval"],
        raw.rotate_interval.as_deref(),
        training_log::DEFAULT_ROTATE_INTERVAL,
        false,
    );
    for (name, rate) in &raw.sample {
        if !feature_services.contains_key(name) {
            problems.add(
                &[AT, "sample", name],
                format!(
                    "unknown feature service `{name}`{}",
                    known(feature_services.keys())
                ),
            );
        }
        if !(0.0..=1.0).contains(rate) {
            problems.add(
                &[AT, "sample", name],
                format!("a sampling rate is between 0 and 1, not {rate}"),
            );
        }
    }
    let pii = match raw.pii.as_deref() {
        None | Some("hash") => training_log::PiiMode::Hash,
        Some("drop") => training_log::PiiMode::Drop,
        Some(other) => {
            problems.add(
                &[AT, "pii"],
                format!("`{other}` is not a pii mode: \"hash\" or \"drop\""),
            );
            training_log::PiiMode::Hash
        }
    };
    let spool_dir = match &raw.spool_dir {
        Some(s) => base_dir.join(s),
        // Beside the log, not in it: dataset readers scan the log directory.
        None => {
            let mut name = dir.file_name().unwrap_or_default().to_os_string();
            name.push(".spool");
            dir.with_file_name(name)
        }
    };
    training_log::TrainingLogConfig {
        sink,
        dir,
        rotate_bytes,
        rotate_interval,
        queue_capacity,
        spool_dir,
        spool_max_bytes,
        sample: raw.sample.clone(),
        pii,
        pii_salt_env: raw
            .pii_salt_env
            .clone()
            .unwrap_or_else(|| training_log::DEFAULT_PII_SALT_ENV.to_owned()),
    }
}

/// Validates `[server.tls]`.
fn validate_tls(
    raw: &crate::tls::RawTls,
    base_dir: &Path,
    problems: &mut Problems,
) -> crate::tls::TlsConfig {
    const AT: [&str; 2] = ["server", "tls"];
    let reload_interval = problems.duration(
        &[AT[0], AT[1], "reload_interval"],
        raw.reload_interval.as_deref(),
        crate::tls::DEFAULT_RELOAD_INTERVAL,
        false,
    );
    if raw.require_client_cert.is_some() && raw.client_ca.is_none() {
        problems.add(
            &[AT[0], AT[1], "require_client_cert"],
            "needs `client_ca` (the CA client certificates are checked against)",
        );
    }
    crate::tls::TlsConfig {
        cert: base_dir.join(&raw.cert),
        key: base_dir.join(&raw.key),
        client_ca: raw.client_ca.as_ref().map(|c| base_dir.join(c)),
        require_client_cert: raw.require_client_cert.unwrap_or(true),
        reload_interval,
    }
}

/// Validates `[telemetry.traces]`; a bad field is reported and replaced by its default.
fn validate_traces(raw: &RawTraces, problems: &mut Problems) -> crate::traces::TracesConfig {
    use crate::traces::{DEFAULT_EXPORT_TIMEOUT, DEFAULT_SAMPLE_RATIO, DEFAULT_SERVICE_NAME};
    const AT: [&str; 2] = ["telemetry", "traces"];
    match url::Url::parse(&raw.endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => problems.add(
            &[AT[0], AT[1], "endpoint"],
            "must be an http:// or https:// URL with a host, e.g. \"http://127.0.0.1:4317\"",
        ),
        Err(e) => problems.add(
            &[AT[0], AT[1], "endpoint"],
            format!("not a URL ({e}), e.g. \"http://127.0.0.1:4317\""),
        ),
    }
    let sample_ratio = match raw.sample_ratio {
        None => DEFAULT_SAMPLE_RATIO,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            problems.add(
                &[AT[0], AT[1], "sample_ratio"],
                format!("{r} is not between 0 and 1"),
            );
            DEFAULT_SAMPLE_RATIO
        }
    };
    let export_timeout = problems.duration(
        &[AT[0], AT[1], "export_timeout"],
        raw.export_timeout.as_deref(),
        DEFAULT_EXPORT_TIMEOUT,
        false,
    );
    crate::traces::TracesConfig {
        endpoint: raw.endpoint.clone(),
        sample_ratio,
        service_name: raw
            .service_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
        export_timeout,
    }
}

/// Validates `[training_log.kafka]`; a bad field is reported and replaced by its default.
fn validate_kafka(raw: &RawKafka, problems: &mut Problems) -> training_log::kafka::KafkaConfig {
    use training_log::kafka;
    const AT: &str = "training_log";
    const K: &str = "kafka";
    if raw.brokers.is_empty() {
        problems.add(
            &[AT, K],
            "`brokers` must list at least one broker, \"host:port\"",
        );
    }
    for b in &raw.brokers {
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            problems.add(&[AT, K, "brokers"], format!("`{b}` is not host:port"));
        }
    }
    let topic = raw.topic.clone().unwrap_or_default();
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if raw.topic.is_none() {
        problems.add(&[AT, K], "`topic` must name the topic records go to");
    } else if topic.is_empty()
        || topic.len() > 249
        || topic == "."
        || topic == ".."
        || !topic.chars().all(legal)
    {
        problems.add(
            &[AT, K, "topic"],
            format!("`{topic}` is not a Kafka topic name (1 to 249 of [A-Za-z0-9._-])"),
        );
    }
    if raw.partition.is_some_and(|p| p < 0) {
        problems.add(&[AT, K, "partition"], "must be 0 or more");
    }
    let batch_records = match raw.batch_records {
        Some(0) => {
            problems.add(&[AT, K, "batch_records"], "must be at least 1");
            kafka::DEFAULT_BATCH_RECORDS
        }
        Some(n) => n,
        None => kafka::DEFAULT_BATCH_RECORDS,
    };
    let linger = problems.duration(
        &[AT, K, "linger"],
        raw.linger.as_deref(),
        kafka::DEFAULT_LINGER,
        true,
    );
    let delivery_timeout = problems.duration(
        &[AT, K, "delivery_timeout"],
        raw.delivery_timeout.as_deref(),
        kafka::DEFAULT_DELIVERY_TIMEOUT,
        false,
    );
    let compression = match raw.compression.as_deref() {
        None | Some("snappy") => kafka::KafkaCompression::Snappy,
        Some("none") => kafka::KafkaCompression::None,
        Some(other) => {
            problems.add(
                &[AT, K, "compression"],
                format!("`{other}` is not a compression: \"snappy\" or \"none\""),
            );
            kafka::KafkaCompression::Snappy
        }
    };
    kafka::KafkaConfig {
        brokers: raw.brokers.clone(),
        topic,
        partition: raw.partition,
        batch_records,
        linger,
        delivery_timeout,
        compression,
        client_id: raw
            .client_id
            .clone()
            .unwrap_or_else(|| kafka::DEFAULT_CLIENT_ID.to_owned()),
    }
}

/// Checks a source's cache settings.
fn cache_policy(
    raw: &RawCache,
    at: &[&str],
    problems: &mut Problems,
) -> Option<crate::cache::CachePolicy> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let mut duration = |name: &'static str, text: &str| {
        parse_duration(text)
            .map_err(|msg| problems.add(&field(name), msg))
            .ok()
    };
    let ttl = duration("ttl", &raw.ttl)?;
    let max_staleness = match raw.max_staleness.as_deref() {
        Some(t) => duration("max_staleness", t)?,
        None => ttl,
    };
    let negative_ttl = match raw.negative_ttl.as_deref() {
        Some(t) => Some(duration("negative_ttl", t)?),
        None => None,
    };
    if max_staleness < ttl {
        problems.add(&field("max_staleness"), "must be at least the ttl");
        return None;
    }
    if raw.max_bytes == Some(0) {
        problems.add(&field("max_bytes"), "must be positive");
        return None;
    }
    if raw.refresh_ahead.is_some_and(|f| !(f > 0.0 && f < 1.0)) {
        problems.add(&field("refresh_ahead"), "must be in (0, 1)");
        return None;
    }
    let shared = match &raw.shared {
        None => None,
        Some(t) => {
            let mut at = at.to_vec();
            at.push("shared");
            Some(shared_tier_policy(t, &at, max_staleness, problems)?)
        }
    };
    Some(crate::cache::CachePolicy {
        ttl,
        max_staleness,
        negative_ttl,
        max_bytes: raw.max_bytes.unwrap_or(64 * 1024 * 1024),
        max_background_calls: raw.max_background_calls.unwrap_or(256),
        refresh_ahead: raw.refresh_ahead,
        shared,
    })
}

/// Checks a cache's shared tier settings.
fn shared_tier_policy(
    raw: &RawSharedTier,
    at: &[&str],
    max_staleness: Duration,
    problems: &mut Problems,
) -> Option<crate::shared_cache::SharedTierPolicy> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    match fetcher_api::EnvTemplate::parse(&raw.url) {
        Err(e) => {
            problems.add(&field("url"), e.to_string());
            return None;
        }
        Ok(t) => {
            let text = t.with_stand_in("x");
            if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
                problems.add(&field("url"), "must start with redis:// or rediss://");
                return None;
            }
        }
    }
    let mut duration = |name: &'static str, text: Option<&str>, default: Duration| match text {
        None => Some(default),
        Some(t) => parse_duration(t)
            .map_err(|msg| problems.add(&field(name), msg))
            .ok(),
    };
    let ttl = duration("ttl", raw.ttl.as_deref(), max_staleness)?;
    let timeout = duration("timeout", raw.timeout.as_deref(), Duration::from_millis(20))?;
    for (name, zero) in [("ttl", ttl.is_zero()), ("timeout", timeout.is_zero())] {
        if zero {
            problems.add(&field(name), "must be positive");
            return None;
        }
    }
    Some(crate::shared_cache::SharedTierPolicy {
        url: raw.url.clone(),
        key_prefix: raw
            .key_prefix
            .clone()
            .unwrap_or_else(|| "feature-gateway:".to_owned()),
        ttl,
        timeout,
    })
}

/// Checks a source's hedging settings.
fn hedge_policy(
    raw: &RawHedge,
    at: &[&str],
    problems: &mut Problems,
) -> Option<crate::hedge::HedgePolicy> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let trigger = match (raw.after.as_deref(), raw.delay.as_deref()) {
        (Some(_), Some(_)) | (None, None) => {
            problems.add(at, "give exactly one of `after` (a percentile) or `delay`");
            return None;
        }
        (Some(after), None) => match parse_percentile(after) {
            Ok(p) => crate::hedge::HedgeTrigger::Percentile(p),
            Err(msg) => {
                problems.add(&field("after"), msg);
                return None;
            }
        },
        (None, Some(delay)) => match parse_duration(delay) {
            Ok(d) if !d.is_zero() => crate::hedge::HedgeTrigger::Fixed(d),
            Ok(_) => {
                problems.add(&field("delay"), "must be positive");
                return None;
            }
            Err(msg) => {
                problems.add(&field("delay"), msg);
                return None;
            }
        },
    };
    let max_extra = raw.max_extra.unwrap_or(1);
    if !(1..=3).contains(&max_extra) {
        problems.add(&field("max_extra"), "must be 1, 2 or 3");
        return None;
    }
    let budget_percent = raw.budget_percent.unwrap_or(0.1);
    if !(budget_percent > 0.0 && budget_percent <= 1.0) {
        problems.add(&field("budget_percent"), "must be in (0, 1]");
        return None;
    }
    Some(crate::hedge::HedgePolicy {
        trigger,
        max_extra,
        budget_percent,
    })
}

/// Parses a percentile such as `p95` or `p99.9` into a fraction (0.95, 0.999).
fn parse_percentile(text: &str) -> Result<f64, String> {
    let value = text
        .strip_prefix('p')
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| *n > 0.0 && *n < 100.0)
        .ok_or_else(|| {
            format!("expected a percentile such as \"p95\" or \"p99.9\", not {text:?}")
        })?;
    Ok(value / 100.0)
}

/// Checks a source's circuit breaker settings.
fn breaker_policy(
    raw: &RawCircuitBreaker,
    at: &[&str],
    problems: &mut Problems,
) -> Option<crate::resilience::BreakerPolicy> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let open_for = match raw.open_for.as_deref() {
        None => Duration::from_secs(5),
        Some(t) => parse_duration(t)
            .map_err(|msg| problems.add(&field("open_for"), msg))
            .ok()?,
    };
    let failure_rate = raw.failure_rate.unwrap_or(0.5);
    if !(failure_rate > 0.0 && failure_rate <= 1.0) {
        problems.add(&field("failure_rate"), "must be in (0, 1]");
        return None;
    }
    let policy = crate::resilience::BreakerPolicy {
        consecutive_failures: raw.consecutive_failures.unwrap_or(5),
        failure_rate,
        window: raw.window.unwrap_or(20),
        open_for,
        half_open_probes: raw.half_open_probes.unwrap_or(1),
    };
    for (name, zero) in [
        ("consecutive_failures", policy.consecutive_failures == 0),
        ("window", policy.window == 0),
        ("half_open_probes", policy.half_open_probes == 0),
    ] {
        if zero {
            problems.add(&field(name), "must be at least 1");
            return None;
        }
    }
    Some(policy)
}

/// Checks a source's retry settings.
fn retry_settings(
    raw: &RawRetry,
    at: &[&str],
    problems: &mut Problems,
) -> Option<crate::resilience::RetrySettings> {
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
    Some(crate::resilience::RetrySettings {
        max_attempts,
        backoff,
        budget_percent,
    })
}

/// Expands one entry of a feature service's `features` list.
fn resolve_refs(text: &str, views: &BTreeMap<String, View>) -> Result<Vec<FeatureRef>, String> {
    let r = FeatureRef::parse(text)?;
    let view = views
        .get(&r.view)
        .ok_or_else(|| format!("unknown view `{}`{}", r.view, known(views.keys())))?;
    if r.feature == "*" {
        return Ok(view
            .features
            .keys()
            .map(|f| FeatureRef {
                view: r.view.clone(),
                feature: f.clone(),
            })
            .collect());
    }
    if !view.features.contains_key(&r.feature) {
        return Err(format!(
            "view `{}` has no feature `{}`{}",
            r.view,
            r.feature,
            known(view.features.keys())
        ));
    }
    Ok(vec![r])
}

/// Converts a default value written in TOML to the feature's type.
fn toml_to_value(value: &toml::Value, ty: FeatureType) -> Result<Value, String> {
    let json = match value {
        toml::Value::Datetime(dt) => serde_json::Value::String(dt.to_string()),
        other => serde_json::to_value(other).map_err(|e| e.to_string())?,
    };
    ty.from_json(&json)
        .map_err(|e| format!("default does not fit the feature's type: {e}"))
}

/// The field named by serde's "unknown field `X`" message, if it is one.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = &message[message.find("unknown field `")? + "unknown field `".len()..];
    Some(&rest[..rest.find('`')?])
}

fn has_duplicates(items: &[String]) -> bool {
    let mut seen = BTreeSet::new();
    !items.iter().all(|i| seen.insert(i))
}

fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).take(20).collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", names.join(", "))
    }
}

/// First 16 hex digits of the SHA-256 of `bytes`.
pub fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod training_log_tests {
    use super::*;

    const BASE: &str = r#"
[entities.user_id]
type = "string"

[sources.tables]
kind = "static"

[views.user]
source = "tables"
entities = ["user_id"]
path = "users.csv"

[views.user.features]
email = { type = "string", pii = true }
score = { type = "double" }

[feature_services.fs]
features = ["user:*"]
"#;

    fn load(extra: &str) -> Result<Config, ConfigErrors> {
        load_str(
            &format!("{BASE}{extra}"),
            "c.toml",
            Path::new("/etc/fg"),
            &crate::builtin_registry(),
        )
    }

    #[test]
    fn training_log_is_off_when_absent_and_defaults_apply() {
        let config = load("").unwrap();
        assert!(config.training_log.is_none());
        assert!(config.views["user"].features["email"].pii);
        assert!(!config.views["user"].features["score"].pii);
        let config = load("[training_log]\ndir = \"log\"\n").unwrap();
        let t = config.training_log.unwrap();
        assert_eq!(t.dir, Path::new("/etc/fg/log"));
        assert_eq!(t.spool_dir, Path::new("/etc/fg/log.spool"));
        assert_eq!(t.rotate_bytes, training_log::DEFAULT_ROTATE_BYTES);
        assert_eq!(t.pii, training_log::PiiMode::Hash);
        assert_eq!(t.pii_salt_env, "FEATURE_GATEWAY_PII_SALT");
    }

    #[test]
    fn every_bad_training_log_field_is_reported_with_its_path() {
        let err = load(
            r#"
[training_log]
dir = "log"
rotate_interval = "soon"
queue_capacity = 0
pii = "blur"
colour = "red"

[training_log.sample]
fs = 1.5
nope = 0.5
"#,
        )
        .unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "training_log.rotate_interval",
            "training_log.queue_capacity",
            "training_log.pii",
            "training_log.colour",
            "training_log.sample.fs",
            "training_log.sample.nope",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert!(err.errors.iter().all(|e| e.position.is_some()), "{err}");
        let err = load("[views.user.features.age]\ntype = \"int64\"\npii = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn the_kafka_sink_is_configured_with_defaults() {
        let config = load(
            "[training_log]\nsink = \"kafka\"\nspool_dir = \"spool\"\n\
             [training_log.kafka]\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"fg.log\"\n",
        )
        .unwrap();
        let t = config.training_log.unwrap();
        assert_eq!(t.spool_dir, Path::new("/etc/fg/spool"));
        let training_log::SinkConfig::Kafka(k) = &t.sink else {
            panic!("{:?}", t.sink)
        };
        use training_log::kafka;
        assert_eq!(k.brokers, ["127.0.0.1:9092"]);
        assert_eq!(k.topic, "fg.log");
        assert_eq!(k.partition, None);
        assert_eq!(k.batch_records, kafka::DEFAULT_BATCH_RECORDS);
        assert_eq!(k.linger, kafka::DEFAULT_LINGER);
        assert_eq!(k.delivery_timeout, kafka::DEFAULT_DELIVERY_TIMEOUT);
        assert_eq!(k.compression, kafka::KafkaCompression::Snappy);
        assert_eq!(k.client_id, "feature-gateway");
        // Parquet stays the default sink.
        let t = load("[training_log]\ndir = \"log\"\n")
            .unwrap()
            .training_log
            .unwrap();
        assert_eq!(t.sink, training_log::SinkConfig::Parquet);
    }

    #[test]
    fn every_bad_kafka_field_is_reported_with_its_path() {
        let err = load(
            r#"
[training_log]
sink = "kafka"

[training_log.kafka]
brokers = ["nope", "h:1"]
topic = "bad topic"
partition = -1
batch_records = 0
linger = "soon"
delivery_timeout = "0s"
compression = "lz4"
acks = 1
"#,
        )
        .unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "training_log",
            "training_log.kafka.brokers",
            "training_log.kafka.topic",
            "training_log.kafka.partition",
            "training_log.kafka.batch_records",
            "training_log.kafka.linger",
            "training_log.kafka.delivery_timeout",
            "training_log.kafka.compression",
            "training_log.kafka.acks",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert_eq!(
            paths
                .iter()
                .filter(|p| **p == "training_log.kafka.brokers")
                .count(),
            1,
            "h:1 is fine: {err}"
        );
        assert!(err.errors.iter().all(|e| e.position.is_some()), "{err}");
        assert!(err.to_string().contains("spool_dir"), "{err}");

        for (text, path, message) in [
            (
                "sink = \"s3\"\ndir = \"log\"\n",
                "training_log.sink",
                "not a sink",
            ),
            (
                "sink = \"kafka\"\ndir = \"log\"\n",
                "training_log.sink",
                "needs a [training_log.kafka]",
            ),
            (
                "dir = \"log\"\n[training_log.kafka]\nbrokers = [\"h:1\"]\ntopic = \"t\"\n",
                "training_log.kafka",
                "only read with sink",
            ),
            (
                "sink = \"kafka\"\ndir = \"log\"\n[training_log.kafka]\n",
                "training_log.kafka",
                "`topic`",
            ),
            ("rotate_bytes = 5\n", "training_log", "needs `dir`"),
        ] {
            let err = load(&format!("[training_log]\n{text}")).unwrap_err();
            assert!(
                err.errors
                    .iter()
                    .any(|e| e.path == path && e.message.contains(message)),
                "{path}: {message} not in {err}"
            );
        }
    }
}
