//! A source's cache: lookups, stale serving, coalescing, background calls, evictions, size.

use metrics::{Counter, counter, gauge};

use super::names;

/// The cache metric handles of one source.
#[derive(Clone, Debug)]
pub struct CacheMetrics {
    evicted_size: Counter,
    evicted_expired: Counter,
    hits: Counter,
    misses: Counter,
    stale: Counter,
    background: Counter,
    coalesced: Counter,
    refresh_ahead: Counter,
}

impl CacheMetrics {
    /// Registers the handles of `source`.
    pub fn new(source: &str) -> Self {
        CacheMetrics {
            evicted_size: counter!(names::CACHE_EVICTIONS, "source" => source.to_owned(), "cause" => "size"),
            evicted_expired: counter!(names::CACHE_EVICTIONS, "source" => source.to_owned(), "cause" => "expired"),
            hits: counter!(names::CACHE_LOOKUPS, "source" => source.to_owned(), "outcome" => "hit"),
            misses: counter!(names::CACHE_LOOKUPS, "source" => source.to_owned(), "outcome" => "miss"),
            stale: counter!(names::CACHE_STALE, "source" => source.to_owned()),
            background: counter!(names::CACHE_BACKGROUND, "source" => source.to_owned()),
            coalesced: counter!(names::CACHE_COALESCED, "source" => source.to_owned()),
            refresh_ahead: counter!(names::CACHE_REFRESH_AHEAD, "source" => source.to_owned()),
        }
    }

    /// An entry left the cache to respect its memory bound (`size`), or past its max staleness.
    pub fn evicted(&self, size: bool) {
        if size {
            self.evicted_size.increment(1);
        } else {
            self.evicted_expired.increment(1);
        }
    }

    /// `n` hot keys nearing their TTL are refreshed in the background.
    pub fn refreshing_ahead(&self, n: usize) {
        self.refresh_ahead.increment(n as u64);
    }

    /// A fetch looked its keys up: `hits` fresh, `misses` not.
    pub fn looked_up(&self, hits: usize, misses: usize) {
        self.hits.increment(hits as u64);
        self.misses.increment(misses as u64);
    }

    /// `n` missing keys joined a source call already in flight instead of making their own.
    pub fn coalesced(&self, n: usize) {
        self.coalesced.increment(n as u64);
    }

    /// A value was served stale.
    pub fn served_stale(&self) {
        self.stale.increment(1);
    }

    /// A source call outlived its request and goes on in the background.
    pub fn finished_in_background(&self) {
        self.background.increment(1);
    }
}

/// A cache whose size the scrape reports: `(entries, estimated bytes)`.
pub trait CacheSize: Send + Sync {
    /// The current size.
    fn size(&self) -> (u64, u64);
}

type SizedCaches = Vec<(
    metrics::Gauge,
    metrics::Gauge,
    std::sync::Weak<dyn CacheSize>,
)>;

fn sized_caches() -> &'static std::sync::Mutex<SizedCaches> {
    static CACHES: std::sync::OnceLock<std::sync::Mutex<SizedCaches>> = std::sync::OnceLock::new();
    CACHES.get_or_init(Default::default)
}

/// Reports `cache`'s size under `source` on every scrape, for as long as it lives.
pub fn register_cache(source: &str, cache: std::sync::Weak<dyn CacheSize>) {
    sized_caches()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((
            gauge!(names::CACHE_ENTRIES, "source" => source.to_owned()),
            gauge!(names::CACHE_BYTES, "source" => source.to_owned()),
            cache,
        ));
}

/// Sets the cache size gauges; the metrics endpoint calls it before rendering.
pub fn refresh_cache_sizes() {
    let mut caches = sized_caches()
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    caches.retain(|(entries, bytes, cache)| match cache.upgrade() {
        Some(cache) => {
            let (n, b) = cache.size();
            entries.set(n as f64);
            bytes.set(b as f64);
            true
        }
        None => false,
    });
}

/// The shared tier's metric handles of one source: lookups, errors by operation, and the
/// invalidations published, received and applied over its channel.
#[derive(Clone, Debug)]
pub struct SharedTierMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub get_errors: Counter,
    pub set_errors: Counter,
    pub del_errors: Counter,
    pub published: Counter,
    pub publish_failed: Counter,
    pub received: Counter,
    pub applied: Counter,
    pub malformed: Counter,
    pub lost: Counter,
    pub subscribed: Counter,
}

impl SharedTierMetrics {
    pub fn new(source: &str) -> Self {
        let lookups = names::CACHE_SHARED_LOOKUPS;
        let errors = names::CACHE_SHARED_ERRORS;
        SharedTierMetrics {
            hits: counter!(lookups, "source" => source.to_owned(), "outcome" => "hit"),
            misses: counter!(lookups, "source" => source.to_owned(), "outcome" => "miss"),
            get_errors: counter!(errors, "source" => source.to_owned(), "op" => "get"),
            set_errors: counter!(errors, "source" => source.to_owned(), "op" => "set"),
            del_errors: counter!(errors, "source" => source.to_owned(), "op" => "del"),
            published: invalidations(source, "published"),
            publish_failed: invalidations(source, "publish_failed"),
            received: invalidations(source, "received"),
            applied: invalidations(source, "applied"),
            malformed: invalidations(source, "malformed"),
            lost: invalidations(source, "lost"),
            subscribed: invalidations(source, "subscribed"),
        }
    }
}

fn invalidations(source: &str, event: &'static str) -> Counter {
    counter!(names::CACHE_INVALIDATIONS, "source" => source.to_owned(), "event" => event)
}
