//! `feature-gateway materialize`: load a CSV file into the Redis view that serves it, exactly as
//! the gateway reads it back.

use fetcher_api::Env;
use fetcher_redis::materialize::{MaterializeOptions, Progress, materialize};

use crate::{cli::MaterializeArgs, exit::Failure};

/// Loads `--input` into `--view`; [`Failure::BadRows`] when some rows were bad.
pub fn run(args: &MaterializeArgs) -> Result<(), Failure> {
    let config = gateway::load_config(
        &args.config,
        &fetcher_builtin::registry(),
        Some(&Env::process()),
    )?;
    let view = &args.view;
    if config.views.get(view).is_some_and(|v| v.derived) {
        return Err(Failure::Usage(format!(
            "--view: `{view}` is a derived view, computed per request from other views: there \
             is nothing to materialize"
        )));
    }
    let spec = config
        .views
        .get(view)
        .and_then(|v| config.sources.get(&v.source))
        .map(|s| &s.spec)
        .ok_or_else(|| Failure::Usage(format!("--view: unknown view `{view}`")))?;
    if spec.kind != "redis" {
        return Err(Failure::Usage(format!(
            "--view: `{view}` reads from source `{}` of kind `{}`; materialize loads `redis` views",
            spec.name, spec.kind
        )));
    }
    let options = MaterializeOptions {
        chunk_rows: args.chunk_rows,
        ttl: args.ttl,
        dry_run: args.dry_run,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    let started = std::time::Instant::now();
    let progress = |p: Progress| {
        let rate = p.rows_read as f64 / started.elapsed().as_secs_f64().max(1e-3);
        eprint!(
            "\r{} rows read, {} written, {} bad ({rate:.0} rows/s)   ",
            p.rows_read, p.rows_written, p.bad_rows
        );
    };
    let result = runtime.block_on(materialize(spec, view, &args.input, &options, progress));
    eprintln!();
    let report = result.map_err(Failure::run)?;
    for (line, message) in &report.bad_rows {
        eprintln!("{}:{line}: {message}", args.input.display());
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
    match report.bad_rows.len() {
        0 => Ok(()),
        n => Err(Failure::BadRows(n)),
    }
}
