//! The `feature-gateway` command: `serve`, `validate`, `materialize`, `training-set`,
//! `profile`, `skew`, `ingest`, `backfill`, `hash-token` and `demo`, one file each under [`cmd`]; [`exit`] maps every
//! failure to the exit code in one place.
// One module sets the allocator's options through its C interface; nothing else is unsafe.
#![deny(unsafe_code)]

mod allocator;
mod cli;
mod cmd;
mod exit;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, LogFormat};

/// Serving allocates many small short-lived objects (decoded requests, values, encoded
/// responses); mimalloc does that markedly cheaper than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Parsing the arguments starts no thread: the allocator is still configurable after it.
    let cli = Cli::parse();
    allocator::configure(matches!(
        cli.command,
        Command::Serve { .. } | Command::Demo { .. }
    ));
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    if !matches!(cli.command, Command::Serve { .. } | Command::Demo { .. }) {
        // `serve` and `demo` install the subscriber once their configuration is read, since it
        // may ask for traces.
        let _ = gateway::traces::init(json_logs, None);
    }
    // HTTP and TLS clients use rustls with the ring provider (aws-lc-rs would double the build).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.command {
        Command::Validate { file, no_env } => cmd::validate::run(&file, !no_env),
        Command::HashToken => cmd::hash_token::run(),
        Command::Serve { config, listen } => cmd::serve::run(&config, &listen, json_logs),
        Command::Materialize(args) => cmd::materialize::run(&args),
        Command::TrainingSet(args) => cmd::training_set::run(args),
        Command::Profile(args) => cmd::profile::run(&args),
        Command::Skew(args) => cmd::skew::run(&args),
        Command::Ingest(args) => cmd::ingest::run(&args),
        Command::Backfill(args) => cmd::backfill::run(&args),
        Command::Demo { dir, listen } => cmd::demo::run(dir, &listen, json_logs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
