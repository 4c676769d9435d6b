//! Applying events to the store: read each entity's tiles (or take them from a [`StateCache`]),
//! apply with the [`aggregation`] code, write back with a compare-and-set, and redo what another
//! writer got to first. Used by `feature-gateway ingest` and by `PushEvents`.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use aggregation::{EntityState, Event, Millis, ViewDef, state::VERSION_FIELD};
use fetcher_api::{EntityKey, FetchError};

use crate::store::{Fields, TileStore, Write, entity_key, named};

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

/// Entity states a writer keeps from one batch to the next (ingest keeps one per partition and
/// view), each at the version it was read or written at, so an entity written again soon is not
/// read again. Nothing cached is trusted beyond the compare-and-set that checks its version: a
/// write refused because the version moved (another writer; a hash that expired) drops the
/// state and the entity is read afresh. Bounded by the tiles held, the least recently used
/// entities leaving first.
pub struct StateCache {
    states: Option<quick_cache::unsync::Cache<String, EntityState, TileWeight>>,
}

impl fmt::Debug for StateCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateCache")
            .field("entities", &self.states.as_ref().map_or(0, |s| s.len()))
            .finish()
    }
}

/// An entity's weight in a [`StateCache`]: its tiles, and one for the rest.
#[derive(Clone, Copy, Debug)]
struct TileWeight;

impl quick_cache::Weighter<String, EntityState> for TileWeight {
    fn weight(&self, _key: &String, state: &EntityState) -> u64 {
        state.tiles.len() as u64 + 1
    }
}

impl StateCache {
    /// A cache of up to about `max_tiles` tiles (0: none, every entity read each time).
    pub fn new(max_tiles: u64) -> StateCache {
        StateCache {
            states: (max_tiles > 0).then(|| {
                quick_cache::unsync::Cache::with_weighter(
                    usize::try_from(max_tiles / 4).unwrap_or(usize::MAX),
                    max_tiles,
                    TileWeight,
                )
            }),
        }
    }

    /// Entities held.
    pub fn len(&self) -> usize {
        self.states.as_ref().map_or(0, |s| s.len())
    }

    /// Whether no entity is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&mut self, key: &str) -> Option<EntityState> {
        self.states.as_mut()?.remove(key).map(|(_, state)| state)
    }

    fn put(&mut self, key: String, state: EntityState) {
        if let Some(states) = &mut self.states {
            states.insert(key, state);
        }
    }
}

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
    apply_cached(
        store,
        prefix,
        view,
        &events,
        timeout,
        &mut StateCache::new(0),
    )
    .await
}

/// [`apply`], reading only the entities `cache` does not hold, and keeping in it the states
/// written.
pub async fn apply_cached(
    store: &Arc<dyn TileStore>,
    prefix: &str,
    view: &StreamView,
    events: &[Positioned],
    timeout: Duration,
    cache: &mut StateCache,
) -> Result<Applied, FetchError> {
    let mut by_key: HashMap<&EntityKey, Vec<&Positioned>> = HashMap::new();
    let mut order = Vec::new();
    for p in events {
        let list = by_key.entry(&p.event.key).or_default();
        if list.is_empty() {
            order.push(&p.event.key);
        }
        list.push(p);
    }
    let mut report = Applied::default();
    let mut pending: Vec<(&EntityKey, String)> = order
        .into_iter()
        .map(|k| (k, view.key(prefix, k)))
        .collect();
    for _ in 0..MAX_ATTEMPTS {
        if pending.is_empty() {
            return Ok(report);
        }
        // Cached states as they are; the others read (those refused last time among them).
        let mut states: Vec<Option<(EntityState, Option<Vec<String>>)>> = pending
            .iter()
            .map(|(_, key)| cache.take(key).map(|s| (s, None)))
            .collect();
        let missing: Vec<String> = pending
            .iter()
            .zip(&states)
            .filter(|(_, s)| s.is_none())
            .map(|((_, key), _)| key.clone())
            .collect();
        if !missing.is_empty() {
            let mut stored = store.read(&missing, timeout).await?.into_iter();
            for slot in states.iter_mut().filter(|s| s.is_none()) {
                let fields = stored.next().unwrap_or_default();
                *slot = Some(decode(&view.def, &fields));
            }
        }
        let mut writes = Vec::with_capacity(pending.len());
        for ((entity, key), slot) in pending.iter().zip(states) {
            let Some((mut state, reset)) = slot else {
                continue;
            };
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
                cache.put(key.clone(), state);
                continue;
            }
            writes.push((entity, key, state, changes, applied, was_reset));
        }
        let answers = store
            .write_many(
                &writes
                    .iter()
                    .map(|(_, key, state, changes, _, _)| Write {
                        key,
                        version: state.version,
                        changes,
                        ttl_ms: view.ttl_ms,
                    })
                    .collect::<Vec<_>>(),
                timeout,
            )
            .await?;
        let mut again = Vec::new();
        for ((entity, key, mut state, _, applied, was_reset), written) in
            writes.into_iter().zip(answers)
        {
            if written {
                report.applied += applied;
                report.entities += 1;
                report.reset += u64::from(was_reset);
                state.version += 1;
                cache.put(key.clone(), state);
            } else {
                report.conflicts += 1;
                again.push((*entity, key.clone()));
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
pub fn decode(def: &ViewDef, fields: &Fields) -> (EntityState, Option<Vec<String>>) {
    match EntityState::from_fields(def, named(fields)) {
        Ok(state) => (state, None),
        Err(e) => {
            tracing::error!(view = %def.name, error = %e, "an entity's tiles do not decode; it starts afresh");
            let version = named(fields)
                .find(|(f, _)| *f == VERSION_FIELD)
                .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            let mut state = EntityState::new();
            state.version = version;
            // Offsets are kept (they decode on their own or not at all): a replay stays a no-op.
            let stale = named(fields)
                .filter(|(f, _)| f.starts_with("t:"))
                .map(|(f, _)| f.to_owned())
                .collect();
            (state, Some(stale))
        }
    }
}
