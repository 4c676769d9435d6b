//! The cache's weigher against the memory its entries really take.
//!
//! `max_bytes` is only a bound if each entry is charged what it costs. This test fills the
//! cache's store with entries shaped as the memory benchmark's (loadtest/bench.py `memory`), under
//! the allocator the gateway runs with, and compares the growth of resident memory per entry with
//! the store's weight per entry. Each fill runs alone in a process of its own, so nothing else
//! allocates meanwhile.

use std::{sync::Arc, time::Duration};

use fetcher_api::{KeyPart, Record, Row, Value};
use gateway_stack::{cache::store::Store, events::cache::CacheMetrics};
use tokio::time::Instant;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Enough entries that what the table and the allocator pay in steps as the table grows (its
/// arrays double, per shard, and the allocator keeps or reuses the old ones) is spread thin.
const ENTRIES: usize = 1_500_000;

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

/// `(resident bytes per entry, weight per entry)` of `ENTRIES` entries of `n` features.
fn measure(n: usize) -> (f64, f64) {
    let features: Arc<[String]> = (0..n).map(|f| format!("f{f}")).collect();
    let now = Instant::now();
    let before = rss_bytes();
    let store = Store::new(
        1 << 36,
        Duration::from_secs(3600),
        CacheMetrics::new("test"),
    );
    let shape = store
        .shape(&"user_stats".into(), &features)
        .expect("a shape");
    for i in 0..ENTRIES {
        let key = [KeyPart::String(format!("u_{i:07}"))];
        store.insert(shape, &key, &row(i, n), now, false);
    }
    let grown = rss_bytes().saturating_sub(before);
    let (entries, weight) = store.size();
    assert_eq!(entries, ENTRIES as u64);
    (
        grown as f64 / ENTRIES as f64,
        weight as f64 / ENTRIES as f64,
    )
}

/// Each fill runs in a process of its own (this test binary, running [`fill_one_store`]): in one
/// process, a second fill could reuse memory the allocator kept from the first. What else the
/// machine does only adds to a process's resident memory (pages the allocator or the kernel
/// keep beyond what entries take), never takes from it, so a fill whose figure is off is run
/// again, up to [`FILLS`] times, and the least resident figure is the one that counts.
#[test]
fn the_weigher_charges_what_entries_really_take() {
    for n in [8, 1] {
        let mut real = f64::INFINITY;
        let mut charged = 0.0;
        for _ in 0..FILLS {
            let (resident, weight) = fill(n);
            eprintln!("{n} features: {resident:.1} bytes per entry resident, {weight:.1} charged");
            real = real.min(resident);
            charged = weight;
            if within(charged, real) {
                break;
            }
        }
        // Charging less than an entry takes would let the cache outgrow `max_bytes`; charging
        // more only leaves some of it unused. 1-feature entries take 65 to 68 bytes resident
        // and are charged 76 (the table's per-entry cost varies with how full its arrays are).
        assert!(
            within(charged, real),
            "{n} features: the weigher charges {charged:.1} bytes per entry for {real:.1} resident"
        );
    }
}

/// Fills run per number of features at most.
const FILLS: usize = 3;

/// Whether `charged` bytes per entry is close enough to `real`.
fn within(charged: f64, real: f64) -> bool {
    (0.9..=1.25).contains(&(charged / real))
}

/// One fill of `n` features in a process of its own: (resident, charged) bytes per entry.
fn fill(n: usize) -> (f64, f64) {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["fill_one_store", "--exact", "--ignored", "--nocapture"])
        .env(FEATURES_VAR, n.to_string())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("measured "))
        .and_then(|l| l.split_once(' '))
        .and_then(|(r, c)| Some((r.parse::<f64>().ok()?, c.parse::<f64>().ok()?)))
        .unwrap_or_else(|| panic!("no measurement in: {stdout}"))
}

/// Names the number of features [`fill_one_store`] fills with.
const FEATURES_VAR: &str = "CACHE_MEMORY_FEATURES";

#[test]
#[ignore = "one fill of the_weigher_charges_what_entries_really_take, run in a process of its own"]
fn fill_one_store() {
    let n = std::env::var(FEATURES_VAR)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    let (real, charged) = measure(n);
    println!("measured {real} {charged}");
}
