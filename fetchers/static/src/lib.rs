//! The `static` source: small lookup tables (merchant-category risk, country codes, model
//! thresholds) loaded into memory from local files at start-up, served with no I/O per request.
//!
//! # Configuration
//! ```toml
//! [sources.tables]
//! kind = "static"
//!
//! [views.merchant_risk]
//! source = "tables"
//! entities = ["merchant_id"]
//! path = "data/merchant_risk.csv"      # .csv, or .jsonl / .ndjson (JSON lines)
//! key_columns = ["merchant_id"]        # optional: defaults to the entity names
//! event_time_column = "updated_at"     # optional: enables the view's max_age
//! ```
//! Each feature is read from the column of the same name; an empty CSV field is null. Every value is parsed with the
//! feature's declared type when the file is loaded, so a bad file fails start-up with the file,
//! line and column named, never a request.

#![forbid(unsafe_code)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use async_trait::async_trait;
use fetcher_api::{
    BuildError, EntityKey, FeatureType, FetchError, FetchRequest, Fetcher, FetcherFactory, KeyPart,
    Problem, Record, Row, SourceSpec, Value, ViewSpec,
};
use foldhash::HashMap;
use serde::Deserialize;

/// The source-level options of a `static` source (none yet).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticSourceConfig {}

/// The view-level options of a view on a `static` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticViewConfig {
    /// The file to load, relative to the configuration file. Its format follows its extension:
    /// `.csv` (with a header row), `.jsonl` or `.ndjson` (one JSON object per line).
    pub path: String,
    /// The columns holding the entity keys, in the view's key order. Defaults to the entity names.
    #[serde(default)]
    pub key_columns: Option<Vec<String>>,
    /// A column holding when each row's values were computed (RFC 3339 or Unix seconds).
    #[serde(default)]
    pub event_time_column: Option<String>,
}

/// Builds `static` fetchers.
#[derive(Debug, Default)]
pub struct StaticFactory;

#[async_trait]
impl FetcherFactory for StaticFactory {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(source, compile_source, compile_view)
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let ((), configs) = fetcher_api::build_options(source, compile_source, compile_view)?;
        let mut tables = HashMap::default();
        for (view, config) in source.views.iter().zip(configs) {
            let path = source.resolve_path(&config.path);
            let table = Table::load(view, &config, &path)
                .map_err(|e| BuildError::new(source, format!("view `{}`: {e}", view.name)))?;
            tables.insert(view.name.clone(), table);
        }
        Ok(Arc::new(StaticFetcher { tables }))
    }
}

/// Checks a source's options (there are none to check).
fn compile_source(_: &StaticSourceConfig) -> Result<(), Vec<Problem>> {
    Ok(())
}

/// Checks a view's options against its entity keys.
fn compile_view(
    view: &ViewSpec,
    config: &StaticViewConfig,
) -> Result<StaticViewConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    if let Some(columns) = &config.key_columns
        && columns.len() != view.keys.len()
    {
        problems.push(
            Problem::new(format!(
                "{} columns for {} entity keys",
                columns.len(),
                view.keys.len()
            ))
            .at("key_columns"),
        );
    }
    if Format::of(Path::new(&config.path)).is_none() {
        problems.push(
            Problem::new(format!(
                "`{}` must end in .csv, .jsonl or .ndjson",
                config.path
            ))
            .at("path"),
        );
    }
    if problems.is_empty() {
        Ok(config.clone())
    } else {
        Err(problems)
    }
}

/// Serves the tables of one `static` source from memory.
#[derive(Debug)]
pub struct StaticFetcher {
    tables: HashMap<String, Table>,
}

#[async_trait]
impl Fetcher for StaticFetcher {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let table = self.tables.get(&*request.view).ok_or_else(|| {
            FetchError::internal(format!("view `{}` is not served here", request.view))
        })?;
        let columns = request
            .features
            .iter()
            .map(|f| {
                table.feature_index.get(f).copied().ok_or_else(|| {
                    FetchError::internal(format!("view `{}` has no feature `{f}`", request.view))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(request
            .keys
            .iter()
            .map(|key| match table.rows.get(key) {
                None => Row::NotFound,
                Some(row) => Row::Found(Record {
                    cells: columns.iter().map(|&i| Ok(row.values[i].clone())).collect(),
                    event_time: row.event_time,
                }),
            })
            .collect())
    }
}

#[derive(Debug)]
struct Table {
    feature_index: HashMap<String, usize>,
    rows: HashMap<EntityKey, StoredRow>,
}

#[derive(Debug)]
struct StoredRow {
    values: Vec<Value>,
    event_time: Option<SystemTime>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Csv,
    JsonLines,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::JsonLines),
            _ => None,
        }
    }
}

/// Where each column of the view is found in the file, and how to parse it.
struct Layout<'a> {
    key_columns: Vec<String>,
    event_time_column: Option<&'a str>,
}

impl Table {
    fn load(view: &ViewSpec, config: &StaticViewConfig, path: &PathBuf) -> Result<Table, String> {
        let layout = Layout {
            key_columns: config
                .key_columns
                .clone()
                .unwrap_or_else(|| view.keys.iter().map(|k| k.name.clone()).collect()),
            event_time_column: config.event_time_column.as_deref(),
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let mut rows = HashMap::default();
        let mut insert = |line: usize, key: EntityKey, row: StoredRow| {
            if rows.insert(key, row).is_some() {
                Err(format!("{}:{line}: duplicate key", path.display()))
            } else {
                Ok(())
            }
        };
        match Format::of(path) {
            Some(Format::Csv) => {
                let mut reader = csv::Reader::from_reader(text.as_bytes());
                let headers = reader
                    .headers()
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .clone();
                let index = |name: &str| {
                    headers.iter().position(|h| h == name).ok_or_else(|| {
                        format!("{}: no column `{name}` in the header", path.display())
                    })
                };
                let key_idx: Vec<usize> = layout
                    .key_columns
                    .iter()
                    .map(|c| index(c))
                    .collect::<Result<_, _>>()?;
                let feature_idx: Vec<usize> = view
                    .features
                    .iter()
                    .map(|(f, _)| index(f))
                    .collect::<Result<_, _>>()?;
                let time_idx = layout.event_time_column.map(index).transpose()?;
                for record in reader.records() {
                    let record = record.map_err(|e| format!("{}: {e}", path.display()))?;
                    let line = record.position().map_or(0, |p| p.line() as usize);
                    let at = |column: &str| format!("{}:{line}: column `{column}`", path.display());
                    let field = |i: usize| record.get(i).unwrap_or("");
                    let key = layout
                        .key_columns
                        .iter()
                        .zip(&key_idx)
                        .zip(&view.keys)
                        .map(|((c, &i), k)| {
                            KeyPart::parse(k.ty, field(i)).map_err(|e| format!("{}: {e}", at(c)))
                        })
                        .collect::<Result<EntityKey, _>>()?;
                    let values = view
                        .features
                        .iter()
                        .zip(&feature_idx)
                        .map(|((f, ty), &i)| match field(i) {
                            // As in pandas and Spark, an empty CSV field is null, strings too.
                            "" => Ok(Value::Null),
                            text => ty.parse_text(text).map_err(|e| format!("{}: {e}", at(f))),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let event_time = match (time_idx, layout.event_time_column) {
                        (Some(i), Some(c)) => {
                            event_time(FeatureType::Timestamp.parse_text(field(i)))
                                .map_err(|e| format!("{}: {e}", at(c)))?
                        }
                        _ => None,
                    };
                    insert(line, key, StoredRow { values, event_time })?;
                }
            }
            Some(Format::JsonLines) => {
                for (n, line_text) in text.lines().enumerate() {
                    let line = n + 1;
                    if line_text.trim().is_empty() {
                        continue;
                    }
                    let object: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(line_text)
                            .map_err(|e| format!("{}:{line}: {e}", path.display()))?;
                    let get = |column: &str| {
                        object.get(column).ok_or_else(|| {
                            format!("{}:{line}: no field `{column}`", path.display())
                        })
                    };
                    let at = |column: &str| format!("{}:{line}: field `{column}`", path.display());
                    let key = layout
                        .key_columns
                        .iter()
                        .zip(&view.keys)
                        .map(|(c, k)| {
                            let value =
                                k.ty.from_json(get(c)?)
                                    .map_err(|e| format!("{}: {e}", at(c)))?;
                            value
                                .to_key_part()
                                .ok_or_else(|| format!("{}: a key cannot be null", at(c)))
                        })
                        .collect::<Result<EntityKey, _>>()?;
                    let values = view
                        .features
                        .iter()
                        .map(|(f, ty)| match object.get(f) {
                            None => Ok(Value::Null),
                            Some(v) => ty.from_json(v).map_err(|e| format!("{}: {e}", at(f))),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let event_time = match layout.event_time_column {
                        Some(c) => event_time(FeatureType::Timestamp.from_json(get(c)?))
                            .map_err(|e| format!("{}: {e}", at(c)))?,
                        None => None,
                    };
                    insert(line, key, StoredRow { values, event_time })?;
                }
            }
            None => return Err(format!("`{}`: unknown file format", path.display())),
        }
        Ok(Table {
            feature_index: view
                .features
                .iter()
                .enumerate()
                .map(|(i, (f, _))| (f.clone(), i))
                .collect(),
            rows,
        })
    }
}

fn event_time(parsed: Result<Value, String>) -> Result<Option<SystemTime>, String> {
    match parsed? {
        Value::Timestamp(t) => Ok(Some(t)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetcher_api::{KeySpec, Options};
    use std::io::Write;

    fn view(path: &str, extra: &str) -> ViewSpec {
        let options: toml::Table = format!("path = \"{path}\"\n{extra}").parse().unwrap();
        ViewSpec {
            name: "merchants".into(),
            keys: vec![KeySpec {
                name: "merchant_id".into(),
                ty: FeatureType::String,
            }],
            features: vec![
                ("risk".into(), FeatureType::Double),
                ("category".into(), FeatureType::String),
            ],
            options: Options(options),
        }
    }

    fn source(dir: &Path, views: Vec<ViewSpec>) -> SourceSpec {
        SourceSpec {
            name: "tables".into(),
            kind: "static".into(),
            options: Options::default(),
            views,
            base_dir: dir.to_owned(),
        }
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::File::create(dir.join(name))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn request(keys: &[&str], features: &[&str]) -> FetchRequest {
        FetchRequest {
            view: "merchants".into(),
            features: features.iter().map(|f| f.to_string()).collect(),
            keys: keys
                .iter()
                .map(|k| vec![KeyPart::String(k.to_string())])
                .collect(),
            deadline: None,
        }
    }

    #[tokio::test]
    async fn serves_csv_rows_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "m.csv",
            "merchant_id,category,risk,updated_at\nm1,grocery,0.1,2024-01-01T00:00:00Z\nm2,travel,,1700000000\n",
        );
        let spec = source(
            dir.path(),
            vec![view("m.csv", "event_time_column = \"updated_at\"")],
        );
        assert!(StaticFactory.validate(&spec).is_empty());
        let fetcher = StaticFactory.build(&spec).await.unwrap();
        let rows = fetcher
            .fetch(request(&["m2", "nope", "m1"], &["category", "risk"]))
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        let Row::Found(m2) = &rows[0] else {
            panic!("m2 missing")
        };
        assert_eq!(
            m2.cells,
            vec![Ok(Value::String("travel".into())), Ok(Value::Null)]
        );
        assert!(m2.event_time.is_some());
        assert_eq!(rows[1], Row::NotFound);
        let Row::Found(m1) = &rows[2] else {
            panic!("m1 missing")
        };
        assert_eq!(m1.cells[1], Ok(Value::Double(0.1)));
    }

    #[tokio::test]
    async fn serves_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "m.jsonl",
            "{\"merchant_id\":\"m1\",\"risk\":1,\"category\":\"x\"}\n\n{\"merchant_id\":\"m2\"}\n",
        );
        let spec = source(dir.path(), vec![view("m.jsonl", "")]);
        let fetcher = StaticFactory.build(&spec).await.unwrap();
        let rows = fetcher
            .fetch(request(&["m1", "m2"], &["risk"]))
            .await
            .unwrap();
        let Row::Found(m1) = &rows[0] else { panic!() };
        assert_eq!(m1.cells, vec![Ok(Value::Double(1.0))]);
        let Row::Found(m2) = &rows[1] else { panic!() };
        assert_eq!(m2.cells, vec![Ok(Value::Null)]);
    }

    #[tokio::test]
    async fn bad_files_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "m.csv",
            "merchant_id,category,risk\nm1,a,0.5\nm2,b,high\n",
        );
        let spec = source(dir.path(), vec![view("m.csv", "")]);
        let err = StaticFactory.build(&spec).await.unwrap_err().to_string();
        assert!(err.contains("m.csv:3: column `risk`"), "{err}");
        assert!(err.contains("`high` is not a double"), "{err}");

        write(
            dir.path(),
            "d.csv",
            "merchant_id,category,risk\nm1,a,0.5\nm1,b,0.6\n",
        );
        let err = StaticFactory
            .build(&source(dir.path(), vec![view("d.csv", "")]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.csv:3: duplicate key"), "{err}");

        write(dir.path(), "h.csv", "merchant_id,risk\nm1,0.5\n");
        let err = StaticFactory
            .build(&source(dir.path(), vec![view("h.csv", "")]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column `category`"), "{err}");
    }

    #[test]
    fn validation_names_bad_options() {
        let dir = tempfile::tempdir().unwrap();
        let spec = source(
            dir.path(),
            vec![
                view("m.parquet", ""),
                view("m.csv", "key_columns = [\"a\", \"b\"]\nsheet = 1"),
                view("m.csv", "key_columns = [\"a\", \"b\"]"),
            ],
        );
        let problems = StaticFactory.validate(&spec);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "view `merchants`: path: `m.parquet` must end in .csv, .jsonl or .ndjson"
        );
        assert_eq!(problems[1].view_name(), Some("merchants"));
        assert_eq!(problems[1].field(), ["sheet"]);
        assert!(
            problems[1].message().starts_with("unknown field `sheet`"),
            "{problems:?}"
        );
        assert_eq!(
            problems[2].to_string(),
            "view `merchants`: key_columns: 2 columns for 1 entity keys"
        );
    }
}
