//! What the drift end-to-end tests share (tests/drift_online.rs, tests/drift_long_run.rs): the
//! demo's tables and configuration deployed in a temporary directory with a training log,
//! traffic drawn from the demo's population (changed one way at a time), a reference profiled
//! from it with `feature-gateway profile`, and the monitor's gauges read from a scrape.
#![allow(dead_code)] // each test binary uses part of it

use std::{
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use end_to_end::{
    GatewayProcess, demo_traffic::Fields, demo_traffic::request, eventually, gateway_binary,
};
use proto::v1;

/// Vectors in the reference.
pub const REFERENCE: usize = 3000;
/// Concurrent callers.
pub const CALLERS: usize = 4;
/// The monitor's window (five buckets of a second).
pub const WINDOW: Duration = Duration::from_secs(5);

/// A gateway deployment in a temporary directory: the demo's tables and configuration, its
/// training log in `log/`.
pub struct Deployment {
    dir: tempfile::TempDir,
    /// The demo's configuration with the training log in `log/`.
    config: String,
}

impl Deployment {
    pub fn new() -> Deployment {
        let dir = tempfile::tempdir().unwrap();
        let demo = GatewayProcess::demo();
        let demo_dir = demo.workdir().join("demo");
        for file in [
            "users.csv",
            "cards.csv",
            "merchants.csv",
            "mcc_risk.csv",
            "payments.jsonl",
        ] {
            std::fs::copy(demo_dir.join(file), dir.path().join(file)).unwrap();
        }
        let config = std::fs::read_to_string(demo_dir.join("demo.toml")).unwrap();
        drop(demo);
        let base = config.split("\n[training_log]").next().unwrap();
        let config = format!(
            "{base}\n[training_log]\ndir = \"log\"\nspool_dir = \"spool\"\n\
             rotate_interval = \"1s\"\n"
        );
        Deployment { dir, config }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `gateway.toml`: the configuration with `extra` after it.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.path("gateway.toml");
        std::fs::write(&path, format!("{}\n{extra}", self.config)).unwrap();
        path
    }
}

/// A change injected into the traffic.
#[derive(Clone, Copy, Debug)]
pub enum Shift {
    /// The population as profiled.
    None,
    /// Amounts this many times larger (a unit change upstream).
    AmountTimes(f64),
    /// This percentage of requests for customers the tables do not hold (2% in the population):
    /// the customer's features served null.
    UnknownCustomers(u64),
    /// The `atm` channel no longer sent (10% of the population): a category disappearing.
    NoAtm,
}

impl Shift {
    pub fn apply(self, i: usize, entities: &mut Fields, context: &mut Fields) {
        match self {
            Shift::None | Shift::AmountTimes(_) => {}
            Shift::UnknownCustomers(percent) => {
                if ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 100 < percent {
                    entities.insert("user_id".into(), end_to_end::s("u_99999"));
                }
            }
            Shift::NoAtm => {
                if context.get("channel") == Some(&end_to_end::s("atm")) {
                    context.insert("channel".into(), end_to_end::s("pos"));
                }
            }
        }
    }
}

/// Traffic from the population of `seed` on `CALLERS` callers until stopped, changed by
/// `shift`; counts the vectors served.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicU64>,
    callers: tokio::task::JoinSet<()>,
}

impl Traffic {
    pub async fn start(gw: &GatewayProcess, seed: u64, shift: Shift) -> Traffic {
        let amount_times = match shift {
            Shift::AmountTimes(times) => times,
            _ => 1.0,
        };
        let client = gw.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for c in 0..CALLERS {
            let (mut client, stop, served) = (client.clone(), stop.clone(), served.clone());
            callers.spawn(async move {
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let (mut entities, mut context, _) = request(seed, i, amount_times);
                    shift.apply(i, &mut entities, &mut context);
                    client
                        .get_features(v1::GetFeaturesRequest {
                            feature_service: "fraud_v1".into(),
                            entities,
                            context,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    served.fetch_add(1, Ordering::Relaxed);
                    i += CALLERS;
                }
            });
        }
        Traffic {
            stop,
            served,
            callers,
        }
    }

    /// Serves exactly `n` vectors (at least), then stops.
    pub async fn serve(gw: &GatewayProcess, seed: u64, n: u64) {
        let traffic = Traffic::start(gw, seed, Shift::None).await;
        let served = traffic.served.clone();
        eventually(Duration::from_secs(300), "reference traffic", async || {
            let done = served.load(Ordering::Relaxed);
            if done >= n {
                Ok(())
            } else {
                Err(format!("{done} served"))
            }
        })
        .await;
        traffic.stop().await;
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.callers.join_next().await {
            done.unwrap();
        }
    }
}

pub fn run(args: &[&str]) -> Output {
    Command::new(gateway_binary()).args(args).output().unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every `feature_gateway_drift_psi` gauge of `fraud_v1` in a scrape: `(feature, value)`.
pub fn psi_gauges(scrape: &str) -> Vec<(String, f64)> {
    gauges(scrape, "feature_gateway_drift_psi")
}

/// Every series of gauge `name` of `fraud_v1` in a scrape: `(its labels after the feature
/// service's, value)`, e.g. `(txn:amount, 0.01)` or `(txn:amount/timed_out, 0.0)`.
pub fn gauges(scrape: &str, name: &str) -> Vec<(String, f64)> {
    scrape
        .lines()
        .filter_map(|line| {
            let labels = line.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = labels.rsplit_once("} ")?;
            if !labels.contains("feature_service=\"fraud_v1\"") {
                return None;
            }
            let label = |key: &str| {
                labels
                    .split(&format!("{key}=\""))
                    .nth(1)
                    .and_then(|v| v.split('"').next())
            };
            let mut series = label("feature")?.to_owned();
            if let Some(status) = label("status") {
                series = format!("{series}/{status}");
            }
            Some((series, value.trim().parse().ok()?))
        })
        .collect()
}

/// Serves `REFERENCE` vectors of the population (seed 1) with the training log on and profiles
/// them into `reference.json`.
pub async fn profile_reference(dep: &Deployment) {
    let mut gw = GatewayProcess::serve(&dep.write_config(""));
    Traffic::serve(&gw, 1, REFERENCE as u64).await;
    gw.terminate();
    assert!(
        gw.wait(Duration::from_secs(60)).unwrap().success(),
        "{}",
        gw.log()
    );
    drop(gw);
    let reference = dep.path("reference.json");
    let out = run(&[
        "profile",
        "--logs",
        dep.path("log").to_str().unwrap(),
        "--feature-service",
        "fraud_v1",
        "--out",
        reference.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `fraud_v1` monitored against `reference.json` over `window`.
pub fn monitored(window: Duration) -> String {
    format!(
        "[feature_services.fraud_v1.monitor]\nreference = \"reference.json\"\nwindow = \"{}s\"\n",
        window.as_secs()
    )
}

/// The gauge of `fraud_v1`'s window rows now.
pub async fn window_rows(gw: &GatewayProcess) -> f64 {
    gw.metric("feature_gateway_drift_window_rows{feature_service=\"fraud_v1\"}")
        .await
        .unwrap_or(0.0)
}
