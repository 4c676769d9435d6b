//! The command line: the subcommands and their flags (clap).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

/// A real-time feature-serving gateway.
#[derive(Debug, Parser)]
#[command(name = "feature-gateway", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FEATURE_GATEWAY_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Listen {
    /// Address of the gRPC server.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (GET /metrics in Prometheus text format, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the feature services of a configuration file.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        #[command(flatten)]
        listen: Listen,
    },
    /// Check a configuration file without connecting to anything; exit code 2 on errors.
    Validate {
        /// The configuration file.
        file: PathBuf,
        /// Do not check that the `${NAME}` variables the file names are set (for checking a file
        /// where its secrets are not meant to exist, e.g. in CI).
        #[arg(long)]
        no_env: bool,
    },
    /// Print the salted hash of a bearer token for `[auth.callers.NAME] token_hash`. The token is
    /// read from standard input (one line), so it stays out of shell history.
    HashToken,
    /// Load precomputed features from a CSV file into the Redis view that serves them, exactly
    /// as the gateway reads them back. Exit code 3 when some rows were bad (each is listed).
    Materialize(MaterializeArgs),
    /// Join the training log with a labels file into a Parquet training set: one row per
    /// labelled request, the features exactly as served, their statuses, then the labels. With
    /// --config, derived features are recomputed from the logged inputs to check the log
    /// (--recompute, exit code 3 when some differ) or added to it (--derive).
    TrainingSet(TrainingSetArgs),
    /// Profile a feature service's served features into a reference profile (a JSON file: per
    /// feature its statuses, null rate, quantiles and bins or top categories, and their
    /// sketches), from a range of the training log or from a training set.
    Profile(ProfileArgs),
    /// Compare the features served in a range of the training log with a reference profile:
    /// PSI, null rate, statuses and defaults per feature, written as skew.md and skew.html in
    /// the report directory, ranked by how far each moved. Exit code 4 when a feature moved
    /// past a threshold.
    Skew(SkewArgs),
    /// Consume the Kafka topic of a `stream` source into its views' tiles in Redis, exactly once
    /// in effect, until SIGTERM or Ctrl-C. Metrics on the admin port; a progress line on a
    /// terminal.
    Ingest(IngestArgs),
    /// Compute a `stream` source's aggregates from a file of historical events, with the same
    /// tile and merge code as serving: at the times of a spine (a Parquet training file for
    /// `training-set`), and/or loaded into Redis as tiles (--load).
    Backfill(BackfillArgs),
    /// Serve the embedded demo (a fraud model's features from local tables): no database needed.
    Demo {
        /// Write the demo's configuration and tables here and keep them (default: a temporary
        /// directory removed on exit).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        listen: Listen,
    },
}

/// The flags of `materialize`.
#[derive(Debug, clap::Args)]
pub struct MaterializeArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The view to load (its source must be of kind `redis`).
    #[arg(long)]
    pub view: String,
    /// The CSV file: the view's entity columns, then one column per feature.
    #[arg(long)]
    pub input: PathBuf,
    /// Expire every written key after this long, e.g. "7d".
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// Check every row, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rows per pipelined round trip.
    #[arg(long, default_value_t = 1000)]
    pub chunk_rows: usize,
}

/// The flags of `training-set`.
#[derive(Debug, clap::Args)]
pub struct TrainingSetArgs {
    /// The training log's directory (`[training_log] dir`).
    #[arg(long)]
    pub logs: PathBuf,
    /// The labels: CSV with a header, or `.parquet`; a `request_id` column, then label
    /// columns (label time included).
    #[arg(long)]
    pub labels: PathBuf,
    /// The feature service whose vectors to use.
    #[arg(long)]
    pub feature_service: String,
    /// Only vectors served under this definition hash (needed when the logs hold several).
    #[arg(long)]
    pub definition_hash: Option<String>,
    /// Only vectors served at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub from: Option<std::time::SystemTime>,
    /// Only vectors served before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub to: Option<std::time::SystemTime>,
    /// Leave out rows in which some feature was not PRESENT.
    #[arg(long)]
    pub present_only: bool,
    /// The Parquet file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// The configuration defining the derived features that --recompute and --derive evaluate
    /// (loaded as `validate --no-env` does; it must have the feature service, whose defaults
    /// apply as when serving).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Recompute every derived feature of the log from the logged inputs with the
    /// configuration's expressions and compare with what was logged (value bit for bit, and
    /// status); exit code 3 when some rows differ (each feature's count and examples listed).
    /// The training set holds the logged values either way.
    #[arg(long, requires = "config")]
    pub recompute: bool,
    /// Add derived feature VIEW:FEATURE of the configuration, which the logged vectors do not
    /// have, computed from their logged inputs (`feature:`, `status:` and `age_ms:` columns).
    /// Repeatable.
    #[arg(long, value_name = "VIEW:FEATURE", requires = "config")]
    pub derive: Vec<String>,
}

/// The flags of `profile`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["logs", "training_set"])))]
pub struct ProfileArgs {
    /// The training log's directory (`[training_log] dir`).
    #[arg(long, requires = "feature_service")]
    pub logs: Option<PathBuf>,
    /// A training set written by `feature-gateway training-set`, instead of the log.
    #[arg(long)]
    pub training_set: Option<PathBuf>,
    /// The feature service to profile (with --logs; a training set holds one).
    #[arg(long)]
    pub feature_service: Option<String>,
    /// Only vectors served under this definition hash (needed when the logs hold several).
    #[arg(long)]
    pub definition_hash: Option<String>,
    /// Only vectors served at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub from: Option<std::time::SystemTime>,
    /// Only vectors served before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub to: Option<std::time::SystemTime>,
    /// The profile to write (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// The flags of `skew`.
#[derive(Debug, clap::Args)]
pub struct SkewArgs {
    /// The reference profile (written by `feature-gateway profile`).
    #[arg(long)]
    pub reference: PathBuf,
    /// The training log's directory holding the served vectors to compare.
    #[arg(long)]
    pub served: PathBuf,
    /// Only vectors served under this definition hash (by default every definition whose
    /// features match the reference's).
    #[arg(long)]
    pub definition_hash: Option<String>,
    /// Only vectors served at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub from: Option<std::time::SystemTime>,
    /// Only vectors served before this time (RFC 3339).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub to: Option<std::time::SystemTime>,
    /// The directory to write skew.md and skew.html into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// A feature moved when its population stability index exceeds this.
    #[arg(long, default_value_t = 0.2)]
    pub psi_threshold: f64,
    /// A feature moved when its null rate changes by more than this many percentage points.
    #[arg(long, default_value_t = 5.0)]
    pub null_rate_threshold: f64,
    /// A feature moved when the share of a non-PRESENT status, or of defaults served, changes
    /// by more than this many percentage points.
    #[arg(long, default_value_t = 5.0)]
    pub status_threshold: f64,
    /// A table of the same requests' features recomputed offline: CSV with a header, or
    /// `.parquet`; a `request_id` column and `feature:VIEW:NAME` columns. Reports per feature
    /// the share of rows whose served and recomputed values differ, with examples.
    #[arg(long)]
    pub consistency: Option<PathBuf>,
    /// With --consistency, a feature counts as moved when more than this percentage of its
    /// rows differ (default 0: any).
    #[arg(long, default_value_t = 0.0, requires = "consistency")]
    pub consistency_threshold: f64,
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The `stream` source to consume; needed when the file has several with `kafka` options.
    #[arg(long)]
    pub source: Option<String>,
    /// The partitions to consume, e.g. `0,2,4-7`; all of the topic's by default. Processes
    /// splitting a topic take disjoint sets.
    #[arg(long)]
    pub partitions: Option<String>,
    /// Stop once every partition has reached the end it had at start (a catch-up run).
    #[arg(long)]
    pub until_caught_up: bool,
    /// Address of the admin HTTP server (GET /metrics, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub admin_listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The configuration file.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The aggregation view (a view of a `stream` source).
    #[arg(long)]
    pub view: String,
    /// The historical events: JSON lines (`.jsonl`, `.json`), one event object per line, as on
    /// the topic.
    #[arg(long)]
    pub events: PathBuf,
    /// The spine: the rows values are wanted at. CSV with a header naming the view's entities
    /// and `timestamp` (RFC 3339 or epoch milliseconds), or Parquet; a `training-set` output
    /// works as it is (its `entity:NAME` columns and `served_at`), and its `request_id` is
    /// carried to the output, which `training-set --labels` then joins as it is.
    #[arg(long)]
    pub spine: Option<PathBuf>,
    /// Where the spine's values go: a Parquet file (the spine's columns, then one column per
    /// aggregate), or CSV when it ends in `.csv`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Load the events' tiles into the view's Redis (merged with what it holds), so the
    /// aggregates serve the history at once.
    #[arg(long)]
    pub load: bool,
}
