//! End-to-end: the training log of the real binary, read back from its Parquet files, or from a
//! real Kafka broker's topic for the Kafka sink.
//!
//! The gateway serves the demo's tables from a configuration written per test (the demo's, with
//! its own `[training_log]` section), so each test owns its log and spool directories across
//! restarts. The SIGTERM test sends a few thousand vectors, not the issue's 10,000, to keep CI
//! fast; the property checked (each exactly once, values bit for bit) does not depend on the
//! count. The sink is made unavailable by putting a file where the log directory was: the tests
//! run as root in CI, and root writes into a read-only directory regardless of its mode.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use end_to_end::{GatewayProcess, d, kafka::KafkaBroker, map, s};
use proto::v1::{self, FeatureStatus};
use training_log::{
    Cell, Record, Value,
    training_set::{log_files, read_column_text, read_records},
};

/// Single requests in the SIGTERM test.
const REQUESTS: usize = 2000;
/// Batches of [`BATCH_ROWS`] rows in the SIGTERM test.
const BATCHES: usize = 100;
const BATCH_ROWS: usize = 10;
/// Concurrent callers.
const CALLERS: usize = 16;

/// A gateway deployment in a temporary directory: the demo's tables and configuration with the
/// given `[training_log]` section, logging to `log/` and spooling to `spool/`.
struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new(training_log: &str) -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        // `feature-gateway demo` writes the demo's tables; take them and its configuration.
        let demo = GatewayProcess::demo();
        let demo_dir = demo.workdir().join("demo");
        for file in [
            "users.csv",
            "cards.csv",
            "merchants.csv",
            "mcc_risk.csv",
            "payments.jsonl",
        ] {
            std::fs::copy(demo_dir.join(file), dir.path().join(file)).unwrap();
        }
        let config = std::fs::read_to_string(demo_dir.join("demo.toml")).unwrap();
        drop(demo);
        let base = config.split("\n[training_log]").next().unwrap();
        std::fs::write(
            dir.path().join("gateway.toml"),
            format!("{base}\n[training_log]\ndir = \"log\"\nspool_dir = \"spool\"\n{training_log}"),
        )
        .unwrap();
        Deployment { dir }
    }

    fn start(&self) -> GatewayProcess {
        GatewayProcess::serve(&self.dir.path().join("gateway.toml"))
    }

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Every record of `fraud_v1` in the committed files (each file must read).
    fn records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        for (path, _, _) in log_files(&self.log_dir(), "fraud_v1").unwrap() {
            let (def, file_records) = read_records(&path)
                .unwrap_or_else(|e| panic!("a committed file does not read: {e}"));
            assert_eq!(def.feature_service, "fraud_v1");
            records.extend(file_records);
        }
        records
    }

    /// Records waiting in the spool.
    fn spooled(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.spool_dir()) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .map(|text| text.matches("\"t\":\"record\"").count())
            .sum()
    }

    /// Makes every commit fail: a file where the log directory was.
    fn break_sink(&self) {
        std::fs::rename(self.log_dir(), self.dir.path().join("log.aside")).unwrap();
        std::fs::write(self.log_dir(), b"the log directory is unavailable").unwrap();
    }

    fn repair_sink(&self) {
        std::fs::remove_file(self.log_dir()).unwrap();
        std::fs::rename(self.dir.path().join("log.aside"), self.log_dir()).unwrap();
    }
}

/// What the gateway answered for one vector.
#[derive(Clone, Debug)]
struct Answer {
    entities: Vec<Cell>,
    values: Vec<Cell>,
    statuses: Vec<String>,
}

type Answers = HashMap<String, Answer>;

fn entities(i: usize) -> [String; 3] {
    // Every tenth customer is unknown, so NOT_FOUND statuses and defaults are logged too.
    let user = if i % 10 == 7 {
        "u_99999".to_owned()
    } else {
        format!("u_{:05}", i % 10_000)
    };
    [
        user,
        format!("c_{:05}", (i * 7) % 10_000),
        format!("m_{:04}", i % 2000),
    ]
}

fn entity_map(i: usize) -> std::collections::BTreeMap<String, v1::Value> {
    let [user, card, merchant] = entities(i);
    map(&[
        ("user_id", s(&user)),
        ("card_id", s(&card)),
        ("merchant_id", s(&merchant)),
    ])
}

fn context(i: usize) -> std::collections::BTreeMap<String, v1::Value> {
    map(&[
        // Amounts with long binary expansions, to catch any rounding on the way to the log.
        ("amount", d(i as f64 * 1.37 + 0.1)),
        ("currency", s("USD")),
        ("channel", s("ecom")),
    ])
}

fn answer(i: usize, values: &[v1::Value], statuses: &[i32]) -> Answer {
    Answer {
        entities: entities(i).map(Cell::String).to_vec(),
        values: values
            .iter()
            .map(|v| Cell::from(Value::from(v.clone())))
            .collect(),
        statuses: statuses
            .iter()
            .map(|s| {
                let name = FeatureStatus::try_from(*s).unwrap().as_str_name();
                name.trim_start_matches("FEATURE_STATUS_").to_owned()
            })
            .collect(),
    }
}

/// Sends requests `0..n` from [`CALLERS`] concurrent callers; every one must succeed. One in
/// five has no request id, so the gateway's own ids are logged too.
async fn send(gw: &GatewayProcess, prefix: &str, n: usize) -> Answers {
    let client = gw.client().await;
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let mut client = client.clone();
        let prefix = prefix.to_owned();
        callers.spawn(async move {
            let mut answers = Vec::new();
            for i in (c..n).step_by(CALLERS) {
                let request_id = if i % 5 == 0 {
                    String::new()
                } else {
                    format!("{prefix}-{i}")
                };
                let response = client
                    .get_features(v1::GetFeaturesRequest {
                        request_id,
                        feature_service: "fraud_v1".into(),
                        entities: entity_map(i),
                        context: context(i),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                answers.push((
                    response.request_id.clone(),
                    answer(i, &response.values, &response.statuses),
                ));
            }
            answers
        });
    }
    let mut answers = HashMap::new();
    while let Some(done) = callers.join_next().await {
        for (id, a) in done.unwrap() {
            assert!(answers.insert(id, a).is_none(), "request ids are unique");
        }
    }
    answers
}

/// Sends `batches` batches of `rows` rows: their rows are logged as `<request_id>/<row>`.
async fn send_batches(gw: &GatewayProcess, prefix: &str, batches: usize, rows: usize) -> Answers {
    let mut client = gw.client().await;
    let mut answers = HashMap::new();
    for b in 0..batches {
        let request_id = format!("{prefix}-{b}");
        let response = client
            .get_features_batch(v1::GetFeaturesBatchRequest {
                request_id: request_id.clone(),
                feature_service: "fraud_v1".into(),
                rows: (0..rows)
                    .map(|r| v1::EntityRow {
                        entities: entity_map(b * rows + r),
                        context: context(b * rows + r),
                    })
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.request_id, request_id);
        for (r, row) in response.rows.iter().enumerate() {
            answers.insert(
                format!("{request_id}/{r}"),
                answer(b * rows + r, &row.values, &row.statuses),
            );
        }
    }
    answers
}

/// Checks that each record is one answer, logged once, with the values, statuses and entities
/// the response had (doubles compared by their bits), and returns the ids logged.
fn check_records(records: &[Record], answers: &Answers) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for (k, r) in records.iter().enumerate() {
        assert!(
            seen.insert(r.request_id.clone(), k).is_none(),
            "{} is logged twice",
            r.request_id
        );
        let Some(a) = answers.get(&r.request_id) else {
            continue;
        };
        let values: Vec<Cell> = r.features.iter().map(|f| f.value.clone()).collect();
        assert_eq!(values, a.values, "{}: values", r.request_id);
        let statuses: Vec<&str> = r.features.iter().map(|f| f.status.as_str()).collect();
        assert_eq!(statuses, a.statuses, "{}: statuses", r.request_id);
        assert_eq!(r.entities, a.entities, "{}: entities", r.request_id);
        assert_eq!(r.context.len(), 3);
        assert!(r.latency_us > 0);
    }
    seen
}

fn assert_all_logged(seen: &HashMap<String, usize>, answers: &Answers) {
    let missing: Vec<_> = answers
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} not logged, e.g. {:?}",
        missing.len(),
        answers.len(),
        &missing[..missing.len().min(5)]
    );
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    // Generous: CI machines are shared and slow; the loop ends as soon as the check passes.
    for _ in 0..1200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn stop(gw: &mut GatewayProcess) {
    gw.terminate();
    let status = gw
        .wait(Duration::from_secs(60))
        .expect("the gateway exits after SIGTERM");
    assert!(status.success(), "exit {status}; log:\n{}", gw.log());
}

/// The sum of a counter's samples in the gateway's metrics.
async fn metric(gw: &GatewayProcess, name: &str) -> f64 {
    gw.admin_get("/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_vector_served_is_logged_once_as_served_after_sigterm() {
    // Rotation by size only (~0.5 MB of records per file), so SIGTERM has open files to flush.
    let dep = Deployment::new("rotate_bytes = 500000\nrotate_interval = \"1h\"\n");
    let mut gw = dep.start();
    let mut answers = send(&gw, "single", REQUESTS).await;
    answers.extend(send_batches(&gw, "batch", BATCHES, BATCH_ROWS).await);
    assert_eq!(answers.len(), REQUESTS + BATCHES * BATCH_ROWS);
    stop(&mut gw);

    let records = dep.records();
    let seen = check_records(&records, &answers);
    assert_all_logged(&seen, &answers);
    assert_eq!(records.len(), answers.len(), "nothing but what was served");
    let files = log_files(&dep.log_dir(), "fraud_v1").unwrap();
    assert!(files.len() > 1, "files rotate by size: {}", files.len());
    assert!(
        files
            .iter()
            .all(|(_, _, def)| def.definition_hash.len() == 16)
    );
    assert_eq!(dep.spooled(), 0);
    assert!(gw.log().contains("training log flushed"), "{}", gw.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unavailable_log_directory_spools_and_delivers_after_recovery() {
    let dep = Deployment::new("rotate_interval = \"100ms\"\n");
    let mut gw = dep.start();
    dep.break_sink();
    // Serving goes on: every request is answered.
    let answers = send(&gw, "outage", 500).await;
    let spooled = "feature_gateway_training_log_records_spooled_total";
    eventually("every record to be spooled", || dep.spooled() == 500).await;
    assert_eq!(metric(&gw, spooled).await, 500.0);
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_sink_up").await,
        0.0
    );
    dep.repair_sink();
    eventually("the spool to be replayed", || dep.spooled() == 0).await;
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_records_replayed_total").await,
        500.0
    );
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_records_dropped_total").await,
        0.0
    );
    stop(&mut gw);
    let records = dep.records();
    assert_all_logged(&check_records(&records, &answers), &answers);
    assert_eq!(records.len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_files_read_and_the_spool_replays_on_restart_without_duplicates() {
    let dep = Deployment::new("rotate_interval = \"200ms\"\n");
    let gw = dep.start();
    // Phase a: committed by time rotation while the gateway runs.
    let a = send(&gw, "a", 300).await;
    eventually("phase a to be committed", || dep.records().len() == 300).await;
    // Phase b: the sink is down, so every record goes to the spool.
    dep.break_sink();
    let b = send(&gw, "b", 300).await;
    eventually("phase b to be spooled", || dep.spooled() == 300).await;
    // Phase c: requests in flight when the gateway is killed.
    let sent = Arc::new(Mutex::new(0usize));
    let load = {
        let mut client = gw.client().await;
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut answers = Answers::new();
            for i in 0.. {
                *sent.lock().unwrap() = i + 1;
                let request = v1::GetFeaturesRequest {
                    request_id: format!("c-{i}"),
                    feature_service: "fraud_v1".into(),
                    entities: entity_map(i),
                    context: context(i),
                    ..Default::default()
                };
                match client.get_features(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        answers.insert(r.request_id, answer(i, &r.values, &r.statuses));
                    }
                    Err(_) => break,
                }
            }
            answers
        })
    };
    eventually("phase c to be under way", || *sent.lock().unwrap() > 50).await;
    drop(gw); // SIGKILL
    let c = load.await.unwrap();
    dep.repair_sink();
    // Every committed file reads (a half-written one would fail here).
    assert_eq!(dep.records().len(), 300);
    assert!(dep.spooled() >= 300);

    let mut gw = dep.start();
    eventually("the spool to be replayed at start", || dep.spooled() == 0).await;
    stop(&mut gw);
    let records = dep.records();
    let seen = check_records(&records, &c);
    for phase in [&a, &b] {
        check_records(&records, phase);
        assert_all_logged(&seen, phase);
    }
    // Phase c: what reached the spool before the kill is there once; what was still in memory
    // is lost, as documented. Nothing else appears.
    let sent = *sent.lock().unwrap();
    for id in seen.keys() {
        if let Some(i) = id.strip_prefix("c-") {
            assert!(i.parse::<usize>().unwrap() < sent, "{id} was never sent");
        } else {
            assert!(
                a.contains_key(id) || b.contains_key(id),
                "{id} was never sent"
            );
        }
    }
    // Temporary files of the killed process are gone.
    let hidden = walk(&dep.log_dir())
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn training_set_joins_labels_with_the_vectors_as_served() {
    let dep = Deployment::new("");
    let mut gw = dep.start();
    let answers = send(&gw, "t", 40).await;
    stop(&mut gw);

    // Labels for the odd-numbered requests (t-7 is an unknown customer, so not all PRESENT), in
    // reverse text order, and two that were never served.
    let mut labelled: Vec<&String> = answers
        .keys()
        .filter(|id| {
            id.strip_prefix("t-")
                .is_some_and(|i| i.parse::<usize>().unwrap() % 2 == 1)
        })
        .collect();
    labelled.sort();
    labelled.reverse();
    let mut csv = String::from("request_id,is_fraud,label_time\n");
    for (k, id) in labelled.iter().enumerate() {
        csv.push_str(&format!(
            "{id},{},2026-01-0{}T00:00:00Z\n",
            k % 2,
            1 + k % 9
        ));
    }
    csv.push_str("never-served-1,1,2026-01-01T00:00:00Z\nnever-served-2,0,2026-01-01T00:00:00Z\n");
    let labels = dep.dir.path().join("labels.csv");
    std::fs::write(&labels, csv).unwrap();

    let run = |out: &Path, extra: &[&str]| {
        let output = Command::new(end_to_end::gateway_binary())
            .arg("training-set")
            .arg("--logs")
            .arg(dep.log_dir())
            .arg("--labels")
            .arg(&labels)
            .args(["--feature-service", "fraud_v1", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let out = dep.dir.path().join("train.parquet");
    let (stdout, stderr) = run(&out, &[]);
    assert!(
        stdout.contains(&format!(
            "{} rows from {} labels",
            labelled.len(),
            labelled.len() + 2
        )),
        "{stdout}"
    );
    assert!(stdout.contains("2 labels unmatched"), "{stdout}");
    assert!(stderr.contains("never-served-1") && stderr.contains("never-served-2"));

    // One row per labelled request, in the labels' order, with the features as served.
    let (_, rows) = read_records(&out).unwrap();
    let row_ids: Vec<&String> = rows.iter().map(|r| &r.request_id).collect();
    assert_eq!(row_ids, labelled);
    let expected: Answers = labelled
        .iter()
        .map(|id| ((*id).clone(), answers[*id].clone()))
        .collect();
    check_records(&rows, &expected);
    let is_fraud = read_column_text(&out, "is_fraud").unwrap();
    let want: Vec<Option<String>> = (0..labelled.len())
        .map(|k| Some((k % 2).to_string()))
        .collect();
    assert_eq!(is_fraud, want);
    assert_eq!(
        read_column_text(&out, "label_time").unwrap()[0].as_deref(),
        Some("2026-01-01T00:00:00Z")
    );

    // --present-only keeps exactly the rows whose every feature was PRESENT.
    let present = dep.dir.path().join("present.parquet");
    run(&present, &["--present-only"]);
    let (_, kept) = read_records(&present).unwrap();
    let all_present = labelled
        .iter()
        .filter(|id| answers[**id].statuses.iter().all(|s| s == "PRESENT"))
        .count();
    assert_eq!(kept.len(), all_present);
    assert!(
        all_present < labelled.len(),
        "some labelled customers are unknown"
    );

    pyarrow_check(&dep.log_dir(), &out, &rows, answers.len());
}

/// Reads the same files with pyarrow, which `services/training-log/setup.sh` installs (the
/// check fails without it rather than passing unchecked).
fn pyarrow_check(log_dir: &Path, training_set: &Path, rows: &[Record], logged: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = root.join("services/training-log/.venv/bin/python");
    let python = if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let has_pyarrow = Command::new(&python)
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        has_pyarrow,
        "{} cannot import pyarrow: run services/training-log/setup.sh",
        python.display()
    );
    let output = Command::new(&python)
        .arg(root.join("services/training-log/tests/read_with_pyarrow.py"))
        .arg(log_dir)
        .arg(training_set)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(found["log_rows"], logged);
    assert_eq!(found["feature_services"], serde_json::json!(["fraud_v1"]));
    assert_eq!(found["served_at_type"], "timestamp[us, tz=UTC]");
    assert_eq!(found["training_set_rows"], rows.len());
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(found["training_set_ids"], serde_json::json!(ids));
    // Python's float.hex() of each risk score against the bits the gateway served.
    let position = 16; // merchant_profile:risk_score in fraud_v1
    let hex: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| match &r.features[position].value {
            Cell::Double(bits) => {
                serde_json::Value::String(python_float_hex(f64::from_bits(*bits)))
            }
            Cell::Null => serde_json::Value::Null,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(found["risk_scores"], serde_json::Value::Array(hex));
}

/// Python's `float.hex()` of a finite, non-negative double.
fn python_float_hex(x: f64) -> String {
    if x == 0.0 {
        return "0x0.0p+0".into();
    }
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let mantissa = bits & ((1u64 << 52) - 1);
    let (lead, e) = if exp == 0 {
        (0, -1022)
    } else {
        (1, exp - 1023)
    };
    format!(
        "0x{lead}.{mantissa:013x}p{}{e}",
        if e >= 0 { "+" } else { "" }
    )
}

// ---------------------------------------------------------------------------------------------
// The Kafka sink, against a real broker (tests/src/kafka.rs).

const TOPIC: &str = "training-log";
/// Partitions of the test topic: more than one, to check records go where their key says.
const PARTITIONS: i32 = 3;

/// The `[training_log]` settings of the Kafka sink on `broker`: short timeouts, so an outage is
/// noticed in a second.
fn kafka_section(broker: &KafkaBroker) -> String {
    format!(
        "sink = \"kafka\"\n[training_log.kafka]\nbrokers = [\"{}\"]\ntopic = \"{TOPIC}\"\n\
         linger = \"10ms\"\ndelivery_timeout = \"1s\"\n",
        broker.bootstrap()
    )
}

/// Every record on the topic, decoded, after checking its key, headers and partition. Returns
/// the records and how many request ids appear more than once (each copy identical).
async fn kafka_records(broker: &KafkaBroker) -> (Vec<Record>, usize) {
    let mut by_id: HashMap<String, Record> = HashMap::new();
    let mut records = Vec::new();
    let mut duplicates = 0;
    for (partition, r) in broker.read_all(TOPIC).await {
        let key = String::from_utf8(r.record.key.clone().unwrap()).unwrap();
        let (msg, record) = training_log::kafka::decode(r.record.value.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("{key}: the value does not decode: {e}"));
        assert_eq!(key, record.request_id, "keyed by request_id");
        assert_eq!(msg.feature_service, "fraud_v1");
        assert_eq!(msg.definition_hash.len(), 16);
        assert_eq!(
            partition,
            training_log::kafka::partition_for_key(key.as_bytes(), PARTITIONS),
            "{key}: partition by key"
        );
        assert_eq!(r.record.headers["schema-version"], b"1");
        assert_eq!(
            r.record.headers["content-type"],
            training_log::kafka::CONTENT_TYPE.as_bytes()
        );
        assert_eq!(
            r.record.timestamp.timestamp_millis(),
            record.served_at_us.div_euclid(1000)
        );
        match by_id.get(&key) {
            Some(first) => {
                assert_eq!(first, &record, "{key}: a duplicate is an identical copy");
                duplicates += 1;
            }
            None => {
                by_id.insert(key, record.clone());
                records.push(record);
            }
        }
    }
    (records, duplicates)
}

async fn kafka_broker() -> KafkaBroker {
    let broker = KafkaBroker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_receives_every_vector_as_served_keyed_by_request_id() {
    let broker = kafka_broker().await;
    let dep = Deployment::new(&kafka_section(&broker));
    let mut gw = dep.start();
    let mut answers = send(&gw, "single", REQUESTS).await;
    answers.extend(send_batches(&gw, "batch", BATCHES, BATCH_ROWS).await);
    stop(&mut gw);
    assert!(gw.log().contains("training log flushed"), "{}", gw.log());

    let (records, duplicates) = kafka_records(&broker).await;
    assert_eq!(duplicates, 0, "no failure, no duplicate");
    let seen = check_records(&records, &answers);
    assert_all_logged(&seen, &answers);
    assert_eq!(records.len(), answers.len(), "nothing but what was served");
    assert_eq!(dep.spooled(), 0);
    // Records spread over the partitions by key.
    let per_partition = broker.read_all(TOPIC).await.into_iter().fold(
        HashMap::<i32, usize>::new(),
        |mut m, (p, _)| {
            *m.entry(p).or_default() += 1;
            m
        },
    );
    assert_eq!(
        per_partition.len(),
        PARTITIONS as usize,
        "{per_partition:?}"
    );
    // Nothing is written to the Parquet directory by the Kafka sink.
    assert!(!dep.log_dir().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_kafka_broker_spools_and_delivers_after_it_is_back() {
    let mut broker = kafka_broker().await;
    let dep = Deployment::new(&kafka_section(&broker));
    let mut gw = dep.start();
    let before = timed_send(&gw, "before", 300).await;
    eventually_async("the first records on the topic", || async {
        kafka_records(&broker).await.0.len() == 300
    })
    .await;

    broker.stop();
    let during = timed_send(&gw, "outage", 500).await;
    eventually("every outage record to be spooled", || dep.spooled() == 500).await;
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_sink_up").await,
        0.0
    );
    // Serving never waits on the broker: no request took anywhere near the 1 s produce timeout,
    // and the latency order is unchanged (printed for the record, not asserted: machines vary).
    let (p50_before, max_before) = latency_summary(&before.1);
    let (p50_during, max_during) = latency_summary(&during.1);
    eprintln!(
        "latency before the outage p50 {p50_before:?} max {max_before:?}; \
         during it p50 {p50_during:?} max {max_during:?}"
    );
    assert!(max_during < Duration::from_millis(900), "{max_during:?}");

    broker.restart().await;
    eventually("the spool to be replayed", || dep.spooled() == 0).await;
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_records_replayed_total").await,
        500.0
    );
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_sink_up").await,
        1.0
    );
    assert_eq!(
        metric(&gw, "feature_gateway_training_log_records_dropped_total").await,
        0.0
    );
    stop(&mut gw);
    let (records, duplicates) = kafka_records(&broker).await;
    let mut answers = before.0;
    answers.extend(during.0);
    let seen = check_records(&records, &answers);
    assert_all_logged(&seen, &answers);
    assert_eq!(records.len(), 800);
    // At-least-once: a batch in flight when the broker died may have been written without its
    // acknowledgement reaching the gateway, and is sent again. Never more than one batch.
    assert!(duplicates <= 300, "{duplicates} duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_spooled_while_kafka_is_down_are_delivered_by_the_next_gateway() {
    let mut broker = kafka_broker().await;
    let dep = Deployment::new(&kafka_section(&broker));
    broker.stop();
    let mut gw = dep.start();
    let answers = send(&gw, "down", 300).await;
    // A clean shutdown with the broker down keeps every record in the spool.
    stop(&mut gw);
    assert_eq!(dep.spooled(), 300);

    broker.restart().await;
    let mut gw = dep.start();
    eventually("the spool to be replayed at start", || dep.spooled() == 0).await;
    stop(&mut gw);
    let (records, duplicates) = kafka_records(&broker).await;
    assert_eq!(duplicates, 0);
    let seen = check_records(&records, &answers);
    assert_all_logged(&seen, &answers);
    assert_eq!(records.len(), 300);
}

/// [`send`], also returning each request's latency as the caller saw it.
async fn timed_send(gw: &GatewayProcess, prefix: &str, n: usize) -> (Answers, Vec<Duration>) {
    let mut client = gw.client().await;
    let mut answers = Answers::new();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let started = std::time::Instant::now();
        let response = client
            .get_features(v1::GetFeaturesRequest {
                request_id: format!("{prefix}-{i}"),
                feature_service: "fraud_v1".into(),
                entities: entity_map(i),
                context: context(i),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        latencies.push(started.elapsed());
        answers.insert(
            response.request_id.clone(),
            answer(i, &response.values, &response.statuses),
        );
    }
    (answers, latencies)
}

fn latency_summary(latencies: &[Duration]) -> (Duration, Duration) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    (sorted[sorted.len() / 2], sorted[sorted.len() - 1])
}

async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A configuration whose `request` view marks the customer's email `pii`: `checkout` serves it
/// as a feature and keys the customer's table by it; `segments` reads it only as that key
/// (`from = "context:email"`), so it has no pii feature, only a pii context value.
const PII_CONFIG: &str = r#"
[entities.customer]
type = "string"
from = "context:email"

[sources.tables]
kind = "static"

[sources.request]
kind = "request"

[views.customers]
source = "tables"
entities = ["customer"]
path = "customers.csv"
features = { segment = { type = "string" } }

[views.txn]
source = "request"
features = { email = { type = "string", pii = true }, amount = { type = "double" } }

[feature_services.checkout]
features = ["txn:email", "txn:amount", "customers:segment"]

[feature_services.segments]
features = ["customers:segment", "txn:amount"]

[training_log]
dir = "log"
spool_dir = "spool"
"#;

const EMAIL: &str = "pii.person@example.com";
const SALT: &str = "e2e-salt-5c1d";

/// The hash the training log documents for a string: hex SHA-256 of the salt's length (u64,
/// little-endian), the salt, and the value's tagged JSON, computed by `sha256sum`.
fn documented_hash(salt: &str, value: &str) -> String {
    use std::io::Write;
    let mut input = (salt.len() as u64).to_le_bytes().to_vec();
    input.extend_from_slice(salt.as_bytes());
    input.extend_from_slice(serde_json::json!({ "s": value }).to_string().as_bytes());
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()[..64].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pii_context_value_is_logged_hashed_or_not_at_all() {
    let hash = documented_hash(SALT, EMAIL);
    for mode in ["hash", "drop"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("customers.csv"),
            format!("customer,segment\n{EMAIL},gold\n"),
        )
        .unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, format!("{PII_CONFIG}pii = \"{mode}\"\n")).unwrap();
        // Only hashing needs the salt.
        let env: &[(&str, &str)] = match mode {
            "hash" => &[("FEATURE_GATEWAY_PII_SALT", SALT)],
            _ => &[],
        };
        let mut gw = GatewayProcess::serve_with_env(&config, env);
        let mut client = gw.client().await;
        for service in ["checkout", "segments"] {
            let response = client
                .get_features(v1::GetFeaturesRequest {
                    request_id: format!("pii-{service}"),
                    feature_service: service.into(),
                    context: map(&[("email", s(EMAIL)), ("amount", d(12.5))]),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            // Serving is unaffected: the caller gets the value, the key finds the customer.
            assert!(response.values.contains(&s("gold")), "{response:?}");
            if service == "checkout" {
                assert_eq!(response.values[0], s(EMAIL));
            }
        }
        stop(&mut gw);

        let log = dir.path().join("log");
        for service in ["checkout", "segments"] {
            let files = log_files(&log, service).unwrap();
            assert_eq!(files.len(), 1, "{mode}: {service}");
            let (path, _, def) = &files[0];
            let names: Vec<(&str, bool)> = def
                .context
                .iter()
                .map(|c| (c.name.as_str(), c.pii))
                .collect();
            assert_eq!(
                names,
                [("email", true), ("amount", false)],
                "{mode}: {service}"
            );
            assert!(
                def.entities.is_empty(),
                "a key read from the context is its context column"
            );
            let (_, records) = read_records(path).unwrap();
            let [record] = &records[..] else {
                panic!("{mode}: {service}: {records:?}")
            };
            assert_eq!(record.request_id, format!("pii-{service}"));
            assert_eq!(record.context[1], Cell::Double(12.5f64.to_bits()));
            let column = read_column_text(path, "context:email");
            match mode {
                "hash" => {
                    assert_eq!(column.unwrap(), [Some(hash.clone())], "{service}");
                    assert_eq!(record.context[0], Cell::String(hash.clone()));
                    if service == "checkout" {
                        // The same value hashes alike as a feature and as a context value.
                        assert_eq!(record.features[0].value, Cell::String(hash.clone()));
                    }
                }
                _ => {
                    let err = column.unwrap_err();
                    assert!(
                        err.contains("no column `context:email`"),
                        "{service}: {err}"
                    );
                    assert_eq!(record.context[0], Cell::Null);
                }
            }
        }
        // The raw value is nowhere in the log's files nor its spool.
        let mut files = walk(&log);
        if dir.path().join("spool").exists() {
            files.extend(walk(&dir.path().join("spool")));
        }
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(EMAIL.len()).any(|w| w == EMAIL.as_bytes()),
                "{mode}: {} holds the raw value",
                file.display()
            );
        }
    }
}
