//! Heap allocations per single-row request, counted by a global allocator of this test binary
//! alone, through the request path: the request message decoded, the `FeatureService` method
//! (request checks, plan execution through each source's stack, assembly, training log record,
//! metrics, the request span), the response message encoded. The transport (HTTP/2 framing) is
//! not counted, nor the training log's writer thread: only allocations made on the thread that
//! serves the request (a current-thread runtime, so every task of the request runs there).
//!
//! The ceiling is the count measured with a small margin: a change that allocates more per
//! request fails here and says by how much.
#![allow(unsafe_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::BTreeMap,
    sync::Arc,
};

use gateway::{Gateway, reload::Live, server::FeatureServiceImpl};
use prost::Message;
use proto::v1::{self, feature_service_server::FeatureService};

/// Most allocations a warm single-row `fraud_v1` request may make (measured: see the README's
/// "Benchmarks").
const CEILING: f64 = 115.0;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the thread's locals may be gone while it exits.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is passed to the system allocator unchanged; counting touches only
// const-initialised thread locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread by `f`.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}

fn request(i: usize) -> Vec<u8> {
    let string = |s: String| v1::Value {
        kind: Some(v1::value::Kind::StringValue(s)),
    };
    let n = i * 7919;
    v1::GetFeaturesRequest {
        feature_service: "fraud_v1".to_owned(),
        entities: BTreeMap::from([
            ("user_id".to_owned(), string(format!("u_{:05}", n % 10_000))),
            (
                "card_id".to_owned(),
                string(format!("c_{:05}", (n / 3) % 10_000)),
            ),
            (
                "merchant_id".to_owned(),
                string(format!("m_{:04}", n % 2_000)),
            ),
        ]),
        context: BTreeMap::from([
            (
                "amount".to_owned(),
                v1::Value {
                    kind: Some(v1::value::Kind::DoubleValue(129.99)),
                },
            ),
            ("currency".to_owned(), string("USD".to_owned())),
            ("channel".to_owned(), string("ecom".to_owned())),
        ]),
        ..Default::default()
    }
    .encode_to_vec()
}

#[test]
fn a_single_row_request_allocates_at_most_the_ceiling() {
    let dir = tempfile::tempdir().expect("temporary directory");
    gateway::demo::write(dir.path(), std::time::SystemTime::now()).expect("demo written");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let registry = fetcher_builtin::registry();
    let config =
        gateway::load_config(&dir.path().join("demo.toml"), &registry, None).expect("demo config");
    let gateway = rt
        .block_on(Gateway::build(config, &registry))
        .expect("demo gateway");
    let log = gateway::reload::start_training_log(&gateway).expect("training log");
    assert!(
        log.is_some(),
        "the demo logs fraud_v1: its record is counted"
    );
    let live = Arc::new(Live::new(gateway, log, None));
    let service = FeatureServiceImpl::new(live.clone());
    let serve = |bytes: &[u8]| {
        let request = v1::GetFeaturesRequest::decode(bytes).expect("decodes");
        let response = rt
            .block_on(service.get_features(tonic::Request::new(request)))
            .expect("served")
            .into_inner();
        let mut out = Vec::with_capacity(response.encoded_len());
        response.encode(&mut out).expect("encodes");
        out
    };
    // Warm: lazily built state (metric handles, thread-local generators, the runtime's timer).
    let warm: Vec<Vec<u8>> = (0..200).map(request).collect();
    for bytes in &warm {
        serve(bytes);
    }
    const N: usize = 200;
    let requests: Vec<Vec<u8>> = (1000..1000 + N).map(request).collect();
    let (responses, total) = allocations(|| requests.iter().map(|b| serve(b)).collect::<Vec<_>>());
    let per_request = total as f64 / N as f64;
    let response = v1::GetFeaturesResponse::decode(responses[0].as_slice()).expect("decodes");
    assert_eq!(response.values.len(), 20, "fraud_v1 served");
    println!("allocations per single-row fraud_v1 request: {per_request:.1}");
    assert!(
        per_request <= CEILING,
        "{per_request:.1} allocations per request, more than the ceiling of {CEILING}"
    );
    rt.block_on(live.close());
}
