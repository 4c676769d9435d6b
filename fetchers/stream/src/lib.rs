//! The `stream` source: windowed aggregates of an event stream, kept as tiles in Redis by
//! `feature-gateway ingest` (from Kafka) or by `PushEvents`, and merged at read time. The tile
//! and merge code is the [`aggregation`] crate's, shared with the backfill.
//!
//! # Configuration
//! ```toml
//! [sources.payments]
//! kind = "stream"
//! redis = { url = "redis://127.0.0.1:6379" }   # the tiles; any option of a redis source
//! # store = "memory"                          # instead: this process only (the demo)
//! kafka = { brokers = ["127.0.0.1:9092"], topic = "payments", dead_letter_topic = "payments.bad" }
//! timeout = "20ms"                            # the gateway's per-source timeout, as for any source
//!
//! [views.card_activity]
//! source = "payments"
//! entities = ["card_id"]
//! keys = { card_id = "card" }                 # the event field of an entity, if not its name
//! time_field = "ts"                           # epoch milliseconds or RFC 3339
//! allowed_lateness = "5m"
//!
//! [views.card_activity.aggregations]
//! txn_count_10m = { op = "count", window = "10m" }
//! amount_sum_1h = { op = "sum", field = "amount", window = "1h" }
//! merchants_24h = { op = "approx_distinct", field = "merchant_id", window = "24h" }
//!
//! [views.card_activity.features]
//! txn_count_10m = { type = "int64" }
//! amount_sum_1h = { type = "double" }
//! merchants_24h = { type = "int64" }
//! ```
//! Every feature has one aggregation, whose result type must be the declared one (`count` and
//! `approx_distinct` int64; `sum`, `min`, `max`, `last` the field's type, which the declaration
//! fixes; `mean` double; `last_n` a list of the field's type).
//!
//! # Layout
//! - [`config`]: the options and their compilation into [`aggregation::ViewDef`]s.
//! - [`store`]: [`TileStore`], Redis or memory, the key layout and the compare-and-set write.
//! - [`writer`]: applying events (ingest and pushes).
//! - [`fetcher`]: [`StreamFetcher`], reads and pushes.
#![forbid(unsafe_code)]

pub mod config;
pub mod fetcher;
pub mod store;
pub mod writer;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use fetcher_api::{BuildError, Env, Fetcher, FetcherFactory, Problem, SourceSpec};

pub use config::{CompiledSource, StoreKind, StreamSourceConfig, StreamViewConfig};
pub use fetcher::StreamFetcher;
pub use store::{MemoryStore, RedisStore, TileStore};
pub use writer::{Applied, Positioned, StreamView};

/// The longest a store call may take when the `redis` options give no `command_timeout`.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Builds `stream` fetchers.
#[derive(Clone, Debug, Default)]
pub struct StreamFactory {
    env: Env,
}

impl StreamFactory {
    /// A factory that resolves `${NAME}` in the Redis URL from the process environment.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A compiled source and its views, connected to its store: what the gateway's fetcher, ingest
/// and the backfill's loader share.
#[derive(Debug)]
pub struct Stream {
    pub name: String,
    pub source: CompiledSource,
    pub views: Vec<StreamView>,
    pub store: Arc<dyn TileStore>,
    pub command_timeout: Duration,
}

/// Compiles `spec`'s options and views (the first problem fails).
pub fn compile(spec: &SourceSpec) -> Result<(CompiledSource, Vec<StreamView>), BuildError> {
    let (source, defs) =
        fetcher_api::build_options(spec, config::compile_source, config::compile_view)?;
    Ok((source, defs.into_iter().map(StreamView::new).collect()))
}

/// Compiles `spec` and connects to its store. `require_connection` makes an unreachable Redis
/// an error rather than a warning (ingest and the backfill's loader have nothing to do without
/// it). A memory store is `memory` (shared with whoever else holds it) or a new one.
pub async fn open(
    spec: &SourceSpec,
    env: &Env,
    require_connection: bool,
    memory: Option<MemoryStore>,
) -> Result<Stream, BuildError> {
    let (source, views) = compile(spec)?;
    let (store, command_timeout): (Arc<dyn TileStore>, Duration) = match &source.redis {
        Some(redis) => {
            let pool = fetcher_redis::client::connect(
                &spec.name,
                redis,
                &spec.base_dir,
                env,
                require_connection,
            )
            .await
            .map_err(|message| BuildError::new(spec, message))?;
            (Arc::new(RedisStore::new(pool)), redis.command_timeout)
        }
        None => {
            let store: Arc<dyn TileStore> = Arc::new(memory.unwrap_or_default());
            if let Some(seed) = &source.seed {
                seed_store(spec, &store, &source.key_prefix, &views, seed)
                    .await
                    .map_err(|message| BuildError::new(spec, format!("seed: {message}")))?;
            }
            (store, DEFAULT_COMMAND_TIMEOUT)
        }
    };
    Ok(Stream {
        name: spec.name.clone(),
        source,
        views,
        store,
        command_timeout,
    })
}

/// Applies the events of the JSON-lines file `seed` to every view (lines a view cannot read are
/// skipped, and counted in the log).
async fn seed_store(
    spec: &SourceSpec,
    store: &Arc<dyn TileStore>,
    prefix: &str,
    views: &[StreamView],
    seed: &str,
) -> Result<(), String> {
    let path = spec.resolve_path(seed);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let objects: Vec<_> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| aggregation::event::parse(l.as_bytes()))
        .collect();
    for view in views {
        let events: Vec<Positioned> = objects
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .filter_map(|o| view.def.read(o).ok())
            .map(|event| Positioned { event, at: None })
            .collect();
        let skipped = objects.len() - events.len();
        let applied = writer::apply(store, prefix, view, events, DEFAULT_COMMAND_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(source = %spec.name, view = %view.def.name, events = applied.applied, skipped, "seeded");
    }
    Ok(())
}

#[async_trait]
impl FetcherFactory for StreamFactory {
    fn kind(&self) -> &'static str {
        "stream"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(source, config::compile_source, config::compile_view)
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let stream = open(source, &self.env, false, None).await?;
        Ok(Arc::new(StreamFetcher::new(
            stream.name,
            stream.store,
            stream.source.key_prefix,
            stream.views,
            stream.command_timeout,
        )))
    }
}
