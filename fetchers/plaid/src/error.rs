//! Plaid's error model, classified for the gateway.
//!
//! # Contract
//! Plaid answers every failure with `{"error_type", "error_code", "error_message", ...}`, and
//! its documentation says to branch on `error_code`, not on the HTTP status (institution errors
//! come as 400 yet are transient). [`classify`] maps every code of
//! `shared/docs/plaid-contract.md` (and, for codes it does not list, the `error_type`, then the
//! status) to:
//! - an [`ErrorClass`] and whether retrying soon may help ([`Classified::retryable`]);
//! - a [`Scope`]: does the failure concern the whole call (our credentials, our request, Plaid
//!   itself, a rate limit, a bank that is down) and so fail the batch, where the gateway's retry,
//!   timeout and circuit-breaker layers see it; or only the one Item (its login must be
//!   repaired, its token is unknown), and so only that key's row.
//!
//! | `error_type: error_code` | class | retry | scope |
//! |---|---|---|---|
//! | `INVALID_REQUEST: *` (`MISSING_FIELDS`, `INVALID_FIELD`, `INVALID_BODY`, `UNKNOWN_FIELDS`, `INVALID_HEADERS`, `NOT_FOUND`) | rejected | no | batch |
//! | `INVALID_INPUT: INVALID_API_KEYS` (and other `INVALID_INPUT`) | rejected | no | batch |
//! | `INVALID_INPUT: INVALID_ACCESS_TOKEN` | rejected | no | row: not found |
//! | `INVALID_INPUT: INVALID_ACCOUNT_ID` | rejected | no | row: cell errors |
//! | `ITEM_ERROR: ITEM_NOT_FOUND` | rejected | no | row: not found |
//! | `ITEM_ERROR: ITEM_LOGIN_REQUIRED`, `NO_ACCOUNTS`, other | rejected | no (user must re-link) | row: cell errors |
//! | `ITEM_ERROR: PRODUCT_NOT_READY` | unavailable | not now (minutes) | row: cell errors |
//! | `INSTITUTION_ERROR: INSTITUTION_DOWN`, `INSTITUTION_NOT_RESPONDING`, other | unavailable | yes (despite the 400) | batch |
//! | `RATE_LIMIT_EXCEEDED: *` | rate limited | no (back off; counted by the gateway) | batch |
//! | `API_ERROR: INTERNAL_SERVER_ERROR`, `PLANNED_MAINTENANCE`, other | unavailable | yes | batch |
//! | `TRANSACTIONS_ERROR: TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION` | unavailable | yes (the sync loop restarts first) | batch |
//! | unknown type: 429 / 5xx / other | rate limited / unavailable / rejected | no / yes / no | batch |
//!
//! The `/item/get` view reads Item-scoped errors as data (`has_error`, `error_code`) instead;
//! see [`crate::features`].

use fetcher_api::{ErrorClass, FetchError};
use serde::Deserialize;

/// A Plaid error body (the fields the fetcher reads; Plaid sends more).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct PlaidErrorBody {
    #[serde(default)]
    pub error_type: String,
    #[serde(default)]
    pub error_code: String,
    /// Plaid's text. Logged at debug level only: it is Plaid's, not ours, and never holds our
    /// credentials, but it is long.
    #[serde(default)]
    pub error_message: String,
    /// Plaid's id of the failed call, for its support.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// What a failure concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole call: fail the batch.
    Batch,
    /// One Item, whose row reads as not found.
    RowNotFound,
    /// One Item, whose row's cells fail with the code.
    RowCells,
}

/// How the gateway should see a Plaid error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classified {
    pub class: ErrorClass,
    /// Whether the same call may succeed if made again within the request.
    pub retryable: bool,
    pub scope: Scope,
}

const fn c(class: ErrorClass, retryable: bool, scope: Scope) -> Classified {
    Classified {
        class,
        retryable,
        scope,
    }
}

/// Classifies an error by `error_code`, then `error_type`, then HTTP `status`.
pub fn classify(error_type: &str, error_code: &str, status: u16) -> Classified {
    use ErrorClass::{RateLimited, Rejected, Unavailable};
    use Scope::{Batch, RowCells, RowNotFound};
    match (error_type, error_code) {
        (_, "INVALID_ACCESS_TOKEN" | "ITEM_NOT_FOUND") => c(Rejected, false, RowNotFound),
        (_, "INVALID_ACCOUNT_ID") => c(Rejected, false, RowCells),
        (_, "ITEM_LOGIN_REQUIRED" | "NO_ACCOUNTS") => c(Rejected, false, RowCells),
        // Plaid is still extracting: minutes away, so not worth retrying inside a request.
        (_, "PRODUCT_NOT_READY") => c(Unavailable, false, RowCells),
        (_, "INSTITUTION_DOWN" | "INSTITUTION_NOT_RESPONDING") => c(Unavailable, true, Batch),
        (_, "INTERNAL_SERVER_ERROR" | "PLANNED_MAINTENANCE") => c(Unavailable, true, Batch),
        (_, "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION") => c(Unavailable, true, Batch),
        (_, "INVALID_API_KEYS") => c(Rejected, false, Batch),
        ("RATE_LIMIT_EXCEEDED", _) => c(RateLimited, false, Batch),
        ("INSTITUTION_ERROR" | "API_ERROR", _) => c(Unavailable, true, Batch),
        ("ITEM_ERROR", _) => c(Rejected, false, RowCells),
        ("INVALID_REQUEST" | "INVALID_INPUT", _) => c(Rejected, false, Batch),
        _ => match status {
            429 => c(RateLimited, false, Batch),
            500..=599 => c(Unavailable, true, Batch),
            _ => c(Rejected, false, Batch),
        },
    }
}

/// A failed Plaid call: its classification and a message that names the view, the endpoint and
/// the code, never a credential or an access token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub classified: Classified,
    /// The Plaid `error_code`, if Plaid answered with one.
    pub code: Option<String>,
    pub message: String,
}

impl CallError {
    /// A Plaid error answer.
    pub fn plaid(view: &str, path: &str, status: u16, body: &PlaidErrorBody) -> CallError {
        let classified = classify(&body.error_type, &body.error_code, status);
        let request_id = body
            .request_id
            .as_deref()
            .map(|id| format!(", request_id {id}"))
            .unwrap_or_default();
        CallError {
            classified,
            code: Some(body.error_code.clone()),
            message: format!(
                "view `{view}`: plaid {path} answered {status} {}: {}{request_id}",
                body.error_type, body.error_code
            ),
        }
    }

    /// A failure that is not a Plaid error answer (transport, deadline, bad body).
    pub fn other(error: FetchError) -> CallError {
        CallError {
            classified: Classified {
                class: error.class(),
                retryable: error.retryable(),
                scope: Scope::Batch,
            },
            code: None,
            message: error.message().to_owned(),
        }
    }

    /// Whether Plaid answered with `code`.
    pub fn is_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// The batch failure the gateway sees.
    pub fn into_fetch_error(self) -> FetchError {
        FetchError::new(self.classified.class, self.message)
            .with_retryable(self.classified.retryable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of the contract's error table, plus unknown codes.
    #[test]
    fn every_documented_code_is_classified_as_the_contract_says() {
        use ErrorClass::*;
        use Scope::*;
        let table: &[(&str, &str, u16, ErrorClass, bool, Scope)] = &[
            (
                "INVALID_REQUEST",
                "MISSING_FIELDS",
                400,
                Rejected,
                false,
                Batch,
            ),
            (
                "INVALID_REQUEST",
                "INVALID_FIELD",
                400,
                Rejected,
                false,
                Batch,
            ),
            (
                "INVALID_REQUEST",
                "INVALID_BODY",
                400,
                Rejected,
                false,
                Batch,
            ),
            (
                "INVALID_REQUEST",
                "UNKNOWN_FIELDS",
                400,
                Rejected,
                false,
                Batch,
            ),
            (
                "INVALID_REQUEST",
                "INVALID_HEADERS",
                400,
                Rejected,
                false,
                Batch,
            ),
            ("INVALID_REQUEST", "NOT_FOUND", 404, Rejected, false, Batch),
            (
                "INVALID_INPUT",
                "INVALID_API_KEYS",
                400,
                Rejected,
                false,
                Batch,
            ),
            (
                "INVALID_INPUT",
                "INVALID_ACCESS_TOKEN",
                400,
                Rejected,
                false,
                RowNotFound,
            ),
            (
                "INVALID_INPUT",
                "INVALID_ACCOUNT_ID",
                400,
                Rejected,
                false,
                RowCells,
            ),
            (
                "ITEM_ERROR",
                "ITEM_LOGIN_REQUIRED",
                400,
                Rejected,
                false,
                RowCells,
            ),
            (
                "ITEM_ERROR",
                "ITEM_NOT_FOUND",
                400,
                Rejected,
                false,
                RowNotFound,
            ),
            ("ITEM_ERROR", "NO_ACCOUNTS", 400, Rejected, false, RowCells),
            (
                "ITEM_ERROR",
                "PRODUCT_NOT_READY",
                400,
                Unavailable,
                false,
                RowCells,
            ),
            (
                "ITEM_ERROR",
                "ACCESS_NOT_GRANTED",
                400,
                Rejected,
                false,
                RowCells,
            ),
            (
                "INSTITUTION_ERROR",
                "INSTITUTION_DOWN",
                400,
                Unavailable,
                true,
                Batch,
            ),
            (
                "INSTITUTION_ERROR",
                "INSTITUTION_NOT_RESPONDING",
                400,
                Unavailable,
                true,
                Batch,
            ),
            (
                "INSTITUTION_ERROR",
                "INSTITUTION_NO_LONGER_SUPPORTED",
                400,
                Unavailable,
                true,
                Batch,
            ),
            (
                "RATE_LIMIT_EXCEEDED",
                "BALANCE_LIMIT",
                429,
                RateLimited,
                false,
                Batch,
            ),
            (
                "RATE_LIMIT_EXCEEDED",
                "ACCOUNTS_BALANCE_GET_LIMIT",
                429,
                RateLimited,
                false,
                Batch,
            ),
            (
                "RATE_LIMIT_EXCEEDED",
                "TRANSACTIONS_SYNC_LIMIT",
                429,
                RateLimited,
                false,
                Batch,
            ),
            (
                "RATE_LIMIT_EXCEEDED",
                "ITEM_GET_LIMIT",
                429,
                RateLimited,
                false,
                Batch,
            ),
            (
                "RATE_LIMIT_EXCEEDED",
                "SOME_NEW_LIMIT",
                429,
                RateLimited,
                false,
                Batch,
            ),
            (
                "API_ERROR",
                "INTERNAL_SERVER_ERROR",
                500,
                Unavailable,
                true,
                Batch,
            ),
            (
                "API_ERROR",
                "PLANNED_MAINTENANCE",
                503,
                Unavailable,
                true,
                Batch,
            ),
            ("API_ERROR", "SOMETHING_NEW", 500, Unavailable, true, Batch),
            (
                "TRANSACTIONS_ERROR",
                "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
                400,
                Unavailable,
                true,
                Batch,
            ),
            ("", "", 429, RateLimited, false, Batch),
            ("", "", 502, Unavailable, true, Batch),
            ("NEW_TYPE", "NEW_CODE", 400, Rejected, false, Batch),
        ];
        for (ty, code, status, class, retryable, scope) in table {
            assert_eq!(
                classify(ty, code, *status),
                Classified {
                    class: *class,
                    retryable: *retryable,
                    scope: *scope
                },
                "{ty}: {code} ({status})"
            );
        }
    }

    #[test]
    fn call_errors_name_the_code_and_become_fetch_errors() {
        let body: PlaidErrorBody = serde_json::from_str(
            r#"{"error_type":"INSTITUTION_ERROR","error_code":"INSTITUTION_DOWN",
                "error_message":"down","display_message":null,"request_id":"r1"}"#,
        )
        .expect("an error body");
        let e = CallError::plaid("bal", "/accounts/balance/get", 400, &body);
        assert!(e.is_code("INSTITUTION_DOWN"));
        let f = e.into_fetch_error();
        assert_eq!(f.class(), ErrorClass::Unavailable);
        assert!(
            f.retryable(),
            "institution errors are transient despite 400"
        );
        assert_eq!(
            f.message(),
            "view `bal`: plaid /accounts/balance/get answered 400 INSTITUTION_ERROR: \
             INSTITUTION_DOWN, request_id r1"
        );
    }
}
