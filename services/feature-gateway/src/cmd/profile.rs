//! `feature-gateway profile`: a feature service's reference profile (the `drift` crate's JSON
//! file) from a range of its training log, or from a training set written by `training-set`.
//!
//! Also the reading both `profile` and `skew` do: the logged vectors of one feature service in
//! a time range, with the definition they were served under, as drift observations.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use drift::{FeatureSpec, Profiler, Source, SourceKind, Status, profile::logged_default};
use training_log::{
    Record, SchemaDef, Value,
    record::{nanos_since_epoch, utc_date},
    training_set::{log_files, read_records},
};

use crate::{cli::ProfileArgs, exit::Failure};

/// Where logged vectors are read from.
#[derive(Clone, Debug)]
pub enum Input {
    /// The training log's directory.
    Logs(PathBuf),
    /// A training set written by `feature-gateway training-set`.
    TrainingSet(PathBuf),
}

impl Input {
    fn kind(&self) -> SourceKind {
        match self {
            Input::Logs(_) => SourceKind::TrainingLog,
            Input::TrainingSet(_) => SourceKind::TrainingSet,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Input::Logs(p) | Input::TrainingSet(p) => p,
        }
    }
}

/// Which vectors to read.
#[derive(Clone, Debug)]
pub struct Selection<'a> {
    /// The feature service; `None` for a training set: the one it holds.
    pub feature_service: Option<&'a str>,
    /// Only vectors served under this definition.
    pub definition_hash: Option<&'a str>,
    /// Only vectors served at or after this time.
    pub from: Option<SystemTime>,
    /// Only vectors served before this time.
    pub to: Option<SystemTime>,
    /// Whether vectors of several definitions may be read (each is handed over with its own).
    pub several_definitions: bool,
}

/// What was read.
#[derive(Debug, Default)]
pub struct Scan {
    /// The definitions of the vectors read, in the order first seen.
    pub definitions: Vec<SchemaDef>,
    /// Vectors read.
    pub rows: u64,
    /// When the first and the last vector read were served, in µs since the epoch.
    pub served: Option<(i64, i64)>,
}

impl Scan {
    /// The profile source describing what was read from `input`.
    pub fn source(&self, input: &Input, selection: &Selection<'_>) -> Source {
        Source {
            kind: input.kind(),
            path: input.path().display().to_string(),
            from: selection.from.map(rfc3339),
            to: selection.to.map(rfc3339),
            first_served_at: self.served.map(|(first, _)| rfc3339(from_micros(first))),
            last_served_at: self.served.map(|(_, last)| rfc3339(from_micros(last))),
            rows: self.rows,
        }
    }
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

/// A logged feature's status as drift counts it.
pub fn status(record_status: training_log::LoggedStatus) -> Status {
    // The log writes the wire's names, which drift reads.
    record_status
        .as_str()
        .parse()
        .unwrap_or(Status::SourceError)
}

/// The features of a logged definition as drift profiles them: a `pii` feature's values (its
/// hash, or nothing) are not profiled, its statuses are.
pub fn specs(def: &SchemaDef) -> Vec<FeatureSpec> {
    def.features
        .iter()
        .map(|f| FeatureSpec {
            name: f.name.clone(),
            ty: f.ty,
            values: !f.pii,
        })
        .collect()
}

/// Each observation of a logged vector: (feature position, status, value, default served).
pub fn observations(record: &Record) -> impl Iterator<Item = (usize, Status, Value, Option<bool>)> {
    record.features.iter().enumerate().map(|(i, f)| {
        let value = Value::from(f.value.clone());
        let st = status(f.status);
        let default = logged_default(st, &value);
        (i, st, value, default)
    })
}

/// Reads the vectors `selection` picks from `input`, handing each to `each` with its
/// definition. Refused (a usage error) when they were served under several definitions and
/// `selection.several_definitions` is false, listing them.
pub fn read(
    input: &Input,
    selection: &Selection<'_>,
    mut each: impl FnMut(&SchemaDef, &Record) -> Result<(), Failure>,
) -> Result<Scan, Failure> {
    let from_us = selection.from.map(|t| nanos_since_epoch(t) / 1000);
    let to_us = selection.to.map(|t| nanos_since_epoch(t) / 1000);
    let files: Vec<(PathBuf, SchemaDef)> = match input {
        Input::Logs(dir) => {
            let Some(fs) = selection.feature_service else {
                return Err(Failure::Usage(
                    "reading the training log needs --feature-service".into(),
                ));
            };
            // Whole date partitions outside the range are not opened.
            let from_date = from_us.map(utc_date);
            let to_date = to_us.map(utc_date);
            log_files(dir, fs)
                .map_err(Failure::Run)?
                .into_iter()
                .filter(|(_, date, def)| {
                    from_date.as_ref().is_none_or(|f| date >= f)
                        && to_date.as_ref().is_none_or(|t| date <= t)
                        && selection
                            .definition_hash
                            .is_none_or(|h| def.definition_hash == h)
                })
                .map(|(path, _, def)| (path, def))
                .collect()
        }
        Input::TrainingSet(file) => {
            let def = training_log::training_set::file_schema(file).map_err(Failure::Usage)?;
            if let Some(fs) = selection.feature_service
                && fs != def.feature_service
            {
                return Err(Failure::Usage(format!(
                    "{} is a training set of `{}`, not of `{fs}`",
                    file.display(),
                    def.feature_service
                )));
            }
            vec![(file.clone(), def)]
        }
    };
    let mut by_hash: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, def) in &files {
        *by_hash.entry(&def.definition_hash).or_default() += 1;
    }
    if by_hash.len() > 1 && !selection.several_definitions {
        let list: Vec<String> = by_hash
            .iter()
            .map(|(h, n)| format!("{h} ({n} files)"))
            .collect();
        return Err(Failure::Usage(format!(
            "the logs hold {} definitions of `{}`: {}; choose one with --definition-hash",
            by_hash.len(),
            files[0].1.feature_service,
            list.join(", ")
        )));
    }
    let mut scan = Scan::default();
    for (path, _) in &files {
        let (def, records) = read_records(path).map_err(Failure::Run)?;
        for record in &records {
            let t = record.served_at_us;
            if from_us.is_some_and(|f| t < f) || to_us.is_some_and(|to| t >= to) {
                continue;
            }
            if !scan.definitions.contains(&def) {
                scan.definitions.push(def.clone());
            }
            scan.rows += 1;
            scan.served = Some(match scan.served {
                None => (t, t),
                Some((a, b)) => (a.min(t), b.max(t)),
            });
            each(&def, record)?;
        }
    }
    Ok(scan)
}

/// Builds and writes the profile the flags describe.
pub fn run(args: &ProfileArgs) -> Result<(), Failure> {
    let input = match (&args.logs, &args.training_set) {
        (Some(dir), None) => Input::Logs(dir.clone()),
        (None, Some(file)) => Input::TrainingSet(file.clone()),
        _ => {
            return Err(Failure::Usage(
                "give the training log (--logs DIR) or a training set (--training-set FILE)".into(),
            ));
        }
    };
    let selection = Selection {
        feature_service: args.feature_service.as_deref(),
        definition_hash: args.definition_hash.as_deref(),
        from: args.from,
        to: args.to,
        several_definitions: false,
    };
    let mut profiler: Option<Profiler> = None;
    let scan = read(&input, &selection, |def, record| {
        let p = profiler.get_or_insert_with(|| Profiler::new(specs(def)));
        p.row();
        for (i, st, value, default) in observations(record) {
            p.observe(i, st, &value, default);
        }
        Ok(())
    })?;
    let (Some(profiler), Some(def)) = (profiler, scan.definitions.first()) else {
        return Err(Failure::Run(format!(
            "no logged vectors of `{}` in range in {}",
            args.feature_service
                .as_deref()
                .unwrap_or("the feature service"),
            input.path().display()
        )));
    };
    let profile = profiler.finish(
        &def.feature_service,
        Some(def.definition_hash.clone()),
        Some(scan.source(&input, &selection)),
    );
    profile.write(&args.out).map_err(Failure::run)?;
    println!(
        "{}: profile of `{}` (definition {}): {} vectors, {} features",
        args.out.display(),
        profile.feature_service,
        def.definition_hash,
        profile.rows,
        profile.features.len()
    );
    Ok(())
}
