//! End-to-end: no false alarm over a long run. The demo's `fraud_v1` is profiled from traffic
//! drawn from the demo's population (tests/drift_support), then served again from the same
//! population, by the real binary monitoring it over short windows (2 s, five buckets of 400 ms)
//! for 32 windows: every scrape, more often than the buckets end, finds each window holding at
//! least the 500 vectors the alert rules judge, every PSI gauge below 0.1, and no null-rate,
//! status or default share change past its threshold (5 points) either way. Traffic runs faster
//! than the monitor's rate budget at times, so the sampler's weights are on trial too. Alone in
//! its test binary, so the other drift tests' traffic does not thin its windows.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod drift_support;

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use drift_support::{
    Deployment, Shift, Traffic, gauges, monitored, profile_reference, psi_gauges, window_rows,
};
use end_to_end::{GatewayProcess, eventually};

/// The long run's window (five buckets of 400 ms), and how many of them it watches.
const LONG_WINDOW: Duration = Duration::from_secs(2);
const LONG_WINDOWS: u32 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_population_raises_no_alarm_over_a_long_run() {
    let dep = Deployment::new();
    profile_reference(&dep).await;
    let gw = GatewayProcess::serve(&dep.write_config(&monitored(LONG_WINDOW)));
    let traffic = Traffic::start(&gw, 6, Shift::None).await;
    let started = Instant::now();
    eventually(Duration::from_secs(60), "a full window", async || {
        let rows = window_rows(&gw).await;
        if rows > 0.0 && started.elapsed() >= LONG_WINDOW {
            Ok(())
        } else {
            Err(format!("{rows} rows after {:?}", started.elapsed()))
        }
    })
    .await;
    // Every gauge a monitored feature service has, scraped more often than the buckets end
    // (every 400 ms), so every comparison published is seen: each window judged by the alert
    // rules (500 vectors or more), no PSI at 0.1 (the rule of thumb's "no real change"), no
    // change of the null rate, a status's share or the defaults' share past its threshold (5
    // points) either way.
    let changes = [
        "feature_gateway_drift_null_rate_change",
        "feature_gateway_drift_status_share_change",
        "feature_gateway_drift_default_share_change",
    ];
    let watched = Instant::now();
    let served_before = traffic.served.load(Ordering::Relaxed);
    let (mut scrapes, mut fewest_rows) = (0, f64::INFINITY);
    let mut largest_psi = (String::new(), 0.0f64);
    let mut largest_change = (String::new(), 0.0f64);
    let mut observed_shares = Vec::new();
    while watched.elapsed() < LONG_WINDOWS * LONG_WINDOW {
        let scrape = gw.admin_get("/metrics").await;
        let rows = end_to_end::metric(
            &scrape,
            "feature_gateway_drift_window_rows{feature_service=\"fraud_v1\"}",
        )
        .unwrap();
        assert!(
            rows >= 500.0,
            "{rows} vectors in a window: too few to judge"
        );
        fewest_rows = fewest_rows.min(rows);
        let psi = psi_gauges(&scrape);
        assert_eq!(psi.len(), 20, "a gauge per feature: {psi:?}");
        for (feature, value) in psi {
            assert!(
                value < 0.1,
                "{feature}: PSI {value} on the same population after {:?}",
                watched.elapsed()
            );
            if value > largest_psi.1 {
                largest_psi = (feature, value);
            }
        }
        for name in changes {
            let series = gauges(&scrape, name);
            assert!(series.len() >= 20, "{name}: {series:?}");
            for (series, points) in series {
                assert!(
                    points.abs() <= 5.0,
                    "{name} {series}: {points} points on the same population after {:?}",
                    watched.elapsed()
                );
                if points.abs() > largest_change.1.abs() {
                    largest_change = (format!("{name} {series}"), points);
                }
            }
        }
        observed_shares.extend(end_to_end::metric(
            &scrape,
            "feature_gateway_drift_observed_share{feature_service=\"fraud_v1\"}",
        ));
        scrapes += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let served = traffic.served.load(Ordering::Relaxed) - served_before;
    traffic.stop().await;
    let watched = watched.elapsed();
    assert!(
        scrapes as f64 > watched.as_secs_f64() / 0.4,
        "{scrapes} scrapes in {watched:?}"
    );
    assert!(observed_shares.iter().all(|s| *s > 0.0 && *s <= 1.0));
    assert_eq!(
        gw.metric("feature_gateway_drift_observations_dropped_total")
            .await,
        Some(0.0)
    );
    eprintln!(
        "{} windows of {LONG_WINDOW:?}: {served} vectors served ({:.0}/s), at least {fewest_rows} \
         observed per window (observed share {:.2} to {:.2}); largest PSI {} {:.4}, largest \
         change {} {:+.2} points; {scrapes} scrapes",
        watched.as_secs_f64() / LONG_WINDOW.as_secs_f64(),
        served as f64 / watched.as_secs_f64(),
        observed_shares
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min),
        observed_shares.iter().copied().fold(0.0, f64::max),
        largest_psi.0,
        largest_psi.1,
        largest_change.0,
        largest_change.1,
    );
}
