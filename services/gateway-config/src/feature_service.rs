//! `[feature_services.NAME]`: a model's ordered feature set, its deadline and its defaults.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    time::Duration,
};

use fetcher_api::{FeatureType, Value};
use serde::Deserialize;

use crate::{problems::known, view::ViewConfig};

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
}

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
