//! `feature-gateway demo`: write the embedded demo (a fraud model's features from local tables)
//! and serve it; no database needed.

use std::path::PathBuf;

use crate::{cli::Listen, cmd::serve, exit::Failure};

/// Serves the demo from `dir`, or from a temporary directory removed on exit.
pub fn run(dir: Option<PathBuf>, listen: &Listen, json_logs: bool) -> Result<(), Failure> {
    let temporary = dir.is_none();
    let (dir, _temp) = match dir {
        Some(dir) => (dir, None),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("feature-gateway-demo-")
                .tempdir()
                .map_err(|e| Failure::run(format!("cannot create a temporary directory: {e}")))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    gateway::demo::write(&dir, std::time::SystemTime::now())
        .map_err(|e| Failure::run(format!("cannot write the demo into {}: {e}", dir.display())))?;
    let log = dir.join("training-log");
    if temporary {
        // Said at start, so nobody looks for the Parquet files after Ctrl-C in vain.
        eprintln!(
            "demo configuration and tables written to {}; its training log goes to {} \
             (a temporary directory, removed on exit: `demo --dir DIR` keeps it)",
            dir.display(),
            log.display()
        );
    } else {
        eprintln!(
            "demo configuration and tables written to {}; its training log goes to {}",
            dir.display(),
            log.display()
        );
    }
    serve::run(&dir.join("demo.toml"), listen, json_logs)
}
