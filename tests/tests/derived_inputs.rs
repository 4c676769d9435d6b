//! End-to-end: a derived feature's inputs that its feature service does not serve are in the
//! training log, so `training-set --recompute` evaluates the derived features again from the log
//! alone, through the real binary.
//!
//! The feature service serves the payment's amount, the merchant's country and four derived
//! features, which read the customer's 30-day average and country (a table with a null, a row
//! past `max_age` and a customer without a row) and the fraud rate of the merchant's category
//! (a view keyed by the merchant's `mcc`, fetched in the second stage): none of those is served.
//! The log holds each as an `input:` column (value, status, age) beside the served features,
//! and no column for what is served or read from the context; `training-set --recompute` finds
//! every derived feature as served, and `--derive` adds one from the logged inputs. The Kafka
//! sink's records carry the same inputs (the message's `inputs` field).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    collections::HashMap,
    path::Path,
    process::Command,
    time::{Duration, SystemTime},
};

use end_to_end::{
    GatewayProcess, d, eventually, gateway_binary, kafka::KafkaBroker, logged_vectors, map, s,
    with_timeout,
};
use proto::v1;
use training_log::{
    Cell, LoggedStatus, Record,
    training_set::{log_files, read_records},
};

const REQUESTS: usize = 48;
const USERS: [&str; 5] = ["u1", "u2", "u3", "u4", "u9"];
const MERCHANTS: [&str; 3] = ["m1", "m2", "m3"];

/// The customers: `u2` has no average (null), `u3`'s row is 40 days old (past `max_age`, so
/// OUTSIDE_MAX_AGE), `u9` has no row.
fn users_csv(now: u64) -> String {
    format!(
        "user_id,avg_amount_30d,country,updated_at\n\
         u1,50.0,US,{fresh}\n\
         u2,,GB,{fresh}\n\
         u3,20.0,US,{old}\n\
         u4,33.3,FR,{fresh}\n",
        fresh = now - 3_600,
        old = now - 40 * 86_400
    )
}

/// `m3`'s category has no fraud rate.
const MERCHANTS_CSV: &str = "merchant_id,mcc,country\nm1,5411,US\nm2,7995,FR\nm3,4829,GB\n";
const MCC_CSV: &str = "mcc,fraud_rate\n5411,0.012\n7995,0.2\n";

const CONFIG: &str = r#"
[entities.user_id]
type = "string"
[entities.merchant_id]
type = "string"
[entities.mcc]
type = "int64"
from = "merchant_profile:mcc"

[sources.tables]
kind = "static"
[sources.request]
kind = "request"

[views.user_profile]
source = "tables"
entities = ["user_id"]
path = "users.csv"
event_time_column = "updated_at"
max_age = "30d"
[views.user_profile.features]
avg_amount_30d = { type = "double" }
country = { type = "string" }

[views.merchant_profile]
source = "tables"
entities = ["merchant_id"]
path = "merchants.csv"
[views.merchant_profile.features]
mcc = { type = "int64" }
country = { type = "string" }

[views.mcc_risk]
source = "tables"
entities = ["mcc"]
path = "mcc_risk.csv"
[views.mcc_risk.features]
fraud_rate = { type = "double" }

[views.txn]
source = "request"
[views.txn.features]
amount = { type = "double" }

[views.risk]
kind = "derived"
[views.risk.features]
amount_to_avg = { type = "double", expr = "has(user_profile.avg_amount_30d) && user_profile.avg_amount_30d > 0.0 ? txn.amount / user_profile.avg_amount_30d : -1.0" }
abroad = { type = "bool", expr = "user_profile.country != merchant_profile.country" }
expected_loss = { type = "double", expr = "txn.amount * mcc_risk.fraud_rate" }
flagged = { type = "bool", expr = "risk.abroad && risk.amount_to_avg > 3.0" }
loss_per_avg = { type = "double", expr = "txn.amount * mcc_risk.fraud_rate / user_profile.avg_amount_30d" }

[feature_services.scoring]
deadline = "2s"
features = ["txn:amount", "merchant_profile:country", "risk:amount_to_avg", "risk:abroad", "risk:expected_loss", "risk:flagged"]
[feature_services.scoring.defaults]
"risk:expected_loss" = 0.0
"#;

/// The training log to Parquet files in `log/`.
const PARQUET_LOG: &str = r#"
[training_log]
dir = "log"
spool_dir = "spool"
rotate_interval = "200ms"
"#;

const TOPIC: &str = "training-log";

fn request(n: usize) -> tonic::Request<v1::GetFeaturesRequest> {
    // Every seventh request has no amount: NOT_FOUND in the context.
    let context = if n % 7 == 6 {
        Vec::new()
    } else {
        vec![("amount", d(n as f64 * 7.31 + 0.1))]
    };
    with_timeout(
        v1::GetFeaturesRequest {
            request_id: format!("req-{n}"),
            feature_service: "scoring".into(),
            entities: map(&[
                ("user_id", s(USERS[n % USERS.len()])),
                ("merchant_id", s(MERCHANTS[n % MERCHANTS.len()])),
            ]),
            context: map(&context),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
}

fn status(wire: i32) -> LoggedStatus {
    let name = v1::FeatureStatus::try_from(wire)
        .unwrap()
        .as_str_name()
        .trim_start_matches("FEATURE_STATUS_")
        .to_owned();
    serde_json::from_value(serde_json::Value::String(name)).unwrap()
}

/// Writes the tables and the configuration (with `training_log`) into `dir`, starts the
/// gateway on it and sends the requests: the answers by request id, and the config's path.
async fn serve(
    dir: &Path,
    training_log: &str,
) -> (
    GatewayProcess,
    HashMap<String, v1::GetFeaturesResponse>,
    std::path::PathBuf,
) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(dir.join("users.csv"), users_csv(now)).unwrap();
    std::fs::write(dir.join("merchants.csv"), MERCHANTS_CSV).unwrap();
    std::fs::write(dir.join("mcc_risk.csv"), MCC_CSV).unwrap();
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, format!("{CONFIG}{training_log}")).unwrap();
    let gw = GatewayProcess::serve(&config_path);
    let mut client = gw.client().await;
    let mut served = HashMap::new();
    for n in 0..REQUESTS {
        let response = client.get_features(request(n)).await.unwrap().into_inner();
        served.insert(response.request_id.clone(), response);
    }
    (gw, served, config_path)
}

/// Checks that `record` holds what request `n` was served, and what its derived features read
/// but the feature service does not serve: the customer's average and country, the fraud
/// rate of the merchant's category (values, statuses, ages).
fn check_logged(n: usize, response: &v1::GetFeaturesResponse, record: &Record) {
    let id = format!("req-{n}");
    for (k, (value, wire)) in response.values.iter().zip(&response.statuses).enumerate() {
        let entry = &record.features[k];
        assert_eq!(
            (&entry.value, entry.status),
            (
                &Cell::from(fetcher_api::Value::from(value.clone())),
                status(*wire)
            ),
            "{id}: {}",
            response.feature_names[k]
        );
    }
    let (user, merchant) = (USERS[n % USERS.len()], MERCHANTS[n % MERCHANTS.len()]);
    let average = match user {
        "u1" => (Cell::Double(50.0f64.to_bits()), LoggedStatus::Present),
        "u2" => (Cell::Null, LoggedStatus::NullValue),
        "u3" => (Cell::Null, LoggedStatus::OutsideMaxAge),
        "u4" => (Cell::Double(33.3f64.to_bits()), LoggedStatus::Present),
        _ => (Cell::Null, LoggedStatus::NotFound),
    };
    let rate = match merchant {
        "m1" => (Cell::Double(0.012f64.to_bits()), LoggedStatus::Present),
        "m2" => (Cell::Double(0.2f64.to_bits()), LoggedStatus::Present),
        _ => (Cell::Null, LoggedStatus::NotFound),
    };
    let got = |i: usize| (record.inputs[i].value.clone(), record.inputs[i].status);
    assert_eq!(got(0), average, "{id}: the average read");
    assert_eq!(got(2), rate, "{id}: the fraud rate read");
    assert_eq!(
        record.inputs[0].age_ms.is_some(),
        user != "u9",
        "{id}: an input's age is logged as a feature's (a row's event time)"
    );
    assert_eq!(
        record.inputs[1].status,
        match user {
            "u3" => LoggedStatus::OutsideMaxAge,
            "u9" => LoggedStatus::NotFound,
            _ => LoggedStatus::Present,
        },
        "{id}: the country read"
    );
}

/// The inputs read and not served, and nothing else: the merchant's country is served, the
/// amount is a context column, a derived feature is recomputed.
const INPUTS: [&str; 3] = [
    "user_profile:avg_amount_30d",
    "user_profile:country",
    "mcc_risk:fraud_rate",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_features_inputs_that_are_not_served_are_logged_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, served, config_path) = serve(dir.path(), PARQUET_LOG).await;
    let log_dir = dir.path().join("log");
    let records = eventually(Duration::from_secs(60), "every vector logged", async || {
        let records = logged_vectors(&log_dir, "scoring")?;
        match records.len() == REQUESTS {
            true => Ok(records),
            false => Err(format!("{} of {REQUESTS} logged", records.len())),
        }
    })
    .await;
    gw.terminate();
    gw.wait(Duration::from_secs(60))
        .expect("the gateway exits after SIGTERM");

    let def = log_files(&log_dir, "scoring").unwrap().remove(0).2;
    let inputs: Vec<&str> = def.inputs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(inputs, INPUTS);

    // The log holds what was served, and what each derived feature read.
    let mut seen = HashMap::new();
    for n in 0..REQUESTS {
        let id = format!("req-{n}");
        let record = &records[&id];
        check_logged(n, &served[&id], record);
        for (i, entry) in record.features.iter().enumerate() {
            *seen
                .entry((def.features[i].name.clone(), entry.status.as_str()))
                .or_insert(0) += 1;
        }
    }
    // The cases worth recomputing were served: a value, a missing input (read from the log's
    // input columns or from the context), a default applied, a derived input missing.
    for (feature, status) in [
        ("risk:amount_to_avg", LoggedStatus::Present),
        ("risk:amount_to_avg", LoggedStatus::NotFound),
        ("risk:abroad", LoggedStatus::Present),
        ("risk:abroad", LoggedStatus::NotFound),
        ("risk:expected_loss", LoggedStatus::Present),
        ("risk:expected_loss", LoggedStatus::NotFound),
        ("risk:flagged", LoggedStatus::Present),
        ("risk:flagged", LoggedStatus::NotFound),
    ] {
        assert!(
            seen.contains_key(&(feature.to_owned(), status.as_str())),
            "{feature} {status:?}: {seen:?}"
        );
    }

    // Recomputed from the log alone, every derived feature is what was served.
    let mut labels = String::from("request_id,label\n");
    for n in 0..REQUESTS {
        labels.push_str(&format!("req-{n},{}\n", n % 2));
    }
    std::fs::write(dir.path().join("labels.csv"), labels).unwrap();
    let training_set = |out: &str, extra: &[&str]| {
        let output = Command::new(gateway_binary())
            .arg("training-set")
            .arg("--logs")
            .arg(&log_dir)
            .arg("--labels")
            .arg(dir.path().join("labels.csv"))
            .args(["--feature-service", "scoring", "--config"])
            .arg(&config_path)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = training_set("checked.parquet", &["--recompute"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for feature in [
        "risk:amount_to_avg",
        "risk:abroad",
        "risk:expected_loss",
        "risk:flagged",
    ] {
        assert!(
            stdout.contains(&format!("{feature}: recomputed {REQUESTS} rows, 0 differ")),
            "{stdout}\n{stderr}"
        );
    }
    // The training set keeps the input columns, as the log has them.
    let (def, rows) = read_records(&dir.path().join("checked.parquet")).unwrap();
    assert_eq!(def.inputs.len(), 3);
    assert_eq!(rows.len(), REQUESTS);
    assert!(
        rows.iter()
            .all(|r| r.inputs == records[&r.request_id].inputs)
    );

    // A derived feature never served, from inputs that were only read: added from the log.
    let (code, stdout, stderr) =
        training_set("derived.parquet", &["--derive", "risk:loss_per_avg"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let (def, rows) = read_records(&dir.path().join("derived.parquet")).unwrap();
    let added = def
        .features
        .iter()
        .position(|f| f.name == "risk:loss_per_avg")
        .expect("an added column");
    let mut present = 0;
    for row in &rows {
        let n: usize = row.request_id.trim_start_matches("req-").parse().unwrap();
        let (user, merchant) = (USERS[n % USERS.len()], MERCHANTS[n % MERCHANTS.len()]);
        let amount = (n % 7 != 6).then_some(n as f64 * 7.31 + 0.1);
        let avg = match user {
            "u1" => Some(50.0f64),
            "u4" => Some(33.3),
            _ => None,
        };
        let rate = match merchant {
            "m1" => Some(0.012f64),
            "m2" => Some(0.2),
            _ => None,
        };
        let expected = match (amount, rate, avg) {
            (Some(a), Some(r), Some(v)) => (Cell::Double((a * r / v).to_bits()), "PRESENT"),
            _ => (Cell::Null, "NOT_FOUND"),
        };
        let got = &row.features[added];
        assert_eq!(
            (&got.value, got.status.as_str()),
            (&expected.0, expected.1),
            "{}",
            row.request_id
        );
        present += usize::from(expected.1 == "PRESENT");
    }
    assert!(present > 0 && present < rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sinks_records_carry_the_same_inputs() {
    let broker = KafkaBroker::start().await;
    broker.create_topic(TOPIC, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!(
        "[training_log]\ndir = \"log\"\nspool_dir = \"spool\"\nsink = \"kafka\"\n[training_log.kafka]\n\
         brokers = [\"{}\"]\ntopic = \"{TOPIC}\"\nlinger = \"10ms\"\n",
        broker.bootstrap()
    );
    let (mut gw, served, _) = serve(dir.path(), &kafka).await;
    gw.terminate();
    gw.wait(Duration::from_secs(60))
        .expect("the gateway exits after SIGTERM, its records delivered");

    let mut logged = HashMap::new();
    for (_, r) in broker.read_all(TOPIC).await {
        let (msg, record) = training_log::kafka::decode(r.record.value.as_deref().unwrap())
            .unwrap_or_else(|e| panic!("the value does not decode: {e}"));
        let names: Vec<&str> = msg.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, INPUTS, "{}", record.request_id);
        logged.insert(record.request_id.clone(), record);
    }
    assert_eq!(logged.len(), REQUESTS, "every vector, once");
    for n in 0..REQUESTS {
        let id = format!("req-{n}");
        check_logged(n, &served[&id], &logged[&id]);
    }
}
