//! Latency and error injection, and the per-route call counters tests read.
//!
//! Every fake route calls [`FaultBoard::admit`] (through `Shared::enter`) before it answers. The
//! board decides, per route, how long the call waits (a fixed delay, or a sample from a seeded
//! lognormal distribution, both multiplied by a global time scale), whether it hangs until the
//! fault is lifted, and whether it fails: scripted ("the next N calls fail with status S") before
//! probabilistic (a rate). A scripted delay ("the next N calls wait D") replaces the route's
//! latency for those calls only, so one slow call can be told from the fast ones around it. The same [`FaultPlan`] is accepted by `POST /admin/faults` and by
//! [`crate::FakeServer::apply`], so in-process tests and the load-test scripts drive one model.
//!
//! A plan that names an unknown route or holds an out-of-range number is refused whole with a
//! [`FaultError`] naming the field; nothing is half-applied.

use std::{collections::BTreeMap, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// The `routes` key of a [`FaultPlan`] that applies to every route.
pub const ALL_ROUTES: &str = "*";

/// How long a route takes to answer, before the time scale is applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    /// Answer at once.
    #[default]
    None,
    /// Always wait `ms` milliseconds.
    Fixed { ms: f64 },
    /// A heavy-tailed delay: lognormal with the given median and 95th percentile (e.g. a
    /// third-party balance endpoint's ~3000 ms median and ~11000 ms p95). Samples are capped at
    /// ten times the p95 so a test never waits on a one-in-a-billion draw.
    #[serde(rename = "lognormal")]
    LogNormal { median_ms: f64, p95_ms: f64 },
}

/// Fail the next `count` calls with `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailNext {
    pub count: u32,
    pub status: u16,
}

/// Delay the next `count` calls by `ms` milliseconds each (time scale applied), instead of the
/// route's latency.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayNext {
    pub count: u32,
    pub ms: f64,
}

/// The faults of one route. Every field is optional in JSON; what is left out is "no fault".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteFaults {
    /// The delay before each answer.
    pub latency: Latency,
    /// Calls wait without answering until this is cleared (or the server shuts down).
    pub hang: bool,
    /// The probability in `[0, 1]` that a call fails with `error_status`.
    pub error_rate: f64,
    /// The status of probabilistic failures (default 503).
    pub error_status: u16,
    /// Scripted failures, served before any probabilistic one. Setting it replaces the
    /// remaining count.
    pub fail_next: Option<FailNext>,
    /// Scripted delays, taken instead of `latency` by the next calls. Setting it replaces the
    /// remaining count.
    pub delay_next: Option<DelayNext>,
}

impl Default for RouteFaults {
    fn default() -> Self {
        RouteFaults {
            latency: Latency::None,
            hang: false,
            error_rate: 0.0,
            error_status: 503,
            fail_next: None,
            delay_next: None,
        }
    }
}

/// A change of faults: the global time scale and/or the faults of some routes (each replaces
/// that route's faults whole; the key `*` means every route).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultPlan {
    /// Multiplies every injected delay: 0.01 turns a 3 s median into 30 ms.
    pub time_scale: Option<f64>,
    /// Route name (see [`crate::ROUTES`]) to its new faults.
    pub routes: BTreeMap<String, RouteFaults>,
}

/// The calls one route has seen since start or the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteStats {
    /// Requests that reached the route, whatever their outcome.
    pub calls: u64,
    /// Entity ids asked for (one per call, or the batch size).
    pub keys: u64,
    /// Calls answered with an injected error.
    pub injected_errors: u64,
    /// Ids answered as unknown (a 404, or left out of a batch).
    pub not_found: u64,
    /// Calls whose caller went away (closed the connection, reset the stream) while they were
    /// held by an injected delay or hang: what a client that abandons a call looks like here.
    #[serde(default)]
    pub cancelled: u64,
    /// The path and query of the latest call, as received (still percent-encoded).
    pub last_uri: Option<String>,
}

/// Per-route statistics, as served by `GET /admin/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub routes: BTreeMap<String, RouteStats>,
}

impl Stats {
    /// The calls `route` has seen (0 for a route never called or unknown).
    pub fn calls(&self, route: &str) -> u64 {
        self.routes.get(route).map_or(0, |r| r.calls)
    }

    /// The stats of `route`, zeroed if it was never called.
    pub fn route(&self, route: &str) -> RouteStats {
        self.routes.get(route).cloned().unwrap_or_default()
    }
}

/// A fault plan that cannot be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FaultError(pub String);

/// What [`FaultBoard::admit`] decided for one call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Admission {
    /// How long to wait before answering (time scale applied).
    pub delay: Duration,
    /// Whether to hang until the route's `hang` is cleared.
    pub hang: bool,
    /// The status to fail with, if the call is to fail.
    pub fail: Option<u16>,
}

#[derive(Debug)]
struct RouteState {
    faults: RouteFaults,
    fail_next_remaining: u32,
    delay_next_remaining: u32,
    rng: StdRng,
    stats: RouteStats,
}

/// The fault configuration and counters of every route. Held behind a mutex that is never held
/// across an `.await`.
#[derive(Debug)]
pub struct FaultBoard {
    seed: u64,
    initial_time_scale: f64,
    time_scale: f64,
    routes: BTreeMap<&'static str, RouteState>,
}

impl FaultBoard {
    /// A board for `routes`, with no faults. `seed` makes latency and error draws reproducible
    /// for a given order of calls.
    pub fn new(seed: u64, time_scale: f64, routes: &[&'static str]) -> Self {
        let mut board = FaultBoard {
            seed,
            initial_time_scale: time_scale,
            time_scale,
            routes: BTreeMap::new(),
        };
        for route in routes {
            board.routes.insert(route, board.fresh_route(route));
        }
        board
    }

    fn fresh_route(&self, route: &str) -> RouteState {
        // Each route draws from its own stream so that traffic on one route does not shift the
        // latencies of another.
        let route_seed = route
            .bytes()
            .fold(self.seed, |h, b| h.rotate_left(5) ^ u64::from(b));
        RouteState {
            faults: RouteFaults::default(),
            fail_next_remaining: 0,
            delay_next_remaining: 0,
            rng: StdRng::seed_from_u64(route_seed),
            stats: RouteStats::default(),
        }
    }

    /// Checks `plan` whole, then applies it.
    pub fn apply(&mut self, plan: &FaultPlan) -> Result<(), FaultError> {
        if let Some(scale) = plan.time_scale.filter(|s| !(s.is_finite() && *s >= 0.0)) {
            return Err(FaultError(format!(
                "time_scale must be a finite number >= 0, got {scale}"
            )));
        }
        for (route, faults) in &plan.routes {
            if route != ALL_ROUTES && !self.routes.contains_key(route.as_str()) {
                let known: Vec<&str> = self.routes.keys().copied().collect();
                return Err(FaultError(format!(
                    "unknown route `{route}` (known: {}, or `*` for all)",
                    known.join(", ")
                )));
            }
            validate(faults).map_err(|e| FaultError(format!("routes.{route}: {e}")))?;
        }
        if let Some(scale) = plan.time_scale {
            self.time_scale = scale;
        }
        for (route, faults) in &plan.routes {
            for (name, state) in self.routes.iter_mut() {
                if route == ALL_ROUTES || route == name {
                    state.fail_next_remaining = faults.fail_next.map_or(0, |f| f.count);
                    state.delay_next_remaining = faults.delay_next.map_or(0, |d| d.count);
                    state.faults = faults.clone();
                }
            }
        }
        Ok(())
    }

    /// Clears every fault, counter and statistic, and restores the initial time scale and seeds.
    pub fn reset(&mut self) {
        self.time_scale = self.initial_time_scale;
        let names: Vec<&'static str> = self.routes.keys().copied().collect();
        for name in names {
            let fresh = self.fresh_route(name);
            self.routes.insert(name, fresh);
        }
    }

    /// Counts a call to `route` for `keys` ids and decides its fate.
    pub fn admit(&mut self, route: &str, uri: &str, keys: u64) -> Admission {
        let time_scale = self.time_scale;
        let Some(state) = self.routes.get_mut(route) else {
            return Admission {
                delay: Duration::ZERO,
                hang: false,
                fail: None,
            };
        };
        state.stats.calls += 1;
        state.stats.keys += keys;
        state.stats.last_uri = Some(uri.to_owned());
        let raw_ms = match (state.faults.delay_next, state.faults.latency.clone()) {
            (Some(next), _) if state.delay_next_remaining > 0 => {
                state.delay_next_remaining -= 1;
                next.ms
            }
            (_, Latency::None) => 0.0,
            (_, Latency::Fixed { ms }) => ms,
            (_, Latency::LogNormal { median_ms, p95_ms }) => {
                lognormal_ms(&mut state.rng, median_ms, p95_ms)
            }
        };
        let fail = if state.fail_next_remaining > 0 {
            state.fail_next_remaining -= 1;
            state.faults.fail_next.map(|f| f.status)
        } else if state.faults.error_rate > 0.0
            && state.rng.random::<f64>() < state.faults.error_rate
        {
            Some(state.faults.error_status)
        } else {
            None
        };
        if fail.is_some() {
            state.stats.injected_errors += 1;
        }
        Admission {
            delay: Duration::from_secs_f64((raw_ms * time_scale).max(0.0) / 1000.0),
            hang: state.faults.hang,
            fail,
        }
    }

    /// Whether `route` is currently set to hang.
    pub fn hangs(&self, route: &str) -> bool {
        self.routes.get(route).is_some_and(|s| s.faults.hang)
    }

    /// Counts a call to `route` its caller abandoned while it was held.
    pub fn count_cancelled(&mut self, route: &str) {
        if let Some(state) = self.routes.get_mut(route) {
            state.stats.cancelled += 1;
        }
    }

    /// Counts `n` ids of `route` answered as unknown.
    pub fn count_not_found(&mut self, route: &str, n: u64) {
        if let Some(state) = self.routes.get_mut(route) {
            state.stats.not_found += n;
        }
    }

    /// A snapshot of every route's statistics.
    pub fn stats(&self) -> Stats {
        Stats {
            routes: self
                .routes
                .iter()
                .map(|(name, s)| ((*name).to_owned(), s.stats.clone()))
                .collect(),
        }
    }
}

fn validate(faults: &RouteFaults) -> Result<(), String> {
    let status_ok = |s: u16| (400..=599).contains(&s);
    if !(0.0..=1.0).contains(&faults.error_rate) {
        return Err(format!(
            "error_rate must be within [0, 1], got {}",
            faults.error_rate
        ));
    }
    if !status_ok(faults.error_status) {
        return Err(format!(
            "error_status must be a 4xx or 5xx status, got {}",
            faults.error_status
        ));
    }
    if let Some(f) = faults.fail_next.filter(|f| !status_ok(f.status)) {
        return Err(format!(
            "fail_next.status must be a 4xx or 5xx status, got {}",
            f.status
        ));
    }
    if let Some(d) = faults
        .delay_next
        .filter(|d| !(d.ms.is_finite() && d.ms >= 0.0))
    {
        return Err(format!("delay_next.ms must be >= 0, got {}", d.ms));
    }
    match faults.latency {
        Latency::None => Ok(()),
        Latency::Fixed { ms } if ms.is_finite() && ms >= 0.0 => Ok(()),
        Latency::Fixed { ms } => Err(format!("latency.ms must be >= 0, got {ms}")),
        Latency::LogNormal { median_ms, p95_ms }
            if median_ms.is_finite()
                && median_ms > 0.0
                && p95_ms.is_finite()
                && p95_ms >= median_ms =>
        {
            Ok(())
        }
        Latency::LogNormal { median_ms, p95_ms } => Err(format!(
            "latency needs 0 < median_ms <= p95_ms, got median_ms {median_ms} and p95_ms {p95_ms}"
        )),
    }
}

/// The z-score of the 95th percentile of a standard normal distribution.
const Z95: f64 = 1.644_853_626_951_472_2;

/// Draws a lognormal delay whose median and 95th percentile are the given ones.
fn lognormal_ms(rng: &mut StdRng, median_ms: f64, p95_ms: f64) -> f64 {
    let mu = median_ms.ln();
    let sigma = (p95_ms / median_ms).ln() / Z95;
    // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (mu + sigma * z).exp().min(10.0 * p95_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: [&str; 2] = ["a", "b"];

    fn plan(json: &str) -> FaultPlan {
        serde_json::from_str(json).expect("valid plan")
    }

    #[test]
    fn scripted_failures_come_first_then_stop() {
        let mut board = FaultBoard::new(1, 1.0, &ROUTES);
        board
            .apply(&plan(
                r#"{"routes": {"a": {"fail_next": {"count": 2, "status": 500}}}}"#,
            ))
            .expect("applies");
        let fails: Vec<_> = (0..4).map(|_| board.admit("a", "/a", 1).fail).collect();
        assert_eq!(fails, [Some(500), Some(500), None, None]);
        assert_eq!(board.admit("b", "/b", 3).fail, None);
        let stats = board.stats();
        assert_eq!(stats.calls("a"), 4);
        assert_eq!(stats.route("a").injected_errors, 2);
        assert_eq!(stats.route("b").keys, 3);
        assert_eq!(stats.route("b").last_uri.as_deref(), Some("/b"));
    }

    #[test]
    fn scripted_delays_replace_the_latency_of_the_next_calls_only() {
        let mut board = FaultBoard::new(1, 0.5, &ROUTES);
        board
            .apply(&plan(
                r#"{"routes": {"a": {"latency": {"kind": "fixed", "ms": 10}, "delay_next": {"count": 2, "ms": 4000}}}}"#,
            ))
            .expect("applies");
        let ms: Vec<u128> = (0..4)
            .map(|_| board.admit("a", "/a", 1).delay.as_millis())
            .collect();
        // Time scale 0.5 applies to both.
        assert_eq!(ms, [2000, 2000, 5, 5]);
        assert_eq!(board.admit("b", "/b", 1).delay, Duration::ZERO);
        let err = board
            .apply(&plan(
                r#"{"routes": {"a": {"delay_next": {"count": 1, "ms": -1}}}}"#,
            ))
            .unwrap_err();
        assert!(err.0.contains("routes.a: delay_next.ms"), "{err}");
        board.count_cancelled("a");
        assert_eq!(board.stats().route("a").cancelled, 1);
    }

    #[test]
    fn error_rate_is_seeded_and_roughly_honoured() {
        let run = || {
            let mut board = FaultBoard::new(9, 1.0, &ROUTES);
            board
                .apply(&plan(
                    r#"{"routes": {"*": {"error_rate": 0.25, "error_status": 502}}}"#,
                ))
                .expect("applies");
            (0..2000)
                .map(|_| board.admit("b", "/b", 1).fail)
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run(), "same seed, same draws");
        let failed = first.iter().filter(|f| **f == Some(502)).count();
        assert!((350..650).contains(&failed), "{failed} of 2000 failed");
    }

    #[test]
    fn lognormal_matches_median_and_p95_and_time_scale_applies() {
        let mut board = FaultBoard::new(3, 0.5, &ROUTES);
        board
            .apply(&plan(
                r#"{"routes": {"a": {"latency": {"kind": "lognormal", "median_ms": 100, "p95_ms": 400}}}}"#,
            ))
            .expect("applies");
        let mut ms: Vec<f64> = (0..4000)
            .map(|_| board.admit("a", "/a", 1).delay.as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        // Scaled by 0.5: median ~50 ms, p95 ~200 ms.
        let (median, p95) = (ms[2000], ms[3800]);
        assert!((40.0..60.0).contains(&median), "median {median}");
        assert!((160.0..240.0).contains(&p95), "p95 {p95}");
        assert!(ms[3999] <= 2000.0, "capped at 10x p95");
    }

    #[test]
    fn bad_plans_are_refused_whole() {
        let mut board = FaultBoard::new(1, 1.0, &ROUTES);
        let err = board
            .apply(&plan(
                r#"{"time_scale": 2, "routes": {"a": {"hang": true}, "zzz": {}}}"#,
            ))
            .unwrap_err();
        assert!(
            err.0.contains("unknown route `zzz`") && err.0.contains("a, b"),
            "{err}"
        );
        assert!(!board.hangs("a"), "nothing half-applied");
        let err = board
            .apply(&plan(r#"{"routes": {"a": {"error_rate": 1.5}}}"#))
            .unwrap_err();
        assert!(err.0.contains("routes.a: error_rate"), "{err}");
        assert!(
            serde_json::from_str::<FaultPlan>(r#"{"routes": {"a": {"hang": 1, "oops": 2}}}"#)
                .is_err()
        );
    }

    #[test]
    fn reset_clears_faults_and_stats() {
        let mut board = FaultBoard::new(1, 1.0, &ROUTES);
        board
            .apply(&plan(r#"{"time_scale": 0, "routes": {"a": {"hang": true, "latency": {"kind": "fixed", "ms": 10}}}}"#))
            .expect("applies");
        assert_eq!(
            board.admit("a", "/a", 1).delay,
            Duration::ZERO,
            "time scale 0"
        );
        assert!(board.hangs("a"));
        board.reset();
        assert!(!board.hangs("a"));
        assert_eq!(board.stats().calls("a"), 0);
    }
}
