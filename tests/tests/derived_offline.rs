//! End-to-end: derived features recomputed offline from the training log, through the real
//! binary. The gateway serves derived features over a static table, an HTTP source (the fake
//! device-reputation API, made slow and failing for some requests) and the request context,
//! logging every vector; then `feature-gateway training-set --config ... --recompute` finds
//! nothing to report with the configuration that served, reports the rows a changed expression
//! gives otherwise (exit code 3), and `--derive` adds a derived feature that was never served,
//! computed from the logged inputs to the value computed here from what was sent.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use end_to_end::{
    GatewayProcess, d, eventually, gateway_binary, i, logged_vectors, map, s, with_timeout,
};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{FailNext, Latency, RouteFaults},
    internal::DEVICE_REPUTATION,
};
use proto::v1;
use training_log::{
    Cell, LoggedStatus, Record,
    training_set::{log_files, read_records},
};

/// The customers' table: `u2`'s average is null, `u3`'s is 0.0 (a ratio of +inf) with no
/// transactions; `u9` has no row.
const PROFILES: &str = "user_id,avg_amount,txns_30d\nu1,50.0,12\nu2,,7\nu3,0.0,0\nu4,33.3,9\n";
const USERS: [&str; 5] = ["u1", "u2", "u3", "u4", "u9"];

/// Requests served normally; then [`SLOW`] while the device API is slower than the deadline,
/// then [`FAILING`] while it fails.
const NORMAL: usize = 40;
const SLOW: usize = 3;
const FAILING: usize = 2;

fn config(fake: &FakeServer) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"
[entities.device_id]
type = "string"

[sources.tables]
kind = "static"
[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "5s"
[sources.request]
kind = "request"

[views.profile]
source = "tables"
entities = ["user_id"]
path = "profiles.csv"
[views.profile.features]
avg_amount = {{ type = "double" }}
txns_30d = {{ type = "int64" }}

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
[views.device.features]
risk_score = {{ type = "double" }}

[views.txn]
source = "request"
[views.txn.features]
amount = {{ type = "double" }}
items = {{ type = "int64" }}

[views.risk]
kind = "derived"
[views.risk.features]
amount_ratio = {{ type = "double", expr = "txn.amount / profile.avg_amount" }}
per_item = {{ type = "int64", expr = "profile.txns_30d / txn.items" }}
device_weighted = {{ type = "double", expr = "has(device.risk_score) ? device.risk_score * txn.amount : -1.0" }}
score = {{ type = "double", expr = "risk.amount_ratio * 10.0 + device.risk_score" }}
amount_cubed = {{ type = "double", expr = "txn.amount * txn.amount * txn.amount / profile.avg_amount" }}

[feature_services.scoring]
deadline = "500ms"
features = ["profile:avg_amount", "profile:txns_30d", "device:risk_score", "txn:amount", "risk:amount_ratio", "risk:per_item", "risk:device_weighted", "risk:score"]
[feature_services.scoring.defaults]
"profile:avg_amount" = 0.0
"risk:amount_ratio" = -1.0

[training_log]
dir = "log"
spool_dir = "spool"
rotate_interval = "200ms"
"#,
        base = fake.base_url()
    )
}

/// What request `n` sends: its user, its device, and its context (`amount`, `items`), some
/// values left out.
struct Sent {
    user: &'static str,
    amount: Option<f64>,
    items: Option<i64>,
}

fn sent(n: usize) -> Sent {
    Sent {
        user: USERS[n % USERS.len()],
        // Amounts with long binary expansions, so a rounding anywhere would show.
        amount: (n % 7 != 6).then_some(n as f64 * 1.37 + 0.1),
        // Zero items makes `per_item` divide by zero: an evaluation error.
        items: (n % 11 != 10).then_some((n % 6) as i64),
    }
}

fn request(id: &str, n: usize) -> tonic::Request<v1::GetFeaturesRequest> {
    let Sent {
        user,
        amount,
        items,
    } = sent(n);
    // Every fourth device is unknown to the API: NOT_FOUND.
    let device = if n % 4 == 3 {
        "d_999999".to_owned()
    } else {
        format!("d_{n:06}")
    };
    let mut context = Vec::new();
    if let Some(amount) = amount {
        context.push(("amount", d(amount)));
    }
    if let Some(items) = items {
        context.push(("items", i(items)));
    }
    with_timeout(
        v1::GetFeaturesRequest {
            request_id: id.to_owned(),
            feature_service: "scoring".into(),
            entities: map(&[("user_id", s(user)), ("device_id", s(&device))]),
            context: map(&context),
            ..Default::default()
        },
        Duration::from_secs(10),
    )
}

/// Runs `feature-gateway training-set` over the log with `extra` flags.
fn training_set(dir: &Path, out: &Path, extra: &[&str]) -> (Output, String, String) {
    let output = Command::new(gateway_binary())
        .arg("training-set")
        .arg("--logs")
        .arg(dir.join("log"))
        .arg("--labels")
        .arg(dir.join("labels.csv"))
        .args(["--feature-service", "scoring", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

fn status_of(record: &Record, index: usize) -> LoggedStatus {
    record.features[index].status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_features_recompute_from_the_log_as_served_and_new_ones_are_added() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("profiles.csv"), PROFILES).unwrap();
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config(&fake)).unwrap();
    let mut gw = GatewayProcess::serve(&config_path);
    let mut client = gw.client().await;

    // (request id, n): the ids of the three phases.
    let mut ids: Vec<(String, usize)> = Vec::new();
    for n in 0..NORMAL {
        ids.push((format!("normal-{n}"), n));
    }
    for (id, n) in &ids {
        client.get_features(request(id, *n)).await.unwrap();
    }
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::Fixed { ms: 3_000.0 },
            ..Default::default()
        },
    )
    .unwrap();
    for n in 0..SLOW {
        let id = format!("slow-{n}");
        client.get_features(request(&id, n)).await.unwrap();
        ids.push((id, n));
    }
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            fail_next: Some(FailNext {
                count: FAILING as u32,
                status: 500,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    for n in 0..FAILING {
        let id = format!("failing-{n}");
        client.get_features(request(&id, n)).await.unwrap();
        ids.push((id, n));
    }

    // The log commits every 200 ms: wait until it holds every vector.
    let log_dir = dir.path().join("log");
    let records = eventually(Duration::from_secs(60), "every vector logged", async || {
        let records = logged_vectors(&log_dir, "scoring")?;
        match records.len() == ids.len() {
            true => Ok(records),
            false => Err(format!("{} of {} logged", records.len(), ids.len())),
        }
    })
    .await;
    gw.terminate();
    gw.wait(Duration::from_secs(60))
        .expect("the gateway exits after SIGTERM");

    // The log holds the cases worth recomputing: a timed-out and a failed input passed on, a
    // missing one, an evaluation error, a default applied.
    let def = log_files(&log_dir, "scoring").unwrap().remove(0).2;
    let index = |name: &str| def.features.iter().position(|f| f.name == name).unwrap();
    let (score, per_item, ratio) = (
        index("risk:score"),
        index("risk:per_item"),
        index("risk:amount_ratio"),
    );
    let seen = |feature: usize, status: LoggedStatus| {
        records.values().any(|r| status_of(r, feature) == status)
    };
    assert!(
        seen(score, LoggedStatus::TimedOut),
        "slow device: TIMED_OUT"
    );
    assert!(
        seen(score, LoggedStatus::SourceError),
        "failing device: SOURCE_ERROR"
    );
    assert!(seen(score, LoggedStatus::NotFound), "unknown device");
    assert!(seen(score, LoggedStatus::Present));
    assert!(
        records.values().any(|r| {
            status_of(r, per_item) == LoggedStatus::SourceError
                && r.features[per_item].value == Cell::Null
        }),
        "zero items: division by zero"
    );
    assert!(
        records.values().any(|r| {
            status_of(r, ratio) == LoggedStatus::NotFound
                && r.features[ratio].value == Cell::Double((-1.0f64).to_bits())
        }),
        "a missing ratio is logged with its default"
    );

    let mut labels = String::from("request_id,label\n");
    for (k, (id, _)) in ids.iter().enumerate() {
        labels.push_str(&format!("{id},{}\n", k % 2));
    }
    std::fs::write(dir.path().join("labels.csv"), labels).unwrap();

    // With the configuration that served: no difference, exit 0.
    let config_flag = config_path.to_str().unwrap();
    let out = dir.path().join("checked.parquet");
    let (output, stdout, stderr) =
        training_set(dir.path(), &out, &["--config", config_flag, "--recompute"]);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    for feature in [
        "risk:amount_ratio",
        "risk:per_item",
        "risk:device_weighted",
        "risk:score",
    ] {
        assert!(
            stdout.contains(&format!(
                "{feature}: recomputed {} rows, 0 differ",
                ids.len()
            )),
            "{stdout}\n{stderr}"
        );
    }

    // With the ratio's expression changed: its rows and the score's differ, exit 3, the
    // training set still written with the logged values.
    let tampered = dir.path().join("tampered.toml");
    std::fs::write(
        &tampered,
        config(&fake).replace(
            "\"txn.amount / profile.avg_amount\"",
            "\"txn.amount / profile.avg_amount / 2.0\"",
        ),
    )
    .unwrap();
    let out = dir.path().join("tampered.parquet");
    let (output, stdout, stderr) = training_set(
        dir.path(),
        &out,
        &["--config", tampered.to_str().unwrap(), "--recompute"],
    );
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    // The ratios served PRESENT and finite (u1 and u4 with an amount) change.
    let changed = ids
        .iter()
        .filter(|(id, _)| status_of(&records[id], ratio) == LoggedStatus::Present)
        .filter(|(_, n)| matches!(sent(*n).user, "u1" | "u4"))
        .count();
    assert!(changed > 0);
    assert!(
        stderr.contains(&format!(
            "risk:amount_ratio: {changed} of {} rows differ from the log",
            ids.len()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("risk:score: "), "{stderr}");
    for unchanged in ["risk:per_item", "risk:device_weighted"] {
        assert!(
            stdout.contains(&format!(
                "{unchanged}: recomputed {} rows, 0 differ",
                ids.len()
            )),
            "{stdout}"
        );
    }
    // Each example of the ratio: the value served, and the changed expression's.
    let examples: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("risk:amount_ratio: "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(examples.len(), changed.min(5), "{stderr}");
    let n_of: HashMap<&str, usize> = ids.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    for line in examples {
        let id = line.split('`').nth(1).unwrap();
        let sent = sent(n_of[id]);
        let avg = if sent.user == "u1" { 50.0 } else { 33.3 };
        let amount = sent.amount.unwrap();
        assert_eq!(
            line,
            format!(
                "  request_id `{id}`: logged {:?} PRESENT, recomputed {:?} PRESENT",
                amount / avg,
                amount / avg / 2.0
            )
        );
    }
    assert!(
        stderr.contains("the configuration changed since"),
        "{stderr}"
    );
    assert!(out.exists(), "the training set is written all the same");

    // A derived feature never served, added from the logged inputs: the value computed here
    // from what was sent and the table, bit for bit.
    let out = dir.path().join("derived.parquet");
    let (output, stdout, stderr) = training_set(
        dir.path(),
        &out,
        &["--config", config_flag, "--derive", "risk:amount_cubed"],
    );
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let (def, rows) = read_records(&out).unwrap();
    let cubed = def
        .features
        .iter()
        .position(|f| f.name == "risk:amount_cubed")
        .expect("an added column");
    assert_eq!(rows.len(), ids.len());
    let averages: HashMap<&str, Option<f64>> = [
        ("u1", Some(50.0)),
        ("u2", None),
        ("u3", Some(0.0)),
        ("u4", Some(33.3)),
        ("u9", None),
    ]
    .into();
    let mut present = 0;
    for row in &rows {
        let n = n_of[row.request_id.as_str()];
        let sent = sent(n);
        let expected = match (sent.amount, averages[sent.user]) {
            (Some(a), Some(avg)) => (Cell::Double((a * a * a / avg).to_bits()), "PRESENT"),
            _ => (Cell::Null, "NOT_FOUND"),
        };
        let got = &row.features[cubed];
        assert_eq!(
            (&got.value, got.status.as_str()),
            (&expected.0, expected.1),
            "{}",
            row.request_id
        );
        present += usize::from(expected.1 == "PRESENT");
    }
    assert!(present > 0 && present < rows.len());
    assert!(stdout.contains("risk:amount_cubed: added"), "{stdout}");

    // What is not a derived feature of the configuration is refused, nothing written.
    let out = dir.path().join("refused.parquet");
    let (output, _, stderr) = training_set(
        dir.path(),
        &out,
        &["--config", config_flag, "--derive", "profile:avg_amount"],
    );
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`profile:avg_amount` is not a derived feature"),
        "{stderr}"
    );
    assert!(!out.exists());
}
