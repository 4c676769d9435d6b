//! The CPU of reading an entity's streaming aggregates, the gateway's work per row of a
//! `stream` source once Redis has answered: the stored fields of a card with a week of payments
//! turned into the values of `bench.py streaming`'s view (count, sum, max and approx_distinct,
//! each over 10m, 1h, 24h and 7d: 16 features, in 1-minute and 1-hour tiles).
//!
//! `cargo bench -p aggregation --bench read` measures (release); `cargo test -p aggregation
//! --bench read` (and so the workspace's `cargo test`) runs each benchmark once as a smoke test.
//!
//! Cards as the benchmark's history draws them: payments at a fixed rate over 7 days (merchants
//! among 2,000, amounts up to 500.00), the read a minute after the last. `typical` is a card of
//! 22 payments a day (the history's mean), `heavy` one of 100 (its most).
#![allow(missing_docs)]

use std::hint::black_box;

use aggregation::{EntityState, Event, Field, KeyField, Millis, Op, Partial, ViewDef, state};
use divan::Bencher;
use fetcher_api::{FeatureType, KeyPart, Value};

fn main() {
    divan::main();
}

const MINUTE: Millis = 60_000;
const DAY: Millis = 24 * 60 * MINUTE;
/// The read time: 2026-12-07 12:00 UTC.
const NOW: Millis = 1_796_644_800_000;

fn view() -> ViewDef {
    let mut def = ViewDef {
        name: "card_stream".into(),
        keys: vec![KeyField {
            entity: "card_id".into(),
            field: "card_id".into(),
            ty: FeatureType::String,
        }],
        time_field: "ts".into(),
        allowed_lateness: 5 * MINUTE,
        series: Vec::new(),
        aggregates: Vec::new(),
    };
    let field = |name: &str, ty| {
        Some(Field {
            name: name.into(),
            ty,
        })
    };
    for (name, op, field) in [
        ("txn_count", Op::Count, None),
        ("amount_sum", Op::Sum, field("amount", FeatureType::Double)),
        ("amount_max", Op::Max, field("amount", FeatureType::Double)),
        (
            "merchants",
            Op::ApproxDistinct,
            field("merchant_id", FeatureType::String),
        ),
    ] {
        for (w, window) in [
            ("10m", 10 * MINUTE),
            ("1h", 60 * MINUTE),
            ("24h", DAY),
            ("7d", 7 * DAY),
        ] {
            def.add(&format!("{name}_{w}"), op, field.clone(), window, None)
                .expect("a valid aggregate");
        }
    }
    def
}

/// SplitMix64.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stored fields of a card with `per_day` payments a day over the 7 days before `NOW`
/// (the last a minute before it), as ingest or `backfill --load` leaves them.
fn stored(def: &ViewDef, per_day: u64) -> Vec<(String, Vec<u8>)> {
    let n = per_day * 7;
    let span = 7 * DAY;
    let mut state = EntityState::new();
    for i in 0..n {
        let x = mix(i ^ per_day << 32);
        let cents = (x >> 8) % 50_000;
        let time = NOW - MINUTE - span + (i as i64 + 1) * span / n as i64;
        let event = Event {
            key: vec![KeyPart::String("c_00042".into())],
            time,
            values: def
                .series
                .iter()
                .map(|s| match s.op {
                    Op::Count => None,
                    Op::ApproxDistinct => Some(aggregation::Scalar::Str(format!(
                        "m_{:04}",
                        (x >> 32) % 2_000
                    ))),
                    _ => Some(aggregation::Scalar::Double(cents as f64 / 100.0)),
                })
                .collect(),
        };
        state.apply(def, &event);
    }
    state.expire(def, NOW - MINUTE);
    let mut fields = state.fields();
    fields.push((state::VERSION_FIELD.into(), b"17".to_vec()));
    fields
}

/// The read as it was: every stored tile decoded, then each window's tiles merged pairwise
/// oldest first (a new union of sketches per tile for approx_distinct).
fn read_pairwise(def: &ViewDef, fields: &[(String, Vec<u8>)], at: Millis) -> Vec<Value> {
    let state =
        EntityState::from_fields(def, fields.iter().map(|(f, v)| (f.as_str(), v.as_slice())))
            .expect("decodes");
    def.aggregates
        .iter()
        .map(|aggregate| {
            let series = &def.series[aggregate.series];
            let size = series.tile;
            let position = def
                .series_of(size)
                .position(|(i, _)| i == aggregate.series)
                .expect("a series of its size");
            let first = aggregation::spec::tile_start(at - aggregate.window, size);
            let last = aggregation::spec::tile_start(at, size);
            let mut merged = Partial::empty(series);
            for (_, tile) in state.tiles.range((size, first)..=(size, last)) {
                merged.merge(series, &tile[position]);
            }
            merged.value(aggregate.output)
        })
        .collect()
}

/// The read the gateway makes: only the tiles the windows cover decoded, one union per window.
fn read(def: &ViewDef, fields: &[(String, Vec<u8>)], wanted: &[usize], at: Millis) -> Vec<Value> {
    aggregation::read_fields(
        def,
        fields.iter().map(|(f, v)| (f.as_str(), v.as_slice())),
        wanted,
        at,
    )
    .expect("decodes")
}

/// The backfill's read: every tile decoded into an entity's state, then each window merged.
fn read_state(def: &ViewDef, fields: &[(String, Vec<u8>)], at: Millis) -> Vec<Value> {
    EntityState::from_fields(def, fields.iter().map(|(f, v)| (f.as_str(), v.as_slice())))
        .expect("decodes")
        .values(def, at)
}

const CARDS: [(&str, u64); 2] = [("typical", 22), ("heavy", 100)];

#[divan::bench(args = CARDS)]
fn pairwise(bencher: Bencher, card: (&str, u64)) {
    let def = view();
    let fields = stored(&def, card.1);
    bencher.bench_local(|| read_pairwise(black_box(&def), black_box(&fields), NOW));
}

#[divan::bench(args = CARDS)]
fn gateway(bencher: Bencher, card: (&str, u64)) {
    let def = view();
    let fields = stored(&def, card.1);
    let all: Vec<usize> = (0..def.aggregates.len()).collect();
    let before = read_pairwise(&def, &fields, NOW);
    assert_eq!(read(&def, &fields, &all, NOW), before);
    assert_eq!(read_state(&def, &fields, NOW), before);
    bencher.bench_local(|| read(black_box(&def), black_box(&fields), &all, NOW));
}

#[divan::bench(args = CARDS)]
fn backfill(bencher: Bencher, card: (&str, u64)) {
    let def = view();
    let fields = stored(&def, card.1);
    bencher.bench_local(|| read_state(black_box(&def), black_box(&fields), NOW));
}
