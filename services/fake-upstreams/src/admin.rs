//! The admin API: fault injection and statistics over HTTP, for the binary and load-test scripts.
//!
//! - `POST /admin/faults` with a [`FaultPlan`] as JSON -> 200 `{"ok": true}`, or 400 with a JSON
//!   error naming the bad field (nothing applied).
//! - `GET /admin/stats` -> [`crate::Stats`] as JSON: per-route call counts.
//! - `POST /admin/reset` -> clears faults and statistics.
//!
//! Admin calls are not counted in the statistics. There is no authentication: the server
//! listens on loopback unless told otherwise.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::json;

use crate::{FaultPlan, Shared, json_error};

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/admin/faults", post(set_faults))
        .route("/admin/stats", get(stats))
        .route("/admin/reset", post(reset))
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let plan: FaultPlan = match serde_json::from_slice(&body) {
        Ok(plan) => plan,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid fault plan: {e}"),
            );
        }
    };
    match shared.apply(&plan) {
        Ok(()) => Json(json!({ "ok": true })).into_response(),
        Err(e) => json_error(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats()).into_response()
}

async fn reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.reset();
    Json(json!({ "ok": true })).into_response()
}
