//! The stored forms of values, as `materialize` writes them and the fetcher reads them back.
//!
//! Hash fields hold the text form that [`FeatureType::parse_text`] reads: decimal int64s,
//! shortest round-trip doubles, `true`/`false`, RFC 3339 timestamps (UTC, nanoseconds when not
//! whole), JSON arrays for lists. JSON members hold the JSON form that
//! [`FeatureType::from_json`] reads. Null is stored as no field (or no member) at all.

use std::time::{Duration, SystemTime};

use fetcher_api::{FeatureType, Value};
use serde_json::Value as Json;

/// The text form of `value` for a hash field; `None` for null (the field is removed).
pub fn to_text(value: &Value) -> Result<Option<String>, String> {
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Int64(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| "bytes are not UTF-8")?,
        Value::Timestamp(t) => rfc3339(*t),
        list @ (Value::Int64List(_) | Value::DoubleList(_) | Value::StringList(_)) => {
            match to_json(list)? {
                Some(json) => json.to_string(),
                None => return Ok(None),
            }
        }
    }))
}

/// The JSON form of `value` for a JSON member; `None` for null (the member is left out).
pub fn to_json(value: &Value) -> Result<Option<Json>, String> {
    let number = |d: f64| {
        serde_json::Number::from_f64(d)
            .map(Json::Number)
            .ok_or_else(|| format!("{d} cannot be stored as JSON"))
    };
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Int64(i) => Json::from(*i),
        Value::Double(d) => number(*d)?,
        Value::String(s) => Json::String(s.clone()),
        Value::Bool(b) => Json::Bool(*b),
        Value::Bytes(b) => Json::String(
            String::from_utf8(b.clone()).map_err(|_| "bytes are not UTF-8".to_owned())?,
        ),
        Value::Timestamp(t) => Json::String(rfc3339(*t)),
        Value::Int64List(l) => Json::Array(l.iter().map(|i| Json::from(*i)).collect()),
        Value::DoubleList(l) => {
            Json::Array(l.iter().map(|d| number(*d)).collect::<Result<_, _>>()?)
        }
        Value::StringList(l) => Json::Array(l.iter().map(|s| Json::String(s.clone())).collect()),
    }))
}

/// Checks that `value`'s stored form reads back as `ty` gives the same value (e.g. a list of
/// doubles holding NaN cannot be JSON).
pub fn check_round_trip(ty: FeatureType, value: &Value, json: bool) -> Result<(), String> {
    let back = if json {
        match to_json(value)? {
            None => Value::Null,
            Some(j) => ty.from_json(&j)?,
        }
    } else {
        match to_text(value)? {
            None => Value::Null,
            Some(t) => ty.parse_text(&t)?,
        }
    };
    // NaN is never equal to itself; it round-trips in text as `NaN`.
    let same = back == *value
        || matches!((&back, value), (Value::Double(a), Value::Double(b)) if a.is_nan() && b.is_nan());
    if same {
        Ok(())
    } else {
        Err(format!("{value:?} would read back as {back:?}"))
    }
}

/// `t` as RFC 3339 in UTC, with the fraction only when it is not zero.
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let whole = d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0);
            let nanos = (Duration::from_secs(whole as u64) - d).subsec_nanos();
            (-whole, nanos)
        }
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut out = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_and_parse_back() {
        for (secs, nanos, text) in [
            (1_714_564_800, 0, "2024-05-01T12:00:00Z"),
            (1_714_564_800, 500_000_000, "2024-05-01T12:00:00.5Z"),
            (0, 1, "1970-01-01T00:00:00.000000001Z"),
            (951_782_400, 0, "2000-02-29T00:00:00Z"),
        ] {
            let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(rfc3339(t), text);
            assert_eq!(
                FeatureType::Timestamp.parse_text(text),
                Ok(Value::Timestamp(t))
            );
        }
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(rfc3339(before), "1969-12-31T23:59:58.5Z");
    }

    #[test]
    fn every_type_round_trips_in_both_forms() {
        let values = [
            (FeatureType::Int64, Value::Int64(-42)),
            (FeatureType::Double, Value::Double(0.1)),
            (FeatureType::Double, Value::Double(1e300)),
            (FeatureType::String, Value::String("a,\"b\"\n".into())),
            (FeatureType::Bool, Value::Bool(false)),
            (FeatureType::Bytes, Value::Bytes(b"raw".to_vec())),
            (
                FeatureType::Timestamp,
                Value::Timestamp(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123)),
            ),
            (FeatureType::Int64List, Value::Int64List(vec![1, -2])),
            (FeatureType::DoubleList, Value::DoubleList(vec![0.5, 2.0])),
            (
                FeatureType::StringList,
                Value::StringList(vec!["x".into(), "]".into()]),
            ),
        ];
        for (ty, value) in values {
            check_round_trip(ty, &value, false).expect("text");
            check_round_trip(ty, &value, true).expect("json");
        }
        assert!(check_round_trip(FeatureType::Double, &Value::Double(f64::NAN), true).is_err());
        check_round_trip(FeatureType::Double, &Value::Double(f64::NAN), false).expect("NaN text");
    }
}
