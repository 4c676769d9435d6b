//! End-to-end: derived features (CEL expressions) over a real Redis, a real PostgreSQL and the
//! request context, served by the real binary: the values, the statuses when an input is missing,
//! null, timed out or makes the evaluation fail, the training log holding what was served, and
//! `validate` placing an expression's type error.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use end_to_end::{
    GatewayProcess, d, gateway_binary, i, map, postgres::PostgresServer, redis::RedisServer, s,
    statuses, with_timeout,
};
use proto::v1::{self, FeatureStatus as St};
use training_log::{
    Cell,
    training_set::{log_files, read_records},
};

/// The Redis source's timeout, the longest a paused Redis can hold a request.
const REDIS_TIMEOUT_MS: u64 = 100;

fn config(redis: &RedisServer, pg_url: &str) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"

[sources.online]
kind = "redis"
url = "{redis}"
timeout = "{REDIS_TIMEOUT_MS}ms"
[sources.db]
kind = "postgres"
url = "{pg}"
timeout = "2s"
[sources.request]
kind = "request"

[views.user_stats]
source = "online"
entities = ["user_id"]
key = "user_stats:{{user_id}}"
[views.user_stats.features]
txn_count_24h = {{ type = "int64" }}
avg_amount_30d = {{ type = "double" }}
last_country = {{ type = "string" }}

[views.accounts]
source = "db"
entities = ["user_id"]
query = "SELECT segment, opened_at, credit_limit FROM accounts WHERE user_id = $1"
[views.accounts.features]
segment = {{ type = "string" }}
opened_at = {{ type = "timestamp" }}
credit_limit = {{ type = "double" }}

[views.txn]
source = "request"
[views.txn.features]
amount = {{ type = "double" }}
items = {{ type = "int64" }}
at = {{ type = "timestamp" }}

[views.risk]
kind = "derived"
[views.risk.features]
amount_vs_avg = {{ type = "double", expr = "txn.amount / user_stats.avg_amount_30d" }}
headroom = {{ type = "double", expr = "accounts.credit_limit - txn.amount" }}
busy_gold = {{ type = "bool", expr = "accounts.segment == 'gold' && user_stats.txn_count_24h > 10" }}
label = {{ type = "string", expr = "accounts.segment + ':' + user_stats.last_country.lowerAscii()" }}
tenure_days = {{ type = "int64", expr = "(txn.at - accounts.opened_at).getHours() / 24" }}
per_item = {{ type = "int64", expr = "user_stats.txn_count_24h / txn.items" }}
headroom_share = {{ type = "double", expr = "risk.headroom / accounts.credit_limit" }}

[feature_services.credit_v2]
deadline = "2s"
features = ["txn:amount", "user_stats:txn_count_24h", "risk:*"]
[feature_services.credit_v2.defaults]
"risk:per_item" = -1

[training_log]
dir = "log"
spool_dir = "spool"
rotate_interval = "1h"
"#,
        redis = redis.url(),
        pg = pg_url,
    )
}

struct Stack {
    redis: RedisServer,
    gw: GatewayProcess,
    dir: tempfile::TempDir,
}

fn start() -> Stack {
    let redis = RedisServer::start();
    let pg = PostgresServer::shared();
    let db = pg.create_database();
    pg.psql(
        &db,
        "CREATE TABLE accounts (user_id text PRIMARY KEY, segment text, opened_at timestamptz, credit_limit numeric);
         INSERT INTO accounts VALUES
           ('u1', 'gold', '2026-01-01T00:00:00Z', 5000.50),
           ('u2', 'basic', '2026-11-01T00:00:00Z', 800);",
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, self::config(&redis, &pg.url_for(&db))).unwrap();
    let users = dir.path().join("user_stats.csv");
    std::fs::write(
        &users,
        "user_id,txn_count_24h,avg_amount_30d,last_country\nu1,12,40.5,GB\nu2,3,,US\n",
    )
    .unwrap();
    let output = Command::new(gateway_binary())
        .args(["materialize", "--config", config.to_str().unwrap()])
        .args(["--view", "user_stats", "--input", users.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let gw = GatewayProcess::serve(&config);
    Stack { redis, gw, dir }
}

/// 2026-12-01T00:00:00Z.
fn paid_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_083_200)
}

fn request(id: &str, user: &str, amount: f64, items: i64) -> v1::GetFeaturesRequest {
    let at = paid_at().duration_since(UNIX_EPOCH).unwrap();
    v1::GetFeaturesRequest {
        feature_service: "credit_v2".into(),
        request_id: id.into(),
        entities: map(&[("user_id", s(user))]),
        context: map(&[
            ("amount", d(amount)),
            ("items", i(items)),
            (
                "at",
                v1::Value {
                    kind: Some(v1::value::Kind::TimestampValue(prost_types::Timestamp {
                        seconds: at.as_secs() as i64,
                        nanos: 0,
                    })),
                },
            ),
        ]),
        include_metadata: true,
        ..Default::default()
    }
}

/// The response's value, status and detail of feature `name`.
fn feature<'a>(response: &'a v1::GetFeaturesResponse, name: &str) -> (&'a v1::Value, St, &'a str) {
    let k = response
        .feature_names
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", response.feature_names));
    (
        &response.values[k],
        statuses(&response.statuses)[k],
        response.metadata[k].detail.as_str(),
    )
}

fn null() -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::NullValue(0)),
    }
}

#[tokio::test]
async fn derived_features_over_redis_postgres_and_the_context() {
    let mut stack = start();
    let mut client = stack.gw.client().await;
    let mut served = Vec::new();

    let r = client
        .get_features(with_timeout(
            request("r1", "u1", 81.0, 4),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        *r.feature_names,
        [
            "txn:amount",
            "user_stats:txn_count_24h",
            "risk:amount_vs_avg",
            "risk:busy_gold",
            "risk:headroom",
            "risk:headroom_share",
            "risk:label",
            "risk:per_item",
            "risk:tenure_days",
        ]
    );
    assert_eq!(statuses(&r.statuses), [St::Present; 9], "{:?}", r.metadata);
    assert_eq!(
        r.values,
        [
            d(81.0),
            i(12),
            d(81.0 / 40.5),
            v1::Value {
                kind: Some(v1::value::Kind::BoolValue(true))
            },
            d(5000.5 - 81.0),
            d((5000.5 - 81.0) / 5000.5),
            s("gold:gb"),
            i(3),
            i(334),
        ]
    );
    assert_eq!(feature(&r, "risk:label").2, "");
    assert_eq!(r.metadata[2].source_kind, "derived");
    served.push(r);

    // u2 has no 30-day average (null in Redis): what divides by it says which input is missing.
    // Zero items: an integer division by zero is the feature's status, the default served.
    let r = client
        .get_features(with_timeout(
            request("r2", "u2", 100.0, 0),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        feature(&r, "risk:amount_vs_avg"),
        (
            &null(),
            St::NotFound,
            "input user_stats.avg_amount_30d NULL_VALUE"
        )
    );
    assert_eq!(
        feature(&r, "risk:per_item"),
        (&i(-1), St::SourceError, "expression: division by zero")
    );
    assert!(r.metadata[7].default_applied);
    assert_eq!(
        feature(&r, "risk:busy_gold").0,
        &v1::Value {
            kind: Some(v1::value::Kind::BoolValue(false))
        }
    );
    assert_eq!(feature(&r, "risk:headroom").0, &d(700.0));
    served.push(r);

    // Redis hangs: what reads it times out within the source's timeout; what reads PostgreSQL
    // and the context alone is still served, and `&&` decides without Redis when it can.
    stack.redis.pause();
    let r = client
        .get_features(with_timeout(
            request("r3", "u2", 50.0, 1),
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    stack.redis.resume();
    assert_eq!(
        feature(&r, "risk:amount_vs_avg"),
        (
            &null(),
            St::TimedOut,
            "input user_stats.avg_amount_30d TIMED_OUT"
        )
    );
    assert_eq!(feature(&r, "risk:label").1, St::TimedOut);
    assert_eq!(
        feature(&r, "risk:per_item"),
        (
            &i(-1),
            St::TimedOut,
            "input user_stats.txn_count_24h TIMED_OUT"
        )
    );
    assert_eq!(feature(&r, "risk:headroom"), (&d(750.0), St::Present, ""));
    assert_eq!(
        feature(&r, "risk:busy_gold"),
        (
            &v1::Value {
                kind: Some(v1::value::Kind::BoolValue(false))
            },
            St::Present,
            ""
        )
    );
    assert_eq!(feature(&r, "risk:tenure_days"), (&i(30), St::Present, ""));
    let waited = r.request_metadata.as_ref().unwrap().total_us;
    assert!(
        waited < 2_000_000,
        "bounded by the Redis timeout, not the 2 s deadline: {waited} µs"
    );
    served.push(r);

    // The training log holds exactly what was served, derived features included.
    stack.gw.terminate();
    let status = stack.gw.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", stack.gw.log());
    let mut records = Vec::new();
    for (path, _, def) in log_files(&stack.dir.path().join("log"), "credit_v2").unwrap() {
        let names: Vec<&str> = def.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, *served[0].feature_names);
        records.extend(read_records(&path).unwrap().1);
    }
    assert_eq!(records.len(), served.len());
    for response in &served {
        let record = records
            .iter()
            .find(|r| r.request_id == response.request_id)
            .unwrap();
        let logged: Vec<&str> = record.features.iter().map(|f| f.status.as_str()).collect();
        let answered: Vec<String> = statuses(&response.statuses)
            .iter()
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("FEATURE_STATUS_")
                    .to_owned()
            })
            .collect();
        assert_eq!(logged, answered, "{}", response.request_id);
        for (entry, value) in record.features.iter().zip(&response.values) {
            assert_eq!(entry.value, cell(value), "{}", response.request_id);
        }
    }
}

/// A wire value as the training log stores it.
fn cell(value: &v1::Value) -> Cell {
    use v1::value::Kind;
    match value.kind.as_ref().unwrap() {
        Kind::Int64Value(v) => Cell::Int64(*v),
        Kind::DoubleValue(v) => Cell::Double(v.to_bits()),
        Kind::StringValue(v) => Cell::String(v.clone()),
        Kind::BoolValue(v) => Cell::Bool(*v),
        Kind::NullValue(_) => Cell::Null,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn validate_places_an_expression_error_in_the_file_and_in_the_expression() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        r#"[sources.request]
kind = "request"

[views.txn]
source = "request"
features = { amount = { type = "double" }, items = { type = "int64" } }

[views.risk]
kind = "derived"
[views.risk.features]
per_item = { type = "double", expr = "txn.amount / txn.items" }
loud = { type = "string", expr = "txn.amount.upperAscii()" }

[feature_services.m]
features = ["risk:*"]
"#,
    )
    .unwrap();
    let output = Command::new(gateway_binary())
        .args(["validate", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "gateway.toml:11:31: views.risk.features.per_item.expr: at 1:12 of the expression: no \
         overload of `/` takes (double, int)",
        "gateway.toml:12:27: views.risk.features.loud.expr: at 1:22 of the expression: no \
         overload of `upperAscii` takes (double)",
    ] {
        assert!(
            stderr.contains(expected),
            "missing `{expected}` in:\n{stderr}"
        );
    }
}
