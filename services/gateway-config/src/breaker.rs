//! `[sources.NAME.circuit_breaker]`: stop calling a source that keeps failing.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::{Problems, parse_duration};

/// `[sources.NAME.circuit_breaker]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Failures in a row that open the circuit.
    pub consecutive_failures: u32,
    /// Failure rate over the window that opens the circuit.
    pub failure_rate: f64,
    /// Calls the failure rate is computed over.
    pub window: usize,
    /// How long the circuit stays open before probing.
    pub open_for: Duration,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
}

/// `[sources.NAME.circuit_breaker]`: stop calling a source that keeps failing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    /// Failures in a row that open the circuit. Default 5.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// Failure rate over the last `window` calls that opens the circuit, 0..1. Default 0.5.
    #[serde(default)]
    pub failure_rate: Option<f64>,
    /// Calls the failure rate is computed over. Default 20.
    #[serde(default)]
    pub window: Option<usize>,
    /// How long the circuit stays open (calls fail at once) before probing. Default "5s".
    #[serde(default)]
    pub open_for: Option<String>,
    /// Calls let through to probe a half-open circuit. Default 1.
    #[serde(default)]
    pub half_open_probes: Option<u32>,
}

/// Checks a source's circuit breaker settings.
pub(crate) fn breaker_policy(
    raw: &RawCircuitBreaker,
    at: &[&str],
    problems: &mut Problems,
) -> Option<BreakerConfig> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let open_for = match raw.open_for.as_deref() {
        None => Duration::from_secs(5),
        Some(t) => parse_duration(t)
            .map_err(|msg| problems.add(&field("open_for"), msg))
            .ok()?,
    };
    let failure_rate = raw.failure_rate.unwrap_or(0.5);
    if !(failure_rate > 0.0 && failure_rate <= 1.0) {
        problems.add(&field("failure_rate"), "must be in (0, 1]");
        return None;
    }
    let policy = BreakerConfig {
        consecutive_failures: raw.consecutive_failures.unwrap_or(5),
        failure_rate,
        window: raw.window.unwrap_or(20),
        open_for,
        half_open_probes: raw.half_open_probes.unwrap_or(1),
    };
    for (name, zero) in [
        ("consecutive_failures", policy.consecutive_failures == 0),
        ("window", policy.window == 0),
        ("half_open_probes", policy.half_open_probes == 0),
    ] {
        if zero {
            problems.add(&field(name), "must be at least 1");
            return None;
        }
    }
    Some(policy)
}
