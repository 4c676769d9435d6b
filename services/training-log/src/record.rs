//! One logged vector. The same type travels through the queue, is appended to the spool as a
//! JSON line, and is turned into Parquet rows, so a spooled record is replayed bit for bit:
//! doubles are kept as their IEEE bits, timestamps as nanoseconds since the epoch.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fetcher_api::Value;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One served vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The request's id (`<request_id>/<row>` for batch rows).
    pub request_id: String,
    /// When the vector was assembled, in microseconds since the epoch.
    pub served_at_us: i64,
    /// The request's latency until then, in microseconds.
    pub latency_us: i64,
    /// One per entity of the schema.
    pub entities: Vec<Cell>,
    /// One per context value of the schema (`Null` when absent).
    pub context: Vec<Cell>,
    /// One per feature of the schema.
    pub features: Vec<FeatureEntry>,
    /// One per input of the schema (derived features' inputs logged beside the features).
    /// Absent from the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<FeatureEntry>,
}

/// One feature of a vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureEntry {
    /// The value served.
    pub value: Cell,
    /// Why it is this value.
    pub status: LoggedStatus,
    /// Its age by the source's event time, when known.
    pub age_ms: Option<i64>,
}

/// A feature's status, as the wire names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoggedStatus {
    Present,
    NotFound,
    NullValue,
    OutsideMaxAge,
    TimedOut,
    SourceError,
    Stale,
}

impl LoggedStatus {
    /// The name in the status columns (the wire's enum name without its prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            LoggedStatus::Present => "PRESENT",
            LoggedStatus::NotFound => "NOT_FOUND",
            LoggedStatus::NullValue => "NULL_VALUE",
            LoggedStatus::OutsideMaxAge => "OUTSIDE_MAX_AGE",
            LoggedStatus::TimedOut => "TIMED_OUT",
            LoggedStatus::SourceError => "SOURCE_ERROR",
            LoggedStatus::Stale => "STALE",
        }
    }
}

/// A value, in a form that survives JSON exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    #[serde(rename = "n")]
    Null,
    #[serde(rename = "i")]
    Int64(i64),
    /// IEEE-754 bits: JSON's decimal form would not give back every double exactly.
    #[serde(rename = "d")]
    Double(u64),
    #[serde(rename = "s")]
    String(String),
    #[serde(rename = "b")]
    Bool(bool),
    #[serde(rename = "x")]
    Bytes(Vec<u8>),
    /// Nanoseconds since the epoch.
    #[serde(rename = "t")]
    Timestamp(i64),
    #[serde(rename = "il")]
    Int64List(Vec<i64>),
    #[serde(rename = "dl")]
    DoubleList(Vec<u64>),
    #[serde(rename = "sl")]
    StringList(Vec<String>),
}

impl From<Value> for Cell {
    fn from(value: Value) -> Cell {
        match value {
            Value::Null => Cell::Null,
            Value::Int64(v) => Cell::Int64(v),
            Value::Double(v) => Cell::Double(v.to_bits()),
            Value::String(v) => Cell::String(v),
            Value::Bool(v) => Cell::Bool(v),
            Value::Bytes(v) => Cell::Bytes(v),
            Value::Timestamp(t) => Cell::Timestamp(nanos_since_epoch(t)),
            Value::Int64List(v) => Cell::Int64List(v),
            Value::DoubleList(v) => Cell::DoubleList(v.into_iter().map(f64::to_bits).collect()),
            Value::StringList(v) => Cell::StringList(v),
        }
    }
}

impl From<Cell> for Value {
    fn from(cell: Cell) -> Value {
        match cell {
            Cell::Null => Value::Null,
            Cell::Int64(v) => Value::Int64(v),
            Cell::Double(v) => Value::Double(f64::from_bits(v)),
            Cell::String(v) => Value::String(v),
            Cell::Bool(v) => Value::Bool(v),
            Cell::Bytes(v) => Value::Bytes(v),
            Cell::Timestamp(n) => Value::Timestamp(from_nanos(n)),
            Cell::Int64List(v) => Value::Int64List(v),
            Cell::DoubleList(v) => Value::DoubleList(v.into_iter().map(f64::from_bits).collect()),
            Cell::StringList(v) => Value::StringList(v),
        }
    }
}

impl Cell {
    /// An estimate of the bytes the cell takes in a file before compression, for rotation.
    pub fn size(&self) -> usize {
        match self {
            Cell::Null => 1,
            Cell::Int64(_) | Cell::Double(_) | Cell::Timestamp(_) => 8,
            Cell::Bool(_) => 1,
            Cell::String(s) => s.len() + 4,
            Cell::Bytes(b) => b.len() + 4,
            Cell::Int64List(v) => v.len() * 8 + 4,
            Cell::DoubleList(v) => v.len() * 8 + 4,
            Cell::StringList(v) => v.iter().map(|s| s.len() + 4).sum::<usize>() + 4,
        }
    }

    /// The hex SHA-256 of `salt` and a canonical encoding of the cell; `Null` stays null so a
    /// missing value is still visible as missing.
    pub fn hashed(&self, salt: &[u8]) -> Cell {
        if *self == Cell::Null {
            return Cell::Null;
        }
        let mut hasher = Sha256::new();
        hasher.update((salt.len() as u64).to_le_bytes());
        hasher.update(salt);
        // The JSON form is tagged by type, so 1 and "1" hash differently.
        hasher.update(serde_json::to_vec(self).unwrap_or_default());
        Cell::String(hex::encode(hasher.finalize()))
    }
}

impl Record {
    /// An estimate of the record's bytes in a file before compression.
    pub fn size(&self) -> usize {
        self.request_id.len()
            + 40
            + self.entities.iter().map(Cell::size).sum::<usize>()
            + self.context.iter().map(Cell::size).sum::<usize>()
            + self
                .features
                .iter()
                .chain(&self.inputs)
                .map(|f| f.value.size() + 12)
                .sum::<usize>()
    }
}

/// Nanoseconds since the epoch (negative before it).
pub fn nanos_since_epoch(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// The time `n` nanoseconds after the epoch.
pub fn from_nanos(n: i64) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
    }
}

/// The day (UTC) of `us` microseconds since the epoch, as days since 1970-01-01.
pub fn utc_day(us: i64) -> i64 {
    us.div_euclid(86_400_000_000)
}

/// The UTC date (`YYYY-MM-DD`) of `us` microseconds since the epoch.
pub fn utc_date(us: i64) -> String {
    let (y, m, d) = civil_from_days(utc_day(us));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_survive_json_exactly() {
        let values = [
            Value::Double(0.1 + 0.2),
            Value::Double(f64::MIN_POSITIVE / 3.0),
            Value::Double(-0.0),
            Value::Timestamp(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789)),
            Value::Timestamp(UNIX_EPOCH - Duration::from_nanos(5)),
            Value::DoubleList(vec![1e-310, 3.5]),
            Value::Bytes(vec![0, 255, 7]),
            Value::StringList(vec!["a".into(), "".into()]),
        ];
        for v in values {
            let cell = Cell::from(v.clone());
            let back: Cell = serde_json::from_str(&serde_json::to_string(&cell).unwrap()).unwrap();
            let back = Value::from(back);
            match (&v, &back) {
                (Value::Double(a), Value::Double(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(v, back),
            }
        }
    }

    #[test]
    fn hashing_is_salted_typed_and_keeps_nulls() {
        let a = Cell::String("1".into());
        assert_eq!(a.hashed(b"s1"), a.hashed(b"s1"));
        assert_ne!(a.hashed(b"s1"), a.hashed(b"s2"));
        assert_ne!(a.hashed(b"s1"), Cell::Int64(1).hashed(b"s1"));
        assert_eq!(Cell::Null.hashed(b"s1"), Cell::Null);
        let Cell::String(h) = a.hashed(b"s1") else {
            panic!("a hash is a string")
        };
        assert_eq!(h.len(), 64);
    }

    #[test]
    fn dates_are_utc_calendar_days() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
        // 2024-02-29T23:59:59.999999Z
        assert_eq!(utc_date(1_709_251_199_999_999), "2024-02-29");
        assert_eq!(utc_date(1_709_251_200_000_000), "2024-03-01");
    }
}
