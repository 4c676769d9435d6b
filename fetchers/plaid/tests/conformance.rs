//! The fetcher conformance suite for the `plaid` source, against the fake Plaid
//! (`fake_upstreams::plaid`) started in-process on loopback.
//!
//! Plaid stores no features: the fetcher derives them from Plaid's answers. So the dataset is
//! mapped onto what Plaid holds, through one `item` view (`/item/get`), whose features cover
//! the dataset's four types:
//!
//! | dataset feature | Plaid feature | held by the fake as |
//! |---|---|---|
//! | `count` (int64) | `item_age_days` | `item.created_at` = as-of time - `count` days |
//! | `score` (double) | `hours_since_last_successful_update` | `status.transactions.last_successful_update` = as-of time - `score` hours |
//! | `label` (string) | `institution_id` | `item.institution_id` = `label` |
//! | `flag` (bool) | `has_error` | the Item needs a login (`ITEM_LOGIN_REQUIRED` in `item.error`) when `flag` is true |
//!
//! Each fixture key is the access token of an Item imported into the fake under it
//! ([`fake_upstreams::plaid::PlaidState::import_item`]): hostile keys are tokens too, sent in
//! JSON bodies, and each must reach its own Item. A null is a null field of `/item/get`. The
//! source's `as_of` is the fake's fixed "now", so ages and hours are exact.
//!
//! Opt-outs, with their reasons:
//! - `has_error` has no null: every `/item/get` answer says whether the Item has an error, so
//!   the null row's `has_error` must be a bool (false: its Item is healthy).
//! - no mistyped-value case: a Plaid field of the wrong type is an answer outside Plaid's
//!   contract, which the fetcher decodes as a whole and reports on every cell of that row (its
//!   documented behaviour), not as one feature's cell error; and the fake's Items hold typed
//!   fields only.
//!
//! The unreachable case builds against a fake Plaid of its own and then shuts it down.
#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::sync::Arc;

use async_trait::async_trait;
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{ITEM_GET, ItemFields, ItemState, PlaidConfig, data},
    seeded::rfc3339,
};
use fetcher_api::{Fetcher, FetcherFactory, Options, SourceSpec, Value, ViewSpec};
use fetcher_conformance::{Dataset, Harness, Stored, VIEW};
use fetcher_plaid::PlaidFactory;

const CLIENT_ID: &str = "conformance-client-id";
const SECRET: &str = "conformance-plaid-secret";
const DAY: i64 = 86_400;

/// Dataset feature to the Plaid `item` feature of the same type that holds it.
const FEATURES: [(&str, &str); 4] = [
    ("count", "item_age_days"),
    ("score", "hours_since_last_successful_update"),
    ("label", "institution_id"),
    ("flag", "has_error"),
];

struct PlaidHarness {
    server: FakeServer,
}

async fn fake() -> FakeServer {
    // reqwest is built without a default crypto provider, as in the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeServer::start(FakeConfig {
        population: 10,
        plaid: PlaidConfig {
            client_id: CLIENT_ID.into(),
            secret: SECRET.into(),
            // Plaid's production rate limits: the suite stays well within them.
            ..PlaidConfig::default()
        },
        ..FakeConfig::default()
    })
    .await
    .unwrap()
}

fn spec(server: &FakeServer, dataset: &Dataset) -> SourceSpec {
    SourceSpec {
        name: "plaid".into(),
        kind: "plaid".into(),
        options: Options(
            format!(
                "base_url = \"{}\"\nclient_id = \"${{PLAID_CLIENT_ID}}\"\n\
                 secret = \"${{PLAID_SECRET}}\"\nas_of = \"{}\"",
                server.base_url(),
                rfc3339(data::now(server.seed()))
            )
            .parse()
            .unwrap(),
        ),
        views: vec![ViewSpec {
            name: VIEW.into(),
            keys: dataset.keys(),
            features: dataset.features.clone(),
            options: Options("endpoint = \"item\"".parse().unwrap()),
        }],
        base_dir: ".".into(),
    }
}

async fn build(spec: &SourceSpec) -> Arc<dyn Fetcher> {
    let factory = PlaidFactory::with_env(|name| match name {
        "PLAID_CLIENT_ID" => Some(CLIENT_ID.into()),
        "PLAID_SECRET" => Some(SECRET.into()),
        _ => None,
    });
    let problems = factory.validate(spec);
    assert!(problems.is_empty(), "{problems:?}");
    factory.build(spec).await.unwrap()
}

/// How the fake holds one fixture row: the Item's fields, and whether it needs a login.
fn item(dataset: &Dataset, cells: &[Stored], now: i64) -> (ItemFields, bool) {
    let mut fields = ItemFields::default();
    let mut login_required = false;
    for ((feature, _), cell) in dataset.features.iter().zip(cells) {
        let value = match cell {
            Stored::Value(value) => value,
            // No field: a null in Plaid's answer.
            Stored::Null => continue,
            // Never read: the mistyped-value case is skipped for Plaid (see the module docs).
            Stored::WrongType(_) => continue,
        };
        match (feature.as_str(), value) {
            ("item_age_days", Value::Int64(days)) => fields.created_at = Some(now - days * DAY),
            ("hours_since_last_successful_update", Value::Double(hours)) => {
                let seconds = hours * 3600.0;
                assert_eq!(
                    seconds.fract(),
                    0.0,
                    "{hours} hours is not a whole number of seconds, which Plaid's times are"
                );
                fields.last_successful_update = Some(now - seconds as i64);
            }
            ("institution_id", Value::String(id)) => fields.institution_id = Some(id.clone()),
            ("has_error", Value::Bool(error)) => login_required = *error,
            (feature, value) => panic!("no mapping of {value:?} onto `{feature}`"),
        }
    }
    (fields, login_required)
}

#[async_trait]
impl Harness for PlaidHarness {
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher> {
        let plaid = self.server.plaid();
        let now = data::now(self.server.seed());
        for row in &dataset.rows {
            let (fields, login_required) = item(dataset, &row.cells, now);
            let item_id = plaid.import_item(&row.key, fields).unwrap();
            if login_required {
                plaid
                    .set_item_state(&item_id, ItemState::LoginRequired)
                    .unwrap();
            }
        }
        build(&spec(&self.server, dataset)).await
    }

    async fn build_unreachable(&self, dataset: &Dataset) -> Option<Arc<dyn Fetcher>> {
        // A Plaid that was there when the source was built, and then went away.
        let server = fake().await;
        let fetcher = build(&spec(&server, dataset)).await;
        server.shutdown().await.unwrap();
        Some(fetcher)
    }

    fn supports_wrong_type(&self) -> bool {
        // See the module docs: a mistyped Plaid field fails its whole row, by design.
        false
    }

    fn feature_name(&self, feature: &str) -> String {
        FEATURES
            .iter()
            .find(|(ours, _)| *ours == feature)
            .map(|(_, plaid)| (*plaid).to_owned())
            .unwrap_or_else(|| panic!("no Plaid feature holds the dataset's `{feature}`"))
    }

    fn supports_null(&self, feature: &str) -> bool {
        // Every `/item/get` answer says whether the Item has an error.
        feature != "has_error"
    }
}

#[tokio::test]
async fn item_features_pass_the_conformance_suite() {
    let harness = PlaidHarness {
        server: fake().await,
    };
    fetcher_conformance::run(&harness).await;
    // Every answer came from Plaid's own endpoint, none was refused.
    let stats = harness.server.plaid().stats().route(ITEM_GET);
    assert!(stats.ok > 0);
    assert_eq!(stats.rate_limited, 0);
}
