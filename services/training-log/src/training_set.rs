//! `feature-gateway training-set`: the logged vectors of one feature service joined with a
//! labels file on `request_id`, written as a Parquet training set.
//!
//! # Contract
//! One output row per label row whose `request_id` is in the log (in the labels file's order):
//! every column of the log as served (values, statuses, ages, entities, context), then the label
//! columns. The log's files of exactly one definition hash are read: with several in the
//! range, `--definition-hash` must choose, since their columns differ. A request logged more than
//! once (possible only after a crash, see the crate's delivery notes) counts once. Labels with no
//! logged vector are reported, not guessed.
//!
//! # Labels
//! CSV with a header, or Parquet: a `request_id` column (string), then any label columns,
//! including the label time. CSV columns are typed by their contents: int64 if every non-empty
//! cell is an integer, else double if every one is a number, else string; empty cells are null.
//!
//! # Derived features
//! With the configuration ([`TrainingSetOptions::config`]), derived features are recomputed from
//! the logged inputs by the rules serving uses (module `recompute`):
//! - `recompute`: every derived feature of the log is recomputed for every logged vector in
//!   range and compared with what was logged, value (doubles bit for bit) and status; the
//!   training set still holds the logged values, and [`TrainingSetReport::recomputed`] says
//!   which rows differ.
//! - `derive`: derived features of the configuration that the log does not have are added as
//!   `feature:`, `status:` and `age_ms:` columns after the log's, computed from the logged inputs:
//!   a new derived feature gets training data without new traffic.
//!
//! A derived feature whose inputs the log does not hold is refused
//! ([`TrainingSetError::Refused`]) before anything is written.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arrow_array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
    cast::AsArray,
    types::{Float64Type, Int64Type, TimestampMicrosecondType, TimestampNanosecondType},
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use fetcher_api::FeatureType;
use gateway_config::{Config, FeatureRef};
use parquet::{
    arrow::{ArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder},
    basic::Compression,
    file::{metadata::KeyValue, properties::WriterProperties},
};

use crate::{
    record::{Cell, FeatureEntry, LoggedStatus, Record, nanos_since_epoch, utc_date},
    schema::{
        FeatureColumn, SCHEMA_KEY, SchemaDef, age_column, arrow_type, context_column,
        entity_column, feature_column, status_column,
    },
    sink::parquet::partition_dir,
};

mod recompute;

/// Rows that differ kept as examples per derived feature.
pub const EXAMPLES: usize = 5;

/// Why no training set was written.
#[derive(Debug, thiserror::Error)]
pub enum TrainingSetError {
    /// What was asked cannot be built from these logs with this configuration (a derived
    /// feature that is not one, or whose inputs the log does not hold): the message names it.
    #[error("{0}")]
    Refused(String),
    /// Reading the logs or the labels, or writing the training set, failed.
    #[error("{0}")]
    Failed(String),
}

impl From<String> for TrainingSetError {
    fn from(message: String) -> Self {
        TrainingSetError::Failed(message)
    }
}

impl From<&str> for TrainingSetError {
    fn from(message: &str) -> Self {
        TrainingSetError::Failed(message.to_owned())
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct TrainingSetOptions {
    /// The training log's directory.
    pub logs: PathBuf,
    /// The labels file (`.csv` or `.parquet`).
    pub labels: PathBuf,
    /// The feature service.
    pub feature_service: String,
    /// Only vectors served under this definition hash.
    pub definition_hash: Option<String>,
    /// Only vectors served at or after this time.
    pub from: Option<SystemTime>,
    /// Only vectors served before this time.
    pub to: Option<SystemTime>,
    /// Leave out rows in which some feature's status is not `PRESENT`.
    pub present_only: bool,
    /// The Parquet file to write.
    pub out: PathBuf,
    /// The configuration whose derived features `recompute` and `derive` evaluate; it must
    /// have the feature service (its defaults apply as when serving).
    pub config: Option<Arc<Config>>,
    /// Recompute every derived feature of the log and compare it with what was logged.
    pub recompute: bool,
    /// Derived features (`VIEW:FEATURE`) of the configuration to add as columns.
    pub derive: Vec<String>,
}

/// What was built.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingSetReport {
    /// The definition hash of the vectors used.
    pub definition_hash: String,
    /// Rows in the labels file.
    pub labels: usize,
    /// Rows written.
    pub rows: usize,
    /// Request ids of labels with no logged vector in range, in labels order.
    pub unmatched: Vec<String>,
    /// Labelled rows left out by `present_only`.
    pub not_present: usize,
    /// Logged vectors seen more than once (the first was used).
    pub duplicates: usize,
    /// With `recompute`: each derived feature of the log, in log order.
    pub recomputed: Vec<Recomputed>,
    /// With `derive`: each derived feature added, in the order asked.
    pub derived: Vec<Derived>,
}

/// One derived feature of the log, recomputed for every logged vector in range.
#[derive(Clone, Debug, PartialEq)]
pub struct Recomputed {
    /// `VIEW:FEATURE`.
    pub feature: String,
    /// Rows recomputed and compared.
    pub rows: usize,
    /// Rows whose recomputed value or status is not the logged one.
    pub differ: usize,
    /// The first [`EXAMPLES`] of them, in log order.
    pub examples: Vec<Difference>,
    /// Rows that could not be recomputed: an input was served STALE with the feature
    /// service's default, so the log holds the default, not the value the expression read.
    pub lost: usize,
    /// Whether values were compared: not for a `pii` feature (logged hashed or not at all),
    /// whose statuses only are.
    pub values_compared: bool,
}

/// A logged vector whose derived feature recomputes to something else.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// The vector's request id.
    pub request_id: String,
    /// The value and status logged.
    pub logged: (Cell, LoggedStatus),
    /// The value and status recomputed.
    pub recomputed: (Cell, LoggedStatus),
}

/// A derived feature added with `derive`.
#[derive(Clone, Debug, PartialEq)]
pub struct Derived {
    /// `VIEW:FEATURE`.
    pub feature: String,
    /// Rows of the training set it could not be computed for (an input served STALE with
    /// a default; see [`Recomputed::lost`]): null, with status SOURCE_ERROR.
    pub lost: usize,
}

/// The log files of `feature_service` under `logs`, with their schema definitions, oldest date
/// first. Hidden (temporary) files are skipped.
pub fn log_files(
    logs: &Path,
    feature_service: &str,
) -> Result<Vec<(PathBuf, String, SchemaDef)>, String> {
    let service_dir = partition_dir(logs, feature_service, "x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut files = Vec::new();
    let dates = match std::fs::read_dir(&service_dir) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(format!("{}: {e}", service_dir.display())),
    };
    let mut dates: Vec<_> = dates.flatten().map(|d| d.path()).collect();
    dates.sort();
    for date_dir in dates {
        let Some(date) = date_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("date="))
            .map(str::to_owned)
        else {
            continue;
        };
        let mut names: Vec<_> = std::fs::read_dir(&date_dir)
            .map_err(|e| format!("{}: {e}", date_dir.display()))?
            .flatten()
            .map(|f| f.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.') && n.ends_with(".parquet"))
            })
            .collect();
        names.sort();
        for path in names {
            let def = file_schema(&path)?;
            files.push((path, date.clone(), def));
        }
    }
    Ok(files)
}

/// The [`SchemaDef`] a log file was written with.
pub fn file_schema(path: &Path) -> Result<SchemaDef, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let json = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == SCHEMA_KEY))
        .and_then(|k| k.value.clone())
        .ok_or_else(|| format!("{}: not a training log file (no schema)", path.display()))?;
    serde_json::from_str(&json).map_err(|e| format!("{}: bad schema metadata: {e}", path.display()))
}

/// Every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = File::open(path).map_err(|e| fail(&e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| fail(&e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| fail(&e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(&e))?;
    Ok((schema, batches))
}

/// The records of a log file, read back exactly as they were written (with the schema they were
/// written with): the inverse of the sink, for checks and tools.
pub fn read_records(path: &Path) -> Result<(SchemaDef, Vec<Record>), String> {
    let def = file_schema(path)?;
    let (_, batches) = read_parquet(path)?;
    let fail = |what: &str| format!("{}: {what}", path.display());
    let mut records = Vec::new();
    for batch in &batches {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| fail(&format!("no column `{name}`")))
        };
        let ids = string_column(batch, "request_id").map_err(|e| fail(&e))?;
        let served = column("served_at")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| fail("served_at is not a timestamp[us]"))?;
        let latency = column("latency_us")?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| fail("latency_us is not int64"))?;
        let entities: Vec<_> = def
            .entities
            .iter()
            .map(|e| Ok((column(&entity_column(&e.name))?, e.ty)))
            .collect::<Result<_, String>>()?;
        // A dropped pii context value has no column and reads as null; a hashed one is a string.
        let context: Vec<_> = def
            .context
            .iter()
            .map(|c| match def.logged_as(c.ty, c.pii) {
                None => Ok(None),
                Some(ty) => Ok(Some((column(&context_column(&c.name))?, ty))),
            })
            .collect::<Result<_, String>>()?;
        // The features' columns, then the derived features' inputs'.
        let mut columns = Vec::new();
        for (f, [value, status, age]) in def.columns() {
            let value = match def.logged_type(f) {
                None => None,
                Some(_) => Some((
                    column(&value)?,
                    if f.pii { FeatureType::String } else { f.ty },
                )),
            };
            let status = string_column(batch, &status).map_err(|e| fail(&e))?;
            let age = column(&age)?
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| fail("an age column is not int64"))?;
            columns.push((value, status, age));
        }
        for row in 0..batch.num_rows() {
            let cell = |(array, ty): &(&ArrayRef, FeatureType)| {
                cell_at(array.as_ref(), *ty, row).ok_or_else(|| fail("a column of another type"))
            };
            let mut features = columns
                .iter()
                .map(|(value, status, age)| {
                    Ok(FeatureEntry {
                        value: match value {
                            Some(v) => cell(v)?,
                            None => Cell::Null,
                        },
                        status: serde_json::from_value(serde_json::Value::String(
                            status.value(row).to_owned(),
                        ))
                        .map_err(|e| fail(&e.to_string()))?,
                        age_ms: (!age.is_null(row)).then(|| age.value(row)),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let inputs = features.split_off(def.features.len());
            records.push(Record {
                request_id: ids.value(row).to_owned(),
                served_at_us: served.value(row),
                latency_us: latency.value(row),
                entities: entities.iter().map(cell).collect::<Result<_, _>>()?,
                context: context
                    .iter()
                    .map(|c| c.as_ref().map_or(Ok(Cell::Null), cell))
                    .collect::<Result<_, _>>()?,
                features,
                inputs,
            });
        }
    }
    Ok((def, records))
}

/// The cell at `row` of a column of type `ty`; `None` if the column has another type.
fn cell_at(array: &dyn Array, ty: FeatureType, row: usize) -> Option<Cell> {
    if array.is_null(row) {
        return Some(Cell::Null);
    }
    Some(match ty {
        FeatureType::Int64 => Cell::Int64(array.as_primitive_opt::<Int64Type>()?.value(row)),
        FeatureType::Double => Cell::Double(
            array
                .as_primitive_opt::<Float64Type>()?
                .value(row)
                .to_bits(),
        ),
        FeatureType::String => Cell::String(array.as_string_opt::<i32>()?.value(row).to_owned()),
        FeatureType::Bool => Cell::Bool(array.as_boolean_opt()?.value(row)),
        FeatureType::Bytes => Cell::Bytes(array.as_binary_opt::<i32>()?.value(row).to_vec()),
        FeatureType::Timestamp => Cell::Timestamp(
            array
                .as_primitive_opt::<TimestampNanosecondType>()?
                .value(row),
        ),
        FeatureType::Int64List => {
            let item = array.as_list_opt::<i32>()?.value(row);
            Cell::Int64List(item.as_primitive_opt::<Int64Type>()?.values().to_vec())
        }
        FeatureType::DoubleList => {
            let item = array.as_list_opt::<i32>()?.value(row);
            Cell::DoubleList(
                item.as_primitive_opt::<Float64Type>()?
                    .values()
                    .iter()
                    .map(|d| d.to_bits())
                    .collect(),
            )
        }
        FeatureType::StringList => {
            let item = array.as_list_opt::<i32>()?.value(row);
            Cell::StringList(
                item.as_string_opt::<i32>()?
                    .iter()
                    .map(|s| s.unwrap_or_default().to_owned())
                    .collect(),
            )
        }
    })
}

/// Builds the training set described by `options`.
pub fn build(options: &TrainingSetOptions) -> Result<TrainingSetReport, TrainingSetError> {
    let config = match &options.config {
        Some(config) => Some(config.as_ref()),
        None if options.recompute || !options.derive.is_empty() => {
            return Err(TrainingSetError::Refused(
                "recomputing or adding derived features needs the configuration that defines \
                 them (--config)"
                    .to_owned(),
            ));
        }
        None => None,
    };
    let from_us = options.from.map(|t| nanos_since_epoch(t) / 1000);
    let to_us = options.to.map(|t| nanos_since_epoch(t) / 1000);
    // Whole date partitions outside the range are not even opened.
    let from_date = from_us.map(utc_date);
    let to_date = to_us.map(utc_date);
    let mut files = log_files(&options.logs, &options.feature_service)?;
    files.retain(|(_, date, def)| {
        from_date.as_ref().is_none_or(|f| date >= f)
            && to_date.as_ref().is_none_or(|t| date <= t)
            && options
                .definition_hash
                .as_ref()
                .is_none_or(|h| &def.definition_hash == h)
    });
    let mut by_hash: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, def) in &files {
        *by_hash.entry(&def.definition_hash).or_default() += 1;
    }
    let definition_hash = match by_hash.len() {
        0 => {
            return Err(TrainingSetError::Failed(format!(
                "no training log files of feature service `{}`{} under {}",
                options.feature_service,
                options
                    .definition_hash
                    .as_ref()
                    .map(|h| format!(" with definition hash {h}"))
                    .unwrap_or_default(),
                options.logs.display()
            )));
        }
        1 => files[0].2.definition_hash.clone(),
        _ => {
            let list: Vec<String> = by_hash
                .iter()
                .map(|(h, n)| format!("{h} ({n} files)"))
                .collect();
            return Err(TrainingSetError::Failed(format!(
                "the logs hold {} definitions of `{}`: {}; choose one with --definition-hash",
                by_hash.len(),
                options.feature_service,
                list.join(", ")
            )));
        }
    };
    if files.iter().any(|(_, _, d)| d != &files[0].2) {
        return Err(TrainingSetError::Failed(format!(
            "files of definition {definition_hash} were written with different column layouts \
             (a changed pii setting?); move one kind aside"
        )));
    }
    let mut def = files[0].2.clone();
    let (to_check, to_add) = match config {
        Some(config) => derived_features(config, &def, options)?,
        None => (Vec::new(), Vec::new()),
    };

    let mut schema: Option<SchemaRef> = None;
    let mut batches = Vec::new();
    for (path, _, _) in &files {
        let (s, b) = read_parquet(path)?;
        schema.get_or_insert(s);
        batches.extend(b);
    }
    let schema = schema.ok_or("no log files")?;
    let log = arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
    drop(batches);

    // request_id -> first row in range.
    let ids = string_column(&log, "request_id")?;
    let served = log
        .column_by_name("served_at")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or("the log has no served_at timestamp column")?;
    let mut row_of: HashMap<&str, u64> = HashMap::with_capacity(log.num_rows());
    let mut duplicates = 0;
    for row in 0..log.num_rows() {
        let t = served.value(row);
        if from_us.is_some_and(|f| t < f) || to_us.is_some_and(|to| t >= to) {
            continue;
        }
        match row_of.entry(ids.value(row)) {
            // Keep the first occurrence.
            std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(row as u64);
            }
        }
    }
    let statuses: Vec<&StringArray> = def
        .features
        .iter()
        .map(|f| string_column(&log, &status_column(&f.name)))
        .collect::<Result<_, _>>()?;

    // Derived features, for every logged row: those checked, then those added.
    let mut computed = match config {
        Some(config) if !to_check.is_empty() || !to_add.is_empty() => {
            let wanted: Vec<FeatureRef> = to_check
                .iter()
                .chain(&to_add)
                .map(|(r, _)| r.clone())
                .collect();
            let derivation =
                recompute::Derivation::plan(config, &options.feature_service, &def, &log, &wanted)?;
            derivation.compute(log.num_rows(), &wanted)?
        }
        _ => Vec::new(),
    };
    let added = computed.split_off(to_check.len());
    let recomputed = if options.recompute {
        let mut in_range: Vec<usize> = row_of.values().map(|&r| r as usize).collect();
        in_range.sort_unstable();
        to_check
            .iter()
            .zip(&computed)
            .map(|((r, _), column)| compare(&log, ids, &def, &r.to_string(), column, &in_range))
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    drop(computed);

    let labels = read_labels(&options.labels)?;
    let label_ids = string_column(&labels, "request_id")?;
    let mut log_rows = Vec::new();
    let mut label_rows = Vec::new();
    let mut unmatched = Vec::new();
    let mut not_present = 0;
    for row in 0..labels.num_rows() {
        if label_ids.is_null(row) {
            unmatched.push(String::new());
            continue;
        }
        let id = label_ids.value(row);
        let Some(&log_row) = row_of.get(id) else {
            unmatched.push(id.to_owned());
            continue;
        };
        if options.present_only
            && (statuses
                .iter()
                .any(|s| s.value(log_row as usize) != "PRESENT")
                || added.iter().any(|column| {
                    column[log_row as usize]
                        .as_ref()
                        .is_none_or(|c| c.status != LoggedStatus::Present)
                }))
        {
            not_present += 1;
            continue;
        }
        log_rows.push(log_row);
        label_rows.push(row as u64);
    }

    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let log_take = UInt64Array::from(log_rows.clone());
    for (field, column) in log.schema().fields().iter().zip(log.columns()) {
        fields.push(field.as_ref().clone());
        columns.push(arrow_select::take::take(column, &log_take, None).map_err(|e| e.to_string())?);
    }
    let mut derived = Vec::new();
    for ((r, ty), column) in to_add.iter().zip(&added) {
        let name = r.to_string();
        let (mut cells, mut status, mut age) = (Vec::new(), Vec::new(), Vec::new());
        let mut lost = 0;
        for &row in &log_rows {
            match &column[row as usize] {
                Some(c) => {
                    cells.push(Some(&c.value));
                    status.push(c.status.as_str());
                    age.push(c.age_ms);
                }
                None => {
                    lost += 1;
                    cells.push(None);
                    status.push(LoggedStatus::SourceError.as_str());
                    age.push(None);
                }
            }
        }
        fields.push(Field::new(feature_column(&name), arrow_type(*ty), true));
        columns.push(recompute::column(*ty, cells.into_iter())?);
        fields.push(Field::new(status_column(&name), DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from(status)));
        fields.push(Field::new(age_column(&name), DataType::Int64, true));
        columns.push(Arc::new(Int64Array::from(age)));
        def.features.push(FeatureColumn {
            name: name.clone(),
            ty: *ty,
            pii: false,
        });
        derived.push(Derived {
            feature: name,
            lost,
        });
    }
    let label_take = UInt64Array::from(label_rows);
    for (field, column) in labels.schema().fields().iter().zip(labels.columns()) {
        if field.name() == "request_id" {
            continue;
        }
        if fields.iter().any(|f| f.name() == field.name()) {
            return Err(TrainingSetError::Failed(format!(
                "label column `{}` has the name of a log column; rename it",
                field.name()
            )));
        }
        fields.push(field.as_ref().clone());
        columns
            .push(arrow_select::take::take(column, &label_take, None).map_err(|e| e.to_string())?);
    }
    // The schema metadata makes the training set readable with `read_records` too: the log's
    // definition, with the derived features added.
    let json = serde_json::to_string(&def).map_err(|e| e.to_string())?;
    let mut metadata = log.schema().metadata().clone();
    metadata.insert(SCHEMA_KEY.to_owned(), json.clone());
    let out_schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let out = RecordBatch::try_new(out_schema.clone(), columns).map_err(|e| e.to_string())?;
    write_parquet(
        &options.out,
        &out,
        vec![KeyValue::new(SCHEMA_KEY.to_owned(), json)],
    )?;
    Ok(TrainingSetReport {
        definition_hash,
        labels: labels.num_rows(),
        rows: out.num_rows(),
        unmatched,
        not_present,
        duplicates,
        recomputed,
        derived,
    })
}

/// Features with their types.
type Typed = Vec<(FeatureRef, FeatureType)>;

/// The derived features of the log that `options.recompute` checks, and those `options.derive`
/// adds, each with its type; refused if one to add is not a derived feature of `config`, is in
/// the log already or is `pii`, or if one logged has another type in `config`.
fn derived_features(
    config: &Config,
    def: &SchemaDef,
    options: &TrainingSetOptions,
) -> Result<(Typed, Typed), TrainingSetError> {
    let derived_feature = |r: &FeatureRef| {
        config
            .views
            .get(&r.view)
            .filter(|v| v.derived)
            .and_then(|v| v.features.get(&r.feature))
    };
    let mut to_check = Vec::new();
    if options.recompute {
        for f in &def.features {
            let Ok(r) = FeatureRef::parse(&f.name) else {
                continue;
            };
            let Some(feature) = derived_feature(&r) else {
                continue;
            };
            if feature.ty != f.ty {
                return Err(TrainingSetError::Refused(format!(
                    "derived feature `{}` is logged as {}, the configuration declares {}",
                    f.name,
                    f.ty.name(),
                    feature.ty.name()
                )));
            }
            to_check.push((r, f.ty));
        }
    }
    let mut to_add: Typed = Vec::new();
    for name in &options.derive {
        let r = FeatureRef::parse(name).map_err(TrainingSetError::Refused)?;
        let Some(feature) = derived_feature(&r) else {
            return Err(TrainingSetError::Refused(format!(
                "`{name}` is not a derived feature of the configuration"
            )));
        };
        if def.features.iter().any(|f| f.name == r.to_string()) {
            return Err(TrainingSetError::Refused(format!(
                "`{r}` is in the log already, as served (--recompute checks it)"
            )));
        }
        if feature.pii {
            return Err(TrainingSetError::Refused(format!(
                "`{r}` is pii: the training set would hold its value unhashed"
            )));
        }
        if !to_add.iter().any(|(added, _)| *added == r) {
            to_add.push((r, feature.ty));
        }
    }
    Ok((to_check, to_add))
}

/// Derived feature `name` of the log, recomputed (`column`, one per log row), compared with
/// the logged value and status in each of the rows `rows`.
fn compare(
    log: &RecordBatch,
    ids: &StringArray,
    def: &SchemaDef,
    name: &str,
    column: &[Option<recompute::Computed>],
    rows: &[usize],
) -> Result<Recomputed, TrainingSetError> {
    let f = def
        .features
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("no feature `{name}` in the log's definition"))?;
    let values = match (f.pii, def.logged_type(f)) {
        (false, Some(_)) => Some(
            log.column_by_name(&feature_column(name))
                .ok_or_else(|| format!("the log has no {}", feature_column(name)))?,
        ),
        _ => None,
    };
    let statuses = string_column(log, &status_column(name))?;
    let mut check = Recomputed {
        feature: name.to_owned(),
        rows: 0,
        differ: 0,
        examples: Vec::new(),
        lost: 0,
        values_compared: values.is_some(),
    };
    for &row in rows {
        let Some(recomputed) = &column[row] else {
            check.lost += 1;
            continue;
        };
        check.rows += 1;
        let status = recompute::parse_logged(statuses.value(row))?;
        let value = match values {
            Some(values) => {
                cell_at(values.as_ref(), f.ty, row).ok_or("a column of another type")?
            }
            None => Cell::Null,
        };
        let same = status == recomputed.status && (values.is_none() || value == recomputed.value);
        if same {
            continue;
        }
        check.differ += 1;
        if check.examples.len() < EXAMPLES {
            check.examples.push(Difference {
                request_id: ids.value(row).to_owned(),
                logged: (value, status),
                recomputed: (
                    if values.is_some() {
                        recomputed.value.clone()
                    } else {
                        Cell::Null
                    },
                    recomputed.status,
                ),
            });
        }
    }
    Ok(check)
}

/// A cell as text for reports: doubles with every digit they need (and their sign, `NaN`,
/// `inf`), strings quoted, timestamps in RFC 3339.
pub fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Null => "null".to_owned(),
        Cell::Int64(v) => v.to_string(),
        Cell::Double(bits) => format!("{:?}", f64::from_bits(*bits)),
        Cell::String(v) => format!("{v:?}"),
        Cell::Bool(v) => v.to_string(),
        Cell::Bytes(v) => format!("0x{}", hex::encode(v)),
        Cell::Timestamp(n) => {
            humantime::format_rfc3339_nanos(crate::record::from_nanos(*n)).to_string()
        }
        Cell::Int64List(v) => format!("{v:?}"),
        Cell::DoubleList(v) => format!(
            "{:?}",
            v.iter().map(|b| f64::from_bits(*b)).collect::<Vec<_>>()
        ),
        Cell::StringList(v) => format!("{v:?}"),
    }
}

/// Column `name` of a Parquet file as text (int64, double and string columns), for checks and
/// tools; `None` for nulls.
pub fn read_column_text(path: &Path, name: &str) -> Result<Vec<Option<String>>, String> {
    let (_, batches) = read_parquet(path)?;
    let mut out = Vec::new();
    for batch in &batches {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| format!("{}: no column `{name}`", path.display()))?;
        for row in 0..column.len() {
            out.push(if column.is_null(row) {
                None
            } else if let Some(a) = column.as_string_opt::<i32>() {
                Some(a.value(row).to_owned())
            } else if let Some(a) = column.as_primitive_opt::<Int64Type>() {
                Some(a.value(row).to_string())
            } else if let Some(a) = column.as_primitive_opt::<Float64Type>() {
                Some(a.value(row).to_string())
            } else {
                return Err(format!(
                    "{}: column `{name}` is {}",
                    path.display(),
                    column.data_type()
                ));
            });
        }
    }
    Ok(out)
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("no `{name}` column"))?
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| format!("column `{name}` is not a string column"))
}

/// Writes `batch` to `path` under a temporary name, then renames it.
fn write_parquet(path: &Path, batch: &RecordBatch, metadata: Vec<KeyValue>) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(|e| fail(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(metadata))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| fail(&e))?;
    writer.write(batch).map_err(|e| fail(&e))?;
    writer.close().map_err(|e| fail(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(&e))
}

/// The labels file as one batch.
fn read_labels(path: &Path) -> Result<RecordBatch, String> {
    let is_parquet = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let batch = if is_parquet {
        let (schema, batches) = read_parquet(path)?;
        arrow_select::concat::concat_batches(&schema, &batches).map_err(|e| e.to_string())?
    } else {
        read_csv(path)?
    };
    if batch.column_by_name("request_id").is_none() {
        return Err(format!("{}: no `request_id` column", path.display()));
    }
    Ok(batch)
}

fn read_csv(path: &Path) -> Result<RecordBatch, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut reader = csv::Reader::from_path(path).map_err(|e| fail(&e))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| fail(&e))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    for record in reader.records() {
        let record = record.map_err(|e| fail(&e))?;
        for (i, column) in cells.iter_mut().enumerate() {
            column.push(record.get(i).unwrap_or_default().to_owned());
        }
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, values) in header.iter().zip(cells) {
        let non_empty = || values.iter().filter(|v| !v.is_empty());
        let column: ArrayRef = if name != "request_id"
            && non_empty().count() > 0
            && non_empty().all(|v| v.parse::<i64>().is_ok())
        {
            Arc::new(Int64Array::from_iter(values.iter().map(|v| v.parse().ok())))
        } else if name != "request_id"
            && non_empty().count() > 0
            && non_empty().all(|v| v.parse::<f64>().is_ok())
        {
            Arc::new(Float64Array::from_iter(
                values.iter().map(|v| v.parse().ok()),
            ))
        } else {
            Arc::new(StringArray::from_iter(
                values.iter().map(|v| (!v.is_empty()).then_some(v.as_str())),
            ))
        };
        let ty: DataType = column.data_type().clone();
        fields.push(Field::new(name, ty, true));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests;
