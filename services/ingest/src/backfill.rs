//! `feature-gateway backfill`: a stream view's aggregates computed from a file of historical
//! events by the [`aggregation`] code serving uses, at the times of a spine, or loaded into the
//! store as tiles.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
    sync::Arc,
};

use aggregation::{Event, Millis, SpineRow, ViewDef, backfill, event, partial::time_of};
use arrow_array::{
    ArrayRef, RecordBatch,
    builder::{
        BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
        TimestampMillisecondBuilder,
    },
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use fetcher_api::{FeatureType, KeyPart, Value};
use fetcher_stream::{
    StreamView, TileStore,
    store::{self, Fields},
    writer,
};
use parquet::{arrow::ArrowWriter, basic::Compression, file::properties::WriterProperties};

/// The lines of a file that could not be read: 1-based line number and why.
pub type BadLines = Vec<(usize, String)>;

/// The events of a JSON-lines file a view can read, and the bad lines.
pub fn read_events(def: &ViewDef, path: &Path) -> Result<(Vec<Event>, BadLines), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match event::parse(line.as_bytes()).and_then(|o| def.read(&o)) {
            Ok(e) => events.push(e),
            Err(e) => bad.push((i + 1, e.to_string())),
        }
    }
    Ok((events, bad))
}

/// A spine: the rows values are wanted for, and the request id of each row when the spine has
/// them (a training set), carried to the output so it joins back on `request_id`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spine {
    pub rows: Vec<SpineRow>,
    pub request_ids: Option<Vec<Option<String>>>,
}

/// Reads a spine: CSV with a header, or Parquet (a `training-set` output works as it is). The
/// view's entity keys are the columns named after the entities (or `entity:NAME`, as a training
/// set names them); the time is `timestamp` (or `served_at`): RFC 3339 text or epoch
/// milliseconds in CSV, a timestamp or int64 epoch milliseconds in Parquet. A `request_id`
/// column is carried to the output; other columns are ignored.
pub fn read_spine(def: &ViewDef, path: &Path) -> Result<Spine, String> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
    {
        read_parquet_spine(def, path)
    } else {
        read_csv_spine(def, path)
    }
}

/// The column holding `names`' first match, by name.
fn find(headers: &[String], names: &[String], path: &Path) -> Result<usize, String> {
    names
        .iter()
        .find_map(|n| headers.iter().position(|h| h == n))
        .ok_or_else(|| format!("{}: no column `{}`", path.display(), names.join("` or `")))
}

fn key_names(entity: &str) -> Vec<String> {
    vec![entity.to_owned(), format!("entity:{entity}")]
}

fn time_names() -> Vec<String> {
    vec!["timestamp".to_owned(), "served_at".to_owned()]
}

fn read_csv_spine(def: &ViewDef, path: &Path) -> Result<Spine, String> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let keys: Vec<usize> = def
        .keys
        .iter()
        .map(|k| find(&headers, &key_names(&k.entity), path))
        .collect::<Result<_, _>>()?;
    let time = find(&headers, &time_names(), path)?;
    let request_id = headers.iter().position(|h| h == "request_id");
    let mut spine = Spine {
        rows: Vec::new(),
        request_ids: request_id.map(|_| Vec::new()),
    };
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = record.map_err(|e| format!("{}:{line}: {e}", path.display()))?;
        let mut key = Vec::with_capacity(keys.len());
        for (k, &c) in def.keys.iter().zip(&keys) {
            key.push(
                KeyPart::parse(k.ty, record.get(c).unwrap_or_default())
                    .map_err(|e| format!("{}:{line}: {}: {e}", path.display(), k.entity))?,
            );
        }
        let text = record.get(time).unwrap_or_default().trim();
        let json = match text.parse::<i64>() {
            Ok(ms) => serde_json::Value::from(ms),
            Err(_) => serde_json::Value::from(text),
        };
        let time = event::event_time("timestamp", &json)
            .map_err(|e| format!("{}:{line}: {e}", path.display()))?;
        spine.rows.push(SpineRow { key, time });
        if let (Some(ids), Some(c)) = (spine.request_ids.as_mut(), request_id) {
            ids.push(record.get(c).map(str::to_owned));
        }
    }
    Ok(spine)
}

fn read_parquet_spine(def: &ViewDef, path: &Path) -> Result<Spine, String> {
    use arrow_array::{
        Array, Int64Array, StringArray, TimestampMicrosecondArray, TimestampMillisecondArray,
        TimestampNanosecondArray, TimestampSecondArray,
    };
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = File::open(path).map_err(|e| fail(&e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| fail(&e))?
        .build()
        .map_err(|e| fail(&e))?;
    let mut spine = Spine::default();
    for batch in reader {
        let batch = batch.map_err(|e| fail(&e))?;
        let headers: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let keys: Vec<usize> = def
            .keys
            .iter()
            .map(|k| find(&headers, &key_names(&k.entity), path))
            .collect::<Result<_, _>>()?;
        let time = batch.column(find(&headers, &time_names(), path)?).clone();
        let time = time.as_any();
        let ms: Vec<Option<i64>> = if let Some(a) = time.downcast_ref::<TimestampMicrosecondArray>()
        {
            a.iter().map(|v| v.map(|us| us.div_euclid(1_000))).collect()
        } else if let Some(a) = time.downcast_ref::<TimestampMillisecondArray>() {
            a.iter().collect()
        } else if let Some(a) = time.downcast_ref::<TimestampNanosecondArray>() {
            a.iter()
                .map(|v| v.map(|ns| ns.div_euclid(1_000_000)))
                .collect()
        } else if let Some(a) = time.downcast_ref::<TimestampSecondArray>() {
            a.iter().map(|v| v.map(|s| s * 1_000)).collect()
        } else if let Some(a) = time.downcast_ref::<Int64Array>() {
            a.iter().collect()
        } else {
            return Err(fail(
                &"the time column is not a timestamp or int64 epoch milliseconds",
            ));
        };
        let key_columns: Vec<_> = keys.iter().map(|&c| batch.column(c).clone()).collect();
        let request_id = headers
            .iter()
            .position(|h| h == "request_id")
            .map(|c| batch.column(c).clone());
        let ids = request_id
            .as_ref()
            .and_then(|c| c.as_any().downcast_ref::<StringArray>());
        if ids.is_some() && spine.request_ids.is_none() {
            spine.request_ids = Some(Vec::new());
        }
        for (row, time) in ms.iter().enumerate() {
            let time = time.ok_or_else(|| fail(&format!("row {row}: no time")))?;
            let mut key = Vec::with_capacity(keys.len());
            for (k, column) in def.keys.iter().zip(&key_columns) {
                let any = column.as_any();
                let part = if let Some(a) = any.downcast_ref::<StringArray>() {
                    (!a.is_null(row)).then(|| KeyPart::String(a.value(row).to_owned()))
                } else if let Some(a) = any.downcast_ref::<Int64Array>() {
                    (!a.is_null(row)).then(|| KeyPart::Int64(a.value(row)))
                } else {
                    None
                };
                key.push(part.ok_or_else(|| {
                    fail(&format!(
                        "row {row}: `{}` is null or not a string or int64",
                        k.entity
                    ))
                })?);
            }
            spine.rows.push(SpineRow { key, time });
            if let (Some(out), Some(ids)) = (spine.request_ids.as_mut(), ids) {
                out.push((!ids.is_null(row)).then(|| ids.value(row).to_owned()));
            }
        }
    }
    Ok(spine)
}

/// Every aggregate's value at each spine row.
pub fn compute(def: &ViewDef, events: &[Event], spine: &Spine) -> Vec<Vec<Value>> {
    backfill::point_in_time(def, events, &spine.rows)
}

/// Writes the spine and its values: Parquet (Snappy), or CSV when `path` ends in `.csv`.
///
/// Columns: `request_id` when the spine has it (so the output is a `training-set --labels` file
/// as it is), the view's entities, `timestamp`, then one column per aggregate named after its
/// feature.
pub fn write(
    def: &ViewDef,
    spine: &Spine,
    values: &[Vec<Value>],
    path: &Path,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    if path.extension().is_some_and(|e| e == "csv") {
        let mut w = csv::Writer::from_path(path).map_err(|e| fail(&e))?;
        let mut header: Vec<String> = Vec::new();
        if spine.request_ids.is_some() {
            header.push("request_id".into());
        }
        header.extend(def.keys.iter().map(|k| k.entity.clone()));
        header.push("timestamp".into());
        header.extend(def.aggregates.iter().map(|a| a.feature.clone()));
        w.write_record(&header).map_err(|e| fail(&e))?;
        for (i, (row, vals)) in spine.rows.iter().zip(values).enumerate() {
            let mut fields: Vec<String> = Vec::new();
            if let Some(ids) = &spine.request_ids {
                fields.push(ids[i].clone().unwrap_or_default());
            }
            fields.extend(row.key.iter().map(ToString::to_string));
            fields.push(row.time.to_string());
            fields.extend(vals.iter().map(text));
            w.write_record(&fields).map_err(|e| fail(&e))?;
        }
        return w.flush().map_err(|e| fail(&e));
    }
    let batch = record_batch(def, spine, values).map_err(|e| fail(&e))?;
    let file = File::create(path).map_err(|e| fail(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| fail(&e))?;
    writer.write(&batch).map_err(|e| fail(&e))?;
    writer.close().map_err(|e| fail(&e))?;
    Ok(())
}

/// A value's text in CSV: numbers as Rust prints them (shortest round-trip), lists as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Int64(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(t) => t
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
            .to_string(),
        Value::Int64List(l) => serde_json::to_string(l).unwrap_or_default(),
        Value::DoubleList(l) => serde_json::to_string(l).unwrap_or_default(),
        Value::StringList(l) => serde_json::to_string(l).unwrap_or_default(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn arrow_type(ty: FeatureType) -> DataType {
    let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
    match ty {
        FeatureType::Int64 => DataType::Int64,
        FeatureType::Double => DataType::Float64,
        FeatureType::Bool => DataType::Boolean,
        FeatureType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        FeatureType::Int64List => list(DataType::Int64),
        FeatureType::DoubleList => list(DataType::Float64),
        FeatureType::StringList => list(DataType::Utf8),
        FeatureType::String | FeatureType::Bytes => DataType::Utf8,
    }
}

fn ms(t: &std::time::SystemTime) -> Millis {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX),
        Err(e) => -Millis::try_from(e.duration().as_millis()).unwrap_or(Millis::MAX),
    }
}

fn column(ty: FeatureType, cells: impl Iterator<Item = Value>) -> ArrayRef {
    match ty {
        FeatureType::Int64 => {
            let mut b = Int64Builder::new();
            cells.for_each(|v| {
                b.append_option(if let Value::Int64(i) = v {
                    Some(i)
                } else {
                    None
                })
            });
            Arc::new(b.finish())
        }
        FeatureType::Double => {
            let mut b = Float64Builder::new();
            cells.for_each(|v| {
                b.append_option(if let Value::Double(d) = v {
                    Some(d)
                } else {
                    None
                })
            });
            Arc::new(b.finish())
        }
        FeatureType::Bool => {
            let mut b = BooleanBuilder::new();
            cells.for_each(|v| {
                b.append_option(if let Value::Bool(x) = v {
                    Some(x)
                } else {
                    None
                })
            });
            Arc::new(b.finish())
        }
        FeatureType::Timestamp => {
            let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
            cells.for_each(|v| {
                b.append_option(if let Value::Timestamp(t) = v {
                    Some(ms(&t))
                } else {
                    None
                })
            });
            Arc::new(b.finish())
        }
        FeatureType::Int64List => list(Int64Builder::new(), cells, |b, v| match v {
            Value::Int64List(l) => {
                l.into_iter().for_each(|x| b.append_value(x));
                true
            }
            _ => false,
        }),
        FeatureType::DoubleList => list(Float64Builder::new(), cells, |b, v| match v {
            Value::DoubleList(l) => {
                l.into_iter().for_each(|x| b.append_value(x));
                true
            }
            _ => false,
        }),
        FeatureType::StringList => list(StringBuilder::new(), cells, |b, v| match v {
            Value::StringList(l) => {
                l.iter().for_each(|x| b.append_value(x));
                true
            }
            _ => false,
        }),
        FeatureType::String | FeatureType::Bytes => {
            let mut b = StringBuilder::new();
            cells.for_each(|v| {
                b.append_option(match v {
                    Value::String(s) => Some(s),
                    Value::Int64(i) => Some(i.to_string()),
                    _ => None,
                })
            });
            Arc::new(b.finish())
        }
    }
}

/// A list column: `push` appends a cell's items to the values and says whether it was a list
/// (a null list otherwise).
fn list<B: arrow_array::builder::ArrayBuilder>(
    values: B,
    cells: impl Iterator<Item = Value>,
    mut push: impl FnMut(&mut B, Value) -> bool,
) -> ArrayRef {
    let mut b = ListBuilder::new(values);
    for v in cells {
        let is_list = push(b.values(), v);
        b.append(is_list);
    }
    Arc::new(b.finish())
}

fn record_batch(
    def: &ViewDef,
    spine: &Spine,
    values: &[Vec<Value>],
) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    if let Some(ids) = &spine.request_ids {
        fields.push(Field::new("request_id", DataType::Utf8, true));
        columns.push(Arc::new(arrow_array::StringArray::from(ids.clone())));
    }
    let spine = &spine.rows;
    for (i, k) in def.keys.iter().enumerate() {
        fields.push(Field::new(&k.entity, arrow_type(k.ty), false));
        columns.push(column(
            k.ty,
            spine.iter().map(|r| Value::from(r.key[i].clone())),
        ));
    }
    fields.push(Field::new(
        "timestamp",
        arrow_type(FeatureType::Timestamp),
        false,
    ));
    columns.push(column(
        FeatureType::Timestamp,
        spine.iter().map(|r| Value::Timestamp(time_of(r.time))),
    ));
    for (i, a) in def.aggregates.iter().enumerate() {
        fields.push(Field::new(&a.feature, arrow_type(a.output), true));
        columns.push(column(a.output, values.iter().map(|v| v[i].clone())));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// What loading history into the store did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entities written.
    pub entities: u64,
    /// Tiles written.
    pub tiles: u64,
    /// Tiles the store held already, kept as they were.
    pub kept: u64,
}

/// Writes the tiles of `events` (as of `now`) into the store: every tile the store does not hold
/// yet. A tile it holds is ingest's, kept (history and the live stream are not added together).
pub async fn load(
    store: &Arc<dyn TileStore>,
    prefix: &str,
    view: &StreamView,
    events: &[Event],
    now: Millis,
    timeout: std::time::Duration,
) -> Result<Loaded, String> {
    let states = backfill::fold(&view.def, events, now);
    let mut loaded = Loaded::default();
    let entries: Vec<_> = states.into_iter().collect();
    for chunk in entries.chunks(512) {
        let keys: Vec<String> = chunk.iter().map(|(k, _)| view.key(prefix, k)).collect();
        let mut pending: HashMap<usize, ()> = (0..chunk.len()).map(|i| (i, ())).collect();
        for _ in 0..20 {
            if pending.is_empty() {
                break;
            }
            let indexes: Vec<usize> = pending.keys().copied().collect();
            let ks: Vec<String> = indexes.iter().map(|&i| keys[i].clone()).collect();
            let stored: Vec<Fields> = store.read(&ks, timeout).await.map_err(|e| e.to_string())?;
            for (&i, fields) in indexes.iter().zip(stored) {
                let (current, _) = writer::decode(&view.def, &fields);
                let held: std::collections::HashSet<&str> =
                    store::named(&fields).map(|(f, _)| f).collect();
                let mut changes = aggregation::Changes::default();
                for (field, bytes) in chunk[i].1.fields() {
                    if !field.starts_with("t:") {
                        continue;
                    }
                    if held.contains(field.as_str()) {
                        loaded.kept += 1;
                    } else {
                        changes.set.push((field, bytes));
                    }
                }
                if changes.is_empty() {
                    pending.remove(&i);
                    continue;
                }
                let n = changes.set.len() as u64;
                if store
                    .write(&keys[i], current.version, &changes, view.ttl_ms, timeout)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    loaded.entities += 1;
                    loaded.tiles += n;
                    pending.remove(&i);
                }
            }
        }
        if !pending.is_empty() {
            return Err(format!(
                "{} entities changed under every write",
                pending.len()
            ));
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use aggregation::{KeyField, Op, spec::Field as AggField};
    use arrow_array::{Array, Float64Array, Int64Array, ListArray, StringArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    #[test]
    fn a_spine_and_its_values_round_trip_through_parquet() {
        let mut def = ViewDef {
            name: "card".into(),
            keys: vec![KeyField {
                entity: "card_id".into(),
                field: "card".into(),
                ty: FeatureType::String,
            }],
            time_field: "ts".into(),
            allowed_lateness: 0,
            series: Vec::new(),
            aggregates: Vec::new(),
        };
        let field = |name: &str, ty| {
            Some(AggField {
                name: name.into(),
                ty,
            })
        };
        def.add("n", Op::Count, None, 600_000, None).unwrap();
        def.add(
            "mean",
            Op::Mean,
            field("amount", FeatureType::Double),
            600_000,
            None,
        )
        .unwrap();
        def.add(
            "last",
            Op::LastN(2),
            field("m", FeatureType::String),
            600_000,
            None,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let events_path = dir.path().join("events.jsonl");
        std::fs::write(
            &events_path,
            "{\"card\":\"a\",\"ts\":1000,\"amount\":2.0,\"m\":\"x\"}\n\
             {\"card\":\"a\",\"ts\":2000,\"amount\":4.0,\"m\":\"y\"}\n\
             not json\n",
        )
        .unwrap();
        let (events, bad) = read_events(&def, &events_path).unwrap();
        assert_eq!(
            (events.len(), bad),
            (2, vec![(3, "not a JSON object".to_owned())])
        );
        let spine_path = dir.path().join("spine.csv");
        std::fs::write(
            &spine_path,
            "card_id,timestamp,label\na,1500,1\na,1970-01-01T00:00:05Z,0\nb,5000,0\n",
        )
        .unwrap();
        let spine = read_spine(&def, &spine_path).unwrap();
        assert_eq!(spine.request_ids, None);
        let values = compute(&def, &events, &spine);
        let out = dir.path().join("values.parquet");
        write(&def, &spine, &values, &out).unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["card_id", "timestamp", "n", "mean", "last"]);
        let col = |i: usize| batch.column(i).clone();
        let keys = col(0);
        let keys = keys.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((keys.value(0), keys.value(2)), ("a", "b"));
        let n = col(2);
        let n = n.as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!((n.value(0), n.value(1), n.value(2)), (1, 2, 0));
        let mean = col(3);
        let mean = mean.as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!((mean.value(1), mean.is_null(2)), (3.0, true));
        let last = col(4);
        let last = last.as_any().downcast_ref::<ListArray>().unwrap();
        let second = last.value(1);
        let second = second.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((second.value(0), second.value(1)), ("y", "x"));
        let bad_spine = dir.path().join("bad.csv");
        std::fs::write(&bad_spine, "card_id,when\na,1\n").unwrap();
        assert!(
            read_spine(&def, &bad_spine)
                .unwrap_err()
                .ends_with("no column `timestamp` or `served_at`")
        );
    }
}
