//! feature-gateway's serving core: given entity keys and the name of a model's feature set,
//! fetch every feature from the sources that hold them, inside the caller's deadline, and answer
//! with one ordered, typed vector and a status per feature.
//!
//! The configuration is `gateway-config`'s, each source sits behind `gateway-stack`'s tower
//! stack, and the source kinds come from a `fetcher_api::Registry` (`fetcher-builtin`'s). The
//! `feature-gateway` binary (its own crate) runs this.
//!
//! # Layout
//! - [`plan`]: a feature service compiled into a staged DAG of view fetches.
//! - [`executor`]: runs a plan for a batch of rows and assembles the vectors and statuses.
//! - [`request`]: checks a request's inputs; the table from request errors to gRPC codes.
//! - [`monitor`]: drift monitoring online: served vectors counted over rolling windows on a
//!   worker thread and compared with each monitored feature service's reference profile.
//! - [`gateway`]: the built gateway (sources connected behind their stacks, plans compiled,
//!   monitors' references read).
//! - [`reload`]: the served generation behind one atomically swapped pointer, and the
//!   configuration reload that replaces it (SIGHUP, a change of the file, `POST /admin/reload`).
//! - [`server`]: the gRPC service, health, reflection, admin port and graceful shutdown.
//! - [`admission`]: load shedding at the gRPC server (RESOURCE_EXHAUSTED when saturated).
//! - [`caller_errors`]: a request message that does not decode or is too large, and a malformed
//!   `grpc-timeout`, answered as the caller's mistakes (INVALID_ARGUMENT, RESOURCE_EXHAUSTED).
//! - [`auth`]: callers by bearer token or mTLS identity, what each may read, their rates.
//! - [`tls`]: TLS and mutual TLS on the gRPC port, certificates reloaded on change.
//! - [`webhooks`]: the Plaid webhook endpoint: verification and cache invalidation.
//! - [`telemetry`]: the server's metrics and log lines, as typed events.
//! - [`traces`]: the log subscriber, and OpenTelemetry traces over OTLP with W3C propagation.
//! - [`status`], [`peer`]: the feature status, and who is at the other end of a connection.
//! - [`demo`]: the embedded demo deployment.
//!
//! # What may import what
//! A module imports only modules above it in this order (a test module may import anything):
//! 1. leaves, which import no module of this crate: [`status`], [`peer`], [`traces`],
//!    [`caller_errors`];
//! 2. [`telemetry`] (imports `status`);
//! 3. [`plan`]; then [`executor`] (plan, status); then [`request`] (plan, executor, auth's
//!    `Caller`, telemetry);
//! 4. [`auth`] (peer, telemetry), then [`tls`] (auth, peer); [`admission`] (telemetry);
//!    [`webhooks`];
//! 5. [`monitor`] (plan, executor, status, telemetry); then [`gateway`] (plan, executor,
//!    request, webhooks, monitor); then [`reload`] (gateway, plan, telemetry);
//! 6. [`server`] (everything above); [`demo`] (gateway).
//!
//! `auth` sits below `request` only through [`auth::Caller`], a plain value. Nothing here is
//! imported by `gateway-config` or `gateway-stack`.
#![forbid(unsafe_code)]

pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod caller_errors;
pub mod demo;
pub mod executor;
pub mod gateway;
pub mod monitor;
pub(crate) mod peer;
pub mod plan;
pub mod push;
pub mod reload;
pub mod request;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod traces;
pub(crate) mod webhooks;

pub use gateway::{Gateway, GatewayBuildError, load_config};
