//! `[sources.NAME.hedge]`: hedged requests for sources with a long latency tail.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::{Problems, parse_duration};

/// When a hedge is sent.
#[derive(Clone, Debug, PartialEq)]
pub enum HedgeTrigger {
    /// After this fraction (0..1) percentile of the source's observed latency.
    Percentile(f64),
    /// After a fixed delay.
    Fixed(Duration),
}

/// `[sources.NAME.hedge]`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct HedgeConfig {
    /// When a hedge is sent.
    pub trigger: HedgeTrigger,
    /// Most extra attempts per call.
    pub max_extra: u32,
    /// Hedges allowed, as a fraction of calls (0.1: one hedge per ten calls).
    pub budget_percent: f32,
}

/// `[sources.NAME.hedge]`: hedged requests. A call that has not answered after the hedge delay
/// is sent again; the first answer wins and the other is cancelled. Give one of `after` or
/// `delay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHedge {
    /// Hedge after this percentile of the source's observed latency, e.g. `"p95"` or `"p99.5"`.
    /// No hedge until 20 calls have been observed.
    #[serde(default)]
    pub after: Option<String>,
    /// Hedge after a fixed delay, e.g. `"30ms"`.
    #[serde(default)]
    pub delay: Option<String>,
    /// Most extra attempts per call, one per hedge delay. Default 1, at most 3.
    #[serde(default)]
    pub max_extra: Option<u32>,
    /// Hedges allowed as a fraction of calls, in (0, 1], so hedging cannot double the load of
    /// a slow source. Default 0.1.
    #[serde(default)]
    pub budget_percent: Option<f32>,
}

/// Checks a source's hedging settings.
pub(crate) fn hedge_policy(
    raw: &RawHedge,
    at: &[&str],
    problems: &mut Problems,
) -> Option<HedgeConfig> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let trigger = match (raw.after.as_deref(), raw.delay.as_deref()) {
        (Some(_), Some(_)) | (None, None) => {
            problems.add(at, "give exactly one of `after` (a percentile) or `delay`");
            return None;
        }
        (Some(after), None) => match parse_percentile(after) {
            Ok(p) => HedgeTrigger::Percentile(p),
            Err(msg) => {
                problems.add(&field("after"), msg);
                return None;
            }
        },
        (None, Some(delay)) => match parse_duration(delay) {
            Ok(d) if !d.is_zero() => HedgeTrigger::Fixed(d),
            Ok(_) => {
                problems.add(&field("delay"), "must be positive");
                return None;
            }
            Err(msg) => {
                problems.add(&field("delay"), msg);
                return None;
            }
        },
    };
    let max_extra = raw.max_extra.unwrap_or(1);
    if !(1..=3).contains(&max_extra) {
        problems.add(&field("max_extra"), "must be 1, 2 or 3");
        return None;
    }
    let budget_percent = raw.budget_percent.unwrap_or(0.1);
    if !(budget_percent > 0.0 && budget_percent <= 1.0) {
        problems.add(&field("budget_percent"), "must be in (0, 1]");
        return None;
    }
    Some(HedgeConfig {
        trigger,
        max_extra,
        budget_percent,
    })
}

/// Parses a percentile such as `p95` or `p99.9` into a fraction (0.95, 0.999).
fn parse_percentile(text: &str) -> Result<f64, String> {
    let value = text
        .strip_prefix('p')
        .and_then(|n| n.parse::<f64>().ok())
        .filter(|n| *n > 0.0 && *n < 100.0)
        .ok_or_else(|| {
            format!("expected a percentile such as \"p95\" or \"p99.9\", not {text:?}")
        })?;
    Ok(value / 100.0)
}
