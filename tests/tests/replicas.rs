//! End-to-end: three gateway replicas (the real binary) sharing one Redis Cluster on loopback,
//! for the `redis` source's rows and the Plaid source's shared cache tier, called by the Go
//! client balanced over the three addresses (`clients/go/balance`: gRPC round_robin, reads
//! retried on UNAVAILABLE within their deadline), driven by `clients/go/cmd/replicas`, which
//! checks every answer against the rows loaded.
//!
//! - *Spread*: 16 concurrent call loops over the three replicas for a few seconds: every answer
//!   PRESENT with its value, and each replica serves about a third of the calls.
//! - *Scale*: the same loops over one replica, then over three, one after the other: the
//!   throughputs and their ratio are printed, not asserted (on a 2-core machine one replica
//!   already has both cores, so three cannot serve more: `loadtest/bench.py replicas` measures it
//!   in release builds).
//! - *A replica killed* (SIGKILL) mid-run: no call fails and no answer is wrong: the calls it had
//!   in flight end UNAVAILABLE at the client, which sends them again to another replica (the
//!   attempts exceed the calls), and the two others serve the rest of the run.
//!
//! The Plaid balances are read through the shared tier: once one replica has asked Plaid for a
//! token, the others read its answer from the cluster, so Plaid is called at most once per token
//! and replica whatever the traffic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use end_to_end::{GatewayProcess, gateway_binary, redis::RedisCluster};
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{self, PlaidConfig, data},
    seeded::rfc3339,
};
use serde_json::Value as Json;

const PLAID_ID: &str = "e2e-replicas-client";
const PLAID_SECRET: &str = "e2e-replicas-s3cr3t";
/// Users loaded into the cluster.
const USERS: usize = 2000;
/// Plaid Items (access tokens), shared by the users in turn.
const TOKENS: u64 = 20;
/// Concurrent call loops of the Go client.
const LOOPS: usize = 16;

fn config(cluster: &RedisCluster, plaid: &FakeServer) -> String {
    let addresses = cluster.addresses();
    let nodes = addresses[1..]
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[entities.user_id]
type = "string"

[entities.plaid_access_token]
type = "string"

[sources.online]
kind = "redis"
url = "redis://{first}"
mode = "cluster"
nodes = [{nodes}]
timeout = "1s"

[views.user_stats]
source = "online"
entities = ["user_id"]
key = "user_stats:{{user_id}}"
[views.user_stats.features]
txn_count_24h = {{ type = "int64" }}
avg_amount_30d = {{ type = "double" }}
last_country = {{ type = "string" }}

[sources.plaid]
kind = "plaid"
base_url = "{plaid}"
client_id = "${{PLAID_CLIENT_ID}}"
secret = "${{PLAID_SECRET}}"
as_of = "{as_of}"
timeout = "5s"

[sources.plaid.cache]
ttl = "10m"
max_staleness = "1h"
shared = {{ url = "redis://{first}", mode = "cluster", nodes = [{nodes}], key_prefix = "e2e-replicas:", timeout = "500ms" }}

[views.plaid_balance]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "balance"
[views.plaid_balance.features]
available_total = {{ type = "double" }}

[feature_services.scoring]
deadline = "5s"
features = [
  "user_stats:txn_count_24h", "user_stats:avg_amount_30d", "user_stats:last_country",
  "plaid_balance:available_total",
]
"#,
        first = addresses[0],
        plaid = plaid.base_url(),
        as_of = rfc3339(data::now(plaid.seed())),
    )
}

/// `available_total` of user `user`'s Item as the fake computes it.
fn available(seed: u64, user: u64) -> f64 {
    data::accounts(seed, user)
        .iter()
        .filter(|a| a.kind != data::AccountKind::CreditCard)
        .filter_map(|a| a.available.or(a.current))
        .sum()
}

/// Loads the users into the cluster (`feature-gateway materialize`) and writes the rows the Go
/// client asks for and checks against: `rows.csv` in `dir`.
fn load(dir: &Path, config: &Path, plaid: &FakeServer) -> PathBuf {
    let stats = dir.join("user_stats.csv");
    let rows = dir.join("rows.csv");
    let mut stats_text = String::from("user_id,txn_count_24h,avg_amount_30d,last_country\n");
    let mut rows_text = String::from(
        "user_id,plaid_access_token,user_stats:txn_count_24h,user_stats:avg_amount_30d,\
         user_stats:last_country,plaid_balance:available_total\n",
    );
    let fake = plaid.plaid();
    for n in 0..USERS {
        let (id, count, amount, country) = (
            format!("u{n}"),
            n * 7 % 1000,
            n as f64 + 0.25,
            ["FR", "DE", "GB", "US"][n % 4],
        );
        let item = n as u64 % TOKENS;
        stats_text.push_str(&format!("{id},{count},{amount},{country}\n"));
        rows_text.push_str(&format!(
            "{id},{},{count},{amount},{country},{:?}\n",
            fake.access_token(item),
            available(plaid.seed(), item)
        ));
    }
    std::fs::write(&stats, stats_text).unwrap();
    std::fs::write(&rows, rows_text).unwrap();
    let output = Command::new(gateway_binary())
        .args(["materialize", "--config", config.to_str().unwrap()])
        .args(["--view", "user_stats", "--input", stats.to_str().unwrap()])
        .envs([
            ("PLAID_CLIENT_ID", PLAID_ID),
            ("PLAID_SECRET", PLAID_SECRET),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "materialize failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    rows
}

/// Builds `clients/go/cmd/replicas` into `dir`.
fn build_driver(dir: &Path) -> PathBuf {
    let bin = dir.join("replicas");
    let go = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/go");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("./cmd/replicas")
        .current_dir(go)
        .status()
        .expect("run `go build` (is Go installed and on PATH?)");
    assert!(
        status.success(),
        "go build of clients/go/cmd/replicas failed"
    );
    bin
}

/// Starts the Go client over `replicas` for `seconds`.
fn drive(driver: &Path, rows: &Path, replicas: &[&GatewayProcess], seconds: u64) -> Driver {
    let addrs = replicas
        .iter()
        .map(|g| g.grpc.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let child = Command::new(driver)
        .args(["-addrs", &addrs, "-service", "scoring"])
        .args(["-entities", "user_id,plaid_access_token"])
        .arg("-rows")
        .arg(rows)
        .args(["-concurrency", &LOOPS.to_string()])
        .args(["-duration", &format!("{seconds}s"), "-timeout", "5s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Driver(child)
}

struct Driver(std::process::Child);

impl Driver {
    /// Waits for the run's end and returns its report.
    fn report(self) -> Json {
        let output = self.0.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the Go client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }
}

/// Checks that every call of `report` was answered right.
fn all_right(report: &Json, what: &str) {
    let calls = report["calls"].as_i64().unwrap();
    assert!(calls > 0, "{what}: no call made: {report}");
    assert_eq!(report["right"].as_i64(), Some(calls), "{what}: {report}");
    assert_eq!(report["wrong"].as_i64(), Some(0), "{what}: {report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{what}: {report}");
    assert_eq!(
        report["not_present"],
        serde_json::json!({}),
        "{what}: {report}"
    );
}

/// GetFeatures calls a replica has answered, whatever their code.
async fn served(gateway: &GatewayProcess) -> f64 {
    gateway
        .admin_get("/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("feature_gateway_requests_total{method=\"GetFeatures\","))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_load_and_losing_one_costs_no_call() {
    let cluster = RedisCluster::start(3);
    let plaid = FakeServer::start(FakeConfig {
        population: TOKENS,
        plaid: PlaidConfig::unlimited(PLAID_ID, PLAID_SECRET),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, self::config(&cluster, &plaid)).unwrap();
    let rows = load(dir.path(), &config, &plaid);
    let driver = build_driver(dir.path());
    let env = [
        ("PLAID_CLIENT_ID", PLAID_ID),
        ("PLAID_SECRET", PLAID_SECRET),
    ];
    let a = GatewayProcess::serve_with_env(&config, &env);
    let b = GatewayProcess::serve_with_env(&config, &env);
    let mut c = GatewayProcess::serve_with_env(&config, &env);

    // Spread: each replica a third of the calls, every answer right.
    let before = [served(&a).await, served(&b).await, served(&c).await];
    let spread = drive(&driver, &rows, &[&a, &b, &c], 4).report();
    all_right(&spread, "three replicas");
    let after = [served(&a).await, served(&b).await, served(&c).await];
    let calls = spread["calls"].as_f64().unwrap();
    let shares: Vec<f64> = (0..3).map(|i| (after[i] - before[i]) / calls).collect();
    eprintln!("calls served by each replica: {shares:.3?} of {calls}");
    for share in &shares {
        assert!(
            (0.25..=0.42).contains(share),
            "a replica served {share:.3} of the calls, not about a third: {shares:?}"
        );
    }
    let plaid_calls = plaid.plaid().stats().route(plaid::ACCOUNTS_BALANCE_GET).ok;
    assert!(
        (TOKENS..=3 * TOKENS).contains(&plaid_calls),
        "{plaid_calls} Plaid calls for {TOKENS} tokens and 3 replicas"
    );

    // Scale: one replica, then three, the same loops.
    let one = drive(&driver, &rows, &[&a], 4).report();
    all_right(&one, "one replica");
    let three = drive(&driver, &rows, &[&a, &b, &c], 4).report();
    all_right(&three, "three replicas");
    let rps = |r: &Json| r["rps"].as_f64().unwrap();
    eprintln!(
        "one replica {:.0} calls/s (p99 {} ms), three {:.0} calls/s (p99 {} ms): {:.2}x",
        rps(&one),
        one["p99_ms"],
        rps(&three),
        three["p99_ms"],
        rps(&three) / rps(&one)
    );

    // A replica killed mid-run: its calls in flight are retried on the others.
    let run = drive(&driver, &rows, &[&a, &b, &c], 8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = served(&c).await;
    c.kill();
    let killed = run.report();
    eprintln!(
        "replica killed after {killed_at} calls: {} calls, {} attempts, every answer right; \
         calls per second {}",
        killed["calls"], killed["attempts"], killed["per_second"]
    );
    all_right(&killed, "a replica killed");
    assert!(
        killed["attempts"].as_i64().unwrap() > killed["calls"].as_i64().unwrap(),
        "no call was retried, so none was in flight on the killed replica: {killed}"
    );
    // The two others served every call after the kill: the last seconds have calls.
    let per_second: Vec<i64> = killed["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_i64().unwrap())
        .collect();
    assert!(
        per_second[4..per_second.len() - 1].iter().all(|&n| n > 0),
        "a second without an answer after the kill: {per_second:?}"
    );
}
