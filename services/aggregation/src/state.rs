//! One entity's tiles, as the store keeps them: [`EntityState`].
//!
//! In the store an entity is one hash (so all its tiles live in one Redis Cluster slot) with:
//! - `v`: a version, bumped by every write (writers compare and set it);
//! - `o:PARTITION`: the offset of the last event of that stream partition applied to it, so an
//!   event read again after a restart is recognised and skipped (exactly once in effect);
//! - `t:SIZE:START`: a tile, its size and start in milliseconds, holding the partial of every
//!   series of that tile size ([`crate::codec`]).

use std::collections::{BTreeMap, BTreeSet};

use fetcher_api::Value;

use crate::{
    codec::{self, DecodeError},
    event::Event,
    partial::Partial,
    spec::{Millis, ViewDef, tile_start},
    window,
};

/// The store's field holding the version.
pub const VERSION_FIELD: &str = "v";

/// A tile's place: its size, then its start.
pub type TileId = (Millis, Millis);

/// One entity's tiles and bookkeeping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityState {
    /// The version read from the store (0 for an entity not stored yet).
    pub version: u64,
    /// Per stream partition, the offset of the last event applied.
    pub offsets: BTreeMap<i32, i64>,
    /// The tiles, by size then start.
    pub tiles: BTreeMap<TileId, Vec<Partial>>,
    changed: BTreeSet<TileId>,
    removed: BTreeSet<TileId>,
}

/// What a write must change in the store: fields to set and fields to delete.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Fields and their new bytes (tiles, offsets).
    pub set: Vec<(String, Vec<u8>)>,
    /// Fields of expired tiles.
    pub delete: Vec<String>,
}

impl Changes {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.delete.is_empty()
    }
}

/// The store field of a tile.
pub fn tile_field((size, start): TileId) -> String {
    format!("t:{size}:{start}")
}

/// A tile's size and start from its store field, less the `t:` (`SIZE:START`).
pub fn parse_tile_field(id: &str) -> Result<TileId, DecodeError> {
    id.split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or(DecodeError("a tile field that is not `t:SIZE:START`"))
}

/// The store field of a partition's offset.
pub fn offset_field(partition: i32) -> String {
    format!("o:{partition}")
}

impl EntityState {
    /// An entity with no events.
    pub fn new() -> EntityState {
        EntityState::default()
    }

    /// Reads an entity from its store fields (a hash's fields and values). Tiles of a size the
    /// view no longer has are ignored; a tile that does not decode is an error.
    pub fn from_fields<'a>(
        def: &ViewDef,
        fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<EntityState, DecodeError> {
        let mut state = EntityState::new();
        for (name, bytes) in fields {
            let text = || std::str::from_utf8(bytes).ok();
            if name == VERSION_FIELD {
                state.version = text()
                    .and_then(|t| t.parse().ok())
                    .ok_or(DecodeError("a version that is not a number"))?;
            } else if let Some(partition) = name.strip_prefix("o:") {
                let partition = partition
                    .parse()
                    .map_err(|_| DecodeError("an offset field that is not a partition"))?;
                let offset = text()
                    .and_then(|t| t.parse().ok())
                    .ok_or(DecodeError("an offset that is not a number"))?;
                state.offsets.insert(partition, offset);
            } else if let Some(id) = name.strip_prefix("t:") {
                let (size, start) = parse_tile_field(id)?;
                if def.each_tile_size().any(|s| s == size) {
                    let partials = codec::decode(bytes, def.series_of(size).map(|(_, s)| s))?;
                    state.tiles.insert((size, start), partials);
                }
            }
        }
        Ok(state)
    }

    /// Whether the event at `offset` of `partition` was applied already.
    pub fn seen(&self, partition: i32, offset: i64) -> bool {
        self.offsets.get(&partition).is_some_and(|&o| offset <= o)
    }

    /// Records that the events of `partition` up to `offset` are applied.
    pub fn mark(&mut self, partition: i32, offset: i64) {
        let o = self.offsets.entry(partition).or_insert(offset);
        *o = (*o).max(offset);
    }

    /// Applies an event to the tile of each tile size holding its time.
    pub fn apply(&mut self, def: &ViewDef, event: &Event) {
        for size in def.each_tile_size() {
            let id = (size, tile_start(event.time, size));
            let tile = self.tiles.entry(id).or_insert_with(|| {
                def.series_of(size)
                    .map(|(_, s)| Partial::empty(s))
                    .collect()
            });
            for (partial, (index, series)) in tile.iter_mut().zip(def.series_of(size)) {
                partial.add(series, event.time, event.values[index].as_ref());
            }
            self.changed.insert(id);
            self.removed.remove(&id);
        }
    }

    /// Drops the tiles no window read at or after `now` covers (see [`ViewDef::retention`]).
    pub fn expire(&mut self, def: &ViewDef, now: Millis) {
        for size in def.each_tile_size() {
            // A size's tiles by start: the expired ones come first.
            let oldest_kept = now.saturating_sub(def.retention(size));
            let expired: Vec<TileId> = self
                .tiles
                .range((size, Millis::MIN)..(size, oldest_kept))
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                self.tiles.remove(&id);
                self.changed.remove(&id);
                self.removed.insert(id);
            }
        }
    }

    /// The newest tile start held, if any tile is.
    pub fn newest_tile(&self) -> Option<Millis> {
        self.tiles.keys().map(|(_, start)| *start).max()
    }

    /// The value of aggregate `index` of the view read at `at`: the merge, oldest tile first, of
    /// the tiles from the one holding `at - window` to the one holding `at` (see [`window`]).
    pub fn value(&self, def: &ViewDef, index: usize, at: Millis) -> Value {
        let aggregate = &def.aggregates[index];
        let size = def.series[aggregate.series].tile;
        let (first, last) = window::covered(def, aggregate, at);
        window::fold(
            def,
            index,
            self.tiles
                .range((size, first)..=(size, last))
                .map(|(_, t)| t),
        )
    }

    /// Every aggregate's value read at `at`, in the view's order.
    pub fn values(&self, def: &ViewDef, at: Millis) -> Vec<Value> {
        (0..def.aggregates.len())
            .map(|i| self.value(def, i, at))
            .collect()
    }

    /// The fields changed since the state was read (or since the last call), offsets included,
    /// and forgets them.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = Changes::default();
        for id in std::mem::take(&mut self.changed) {
            if let Some(tile) = self.tiles.get(&id) {
                changes.set.push((tile_field(id), codec::encode(tile)));
            }
        }
        for id in std::mem::take(&mut self.removed) {
            changes.delete.push(tile_field(id));
        }
        for (partition, offset) in &self.offsets {
            changes
                .set
                .push((offset_field(*partition), offset.to_string().into_bytes()));
        }
        changes
    }

    /// Every field of the state, as a store holding only it would have them (version aside).
    pub fn fields(&self) -> Vec<(String, Vec<u8>)> {
        let mut fields: Vec<(String, Vec<u8>)> = self
            .tiles
            .iter()
            .map(|(id, tile)| (tile_field(*id), codec::encode(tile)))
            .collect();
        for (partition, offset) in &self.offsets {
            fields.push((offset_field(*partition), offset.to_string().into_bytes()));
        }
        fields
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::{FeatureType, KeyPart};

    use super::*;
    use crate::{
        partial::Scalar,
        spec::{Field, KeyField, Op},
    };

    const MIN: Millis = 60_000;

    fn view() -> ViewDef {
        let mut v = ViewDef {
            name: "card".into(),
            keys: vec![KeyField {
                entity: "card_id".into(),
                field: "card_id".into(),
                ty: FeatureType::String,
            }],
            time_field: "ts".into(),
            allowed_lateness: MIN,
            series: Vec::new(),
            aggregates: Vec::new(),
        };
        v.add("n_10m", Op::Count, None, 10 * MIN, None).expect("ok");
        v.add("n_2h", Op::Count, None, 120 * MIN, None).expect("ok");
        let amount = Field {
            name: "amount".into(),
            ty: FeatureType::Int64,
        };
        v.add("sum_10m", Op::Sum, Some(amount), 10 * MIN, None)
            .expect("ok");
        v
    }

    fn event(time: Millis, amount: i64) -> Event {
        Event {
            key: vec![KeyPart::String("c".into())],
            time,
            values: vec![None, None, Some(Scalar::Int(amount))],
        }
    }

    #[test]
    fn windows_cover_whole_tiles_from_the_one_holding_their_start() {
        let def = view();
        let mut state = EntityState::new();
        let t0 = 1_000 * MIN;
        for (i, minute) in [0, 3, 9, 10, 11, 20].into_iter().enumerate() {
            state.apply(&def, &event(t0 + minute * MIN + 30_000, i as i64 + 1));
        }
        // At 20m 40s the 10m window starts at 10m 40s, in the tile [10m, 11m): events at 10m 30s
        // (that tile), 11m 30s and 20m 30s.
        let at = t0 + 20 * MIN + 40_000;
        assert_eq!(
            state.values(&def, at),
            [Value::Int64(3), Value::Int64(6), Value::Int64(4 + 5 + 6)]
        );
        // Before any event of the window's tiles: zero, not missing.
        assert_eq!(state.value(&def, 0, t0 - 30 * MIN), Value::Int64(0));
    }

    #[test]
    fn states_round_trip_through_their_fields() {
        let def = view();
        let mut state = EntityState::new();
        for i in 0..50 {
            state.apply(&def, &event(i * 7 * MIN, i));
        }
        state.mark(3, 41);
        state.expire(&def, 49 * 7 * MIN);
        let changes = state.take_changes();
        let stored: Vec<(String, Vec<u8>)> = changes.set;
        let read =
            EntityState::from_fields(&def, stored.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .expect("decodes");
        assert_eq!(read.tiles, state.tiles);
        assert!(read.seen(3, 41) && !read.seen(3, 42) && !read.seen(0, 0));
        // Kept: the tiles a window read from then on covers (window, one more tile, lateness):
        // 1m tiles from 331m (the events at 336m and 343m), 1h tiles from 162m (180m, 240m, 300m).
        let kept: Vec<TileId> = read.tiles.keys().copied().collect();
        assert_eq!(
            kept,
            [
                (MIN, 336 * MIN),
                (MIN, 343 * MIN),
                (60 * MIN, 180 * MIN),
                (60 * MIN, 240 * MIN),
                (60 * MIN, 300 * MIN)
            ]
        );
    }
}
