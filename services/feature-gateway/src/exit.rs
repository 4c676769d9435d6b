//! How a command ends: every failure of every subcommand is a [`Failure`], and [`Failure::report`]
//! is the one place that prints it and maps it to the process's exit code:
//! - 0: done;
//! - 1: a fault at run time (a port taken, a source that cannot be built, an I/O error);
//! - 2: the input is wrong (a configuration with errors, a bad flag value): nothing started;
//! - 3: `materialize` loaded what it could, and some rows were bad (each was listed);
//! - 4: `skew` wrote its report, and a feature moved past a threshold (each was listed).

use std::process::ExitCode;

use gateway_config::ConfigErrors;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The configuration file has errors (every one, each at its line and column).
    #[error("{0}")]
    Config(ConfigErrors),
    /// `serve` found errors in its configuration, so nothing started.
    #[error("{0}")]
    NotStarted(ConfigErrors),
    /// A flag or an input is wrong: the message names it.
    #[error("error: {0}")]
    Usage(String),
    /// Some input rows were bad and skipped; each was already reported.
    #[error("{0} bad row(s)")]
    BadRows(usize),
    /// A served feature moved past a threshold against its reference: the message lists them.
    #[error("error: {0}")]
    Moved(String),
    /// Something failed while running.
    #[error("error: {0}")]
    Run(String),
}

impl Failure {
    /// A run-time failure, from anything that displays.
    pub fn run(e: impl std::fmt::Display) -> Self {
        Failure::Run(e.to_string())
    }

    /// Prints the failure to standard error and returns its exit code.
    pub fn report(self) -> ExitCode {
        match &self {
            Failure::Config(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s)", errors.errors.len());
                ExitCode::from(2)
            }
            Failure::NotStarted(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s); nothing started", errors.errors.len());
                ExitCode::from(2)
            }
            Failure::Usage(_) => {
                eprintln!("{self}");
                ExitCode::from(2)
            }
            Failure::BadRows(_) => ExitCode::from(3),
            Failure::Moved(_) => {
                eprintln!("{self}");
                ExitCode::from(4)
            }
            Failure::Run(_) => {
                eprintln!("{self}");
                ExitCode::FAILURE
            }
        }
    }
}

impl From<ConfigErrors> for Failure {
    fn from(errors: ConfigErrors) -> Self {
        Failure::Config(errors)
    }
}
