//! Applying events to the store: read each entity's tiles, apply with the [`aggregation`] code,
//! write back with a compare-and-set, and redo what another writer got to first. Used by
//! `feature-gateway ingest` and by `PushEvents`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use aggregation::{EntityState, Event, Millis, ViewDef, state::VERSION_FIELD};
use fetcher_api::{EntityKey, FetchError};
use futures::future::join_all;

use crate::store::{TileStore, entity_key};

/// A view as the stream source serves and writes it.
#[derive(Debug)]
pub struct StreamView {
    /// The aggregates.
    pub def: ViewDef,
    /// [`ViewDef::layout_hash`].
    pub layout: String,
    /// The time to live of an entity's hash: the longest tile retention.
    pub ttl_ms: Millis,
}

impl StreamView {
    /// Compiles the bookkeeping of `def`.
    pub fn new(def: ViewDef) -> StreamView {
        let layout = def.layout_hash();
        let ttl_ms = def
            .tile_sizes()
            .into_iter()
            .map(|size| def.retention(size))
            .max()
            .unwrap_or(0);
        StreamView {
            def,
            layout,
            ttl_ms,
        }
    }

    /// The store key of an entity.
    pub fn key(&self, prefix: &str, key: &EntityKey) -> String {
        entity_key(prefix, &self.def, &self.layout, key)
    }
}

/// An event to apply, with where it came from on the stream (for exactly-once replays).
#[derive(Clone, Debug, PartialEq)]
pub struct Positioned {
    pub event: Event,
    /// The partition and offset it was read at; `None` for pushed events.
    pub at: Option<(i32, i64)>,
}

/// What applying a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events applied to their tiles.
    pub applied: u64,
    /// Events skipped because their entity had applied them already (a replay).
    pub replayed: u64,
    /// Entities written.
    pub entities: u64,
    /// Writes redone because another writer changed the entity in between.
    pub conflicts: u64,
    /// Entities whose stored tiles did not decode and were started afresh.
    pub reset: u64,
}

/// Most attempts of one entity's compare-and-set before the batch fails (each failed attempt is
/// another writer's success, so this is reached only under pathological contention).
const MAX_ATTEMPTS: usize = 50;

/// Applies `events` of `view` to `store`, all or (on an error) some of them: a failed batch may
/// be applied again as a whole, events already applied being recognised by their position
/// (pushed events, which have none, would count twice).
pub async fn apply(
    store: &Arc<dyn TileStore>,
    prefix: &str,
    view: &StreamView,
    events: Vec<Positioned>,
    timeout: Duration,
) -> Result<Applied, FetchError> {
    let mut by_key: HashMap<EntityKey, Vec<Positioned>> = HashMap::new();
    let mut order = Vec::new();
    for p in events {
        let list = by_key.entry(p.event.key.clone()).or_default();
        if list.is_empty() {
            order.push(p.event.key.clone());
        }
        list.push(p);
    }
    let mut report = Applied::default();
    let mut pending: Vec<EntityKey> = order;
    for _ in 0..MAX_ATTEMPTS {
        if pending.is_empty() {
            return Ok(report);
        }
        let keys: Vec<String> = pending.iter().map(|k| view.key(prefix, k)).collect();
        let stored = store.read(&keys, timeout).await?;
        let mut writes = Vec::with_capacity(pending.len());
        for ((entity, key), fields) in pending.iter().zip(&keys).zip(stored) {
            let (mut state, reset) = decode(&view.def, &fields);
            let mut applied = 0;
            let mut newest = state.newest_tile().unwrap_or(Millis::MIN);
            for p in &by_key[entity] {
                if let Some((partition, offset)) = p.at {
                    if state.seen(partition, offset) {
                        report.replayed += 1;
                        continue;
                    }
                    state.mark(partition, offset);
                }
                state.apply(&view.def, &p.event);
                newest = newest.max(p.event.time);
                applied += 1;
            }
            state.expire(&view.def, newest);
            let mut changes = state.take_changes();
            let was_reset = reset.is_some();
            if let Some(stale) = reset {
                let set: std::collections::HashSet<&str> =
                    changes.set.iter().map(|(f, _)| f.as_str()).collect();
                let stale: Vec<String> = stale
                    .into_iter()
                    .filter(|f| !set.contains(f.as_str()))
                    .collect();
                changes.delete.extend(stale);
            }
            if changes.is_empty() {
                continue;
            }
            writes.push((
                entity.clone(),
                key.clone(),
                state.version,
                changes,
                applied,
                was_reset,
            ));
        }
        let answers = join_all(writes.iter().map(|(_, key, version, changes, _, _)| {
            store.write(key, *version, changes, view.ttl_ms, timeout)
        }))
        .await;
        let mut again = Vec::new();
        for ((entity, _, _, _, applied, was_reset), answer) in writes.into_iter().zip(answers) {
            if answer? {
                report.applied += applied;
                report.entities += 1;
                report.reset += u64::from(was_reset);
            } else {
                report.conflicts += 1;
                again.push(entity);
            }
        }
        pending = again;
    }
    Err(FetchError::unavailable(format!(
        "view `{}`: {} entities changed under every one of {MAX_ATTEMPTS} writes",
        view.def.name,
        pending.len()
    )))
}

/// An entity's state from its stored fields. Tiles that do not decode (damage, a bug) would
/// block every later write of the entity: it is started afresh at its stored version, the
/// fields to delete returned beside, and an error logged.
pub fn decode(def: &ViewDef, fields: &[(String, Vec<u8>)]) -> (EntityState, Option<Vec<String>>) {
    match EntityState::from_fields(def, fields.iter().map(|(f, v)| (f.as_str(), v.as_slice()))) {
        Ok(state) => (state, None),
        Err(e) => {
            tracing::error!(view = %def.name, error = %e, "an entity's tiles do not decode; it starts afresh");
            let version = fields
                .iter()
                .find(|(f, _)| f == VERSION_FIELD)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            let mut state = EntityState::new();
            state.version = version;
            // Offsets are kept (they decode on their own or not at all): a replay stays a no-op.
            let stale = fields
                .iter()
                .map(|(f, _)| f.clone())
                .filter(|f| f.starts_with("t:"))
                .collect();
            (state, Some(stale))
        }
    }
}
