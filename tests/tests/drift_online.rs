//! End-to-end: drift monitoring online through the real binary. The demo's configuration serves
//! `fraud_v1` with a training log; traffic drawn from the demo's population (as
//! tests/drift.rs draws it: its customers, cards and merchants, a few unknown customers,
//! amounts, currencies and channels from fixed distributions) is profiled into a reference with
//! `feature-gateway profile`. The gateway is restarted with `[feature_services.fraud_v1.monitor]`
//! naming that reference and a 5 s window (1 s buckets): traffic from the same population keeps
//! every PSI gauge below 0.1 over whole windows; traffic whose `amount` is sent a hundred times
//! larger (a unit change upstream) makes the `txn:amount` gauge cross 0.2 within two windows,
//! and no other feature's; a fifth of the customers unknown moves the customer features' null
//! rate past its threshold, and the `atm` channel disappearing moves `txn:channel`'s PSI past
//! 0.2, each within two windows. A reference that does not match the feature service refuses to
//! start naming the feature (exit code 2). (A long run of the same population: tests/drift_long_run.rs.)
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod drift_support;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use drift_support::{
    CALLERS, Deployment, Shift, Traffic, WINDOW, monitored, profile_reference, psi_gauges, run,
    text, window_rows,
};
use end_to_end::{GatewayProcess, eventually};
use proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psi_gauges_stay_low_on_the_same_population_and_a_unit_change_crosses_within_two_windows() {
    let dep = Deployment::new();
    // The reference: vectors served from the population, profiled from the training log.
    profile_reference(&dep).await;
    let gw = GatewayProcess::serve(&dep.write_config(&monitored(WINDOW)));
    assert_eq!(
        gw.metric("feature_gateway_drift_observations_dropped_total")
            .await,
        None,
        "the worker starts with the first vector"
    );

    // The same population: once the window is full, every PSI stays below 0.1 over two more
    // windows.
    let same = Traffic::start(&gw, 2, Shift::None).await;
    let started = Instant::now();
    eventually(Duration::from_secs(120), "a full window", async || {
        let rows = window_rows(&gw).await;
        if rows >= 1000.0 && started.elapsed() >= WINDOW {
            Ok(())
        } else {
            Err(format!("{rows} rows after {:?}", started.elapsed()))
        }
    })
    .await;
    let watched = Instant::now();
    let mut scrapes = 0;
    while watched.elapsed() < 2 * WINDOW {
        let psi = psi_gauges(&gw.admin_get("/metrics").await);
        assert!(psi.len() >= 20, "a gauge per feature: {psi:?}");
        for (feature, value) in &psi {
            assert!(
                *value < 0.1,
                "{feature}: PSI {value} on the same population"
            );
        }
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(scrapes > 4);
    let dropped = gw
        .metric("feature_gateway_drift_observations_dropped_total")
        .await;
    assert_eq!(dropped, Some(0.0));
    // The worker times its passes, in buckets of their own from 5 µs: one pass at least every
    // 50 ms over the two windows.
    let scrape = gw.admin_get("/metrics").await;
    let passes = end_to_end::metric(
        &scrape,
        "feature_gateway_drift_worker_pass_cpu_seconds_count",
    )
    .expect("the worker's passes are timed");
    assert!(
        passes >= (2 * WINDOW).as_millis() as f64 / 50.0,
        "{passes} passes"
    );
    assert!(
        end_to_end::metric(
            &scrape,
            "feature_gateway_drift_worker_pass_cpu_seconds_bucket{le=\"0.000005\"}"
        )
        .is_some(),
        "the passes' own buckets: {scrape}"
    );
    same.stop().await;

    // Amounts a hundred times larger: `txn:amount` crosses 0.2 within two windows; nothing else
    // moves.
    let shifted = Traffic::start(&gw, 3, Shift::AmountTimes(100.0)).await;
    let switched = Instant::now();
    gw.metric_until(
        "feature_gateway_drift_psi{feature_service=\"fraud_v1\",feature=\"txn:amount\"}",
        2 * WINDOW,
        |psi| psi > 0.2,
    )
    .await;
    let took = switched.elapsed();
    let psi = psi_gauges(&gw.admin_get("/metrics").await);
    for (feature, value) in &psi {
        if feature != "txn:amount" {
            assert!(
                *value < 0.1,
                "{feature}: PSI {value}; only the amount changed"
            );
        }
    }
    shifted.stop().await;
    eprintln!("txn:amount crossed 0.2 {took:?} after the change");

    // A fifth of the customers unknown (2% in the reference): the customer's features are
    // served null that much more often; the null-rate gauge crosses its threshold (5 points).
    let unknown = Traffic::start(&gw, 4, Shift::UnknownCustomers(20)).await;
    let switched = Instant::now();
    gw.metric_until(
        "feature_gateway_drift_null_rate_change{feature_service=\"fraud_v1\",feature=\"user_profile:country\"}",
        2 * WINDOW,
        |points| points > 5.0,
    )
    .await;
    let scrape = gw.admin_get("/metrics").await;
    let not_found = end_to_end::metric(
        &scrape,
        "feature_gateway_drift_status_share_change{feature_service=\"fraud_v1\",feature=\"user_profile:country\",status=\"not_found\"}",
    )
    .unwrap();
    assert!(
        not_found > 5.0,
        "NOT_FOUND's share moved with it: {not_found}"
    );
    unknown.stop().await;
    eprintln!(
        "the null rate crossed 5 points {:?} after the change",
        switched.elapsed()
    );

    // A category disappearing: no more `atm` payments (10% of the reference).
    let no_atm = Traffic::start(&gw, 5, Shift::NoAtm).await;
    let switched = Instant::now();
    gw.metric_until(
        "feature_gateway_drift_psi{feature_service=\"fraud_v1\",feature=\"txn:channel\"}",
        2 * WINDOW,
        |psi| psi > 0.2,
    )
    .await;
    no_atm.stop().await;
    eprintln!(
        "txn:channel crossed 0.2 {:?} after atm disappeared",
        switched.elapsed()
    );
}

#[test]
fn a_reference_that_does_not_match_the_feature_service_refuses_to_start() {
    let dep = Deployment::new();
    // A profile of fraud_v1 without `txn:amount`: an empty one, written by hand from what
    // `profile` writes.
    let profile = serde_json::json!({
        "format": "feature-gateway.profile",
        "version": 1,
        "feature_service": "fraud_v1",
        "definition_hash": null,
        "sources": [],
        "rows": 0,
        "features": [],
    });
    std::fs::write(dep.path("reference.json"), profile.to_string()).unwrap();
    let config =
        dep.write_config("[feature_services.fraud_v1.monitor]\nreference = \"reference.json\"\n");
    let serve = |config: &Path| {
        run(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
    };
    let out = serve(&config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("feature_services.fraud_v1.monitor.reference"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "`txn:amount` (double) is in feature service `fraud_v1`, not in the reference"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("nothing started"), "{stderr}");

    // A corrupt file names the file.
    std::fs::write(
        dep.path("reference.json"),
        "{\"format\": \"feature-gateway.pro",
    )
    .unwrap();
    let out = serve(&config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reference.json: not JSON"), "{stderr}");
}

/// A feature service over the fake device API (an `http` source with a 100 ms timeout) and a
/// static table, with its training log in `log/`.
fn devices_config(base: &str, dir: &Path, monitor: &str) -> PathBuf {
    std::fs::write(
        dir.join("segments.csv"),
        "segment,weight\n".to_owned()
            + &(0..10)
                .map(|i| format!("s{i},{}\n", f64::from(i) / 10.0))
                .collect::<String>(),
    )
    .unwrap();
    let config = format!(
        r#"
[entities.device_id]
type = "string"
[entities.segment]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "100ms"
[sources.tables]
kind = "static"

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}
[views.segments]
source = "tables"
entities = ["segment"]
path = "segments.csv"
features = {{ weight = {{ type = "double" }} }}

[feature_services.devices_v1]
deadline = "500ms"
features = ["device:risk_score", "segments:weight"]

[training_log]
dir = "log"
spool_dir = "spool"
rotate_interval = "1s"
{monitor}
"#
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Devices traffic on `CALLERS` callers until `stop`; counts vectors served.
async fn devices_traffic(
    gw: &GatewayProcess,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let client = gw.client().await;
    let mut callers = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let (mut client, stop, served) = (client.clone(), stop.clone(), served.clone());
        callers.spawn(async move {
            let mut i = c as u64;
            while !stop.load(Ordering::Relaxed) {
                let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
                client
                    .get_features(v1::GetFeaturesRequest {
                        feature_service: "devices_v1".into(),
                        entities: end_to_end::map(&[
                            (
                                "device_id",
                                end_to_end::s(&fake_upstreams::internal::device_id(x % 10_000)),
                            ),
                            ("segment", end_to_end::s(&format!("s{}", (x >> 16) % 10))),
                        ]),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                served.fetch_add(1, Ordering::Relaxed);
                i += CALLERS as u64;
            }
        });
    }
    callers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_timing_out_on_a_third_of_the_calls_moves_its_timed_out_share_and_ranks_first() {
    use fake_upstreams::{
        FakeConfig, FakeServer, Latency, RouteFaults, internal::DEVICE_REPUTATION,
    };
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run_for = async |gw: &GatewayProcess, n: u64| {
        let (stop, served) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut callers = devices_traffic(gw, stop.clone(), served.clone()).await;
        eventually(Duration::from_secs(300), "traffic", async || {
            let done = served.load(Ordering::Relaxed);
            if done >= n {
                Ok(())
            } else {
                Err(format!("{done} served"))
            }
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        while let Some(done) = callers.join_next().await {
            done.unwrap();
        }
    };
    // The reference, with the device API healthy.
    let mut gw = GatewayProcess::serve(&devices_config(&fake.base_url(), dir.path(), ""));
    run_for(&gw, 2_000).await;
    gw.terminate();
    assert!(
        gw.wait(Duration::from_secs(60)).unwrap().success(),
        "{}",
        gw.log()
    );
    drop(gw);
    let reference = dir.path().join("reference.json");
    let out = run(&[
        "profile",
        "--logs",
        dir.path().join("log").to_str().unwrap(),
        "--feature-service",
        "devices_v1",
        "--out",
        reference.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_dir_all(dir.path().join("log")).unwrap();

    // Monitored; then the API answers a third of the calls after the 100 ms timeout (a
    // lognormal delay, median 75 ms, p95 300 ms: about 37% beyond 100 ms).
    let monitor = format!(
        "[feature_services.devices_v1.monitor]\nreference = \"reference.json\"\nwindow = \"{}s\"\n",
        WINDOW.as_secs()
    );
    let gw = GatewayProcess::serve(&devices_config(&fake.base_url(), dir.path(), &monitor));
    let (stop, served) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut callers = devices_traffic(&gw, stop.clone(), served.clone()).await;
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::LogNormal {
                median_ms: 75.0,
                p95_ms: 300.0,
            },
            ..RouteFaults::default()
        },
    )
    .unwrap();
    let switched = Instant::now();
    gw.metric_until(
        "feature_gateway_drift_status_share_change{feature_service=\"devices_v1\",feature=\"device:risk_score\",status=\"timed_out\"}",
        2 * WINDOW,
        |points| points > 5.0,
    )
    .await;
    eprintln!(
        "the timed-out share crossed 5 points {:?} after the faults",
        switched.elapsed()
    );
    let from = end_to_end::rfc3339(std::time::SystemTime::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = end_to_end::rfc3339(std::time::SystemTime::now());
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    let mut gw = gw;
    gw.terminate();
    assert!(
        gw.wait(Duration::from_secs(60)).unwrap().success(),
        "{}",
        gw.log()
    );

    // Offline, the skew report over the faulty range ranks the timed-out feature first.
    let out = run(&[
        "skew",
        "--reference",
        reference.to_str().unwrap(),
        "--served",
        dir.path().join("log").to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
        "--out",
        dir.path().join("report").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("1. "))
        .unwrap_or_else(|| panic!("no ranking: {}", text(&out)));
    assert!(first.starts_with("device:risk_score"), "{}", text(&out));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
}
