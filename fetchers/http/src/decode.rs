//! From a JSON response to a row: each feature read at its JSON pointer (RFC 6901) and decoded
//! with its declared type.
//!
//! A pointer with no target reads as null (APIs leave out what they do not know). A target of
//! the wrong type fails that one cell with a [`CellError`] naming the pointer, and logs a warning
//! naming the view and the pointer, so the rest of the row is still served and the broken field
//! can be found. Nothing here fails a whole fetch.

use std::{fmt, time::SystemTime};

use fetcher_api::{Cell, CellError, FeatureType, Record, Value};
use serde_json::Value as Json;

/// A JSON pointer checked against RFC 6901's syntax.
#[derive(Clone, PartialEq, Eq)]
pub struct Pointer(String);

impl Pointer {
    /// Checks `text`: empty (the whole document), or `/`-separated tokens where `~` is only
    /// followed by `0` or `1`.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if !text.is_empty() && !text.starts_with('/') {
            return Err(format!(
                "`{text}` is not a JSON pointer: it must be empty or start with `/`"
            ));
        }
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "`{text}` is not a JSON pointer: `~` must be followed by `0` or `1`"
                ));
            }
        }
        Ok(Pointer(text.to_owned()))
    }

    /// The pointer's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value the pointer designates in `doc`, if any.
    pub fn resolve<'a>(&self, doc: &'a Json) -> Option<&'a Json> {
        doc.pointer(&self.0)
    }
}

impl fmt::Debug for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The pointer of a feature with no `fields` entry: `/<feature name>`, escaped.
pub fn default_pointer(feature: &str) -> String {
    format!("/{}", feature.replace('~', "~0").replace('/', "~1"))
}

/// One feature's value at `pointer` in `doc`.
pub fn decode_cell(view: &str, doc: &Json, pointer: &Pointer, ty: FeatureType) -> Cell {
    let Some(json) = pointer.resolve(doc) else {
        return Ok(Value::Null);
    };
    ty.from_json(json).map_err(|error| {
        tracing::warn!(
            view,
            pointer = pointer.as_str(),
            %error,
            "http response field does not match its declared type"
        );
        CellError(format!("`{pointer}`: {error}"))
    })
}

/// A row of `features` (pointer and type, in the requested order) read from `doc`.
pub fn decode_record(
    view: &str,
    doc: &Json,
    features: &[(&Pointer, FeatureType)],
    event_time: Option<&Pointer>,
) -> Record {
    let cells = features
        .iter()
        .map(|(pointer, ty)| decode_cell(view, doc, pointer, *ty))
        .collect();
    let event_time = event_time.and_then(|pointer| {
        match decode_cell(view, doc, pointer, FeatureType::Timestamp) {
            Ok(Value::Timestamp(t)) => Some(t),
            // A bad event time was logged by decode_cell; the values are still served, without
            // an age to check.
            _ => None::<SystemTime>,
        }
    });
    Record { cells, event_time }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).expect("valid pointer")
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        let doc = json!({"a/b": 1, "m~n": 2, "scores": {"risk": 0.5}, "list": [10, 20], "": 3});
        assert_eq!(p("/a~1b").resolve(&doc), Some(&json!(1)));
        assert_eq!(p("/m~0n").resolve(&doc), Some(&json!(2)));
        assert_eq!(p("/scores/risk").resolve(&doc), Some(&json!(0.5)));
        assert_eq!(p("/list/1").resolve(&doc), Some(&json!(20)));
        assert_eq!(p("/").resolve(&doc), Some(&json!(3)));
        assert_eq!(p("").resolve(&doc), Some(&doc));
        assert_eq!(p("/list/7").resolve(&doc), None);
        assert!(Pointer::parse("scores/risk").is_err());
        assert!(Pointer::parse("/a~2").is_err());
        assert!(Pointer::parse("/a~").is_err());
        assert_eq!(default_pointer("risk"), "/risk");
        assert_eq!(default_pointer("a/b~c"), "/a~1b~0c");
    }

    #[test]
    fn cells_decode_with_their_types_missing_is_null_mismatch_is_an_error() {
        let doc = json!({
            "risk": 0.25, "count": 3, "flag": true, "when": "2024-05-01T12:00:00Z",
            "tags": ["a"], "name": 7, "nested": {"n": null}
        });
        let risk = p("/risk");
        let count = p("/count");
        let flag = p("/flag");
        let tags = p("/tags");
        let missing = p("/absent");
        let name = p("/name");
        let null = p("/nested/n");
        let when = p("/when");
        let record = decode_record(
            "v",
            &doc,
            &[
                (&risk, FeatureType::Double),
                (&count, FeatureType::Double),
                (&flag, FeatureType::Bool),
                (&tags, FeatureType::StringList),
                (&missing, FeatureType::Int64),
                (&name, FeatureType::String),
                (&null, FeatureType::String),
            ],
            Some(&when),
        );
        assert_eq!(record.cells[0], Ok(Value::Double(0.25)));
        assert_eq!(record.cells[1], Ok(Value::Double(3.0)));
        assert_eq!(record.cells[2], Ok(Value::Bool(true)));
        assert_eq!(record.cells[3], Ok(Value::StringList(vec!["a".into()])));
        assert_eq!(record.cells[4], Ok(Value::Null));
        let err = record.cells[5].clone().unwrap_err();
        assert!(err.0.starts_with("`/name`: expected string"), "{err}");
        assert_eq!(record.cells[6], Ok(Value::Null));
        assert_eq!(
            record.event_time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800))
        );
        let bad_time = decode_record("v", &doc, &[], Some(&flag));
        assert_eq!(bad_time.event_time, None);
    }
}
