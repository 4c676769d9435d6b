//! `cache-mem`: where the memory of the gateway's in-process cache goes, per entry.
//!
//! The `memory` benchmark (loadtest/bench.py) measures the real gateway's resident memory with a
//! million cached entries. This tool takes that number apart: it builds the same number of
//! entries, shaped as the benchmark's view (`user_stats`: two counts, two amounts with two
//! decimals, two more counts, a country code, a score with four decimals; or its first feature
//! alone), in one container per run, under the same allocator (mimalloc), and prints the growth
//! of resident memory per entry as JSON:
//!
//! - `store`: the gateway's own cache storage (`gateway_stack::cache::store::Store`), filled through
//!   the calls the cache layer makes; the report adds what its weigher charges per entry, to set
//!   beside what the entries really take;
//! - `old-hashmap`: the representation the cache used before, for reference: key
//!   `(Arc<str>, Vec<KeyPart>)`, entry `{ features: Arc<[String]>, row: Row, fetched_at }` with
//!   one 32-byte `Result<Value, CellError>` per feature, in a plain `HashMap` (so without any
//!   cache bookkeeping).
//!
//! It also times a hit: `hit_ns` is the mean time of a lookup of a random cached key, the row
//! handed back as the cache layer serves it (decoded from the store; cloned from the old
//! entry, as the old cache's `get` did).
//!
//! It is a measurement, not a model: the gateway's own figure comes from `bench.py memory`.

use std::{collections::HashMap, sync::Arc, time::Instant};

use clap::{Parser, ValueEnum};
use fetcher_api::{Cell, KeyPart, Record, Row, Value};
use gateway_stack::{cache::store::Store, events::cache::CacheMetrics};
use rand::{Rng, SeedableRng};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Variant {
    Store,
    OldHashmap,
}

/// Measure the resident memory of N cache entries in one representation.
#[derive(Debug, Parser)]
struct Args {
    /// The container and entry representation.
    #[arg(long, value_enum)]
    variant: Variant,
    /// How many distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    entries: usize,
    /// Features per entry: 8 (the benchmark view's) or fewer (its first ones).
    #[arg(long, default_value_t = 8)]
    features: usize,
    /// Lookups timed after the fill.
    #[arg(long, default_value_t = 1_000_000)]
    lookups: usize,
}

/// The representation before the compact store: its key and entry.
type OldKey = (Arc<str>, Vec<KeyPart>);

#[derive(Clone, Debug)]
#[allow(dead_code)] // held for its memory, never read
struct OldEntry {
    features: Arc<[String]>,
    row: Row,
    fetched_at: tokio::time::Instant,
}

/// Row `i` of the benchmark's population (loadtest/bench.py `write_users`), its first `n` cells.
fn cells(i: usize, n: usize) -> Vec<Cell> {
    let amount =
        |salt: usize, max: usize| ((i * 7919 + salt * 104_729) % (max * 100)) as f64 / 100.0;
    let row = [
        Value::Int64((i % 13) as i64),
        Value::Int64((i % 60) as i64),
        Value::Double(amount(1, 5000)),
        Value::Double(amount(2, 300)),
        Value::Int64((i % 30) as i64),
        Value::Int64((i % 5) as i64),
        Value::String(["US", "GB", "DE", "FR", "BR", "IN"][i % 6].to_owned()),
        Value::Double(((i * 37) % 10_000) as f64 / 10_000.0),
    ];
    row.into_iter().take(n).map(Ok).collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let args = Args::parse();
    let view: Arc<str> = Arc::from("user_stats");
    let features: Arc<[String]> = (0..args.features).map(|f| format!("feature_{f}")).collect();
    let width = (args.entries.max(2) - 1).to_string().len();
    let key = |i: usize| vec![KeyPart::String(format!("u_{i:0width$}"))];
    let row = |i: usize| {
        Row::Found(Record {
            cells: cells(i, args.features),
            event_time: None,
        })
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("no runtime: {e}"));
    let _guard = runtime.enter();
    let now = tokio::time::Instant::now();

    // The keys to look up, drawn before the clock starts.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let probes: Vec<Vec<KeyPart>> = (0..args.lookups)
        .map(|_| key(rng.random_range(0..args.entries)))
        .collect();
    let before = rss_bytes();

    // Each arm fills its container, measures, times its hits, and keeps it alive until then.
    let (after, weight, hit) = match args.variant {
        Variant::Store => {
            let store = Store::new(
                1 << 36,
                std::time::Duration::from_secs(3600),
                CacheMetrics::new("cache-mem"),
            );
            let shape = store
                .shape(&view, &features)
                .unwrap_or_else(|| unreachable!("the first shape has an id"));
            for i in 0..args.entries {
                store.insert(shape, &key(i), &row(i), now, false);
            }
            let rss = rss_bytes();
            let (entries, weight) = store.size();
            assert_eq!(entries, args.entries as u64);
            let timed = Instant::now();
            let mut cells = 0;
            for k in &probes {
                if let Some(Row::Found(r)) = store.get(shape, k, now).map(|e| e.row) {
                    cells += r.cells.len();
                }
            }
            let hit = timed.elapsed();
            assert_eq!(cells, args.lookups * args.features);
            (rss, Some((weight, store.table_bytes())), hit)
        }
        Variant::OldHashmap => {
            let mut map: HashMap<OldKey, OldEntry> = HashMap::new();
            for i in 0..args.entries {
                map.insert(
                    (view.clone(), key(i)),
                    OldEntry {
                        features: features.clone(),
                        row: row(i),
                        fetched_at: now,
                    },
                );
            }
            let rss = rss_bytes();
            assert_eq!(map.len(), args.entries);
            let timed = Instant::now();
            let mut cells = 0;
            for k in &probes {
                let probe = (view.clone(), k.clone());
                if let Some(Row::Found(r)) = map.get(&probe).cloned().map(|e| e.row) {
                    cells += r.cells.len();
                }
            }
            let hit = timed.elapsed();
            assert_eq!(cells, args.lookups * args.features);
            (rss, None, hit)
        }
    };
    let grown = after.saturating_sub(before);
    println!(
        "{}",
        serde_json::json!({
            "variant": format!("{:?}", args.variant),
            "entries": args.entries,
            "features": args.features,
            "rss_before_mb": before as f64 / 1048576.0,
            "rss_after_mb": after as f64 / 1048576.0,
            "bytes_per_entry": grown as f64 / args.entries as f64,
            "weight_per_entry": weight.map(|(w, _)| w as f64 / args.entries as f64),
            "slab_per_entry": weight.map(|(_, (s, _))| s as f64 / args.entries as f64),
            "index_per_entry": weight.map(|(_, (_, i))| i as f64 / args.entries as f64),
            "hit_ns": hit.as_nanos() as f64 / args.lookups.max(1) as f64,
        })
    );
}
