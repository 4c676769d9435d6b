//! Validating a request's inputs against a plan, and the one table from request errors to gRPC
//! status codes.
//!
//! Only a bad request is an error: an unknown feature service (NOT_FOUND), a missing or mistyped
//! entity key, a mistyped context value, or a request over a limit (INVALID_ARGUMENT), each with
//! a message naming the field. What the sources do never makes a request fail.

use std::collections::BTreeMap;

use fetcher_api::{FeatureType, KeyPart, Value};
use proto::{v1, wire_type_name};

use crate::{config::LimitsConfig, executor::RowInput, plan::Plan};

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

    /// The gRPC code, for metrics.
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

/// Checks one row's entities and context against `plan` and `limits`. `prefix` is prepended to
/// field names (`rows[3].` in a batch).
pub fn row_input(
    plan: &Plan,
    entities: &BTreeMap<String, v1::Value>,
    context: &BTreeMap<String, v1::Value>,
    limits: &LimitsConfig,
    prefix: &str,
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
        let wire = entities.get(&input.name).ok_or_else(|| {
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
        let value = match context.get(&input.name) {
            None => None,
            Some(wire) => {
                let field = || format!("{prefix}context.{}", input.name);
                let value = input.ty.conform(Value::from(wire.clone())).map_err(|_| {
                    RequestError::invalid(
                        field(),
                        format!("expected {}, got {}", input.ty, wire_type_name(wire)),
                    )
                })?;
                if let Value::String(s) = &value {
                    check_len(s, limits).map_err(|m| RequestError::invalid(field(), m))?;
                }
                Some(value)
            }
        };
        row.context.push(value);
    }
    Ok(row)
}

fn key_part(wire: &v1::Value, ty: FeatureType) -> Result<KeyPart, String> {
    use v1::value::Kind;
    match (&wire.kind, ty) {
        (Some(Kind::Int64Value(i)), FeatureType::Int64) => Ok(KeyPart::Int64(*i)),
        (Some(Kind::StringValue(s)), FeatureType::String) => Ok(KeyPart::String(s.clone())),
        _ => Err(format!("expected {ty}, got {}", wire_type_name(wire))),
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

/// Parses a `grpc-timeout` header value (`"100m"`: an ASCII integer of at most 8 digits and a
/// unit: H, M, S, m, u, n).
pub fn parse_grpc_timeout(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    // The unit is one ASCII byte; a multi-byte last character is no unit (and no boundary).
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("-1m"), None);
    }

    /// Found by `fuzz/` (target `request`): a value ending in a multi-byte character split
    /// inside it and panicked.
    #[test]
    fn grpc_timeout_ending_in_a_multibyte_character_is_refused() {
        assert_eq!(parse_grpc_timeout("10.01\u{2}10.0\u{3d2}"), None);
        assert_eq!(parse_grpc_timeout("1\u{e9}"), None);
        assert_eq!(parse_grpc_timeout("\u{e9}"), None);
    }

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
}
