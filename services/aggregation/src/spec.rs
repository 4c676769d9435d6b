//! What an aggregation view computes: its [`Series`] (an operation over an event field, kept in
//! tiles of one size) and its [`Aggregate`]s (a series read over a window, one feature each).

use std::{fmt, time::Duration};

use fetcher_api::FeatureType;

/// Milliseconds since the Unix epoch: event times, tile starts and read times.
pub type Millis = i64;

/// An aggregation operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// The number of events (no field).
    Count,
    /// The sum of a numeric field: int64 for an int64 field, double for a double one.
    Sum,
    /// The mean of a numeric field, as a double; null over no events.
    Mean,
    /// The least value of the field; null over no events.
    Min,
    /// The greatest value of the field; null over no events.
    Max,
    /// The value of the field in the event with the latest event time; null over no events.
    Last,
    /// The values of the field in the `n` events with the latest event times, newest first.
    LastN(u16),
    /// The approximate number of distinct values of the field (HyperLogLog).
    ApproxDistinct,
}

impl Op {
    /// Every operation's configuration name, for error messages.
    pub const NAMES: &'static str = "count, sum, mean, min, max, last, last_n, approx_distinct";

    /// Parses a configuration name; `n` is `last_n`'s length.
    pub fn parse(name: &str, n: Option<u16>) -> Result<Op, String> {
        Ok(match name {
            "count" => Op::Count,
            "sum" => Op::Sum,
            "mean" | "avg" => Op::Mean,
            "min" => Op::Min,
            "max" => Op::Max,
            "last" => Op::Last,
            "last_n" => match n {
                Some(n) if (1..=MAX_LAST_N).contains(&n) => Op::LastN(n),
                Some(_) => return Err(format!("`n` must be between 1 and {MAX_LAST_N}")),
                None => return Err("`last_n` needs `n`, the number of values kept".into()),
            },
            "approx_distinct" => Op::ApproxDistinct,
            other => {
                return Err(format!(
                    "unknown aggregation `{other}` (known: {})",
                    Op::NAMES
                ));
            }
        })
    }

    /// Whether the operation reads a field (all but `count`).
    pub fn needs_field(self) -> bool {
        self != Op::Count
    }

    /// The feature type the operation gives over a field of type `field` (`None` for `count`),
    /// or why the field's type does not suit it.
    pub fn output(self, field: Option<FeatureType>) -> Result<FeatureType, String> {
        use FeatureType as T;
        let numeric = |t: T| matches!(t, T::Int64 | T::Double);
        let ordered = |t: T| matches!(t, T::Int64 | T::Double | T::String | T::Timestamp);
        let scalar = |t: T| matches!(t, T::Int64 | T::Double | T::String | T::Bool | T::Timestamp);
        match (self, field) {
            (Op::Count, _) => Ok(T::Int64),
            (_, None) => Err(format!("`{self}` needs a `field`")),
            (Op::Sum, Some(t)) if numeric(t) => Ok(t),
            (Op::Mean, Some(t)) if numeric(t) => Ok(T::Double),
            (Op::Min | Op::Max, Some(t)) if ordered(t) => Ok(t),
            (Op::Last, Some(t)) if scalar(t) => Ok(t),
            (Op::LastN(_), Some(T::Int64)) => Ok(T::Int64List),
            (Op::LastN(_), Some(T::Double)) => Ok(T::DoubleList),
            (Op::LastN(_), Some(T::String)) => Ok(T::StringList),
            (Op::ApproxDistinct, Some(T::Int64 | T::String)) => Ok(T::Int64),
            (op, Some(t)) => Err(format!("`{op}` does not apply to a {} field", t.name())),
        }
    }

    /// The field type a feature of type `output` implies for this operation, when it implies
    /// one (`sum` of an int64 field is int64, `last_n` of strings is a list of strings...).
    pub fn field_type_for(self, output: FeatureType) -> Option<FeatureType> {
        use FeatureType as T;
        match self {
            Op::Count | Op::Mean | Op::ApproxDistinct => None,
            Op::Sum | Op::Min | Op::Max | Op::Last => Some(output),
            Op::LastN(_) => match output {
                T::Int64List => Some(T::Int64),
                T::DoubleList => Some(T::Double),
                T::StringList => Some(T::String),
                _ => None,
            },
        }
    }
}

/// The longest `last_n`.
pub const MAX_LAST_N: u16 = 100;

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Count => "count",
            Op::Sum => "sum",
            Op::Mean => "mean",
            Op::Min => "min",
            Op::Max => "max",
            Op::Last => "last",
            Op::LastN(_) => "last_n",
            Op::ApproxDistinct => "approx_distinct",
        })
    }
}

/// An event field an aggregation reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Field {
    /// Its name in the event.
    pub name: String,
    /// The type its values must have.
    pub ty: FeatureType,
}

/// One partial aggregate kept per tile: an operation over a field, in tiles of one size.
/// Aggregates differing only by their window share a series when their tiles are the same size.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Series {
    /// The operation.
    pub op: Op,
    /// The field it reads (`None` for `count`).
    pub field: Option<Field>,
    /// The size of its tiles.
    pub tile: Millis,
}

/// A feature: a series read over a window ending at the read time.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    /// The feature's name in the view.
    pub feature: String,
    /// Index into [`ViewDef::series`].
    pub series: usize,
    /// The window's length.
    pub window: Millis,
    /// The feature's type.
    pub output: FeatureType,
}

/// An entity key of the view and the event field holding it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyField {
    /// The entity's name.
    pub entity: String,
    /// The event field holding its value.
    pub field: String,
    /// Its type (int64 or string).
    pub ty: FeatureType,
}

/// Everything an aggregation view computes, compiled from its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewDef {
    /// The view's name.
    pub name: String,
    /// Its entity keys, in key order.
    pub keys: Vec<KeyField>,
    /// The event field holding the event time.
    pub time_field: String,
    /// How far behind the newest event time seen on its partition an event may be and still be
    /// applied to its tile.
    pub allowed_lateness: Millis,
    /// The partial aggregates kept per tile.
    pub series: Vec<Series>,
    /// The features, in declaration order.
    pub aggregates: Vec<Aggregate>,
}

/// The tile size for a window, when the configuration does not give one: one minute for
/// windows up to an hour, one hour up to twelve days, one day above.
pub fn default_tile(window: Millis) -> Millis {
    const MINUTE: Millis = 60_000;
    const HOUR: Millis = 60 * MINUTE;
    if window <= HOUR {
        MINUTE
    } else if window <= 12 * 24 * HOUR {
        HOUR
    } else {
        24 * HOUR
    }
}

/// A duration as milliseconds, saturating.
pub fn millis(duration: Duration) -> Millis {
    Millis::try_from(duration.as_millis()).unwrap_or(Millis::MAX)
}

/// The most tiles one window may span (a window of 7 days in tiles of one minute would be
/// 10,080 tiles read per request).
pub const MAX_TILES_PER_WINDOW: Millis = 1_000;

impl ViewDef {
    /// Adds an aggregate, sharing a series with an earlier one of the same operation, field and
    /// tile size. `tile` defaults to [`default_tile`]. Returns why it cannot be added.
    pub fn add(
        &mut self,
        feature: &str,
        op: Op,
        field: Option<Field>,
        window: Millis,
        tile: Option<Millis>,
    ) -> Result<(), String> {
        if window < 1_000 {
            return Err("`window` must be at least 1s".into());
        }
        let tile = tile.unwrap_or_else(|| default_tile(window));
        if tile < 1_000 || tile % 1_000 != 0 {
            return Err("`tile` must be a whole number of seconds, at least 1s".into());
        }
        if window % tile != 0 {
            return Err(format!(
                "the window ({}) is not a whole number of tiles ({})",
                humantime::Duration::from(Duration::from_millis(window as u64)),
                humantime::Duration::from(Duration::from_millis(tile as u64))
            ));
        }
        if window / tile > MAX_TILES_PER_WINDOW {
            return Err(format!(
                "the window spans {} tiles, more than {MAX_TILES_PER_WINDOW}: give it a larger `tile`",
                window / tile
            ));
        }
        let output = op.output(field.as_ref().map(|f| f.ty))?;
        let series = Series { op, field, tile };
        let index = match self.series.iter().position(|s| *s == series) {
            Some(index) => index,
            None => {
                self.series.push(series);
                self.series.len() - 1
            }
        };
        self.aggregates.push(Aggregate {
            feature: feature.to_owned(),
            series: index,
            window,
            output,
        });
        Ok(())
    }

    /// The distinct tile sizes, in the order of their first series (no allocation: an event's
    /// application walks them).
    pub fn each_tile_size(&self) -> impl Iterator<Item = Millis> + '_ {
        self.series
            .iter()
            .enumerate()
            .filter(|(i, s)| self.series[..*i].iter().all(|t| t.tile != s.tile))
            .map(|(_, s)| s.tile)
    }

    /// The distinct tile sizes, ascending.
    pub fn tile_sizes(&self) -> Vec<Millis> {
        let mut sizes: Vec<Millis> = self.series.iter().map(|s| s.tile).collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    /// The series kept in tiles of `size`, in series order.
    pub fn series_of(&self, size: Millis) -> impl Iterator<Item = (usize, &Series)> {
        self.series
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.tile == size)
    }

    /// The place of series `series` among the series of its tile size (in a tile's partials).
    pub fn place(&self, series: usize) -> usize {
        self.series_of(self.series[series].tile)
            .position(|(i, _)| i == series)
            .unwrap_or(0)
    }

    /// How long a tile of `size` is kept after its start: its longest window, one more tile (the
    /// window's oldest tile is the one holding its start) and the allowed lateness.
    pub fn retention(&self, size: Millis) -> Millis {
        let longest = self
            .aggregates
            .iter()
            .filter(|a| self.series[a.series].tile == size)
            .map(|a| a.window)
            .max()
            .unwrap_or(0);
        longest + size + self.allowed_lateness
    }

    /// A fingerprint of the tiles' layout (the series, in order): tiles written under another
    /// layout are not read, so changing an aggregation starts its tiles afresh.
    pub fn layout_hash(&self) -> String {
        let mut text = String::new();
        for s in &self.series {
            let field = s
                .field
                .as_ref()
                .map_or(String::new(), |f| format!("{}:{}", f.name, f.ty.name()));
            let op = match s.op {
                Op::LastN(n) => format!("last_n({n})"),
                op => op.to_string(),
            };
            text.push_str(&format!("{op}|{field}|{}\n", s.tile));
        }
        // FNV-1a, 64 bits: stable across builds and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", hash >> 32)
    }
}

/// The start of the tile of `size` holding `time`.
pub fn tile_start(time: Millis, size: Millis) -> Millis {
    time.div_euclid(size) * size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ViewDef {
        ViewDef {
            name: "card".into(),
            keys: vec![KeyField {
                entity: "card_id".into(),
                field: "card_id".into(),
                ty: FeatureType::String,
            }],
            time_field: "ts".into(),
            allowed_lateness: 60_000,
            series: Vec::new(),
            aggregates: Vec::new(),
        }
    }

    #[test]
    fn windows_share_series_of_the_same_tiles() {
        let mut v = view();
        let amount = Some(Field {
            name: "amount".into(),
            ty: FeatureType::Double,
        });
        v.add("n_10m", Op::Count, None, 600_000, None).expect("ok");
        v.add("n_1h", Op::Count, None, 3_600_000, None).expect("ok");
        v.add("n_24h", Op::Count, None, 86_400_000, None)
            .expect("ok");
        v.add("sum_1h", Op::Sum, amount.clone(), 3_600_000, None)
            .expect("ok");
        assert_eq!(v.series.len(), 3);
        assert_eq!(v.aggregates[0].series, v.aggregates[1].series);
        assert_eq!(v.aggregates[3].output, FeatureType::Double);
        assert_eq!(v.tile_sizes(), [60_000, 3_600_000]);
        assert_eq!(v.each_tile_size().collect::<Vec<_>>(), [60_000, 3_600_000]);
        assert_eq!(v.retention(60_000), 3_600_000 + 60_000 + 60_000);
        let before = v.layout_hash();
        v.add("max_1h", Op::Max, amount, 3_600_000, None)
            .expect("ok");
        assert_ne!(v.layout_hash(), before);
    }

    #[test]
    fn bad_aggregates_say_why() {
        let mut v = view();
        let text = Some(Field {
            name: "merchant".into(),
            ty: FeatureType::String,
        });
        assert_eq!(
            v.add("x", Op::Sum, text.clone(), 600_000, None),
            Err("`sum` does not apply to a string field".into())
        );
        assert_eq!(
            v.add("x", Op::Mean, None, 600_000, None),
            Err("`mean` needs a `field`".into())
        );
        assert_eq!(
            v.add("x", Op::Count, None, 90_000, None),
            Err("the window (1m 30s) is not a whole number of tiles (1m)".into())
        );
        assert!(
            v.add("x", Op::Count, None, 7 * 86_400_000, Some(60_000))
                .unwrap_err()
                .contains("10080 tiles")
        );
        assert_eq!(
            Op::parse("last_n", None).unwrap_err(),
            "`last_n` needs `n`, the number of values kept"
        );
        assert!(
            Op::parse("median", None)
                .unwrap_err()
                .starts_with("unknown aggregation `median`")
        );
        assert_eq!(tile_start(-1, 60_000), -60_000);
        assert_eq!(tile_start(119_999, 60_000), 60_000);
    }
}
