//! A window's merge: each aggregate's value at a read time is the merge, oldest first, of the
//! tiles its window covers ([`covered`]: from the tile holding `at - window` to the one holding
//! `at`), folded by [`Merge`]. [`EntityState::value`](crate::EntityState::value) (the backfill)
//! and [`read_fields`](crate::read_fields) (the gateway) both fold with it, so the same tiles
//! give the same values, bit for bit.
//!
//! A window's distinct count is one HyperLogLog union fed every tile's sketch, not a union per
//! tile: merging sketches pairwise copied the accumulated registers at each tile (1,024 of
//! them, their sums recomputed), which was most of a read's CPU. Both give the same registers,
//! hence the same estimate (see [`Merge`]).

use datasketches::hll::HllUnion;
use fetcher_api::{FeatureType, Value};

use crate::{
    partial::{HLL_LG_K, Kind, Partial},
    spec::{Aggregate, Millis, Series, ViewDef, tile_start},
};

/// The tiles (starts, of its series' size) aggregate `aggregate` read at `at` covers.
pub fn covered(def: &ViewDef, aggregate: &Aggregate, at: Millis) -> (Millis, Millis) {
    let size = def.series[aggregate.series].tile;
    (
        tile_start(at.saturating_sub(aggregate.window), size),
        tile_start(at, size),
    )
}

/// A window's merge in progress: [`Partial::merge`] of each tile in turn, except for distinct
/// counts, whose sketches all go into one union.
///
/// The union's registers are the maximum of every sketch's (a set of coupons while fewer than
/// its HLL threshold), whatever the order or grouping of the merges, and the composite estimate
/// depends on nothing else (its sums of `2^-register` are exact in a double), so one union
/// estimates exactly what a chain of pairwise unions did.
#[derive(Debug)]
pub enum Merge {
    Partial(Partial),
    Distinct(Box<HllUnion>),
}

impl Merge {
    /// A merge of no tiles.
    pub fn new(series: &Series) -> Merge {
        match Kind::of(series) {
            Kind::Distinct => {
                Merge::Distinct(Box::new(HllUnion::new(HLL_LG_K).expect("a valid lg_k")))
            }
            _ => Merge::Partial(Partial::empty(series)),
        }
    }

    /// Folds in the next tile's partial of the series.
    pub fn add(&mut self, series: &Series, tile: &Partial) {
        match (self, tile) {
            (Merge::Distinct(union), Partial::Distinct(sketch)) => union.update(sketch),
            (Merge::Partial(merged), tile) => merged.merge(series, tile),
            (Merge::Distinct(_), _) => {}
        }
    }

    /// What the merged window reads as, of type `output`.
    pub fn value(&self, output: FeatureType) -> Value {
        match self {
            Merge::Partial(merged) => merged.value(output),
            // As `Partial::value` of the union's sketch: the same composite estimate.
            Merge::Distinct(union) => Value::Int64(union.composite_estimate().round() as i64),
        }
    }
}

/// Aggregate `index` of `def` over `tiles` (the tiles its window covers, oldest first, each
/// with the partials of its size's series).
pub(crate) fn fold<'t>(
    def: &ViewDef,
    index: usize,
    tiles: impl Iterator<Item = &'t Vec<Partial>>,
) -> Value {
    let aggregate = &def.aggregates[index];
    let series = &def.series[aggregate.series];
    let position = def.place(aggregate.series);
    let mut merge = Merge::new(series);
    for tile in tiles {
        if let Some(partial) = tile.get(position) {
            merge.add(series, partial);
        }
    }
    merge.value(aggregate.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{partial::Scalar, spec::Field};

    fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn one_union_estimates_what_pairwise_unions_did() {
        let series = Series {
            op: crate::spec::Op::ApproxDistinct,
            field: Some(Field {
                name: "m".into(),
                ty: FeatureType::String,
            }),
            tile: 60_000,
        };
        // Windows of tiles from empty to thousands of values (lists, sets and arrays of
        // registers), values shared between tiles or not.
        for seed in 0..300u64 {
            let tiles: Vec<Partial> = (0..1 + mix(seed) % 40)
                .map(|t| {
                    let mut p = Partial::empty(&series);
                    let x = mix(seed << 8 ^ t);
                    let n = match x % 10 {
                        0 => 0,
                        1 => 90 + x % 20,
                        2 => 500 + x % 3000,
                        _ => x % 8,
                    };
                    let universe = 1 + mix(seed) % 5000;
                    for i in 0..n {
                        let v = mix(x ^ i) % universe;
                        p.add(&series, 0, Some(&Scalar::Str(format!("m{v}"))));
                    }
                    p
                })
                .collect();
            let mut pairwise = Partial::empty(&series);
            let mut merge = Merge::new(&series);
            for tile in &tiles {
                pairwise.merge(&series, tile);
                merge.add(&series, tile);
            }
            let expected = pairwise.value(FeatureType::Int64);
            assert_eq!(merge.value(FeatureType::Int64), expected, "seed {seed}");
            // The estimate itself, before rounding, bit for bit.
            let (Partial::Distinct(sketch), Merge::Distinct(union)) = (&pairwise, &merge) else {
                panic!("distinct counts")
            };
            assert_eq!(
                union.composite_estimate().to_bits(),
                sketch.composite_estimate().to_bits(),
                "seed {seed}"
            );
            let mut reversed = Merge::new(&series);
            for tile in tiles.iter().rev() {
                reversed.add(&series, tile);
            }
            assert_eq!(reversed.value(FeatureType::Int64), expected, "seed {seed}");
        }
    }
}
