//! The gateway's read of an entity: the values of some aggregates at a read time from the
//! entity's stored fields ([`read_fields`]), decoding only what those aggregates cover: tiles
//! outside every window are skipped on their field name, before their bytes are looked at, and
//! of the tiles read only the wanted series are built. The tiles are merged as
//! [`EntityState::value`](crate::EntityState::value) merges them ([`crate::window`]).

use fetcher_api::Value;

use crate::{
    codec::{DecodeError, TileReader},
    partial::{Kind, Partial},
    spec::{Millis, Series, ViewDef},
    state::{TileId, parse_tile_field},
    window::{Merge, covered},
};

/// One wanted aggregate of a [`read_fields`].
struct Wanted {
    /// Its series' tile size.
    size: Millis,
    /// The tiles it covers.
    first: Millis,
    last: Millis,
    /// Its series' place among the series of that size.
    position: usize,
    merge: Merge,
}

/// The values of the aggregates `wanted` (indexes into `def.aggregates`) read at `at` from an
/// entity's stored fields (a hash's fields and values; none for an entity not stored): what
/// [`EntityState::from_fields`](crate::EntityState::from_fields) and
/// [`EntityState::value`](crate::EntityState::value) give, decoding only the tiles the windows
/// cover and of those only the wanted series. A tile field that is not `t:SIZE:START`, or a
/// covered tile that does not decode, is an error; fields that are not tiles are not looked at.
pub fn read_fields<'a>(
    def: &ViewDef,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    wanted: &[usize],
    at: Millis,
) -> Result<Vec<Value>, DecodeError> {
    let mut reads: Vec<Wanted> = wanted
        .iter()
        .map(|&i| {
            let aggregate = &def.aggregates[i];
            let series = &def.series[aggregate.series];
            let (first, last) = covered(def, aggregate, at);
            Wanted {
                size: series.tile,
                first,
                last,
                position: def.place(aggregate.series),
                merge: Merge::new(series),
            }
        })
        .collect();
    // The tiles some window covers, by size then start (the merge order).
    let mut tiles: Vec<(TileId, &[u8])> = Vec::new();
    for (name, bytes) in fields {
        let Some(id) = name.strip_prefix("t:") else {
            continue;
        };
        let (size, start) = parse_tile_field(id)?;
        if reads
            .iter()
            .any(|w| w.size == size && (w.first..=w.last).contains(&start))
        {
            tiles.push(((size, start), bytes));
        }
    }
    tiles.sort_unstable_by_key(|(id, _)| *id);
    // Per tile: its partials of the series of its size, those some window wants decoded.
    let mut partials: Vec<Option<Partial>> = Vec::new();
    let mut series: Vec<&Series> = Vec::new();
    let mut kinds: Vec<(Kind, bool)> = Vec::new();
    let mut size_of_series = None;
    for ((size, start), bytes) in tiles {
        if size_of_series != Some(size) {
            size_of_series = Some(size);
            series = def.series_of(size).map(|(_, s)| s).collect();
            kinds = (0..series.len())
                .map(|p| {
                    let needed = reads.iter().any(|w| w.size == size && w.position == p);
                    (Kind::of(series[p]), needed)
                })
                .collect();
        }
        let mut tile = TileReader::new(bytes)?;
        partials.clear();
        for &(kind, needed) in &kinds {
            partials.push(if needed {
                Some(tile.read(kind)?)
            } else {
                tile.skip(kind)?;
                None
            });
        }
        tile.finish()?;
        for w in &mut reads {
            if w.size == size
                && (w.first..=w.last).contains(&start)
                && let Some(Some(partial)) = partials.get(w.position)
            {
                w.merge.add(series[w.position], partial);
            }
        }
    }
    Ok(wanted
        .iter()
        .zip(&reads)
        .map(|(&i, w)| w.merge.value(def.aggregates[i].output))
        .collect())
}

#[cfg(test)]
mod tests {
    use fetcher_api::{FeatureType, KeyPart};

    use super::*;
    use crate::{
        EntityState, Event,
        partial::Scalar,
        spec::{Field, KeyField, Op},
        state::VERSION_FIELD,
    };

    const MIN: Millis = 60_000;
    const HOUR: Millis = 60 * MIN;

    fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Every operation, over windows of 1-minute, 1-hour and 1-day tiles.
    fn view() -> ViewDef {
        let mut v = ViewDef {
            name: "card".into(),
            keys: vec![KeyField {
                entity: "card_id".into(),
                field: "card_id".into(),
                ty: FeatureType::String,
            }],
            time_field: "ts".into(),
            allowed_lateness: 5 * MIN,
            series: Vec::new(),
            aggregates: Vec::new(),
        };
        let field = |name: &str, ty| {
            Some(Field {
                name: name.into(),
                ty,
            })
        };
        let int = field("n", FeatureType::Int64);
        let double = field("x", FeatureType::Double);
        let text = field("m", FeatureType::String);
        let flag = field("b", FeatureType::Bool);
        for (name, op, field, window) in [
            ("count_10m", Op::Count, None, 10 * MIN),
            ("count_7d", Op::Count, None, 7 * 24 * HOUR),
            ("sum_1h", Op::Sum, int.clone(), HOUR),
            ("sum_24h", Op::Sum, double.clone(), 24 * HOUR),
            ("mean_2h", Op::Mean, double.clone(), 2 * HOUR),
            ("min_24h", Op::Min, text.clone(), 24 * HOUR),
            ("max_7d", Op::Max, double.clone(), 7 * 24 * HOUR),
            ("last_3h", Op::Last, flag, 3 * HOUR),
            ("last3_30m", Op::LastN(3), int, 30 * MIN),
            ("distinct_1h", Op::ApproxDistinct, text.clone(), HOUR),
            ("distinct_24h", Op::ApproxDistinct, text.clone(), 24 * HOUR),
            ("distinct_14d", Op::ApproxDistinct, text, 14 * 24 * HOUR),
        ] {
            v.add(name, op, field, window, None)
                .expect("a valid aggregate");
        }
        v
    }

    fn stored(def: &ViewDef, seed: u64, now: Millis) -> EntityState {
        let mut state = EntityState::new();
        let n = mix(seed) % 400;
        for i in 0..n {
            let x = mix(seed << 16 ^ i);
            // Most events in the last day, some up to 15 days back, a few in the future.
            let back = match x % 5 {
                0 => (x >> 8) as i64 % (15 * 24 * HOUR),
                1 => -((x >> 8) as i64 % (10 * MIN)),
                _ => (x >> 8) as i64 % (24 * HOUR),
            };
            let values = def
                .series
                .iter()
                .map(|s| {
                    let f = s.field.as_ref()?;
                    if x >> 60 == 0 {
                        return None; // a null field
                    }
                    Some(match f.ty {
                        FeatureType::Int64 => Scalar::Int((x >> 20) as i64 % 1000 - 100),
                        FeatureType::Double => Scalar::Double((x >> 20) as f64 / 1e9),
                        FeatureType::Bool => Scalar::Bool(x & 1 == 1),
                        _ => Scalar::Str(format!("m{}", (x >> 24) % 300)),
                    })
                })
                .collect();
            state.apply(
                def,
                &Event {
                    key: vec![KeyPart::String("c".into())],
                    time: now - back,
                    values,
                },
            );
        }
        state.expire(def, now);
        state
    }

    #[test]
    fn stored_fields_read_as_the_state_does() {
        let def = view();
        let now = 1_796_644_800_000 + 1_234;
        for seed in 0..200u64 {
            let state = stored(&def, seed, now);
            let mut fields = state.fields();
            fields.push((VERSION_FIELD.into(), b"3".to_vec()));
            fields.push(("o:2".into(), b"77".to_vec()));
            // A tile of a size the view does not have: not read.
            fields.push(("t:5000:0".into(), b"junk".to_vec()));
            let all: Vec<usize> = (0..def.aggregates.len()).collect();
            let x = mix(seed);
            let subset: Vec<usize> = all.iter().copied().filter(|i| x >> i & 1 == 1).collect();
            for at in [now, now - 7 * MIN, now + 3 * HOUR, now - 30 * 24 * HOUR] {
                for wanted in [&all, &subset] {
                    let read = read_fields(
                        &def,
                        fields.iter().map(|(f, v)| (f.as_str(), v.as_slice())),
                        wanted,
                        at,
                    )
                    .expect("decodes");
                    let expected: Vec<Value> =
                        wanted.iter().map(|&i| state.value(&def, i, at)).collect();
                    assert_eq!(read, expected, "seed {seed} at {at}");
                }
            }
        }
    }

    #[test]
    fn only_covered_tiles_are_decoded() {
        let def = view();
        let now = 1_796_644_800_000;
        let state = stored(&def, 7, now);
        let count_10m = [0];
        let read = |fields: &[(String, Vec<u8>)], wanted: &[usize]| {
            read_fields(
                &def,
                fields.iter().map(|(f, v)| (f.as_str(), v.as_slice())),
                wanted,
                now,
            )
        };
        let mut fields = state.fields();
        // A damaged tile an hour back: outside the 10-minute window, inside the hour's.
        let back = crate::spec::tile_start(now - HOUR, MIN);
        fields.push((format!("t:{MIN}:{back}"), vec![1, 0xff]));
        assert_eq!(
            read(&fields, &count_10m),
            Ok(vec![state.value(&def, 0, now)])
        );
        assert_eq!(read(&fields, &[2]), Err(DecodeError("truncated")));
        fields.pop();
        fields.push(("t:bad".into(), Vec::new()));
        assert_eq!(
            read(&fields, &count_10m),
            Err(DecodeError("a tile field that is not `t:SIZE:START`"))
        );
    }
}
