//! The fetcher conformance suite for the `http` source, against the fake internal record API
//! (`fake_upstreams::records`) started in-process on loopback, in both request shapes:
//!
//! - one `GET /v1/records/conformance/{id}` per key, each key percent-encoded as one path
//!   segment (the hostile keys hold `/`, `?`, `#`, `%`, CR LF and spaces);
//! - a batch endpoint, `POST /v1/records/conformance` with `{"ids": [...]}`, split into chunks
//!   of three keys, so the batch-order case spans several concurrent calls whose answers leave
//!   unknown ids out.
//!
//! Each fixture row is loaded as one JSON document: values as JSON of their type, a mistyped
//! value as a JSON string (`{"count": "n/a"}`), and a null as JSON `null` for some features and
//! as a missing field for the others, the two ways an API says "no value". The unreachable case
//! builds against a fake of its own and then shuts it down.
#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::sync::Arc;

use async_trait::async_trait;
use fake_upstreams::{FakeConfig, FakeServer};
use fetcher_api::{Fetcher, FetcherFactory, Options, SourceSpec, Value, ViewSpec};
use fetcher_conformance::{Dataset, Harness, Stored, VIEW};
use fetcher_http::HttpFactory;
use serde_json::{Map, Value as Json, json};

/// The record collection the dataset is loaded into.
const COLLECTION: &str = "conformance";

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    PerKey,
    Batch,
}

struct HttpHarness {
    shape: Shape,
    server: FakeServer,
}

async fn fake() -> FakeServer {
    // reqwest is built without a default crypto provider, as in the gateway.
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeServer::start(FakeConfig::default()).await.unwrap()
}

/// The JSON document of one fixture row.
fn document(dataset: &Dataset, cells: &[Stored]) -> Map<String, Json> {
    let mut doc = Map::new();
    for (i, ((name, _), cell)) in dataset.features.iter().zip(cells).enumerate() {
        let json = match cell {
            Stored::Value(Value::Int64(v)) => json!(v),
            Stored::Value(Value::Double(v)) => json!(v),
            Stored::Value(Value::String(v)) => json!(v),
            Stored::Value(Value::Bool(v)) => json!(v),
            // Both spellings of "no value": an explicit null, or no field at all.
            Stored::Null if i % 2 == 0 => Json::Null,
            Stored::Null => continue,
            Stored::WrongType(text) => json!(text),
            Stored::Value(other) => panic!("the dataset has no {other:?}"),
        };
        doc.insert(name.clone(), json);
    }
    doc
}

impl HttpHarness {
    async fn new(shape: Shape) -> HttpHarness {
        HttpHarness {
            shape,
            server: fake().await,
        }
    }

    fn spec(&self, server: &FakeServer, dataset: &Dataset) -> SourceSpec {
        let view_options = match self.shape {
            Shape::PerKey => format!("path = \"/v1/records/{COLLECTION}/{{id}}\""),
            Shape::Batch => {
                format!("batch = {{ path = \"/v1/records/{COLLECTION}\", max_keys = 3 }}")
            }
        };
        SourceSpec {
            name: "records".into(),
            kind: "http".into(),
            options: Options(
                format!("base_url = \"{}\"", server.base_url())
                    .parse()
                    .unwrap(),
            ),
            views: vec![ViewSpec {
                name: VIEW.into(),
                keys: dataset.keys(),
                features: dataset.features.clone(),
                options: Options(view_options.parse().unwrap()),
            }],
            base_dir: ".".into(),
        }
    }
}

async fn build(spec: &SourceSpec) -> Arc<dyn Fetcher> {
    let factory = HttpFactory::new();
    let problems = factory.validate(spec);
    assert!(problems.is_empty(), "{problems:?}");
    factory.build(spec).await.unwrap()
}

#[async_trait]
impl Harness for HttpHarness {
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher> {
        for row in &dataset.rows {
            self.server
                .records()
                .put(COLLECTION, &row.key, document(dataset, &row.cells));
        }
        build(&self.spec(&self.server, dataset)).await
    }

    async fn build_unreachable(&self, dataset: &Dataset) -> Option<Arc<dyn Fetcher>> {
        // An API that was there when the source was built, and then went away.
        let server = fake().await;
        let fetcher = build(&self.spec(&server, dataset)).await;
        server.shutdown().await.unwrap();
        Some(fetcher)
    }
}

#[tokio::test]
async fn one_request_per_key_passes_the_conformance_suite() {
    let harness = HttpHarness::new(Shape::PerKey).await;
    fetcher_conformance::run(&harness).await;
    let stats = harness.server.stats();
    assert!(stats.calls(fake_upstreams::records::RECORD_GET) > 0);
    assert_eq!(
        stats.calls(fake_upstreams::records::RECORD_BATCH),
        0,
        "a per-key view makes no batch call"
    );
}

#[tokio::test]
async fn batch_requests_pass_the_conformance_suite() {
    let harness = HttpHarness::new(Shape::Batch).await;
    fetcher_conformance::run(&harness).await;
    let stats = harness.server.stats();
    assert_eq!(
        stats.calls(fake_upstreams::records::RECORD_GET),
        0,
        "a batch view makes no per-key call"
    );
    assert!(stats.calls(fake_upstreams::records::RECORD_BATCH) > 0);
}
