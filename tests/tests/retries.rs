//! End-to-end: retries of the real binary against the fake device API, every attempt counted
//! at the fake. Only failures the fetcher calls retryable are retried (a 400 or a 429 is called
//! once; a 503 up to `max_attempts` times), and under an outage the retry budget caps the extra
//! calls at its share of the calls.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::{GatewayProcess, map, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{FailNext, RouteFaults},
    internal::DEVICE_REPUTATION,
};
use proto::v1::{self, FeatureStatus as St};

const RETRIES: &str = "feature_gateway_source_retries_total{source=\"devices\"}";
const REFUSED: &str = "feature_gateway_source_retries_refused_total{source=\"devices\"}";

async fn setup(retry: &str) -> (FakeServer, GatewayProcess, tempfile::TempDir) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[entities.device_id]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "5s"
[sources.devices.retry]
{retry}

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}

[feature_services.score]
deadline = "5s"
features = ["device:risk_score"]
"#,
        base = fake.base_url(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gw = GatewayProcess::serve(&path);
    (fake, gw, dir)
}

/// The status and the metadata's detail of one call for device `n`.
async fn call(gw: &GatewayProcess, n: u64) -> (St, String) {
    let request = v1::GetFeaturesRequest {
        feature_service: "score".into(),
        entities: map(&[("device_id", s(&format!("d_{n:06}")))]),
        include_metadata: true,
        ..Default::default()
    };
    let response = gw
        .client()
        .await
        .get_features(with_timeout(request, Duration::from_secs(20)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()))
        .into_inner();
    (
        statuses(&response.statuses)[0],
        response.metadata[0].detail.clone(),
    )
}

fn fail_next(fake: &FakeServer, count: u32, status: u16) {
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            fail_next: Some(FailNext { count, status }),
            ..Default::default()
        },
    )
    .unwrap();
}

#[tokio::test]
async fn only_retryable_failures_are_retried() {
    // A budget of ten retries per call: only the errors' kinds decide here.
    let (fake, gw, _dir) =
        setup("max_attempts = 3\nbackoff = \"1ms\"\nbudget_percent = 10.0").await;
    let calls = || fake.stats().calls(DEVICE_REPUTATION);

    // A request the upstream rejects (400) is not retried: one call.
    fail_next(&fake, 1, 400);
    assert_eq!(call(&gw, 1).await, (St::SourceError, "rejected".into()));
    assert_eq!(calls(), 1);
    // Nor is a rate limit (429): retrying would only add to it.
    fail_next(&fake, 1, 429);
    assert_eq!(call(&gw, 2).await, (St::SourceError, "rate_limited".into()));
    assert_eq!(calls(), 2);
    assert_eq!(gw.metric(RETRIES).await, Some(0.0));

    // An unavailable upstream (503) is retried: two failures, then the answer.
    fail_next(&fake, 2, 503);
    assert_eq!(call(&gw, 3).await, (St::Present, String::new()));
    assert_eq!(calls(), 5);
    assert_eq!(gw.metric(RETRIES).await, Some(2.0));
    // At most `max_attempts` in all.
    fail_next(&fake, 5, 503);
    assert_eq!(call(&gw, 4).await, (St::SourceError, "unavailable".into()));
    assert_eq!(calls(), 8);
    assert_eq!(gw.metric(RETRIES).await, Some(4.0));
    assert_eq!(gw.metric(REFUSED).await, Some(0.0));
}

#[tokio::test]
async fn under_an_outage_the_budget_caps_the_retries() {
    // Retries at most a quarter of the calls.
    let (fake, gw, _dir) =
        setup("max_attempts = 2\nbackoff = \"1ms\"\nbudget_percent = 0.25").await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            error_rate: 1.0,
            error_status: 503,
            ..Default::default()
        },
    )
    .unwrap();
    let calls = 40;
    for n in 0..calls {
        assert_eq!(call(&gw, n).await, (St::SourceError, "unavailable".into()));
    }
    let retries = gw.metric(RETRIES).await.unwrap() as u64;
    let refused = gw.metric(REFUSED).await.unwrap() as u64;
    // Every call failed once and asked for a retry; the budget granted a quarter at most.
    assert_eq!(retries + refused, calls);
    assert!(
        (1..=calls / 4).contains(&retries),
        "{retries} retries for {calls} calls"
    );
    // Counted at the upstream: the calls and the retries the budget allowed, nothing more.
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), calls + retries);
}
