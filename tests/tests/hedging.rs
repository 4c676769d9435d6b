//! End-to-end: hedged requests of the real binary against the fake device API, whose scripted
//! delays make one call slow among fast ones. A call slower than the source's observed p95 gets
//! a second attempt; the first answer wins and the loser is cancelled (the fake sees its caller
//! go away); the budget caps the extra calls; no hedge goes out when the deadline cannot fit
//! it; each attempt needs its own concurrency permit. Every call is counted at the fake.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{GatewayProcess, d, eventually, map, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{DelayNext, Latency, RouteFaults},
    internal::{DEVICE_REPUTATION, device_reputation},
};
use proto::v1::{self, FeatureStatus as St};

const HEDGES: &str = "feature_gateway_source_hedges_total{source=\"devices\"}";
const WON: &str = "feature_gateway_source_hedges_won_total{source=\"devices\"}";
const SKIPPED_BUDGET: &str =
    "feature_gateway_source_hedges_skipped_total{source=\"devices\",reason=\"budget\"}";
const SKIPPED_DEADLINE: &str =
    "feature_gateway_source_hedges_skipped_total{source=\"devices\",reason=\"deadline\"}";
/// A scripted delay far longer than any deadline here: a call held by it never answers in time.
const HELD: Duration = Duration::from_secs(30);

/// A gateway over the fake device API with `hedge` as the source's `[hedge]` section and one
/// feature service per `(name, deadline)`.
async fn setup(
    hedge: &str,
    max_concurrency: u32,
    services: &[(&str, Duration)],
) -> (FakeServer, GatewayProcess, tempfile::TempDir) {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        r#"
[entities.device_id]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "10s"
max_concurrency = {max_concurrency}
[sources.devices.hedge]
{hedge}

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}
"#,
        base = fake.base_url(),
    );
    for (name, deadline) in services {
        config.push_str(&format!(
            "[feature_services.{name}]\ndeadline = \"{}ms\"\nfeatures = [\"device:risk_score\"]\n",
            deadline.as_millis()
        ));
    }
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let gw = GatewayProcess::serve(&path);
    (fake, gw, dir)
}

struct Answer {
    status: St,
    value: v1::Value,
    elapsed: Duration,
}

async fn call(gw: &GatewayProcess, service: &str, n: u64) -> Answer {
    let request = v1::GetFeaturesRequest {
        feature_service: service.into(),
        entities: map(&[("device_id", s(&device(n)))]),
        ..Default::default()
    };
    let started = Instant::now();
    let response = gw
        .client()
        .await
        .get_features(with_timeout(request, Duration::from_secs(20)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()))
        .into_inner();
    Answer {
        status: statuses(&response.statuses)[0],
        value: response.values[0].clone(),
        elapsed: started.elapsed(),
    }
}

fn device(n: u64) -> String {
    format!("d_{n:06}")
}

fn risk_score(fake: &FakeServer, n: u64) -> v1::Value {
    let expected = device_reputation(fake.seed(), fake.population(), &device(n)).unwrap();
    d(expected["risk_score"].as_f64().unwrap())
}

/// The route's next call waits [`HELD`]; the ones after it keep `latency`.
fn hold_next(latency: Latency) -> RouteFaults {
    RouteFaults {
        latency,
        delay_next: Some(DelayNext {
            count: 1,
            ms: HELD.as_millis() as f64,
        }),
        ..Default::default()
    }
}

/// Waits until the fake has seen `n` calls to the route whose callers went away.
async fn cancelled(fake: &FakeServer, n: u64) {
    eventually(Duration::from_secs(20), "cancelled calls", async || {
        let stats = fake.stats().route(DEVICE_REPUTATION);
        if stats.cancelled >= n {
            Ok(())
        } else {
            Err(format!("{stats:?}"))
        }
    })
    .await;
    assert_eq!(fake.stats().route(DEVICE_REPUTATION).cancelled, n);
}

#[tokio::test]
async fn a_call_slower_than_the_p95_is_hedged_and_the_loser_is_cancelled() {
    let deadline = Duration::from_secs(5);
    let (fake, gw, _dir) = setup(
        "after = \"p95\"\nmax_extra = 1\nbudget_percent = 1.0",
        16,
        &[("score", deadline)],
    )
    .await;
    // The first 20 calls teach the gateway the source's latency; none is hedged.
    for n in 0..25 {
        assert_eq!(call(&gw, "score", n).await.status, St::Present);
    }
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 25);
    assert_eq!(gw.metric(HEDGES).await, Some(0.0));

    // The next call is held upstream: past the p95, a second attempt goes out and answers.
    fake.set_faults(DEVICE_REPUTATION, hold_next(Latency::None))
        .unwrap();
    let hedged = call(&gw, "score", 42).await;
    assert_eq!(hedged.status, St::Present);
    assert_eq!(hedged.value, risk_score(&fake, 42));
    assert!(hedged.elapsed < deadline, "{:?}", hedged.elapsed);
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 27, "two attempts");
    assert_eq!(gw.metric(HEDGES).await, Some(1.0));
    assert_eq!(gw.metric(WON).await, Some(1.0));
    // The held first attempt was dropped: the fake saw its caller go away.
    cancelled(&fake, 1).await;

    // Fast calls again: no hedge.
    assert_eq!(call(&gw, "score", 43).await.status, St::Present);
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 28);
    assert_eq!(gw.metric(HEDGES).await, Some(1.0));
}

#[tokio::test]
async fn no_hedge_is_sent_when_the_deadline_cannot_fit_it() {
    // The source's usual latency; a tight service's deadline leaves less than that after the
    // p95, a roomy one's more.
    let latency = Duration::from_millis(300);
    let tight = Duration::from_millis(600);
    let roomy = Duration::from_secs(5);
    let (fake, gw, _dir) = setup(
        "after = \"p95\"\nmax_extra = 1\nbudget_percent = 1.0",
        64,
        &[("tight", tight), ("roomy", roomy)],
    )
    .await;
    let usual = Latency::Fixed {
        ms: latency.as_millis() as f64,
    };
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: usual.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    // 24 calls at once teach the gateway the latency (median and p95 about 300 ms).
    let warm: Vec<_> = (0..24)
        .map(|n| {
            let grpc = gw.grpc.clone();
            tokio::spawn(async move {
                let mut client = v1::feature_service_client::FeatureServiceClient::connect(
                    format!("http://{grpc}"),
                )
                .await
                .unwrap();
                let request = v1::GetFeaturesRequest {
                    feature_service: "roomy".into(),
                    entities: map(&[("device_id", s(&device(n)))]),
                    ..Default::default()
                };
                client
                    .get_features(with_timeout(request, Duration::from_secs(20)))
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
        .collect();
    for call in warm {
        assert_eq!(statuses(&call.await.unwrap().statuses), [St::Present]);
    }
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 24);

    // Tight: at the p95 (past 300 ms) too little of the 600 ms is left for a median-long
    // attempt, so none is sent; the held call times out at the deadline.
    fake.set_faults(DEVICE_REPUTATION, hold_next(usual.clone()))
        .unwrap();
    let answer = call(&gw, "tight", 100).await;
    assert_eq!(answer.status, St::TimedOut);
    assert!(answer.elapsed < HELD, "{:?}", answer.elapsed);
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 25, "one attempt");
    assert_eq!(gw.metric(HEDGES).await, Some(0.0));
    assert_eq!(gw.metric(SKIPPED_DEADLINE).await, Some(1.0));
    cancelled(&fake, 1).await;

    // Roomy: the same held call is hedged, and the hedge answers.
    fake.set_faults(DEVICE_REPUTATION, hold_next(usual))
        .unwrap();
    let answer = call(&gw, "roomy", 101).await;
    assert_eq!(answer.status, St::Present);
    assert_eq!(answer.value, risk_score(&fake, 101));
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), 27, "two attempts");
    assert_eq!(gw.metric(HEDGES).await, Some(1.0));
    assert_eq!(gw.metric(SKIPPED_DEADLINE).await, Some(1.0));
    cancelled(&fake, 2).await;
}

#[tokio::test]
async fn the_budget_caps_the_extra_calls() {
    // Every call is slower than the 20 ms hedge delay, so each would send a hedge; a budget of
    // 25% of calls allows one in four.
    let (fake, gw, _dir) = setup(
        "delay = \"20ms\"\nmax_extra = 1\nbudget_percent = 0.25",
        64,
        &[("score", Duration::from_secs(5))],
    )
    .await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::Fixed { ms: 200.0 },
            ..Default::default()
        },
    )
    .unwrap();
    let calls = 16;
    for n in 0..calls {
        assert_eq!(call(&gw, "score", n).await.status, St::Present);
    }
    let hedges = gw.metric(HEDGES).await.unwrap() as u64;
    let refused = gw.metric(SKIPPED_BUDGET).await.unwrap() as u64;
    assert_eq!(hedges + refused, calls, "every call wanted a hedge");
    assert!(
        (1..=calls / 4).contains(&hedges),
        "{hedges} hedges for {calls} calls"
    );
    // Counted at the fake: the calls and the hedges, nothing more. (Which attempt of a pair
    // lost is not checked here: 20 ms apart, the loser may have answered before it was
    // dropped.)
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), calls + hedges);
}

#[tokio::test]
async fn a_hedge_needs_its_own_concurrency_permit() {
    // One call at a time: the hedge of a held call finds no permit and is refused at once
    // (never reaching the upstream), and the held attempt's answer is the one served.
    let (fake, gw, _dir) = setup(
        "delay = \"20ms\"\nmax_extra = 1\nbudget_percent = 1.0",
        1,
        &[("score", Duration::from_secs(5))],
    )
    .await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            delay_next: Some(DelayNext {
                count: 1,
                ms: 1000.0,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let answer = call(&gw, "score", 7).await;
    assert_eq!(answer.status, St::Present);
    assert_eq!(answer.value, risk_score(&fake, 7));
    assert!(
        answer.elapsed >= Duration::from_secs(1),
        "{:?}",
        answer.elapsed
    );
    assert_eq!(gw.metric(HEDGES).await, Some(1.0));
    assert_eq!(gw.metric(WON).await, Some(0.0));
    assert_eq!(
        fake.stats().calls(DEVICE_REPUTATION),
        1,
        "the hedge had no permit"
    );
    assert_eq!(fake.stats().route(DEVICE_REPUTATION).cancelled, 0);
}
