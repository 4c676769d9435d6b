//! Windowed aggregates over event streams, defined once and computed by one piece of code for
//! every path: ingest from Kafka, `PushEvents`, the gateway's reads and the backfill.
//!
//! A view's aggregates ([`ViewDef`]) are operations over event fields ([`Op`]: count, sum,
//! mean, min, max, last, last_n, approx_distinct) read over windows (`10m`, `1h`, `7d`). Events
//! ([`Event`], read from JSON by [`ViewDef::read`]) update **tiles**: per entity, per tile size,
//! one partial aggregate of each series for the events whose time falls in the tile
//! ([`EntityState::apply`]). A read merges the tiles covering the window ([`crate::window`]):
//! [`EntityState::value`] over decoded tiles, [`read_fields`] (the gateway) over an entity's
//! stored fields, decoding only the tiles and series the aggregates asked for cover.
//!
//! # Window semantics
//! A feature over window `W` in tiles of size `g`, read at time `t`, aggregates the events of
//! the tiles from the one holding `t - W` to the one holding `t`: every event with a time in
//! `[floor_g(t - W), t]` that the store holds. The tail hops by whole tiles, so the window spans
//! between `W` and `W + g` (Chronon calls this a sawtooth window); the head is exact up to `t`,
//! the newest (partial) tile contributing every event applied so far. Tile sizes default to 1
//! minute for windows up to an hour, 1 hour up to 12 days and 1 day above.
//!
//! Over no events `count`, `sum` and `approx_distinct` read 0, `last_n` an empty list, and
//! `mean`, `min`, `max` and `last` null.
//!
//! # Identity of online and offline values
//! Partials do not depend on the order of their events (see [`partial`]), and both paths merge
//! tiles oldest first, so [`backfill::point_in_time`] over the same events computes bit for bit
//! what the store serves at the same time. Doubles summed are rounded to multiples of 2^-40 each
//! (so sums are exact and order-free); `approx_distinct` is a HyperLogLog estimate (about 3% off
//! above a few hundred values, exact below) that is the same on both paths.
#![forbid(unsafe_code)]

pub mod backfill;
pub mod codec;
pub mod event;
pub mod partial;
pub mod read;
pub mod spec;
pub mod state;
pub mod window;

pub use backfill::{SpineRow, point_in_time};
pub use event::{BadEvent, Event};
pub use partial::{Partial, Scalar};
pub use read::read_fields;
pub use spec::{Aggregate, Field, KeyField, Millis, Op, Series, ViewDef};
pub use state::{Changes, EntityState};
