//! `feature-gateway skew`: the served vectors of a training log range against a reference
//! profile, written as a report (`skew.md`, and `skew.html` with a plot per feature) that ranks
//! features by how far they moved; exit code 4 when one moved past a threshold. With
//! `--consistency FILE`, the served values are also compared with the same requests' features
//! recomputed offline.

use std::{collections::HashMap, path::Path, sync::Arc};

use arrow_array::{
    Array, ArrayRef,
    cast::AsArray,
    types::{
        Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
        TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
    },
};
use drift::{
    Consistency, Profile, Profiler, Reference, Thresholds, Window,
    report::{ConsistencyInput, ReportInput},
};
use fetcher_api::FeatureType;
use training_log::Value;

use crate::{
    cli::SkewArgs,
    cmd::profile::{Input, Selection, observations, read, specs},
    exit::Failure,
};

/// The recomputed table's column prefix of a feature, as in the training log.
const FEATURE_PREFIX: &str = "feature:";

/// Compares, writes the report, and fails with exit code 4 when a threshold was crossed.
pub fn run(args: &SkewArgs) -> Result<(), Failure> {
    let profile = Profile::read(&args.reference).map_err(|e| match e {
        drift::ProfileError::Io { .. } => Failure::Usage(format!("--reference: {e}")),
        e => Failure::Usage(format!("--reference {e}")),
    })?;
    let reference = Arc::new(Reference::new(profile));
    let fs = reference.profile().feature_service.clone();
    let input = Input::Logs(args.served.clone());
    let selection = Selection {
        feature_service: Some(&fs),
        definition_hash: args.definition_hash.as_deref(),
        from: args.from,
        to: args.to,
        several_definitions: true,
    };
    // Which recomputed features to keep served values of, for --consistency.
    let table = match &args.consistency {
        Some(path) => Some(read_table(path, &reference)?),
        None => None,
    };
    let wanted: HashMap<&str, ()> = table
        .as_ref()
        .map(|t| t.ids.iter().map(|id| (id.as_str(), ())).collect())
        .unwrap_or_default();
    let mut served_values: HashMap<String, Vec<Value>> = HashMap::new();

    let mut window = Window::new(reference.clone());
    let mut served = Profiler::new(reference.profile().specs());
    // Each definition's features mapped to the reference's, checked once per definition.
    let mut maps: HashMap<String, Vec<usize>> = HashMap::new();
    let scan = read(&input, &selection, |def, record| {
        if !maps.contains_key(&def.definition_hash) {
            let features: Vec<(String, FeatureType)> =
                specs(def).into_iter().map(|s| (s.name, s.ty)).collect();
            let map = reference
                .check(
                    &features,
                    &format!(
                        "the log's definition {} in {}",
                        def.definition_hash,
                        args.served.display()
                    ),
                )
                .map_err(|e| {
                    Failure::Usage(format!("--reference {}: {e}", args.reference.display()))
                })?;
            maps.insert(def.definition_hash.clone(), map);
        }
        let map = &maps[&def.definition_hash];
        window.row();
        served.row();
        let keep = wanted.contains_key(record.request_id.as_str());
        let mut values = if keep {
            vec![Value::Null; map.len()]
        } else {
            Vec::new()
        };
        for (i, st, value, default) in observations(record) {
            window.observe(map[i], st, &value, default);
            served.observe(map[i], st, &value, default);
            if keep {
                values[map[i]] = value;
            }
        }
        if keep {
            served_values.insert(record.request_id.clone(), values);
        }
        Ok(())
    })?;
    if scan.rows == 0 {
        return Err(Failure::Run(format!(
            "no logged vectors of `{fs}` in range in {}",
            args.served.display()
        )));
    }
    let hashes: Vec<&str> = scan
        .definitions
        .iter()
        .map(|d| d.definition_hash.as_str())
        .collect();
    let served = served.finish(
        &fs,
        Some(hashes.join(", ")),
        Some(scan.source(&input, &selection)),
    );
    let thresholds = Thresholds {
        psi: args.psi_threshold,
        null_rate_points: args.null_rate_threshold,
        status_points: args.status_threshold,
    };
    let comparison = window.compare(&thresholds);

    let consistency = table.map(|t| t.compare(&served_values));
    let reference_path = args.reference.display().to_string();
    let consistency_path = args
        .consistency
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let report = ReportInput {
        reference_path: &reference_path,
        reference: reference.profile(),
        served: &served,
        comparison: &comparison,
        consistency: consistency.as_ref().map(|(c, unmatched)| ConsistencyInput {
            path: &consistency_path,
            consistency: c,
            unmatched: *unmatched,
            threshold_percent: args.consistency_threshold,
        }),
    };
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Failure::run(format!("{}: {e}", args.out.display())))?;
    let md = args.out.join("skew.md");
    let html = args.out.join("skew.html");
    std::fs::write(&md, drift::report::markdown(&report))
        .map_err(|e| Failure::run(format!("{}: {e}", md.display())))?;
    std::fs::write(&html, drift::report::html(&report))
        .map_err(|e| Failure::run(format!("{}: {e}", html.display())))?;

    println!(
        "`{fs}`: {} served vectors against {} in the reference; report in {} and {}",
        scan.rows,
        reference.profile().rows,
        md.display(),
        html.display()
    );
    for (rank, f) in comparison.features.iter().enumerate() {
        println!(
            "{:>3}. {}: PSI {}, null rate {:+.1} points, {}{}",
            rank + 1,
            f.feature,
            f.psi.map_or("-".to_owned(), |p| format!("{p:.3}")),
            f.null_rate.points(),
            drift::report::explain(f),
            if f.crossed.is_empty() { "" } else { "  MOVED" }
        );
    }
    let mut moved: Vec<String> = comparison
        .crossed()
        .map(|f| match f.psi {
            Some(p) => format!(
                "{} (PSI {p:.2}, null rate {:+.1} points)",
                f.feature,
                f.null_rate.points()
            ),
            None => f.feature.clone(),
        })
        .collect();
    if let Some((c, _)) = &consistency {
        for f in &c.features {
            let percent = 100.0 * f.differ_share();
            println!(
                "consistency {}: {} of {} rows differ ({percent:.1}%)",
                f.feature, f.differ, f.rows
            );
            for e in &f.examples {
                println!(
                    "  request_id `{}`: served {}, recomputed {}",
                    e.request_id, e.served, e.recomputed
                );
            }
            if percent > args.consistency_threshold {
                moved.push(format!(
                    "{} ({percent:.1}% of rows differ from the recomputed values)",
                    f.feature
                ));
            }
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    Err(Failure::Moved(format!(
        "{} feature(s) past a threshold: {}",
        moved.len(),
        moved.join("; ")
    )))
}

/// A table of recomputed features: request ids and, per feature column, its values.
struct Table {
    ids: Vec<String>,
    /// (the reference's position of the feature, its name, one value per row).
    columns: Vec<(usize, String, Vec<Value>)>,
}

impl Table {
    /// Compares with the served values by request id; also the rows whose request was not
    /// served in range.
    fn compare(&self, served: &HashMap<String, Vec<Value>>) -> (Consistency, u64) {
        let mut c = Consistency::new(self.columns.iter().map(|(_, n, _)| n.clone()).collect());
        let mut unmatched = 0;
        for (row, id) in self.ids.iter().enumerate() {
            let Some(values) = served.get(id) else {
                unmatched += 1;
                continue;
            };
            for (k, (position, _, recomputed)) in self.columns.iter().enumerate() {
                c.compare(k, id, &values[*position], &recomputed[row]);
            }
        }
        (c, unmatched)
    }
}

/// Reads the `--consistency` table: CSV with a header, or Parquet (`.parquet`); a
/// `request_id` column and `feature:VIEW:NAME` columns of the reference's features.
fn read_table(path: &Path, reference: &Reference) -> Result<Table, Failure> {
    let fail = |m: String| Failure::Usage(format!("--consistency {}: {m}", path.display()));
    let is_parquet = path.extension().is_some_and(|e| e == "parquet");
    let (names, mut columns): (Vec<String>, Vec<Vec<Option<Cell>>>) = if is_parquet {
        read_parquet_table(path).map_err(fail)?
    } else {
        read_csv_table(path).map_err(fail)?
    };
    let id_column = names
        .iter()
        .position(|n| n == "request_id")
        .ok_or_else(|| fail("no `request_id` column".into()))?;
    let ids: Vec<String> = std::mem::take(&mut columns[id_column])
        .into_iter()
        .map(|c| match c {
            Some(Cell::Text(t)) => t,
            Some(Cell::Value(v)) => drift::consistency::text(&v),
            None => String::new(),
        })
        .collect();
    let mut table = Table {
        ids,
        columns: Vec::new(),
    };
    for (name, cells) in names.iter().zip(columns) {
        let Some(feature) = name.strip_prefix(FEATURE_PREFIX) else {
            continue;
        };
        let Some(position) = reference.feature_index(feature) else {
            return Err(fail(format!(
                "column `{name}`: `{feature}` is not a feature of the reference profile of `{}`",
                reference.profile().feature_service
            )));
        };
        let ty = reference.profile().features[position].ty;
        let values = cells
            .into_iter()
            .enumerate()
            .map(|(row, cell)| {
                match cell {
                    None => Ok(Value::Null),
                    Some(Cell::Text(t)) => ty.parse_text(&t),
                    Some(Cell::Value(v)) => ty.conform(v),
                }
                .map_err(|e| fail(format!("column `{name}`, row {}: {e}", row + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        table.columns.push((position, feature.to_owned(), values));
    }
    if table.columns.is_empty() {
        return Err(fail(format!(
            "no `{FEATURE_PREFIX}VIEW:NAME` column of a feature of `{}`",
            reference.profile().feature_service
        )));
    }
    Ok(table)
}

/// A cell of the recomputed table: CSV text (parsed by the feature's type), or a typed value.
enum Cell {
    Text(String),
    Value(Value),
}

type RawTable = (Vec<String>, Vec<Vec<Option<Cell>>>);

fn read_csv_table(path: &Path) -> Result<RawTable, String> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| e.to_string())?;
    let names: Vec<String> = reader
        .headers()
        .map_err(|e| e.to_string())?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut columns: Vec<Vec<Option<Cell>>> = names.iter().map(|_| Vec::new()).collect();
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        for (k, column) in columns.iter_mut().enumerate() {
            column.push(record.get(k).map(|t| Cell::Text(t.to_owned())));
        }
    }
    Ok((names, columns))
}

fn read_parquet_table(path: &Path) -> Result<RawTable, String> {
    let (schema, batches) = training_log::training_set::read_parquet(path)?;
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut columns: Vec<Vec<Option<Cell>>> = names.iter().map(|_| Vec::new()).collect();
    for batch in &batches {
        for (k, column) in columns.iter_mut().enumerate() {
            let array = batch.column(k);
            for row in 0..array.len() {
                column.push(
                    arrow_value(array, row)
                        .map_err(|e| format!("column `{}`: {e}", names[k]))?
                        .map(Cell::Value),
                );
            }
        }
    }
    Ok((names, columns))
}

/// The value at `row` of an Arrow column; `None` for null.
fn arrow_value(array: &ArrayRef, row: usize) -> Result<Option<Value>, String> {
    if array.is_null(row) {
        return Ok(None);
    }
    let a = array.as_ref();
    let value = if let Some(x) = a.as_primitive_opt::<Int64Type>() {
        Value::Int64(x.value(row))
    } else if let Some(x) = a.as_primitive_opt::<Int32Type>() {
        Value::Int64(i64::from(x.value(row)))
    } else if let Some(x) = a.as_primitive_opt::<Float64Type>() {
        Value::Double(x.value(row))
    } else if let Some(x) = a.as_primitive_opt::<Float32Type>() {
        Value::Double(f64::from(x.value(row)))
    } else if let Some(x) = a.as_string_opt::<i32>() {
        Value::String(x.value(row).to_owned())
    } else if let Some(x) = a.as_string_opt::<i64>() {
        Value::String(x.value(row).to_owned())
    } else if let Some(x) = a.as_boolean_opt() {
        Value::Bool(x.value(row))
    } else if let Some(x) = a.as_binary_opt::<i32>() {
        Value::Bytes(x.value(row).to_vec())
    } else if let Some(x) = a.as_primitive_opt::<TimestampNanosecondType>() {
        Value::Timestamp(training_log::record::from_nanos(x.value(row)))
    } else if let Some(x) = a.as_primitive_opt::<TimestampMicrosecondType>() {
        Value::Timestamp(training_log::record::from_nanos(
            x.value(row).saturating_mul(1_000),
        ))
    } else if let Some(x) = a.as_primitive_opt::<TimestampMillisecondType>() {
        Value::Timestamp(training_log::record::from_nanos(
            x.value(row).saturating_mul(1_000_000),
        ))
    } else if let Some(x) = a.as_primitive_opt::<TimestampSecondType>() {
        Value::Timestamp(training_log::record::from_nanos(
            x.value(row).saturating_mul(1_000_000_000),
        ))
    } else if let Some(x) = a.as_list_opt::<i32>() {
        let items = x.value(row);
        let values = (0..items.len())
            .map(|i| arrow_value(&items, i))
            .collect::<Result<Vec<_>, _>>()?;
        list(values)?
    } else {
        return Err(format!("{} columns are not read", a.data_type()));
    };
    Ok(Some(value))
}

/// A list of values as a list value: all int64, all doubles or all strings.
fn list(values: Vec<Option<Value>>) -> Result<Value, String> {
    let mut ints = Vec::new();
    let mut doubles = Vec::new();
    let mut strings = Vec::new();
    for v in values {
        match v {
            Some(Value::Int64(i)) => ints.push(i),
            Some(Value::Double(d)) => doubles.push(d),
            Some(Value::String(s)) => strings.push(s),
            other => {
                return Err(format!(
                    "a list holds {other:?}: lists of int64, double or string are read"
                ));
            }
        }
    }
    Ok(
        match (ints.is_empty(), doubles.is_empty(), strings.is_empty()) {
            (_, true, true) => Value::Int64List(ints),
            (true, false, true) => Value::DoubleList(doubles),
            (true, true, false) => Value::StringList(strings),
            _ => return Err("a list of mixed types".into()),
        },
    )
}
