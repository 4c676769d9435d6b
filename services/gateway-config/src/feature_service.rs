//! `[feature_services.NAME]`: a model's ordered feature set, its deadline and its defaults, and
//! `[feature_services.NAME.monitor]`: the drift monitor comparing what it serves with a reference
//! profile.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use fetcher_api::{FeatureType, Value};
use serde::Deserialize;

use crate::{
    problems::{Problems, known},
    view::ViewConfig,
};

/// `[feature_services.NAME]`.
#[derive(Debug, Deserialize)]
pub struct RawFeatureService {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The most time a request may take; the caller's deadline applies if earlier.
    /// Default `"50ms"`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// The features, in output order: `"VIEW:FEATURE"`, or `"VIEW:*"` for all of a view's
    /// features in name order.
    pub features: Vec<String>,
    /// Values served when a feature cannot be (with the status that says why), by feature ref.
    #[serde(default)]
    pub defaults: BTreeMap<String, toml::Value>,
    /// `[feature_services.NAME.monitor]`: drift monitoring; off when absent.
    #[serde(default)]
    pub monitor: Option<RawMonitor>,
}

/// `[feature_services.NAME.monitor]`.
#[derive(Debug, Deserialize)]
pub struct RawMonitor {
    /// The reference profile (`feature-gateway profile`'s output), relative to the
    /// configuration file. Read and checked against the feature service when the gateway is
    /// built (at start and on a reload), not by `validate`.
    pub reference: String,
    /// The rolling window the served features are compared over. Default `"5m"`; at least `"1s"`.
    #[serde(default)]
    pub window: Option<String>,
    /// The population stability index above which a feature moved. Default 0.2.
    #[serde(default)]
    pub psi_threshold: Option<f64>,
    /// The change of a feature's null rate, in percentage points, above which it moved.
    /// Default 5.
    #[serde(default)]
    pub null_rate_threshold: Option<f64>,
    /// The change of a non-PRESENT status's share or of the share of defaults served, in
    /// percentage points, above which a feature moved. Default 5.
    #[serde(default)]
    pub status_threshold: Option<f64>,
    /// The share of served vectors observed, above 0 and at most 1. Default 1.
    #[serde(default)]
    pub sample: Option<f64>,
}

/// A feature service's drift monitor.
#[derive(Clone, Debug, PartialEq)]
pub struct MonitorConfig {
    /// The reference profile's file, resolved against the configuration file's directory.
    pub reference: PathBuf,
    /// The rolling window's length.
    pub window: Duration,
    /// PSI threshold.
    pub psi_threshold: f64,
    /// Null rate threshold, in percentage points.
    pub null_rate_threshold: f64,
    /// Status and defaults share threshold, in percentage points.
    pub status_threshold: f64,
    /// Share of served vectors observed.
    pub sample: f64,
}

/// The default rolling window of a drift monitor.
pub const DEFAULT_MONITOR_WINDOW: Duration = Duration::from_secs(300);
/// The shortest rolling window of a drift monitor.
pub const MIN_MONITOR_WINDOW: Duration = Duration::from_secs(1);

/// A feature service.
#[derive(Clone, Debug)]
pub struct FeatureServiceConfig {
    /// Its name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Its own deadline.
    pub deadline: Duration,
    /// Its features, in output order.
    pub features: Vec<FeatureRef>,
    /// Default values by feature.
    pub defaults: HashMap<FeatureRef, Value>,
    /// Its drift monitor, when configured.
    pub monitor: Option<MonitorConfig>,
}

/// A reference `VIEW:FEATURE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureRef {
    /// The view.
    pub view: String,
    /// The feature.
    pub feature: String,
}

impl FeatureRef {
    /// Splits `VIEW:FEATURE`.
    pub fn parse(text: &str) -> Result<FeatureRef, String> {
        match text.split_once(':') {
            Some((view, feature)) if !view.is_empty() && !feature.is_empty() => Ok(FeatureRef {
                view: view.to_owned(),
                feature: feature.to_owned(),
            }),
            _ => Err(format!(
                "`{text}` is not a feature reference `VIEW:FEATURE`"
            )),
        }
    }
}

impl fmt::Display for FeatureRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.view, self.feature)
    }
}

/// The default feature service deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(50);

/// Expands one entry of a feature service's `features` list.
pub(crate) fn resolve_refs(
    text: &str,
    views: &BTreeMap<String, ViewConfig>,
) -> Result<Vec<FeatureRef>, String> {
    let r = FeatureRef::parse(text)?;
    let view = views
        .get(&r.view)
        .ok_or_else(|| format!("unknown view `{}`{}", r.view, known(views.keys())))?;
    if r.feature == "*" {
        return Ok(view
            .features
            .keys()
            .map(|f| FeatureRef {
                view: r.view.clone(),
                feature: f.clone(),
            })
            .collect());
    }
    if !view.features.contains_key(&r.feature) {
        return Err(format!(
            "view `{}` has no feature `{}`{}",
            r.view,
            r.feature,
            known(view.features.keys())
        ));
    }
    Ok(vec![r])
}

/// Converts a default value written in TOML to the feature's type.
pub(crate) fn toml_to_value(value: &toml::Value, ty: FeatureType) -> Result<Value, String> {
    let json = match value {
        toml::Value::Datetime(dt) => serde_json::Value::String(dt.to_string()),
        other => serde_json::to_value(other).map_err(|e| e.to_string())?,
    };
    ty.from_json(&json)
        .map_err(|e| format!("default does not fit the feature's type: {e}"))
}

/// Validates `[feature_services.NAME.monitor]` (no I/O: the reference is read when the gateway
/// is built). `None` when a field is wrong; each problem is reported at its field.
pub(crate) fn validate_monitor(
    raw: &RawMonitor,
    name: &str,
    base_dir: &Path,
    problems: &mut Problems,
) -> Option<MonitorConfig> {
    let at = |field: &'static str| ["feature_services", name, "monitor", field];
    let before = problems.0.len();
    if raw.reference.trim().is_empty() {
        problems.add(&at("reference"), "names the reference profile's file");
    }
    let window = problems.duration(
        &at("window"),
        raw.window.as_deref(),
        DEFAULT_MONITOR_WINDOW,
        false,
    );
    if window < MIN_MONITOR_WINDOW {
        problems.add(
            &at("window"),
            format!(
                "must be at least {}",
                fetcher_api::ConfigDuration(MIN_MONITOR_WINDOW)
            ),
        );
    }
    let mut threshold = |field: &'static str, value: Option<f64>, default: f64| match value {
        None => default,
        Some(t) if t.is_finite() && t > 0.0 => t,
        Some(t) => {
            problems.add(&at(field), format!("a threshold is above 0, not {t}"));
            default
        }
    };
    let psi_threshold = threshold("psi_threshold", raw.psi_threshold, 0.2);
    let null_rate_threshold = threshold("null_rate_threshold", raw.null_rate_threshold, 5.0);
    let status_threshold = threshold("status_threshold", raw.status_threshold, 5.0);
    let sample = match raw.sample {
        None => 1.0,
        Some(s) if s > 0.0 && s <= 1.0 => s,
        Some(s) => {
            problems.add(
                &at("sample"),
                format!("a sampling rate is above 0 and at most 1, not {s}"),
            );
            1.0
        }
    };
    (problems.0.len() == before).then(|| MonitorConfig {
        reference: base_dir.join(&raw.reference),
        window,
        psi_threshold,
        null_rate_threshold,
        status_threshold,
        sample,
    })
}
