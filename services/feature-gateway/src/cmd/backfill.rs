//! `feature-gateway backfill --config FILE --view VIEW --events FILE`: a stream view's
//! aggregates from historical events, by the code serving uses: at a spine's times
//! (`--spine`, `--output`), and/or loaded into Redis as tiles (`--load`). Exit code 3 when some
//! events were bad (each is listed).

use std::time::Duration;

use fetcher_api::Env;
use ingest::backfill;

use crate::{cli::BackfillArgs, exit::Failure};

/// The most bad events listed.
const SHOWN: usize = 20;

/// Runs the backfill.
pub fn run(args: &BackfillArgs) -> Result<(), Failure> {
    if args.spine.is_some() != args.output.is_some() {
        return Err(Failure::Usage(
            "--spine and --output go together: the values at the spine's times are written to \
             the output"
                .into(),
        ));
    }
    if args.spine.is_none() && !args.load {
        return Err(Failure::Usage(
            "nothing to do: give --spine and --output, or --load, or both".into(),
        ));
    }
    let config = gateway::load_config(
        &args.config,
        &fetcher_builtin::registry(),
        Some(&Env::process()),
    )?;
    let view = &args.view;
    let spec = config
        .views
        .get(view)
        .and_then(|v| config.sources.get(&v.source))
        .map(|s| &s.spec)
        .ok_or_else(|| Failure::Usage(format!("--view: unknown view `{view}`")))?;
    if spec.kind != "stream" {
        return Err(Failure::Usage(format!(
            "--view: `{view}` reads from source `{}` of kind `{}`; backfill computes the views of \
             `stream` sources",
            spec.name, spec.kind
        )));
    }
    let (_, views) = fetcher_stream::compile(spec).map_err(Failure::run)?;
    let stream_view = views
        .into_iter()
        .find(|v| &v.def.name == view)
        .ok_or_else(|| Failure::run(format!("view `{view}` did not compile")))?;
    let def = &stream_view.def;
    let started = std::time::Instant::now();
    let (events, bad) = backfill::read_events(def, &args.events).map_err(Failure::run)?;
    for (line, why) in bad.iter().take(SHOWN) {
        eprintln!("{}:{line}: {why}", args.events.display());
    }
    if bad.len() > SHOWN {
        eprintln!("... and {} more bad events", bad.len() - SHOWN);
    }
    if let (Some(spine_path), Some(output)) = (&args.spine, &args.output) {
        let spine = backfill::read_spine(def, spine_path).map_err(Failure::Usage)?;
        let values = backfill::compute(def, &events, &spine);
        backfill::write(def, &spine, &values, output).map_err(Failure::run)?;
        println!(
            "{view}: {} events, {} spine rows, {} aggregates written to {} in {:.2?}",
            events.len(),
            spine.rows.len(),
            def.aggregates.len(),
            output.display(),
            started.elapsed()
        );
    }
    if args.load {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
        let loaded = runtime.block_on(async {
            let stream = fetcher_stream::open(spec, &Env::process(), true, None)
                .await
                .map_err(Failure::run)?;
            backfill::load(
                &stream.store,
                &stream.source.key_prefix,
                &stream_view,
                &events,
                fetcher_stream::fetcher::now_ms(),
                Duration::from_secs(5),
            )
            .await
            .map_err(Failure::run)
        })?;
        println!(
            "{view}: {} tiles of {} entities loaded ({} held already, kept)",
            loaded.tiles, loaded.entities, loaded.kept
        );
    }
    match bad.len() {
        0 => Ok(()),
        n => Err(Failure::BadRows(n)),
    }
}
