//! Point-in-time values from history: what each aggregate read at each time of a spine, computed
//! by the same [`EntityState`] code the online path stores and reads.

use std::collections::HashMap;

use fetcher_api::{EntityKey, Value};

use crate::{
    event::Event,
    spec::{Millis, ViewDef},
    state::EntityState,
};

/// A row of a spine: an entity key and the time its values are wanted at.
#[derive(Clone, Debug, PartialEq)]
pub struct SpineRow {
    pub key: EntityKey,
    pub time: Millis,
}

/// For each spine row (in the spine's order), every aggregate's value read at its time over the
/// events whose time is at or before it. Events may come in any order.
pub fn point_in_time(def: &ViewDef, events: &[Event], spine: &[SpineRow]) -> Vec<Vec<Value>> {
    let mut by_key: HashMap<&EntityKey, Vec<&Event>> = HashMap::new();
    for event in events {
        by_key.entry(&event.key).or_default().push(event);
    }
    for list in by_key.values_mut() {
        list.sort_by_key(|e| e.time);
    }
    let mut rows: HashMap<&EntityKey, Vec<usize>> = HashMap::new();
    for (i, row) in spine.iter().enumerate() {
        rows.entry(&row.key).or_default().push(i);
    }
    let mut out = vec![Vec::new(); spine.len()];
    let none = Vec::new();
    for (key, mut indexes) in rows {
        indexes.sort_by_key(|&i| spine[i].time);
        let events = by_key.get(key).unwrap_or(&none);
        let mut state = EntityState::new();
        let mut next = 0;
        for i in indexes {
            let at = spine[i].time;
            while next < events.len() && events[next].time <= at {
                state.apply(def, events[next]);
                next += 1;
            }
            out[i] = state.values(def, at);
        }
    }
    out
}

/// Every entity's tiles after all `events`, expired as of `now`: what `backfill --load` writes.
pub fn fold(def: &ViewDef, events: &[Event], now: Millis) -> HashMap<EntityKey, EntityState> {
    let mut states: HashMap<EntityKey, EntityState> = HashMap::new();
    for event in events {
        states
            .entry(event.key.clone())
            .or_default()
            .apply(def, event);
    }
    for state in states.values_mut() {
        state.expire(def, now);
    }
    states.retain(|_, s| !s.tiles.is_empty());
    states
}
