//! `feature-gateway training-set`: join the training log with a labels file.

use training_log::training_set::{TrainingSetOptions, build};

use crate::{cli::TrainingSetArgs, exit::Failure};

/// Unmatched ids listed one per line before the rest are only counted.
const SHOWN: usize = 20;

/// Builds the training set the flags describe.
pub fn run(args: TrainingSetArgs) -> Result<(), Failure> {
    let options = TrainingSetOptions {
        logs: args.logs,
        labels: args.labels,
        feature_service: args.feature_service,
        definition_hash: args.definition_hash,
        from: args.from,
        to: args.to,
        present_only: args.present_only,
        out: args.out,
    };
    let report = build(&options).map_err(Failure::run)?;
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
    Ok(())
}
