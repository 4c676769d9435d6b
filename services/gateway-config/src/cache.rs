//! `[sources.NAME.cache]` and its shared tier `[sources.NAME.cache.shared]`: the per-source
//! cache (TTL, stale serving, refresh-ahead) and its optional second tier in Redis.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::{Problems, parse_duration};

/// A source's cache settings (`[sources.NAME.cache]`).
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
    /// How long a value is served without asking the source again.
    pub ttl: Duration,
    /// How old a value may be to be served (as STALE) when the source fails or is slow.
    pub max_staleness: Duration,
    /// How long a NOT_FOUND answer is remembered (`None`: not at all).
    pub negative_ttl: Option<Duration>,
    /// Memory bound of the cache, in (estimated) bytes.
    pub max_bytes: u64,
    /// Most calls finishing in the background after their request's deadline (refresh-ahead
    /// calls included).
    pub max_background_calls: usize,
    /// Refresh a value in the background when read past this fraction (0..1) of its TTL.
    pub refresh_ahead: Option<f64>,
    /// The shared second tier in Redis, if the source has one.
    pub shared: Option<SharedCacheConfig>,
}

/// `[sources.NAME.cache.shared]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedCacheConfig {
    /// `redis://[:password@]host:port[/db]` (or `rediss://`), with `${NAME}` resolved.
    pub url: String,
    /// A single server, or a Redis Cluster that `url` and `nodes` name nodes of.
    pub mode: SharedTierMode,
    /// More nodes of the cluster to discover it from (`host:port`; none outside `cluster` mode).
    pub nodes: Vec<(String, u16)>,
    /// Prepended to every key, e.g. `"fgw:"`.
    pub key_prefix: String,
    /// How long Redis keeps an entry.
    pub ttl: Duration,
    /// Longest one Redis command may take (the request's deadline applies if earlier).
    pub timeout: Duration,
}

/// How the shared tier's Redis is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedTierMode {
    /// One server (or a proxy in front of many): `url` names it.
    #[default]
    Standalone,
    /// A Redis Cluster: `url` names one node, `nodes` any others; each key goes to the node
    /// owning its slot.
    Cluster,
}

/// `[sources.NAME.cache]`: the in-process cache in front of a source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// How long a value is served without asking the source again, e.g. `"30s"`.
    pub ttl: String,
    /// How old a value may be to be served, as STALE, when the source fails or misses the
    /// deadline. Default: the TTL (nothing stale is served).
    #[serde(default)]
    pub max_staleness: Option<String>,
    /// How long a NOT_FOUND answer is remembered. Default: not remembered.
    #[serde(default)]
    pub negative_ttl: Option<String>,
    /// Memory bound, in bytes: each entry is charged what it takes in memory (its encoded
    /// row, key and the table's bookkeeping; about 100 bytes for 8 numbers). Default 64 MiB.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Most source calls finishing in the background after their request's deadline, to fill
    /// the cache. Default 256. They are bounded by the source's `timeout`; a source without one
    /// never calls in the background.
    #[serde(default)]
    pub max_background_calls: Option<usize>,
    /// Refresh-ahead: a value read when older than this fraction of its TTL (0..1, e.g. 0.8) is
    /// fetched again in the background while the cached one is served, so hot keys never go
    /// cold. Once per key at a time, within `max_background_calls`; needs the source's
    /// `timeout`. Default: off.
    #[serde(default)]
    pub refresh_ahead: Option<f64>,
    /// A second tier in Redis shared by every gateway replica (`shared = { url = ... }`); none
    /// when absent. For expensive third-party views (Plaid): one replica's call serves all.
    #[serde(default)]
    pub shared: Option<RawSharedTier>,
}

/// `[sources.NAME.cache.shared]`: the shared second cache tier (see `crate::shared_cache`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharedTier {
    /// `redis://[:${PASSWORD}@]host:port[/db]` or `rediss://...`; `${NAME}` is read from the
    /// environment when the gateway starts.
    pub url: String,
    /// `standalone` (default) or `cluster` (`url` is one node of a Redis Cluster; no database).
    #[serde(default)]
    pub mode: SharedTierMode,
    /// Other nodes of the cluster, `host:port`, reached with `url`'s scheme and credentials
    /// (`cluster` mode only). Default: none (the cluster is discovered from `url`'s node).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Prepended to every Redis key. Default `"feature-gateway:"`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// How long Redis keeps an entry. Default: the cache's `max_staleness`. Freshness is still
    /// the cache's `ttl`, reckoned from the original fetch.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Longest one Redis command may take; the request's deadline applies if earlier. A slower
    /// or failed command is a miss. Default "20ms".
    #[serde(default)]
    pub timeout: Option<String>,
}

/// Checks a source's cache settings.
pub(crate) fn cache_policy(
    raw: &RawCache,
    at: &[&str],
    problems: &mut Problems,
) -> Option<CacheConfig> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let mut duration = |name: &'static str, text: &str| {
        parse_duration(text)
            .map_err(|msg| problems.add(&field(name), msg))
            .ok()
    };
    let ttl = duration("ttl", &raw.ttl)?;
    let max_staleness = match raw.max_staleness.as_deref() {
        Some(t) => duration("max_staleness", t)?,
        None => ttl,
    };
    let negative_ttl = match raw.negative_ttl.as_deref() {
        Some(t) => Some(duration("negative_ttl", t)?),
        None => None,
    };
    if max_staleness < ttl {
        problems.add(&field("max_staleness"), "must be at least the ttl");
        return None;
    }
    if raw.max_bytes == Some(0) {
        problems.add(&field("max_bytes"), "must be positive");
        return None;
    }
    if raw.refresh_ahead.is_some_and(|f| !(f > 0.0 && f < 1.0)) {
        problems.add(&field("refresh_ahead"), "must be in (0, 1)");
        return None;
    }
    let shared = match &raw.shared {
        None => None,
        Some(t) => {
            let mut at = at.to_vec();
            at.push("shared");
            Some(shared_tier_policy(t, &at, max_staleness, problems)?)
        }
    };
    Some(CacheConfig {
        ttl,
        max_staleness,
        negative_ttl,
        max_bytes: raw.max_bytes.unwrap_or(64 * 1024 * 1024),
        max_background_calls: raw.max_background_calls.unwrap_or(256),
        refresh_ahead: raw.refresh_ahead,
        shared,
    })
}

/// Checks a cache's shared tier settings.
pub(crate) fn shared_tier_policy(
    raw: &RawSharedTier,
    at: &[&str],
    max_staleness: Duration,
    problems: &mut Problems,
) -> Option<SharedCacheConfig> {
    let field = |name: &'static str| -> Vec<&str> {
        let mut path = at.to_vec();
        path.push(name);
        path
    };
    let scheme = match fetcher_api::EnvTemplate::parse(&raw.url) {
        Err(e) => {
            problems.add(&field("url"), e.to_string());
            return None;
        }
        Ok(t) => {
            let text = t.with_stand_in("x");
            let scheme = match text.split_once("://") {
                Some(("redis", _)) => "redis",
                Some(("rediss", _)) => "rediss",
                _ => {
                    problems.add(&field("url"), "must start with redis:// or rediss://");
                    return None;
                }
            };
            if raw.mode == SharedTierMode::Cluster
                && url::Url::parse(&text)
                    .is_ok_and(|u| !u.path().trim_start_matches('/').is_empty())
            {
                problems.add(
                    &field("url"),
                    "a cluster has only database 0: remove the path",
                );
                return None;
            }
            scheme
        }
    };
    let mut nodes = Vec::new();
    if raw.mode == SharedTierMode::Standalone && !raw.nodes.is_empty() {
        problems.add(
            &field("nodes"),
            "only `cluster` mode uses more nodes: set `mode = \"cluster\"`, or remove `nodes` (a \
             standalone tier reads `url` alone)",
        );
        return None;
    }
    for node in &raw.nodes {
        match fetcher_api::config::node_address(node, scheme) {
            Ok(address) => nodes.push(address),
            Err(e) => problems.add(&field("nodes"), e),
        }
    }
    if nodes.len() != raw.nodes.len() {
        return None;
    }
    let mut duration = |name: &'static str, text: Option<&str>, default: Duration| match text {
        None => Some(default),
        Some(t) => parse_duration(t)
            .map_err(|msg| problems.add(&field(name), msg))
            .ok(),
    };
    let ttl = duration("ttl", raw.ttl.as_deref(), max_staleness)?;
    let timeout = duration("timeout", raw.timeout.as_deref(), Duration::from_millis(20))?;
    for (name, zero) in [("ttl", ttl.is_zero()), ("timeout", timeout.is_zero())] {
        if zero {
            problems.add(&field(name), "must be positive");
            return None;
        }
    }
    Some(SharedCacheConfig {
        url: raw.url.clone(),
        mode: raw.mode,
        nodes,
        key_prefix: raw
            .key_prefix
            .clone()
            .unwrap_or_else(|| "feature-gateway:".to_owned()),
        ttl,
        timeout,
    })
}
