//! Validating a request's inputs against a plan, and the one table from request errors to gRPC
//! status codes.
//!
//! Only a bad request is an error: an unknown feature service (NOT_FOUND), a missing or mistyped
//! entity key, a mistyped, non-finite or missing required context value, a malformed request id,
//! or a request over a limit (INVALID_ARGUMENT), each with a message naming the field. What the
//! sources do never makes a request fail.

use std::collections::BTreeMap;

use fetcher_api::{FeatureType, KeyPart, Value};
use proto::{v1, wire_type_name};

use gateway_config::LimitsConfig;

use crate::{executor::RowInput, plan::Plan};

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A field of the request is wrong.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The field, e.g. `rows[2].entities.user_id`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named feature service does not exist.
    #[error("feature_service: unknown feature service `{0}`")]
    UnknownFeatureService(String),
    /// The caller's deadline leaves no time to serve anything.
    #[error("the deadline leaves no time to serve the request")]
    DeadlineExceeded,
    /// The authenticated caller may not read this feature service (empty: ad-hoc requests).
    #[error("feature_service: caller `{caller}` may not read {}", if .feature_service.is_empty() { "ad-hoc feature refs".to_owned() } else { format!("feature service `{}`", .feature_service) })]
    PermissionDenied {
        /// The caller's name.
        caller: String,
        /// What it asked for.
        feature_service: String,
    },
}

impl RequestError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError::InvalidArgument {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The gRPC code, for metrics. Never INTERNAL nor OUT_OF_RANGE: on the feature service those
    /// codes are tonic's own for a request message that does not decode or is too large, which
    /// [`crate::caller_errors`] rewrites as the caller's mistakes.
    pub fn code(&self) -> tonic::Code {
        match self {
            RequestError::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            RequestError::UnknownFeatureService(_) => tonic::Code::NotFound,
            RequestError::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            RequestError::PermissionDenied { .. } => tonic::Code::PermissionDenied,
        }
    }
}

impl From<RequestError> for tonic::Status {
    fn from(e: RequestError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Refuses `feature_service` (empty: an ad-hoc request) to a caller not allowed to read it.
/// Without `[auth]` there is no caller and everything is allowed.
pub fn authorize(
    caller: Option<&crate::auth::Caller>,
    feature_service: &str,
) -> Result<(), RequestError> {
    match caller {
        Some(c) if !c.0.may_read(feature_service) => {
            crate::telemetry::auth_refused("permission_denied");
            Err(RequestError::PermissionDenied {
                caller: c.0.name.to_string(),
                feature_service: feature_service.to_owned(),
            })
        }
        _ => Ok(()),
    }
}

/// Checks a caller-chosen request id (empty: the gateway makes one): at most
/// `max_request_id_bytes`, printable ASCII without spaces (`!` to `~`), so that it is logged,
/// echoed and written to the training log as it is, with no control character, NUL or bidi
/// override to hide in it. The message never repeats the id.
pub fn check_request_id(id: &str, limits: &LimitsConfig) -> Result<(), RequestError> {
    let invalid = |message: String| Err(RequestError::invalid("request_id", message));
    if id.len() > limits.max_request_id_bytes {
        return invalid(format!(
            "{} bytes long, more than the limit of {}",
            id.len(),
            limits.max_request_id_bytes
        ));
    }
    match id.char_indices().find(|(_, c)| !matches!(c, '!'..='~')) {
        None => Ok(()),
        Some((at, c)) => invalid(format!(
            "{} at byte {at}; a request id is printable ASCII without spaces (`!` to `~`)",
            match c {
                ' ' => "a space".to_owned(),
                c => format!("U+{:04X}", u32::from(c)),
            }
        )),
    }
}

/// The prefix of a row's field names in its errors: `rows[3].` for a batch's row 3, nothing for
/// a single-row request. Written only when an error is: a batch makes no string per row.
#[derive(Clone, Copy, Debug)]
pub struct RowPrefix(pub Option<usize>);

impl std::fmt::Display for RowPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "rows[{i}]."),
            None => Ok(()),
        }
    }
}

/// Checks one row's entities and context against `plan` and `limits`. `prefix` is prepended to
/// field names (`rows[3].` in a batch). The values it accepts are moved out of the request's
/// maps, not copied: an entity key leaves an empty string behind, a context value an empty value.
pub fn row_input(
    plan: &Plan,
    entities: &mut BTreeMap<String, v1::Value>,
    context: &mut BTreeMap<String, v1::Value>,
    limits: &LimitsConfig,
    prefix: RowPrefix,
) -> Result<RowInput, RequestError> {
    if entities.len() > limits.max_entities_per_row {
        return Err(RequestError::invalid(
            format!("{prefix}entities"),
            format!(
                "{} entity keys, more than the limit of {}",
                entities.len(),
                limits.max_entities_per_row
            ),
        ));
    }
    if context.len() > limits.max_entities_per_row {
        return Err(RequestError::invalid(
            format!("{prefix}context"),
            format!(
                "{} context values, more than the limit of {}",
                context.len(),
                limits.max_entities_per_row
            ),
        ));
    }
    let mut row = RowInput {
        entities: Vec::with_capacity(plan.entities.len()),
        context: Vec::with_capacity(plan.context.len()),
    };
    for input in &plan.entities {
        let field = || format!("{prefix}entities.{}", input.name);
        let wire = entities.get_mut(&input.name).ok_or_else(|| {
            RequestError::invalid(
                field(),
                format!(
                    "missing; this request needs entity key `{}` ({})",
                    input.name, input.ty
                ),
            )
        })?;
        let key = key_part(wire, input.ty).map_err(|m| RequestError::invalid(field(), m))?;
        if let KeyPart::String(s) = &key {
            check_len(s, limits).map_err(|m| RequestError::invalid(field(), m))?;
        }
        row.entities.push(key);
    }
    for input in &plan.context {
        let value = match context.get_mut(&input.name) {
            None if input.required => {
                return Err(RequestError::invalid(
                    format!("{prefix}context.{}", input.name),
                    format!(
                        "missing; this request needs context value `{}` ({})",
                        input.name, input.ty
                    ),
                ));
            }
            None => None,
            Some(wire) => {
                let field = || format!("{prefix}context.{}", input.name);
                let got = wire_type_name(wire);
                let value = input
                    .ty
                    .conform(Value::from(std::mem::take(wire)))
                    .map_err(|_| {
                        RequestError::invalid(field(), format!("expected {}, got {got}", input.ty))
                    })?;
                if let Value::String(s) = &value {
                    check_len(s, limits).map_err(|m| RequestError::invalid(field(), m))?;
                }
                check_finite(&value).map_err(|m| RequestError::invalid(field(), m))?;
                Some(value)
            }
        };
        row.context.push(value);
    }
    Ok(row)
}

fn key_part(wire: &mut v1::Value, ty: FeatureType) -> Result<KeyPart, String> {
    use v1::value::Kind;
    match (&mut wire.kind, ty) {
        (Some(Kind::Int64Value(i)), FeatureType::Int64) => Ok(KeyPart::Int64(*i)),
        (Some(Kind::StringValue(s)), FeatureType::String) => Ok(KeyPart::String(std::mem::take(s))),
        _ => Err(format!("expected {ty}, got {}", wire_type_name(wire))),
    }
}

/// NaN and the infinities are not values: no source serves them and no model is trained on them,
/// so a context double (or list element) that is one is refused rather than served as PRESENT
/// and written to the training log.
fn check_finite(value: &Value) -> Result<(), String> {
    let name = |d: f64| {
        if d.is_nan() {
            "NaN"
        } else if d > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
    };
    match value {
        Value::Double(d) if !d.is_finite() => Err(format!("{} is not a value", name(*d))),
        Value::DoubleList(list) => match list.iter().position(|d| !d.is_finite()) {
            Some(i) => Err(format!(
                "element {i} is {}, which is not a value",
                name(list[i])
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

fn check_len(s: &str, limits: &LimitsConfig) -> Result<(), String> {
    if s.len() > limits.max_key_bytes {
        Err(format!(
            "{} bytes long, more than the limit of {}",
            s.len(),
            limits.max_key_bytes
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_grpc_codes_and_name_the_field() {
        let status: tonic::Status = RequestError::invalid("entities.user_id", "missing").into();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "entities.user_id: missing");
        let status: tonic::Status = RequestError::UnknownFeatureService("nope".into()).into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("`nope`"));
        let status: tonic::Status = RequestError::DeadlineExceeded.into();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    fn message(result: Result<(), RequestError>) -> String {
        tonic::Status::from(result.expect_err("refused"))
            .message()
            .to_owned()
    }

    #[test]
    fn request_ids_are_bounded_printable_ascii() {
        let limits = LimitsConfig::default();
        for ok in [
            "",
            "3f2c1a9e-0b7d-4c55-9a51-7c1f0e2d4b6a",
            "order-42/retry.1",
            "!~",
        ] {
            assert_eq!(check_request_id(ok, &limits), Ok(()), "{ok:?}");
        }
        assert_eq!(
            check_request_id(&"a".repeat(128), &limits),
            Ok(()),
            "the limit itself"
        );
        assert_eq!(
            message(check_request_id(&"a".repeat(1 << 20), &limits)),
            "request_id: 1048576 bytes long, more than the limit of 128"
        );
        for (bad, what) in [
            ("a b", "a space at byte 1"),
            ("ab\0", "U+0000 at byte 2"),
            ("x\ny", "U+000A at byte 1"),
            ("id\u{202e}gpj", "U+202E at byte 2"),
            ("é", "U+00E9 at byte 0"),
            ("\u{7f}", "U+007F at byte 0"),
        ] {
            let text = message(check_request_id(bad, &limits));
            assert!(text.starts_with("request_id: "), "{text}");
            assert!(text.contains(what), "{bad:?}: {text}");
            assert!(text.contains("printable ASCII"), "{text}");
        }
        let short = LimitsConfig {
            max_request_id_bytes: 4,
            ..LimitsConfig::default()
        };
        assert!(message(check_request_id("abcde", &short)).contains("limit of 4"));
    }

    /// A plan reading `txn:amount` (required), `txn:note` and `txn:weights` from the context.
    fn context_plan() -> (Plan, LimitsConfig) {
        let text = r#"
[sources.request]
kind = "request"
[views.txn]
source = "request"
[views.txn.features]
amount = { type = "double", required = true }
note = { type = "string" }
weights = { type = "list<double>" }
[feature_services.m]
features = ["txn:amount", "txn:note", "txn:weights"]
"#;
        let config = gateway_config::load_str(
            text,
            "test.toml",
            std::path::Path::new("/nonexistent"),
            &fetcher_builtin::registry(),
        )
        .expect("valid");
        let fs = &config.feature_services["m"];
        let plan = crate::plan::compile(&config, "m", "", fs.deadline, &fs.features, &fs.defaults)
            .expect("plans");
        (plan, config.limits.clone())
    }

    fn wire(kind: v1::value::Kind) -> v1::Value {
        v1::Value { kind: Some(kind) }
    }

    fn context_of(pairs: &[(&str, v1::Value)]) -> BTreeMap<String, v1::Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn a_required_context_value_must_be_present_an_optional_one_need_not() {
        use v1::value::Kind;
        let (plan, limits) = context_plan();
        let required: Vec<(&str, bool)> = plan
            .context
            .iter()
            .map(|c| (c.name.as_str(), c.required))
            .collect();
        assert_eq!(
            required,
            [("amount", true), ("note", false), ("weights", false)]
        );
        let none = BTreeMap::new();
        let err = row_input(
            &plan,
            &mut none.clone(),
            &mut none.clone(),
            &limits,
            RowPrefix(Some(3)),
        )
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.to_string(),
            "rows[3].context.amount: missing; this request needs context value `amount` (double)"
        );
        // Present: the optional ones may be left out; an explicit null is a value (NULL_VALUE).
        for amount in [Kind::DoubleValue(1.5), Kind::NullValue(0)] {
            let context = context_of(&[("amount", wire(amount))]);
            let row = row_input(
                &plan,
                &mut none.clone(),
                &mut context.clone(),
                &limits,
                RowPrefix(None),
            )
            .expect("accepted");
            assert!(row.context[0].is_some() && row.context[1].is_none());
        }
    }

    #[test]
    fn nan_and_infinities_in_the_context_are_refused() {
        use v1::value::Kind;
        let (plan, limits) = context_plan();
        let none = BTreeMap::new();
        for (d, name) in [
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            let context = context_of(&[("amount", wire(Kind::DoubleValue(d)))]);
            let err = row_input(
                &plan,
                &mut none.clone(),
                &mut context.clone(),
                &limits,
                RowPrefix(None),
            )
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert_eq!(
                err.to_string(),
                format!("context.amount: {name} is not a value")
            );

            let weights = v1::DoubleList {
                values: vec![0.5, d],
            };
            let context = context_of(&[
                ("amount", wire(Kind::DoubleValue(1.0))),
                ("weights", wire(Kind::DoubleListValue(weights))),
            ]);
            let err = row_input(
                &plan,
                &mut none.clone(),
                &mut context.clone(),
                &limits,
                RowPrefix(Some(1)),
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("rows[1].context.weights: element 1 is {name}, which is not a value")
            );
        }
        let context = context_of(&[("amount", wire(Kind::DoubleValue(-0.0)))]);
        assert!(
            row_input(
                &plan,
                &mut none.clone(),
                &mut context.clone(),
                &limits,
                RowPrefix(None)
            )
            .is_ok()
        );
    }
}
