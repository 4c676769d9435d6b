//! A fake internal record API: JSON documents a test loads, served by id, one at a time or in
//! batches. It is what an `http` source meets when the data must be of the test's choosing
//! (the fetcher conformance suite's dataset: nulls, mistyped fields, keys full of URL syntax),
//! where [`crate::internal`] serves only seeded data.
//!
//! # Contract
//! - `GET /v1/records/{collection}/{id}` -> the document loaded under `id`, exactly as loaded;
//!   404 with a JSON error body when the collection holds none. `id` is one path segment,
//!   percent-decoded, so an id may hold `/`, `?`, `#` or `%` when encoded.
//! - `POST /v1/records/{collection}` with `{"ids": [...]}` (at most [`MAX_BATCH`]) ->
//!   `{"results": [...]}`: the document of each id that has one, in request order, with its
//!   `id` field set to the id; ids without a document (and ids that are not strings) are left
//!   out, as the merchant-risk batch endpoint does. A malformed body is a 400.
//! - Documents are loaded with [`Records::put`] (through [`crate::FakeServer::records`]); a
//!   document put under an id already held replaces it. [`crate::FakeServer::reset`] clears
//!   faults, not documents: they are data, like the seeded records of the other fakes.
//!
//! Every call goes through the route's injected faults first.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Map, Value, json};

use crate::{Shared, json_error};

/// `GET /v1/records/{collection}/{id}`.
pub const RECORD_GET: &str = "record_get";
/// `POST /v1/records/{collection}`.
pub const RECORD_BATCH: &str = "record_batch";
/// The fault-injection route names of this module.
pub const ROUTES: [&str; 2] = [RECORD_GET, RECORD_BATCH];
/// The largest batch `POST /v1/records/{collection}` accepts.
pub const MAX_BATCH: usize = 1000;

/// One collection: documents by id.
type Collection = HashMap<String, Map<String, Value>>;

/// The documents of every collection (reach them with [`crate::FakeServer::records`]). A
/// mutex guards them, never held across an `.await`.
#[derive(Debug, Default)]
pub struct Records {
    collections: Mutex<HashMap<String, Collection>>,
}

impl Records {
    fn collections(&self) -> MutexGuard<'_, HashMap<String, Collection>> {
        // Each method changes the map in one step, so a poisoned lock is still consistent.
        self.collections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `document` under `id` in `collection`, replacing what was there.
    pub fn put(&self, collection: &str, id: &str, document: Map<String, Value>) {
        self.collections()
            .entry(collection.to_owned())
            .or_default()
            .insert(id.to_owned(), document);
    }

    /// The document under `id` in `collection`, if any.
    pub fn get(&self, collection: &str, id: &str) -> Option<Map<String, Value>> {
        self.collections().get(collection)?.get(id).cloned()
    }
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/records/{collection}/{id}", get(record))
        .route("/v1/records/{collection}", post(batch))
}

async fn record(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Path((collection, id)): Path<(String, String)>,
) -> Response {
    if let Err(injected) = shared.enter(RECORD_GET, &uri, 1).await {
        return injected;
    }
    match shared.records.get(&collection, &id) {
        Some(document) => Json(document).into_response(),
        None => {
            shared.count_not_found(RECORD_GET, 1);
            json_error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no record `{id}` in `{collection}`"),
            )
        }
    }
}

async fn batch(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    Path(collection): Path<String>,
    body: Bytes,
) -> Response {
    let request = match crate::batch_request(&shared, RECORD_BATCH, &uri, &body, MAX_BATCH).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let results: Vec<Value> = request
        .ids
        .iter()
        .filter_map(|id| {
            let id = id.as_str()?;
            let mut document = shared.records.get(&collection, id)?;
            document.insert("id".into(), json!(id));
            Some(Value::Object(document))
        })
        .collect();
    shared.count_not_found(RECORD_BATCH, (request.ids.len() - results.len()) as u64);
    Json(json!({ "results": results })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_held_per_collection_and_replaced_by_id() {
        let records = Records::default();
        let doc = |n: i64| {
            let mut map = Map::new();
            map.insert("n".into(), json!(n));
            map
        };
        records.put("a", "x/y?z", doc(1));
        records.put("a", "x/y?z", doc(2));
        records.put("b", "x/y?z", doc(3));
        assert_eq!(records.get("a", "x/y?z"), Some(doc(2)));
        assert_eq!(records.get("b", "x/y?z"), Some(doc(3)));
        assert_eq!(records.get("a", "other"), None);
        assert_eq!(records.get("c", "x/y?z"), None);
    }
}
