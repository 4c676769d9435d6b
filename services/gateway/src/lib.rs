//! feature-gateway: given entity keys and the name of a model's feature set, fetch every
//! feature from the sources that hold them, inside the caller's deadline, and answer with one
//! ordered, typed vector and a status per feature.
//!
//! # Layout
//! - [`config`]: the configuration file; parse, then validate with no I/O.
//! - [`plan`]: a feature service compiled into a staged DAG of view fetches.
//! - [`cache`]: the per-source cache (TTL, stale serving, background fill), the outermost layer.
//! - [`shared_cache`]: the cache's optional second tier in Redis, shared by every replica.
//! - [`webhooks`]: the Plaid webhook endpoint: verification and cache invalidation.
//! - [`resilience`]: the circuit breaker and the retry policy.
//! - [`hedge`]: hedged requests for sources that opt in.
//! - [`admission`]: load shedding at the gRPC server (RESOURCE_EXHAUSTED when saturated).
//! - [`stack`]: the tower layers every source sits behind (deadline, bulkhead, telemetry).
//! - [`executor`]: runs a plan for a batch of rows and assembles the vectors and statuses.
//! - [`request`]: checks a request's inputs; the table from request errors to gRPC codes.
//! - [`gateway`]: the built gateway (sources connected, plans compiled).
//! - [`server`]: the gRPC service, health, reflection, admin port and graceful shutdown.
//! - [`telemetry`]: every metric and log line, as typed events.
//! - [`auth`]: callers by bearer token or mTLS identity, what each may read, their rates.
//! - [`tls`]: TLS and mutual TLS on the gRPC port, certificates reloaded on change.
//! - [`traces`]: the log subscriber, and OpenTelemetry traces over OTLP with W3C propagation.
//! - [`demo`]: the embedded demo deployment.
#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod cache;
pub mod config;
pub mod demo;
pub mod executor;
pub mod gateway;
pub mod hedge;
pub mod plan;
pub mod request;
pub mod resilience;
pub mod server;
pub mod shared_cache;
pub mod stack;
pub mod telemetry;
pub mod tls;
pub mod traces;
pub mod webhooks;

pub use gateway::{Gateway, builtin_registry};
