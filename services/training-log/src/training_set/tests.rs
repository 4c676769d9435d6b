use std::time::{Duration, UNIX_EPOCH};

use arrow_array::{BooleanArray, Float64Array, Int64Array, StringArray};
use fetcher_api::FeatureType;

use super::*;
use crate::{
    PiiMode,
    record::{Cell, FeatureEntry, LoggedStatus, Record},
    schema::{Column, FeatureColumn, LogSchema},
    sink::parquet::{file_name, write_file},
};

fn schema(hash: &str) -> LogSchema {
    LogSchema::new(SchemaDef {
        feature_service: "fraud".into(),
        definition_hash: hash.into(),
        entities: vec![Column {
            name: "user_id".into(),
            ty: FeatureType::String,
        }],
        context: vec![],
        features: vec![
            FeatureColumn {
                name: "u:score".into(),
                ty: FeatureType::Double,
                pii: false,
            },
            FeatureColumn {
                name: "u:verified".into(),
                ty: FeatureType::Bool,
                pii: false,
            },
        ],
        pii: PiiMode::Hash,
    })
}

/// 2023-11-14T22:13:20Z plus `s` seconds, in microseconds.
fn at(s: i64) -> i64 {
    (1_700_000_000 + s) * 1_000_000
}

fn record(id: &str, served_at_us: i64, score: f64, status: LoggedStatus) -> Record {
    Record {
        request_id: id.into(),
        served_at_us,
        latency_us: 7,
        entities: vec![Cell::String(format!("u-{id}"))],
        context: vec![],
        features: vec![
            FeatureEntry {
                value: Cell::Double(score.to_bits()),
                status,
                age_ms: Some(1),
            },
            FeatureEntry {
                value: Cell::Bool(true),
                status: LoggedStatus::Present,
                age_ms: None,
            },
        ],
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    logs: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("log");
    let s = schema("h1");
    write_file(
        &logs,
        &s,
        "2023-11-14",
        &file_name(&s, "a"),
        &[
            record("r1", at(0), 0.5, LoggedStatus::Present),
            record("r2", at(1), 0.25, LoggedStatus::NotFound),
        ],
    )
    .unwrap();
    // r1 again (a replay after a crash can repeat a record), and r3 the next day.
    write_file(
        &logs,
        &s,
        "2023-11-15",
        &file_name(&s, "b"),
        &[
            record("r3", at(86_400), 0.75, LoggedStatus::Present),
            record("r1", at(0), 0.5, LoggedStatus::Present),
        ],
    )
    .unwrap();
    Fixture { tmp, logs }
}

fn options(f: &Fixture, labels: &str) -> TrainingSetOptions {
    let path = f.tmp.path().join("labels.csv");
    std::fs::write(&path, labels).unwrap();
    TrainingSetOptions {
        logs: f.logs.clone(),
        labels: path,
        feature_service: "fraud".into(),
        definition_hash: None,
        from: None,
        to: None,
        present_only: false,
        out: f.tmp.path().join("train.parquet"),
    }
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let c = batch.column_by_name(name).unwrap();
    let c = c.as_any().downcast_ref::<StringArray>().unwrap();
    c.iter().map(|v| v.map(str::to_owned)).collect()
}

#[test]
fn labels_join_the_vectors_as_served() {
    let f = fixture();
    let opts = options(
        &f,
        "request_id,is_fraud,label_time,note\nr3,1,2023-11-20T00:00:00Z,x\nr1,0,2023-11-20T00:00:00Z,\nnope,1,2023-11-20T00:00:00Z,y\nr2,0,2023-11-21T00:00:00Z,z\n",
    );
    let report = build(&opts).unwrap();
    assert_eq!(
        report,
        TrainingSetReport {
            definition_hash: "h1".into(),
            labels: 4,
            rows: 3,
            unmatched: vec!["nope".into()],
            not_present: 0,
            duplicates: 1,
        }
    );
    let (schema, batches) = read_parquet(&opts.out).unwrap();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "request_id",
            "served_at",
            "definition_hash",
            "latency_us",
            "entity:user_id",
            "feature:u:score",
            "status:u:score",
            "age_ms:u:score",
            "feature:u:verified",
            "status:u:verified",
            "age_ms:u:verified",
            "is_fraud",
            "label_time",
            "note",
        ]
    );
    let batch = &batches[0];
    assert_eq!(
        strings(batch, "request_id"),
        [Some("r3".into()), Some("r1".into()), Some("r2".into())]
    );
    let score = batch.column_by_name("feature:u:score").unwrap();
    let score = score.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(score.values().to_vec(), [0.75, 0.5, 0.25]);
    let verified = batch.column_by_name("feature:u:verified").unwrap();
    assert!(
        verified
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap()
            .iter()
            .all(|v| v == Some(true))
    );
    assert_eq!(
        strings(batch, "status:u:score"),
        [
            Some("PRESENT".into()),
            Some("PRESENT".into()),
            Some("NOT_FOUND".into())
        ]
    );
    let label = batch.column_by_name("is_fraud").unwrap();
    let label = label.as_any().downcast_ref::<Int64Array>().unwrap();
    assert_eq!(label.values().to_vec(), [1, 0, 0]);
    assert_eq!(
        strings(batch, "note"),
        [Some("x".into()), None, Some("z".into())]
    );
}

#[test]
fn present_only_and_time_range_filter_rows() {
    let f = fixture();
    let mut opts = options(&f, "request_id,y\nr1,1\nr2,0\nr3,1\n");
    opts.present_only = true;
    let report = build(&opts).unwrap();
    assert_eq!((report.rows, report.not_present), (2, 1));

    let mut opts = options(&f, "request_id,y\nr1,1\nr2,0\nr3,1\n");
    opts.from = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_001));
    opts.to = Some(UNIX_EPOCH + Duration::from_secs(1_700_086_400));
    let report = build(&opts).unwrap();
    // r1 is before the range and r3 at its (exclusive) end.
    assert_eq!(report.rows, 1);
    assert_eq!(report.unmatched, ["r1", "r3"]);
}

#[test]
fn several_definitions_must_be_chosen_between() {
    let f = fixture();
    let s2 = schema("h2");
    write_file(
        &f.logs,
        &s2,
        "2023-11-15",
        &file_name(&s2, "c"),
        &[record("r9", at(86_401), 1.0, LoggedStatus::Present)],
    )
    .unwrap();
    let mut opts = options(&f, "request_id,y\nr9,1\nr1,0\n");
    let err = build(&opts).unwrap_err();
    assert!(
        err.contains("h1 (2 files)") && err.contains("h2 (1 files)"),
        "{err}"
    );
    opts.definition_hash = Some("h2".into());
    let report = build(&opts).unwrap();
    assert_eq!(
        (report.rows, report.unmatched.clone()),
        (1, vec!["r1".into()])
    );

    opts.feature_service = "absent".into();
    assert!(build(&opts).unwrap_err().contains("no training log files"));
}
