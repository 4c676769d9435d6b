//! The Parquet sink: files under `DIR/feature_service=<name>/date=<YYYY-MM-DD>/`, named
//! `<definition_hash>-<schema id>-<suffix>.parquet`, so files of one schema share a prefix and
//! never mix with another's. The layout is also what [`crate::training_set`] reads.
//!
//! # Contract
//! A file is written whole under a hidden temporary name (`.<name>.tmp`, which pyarrow, Spark and
//! DuckDB's hive readers skip), synced, then renamed: a reader sees a complete file or none.
//! [`write_file`] either commits every record it is given or returns the error and commits
//! nothing (a leftover temporary file is removed, or swept by [`sweep_temporaries`] at start).
//!
//! # Failure
//! A file that cannot be written (disk full, directory gone or read-only) fails its delivery with
//! the path and the reason; the writer spools its records. A replayed segment's files are named
//! after the segment, so a replay cut short and retried skips the files already committed.

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        ArrayBuilder, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder,
        StringBuilder, TimestampMicrosecondBuilder, TimestampNanosecondBuilder,
    },
};
use fetcher_api::FeatureType;
use parquet::{
    arrow::ArrowWriter,
    basic::Compression,
    file::{
        metadata::KeyValue,
        properties::{EnabledStatistics, WriterProperties},
    },
    schema::types::ColumnPath,
};

use crate::{
    TrainingLogConfig,
    record::{Cell, Record, utc_date, utc_day},
    schema::{LogSchema, SCHEMA_KEY, VERSION_KEY},
    sink::{Batch, Sink},
    spool::SpooledRecords,
};

/// Rows per Arrow batch handed to the Parquet writer: bounds the memory of the columns built.
const BATCH_ROWS: usize = 8192;

/// The largest dictionary a column chunk keeps before it falls back to plain encoding (the
/// `parquet` crate's default is 1 MiB). A logged column is either of few values (statuses,
/// countries, flags, small counts), whose dictionary stays well under this, or of nearly as many
/// values as rows (amounts, ratios, ages, ids): with the default, a file of 16 MiB of records never
/// reaches the limit, so every such value was hashed into a dictionary as large as the column,
/// for a file larger than plain encoding gives. At 64 KiB such a column falls back after a few
/// thousand values. On `fraud_v1`'s records (`cargo bench -p gateway --bench stages --
/// log_write`, its 1,024 requests cycled) the writer's time per record went from 3.0 µs to 2.5 µs.
const DICTIONARY_PAGE_LIMIT: usize = 64 * 1024;

/// The partition directory of `feature_service` on `date`.
pub(crate) fn partition_dir(root: &Path, feature_service: &str, date: &str) -> PathBuf {
    root.join(format!("feature_service={}", escape(feature_service)))
        .join(format!("date={date}"))
}

/// Hive-style escaping of a partition value: anything but `[A-Za-z0-9_.-]` as `%XX`, so a name
/// can never climb out of the log directory.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The file name of `schema`'s records with a given suffix.
pub(crate) fn file_name(schema: &LogSchema, suffix: &str) -> String {
    format!(
        "{}-{}-{suffix}.parquet",
        schema.def.definition_hash, schema.id
    )
}

/// Writes `records` (all of `schema`, all served on `date`) as `name` in their partition.
pub(crate) fn write_file(
    root: &Path,
    schema: &LogSchema,
    date: &str,
    name: &str,
    records: &[Record],
) -> Result<PathBuf, String> {
    let dir = partition_dir(root, &schema.def.feature_service, date);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let result = write_tmp(&tmp, schema, records)
        .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| e.to_string()));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", target.display()));
    }
    // Make the rename itself durable; a failure here leaves a complete, readable file.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(target)
}

fn write_tmp(tmp: &Path, schema: &LogSchema, records: &[Record]) -> Result<(), String> {
    let file = File::create(tmp).map_err(|e| e.to_string())?;
    let metadata = schema
        .arrow
        .metadata()
        .iter()
        .filter(|(k, _)| *k == VERSION_KEY || *k == SCHEMA_KEY)
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_LIMIT)
        .set_key_value_metadata(Some(metadata));
    // A status or age column's minimum and maximum say little a reader would filter a file by,
    // and computing them costs a string comparison per status (in one A/B of the `log_write`
    // benchmark, 2.31 µs per record with them, 1.94 µs without).
    for (_, [_, status, age]) in schema.def.columns() {
        for name in [status, age] {
            props = props
                .set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::None);
        }
    }
    // Request ids are unique: a dictionary of them only hashes each one until it reaches its
    // limit and falls back to plain encoding, and their minimum and maximum filter nothing
    // (`log_write`, 4,096 records: 11.6 ms with both, 10.4 ms without; files of the same size).
    props = props
        .set_column_dictionary_enabled(ColumnPath::from("request_id"), false)
        .set_column_statistics_enabled(ColumnPath::from("request_id"), EnabledStatistics::None);
    let props = props.build();
    let mut writer =
        ArrowWriter::try_new(file, schema.arrow.clone(), Some(props)).map_err(|e| e.to_string())?;
    for chunk in records.chunks(BATCH_ROWS) {
        let batch = to_batch(schema, chunk)?;
        writer.write(&batch).map_err(|e| e.to_string())?;
    }
    let file = writer.into_inner().map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

/// The Arrow batch of `records`.
fn to_batch(schema: &LogSchema, records: &[Record]) -> Result<RecordBatch, String> {
    let def = &schema.def;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.arrow.fields().len());
    // Every builder sized for the batch: none grows (and copies) as rows are appended.
    let rows = records.len();
    let mut ids = StringBuilder::with_capacity(rows, rows * 40);
    let mut served = TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC");
    let mut hash = StringBuilder::with_capacity(rows, rows * def.definition_hash.len());
    let mut latency = Int64Builder::with_capacity(rows);
    for r in records {
        ids.append_value(&r.request_id);
        served.append_value(r.served_at_us);
        hash.append_value(&def.definition_hash);
        latency.append_value(r.latency_us);
    }
    columns.push(Arc::new(ids.finish()));
    columns.push(Arc::new(served.finish()));
    columns.push(Arc::new(hash.finish()));
    columns.push(Arc::new(latency.finish()));
    for (i, e) in def.entities.iter().enumerate() {
        columns.push(cells(e.ty, rows, records.iter().map(|r| r.entities.get(i))));
    }
    for (i, c) in def.context.iter().enumerate() {
        if let Some(ty) = def.logged_as(c.ty, c.pii) {
            columns.push(cells(ty, rows, records.iter().map(|r| r.context.get(i))));
        }
    }
    // The features, then the derived features' inputs (schema order: `SchemaDef::columns`).
    let n = def.features.len();
    let entries = def.features.iter().chain(&def.inputs).enumerate();
    for (i, f) in entries {
        fn entry(r: &Record, i: usize, n: usize) -> Option<&crate::record::FeatureEntry> {
            if i < n {
                r.features.get(i)
            } else {
                r.inputs.get(i - n)
            }
        }
        let entry = |r, i| entry(r, i, n);
        if let Some(ty) = def.logged_as(f.ty, f.pii) {
            columns.push(cells(
                ty,
                rows,
                records.iter().map(|r| entry(r, i).map(|e| &e.value)),
            ));
        }
        let mut status = StringBuilder::with_capacity(rows, rows * "PRESENT".len());
        let mut age = Int64Builder::with_capacity(rows);
        for r in records {
            let e = entry(r, i);
            status.append_value(e.map_or("NOT_FOUND", |e| e.status.as_str()));
            age.append_option(e.and_then(|e| e.age_ms));
        }
        columns.push(Arc::new(status.finish()));
        columns.push(Arc::new(age.finish()));
    }
    RecordBatch::try_new(schema.arrow.clone(), columns).map_err(|e| e.to_string())
}

/// One column of `rows` cells of type `ty`. A cell of another type (which the gateway's typing
/// rules out) is written as null and logged, rather than failing the whole file.
fn cells<'a>(
    ty: FeatureType,
    rows: usize,
    cells: impl Iterator<Item = Option<&'a Cell>>,
) -> ArrayRef {
    fn mismatch(ty: FeatureType, cell: &Cell) {
        tracing::warn!(
            expected = ty.name(),
            "training log value of another type written as null: {cell:?}"
        );
    }
    macro_rules! column {
        ($builder:expr, $pat:pat => $value:expr) => {{
            let mut b = $builder;
            for c in cells {
                match c {
                    Some($pat) => b.append_value($value),
                    None | Some(Cell::Null) => b.append_null(),
                    Some(other) => {
                        mismatch(ty, other);
                        b.append_null()
                    }
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    macro_rules! list {
        ($item:expr, $pat:pat => $values:expr) => {{
            let mut b = ListBuilder::new($item);
            for c in cells {
                match c {
                    Some($pat) => {
                        for v in $values {
                            b.values().append_value(v);
                        }
                        b.append(true);
                    }
                    None | Some(Cell::Null) => b.append(false),
                    Some(other) => {
                        mismatch(ty, other);
                        b.append(false)
                    }
                }
            }
            let array = b.finish();
            debug_assert_eq!(b.len(), 0);
            Arc::new(array) as ArrayRef
        }};
    }
    match ty {
        FeatureType::Int64 => column!(Int64Builder::with_capacity(rows), Cell::Int64(v) => *v),
        FeatureType::Double => {
            column!(Float64Builder::with_capacity(rows), Cell::Double(v) => f64::from_bits(*v))
        }
        FeatureType::String => {
            column!(StringBuilder::with_capacity(rows, rows * 8), Cell::String(v) => v)
        }
        FeatureType::Bool => column!(BooleanBuilder::with_capacity(rows), Cell::Bool(v) => *v),
        FeatureType::Bytes => {
            column!(BinaryBuilder::with_capacity(rows, rows * 8), Cell::Bytes(v) => v)
        }
        FeatureType::Timestamp => column!(
            TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            Cell::Timestamp(v) => *v
        ),
        FeatureType::Int64List => {
            list!(Int64Builder::new(), Cell::Int64List(v) => v.iter().copied())
        }
        FeatureType::DoubleList => list!(
            Float64Builder::new(),
            Cell::DoubleList(v) => v.iter().map(|b| f64::from_bits(*b))
        ),
        FeatureType::StringList => list!(StringBuilder::new(), Cell::StringList(v) => v.iter()),
    }
}

/// Removes temporary files a crash left in the partitions under `root`.
pub(crate) fn sweep_temporaries(root: &Path) {
    let Ok(services) = std::fs::read_dir(root) else {
        return;
    };
    for fs in services.flatten() {
        let Ok(dates) = std::fs::read_dir(fs.path()) else {
            continue;
        };
        for date in dates.flatten() {
            let Ok(files) = std::fs::read_dir(date.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') && name.ends_with(".tmp") {
                    match std::fs::remove_file(f.path()) {
                        Ok(()) => {
                            tracing::info!(file = %f.path().display(), "removed an unfinished training log file")
                        }
                        Err(e) => {
                            tracing::warn!(file = %f.path().display(), "cannot remove an unfinished training log file: {e}")
                        }
                    }
                }
            }
        }
    }
}

/// The Parquet sink: one open file per (schema, date), committed by [`write_file`].
#[derive(Debug)]
pub(crate) struct ParquetSink {
    dir: PathBuf,
    rotate_bytes: u64,
    rotate_interval: Duration,
    /// The open files: one per feature service and schema a day, so a handful, searched in turn
    /// (each record finds its file with no allocation and no date formatted).
    open: Vec<OpenFile>,
}

/// The records of one file to be.
#[derive(Debug)]
pub(crate) struct OpenFile {
    schema: Arc<LogSchema>,
    /// Days since the epoch (UTC) of its records, and the same as a date (`YYYY-MM-DD`).
    day: i64,
    date: String,
    records: Vec<Record>,
    bytes: usize,
    opened: tokio::time::Instant,
}

impl OpenFile {
    /// Whether a record of `schema` served on `day` goes to this file: same day, same feature
    /// service, same schema.
    fn holds(&self, schema: &Arc<LogSchema>, day: i64) -> bool {
        self.day == day
            && (Arc::ptr_eq(&self.schema, schema)
                || (self.schema.id == schema.id
                    && self.schema.def.feature_service == schema.def.feature_service))
    }
}

impl Batch for OpenFile {
    fn groups(&self) -> Vec<(&LogSchema, &[Record])> {
        vec![(&*self.schema, &self.records)]
    }
}

impl ParquetSink {
    pub(crate) fn new(config: &TrainingLogConfig) -> ParquetSink {
        ParquetSink {
            dir: config.dir.clone(),
            rotate_bytes: config.rotate_bytes,
            rotate_interval: config.rotate_interval,
            open: Vec::new(),
        }
    }
}

impl Sink for ParquetSink {
    type Batch = OpenFile;

    fn push(&mut self, schema: &Arc<LogSchema>, record: Record) -> Option<OpenFile> {
        let day = utc_day(record.served_at_us);
        let i = match self.open.iter().position(|f| f.holds(schema, day)) {
            Some(i) => i,
            None => {
                self.open.push(OpenFile {
                    schema: schema.clone(),
                    day,
                    date: utc_date(record.served_at_us),
                    records: Vec::new(),
                    bytes: 0,
                    opened: tokio::time::Instant::now(),
                });
                self.open.len() - 1
            }
        };
        let file = &mut self.open[i];
        file.bytes += record.size();
        file.records.push(record);
        (file.bytes as u64 >= self.rotate_bytes).then(|| self.open.swap_remove(i))
    }

    fn take_due(&mut self, all: bool) -> Vec<OpenFile> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.open.len() {
            if all || self.open[i].opened.elapsed() >= self.rotate_interval {
                due.push(self.open.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due
    }

    async fn deliver(&mut self, file: &OpenFile) -> Result<(), String> {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = file_name(&file.schema, &format!("{now_ms}-{}", &unique[..12]));
        let path = write_file(&self.dir, &file.schema, &file.date, &name, &file.records)?;
        tracing::debug!(file = %path.display(), records = file.records.len(), "training log file committed");
        Ok(())
    }

    /// Each (schema, date) group of a segment becomes one file named after the segment, and one
    /// that exists already is not written again: a replay interrupted by a crash never
    /// duplicates.
    async fn replay(
        &mut self,
        segment: &str,
        records: SpooledRecords,
        written: &mut dyn FnMut(&str, u64),
    ) -> Result<(), String> {
        let mut groups: BTreeMap<(String, String), (Arc<LogSchema>, Vec<Record>)> = BTreeMap::new();
        for (schema, record) in records {
            let key = (schema.id.clone(), utc_date(record.served_at_us));
            groups
                .entry(key)
                .or_insert_with(|| (schema, Vec::new()))
                .1
                .push(record);
        }
        for ((_, date), (schema, records)) in &groups {
            let name = file_name(schema, &format!("spool-{segment}"));
            let target = partition_dir(&self.dir, &schema.def.feature_service, date).join(&name);
            if target.exists() {
                continue;
            }
            write_file(&self.dir, schema, date, &name, records)?;
            written(&schema.def.feature_service, records.len() as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::{
        record::{FeatureEntry, LoggedStatus},
        sink::tests::schema,
    };

    #[test]
    fn every_type_is_written_as_its_arrow_type_and_read_back() {
        let schema = schema();
        let full = Record {
            request_id: "r1".into(),
            served_at_us: 1_700_000_000_000_001,
            latency_us: 250,
            entities: vec![Cell::String("u_1".into())],
            context: vec![Cell::Double(129.99f64.to_bits())],
            features: vec![
                Cell::Int64(-3),
                Cell::Double(0.1f64.to_bits()),
                Cell::String("x".into()),
                Cell::Bool(true),
                Cell::Bytes(vec![1, 2]),
                Cell::Timestamp(1_700_000_000_123_456_789),
                Cell::Int64List(vec![1, 2]),
                Cell::DoubleList(vec![2.5f64.to_bits()]),
                Cell::StringList(vec!["a".into(), "b".into()]),
            ]
            .into_iter()
            .map(|value| FeatureEntry {
                value,
                status: LoggedStatus::Present,
                age_ms: Some(5),
            })
            .collect(),
            inputs: Vec::new(),
        };
        let mut empty = full.clone();
        empty.request_id = "r2".into();
        empty.context = vec![Cell::Null];
        for e in &mut empty.features {
            e.value = Cell::Null;
            e.status = LoggedStatus::NotFound;
            e.age_ms = None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            dir.path(),
            &schema,
            "2023-11-14",
            &file_name(&schema, "t"),
            &[full.clone(), empty.clone()],
        )
        .unwrap();
        assert!(path.starts_with(dir.path().join("feature_service=fs%2F1/date=2023-11-14")));
        assert!(
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("abc-")
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        assert_eq!(batch.schema().fields(), schema.arrow.fields());
        assert_eq!(batch.num_rows(), 2);
        // Reading the batch back and rebuilding it from the records gives the same arrays.
        let expected = to_batch(&schema, &[full.clone(), empty.clone()]).unwrap();
        // And the records read back are the records written.
        let (def, back) = crate::training_set::read_records(&path).unwrap();
        assert_eq!(def, schema.def);
        assert_eq!(back, [full, empty]);
        for i in 0..batch.num_columns() {
            assert_eq!(batch.column(i), expected.column(i), "column {i}");
        }
        // Statistics for value columns, none for status, age and request id columns; statuses
        // dictionary encoded, request ids not.
        let meta =
            parquet::file::reader::SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        let meta = parquet::file::reader::FileReader::metadata(&meta);
        let group = meta.row_group(0);
        for c in group.columns() {
            let name = c.column_path().string();
            let plain =
                name.starts_with("status:") || name.starts_with("age_ms:") || name == "request_id";
            assert_eq!(c.statistics().is_none(), plain, "{name}");
            let dictionary = c.dictionary_page_offset().is_some();
            if name == "request_id" || name.starts_with("status:") {
                assert_eq!(dictionary, name != "request_id", "{name}");
            }
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|f| f.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn records_go_to_one_file_per_schema_and_day() {
        let fs = Arc::new(schema());
        let same = Arc::new(schema()); // another handle on the same definition
        let mut def = schema().def;
        def.feature_service = "other".into();
        let other = Arc::new(LogSchema::new(def));
        let mut sink = ParquetSink {
            dir: PathBuf::new(),
            rotate_bytes: u64::MAX,
            rotate_interval: Duration::from_secs(3600),
            open: Vec::new(),
        };
        const DAY: i64 = 86_400_000_000;
        let record = |served_at_us| Record {
            request_id: "r".into(),
            served_at_us,
            latency_us: 0,
            entities: Vec::new(),
            context: Vec::new(),
            features: Vec::new(),
            inputs: Vec::new(),
        };
        for (schema, at) in [
            (&fs, 5 * DAY),
            (&same, 6 * DAY - 1),
            (&fs, 6 * DAY),
            (&other, 5 * DAY),
            (&fs, 5 * DAY + 7),
            (&fs, -1),
        ] {
            assert!(sink.push(schema, record(at)).is_none());
        }
        let mut files: Vec<(String, String, usize)> = sink
            .take_due(true)
            .into_iter()
            .map(|f| {
                (
                    f.schema.def.feature_service.clone(),
                    f.date,
                    f.records.len(),
                )
            })
            .collect();
        files.sort();
        let file = |fs: &str, date: &str, n| (fs.to_owned(), date.to_owned(), n);
        assert_eq!(
            files,
            [
                file("fs/1", "1969-12-31", 1),
                file("fs/1", "1970-01-06", 3),
                file("fs/1", "1970-01-07", 1),
                file("other", "1970-01-06", 1),
            ]
        );
        assert!(sink.take_due(true).is_empty());
        // The push that brings a file to rotate_bytes hands it back, and the next one opens anew.
        sink.rotate_bytes = 3 * record(0).size() as u64;
        assert!(sink.push(&fs, record(0)).is_none());
        assert!(sink.push(&other, record(0)).is_none());
        assert!(sink.push(&fs, record(1)).is_none());
        let full = sink.push(&fs, record(2)).expect("rotated at rotate_bytes");
        assert_eq!(full.records.len(), 3);
        assert_eq!(full.schema.def.feature_service, "fs/1");
        assert!(sink.push(&fs, record(3)).is_none());
        assert_eq!(sink.take_due(true).len(), 2);
        // Files not yet due stay open.
        sink.rotate_interval = Duration::from_secs(3600);
        assert!(sink.push(&fs, record(0)).is_none());
        assert!(sink.take_due(false).is_empty());
        assert_eq!(sink.open.len(), 1);
    }

    #[test]
    fn a_failed_write_commits_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("log");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let err = write_file(&blocker, &schema(), "2023-11-14", "x.parquet", &[]).unwrap_err();
        assert!(err.contains("log"), "{err}");
    }

    #[test]
    fn escaping_keeps_names_inside_the_root() {
        assert_eq!(escape("fraud_v1"), "fraud_v1");
        assert_eq!(escape("../x"), "%2E.%2Fx");
        assert_eq!(escape("a b"), "a%20b");
    }
}
