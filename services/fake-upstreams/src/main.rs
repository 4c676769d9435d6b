//! The `fake-upstreams` binary: serves the fake internal APIs and the fake Plaid (and their
//! admin API) until interrupted, for the demo, manual runs and the load tests.
//!
//! It prints `fake-upstreams listening on http://ADDR` on stdout once bound, so scripts started
//! with `--listen 127.0.0.1:0` can read the port. It exits non-zero if it cannot bind.

#![forbid(unsafe_code)]

use std::{io::Write, net::SocketAddr};

use clap::Parser;
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{PlaidConfig, RateLimitConfig},
};

/// Local fake HTTP upstreams with latency and error injection.
#[derive(Debug, Parser)]
#[command(name = "fake-upstreams", version)]
struct Args {
    /// Address to listen on. Loopback by default: the admin API has no authentication.
    #[arg(long, default_value = "127.0.0.1:8790")]
    listen: SocketAddr,
    /// Seed of the generated data and of the latency and error draws.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many entities of each kind exist (ids `d_000000`, `m_00000`, ... below it).
    #[arg(long, default_value_t = 10_000)]
    population: u64,
    /// Multiplies every injected delay (e.g. 0.01 for fast tests).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// The client id the fake Plaid accepts.
    #[arg(
        long,
        env = "FAKE_PLAID_CLIENT_ID",
        default_value = "fake_plaid_client_id"
    )]
    plaid_client_id: String,
    /// The secret the fake Plaid accepts (from the environment, to keep it out of `ps`).
    #[arg(
        long,
        env = "FAKE_PLAID_SECRET",
        default_value = "fake_plaid_secret",
        hide_env_values = true
    )]
    plaid_secret: String,
    /// The fake Plaid's rate-limit window in milliseconds (Plaid's limits are per minute).
    #[arg(long, default_value_t = 60_000)]
    plaid_rate_limit_window_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: listening on {}, beyond loopback; the admin API has no authentication",
            args.listen
        );
    }
    let server = FakeServer::start(FakeConfig {
        listen: args.listen,
        seed: args.seed,
        population: args.population,
        time_scale: args.time_scale,
        plaid: PlaidConfig {
            client_id: args.plaid_client_id,
            secret: args.plaid_secret,
            rate_limits: RateLimitConfig {
                window_ms: args.plaid_rate_limit_window_ms,
                ..RateLimitConfig::default()
            },
        },
    })
    .await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "fake-upstreams listening on {}", server.base_url())?;
    stdout.flush()?;
    server.run_until(shutdown_signal()).await
}

/// Ctrl-C, or SIGTERM as sent by a supervisor or a test harness.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
