//! The `feature-gateway` command: `serve`, `validate`, `materialize`, `demo` and `training-set`.
// One module sets the allocator's options through its C interface; nothing else is unsafe.
#![deny(unsafe_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use clap::{Parser, Subcommand, ValueEnum};
use gateway::{Gateway, builtin_registry, config, demo, server, telemetry};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Serving allocates many small short-lived objects (decoded requests, values, encoded
/// responses); mimalloc does that markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults suit a batch job better than a server that idles between bursts. Two are
/// changed: transparent huge pages are off (the `no_thp` feature: with them, arena memory is faulted
/// in 2 MiB at a time), and pages a thread freed go back to the OS 10 ms after the free rather than
/// 1 s (and only when that thread allocates again, so a gateway idle after a burst kept them).
/// Measured with an uncached gateway after bursts of 1000-row batches: 53 to 60 MB resident (peak
/// 91) with the defaults, 30 to 36 (peak 46) with these; with a million cached entries, 143 to 170
/// MB against 121 to 132. Per-request CPU did not change measurably (`bench.py redis`).
mod allocator {
    use libmimalloc_sys::{mi_option_set, mi_option_t};

    /// The index of `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (the `libmimalloc-sys`
    /// constants follow mimalloc 2's numbering); a test checks it against the default.
    const PURGE_DELAY: mi_option_t = 15;
    /// Milliseconds between a free and returning the page to the OS.
    const PURGE_DELAY_MS: std::ffi::c_long = 10;

    /// Sets the purge delay unless `MIMALLOC_PURGE_DELAY` does. Call first thing in `main`, before
    /// any other thread exists (mimalloc's option setters are not thread-safe).
    pub fn configure() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: `mi_option_set` writes one entry of mimalloc's option table; the index is
            // mimalloc 3's purge delay (checked by a test) and no other thread runs yet.
            #[allow(unsafe_code)]
            unsafe {
                mi_option_set(PURGE_DELAY, PURGE_DELAY_MS)
            };
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_purge_delay_index_is_mimalloc_3s() {
            // mimalloc 3 purges after 1000 ms by default; a different numbering would read
            // another option's default here, and `configure` would set that option.
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                // SAFETY: reads one entry of mimalloc's option table, index in range.
                #[allow(unsafe_code)]
                let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
                assert_eq!(delay, 1000);
                configure();
                // SAFETY: as above.
                #[allow(unsafe_code)]
                let delay = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
                assert_eq!(delay, PURGE_DELAY_MS);
            }
        }
    }
}

/// A real-time feature-serving gateway.
#[derive(Debug, Parser)]
#[command(name = "feature-gateway", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FEATURE_GATEWAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct Listen {
    /// Address of the gRPC server.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Address of the admin HTTP server (GET /metrics in Prometheus text format, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:9464")]
    admin_listen: SocketAddr,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    },
    /// Print the salted hash of a bearer token for `[auth.callers.NAME] token_hash`. The token is
    /// read from standard input (one line), so it stays out of shell history.
    HashToken,
    /// Load precomputed features from a CSV file into the Redis view that serves them, exactly
    /// as the gateway reads them back. Exit code 3 when some rows were bad (each is listed).
    Materialize {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// The view to load (its source must be of kind `redis`).
        #[arg(long)]
        view: String,
        /// The CSV file: the view's entity columns, then one column per feature.
        #[arg(long)]
        input: PathBuf,
        /// Expire every written key after this long, e.g. "7d".
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Check every row, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per pipelined round trip.
        #[arg(long, default_value_t = 1000)]
        chunk_rows: usize,
    },
    /// Join the training log with a labels file into a Parquet training set: one row per
    /// labelled request, the features exactly as served, their statuses, then the labels.
    TrainingSet {
        /// The training log's directory (`[training_log] dir`).
        #[arg(long)]
        logs: PathBuf,
        /// The labels: CSV with a header, or `.parquet`; a `request_id` column, then label
        /// columns (label time included).
        #[arg(long)]
        labels: PathBuf,
        /// The feature service whose vectors to use.
        #[arg(long)]
        feature_service: String,
        /// Only vectors served under this definition hash (needed when the logs hold several).
        #[arg(long)]
        definition_hash: Option<String>,
        /// Only vectors served at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        from: Option<std::time::SystemTime>,
        /// Only vectors served before this time (RFC 3339).
        #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
        to: Option<std::time::SystemTime>,
        /// Leave out rows in which some feature was not PRESENT.
        #[arg(long)]
        present_only: bool,
        /// The Parquet file to write.
        #[arg(long)]
        out: PathBuf,
    },
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

fn main() -> ExitCode {
    allocator::configure();
    let cli = Cli::parse();
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    if !matches!(cli.command, Command::Serve { .. } | Command::Demo { .. }) {
        // `serve` and `demo` install the subscriber once their configuration is read, since it
        // may ask for traces.
        let _ = gateway::traces::init(json_logs, None);
    }
    // HTTP and TLS clients use rustls with the ring provider (aws-lc-rs would double the build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::HashToken => hash_token(),
        Command::Serve { config, listen } => run(&config, &listen, json_logs),
        Command::Materialize {
            config,
            view,
            input,
            ttl,
            dry_run,
            chunk_rows,
        } => {
            let options = fetcher_redis::materialize::MaterializeOptions {
                chunk_rows,
                ttl,
                dry_run,
            };
            materialize(&config, &view, &input, &options)
        }
        Command::TrainingSet {
            logs,
            labels,
            feature_service,
            definition_hash,
            from,
            to,
            present_only,
            out,
        } => training_set(&training_log::training_set::TrainingSetOptions {
            logs,
            labels,
            feature_service,
            definition_hash,
            from,
            to,
            present_only,
            out,
        }),
        Command::Demo { dir, listen } => {
            let (dir, _temp) = match dir {
                Some(dir) => (dir, None),
                None => match tempfile::Builder::new()
                    .prefix("feature-gateway-demo-")
                    .tempdir()
                {
                    Ok(temp) => (temp.path().to_owned(), Some(temp)),
                    Err(e) => {
                        eprintln!("error: cannot create a temporary directory: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            if let Err(e) = demo::write(&dir, std::time::SystemTime::now()) {
                eprintln!("error: cannot write the demo into {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            eprintln!("demo configuration and tables written to {}", dir.display());
            run(&dir.join("demo.toml"), &listen, json_logs)
        }
    }
}

fn hash_token() -> ExitCode {
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut token) {
        eprintln!("error: cannot read the token from standard input: {e}");
        return ExitCode::FAILURE;
    }
    let token = token.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        eprintln!("error: no token on standard input");
        return ExitCode::from(2);
    }
    println!("{}", gateway::auth::TokenHash::make(token));
    ExitCode::SUCCESS
}

fn validate(file: &Path) -> ExitCode {
    match config::load(file, &builtin_registry()) {
        Ok(c) => {
            println!(
                "{}: ok ({} entities, {} sources, {} views, {} feature services)",
                file.display(),
                c.entities.len(),
                c.sources.len(),
                c.views.len(),
                c.feature_services.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.errors.len());
            ExitCode::from(2)
        }
    }
}

fn materialize(
    config_path: &Path,
    view: &str,
    input: &Path,
    options: &fetcher_redis::materialize::MaterializeOptions,
) -> ExitCode {
    let config = match config::load(config_path, &builtin_registry()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let Some(spec) = config
        .views
        .get(view)
        .and_then(|v| config.sources.get(&v.source))
        .map(|s| &s.spec)
    else {
        eprintln!("error: --view: unknown view `{view}`");
        return ExitCode::from(2);
    };
    if spec.kind != "redis" {
        eprintln!(
            "error: --view: `{view}` reads from source `{}` of kind `{}`; materialize loads `redis` views",
            spec.name, spec.kind
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let progress = |p: fetcher_redis::materialize::Progress| {
        let rate = p.rows_read as f64 / started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} rows read, {} written, {} bad ({rate:.0} rows/s)   ",
            p.rows_read, p.rows_written, p.bad_rows
        );
    };
    let result = runtime.block_on(fetcher_redis::materialize::materialize(
        spec, view, input, options, progress,
    ));
    eprintln!();
    match result {
        Ok(report) => {
            for (line, message) in &report.bad_rows {
                eprintln!("{}:{line}: {message}", input.display());
            }
            println!(
                "{}: {} rows read, {} written{}, {} bad, in {:.2?}",
                view,
                report.rows_read,
                report.rows_written,
                if options.dry_run { " (dry run)" } else { "" },
                report.bad_rows.len(),
                report.elapsed
            );
            if report.bad_rows.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn training_set(options: &training_log::training_set::TrainingSetOptions) -> ExitCode {
    match training_log::training_set::build(options) {
        Ok(report) => {
            /// Unmatched ids listed one per line before the rest are only counted.
            const SHOWN: usize = 20;
            for id in report.unmatched.iter().take(SHOWN) {
                eprintln!("unmatched label: request_id `{id}` has no logged vector");
            }
            if report.unmatched.len() > SHOWN {
                eprintln!(
                    "... and {} more unmatched labels",
                    report.unmatched.len() - SHOWN
                );
            }
            println!(
                "{}: {} rows from {} labels (definition {}); {} labels unmatched, {} rows left out as not all PRESENT, {} repeated vectors ignored",
                options.out.display(),
                report.rows,
                report.labels,
                report.definition_hash,
                report.unmatched.len(),
                report.not_present,
                report.duplicates
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the training log of `gateway`'s configuration, if it has one.
fn start_training_log(
    gateway: &Gateway,
) -> Result<Option<training_log::TrainingLog>, training_log::TrainingLogError> {
    let Some(config) = gateway.config().training_log.clone() else {
        return Ok(None);
    };
    let schemas = gateway
        .plans()
        .values()
        .map(|plan| server::log_schema(gateway.config(), plan))
        .collect();
    let log = training_log::TrainingLog::start(
        config.clone(),
        schemas,
        Arc::new(telemetry::TrainingLogTelemetry::new()),
    )?;
    match &config.sink {
        training_log::SinkConfig::Parquet => {
            tracing::info!(dir = %config.dir.display(), spool = %config.spool_dir.display(), "training log on")
        }
        training_log::SinkConfig::Kafka(k) => {
            tracing::info!(brokers = %k.brokers.join(","), topic = %k.topic, spool = %config.spool_dir.display(), "training log on, to kafka")
        }
    }
    Ok(Some(log))
}

fn run(config_path: &Path, listen: &Listen, json_logs: bool) -> ExitCode {
    let registry = builtin_registry();
    let config = match config::load(config_path, &registry) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); nothing started", errors.errors.len());
            return ExitCode::from(2);
        }
    };
    let metrics = match install_metrics() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot install the metrics recorder: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter's gRPC channel runs on it. Dropped after
    // `block_on`, so the last spans are exported while the runtime still runs.
    let traces =
        runtime.block_on(async { gateway::traces::init(json_logs, config.traces.as_ref()) });
    let mut traces = match traces {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(t) = &config.traces {
        tracing::info!(endpoint = %t.endpoint, sample_ratio = t.sample_ratio, "traces exported over OTLP");
    }
    let code = runtime.block_on(async {
        let hash = config.hash.clone();
        let gateway = match Gateway::build(config, &registry).await {
            Ok(g) => Arc::new(g),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(tls) = &gateway.config().tls
            && let Err(e) = gateway::tls::server_config(tls)
        {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        telemetry::started(&hash);
        let training_log = match start_training_log(&gateway) {
            Ok(log) => log,
            Err(e) => {
                eprintln!("error: training log: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (grpc, admin) = match (
            TcpListener::bind(listen.listen).await,
            TcpListener::bind(listen.admin_listen).await,
        ) {
            (Ok(g), Ok(a)) => (g, a),
            (Err(e), _) => {
                eprintln!("error: cannot listen on {}: {e}", listen.listen);
                return ExitCode::FAILURE;
            }
            (_, Err(e)) => {
                eprintln!("error: cannot listen on {}: {e}", listen.admin_listen);
                return ExitCode::FAILURE;
            }
        };
        let (grpc_addr, admin_addr) = (server::local_addr(&grpc), server::local_addr(&admin));
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, config_hash = %hash, "serving");
        // One machine-readable line, for scripts and tests that start the gateway on port 0.
        println!("feature-gateway ready grpc={grpc_addr} admin={admin_addr}");
        match server::serve(
            gateway,
            grpc,
            Some(admin),
            metrics,
            training_log,
            server::shutdown_signal(),
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    });
    traces.shutdown();
    code
}

fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            telemetry::LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    Ok(handle)
}
