//! Partial aggregates: what one tile keeps per series, how an event updates it, how tiles
//! merge and what a merged partial reads as.
//!
//! Every partial is **independent of the order of its events**: counts and integer sums are
//! exact; sums and means of doubles add each value rounded to a multiple of 2^-40 in a 128-bit
//! integer (exact, so associative), converted to a double once when read; `min`, `max`, `last`
//! and `last_n` break ties on event time by the value itself; distinct counts keep a
//! HyperLogLog whose estimate depends only on its registers. So a tile holds the same state
//! whatever order its events arrived in, and a backfill computes bit for bit what ingest served.

use std::{cmp::Ordering, time::SystemTime};

use datasketches::hll::{HllSketch, HllType, HllUnion};
use fetcher_api::{FeatureType, Value};

use crate::spec::{Millis, Op, Series};

/// Bits of fraction of the fixed-point sums of doubles.
pub const FIXED_FRACTION_BITS: i32 = 40;
/// The largest magnitude of a double a `sum` or `mean` accepts (2^86): beyond it an event is
/// refused as out of range, so no sum of events can overflow the 128-bit accumulator.
pub const MAX_SUMMED_DOUBLE: f64 = 77_371_252_455_336_267_181_195_264.0;
/// The HyperLogLog's log2 of its register count (1,024 registers: about 3.25% relative error).
pub const HLL_LG_K: u8 = 10;

/// A field's value in an event, of one of the types aggregations read.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Int(i64),
    Double(f64),
    Str(String),
    Bool(bool),
    /// Milliseconds since the Unix epoch.
    Time(Millis),
}

impl Scalar {
    /// A total order within one type (doubles by IEEE total order); values of different types
    /// (which one series never mixes) by type.
    pub fn total_cmp(&self, other: &Scalar) -> Ordering {
        use Scalar::*;
        match (self, other) {
            (Int(a), Int(b)) | (Time(a), Time(b)) => a.cmp(b),
            (Double(a), Double(b)) => a.total_cmp(b),
            (Str(a), Str(b)) => a.cmp(b),
            (Bool(a), Bool(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Scalar::Int(_) => 0,
            Scalar::Double(_) => 1,
            Scalar::Str(_) => 2,
            Scalar::Bool(_) => 3,
            Scalar::Time(_) => 4,
        }
    }

    /// The feature value.
    pub fn to_value(&self) -> Value {
        match self {
            Scalar::Int(i) => Value::Int64(*i),
            Scalar::Double(d) => Value::Double(*d),
            Scalar::Str(s) => Value::String(s.clone()),
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Time(ms) => Value::Timestamp(time_of(*ms)),
        }
    }

    /// The value as a fixed-point number (for sums and means), if numeric.
    fn fixed(&self) -> Option<i128> {
        match self {
            Scalar::Int(i) => Some(i128::from(*i) << FIXED_FRACTION_BITS),
            Scalar::Double(d) => to_fixed(*d),
            _ => None,
        }
    }
}

/// `ms` since the epoch as a time.
pub fn time_of(ms: Millis) -> SystemTime {
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64)
    } else {
        SystemTime::UNIX_EPOCH - std::time::Duration::from_millis(ms.unsigned_abs())
    }
}

/// `d` rounded to a multiple of 2^-40, as an integer count of those; `None` when it is not
/// finite or larger than [`MAX_SUMMED_DOUBLE`].
pub fn to_fixed(d: f64) -> Option<i128> {
    if !d.is_finite() || d.abs() > MAX_SUMMED_DOUBLE {
        return None;
    }
    // Multiplying by a power of two is exact; the rounding is the only loss.
    Some((d * 2f64.powi(FIXED_FRACTION_BITS)).round() as i128)
}

/// A fixed-point sum as a double (one rounding).
pub fn from_fixed(sum: i128) -> f64 {
    sum as f64 / 2f64.powi(FIXED_FRACTION_BITS)
}

/// A value with its event time, ordered by time then value (so ties do not depend on arrival).
#[derive(Clone, Debug, PartialEq)]
pub struct Timed {
    pub time: Millis,
    pub value: Scalar,
}

impl Timed {
    fn newer_than(&self, other: &Timed) -> bool {
        (self.time, &self.value).cmp_with(&(other.time, &other.value)) == Ordering::Greater
    }
}

trait CmpWith {
    fn cmp_with(&self, other: &Self) -> Ordering;
}

impl CmpWith for (Millis, &Scalar) {
    fn cmp_with(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0).then_with(|| self.1.total_cmp(other.1))
    }
}

/// The state one tile keeps for one series.
#[derive(Clone, Debug)]
pub enum Partial {
    Count(i64),
    /// Sum of an int64 field (saturating).
    SumInt(i64),
    /// Sum of a double field, fixed point.
    SumFixed(i128),
    /// Sum (fixed point) and count, for the mean.
    Mean {
        sum: i128,
        count: i64,
    },
    Min(Option<Scalar>),
    Max(Option<Scalar>),
    Last(Option<Timed>),
    /// Newest first, at most `n`.
    LastN(Vec<Timed>),
    Distinct(Box<HllSketch>),
}

impl PartialEq for Partial {
    fn eq(&self, other: &Partial) -> bool {
        use Partial::*;
        match (self, other) {
            (Count(a), Count(b)) | (SumInt(a), SumInt(b)) => a == b,
            (SumFixed(a), SumFixed(b)) => a == b,
            (Mean { sum: a, count: c }, Mean { sum: b, count: d }) => a == b && c == d,
            (Min(a), Min(b)) | (Max(a), Max(b)) => a == b,
            (Last(a), Last(b)) => a == b,
            (LastN(a), LastN(b)) => a == b,
            (Distinct(a), Distinct(b)) => a.serialize() == b.serialize(),
            _ => false,
        }
    }
}

/// Which [`Partial`] a series keeps, known without building one (an empty sketch allocates).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Count,
    SumInt,
    SumFixed,
    Mean,
    Min,
    Max,
    Last,
    LastN,
    Distinct,
}

impl Kind {
    /// The kind of `series`' partials.
    pub fn of(series: &Series) -> Kind {
        let double = series
            .field
            .as_ref()
            .is_some_and(|f| f.ty == FeatureType::Double);
        match series.op {
            Op::Count => Kind::Count,
            Op::Sum if double => Kind::SumFixed,
            Op::Sum => Kind::SumInt,
            Op::Mean => Kind::Mean,
            Op::Min => Kind::Min,
            Op::Max => Kind::Max,
            Op::Last => Kind::Last,
            Op::LastN(_) => Kind::LastN,
            Op::ApproxDistinct => Kind::Distinct,
        }
    }
}

impl Partial {
    /// The state of a tile with no events.
    pub fn empty(series: &Series) -> Partial {
        match Kind::of(series) {
            Kind::Count => Partial::Count(0),
            Kind::SumFixed => Partial::SumFixed(0),
            Kind::SumInt => Partial::SumInt(0),
            Kind::Mean => Partial::Mean { sum: 0, count: 0 },
            Kind::Min => Partial::Min(None),
            Kind::Max => Partial::Max(None),
            Kind::Last => Partial::Last(None),
            Kind::LastN => Partial::LastN(Vec::new()),
            Kind::Distinct => Partial::Distinct(Box::new(new_sketch())),
        }
    }

    /// Adds one event's value (`None` when the series reads no field, or the event's field was
    /// null: a null value counts for `count` only).
    pub fn add(&mut self, series: &Series, time: Millis, value: Option<&Scalar>) {
        match (self, value) {
            (Partial::Count(n), _) => *n += 1,
            (_, None) => {}
            (Partial::SumInt(s), Some(Scalar::Int(v))) => *s = s.saturating_add(*v),
            (Partial::SumFixed(s), Some(v)) => {
                if let Some(f) = v.fixed() {
                    *s += f;
                }
            }
            (Partial::Mean { sum, count }, Some(v)) => {
                if let Some(f) = v.fixed() {
                    *sum += f;
                    *count += 1;
                }
            }
            (Partial::Min(m), Some(v)) => keep(m, v, Ordering::Less),
            (Partial::Max(m), Some(v)) => keep(m, v, Ordering::Greater),
            (Partial::Last(last), Some(v)) => {
                let timed = Timed {
                    time,
                    value: v.clone(),
                };
                if last.as_ref().is_none_or(|l| timed.newer_than(l)) {
                    *last = Some(timed);
                }
            }
            (Partial::LastN(list), Some(v)) => {
                let n = match series.op {
                    Op::LastN(n) => usize::from(n),
                    _ => 1,
                };
                insert_newest(
                    list,
                    Timed {
                        time,
                        value: v.clone(),
                    },
                    n,
                );
            }
            (Partial::Distinct(sketch), Some(v)) => match v {
                Scalar::Int(i) => sketch.update(i),
                Scalar::Str(s) => sketch.update(s.as_str()),
                _ => {}
            },
            _ => {}
        }
    }

    /// Folds `other` (a tile of the same series) into this one.
    pub fn merge(&mut self, series: &Series, other: &Partial) {
        match (self, other) {
            (Partial::Count(a), Partial::Count(b)) => *a += b,
            (Partial::SumInt(a), Partial::SumInt(b)) => *a = a.saturating_add(*b),
            (Partial::SumFixed(a), Partial::SumFixed(b)) => *a += b,
            (
                Partial::Mean { sum, count },
                Partial::Mean {
                    sum: other_sum,
                    count: other_count,
                },
            ) => {
                *sum += other_sum;
                *count += other_count;
            }
            (Partial::Min(a), Partial::Min(Some(b))) => keep(a, b, Ordering::Less),
            (Partial::Max(a), Partial::Max(Some(b))) => keep(a, b, Ordering::Greater),
            (Partial::Last(a), Partial::Last(Some(b))) => keep_newest(a, b),
            (Partial::LastN(a), Partial::LastN(b)) => {
                let n = match series.op {
                    Op::LastN(n) => usize::from(n),
                    _ => 1,
                };
                for timed in b {
                    insert_newest(a, timed.clone(), n);
                }
            }
            (Partial::Distinct(a), Partial::Distinct(b)) => {
                let mut union = HllUnion::new(HLL_LG_K).expect("a valid lg_k");
                union.update(a);
                union.update(b);
                **a = union.to_sketch(HllType::Hll8);
            }
            _ => {}
        }
    }

    /// What the merged partial of a window reads as, of type `output`.
    pub fn value(&self, output: FeatureType) -> Value {
        match self {
            Partial::Count(n) | Partial::SumInt(n) => Value::Int64(*n),
            Partial::SumFixed(s) => Value::Double(from_fixed(*s)),
            Partial::Mean { count: 0, .. } => Value::Null,
            Partial::Mean { sum, count } => Value::Double(from_fixed(*sum) / *count as f64),
            Partial::Min(v) | Partial::Max(v) => v.as_ref().map_or(Value::Null, Scalar::to_value),
            Partial::Last(v) => v.as_ref().map_or(Value::Null, |t| t.value.to_value()),
            Partial::LastN(list) => match output {
                FeatureType::Int64List => Value::Int64List(
                    list.iter()
                        .filter_map(|t| match t.value {
                            Scalar::Int(i) => Some(i),
                            _ => None,
                        })
                        .collect(),
                ),
                FeatureType::DoubleList => Value::DoubleList(
                    list.iter()
                        .filter_map(|t| match t.value {
                            Scalar::Double(d) => Some(d),
                            _ => None,
                        })
                        .collect(),
                ),
                _ => Value::StringList(
                    list.iter()
                        .filter_map(|t| match &t.value {
                            Scalar::Str(s) => Some(s.clone()),
                            _ => None,
                        })
                        .collect(),
                ),
            },
            // The composite estimate depends only on the registers (not on the order of
            // updates, as the HIP estimator does); rounded to the nearest count.
            Partial::Distinct(sketch) => Value::Int64(sketch.composite_estimate().round() as i64),
        }
    }
}

/// Replaces `slot` with `v` when empty or when `v` compares `wanted` to it.
fn keep(slot: &mut Option<Scalar>, v: &Scalar, wanted: Ordering) {
    if slot.as_ref().is_none_or(|held| v.total_cmp(held) == wanted) {
        *slot = Some(v.clone());
    }
}

/// Replaces `slot` with `t` when empty or when `t` is newer.
fn keep_newest(slot: &mut Option<Timed>, t: &Timed) {
    if slot.as_ref().is_none_or(|held| t.newer_than(held)) {
        *slot = Some(t.clone());
    }
}

/// An empty distinct-count sketch.
pub fn new_sketch() -> HllSketch {
    HllSketch::new(HLL_LG_K, HllType::Hll8).expect("a valid lg_k")
}

/// Inserts `timed` into `list` (newest first, ties by value), keeping at most `n`.
fn insert_newest(list: &mut Vec<Timed>, timed: Timed, n: usize) {
    let at = list
        .iter()
        .position(|t| timed.newer_than(t))
        .unwrap_or(list.len());
    if at < n {
        list.insert(at, timed);
        list.truncate(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Field;

    fn series(op: Op, ty: FeatureType) -> Series {
        Series {
            op,
            field: Some(Field {
                name: "x".into(),
                ty,
            }),
            tile: 60_000,
        }
    }

    fn fold(series: &Series, events: &[(Millis, Scalar)]) -> Partial {
        let mut p = Partial::empty(series);
        for (t, v) in events {
            p.add(series, *t, Some(v));
        }
        p
    }

    #[test]
    fn every_partial_ignores_arrival_order() {
        let doubles: Vec<(Millis, Scalar)> = (0..200)
            .map(|i| {
                (
                    1_000 + (i * 7919) % 50,
                    Scalar::Double(0.1 * i as f64 + 1e-3),
                )
            })
            .collect();
        let mut reversed = doubles.clone();
        reversed.reverse();
        for op in [Op::Sum, Op::Mean, Op::Min, Op::Max, Op::Last, Op::LastN(5)] {
            let s = series(op, FeatureType::Double);
            assert_eq!(fold(&s, &doubles), fold(&s, &reversed), "{op}");
        }
        let strings: Vec<(Millis, Scalar)> = (0..3000)
            .map(|i| (i, Scalar::Str(format!("m{}", i % 700))))
            .collect();
        let mut shuffled = strings.clone();
        shuffled.reverse();
        let s = series(Op::ApproxDistinct, FeatureType::String);
        let (a, b) = (fold(&s, &strings), fold(&s, &shuffled));
        assert_eq!(a.value(FeatureType::Int64), b.value(FeatureType::Int64));
        let Value::Int64(estimate) = a.value(FeatureType::Int64) else {
            panic!("an int64")
        };
        assert!((estimate - 700).abs() < 70, "{estimate}");
    }

    #[test]
    fn merged_tiles_equal_one_tile_of_all_events() {
        let s = series(Op::Mean, FeatureType::Double);
        let events: Vec<(Millis, Scalar)> = (0..100)
            .map(|i| (i, Scalar::Double(i as f64 / 3.0)))
            .collect();
        let whole = fold(&s, &events);
        let mut merged = fold(&s, &events[..37]);
        merged.merge(&s, &fold(&s, &events[37..]));
        assert_eq!(whole, merged);
        let Value::Double(mean) = merged.value(FeatureType::Double) else {
            panic!("a double")
        };
        assert!((mean - 16.5).abs() < 1e-9, "{mean}");
        assert_eq!(Partial::empty(&s).value(FeatureType::Double), Value::Null);
    }

    #[test]
    fn last_n_keeps_the_newest_ties_by_value() {
        let s = series(Op::LastN(3), FeatureType::String);
        let events = [
            (5, Scalar::Str("b".into())),
            (9, Scalar::Str("a".into())),
            (9, Scalar::Str("c".into())),
            (1, Scalar::Str("z".into())),
            (7, Scalar::Str("d".into())),
        ];
        assert_eq!(
            fold(&s, &events).value(FeatureType::StringList),
            Value::StringList(vec!["c".into(), "a".into(), "d".into()])
        );
        let last = series(Op::Last, FeatureType::String);
        assert_eq!(
            fold(&last, &events).value(FeatureType::String),
            Value::String("c".into())
        );
    }

    #[test]
    fn sums_of_doubles_are_fixed_point() {
        assert_eq!(to_fixed(1.0), Some(1 << 40));
        assert_eq!(to_fixed(f64::NAN), None);
        assert_eq!(to_fixed(1e30), None);
        assert_eq!(from_fixed(to_fixed(-2.5).expect("in range")), -2.5);
        let s = series(Op::Sum, FeatureType::Double);
        let p = fold(&s, &[(0, Scalar::Double(0.1)), (0, Scalar::Double(0.2))]);
        let Value::Double(sum) = p.value(FeatureType::Double) else {
            panic!("a double")
        };
        assert!((sum - 0.3).abs() < 1e-12);
    }
}
