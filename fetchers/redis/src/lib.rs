//! The `redis` source: precomputed features in Redis (standalone, Redis Cluster or behind
//! Sentinel), one pipelined round trip per batch; and [`materialize`], which loads a CSV file
//! into Redis exactly as a view reads it.
//!
//! # Configuration
//! ```toml
//! [sources.online_store]
//! kind = "redis"
//! url = "rediss://:${REDIS_PASSWORD}@cache.internal:6380/0"  # resolved at build, never logged
//! mode = "standalone"              # or "cluster" / "sentinel"
//! nodes = ["cache-2.internal:6380"] # cluster: more seed nodes; sentinel: the other sentinels
//! # sentinel_service_name = "features"  # sentinel mode only
//! pool_size = 4                    # connections, each pipelining many requests
//! connect_timeout = "1s"
//! command_timeout = "50ms"         # per batch; the request's deadline applies if shorter
//! tls_ca_file = "certs/redis-ca.pem"  # optional (rediss://): roots instead of the system's
//! # tls_client_cert_file = "certs/gateway.pem"  # optional: client certificate (mutual TLS)
//! # tls_client_key_file = "certs/gateway.key"
//!
//! [views.user_stats]
//! source = "online_store"
//! entities = ["user_id"]
//! key = "user_stats:{user_id}"     # one placeholder per entity; keys are used verbatim
//! encoding = "hash"                # default; or "json" (one JSON object per key)
//! fields = { txn_count_7d = "tc7" } # optional: the field of a feature, when not its name
//! event_time_field = "updated_at"  # optional: RFC 3339 or Unix seconds, enables max_age
//! ```
//! Hash fields hold each value's text form (`42`, `0.25`, `true`, RFC 3339, JSON arrays for
//! lists), parsed with the feature's declared type; see [`codec`] for the exact forms, which
//! [`materialize`] writes.
//!
//! # Layout
//! - [`config`]: the option structs and their pure compilation (what `validate` checks).
//! - [`client`]: the connection pool, its reconnection and fail-fast policy, error classes.
//! - [`fetcher`]: [`RedisFetcher`], the pipelined reads and how each answer becomes a row.
//! - [`codec`]: the stored text and JSON forms of values.
//! - [`materialize`]: the CSV loader behind `feature-gateway materialize`.
//!
//! # Failure
//! Validation names every bad option, never quoting the URL (it may hold a password; a password
//! written literally in the file is refused). Building fails on an unset `${VAR}` (naming the
//! variable), a refused password or an unusable URL; a server that is not up yet only logs a
//! warning, and the source reads as down (fast, retryable errors) until it reconnects by itself.
//! At fetch time see [`fetcher`] for the table of what Redis holds and what the row is.

#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod config;
pub mod fetcher;
pub mod materialize;

use std::sync::Arc;

use async_trait::async_trait;
use fetcher_api::{BuildError, Env, Fetcher, FetcherFactory, Problem, SourceSpec};

pub use config::{Encoding, Mode, RedisSourceConfig, RedisViewConfig};
pub use fetcher::RedisFetcher;
pub use materialize::{
    MaterializeError, MaterializeOptions, MaterializeReport, Progress, materialize,
};

/// Builds `redis` fetchers.
#[derive(Clone, Debug, Default)]
pub struct RedisFactory {
    /// Where `${NAME}` in the URL is looked up (see [`fetcher_api::secret`]).
    env: Env,
}

impl RedisFactory {
    /// A factory that resolves `${NAME}` in the URL from the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory that resolves `${NAME}` with `env` instead (tests, or a secrets store).
    pub fn with_env(env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        RedisFactory {
            env: Env::from_fn(env),
        }
    }
}

#[async_trait]
impl FetcherFactory for RedisFactory {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(source, config::compile_source, config::compile_view)
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let (compiled, views) =
            fetcher_api::build_options(source, config::compile_source, config::compile_view)?;
        let fail = |message: String| BuildError::new(source, message);
        let pool = client::connect(&source.name, &compiled, &source.base_dir, &self.env, false)
            .await
            .map_err(fail)?;
        Ok(Arc::new(RedisFetcher::new(
            source.name.clone(),
            pool,
            views,
            compiled.command_timeout,
        )))
    }
}
