//! PostgreSQL types against declared feature types: which column types a feature may be read
//! from (checked once, when the source is built), and the decoding of a result cell into a
//! [`Value`] at fetch time.
//!
//! # Mapping
//! | feature type   | PostgreSQL column types                                        |
//! |----------------|----------------------------------------------------------------|
//! | `int64`        | `int2`, `int4`, `int8`                                         |
//! | `double`       | `float4`, `float8`, `numeric` (rounded to the nearest double), the integers |
//! | `string`       | `text`, `varchar`, `char(n)`, `name`                           |
//! | `bool`         | `bool`                                                         |
//! | `bytes`        | `bytea`                                                        |
//! | `timestamp`    | `timestamptz`, `timestamp` (read as UTC)                       |
//! | `list<int64>`  | one-dimensional arrays of the integers                         |
//! | `list<double>` | one-dimensional arrays of `float4`, `float8`, `numeric`, the integers |
//! | `list<string>` | one-dimensional arrays of `text`, `varchar`, `char(n)`, `name` |
//! | any            | `jsonb`, `json`: the document, or a field of it by JSON pointer |
//!
//! SQL NULL is [`Value::Null`]. A cell that cannot be represented (an array holding NULL or of
//! more than one dimension, an infinite timestamp, a JSON field of the wrong type) is a
//! [`CellError`] for that one feature; the rest of the row is served.

use std::{error::Error, time::SystemTime};

use fetcher_api::{Cell, CellError, FeatureType, Value};
use tokio_postgres::{
    Row,
    types::{FromSql, Type},
};

/// How a column is decoded into a feature's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoder {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Text,
    Bool,
    Bytes,
    Timestamp,
    Int2List,
    Int4List,
    Int8List,
    Float4List,
    Float8List,
    NumericList,
    TextList,
    /// A json or jsonb document, then [`FeatureType::from_json`] on the pointed-at field.
    Json,
}

/// The column types a feature of type `ty` may be read from, as named in messages.
pub fn accepted(ty: FeatureType) -> &'static str {
    match ty {
        FeatureType::Int64 => "int2, int4, int8",
        FeatureType::Double => "float4, float8, numeric, int2, int4, int8",
        FeatureType::String => "text, varchar, bpchar, name",
        FeatureType::Bool => "bool",
        FeatureType::Bytes => "bytea",
        FeatureType::Timestamp => "timestamptz, timestamp",
        FeatureType::Int64List => "int2[], int4[], int8[]",
        FeatureType::DoubleList => "float4[], float8[], numeric[], int2[], int4[], int8[]",
        FeatureType::StringList => "text[], varchar[], bpchar[], name[]",
    }
}

/// The decoder reading a column of type `column` as a feature of type `ty`, if the column's type
/// can hold it. json and jsonb columns can hold any type (checked per value).
pub fn decoder(column: &Type, ty: FeatureType) -> Option<Decoder> {
    use FeatureType as F;
    if *column == Type::JSON || *column == Type::JSONB {
        return Some(Decoder::Json);
    }
    let ints = |t: &Type| match *t {
        Type::INT2 => Some(Decoder::Int2),
        Type::INT4 => Some(Decoder::Int4),
        Type::INT8 => Some(Decoder::Int8),
        _ => None,
    };
    let int_lists = |t: &Type| match *t {
        Type::INT2_ARRAY => Some(Decoder::Int2List),
        Type::INT4_ARRAY => Some(Decoder::Int4List),
        Type::INT8_ARRAY => Some(Decoder::Int8List),
        _ => None,
    };
    match ty {
        F::Int64 => ints(column),
        F::Double => match *column {
            Type::FLOAT4 => Some(Decoder::Float4),
            Type::FLOAT8 => Some(Decoder::Float8),
            Type::NUMERIC => Some(Decoder::Numeric),
            _ => ints(column),
        },
        F::String => matches!(
            *column,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME
        )
        .then_some(Decoder::Text),
        F::Bool => (*column == Type::BOOL).then_some(Decoder::Bool),
        F::Bytes => (*column == Type::BYTEA).then_some(Decoder::Bytes),
        F::Timestamp => {
            matches!(*column, Type::TIMESTAMPTZ | Type::TIMESTAMP).then_some(Decoder::Timestamp)
        }
        F::Int64List => int_lists(column),
        F::DoubleList => match *column {
            Type::FLOAT4_ARRAY => Some(Decoder::Float4List),
            Type::FLOAT8_ARRAY => Some(Decoder::Float8List),
            Type::NUMERIC_ARRAY => Some(Decoder::NumericList),
            _ => int_lists(column),
        },
        F::StringList => matches!(
            *column,
            Type::TEXT_ARRAY | Type::VARCHAR_ARRAY | Type::BPCHAR_ARRAY | Type::NAME_ARRAY
        )
        .then_some(Decoder::TextList),
    }
}

/// Reads column `index` of `row` as a feature of type `ty`. `json_path` applies to
/// [`Decoder::Json`] only.
pub fn decode(
    row: &Row,
    index: usize,
    decoder: Decoder,
    ty: FeatureType,
    json_path: Option<&str>,
) -> Cell {
    let value = match decoder {
        Decoder::Int2 => get::<i16>(row, index)?.map(|v| Value::Int64(v.into())),
        Decoder::Int4 => get::<i32>(row, index)?.map(|v| Value::Int64(v.into())),
        Decoder::Int8 => get::<i64>(row, index)?.map(Value::Int64),
        Decoder::Float4 => get::<f32>(row, index)?.map(|v| Value::Double(v.into())),
        Decoder::Float8 => get::<f64>(row, index)?.map(Value::Double),
        Decoder::Numeric => get::<Numeric>(row, index)?.map(|n| Value::Double(n.0)),
        Decoder::Text => get::<String>(row, index)?.map(Value::String),
        Decoder::Bool => get::<bool>(row, index)?.map(Value::Bool),
        Decoder::Bytes => get::<Vec<u8>>(row, index)?.map(Value::Bytes),
        Decoder::Timestamp => get::<Timestamp>(row, index)?.map(|t| Value::Timestamp(t.0)),
        Decoder::Int2List => list::<i16, _>(row, index, i64::from)?.map(Value::Int64List),
        Decoder::Int4List => list::<i32, _>(row, index, i64::from)?.map(Value::Int64List),
        Decoder::Int8List => list::<i64, _>(row, index, |v| v)?.map(Value::Int64List),
        Decoder::Float4List => list::<f32, _>(row, index, f64::from)?.map(Value::DoubleList),
        Decoder::Float8List => list::<f64, _>(row, index, |v| v)?.map(Value::DoubleList),
        Decoder::NumericList => list::<Numeric, _>(row, index, |n| n.0)?.map(Value::DoubleList),
        Decoder::TextList => list::<String, _>(row, index, |v| v)?.map(Value::StringList),
        Decoder::Json => match get::<serde_json::Value>(row, index)? {
            None => None,
            Some(doc) => {
                let field = match json_path {
                    None | Some("") => Some(&doc),
                    Some(path) => doc.pointer(path),
                };
                match field {
                    // A missing field is absent data, like a missing hash field in Redis.
                    None => Some(Value::Null),
                    Some(field) => Some(ty.from_json(field).map_err(CellError)?),
                }
            }
        },
    };
    // Integer columns read as doubles, integer arrays as double lists: widen.
    ty.conform(value.unwrap_or(Value::Null)).map_err(CellError)
}

fn get<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<Option<T>, CellError> {
    row.try_get::<_, Option<T>>(index).map_err(|e| {
        CellError(format!(
            "cannot decode column `{}`: {}",
            row.columns()[index].name(),
            source_text(&e)
        ))
    })
}

fn list<'a, T: FromSql<'a>, U>(
    row: &'a Row,
    index: usize,
    convert: impl Fn(T) -> U,
) -> Result<Option<Vec<U>>, CellError> {
    let Some(items) = get::<Vec<Option<T>>>(row, index)? else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|item| {
            item.map(&convert).ok_or_else(|| {
                CellError(format!(
                    "column `{}`: an array element is NULL, which a list cannot hold",
                    row.columns()[index].name()
                ))
            })
        })
        .collect::<Result<Vec<U>, _>>()
        .map(Some)
}

/// The innermost cause of an error: tokio-postgres wraps conversion errors in a generic
/// "error deserializing column" message.
fn source_text(e: &(dyn Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A `numeric`, rounded to the nearest double.
///
/// Decoded here from the binary format (ndigits, weight, sign, dscale, then base-10000 digits)
/// because tokio-postgres only offers numeric through a decimal crate we would not otherwise need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Numeric(pub f64);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let word = |i: usize| -> Result<u16, Box<dyn Error + Sync + Send>> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "truncated numeric".into())
        };
        let ndigits = usize::from(word(0)?);
        let weight = i32::from(word(1)? as i16);
        let sign = word(2)?;
        match sign {
            0xC000 => return Ok(Numeric(f64::NAN)),
            0xD000 => return Ok(Numeric(f64::INFINITY)),
            0xF000 => return Ok(Numeric(f64::NEG_INFINITY)),
            0x0000 | 0x4000 => {}
            _ => return Err("invalid numeric sign".into()),
        }
        if ndigits == 0 {
            return Ok(Numeric(0.0));
        }
        // 0.DDDDdddd... x 10^(4 * (weight + 1)), parsed by the standard library so the result is
        // correctly rounded.
        let mut text = String::with_capacity(ndigits * 4 + 16);
        if sign == 0x4000 {
            text.push('-');
        }
        text.push_str("0.");
        for i in 0..ndigits {
            let digit = word(4 + i)?;
            if digit > 9999 {
                return Err("invalid numeric digit".into());
            }
            text.push_str(&format!("{digit:04}"));
        }
        text.push_str(&format!("e{}", 4 * (weight + 1)));
        Ok(Numeric(text.parse()?))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// A `timestamptz` or `timestamp` (as UTC). Decoded here so that `infinity` is a clear error
/// rather than a date 292,000 years away.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timestamp(pub SystemTime);

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

impl<'a> FromSql<'a> for Timestamp {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let micros = i64::from_be_bytes(raw.try_into().map_err(|_| "invalid timestamp length")?);
        if micros == i64::MAX || micros == i64::MIN {
            return Err("an infinite timestamp cannot be served".into());
        }
        let epoch = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(PG_EPOCH_UNIX_SECS);
        let offset = std::time::Duration::from_micros(micros.unsigned_abs());
        let time = if micros >= 0 {
            epoch.checked_add(offset)
        } else {
            epoch.checked_sub(offset)
        };
        time.map(Timestamp)
            .ok_or_else(|| "timestamp out of range".into())
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, digits: &[u16]) -> f64 {
        let mut raw = Vec::new();
        for w in [ndigits, weight as u16, sign, 0] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        Numeric::from_sql(&Type::NUMERIC, &raw).unwrap().0
    }

    #[test]
    fn numerics_decode_from_base_10000() {
        assert_eq!(numeric(0, 0, 0, &[]), 0.0);
        // 12345.678 = 1|2345|6780 with weight 1
        assert_eq!(numeric(3, 1, 0, &[1, 2345, 6780]), 12345.678);
        // -0.0012 = 0012 with weight -1
        assert_eq!(numeric(1, -1, 0x4000, &[12]), -0.0012);
        assert!(numeric(0, 0, 0xC000, &[]).is_nan());
    }

    #[test]
    fn declared_types_accept_their_columns_only() {
        assert_eq!(
            decoder(&Type::INT4, FeatureType::Int64),
            Some(Decoder::Int4)
        );
        assert_eq!(
            decoder(&Type::INT4, FeatureType::Double),
            Some(Decoder::Int4)
        );
        assert_eq!(decoder(&Type::TEXT, FeatureType::Int64), None);
        assert_eq!(decoder(&Type::FLOAT8, FeatureType::Int64), None);
        assert_eq!(
            decoder(&Type::JSONB, FeatureType::Bool),
            Some(Decoder::Json)
        );
        assert_eq!(
            decoder(&Type::NUMERIC_ARRAY, FeatureType::DoubleList),
            Some(Decoder::NumericList)
        );
        assert_eq!(decoder(&Type::TEXT_ARRAY, FeatureType::Int64List), None);
    }
}
