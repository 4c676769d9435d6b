//! The `fetcher-sidecar` command: hosts built-in fetchers of a configuration file behind the
//! gRPC `Fetcher` contract (see the library's docs), on TCP or a Unix socket.
//!
//! ```text
//! fetcher-sidecar --config plaid.toml --unix-socket /run/fg/plaid.sock [--source plaid ...]
//! ```
//! Once serving it prints one line on stdout, `fetcher-sidecar ready grpc=ADDR` (or
//! `unix=PATH`), for scripts and tests that start it on port 0. SIGTERM or SIGINT stops it
//! gracefully. Exit codes: 2 for a configuration that does not validate, 1 for anything else.
#![forbid(unsafe_code)]

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use clap::{ArgGroup, Parser, ValueEnum};
use fetcher_sidecar_host::{Host, Listener, serve};
use proto::server::shutdown_signal;

/// Hosts feature-gateway fetchers in their own process, behind the gRPC Fetcher contract.
#[derive(Debug, Parser)]
#[command(name = "fetcher-sidecar", version, about)]
#[command(group(ArgGroup::new("listen_on").required(true).args(["listen", "unix_socket"])))]
struct Cli {
    /// The configuration file (the gateway's format); its secrets are read from this process's
    /// environment.
    #[arg(long, short)]
    config: PathBuf,
    /// Serve on this TCP address, e.g. 127.0.0.1:7001 (port 0 picks a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Serve on this Unix socket.
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// Host only this source (repeatable). Default: every source but `request` ones.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "FEATURE_GATEWAY_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // HTTP and TLS clients use rustls with the ring provider, as in the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = fetcher_builtin::registry();
    let config = match gateway_config::load(&cli.config, &registry) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); nothing started", errors.errors.len());
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let host = match Host::build(&config, &registry, &cli.sources).await {
            Ok(h) => Arc::new(h),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match (cli.listen, &cli.unix_socket) {
            (Some(addr), _) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|e| format!("cannot listen on {addr}: {e}")),
            (None, Some(path)) => Listener::bind_unix(path).map_err(|e| e.to_string()),
            (None, None) => Err("one of --listen and --unix-socket is required".to_owned()),
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let at = listener.describe();
        // Listening for SIGTERM before the ready line, so a signal sent on it shuts down cleanly.
        let shutdown = shutdown_signal();
        let views: Vec<_> = host.views().collect();
        tracing::info!(listen = %at, views = %views.join(","), config_hash = %config.hash, "serving");
        // One machine-readable line, for scripts and tests that start the sidecar on port 0.
        println!("fetcher-sidecar ready {at}");
        let _ = std::io::stdout().flush();
        match serve(host, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    // Without a filter, dependencies log at TRACE, which costs more than serving.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,tonic=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
