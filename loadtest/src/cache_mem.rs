//! `cache-mem`: where the memory of the gateway's in-process cache goes, per entry.
//!
//! The `memory` benchmark (loadtest/bench.py) measures the real gateway's resident memory with a
//! million cached entries. This tool takes that number apart: it builds the same number of
//! entries, shaped as `services/gateway/src/cache.rs` stores them (key `(Arc<str>,
//! Vec<KeyPart>)`; entry `{ features: Arc<[String]>, row: Row, fetched_at: Instant }`, one
//! `Result<Value, CellError>` per feature), in one container per run, under the same allocator
//! (mimalloc), and prints the growth of resident memory per entry as JSON:
//!
//! - `hashmap`: a plain `HashMap` of the gateway's key and entry: the representation alone;
//! - `moka`: `moka::sync::Cache` with a weigher and a time-to-live, as the gateway builds it;
//! - `moka-no-ttl`: the same without the time-to-live (moka then keeps no write-order queue);
//! - `compact-moka`: moka without a time-to-live holding a compact entry: the key's bytes in a
//!   `Box<str>` (one cache per view, so no view name in the key) and the row as its
//!   protobuf-encoded bytes in a `Box<[u8]>` beside a 4-byte fetch time;
//! - `compact-hashmap`: that compact entry in a plain `HashMap`.
//!
//! It is a measurement, not a model of the gateway: the gateway's own figure comes from
//! `bench.py memory`; the types here mirror `cache.rs` and must follow it when it changes.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use fetcher_api::{Cell, KeyPart, Record, Row, Value};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Variant {
    Hashmap,
    Moka,
    MokaNoTtl,
    CompactMoka,
    CompactHashmap,
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
    /// Features per entry (the benchmark's view has 8: 6 numbers, then a 2-letter string, then
    /// a number).
    #[arg(long, default_value_t = 8)]
    features: usize,
}

/// The gateway's cache key and entry (services/gateway/src/cache.rs).
type Key = (Arc<str>, Vec<KeyPart>);

#[derive(Clone, Debug)]
#[allow(dead_code)] // held for its memory, never read
struct Entry {
    features: Arc<[String]>,
    row: Row,
    fetched_at: tokio::time::Instant,
}

/// A compact alternative: the encoded row and a fetch time relative to the cache's start.
#[derive(Clone, Debug)]
#[allow(dead_code)] // held for its memory, never read
struct Compact {
    row: Box<[u8]>,
    fetched_at_ms: u32,
}

fn cells(i: usize, n: usize) -> Vec<Cell> {
    (0..n)
        .map(|f| {
            Ok(match f {
                6 => Value::String(["US", "GB", "DE"][i % 3].to_owned()),
                f if f % 2 == 0 => Value::Int64((i * 7 + f) as i64 % 60),
                _ => Value::Double(i as f64 * 0.37 + f as f64),
            })
        })
        .collect()
}

/// The row as protobuf would encode it (a tag and a value per cell), about what a prost
/// `Vec<featuregateway.v1.Value>` takes: enough to size the compact representation honestly.
fn encoded(cells: &[Cell]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(cells.len() * 11);
    for cell in cells {
        match cell {
            Ok(Value::Int64(v)) => {
                out.extend([0x0a, 2, 0x08]);
                out.push((*v as u8) & 0x7f);
            }
            Ok(Value::Double(v)) => {
                out.extend([0x0a, 9, 0x11]);
                out.extend(v.to_le_bytes());
            }
            Ok(Value::String(s)) => {
                out.extend([0x0a, (s.len() + 2) as u8, 0x1a, s.len() as u8]);
                out.extend(s.as_bytes());
            }
            _ => out.extend([0x0a, 0]),
        }
    }
    out.into_boxed_slice()
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
    let key = |i: usize| format!("u_{i:0width$}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("no runtime: {e}"));
    let _guard = runtime.enter();
    let now = tokio::time::Instant::now();
    let before = rss_bytes();
    let started = Instant::now();

    // Each arm fills its container, measures, and keeps it alive until measured.
    let after = match args.variant {
        Variant::Hashmap => {
            let mut map: HashMap<Key, Entry> = HashMap::new();
            for i in 0..args.entries {
                map.insert(
                    (view.clone(), vec![KeyPart::String(key(i))]),
                    Entry {
                        features: features.clone(),
                        row: Row::Found(Record {
                            cells: cells(i, args.features),
                            event_time: None,
                        }),
                        fetched_at: now,
                    },
                );
            }
            let rss = rss_bytes();
            assert_eq!(map.len(), args.entries);
            rss
        }
        Variant::Moka | Variant::MokaNoTtl => {
            let mut builder = moka::sync::Cache::builder()
                .max_capacity(1 << 36)
                .weigher(|_: &Key, _: &Entry| 400);
            if matches!(args.variant, Variant::Moka) {
                builder = builder.time_to_live(Duration::from_secs(3600));
            }
            let cache: moka::sync::Cache<Key, Entry> = builder.build();
            for i in 0..args.entries {
                cache.insert(
                    (view.clone(), vec![KeyPart::String(key(i))]),
                    Entry {
                        features: features.clone(),
                        row: Row::Found(Record {
                            cells: cells(i, args.features),
                            event_time: None,
                        }),
                        fetched_at: now,
                    },
                );
            }
            cache.run_pending_tasks();
            let rss = rss_bytes();
            assert_eq!(cache.entry_count(), args.entries as u64);
            rss
        }
        Variant::CompactMoka => {
            let cache: moka::sync::Cache<Box<str>, Compact> = moka::sync::Cache::builder()
                .max_capacity(1 << 36)
                .weigher(|_, _: &Compact| 100)
                .build();
            for i in 0..args.entries {
                cache.insert(
                    key(i).into_boxed_str(),
                    Compact {
                        row: encoded(&cells(i, args.features)),
                        fetched_at_ms: 0,
                    },
                );
            }
            cache.run_pending_tasks();
            let rss = rss_bytes();
            assert_eq!(cache.entry_count(), args.entries as u64);
            rss
        }
        Variant::CompactHashmap => {
            let mut map: HashMap<Box<str>, Compact> = HashMap::new();
            for i in 0..args.entries {
                map.insert(
                    key(i).into_boxed_str(),
                    Compact {
                        row: encoded(&cells(i, args.features)),
                        fetched_at_ms: 0,
                    },
                );
            }
            let rss = rss_bytes();
            assert_eq!(map.len(), args.entries);
            rss
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
            "fill_s": started.elapsed().as_secs_f64(),
            "size_of": {
                "key": std::mem::size_of::<Key>(),
                "entry": std::mem::size_of::<Entry>(),
                "cell": std::mem::size_of::<Cell>(),
                "value": std::mem::size_of::<Value>(),
                "key_part": std::mem::size_of::<KeyPart>(),
            },
        })
    );
}
