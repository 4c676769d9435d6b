//! End-to-end: the real gateway with a `sidecar` source, calling the real `fetcher-sidecar`
//! process that hosts an `http` source (the fake device-reputation API). The sidecar alone holds
//! the API token (`${SIDECAR_TOKEN}`, set only in its environment). A slow upstream costs its
//! own features only; a killed sidecar is a SOURCE_ERROR at once, and the gateway serves the
//! features again when the sidecar is back, without a restart.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    path::Path,
    time::{Duration, Instant},
};

use end_to_end::{GatewayProcess, d, map, s, sidecar::SidecarProcess, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{Latency, RouteFaults},
    internal::{DEVICE_REPUTATION, device_reputation},
};
use proto::v1::{self, FeatureStatus as St};

/// Only the sidecar's process gets it; it must never show up on the gateway's side.
const TOKEN: &str = "sk-sidecar-7f3a9c1e-only-in-the-sidecar";

const ENTITIES: &str = r#"
[entities.device_id]
type = "string"
[entities.merchant_id]
type = "string"
"#;

const DEVICE_FEATURES: &str = r#"
[views.device.features]
risk_score = { type = "double" }
is_emulator = { type = "bool" }
accounts_30d = { type = "int64" }
"#;

/// The sidecar's configuration: the real `http` source, with the secret header.
fn sidecar_config(fake: &FakeServer) -> String {
    format!(
        r#"{ENTITIES}
[sources.devices]
kind = "http"
base_url = "{base}"
headers = {{ Authorization = "Bearer ${{SIDECAR_TOKEN}}" }}

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
fields = {{ accounts_30d = "/accounts_seen_30d" }}
{DEVICE_FEATURES}"#,
        base = fake.base_url()
    )
}

/// The gateway's configuration: the same view, read from the sidecar at `target`
/// (`address = ...` or `unix_socket = ...`).
fn gateway_config(target: &str, deadline: &str) -> String {
    format!(
        r#"{ENTITIES}
[sources.tables]
kind = "static"
[sources.devices]
kind = "sidecar"
{target}
connect_timeout = "250ms"
[sources.request]
kind = "request"

[views.merchants]
source = "tables"
entities = ["merchant_id"]
path = "merchants.csv"
features = {{ risk = {{ type = "double" }} }}

[views.device]
source = "devices"
entities = ["device_id"]
{DEVICE_FEATURES}
[views.txn]
source = "request"
features = {{ amount = {{ type = "double" }} }}

[feature_services.score]
deadline = "{deadline}"
features = ["txn:amount", "merchants:risk", "device:risk_score", "device:is_emulator", "device:accounts_30d"]
"#
    )
}

struct Setup {
    fake: FakeServer,
    sidecar: SidecarProcess,
    gw: GatewayProcess,
    _dir: tempfile::TempDir,
}

fn write_configs(dir: &Path, fake: &FakeServer) -> std::path::PathBuf {
    // The test process itself must not hold the secret: the gateway inherits its environment.
    assert!(std::env::var_os("SIDECAR_TOKEN").is_none());
    std::fs::write(dir.join("merchants.csv"), "merchant_id,risk\nm1,0.25\n").unwrap();
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, sidecar_config(fake)).unwrap();
    path
}

async fn setup(deadline: &str) -> Setup {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar_path = write_configs(dir.path(), &fake);
    let sidecar = SidecarProcess::start_with_env(&sidecar_path, &[("SIDECAR_TOKEN", TOKEN)]);
    let gateway_path = dir.path().join("gateway.toml");
    let target = format!("address = \"{}\"", sidecar.uri());
    std::fs::write(&gateway_path, gateway_config(&target, deadline)).unwrap();
    let gw = GatewayProcess::serve(&gateway_path);
    Setup {
        fake,
        sidecar,
        gw,
        _dir: dir,
    }
}

fn request(device: &str) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: "score".into(),
        entities: map(&[("device_id", s(device)), ("merchant_id", s("m1"))]),
        context: map(&[("amount", d(20.0))]),
        include_metadata: true,
        ..Default::default()
    }
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(!text.contains(TOKEN), "the secret appears in {what}");
}

#[tokio::test]
async fn values_come_through_the_sidecar_and_the_secret_stays_there() {
    let Setup {
        fake,
        sidecar,
        gw,
        _dir,
    } = setup("2s").await;
    let mut client = gw.client().await;
    let response = client
        .get_features(request("d_000042"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 5]);
    let expected = device_reputation(fake.seed(), fake.population(), "d_000042").unwrap();
    assert_eq!(
        response.values[2],
        d(expected["risk_score"].as_f64().unwrap())
    );
    assert_eq!(
        response.values[4],
        end_to_end::i(expected["accounts_seen_30d"].as_i64().unwrap())
    );
    assert_eq!(response.metadata[2].source_kind, "sidecar");
    assert_no_secret("a response", &format!("{response:?}"));

    // The upstream's 404 crosses the sidecar as a row that is not found.
    let response = client
        .get_features(request("d_999999"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses(&response.statuses),
        [
            St::Present,
            St::Present,
            St::NotFound,
            St::NotFound,
            St::NotFound
        ]
    );
    assert_no_secret("a response", &format!("{response:?}"));
    assert_no_secret("the gateway's log", &gw.log());
    assert_no_secret("the sidecar's log", &sidecar.log());
    assert!(fake.stats().calls(DEVICE_REPUTATION) >= 2);
}

#[tokio::test]
async fn a_slow_upstream_times_out_inside_the_gateways_deadline() {
    // Every part is bound: what a `..` pattern leaves out is dropped (and stopped) at once.
    let Setup {
        fake,
        sidecar: _sidecar,
        gw,
        _dir,
    } = setup("300ms").await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::Fixed { ms: 3_000.0 },
            ..Default::default()
        },
    )
    .unwrap();
    let mut client = gw.client().await;
    let started = Instant::now();
    let response = client
        .get_features(with_timeout(request("d_000042"), Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    assert_eq!(
        statuses(&response.statuses),
        [
            St::Present,
            St::Present,
            St::TimedOut,
            St::TimedOut,
            St::TimedOut
        ]
    );
    assert_eq!(response.metadata[2].detail, "timeout");
    // At the feature service's deadline, not after the upstream's 3 s.
    assert!(elapsed < Duration::from_millis(2_500), "took {elapsed:?}");
}

#[tokio::test]
async fn a_killed_sidecar_is_a_source_error_at_once_and_is_served_again_when_back() {
    let Setup {
        fake: _fake,
        mut sidecar,
        gw,
        _dir,
    } = setup("3s").await;
    let mut client = gw.client().await;
    let response = client
        .get_features(request("d_000042"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses(&response.statuses),
        [St::Present; 5],
        "{:?}\n{}",
        response.metadata,
        gw.log()
    );

    sidecar.kill();
    let started = Instant::now();
    let response = client
        .get_features(with_timeout(request("d_000042"), Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    // A failure, not a wait for the 3 s deadline: the other features are served meanwhile.
    assert_eq!(
        statuses(&response.statuses),
        [
            St::Present,
            St::Present,
            St::SourceError,
            St::SourceError,
            St::SourceError
        ]
    );
    assert_eq!(response.metadata[2].detail, "unavailable");
    assert!(elapsed < Duration::from_millis(2_000), "took {elapsed:?}");

    // Back on the same port: the same gateway serves the features again.
    sidecar.restart();
    let started = Instant::now();
    loop {
        let response = client
            .get_features(request("d_000042"))
            .await
            .unwrap()
            .into_inner();
        if statuses(&response.statuses) == [St::Present; 5] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still {:?} after the restart; sidecar log:\n{}",
            statuses(&response.statuses),
            sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_no_secret("the gateway's log", &gw.log());
}

#[tokio::test]
async fn a_sidecar_on_a_unix_socket() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sidecar_path = write_configs(dir.path(), &fake);
    let socket = dir.path().join("devices.sock");
    let sidecar = SidecarProcess::start_unix(&sidecar_path, &socket, &[("SIDECAR_TOKEN", TOKEN)]);
    let gateway_path = dir.path().join("gateway.toml");
    let target = format!("unix_socket = {:?}", socket.to_str().unwrap());
    std::fs::write(&gateway_path, gateway_config(&target, "2s")).unwrap();
    let gw = GatewayProcess::serve(&gateway_path);
    let response = gw
        .client()
        .await
        .get_features(request("d_000042"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 5]);
    drop(sidecar);
}
