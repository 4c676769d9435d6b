//! The configuration of feature-gateway: one TOML file of entities, sources, feature views and
//! feature services, plus the server's own sections (limits, TLS, callers, traces, the training
//! log, Plaid webhooks).
//!
//! Loading has steps kept apart so each can be tested and run on its own:
//! 1. **parse** the TOML into [`RawConfig`] (a syntax error stops here, with its position);
//! 2. **validate** with no I/O into a [`Config`]: every unknown field, unknown name, bad type,
//!    bad duration and bad option of a source kind is collected, each with its file position,
//!    and all are reported together ([`load`], [`ConfigErrors`]);
//! 3. the caller compiles the feature services (the gateway's planner, which finds dependency
//!    cycles) and builds the sources with I/O. `feature-gateway validate` runs all but the I/O.
//!
//! # Layout
//! One file per section, each holding the section as written (`RawX`), as validated (`XConfig`)
//! and the function that turns one into the other:
//! - [`limits`], [`entity`], [`source`] (with [`cache`], [`breaker`], [`retry`], [`hedge`]),
//!   [`view`], [`feature_service`]: what is served;
//! - [`tls`], [`auth`], [`traces`], [`training_log`], [`webhooks`]: the server around it;
//! - [`load`]: reading the file, positioned problems; [`env`]: the variables it names;
//!   [`validate`](mod@validate): the checks that span sections (names resolve, types agree).
//!
//! # What may import what
//! This crate is a leaf above `fetcher-api` (the value model, and the source kinds' own
//! validation through their [`Registry`](fetcher_api::Registry)) and `derived` (derived views'
//! expressions, type-checked here, evaluated by the gateway): it imports no component of
//! the gateway, holds no runtime type and does no network I/O. Components import their
//! `XConfig` from here and take it unchanged (e.g. the stack takes a [`SourceConfig`]).
//!
//! See `README.md` ("Configuration") for the reference with an example.
#![forbid(unsafe_code)]

pub mod auth;
pub mod breaker;
pub mod cache;
pub mod entity;
pub mod env;
pub mod feature_service;
pub mod hedge;
pub mod limits;
pub mod load;
mod problems;
pub mod retry;
pub mod source;
pub mod tls;
pub mod traces;
pub mod training_log;
mod validate;
pub mod view;
pub mod webhooks;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::{
    entity::RawEntity, feature_service::RawFeatureService, source::RawSource, traces::RawTraces,
    training_log::RawTrainingLog, view::RawView, webhooks::RawPlaidWebhooks,
};

pub use auth::{CallerConfig, RawAuth, TokenHash};
pub use breaker::BreakerConfig;
pub use cache::{CacheConfig, SharedCacheConfig, SharedTierMode};
pub use entity::{EntityConfig, EntityFrom};
pub use feature_service::{DEFAULT_DEADLINE, FeatureRef, FeatureServiceConfig, MonitorConfig};
pub use hedge::{HedgeConfig, HedgeTrigger};
pub use limits::LimitsConfig;
pub use load::{
    Check, ConfigError, ConfigErrors, Parsed, load, load_checked, load_str, load_str_checked, parse,
};
pub use retry::RetryConfig;
pub use source::{DEFAULT_MAX_CONCURRENCY, SourceConfig};
pub use tls::TlsConfig;
pub use traces::TracesConfig;
pub use view::{FeatureConfig, ViewConfig};
pub use webhooks::PlaidWebhooksConfig;

/// The source kind served by the gateway itself from the request's context.
pub const REQUEST_KIND: &str = "request";

/// The view kind computed from other features by CEL expressions.
pub const DERIVED_KIND: &str = "derived";

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
    pub auth: Option<RawAuth>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawServer {
    /// `[server.tls]`: TLS (and mutual TLS) on the gRPC port; plaintext when absent.
    #[serde(default)]
    pub tls: Option<tls::RawTls>,
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

/// A validated configuration: every name resolves, every type is known.
#[derive(Debug)]
pub struct Config {
    /// Request limits.
    pub limits: LimitsConfig,
    /// Entities by name.
    pub entities: BTreeMap<String, EntityConfig>,
    /// Sources by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Views by name.
    pub views: BTreeMap<String, ViewConfig>,
    /// Feature services by name.
    pub feature_services: BTreeMap<String, FeatureServiceConfig>,
    /// The training log, when configured.
    pub training_log: Option<training_log::TrainingLogConfig>,
    /// Where traces are exported, when configured.
    pub traces: Option<TracesConfig>,
    /// TLS on the gRPC port, when configured.
    pub tls: Option<TlsConfig>,
    /// Threads serving requests, when set (`[server] worker_threads`).
    pub worker_threads: Option<usize>,
    /// The callers allowed, when `[auth]` is configured.
    pub auth: Option<Vec<CallerConfig>>,
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

/// First 16 hex digits of the SHA-256 of `bytes`.
pub fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}
