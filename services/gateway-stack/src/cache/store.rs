//! The in-process tier's storage: every cached row of a source, compact, in one bounded
//! [`quick_cache`] table.
//!
//! An entry is one heap block ([`codec`]): its key (the shape, i.e. view and feature list, as a
//! small id, then the entity key's parts), its flags, its fetch time as milliseconds from the
//! store's epoch, and its row's cells in a few bytes each. The table is keyed by a 64-bit hash
//! of the key bytes; a lookup checks the key bytes it finds in the block, so two keys that share
//! a hash (a chance of about one in 10^13 per insert at a million entries) read as a miss and
//! replace each other, and never serve each other's rows.
//!
//! # Bounds
//! - Memory: `max_bytes`, by quick_cache's weighted capacity. [`weigh`] charges an entry its
//!   block as the allocator rounds it plus [`ENTRY_OVERHEAD`], the table's own per-entry cost
//!   (both measured: see the `cache_memory` test and `loadtest/src/cache_mem.rs`). The table
//!   also remembers the hashes of recently evicted keys (its "ghosts", to readmit a returning
//!   key as hot); their memory is kept back from `max_bytes` too.
//! - Age: the table has no clock. An entry is dropped when a lookup finds it older than its
//!   useful life (the longest of `ttl`, `negative_ttl` and `max_staleness`), and otherwise
//!   leaves only by eviction when the table is full. Both are counted in
//!   `feature_gateway_cache_evictions_total` (`expired`, `size`).
//! - Shapes: at most [`MAX_SHAPES`] distinct (view, feature list) pairs per source; requests
//!   for further lists (ad-hoc requests past that many) bypass this tier.
//!
//! # Finding entries by key part
//! Invalidations (webhooks, other replicas' messages) name key parts, not whole keys. The first
//! [`Store::matching_parts`] (or [`Store::index_by_part`]) builds an index from each key part's
//! digest ([`part_digest`]) to the entries whose key holds it, and from then on inserts add to
//! it and evictions and expiries remove from it, so a source that is never invalidated never
//! pays for it. A race can leave a pair naming an entry no longer there (never the reverse): a
//! lookup checks each entry it finds against the table and forgets what is gone.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use fetcher_api::{EntityKey, KeyPart, Row};
use quick_cache::{Lifecycle, OptionsBuilder, Weighter, sync::EntryAction};
use tokio::time::Instant;

use super::codec;
use super::shared::part_digest;
use crate::events::cache::CacheMetrics;

/// A (view, feature list) pair, as one store knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    id: u32,
    /// How many features (cells per found row).
    cells: u32,
}

/// Most (view, feature list) pairs a store keeps apart.
pub const MAX_SHAPES: usize = 4096;

/// What an entry costs beyond its block: its slot in the table's slab (hash, block pointer and
/// length, eviction state, list links: 40 bytes), its share of the hash index (a 4-byte token
/// and a control byte per bucket, buckets at most 7/8 full and doubling as they grow: 6 to 11
/// bytes), and what the allocator holds of the arrays the table outgrew. Measured, resident:
/// 100 to 110 bytes for the benchmark's 8-feature entry (a 40-byte block), 65 to 78 for its
/// 1-feature one (16 bytes), by `tests/cache_memory.rs` and `loadtest/src/cache_mem.rs`.
pub const ENTRY_OVERHEAD: u64 = 60;

/// What a remembered evicted key (a ghost: its hash, in a slab slot and the index) costs.
const GHOST_BYTES: u64 = 52;

/// The share of the estimated number of entries the table remembers as ghosts.
const GHOST_SHARE: f64 = 0.25;

/// A typical entry's weight, to estimate how many entries `max_bytes` holds (which sizes the
/// table's shards and its ghost list).
const TYPICAL_ENTRY: u64 = 128;

/// A cached entry, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The row.
    pub row: Row,
    /// When the source answered it.
    pub fetched_at: Instant,
    /// Invalidated (by a webhook): never fresh again, still a STALE fallback.
    pub invalidated: bool,
}

/// An entry found by [`Store::matching_parts`].
#[derive(Debug)]
pub struct Held {
    /// Its view.
    pub view: Arc<str>,
    /// Its feature list.
    pub features: Arc<[String]>,
    /// Its entity key.
    pub key: EntityKey,
    hash: u64,
    bytes: Box<[u8]>,
}

type Table =
    quick_cache::sync::Cache<u64, Box<[u8]>, Weigh, foldhash::fast::RandomState, Evictions>;

/// A source's cached rows. See the module doc.
pub struct Store {
    table: Table,
    hasher: foldhash::fast::RandomState,
    shapes: RwLock<Shapes>,
    /// Fetch times are kept as milliseconds from here.
    epoch: Instant,
    /// Past this age an entry can serve nothing, not even as STALE.
    useful_life: Duration,
    metrics: CacheMetrics,
    /// Whether `parts` is built (read on every insert without taking its lock).
    indexed: AtomicBool,
    parts: Mutex<Option<PartIndex>>,
}

/// Table keys (hashes) by the digest of each part of their entity key. See the module doc.
/// Most parts belong to one entry (an access token, a user id), so the first entry of a part
/// sits in a plain map of numbers and only further ones in lists: about 20 to 40 bytes per
/// entry instead of a list per part.
#[derive(Default)]
struct PartIndex {
    first: HashMap<u64, u64, foldhash::fast::RandomState>,
    more: HashMap<u64, Vec<u64>, foldhash::fast::RandomState>,
}

impl PartIndex {
    fn add(&mut self, part: u64, hash: u64) {
        match self.first.entry(part) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(hash);
            }
            std::collections::hash_map::Entry::Occupied(slot) => {
                if *slot.get() == hash {
                    return;
                }
                let more = self.more.entry(part).or_default();
                if !more.contains(&hash) {
                    more.push(hash);
                }
            }
        }
    }

    fn entries(&self, part: u64) -> impl Iterator<Item = u64> + '_ {
        let first = self.first.get(&part).copied();
        let more = self.more.get(&part).into_iter().flatten().copied();
        first.into_iter().chain(more)
    }

    fn remove(&mut self, part: u64, hash: u64) {
        let Some(&first) = self.first.get(&part) else {
            return;
        };
        let more = self.more.get_mut(&part);
        if first == hash {
            match more.and_then(|m| m.pop()) {
                Some(next) => {
                    self.first.insert(part, next);
                }
                None => {
                    self.first.remove(&part);
                }
            }
        } else if let Some(more) = more
            && let Some(i) = more.iter().position(|h| *h == hash)
        {
            more.swap_remove(i);
        }
        if self.more.get(&part).is_some_and(Vec::is_empty) {
            self.more.remove(&part);
        }
    }

    /// How many (part, entry) pairs are listed.
    #[cfg(test)]
    fn listed(&self) -> usize {
        self.first.len() + self.more.values().map(Vec::len).sum::<usize>()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.table.len())
            .field("weight", &self.table.weight())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shapes {
    ids: HashMap<Arc<str>, HashMap<Arc<[String]>, u32>, foldhash::fast::RandomState>,
    by_id: Vec<(Arc<str>, Arc<[String]>)>,
}

impl Shapes {
    fn get(&self, view: &str, features: &[String]) -> Option<Shape> {
        let &id = self.ids.get(view)?.get(features)?;
        Some(Shape {
            id,
            cells: features.len() as u32,
        })
    }
}

impl Store {
    /// A store of at most `max_bytes` whose entries are of no use past `useful_life`.
    pub fn new(max_bytes: u64, useful_life: Duration, metrics: CacheMetrics) -> Store {
        let estimated = (max_bytes / TYPICAL_ENTRY).max(1);
        let ghosts = (estimated as f64 * GHOST_SHARE) as u64;
        let capacity = max_bytes.saturating_sub(ghosts * GHOST_BYTES).max(1);
        let options = OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(estimated).unwrap_or(usize::MAX))
            .weight_capacity(capacity)
            .ghost_allocation(GHOST_SHARE)
            .build()
            .unwrap_or_else(|e| unreachable!("both capacities are set: {e}"));
        let hasher = foldhash::fast::RandomState::default();
        Store {
            table: Table::with_options(options, Weigh, hasher.clone(), Evictions(metrics.clone())),
            hasher,
            shapes: RwLock::default(),
            epoch: Instant::now(),
            useful_life,
            metrics,
            indexed: AtomicBool::new(false),
            parts: Mutex::new(None),
        }
    }

    /// The id of `view`'s `features`, `None` once [`MAX_SHAPES`] others have one.
    pub fn shape(&self, view: &Arc<str>, features: &Arc<[String]>) -> Option<Shape> {
        let found = self
            .shapes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(view, features);
        if found.is_some() {
            return found;
        }
        let mut shapes = self.shapes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(shape) = shapes.get(view, features) {
            return Some(shape);
        }
        if shapes.by_id.len() >= MAX_SHAPES {
            return None;
        }
        let id = shapes.by_id.len() as u32;
        shapes.by_id.push((view.clone(), features.clone()));
        if shapes.by_id.len() == MAX_SHAPES {
            tracing::warn!(
                shapes = MAX_SHAPES,
                "cache holds the most feature lists it keeps apart; further ones are not cached in process"
            );
        }
        shapes
            .ids
            .entry(view.clone())
            .or_default()
            .insert(features.clone(), id);
        Some(Shape {
            id,
            cells: features.len() as u32,
        })
    }

    /// The entry of `key` under `shape`, if any. One found past its useful life is dropped.
    pub fn get(&self, shape: Shape, key: &[KeyPart], now: Instant) -> Option<Entry> {
        let mut bytes = Vec::with_capacity(32);
        codec::encode_key(shape.id, key, &mut bytes);
        let hash = self.hasher.hash_one(&bytes[..]);
        let block = self.table.get(&hash)?;
        let (k, value) = codec::split_entry(&block)?;
        if k != &bytes[..] {
            return None;
        }
        let (flags, at) = codec::header(value)?;
        let fetched_at = self.instant(at);
        if now.saturating_duration_since(fetched_at) > self.useful_life {
            let removed = self.table.remove_if(&hash, |b| b[..] == block[..]);
            if let Some((_, block)) = removed {
                self.metrics.evicted(false);
                self.with_index(|index| self.unindex(index, hash, &block));
            }
            return None;
        }
        Some(Entry {
            row: codec::decode_row(value, shape.cells as usize)?,
            fetched_at,
            invalidated: flags & codec::INVALIDATED != 0,
        })
    }

    /// Stores `row`, fetched at `fetched_at`, as `key`'s under `shape`, replacing any other.
    pub fn insert(
        &self,
        shape: Shape,
        key: &[KeyPart],
        row: &Row,
        fetched_at: Instant,
        invalidated: bool,
    ) {
        let mut bytes = Vec::with_capacity(32);
        codec::encode_key(shape.id, key, &mut bytes);
        let hash = self.hasher.hash_one(&bytes[..]);
        let block = codec::encode_entry(&bytes, row, self.millis(fetched_at), invalidated);
        let mut evicted = Evicted::default();
        self.table.insert_with_lifecycle(hash, block, &mut evicted);
        self.with_index(|index| {
            for part in key {
                index.add(part_digest(part), hash);
            }
            for (hash, block) in &evicted.0 {
                self.unindex(index, *hash, block);
            }
        });
    }

    /// Runs `f` on the index by key part, if it is built.
    fn with_index(&self, f: impl FnOnce(&mut PartIndex)) {
        if self.indexed.load(Ordering::Acquire) {
            let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(index) = parts.as_mut() {
                f(index);
            }
        }
    }

    /// Forgets `block`'s pairs (its entry left the table), unless its key is back in the table
    /// (inserted again meanwhile: the new entry's pairs are the same). Called under `parts`'
    /// lock, which is always taken before the table's.
    fn unindex(&self, index: &mut PartIndex, hash: u64, block: &[u8]) {
        if self.table.peek(&hash).is_some() {
            return;
        }
        let Some((_, key)) = entry_key(block) else {
            return;
        };
        for part in &key {
            index.remove(part_digest(part), hash);
        }
    }

    /// Builds the index by key part now (see [`Store::matching_parts`]); nothing if built.
    pub fn index_by_part(&self) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.get_or_insert_with(|| self.first_index());
    }

    /// The index's first build, under `parts`' lock. Inserts index themselves from before the
    /// scan starts (they wait for the lock), so none made during the scan is missed.
    fn first_index(&self) -> PartIndex {
        self.indexed.store(true, Ordering::Release);
        self.scan_parts()
    }

    /// Every entry one of whose key parts has a digest in `digests` and whose entity key
    /// `matches` (the digests only narrow the search: `matches` decides). The first call builds
    /// the index by key part (one scan of the table); later ones read it.
    pub fn matching_parts(
        &self,
        digests: &HashSet<u64>,
        matches: impl Fn(&EntityKey) -> bool,
    ) -> Vec<Held> {
        let candidates: Vec<u64> = {
            let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
            let index = parts.get_or_insert_with(|| self.first_index());
            let mut found: Vec<u64> = digests.iter().flat_map(|d| index.entries(*d)).collect();
            found.sort_unstable();
            found.dedup();
            found
        };
        let shapes = self.shapes.read().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        let mut held = Vec::new();
        for hash in candidates {
            let decoded = self
                .table
                .peek(&hash)
                .and_then(|bytes| entry_key(&bytes).map(|(shape, key)| (bytes, shape, key)));
            let Some((bytes, shape, key)) = decoded else {
                gone.push(hash);
                continue;
            };
            if !matches(&key) {
                continue;
            }
            if let Some((view, features)) = shapes.by_id.get(shape as usize).cloned() {
                held.push(Held {
                    view,
                    features,
                    key,
                    hash,
                    bytes,
                });
            }
        }
        if !gone.is_empty() {
            // Evicted or expired since indexed: forget them under every digest asked about.
            self.with_index(|index| {
                for digest in digests {
                    for hash in &gone {
                        index.remove(*digest, *hash);
                    }
                }
            });
        }
        held
    }

    /// The index by key part of every entry now in the table (one scan, decoding each key).
    fn scan_parts(&self) -> PartIndex {
        let mut index = PartIndex::default();
        for (hash, bytes) in self.table.iter() {
            let Some((_, key)) = entry_key(&bytes) else {
                continue;
            };
            for part in &key {
                index.add(part_digest(part), hash);
            }
        }
        index
    }

    /// Marks `held`'s key invalidated, even if its entry was replaced since it was found (an
    /// answer that raced the invalidation is refetched rather than trusted).
    pub fn invalidate(&self, held: &Held) {
        let key = codec::split_entry(&held.bytes).map(|(k, _)| k);
        let _ = self.table.entry(&held.hash, None, |_, block| {
            if codec::split_entry(block).map(|(k, _)| k) == key {
                codec::set_flag(block, codec::INVALIDATED);
            }
            EntryAction::Retain(())
        });
    }

    /// `(entries, weight)`.
    pub fn size(&self) -> (u64, u64) {
        (self.table.len() as u64, self.table.weight())
    }

    /// `t` as milliseconds from the epoch, rounded down (an age is never under-counted).
    /// The table's own memory, in bytes: `(slab of entries, hash index)` (not the blocks).
    pub fn table_bytes(&self) -> (u64, u64) {
        let used = self.table.memory_used();
        (used.entries as u64, used.map as u64)
    }

    fn millis(&self, t: Instant) -> i64 {
        match t.checked_duration_since(self.epoch) {
            Some(d) => d.as_millis().min(i64::MAX as u128) as i64,
            None => {
                let d = self.epoch.duration_since(t);
                -(d.as_nanos().div_ceil(1_000_000).min(i64::MAX as u128) as i64)
            }
        }
    }

    fn instant(&self, millis: i64) -> Instant {
        let d = Duration::from_millis(millis.unsigned_abs());
        if millis >= 0 {
            self.epoch + d
        } else {
            self.epoch.checked_sub(d).unwrap_or(self.epoch)
        }
    }
}

/// The shape id and entity key of an entry's block.
fn entry_key(block: &[u8]) -> Option<(u32, EntityKey)> {
    codec::decode_key(codec::split_entry(block)?.0)
}

/// What an entry weighs: see [`ENTRY_OVERHEAD`].
pub fn weigh(block: &[u8]) -> u64 {
    ENTRY_OVERHEAD + allocated(block.len())
}

/// The size of the heap block the allocator (mimalloc) hands out for `n` bytes: a multiple of 8
/// up to 64 bytes, then four size classes per doubling.
pub fn allocated(n: usize) -> u64 {
    let n = n as u64;
    if n <= 64 {
        return n.div_ceil(8) * 8;
    }
    let step = n.next_power_of_two() / 8;
    n.div_ceil(step) * step
}

#[derive(Clone, Debug)]
struct Weigh;

impl Weighter<u64, Box<[u8]>> for Weigh {
    fn weight(&self, _: &u64, block: &Box<[u8]>) -> u64 {
        weigh(block)
    }
}

/// Counts the entries the table evicts to stay within its capacity.
#[derive(Clone, Debug)]
struct Evictions(CacheMetrics);

/// What one insert evicted, handed back once the table's lock is released (the part index, if
/// any, forgets them).
#[derive(Default)]
struct Evicted(Vec<(u64, Box<[u8]>)>);

impl Lifecycle<u64, Box<[u8]>> for Evictions {
    type RequestState = Evicted;

    fn on_evict(&self, evicted: &mut Evicted, hash: u64, block: Box<[u8]>) {
        self.0.evicted(true);
        evicted.0.push((hash, block));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetcher_api::{Record, Value};

    fn store(max_bytes: u64) -> Store {
        Store::new(max_bytes, Duration::from_secs(60), CacheMetrics::new("t"))
    }

    fn key(s: &str) -> EntityKey {
        vec![KeyPart::String(s.into())]
    }

    fn found(v: i64) -> Row {
        Row::Found(Record {
            cells: vec![Ok(Value::Int64(v)), Ok(Value::String("US".into()))],
            event_time: None,
        })
    }

    fn entry(row: Row, fetched_at: Instant) -> Entry {
        Entry {
            row,
            fetched_at,
            invalidated: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_are_kept_apart_by_shape_and_key() {
        let s = store(1 << 20);
        let view: Arc<str> = "v".into();
        let f1: Arc<[String]> = vec!["a".to_owned(), "b".to_owned()].into();
        let f2: Arc<[String]> = vec!["b".to_owned()].into();
        let (a, b) = (s.shape(&view, &f1).unwrap(), s.shape(&view, &f2).unwrap());
        assert_ne!(a, b);
        // The same content in another Arc is the same shape.
        assert_eq!(s.shape(&view, &f1.to_vec().into()), Some(a));
        assert_eq!(s.shape(&"w".into(), &f1).map(|s| s.id), Some(2));

        let now = Instant::now();
        s.insert(a, &key("k1"), &found(1), now, false);
        s.insert(b, &key("k1"), &found(2), now, false);
        s.insert(a, &key("k2"), &Row::NotFound, now, false);
        assert_eq!(s.get(a, &key("k1"), now), Some(entry(found(1), now)));
        assert_eq!(s.get(b, &key("k1"), now), Some(entry(found(2), now)));
        assert_eq!(s.get(a, &key("k2"), now), Some(entry(Row::NotFound, now)));
        assert_eq!(s.get(b, &key("k2"), now), None);
        assert_eq!(s.get(a, &[KeyPart::Int64(1)], now), None);
        assert_eq!(s.size().0, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_times_keep_millisecond_ages_before_and_after_the_epoch() {
        let s = store(1 << 20);
        let shape = s.shape(&"v".into(), &vec!["a".to_owned()].into()).unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        let times = [
            now,
            now - Duration::from_millis(1500),
            now + Duration::from_millis(20),
        ];
        for (i, &t) in times.iter().enumerate() {
            s.insert(shape, &key(&format!("k{i}")), &found(1), t, false);
            let got = s.get(shape, &key(&format!("k{i}")), now).unwrap();
            assert_eq!(got.fetched_at, t);
        }
        // Before the store's epoch (a shared-tier entry fetched before this process started).
        let early = s.epoch - Duration::from_millis(30_250);
        s.insert(shape, &key("early"), &found(1), early, false);
        assert_eq!(s.get(shape, &key("early"), now).unwrap().fetched_at, early);
        // A sub-millisecond time is rounded down: its age is never under-counted.
        let odd = now - Duration::from_micros(2_500);
        s.insert(shape, &key("odd"), &found(1), odd, false);
        assert_eq!(
            s.get(shape, &key("odd"), now).unwrap().fetched_at,
            now - Duration::from_millis(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_past_its_useful_life_is_dropped_when_read() {
        let s = store(1 << 20);
        let shape = s.shape(&"v".into(), &vec!["a".to_owned()].into()).unwrap();
        let t0 = Instant::now();
        s.insert(shape, &key("k"), &found(1), t0, false);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(s.get(shape, &key("k"), Instant::now()).is_some(), "at 60 s");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(s.get(shape, &key("k"), Instant::now()), None);
        assert_eq!(s.size(), (0, 0), "dropped, not only hidden");
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_marks_the_held_keys_only() {
        let s = store(1 << 20);
        let view: Arc<str> = "v".into();
        let features: Arc<[String]> = vec!["a".to_owned()].into();
        let shape = s.shape(&view, &features).unwrap();
        let now = Instant::now();
        let pair = vec![KeyPart::String("u1".into()), KeyPart::Int64(7)];
        s.insert(shape, &pair, &found(1), now, false);
        s.insert(shape, &key("u2"), &found(2), now, false);
        s.insert(shape, &key("u3"), &found(3), now, false);

        let wanted = [KeyPart::Int64(7), KeyPart::String("u2".into())];
        let held = s.matching_parts(&digests(&wanted), |k| k.iter().any(|p| wanted.contains(p)));
        let mut keys: Vec<_> = held.iter().map(|h| h.key.clone()).collect();
        keys.sort();
        assert_eq!(keys, [pair.clone(), key("u2")]);
        assert!(
            held.iter()
                .all(|h| h.view == view && h.features == features)
        );

        // u2 is answered again between the scan and the invalidation: that answer may predate
        // the change too, so it is marked as well.
        s.insert(shape, &key("u2"), &found(22), now, false);
        for h in &held {
            s.invalidate(h);
        }
        assert!(s.get(shape, &pair, now).unwrap().invalidated);
        assert_eq!(s.get(shape, &pair, now).unwrap().row, found(1));
        let u2 = s.get(shape, &key("u2"), now).unwrap();
        assert!(u2.invalidated);
        assert_eq!(u2.row, found(22));
        assert!(!s.get(shape, &key("u3"), now).unwrap().invalidated);
    }

    fn digests(parts: &[KeyPart]) -> HashSet<u64> {
        parts.iter().map(part_digest).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_part_index_follows_inserts_and_forgets_what_left() {
        let s = store(1 << 20);
        let shape = s.shape(&"v".into(), &vec!["a".to_owned()].into()).unwrap();
        let other = s.shape(&"w".into(), &vec!["a".to_owned()].into()).unwrap();
        let now = Instant::now();
        let item = KeyPart::String("item-1".into());
        let pair = vec![KeyPart::String("u1".into()), item.clone()];
        s.insert(shape, &pair, &found(1), now, false);
        s.insert(other, std::slice::from_ref(&item), &found(2), now, false);
        s.insert(shape, &key("u2"), &found(3), now, false);
        let by_item = |s: &Store| {
            let mut keys: Vec<_> = s
                .matching_parts(&digests(std::slice::from_ref(&item)), |k| k.contains(&item))
                .into_iter()
                .map(|h| (h.view.to_string(), h.key))
                .collect();
            keys.sort();
            keys
        };
        // The first lookup builds the index from the table.
        assert_eq!(
            by_item(&s),
            [("v".into(), pair.clone()), ("w".into(), vec![item.clone()])]
        );
        // Entries inserted after it are indexed as they come.
        let later = vec![KeyPart::Int64(9), item.clone()];
        s.insert(shape, &later, &found(4), now, false);
        assert_eq!(by_item(&s).len(), 3);
        // A digest only narrows the search: the predicate decides.
        assert!(
            s.matching_parts(&digests(std::slice::from_ref(&item)), |_| false)
                .is_empty()
        );
        // Entries dropped past their useful life leave the index with the table.
        tokio::time::advance(Duration::from_secs(61)).await;
        s.insert(shape, &later, &found(5), Instant::now(), false);
        assert_eq!(s.get(shape, &pair, Instant::now()), None);
        assert_eq!(
            s.get(other, std::slice::from_ref(&item), Instant::now()),
            None
        );
        assert_eq!(by_item(&s), [("v".into(), later.clone())]);
        let listed = s.parts.lock().unwrap().as_ref().unwrap().listed();
        // `later` under its two parts, u2 (expired, but not read yet) under one.
        assert_eq!(listed, 3);
    }

    #[test]
    fn a_part_index_lists_each_pair_once() {
        let mut index = PartIndex::default();
        let sorted = |index: &PartIndex, part| {
            let mut v: Vec<u64> = index.entries(part).collect();
            v.sort_unstable();
            v
        };
        for (part, hash) in [(1, 10), (1, 11), (1, 12), (1, 11), (2, 10), (2, 10)] {
            index.add(part, hash);
        }
        assert_eq!(index.listed(), 4);
        assert_eq!(sorted(&index, 1), [10, 11, 12]);
        assert_eq!(sorted(&index, 2), [10]);
        // Removing the first of a part promotes another; removing an unknown pair is nothing.
        index.remove(1, 10);
        index.remove(1, 99);
        index.remove(3, 10);
        assert_eq!(sorted(&index, 1), [11, 12]);
        index.remove(1, 12);
        index.remove(1, 11);
        index.remove(2, 10);
        assert_eq!(index.listed(), 0);
        assert!(index.first.is_empty() && index.more.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn evicted_entries_leave_the_part_index() {
        // Room for about 100 entries, filled with thousands: the index lists what the table
        // holds, not everything ever inserted.
        let s = store(100 * (ENTRY_OVERHEAD + 24));
        let shape = s.shape(&"v".into(), &vec!["a".to_owned()].into()).unwrap();
        let now = Instant::now();
        s.index_by_part();
        for i in 0..20_000 {
            s.insert(shape, &key(&format!("k{i}")), &found(i), now, false);
        }
        let listed = s.parts.lock().unwrap().as_ref().unwrap().listed();
        assert_eq!(listed, s.size().0 as usize);
        assert!(listed < 200, "{listed}");
        // The newest entry is found through the index, an evicted one is not.
        let newest = [KeyPart::String("k19999".into())];
        assert_eq!(
            s.matching_parts(&digests(&newest), |k| k[..] == newest)
                .len(),
            1
        );
        let evicted = (0..20_000)
            .map(|i| key(&format!("k{i}")))
            .find(|k| s.get(shape, k, now).is_none())
            .expect("most keys were evicted");
        assert!(s.matching_parts(&digests(&evicted), |_| true).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_and_counts_by_weight() {
        let s = store(64 * 1024);
        let shape = s.shape(&"v".into(), &vec!["a".to_owned()].into()).unwrap();
        let now = Instant::now();
        for i in 0..10_000 {
            s.insert(shape, &key(&format!("k{i}")), &found(i), now, false);
        }
        let (entries, weight) = s.size();
        assert!(weight <= 64 * 1024, "{weight}");
        assert!(entries < 10_000 && entries > 100, "{entries}");
        // Blocks of 13 to 18 bytes: 16 or 24 allocated.
        assert!(
            (entries * (ENTRY_OVERHEAD + 16)..=entries * (ENTRY_OVERHEAD + 24)).contains(&weight),
            "{entries} entries weigh {weight}"
        );
        // The most recent entries are still there.
        assert!(s.get(shape, &key("k9999"), now).is_some());
    }

    #[test]
    fn allocation_sizes_follow_the_allocator_classes() {
        let sizes: Vec<u64> = [1, 8, 9, 40, 41, 64, 65, 80, 81, 128, 129, 160, 161, 1000]
            .iter()
            .map(|&n| allocated(n))
            .collect();
        assert_eq!(
            sizes,
            [8, 8, 16, 40, 48, 64, 80, 80, 96, 128, 160, 160, 192, 1024]
        );
    }

    #[test]
    fn the_shape_table_is_bounded() {
        let s = store(1 << 20);
        let view: Arc<str> = "v".into();
        for i in 0..MAX_SHAPES {
            let shape = s.shape(&view, &vec![i.to_string()].into());
            assert_eq!(shape.map(|s| s.id), Some(i as u32));
        }
        assert_eq!(s.shape(&view, &vec!["one more".to_owned()].into()), None);
        let first = s.shape(&view, &vec!["0".to_owned()].into());
        assert_eq!(first.map(|s| s.id), Some(0));
    }
}
