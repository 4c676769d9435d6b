//! `[entities.NAME]`: the keys features are looked up by, and where each key's value comes from.

use fetcher_api::FeatureType;
use serde::Deserialize;

/// `[entities.NAME]`.
#[derive(Debug, Deserialize)]
pub struct RawEntity {
    /// `int64` or `string`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Where the key's value comes from: omitted, the request's `entities`; `context:NAME`, the
    /// request's context; `VIEW:FEATURE`, a feature of another view (a dependent key, fetched
    /// in an earlier stage).
    #[serde(default)]
    pub from: Option<String>,
    /// Free text, shown by DescribeFeatureService.
    #[serde(default)]
    pub description: String,
}

/// An entity key.
#[derive(Clone, Debug, PartialEq)]
pub struct EntityConfig {
    /// Its name.
    pub name: String,
    /// int64 or string.
    pub ty: FeatureType,
    /// Where its value comes from.
    pub from: EntityFrom,
    /// Free text.
    pub description: String,
}

/// Where an entity key's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum EntityFrom {
    /// The request's `entities` map.
    Request,
    /// The request's `context` map, under this name.
    Context(String),
    /// A feature of another view.
    Feature {
        /// The view.
        view: String,
        /// The feature.
        feature: String,
    },
}
