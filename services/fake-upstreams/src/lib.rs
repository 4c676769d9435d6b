//! Local fake HTTP upstreams with latency and error injection, for tests, the demo and the load
//! tests.
//!
//! # Layout
//! - [`internal`]: fake internal APIs of other teams (device reputation, merchant risk), with
//!   seeded deterministic data for any id of the documented form.
//! - [`faults`]: per-route latency (fixed or seeded lognormal, scaled by a global time scale),
//!   hangs, and scripted or probabilistic errors, plus the call counters tests read.
//! - `admin`: the same controls over HTTP (`POST /admin/faults`, `GET /admin/stats`,
//!   `POST /admin/reset`), for the binary and the load-test scripts.
//! - [`seeded`]: the deterministic generator behind the data.
//!
//! Another fake (e.g. a `plaid` module) is a module beside [`internal`] exposing a `router()`
//! and its route names; [`router`] merges it and [`ROUTES`] lists its names.
//!
//! # Contract
//! [`FakeServer::start`] binds, serves in a background task and returns a handle. Dropping the
//! handle (or [`FakeServer::shutdown`]) releases hung and delayed calls with a 503 and stops the
//! server. Unknown paths get a 404 with a JSON error body, like unknown entities.

#![forbid(unsafe_code)]

mod admin;
pub mod faults;
pub mod internal;
pub mod seeded;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Json, Router,
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

pub use faults::{FailNext, FaultError, FaultPlan, Latency, RouteFaults, RouteStats, Stats};

/// Every route name faults can be set on, across all fakes.
pub const ROUTES: [&str; 3] = internal::ROUTES;

/// How to run a [`FakeServer`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Where to listen; port 0 picks a free one. Loopback by default: the fakes hold no secrets
    /// but have an unauthenticated admin API.
    pub listen: SocketAddr,
    /// Seeds the data and the latency and error draws.
    pub seed: u64,
    /// How many entities of each kind exist (ids numbered `0..population`).
    pub population: u64,
    /// The initial time scale applied to every injected delay (1.0 = as configured).
    pub time_scale: f64,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 42,
            population: 10_000,
            time_scale: 1.0,
        }
    }
}

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) seed: u64,
    pub(crate) population: u64,
    board: Mutex<faults::FaultBoard>,
    /// Bumped on every change of faults, so hung calls re-check whether they still hang.
    faults_changed: watch::Sender<u64>,
    /// Set once on shutdown: releases hung and delayed calls and stops the server.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn board(&self) -> MutexGuard<'_, faults::FaultBoard> {
        // A panic elsewhere must not wedge every later call: the board stays consistent because
        // each method mutates it in one step.
        self.board.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the route's faults to one call: counts it, waits, hangs, or fails it. `Err` is the
    /// response to send instead of the real one.
    pub(crate) async fn enter(&self, route: &str, uri: &Uri, keys: u64) -> Result<(), Response> {
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let admission = self.board().admit(route, target, keys);
        let mut shutdown = self.shutdown.subscribe();
        let stopping = || {
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the fake upstream is shutting down".into(),
            )
        };
        if admission.hang {
            // Subscribe before checking, so a change between the check and the wait is seen.
            let mut changed = self.faults_changed.subscribe();
            while self.board().hangs(route) {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { break },
                    _ = shutdown.wait_for(|s| *s) => return Err(stopping()),
                }
            }
        }
        if !admission.delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(admission.delay) => {}
                _ = shutdown.wait_for(|s| *s) => return Err(stopping()),
            }
        }
        match admission.fail {
            None => Ok(()),
            Some(status) => {
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut response = json_error(
                    status,
                    "injected_fault",
                    format!("injected failure on route `{route}`"),
                );
                if status == StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                Err(response)
            }
        }
    }

    pub(crate) fn count_not_found(&self, route: &str, n: u64) {
        self.board().count_not_found(route, n);
    }

    pub(crate) fn apply(&self, plan: &FaultPlan) -> Result<(), FaultError> {
        self.board().apply(plan)?;
        self.faults_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    pub(crate) fn reset(&self) {
        self.board().reset();
        self.faults_changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn stats(&self) -> Stats {
        self.board().stats()
    }
}

/// A JSON error body: `{"error": code, "message": message}`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

/// Every fake's routes, the admin API, and a JSON 404 for anything else.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(internal::router())
        .merge(admin::router())
        .fallback(|uri: Uri| async move {
            json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for `{}`", uri.path()),
            )
        })
        .with_state(shared)
}

/// A running fake server. Dropping it stops the server.
#[derive(Debug)]
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl FakeServer {
    /// Binds `config.listen` and serves in a background task.
    pub async fn start(config: FakeConfig) -> io::Result<FakeServer> {
        if !(config.time_scale.is_finite() && config.time_scale >= 0.0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "time scale must be a finite number >= 0, got {}",
                    config.time_scale
                ),
            ));
        }
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            seed: config.seed,
            population: config.population,
            board: Mutex::new(faults::FaultBoard::new(
                config.seed,
                config.time_scale,
                &ROUTES,
            )),
            faults_changed: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
        });
        let mut stop = shared.shutdown.subscribe();
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(FakeServer {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` and the bound address, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The seed the data is derived from.
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// How many entities of each kind exist.
    pub fn population(&self) -> u64 {
        self.shared.population
    }

    /// A snapshot of the per-route call counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Replaces the faults of `route` (a name from [`ROUTES`], or `*` for all).
    pub fn set_faults(&self, route: &str, faults: RouteFaults) -> Result<(), FaultError> {
        self.apply(&FaultPlan {
            time_scale: None,
            routes: [(route.to_owned(), faults)].into(),
        })
    }

    /// Sets the time scale applied to every injected delay.
    pub fn set_time_scale(&self, time_scale: f64) -> Result<(), FaultError> {
        self.apply(&FaultPlan {
            time_scale: Some(time_scale),
            routes: Default::default(),
        })
    }

    /// Applies a plan, as `POST /admin/faults` does.
    pub fn apply(&self, plan: &FaultPlan) -> Result<(), FaultError> {
        self.shared.apply(plan)
    }

    /// Clears faults and statistics, as `POST /admin/reset` does.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops the server: releases hung and delayed calls, closes connections, and waits for the
    /// serving task.
    pub async fn shutdown(mut self) -> io::Result<()> {
        self.shared.shutdown.send_replace(true);
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> io::Result<()> {
        signal.await;
        self.shutdown().await
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}
