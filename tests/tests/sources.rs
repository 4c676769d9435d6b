//! End-to-end: the real binary with an HTTP source (the fake device-reputation API, with latency
//! and error injection) beside a static table and the request context. A slow or failing source
//! costs its own features only; a graceful shutdown finishes the calls in flight.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{GatewayProcess, d, map, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{FailNext, Latency, RouteFaults},
    internal::{DEVICE_REPUTATION, device_reputation},
};
use proto::v1::{self, FeatureStatus as St};

fn config(fake: &FakeServer, deadline: &str) -> String {
    format!(
        r#"
[entities.device_id]
type = "string"
[entities.merchant_id]
type = "string"

[sources.tables]
kind = "static"
[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "5s"
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
path = "/v1/devices/{{device_id}}/reputation"
fields = {{ accounts_30d = "/accounts_seen_30d" }}
[views.device.features]
risk_score = {{ type = "double" }}
is_emulator = {{ type = "bool" }}
accounts_30d = {{ type = "int64" }}

[views.txn]
source = "request"
features = {{ amount = {{ type = "double" }} }}

[feature_services.score]
deadline = "{deadline}"
features = ["txn:amount", "merchants:risk", "device:risk_score", "device:is_emulator", "device:accounts_30d"]
[feature_services.score.defaults]
"device:risk_score" = 0.5
"#,
        base = fake.base_url()
    )
}

async fn setup(deadline: &str) -> (FakeServer, GatewayProcess, tempfile::TempDir) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("merchants.csv"),
        "merchant_id,risk\nm1,0.25\n",
    )
    .unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&fake, deadline)).unwrap();
    let gw = GatewayProcess::serve(&path);
    (fake, gw, dir)
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

fn slow(ms: f64) -> RouteFaults {
    RouteFaults {
        latency: Latency::Fixed { ms },
        ..Default::default()
    }
}

#[tokio::test]
async fn http_source_values_are_the_upstreams() {
    let (fake, gw, _dir) = setup("1s").await;
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
    let accounts = expected["accounts_seen_30d"].as_i64().unwrap();
    assert_eq!(response.values[4], end_to_end::i(accounts));
    assert_eq!(response.metadata[2].source_kind, "http");

    // An unknown device is NOT_FOUND (the API's 404), with the default where one is set.
    let response = client
        .get_features(request("d_999999"))
        .await
        .unwrap()
        .into_inner();
    let st = statuses(&response.statuses);
    assert_eq!(
        st,
        [
            St::Present,
            St::Present,
            St::NotFound,
            St::NotFound,
            St::NotFound
        ]
    );
    assert_eq!(response.values[2], d(0.5));
    // A key full of URL syntax is one path segment, i.e. just an unknown device.
    let response = client
        .get_features(request("../../admin/reset?x=1#"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses)[2], St::NotFound);
    assert_eq!(fake.stats().calls("admin"), 0);
}

/// Slack over a deadline for a loaded 2-core machine running debug binaries: a correctness
/// bound, not a speed claim.
const MARGIN: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_slow_source_times_out_inside_the_deadline_while_the_others_are_served() {
    // The feature service's deadline; the upstream takes far longer.
    let deadline = Duration::from_millis(1500);
    let (fake, gw, _dir) = setup(&format!("{}ms", deadline.as_millis())).await;
    fake.set_faults(DEVICE_REPUTATION, slow(30_000.0)).unwrap();
    let mut client = gw.client().await;
    let started = Instant::now();
    let response = client
        .get_features(with_timeout(request("d_000042"), Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner();
    let elapsed = started.elapsed();
    let st = statuses(&response.statuses);
    assert_eq!(
        st,
        [
            St::Present,
            St::Present,
            St::TimedOut,
            St::TimedOut,
            St::TimedOut
        ]
    );
    // The default is served for the timed-out feature that has one, still marked TIMED_OUT.
    assert_eq!(response.values[2], d(0.5));
    assert!(response.metadata[2].default_applied);
    assert_eq!(response.metadata[2].detail, "timeout");
    // Answered at the feature service's deadline, not after the upstream's 30 s.
    assert!(elapsed < deadline + MARGIN, "took {elapsed:?}");

    // The caller's own deadline, when earlier, is the one that applies. The gateway answers 5 ms
    // before it, so on a loaded machine the answer can still reach the caller after its own
    // timer fired (tonic's `Cancelled: Timeout expired`): such calls are repeated, a few times.
    let caller = Duration::from_millis(600);
    let mut late = 0;
    let response = loop {
        match client
            .get_features(with_timeout(request("d_000042"), caller))
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(e)
                if e.code() == tonic::Code::Cancelled
                    && e.message() == "Timeout expired"
                    && late < 4 =>
            {
                late += 1
            }
            Err(e) => panic!("{e} (after {late} calls the caller's timer cut)"),
        }
    };
    // The caller's deadline less what the header's trip took, less 5 ms for the way back: well
    // under the feature service's own deadline.
    let deadline_ms = response.request_metadata.unwrap().deadline_ms;
    let most = caller.as_millis() as i64 - 5;
    let trip = MARGIN.as_millis() as i64 / 2;
    assert!((most - trip..=most).contains(&deadline_ms), "{deadline_ms}");
    assert_eq!(statuses(&response.statuses)[2], St::TimedOut);
}

#[tokio::test]
async fn a_failing_source_is_a_status_not_a_failed_request() {
    let (fake, gw, _dir) = setup("1s").await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            fail_next: Some(FailNext {
                count: 1,
                status: 500,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let mut client = gw.client().await;
    let response = client
        .get_features(request("d_000042"))
        .await
        .unwrap()
        .into_inner();
    let st = statuses(&response.statuses);
    assert_eq!(
        st,
        [
            St::Present,
            St::Present,
            St::SourceError,
            St::SourceError,
            St::SourceError
        ]
    );
    assert_eq!(response.metadata[3].detail, "unavailable");
    // The next call goes through again.
    let response = client
        .get_features(request("d_000042"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 5]);
    assert!(gw.log().contains("fetch failed"), "{}", gw.log());
}

#[tokio::test]
async fn sigterm_finishes_calls_in_flight_then_exits() {
    let (fake, mut gw, _dir) = setup("3s").await;
    fake.set_faults(DEVICE_REPUTATION, slow(600.0)).unwrap();
    let mut client = gw.client().await;
    let in_flight = tokio::spawn(async move { client.get_features(request("d_000042")).await });
    // Let the call reach the slow upstream, then ask the gateway to stop.
    let started = Instant::now();
    while fake.stats().calls(DEVICE_REPUTATION) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the call never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.terminate();
    let response = in_flight
        .await
        .unwrap()
        .expect("the call in flight completes")
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 5]);
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.wait(Duration::from_secs(10));
        (status, gw)
    })
    .await
    .unwrap();
    let (exit, gw) = status;
    assert!(exit.expect("the gateway exits").success(), "{}", gw.log());
    assert!(gw.log().contains("shutting down"));
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(&gw.grpc).await.is_err());
}
