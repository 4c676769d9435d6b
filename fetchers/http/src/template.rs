//! Templates that put entity keys into a request: the path, query values and a JSON body.
//!
//! A template is text with `{entity_name}` placeholders, compiled once against the view's keys so
//! a typo is a validation error, never a request-time surprise. Rendering treats every key as
//! data: in a path it is percent-encoded as one segment (`/`, `?`, `#`, `%` and spaces cannot
//! change which resource is addressed), in a query value it is form-encoded by the URL builder,
//! and in a body it is a JSON value. The one key a path cannot carry is one that would make a
//! whole segment `.` or `..` (URL parsers remove such segments, encoded or not): rendering
//! reports it as [`Unaddressable`] instead of sending a request for another resource.

use std::fmt::Write as _;

use fetcher_api::{KeyPart, KeySpec};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

/// Everything but RFC 3986's unreserved characters is encoded, so a key is always one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Literal(String),
    /// The index of an entity key in the view's key order.
    Key(usize),
}

/// Text with `{entity_name}` placeholders.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// A key that cannot be placed in a URL path without addressing another resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unaddressable;

impl Template {
    /// Compiles `text` against the view's entity keys.
    pub fn parse(text: &str, keys: &[KeySpec]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("unmatched `}}` in `{text}`"));
            }
            if open > 0 {
                pieces.push(Piece::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in `{text}`"))?;
            let name = &after[..close];
            let index = keys.iter().position(|k| k.name == name).ok_or_else(|| {
                let known: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                format!(
                    "unknown placeholder `{{{name}}}` in `{text}` (entity keys: {})",
                    known.join(", ")
                )
            })?;
            pieces.push(Piece::Key(index));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Template { pieces })
    }

    /// Whether the template uses any entity key.
    pub fn has_placeholders(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Key(_)))
    }

    /// The text with each key in its plain text form (for query values, which the URL builder
    /// encodes, and body strings).
    pub fn render_text(&self, key: &[KeyPart]) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Key(i) => {
                    let _ = write!(out, "{}", key[*i]);
                }
            }
        }
        out
    }

    /// The text as a URL path, each key percent-encoded as (part of) one segment.
    pub fn render_path(&self, key: &[KeyPart]) -> Result<String, Unaddressable> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Key(i) => {
                    let text = key[*i].to_string();
                    out.extend(utf8_percent_encode(&text, SEGMENT));
                }
            }
        }
        // Literal dot segments are refused by validation, so any found here came from a key.
        if out
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Err(Unaddressable);
        }
        Ok(out)
    }
}

/// A JSON body with placeholders: a string that is exactly one placeholder becomes the key's JSON
/// value (a number for an int64 key); a string with other text around placeholders stays a
/// string with the keys written into it.
#[derive(Clone, Debug, PartialEq)]
pub enum BodyTemplate {
    Literal(Json),
    Key(usize),
    Text(Template),
    Array(Vec<BodyTemplate>),
    Object(Vec<(String, BodyTemplate)>),
}

impl BodyTemplate {
    /// Compiles a JSON body against the view's entity keys.
    pub fn parse(json: &Json, keys: &[KeySpec]) -> Result<BodyTemplate, String> {
        Ok(match json {
            Json::String(text) => {
                let template = Template::parse(text, keys)?;
                match template.pieces.as_slice() {
                    [Piece::Key(i)] => BodyTemplate::Key(*i),
                    _ if template.has_placeholders() => BodyTemplate::Text(template),
                    _ => BodyTemplate::Literal(json.clone()),
                }
            }
            Json::Array(items) => BodyTemplate::Array(
                items
                    .iter()
                    .map(|item| BodyTemplate::parse(item, keys))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(fields) => BodyTemplate::Object(
                fields
                    .iter()
                    .map(|(name, value)| Ok((name.clone(), BodyTemplate::parse(value, keys)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => BodyTemplate::Literal(other.clone()),
        })
    }

    /// The body for one entity key.
    pub fn render(&self, key: &[KeyPart]) -> Json {
        match self {
            BodyTemplate::Literal(json) => json.clone(),
            BodyTemplate::Key(i) => key_json(&key[*i]),
            BodyTemplate::Text(template) => Json::String(template.render_text(key)),
            BodyTemplate::Array(items) => {
                Json::Array(items.iter().map(|i| i.render(key)).collect())
            }
            BodyTemplate::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(name, value)| (name.clone(), value.render(key)))
                    .collect(),
            ),
        }
    }
}

/// A key part as a JSON value: int64 keys are numbers, string keys strings.
pub fn key_json(part: &KeyPart) -> Json {
    match part {
        KeyPart::Int64(i) => Json::from(*i),
        KeyPart::String(s) => Json::from(s.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::FeatureType;
    use serde_json::json;

    use super::*;

    fn keys() -> Vec<KeySpec> {
        vec![
            KeySpec {
                name: "device_id".into(),
                ty: FeatureType::String,
            },
            KeySpec {
                name: "user_id".into(),
                ty: FeatureType::Int64,
            },
        ]
    }

    fn key(device: &str, user: i64) -> Vec<KeyPart> {
        vec![KeyPart::String(device.into()), KeyPart::Int64(user)]
    }

    #[test]
    fn paths_encode_each_key_as_one_segment() {
        let t = Template::parse("/v1/users/{user_id}/devices/{device_id}", &keys()).expect("valid");
        assert_eq!(
            t.render_path(&key("d_1", 7)),
            Ok("/v1/users/7/devices/d_1".into())
        );
        assert_eq!(
            t.render_path(&key("../../admin?x=1#frag", 7)),
            Ok("/v1/users/7/devices/..%2F..%2Fadmin%3Fx%3D1%23frag".into())
        );
        assert_eq!(
            t.render_path(&key("a b%2Fc", -1)),
            Ok("/v1/users/-1/devices/a%20b%252Fc".into())
        );
        assert_eq!(t.render_path(&key("..", 7)), Err(Unaddressable));
        assert_eq!(t.render_path(&key(".", 7)), Err(Unaddressable));
        assert_eq!(
            t.render_path(&key("...", 7)),
            Ok("/v1/users/7/devices/...".into()),
            "three dots are an ordinary segment"
        );
        let suffixed = Template::parse("/v1/{device_id}.json", &keys()).expect("valid");
        assert_eq!(suffixed.render_path(&key(".", 1)), Ok("/v1/..json".into()));
    }

    #[test]
    fn bad_templates_name_the_problem() {
        let err = Template::parse("/v1/{device}", &keys()).unwrap_err();
        assert!(
            err.contains("unknown placeholder `{device}`") && err.contains("device_id, user_id"),
            "{err}"
        );
        assert!(
            Template::parse("/v1/{device_id", &keys())
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            Template::parse("/v1/}", &keys())
                .unwrap_err()
                .contains("unmatched")
        );
        assert!(
            !Template::parse("/v1/x", &keys())
                .expect("valid")
                .has_placeholders()
        );
    }

    #[test]
    fn query_text_keeps_keys_raw_for_the_url_builder() {
        let t = Template::parse("user-{user_id}:{device_id}", &keys()).expect("valid");
        assert_eq!(t.render_text(&key("a&b=c", 3)), "user-3:a&b=c");
    }

    #[test]
    fn body_placeholders_become_json_values() {
        let body = json!({
            "device": "{device_id}",
            "user": "{user_id}",
            "label": "user {user_id}",
            "ids": ["{user_id}"],
            "limit": 5,
            "fixed": "text",
        });
        let t = BodyTemplate::parse(&body, &keys()).expect("valid");
        assert_eq!(
            t.render(&key("d\"1", 42)),
            json!({
                "device": "d\"1",
                "user": 42,
                "label": "user 42",
                "ids": [42],
                "limit": 5,
                "fixed": "text",
            })
        );
        assert!(BodyTemplate::parse(&json!({"a": ["{nope}"]}), &keys()).is_err());
    }
}
