//! `feature-gateway validate FILE`: parse, validate and plan a configuration without connecting to
//! anything; every problem at once, each at its line and column. By default an unset `${NAME}` is
//! a problem too, as it is for `serve`; `--no-env` leaves the environment out, for checking a
//! file where its secrets are not meant to exist (a CI job).

use std::path::Path;

use fetcher_api::Env;

use crate::exit::Failure;

/// Checks `file`, and with `check_env` that every `${NAME}` it names is set here; prints a
/// summary when it is valid.
pub fn run(file: &Path, check_env: bool) -> Result<(), Failure> {
    let env = Env::process();
    let c = gateway::load_config(
        file,
        &fetcher_builtin::registry(),
        check_env.then_some(&env),
    )?;
    println!(
        "{}: ok ({} entities, {} sources, {} views, {} feature services)",
        file.display(),
        c.entities.len(),
        c.sources.len(),
        c.views.len(),
        c.feature_services.len()
    );
    Ok(())
}
