//! Fake internal APIs of other teams: a device-reputation service and a merchant-risk service.
//!
//! # Contract
//! - `GET /v1/devices/{device_id}/reputation` -> `{"device_id", "risk_score": f64,
//!   "is_emulator": bool, "accounts_seen_30d": i64, "first_seen": RFC 3339, "tags": [string]}`.
//! - `GET /v1/merchants/{merchant_id}/risk` -> `{"merchant_id", "risk_tier", "mcc",
//!   "chargeback_rate": f64, "monthly_volume_usd": f64, "scores": {"fraud", "credit"},
//!   "updated_at": RFC 3339}`.
//! - `POST /v1/merchants/risk:batch` with `{"ids": [...]}` (at most [`MAX_BATCH`]) ->
//!   `{"results": [{"id", ...the fields above}]}`, in request order, unknown ids left out.
//!
//! Device ids are `d_` and six digits, merchant ids `m_` and five; an id exists when its number
//! is below the population (merchants: below `min(population, 100000)`). Every field is derived
//! from the seed and the id alone ([`device_reputation`], [`merchant_risk`]), so tests can compute
//! the expected answer. Unknown ids get a 404 with a JSON error body; a malformed batch body a 400.
//! Every call goes through the route's injected faults first.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

use crate::{
    Shared, json_error,
    seeded::{SplitMix64, rfc3339, round},
};

/// `GET /v1/devices/{device_id}/reputation`.
pub const DEVICE_REPUTATION: &str = "device_reputation";
/// `GET /v1/merchants/{merchant_id}/risk`.
pub const MERCHANT_RISK: &str = "merchant_risk";
/// `POST /v1/merchants/risk:batch`.
pub const MERCHANT_RISK_BATCH: &str = "merchant_risk_batch";
/// The fault-injection route names of this module.
pub const ROUTES: [&str; 3] = [DEVICE_REPUTATION, MERCHANT_RISK, MERCHANT_RISK_BATCH];
/// The largest batch `POST /v1/merchants/risk:batch` accepts.
pub const MAX_BATCH: usize = 1000;

/// Merchant ids have five digits, so there are at most this many merchants.
const MERCHANT_ID_SPACE: u64 = 100_000;
/// 2025-01-01T00:00:00Z: generated timestamps lie before it, so they never depend on the clock.
const EPOCH_2025: i64 = 1_735_689_600;

/// The id of device number `n` (`d_000123`).
pub fn device_id(n: u64) -> String {
    format!("d_{n:06}")
}

/// The id of merchant number `n` (`m_00042`).
pub fn merchant_id(n: u64) -> String {
    format!("m_{n:05}")
}

/// The number in an id of the form `{prefix}` + exactly `digits` ASCII digits.
fn id_number(id: &str, prefix: &str, digits: usize) -> Option<u64> {
    let rest = id.strip_prefix(prefix)?;
    if rest.len() != digits || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The reputation record of `id`, or `None` if no such device exists.
pub fn device_reputation(seed: u64, population: u64, id: &str) -> Option<Value> {
    let n = id_number(id, "d_", 6).filter(|n| *n < population)?;
    let mut g = SplitMix64::for_entity(seed, "device", n);
    // Squaring skews risk towards zero, as real risk scores are.
    let risk = round(g.next_f64().powi(2), 4);
    let is_emulator = g.next_f64() < 0.03 + 0.3 * risk;
    // A Pareto-like tail: most devices see one account, a few see dozens.
    let accounts = (1.0 / (g.next_f64() + 0.02)).floor().clamp(1.0, 50.0) as i64;
    let first_seen = EPOCH_2025 - g.below(730 * 86_400) as i64;
    let tags: Vec<&str> = ["vpn", "tor", "rooted", "proxy", "new_os"]
        .into_iter()
        .filter(|_| g.next_f64() < 0.1)
        .collect();
    Some(json!({
        "device_id": id,
        "risk_score": risk,
        "is_emulator": is_emulator,
        "accounts_seen_30d": accounts,
        "first_seen": rfc3339(first_seen),
        "tags": tags,
    }))
}

/// The risk record of `id` (without its id), or `None` if no such merchant exists.
fn merchant_fields(seed: u64, population: u64, id: &str) -> Option<serde_json::Map<String, Value>> {
    let limit = population.min(MERCHANT_ID_SPACE);
    let n = id_number(id, "m_", 5).filter(|n| *n < limit)?;
    let mut g = SplitMix64::for_entity(seed, "merchant", n);
    let fraud = round(g.next_f64().powi(3), 4);
    let credit = round(g.next_f64(), 4);
    let tier = match fraud {
        f if f < 0.2 => "low",
        f if f < 0.6 => "medium",
        _ => "high",
    };
    let mccs = ["5411", "5812", "5999", "7995", "4829", "5732"];
    let mcc = mccs[g.below(mccs.len() as u64) as usize];
    let chargeback_rate = round(0.05 * fraud * g.next_f64(), 5);
    let volume = round((8.0 + 4.0 * g.next_f64()).exp(), 2);
    let updated_at = EPOCH_2025 - g.below(30 * 86_400) as i64;
    let Value::Object(fields) = json!({
        "risk_tier": tier,
        "mcc": mcc,
        "chargeback_rate": chargeback_rate,
        "monthly_volume_usd": volume,
        "scores": {"fraud": fraud, "credit": credit},
        "updated_at": rfc3339(updated_at),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    Some(fields)
}

/// The risk record of `id`, as `GET /v1/merchants/{id}/risk` serves it, or `None` if no such
/// merchant exists.
pub fn merchant_risk(seed: u64, population: u64, id: &str) -> Option<Value> {
    let mut fields = merchant_fields(seed, population, id)?;
    fields.insert("merchant_id".into(), json!(id));
    Some(Value::Object(fields))
}

/// One result of the batch endpoint: the merchant's fields under `id`.
fn merchant_batch_item(seed: u64, population: u64, id: &str) -> Option<Value> {
    let mut fields = merchant_fields(seed, population, id)?;
    fields.insert("id".into(), json!(id));
    Some(Value::Object(fields))
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/devices/{device_id}/reputation", get(device))
        .route("/v1/merchants/{merchant_id}/risk", get(merchant))
        .route("/v1/merchants/risk:batch", post(merchant_batch))
}

async fn device(State(shared): State<Arc<Shared>>, uri: Uri, Path(id): Path<String>) -> Response {
    if let Err(injected) = shared.enter(DEVICE_REPUTATION, &uri, 1).await {
        return injected;
    }
    match device_reputation(shared.seed, shared.population, &id) {
        Some(record) => Json(record).into_response(),
        None => {
            shared.count_not_found(DEVICE_REPUTATION, 1);
            json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no device `{id}`"),
            )
        }
    }
}

async fn merchant(State(shared): State<Arc<Shared>>, uri: Uri, Path(id): Path<String>) -> Response {
    if let Err(injected) = shared.enter(MERCHANT_RISK, &uri, 1).await {
        return injected;
    }
    match merchant_risk(shared.seed, shared.population, &id) {
        Some(record) => Json(record).into_response(),
        None => {
            shared.count_not_found(MERCHANT_RISK, 1);
            json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no merchant `{id}`"),
            )
        }
    }
}

async fn merchant_batch(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let request =
        match crate::batch_request(&shared, MERCHANT_RISK_BATCH, &uri, &body, MAX_BATCH).await {
            Ok(request) => request,
            Err(response) => return response,
        };
    let results: Vec<Value> = request
        .ids
        .iter()
        .filter_map(|id| merchant_batch_item(shared.seed, shared.population, id.as_str()?))
        .collect();
    shared.count_not_found(
        MERCHANT_RISK_BATCH,
        (request.ids.len() - results.len()) as u64,
    );
    Json(json!({ "results": results })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_the_documented_form_exist_up_to_the_population() {
        assert!(device_reputation(1, 100, &device_id(99)).is_some());
        assert!(device_reputation(1, 100, &device_id(100)).is_none());
        for bad in [
            "d_12",
            "d_0000001",
            "x_000001",
            "d_00000a",
            "d_-00001",
            "../d_000001",
        ] {
            assert!(device_reputation(1, 100, bad).is_none(), "{bad}");
        }
        assert!(merchant_risk(1, 1_000_000, "m_99999").is_some());
        assert!(merchant_risk(1, 10, "m_00010").is_none());
    }

    #[test]
    fn records_are_deterministic_typed_and_seed_dependent() {
        let a = device_reputation(7, 1000, "d_000042").expect("exists");
        assert_eq!(Some(&a), device_reputation(7, 1000, "d_000042").as_ref());
        assert_ne!(Some(&a), device_reputation(8, 1000, "d_000042").as_ref());
        assert_eq!(a["device_id"], "d_000042");
        assert!(
            a["risk_score"]
                .as_f64()
                .is_some_and(|r| (0.0..=1.0).contains(&r))
        );
        assert!(a["is_emulator"].is_boolean());
        assert!(
            a["accounts_seen_30d"]
                .as_i64()
                .is_some_and(|n| (1..=50).contains(&n))
        );
        assert!(
            a["first_seen"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 20)
        );
        let m = merchant_risk(7, 1000, "m_00042").expect("exists");
        assert_eq!(m["merchant_id"], "m_00042");
        assert!(m["scores"]["fraud"].as_f64().is_some());
        let item = merchant_batch_item(7, 1000, "m_00042").expect("exists");
        assert_eq!(item["id"], "m_00042");
        assert_eq!(item["scores"], m["scores"]);
    }
}
