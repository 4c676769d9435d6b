//! The fetcher conformance suite for the `sidecar` source: the `fetcher-sidecar` host
//! (services/fetcher-sidecar) serves a built-in fetcher, configured from the gateway's
//! configuration format, on a loopback TCP port, in a Tokio runtime of its own; the suite
//! reaches it through [`fetcher_sidecar::SidecarFactory`]'s client, as the gateway does. Twice:
//!
//! - hosting a `static` table, a CSV file written from the dataset. Static tables are typed when
//!   loaded, so they cannot hold a mistyped value and this run skips that case, as the static
//!   source's own run does;
//! - hosting an `http` source over the fake record API (`fake_upstreams::records`, on
//!   loopback), where a mistyped value is real data (`{"count": "n/a"}`): its cell error must
//!   cross the gRPC hop as a cell error, with the rest of the row and of the batch intact.
//!
//! The unreachable case starts a sidecar of its own, makes one successful call (so the source
//! holds a live connection), then shuts the sidecar's runtime down at once, dropping its
//! listener and connections without a goodbye, as a crashed process would.
#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use fake_upstreams::{FakeConfig, FakeServer};
use fetcher_api::{
    FetchRequest, Fetcher, FetcherFactory, KeyPart, Options, SourceSpec, Value, ViewSpec,
};
use fetcher_conformance::{Dataset, ENTITY, Harness, Stored, VIEW};
use fetcher_sidecar::SidecarFactory;
use fetcher_sidecar_host::{Host, Listener, serve};
use serde_json::{Map, Value as Json, json};
use tokio::{runtime::Runtime, sync::oneshot, time::Instant};

/// The record collection the `http` run loads the dataset into.
const COLLECTION: &str = "conformance";

/// The built-in fetcher the sidecar hosts.
enum Hosted {
    /// A `static` table read from `conformance.csv` beside the configuration.
    Static,
    /// An `http` source over the fake record API.
    Http(FakeServer),
}

/// A running host, in a runtime of its own so that stopping it drops everything it holds.
struct Sidecar {
    runtime: Option<Runtime>,
    addr: SocketAddr,
}

impl Sidecar {
    /// Builds the host from `config` (the gateway's format, relative paths against `dir`) and
    /// serves it on 127.0.0.1, port 0.
    async fn start(config: String, dir: &Path) -> Sidecar {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dir = dir.to_owned();
        let (ready, addr) = oneshot::channel();
        runtime.spawn(async move {
            let registry = fetcher_builtin::registry();
            let config = gateway_config::load_str(&config, "sidecar.toml", &dir, &registry)
                .unwrap_or_else(|e| panic!("the sidecar's configuration: {e}"));
            let host = Arc::new(Host::build(&config, &registry, &[]).await.unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _ = ready.send(listener.local_addr().unwrap());
            serve(host, Listener::Tcp(listener), std::future::pending()).await
        });
        let addr = addr.await.expect("the sidecar started");
        Sidecar {
            runtime: Some(runtime),
            addr,
        }
    }

    /// Stops the host dead: its listener and connections are dropped, calls in flight too.
    fn crash(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // Never blocks, so it may run inside the test's runtime.
        self.crash();
    }
}

struct SidecarHarness {
    hosted: Hosted,
    dir: tempfile::TempDir,
    /// The sidecars started, kept running (or crashed, for the unreachable case) until the end.
    sidecars: Mutex<Vec<Sidecar>>,
}

/// A fixture cell as static CSV text: empty is null.
fn text(cell: &Stored) -> String {
    match cell {
        Stored::Value(Value::Int64(i)) => i.to_string(),
        Stored::Value(Value::Double(d)) => d.to_string(),
        Stored::Value(Value::String(s)) => s.clone(),
        Stored::Value(Value::Bool(b)) => b.to_string(),
        // A static table is type-checked when loaded, so a mistyped value cannot be stored.
        Stored::Null | Stored::WrongType(_) => String::new(),
        Stored::Value(other) => panic!("the dataset has no {other:?}"),
    }
}

/// A fixture row as the record API's JSON document: a null is JSON null for some features and a
/// missing field for the others, a mistyped value a JSON string.
fn document(dataset: &Dataset, cells: &[Stored]) -> Map<String, Json> {
    let mut doc = Map::new();
    for (i, ((name, _), cell)) in dataset.features.iter().zip(cells).enumerate() {
        let json = match cell {
            Stored::Value(Value::Int64(v)) => json!(v),
            Stored::Value(Value::Double(v)) => json!(v),
            Stored::Value(Value::String(v)) => json!(v),
            Stored::Value(Value::Bool(v)) => json!(v),
            Stored::Null if i % 2 == 0 => Json::Null,
            Stored::Null => continue,
            Stored::WrongType(text) => json!(text),
            Stored::Value(other) => panic!("the dataset has no {other:?}"),
        };
        doc.insert(name.clone(), json);
    }
    doc
}

impl SidecarHarness {
    fn new(hosted: Hosted) -> SidecarHarness {
        SidecarHarness {
            hosted,
            dir: tempfile::tempdir().unwrap(),
            sidecars: Mutex::new(Vec::new()),
        }
    }

    /// Loads the dataset into the hosted fetcher's store.
    fn load(&self, dataset: &Dataset) {
        match &self.hosted {
            Hosted::Static => {
                let path = self.dir.path().join("conformance.csv");
                let mut writer = csv::Writer::from_path(path).unwrap();
                let mut header = vec![ENTITY.to_owned()];
                header.extend(dataset.features.iter().map(|(n, _)| n.clone()));
                writer.write_record(&header).unwrap();
                for row in &dataset.rows {
                    let mut record = vec![row.key.clone()];
                    record.extend(row.cells.iter().map(text));
                    writer.write_record(&record).unwrap();
                }
                writer.flush().unwrap();
            }
            Hosted::Http(server) => {
                for row in &dataset.rows {
                    server
                        .records()
                        .put(COLLECTION, &row.key, document(dataset, &row.cells));
                }
            }
        }
    }

    /// The sidecar's configuration (the gateway's format): the hosted source and the view
    /// [`VIEW`] over it.
    fn config(&self, dataset: &Dataset) -> String {
        let (source, view) = match &self.hosted {
            Hosted::Static => (
                "kind = \"static\"".to_owned(),
                "path = \"conformance.csv\"".to_owned(),
            ),
            Hosted::Http(server) => (
                format!("kind = \"http\"\nbase_url = \"{}\"", server.base_url()),
                format!("path = \"/v1/records/{COLLECTION}/{{{ENTITY}}}\""),
            ),
        };
        let features: Vec<String> = dataset
            .features
            .iter()
            .map(|(name, ty)| format!("{name} = {{ type = \"{}\" }}", ty.name()))
            .collect();
        format!(
            "[entities.{ENTITY}]\ntype = \"string\"\n\n\
             [sources.hosted]\n{source}\n\n\
             [views.{VIEW}]\nsource = \"hosted\"\nentities = [\"{ENTITY}\"]\n{view}\n\
             features = {{ {} }}\n",
            features.join(", ")
        )
    }

    /// Starts a sidecar hosting the dataset's view and returns the client's address option.
    async fn start_sidecar(&self, dataset: &Dataset) -> String {
        let sidecar = Sidecar::start(self.config(dataset), self.dir.path()).await;
        let uri = format!("http://{}", sidecar.addr);
        self.sidecars.lock().unwrap().push(sidecar);
        uri
    }
}

/// The gateway's side: a `sidecar` source at `uri` serving [`VIEW`] with the dataset's types.
async fn client(uri: &str, dataset: &Dataset) -> Arc<dyn Fetcher> {
    let spec = SourceSpec {
        name: "remote".into(),
        kind: "sidecar".into(),
        options: Options(
            format!("address = \"{uri}\"\nconnect_timeout = \"250ms\"")
                .parse()
                .unwrap(),
        ),
        views: vec![ViewSpec {
            name: VIEW.into(),
            keys: dataset.keys(),
            features: dataset.features.clone(),
            options: Options::default(),
        }],
        base_dir: ".".into(),
    };
    let problems = SidecarFactory.validate(&spec);
    assert!(problems.is_empty(), "{problems:?}");
    SidecarFactory.build(&spec).await.unwrap()
}

#[async_trait]
impl Harness for SidecarHarness {
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher> {
        self.load(dataset);
        let uri = self.start_sidecar(dataset).await;
        client(&uri, dataset).await
    }

    async fn build_unreachable(&self, dataset: &Dataset) -> Option<Arc<dyn Fetcher>> {
        // A sidecar of its own, up and answering, then gone.
        let uri = self.start_sidecar(dataset).await;
        let fetcher = client(&uri, dataset).await;
        let rows = fetcher
            .fetch(FetchRequest {
                view: VIEW.into(),
                features: vec![dataset.features[0].0.clone()].into(),
                keys: vec![vec![KeyPart::String("k1".into())]],
                deadline: Some(Instant::now() + Duration::from_secs(5)),
            })
            .await
            .unwrap();
        assert!(matches!(rows[..], [fetcher_api::Row::Found(_)]), "{rows:?}");
        self.sidecars.lock().unwrap().last_mut().unwrap().crash();
        Some(fetcher)
    }

    fn supports_wrong_type(&self) -> bool {
        matches!(self.hosted, Hosted::Http(_))
    }
}

#[tokio::test]
async fn a_hosted_static_table_passes_the_conformance_suite() {
    let harness = SidecarHarness::new(Hosted::Static);
    fetcher_conformance::run(&harness).await;
}

#[tokio::test]
async fn a_hosted_http_source_passes_the_conformance_suite_with_mistyped_values() {
    // The hosted `http` source's client needs a TLS provider, as in the sidecar's binary.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = FakeServer::start(FakeConfig::default()).await.unwrap();
    let harness = SidecarHarness::new(Hosted::Http(server));
    fetcher_conformance::run(&harness).await;
    // The values came from the record API, through the hosted `http` source.
    if let Hosted::Http(server) = &harness.hosted {
        assert!(server.stats().calls(fake_upstreams::records::RECORD_GET) > 0);
    }
}
