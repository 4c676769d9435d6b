//! End-to-end: the real gateway binary serves Plaid features over gRPC. A PostgreSQL table of
//! linked Items (`linked_items(user_id, access_token)`) feeds the entity `plaid_access_token`,
//! which keys the Plaid views (the dependent-key chain PostgreSQL -> Plaid); Plaid is the fake
//! (`fake_upstreams::plaid`) on loopback. A slow balance endpoint comes back TIMED_OUT inside
//! the deadline while the other features are served; an Item whose login must be repaired is
//! item data, not a failed request; and the Plaid secret, given to the gateway through its
//! environment, appears in neither its log nor its answers.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{GatewayProcess, map, postgres::PostgresServer, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer, Latency, RouteFaults,
    plaid::{self, ItemState, PlaidConfig, data},
    seeded::rfc3339,
};
use proto::v1::{self, FeatureStatus as St};

const CLIENT_ID: &str = "e2e-plaid-client";
const SECRET: &str = "e2e-plaid-s3cr3t-do-not-log";

fn config(pg_url: &str, plaid: &FakeServer) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"
[entities.plaid_access_token]
type = "string"
from = "linked_items:access_token"
description = "The user's Plaid access token, read from PostgreSQL"

[sources.db]
kind = "postgres"
url = "{pg_url}"
timeout = "500ms"

[sources.plaid]
kind = "plaid"
base_url = "{base}"
client_id = "${{PLAID_CLIENT_ID}}"
secret = "${{PLAID_SECRET}}"
as_of = "{as_of}"

[views.linked_items]
source = "db"
entities = ["user_id"]
query = "SELECT access_token FROM linked_items WHERE user_id = $1"
features = {{ access_token = {{ type = "string" }} }}

[views.plaid_balance]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "balance"
[views.plaid_balance.features]
account_count = {{ type = "int64" }}
available_total = {{ type = "double" }}

[views.plaid_txn]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "transactions"
[views.plaid_txn.features]
transaction_count = {{ type = "int64" }}
debit_count_7d = {{ type = "int64" }}

[views.plaid_item]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "item"
[views.plaid_item.features]
has_error = {{ type = "bool" }}
error_code = {{ type = "string" }}

[feature_services.underwriting_v1]
deadline = "1s"
features = [
  "plaid_balance:account_count",
  "plaid_balance:available_total",
  "plaid_txn:transaction_count",
  "plaid_txn:debit_count_7d",
  "plaid_item:has_error",
  "plaid_item:error_code",
]
"#,
        base = plaid.base_url(),
        as_of = rfc3339(data::now(plaid.seed())),
    )
}

struct Stack {
    plaid: FakeServer,
    gw: GatewayProcess,
    _dir: tempfile::TempDir,
}

async fn start() -> Stack {
    let plaid = FakeServer::start(FakeConfig {
        population: 20,
        // The test calls the same Items repeatedly; limits have tests of their own.
        plaid: PlaidConfig::unlimited(CLIENT_ID, SECRET),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let pg = PostgresServer::shared();
    let db = pg.create_database();
    let rows: Vec<String> = (0..3)
        .map(|u| format!("('u{u}', '{}')", plaid.plaid().access_token(u)))
        .collect();
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE linked_items (user_id text PRIMARY KEY, access_token text NOT NULL);
             INSERT INTO linked_items VALUES {};",
            rows.join(", ")
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&pg.url_for(&db), &plaid)).unwrap();
    let gw = GatewayProcess::serve_with_env(
        &path,
        &[
            ("PLAID_CLIENT_ID", CLIENT_ID),
            ("PLAID_SECRET", SECRET),
            // Debug, so a secret in any fetcher log line would show.
            ("RUST_LOG", "debug"),
        ],
    );
    Stack {
        plaid,
        gw,
        _dir: dir,
    }
}

fn request(user: &str) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: "underwriting_v1".into(),
        entities: map(&[("user_id", s(user))]),
        include_metadata: true,
        ..Default::default()
    }
}

fn int(v: &v1::Value) -> i64 {
    match v.kind {
        Some(v1::value::Kind::Int64Value(i)) => i,
        ref other => panic!("expected an int64, got {other:?}"),
    }
}

#[tokio::test]
async fn postgres_keys_plaid_and_a_slow_balance_times_out_alone() {
    let stack = start().await;
    let seed = stack.plaid.seed();
    let mut client = stack.gw.client().await;

    // The chain PostgreSQL -> Plaid, every feature served.
    let response = client
        .get_features(with_timeout(request("u1"), Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    use St::{NotFound as NF, NullValue as NV, Present as P};
    assert_eq!(
        statuses(&response.statuses),
        [P, P, P, P, P, NV],
        "{response:?}\n{}",
        stack.gw.log()
    );
    assert_eq!(
        int(&response.values[0]),
        data::accounts(seed, 1).len() as i64
    );
    assert_eq!(
        int(&response.values[2]),
        data::transactions(seed, 1).len() as i64
    );
    assert!(response.metadata.iter().all(|m| m.source_kind == "plaid"));
    // Two stages: the linked item, then Plaid.
    assert_eq!(response.request_metadata.unwrap().stage_us.len(), 2);

    // A user with no linked Item: no Plaid row, and no Plaid call.
    let response = client
        .get_features(with_timeout(request("nobody"), Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [NF; 6]);

    // An Item whose login must be repaired: data views fail for it, the item view says why.
    stack
        .plaid
        .plaid()
        .set_item_state(&stack.plaid.plaid().item_id(2), ItemState::LoginRequired)
        .unwrap();
    let response = client
        .get_features(with_timeout(request("u2"), Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    let st = statuses(&response.statuses);
    assert_eq!(st[..4], [St::SourceError; 4], "{response:?}");
    assert_eq!(st[4..], [P, P]);
    assert_eq!(
        response.values[4].kind,
        Some(v1::value::Kind::BoolValue(true))
    );
    assert_eq!(response.values[5], s("ITEM_LOGIN_REQUIRED"));

    // Balance (real time, from the bank) is slow: it times out inside the deadline, the
    // transactions and item features are served.
    stack
        .plaid
        .set_faults(
            plaid::ACCOUNTS_BALANCE_GET,
            RouteFaults {
                latency: Latency::Fixed { ms: 20_000.0 },
                ..RouteFaults::default()
            },
        )
        .unwrap();
    let started = Instant::now();
    let response = client
        .get_features(with_timeout(request("u0"), Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    assert_eq!(
        statuses(&response.statuses),
        [St::TimedOut, St::TimedOut, P, P, P, NV],
        "{response:?}"
    );
    // The feature service's deadline is 1 s; generous slack, far from the 20 s answer.
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");

    // The secret never reached the gateway's log (at debug level) nor an answer.
    let log = stack.gw.log();
    assert!(
        log.contains("plaid"),
        "the log covers the plaid source:\n{log}"
    );
    for text in [log.as_str(), &format!("{response:?}")] {
        assert!(!text.contains(SECRET), "the Plaid secret leaked:\n{text}");
    }
    for user in 0..3 {
        let token = stack.plaid.plaid().access_token(user);
        assert!(!log.contains(&token), "an access token reached the log");
    }
}
