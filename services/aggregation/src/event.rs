//! Events: a JSON object per event, read into what one view aggregates of it.
//!
//! An event names each entity key of the view (a JSON string for a string key, an integer for
//! an int64 one), its event time (an integer of milliseconds since the Unix epoch, or an RFC 3339
//! string) and the fields its aggregations read. A field that is absent or null counts for
//! `count` and is skipped by the others. Anything else wrong makes the event bad for this view,
//! with a [`BadEvent`] reason: it is counted and skipped, never applied in part.

use fetcher_api::{EntityKey, FeatureType, KeyPart, Value};
use serde_json::{Map, Value as Json};

use crate::{
    partial::{MAX_SUMMED_DOUBLE, Scalar},
    spec::{Millis, Op, ViewDef},
};

/// The earliest event time accepted: 1970-01-01.
pub const MIN_EVENT_TIME: Millis = 0;
/// The latest event time accepted: 2200-01-01.
pub const MAX_EVENT_TIME: Millis = 7_258_118_400_000;

/// One event as one view reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The entity key, in the view's key order.
    pub key: EntityKey,
    /// The event time.
    pub time: Millis,
    /// Per series of the view, the value of its field (`None` for `count`, or a null field).
    pub values: Vec<Option<Scalar>>,
}

/// Why an event was not applied to a view.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadEvent {
    #[error("not a JSON object")]
    NotJson,
    #[error("no entity key `{0}`")]
    MissingKey(String),
    #[error("entity key `{0}` is not a {1}")]
    BadKey(String, &'static str),
    #[error("no event time `{0}`")]
    MissingTime(String),
    #[error("event time `{0}` is not milliseconds since the epoch or an RFC 3339 time")]
    BadTime(String),
    #[error("event time `{0}` is before 1970 or after 2200")]
    AbsurdTime(String),
    #[error("field `{0}` is not a {1}")]
    WrongType(String, &'static str),
    #[error("field `{0}` is beyond what a sum can hold")]
    OutOfRange(String),
}

impl BadEvent {
    /// The reason as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            BadEvent::NotJson => "not_json",
            BadEvent::MissingKey(_) => "missing_key",
            BadEvent::BadKey(..) => "bad_key",
            BadEvent::MissingTime(_) => "missing_time",
            BadEvent::BadTime(_) => "bad_time",
            BadEvent::AbsurdTime(_) => "absurd_time",
            BadEvent::WrongType(..) => "wrong_type",
            BadEvent::OutOfRange(_) => "out_of_range",
        }
    }

    /// Every reason, for metrics that start at zero.
    pub const REASONS: [&'static str; 8] = [
        "not_json",
        "missing_key",
        "bad_key",
        "missing_time",
        "bad_time",
        "absurd_time",
        "wrong_type",
        "out_of_range",
    ];
}

/// Parses an event's bytes as a JSON object.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Json>, BadEvent> {
    match serde_json::from_slice(bytes) {
        Ok(Json::Object(map)) => Ok(map),
        _ => Err(BadEvent::NotJson),
    }
}

/// Reads an event time: an integer of epoch milliseconds or an RFC 3339 string.
pub fn event_time(field: &str, json: &Json) -> Result<Millis, BadEvent> {
    let time = match json {
        Json::Number(n) => n
            .as_i64()
            .ok_or_else(|| BadEvent::BadTime(field.to_owned()))?,
        Json::String(text) if text.parse::<f64>().is_err() => {
            match fetcher_api::value::parse_timestamp(text) {
                Some(Value::Timestamp(t)) => match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX),
                    Err(_) => return Err(BadEvent::AbsurdTime(field.to_owned())),
                },
                _ => return Err(BadEvent::BadTime(field.to_owned())),
            }
        }
        _ => return Err(BadEvent::BadTime(field.to_owned())),
    };
    if !(MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&time) {
        return Err(BadEvent::AbsurdTime(field.to_owned()));
    }
    Ok(time)
}

impl ViewDef {
    /// What this view aggregates of the event `object`.
    pub fn read(&self, object: &Map<String, Json>) -> Result<Event, BadEvent> {
        let mut key = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let json = object
                .get(&k.field)
                .filter(|j| !j.is_null())
                .ok_or_else(|| BadEvent::MissingKey(k.field.clone()))?;
            key.push(match (k.ty, json) {
                (FeatureType::Int64, Json::Number(n)) => KeyPart::Int64(
                    n.as_i64()
                        .ok_or_else(|| BadEvent::BadKey(k.field.clone(), "int64"))?,
                ),
                (FeatureType::Int64, _) => {
                    return Err(BadEvent::BadKey(k.field.clone(), "int64"));
                }
                (_, Json::String(s)) => KeyPart::String(s.clone()),
                _ => return Err(BadEvent::BadKey(k.field.clone(), "string")),
            });
        }
        let time = event_time(
            &self.time_field,
            object
                .get(&self.time_field)
                .filter(|j| !j.is_null())
                .ok_or_else(|| BadEvent::MissingTime(self.time_field.clone()))?,
        )?;
        let mut values = Vec::with_capacity(self.series.len());
        for s in &self.series {
            let Some(field) = &s.field else {
                values.push(None);
                continue;
            };
            let json = match object.get(&field.name) {
                None | Some(Json::Null) => {
                    values.push(None);
                    continue;
                }
                Some(json) => json,
            };
            let wrong = || BadEvent::WrongType(field.name.clone(), field.ty.name());
            let value = match (field.ty, json) {
                (FeatureType::Int64, Json::Number(n)) => Scalar::Int(n.as_i64().ok_or_else(wrong)?),
                (FeatureType::Double, Json::Number(n)) => {
                    let d = n.as_f64().ok_or_else(wrong)?;
                    if matches!(s.op, Op::Sum | Op::Mean) && d.abs() > MAX_SUMMED_DOUBLE {
                        return Err(BadEvent::OutOfRange(field.name.clone()));
                    }
                    Scalar::Double(d)
                }
                (FeatureType::String, Json::String(text)) => Scalar::Str(text.clone()),
                (FeatureType::Bool, Json::Bool(b)) => Scalar::Bool(*b),
                (FeatureType::Timestamp, json) => {
                    Scalar::Time(event_time(&field.name, json).map_err(|_| wrong())?)
                }
                _ => return Err(wrong()),
            };
            values.push(Some(value));
        }
        Ok(Event { key, time, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Field, KeyField};

    fn view() -> ViewDef {
        let mut v = ViewDef {
            name: "card".into(),
            keys: vec![KeyField {
                entity: "card_id".into(),
                field: "card".into(),
                ty: FeatureType::String,
            }],
            time_field: "ts".into(),
            allowed_lateness: 0,
            series: Vec::new(),
            aggregates: Vec::new(),
        };
        v.add("n", Op::Count, None, 600_000, None).expect("ok");
        let amount = Field {
            name: "amount".into(),
            ty: FeatureType::Double,
        };
        v.add("s", Op::Sum, Some(amount), 600_000, None)
            .expect("ok");
        v
    }

    fn read(text: &str) -> Result<Event, BadEvent> {
        view().read(&parse(text.as_bytes())?)
    }

    #[test]
    fn events_read_keys_times_and_fields() {
        assert_eq!(
            read(r#"{"card":"c1","ts":1700000000000,"amount":12}"#),
            Ok(Event {
                key: vec![KeyPart::String("c1".into())],
                time: 1_700_000_000_000,
                values: vec![None, Some(Scalar::Double(12.0))],
            })
        );
        let rfc =
            read(r#"{"card":"c1","ts":"2023-11-14T22:13:20.5Z","amount":null}"#).expect("an event");
        assert_eq!((rfc.time, &rfc.values[1]), (1_700_000_000_500, &None));
    }

    #[test]
    fn bad_events_have_a_reason() {
        let reason = |text: &str| read(text).map(|_| ()).map_err(|e| e.reason());
        assert_eq!(reason("nope"), Err("not_json"));
        assert_eq!(reason("[1]"), Err("not_json"));
        assert_eq!(reason(r#"{"ts":1}"#), Err("missing_key"));
        assert_eq!(reason(r#"{"card":7,"ts":1}"#), Err("bad_key"));
        assert_eq!(reason(r#"{"card":"c"}"#), Err("missing_time"));
        assert_eq!(reason(r#"{"card":"c","ts":"soon"}"#), Err("bad_time"));
        assert_eq!(reason(r#"{"card":"c","ts":"17"}"#), Err("bad_time"));
        assert_eq!(reason(r#"{"card":"c","ts":-1}"#), Err("absurd_time"));
        assert_eq!(
            reason(r#"{"card":"c","ts":99999999999999}"#),
            Err("absurd_time")
        );
        assert_eq!(
            reason(r#"{"card":"c","ts":1,"amount":"12"}"#),
            Err("wrong_type")
        );
        assert_eq!(
            reason(r#"{"card":"c","ts":1,"amount":1e300}"#),
            Err("out_of_range")
        );
        assert_eq!(
            read(r#"{"card":"c","ts":1,"amount":"12"}"#)
                .unwrap_err()
                .to_string(),
            "field `amount` is not a double"
        );
    }
}
