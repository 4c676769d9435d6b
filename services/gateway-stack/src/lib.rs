//! The tower stack every source sits behind, built in one place ([`stack`]).
//!
//! Fetchers only make their call. Everything a production gateway does around a call is a layer
//! here, written once and configured per source, so every source kind gets it and no fetcher
//! re-implements it. Layers, outermost first:
//! - [`CacheLayer`]: TTL, stale serving within a bound, background completion (see
//!   [`cache`]); answers one [`Slot`] per key;
//! - [`TelemetryLayer`]: one latency and outcome record per fetch, whatever the outcome;
//! - [`CircuitBreakerLayer`]: opens after repeated failures and answers at once while open;
//! - [`DeadlineLayer`]: the call's time limit is the lesser of the source's timeout and what is
//!   left of the request's deadline;
//! - [`HedgeLayer`]: for sources that opt in, a second attempt when the first is slower than
//!   usual, the first answer winning (see [`hedge`]);
//! - tower's `Retry` with [`RetryPolicy`]: retryable failures, within the deadline and a budget;
//! - [`BulkheadLayer`]: at most `max_concurrency` calls in flight; one more is refused at once
//!   (so a slow source cannot take every task and connection of the gateway).
//!
//! # Layout
//! One file per layer, each with its `XLayer` and the service it wraps: [`cache`] (with its
//! compact store, the shared tier in Redis and invalidation), [`telemetry`], [`breaker`],
//! [`deadline`], [`hedge`], [`retry`], [`bulkhead`]. [`service`] holds the types every layer
//! shares ([`SourceService`], [`BoxFuture`], [`Slot`]); [`events`] every metric and log line
//! of the stack, one file per layer; [`span`] the request span carried into spawned tasks.
//!
//! # What may import what
//! `service`, `events` and `span` are leaves: they import no other module of the crate. A
//! layer imports leaves only, never another layer; this file alone composes them. Configuration
//! comes from `gateway-config` as it was validated: [`stack`] takes a
//! [`SourceConfig`] unchanged. Nothing here knows requests, plans or the gRPC server.
//!
//! # Adding a layer
//! A new resilience layer (say an adaptive concurrency limit) is:
//! 1. one file here, `limit.rs`, with `LimitLayer::new(config: Option<&LimitConfig>, source)`
//!    returning a pass-through when the source does not opt in, and its metrics in
//!    `events/limit.rs`;
//! 2. one config field: `limit: Option<LimitConfig>` in `gateway-config`'s [`SourceConfig`],
//!    validated in its own `limit.rs` there (with a `RawLimit` section);
//! 3. one `.layer(LimitLayer::new(source.limit.as_ref(), &name))` line in [`source_stack`],
//!    with a comment saying why it sits where it does.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod bulkhead;
pub mod cache;
pub mod deadline;
pub mod events;
pub mod hedge;
pub mod retry;
pub mod service;
pub mod span;
pub mod telemetry;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use fetcher_api::{FetchError, FetchRequest, Fetcher, Row};
use gateway_config::SourceConfig;
use tower::{Service, ServiceBuilder, retry::RetryLayer, util::BoxCloneSyncService};

pub use breaker::CircuitBreakerLayer;
pub use bulkhead::BulkheadLayer;
pub use cache::{CacheControl, CacheLayer};
pub use deadline::{DeadlineLayer, effective_deadline, parse_grpc_timeout};
pub use hedge::HedgeLayer;
pub use retry::RetryPolicy;
pub use service::{BoxFuture, FetcherService, GatewayService, Slot, SourceService};
pub use telemetry::TelemetryLayer;

/// The whole stack of a source as the gateway uses it: the cache over [`source_stack`].
pub fn stack(fetcher: Arc<dyn Fetcher>, source: &SourceConfig) -> GatewayService {
    let cache = CacheLayer::new(source.cache.as_ref(), source.timeout, &source.name);
    stack_with_cache(cache, fetcher, source)
}

/// [`stack`] with a cache layer built by the caller (with a shared tier, or kept for
/// its [`crate::cache::CacheControl`]).
pub fn stack_with_cache(
    cache: CacheLayer,
    fetcher: Arc<dyn Fetcher>,
    source: &SourceConfig,
) -> GatewayService {
    let service = ServiceBuilder::new()
        // Outermost: a hit never reaches the source, its telemetry or its concurrency bound,
        // and a call it lets finish in the background is bounded by the source's own timeout.
        .layer(cache)
        .service(layers(fetcher, source));
    BoxCloneSyncService::new(service)
}

/// Wraps `fetcher` in the gateway's stack.
pub fn source_stack(fetcher: Arc<dyn Fetcher>, source: &SourceConfig) -> SourceService {
    BoxCloneSyncService::new(layers(fetcher, source))
}

/// The layers of [`source_stack`] as one concrete service, so the cache over them boxes the
/// whole stack once (not the cache and, apart, the layers under it: one allocation per call).
fn layers(
    fetcher: Arc<dyn Fetcher>,
    source: &SourceConfig,
) -> impl Service<FetchRequest, Response = Vec<Row>, Error = FetchError, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let name: Arc<str> = source.name.as_str().into();
    let retry = source
        .retry
        .as_ref()
        .map(|r| RetryLayer::new(RetryPolicy::new(r, &name)));
    ServiceBuilder::new()
        // Outermost, so refusals, open circuits and timeouts are recorded like any outcome.
        .layer(TelemetryLayer::new(name.clone()))
        // Sees each call's final outcome (after retries); open, it answers at once.
        .layer(CircuitBreakerLayer::new(
            source.circuit_breaker.as_ref(),
            &name,
        ))
        // Bounds the call and its retries together by the request's deadline.
        .layer(DeadlineLayer::new(source.timeout))
        // Inside the deadline, which ends every attempt; outside retries and the bulkhead, so
        // each attempt retries on its own and takes a permit (hedges cannot pass the bound).
        .layer(HedgeLayer::new(source.hedge.as_ref(), &name))
        // Inside the deadline: a retry happens only if there is time left for it.
        .option_layer(retry)
        // Innermost: every attempt needs a permit, so retries cannot exceed the bound.
        .layer(BulkheadLayer::new(source.max_concurrency))
        .service(FetcherService(fetcher))
}
