//! `[sources.NAME]`: where feature values live. The fields every kind has are here, with the
//! per-source stack's sections ([`crate::cache`], [`crate::breaker`], [`crate::retry`],
//! [`crate::hedge`]); a kind's own options go to its fetcher factory in a [`SourceSpec`].
//! [`SourceConfig`] is what the stack of a source is built from, unchanged.

use std::time::Duration;

use fetcher_api::SourceSpec;
use serde::Deserialize;

use crate::{
    breaker::{BreakerConfig, RawCircuitBreaker},
    cache::{CacheConfig, RawCache},
    hedge::{HedgeConfig, RawHedge},
    retry::{RawRetry, RetryConfig},
};

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

/// A source. Two are equal when every setting and every view served through it are: what a
/// configuration reload compares to keep a running source (its connections, pools and cache).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
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
    pub cache: Option<CacheConfig>,
    /// Its circuit breaker, if any.
    pub circuit_breaker: Option<BreakerConfig>,
    /// Its retries, if any.
    pub retry: Option<RetryConfig>,
    /// Its hedged requests, if any.
    pub hedge: Option<HedgeConfig>,
    /// What its fetcher factory is given.
    pub spec: SourceSpec,
}

/// The default per-source concurrency bound.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;

impl SourceConfig {
    /// A source of `kind` named `name` with every setting at its default (no timeout, the
    /// default concurrency bound, no cache, breaker, retries or hedging) and no views: the base
    /// of a source built in code rather than read from a file.
    pub fn new(name: &str, kind: &str) -> Self {
        SourceConfig {
            name: name.to_owned(),
            kind: kind.to_owned(),
            timeout: None,
            max_concurrency: DEFAULT_MAX_CONCURRENCY,
            required: false,
            cache: None,
            circuit_breaker: None,
            retry: None,
            hedge: None,
            spec: SourceSpec {
                name: name.to_owned(),
                kind: kind.to_owned(),
                options: Default::default(),
                views: Vec::new(),
                base_dir: ".".into(),
            },
        }
    }
}
