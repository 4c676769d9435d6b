//! The CPU of each stage of a `GetFeatures` request, one benchmark per stage, on the embedded
//! demo's `fraud_v1` (20 features: three static tables, the request's context, a derived
//! feature; training log on): what `loadtest/profile.py` shows as shares of a profile, here as
//! time per call of each stage alone.
//!
//! `cargo bench -p gateway --bench stages` measures (release); `cargo test -p gateway --bench
//! stages` (and so the workspace's `cargo test`) runs each benchmark once as a smoke test.
//!
//! Stages, in the order a request meets them: `decode` (the request message), `check_request_id`
//! and `authorize`, `resolve` (the plan), `row_input` (entities and context checked), `execute`
//! (the plan: every source call through its stack, then assembly; `source_call` and `fetcher`
//! time each view's call with and without the stack, so assembly is `execute` less the calls),
//! `vector` (values and statuses to the wire), `encode` (the response message), `log_record` and
//! `log_submit` (the training log, on the request's thread), `log_write` (the training log's
//! writer thread, per record), `metrics`, `tracing` (the request span), and `handler` (all
//! of it but the transport: the service method called directly).
#![allow(missing_docs)]

use std::{
    collections::BTreeMap,
    hint::black_box,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use divan::Bencher;
use fetcher_api::{FetchRequest, Fetcher, Record, Row};
use gateway::{
    Gateway,
    executor::{RowInput, Served},
    plan::{KeyInput, Plan},
    reload::Live,
    request,
    server::{self, FeatureServiceImpl},
    telemetry::ServiceMetrics,
};
use gateway_stack::GatewayService;
use prost::Message;
use proto::v1::{self, feature_service_server::FeatureService};
use tokio::time::Instant;
use tower::ServiceExt;
use training_log::TrainingLog;

fn main() {
    divan::main();
    if let Some(f) = FIXTURE.get() {
        let _ = std::fs::remove_dir_all(&f.dir);
    }
}

/// Distinct requests cycled through, so table lookups are not all one cache line.
const KEYS: usize = 1024;

struct Fixture {
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    live: Arc<Live>,
    gateway: Arc<Gateway>,
    plan: Arc<Plan>,
    requests: Vec<v1::GetFeaturesRequest>,
    encoded: Vec<Vec<u8>>,
    rows: Vec<RowInput>,
    served: Vec<Vec<Served>>,
    /// Per fetch of the plan: its view, the request for the first row, the fetcher and its stack.
    calls: Vec<(String, FetchRequest, Arc<dyn Fetcher>, GatewayService)>,
    log: TrainingLog,
    metrics: ServiceMetrics,
    next: AtomicUsize,
}

impl Fixture {
    fn next(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % KEYS
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
        let _ = gateway::traces::init(false, None);
        let dir = std::env::temp_dir().join(format!("gateway-bench-stages-{}", std::process::id()));
        gateway::demo::write(&dir, std::time::SystemTime::now()).expect("demo written");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let registry = fetcher_builtin::registry();
        let config =
            gateway::load_config(&dir.join("demo.toml"), &registry, None).expect("demo config");
        let sources = config.sources.clone();
        let gateway = rt
            .block_on(Gateway::build(config, &registry))
            .expect("demo gateway");
        let log = gateway::reload::start_training_log(&gateway)
            .expect("training log")
            .expect("the demo logs fraud_v1");
        let live = Arc::new(Live::new(gateway, Some(log.clone()), None));
        let gateway = live.current().gateway().clone();
        let plan = gateway.resolve("fraud_v1", &[]).expect("fraud_v1");
        let requests: Vec<_> = (0..KEYS).map(request).collect();
        let encoded = requests.iter().map(Message::encode_to_vec).collect();
        let limits = &gateway.config().limits;
        let rows: Vec<_> = requests
            .iter()
            .map(|r| {
                let mut r = r.clone();
                request::row_input(
                    &plan,
                    &mut r.entities,
                    &mut r.context,
                    limits,
                    request::RowPrefix(None),
                )
                .expect("row")
            })
            .collect();
        let served = rows
            .iter()
            .map(|row| {
                let deadline = Instant::now() + Duration::from_secs(1);
                let execution =
                    rt.block_on(gateway.execute(&plan, std::slice::from_ref(row), deadline));
                execution.rows.into_iter().next().expect("one row")
            })
            .collect();
        // Each fetch's request for the first row; a key read from an earlier fetch's row is
        // taken from that fetch's answer.
        let mut calls = Vec::new();
        let mut answers: Vec<Option<Record>> = vec![None; plan.fetches.len()];
        for &f in plan.stages.iter().flatten() {
            let fetch = &plan.fetches[f];
            let Some(fetcher) = gateway.sources()[fetch.source].fetcher.clone() else {
                continue;
            };
            let key = fetch
                .keys
                .iter()
                .map(|k| match *k {
                    KeyInput::Entity(i) => rows[0].entities[i].clone(),
                    KeyInput::Context(i) => rows[0].context[i]
                        .as_ref()
                        .and_then(|v| v.to_key_part())
                        .expect("a context key"),
                    KeyInput::Feature { fetch, cell } => answers[fetch]
                        .as_ref()
                        .and_then(|r| r.cells[cell].as_ref().ok())
                        .and_then(|v| v.to_key_part())
                        .expect("a dependent key"),
                })
                .collect();
            let fetch_request = FetchRequest {
                view: fetch.view.clone(),
                features: fetch.features.clone(),
                keys: vec![key],
                deadline: Some(Instant::now() + Duration::from_secs(3600)),
            };
            let rows = rt
                .block_on(fetcher.fetch(fetch_request.clone()))
                .expect("fetched");
            if let Some(Row::Found(record)) = rows.into_iter().next() {
                answers[f] = Some(record);
            }
            let stack = gateway_stack::stack(fetcher.clone(), &sources[&*fetch.source_name]);
            calls.push((fetch.view.to_string(), fetch_request, fetcher, stack));
        }
        Fixture {
            dir,
            rt,
            live,
            gateway,
            plan,
            requests,
            encoded,
            rows,
            served,
            calls,
            log,
            metrics: ServiceMetrics::new("fraud_v1"),
            next: AtomicUsize::new(0),
        }
    })
}

/// Request `i` of the demo's population, as fg-load's `overhead` scenario sends it.
fn request(i: usize) -> v1::GetFeaturesRequest {
    let string = |s: String| v1::Value {
        kind: Some(v1::value::Kind::StringValue(s)),
    };
    let n = i * 7919;
    let entities = BTreeMap::from([
        ("user_id".to_owned(), string(format!("u_{:05}", n % 10_000))),
        (
            "card_id".to_owned(),
            string(format!("c_{:05}", (n / 3) % 10_000)),
        ),
        (
            "merchant_id".to_owned(),
            string(format!("m_{:04}", n % 2_000)),
        ),
    ]);
    let context = BTreeMap::from([
        (
            "amount".to_owned(),
            v1::Value {
                kind: Some(v1::value::Kind::DoubleValue(129.99)),
            },
        ),
        ("currency".to_owned(), string("USD".to_owned())),
        ("channel".to_owned(), string("ecom".to_owned())),
    ]);
    v1::GetFeaturesRequest {
        feature_service: "fraud_v1".to_owned(),
        entities,
        context,
        ..Default::default()
    }
}

fn response(f: &Fixture, i: usize) -> v1::GetFeaturesResponse {
    let (values, statuses, metadata) = server::vector(&f.plan, f.served[i].clone(), false);
    v1::GetFeaturesResponse {
        request_id: "3f2c1a9e-0b7d-4c55-9a51-7c1f0e2d4b6a".to_owned(),
        feature_names: f.plan.feature_names.clone(),
        values,
        statuses,
        metadata,
        request_metadata: None,
    }
}

#[divan::bench]
fn decode(bencher: Bencher) {
    let f = fixture();
    bencher
        .bench(|| v1::GetFeaturesRequest::decode(f.encoded[f.next()].as_slice()).expect("decodes"));
}

#[divan::bench]
fn check_request_id_and_authorize(bencher: Bencher) {
    let f = fixture();
    let limits = &f.gateway.config().limits;
    bencher.bench(|| {
        request::check_request_id(black_box("order-42/retry.1"), limits).expect("valid");
        request::authorize(None, black_box("fraud_v1")).expect("allowed");
    });
}

#[divan::bench]
fn resolve(bencher: Bencher) {
    let f = fixture();
    bencher.bench(|| {
        f.gateway
            .resolve(black_box("fraud_v1"), &[])
            .expect("resolved")
    });
}

#[divan::bench]
fn row_input(bencher: Bencher) {
    let f = fixture();
    let limits = &f.gateway.config().limits;
    bencher
        .with_inputs(|| f.requests[f.next()].clone())
        .bench_local_values(|mut r| {
            request::row_input(
                &f.plan,
                &mut r.entities,
                &mut r.context,
                limits,
                request::RowPrefix(None),
            )
            .expect("row")
        });
}

#[divan::bench]
fn execute(bencher: Bencher) {
    let f = fixture();
    bencher.bench(|| {
        let row = &f.rows[f.next()];
        let deadline = Instant::now() + Duration::from_millis(50);
        f.rt.block_on(
            f.gateway
                .execute(&f.plan, std::slice::from_ref(row), deadline),
        )
    });
}

fn views() -> Vec<&'static str> {
    fixture().calls.iter().map(|c| c.0.as_str()).collect()
}

/// One view's call through its source's whole stack (cache, telemetry, breaker, deadline,
/// hedge, retry, bulkhead), as `execute` makes it.
#[divan::bench(args = views())]
fn source_call(bencher: Bencher, view: &str) {
    let f = fixture();
    let (_, request, _, stack) = f.calls.iter().find(|c| c.0 == view).expect("view");
    bencher.bench(|| f.rt.block_on(stack.clone().oneshot(request.clone())));
}

/// The same call to the fetcher alone.
#[divan::bench(args = views())]
fn fetcher(bencher: Bencher, view: &str) {
    let f = fixture();
    let (_, request, fetcher, _) = f.calls.iter().find(|c| c.0 == view).expect("view");
    bencher.bench(|| f.rt.block_on(fetcher.fetch(request.clone())));
}

#[divan::bench]
fn vector(bencher: Bencher) {
    let f = fixture();
    bencher
        .with_inputs(|| f.served[f.next()].clone())
        .bench_values(|served| server::vector(&f.plan, served, false));
}

#[divan::bench]
fn encode(bencher: Bencher) {
    let f = fixture();
    let mut buf = Vec::with_capacity(4096);
    bencher
        .with_inputs(|| response(f, f.next()))
        .bench_local_refs(|response| {
            buf.clear();
            response.encode(&mut buf).expect("encodes");
        });
}

/// The training log record of the next request's vector.
fn record(f: &Fixture, arrival: Instant) -> training_log::Record {
    let i = f.next();
    record_of(f, i, f.rows[i].clone(), arrival)
}

/// The training log record of request `i`'s vector, taking its row.
fn record_of(f: &Fixture, i: usize, row: RowInput, arrival: Instant) -> training_log::Record {
    server::log_record(
        "3f2c1a9e-0b7d-4c55-9a51-7c1f0e2d4b6a".to_owned(),
        row,
        &f.served[i],
        &[],
        arrival,
    )
}

/// The record alone: the row it takes is copied beforehand, as the request hands over its own.
#[divan::bench]
fn log_record(bencher: Bencher) {
    let f = fixture();
    let arrival = Instant::now();
    bencher
        .with_inputs(|| {
            let i = f.next();
            (f.rows[i].clone(), i)
        })
        .bench_local_values(|(row, i)| record_of(f, i, row, arrival));
}

/// Handing a record to the training log's queue (few samples: the writer must keep up, or the
/// records go to the spool, another path).
#[divan::bench(sample_count = 20, sample_size = 50)]
fn log_submit(bencher: Bencher) {
    let f = fixture();
    let arrival = Instant::now();
    bencher
        .with_inputs(|| record(f, arrival))
        .bench_values(|record| f.log.submit("fraud_v1", record));
}

/// Records written by one run of [`log_write`].
const LOG_WRITE_RECORDS: usize = 4096;

/// The training log's writer thread: [`LOG_WRITE_RECORDS`] records submitted to a log of their
/// own, which is then closed, so each is taken from the queue, held in its open file and encoded
/// into Parquet, and the file committed (`fsync` included). The time per record is the time
/// divided by the count, the writer's CPU per logged request (its thread is otherwise idle).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn log_write(bencher: Bencher) {
    let f = fixture();
    let arrival = Instant::now();
    let runs = AtomicUsize::new(0);
    bencher
        .counter(divan::counter::ItemsCount::new(LOG_WRITE_RECORDS))
        .with_inputs(|| {
            let mut config = f.gateway.config().training_log.clone().expect("logged");
            let dir = f.dir.join(format!(
                "log-write-{}",
                runs.fetch_add(1, Ordering::Relaxed)
            ));
            config.dir = dir.join("log");
            config.spool_dir = dir.join("spool");
            let log = TrainingLog::start(
                config,
                gateway::reload::log_schemas(&f.gateway),
                Arc::new(gateway::telemetry::TrainingLogTelemetry::new()),
            )
            .expect("training log");
            let records: Vec<_> = (0..LOG_WRITE_RECORDS).map(|_| record(f, arrival)).collect();
            (log, records)
        })
        .bench_local_values(|(log, records)| {
            for record in records {
                log.submit("fraud_v1", record);
            }
            f.rt.block_on(log.close());
        });
}

#[divan::bench]
fn metrics(bencher: Bencher) {
    let f = fixture();
    let mut counts = [0u64; gateway::status::Status::ALL.len()];
    counts[0] = 18;
    counts[1] = 2;
    bencher.bench(|| {
        f.metrics.features_served(black_box(&counts));
        f.metrics
            .request_finished("GetFeatures", tonic::Code::Ok, Duration::from_micros(300));
    });
}

#[divan::bench]
fn tracing(bencher: Bencher) {
    let metadata = tonic::metadata::MetadataMap::new();
    bencher.bench(|| {
        let span = gateway::traces::request_span("GetFeatures", &metadata);
        span.record("request_id", "3f2c1a9e-0b7d-4c55-9a51-7c1f0e2d4b6a");
        span.record("feature_service", "fraud_v1");
        span
    });
}

/// Everything but the transport: the service method, from a decoded request to the response.
#[divan::bench]
fn handler(bencher: Bencher) {
    let f = fixture();
    let service = FeatureServiceImpl::new(f.live.clone());
    bencher
        .with_inputs(|| tonic::Request::new(f.requests[f.next()].clone()))
        .bench_local_values(|request| {
            f.rt.block_on(service.get_features(request))
                .expect("served")
        });
}
