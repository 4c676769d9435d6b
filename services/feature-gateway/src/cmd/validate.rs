//! `feature-gateway validate FILE`: parse, validate and plan a configuration without connecting to
//! anything; every problem at once, each at its line and column.

use std::path::Path;

use crate::exit::Failure;

/// Checks `file`; prints a summary when it is valid.
pub fn run(file: &Path) -> Result<(), Failure> {
    let c = gateway::load_config(file, &fetcher_builtin::registry())?;
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
