//! The extension point of feature-gateway: what a source of features implements.
//!
//! # Layout
//! - [`value`]: the typed value model ([`Value`], [`FeatureType`], [`KeyPart`]) shared by every
//!   fetcher, the planner and the wire conversions.
//! - [`fetcher`]: the batch-first [`Fetcher`] trait, its request ([`FetchRequest`]) and its
//!   rows ([`Row`], [`Record`], [`Cell`]).
//! - [`error`]: [`FetchError`], which classifies a failure (timeout, unavailable, rate limited,
//!   ...) and says whether retrying it may help. Fetchers only classify; the gateway's tower stack
//!   decides what to do about it.
//! - [`registry`]: [`FetcherFactory`] (validate a source's configuration without I/O, then build
//!   the fetcher with I/O) and the [`Registry`] that maps a configuration's `kind` to a factory.
//! - [`secret`]: `${NAME}` environment references in options ([`EnvTemplate`]) and where they are
//!   looked up ([`Env`]), shared by every fetcher kind so that all parse, resolve and redact them
//!   alike.
//! - [`config`]: the configuration vocabulary shared with the gateway: [`ConfigDuration`] (a
//!   duration written `"250ms"`) and [`Problem`] (what validation found, placed on the source or
//!   a view and at a field inside its options).
//! - [`options`]: parsing and compiling a source's and its views' options, the part of
//!   `validate` and `build` every kind shares ([`validate_options`], [`build_options`]).
//! - [`trace_context`]: the W3C Trace Context headers a fetcher sets on its outgoing calls, so a
//!   request's trace continues in the services it calls.
//! - `tls` (feature `tls`): reading PEM certificates and a client certificate with its key for
//!   rustls, with messages naming the `tls_*` options.
//!
//! A fetcher makes its call and nothing else: timeouts, retries, caching, concurrency limits and
//! metrics are layers the gateway wraps around every fetcher in one place.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod fetcher;
pub mod options;
pub mod registry;
pub mod secret;
#[cfg(feature = "tls")]
pub mod tls;
pub mod trace_context;
pub mod value;

pub use config::{ConfigDuration, Problem, Subject};
pub use error::{ErrorClass, FetchError};
pub use fetcher::{
    Cell, CellError, EntityKey, EventObject, FetchRequest, Fetcher, PushReport, Record, Row,
};
pub use options::{build_options, validate_options};
pub use registry::{
    BuildError, FetcherFactory, KeySpec, Options, Registry, SourceSpec, UnknownKind, ViewSpec,
};
pub use secret::{Env, EnvTemplate, TemplateError, TemplatePart};
pub use value::{FeatureType, KeyPart, Value};
