//! The conformance suite every fetcher passes.
//!
//! A fetcher crate writes a [`Harness`] that loads a [`Dataset`] into its real backing store
//! (a Redis server, a PostgreSQL table, an HTTP API) and builds the fetcher over it; [`run`]
//! then checks the behaviour the gateway relies on, whatever the source:
//! - present rows come back with every value typed as declared;
//! - a missing key is [`Row::NotFound`], a null is [`Value::Null`];
//! - a stored value of the wrong type fails that one cell ([`fetcher_api::CellError`]), not the row
//!   or the batch;
//! - rows come back in key order, for any subset and order of the features;
//! - keys holding SQL, Redis or URL syntax are only data;
//! - an unreachable store fails the batch with a retryable error, within the deadline.
//!
//! Failures panic with a message naming the case, so the suite runs inside `#[tokio::test]`.
//!
//! A source that cannot hold part of the dataset says so through the [`Harness`]'s opt-outs, each
//! with the reason in the harness: [`Harness::supports_wrong_type`] (a typed store),
//! [`Harness::feature_name`] (a fixed catalog of derived features, onto which the dataset's
//! features are mapped by type) and [`Harness::supports_null`] (a derived feature that always has
//! a value).
#![forbid(unsafe_code)]

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use fetcher_api::{ErrorClass, FeatureType, FetchRequest, Fetcher, KeyPart, KeySpec, Row, Value};
use tokio::time::Instant;

/// The view the suite fetches: keyed by one string entity `id`.
pub const VIEW: &str = "conformance";
/// The entity key's name.
pub const ENTITY: &str = "id";

/// What a fixture cell holds in the backing store.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    /// A value of the declared type, stored in the source's normal encoding.
    Value(Value),
    /// No value: SQL NULL, an absent hash field, JSON null.
    Null,
    /// Text that does not decode as the declared type (e.g. `"n/a"` for an int64), stored as
    /// the source would store text. Sources that cannot hold a mistyped value (a typed SQL
    /// column) store it in a column of the wrong type instead; see [`Harness::supports_wrong_type`].
    WrongType(String),
}

/// One fixture row.
#[derive(Clone, Debug, PartialEq)]
pub struct FixtureRow {
    /// The entity key.
    pub key: String,
    /// One cell per [`Dataset::features`] entry.
    pub cells: Vec<Stored>,
}

/// The rows and features a harness loads.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// The features of the view, with their types.
    pub features: Vec<(String, FeatureType)>,
    /// The rows.
    pub rows: Vec<FixtureRow>,
}

impl Dataset {
    /// The view's entity keys (one string key, [`ENTITY`]).
    pub fn keys(&self) -> Vec<KeySpec> {
        vec![KeySpec {
            name: ENTITY.to_owned(),
            ty: FeatureType::String,
        }]
    }
}

/// Keys that look like syntax of one store or another, and must be only data.
pub const HOSTILE_KEYS: &[&str] = &[
    "'; DROP TABLE conformance; --",
    "k1' OR '1'='1",
    "user_stats:{id}*",
    "k1\r\nFLUSHALL\r\n",
    "../../admin?x=1#y",
    "%00%2F",
];

/// The standard dataset: `k1` has every value, `k2` only nulls, `k3` a mistyped `count`, and
/// the hostile keys have rows of their own (so an injection that reads another row shows).
pub fn dataset() -> Dataset {
    let features = vec![
        ("count".to_owned(), FeatureType::Int64),
        ("score".to_owned(), FeatureType::Double),
        ("label".to_owned(), FeatureType::String),
        ("flag".to_owned(), FeatureType::Bool),
    ];
    let full = |count: i64, label: &str| {
        vec![
            Stored::Value(Value::Int64(count)),
            Stored::Value(Value::Double(count as f64 / 4.0)),
            Stored::Value(Value::String(label.to_owned())),
            Stored::Value(Value::Bool(count % 2 == 0)),
        ]
    };
    let mut rows = vec![
        FixtureRow {
            key: "k1".into(),
            cells: full(7, "seven, with \"quotes\" and ünïcode"),
        },
        FixtureRow {
            key: "k2".into(),
            cells: vec![Stored::Null; 4],
        },
        FixtureRow {
            key: "k3".into(),
            cells: vec![
                Stored::WrongType("n/a".into()),
                Stored::Value(Value::Double(0.5)),
                Stored::Value(Value::String("three".into())),
                Stored::Value(Value::Bool(true)),
            ],
        },
    ];
    for (i, key) in HOSTILE_KEYS.iter().enumerate() {
        rows.push(FixtureRow {
            key: (*key).to_owned(),
            cells: full(100 + i as i64, key),
        });
    }
    Dataset { features, rows }
}

/// What a fetcher crate provides to run the suite against its real store.
#[async_trait]
pub trait Harness: Sync {
    /// Loads `dataset` into the backing store and builds the fetcher serving view [`VIEW`].
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher>;

    /// Builds the fetcher for the same view against a store that cannot be reached (a closed
    /// port, a stopped server); `None` for a source with no store to lose (an in-memory table).
    async fn build_unreachable(&self, dataset: &Dataset) -> Option<Arc<dyn Fetcher>>;

    /// Whether the store can hold a mistyped value for a feature (false skips that case).
    fn supports_wrong_type(&self) -> bool {
        true
    }

    /// The source's name for the dataset's feature `feature` (default: the same name). A source
    /// whose features are a fixed catalog derived from its store rather than stored under any
    /// name (Plaid's) maps each dataset feature onto one of its own of the same type; the dataset
    /// given to [`Harness::build`] and every request then use these names.
    fn feature_name(&self, feature: &str) -> String {
        feature.to_owned()
    }

    /// Whether the source can answer "no value" for its feature `feature` (a name as
    /// [`Harness::feature_name`] gives it; default true). False for a feature every answer of the
    /// store defines (Plaid's `has_error`: every `/item/get` answer says whether the Item has an
    /// error): the null row's cell for it must then be a value of the declared type, neither null
    /// nor an error.
    fn supports_null(&self, feature: &str) -> bool {
        let _ = feature;
        true
    }
}

/// The dataset as a harness loads it (features renamed), and which features cannot be null.
struct Suite {
    dataset: Dataset,
    never_null: Vec<String>,
}

impl Suite {
    fn new(harness: &impl Harness) -> Suite {
        let mut dataset = dataset();
        for (name, _) in &mut dataset.features {
            *name = harness.feature_name(name);
        }
        let never_null = dataset
            .features
            .iter()
            .filter(|(name, _)| !harness.supports_null(name))
            .map(|(name, _)| name.clone())
            .collect();
        Suite {
            dataset,
            never_null,
        }
    }

    /// The features of the dataset's `names`, by their source names.
    fn features(&self, names: &[&str]) -> Vec<String> {
        let standard = dataset();
        names
            .iter()
            .map(|n| {
                let i = standard
                    .features
                    .iter()
                    .position(|(f, _)| f == n)
                    .unwrap_or_else(|| panic!("no fixture feature {n}"));
                self.dataset.features[i].0.clone()
            })
            .collect()
    }
}

fn request(keys: &[&str], features: &[&str], deadline: Duration) -> FetchRequest {
    FetchRequest {
        view: VIEW.into(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        keys: keys
            .iter()
            .map(|k| vec![KeyPart::String((*k).to_owned())])
            .collect(),
        deadline: Some(Instant::now() + deadline),
    }
}

fn expected(dataset: &Dataset, key: &str, features: &[&str]) -> Vec<Option<Value>> {
    let row = dataset
        .rows
        .iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("no fixture row {key}"));
    features
        .iter()
        .map(|f| {
            let i = dataset
                .features
                .iter()
                .position(|(n, _)| n == f)
                .unwrap_or_else(|| panic!("no fixture feature {f}"));
            match &row.cells[i] {
                Stored::Value(v) => Some(v.clone()),
                Stored::Null => Some(Value::Null),
                Stored::WrongType(_) => None,
            }
        })
        .collect()
}

fn check_row(case: &str, suite: &Suite, key: &str, features: &[&str], row: &Row) {
    let dataset = &suite.dataset;
    let Row::Found(record) = row else {
        panic!("{case}: key {key:?} should be found, got {row:?}");
    };
    assert_eq!(
        record.cells.len(),
        features.len(),
        "{case}: key {key:?}: one cell per requested feature"
    );
    for ((feature, want), got) in features
        .iter()
        .zip(expected(dataset, key, features))
        .zip(&record.cells)
    {
        match (want, got) {
            (Some(Value::Null), Ok(got)) if suite.never_null.iter().any(|f| f == feature) => {
                let ty = dataset
                    .features
                    .iter()
                    .find(|(n, _)| n == feature)
                    .map(|(_, ty)| *ty);
                assert!(
                    got.feature_type().is_some() && got.feature_type() == ty,
                    "{case}: key {key:?} feature {feature}: the source has no null for it, so \
                     expected a value of type {ty:?}, got {got:?}"
                );
            }
            (Some(want), Ok(got)) => assert_eq!(
                got, &want,
                "{case}: key {key:?} feature {feature}: wrong value"
            ),
            (Some(want), Err(e)) => {
                panic!("{case}: key {key:?} feature {feature}: expected {want:?}, got error {e}")
            }
            (None, Ok(got)) => panic!(
                "{case}: key {key:?} feature {feature}: a mistyped value must be a cell error, got {got:?}"
            ),
            (None, Err(_)) => {}
        }
    }
}

/// Runs every case against the fetcher `harness` builds. Panics on the first failure.
pub async fn run(harness: &impl Harness) {
    let suite = Suite::new(harness);
    let dataset = &suite.dataset;
    let fetcher = harness.build(dataset).await;
    let all: Vec<&str> = dataset.features.iter().map(|(n, _)| n.as_str()).collect();
    let second = Duration::from_secs(5);

    // Present, null and missing, in key order.
    let keys = ["k2", "nope", "k1"];
    let rows = fetcher
        .fetch(request(&keys, &all, second))
        .await
        .unwrap_or_else(|e| panic!("present/null/missing: fetch failed: {e}"));
    assert_eq!(rows.len(), 3, "present/null/missing: one row per key");
    check_row("null", &suite, "k2", &all, &rows[0]);
    assert_eq!(rows[1], Row::NotFound, "missing: an absent key is NotFound");
    check_row("present", &suite, "k1", &all, &rows[2]);

    // A subset of the features, in another order.
    let subset = suite.features(&["label", "count"]);
    let subset: Vec<&str> = subset.iter().map(String::as_str).collect();
    let rows = fetcher
        .fetch(request(&["k1"], &subset, second))
        .await
        .unwrap_or_else(|e| panic!("feature subset: fetch failed: {e}"));
    check_row("feature subset", &suite, "k1", &subset, &rows[0]);

    // A mistyped value fails its own cell only.
    if harness.supports_wrong_type() {
        let rows = fetcher
            .fetch(request(&["k3", "k1"], &all, second))
            .await
            .unwrap_or_else(|e| panic!("wrong type: the batch must not fail: {e}"));
        check_row("wrong type", &suite, "k3", &all, &rows[0]);
        check_row("wrong type (other row)", &suite, "k1", &all, &rows[1]);
    }

    // Batch order over many keys, missing ones interleaved.
    let mut keys: Vec<&str> = HOSTILE_KEYS.to_vec();
    keys.reverse();
    keys.insert(2, "absent-1");
    keys.push("k1");
    keys.push("absent-2");
    let rows = fetcher
        .fetch(request(&keys, &all, second))
        .await
        .unwrap_or_else(|e| panic!("batch order: fetch failed: {e}"));
    assert_eq!(rows.len(), keys.len(), "batch order: one row per key");
    for (key, row) in keys.iter().zip(&rows) {
        if key.starts_with("absent") {
            assert_eq!(row, &Row::NotFound, "batch order: {key} is absent");
        } else {
            // Hostile keys each read their own row, proving they were bound as data.
            check_row("batch order / hostile keys", &suite, key, &all, row);
        }
    }

    // A key that is syntax but has no row.
    let rows = fetcher
        .fetch(request(&["* OR 1=1", "k*"], &all, second))
        .await
        .unwrap_or_else(|e| panic!("hostile absent keys: fetch failed: {e}"));
    assert_eq!(rows, [Row::NotFound, Row::NotFound], "hostile absent keys");

    // An unreachable store: a retryable failure, within the deadline.
    let Some(unreachable) = harness.build_unreachable(dataset).await else {
        return;
    };
    let budget = Duration::from_millis(500);
    let started = SystemTime::now();
    let result = tokio::time::timeout(
        budget + Duration::from_secs(2),
        unreachable.fetch(request(&["k1"], &all, budget)),
    )
    .await
    .unwrap_or_else(|_| panic!("unreachable: the fetch hung past its deadline"));
    let elapsed = started.elapsed().unwrap_or_default();
    match result {
        Ok(rows) => panic!("unreachable: expected an error, got {rows:?}"),
        Err(e) => {
            assert!(
                matches!(e.class(), ErrorClass::Unavailable | ErrorClass::Timeout),
                "unreachable: expected unavailable or timeout, got {e}"
            );
            assert!(e.retryable(), "unreachable: {e} should be retryable");
        }
    }
    // Generous: the gateway's stack enforces the deadline exactly; a fetcher must not hang.
    assert!(
        elapsed < budget + Duration::from_secs(1),
        "unreachable: took {elapsed:?} for a {budget:?} deadline"
    );
}
