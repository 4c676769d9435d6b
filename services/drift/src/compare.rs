//! A window of served vectors against a reference profile.
//!
//! A [`Reference`] is a profile prepared for comparison: each feature's buckets (its decile
//! bins or its top categories and "other", then "null") and the reference's share of each. A
//! [`Window`] counts observations into those buckets exactly — per feature a few counters, no
//! sketch — so it is cheap enough to run beside serving, and two windows of one reference add up
//! ([`Window::merge`]). An observation can be coded where it is served ([`Reference::code`]: the
//! status, null and default flags and the bucket, four bytes) and counted later, with a weight
//! when it was sampled ([`Window::count`]). [`Window::compare`] gives each feature's
//! [`FeatureDrift`], ranked by severity.

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use fetcher_api::{FeatureType, Value};

use crate::{
    Status,
    profile::{FeatureSpec, Kind, Profile, ProfileError, category, describe, measure, share},
    psi::psi,
};

/// When a feature counts as moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// The population stability index above which a feature moved (default 0.2).
    pub psi: f64,
    /// The change of the null rate, in percentage points either way, above which a feature
    /// moved (default 5).
    pub null_rate_points: f64,
    /// The change of a non-PRESENT status's share, or of the share of defaults served, in
    /// percentage points either way, above which a feature moved (default 5).
    pub status_points: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            psi: 0.2,
            null_rate_points: 5.0,
            status_points: 5.0,
        }
    }
}

/// How a reference feature's values fall into buckets.
#[derive(Debug)]
enum Bins {
    /// Values are not compared (a `pii` feature).
    None,
    /// Bin `i` holds values in `(edges[i-1], edges[i]]`; the last, values above every edge.
    Numeric { edges: Vec<f64> },
    /// Bucket `i` holds category `i`; the one after them, every other value.
    Categorical { index: HashMap<String, usize> },
}

/// One feature of a [`Reference`].
#[derive(Debug)]
struct ReferenceFeature {
    spec: FeatureSpec,
    bins: Bins,
    /// Each bucket's name, the null bucket last.
    labels: Vec<String>,
    /// Each bucket's share of the reference's observations, the null bucket last.
    shares: Vec<f64>,
    count: u64,
    statuses: [f64; 7],
    null_rate: f64,
    default_share: f64,
}

/// A reference profile prepared for comparison.
#[derive(Debug)]
pub struct Reference {
    profile: Profile,
    features: Vec<ReferenceFeature>,
}

impl Reference {
    /// Prepares `profile` (as read by [`Profile::read`], which checked it).
    pub fn new(profile: Profile) -> Reference {
        let features = profile
            .features
            .iter()
            .zip(profile.specs())
            .map(|(f, spec)| {
                let (bins, mut labels, mut shares, null) = match (&f.numeric, &f.categorical) {
                    (Some(n), _) if f.values => {
                        let values = share(n.count, f.count);
                        let labels = if n.edges.is_empty() {
                            vec!["all values".to_owned()]
                        } else {
                            bin_labels(&n.edges)
                        };
                        let mut shares: Vec<f64> = n.shares.iter().map(|s| s * values).collect();
                        shares.resize(labels.len(), 0.0);
                        let null = share(f.nulls + n.nan, f.count);
                        let bins = Bins::Numeric {
                            edges: n.edges.clone(),
                        };
                        (bins, labels, shares, ("(null or NaN)", null))
                    }
                    (_, Some(c)) if f.values => {
                        let values = share(c.count, f.count);
                        let mut labels: Vec<String> =
                            c.top.iter().map(|t| t.value.clone()).collect();
                        let mut shares: Vec<f64> = c.top.iter().map(|t| t.share * values).collect();
                        labels.push("(other)".to_owned());
                        shares.push(c.other_share * values);
                        let index = c
                            .top
                            .iter()
                            .enumerate()
                            .map(|(i, t)| (t.value.clone(), i))
                            .collect();
                        let null = share(f.nulls, f.count);
                        (
                            Bins::Categorical { index },
                            labels,
                            shares,
                            ("(null)", null),
                        )
                    }
                    _ => (Bins::None, Vec::new(), Vec::new(), ("", 0.0)),
                };
                if !matches!(bins, Bins::None) {
                    labels.push(null.0.to_owned());
                    shares.push(null.1);
                }
                let mut statuses = [0.0; 7];
                for (s, n) in &f.statuses {
                    statuses[s.index()] = share(*n, f.count);
                }
                ReferenceFeature {
                    spec,
                    bins,
                    labels,
                    shares,
                    count: f.count,
                    statuses,
                    null_rate: f.null_rate,
                    default_share: share(f.default_served, f.count),
                }
            })
            .collect();
        Reference { profile, features }
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The position of feature `name`.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.spec.name == name)
    }

    /// Maps `features` (what `other` serves or logged, each `VIEW:FEATURE` with its type) to
    /// this reference's positions. Refused, naming both sides, unless they are the same features
    /// with the same types (in any order): every difference is listed.
    pub fn check(
        &self,
        features: &[(String, FeatureType)],
        other: &str,
    ) -> Result<Vec<usize>, ProfileError> {
        let mut problems = Vec::new();
        let mut map = Vec::with_capacity(features.len());
        for (name, ty) in features {
            match self.feature_index(name) {
                Some(i) if self.features[i].spec.ty == *ty => map.push(i),
                Some(i) => problems.push(format!(
                    "`{name}` is {} in {other}, {} in the reference",
                    ty.name(),
                    self.features[i].spec.ty.name()
                )),
                None => problems.push(format!(
                    "`{name}` ({}) is in {other}, not in the reference",
                    ty.name()
                )),
            }
        }
        for f in &self.features {
            if !features.iter().any(|(name, _)| *name == f.spec.name) {
                problems.push(format!(
                    "`{}` ({}) is in the reference, not in {other}",
                    f.spec.name,
                    f.spec.ty.name()
                ));
            }
        }
        if problems.is_empty() {
            return Ok(map);
        }
        let reference: Vec<FeatureSpec> = self.features.iter().map(|f| f.spec.clone()).collect();
        Err(ProfileError::Mismatch(format!(
            "the reference profile of `{}` (definition {}; features {}) does not match {other}: {}",
            self.profile.feature_service,
            self.profile.definition_hash.as_deref().unwrap_or("unknown"),
            describe(&reference),
            problems.join("; ")
        )))
    }

    /// What a window counts of feature `feature` served with `status` and `value` (`default`:
    /// whether the value is the configured default, `None` when not known): the status, whether
    /// the value is null and known to be the default, and the bucket it falls into. The value
    /// itself is not kept, so a server codes a vector where it serves it and hands only the codes
    /// on (four bytes a feature, nothing allocated). An index out of range codes as no bucket.
    pub fn code(
        &self,
        feature: usize,
        status: Status,
        value: &Value,
        default: Option<bool>,
    ) -> Code {
        let bucket = self
            .bucket(feature, value)
            .and_then(|b| u16::try_from(b).ok())
            .unwrap_or(Code::NO_BUCKET);
        Code(
            u32::from(bucket)
                | (status.index() as u32) << Code::STATUS_SHIFT
                | u32::from(value.is_null()) << Code::NULL_BIT
                | u32::from(default == Some(true)) << Code::DEFAULT_BIT,
        )
    }

    /// The bucket an observed value falls into (the null bucket is the last); `None` when the
    /// feature's values are not compared. A number's bin is one binary search of the
    /// reference's edges (at most 9); a category's, one lookup of its top categories.
    fn bucket(&self, feature: usize, value: &Value) -> Option<usize> {
        let f = self.features.get(feature)?;
        let null = f.labels.len().checked_sub(1)?;
        Some(match (&f.bins, Kind::of(f.spec.ty)) {
            (Bins::None, _) => return None,
            (Bins::Numeric { edges }, Kind::Numeric(_)) => match measure(value) {
                Some(x) if !x.is_nan() => edges.partition_point(|e| *e < x),
                _ => null,
            },
            (Bins::Categorical { index }, Kind::Categorical) => match category(value) {
                Some(c) => index.get(c).copied().unwrap_or(null - 1),
                None => null,
            },
            _ => null,
        })
    }
}

/// One feature of one served vector as a [`Window`] counts it ([`Reference::code`]): its status,
/// whether its value is null and known to be the default, and the reference bucket the value
/// falls into, packed in four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code(u32);

impl Code {
    /// Bits 0..16: the bucket, or this when the value falls into none (values not compared).
    const NO_BUCKET: u16 = u16::MAX;
    /// Bits 16..19: the status's index in [`Status::ALL`].
    const STATUS_SHIFT: u32 = 16;
    /// Bit 19: the value is null.
    const NULL_BIT: u32 = 19;
    /// Bit 20: the value is the configured default.
    const DEFAULT_BIT: u32 = 20;

    fn bucket(self) -> Option<usize> {
        let b = (self.0 & 0xFFFF) as u16;
        (b != Code::NO_BUCKET).then_some(usize::from(b))
    }

    fn status(self) -> usize {
        ((self.0 >> Code::STATUS_SHIFT) & 0b111) as usize
    }

    fn flag(self, bit: u32) -> bool {
        self.0 >> bit & 1 == 1
    }
}

/// Labels of the bins bounded by `edges`.
fn bin_labels(edges: &[f64]) -> Vec<String> {
    let mut labels = Vec::with_capacity(edges.len() + 1);
    labels.push(format!("≤ {}", number(edges[0])));
    for pair in edges.windows(2) {
        labels.push(format!("{} – {}", number(pair[0]), number(pair[1])));
    }
    labels.push(format!("> {}", number(edges[edges.len() - 1])));
    labels
}

/// A number for people: up to four decimals, trailing zeros dropped; scientific when very large
/// or very small.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e9).contains(&a) {
        return format!("{x:.3e}");
    }
    let mut text = String::new();
    let _ = write!(text, "{x:.4}");
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed == "-0" {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Served vectors counted into a reference's buckets.
#[derive(Clone, Debug)]
pub struct Window {
    reference: Arc<Reference>,
    rows: u64,
    features: Vec<WindowFeature>,
}

#[derive(Clone, Debug, Default)]
struct WindowFeature {
    count: u64,
    statuses: [u64; 7],
    nulls: u64,
    default_served: u64,
    buckets: Vec<u64>,
}

impl Window {
    /// An empty window of `reference`'s features.
    pub fn new(reference: Arc<Reference>) -> Window {
        let features = reference
            .features
            .iter()
            .map(|f| WindowFeature {
                buckets: vec![0; f.labels.len()],
                ..WindowFeature::default()
            })
            .collect();
        Window {
            reference,
            rows: 0,
            features,
        }
    }

    /// The reference.
    pub fn reference(&self) -> &Arc<Reference> {
        &self.reference
    }

    /// Counts one vector.
    pub fn row(&mut self) {
        self.rows += 1;
    }

    /// Vectors counted.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Observes the reference's feature `feature` served with `status` and `value`; `default`:
    /// whether the value is the configured default (`None`: not known). An index out of range
    /// is ignored.
    pub fn observe(
        &mut self,
        feature: usize,
        status: Status,
        value: &Value,
        default: Option<bool>,
    ) {
        let code = self.reference.code(feature, status, value, default);
        self.count(feature, code, 1);
    }

    /// Counts feature `feature` coded as `code` (by this window's reference) with `weight`: a
    /// sampled observation standing for that many served vectors, in whatever unit every count
    /// of the window shares (the comparison reads shares, ratios of counts; [`Window::observe`]
    /// counts 1). An index out of range is ignored.
    pub fn count(&mut self, feature: usize, code: Code, weight: u64) {
        let Some(f) = self.features.get_mut(feature) else {
            return;
        };
        f.count += weight;
        f.statuses[code.status()] += weight;
        if code.flag(Code::DEFAULT_BIT) {
            f.default_served += weight;
        }
        if code.flag(Code::NULL_BIT) {
            f.nulls += weight;
        }
        if let Some(slot) = code.bucket().and_then(|b| f.buckets.get_mut(b)) {
            *slot += weight;
        }
    }

    /// Adds `other`'s counts (a window of the same reference).
    pub fn merge(&mut self, other: &Window) {
        self.rows += other.rows;
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            a.count += b.count;
            for (x, y) in a.statuses.iter_mut().zip(b.statuses) {
                *x += y;
            }
            a.nulls += b.nulls;
            a.default_served += b.default_served;
            for (x, y) in a.buckets.iter_mut().zip(&b.buckets) {
                *x += y;
            }
        }
    }

    /// Every feature against the reference, most moved first.
    pub fn compare(&self, thresholds: &Thresholds) -> Comparison {
        let mut features: Vec<FeatureDrift> = self
            .reference
            .features
            .iter()
            .zip(&self.features)
            .map(|(r, w)| drift(r, w, thresholds))
            .collect();
        features.sort_by(|a, b| {
            b.severity
                .total_cmp(&a.severity)
                .then_with(|| b.psi.unwrap_or(0.0).total_cmp(&a.psi.unwrap_or(0.0)))
                .then_with(|| a.feature.cmp(&b.feature))
        });
        Comparison {
            features,
            thresholds: *thresholds,
            rows: self.rows,
        }
    }
}

/// A share on each side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Change {
    /// In the reference, 0..1.
    pub reference: f64,
    /// Served, 0..1.
    pub served: f64,
}

impl Change {
    /// The change in percentage points.
    pub fn points(&self) -> f64 {
        100.0 * (self.served - self.reference)
    }
}

/// A threshold a feature crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossed {
    /// The population stability index.
    Psi,
    /// The null rate's change.
    NullRate,
    /// The change of this (non-PRESENT) status's share.
    Status(Status),
    /// The change of the share of defaults served.
    Default,
}

/// One bucket's shares, for plots.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// Its name: a bin (`≤ 12.5`, `12.5 – 40`, `> 300`), a category, `(other)` or `(null)`.
    pub label: String,
    /// The reference's share of observations in it.
    pub reference: f64,
    /// The window's share.
    pub served: f64,
}

/// How far one feature moved.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureDrift {
    /// `VIEW:FEATURE`.
    pub feature: String,
    /// Its type.
    pub ty: FeatureType,
    /// Observations in the reference.
    pub reference_count: u64,
    /// Observations in the window.
    pub served_count: u64,
    /// The population stability index; `None` when values are not compared (a `pii` feature)
    /// or one side has no observations.
    pub psi: Option<f64>,
    /// The null rate.
    pub null_rate: Change,
    /// Every status with observations on either side, in wire order (PRESENT included).
    pub statuses: Vec<(Status, Change)>,
    /// The share of defaults served.
    pub default_share: Change,
    /// The buckets the index was computed over (empty when values are not compared).
    pub buckets: Vec<Bucket>,
    /// The largest of the index and the changes, each divided by its threshold.
    pub severity: f64,
    /// The thresholds crossed.
    pub crossed: Vec<Crossed>,
}

/// A window against its reference.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Every feature, by severity, most moved first.
    pub features: Vec<FeatureDrift>,
    /// The thresholds applied.
    pub thresholds: Thresholds,
    /// Vectors in the window.
    pub rows: u64,
}

impl Comparison {
    /// The features that crossed a threshold, most moved first.
    pub fn crossed(&self) -> impl Iterator<Item = &FeatureDrift> {
        self.features.iter().filter(|f| !f.crossed.is_empty())
    }
}

fn drift(r: &ReferenceFeature, w: &WindowFeature, t: &Thresholds) -> FeatureDrift {
    let compared = r.count > 0 && w.count > 0;
    let served_shares: Vec<f64> = w.buckets.iter().map(|&b| share(b, w.count)).collect();
    let psi = (compared && !r.labels.is_empty()).then(|| psi(&served_shares, &r.shares));
    let null_rate = Change {
        reference: r.null_rate,
        served: if r.spec.values {
            share(w.nulls, w.count)
        } else {
            0.0
        },
    };
    let statuses: Vec<(Status, Change)> = Status::ALL
        .into_iter()
        .map(|s| {
            let c = Change {
                reference: r.statuses[s.index()],
                served: share(w.statuses[s.index()], w.count),
            };
            (s, c)
        })
        .filter(|(_, c)| c.reference > 0.0 || c.served > 0.0)
        .collect();
    let default_share = Change {
        reference: r.default_share,
        served: share(w.default_served, w.count),
    };
    let mut crossed = Vec::new();
    let mut severity: f64 = 0.0;
    if compared {
        if let Some(p) = psi {
            severity = severity.max(p / t.psi);
            if p > t.psi {
                crossed.push(Crossed::Psi);
            }
        }
        if r.spec.values {
            let points = null_rate.points().abs();
            severity = severity.max(points / t.null_rate_points);
            if points > t.null_rate_points {
                crossed.push(Crossed::NullRate);
            }
        }
        for (s, c) in &statuses {
            if *s == Status::Present {
                continue;
            }
            let points = c.points().abs();
            severity = severity.max(points / t.status_points);
            if points > t.status_points {
                crossed.push(Crossed::Status(*s));
            }
        }
        let points = default_share.points().abs();
        severity = severity.max(points / t.status_points);
        if points > t.status_points {
            crossed.push(Crossed::Default);
        }
    }
    FeatureDrift {
        feature: r.spec.name.clone(),
        ty: r.spec.ty,
        reference_count: r.count,
        served_count: w.count,
        psi,
        null_rate,
        statuses,
        default_share,
        buckets: r
            .labels
            .iter()
            .zip(&r.shares)
            .zip(&served_shares)
            .map(|((label, &reference), &served)| Bucket {
                label: label.clone(),
                reference,
                served,
            })
            .collect(),
        severity,
        crossed,
    }
}
