//! End-to-end: the Plaid fetcher run as a sidecar. The `fetcher-sidecar` process alone holds the
//! Plaid credentials; the gateway reads the access token from PostgreSQL and asks the sidecar
//! through `fetcher.proto`. Killing the sidecar costs the Plaid features SOURCE_ERROR at once
//! (the PostgreSQL feature is still served); restarted, it serves again without restarting the
//! gateway.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{
    GatewayProcess, i, map, postgres::PostgresServer, s, sidecar::SidecarProcess, statuses,
    with_timeout,
};
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{PlaidConfig, data},
};
use proto::v1::{self, FeatureStatus as St};

const SECRET: &str = "sidecar-only-plaid-s3cr3t";

fn sidecar_config(plaid: &FakeServer) -> String {
    format!(
        r#"
[entities.plaid_access_token]
type = "string"

[sources.plaid]
kind = "plaid"
base_url = "{base}"
client_id = "${{PLAID_CLIENT_ID}}"
secret = "${{PLAID_SECRET}}"
as_of = "{as_of}"

[views.plaid_balance]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "balance"
features = {{ account_count = {{ type = "int64" }} }}

[views.plaid_item]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "item"
features = {{ has_error = {{ type = "bool" }} }}
"#,
        base = plaid.base_url(),
        as_of = fake_upstreams::seeded::rfc3339(data::now(plaid.seed())),
    )
}

fn gateway_config(pg_url: &str, sidecar: &SidecarProcess) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"
[entities.plaid_access_token]
type = "string"
from = "linked_items:access_token"

[sources.db]
kind = "postgres"
url = "{pg_url}"
[sources.plaid_sidecar]
kind = "sidecar"
address = "{sidecar}"
timeout = "2s"

[views.linked_items]
source = "db"
entities = ["user_id"]
query = "SELECT access_token FROM linked_items WHERE user_id = $1"
features = {{ access_token = {{ type = "string" }} }}

[views.plaid_balance]
source = "plaid_sidecar"
entities = ["plaid_access_token"]
features = {{ account_count = {{ type = "int64" }} }}

[views.plaid_item]
source = "plaid_sidecar"
entities = ["plaid_access_token"]
features = {{ has_error = {{ type = "bool" }} }}

[feature_services.underwriting_v1]
deadline = "3s"
features = ["linked_items:access_token", "plaid_balance:account_count", "plaid_item:has_error"]
"#,
        sidecar = sidecar.uri(),
    )
}

fn request() -> tonic::Request<v1::GetFeaturesRequest> {
    with_timeout(
        v1::GetFeaturesRequest {
            feature_service: "underwriting_v1".into(),
            entities: map(&[("user_id", s("u1"))]),
            ..Default::default()
        },
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn plaid_in_a_sidecar_that_alone_holds_the_secret() {
    let plaid = FakeServer::start(FakeConfig {
        population: 10,
        plaid: PlaidConfig {
            secret: SECRET.into(),
            ..PlaidConfig::default()
        },
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let client_id = PlaidConfig::default().client_id;
    let dir = tempfile::tempdir().unwrap();
    let sidecar_path = dir.path().join("sidecar.toml");
    std::fs::write(&sidecar_path, sidecar_config(&plaid)).unwrap();
    let mut sidecar = SidecarProcess::start_with_env(
        &sidecar_path,
        &[("PLAID_CLIENT_ID", &client_id), ("PLAID_SECRET", SECRET)],
    );

    let pg = PostgresServer::shared();
    let db = pg.create_database();
    let token = plaid.plaid().access_token(1);
    pg.psql(
        &db,
        &format!(
            "CREATE TABLE linked_items (user_id text PRIMARY KEY, access_token text NOT NULL);
             INSERT INTO linked_items VALUES ('u1', '{token}');"
        ),
    );
    let gateway_path = dir.path().join("gateway.toml");
    std::fs::write(&gateway_path, gateway_config(&pg.url_for(&db), &sidecar)).unwrap();
    // The gateway gets no Plaid credentials at all.
    let gw = GatewayProcess::serve_with_env(&gateway_path, &[("RUST_LOG", "debug")]);
    let mut client = gw.client().await;

    let accounts = data::accounts(plaid.seed(), 1).len() as i64;
    let response = client.get_features(request()).await.unwrap().into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 3]);
    assert_eq!(response.values[0], s(&token));
    assert_eq!(response.values[1], i(accounts));

    // The sidecar dies: its features fail at once, the rest is served.
    sidecar.kill();
    let started = Instant::now();
    let response = client.get_features(request()).await.unwrap().into_inner();
    assert_eq!(
        statuses(&response.statuses),
        [St::Present, St::SourceError, St::SourceError]
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Back on the same address: served again, the gateway untouched.
    sidecar.restart();
    let mut recovered = false;
    for _ in 0..50 {
        let response = client.get_features(request()).await.unwrap().into_inner();
        if statuses(&response.statuses) == [St::Present; 3] {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the sidecar's features did not come back:\n{}",
        gw.log()
    );
    assert!(!gw.log().contains(SECRET));
}
