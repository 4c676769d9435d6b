//! `feature-gateway training-set`: join the training log with a labels file; with a
//! configuration, recompute the log's derived features to check them (`--recompute`) or add
//! new ones (`--derive`) from the logged inputs.

use std::sync::Arc;

use training_log::training_set::{
    Recomputed, TrainingSetError, TrainingSetOptions, build, cell_text,
};

use crate::{cli::TrainingSetArgs, exit::Failure};

/// Unmatched ids listed one per line before the rest are only counted.
const SHOWN: usize = 20;

/// Builds the training set the flags describe; [`Failure::BadRows`] (exit code 3) when
/// `--recompute` finds rows whose derived features differ from the log, after writing it.
pub fn run(args: TrainingSetArgs) -> Result<(), Failure> {
    let config = match &args.config {
        // What a training set needs of it is checked without I/O or secrets, as
        // `validate --no-env` checks it.
        Some(path) => Some(Arc::new(gateway::load_config(
            path,
            &fetcher_builtin::registry(),
            None,
        )?)),
        None => None,
    };
    let options = TrainingSetOptions {
        logs: args.logs,
        labels: args.labels,
        feature_service: args.feature_service,
        definition_hash: args.definition_hash,
        from: args.from,
        to: args.to,
        present_only: args.present_only,
        out: args.out,
        config: config.clone(),
        recompute: args.recompute,
        derive: args.derive,
    };
    let report = build(&options).map_err(|e| match e {
        TrainingSetError::Refused(message) => Failure::Usage(message),
        TrainingSetError::Failed(message) => Failure::Run(message),
    })?;
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
    for added in &report.derived {
        println!(
            "{}: added, computed from the logged inputs{}",
            added.feature,
            match added.lost {
                0 => String::new(),
                n => format!(
                    "; {n} rows SOURCE_ERROR: an input was served STALE with its default, so \
                     the log holds the default, not the value"
                ),
            }
        );
    }
    if !options.recompute {
        return Ok(());
    }
    if report.recomputed.is_empty() {
        println!("--recompute: the log holds no derived feature of the configuration");
    }
    let mut differ = 0;
    for check in &report.recomputed {
        print_check(check);
        differ += check.differ;
    }
    if differ == 0 {
        return Ok(());
    }
    if let Some(config) = &config
        && let Some(hash) = definition_hash(config, &options.feature_service)
        && hash != report.definition_hash
    {
        eprintln!(
            "note: the configuration defines `{}` as {hash}, the log's vectors were served as \
             {}: the configuration changed since",
            options.feature_service, report.definition_hash
        );
    }
    eprintln!(
        "error: {differ} recomputed derived feature value(s) differ from the log; the training \
         set holds the logged values"
    );
    Err(Failure::BadRows(differ))
}

/// One derived feature's check: a line on standard output, and its differences on standard
/// error.
fn print_check(check: &Recomputed) {
    let lost = match check.lost {
        0 => String::new(),
        n => format!(
            "; {n} rows not recomputed (an input served STALE with its default: the log holds \
             the default, not the value)"
        ),
    };
    let statuses_only = if check.values_compared {
        ""
    } else {
        " (pii: statuses compared, values are not logged)"
    };
    println!(
        "{}: recomputed {} rows, {} differ{statuses_only}{lost}",
        check.feature, check.rows, check.differ
    );
    if check.differ == 0 {
        return;
    }
    eprintln!(
        "{}: {} of {} rows differ from the log, e.g.:",
        check.feature, check.differ, check.rows
    );
    for d in &check.examples {
        eprintln!(
            "  request_id `{}`: logged {} {}, recomputed {} {}",
            d.request_id,
            cell_text(&d.logged.0),
            d.logged.1.as_str(),
            cell_text(&d.recomputed.0),
            d.recomputed.1.as_str()
        );
    }
}

/// The definition hash the configuration gives `feature_service`, when it has it.
fn definition_hash(config: &gateway_config::Config, feature_service: &str) -> Option<String> {
    let fs = config.feature_services.get(feature_service)?;
    gateway::plan::compile(
        config,
        feature_service,
        &fs.description,
        fs.deadline,
        &fs.features,
        &fs.defaults,
    )
    .ok()
    .map(|plan| plan.definition_hash)
}
