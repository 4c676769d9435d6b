//! The reference profile: the file (see the crate docs for its fields), how one is built from
//! observations ([`Profiler`]), merged with another ([`Profile::merge`]), read and written.
//!
//! A profile's summaries (quantiles, bins, top categories, the null rate) are read from its
//! counts and sketches, so a merged profile is summarized again from the merged sketches, as a
//! profile of all the rows would be, and a profile read from its file is summarized again from
//! the sketches it holds. Reading a file checks its format and version and decodes every sketch: a corrupt
//! or foreign file is refused with the reason, never half-used.

use std::{collections::BTreeMap, path::Path, time::SystemTime};

use base64::{Engine, engine::general_purpose::STANDARD};
use datasketches::{
    common::SearchCriteria,
    frequencies::{ErrorType, FrequentItemsSketch},
    kll::{KllFloat, KllSketch},
};
use fetcher_api::{FeatureType, Value};
use serde::{Deserialize, Serialize};

use crate::{FREQUENT_ITEMS_MAP, KLL_K, Status, TOP_CATEGORIES};

/// The `format` of every profile file.
pub const FORMAT: &str = "feature-gateway.profile";
/// The version of the layout described in the crate docs.
pub const VERSION: u32 = 1;
/// The quantiles a numeric profile lists.
const QUANTILES: [f64; 7] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99];
/// The ranks of the bin edges: the deciles.
const DECILES: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Why a profile could not be read, written or merged.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The text is not a profile this build reads: the message says why.
    #[error("{0}")]
    Invalid(String),
    /// Two profiles (or a profile and a log) describe different features: the message names
    /// both sides.
    #[error("{0}")]
    Mismatch(String),
}

/// A feature service's reference profile: the file users keep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The feature service.
    pub feature_service: String,
    /// Its definition hash when the rows were served, if known.
    pub definition_hash: Option<String>,
    /// What the rows came from, one entry per merged part.
    pub sources: Vec<Source>,
    /// Vectors profiled.
    pub rows: u64,
    /// One per feature, in the feature service's output order.
    pub features: Vec<FeatureProfile>,
}

/// Where a profile's rows came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// What kind of input.
    pub kind: SourceKind,
    /// The log directory or the training-set file.
    pub path: String,
    /// The start of the range asked for (RFC 3339), when one was.
    pub from: Option<String>,
    /// The end of the range asked for (RFC 3339, exclusive), when one was.
    pub to: Option<String>,
    /// When the first row profiled was served (RFC 3339).
    pub first_served_at: Option<String>,
    /// When the last row profiled was served (RFC 3339).
    pub last_served_at: Option<String>,
    /// Rows profiled from it.
    pub rows: u64,
}

/// The kinds of input a profile is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A range of the training log's Parquet files.
    TrainingLog,
    /// A training set written by `feature-gateway training-set`.
    TrainingSet,
    /// Vectors profiled while they were served.
    Window,
}

/// One feature's profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    /// `VIEW:FEATURE`.
    pub name: String,
    /// Its declared type.
    #[serde(rename = "type", with = "type_name")]
    pub ty: FeatureType,
    /// Whether values were profiled (not for a `pii` feature: statuses only).
    pub values: bool,
    /// Observations.
    pub count: u64,
    /// Observations per status (absent: 0).
    pub statuses: BTreeMap<Status, u64>,
    /// Observations known to carry the configured default.
    pub default_served: u64,
    /// Observations for which that is not known.
    pub default_unknown: u64,
    /// Observations whose value is null.
    pub nulls: u64,
    /// `nulls / count` (0 when nothing was observed).
    pub null_rate: f64,
    /// The distribution of a number, or of a length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<NumericProfile>,
    /// The distribution of a string or a bool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categorical: Option<CategoricalProfile>,
}

/// What a numeric profile measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    /// The value (int64, double).
    Value,
    /// A timestamp, as seconds since the epoch.
    EpochSeconds,
    /// The length of bytes or of a list.
    Length,
}

/// The distribution of a numeric measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericProfile {
    /// What is measured.
    pub measure: Measure,
    /// Values sketched (not null, not NaN).
    pub count: u64,
    /// NaN values (not sketched).
    pub nan: u64,
    /// The least value.
    #[serde(with = "num_opt")]
    pub min: Option<f64>,
    /// The greatest value.
    #[serde(with = "num_opt")]
    pub max: Option<f64>,
    /// Quantiles, when there are values.
    pub quantiles: Option<Quantiles>,
    /// The distinct deciles p10..p90: the bins' inner edges.
    #[serde(with = "num_vec")]
    pub edges: Vec<f64>,
    /// Each bin's share of the values (one more than `edges`; empty without values).
    pub shares: Vec<f64>,
    /// The KLL sketch, base64 of its DataSketches serialization.
    pub kll: String,
}

/// Quantiles of a numeric measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Quantiles {
    #[serde(with = "num")]
    pub p1: f64,
    #[serde(with = "num")]
    pub p5: f64,
    #[serde(with = "num")]
    pub p25: f64,
    #[serde(with = "num")]
    pub p50: f64,
    #[serde(with = "num")]
    pub p75: f64,
    #[serde(with = "num")]
    pub p95: f64,
    #[serde(with = "num")]
    pub p99: f64,
}

/// The distribution of a categorical value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoricalProfile {
    /// Values sketched (not null).
    pub count: u64,
    /// The most frequent values, most frequent first.
    pub top: Vec<Category>,
    /// The share of every other value.
    pub other_share: f64,
    /// The frequent-items sketch, base64 of its DataSketches serialization.
    pub frequent_items: String,
}

/// One frequent value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// The value (`"true"` or `"false"` for a bool).
    pub value: String,
    /// Its share of the values.
    pub share: f64,
}

/// A feature to profile.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSpec {
    /// `VIEW:FEATURE`.
    pub name: String,
    /// Its declared type.
    pub ty: FeatureType,
    /// Whether its values are profiled (false for a `pii` feature).
    pub values: bool,
}

/// How a feature of a type is profiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A numeric measure of the value.
    Numeric(Measure),
    /// The value as a category.
    Categorical,
}

impl Kind {
    /// How a feature of type `ty` is profiled.
    pub fn of(ty: FeatureType) -> Kind {
        match ty {
            FeatureType::Int64 | FeatureType::Double => Kind::Numeric(Measure::Value),
            FeatureType::Timestamp => Kind::Numeric(Measure::EpochSeconds),
            FeatureType::Bytes
            | FeatureType::Int64List
            | FeatureType::DoubleList
            | FeatureType::StringList => Kind::Numeric(Measure::Length),
            FeatureType::String | FeatureType::Bool => Kind::Categorical,
        }
    }
}

/// The numeric measure of a value: the number, a timestamp's epoch seconds, a length. `None`
/// for null and for strings and bools.
pub fn measure(value: &Value) -> Option<f64> {
    Some(match value {
        Value::Int64(i) => *i as f64,
        Value::Double(d) => *d,
        Value::Timestamp(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        },
        Value::Bytes(b) => b.len() as f64,
        Value::Int64List(l) => l.len() as f64,
        Value::DoubleList(l) => l.len() as f64,
        Value::StringList(l) => l.len() as f64,
        Value::Null | Value::String(_) | Value::Bool(_) => return None,
    })
}

/// The category of a value: a string itself, a bool as `"true"` or `"false"`. `None` otherwise.
pub fn category(value: &Value) -> Option<&str> {
    match value {
        Value::String(s) => Some(s),
        Value::Bool(true) => Some("true"),
        Value::Bool(false) => Some("false"),
        _ => None,
    }
}

/// Whether a value read from the training log is the configured default, from its status: a
/// PRESENT one is not; a value with another status (but STALE) can only be the default; a
/// STALE value may be the cached value or the default (`None`: not known).
pub fn logged_default(status: Status, value: &Value) -> Option<bool> {
    match status {
        Status::Present => Some(false),
        Status::Stale => None,
        _ => Some(!value.is_null()),
    }
}

/// Builds a [`Profile`] from observations: one per feature per vector.
#[derive(Debug)]
pub struct Profiler {
    features: Vec<FeatureState>,
    rows: u64,
}

impl Profiler {
    /// A profiler of `features`, in output order.
    pub fn new(features: Vec<FeatureSpec>) -> Profiler {
        Profiler {
            features: features.into_iter().map(FeatureState::new).collect(),
            rows: 0,
        }
    }

    /// Counts one vector (call once per vector, with one [`Profiler::observe`] per feature).
    pub fn row(&mut self) {
        self.rows += 1;
    }

    /// Vectors counted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Observes feature `feature` (its index in the specs) served with `status` and `value`;
    /// `default` says whether the value is the configured default (`None`: not known). An index
    /// out of range is ignored.
    pub fn observe(
        &mut self,
        feature: usize,
        status: Status,
        value: &Value,
        default: Option<bool>,
    ) {
        if let Some(f) = self.features.get_mut(feature) {
            f.observe(status, value, default);
        }
    }

    /// The profile of what was observed.
    pub fn finish(
        self,
        feature_service: &str,
        definition_hash: Option<String>,
        source: Option<Source>,
    ) -> Profile {
        Profile {
            format: FORMAT.to_owned(),
            version: VERSION,
            feature_service: feature_service.to_owned(),
            definition_hash,
            sources: source.into_iter().collect(),
            rows: self.rows,
            features: self.features.iter().map(FeatureState::summarize).collect(),
        }
    }
}

/// A feature's counters and sketches while profiling.
#[derive(Debug)]
struct FeatureState {
    spec: FeatureSpec,
    count: u64,
    statuses: [u64; 7],
    default_served: u64,
    default_unknown: u64,
    nulls: u64,
    nan: u64,
    kll: Option<KllSketch<KllFloat<f64>>>,
    items: Option<FrequentItemsSketch<String>>,
}

impl FeatureState {
    fn new(spec: FeatureSpec) -> FeatureState {
        let (kll, items) = match (spec.values, Kind::of(spec.ty)) {
            (false, _) => (None, None),
            (true, Kind::Numeric(_)) => (Some(new_kll()), None),
            (true, Kind::Categorical) => (None, Some(new_items())),
        };
        FeatureState {
            spec,
            count: 0,
            statuses: [0; 7],
            default_served: 0,
            default_unknown: 0,
            nulls: 0,
            nan: 0,
            kll,
            items,
        }
    }

    fn observe(&mut self, status: Status, value: &Value, default: Option<bool>) {
        self.count += 1;
        self.statuses[status.index()] += 1;
        match default {
            Some(true) => self.default_served += 1,
            Some(false) => {}
            None => self.default_unknown += 1,
        }
        if !self.spec.values {
            return;
        }
        // A value of another type than declared cannot be served (values are checked against
        // their declaration); were one observed, it counts as no value.
        if let Some(kll) = &mut self.kll {
            match measure(value).map(KllFloat::<f64>::new) {
                Some(Ok(x)) => kll.update(x),
                Some(Err(_)) => self.nan += 1,
                None => self.nulls += 1,
            }
        } else if let Some(items) = &mut self.items {
            match category(value) {
                Some(c) => items.update_ref(c),
                None => self.nulls += 1,
            }
        }
    }

    /// Adds `other`'s observations (a state of the same feature).
    fn merge(&mut self, other: &FeatureState) {
        self.count += other.count;
        for (a, b) in self.statuses.iter_mut().zip(other.statuses) {
            *a += b;
        }
        self.default_served += other.default_served;
        self.default_unknown += other.default_unknown;
        self.nulls += other.nulls;
        self.nan += other.nan;
        if let (Some(a), Some(b)) = (&mut self.kll, &other.kll) {
            // Only fails past u64::MAX values.
            let _ = a.merge(b);
        }
        if let (Some(a), Some(b)) = (&mut self.items, &other.items) {
            a.merge(b);
        }
    }

    fn summarize(&self) -> FeatureProfile {
        let numeric = self.kll.as_ref().map(|kll| {
            let Kind::Numeric(measure) = Kind::of(self.spec.ty) else {
                unreachable!("a KLL sketch is kept for numeric kinds only")
            };
            summarize_kll(kll, measure, self.nan)
        });
        let categorical = self.items.as_ref().map(summarize_items);
        FeatureProfile {
            name: self.spec.name.clone(),
            ty: self.spec.ty,
            values: self.spec.values,
            count: self.count,
            statuses: Status::ALL
                .into_iter()
                .filter(|s| self.statuses[s.index()] > 0)
                .map(|s| (s, self.statuses[s.index()]))
                .collect(),
            default_served: self.default_served,
            default_unknown: self.default_unknown,
            nulls: self.nulls,
            null_rate: share(self.nulls, self.count),
            numeric,
            categorical,
        }
    }

    /// The state a profile's feature was summarized from (its sketches decoded).
    fn from_profile(f: &FeatureProfile) -> Result<FeatureState, ProfileError> {
        let bad = |what: String| ProfileError::Invalid(format!("feature `{}`: {what}", f.name));
        let mut state = FeatureState::new(FeatureSpec {
            name: f.name.clone(),
            ty: f.ty,
            values: f.values,
        });
        state.count = f.count;
        for (s, n) in &f.statuses {
            state.statuses[s.index()] = *n;
        }
        state.default_served = f.default_served;
        state.default_unknown = f.default_unknown;
        state.nulls = f.nulls;
        match (&mut state.kll, &mut state.items, &f.numeric, &f.categorical) {
            (None, None, None, None) => {}
            (Some(kll), None, Some(n), None) => {
                let bytes = STANDARD
                    .decode(&n.kll)
                    .map_err(|e| bad(format!("its KLL sketch is not base64: {e}")))?;
                *kll = KllSketch::deserialize(&bytes)
                    .map_err(|e| bad(format!("its KLL sketch does not decode: {e}")))?;
                if kll.n() != n.count {
                    return Err(bad(format!(
                        "its KLL sketch holds {} values, its count says {}",
                        kll.n(),
                        n.count
                    )));
                }
                if n.shares.len() != n.edges.len() + usize::from(n.count > 0) {
                    return Err(bad(format!(
                        "{} bin shares for {} edges",
                        n.shares.len(),
                        n.edges.len()
                    )));
                }
                state.nan = n.nan;
            }
            (None, Some(items), None, Some(c)) => {
                let bytes = STANDARD
                    .decode(&c.frequent_items)
                    .map_err(|e| bad(format!("its frequent-items sketch is not base64: {e}")))?;
                *items = FrequentItemsSketch::deserialize(&bytes)
                    .map_err(|e| bad(format!("its frequent-items sketch does not decode: {e}")))?;
                if items.total_weight() != c.count {
                    return Err(bad(format!(
                        "its frequent-items sketch holds {} values, its count says {}",
                        items.total_weight(),
                        c.count
                    )));
                }
            }
            _ => {
                return Err(bad(format!(
                    "a {} feature{} has {}",
                    f.ty.name(),
                    if f.values { "" } else { " without values" },
                    match (&f.numeric, &f.categorical) {
                        (None, None) => "no distribution",
                        (Some(_), None) => "a numeric distribution",
                        (None, Some(_)) => "a categorical distribution",
                        (Some(_), Some(_)) => "both a numeric and a categorical distribution",
                    }
                )));
            }
        }
        let observed: u64 = f.statuses.values().sum();
        if observed != f.count {
            return Err(bad(format!(
                "its statuses add up to {observed}, its count says {}",
                f.count
            )));
        }
        Ok(state)
    }
}

fn new_kll() -> KllSketch<KllFloat<f64>> {
    // KLL_K is within the sketch's bounds (8..=65535).
    KllSketch::new(KLL_K).unwrap_or_default()
}

fn new_items() -> FrequentItemsSketch<String> {
    match FrequentItemsSketch::new(FREQUENT_ITEMS_MAP) {
        Ok(sketch) => sketch,
        // FREQUENT_ITEMS_MAP is a power of two within the sketch's bounds.
        Err(_) => unreachable!("FREQUENT_ITEMS_MAP is a valid map size"),
    }
}

/// `part / whole`, 0 when `whole` is 0.
pub(crate) fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn summarize_kll(kll: &KllSketch<KllFloat<f64>>, measure: Measure, nan: u64) -> NumericProfile {
    let kll_b64 = STANDARD.encode(kll.serialize());
    let quantiles = |ranks: &[f64]| -> Option<Vec<f64>> {
        let q = kll.quantiles(ranks, SearchCriteria::Inclusive).ok()??;
        Some(q.into_iter().map(KllFloat::into_inner).collect())
    };
    let (Some(q), Some(mut edges)) = (quantiles(&QUANTILES), quantiles(&DECILES)) else {
        return NumericProfile {
            measure,
            count: 0,
            nan,
            min: None,
            max: None,
            quantiles: None,
            edges: Vec::new(),
            shares: Vec::new(),
            kll: kll_b64,
        };
    };
    edges.dedup();
    let points: Vec<KllFloat<f64>> = edges
        .iter()
        .filter_map(|&e| KllFloat::<f64>::new(e).ok())
        .collect();
    let cdf = kll
        .cdf(&points, SearchCriteria::Inclusive)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut below = 0.0;
    let shares = cdf
        .into_iter()
        .map(|c| {
            let s = (c - below).max(0.0);
            below = c;
            s
        })
        .collect();
    NumericProfile {
        measure,
        count: kll.n(),
        nan,
        min: kll.min_item().map(|m| **m),
        max: kll.max_item().map(|m| **m),
        quantiles: Some(Quantiles {
            p1: q[0],
            p5: q[1],
            p25: q[2],
            p50: q[3],
            p75: q[4],
            p95: q[5],
            p99: q[6],
        }),
        edges,
        shares,
        kll: kll_b64,
    }
}

fn summarize_items(items: &FrequentItemsSketch<String>) -> CategoricalProfile {
    let total = items.total_weight();
    let mut rows = items.frequent_items_with_threshold(ErrorType::NoFalseNegatives, 0);
    // Most frequent first; equal counts by value, so a profile reads the same every time.
    rows.sort_by(|a, b| {
        b.estimate()
            .cmp(&a.estimate())
            .then_with(|| a.item().cmp(b.item()))
    });
    let top: Vec<Category> = rows
        .iter()
        .take(TOP_CATEGORIES)
        .map(|r| Category {
            value: r.item().clone(),
            share: share(r.estimate(), total),
        })
        .collect();
    let listed: f64 = top.iter().map(|c| c.share).sum();
    CategoricalProfile {
        count: total,
        other_share: if total == 0 {
            0.0
        } else {
            (1.0 - listed).max(0.0)
        },
        top,
        frequent_items: STANDARD.encode(items.serialize()),
    }
}

impl Profile {
    /// The profile in its file form: pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Every field serializes: numbers are finite or written as strings.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Parses and checks a profile: its format and version, and every sketch.
    pub fn from_json(text: &str) -> Result<Profile, ProfileError> {
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ProfileError::Invalid(format!("not JSON: {e}")))?;
        match json.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(ProfileError::Invalid(format!(
                    "not a feature-gateway profile: its format is `{other}`, not `{FORMAT}`"
                )));
            }
            None => {
                return Err(ProfileError::Invalid(format!(
                    "not a feature-gateway profile: no `\"format\": \"{FORMAT}\"`"
                )));
            }
        }
        match json.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(ProfileError::Invalid(format!(
                    "profile version {v}; this build reads version {VERSION}"
                )));
            }
            None => return Err(ProfileError::Invalid("the profile has no version".into())),
        }
        let mut profile: Profile = serde_json::from_value(json)
            .map_err(|e| ProfileError::Invalid(format!("a malformed profile: {e}")))?;
        // The summaries are read again from the counts and sketches: they are what the file's
        // numbers were written from, bit for bit (a decimal number read back need not be), and
        // a summary edited by hand cannot disagree with its sketch.
        for f in &mut profile.features {
            *f = FeatureState::from_profile(f)?.summarize();
        }
        Ok(profile)
    }

    /// Reads and checks the profile file at `path`.
    pub fn read(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Profile::from_json(&text).map_err(|e| match e {
            ProfileError::Invalid(m) => ProfileError::Invalid(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Writes the profile to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ProfileError> {
        std::fs::write(path, self.to_json()).map_err(|source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The features as specs (name, type, whether values are profiled).
    pub fn specs(&self) -> Vec<FeatureSpec> {
        self.features
            .iter()
            .map(|f| FeatureSpec {
                name: f.name.clone(),
                ty: f.ty,
                values: f.values,
            })
            .collect()
    }

    /// Adds `other`'s rows: counts add up, sketches merge and every summary is read again from
    /// the merged sketches. Refused, naming both, when the profiles are of another feature
    /// service or definition, or of other features.
    pub fn merge(&mut self, other: &Profile) -> Result<(), ProfileError> {
        if self.feature_service != other.feature_service {
            return Err(ProfileError::Mismatch(format!(
                "a profile of `{}` cannot merge one of `{}`",
                self.feature_service, other.feature_service
            )));
        }
        if let (Some(a), Some(b)) = (&self.definition_hash, &other.definition_hash)
            && a != b
        {
            return Err(ProfileError::Mismatch(format!(
                "`{}` profiled as definition {a} cannot merge definition {b}",
                self.feature_service
            )));
        }
        if self.specs() != other.specs() {
            return Err(ProfileError::Mismatch(format!(
                "`{}`'s profiles have other features: {} and {}",
                self.feature_service,
                describe(&self.specs()),
                describe(&other.specs())
            )));
        }
        let mut merged = Vec::with_capacity(self.features.len());
        for (a, b) in self.features.iter().zip(&other.features) {
            let mut state = FeatureState::from_profile(a)?;
            state.merge(&FeatureState::from_profile(b)?);
            merged.push(state.summarize());
        }
        self.features = merged;
        self.rows += other.rows;
        self.sources.extend(other.sources.iter().cloned());
        if self.definition_hash.is_none() {
            self.definition_hash.clone_from(&other.definition_hash);
        }
        Ok(())
    }
}

/// `name (type), ...` of specs, for messages.
pub(crate) fn describe(specs: &[FeatureSpec]) -> String {
    let parts: Vec<String> = specs
        .iter()
        .map(|s| format!("{} ({})", s.name, s.ty.name()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Feature types as their configuration names (`int64`, `list<string>`, ...).
mod type_name {
    use fetcher_api::FeatureType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ty: &FeatureType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(ty.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FeatureType, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A double in JSON: a number when finite, else `"inf"`, `"-inf"` or `"NaN"`.
#[derive(Clone, Copy, Debug)]
struct Num(f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            x if x.is_finite() => s.serialize_f64(x),
            x if x.is_nan() => s.serialize_str("NaN"),
            x if x > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }
}

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(x) => Ok(Num(x)),
            Repr::Text(t) => match t.as_str() {
                "inf" => Ok(Num(f64::INFINITY)),
                "-inf" => Ok(Num(f64::NEG_INFINITY)),
                "NaN" => Ok(Num(f64::NAN)),
                other => Err(serde::de::Error::custom(format!(
                    "`{other}` is not a number (nor \"inf\", \"-inf\", \"NaN\")"
                ))),
            },
        }
    }
}

mod num {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Num;

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        Num(*x).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Num::deserialize(d).map(|n| n.0)
    }
}

mod num_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Num;

    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        x.map(Num).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Num>::deserialize(d).map(|n| n.map(|n| n.0))
    }
}

mod num_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Num;

    pub fn serialize<S: Serializer>(x: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let nums: Vec<Num> = x.iter().copied().map(Num).collect();
        nums.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Num>::deserialize(d).map(|v| v.into_iter().map(|n| n.0).collect())
    }
}

#[cfg(test)]
mod tests;
