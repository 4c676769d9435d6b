//! `[views.NAME]`: a group of features read from one source with one key, or computed from
//! other features (`kind = "derived"`: each feature a CEL expression, see the `derived` crate).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use fetcher_api::{FeatureType, Options};
use serde::Deserialize;

/// `[views.NAME]`: the fields every view has; everything else is its source kind's options.
#[derive(Debug, Deserialize)]
pub struct RawView {
    /// `"derived"` for a view computed from other features; absent for a view read from its
    /// source.
    #[serde(default)]
    pub kind: Option<String>,
    /// The source the view reads from (none for a derived view).
    #[serde(default)]
    pub source: Option<String>,
    /// The entities the view is keyed by, in key order. Empty for `request` views.
    #[serde(default)]
    pub entities: Vec<String>,
    /// Values older than this (by the source's event time) are not served: OUTSIDE_MAX_AGE.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The view's features.
    #[serde(default)]
    pub features: BTreeMap<String, RawFeature>,
    /// Options of the source's kind.
    #[serde(flatten)]
    pub options: toml::Table,
}

/// `[views.VIEW.features.NAME]`.
#[derive(Debug, Deserialize)]
pub struct RawFeature {
    /// The feature's type: int64, double, string, bool, bytes, timestamp, list<int64>,
    /// list<double>, list<string>.
    #[serde(rename = "type")]
    pub ty: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Personal data: the training log hashes or drops its value (`[training_log] pii`).
    /// Serving is unaffected. Default false.
    #[serde(default)]
    pub pii: bool,
    /// Views of a `request` source only: a request without this context value is refused with
    /// INVALID_ARGUMENT instead of serving the feature as NOT_FOUND. Default false. Absent and
    /// `false` are told apart so that the option on any other view is reported, not ignored.
    #[serde(default)]
    pub required: Option<bool>,
    /// Features of a derived view only: the CEL expression computing the value from other
    /// views' features, e.g. `txn.amount / user_profile.avg_txn_amount_30d`.
    #[serde(default)]
    pub expr: Option<String>,
}

/// A feature view.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// Its name.
    pub name: String,
    /// Its source's name; empty for a derived view.
    pub source: String,
    /// Whether it is computed from other features (`kind = "derived"`) rather than fetched.
    pub derived: bool,
    /// Its entity keys, in key order.
    pub entities: Vec<String>,
    /// Its max age.
    pub max_age: Option<Duration>,
    /// Free text.
    pub description: String,
    /// Its features by name.
    pub features: BTreeMap<String, FeatureConfig>,
    /// Its source-kind options, rendered canonically (part of definition hashes).
    pub options: Options,
}

/// A feature of a view.
#[derive(Clone, Debug)]
pub struct FeatureConfig {
    /// Its type.
    pub ty: FeatureType,
    /// Free text.
    pub description: String,
    /// Personal data, hashed or dropped in the training log.
    pub pii: bool,
    /// A context value (a feature of a `request` view) every request must carry.
    pub required: bool,
    /// A derived view's feature: its compiled, type-checked expression.
    pub expr: Option<Arc<derived::Expression>>,
}
