//! Validating a request's inputs against a plan, and the one table from request errors to gRPC
//! status codes.
//!
//! Only a bad request is an error: an unknown feature service (NOT_FOUND), a missing or mistyped
//! entity key, a mistyped context value, or a request over a limit (INVALID_ARGUMENT), each with
//! a message naming the field. What the sources do never makes a request fail.

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
}
