//! End-to-end: `grpc.health.v1` of the real binary follows its sources' health checks. A source
//! marked `required` failing its check (the fake device API answering its `health_path` with
//! errors) turns the gateway NOT_SERVING, and SERVING again once the check passes; a source not
//! marked `required` failing changes nothing but its own `feature_gateway_source_up`. On SIGTERM
//! a health watcher is told NOT_SERVING while the gateway still finishes a call in flight, then
//! its stream ends, so a watcher that keeps its stream open (a load balancer does) cannot hold the
//! shutdown open: the gateway exits 0.
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

/// The feature services' deadline and the sources' timeout: a call in flight at SIGTERM ends
/// within it, so the gateway exits within it after the signal.
const DEADLINE: Duration = Duration::from_secs(5);

/// How long the shutdown may take on a loaded machine: the call in flight's [`DEADLINE`], with
/// room for a busy scheduler. It bounds a hang, not a speed.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(4 * DEADLINE.as_secs());

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
timeout = "{deadline}s"
required = true
health_path = "/v1/devices/d_000001/reputation"

[sources.merchants]
kind = "http"
base_url = "{base}"
timeout = "{deadline}s"
health_path = "/v1/merchants/m_00001/risk"

[sources.records]
kind = "http"
base_url = "{base}"
timeout = "{deadline}s"

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
deadline = "{deadline}s"
features = ["device:risk_score", "merchant:chargeback_rate"]

[feature_services.doc]
deadline = "{deadline}s"
features = ["doc:v"]
"#,
        base = fake.base_url(),
        deadline = DEADLINE.as_secs(),
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

    // The watcher hears NOT_SERVING while the call in flight is still held.
    let next = tokio::time::timeout(SHUTDOWN_BOUND, watch.message())
        .await
        .expect("a health update after SIGTERM")
        .expect("the watch stream is still open")
        .expect("an update, not the end of the stream");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    assert!(
        !in_flight.is_finished(),
        "the call ended before NOT_SERVING"
    );
    // The watch stays open, read to its end by a task, while the gateway shuts down.
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Some(update) = watch.message().await? {
            rest.push(update.status);
        }
        Ok::<_, tonic::Status>(rest)
    });
    // The call in flight is answered, then the gateway exits 0 with the watch still open.
    let response = in_flight.await.unwrap().unwrap().into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present]);
    assert_eq!(response.values[0], end_to_end::i(7));
    let (exit, gw) = tokio::task::spawn_blocking(move || (gw.wait(SHUTDOWN_BOUND), gw))
        .await
        .unwrap();
    let exit = exit.unwrap_or_else(|| {
        panic!(
            "the gateway did not exit within {SHUTDOWN_BOUND:?} of SIGTERM with a health watch \
             open: {}",
            gw.log()
        )
    });
    assert!(exit.success(), "{exit}: {}", gw.log());
    // The stream ended cleanly after NOT_SERVING, nothing after it.
    let rest = tokio::time::timeout(SHUTDOWN_BOUND, rest)
        .await
        .expect("the watch stream ends")
        .unwrap();
    assert_eq!(rest.unwrap(), Vec::<i32>::new());
}
