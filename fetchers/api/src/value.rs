//! The typed value model.
//!
//! [`Value`] is what a feature holds; [`FeatureType`] is what a view declares for it, and every
//! value a fetcher returns is checked against the declaration. [`KeyPart`] is the hashable subset
//! used for entity keys (int64 and string), so keys can be de-duplicated and used in maps.

use std::{fmt, str::FromStr, time::SystemTime};

/// A typed feature value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    Int64(i64),
    Double(f64),
    String(String),
    Bool(bool),
    Bytes(Vec<u8>),
    Timestamp(SystemTime),
    Int64List(Vec<i64>),
    DoubleList(Vec<f64>),
    StringList(Vec<String>),
}

/// The declared type of a feature, an entity key or a context value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FeatureType {
    Int64,
    Double,
    String,
    Bool,
    Bytes,
    Timestamp,
    Int64List,
    DoubleList,
    StringList,
}

impl FeatureType {
    /// Every type, in the order of their configuration names.
    pub const ALL: [FeatureType; 9] = [
        FeatureType::Int64,
        FeatureType::Double,
        FeatureType::String,
        FeatureType::Bool,
        FeatureType::Bytes,
        FeatureType::Timestamp,
        FeatureType::Int64List,
        FeatureType::DoubleList,
        FeatureType::StringList,
    ];

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            FeatureType::Int64 => "int64",
            FeatureType::Double => "double",
            FeatureType::String => "string",
            FeatureType::Bool => "bool",
            FeatureType::Bytes => "bytes",
            FeatureType::Timestamp => "timestamp",
            FeatureType::Int64List => "list<int64>",
            FeatureType::DoubleList => "list<double>",
            FeatureType::StringList => "list<string>",
        }
    }

    /// Whether values of this type can be entity keys.
    pub fn is_key_type(self) -> bool {
        matches!(self, FeatureType::Int64 | FeatureType::String)
    }

    /// Checks `value` against this type. Null is accepted by every type; an int64 is widened
    /// to a double where a double is declared (JSON and CSV producers rarely tell them apart).
    pub fn conform(self, value: Value) -> Result<Value, String> {
        match (self, value) {
            (_, Value::Null) => Ok(Value::Null),
            (FeatureType::Double, Value::Int64(i)) => Ok(Value::Double(i as f64)),
            (FeatureType::DoubleList, Value::Int64List(l)) => {
                Ok(Value::DoubleList(l.into_iter().map(|i| i as f64).collect()))
            }
            (ty, value) if value.feature_type() == Some(ty) => Ok(value),
            (ty, value) => Err(format!("expected {}, got {}", ty.name(), value.type_name())),
        }
    }

    /// Parses the text form of a value of this type, as found in CSV files, Redis hash fields and
    /// HTTP query strings. Lists are JSON arrays; timestamps are RFC 3339 or Unix seconds; the
    /// empty string is null for every type but string.
    pub fn parse_text(self, text: &str) -> Result<Value, String> {
        let bad = |what: &str| format!("`{}` is not {what}", truncate(text, 64));
        if text.is_empty() && self != FeatureType::String {
            return Ok(Value::Null);
        }
        match self {
            FeatureType::Int64 => text
                .trim()
                .parse()
                .map(Value::Int64)
                .map_err(|_| bad("an int64")),
            FeatureType::Double => text
                .trim()
                .parse()
                .map(Value::Double)
                .map_err(|_| bad("a double")),
            FeatureType::String => Ok(Value::String(text.to_owned())),
            FeatureType::Bool => match text.trim() {
                "true" | "1" | "t" | "TRUE" | "True" => Ok(Value::Bool(true)),
                "false" | "0" | "f" | "FALSE" | "False" => Ok(Value::Bool(false)),
                _ => Err(bad("a bool")),
            },
            FeatureType::Bytes => Ok(Value::Bytes(text.as_bytes().to_vec())),
            FeatureType::Timestamp => parse_timestamp(text.trim())
                .ok_or_else(|| bad("a timestamp (RFC 3339, or Unix seconds)")),
            FeatureType::Int64List | FeatureType::DoubleList | FeatureType::StringList => {
                let json: serde_json::Value =
                    serde_json::from_str(text).map_err(|_| bad("a JSON array"))?;
                self.from_json(&json)
            }
        }
    }

    /// Converts a JSON value to a value of this type. Timestamps may be RFC 3339 strings or
    /// Unix seconds; JSON null is null.
    pub fn from_json(self, json: &serde_json::Value) -> Result<Value, String> {
        use serde_json::Value as J;
        let bad = || {
            format!(
                "expected {}, got JSON {}",
                self.name(),
                truncate(&json.to_string(), 64)
            )
        };
        match (self, json) {
            (_, J::Null) => Ok(Value::Null),
            (FeatureType::Int64, J::Number(n)) => n.as_i64().map(Value::Int64).ok_or_else(bad),
            (FeatureType::Double, J::Number(n)) => n.as_f64().map(Value::Double).ok_or_else(bad),
            (FeatureType::String, J::String(s)) => Ok(Value::String(s.clone())),
            (FeatureType::Bool, J::Bool(b)) => Ok(Value::Bool(*b)),
            (FeatureType::Bytes, J::String(s)) => Ok(Value::Bytes(s.as_bytes().to_vec())),
            (FeatureType::Timestamp, J::String(s)) => parse_timestamp(s).ok_or_else(bad),
            (FeatureType::Timestamp, J::Number(n)) => n
                .as_f64()
                .and_then(timestamp_from_unix_seconds)
                .ok_or_else(bad),
            (FeatureType::Int64List, J::Array(items)) => items
                .iter()
                .map(|i| i.as_i64().ok_or_else(bad))
                .collect::<Result<_, _>>()
                .map(Value::Int64List),
            (FeatureType::DoubleList, J::Array(items)) => items
                .iter()
                .map(|i| i.as_f64().ok_or_else(bad))
                .collect::<Result<_, _>>()
                .map(Value::DoubleList),
            (FeatureType::StringList, J::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<Result<_, _>>()
                .map(Value::StringList),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for FeatureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FeatureType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normalized: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        FeatureType::ALL
            .into_iter()
            .find(|t| t.name() == normalized)
            .ok_or_else(|| {
                let known: Vec<_> = FeatureType::ALL.iter().map(|t| t.name()).collect();
                format!("unknown type `{s}` (known: {})", known.join(", "))
            })
    }
}

impl Value {
    /// The type of this value; `None` for null, which every type accepts.
    pub fn feature_type(&self) -> Option<FeatureType> {
        Some(match self {
            Value::Null => return None,
            Value::Int64(_) => FeatureType::Int64,
            Value::Double(_) => FeatureType::Double,
            Value::String(_) => FeatureType::String,
            Value::Bool(_) => FeatureType::Bool,
            Value::Bytes(_) => FeatureType::Bytes,
            Value::Timestamp(_) => FeatureType::Timestamp,
            Value::Int64List(_) => FeatureType::Int64List,
            Value::DoubleList(_) => FeatureType::DoubleList,
            Value::StringList(_) => FeatureType::StringList,
        })
    }

    /// The name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        self.feature_type().map_or("null", FeatureType::name)
    }

    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// This value as an entity key part, if it is an int64 or a string.
    pub fn to_key_part(&self) -> Option<KeyPart> {
        match self {
            Value::Int64(i) => Some(KeyPart::Int64(*i)),
            Value::String(s) => Some(KeyPart::String(s.clone())),
            _ => None,
        }
    }
}

/// One part of an entity key: keys are int64s or strings, so they can be hashed and compared.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyPart {
    Int64(i64),
    String(String),
}

impl KeyPart {
    /// Parses the text form of a key of type `ty` (int64 or string).
    pub fn parse(ty: FeatureType, text: &str) -> Result<KeyPart, String> {
        match ty {
            FeatureType::Int64 => text
                .trim()
                .parse()
                .map(KeyPart::Int64)
                .map_err(|_| format!("`{}` is not an int64", truncate(text, 64))),
            FeatureType::String => Ok(KeyPart::String(text.to_owned())),
            other => Err(format!("{other} cannot be an entity key type")),
        }
    }
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Int64(i) => write!(f, "{i}"),
            KeyPart::String(s) => f.write_str(s),
        }
    }
}

impl From<KeyPart> for Value {
    fn from(k: KeyPart) -> Self {
        match k {
            KeyPart::Int64(i) => Value::Int64(i),
            KeyPart::String(s) => Value::String(s),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.250+02:00`) or a
/// number of Unix seconds.
pub fn parse_timestamp(text: &str) -> Option<Value> {
    if let Ok(secs) = text.parse::<f64>() {
        return timestamp_from_unix_seconds(secs);
    }
    let toml_dt: toml::value::Datetime = text.parse().ok()?;
    let (date, time, offset) = (toml_dt.date?, toml_dt.time?, toml_dt.offset?);
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_minutes * 60;
    let nanos = u64::from(time.nanosecond.unwrap_or(0));
    let base = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs as u64))?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(std::time::Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(std::time::Duration::from_nanos(nanos))
        .map(Value::Timestamp)
}

fn timestamp_from_unix_seconds(secs: f64) -> Option<Value> {
    if !secs.is_finite() || secs.abs() > 1e12 {
        return None;
    }
    let d = std::time::Duration::from_secs_f64(secs.abs());
    let t = if secs >= 0.0 {
        SystemTime::UNIX_EPOCH.checked_add(d)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(d)?
    };
    Some(Value::Timestamp(t))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn type_names_round_trip() {
        for ty in FeatureType::ALL {
            assert_eq!(ty.name().parse::<FeatureType>(), Ok(ty));
        }
        assert_eq!("list< double >".parse(), Ok(FeatureType::DoubleList));
        let err = "float".parse::<FeatureType>().unwrap_err();
        assert!(
            err.contains("unknown type `float`") && err.contains("double"),
            "{err}"
        );
    }

    #[test]
    fn conform_widens_ints_and_rejects_mismatches() {
        assert_eq!(
            FeatureType::Double.conform(Value::Int64(3)),
            Ok(Value::Double(3.0))
        );
        assert_eq!(FeatureType::Bool.conform(Value::Null), Ok(Value::Null));
        assert_eq!(
            FeatureType::Int64.conform(Value::String("x".into())),
            Err("expected int64, got string".into())
        );
    }

    #[test]
    fn parse_text_per_type() {
        assert_eq!(FeatureType::Int64.parse_text(" 42"), Ok(Value::Int64(42)));
        assert_eq!(
            FeatureType::Double.parse_text("0.25"),
            Ok(Value::Double(0.25))
        );
        assert_eq!(FeatureType::Bool.parse_text("1"), Ok(Value::Bool(true)));
        assert_eq!(FeatureType::Int64.parse_text(""), Ok(Value::Null));
        assert_eq!(
            FeatureType::String.parse_text(""),
            Ok(Value::String(String::new()))
        );
        assert_eq!(
            FeatureType::DoubleList.parse_text("[1, 2.5]"),
            Ok(Value::DoubleList(vec![1.0, 2.5]))
        );
        assert!(
            FeatureType::Int64
                .parse_text("12abc")
                .unwrap_err()
                .contains("12abc")
        );
    }

    #[test]
    fn timestamps_parse_rfc3339_and_unix_seconds() {
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        assert_eq!(
            parse_timestamp("2024-05-01T12:00:00Z"),
            Some(Value::Timestamp(expected))
        );
        assert_eq!(
            parse_timestamp("2024-05-01T14:00:00+02:00"),
            Some(Value::Timestamp(expected))
        );
        assert_eq!(
            parse_timestamp("1714564800"),
            Some(Value::Timestamp(expected))
        );
        assert_eq!(
            parse_timestamp("2024-05-01T12:00:00.5Z"),
            Some(Value::Timestamp(expected + Duration::from_millis(500)))
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn key_parts() {
        assert_eq!(
            KeyPart::parse(FeatureType::Int64, "7"),
            Ok(KeyPart::Int64(7))
        );
        assert!(KeyPart::parse(FeatureType::Double, "7").is_err());
        assert_eq!(Value::Double(1.0).to_key_part(), None);
    }
}
