//! The fake Plaid's admin API, beside the generic one (`/admin/faults`, `/admin/stats`,
//! `/admin/reset`, which also cover the Plaid routes' latency, hangs and call counts).
//!
//! - `POST /admin/plaid/items/{item_id}/state` with `{"state": "healthy" | "login_required" |
//!   "not_ready"}` -> `{"ok": true, "item_id", "state"}`; 404 for an unknown item.
//! - `POST /admin/plaid/items/{item_id}/mutate_transactions` -> the next sync page of a client
//!   mid-pagination fails with `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION`.
//! - `GET /admin/plaid/users/{user_index}` -> `{"user_index", "access_token", "item_id",
//!   "state"}`, so scripts outside Rust can find the seeded tokens.
//! - `POST /admin/plaid/faults` with a [`PlaidFaultPlan`] (Plaid-coded `fail_next`, rates).
//! - `POST /admin/plaid/rate_limits` with a [`RateLimitPlan`]; `GET` returns the limits in force.
//! - `GET /admin/plaid/stats` -> [`super::PlaidStats`].
//! - `POST /admin/plaid/items/{item_id}/balance` with `{"available": 1.0, "current": 2.0}`:
//!   the Item's checking account (its first) has these balances from now on.
//! - `POST /admin/plaid/webhook_url` with `{"url": "http://..." | null}`: where webhooks go.
//! - `POST /admin/plaid/items/{item_id}/webhook` with `{"webhook_type", "webhook_code", ...}`:
//!   sends that webhook (plus `item_id`, `environment`), signed now, to the webhook URL ->
//!   `{"ok": true, "status", "body", "sent"}` (what the receiver answered, what was sent);
//!   400 without a URL or a type/code, 502 when the receiver cannot be reached.
//! - `POST /admin/plaid/webhook_key/rotate` -> `{"ok": true, "kid"}`: sign with a new key.
//!
//! Bad bodies get a 400 naming the problem, with nothing applied. Admin calls are not counted.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use super::{ItemState, PlaidFaultPlan, RateLimitPlan};
use crate::{Shared, json_error};

pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/plaid/items/{item_id}/state", post(set_state))
        .route(
            "/admin/plaid/items/{item_id}/mutate_transactions",
            post(mutate),
        )
        .route("/admin/plaid/users/{user_index}", get(user))
        .route("/admin/plaid/faults", post(faults))
        .route("/admin/plaid/rate_limits", post(set_limits).get(limits))
        .route("/admin/plaid/stats", get(stats))
        .route("/admin/plaid/items/{item_id}/balance", post(set_balance))
        .route("/admin/plaid/items/{item_id}/webhook", post(send_webhook))
        .route("/admin/plaid/webhook_url", post(set_webhook_url))
        .route("/admin/plaid/webhook_key/rotate", post(rotate_key))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalanceBody {
    available: f64,
    current: f64,
}

async fn set_balance(
    State(shared): State<Arc<Shared>>,
    Path(item_id): Path<String>,
    body: Bytes,
) -> Response {
    let body: BalanceBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(format!(
                "body must be {{\"available\": NUMBER, \"current\": NUMBER}}: {e}"
            ));
        }
    };
    match shared
        .plaid
        .set_balance(&item_id, body.available, body.current)
    {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => not_found(e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UrlBody {
    url: Option<String>,
}

async fn set_webhook_url(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<UrlBody>(&body) {
        Ok(b) => {
            shared.plaid.set_webhook_url(b.url);
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => bad_request(format!("body must be {{\"url\": STRING | null}}: {e}")),
    }
}

async fn send_webhook(
    State(shared): State<Arc<Shared>>,
    Path(item_id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(fields)) => fields,
        _ => {
            return bad_request(
                "body must be a JSON object with webhook_type and webhook_code".into(),
            );
        }
    };
    if shared.plaid.item_state(&item_id).is_none() {
        return not_found(format!("unknown plaid item `{item_id}`"));
    }
    match shared.plaid.send_webhook(&item_id, fields).await {
        Ok(delivery) => Json(json!({
            "ok": true,
            "status": delivery.status,
            "body": delivery.body,
            "sent": delivery.sent,
        }))
        .into_response(),
        Err(e) if e.0.starts_with("cannot deliver") => {
            json_error(StatusCode::BAD_GATEWAY, "delivery_failed", e.to_string())
        }
        Err(e) => bad_request(e.to_string()),
    }
}

async fn rotate_key(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({"ok": true, "kid": shared.plaid.rotate_webhook_key()})).into_response()
}

fn bad_request(message: String) -> Response {
    json_error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: String) -> Response {
    json_error(StatusCode::NOT_FOUND, "not_found", message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateBody {
    state: ItemState,
}

async fn set_state(
    State(shared): State<Arc<Shared>>,
    Path(item_id): Path<String>,
    body: Bytes,
) -> Response {
    let body: StateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(format!(
                "body must be {{\"state\": \"healthy\" | \"login_required\" | \"not_ready\"}}: {e}"
            ));
        }
    };
    match shared.plaid.set_item_state(&item_id, body.state) {
        Ok(()) => {
            Json(json!({"ok": true, "item_id": item_id, "state": body.state})).into_response()
        }
        Err(e) => not_found(e.to_string()),
    }
}

async fn mutate(State(shared): State<Arc<Shared>>, Path(item_id): Path<String>) -> Response {
    match shared.plaid.mutate_transactions(&item_id) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => not_found(e.to_string()),
    }
}

async fn user(State(shared): State<Arc<Shared>>, Path(user_index): Path<u64>) -> Response {
    if user_index >= shared.population {
        return not_found(format!(
            "no plaid user {user_index} (population {})",
            shared.population
        ));
    }
    let item_id = shared.plaid.item_id(user_index);
    Json(json!({
        "user_index": user_index,
        "access_token": shared.plaid.access_token(user_index),
        "state": shared.plaid.item_state(&item_id),
        "item_id": item_id,
    }))
    .into_response()
}

async fn faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let plan: PlaidFaultPlan = match serde_json::from_slice(&body) {
        Ok(plan) => plan,
        Err(e) => return bad_request(format!("invalid plaid fault plan: {e}")),
    };
    match shared.plaid.apply_faults(&plan) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn set_limits(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let plan: RateLimitPlan = match serde_json::from_slice(&body) {
        Ok(plan) => plan,
        Err(e) => return bad_request(format!("invalid rate limit plan: {e}")),
    };
    match shared.plaid.set_rate_limits(&plan) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn limits(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.plaid.rate_limits()).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.plaid.stats()).into_response()
}
