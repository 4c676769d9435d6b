//! Local fake HTTP upstreams with latency and error injection, for tests, the demo and the load
//! tests.
//!
//! # Layout
//! - [`internal`]: fake internal APIs of other teams (device reputation, merchant risk), with
//!   seeded deterministic data for any id of the documented form.
//! - [`records`]: a fake internal record API serving JSON documents a test loads
//!   ([`FakeServer::records`]), for data of the test's choosing (nulls, mistyped fields, hostile
//!   ids).
//! - [`plaid`]: a fake Plaid API (`/accounts/balance/get`, `/transactions/sync`, ...) that follows
//!   `shared/docs/plaid-contract.md`: credentials, exact error bodies, rate limits, sync cursors,
//!   an item state machine, and seeded data for `population` users; its admin API lives under
//!   `/admin/plaid/`.
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
pub mod plaid;
pub mod records;
pub mod seeded;

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

pub use faults::{FailNext, FaultError, FaultPlan, Latency, RouteFaults, RouteStats, Stats};

/// Every route name faults can be set on, across all fakes.
pub const ROUTES: [&str; internal::ROUTES.len() + records::ROUTES.len() + plaid::ROUTES.len()] = {
    // A const concatenation, so a fake's route list is written once, in its module.
    let fakes: [&[&str]; 3] = [&internal::ROUTES, &records::ROUTES, &plaid::ROUTES];
    let mut all = [""; internal::ROUTES.len() + records::ROUTES.len() + plaid::ROUTES.len()];
    let mut n = 0;
    let mut f = 0;
    while f < fakes.len() {
        let mut i = 0;
        while i < fakes[f].len() {
            all[n] = fakes[f][i];
            n += 1;
            i += 1;
        }
        f += 1;
    }
    all
};

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
    /// The fake Plaid's credentials and rate limits (its users are `0..population`).
    pub plaid: plaid::PlaidConfig,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 42,
            population: 10_000,
            time_scale: 1.0,
            plaid: plaid::PlaidConfig::default(),
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
    /// The fake Plaid's item states, rate-limit windows and Plaid-coded faults.
    pub(crate) plaid: plaid::PlaidState,
    /// The record API's documents.
    pub(crate) records: records::Records,
    /// The W3C `traceparent` headers of the latest calls, oldest first.
    trace_parents: Mutex<std::collections::VecDeque<String>>,
}

/// How many `traceparent` headers [`FakeServer::trace_parents`] keeps.
pub const TRACE_PARENTS_KEPT: usize = 256;

/// Why [`Shared::admit`] refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server is stopping: the call is released without an answer of its own.
    ShuttingDown,
    /// An injected failure with this status.
    Injected(StatusCode),
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
        match self.admit(route, uri, keys).await {
            Ok(()) => Ok(()),
            Err(Refusal::ShuttingDown) => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the fake upstream is shutting down".into(),
            )),
            Err(Refusal::Injected(status)) => {
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

    /// The fault half of [`Shared::enter`], for fakes (like Plaid) that shape their own error
    /// bodies: counts the call, waits or hangs, and says whether and why it must fail. A call
    /// dropped while it waits (the server drops a handler whose client went away) is counted as
    /// cancelled.
    pub(crate) async fn admit(&self, route: &str, uri: &Uri, keys: u64) -> Result<(), Refusal> {
        let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let admission = self.board().admit(route, target, keys);
        let mut held = Held {
            shared: self,
            route,
            done: false,
        };
        let result = self.hold(route, admission).await;
        held.done = true;
        result
    }

    /// Waits or hangs as `admission` says, then says whether the call fails.
    async fn hold(&self, route: &str, admission: faults::Admission) -> Result<(), Refusal> {
        let mut shutdown = self.shutdown.subscribe();
        let stopping = || Refusal::ShuttingDown;
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
            Some(status) => Err(Refusal::Injected(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            )),
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
        self.plaid.reset();
        self.faults_changed.send_modify(|v| *v += 1);
    }

    pub(crate) fn stats(&self) -> Stats {
        self.board().stats()
    }
}

/// A call being held by [`Shared::admit`]: dropped before it is `done`, its caller went away.
struct Held<'a> {
    shared: &'a Shared,
    route: &'a str,
    done: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.board().count_cancelled(self.route);
        }
    }
}

/// The body of a batch route, `{"ids": [...]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    /// The ids asked for, as JSON (an id that is not a string matches nothing).
    pub(crate) ids: Vec<serde_json::Value>,
}

/// Admits a call to the batch `route` (its faults apply, counted by the ids it asks for) and
/// reads its body: a 400 with a JSON error when the body is not `{"ids": [...]}` or asks for
/// more than `max` ids.
pub(crate) async fn batch_request(
    shared: &Shared,
    route: &str,
    uri: &Uri,
    body: &[u8],
    max: usize,
) -> Result<BatchRequest, Response> {
    let request = serde_json::from_slice::<BatchRequest>(body);
    let keys = request.as_ref().map_or(0, |r| r.ids.len() as u64);
    shared.enter(route, uri, keys).await?;
    match request {
        Ok(r) if r.ids.len() <= max => Ok(r),
        Ok(r) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`ids` holds {} ids, at most {max} allowed", r.ids.len()),
        )),
        Err(e) => Err(json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body must be {{\"ids\": [...]}}: {e}"),
        )),
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
        .merge(records::router())
        .merge(plaid::router())
        .merge(admin::router())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            record_trace_parent,
        ))
        .fallback(
            |State(shared): State<Arc<Shared>>, method: Method, uri: Uri| async move {
                // A POST outside the internal and admin namespaces is taken as a call to a Plaid
                // endpoint the fake does not serve, and answered as Plaid answers one.
                let path = uri.path();
                if method == Method::POST
                    && !path.starts_with("/v1/")
                    && !path.starts_with("/admin/")
                {
                    return plaid::unknown_endpoint(&shared, path);
                }
                json_error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no route for `{path}`"),
                )
            },
        )
        .with_state(shared)
}

/// Keeps the `traceparent` header of every call, so tests can check that a trace crossed over.
async fn record_trace_parent(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(value) = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        let mut kept = shared
            .trace_parents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if kept.len() == TRACE_PARENTS_KEPT {
            kept.pop_front();
        }
        kept.push_back(value.to_owned());
    }
    next.run(request).await
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
        let plaid = plaid::PlaidState::new(config.seed, config.population, config.plaid)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
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
            plaid,
            records: records::Records::default(),
            trace_parents: Mutex::default(),
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

    /// The W3C `traceparent` headers of the latest calls (up to [`TRACE_PARENTS_KEPT`]),
    /// oldest first.
    pub fn trace_parents(&self) -> Vec<String> {
        self.shared
            .trace_parents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
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

    /// The fake Plaid's controls: item states, Plaid-coded faults, rate limits, its statistics.
    pub fn plaid(&self) -> &plaid::PlaidState {
        &self.shared.plaid
    }

    /// The record API's documents: load what `GET /v1/records/...` serves (see [`records`]).
    pub fn records(&self) -> &records::Records {
        &self.shared.records
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

    /// Clears faults and statistics, and puts the fake Plaid back to its start (every Item
    /// healthy, empty rate windows, configured limits), as `POST /admin/reset` does.
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
