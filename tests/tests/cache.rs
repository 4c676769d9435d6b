//! End-to-end: the per-source cache of the real binary in front of the fake device API. A value
//! within its TTL needs no upstream call; past its TTL, a failing upstream is covered by the
//! stale value (status STALE, with its age); a call that misses the deadline fills the cache for
//! the next request.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::{GatewayProcess, eventually, map, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{FailNext, Latency, RouteFaults},
    internal::DEVICE_REPUTATION,
};
use proto::v1::{self, CacheOutcome, FeatureStatus as St};

async fn setup(ttl: &str) -> (FakeServer, GatewayProcess, tempfile::TempDir) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[entities.device_id]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "2s"
[sources.devices.cache]
ttl = "{ttl}"
max_staleness = "1h"

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}

[feature_services.score]
deadline = "200ms"
features = ["device:risk_score"]
"#,
        base = fake.base_url()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gw = GatewayProcess::serve(&path);
    (fake, gw, dir)
}

fn request() -> tonic::Request<v1::GetFeaturesRequest> {
    with_timeout(
        v1::GetFeaturesRequest {
            feature_service: "score".into(),
            entities: map(&[("device_id", s("d_000042"))]),
            include_metadata: true,
            ..Default::default()
        },
        Duration::from_secs(2),
    )
}

#[tokio::test]
async fn within_ttl_no_upstream_call_and_past_it_a_failure_is_served_stale() {
    let (fake, gw, _dir) = setup("300ms").await;
    let mut client = gw.client().await;
    let first = client.get_features(request()).await.unwrap().into_inner();
    assert_eq!(statuses(&first.statuses), [St::Present]);
    assert_eq!(first.metadata[0].cache, CacheOutcome::Miss as i32);
    let second = client.get_features(request()).await.unwrap().into_inner();
    assert_eq!(second.metadata[0].cache, CacheOutcome::Hit as i32);
    assert_eq!(second.values, first.values);
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 1);

    // Past the TTL the upstream fails: the last value is served, marked STALE, with its age.
    // Until then every answer is a hit, and the upstream is not called.
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            fail_next: Some(FailNext {
                count: 1,
                status: 503,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let stale = eventually(Duration::from_secs(10), "the TTL passed", async || {
        let answer = client.get_features(request()).await.unwrap().into_inner();
        match statuses(&answer.statuses)[..] {
            [St::Stale] => Ok(answer),
            [St::Present] if answer.metadata[0].cache == CacheOutcome::Hit as i32 => {
                Err(format!("{:?}", answer.metadata[0]))
            }
            _ => panic!("neither a hit nor stale: {answer:?}"),
        }
    })
    .await;
    assert_eq!(stale.values, first.values);
    // At least the TTL old.
    assert!(stale.metadata[0].age_ms >= 300, "{:?}", stale.metadata[0]);
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 2);
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains("feature_gateway_cache_stale_served_total{source=\"devices\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_call_that_misses_the_deadline_fills_the_cache_for_the_next_request() {
    let (fake, gw, _dir) = setup("1h").await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::Fixed { ms: 600.0 },
            ..Default::default()
        },
    )
    .unwrap();
    let mut client = gw.client().await;
    let first = client.get_features(request()).await.unwrap().into_inner();
    assert_eq!(statuses(&first.statuses), [St::TimedOut]);
    // The upstream answers after 600 ms; from then on the value is served from the cache.
    // Calls before that wait on the same upstream call: they time out too, or are answered by
    // it when it ends inside their deadline.
    eventually(
        Duration::from_secs(10),
        "the late answer cached",
        async || {
            let answer = client.get_features(request()).await.unwrap().into_inner();
            match statuses(&answer.statuses)[..] {
                [St::Present] => Ok(()),
                [St::TimedOut] => Err("timed out".to_owned()),
                _ => panic!("{answer:?}"),
            }
        },
    )
    .await;
    let second = client.get_features(request()).await.unwrap().into_inner();
    assert_eq!(statuses(&second.statuses), [St::Present]);
    assert_eq!(second.metadata[0].cache, CacheOutcome::Hit as i32);
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 1, "{}", gw.log());
}
