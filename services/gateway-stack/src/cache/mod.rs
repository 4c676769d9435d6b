//! The per-source cache: serve within the deadline from memory what a source answered recently,
//! and when the source fails or is slow, what it answered within an explicit staleness bound.
//!
//! [`CacheLayer`] is the outermost layer of every source's stack (see
//! [`crate::stack`]). For each key of a fetch:
//! - an entry younger than `ttl` is served as is ([`Slot::Cached`]), without calling the source;
//! - the other keys go to the source in one call. Its rows are stored and served
//!   ([`Slot::Fetched`]); `NOT_FOUND` rows are stored too when `negative_ttl` is set;
//! - if that call fails or outlives the request's deadline, a key whose entry is younger than
//!   `max_staleness` is served from it ([`Slot::Stale`], with its age); the others fail
//!   ([`Slot::Failed`]).
//!
//! Concurrent misses for the same key (and features) are coalesced into one source call: the
//! later requests wait on the call already in flight.
//!
//! A call that misses the request's deadline is not abandoned: it runs on in the background, up
//! to the source's own `timeout`, and fills the cache for the next request. At most
//! `max_background_calls` such calls run at once per source; beyond that a call is bounded by
//! the request's deadline like any other.
//!
//! Refresh-ahead (`refresh_ahead`, a fraction of the TTL): a key served from the cache when
//! older than that fraction of its TTL is fetched again in the background while the cached value
//! is served, so a hot key is renewed before it expires and no request sees it miss. At most one
//! refresh per key at a time (a key already being fetched is not fetched again), within the same
//! `max_background_calls` permits, bounded by the source's own timeout (a source without one
//! does not refresh ahead). A failed refresh changes nothing: the entry ages as it would have.
//!
//! With a shared tier ([`crate::cache::shared`]), keys the in-process tier cannot serve fresh are
//! looked up in Redis (bounded by the request's deadline) before the source is called, and a
//! source's answer is written to both tiers, with its original fetch time. Waiters hear of the
//! answer once it is written to Redis (a replica asking right after finds it there), but a
//! request spends at most the tier's `timeout` on Redis, lookup and write together: a write
//! still running then goes on in the background.
//!
//! [`CacheControl::invalidate`] (Plaid webhooks) makes every entry whose key holds one of given
//! key parts no longer fresh in either tier (it stays a STALE fallback locally), keeps calls
//! already in flight for those keys from storing their older answers, and refreshes the entries
//! it held in the background.
//!
//! Entries are stored compact ([`store`]): one heap block each, holding the key's bytes, the
//! fetch time and the row's cells in a few bytes apiece, decoded on every hit. Memory is bounded
//! by `max_bytes`, each entry weighed by what it really takes (its block and its share of the
//! table). The table has no clock of its own: an entry past its useful life (the longest of
//! `ttl`, `negative_ttl` and `max_staleness`) is dropped by the lookup that finds it, and
//! otherwise leaves by eviction when the table is full. Ages use tokio's clock, so tests can
//! pause time.

mod codec;
pub mod shared;
pub mod store;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fetcher_api::{EntityKey, FetchError, FetchRequest, KeyPart, Row};
use futures::{
    FutureExt,
    future::{Either, Shared},
};
use tokio::{sync::Semaphore, time::Instant};
use tower::{Layer, Service, ServiceExt};

use gateway_config::{CacheConfig, SharedCacheConfig, SourceConfig};

use crate::{
    events::cache::{CacheMetrics, CacheSize, register_cache},
    service::{BoxFuture, Slot, SourceService},
};
use shared::{SharedTier, digest_of_hash, part_digest, part_hash};
use store::{Entry, Shape, Store};

/// A view's entity key, as calls in flight and invalidations are tracked.
type Key = (Arc<str>, EntityKey);

/// Most invalidated keys remembered (each only matters while an answer fetched before its
/// invalidation may still be in flight or in the shared tier).
const MAX_INVALIDATIONS: usize = 100_000;

/// Keys to refresh, by view and feature list.
type RefreshGroups = BTreeMap<(Arc<str>, Vec<String>), (Arc<[String]>, Vec<EntityKey>)>;

/// Wraps a source's stack with its cache (or, with no policy, only turns rows into slots).
#[derive(Clone, Debug)]
pub struct CacheLayer {
    state: Option<Arc<CacheState>>,
    source_timeout: Option<Duration>,
}

struct CacheState {
    source: Arc<str>,
    policy: CacheConfig,
    entries: Store,
    /// Calls in flight, by key: concurrent misses for a key join one call.
    in_flight: Mutex<HashMap<Key, Pending>>,
    background: Arc<Semaphore>,
    metrics: CacheMetrics,
    shared: Option<SharedTier>,
    /// When keys were last invalidated: older answers (in flight, or in Redis) are not fresh.
    invalidations: quick_cache::sync::Cache<Key, Instant>,
    /// The source's stack under this layer, for refreshes after an invalidation.
    inner: OnceLock<SourceService>,
    source_timeout: Option<Duration>,
}

impl std::fmt::Debug for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheState")
            .field("policy", &self.policy)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl CacheSize for CacheState {
    fn size(&self) -> (u64, u64) {
        self.entries.size()
    }
}

/// The answer of one source call, shared by every request waiting on it.
type CallResult = Arc<Result<Vec<Row>, FetchError>>;
type SharedCall = Shared<BoxFuture<CallResult>>;

/// A key being fetched: the call, and the key's position in it.
struct Pending {
    call: SharedCall,
    index: usize,
    features: Arc<[String]>,
}

impl CacheLayer {
    /// A layer for a source with `policy` (or none), whose own timeout bounds background calls.
    pub fn new(
        policy: Option<&CacheConfig>,
        source_timeout: Option<Duration>,
        source: &str,
    ) -> Self {
        let state = policy.map(|policy| {
            let metrics = CacheMetrics::new(source);
            let useful_life = policy
                .max_staleness
                .max(policy.ttl)
                .max(policy.negative_ttl.unwrap_or_default());
            let entries = Store::new(policy.max_bytes, useful_life, metrics.clone());
            let state = Arc::new(CacheState {
                source: source.into(),
                policy: policy.clone(),
                entries,
                in_flight: Mutex::new(HashMap::new()),
                background: Arc::new(Semaphore::new(policy.max_background_calls)),
                metrics,
                shared: None,
                invalidations: quick_cache::sync::Cache::new(MAX_INVALIDATIONS),
                inner: OnceLock::new(),
                source_timeout,
            });
            let weak: std::sync::Weak<CacheState> = Arc::downgrade(&state);
            register_cache(source, weak);
            state
        });
        CacheLayer {
            state,
            source_timeout,
        }
    }
}

impl CacheLayer {
    /// The cache layer of `source` as configured: none (rows pass through as slots), in-process,
    /// or with its shared tier in Redis connected (the URL's `${NAME}` read from the
    /// environment). An unreachable Redis is not an error: lookups miss until it answers.
    pub async fn for_source(source: &SourceConfig) -> Result<CacheLayer, String> {
        let cache = CacheLayer::new(source.cache.as_ref(), source.timeout, &source.name);
        let Some(tier) = source.cache.as_ref().and_then(|c| c.shared.as_ref()) else {
            return Ok(cache);
        };
        let url = fetcher_api::EnvTemplate::parse(&tier.url)
            .map_err(|e| format!("cache.shared.url: {e}"))?
            .resolve(&fetcher_api::Env::process(), |v| {
                std::borrow::Cow::Borrowed(v)
            })
            .map_err(|e| format!("cache.shared.url: {e}"))?;
        let tier = SharedTier::connect(
            &SharedCacheConfig {
                url,
                ..tier.clone()
            },
            &source.name,
        )?;
        if !tier.wait_connected(Duration::from_secs(2)).await {
            tracing::warn!(
                source = %source.name,
                "the shared cache tier is not reachable yet: lookups miss until it is"
            );
        }
        Ok(cache.with_shared(tier))
    }

    /// Adds the shared tier (the policy must have a cache).
    pub fn with_shared(mut self, tier: SharedTier) -> Self {
        if let Some(state) = self.state.take() {
            let mut state = Arc::try_unwrap(state)
                .unwrap_or_else(|_| unreachable!("the layer is not shared before it is built"));
            state.shared = Some(tier);
            self.state = Some(Arc::new(state));
        }
        self
    }

    /// The handle that invalidates this cache's entries (`None` without a cache).
    pub fn control(&self) -> Option<CacheControl> {
        self.state.clone().map(CacheControl)
    }
}

/// Invalidates a source's cached entries from outside the request path (webhooks).
#[derive(Clone, Debug)]
pub struct CacheControl(Arc<CacheState>);

/// What [`CacheControl::invalidate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Invalidated {
    /// Entries of the in-process tier invalidated.
    pub local: usize,
    /// Keys deleted from the shared tier (0 without one).
    pub shared: usize,
    /// Whether the shared tier could not be told (its entries may be served until they expire
    /// or are refreshed).
    pub shared_failed: bool,
    /// Whether the other replicas were told (on the shared tier's invalidation channel).
    pub published: bool,
    /// Entries being refreshed from the source in the background.
    pub refreshing: usize,
}

impl CacheControl {
    /// Indexes the in-process tier's entries by key part from now on, as invalidations look
    /// them up (otherwise the first invalidation builds the index with a scan of every entry).
    pub fn index_by_key_part(&self) {
        self.0.entries.index_by_part();
    }

    /// Invalidates every entry whose key holds one of `parts`, in both tiers and on every
    /// replica sharing the tier, and refreshes from the source, in the background, the entries
    /// the in-process tier held. `views` are the source's views keyed by a single entity key:
    /// their entries for `parts` are deleted from the shared tier even when this replica does
    /// not hold them. `item` names the outside object the parts belong to (a Plaid Item), so a
    /// replica that knows more of its key parts invalidates those too (see
    /// [`CacheControl::listen_for_invalidations`]).
    pub async fn invalidate(
        &self,
        parts: &HashSet<KeyPart>,
        views: &[Arc<str>],
        item: Option<&str>,
    ) -> Invalidated {
        let state = &self.0;
        // Taken before the refresh calls start: the shared tier must accept their answers.
        let wall = SystemTime::now();
        let also = views
            .iter()
            .flat_map(|view| parts.iter().map(|p| (view.clone(), vec![p.clone()])))
            .collect();
        let (keys, mut result) = state.invalidate_local(
            &parts.iter().map(part_digest).collect(),
            |key| key.iter().any(|p| parts.contains(p)),
            also,
            Instant::now(),
            true,
        );
        if let Some(shared) = &state.shared {
            let redis_keys: Vec<String> = keys
                .iter()
                .map(|(view, key)| shared.redis_key(&state.source, view, key))
                .collect();
            result.shared = redis_keys.len();
            result.shared_failed = !shared.invalidate(redis_keys, wall).await;
            result.published = shared.publish_invalidation(parts, item).await;
        }
        result
    }

    /// Invalidates, in the in-process tier only, every entry whose key holds a part whose
    /// [`part_hash`] is in `hashes`: another replica's invalidation, made at `at`, whose
    /// shared-tier keys that replica deleted and refreshes. Nothing is refreshed from the source
    /// here (every replica doing so would multiply the upstream calls): the next request for
    /// such a key reads the shared tier, where answers fetched after `at` are fresh.
    pub fn invalidate_hashed(&self, hashes: &HashSet<String>, at: SystemTime) -> Invalidated {
        let now = Instant::now();
        let ago = SystemTime::now().duration_since(at).unwrap_or_default();
        self.0
            .invalidate_local(
                &hashes.iter().filter_map(|h| digest_of_hash(h)).collect(),
                |key| key.iter().any(|p| hashes.contains(&part_hash(p))),
                HashSet::new(),
                now.checked_sub(ago).unwrap_or(now),
                false,
            )
            .1
    }

    /// Applies the other replicas' invalidations to this cache, from the shared tier's channel,
    /// for as long as the cache lives (nothing without a shared tier). A message naming an item
    /// (a Plaid Item) is also resolved to the key parts `keys_of` knows of it: those the sender
    /// did not name (it never fetched them itself) are invalidated here in both tiers, refreshed,
    /// and published for the others, without the item, so nothing is relayed twice.
    pub fn listen_for_invalidations(
        &self,
        keys_of: impl Fn(&str) -> Vec<KeyPart> + Send + 'static,
        views: Vec<Arc<str>>,
    ) {
        let Some(shared) = &self.0.shared else {
            return;
        };
        let cache = Arc::downgrade(&self.0);
        shared.listen(move |message| {
            let Some(state) = cache.upgrade() else {
                return false;
            };
            let control = CacheControl(state);
            let hashes: HashSet<String> = message.parts.into_iter().collect();
            let at = UNIX_EPOCH + Duration::from_millis(message.at_ms.max(0) as u64);
            let done = control.invalidate_hashed(&hashes, at);
            tracing::debug!(
                local = done.local,
                "cache invalidation from another replica applied"
            );
            let unnamed: HashSet<KeyPart> = message
                .item
                .as_deref()
                .map(&keys_of)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| !hashes.contains(&part_hash(p)))
                .collect();
            if !unnamed.is_empty() {
                let views = views.clone();
                tokio::spawn(async move {
                    let done = control.invalidate(&unnamed, &views, None).await;
                    tracing::debug!(
                        local = done.local,
                        shared = done.shared,
                        "cache invalidation relayed for key parts only this replica knew"
                    );
                });
            }
            true
        });
    }
}

impl CacheState {
    /// Marks the in-process entries whose entity key `matches` no longer fresh (each stays a
    /// STALE fallback), keeps answers fetched before `at` for them, and for `also`, from being
    /// fresh (calls in flight, the shared tier), and with `refresh` refreshes the held ones in
    /// the background. Returns every key invalidated.
    fn invalidate_local(
        self: &Arc<Self>,
        digests: &HashSet<u64>,
        matches: impl Fn(&EntityKey) -> bool,
        also: HashSet<Key>,
        at: Instant,
        refresh: bool,
    ) -> (HashSet<Key>, Invalidated) {
        let mut result = Invalidated::default();
        let held = self.entries.matching_parts(digests, &matches);
        let mut keys = also;
        keys.extend(held.iter().map(|h| (h.view.clone(), h.key.clone())));
        keys.extend(
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys()
                .filter(|k| matches(&k.1))
                .cloned(),
        );
        for key in &keys {
            self.invalidations.insert(key.clone(), at);
        }
        for h in &held {
            self.entries.invalidate(h);
        }
        result.local = held.len();
        // Refresh what this replica held, one call per view and feature list.
        if let Some(inner) = self.inner.get().filter(|_| refresh) {
            let mut groups: RefreshGroups = BTreeMap::new();
            for h in held {
                groups
                    .entry((h.view, h.features.to_vec()))
                    .or_insert_with(|| (h.features.clone(), Vec::new()))
                    .1
                    .push(h.key);
            }
            for ((view, _), (features, keys)) in groups {
                result.refreshing += keys.len();
                let call = FetchRequest {
                    view,
                    features,
                    keys,
                    deadline: None,
                };
                drop(
                    self.clone()
                        .start_call(inner.clone(), call, self.source_timeout, None),
                );
            }
        }
        (keys, result)
    }
}

impl<S> Layer<S> for CacheLayer
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Service = Cached<S>;

    fn layer(&self, inner: S) -> Cached<S> {
        // The cache's own calls (misses joined, refreshes, background completions) go through a
        // boxed copy of the stack; a source without a cache calls the stack itself, with no
        // boxed future of its own per call.
        let cache = self.state.as_ref().map(|state| {
            let boxed = SourceService::new(inner.clone());
            let _ = state.inner.set(boxed.clone());
            (state.clone(), boxed)
        });
        Cached {
            inner,
            cache,
            source_timeout: self.source_timeout,
            not_ready: None,
        }
    }
}

/// See [`CacheLayer`].
#[derive(Clone, Debug)]
pub struct Cached<S> {
    inner: S,
    /// With a cache: its state and the boxed stack its calls are made on.
    cache: Option<(Arc<CacheState>, SourceService)>,
    source_timeout: Option<Duration>,
    /// Without a cache: the error the source's stack answered when polled for readiness, for
    /// the next call to answer.
    not_ready: Option<Arc<FetchError>>,
}

impl<S> Service<FetchRequest> for Cached<S>
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError>,
{
    type Response = Vec<Slot>;
    type Error = Infallible;
    type Future = Either<Uncached<S::Future>, BoxFuture<Result<Vec<Slot>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Without a cache each call goes straight to the source's stack: ready when it is. With
        // one, the cache makes its calls on copies of the stack of their own.
        if self.cache.is_none() {
            match self.inner.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => self.not_ready = result.err().map(Arc::new),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        let Some((state, inner)) = &self.cache else {
            let keys = request.keys.len();
            return Either::Left(match self.not_ready.take() {
                None => Uncached::Call {
                    call: self.inner.call(request),
                    keys,
                },
                Some(error) => Uncached::Refused { error, keys },
            });
        };
        let (state, inner) = (state.clone(), inner.clone());
        let source_timeout = self.source_timeout;
        Either::Right(Box::pin(async move {
            Ok(state.serve(inner, request, source_timeout).await)
        }))
    }
}

pin_project_lite::pin_project! {
    /// The future of a call to a source without a cache: every key [`Slot::Fetched`], or every
    /// key [`Slot::Failed`] with the call's error (or the stack's, when it refused the call).
    #[project = UncachedProj]
    pub enum Uncached<F> {
        /// The stack's call.
        Call {
            #[pin]
            call: F,
            keys: usize,
        },
        /// The stack was not ready, with this error.
        Refused {
            error: Arc<FetchError>,
            keys: usize,
        },
    }
}

impl<F> std::fmt::Debug for Uncached<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Uncached::Call { keys, .. } | Uncached::Refused { keys, .. }) = self;
        f.debug_struct("Uncached")
            .field("keys", keys)
            .finish_non_exhaustive()
    }
}

impl<F> Future for Uncached<F>
where
    F: Future<Output = Result<Vec<Row>, FetchError>>,
{
    type Output = Result<Vec<Slot>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (result, keys) = match self.project() {
            UncachedProj::Call { call, keys } => {
                (std::task::ready!(call.poll(cx)).map_err(Arc::new), *keys)
            }
            UncachedProj::Refused { error, keys } => (Err(error.clone()), *keys),
        };
        Poll::Ready(Ok(match result {
            Ok(rows) => rows
                .into_iter()
                .map(|row| Slot::Fetched { row, cached: false })
                .collect(),
            Err(e) => vec![Slot::Failed(e); keys],
        }))
    }
}

impl CacheState {
    async fn serve(
        self: Arc<Self>,
        inner: SourceService,
        request: FetchRequest,
        source_timeout: Option<Duration>,
    ) -> Vec<Slot> {
        let now = Instant::now();
        let mut slots: Vec<Option<Slot>> = vec![None; request.keys.len()];
        // Entries past their TTL but within max staleness: the fallback if the source fails.
        let mut stale: Vec<Option<Entry>> = vec![None; request.keys.len()];
        let mut missing = Vec::new();
        let mut refresh = Vec::new();
        let shape = self.entries.shape(&request.view, &request.features);
        for (i, key) in request.keys.iter().enumerate() {
            let entry = shape.and_then(|shape| self.entries.get(shape, key, now));
            match entry {
                Some(e) if self.fresh(&e, now) => {
                    if self.refresh_due(&e, now) {
                        refresh.push(key.clone());
                    }
                    slots[i] = Some(Slot::Cached {
                        age: now.duration_since(e.fetched_at),
                        row: e.row,
                    });
                }
                Some(e) => {
                    stale[i] = Some(e);
                    missing.push(i);
                }
                None => missing.push(i),
            }
        }
        self.metrics
            .looked_up(request.keys.len() - missing.len(), missing.len());
        if !refresh.is_empty() && source_timeout.is_some() {
            self.clone().refresh_ahead(inner.clone(), &request, refresh);
        }
        // What the request may spend on the shared tier, its lookup and the write of its
        // call's answer together: one `timeout`.
        let mut tier_budget_ends = None;
        if let Some(shared) = self.shared.as_ref().filter(|_| !missing.is_empty()) {
            tier_budget_ends = Some(Instant::now() + shared.timeout());
            missing = self
                .look_up_shared(shared, &request, shape, missing, &mut slots, &mut stale)
                .await;
        }
        if missing.is_empty() {
            return slots.into_iter().flatten().collect();
        }

        // Keys already being fetched (for the same features) join that call; the rest make one
        // call of their own, which later requests may join in turn.
        let mut waits: Vec<(usize, SharedCall, usize)> = Vec::with_capacity(missing.len());
        let mut own = Vec::new();
        {
            let in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for &i in &missing {
                match in_flight.get(&(request.view.clone(), request.keys[i].clone())) {
                    Some(p) if same_features(&p.features, &request.features) => {
                        waits.push((i, p.call.clone(), p.index));
                    }
                    _ => own.push(i),
                }
            }
        }
        self.metrics.coalesced(missing.len() - own.len());
        if !own.is_empty() {
            let call = FetchRequest {
                view: request.view.clone(),
                features: request.features.clone(),
                keys: own.iter().map(|&i| request.keys[i].clone()).collect(),
                deadline: request.deadline,
            };
            let shared = self
                .clone()
                .start_call(inner, call, source_timeout, tier_budget_ends);
            waits.extend(own.iter().enumerate().map(|(j, &i)| (i, shared.clone(), j)));
        }

        let deadline = request.deadline;
        let answers = futures::future::join_all(waits.into_iter().map(|(i, call, j)| async move {
            let answer = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, call).await.ok(),
                None => Some(call.await),
            };
            (i, j, answer)
        }))
        .await;
        let now = Instant::now();
        for (i, j, answer) in answers {
            let error = match answer.as_deref() {
                Some(Ok(rows)) => {
                    slots[i] = Some(Slot::Fetched {
                        row: rows[j].clone(),
                        cached: true,
                    });
                    continue;
                }
                Some(Err(e)) => Arc::new(e.clone()),
                None => {
                    self.metrics.finished_in_background();
                    Arc::new(FetchError::timeout(
                        "no answer by the request's deadline (the call goes on to fill the cache)",
                    ))
                }
            };
            slots[i] = Some(match stale[i].take() {
                Some(entry)
                    if now.duration_since(entry.fetched_at) <= self.policy.max_staleness =>
                {
                    self.metrics.served_stale();
                    Slot::Stale {
                        age: now.duration_since(entry.fetched_at),
                        row: entry.row,
                        error,
                    }
                }
                _ => Slot::Failed(error),
            });
        }
        slots
            .into_iter()
            .map(|s| s.unwrap_or_else(|| Slot::Failed(Arc::new(FetchError::internal("no answer")))))
            .collect()
    }

    /// Looks `missing` keys up in the shared tier: a fresh entry is served (and copied into the
    /// in-process tier with its original fetch time); an older one within max staleness becomes
    /// the fallback if it is newer than the local one. Returns the keys still missing.
    async fn look_up_shared(
        &self,
        shared: &SharedTier,
        request: &FetchRequest,
        shape: Option<Shape>,
        missing: Vec<usize>,
        slots: &mut [Option<Slot>],
        stale: &mut [Option<Entry>],
    ) -> Vec<usize> {
        let redis_keys: Vec<String> = missing
            .iter()
            .map(|&i| shared.redis_key(&self.source, &request.view, &request.keys[i]))
            .collect();
        let found = shared.get(&redis_keys, request.deadline).await;
        let now = Instant::now();
        let mut still = Vec::with_capacity(missing.len());
        for (i, entry) in missing.into_iter().zip(found) {
            let Some(entry) = entry.filter(|e| e.features[..] == request.features[..]) else {
                still.push(i);
                continue;
            };
            let key = (request.view.clone(), request.keys[i].clone());
            let fetched_at = entry.fetched_instant(now);
            let local = Entry {
                row: entry.row,
                fetched_at,
                invalidated: self
                    .invalidations
                    .get(&key)
                    .is_some_and(|at| at >= fetched_at),
            };
            if self.fresh(&local, now) {
                if let Some(shape) = shape {
                    let k = &request.keys[i];
                    self.entries
                        .insert(shape, k, &local.row, fetched_at, local.invalidated);
                }
                slots[i] = Some(Slot::Cached {
                    age: now.duration_since(fetched_at),
                    row: local.row,
                });
                continue;
            }
            let newer = stale[i].as_ref().is_none_or(|s| s.fetched_at < fetched_at);
            if newer && now.duration_since(fetched_at) <= self.policy.max_staleness {
                stale[i] = Some(local);
            }
            still.push(i);
        }
        still
    }

    /// Starts a call to the source as its own task and registers its keys as in flight. With a
    /// background permit (and an own timeout) the call is bounded by the source's timeout only,
    /// so it outlives a request whose deadline passes and still fills the cache; without one it
    /// is bounded by the request's deadline. The task stores the answer and unregisters itself;
    /// its waiters wait for the answer's write to the shared tier until `tier_budget_ends` at the
    /// latest (see [`CacheState::store`]).
    fn start_call(
        self: Arc<Self>,
        inner: SourceService,
        mut call: FetchRequest,
        source_timeout: Option<Duration>,
        tier_budget_ends: Option<Instant>,
    ) -> SharedCall {
        let permit = source_timeout.and_then(|_| self.background.clone().try_acquire_owned().ok());
        if permit.is_some() {
            call.deadline = None;
        }
        let (tx, shared) = new_call();
        // Registered before the task starts, so the task's clean-up always finds its entries.
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for (index, key) in call.keys.iter().enumerate() {
                in_flight
                    .entry((call.view.clone(), key.clone()))
                    .or_insert_with(|| Pending {
                        call: shared.clone(),
                        index,
                        features: call.features.clone(),
                    });
            }
        }
        self.run_call(inner, call, shared.clone(), tx, permit, tier_budget_ends);
        shared
    }

    /// Refresh-ahead: fetches `keys` (served fresh, but near the end of their TTL) in the
    /// background, under a background permit and the source's own timeout. Keys already being
    /// fetched are left to that call, so a key has at most one refresh at a time.
    fn refresh_ahead(
        self: Arc<Self>,
        inner: SourceService,
        request: &FetchRequest,
        keys: Vec<EntityKey>,
    ) {
        let Ok(permit) = self.background.clone().try_acquire_owned() else {
            return;
        };
        let (tx, shared) = new_call();
        let mut call = FetchRequest {
            view: request.view.clone(),
            features: request.features.clone(),
            keys: Vec::with_capacity(keys.len()),
            deadline: None,
        };
        {
            // Checked and registered under one lock: two requests cannot both refresh a key.
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            for key in keys {
                let k = (call.view.clone(), key);
                if !in_flight.contains_key(&k) {
                    in_flight.insert(
                        k.clone(),
                        Pending {
                            call: shared.clone(),
                            index: call.keys.len(),
                            features: call.features.clone(),
                        },
                    );
                    call.keys.push(k.1);
                }
            }
        }
        if call.keys.is_empty() {
            return;
        }
        self.metrics.refreshing_ahead(call.keys.len());
        self.run_call(inner, call, shared, tx, Some(permit), None);
    }

    /// Runs a registered call as its own task: stores its answer, unregisters its keys, then
    /// hands the answer to its waiters.
    fn run_call(
        self: Arc<Self>,
        inner: SourceService,
        call: FetchRequest,
        ours: SharedCall,
        tx: tokio::sync::oneshot::Sender<CallResult>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        tier_budget_ends: Option<Instant>,
    ) {
        // Invalidations after this moment win over the call's answer.
        let started = (Instant::now(), SystemTime::now());
        // The call keeps the spans of the fetch and request that started it, even once it goes
        // on in the background.
        tokio::spawn(crate::span::in_request_span(async move {
            let result = inner.oneshot(call.clone()).await;
            if let Ok(rows) = &result {
                // Before the waiters hear of it: a replica asking right after finds it in Redis.
                self.store(&call, rows, started, tier_budget_ends).await;
            }
            {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for key in &call.keys {
                    let k = (call.view.clone(), key.clone());
                    if in_flight.get(&k).is_some_and(|p| p.call.ptr_eq(&ours)) {
                        in_flight.remove(&k);
                    }
                }
            }
            drop(permit);
            let _ = tx.send(Arc::new(result));
        }));
    }

    /// Whether a fresh entry read at `now` is old enough to be refreshed ahead of its TTL.
    fn refresh_due(&self, entry: &Entry, now: Instant) -> bool {
        let Some(fraction) = self.policy.refresh_ahead else {
            return false;
        };
        let ttl = match entry.row {
            Row::Found(_) => self.policy.ttl,
            Row::NotFound => self.policy.negative_ttl.unwrap_or(Duration::ZERO),
        };
        now.duration_since(entry.fetched_at) >= ttl.mul_f64(fraction)
    }

    fn fresh(&self, entry: &Entry, now: Instant) -> bool {
        if entry.invalidated {
            return false;
        }
        let ttl = match entry.row {
            Row::Found(_) => self.policy.ttl,
            Row::NotFound => self.policy.negative_ttl.unwrap_or(Duration::ZERO),
        };
        now.duration_since(entry.fetched_at) <= ttl
    }

    /// Stores a call's rows in both tiers, except for keys invalidated since the call started
    /// (their answer may predate the change the invalidation announced).
    /// `started` is when the call started, on both clocks (the shared tier orders writes by
    /// the wall clock). Returns once the shared tier's write is done, or at `tier_budget_ends`
    /// (what is left of the request's time for the tier after its lookup), whichever comes
    /// first; a write still running then goes on in the background. So a hung Redis costs a
    /// request one `timeout` (its lookup's), not a lookup's and a write's.
    async fn store(
        &self,
        call: &FetchRequest,
        rows: &[Row],
        started: (Instant, SystemTime),
        tier_budget_ends: Option<Instant>,
    ) {
        let (started, wall_started) = started;
        let fetched_at = Instant::now();
        let wall = SystemTime::now();
        let shape = self.entries.shape(&call.view, &call.features);
        let mut shared = Vec::new();
        for (key, row) in call.keys.iter().zip(rows) {
            if matches!(row, Row::NotFound) && self.policy.negative_ttl.is_none() {
                continue;
            }
            let k = (call.view.clone(), key.clone());
            if self.invalidations.get(&k).is_some_and(|at| at > started) {
                continue;
            }
            if let Some(tier) = &self.shared {
                shared.push((tier.redis_key(&self.source, &call.view, key), row));
            }
            if let Some(shape) = shape {
                self.entries.insert(shape, key, row, fetched_at, false);
            }
        }
        if let Some(tier) = self.shared.clone().filter(|_| !shared.is_empty()) {
            let features = call.features.clone();
            let shared: Vec<(String, Row)> = shared
                .into_iter()
                .map(|(key, row)| (key, row.clone()))
                .collect();
            let write = async move {
                let entries = shared
                    .iter()
                    .map(|(key, row)| (key.clone(), &features[..], row))
                    .collect();
                tier.put(entries, wall, wall_started).await;
            };
            match tier_budget_ends {
                None => write.await,
                Some(ends) => {
                    let write = tokio::spawn(crate::span::in_request_span(write));
                    // On time out the write is left running, bounded by the tier's timeout.
                    let _ = tokio::time::timeout_at(ends, write).await;
                }
            }
        }
    }
}

/// A new source call's sender and the shared future its waiters await.
fn new_call() -> (tokio::sync::oneshot::Sender<CallResult>, SharedCall) {
    let (tx, rx) = tokio::sync::oneshot::channel::<CallResult>();
    let shared: SharedCall = async move {
        rx.await
            .unwrap_or_else(|_| Arc::new(Err(FetchError::internal("the fetch task ended"))))
    }
    .boxed()
    .shared();
    (tx, shared)
}

fn same_features(a: &Arc<[String]>, b: &Arc<[String]>) -> bool {
    Arc::ptr_eq(a, b) || a[..] == b[..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack as gateway_stack;
    use async_trait::async_trait;
    use fetcher_api::{ErrorClass, Fetcher, Record, Value};
    use gateway_config::SourceConfig;
    use std::sync::Mutex;

    /// A source that counts its calls and keys, answers after `delay`, and fails while `failing`.
    #[derive(Debug, Default)]
    struct Upstream {
        calls: Mutex<Vec<usize>>,
        delay: Mutex<Duration>,
        failing: Mutex<bool>,
        /// Appended to every value, so a test sees a value change upstream.
        tag: Mutex<String>,
    }

    #[async_trait]
    impl Fetcher for Upstream {
        async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
            self.calls.lock().unwrap().push(request.keys.len());
            let delay = *self.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if *self.failing.lock().unwrap() {
                return Err(FetchError::unavailable("down"));
            }
            let tag = self.tag.lock().unwrap().clone();
            Ok(request
                .keys
                .iter()
                .map(|k| match &k[0] {
                    KeyPart::String(s) if s.starts_with("missing") => Row::NotFound,
                    k => Row::Found(Record {
                        cells: vec![Ok(Value::String(format!("{k}{tag}")))],
                        event_time: None,
                    }),
                })
                .collect())
        }
    }

    fn policy(negative_ttl: Option<Duration>) -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(10),
            max_staleness: Duration::from_secs(60),
            negative_ttl,
            max_bytes: 1 << 20,
            max_background_calls: 4,
            refresh_ahead: None,
            shared: None,
        }
    }

    fn stack(upstream: &Arc<Upstream>, cache: CacheConfig) -> crate::GatewayService {
        gateway_stack(upstream.clone(), &source_policy(cache))
    }

    fn request(keys: &[&str], features: &Arc<[String]>, budget: Duration) -> FetchRequest {
        FetchRequest {
            view: "v".into(),
            features: features.clone(),
            keys: keys
                .iter()
                .map(|k| vec![KeyPart::String((*k).into())])
                .collect(),
            deadline: Some(Instant::now() + budget),
        }
    }

    fn features() -> Arc<[String]> {
        vec!["f".to_owned()].into()
    }

    async fn fetch(service: &crate::GatewayService, r: FetchRequest) -> Vec<Slot> {
        let Ok(slots) = service.clone().oneshot(r).await;
        slots
    }

    #[tokio::test(start_paused = true)]
    async fn within_ttl_the_source_is_not_called_again() {
        let upstream = Arc::new(Upstream::default());
        let service = stack(&upstream, policy(None));
        let f = features();
        let first = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(
            matches!(first[0], Slot::Fetched { cached: true, .. }),
            "{first:?}"
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        let second = fetch(
            &service,
            request(&["k1", "k2"], &f, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(
            second[0],
            Slot::Cached {
                row: Row::Found(Record {
                    cells: vec![Ok(Value::String("k1".into()))],
                    event_time: None
                }),
                age: Duration::from_secs(3)
            }
        );
        assert!(matches!(second[1], Slot::Fetched { .. }));
        // One key for the first call, only the uncached key for the second.
        assert_eq!(*upstream.calls.lock().unwrap(), [1, 1]);

        // Another feature list is another entry.
        let other: Arc<[String]> = vec!["g".to_owned()].into();
        let third = fetch(
            &service,
            request(&["k1"], &other, Duration::from_millis(50)),
        )
        .await;
        assert!(matches!(third[0], Slot::Fetched { .. }));
        assert_eq!(upstream.calls.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn past_ttl_a_failing_source_is_covered_within_max_staleness_only() {
        let upstream = Arc::new(Upstream::default());
        let service = stack(&upstream, policy(None));
        let f = features();
        fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        *upstream.failing.lock().unwrap() = true;

        tokio::time::advance(Duration::from_secs(30)).await;
        let slots = fetch(
            &service,
            request(&["k1", "k9"], &f, Duration::from_millis(50)),
        )
        .await;
        match &slots[0] {
            Slot::Stale { age, error, .. } => {
                assert_eq!(*age, Duration::from_secs(30));
                assert_eq!(error.class(), ErrorClass::Unavailable);
            }
            other => panic!("expected a stale value, got {other:?}"),
        }
        // Nothing cached for k9: the honest failure.
        assert!(matches!(&slots[1], Slot::Failed(e) if e.class() == ErrorClass::Unavailable));

        tokio::time::advance(Duration::from_secs(31)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(
            matches!(slots[0], Slot::Failed(_)),
            "beyond max staleness: {slots:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn not_found_is_remembered_only_with_a_negative_ttl() {
        let f = features();
        let upstream = Arc::new(Upstream::default());
        let service = stack(&upstream, policy(None));
        fetch(
            &service,
            request(&["missing1"], &f, Duration::from_millis(50)),
        )
        .await;
        fetch(
            &service,
            request(&["missing1"], &f, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(upstream.calls.lock().unwrap().len(), 2);

        let upstream = Arc::new(Upstream::default());
        let service = stack(&upstream, policy(Some(Duration::from_secs(5))));
        fetch(
            &service,
            request(&["missing1"], &f, Duration::from_millis(50)),
        )
        .await;
        let slots = fetch(
            &service,
            request(&["missing1"], &f, Duration::from_millis(50)),
        )
        .await;
        assert!(
            matches!(
                slots[0],
                Slot::Cached {
                    row: Row::NotFound,
                    ..
                }
            ),
            "{slots:?}"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        fetch(
            &service,
            request(&["missing1"], &f, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(upstream.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_deadline_fills_the_cache_for_the_next_request() {
        let upstream = Arc::new(Upstream::default());
        *upstream.delay.lock().unwrap() = Duration::from_millis(300);
        let service = stack(&upstream, policy(None));
        let f = features();
        let started = Instant::now();
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert!(
            matches!(&slots[0], Slot::Failed(e) if e.class() == ErrorClass::Timeout),
            "{slots:?}"
        );

        // The call goes on in the background and lands in the cache.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(matches!(slots[0], Slot::Cached { .. }), "{slots:?}");
        assert_eq!(upstream.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_for_a_key_make_one_call() {
        let upstream = Arc::new(Upstream::default());
        *upstream.delay.lock().unwrap() = Duration::from_millis(20);
        let service = stack(&upstream, policy(None));
        let f = features();
        let requests =
            (0..100).map(|_| fetch(&service, request(&["k1"], &f, Duration::from_millis(50))));
        let answers = futures::future::join_all(requests).await;
        assert!(answers.iter().all(|a| matches!(a[0], Slot::Fetched { .. })));
        assert_eq!(*upstream.calls.lock().unwrap(), [1]);
        // Once that call is done nothing stays in flight: past the TTL, a new call is made.
        tokio::time::advance(Duration::from_secs(11)).await;
        fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert_eq!(*upstream.calls.lock().unwrap(), [1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_key_near_its_ttl_is_refreshed_once_in_the_background() {
        let upstream = Arc::new(Upstream::default());
        let mut cache = policy(None);
        cache.refresh_ahead = Some(0.8);
        let service = stack(&upstream, cache);
        let f = features();
        let value = |slots: &[Slot]| match &slots[0] {
            Slot::Cached {
                row: Row::Found(r), ..
            } => r.cells[0].clone().unwrap(),
            other => panic!("expected a cache hit, got {other:?}"),
        };
        fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        // Read at half its TTL: served, not refreshed.
        tokio::time::advance(Duration::from_secs(5)).await;
        fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert_eq!(upstream.calls.lock().unwrap().len(), 1);

        // Upstream changes and slows down; at 9 s (past 0.8 of the 10 s TTL) three concurrent
        // reads are served the cached value at once, and exactly one refresh goes out.
        *upstream.tag.lock().unwrap() = "-v2".into();
        *upstream.delay.lock().unwrap() = Duration::from_millis(100);
        tokio::time::advance(Duration::from_secs(4)).await;
        let started = Instant::now();
        let reads = futures::future::join_all(
            (0..3).map(|_| fetch(&service, request(&["k1"], &f, Duration::from_millis(50)))),
        )
        .await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        for slots in &reads {
            assert_eq!(value(slots), Value::String("k1".into()));
        }
        // The refresh runs as its own task.
        tokio::task::yield_now().await;
        assert_eq!(upstream.calls.lock().unwrap().len(), 2);

        // The refresh lands: the new value is served, with a new age, and past the original
        // TTL no request sees a miss.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert_eq!(value(&slots), Value::String("k1-v2".into()));
        tokio::time::advance(Duration::from_secs(3)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert_eq!(value(&slots), Value::String("k1-v2".into()));
        assert_eq!(upstream.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_ahead_is_bounded_by_the_background_permits() {
        let upstream = Arc::new(Upstream::default());
        let mut cache = policy(None);
        cache.refresh_ahead = Some(0.5);
        cache.max_background_calls = 0;
        let service = stack(&upstream, cache);
        let f = features();
        fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        tokio::time::advance(Duration::from_secs(9)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(matches!(slots[0], Slot::Cached { .. }), "{slots:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(upstream.calls.lock().unwrap().len(), 1);
    }

    fn source_policy(cache: CacheConfig) -> SourceConfig {
        SourceConfig {
            timeout: Some(Duration::from_secs(1)),
            max_concurrency: 16,
            cache: Some(cache),
            circuit_breaker: None,
            retry: None,
            hedge: None,
            ..SourceConfig::new("s", "test")
        }
    }

    fn cell(slots: &[Slot], i: usize) -> Value {
        match &slots[i] {
            Slot::Fetched {
                row: Row::Found(r), ..
            }
            | Slot::Cached {
                row: Row::Found(r), ..
            }
            | Slot::Stale {
                row: Row::Found(r), ..
            } => r.cells[0].clone().unwrap(),
            other => panic!("expected a row, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn invalidated_entries_are_stale_until_their_refresh_lands() {
        let upstream = Arc::new(Upstream::default());
        let policy = source_policy(policy(None));
        let layer = CacheLayer::new(policy.cache.as_ref(), policy.timeout, "s");
        let control = layer.control().unwrap();
        let service = crate::stack_with_cache(layer, upstream.clone(), &policy);
        let f = features();
        fetch(
            &service,
            request(&["k1", "k2"], &f, Duration::from_millis(50)),
        )
        .await;

        // The value changes upstream, which answers slowly, and a webhook says so for k1.
        *upstream.tag.lock().unwrap() = "-v2".into();
        *upstream.delay.lock().unwrap() = Duration::from_millis(100);
        let parts = HashSet::from([KeyPart::String("k1".into())]);
        let done = control.invalidate(&parts, &[], None).await;
        assert_eq!(
            done,
            Invalidated {
                local: 1,
                shared: 0,
                shared_failed: false,
                published: false,
                refreshing: 1
            }
        );

        // k1 is no longer fresh: it waits on the refresh already in flight, and past the
        // deadline gets the old value as STALE; k2 is still a hit.
        let slots = fetch(
            &service,
            request(&["k1", "k2"], &f, Duration::from_millis(50)),
        )
        .await;
        assert!(matches!(slots[0], Slot::Stale { .. }), "{slots:?}");
        assert_eq!(cell(&slots, 0), Value::String("k1".into()));
        assert!(matches!(slots[1], Slot::Cached { .. }), "{slots:?}");

        // The refresh lands: the new value is served fresh, and the source was called only by
        // the first request and the refresh.
        tokio::time::sleep(Duration::from_millis(60)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(matches!(slots[0], Slot::Cached { .. }), "{slots:?}");
        assert_eq!(cell(&slots, 0), Value::String("k1-v2".into()));
        assert_eq!(*upstream.calls.lock().unwrap(), [2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_fetched_before_an_invalidation_is_not_stored() {
        let upstream = Arc::new(Upstream::default());
        *upstream.delay.lock().unwrap() = Duration::from_millis(100);
        let policy = source_policy(policy(None));
        let layer = CacheLayer::new(policy.cache.as_ref(), policy.timeout, "s");
        let control = layer.control().unwrap();
        let service = crate::stack_with_cache(layer, upstream.clone(), &policy);
        let f = features();
        let first = {
            let service = service.clone();
            let f = f.clone();
            tokio::spawn(async move {
                fetch(&service, request(&["k1"], &f, Duration::from_millis(500))).await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Nothing is held yet; the view's entries are named so the shared tier would be told.
        let parts = HashSet::from([KeyPart::String("k1".into())]);
        let done = control.invalidate(&parts, &["v".into()], None).await;
        assert_eq!(done.local, 0);
        let slots = first.await.unwrap();
        assert!(matches!(slots[0], Slot::Fetched { .. }), "{slots:?}");

        // That answer may predate the change: the next request asks the source again.
        *upstream.delay.lock().unwrap() = Duration::ZERO;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(matches!(slots[0], Slot::Fetched { .. }), "{slots:?}");
        assert_eq!(upstream.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_past_max_staleness_are_dropped_by_the_lookup_that_finds_them() {
        let upstream = Arc::new(Upstream::default());
        let layer = CacheLayer::new(Some(&policy(None)), Some(Duration::from_secs(1)), "s");
        let state = layer.state.clone().unwrap();
        let policy = source_policy(policy(None));
        let service = crate::stack_with_cache(layer, upstream.clone(), &policy);
        let f = features();
        fetch(
            &service,
            request(&["k1", "k2"], &f, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(state.entries.size().0, 2);
        *upstream.failing.lock().unwrap() = true;
        tokio::time::advance(Duration::from_secs(61)).await;
        let slots = fetch(&service, request(&["k1"], &f, Duration::from_millis(50))).await;
        assert!(matches!(slots[0], Slot::Failed(_)), "{slots:?}");
        // Dropped by the lookup that found it too old; k2, not looked up, waits for one (or for
        // eviction).
        assert_eq!(state.entries.size().0, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_policy_rows_pass_through_and_failures_cover_every_key() {
        let upstream = Arc::new(Upstream::default());
        let service = gateway_stack(
            upstream.clone(),
            &SourceConfig {
                timeout: None,
                max_concurrency: 16,
                cache: None,
                circuit_breaker: None,
                retry: None,
                hedge: None,
                ..SourceConfig::new("s", "test")
            },
        );
        let f = features();
        let slots = fetch(
            &service,
            request(&["k1", "missing"], &f, Duration::from_millis(50)),
        )
        .await;
        assert!(matches!(slots[0], Slot::Fetched { cached: false, .. }));
        assert!(matches!(
            slots[1],
            Slot::Fetched {
                row: Row::NotFound,
                ..
            }
        ));
        *upstream.failing.lock().unwrap() = true;
        let slots = fetch(
            &service,
            request(&["k1", "k2"], &f, Duration::from_millis(50)),
        )
        .await;
        assert_eq!(slots.len(), 2);
        assert!(slots.iter().all(|s| matches!(s, Slot::Failed(_))));
    }
}
