//! `materialize`: loads precomputed features from a CSV file into Redis, exactly as a view of a
//! `redis` source reads them.
//!
//! # Contract
//! The file has a header row naming the view's entities (the key columns), its features, and
//! optionally its `event_time_field`. Each row is validated first: every key with its entity's
//! type, every value with [`fetcher_api::FeatureType::parse_text`] (an empty field is null, as
//! in pandas), then written in its canonical stored form (see [`crate::codec`]) under the Redis
//! key the view's key template gives, with the same compiled configuration the fetcher uses. So
//! what is written is exactly what is read.
//!
//! - Hash encoding: `HSET` of the non-null fields, `HDEL` of the view's null ones, so a reload
//!   replaces the view's fields and leaves fields of other views sharing the hash alone. A row
//!   that is null throughout removes every field of the view; Redis then deletes an empty hash,
//!   so such a row reads back as NOT_FOUND.
//! - JSON encoding: `SET` of one JSON object per key (null features left out), replacing it.
//! - With a TTL, each written key gets `EXPIRE` (hash) or `SET ... EX` (json).
//!
//! Rows go out in pipelined chunks ([`MaterializeOptions::chunk_rows`] rows per round trip); the
//! progress callback runs after each chunk. A dry run validates every row and writes nothing.
//!
//! # Failure
//! A bad row (a key or value that does not parse, a value that cannot be stored) is reported
//! with its line number and message, not written, and does not stop the load. Unknown columns
//! are reported on line 1 (the header) and ignored. What stops the load with a
//! [`MaterializeError`]: an invalid source or view, an unreadable file, a missing key or feature
//! column, Redis unreachable, or a chunk that Redis refuses; rows of earlier chunks stay written.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use fetcher_api::{EntityKey, Env, FeatureType, KeyPart, Problem, SourceSpec, Value, config::join};
use fred::prelude::{
    ClientLike, Expiration, HashesInterface, KeysInterface, Pool, Value as RedisValue,
};

use crate::{
    client::{self, classify},
    codec,
    config::{self, CompiledSource, CompiledView, Encoding, RedisSourceConfig, RedisViewConfig},
};

/// How to run a load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaterializeOptions {
    /// Rows per pipelined round trip. Default 1000.
    pub chunk_rows: usize,
    /// Expire every written key after this long (whole seconds, at least 1). Default: never.
    pub ttl: Option<Duration>,
    /// Validate every row, connect to nothing, write nothing.
    pub dry_run: bool,
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        MaterializeOptions {
            chunk_rows: 1000,
            ttl: None,
            dry_run: false,
        }
    }
}

/// How far a load has got, reported after each chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Data rows read so far.
    pub rows_read: u64,
    /// Rows written so far (0 in a dry run).
    pub rows_written: u64,
    /// Bad rows so far.
    pub bad_rows: u64,
}

/// The summary of a load.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaterializeReport {
    /// Data rows read (the header excluded).
    pub rows_read: u64,
    /// Rows written to Redis (0 in a dry run, where `rows_read - bad rows` is what would be).
    pub rows_written: u64,
    /// `(line number, message)` of every row not written, in file order; line 1 is the header
    /// (unknown columns).
    pub bad_rows: Vec<(u64, String)>,
    /// How long the load took.
    pub elapsed: Duration,
}

/// Why a load stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaterializeError {
    /// The source or view options are invalid, or the view is not on this source.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The input file could not be read as CSV.
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    /// The header lacks columns the view needs.
    #[error("{path}: missing column(s) {}", columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "))]
    MissingColumns { path: PathBuf, columns: Vec<String> },
    /// Redis could not be reached or refused a write. Rows of earlier chunks stay written.
    #[error("redis: {message} (after {rows_written} rows written)")]
    Redis { message: String, rows_written: u64 },
}

/// One validated row, in its stored form.
enum Stored {
    /// Hash fields to set and to delete.
    Hash {
        set: Vec<(String, String)>,
        delete: Vec<String>,
    },
    /// A JSON object.
    Json(String),
}

/// Loads `input` into the Redis of `source`, for view `view`. See the module docs.
pub async fn materialize(
    source: &SourceSpec,
    view: &str,
    input: &Path,
    options: &MaterializeOptions,
    mut progress: impl FnMut(Progress),
) -> Result<MaterializeReport, MaterializeError> {
    let started = Instant::now();
    let (compiled_source, compiled_view) = compile(source, view)?;
    let view_spec = source
        .views
        .iter()
        .find(|v| v.name == view)
        .ok_or_else(|| MaterializeError::Config(format!("no view `{view}`")))?;
    let ttl_secs = match options.ttl {
        None => None,
        Some(ttl) if ttl.as_secs() >= 1 => Some(ttl.as_secs() as i64),
        Some(_) => {
            return Err(MaterializeError::Config(
                "the TTL must be at least 1 second".into(),
            ));
        }
    };
    let input_error = |message: String| MaterializeError::Input {
        path: input.to_owned(),
        message,
    };
    let mut reader = csv::Reader::from_path(input).map_err(|e| input_error(e.to_string()))?;
    let headers = reader
        .headers()
        .map_err(|e| input_error(e.to_string()))?
        .clone();
    let mut report = MaterializeReport::default();

    // Where each column goes.
    let mut key_columns = vec![None; view_spec.keys.len()];
    let mut feature_columns: Vec<Option<usize>> = vec![None; view_spec.features.len()];
    let mut time_column = None;
    for (i, name) in headers.iter().enumerate() {
        if let Some(k) = view_spec.keys.iter().position(|k| k.name == name) {
            key_columns[k] = Some(i);
        } else if let Some(f) = view_spec.features.iter().position(|(f, _)| f == name) {
            feature_columns[f] = Some(i);
        } else if compiled_view.event_time_field.as_deref() == Some(name) {
            time_column = Some(i);
        } else {
            report.bad_rows.push((
                1,
                format!("unknown column `{name}`: not an entity, feature or the event time field of view `{view}`, ignored"),
            ));
        }
    }
    let missing: Vec<String> = view_spec
        .keys
        .iter()
        .zip(&key_columns)
        .map(|(k, c)| (&k.name, c))
        .chain(
            view_spec
                .features
                .iter()
                .zip(&feature_columns)
                .map(|((f, _), c)| (f, c)),
        )
        .filter(|(_, c)| c.is_none())
        .map(|(name, _)| name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(MaterializeError::MissingColumns {
            path: input.to_owned(),
            columns: missing,
        });
    }
    let key_columns: Vec<usize> = key_columns.into_iter().flatten().collect();
    let feature_columns: Vec<usize> = feature_columns.into_iter().flatten().collect();

    let pool = if options.dry_run {
        None
    } else {
        let pool = client::connect(
            &source.name,
            &compiled_source,
            &source.base_dir,
            &Env::process(),
            true,
        )
        .await
        .map_err(|message| MaterializeError::Redis {
            message,
            rows_written: 0,
        })?;
        Some(pool)
    };
    // Generous: a chunk is bulk work, not a request on the critical path.
    let chunk_timeout = compiled_source.command_timeout.max(Duration::from_secs(30));
    let chunk_rows = options.chunk_rows.max(1);
    let mut chunk: Vec<(String, Stored)> = Vec::with_capacity(chunk_rows);
    let mut bad = report.bad_rows.len() as u64;

    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // A malformed line (e.g. a wrong number of fields) is a bad row; an I/O error
                // ends the load.
                let line = e.position().map_or(0, |p| p.line());
                if e.is_io_error() {
                    return Err(input_error(e.to_string()));
                }
                report.rows_read += 1;
                report.bad_rows.push((line, e.to_string()));
                bad += 1;
                continue;
            }
        }
        report.rows_read += 1;
        let line = record.position().map_or(0, |p| p.line());
        match encode_row(
            view_spec,
            &compiled_view,
            &record,
            &key_columns,
            &feature_columns,
            time_column,
            &headers,
        ) {
            Ok(row) => chunk.push(row),
            Err(message) => {
                report.bad_rows.push((line, message));
                bad += 1;
            }
        }
        if chunk.len() >= chunk_rows {
            write_chunk(
                pool.as_ref(),
                &mut chunk,
                ttl_secs,
                chunk_timeout,
                &mut report,
            )
            .await?;
            progress(Progress {
                rows_read: report.rows_read,
                rows_written: report.rows_written,
                bad_rows: bad,
            });
        }
    }
    write_chunk(
        pool.as_ref(),
        &mut chunk,
        ttl_secs,
        chunk_timeout,
        &mut report,
    )
    .await?;
    progress(Progress {
        rows_read: report.rows_read,
        rows_written: report.rows_written,
        bad_rows: bad,
    });
    if let Some(pool) = pool {
        let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

fn compile(
    source: &SourceSpec,
    view: &str,
) -> Result<(CompiledSource, CompiledView), MaterializeError> {
    let fail = |problems: Vec<Problem>| MaterializeError::Config(join(&problems, "; "));
    let source_config: RedisSourceConfig = source.options.decode().map_err(|p| fail(vec![p]))?;
    let compiled_source = config::compile_source(&source_config).map_err(fail)?;
    let view_spec = source
        .views
        .iter()
        .find(|v| v.name == view)
        .ok_or_else(|| {
            let known: Vec<&str> = source.views.iter().map(|v| v.name.as_str()).collect();
            MaterializeError::Config(format!(
                "source `{}` has no view `{view}` (views: {})",
                source.name,
                known.join(", ")
            ))
        })?;
    let in_view =
        |problems: Vec<Problem>| fail(problems.into_iter().map(|p| p.in_view(view)).collect());
    let view_config: RedisViewConfig = view_spec.options.decode().map_err(|p| in_view(vec![p]))?;
    let compiled_view = config::compile_view(view_spec, &view_config).map_err(in_view)?;
    Ok((compiled_source, compiled_view))
}

/// Validates one CSV record and encodes it as stored.
fn encode_row(
    view: &fetcher_api::ViewSpec,
    compiled: &CompiledView,
    record: &csv::StringRecord,
    key_columns: &[usize],
    feature_columns: &[usize],
    time_column: Option<usize>,
    headers: &csv::StringRecord,
) -> Result<(String, Stored), String> {
    let field = |i: usize| record.get(i).unwrap_or("");
    let column = |i: usize| headers.get(i).unwrap_or("?");
    // Every bad value of the row is reported, not only the first: one pass fixes the file.
    let mut problems = Vec::new();
    let key: Vec<Option<KeyPart>> = view
        .keys
        .iter()
        .zip(key_columns)
        .map(|(k, &i)| {
            KeyPart::parse(k.ty, field(i))
                .map_err(|e| problems.push(format!("column `{}`: {e}", column(i))))
                .ok()
        })
        .collect();
    let json = compiled.encoding == Encoding::Json;
    let mut values = Vec::with_capacity(view.features.len());
    for ((feature, ty), &i) in view.features.iter().zip(feature_columns) {
        let value = match field(i) {
            // As in pandas and Spark (and the `static` source), an empty field is null.
            "" => Value::Null,
            text => match ty.parse_text(text) {
                Ok(value) => value,
                Err(e) => {
                    problems.push(format!("column `{}`: {e}", column(i)));
                    continue;
                }
            },
        };
        if let Err(e) = codec::check_round_trip(*ty, &value, json) {
            problems.push(format!("column `{}`: cannot be stored: {e}", column(i)));
            continue;
        }
        let (stored_field, _) = &compiled.features[feature];
        values.push((stored_field.clone(), value));
    }
    let event_time = match time_column.map(field) {
        None | Some("") => None,
        Some(text) => match FeatureType::Timestamp.parse_text(text) {
            Ok(time) => Some(time),
            Err(e) => {
                problems.push(format!(
                    "column `{}`: {e}",
                    column(time_column.unwrap_or(0))
                ));
                None
            }
        },
    };
    let key: Option<EntityKey> = key.into_iter().collect();
    let redis_key = match key.map(|key| compiled.key.render(&key)) {
        Some(Ok(redis_key)) if problems.is_empty() => redis_key,
        Some(Err(e)) => {
            problems.push(e);
            return Err(problems.join("; "));
        }
        _ => return Err(problems.join("; ")),
    };
    match (event_time, &compiled.event_time_field) {
        (Some(time), Some(name)) => values.push((name.clone(), time)),
        // A row without an event time must not keep the one an earlier load wrote.
        (None, Some(name)) => values.push((name.clone(), Value::Null)),
        _ => {}
    }
    let stored = if json {
        let mut object = serde_json::Map::new();
        for (name, value) in values {
            if let Some(json) = codec::to_json(&value)? {
                object.insert(name, json);
            }
        }
        Stored::Json(serde_json::Value::Object(object).to_string())
    } else {
        let mut set = Vec::new();
        let mut delete = Vec::new();
        for (name, value) in values {
            match codec::to_text(&value)? {
                Some(text) => set.push((name, text)),
                None => delete.push(name),
            }
        }
        Stored::Hash { set, delete }
    };
    Ok((redis_key, stored))
}

/// Writes `chunk` in one pipeline (or, in a dry run, drops it) and counts it.
async fn write_chunk(
    pool: Option<&Pool>,
    chunk: &mut Vec<(String, Stored)>,
    ttl_secs: Option<i64>,
    timeout: Duration,
    report: &mut MaterializeReport,
) -> Result<(), MaterializeError> {
    if chunk.is_empty() {
        return Ok(());
    }
    let Some(pool) = pool else {
        chunk.clear();
        return Ok(());
    };
    let fail = |message: String, rows_written| MaterializeError::Redis {
        message,
        rows_written,
    };
    let written = report.rows_written;
    let pipeline = pool
        .next()
        .pipeline()
        .with_options(&fred::prelude::Options {
            timeout: Some(timeout),
            ..Default::default()
        });
    let queued = |r: Result<(), fred::error::Error>| {
        r.map_err(|e| fail(classify(&e).message().to_owned(), written))
    };
    let mut commands = 0;
    for (key, stored) in chunk.iter() {
        match stored {
            Stored::Hash { set, delete } => {
                if !set.is_empty() {
                    queued(pipeline.hset(key.as_str(), set.clone()).await)?;
                    commands += 1;
                }
                if !delete.is_empty() {
                    queued(pipeline.hdel(key.as_str(), delete.clone()).await)?;
                    commands += 1;
                }
                if let (Some(secs), false) = (ttl_secs, set.is_empty()) {
                    queued(pipeline.expire(key.as_str(), secs, None).await)?;
                    commands += 1;
                }
            }
            Stored::Json(text) => {
                let expire = ttl_secs.map(Expiration::EX);
                queued(
                    pipeline
                        .set(key.as_str(), text.as_str(), expire, None, false)
                        .await,
                )?;
                commands += 1;
            }
        }
    }
    let results = pipeline.try_all::<RedisValue>().await;
    if results.len() != commands {
        let message = results.into_iter().find_map(Result::err).map_or_else(
            || "the pipeline lost answers".to_owned(),
            |e| classify(&e).message().to_owned(),
        );
        return Err(fail(message, written));
    }
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(fail(classify(&e).message().to_owned(), written));
    }
    report.rows_written += chunk.len() as u64;
    chunk.clear();
    Ok(())
}
