//! End-to-end: `grpc.health.v1` of the real binary follows its sources' health checks. A source
//! marked `required` failing its check (the fake device API answering its `health_path` with
//! errors) turns the gateway NOT_SERVING, and SERVING again once the check passes; a source not
//! marked `required` failing changes nothing but its own `feature_gateway_source_up`. On SIGTERM
//! a health watcher is told NOT_SERVING while the gateway still finishes a call in flight.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::{GatewayProcess, eventually, map, s, statuses};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{Latency, RouteFaults},
    internal::{DEVICE_REPUTATION, MERCHANT_RISK},
    records::RECORD_GET,
};
use proto::v1::{self, FeatureStatus as St};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn setup() -> (FakeServer, GatewayProcess, tempfile::TempDir) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[entities.device_id]
type = "string"
[entities.merchant_id]
type = "string"
[entities.doc_id]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "5s"
required = true
health_path = "/v1/devices/d_000001/reputation"

[sources.merchants]
kind = "http"
base_url = "{base}"
timeout = "5s"
health_path = "/v1/merchants/m_00001/risk"

[sources.records]
kind = "http"
base_url = "{base}"
timeout = "5s"

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}

[views.merchant]
source = "merchants"
entities = ["merchant_id"]
path = "/v1/merchants/{{merchant_id}}/risk"
features = {{ chargeback_rate = {{ type = "double" }} }}

[views.doc]
source = "records"
entities = ["doc_id"]
path = "/v1/records/docs/{{doc_id}}"
features = {{ v = {{ type = "int64" }} }}

[feature_services.score]
deadline = "5s"
features = ["device:risk_score", "merchant:chargeback_rate"]

[feature_services.doc]
deadline = "5s"
features = ["doc:v"]
"#,
        base = fake.base_url(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gw = GatewayProcess::serve(&path);
    (fake, gw, dir)
}

fn failing() -> RouteFaults {
    RouteFaults {
        error_rate: 1.0,
        error_status: 503,
        ..Default::default()
    }
}

/// The status of `service` ("" for the whole server) now.
async fn status(gw: &GatewayProcess, service: &str) -> ServingStatus {
    let response = HealthClient::new(gw.channel().await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

/// Waits until both the server and the feature service report `want`.
async fn reaches(gw: &GatewayProcess, want: ServingStatus) {
    eventually(Duration::from_secs(30), want.as_str_name(), async || {
        let now = (
            status(gw, "").await,
            status(gw, "featuregateway.v1.FeatureService").await,
        );
        if now == (want, want) {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_failing_required_source_turns_health_not_serving_and_back() {
    let (fake, gw, _dir) = setup().await;
    reaches(&gw, ServingStatus::Serving).await;

    // A source that is not required fails its check: seen down, health unchanged.
    fake.set_faults(MERCHANT_RISK, failing()).unwrap();
    let up = "feature_gateway_source_up{source=\"merchants\"}";
    gw.metric_until(up, Duration::from_secs(30), |v| v == 0.0)
        .await;
    assert_eq!(status(&gw, "").await, ServingStatus::Serving);
    fake.set_faults(MERCHANT_RISK, RouteFaults::default())
        .unwrap();
    gw.metric_until(up, Duration::from_secs(30), |v| v == 1.0)
        .await;

    // The required one fails its check: NOT_SERVING, on the server and the service.
    let checks = fake.stats().calls(DEVICE_REPUTATION);
    fake.set_faults(DEVICE_REPUTATION, failing()).unwrap();
    reaches(&gw, ServingStatus::NotServing).await;
    assert!(fake.stats().calls(DEVICE_REPUTATION) > checks);
    let devices_up = "feature_gateway_source_up{source=\"devices\"}";
    assert_eq!(gw.metric(devices_up).await, Some(0.0));
    // Health is advice to the balancer: a call is still answered, its failing feature marked.
    let response = gw
        .client()
        .await
        .get_features(v1::GetFeaturesRequest {
            feature_service: "score".into(),
            entities: map(&[("device_id", s("d_000001")), ("merchant_id", s("m_00001"))]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::SourceError, St::Present]);

    // The check passes again: SERVING.
    fake.set_faults(DEVICE_REPUTATION, RouteFaults::default())
        .unwrap();
    reaches(&gw, ServingStatus::Serving).await;
    assert_eq!(gw.metric(devices_up).await, Some(1.0));
    assert!(
        gw.log().contains("source health check failed"),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn on_sigterm_a_watcher_is_told_not_serving_while_a_call_is_still_in_flight() {
    let (fake, mut gw, _dir) = setup().await;
    reaches(&gw, ServingStatus::Serving).await;
    let mut watch = HealthClient::new(gw.channel().await)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // A call held by the upstream (the record API, which no health check calls) for 2 s, in
    // flight when SIGTERM comes.
    let mut document = serde_json::Map::new();
    document.insert("v".into(), 7.into());
    fake.records().put("docs", "a", document);
    fake.set_faults(
        RECORD_GET,
        RouteFaults {
            latency: Latency::Fixed { ms: 2000.0 },
            ..Default::default()
        },
    )
    .unwrap();
    let mut client = gw.client().await;
    let in_flight = tokio::spawn(async move {
        client
            .get_features(v1::GetFeaturesRequest {
                feature_service: "doc".into(),
                entities: map(&[("doc_id", s("a"))]),
                ..Default::default()
            })
            .await
    });
    eventually(
        Duration::from_secs(20),
        "the call reached the upstream",
        async || match fake.stats().calls(RECORD_GET) {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    gw.terminate();

    // The watcher hears NOT_SERVING; the call in flight is still answered.
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a health update after SIGTERM")
        .expect("the watch stream is still open")
        .expect("an update, not the end of the stream");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert!(
        !in_flight.is_finished(),
        "the call ended before NOT_SERVING"
    );
    drop(watch);
    let response = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present]);
    assert_eq!(response.values[0], end_to_end::i(7));
    let (exit, gw) = tokio::task::spawn_blocking(move || (gw.wait(Duration::from_secs(20)), gw))
        .await
        .unwrap();
    assert!(exit.expect("the gateway exits").success(), "{}", gw.log());
}
