//! End-to-end: one feature service over a real Redis (loaded with `feature-gateway
//! materialize`), a real PostgreSQL, a static table and the request context, called over gRPC,
//! single and batch. A Redis view is keyed by a feature read from PostgreSQL (a dependent key
//! across stores), and Redis is killed and restarted mid-run.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{process::Command, time::Duration};

use end_to_end::{
    GatewayProcess, d, gateway_binary, i, map, postgres::PostgresServer, redis::RedisServer, s,
    statuses, with_timeout,
};
use proto::v1::{self, FeatureStatus as St};

fn config(redis: &RedisServer, pg_url: &str) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"
[entities.merchant_id]
type = "string"
[entities.segment]
type = "string"
from = "accounts:segment"
description = "The customer's segment, read from PostgreSQL, keys a Redis view"

[sources.online]
kind = "redis"
url = "{redis}"
timeout = "100ms"
[sources.db]
kind = "postgres"
url = "{pg}"
timeout = "200ms"
[sources.tables]
kind = "static"
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

[views.segment_stats]
source = "online"
entities = ["segment"]
key = "segment_stats:{{segment}}"
features = {{ fraud_rate = {{ type = "double" }} }}

[views.accounts]
source = "db"
entities = ["user_id"]
query = "SELECT segment, opened_at, credit_limit FROM accounts WHERE user_id = $1"
[views.accounts.features]
segment = {{ type = "string" }}
opened_at = {{ type = "timestamp" }}
credit_limit = {{ type = "double" }}

[views.merchants]
source = "tables"
entities = ["merchant_id"]
path = "merchants.csv"
features = {{ risk = {{ type = "double" }} }}

[views.txn]
source = "request"
features = {{ amount = {{ type = "double" }} }}

[feature_services.credit_v1]
deadline = "500ms"
features = [
  "txn:amount",
  "user_stats:txn_count_24h",
  "user_stats:avg_amount_30d",
  "user_stats:last_country",
  "accounts:segment",
  "accounts:credit_limit",
  "segment_stats:fraud_rate",
  "merchants:risk",
]
"#,
        redis = redis.url(),
        pg = pg_url,
    )
}

struct Stack {
    redis: RedisServer,
    gw: GatewayProcess,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn materialize(config: &std::path::Path, view: &str, csv: &std::path::Path) -> String {
    let output = Command::new(gateway_binary())
        .args([
            "materialize",
            "--config",
            config.to_str().unwrap(),
            "--view",
            view,
        ])
        .args(["--input", csv.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "materialize failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn start() -> Stack {
    let redis = RedisServer::start();
    let pg = PostgresServer::shared();
    let db = pg.create_database();
    pg.psql(
        &db,
        "CREATE TABLE accounts (user_id text PRIMARY KEY, segment text, opened_at timestamptz, credit_limit numeric);
         INSERT INTO accounts VALUES
           ('u1', 'gold', '2021-03-04T05:06:07Z', 5000.50),
           ('u2', 'basic', '2024-01-01T00:00:00Z', NULL),
           ('u3', 'unrated', '2020-01-01T00:00:00Z', 100);",
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("merchants.csv"),
        "merchant_id,risk\nm1,0.25\n",
    )
    .unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, self::config(&redis, &pg.url_for(&db))).unwrap();

    let users = dir.path().join("user_stats.csv");
    std::fs::write(
        &users,
        "user_id,txn_count_24h,avg_amount_30d,last_country\nu1,12,40.5,GB\nu2,0,,US\n",
    )
    .unwrap();
    let summary = materialize(&config, "user_stats", &users);
    assert!(summary.contains("2 rows read, 2 written"), "{summary}");
    let segments = dir.path().join("segments.csv");
    std::fs::write(&segments, "segment,fraud_rate\ngold,0.001\nbasic,0.02\n").unwrap();
    materialize(&config, "segment_stats", &segments);

    let gw = GatewayProcess::serve(&config);
    Stack {
        redis,
        gw,
        config,
        _dir: dir,
    }
}

fn request(user: &str) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: "credit_v1".into(),
        entities: map(&[("user_id", s(user)), ("merchant_id", s("m1"))]),
        context: map(&[("amount", d(99.0))]),
        include_metadata: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn one_vector_from_redis_postgres_a_table_and_the_request() {
    let stack = start();
    let mut client = stack.gw.client().await;
    let response = client
        .get_features(with_timeout(request("u1"), Duration::from_secs(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 8]);
    assert_eq!(
        response.values,
        [
            d(99.0),
            i(12),
            d(40.5),
            s("GB"),
            s("gold"),
            d(5000.5),
            d(0.001),
            d(0.25)
        ]
    );
    let kinds: Vec<_> = response
        .metadata
        .iter()
        .map(|m| m.source_kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "request", "redis", "redis", "redis", "postgres", "postgres", "redis", "static"
        ]
    );
    // Two stages: Redis, PostgreSQL and the table first, then the segment's Redis view.
    assert_eq!(response.request_metadata.unwrap().stage_us.len(), 2);

    // Nulls, a missing Redis key, and a PostgreSQL segment with no Redis row.
    let batch = client
        .get_features_batch(v1::GetFeaturesBatchRequest {
            feature_service: "credit_v1".into(),
            rows: ["u2", "u3", "nobody", "u1"]
                .iter()
                .map(|u| v1::EntityRow {
                    entities: map(&[("user_id", s(u)), ("merchant_id", s("m1"))]),
                    context: map(&[("amount", d(1.0))]),
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let st = |r: usize| statuses(&batch.rows[r].statuses);
    use St::{NotFound as NF, NullValue as NV, Present as P};
    assert_eq!(st(0), [P, P, NV, P, P, NV, P, P]);
    assert_eq!(st(1), [P, NF, NF, NF, P, P, NF, P]);
    assert_eq!(st(2), [P, NF, NF, NF, NF, NF, NF, P]);
    assert_eq!(st(3), [P; 8]);
    assert_eq!(batch.rows[3].values[6], d(0.001));
}

#[tokio::test]
async fn redis_killed_mid_run_costs_its_features_then_recovers() {
    let mut stack = start();
    let mut client = stack.gw.client().await;
    stack.redis.stop();
    let response = client
        .get_features(with_timeout(request("u1"), Duration::from_secs(2)))
        .await
        .unwrap()
        .into_inner();
    let st = statuses(&response.statuses);
    // Redis features fail (fast, or at the source's timeout); PostgreSQL, the table and the
    // request are served.
    for (k, status) in st.iter().enumerate() {
        match k {
            1..=3 | 6 => assert!(
                matches!(status, St::SourceError | St::TimedOut),
                "feature {k}: {status:?}"
            ),
            _ => assert_eq!(*status, St::Present, "feature {k}"),
        }
    }

    // Back, empty (nothing persisted): reload and the gateway serves it again, unrestarted.
    stack.redis.restart();
    let users = stack.config.with_file_name("user_stats.csv");
    let segments = stack.config.with_file_name("segments.csv");
    materialize(&stack.config, "user_stats", &users);
    materialize(&stack.config, "segment_stats", &segments);
    let mut recovered = false;
    for _ in 0..50 {
        let response = client
            .get_features(with_timeout(request("u1"), Duration::from_secs(2)))
            .await
            .unwrap()
            .into_inner();
        if statuses(&response.statuses) == [St::Present; 8] {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the Redis features did not come back; log:\n{}",
        stack.gw.log()
    );
}
