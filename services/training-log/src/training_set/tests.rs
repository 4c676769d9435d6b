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
            pii: false,
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
        inputs: Vec::new(),
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
        inputs: Vec::new(),
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
        config: None,
        recompute: false,
        derive: Vec::new(),
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
            recomputed: Vec::new(),
            derived: Vec::new(),
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
    let err = build(&opts).unwrap_err().to_string();
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
    assert!(
        build(&opts)
            .unwrap_err()
            .to_string()
            .contains("no training log files")
    );
}

mod derived_features {
    //! `recompute` and `derive` over a log written as the gateway would have written it: the
    //! logged derived values below are worked out by hand from the status rules, not by the code
    //! under test.

    use std::{future::Future, path::Path, pin::Pin, sync::Arc};

    use fetcher_api::{BuildError, Fetcher, FetcherFactory, Problem, Registry, SourceSpec};

    use super::*;

    /// Validates any options and builds nothing: configurations load without I/O.
    struct Tables;

    impl FetcherFactory for Tables {
        fn kind(&self) -> &'static str {
            "tables"
        }

        fn validate(&self, _: &SourceSpec) -> Vec<Problem> {
            Vec::new()
        }

        fn build<'a, 'b, 'f>(
            &'a self,
            source: &'b SourceSpec,
        ) -> Pin<Box<dyn Future<Output = Result<Arc<dyn Fetcher>, BuildError>> + Send + 'f>>
        where
            'a: 'f,
            'b: 'f,
        {
            Box::pin(async move { Err(BuildError::new(source, "never built in these tests")) })
        }
    }

    const CONFIG: &str = r#"
[entities.user_id]
type = "string"

[sources.tables]
kind = "tables"
[sources.request]
kind = "request"

[views.user]
source = "tables"
entities = ["user_id"]
[views.user.features]
avg = { type = "double" }
count = { type = "int64" }
email = { type = "string", pii = true }
unserved = { type = "double" }

[views.txn]
source = "request"
[views.txn.features]
amount = { type = "double" }
unread = { type = "double" }
card = { type = "string", pii = true }

[views.risk]
kind = "derived"
[views.risk.features]
ratio = { type = "double", expr = "txn.amount / user.avg" }
per_txn = { type = "int64", expr = "1000 / user.count" }
twice = { type = "double", expr = "risk.ratio * 2.0" }
guarded = { type = "double", expr = "has(user.avg) ? txn.amount - user.avg : -1.0" }
from_unserved = { type = "double", expr = "user.unserved + 1.0" }
via_unserved = { type = "double", expr = "risk.from_unserved * 2.0" }
from_unread = { type = "double", expr = "txn.unread + 1.0" }
from_email = { type = "bool", expr = "user.email.endsWith('.org')" }
from_card = { type = "bool", expr = "txn.card.startsWith('4')" }
secret = { type = "double", expr = "txn.amount", pii = true }

[feature_services.fs]
features = ["user:avg", "user:count", "user:email", "risk:ratio", "risk:per_txn", "risk:twice"]

[feature_services.fs.defaults]
"user:avg" = 0.0
"risk:ratio" = -1.0
"#;

    fn config(text: &str) -> Arc<Config> {
        let mut registry = Registry::new();
        registry.register(Tables);
        Arc::new(gateway_config::load_str(text, "t.toml", Path::new("."), &registry).unwrap())
    }

    fn schema() -> LogSchema {
        let feature = |name: &str, ty, pii| FeatureColumn {
            name: name.into(),
            ty,
            pii,
        };
        LogSchema::new(SchemaDef {
            feature_service: "fs".into(),
            definition_hash: "h".into(),
            entities: vec![Column {
                name: "user_id".into(),
                ty: FeatureType::String,
                pii: false,
            }],
            context: vec![Column {
                name: "amount".into(),
                ty: FeatureType::Double,
                pii: false,
            }],
            features: vec![
                feature("user:avg", FeatureType::Double, false),
                feature("user:count", FeatureType::Int64, false),
                feature("user:email", FeatureType::String, true),
                feature("risk:ratio", FeatureType::Double, false),
                feature("risk:per_txn", FeatureType::Int64, false),
                feature("risk:twice", FeatureType::Double, false),
            ],
            pii: PiiMode::Hash,
            inputs: Vec::new(),
        })
    }

    use LoggedStatus::{NotFound, Present, SourceError, Stale, TimedOut};

    fn d(v: f64) -> Cell {
        Cell::Double(v.to_bits())
    }

    fn entry(value: Cell, status: LoggedStatus, age_ms: Option<i64>) -> FeatureEntry {
        FeatureEntry {
            value,
            status,
            age_ms,
        }
    }

    /// One vector: the context's amount, then the six features as logged.
    fn vector(id: &str, amount: Option<f64>, features: [FeatureEntry; 6]) -> Record {
        Record {
            request_id: id.into(),
            served_at_us: at(0),
            latency_us: 9,
            entities: vec![Cell::String(format!("u-{id}"))],
            context: vec![amount.map_or(Cell::Null, d)],
            features: features.to_vec(),
            inputs: Vec::new(),
        }
    }

    fn email() -> FeatureEntry {
        entry(Cell::String("5e1f".into()), Present, Some(10))
    }

    /// An amount whose quotient has a long binary expansion.
    const AMOUNT: f64 = 0.1 + 0.2;

    /// The vectors as the gateway serves them with [`CONFIG`].
    fn vectors() -> Vec<Record> {
        vec![
            // Everything PRESENT.
            vector(
                "r1",
                Some(AMOUNT),
                [
                    entry(d(3.0), Present, Some(10)),
                    entry(Cell::Int64(4), Present, Some(10)),
                    email(),
                    entry(d(AMOUNT / 3.0), Present, Some(10)),
                    entry(Cell::Int64(250), Present, Some(10)),
                    entry(d(AMOUNT / 3.0 * 2.0), Present, Some(10)),
                ],
            ),
            // No average (its default logged) and no transactions: the ratio is NOT_FOUND with
            // its default, what reads it NOT_FOUND too, and 1000 / 0 an evaluation error.
            vector(
                "r2",
                Some(5.0),
                [
                    entry(d(0.0), NotFound, None),
                    entry(Cell::Int64(0), Present, Some(20)),
                    email(),
                    entry(d(-1.0), NotFound, None),
                    entry(Cell::Null, SourceError, Some(20)),
                    entry(Cell::Null, NotFound, None),
                ],
            ),
            // The user's source timed out: its status passes on.
            vector(
                "r3",
                Some(1.0),
                [
                    entry(d(0.0), TimedOut, None),
                    entry(Cell::Null, TimedOut, None),
                    email(),
                    entry(d(-1.0), TimedOut, None),
                    entry(Cell::Null, TimedOut, None),
                    entry(Cell::Null, TimedOut, None),
                ],
            ),
            // No amount in the context.
            vector(
                "r4",
                None,
                [
                    entry(d(2.0), Present, Some(5)),
                    entry(Cell::Int64(1), Present, Some(5)),
                    email(),
                    entry(d(-1.0), NotFound, Some(5)),
                    entry(Cell::Int64(1000), Present, Some(5)),
                    entry(Cell::Null, NotFound, Some(5)),
                ],
            ),
            // A cached average served past its TTL: the log holds its default, not the value
            // the ratio read, so the ratio cannot be recomputed; the count, with no default,
            // can.
            vector(
                "r5",
                Some(1.0),
                [
                    entry(d(0.0), Stale, Some(90_000)),
                    entry(Cell::Int64(10), Stale, Some(90_000)),
                    email(),
                    entry(d(-1.0), Stale, Some(90_000)),
                    entry(Cell::Int64(100), Stale, Some(90_000)),
                    entry(d(4.0), Stale, Some(90_000)),
                ],
            ),
            // Doubles divide by zero to infinity, not to an error.
            vector(
                "r6",
                Some(1.0),
                [
                    entry(d(0.0), Present, Some(7)),
                    entry(Cell::Int64(3), Present, Some(7)),
                    email(),
                    entry(d(f64::INFINITY), Present, Some(7)),
                    entry(Cell::Int64(333), Present, Some(7)),
                    entry(d(f64::INFINITY), Present, Some(7)),
                ],
            ),
        ]
    }

    struct Log {
        tmp: tempfile::TempDir,
        logs: PathBuf,
    }

    fn log(records: &[Record]) -> Log {
        let tmp = tempfile::tempdir().unwrap();
        let logs = tmp.path().join("log");
        let s = schema();
        write_file(&logs, &s, "2023-11-14", &file_name(&s, "a"), records).unwrap();
        Log { tmp, logs }
    }

    fn options(log: &Log, config: Arc<Config>) -> TrainingSetOptions {
        let labels = log.tmp.path().join("labels.csv");
        std::fs::write(
            &labels,
            "request_id,y\nr1,1\nr2,0\nr3,1\nr4,0\nr5,1\nr6,0\n",
        )
        .unwrap();
        TrainingSetOptions {
            logs: log.logs.clone(),
            labels,
            feature_service: "fs".into(),
            definition_hash: None,
            from: None,
            to: None,
            present_only: false,
            out: log.tmp.path().join("train.parquet"),
            config: Some(config),
            recompute: false,
            derive: Vec::new(),
        }
    }

    fn check(feature: &str, rows: usize, lost: usize) -> Recomputed {
        Recomputed {
            feature: feature.into(),
            rows,
            differ: 0,
            examples: Vec::new(),
            lost,
            values_compared: true,
        }
    }

    #[test]
    fn recomputing_what_was_served_finds_no_difference() {
        let log = log(&vectors());
        let mut opts = options(&log, config(CONFIG));
        opts.recompute = true;
        let report = build(&opts).unwrap();
        assert_eq!(
            report.recomputed,
            [
                check("risk:ratio", 5, 1),
                check("risk:per_txn", 6, 0),
                check("risk:twice", 5, 1),
            ]
        );
        // The training set holds the logged values.
        let (_, rows) = read_records(&opts.out).unwrap();
        let logged: Vec<Vec<FeatureEntry>> = vectors().into_iter().map(|r| r.features).collect();
        let written: Vec<Vec<FeatureEntry>> = rows.into_iter().map(|r| r.features).collect();
        assert_eq!(written, logged);
    }

    #[test]
    fn a_value_off_by_one_bit_or_another_status_is_a_difference() {
        let mut records = vectors();
        let ratio = &mut records[0].features[3];
        ratio.value = d(f64::from_bits((AMOUNT / 3.0).to_bits() + 1));
        records[1].features[4].status = NotFound;
        let log = log(&records);
        let mut opts = options(&log, config(CONFIG));
        opts.recompute = true;
        let report = build(&opts).unwrap();
        let [ratio, per_txn, twice] = &report.recomputed[..] else {
            panic!("{:?}", report.recomputed)
        };
        assert_eq!((ratio.differ, per_txn.differ, twice.differ), (1, 1, 0));
        assert_eq!(
            ratio.examples,
            [Difference {
                request_id: "r1".into(),
                logged: (d(f64::from_bits((AMOUNT / 3.0).to_bits() + 1)), Present),
                recomputed: (d(AMOUNT / 3.0), Present),
            }]
        );
        assert_eq!(
            per_txn.examples[0].recomputed,
            (Cell::Null, SourceError),
            "1000 / 0"
        );

        // A changed expression changes what reads it too.
        let changed = CONFIG.replace("txn.amount / user.avg", "txn.amount * user.avg");
        opts.config = Some(config(&changed));
        let report = build(&opts).unwrap();
        let differ: Vec<usize> = report.recomputed.iter().map(|c| c.differ).collect();
        // r1's ratio (also tampered) and r6's (0.0 instead of inf), and both their twice.
        assert_eq!(differ, [2, 1, 2]);
    }

    #[test]
    fn a_derived_feature_not_served_is_added_from_the_logged_inputs() {
        let log = log(&vectors());
        let mut opts = options(&log, config(CONFIG));
        opts.derive = vec!["risk:guarded".into()];
        let report = build(&opts).unwrap();
        assert_eq!(
            report.derived,
            [Derived {
                feature: "risk:guarded".into(),
                lost: 1,
            }]
        );
        let (def, rows) = read_records(&opts.out).unwrap();
        assert_eq!(
            def.features.last(),
            Some(&FeatureColumn {
                name: "risk:guarded".into(),
                ty: FeatureType::Double,
                pii: false,
            })
        );
        let guarded: Vec<FeatureEntry> = rows
            .iter()
            .map(|r| r.features.last().unwrap().clone())
            .collect();
        assert_eq!(
            guarded,
            [
                // amount - avg, as old as the average.
                entry(d(AMOUNT - 3.0), Present, Some(10)),
                // No average: has() says so, and the expression needs nothing else.
                entry(d(-1.0), Present, None),
                entry(d(-1.0), Present, None),
                // An average but no amount, which it reads (the age is the average's, as
                // the gateway logs it).
                entry(Cell::Null, NotFound, Some(5)),
                // The STALE average's value is not in the log.
                entry(Cell::Null, SourceError, None),
                entry(d(1.0), Present, Some(7)),
            ]
        );
        // The logged features are untouched, and --present-only counts the added one.
        assert_eq!(rows[0].features[..6], vectors()[0].features[..]);
        opts.present_only = true;
        opts.recompute = true;
        let report = build(&opts).unwrap();
        assert_eq!((report.rows, report.not_present), (2, 4));
        assert!(report.recomputed.iter().all(|c| c.differ == 0));
    }

    #[test]
    fn a_context_value_logged_as_pii_reads_back_but_is_not_recomputed_from() {
        for (mode, held) in [(PiiMode::Hash, "hashed"), (PiiMode::Drop, "not at all")] {
            // Logged by a configuration that marked `txn.amount` pii (CONFIG does not).
            let mut def = schema().def;
            def.context[0].pii = true;
            def.pii = mode;
            let s = LogSchema::new(def);
            let records: Vec<Record> = vectors()
                .into_iter()
                .map(|mut r| {
                    if mode == PiiMode::Drop {
                        r.context[0] = Cell::Null;
                        r.features[2].value = Cell::Null;
                    } else if r.context[0] != Cell::Null {
                        r.context[0] = Cell::String("0f1e".into());
                    }
                    r
                })
                .collect();
            let tmp = tempfile::tempdir().unwrap();
            let logs = tmp.path().join("log");
            write_file(&logs, &s, "2023-11-14", &file_name(&s, "a"), &records).unwrap();
            let log = Log { tmp, logs };
            let (path, _, _) = &log_files(&log.logs, "fs").unwrap()[0];
            assert_eq!(
                read_records(path).unwrap(),
                (s.def.clone(), records.clone())
            );

            // A training set is made of such files as of any other.
            let mut opts = options(&log, config(CONFIG));
            opts.config = None;
            assert_eq!(build(&opts).unwrap().rows, 6);
            let (_, rows) = read_records(&opts.out).unwrap();
            let context: Vec<_> = rows.into_iter().map(|r| r.context).collect();
            let logged: Vec<_> = records.into_iter().map(|r| r.context).collect();
            assert_eq!(context, logged);

            // Recomputing from it is refused, as for an input the configuration marks pii.
            let mut opts = options(&log, config(CONFIG));
            opts.recompute = true;
            match build(&opts) {
                Err(TrainingSetError::Refused(message)) => assert!(
                    message.contains(&format!(
                        "input `txn.amount` (the context value `amount`) was logged as pii: the \
                         log holds it {held}, not its value"
                    )),
                    "{message}"
                ),
                other => panic!("{mode:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn inputs_the_log_does_not_hold_are_refused_by_name() {
        let log = log(&vectors());
        let refusal = |derive: &str| {
            let mut opts = options(&log, config(CONFIG));
            opts.derive = vec![derive.into()];
            match build(&opts) {
                Err(TrainingSetError::Refused(message)) => {
                    assert!(!opts.out.exists(), "nothing is written");
                    message
                }
                other => panic!("{derive}: {other:?}"),
            }
        };
        assert_eq!(
            refusal("risk:from_unserved"),
            "derived feature `risk:from_unserved`: input `user.unserved` is not in the log: \
             feature service `fs` never served `user:unserved`, nor read it for a derived feature"
        );
        assert_eq!(
            refusal("risk:via_unserved"),
            "derived feature `risk:via_unserved` reads `risk:from_unserved`: input \
             `user.unserved` is not in the log: feature service `fs` never served \
             `user:unserved`, nor read it for a derived feature"
        );
        assert_eq!(
            refusal("risk:from_unread"),
            "derived feature `risk:from_unread`: input `txn.unread` (the context value `unread`) \
             is not in the log: feature service `fs` never read it"
        );
        assert_eq!(
            refusal("risk:from_email"),
            "derived feature `risk:from_email`: input `user.email` is pii: personal data is not \
             recomputed from the log"
        );
        assert!(refusal("risk:from_card").contains("input `txn.card` is pii"));
        assert!(refusal("risk:secret").contains("is pii"));
        assert!(refusal("risk:ratio").contains("in the log already"));
        assert!(refusal("user:avg").contains("not a derived feature"));
        assert!(refusal("ratio").contains("VIEW:FEATURE"));

        let mut opts = options(&log, config(CONFIG));
        opts.config = None;
        opts.recompute = true;
        assert!(
            matches!(build(&opts), Err(TrainingSetError::Refused(m)) if m.contains("--config"))
        );
        let renamed = CONFIG.replace("feature_services.fs", "feature_services.other");
        let mut opts = options(&log, config(&renamed));
        opts.recompute = true;
        assert!(
            matches!(build(&opts), Err(TrainingSetError::Refused(m)) if m.contains("feature service `fs` is not in the configuration"))
        );
    }
}
