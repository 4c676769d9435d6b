//! The training log: every feature vector the gateway serves, exactly as served, written to
//! Parquet files that pandas, pyarrow, DuckDB and Spark read as they are (or to a Kafka topic,
//! for gateways on more than one machine), and the `training-set` join that turns those files
//! plus a labels file into a training set.
//!
//! # Layout
//! - [`schema`]: the versioned record schema: which columns a feature service's files have.
//! - [`record`]: one logged vector, in a form the writer, the spool and tests share.
//! - [`spool`]: the append-only local overflow, replayed when the sink recovers or at start.
//! - `sink`: the `Sink` trait the writer drives, and the timing writer and sinks share;
//!   - `sink::parquet`: Parquet files, partitioned by feature service and date, committed by
//!     rename;
//!   - `sink::kafka`: the Kafka sink and its protobuf message, acknowledged by the broker
//!     (public as [`kafka`], for its configuration and its message's decoding).
//! - [`training_set`]: joining logs with labels (reads the Parquet sink's layout).
//! - [`writer`]: [`TrainingLog`], the handle serving submits to, and its writer thread.
//!
//! # What may import what
//! A module imports only modules above it in this list, never one below it, so there are no
//! import cycles (unit tests may import anything):
//! 1. `record` and `schema`, which import nothing of the crate but the root's `PiiMode`;
//! 2. `spool` (records and schemas);
//! 3. `sink`; `sink::parquet` and `sink::kafka` import `sink` and what is above, never each
//!    other;
//! 4. `training_set` (reads the Parquet sink's layout);
//! 5. `writer`, which drives a sink and the spool; nothing imports it.
//!
//! The crate root declares the modules and re-exports their public names; what it defines
//! (configuration, errors) any module may use. What a sink and the writer both need (the retry
//! interval, the tick, the `Sink` and `Batch` traits) is defined in `sink`, not in `writer`, for
//! the sinks may not import the writer.
//!
//! # Contract
//! Serving never waits on the log: [`TrainingLog::submit`] is a `try_send` into a bounded queue;
//! a full queue or a failing sink spills to the spool; a record that cannot be kept anywhere is
//! counted through [`Observer::dropped`] and logged. Delivery: a clean shutdown
//! ([`TrainingLog::close`]) writes every record exactly once. After a crash (kill -9), records
//! still in the memory queue or in a file not yet committed are lost (at most one rotation's
//! worth per open file); spooled records are replayed at the next start, exactly once (a replayed
//! segment's files have deterministic names, so a replay interrupted after some of them were
//! committed skips those on the next try). The Kafka sink is at-least-once: see [`kafka`].
#![forbid(unsafe_code)]

pub mod record;
pub mod schema;
pub(crate) mod sink;
pub mod spool;
pub mod training_set;
pub mod writer;

use std::path::PathBuf;

pub use fetcher_api::{FeatureType, Value};
pub use record::{Cell, FeatureEntry, LoggedStatus, Record};
pub use schema::{Column, FeatureColumn, LogSchema, SCHEMA_VERSION, SchemaDef};
pub use writer::{Observer, TrainingLog};

// The validated `[training_log]` section is the configuration crate's, as every section is.
pub use gateway_config::training_log::{
    DEFAULT_PII_SALT_ENV, DEFAULT_QUEUE_CAPACITY, DEFAULT_ROTATE_BYTES, DEFAULT_ROTATE_INTERVAL,
    DEFAULT_SPOOL_MAX_BYTES, PiiMode, SinkConfig, TrainingLogConfig,
};

// The Kafka sink's configuration and message format are public as `training_log::kafka`; the
// module itself lives with the other sinks.
pub use sink::kafka;

/// Why the training log could not start.
#[derive(Debug, thiserror::Error)]
pub enum TrainingLogError {
    /// A directory could not be created or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Features are to be hashed but the salt's environment variable is unset or empty.
    #[error(
        "features marked pii are hashed in the training log, but the salt variable {0} is not set"
    )]
    MissingSalt(String),
    /// The writer thread could not start.
    #[error("cannot start the training log writer: {0}")]
    Thread(std::io::Error),
}
