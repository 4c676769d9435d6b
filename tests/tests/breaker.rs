//! End-to-end: the circuit breaker of the real binary in front of the fake device API. A source
//! failing repeatedly opens its circuit: `feature_gateway_circuit_state` turns 1, calls stop
//! reaching the upstream (counted at the fake itself), answers come back at once as
//! SOURCE_ERROR `circuit_open` or STALE from the cache. Once `open_for` has passed, one probe
//! goes through: a failing probe opens the circuit again, a succeeding one closes it.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{GatewayProcess, eventually, map, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{Latency, RouteFaults},
    internal::DEVICE_REPUTATION,
};
use proto::v1::{self, FeatureStatus as St};

/// The feature service's deadline.
const DEADLINE: Duration = Duration::from_secs(3);
/// How long a failing upstream call takes: an answer sooner than this never reached it.
const FAILING_LATENCY: Duration = Duration::from_millis(1500);
const CIRCUIT: &str = "feature_gateway_circuit_state{source=\"devices\"}";

async fn setup() -> (FakeServer, GatewayProcess, tempfile::TempDir) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[entities.device_id]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "{deadline}ms"
[sources.devices.cache]
ttl = "100ms"
max_staleness = "1h"
[sources.devices.circuit_breaker]
consecutive_failures = 3
open_for = "2s"
half_open_probes = 1

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}

[feature_services.score]
deadline = "{deadline}ms"
features = ["device:risk_score"]
"#,
        base = fake.base_url(),
        deadline = DEADLINE.as_millis(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gw = GatewayProcess::serve(&path);
    (fake, gw, dir)
}

struct Answer {
    status: St,
    detail: String,
    value: v1::Value,
    elapsed: Duration,
}

async fn call(gw: &GatewayProcess, device: &str) -> Answer {
    let request = v1::GetFeaturesRequest {
        feature_service: "score".into(),
        entities: map(&[("device_id", s(device))]),
        include_metadata: true,
        ..Default::default()
    };
    let started = Instant::now();
    let response = gw
        .client()
        .await
        .get_features(with_timeout(request, Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()))
        .into_inner();
    Answer {
        status: statuses(&response.statuses)[0],
        detail: response.metadata[0].detail.clone(),
        value: response.values[0].clone(),
        elapsed: started.elapsed(),
    }
}

fn failing() -> RouteFaults {
    RouteFaults {
        latency: Latency::Fixed {
            ms: FAILING_LATENCY.as_millis() as f64,
        },
        error_rate: 1.0,
        error_status: 503,
        ..Default::default()
    }
}

fn upstream_calls(fake: &FakeServer) -> u64 {
    fake.stats().calls(DEVICE_REPUTATION)
}

#[tokio::test]
async fn repeated_failures_open_the_circuit_and_a_probe_closes_it_when_the_upstream_heals() {
    let (fake, gw, _dir) = setup().await;
    assert_eq!(gw.metric(CIRCUIT).await, Some(0.0));
    // A value in the cache, to be served stale later.
    let cached = call(&gw, "d_000001").await;
    assert_eq!(cached.status, St::Present);
    assert_eq!(upstream_calls(&fake), 1);

    // Three failures in a row, each reaching the upstream, open the circuit.
    fake.set_faults(DEVICE_REPUTATION, failing()).unwrap();
    for n in 0..3 {
        let answer = call(&gw, &format!("d_00001{n}")).await;
        assert_eq!(
            (answer.status, answer.detail.as_str()),
            (St::SourceError, "unavailable")
        );
        assert!(answer.elapsed >= FAILING_LATENCY, "{:?}", answer.elapsed);
    }
    assert_eq!(upstream_calls(&fake), 4);
    assert_eq!(gw.metric(CIRCUIT).await, Some(1.0));

    // Open: answered at once, without calling the upstream; a cached value is served stale.
    for n in 0..5 {
        let answer = call(&gw, &format!("d_00002{n}")).await;
        assert_eq!(
            (answer.status, answer.detail.as_str()),
            (St::SourceError, "circuit_open")
        );
        assert!(answer.elapsed < FAILING_LATENCY, "{:?}", answer.elapsed);
    }
    let stale = call(&gw, "d_000001").await;
    assert_eq!(stale.status, St::Stale);
    assert_eq!(stale.value, cached.value);
    assert!(stale.elapsed < FAILING_LATENCY, "{:?}", stale.elapsed);
    assert_eq!(upstream_calls(&fake), 4, "calls reached an open circuit");

    // After `open_for`, one probe reaches the upstream; it fails, and the circuit opens again.
    let probe = eventually(Duration::from_secs(20), "a probe", async || {
        let answer = call(&gw, "d_000030").await;
        match answer.detail.as_str() {
            "circuit_open" => Err(format!("{:?}", answer.elapsed)),
            _ => Ok(answer),
        }
    })
    .await;
    assert_eq!(
        (probe.status, probe.detail.as_str()),
        (St::SourceError, "unavailable")
    );
    assert_eq!(upstream_calls(&fake), 5);
    assert_eq!(gw.metric(CIRCUIT).await, Some(1.0));
    let answer = call(&gw, "d_000031").await;
    assert_eq!(answer.detail, "circuit_open");
    assert_eq!(upstream_calls(&fake), 5);

    // The upstream heals: the next probe succeeds and closes the circuit.
    fake.set_faults(DEVICE_REPUTATION, RouteFaults::default())
        .unwrap();
    let healed = eventually(Duration::from_secs(20), "the circuit closed", async || {
        let answer = call(&gw, "d_000032").await;
        match answer.detail.as_str() {
            "circuit_open" => Err(format!("{:?}", answer.elapsed)),
            _ => Ok(answer),
        }
    })
    .await;
    assert_eq!(healed.status, St::Present, "{}", healed.detail);
    assert_eq!(upstream_calls(&fake), 6, "one probe");
    assert_eq!(gw.metric(CIRCUIT).await, Some(0.0));
    // Closed: calls reach the upstream again.
    assert_eq!(call(&gw, "d_000033").await.status, St::Present);
    assert_eq!(upstream_calls(&fake), 7);
    let fresh = call(&gw, "d_000001").await;
    assert_eq!((fresh.status, fresh.value), (St::Present, cached.value));
    assert_eq!(upstream_calls(&fake), 8);
    assert!(gw.log().contains("circuit opened"), "{}", gw.log());
}
