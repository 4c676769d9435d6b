//! End-to-end: drift and skew through the real binary. The demo's configuration serves
//! `fraud_v1` with a training log; traffic drawn from the demo's population (its customers,
//! cards and merchants, a few unknown customers, amounts, currencies and channels from fixed
//! distributions) is profiled into a reference with `feature-gateway profile` (a training
//! set's vectors profile too); then `feature-gateway skew` compares later ranges of the log
//! with the reference: more traffic from the same population moves no feature (every PSI below
//! 0.1, exit 0), traffic whose `amount` is sent a hundred times larger (a unit change upstream)
//! ranks `txn:amount` first and exits 4. A reference that does not match the log, or a corrupt
//! one, is refused naming the problem (exit 2); `--consistency` finds the rows of a recomputed
//! table that differ from what was served.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, SystemTime},
};

use end_to_end::{GatewayProcess, demo_traffic::request, gateway_binary, rfc3339};
use proto::v1;

/// Vectors in the reference.
const REFERENCE: usize = 3000;
/// Vectors in each range compared with it.
const SERVED: usize = 2000;
/// Concurrent callers.
const CALLERS: usize = 8;

/// A gateway deployment in a temporary directory: the demo's tables and configuration, its
/// training log in `log/` (as tests/training_log.rs lays it out).
struct Deployment {
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
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
            format!(
                "{base}\n[training_log]\ndir = \"log\"\nspool_dir = \"spool\"\n\
                 rotate_interval = \"1s\"\n"
            ),
        )
        .unwrap();
        Deployment { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Serves `n` requests of the population from `seed`, amounts multiplied by `amount_times`,
    /// then stops the gateway (SIGTERM commits every logged vector). Returns the amounts sent,
    /// by request id.
    async fn serve(&self, seed: u64, n: usize, amount_times: f64) -> Vec<(String, f64)> {
        let mut gw = GatewayProcess::serve(&self.path("gateway.toml"));
        let client = gw.client().await;
        let mut callers = tokio::task::JoinSet::new();
        for c in 0..CALLERS {
            let mut client = client.clone();
            callers.spawn(async move {
                let mut sent = Vec::new();
                for i in (c..n).step_by(CALLERS) {
                    let (entities, context, amount) = request(seed, i, amount_times);
                    let request_id = format!("s{seed}-{i}");
                    client
                        .get_features(v1::GetFeaturesRequest {
                            request_id: request_id.clone(),
                            feature_service: "fraud_v1".into(),
                            entities,
                            context,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    sent.push((request_id, amount));
                }
                sent
            });
        }
        let mut sent = Vec::new();
        while let Some(done) = callers.join_next().await {
            sent.extend(done.unwrap());
        }
        gw.terminate();
        let status = gw
            .wait(Duration::from_secs(60))
            .expect("exits after SIGTERM");
        assert!(status.success(), "exit {status}; log:\n{}", gw.log());
        sent
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(gateway_binary()).args(args).output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `(feature, PSI)` of each line `skew` ranks on standard output, in rank order.
fn ranked(out: &Output) -> Vec<(String, f64)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (rank, rest) = line.trim_start().split_once(". ")?;
            rank.parse::<usize>().ok()?;
            let (feature, rest) = rest.split_once(": PSI ")?;
            let psi = rest.split(',').next()?.parse().ok()?;
            Some((feature.to_owned(), psi))
        })
        .collect()
}

fn skew(dep: &Deployment, reference: &Path, from: &str, to: &str, out: &str) -> Output {
    run(&[
        "skew",
        "--reference",
        reference.to_str().unwrap(),
        "--served",
        dep.path("log").to_str().unwrap(),
        "--from",
        from,
        "--to",
        to,
        "--out",
        dep.path(out).to_str().unwrap(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skew_finds_a_unit_change_and_nothing_in_the_same_population() {
    let dep = Deployment::new();
    dep.serve(1, REFERENCE, 1.0).await;
    let t1 = rfc3339(SystemTime::now());

    // The reference: the first range of the log.
    let reference = dep.path("reference.json");
    let out = run(&[
        "profile",
        "--logs",
        dep.path("log").to_str().unwrap(),
        "--feature-service",
        "fraud_v1",
        "--to",
        &t1,
        "--out",
        reference.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    assert_eq!(profile["format"], "feature-gateway.profile");
    assert_eq!(profile["version"], 1);
    assert_eq!(profile["rows"], REFERENCE as u64);
    let features = profile["features"].as_array().unwrap();
    assert_eq!(features.len(), 20);
    let amount = &features[0];
    assert_eq!(
        (amount["name"].as_str(), amount["type"].as_str()),
        (Some("txn:amount"), Some("double"))
    );
    assert_eq!(amount["numeric"]["edges"].as_array().unwrap().len(), 9);
    // Unknown customers: NOT_FOUND; unknown merchant categories: their defaults.
    let country = features
        .iter()
        .find(|f| f["name"] == "user_profile:country")
        .unwrap();
    assert!(country["statuses"]["NOT_FOUND"].as_u64().unwrap() > 0);
    let tier = features
        .iter()
        .find(|f| f["name"] == "mcc_risk:risk_tier")
        .unwrap();
    assert!(tier["default_served"].as_u64().unwrap() > 0);
    assert!(
        tier["categorical"]["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["value"] == "unknown")
    );

    // A profile of a training set built from the log: the labelled vectors only.
    let mut labels = String::from("request_id,label\n");
    for i in 0..500 {
        labels.push_str(&format!("s1-{i},{}\n", i % 2));
    }
    std::fs::write(dep.path("labels.csv"), labels).unwrap();
    let (train, train_profile) = (dep.path("train.parquet"), dep.path("train.json"));
    let out = run(&[
        "training-set",
        "--logs",
        dep.path("log").to_str().unwrap(),
        "--labels",
        dep.path("labels.csv").to_str().unwrap(),
        "--feature-service",
        "fraud_v1",
        "--out",
        train.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&[
        "profile",
        "--training-set",
        train.to_str().unwrap(),
        "--out",
        train_profile.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("profile of `fraud_v1`"),
        "{}",
        text(&out)
    );
    let trained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&train_profile).unwrap()).unwrap();
    assert_eq!(trained["rows"], 500);
    assert_eq!(trained["sources"][0]["kind"], "training_set");

    // (a) More traffic from the same population: nothing moved.
    let sent = dep.serve(2, SERVED, 1.0).await;
    let t2 = rfc3339(SystemTime::now());
    let out = skew(&dep, &reference, &t1, &t2, "same");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ranks = ranked(&out);
    assert_eq!(ranks.len(), 20, "{}", text(&out));
    for (feature, psi) in &ranks {
        assert!(*psi < 0.1, "{feature}: PSI {psi}\n{}", text(&out));
    }
    let md = std::fs::read_to_string(dep.path("same/skew.md")).unwrap();
    assert!(
        md.contains("No feature moved past a threshold (20 features compared)."),
        "{md}"
    );
    assert!(
        md.contains(&format!("{SERVED} vectors from the training log")),
        "{md}"
    );

    // The same range with a recomputed table of 100 of its requests, three of them off.
    let mut table = String::from("request_id,feature:txn:amount\n");
    for (k, (id, amount)) in sent.iter().take(100).enumerate() {
        let recomputed = if k % 40 == 1 { amount + 1.0 } else { *amount };
        table.push_str(&format!("{id},{recomputed}\n"));
    }
    table.push_str("never-served,1.0\n");
    std::fs::write(dep.path("recomputed.csv"), table).unwrap();
    let out = run(&[
        "skew",
        "--reference",
        reference.to_str().unwrap(),
        "--served",
        dep.path("log").to_str().unwrap(),
        "--from",
        &t1,
        "--to",
        &t2,
        "--out",
        dep.path("consistency").to_str().unwrap(),
        "--consistency",
        dep.path("recomputed.csv").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("consistency txn:amount: 3 of 100 rows differ (3.0%)"),
        "{}",
        text(&out)
    );
    let md = std::fs::read_to_string(dep.path("consistency/skew.md")).unwrap();
    assert!(
        md.contains("1 of its rows have no served vector in range"),
        "{md}"
    );

    // (b) Amounts sent a hundred times larger: `txn:amount` first, exit code 4.
    dep.serve(3, SERVED, 100.0).await;
    let t3 = rfc3339(SystemTime::now());
    let out = skew(&dep, &reference, &t2, &t3, "amount");
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let ranks = ranked(&out);
    assert_eq!(ranks[0].0, "txn:amount", "{}", text(&out));
    assert!(ranks[0].1 > 1.0, "{}", text(&out));
    assert!(
        ranks[1..].iter().all(|(_, psi)| *psi < 0.1),
        "{}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 feature(s) past a threshold: txn:amount (PSI"),
        "{}",
        text(&out)
    );
    let md = std::fs::read_to_string(dep.path("amount/skew.md")).unwrap();
    assert!(md.contains("| 1 | `txn:amount` | double |"), "{md}");
    let html = std::fs::read_to_string(dep.path("amount/skew.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 20);
    assert!(html.find("<code>txn:amount</code>") < html.find("<code>txn:currency</code>"));

    // A reference whose feature has another type than the log's: refused, naming both.
    let edited = std::fs::read_to_string(&reference).unwrap().replacen(
        "\"type\": \"double\"",
        "\"type\": \"int64\"",
        1,
    );
    std::fs::write(dep.path("other-type.json"), edited).unwrap();
    let out = skew(&dep, &dep.path("other-type.json"), &t1, &t3, "other");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`txn:amount` is double in the log's definition"),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("int64 in the reference"), "{}", text(&out));

    // A corrupt profile: refused with the reason.
    let whole = std::fs::read_to_string(&reference).unwrap();
    std::fs::write(dep.path("corrupt.json"), &whole[..whole.len() / 2]).unwrap();
    let out = skew(&dep, &dep.path("corrupt.json"), &t1, &t3, "corrupt");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt.json: not JSON"),
        "{}",
        text(&out)
    );
}
