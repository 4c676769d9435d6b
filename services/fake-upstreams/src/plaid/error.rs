//! Plaid's error model: one table of every error code the fake can answer with, its
//! `error_type`, its HTTP status and Plaid's message, and the exact error body.
//!
//! The body is always `{"error_type", "error_code", "error_message", "display_message": null,
//! "request_id", "causes": [], "documentation_url", "suggested_action": null}`, whatever the
//! code, because a client branches on `error_code` and must find every field present. Statuses
//! follow the contract's table: note that institution errors are 400 although they are transient,
//! which is exactly what a client must not misread.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

/// One known error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCode {
    /// `error_code`, e.g. `ITEM_LOGIN_REQUIRED`.
    pub code: &'static str,
    /// `error_type`, e.g. `ITEM_ERROR`.
    pub error_type: &'static str,
    /// The HTTP status Plaid answers it with.
    pub status: u16,
    /// Plaid's default `error_message` for it.
    pub message: &'static str,
}

const fn code(
    code: &'static str,
    error_type: &'static str,
    status: u16,
    message: &'static str,
) -> ErrorCode {
    ErrorCode {
        code,
        error_type,
        status,
        message,
    }
}

const RATE_MESSAGE: &str =
    "rate limit exceeded for attempts to access this item. please try again later";

/// Every error code the fake answers with, natural or injected.
pub const ERROR_CODES: &[ErrorCode] = &[
    code(
        "MISSING_FIELDS",
        "INVALID_REQUEST",
        400,
        "the following required fields are missing",
    ),
    code(
        "INVALID_FIELD",
        "INVALID_REQUEST",
        400,
        "a field has an invalid value",
    ),
    code(
        "INVALID_BODY",
        "INVALID_REQUEST",
        400,
        "body could not be parsed as JSON",
    ),
    code(
        "INVALID_HEADERS",
        "INVALID_REQUEST",
        400,
        "header Content-Type must be application/json",
    ),
    code(
        "UNKNOWN_FIELDS",
        "INVALID_REQUEST",
        400,
        "the following fields are not recognized by this endpoint",
    ),
    code("NOT_FOUND", "INVALID_REQUEST", 404, "not found"),
    code(
        "INVALID_API_KEYS",
        "INVALID_INPUT",
        400,
        "invalid client_id or secret provided",
    ),
    code(
        "INVALID_ACCESS_TOKEN",
        "INVALID_INPUT",
        400,
        "could not find matching access token",
    ),
    code(
        "INVALID_ACCOUNT_ID",
        "INVALID_INPUT",
        400,
        "one or more of the account IDs is invalid",
    ),
    code(
        "ITEM_LOGIN_REQUIRED",
        "ITEM_ERROR",
        400,
        "the login details of this item have changed (credentials, MFA, or required user action) \
         and a user login is required to update this information. use Link's update mode to \
         restore the item to a good state",
    ),
    code(
        "ITEM_NOT_FOUND",
        "ITEM_ERROR",
        400,
        "the Item you requested cannot be found. This Item does not exist, has been previously \
         removed via /item/remove, or has had access removed by the user.",
    ),
    code(
        "NO_ACCOUNTS",
        "ITEM_ERROR",
        400,
        "no valid accounts were found for this item",
    ),
    code(
        "PRODUCT_NOT_READY",
        "ITEM_ERROR",
        400,
        "the requested product is not yet ready. please provide a webhook or try the request \
         again later",
    ),
    code(
        "INSTITUTION_DOWN",
        "INSTITUTION_ERROR",
        400,
        "this institution is not currently responding to this request. please try again soon",
    ),
    code(
        "INSTITUTION_NOT_RESPONDING",
        "INSTITUTION_ERROR",
        400,
        "this institution is not currently responding to this request. please try again soon",
    ),
    code(
        "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
        "TRANSACTIONS_ERROR",
        400,
        "Underlying transaction data changed since last page was fetched. Please restart \
         pagination from last update.",
    ),
    code("ACCOUNTS_LIMIT", "RATE_LIMIT_EXCEEDED", 429, RATE_MESSAGE),
    code("BALANCE_LIMIT", "RATE_LIMIT_EXCEEDED", 429, RATE_MESSAGE),
    code(
        "ACCOUNTS_BALANCE_GET_LIMIT",
        "RATE_LIMIT_EXCEEDED",
        429,
        RATE_MESSAGE,
    ),
    code(
        "TRANSACTIONS_SYNC_LIMIT",
        "RATE_LIMIT_EXCEEDED",
        429,
        RATE_MESSAGE,
    ),
    code("IDENTITY_LIMIT", "RATE_LIMIT_EXCEEDED", 429, RATE_MESSAGE),
    code("AUTH_LIMIT", "RATE_LIMIT_EXCEEDED", 429, RATE_MESSAGE),
    code("ITEM_GET_LIMIT", "RATE_LIMIT_EXCEEDED", 429, RATE_MESSAGE),
    code("RATE_LIMIT", "RATE_LIMIT_EXCEEDED", 429, RATE_MESSAGE),
    code(
        "INTERNAL_SERVER_ERROR",
        "API_ERROR",
        500,
        "an unexpected error occurred",
    ),
    code(
        "PLANNED_MAINTENANCE",
        "API_ERROR",
        503,
        "the Plaid API is temporarily unavailable due to planned maintenance. visit \
         https://status.plaid.com/ for more information",
    ),
];

/// The table entry of `code`, if the fake knows it.
pub fn error_code(code: &str) -> Option<&'static ErrorCode> {
    ERROR_CODES.iter().find(|c| c.code == code)
}

/// An error answer of the fake Plaid: a known code and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaidError {
    pub code: &'static ErrorCode,
    pub message: String,
    /// The code's status, unless a generic injected fault asked for another.
    pub status: StatusCode,
}

impl PlaidError {
    /// `code` with Plaid's default message.
    ///
    /// # Panics
    /// On a code missing from [`ERROR_CODES`]: callers pass literals (checked against the
    /// table by a unit test of the `plaid` module) or codes validated when a fault was set.
    pub(crate) fn new(code: &str) -> PlaidError {
        let code = error_code(code).unwrap_or_else(|| panic!("unknown Plaid error code {code}"));
        PlaidError {
            code,
            message: code.message.to_owned(),
            status: StatusCode::from_u16(code.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// `code` with a message more specific than the default (e.g. naming the bad field).
    pub(crate) fn with_message(code: &str, message: impl Into<String>) -> PlaidError {
        PlaidError {
            message: message.into(),
            ..PlaidError::new(code)
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The exact Plaid error body.
    pub fn body(&self, request_id: &str) -> Value {
        json!({
            "error_type": self.code.error_type,
            "error_code": self.code.code,
            "error_message": self.message,
            "display_message": null,
            "request_id": request_id,
            "causes": [],
            "documentation_url": documentation_url(self.code),
            "suggested_action": null,
        })
    }

    /// The response: status and body. No `Retry-After`, even on a 429: Plaid documents none,
    /// and a client must not come to rely on one.
    pub fn into_response(self, request_id: &str) -> Response {
        (self.status(), Json(self.body(request_id))).into_response()
    }
}

/// Plaid's documentation page of a code, e.g.
/// `https://plaid.com/docs/errors/item/#item_login_required`.
fn documentation_url(code: &ErrorCode) -> String {
    let page = match code.error_type {
        "INVALID_REQUEST" => "invalid-request",
        "INVALID_INPUT" => "invalid-input",
        "ITEM_ERROR" => "item",
        "INSTITUTION_ERROR" => "institution",
        "TRANSACTIONS_ERROR" => "transactions",
        "RATE_LIMIT_EXCEEDED" => "rate-limit-exceeded",
        _ => "api",
    };
    format!(
        "https://plaid.com/docs/errors/{page}/#{}",
        code.code.to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_contract_statuses() {
        let status = |c: &str| error_code(c).map(|e| (e.error_type, e.status));
        assert_eq!(status("INVALID_BODY"), Some(("INVALID_REQUEST", 400)));
        assert_eq!(status("NOT_FOUND"), Some(("INVALID_REQUEST", 404)));
        assert_eq!(status("INVALID_API_KEYS"), Some(("INVALID_INPUT", 400)));
        assert_eq!(status("ITEM_LOGIN_REQUIRED"), Some(("ITEM_ERROR", 400)));
        assert_eq!(status("INSTITUTION_DOWN"), Some(("INSTITUTION_ERROR", 400)));
        assert_eq!(status("BALANCE_LIMIT"), Some(("RATE_LIMIT_EXCEEDED", 429)));
        assert_eq!(status("INTERNAL_SERVER_ERROR"), Some(("API_ERROR", 500)));
        assert_eq!(status("PLANNED_MAINTENANCE"), Some(("API_ERROR", 503)));
        assert_eq!(status("NOPE"), None);
        let mut codes: Vec<_> = ERROR_CODES.iter().map(|c| c.code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ERROR_CODES.len(), "codes are unique");
    }

    #[test]
    fn body_has_every_field() {
        let body = PlaidError::new("ITEM_LOGIN_REQUIRED").body("req1");
        let mut keys: Vec<&str> = body
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "causes",
                "display_message",
                "documentation_url",
                "error_code",
                "error_message",
                "error_type",
                "request_id",
                "suggested_action"
            ]
        );
        assert_eq!(
            body["documentation_url"],
            "https://plaid.com/docs/errors/item/#item_login_required"
        );
    }
}
