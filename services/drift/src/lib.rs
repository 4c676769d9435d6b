//! Training/serving skew and drift: what a feature service's served features looked like when
//! its model was trained (a reference [`Profile`], a JSON file users keep), what they look like
//! now (a [`Window`] of served vectors), and how far each feature moved ([`Comparison`]).
//!
//! A [`Profiler`] builds a profile from observations — one per feature per served vector: the
//! feature's [`Status`], the value served and whether it was the configured default — whether
//! they come from the training log (`feature-gateway profile`) or, later, from serving itself.
//! A [`Reference`] is a profile prepared for comparison (its buckets and their shares); a
//! [`Window`] counts observations into the reference's buckets exactly, a few counters per
//! feature, so it can run off the request path and windows add up ([`Window::merge`]). The
//! comparison gives per feature the population stability index, the change of the null rate, of
//! each non-PRESENT status's share and of the share of defaults served, ranked by severity.
//!
//! Quantiles and frequent categories come from the Apache DataSketches port (`datasketches`):
//! a KLL sketch (`k` = [`KLL_K`]) per numeric feature and a frequent-items sketch (at most
//! [`FREQUENT_ITEMS_MAP`] counters) per categorical one, kept serialized in the profile so
//! profiles merge ([`Profile::merge`]) and can be queried again.
//!
//! # The profile file (`format` `feature-gateway.profile`, `version` 1)
//! One JSON object per feature service:
//!
//! | field | meaning |
//! |---|---|
//! | `format` | always `"feature-gateway.profile"` |
//! | `version` | `1`; a reader refuses a version it does not know |
//! | `feature_service` | the feature service profiled |
//! | `definition_hash` | its definition hash when the rows were served (null if unknown) |
//! | `sources` | what it was built from, one entry per merged part: `kind` (`training_log`, `training_set` or `window`), `path` (the log directory or the training-set file), `from` and `to` (the range asked for, RFC 3339, null when open), `first_served_at` and `last_served_at` (of the rows profiled), `rows` |
//! | `rows` | vectors profiled |
//! | `features` | one object per feature, in the feature service's output order: |
//! | `features[].name` | `VIEW:FEATURE` |
//! | `features[].type` | its declared type (`int64`, `double`, `string`, `bool`, `bytes`, `timestamp`, `list<int64>`, `list<double>`, `list<string>`) |
//! | `features[].values` | whether values were profiled: false for a `pii` feature (the log holds its hash or nothing), whose statuses only are |
//! | `features[].count` | observations (one per vector) |
//! | `features[].statuses` | count per status, by the wire's names (`PRESENT`, `NOT_FOUND`, `NULL_VALUE`, `OUTSIDE_MAX_AGE`, `TIMED_OUT`, `SOURCE_ERROR`, `STALE`); absent ones are 0 |
//! | `features[].default_served` | observations known to carry the feature service's default |
//! | `features[].default_unknown` | observations for which that is not known (see below) |
//! | `features[].nulls`, `features[].null_rate` | observations whose served value is null, and their share of `count` |
//! | `features[].numeric` | for `int64`, `double` and `timestamp` (as epoch seconds), and the length of `bytes` and lists: `measure` (`value`, `epoch_seconds` or `length`), `count` (values sketched), `nan` (NaNs, not sketched), `min`, `max`, `quantiles` (`p1` `p5` `p25` `p50` `p75` `p95` `p99`), `edges` (the distinct deciles p10..p90 of the values: at most 9 edges bounding at most 10 bins, the first `(-inf, edges[0]]`, then `(edges[i-1], edges[i]]`, the last `(edges[last], +inf)`), `shares` (each bin's share of the values, one more than `edges`), `kll` (the KLL sketch, base64) |
//! | `features[].categorical` | for `string` and `bool` (`"true"`, `"false"`): `count` (values sketched), `top` (up to [`TOP_CATEGORIES`] `{value, share}`, most frequent first, shares of the values), `other_share` (the rest), `frequent_items` (the frequent-items sketch, base64) |
//!
//! Non-finite numbers (an infinite value, a quantile of one) are written as the strings `"inf"`,
//! `"-inf"` and `"NaN"`, since JSON has no such numbers. The sketches' bytes are the
//! DataSketches binary formats, which the library's Java, C++ and Python ports read too.
//! Quantiles, edges and shares are read from the sketches: a KLL sketch with `k` = 200 puts a
//! rank within about 1.3% of the truth (exact below 200 values); the top categories are exact
//! while fewer than 768 distinct values were seen. They are there for people and other tools: a
//! reader of this crate summarizes every feature again from its counts and sketches, so the
//! sketches and counts are what a profile is.
//!
//! Defaults: online, whether a value is the configured default is known. The training log holds
//! the value served and its status: a value with a status other than PRESENT or STALE can only be
//! a default, so it counts in `default_served`; a STALE value may be the cached value or the
//! default, so the log's STALE observations count in `default_unknown`.
//!
//! # Comparison
//! A feature's buckets are its bins (numbers) or its top categories and an "other" bucket
//! (categories), plus a "null" bucket (null values, and NaNs for numbers), each as a share of
//! the feature's observations. The population stability index of served shares `o` against the
//! reference's `r` is `PSI = Σ (o - r) ln(o / r)` over the buckets, each share first raised to
//! at least [`EPSILON`] (0.0001) so an empty bucket counts as rare rather than impossible
//! (module [`psi`]). Rules of thumb: below 0.1 no real change, 0.1–0.2 moderate, above 0.2 a
//! shift worth acting on. The null rate, each non-PRESENT status's share and the share of
//! defaults served are compared as changes in percentage points. A feature's severity is the
//! largest of its PSI and changes each divided by its threshold ([`Thresholds`]); features are
//! ranked by it, and a feature crosses when any one exceeds its threshold.
//!
//! # Layout
//! The crate root defines [`Status`] and the tuning constants, which any module may use; the
//! modules import only modules above them in this list:
//! 1. [`psi`]: the index itself, over two lists of shares;
//! 2. [`profile`]: [`Profile`] (the file), [`Profiler`] (building one), merging, reading and
//!    writing;
//! 3. [`compare`]: [`Reference`], [`Window`] and their [`Comparison`];
//! 4. [`consistency`]: served values against values recomputed offline;
//! 5. [`report`]: the skew report (Markdown and a self-contained HTML page with SVG plots).
#![forbid(unsafe_code)]

pub mod compare;
pub mod consistency;
pub mod profile;
pub mod psi;
pub mod report;
#[cfg(test)]
mod tests;

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

pub use compare::{Code, Comparison, Crossed, FeatureDrift, Reference, Thresholds, Window};
pub use consistency::Consistency;
pub use profile::{
    FeatureProfile, FeatureSpec, Profile, ProfileError, Profiler, Source, SourceKind,
};
pub use psi::{EPSILON, psi};

/// Top categories kept per categorical feature.
pub const TOP_CATEGORIES: usize = 20;
/// The KLL sketch's `k`: the library's default, a rank error of about 1.3% (single-sided, 99%
/// confidence).
pub const KLL_K: u16 = 200;
/// The frequent-items sketch's maximum map size: exact counts up to 768 distinct values, an
/// error of at most 3.5/1024 of the count beyond.
pub const FREQUENT_ITEMS_MAP: usize = 1024;

/// Why a feature has the value it has: the wire's `FeatureStatus`, by its names without the
/// `FEATURE_STATUS_` prefix (as the training log's status columns write them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Present,
    NotFound,
    NullValue,
    OutsideMaxAge,
    TimedOut,
    SourceError,
    Stale,
}

impl Status {
    /// Every status, in wire order.
    pub const ALL: [Status; 7] = [
        Status::Present,
        Status::NotFound,
        Status::NullValue,
        Status::OutsideMaxAge,
        Status::TimedOut,
        Status::SourceError,
        Status::Stale,
    ];

    /// The wire's name without its prefix: `PRESENT`, `NOT_FOUND`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "PRESENT",
            Status::NotFound => "NOT_FOUND",
            Status::NullValue => "NULL_VALUE",
            Status::OutsideMaxAge => "OUTSIDE_MAX_AGE",
            Status::TimedOut => "TIMED_OUT",
            Status::SourceError => "SOURCE_ERROR",
            Status::Stale => "STALE",
        }
    }

    /// Its position in [`Status::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix("FEATURE_STATUS_").unwrap_or(s);
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == name)
            .ok_or_else(|| format!("unknown feature status `{s}`"))
    }
}
