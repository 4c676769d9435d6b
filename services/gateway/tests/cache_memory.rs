//! The cache's weigher against the memory its entries really take.
//!
//! `max_bytes` is only a bound if each entry is charged what it costs. This test fills the
//! cache's store with entries shaped as the memory benchmark's (loadtest/bench.py `memory`), under
//! the allocator the gateway runs with, and compares the growth of resident memory per entry with
//! the growth of the store's weight. It runs alone in its own process, so nothing else allocates
//! meanwhile.

use std::{sync::Arc, time::Duration};

use fetcher_api::{KeyPart, Record, Row, Value};
use gateway::{cache::store::Store, telemetry::CacheMetrics};
use tokio::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Entries filled before the first reading: the allocator's and the table's fixed costs are
/// paid by then, so what follows is the cost per entry.
const FIRST: usize = 100_000;
const ENTRIES: usize = 500_000;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Row `i`: the benchmark view's 8 features (counts, amounts with two or four decimals, a
/// country code), or the first `n` of them.
fn row(i: usize, n: usize) -> Row {
    let amount = |salt: usize| ((i * 7919 + salt * 104_729) % 500_000) as f64 / 100.0;
    let cells = [
        Value::Int64((i % 13) as i64),
        Value::Int64((i % 60) as i64),
        Value::Double(amount(1)),
        Value::Double(amount(2)),
        Value::Int64((i % 30) as i64),
        Value::Int64((i % 5) as i64),
        Value::String(["US", "GB", "DE", "FR", "BR", "IN"][i % 6].to_owned()),
        Value::Double(((i * 37) % 10_000) as f64 / 10_000.0),
    ];
    Row::Found(Record {
        cells: cells.into_iter().take(n).map(Ok).collect(),
        event_time: None,
    })
}

/// `(resident bytes per entry, weight per entry)` of entries of `n` features, between the
/// `FIRST` and the `ENTRIES`th, and the store (kept by the caller, so that a later fill cannot
/// reuse its memory).
fn measure(n: usize) -> (f64, f64, Store) {
    let store = Store::new(
        1 << 36,
        Duration::from_secs(3600),
        CacheMetrics::new("test"),
    );
    let features: Arc<[String]> = (0..n).map(|f| format!("f{f}")).collect();
    let shape = store
        .shape(&"user_stats".into(), &features)
        .expect("a shape");
    let now = Instant::now();
    let fill = |range: std::ops::Range<usize>| {
        for i in range {
            let key = [KeyPart::String(format!("u_{i:06}"))];
            store.insert(shape, &key, &row(i, n), now, false);
        }
        (rss_bytes(), store.size())
    };
    let (rss0, (_, weight0)) = fill(0..FIRST);
    let (rss1, (entries, weight1)) = fill(FIRST..ENTRIES);
    assert_eq!(entries, ENTRIES as u64);
    let added = (ENTRIES - FIRST) as f64;
    (
        rss1.saturating_sub(rss0) as f64 / added,
        (weight1 - weight0) as f64 / added,
        store,
    )
}

#[test]
fn the_weigher_charges_what_entries_really_take() {
    // One test, so the two fills run one after the other in this process.
    let mut stores = Vec::new();
    for n in [8, 1] {
        let (real, charged, store) = measure(n);
        stores.push(store);
        let ratio = charged / real;
        eprintln!("{n} features: {real:.1} bytes per entry resident, {charged:.1} charged");
        assert!(
            (0.9..=1.15).contains(&ratio),
            "{n} features: the weigher charges {charged:.1} bytes per entry for {real:.1} resident"
        );
    }
}
