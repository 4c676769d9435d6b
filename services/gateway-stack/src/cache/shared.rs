//! The shared second cache tier: a source's answers in Redis, so every gateway replica serves
//! one upstream call's result (for expensive third-party views such as Plaid's).
//!
//! Opt-in per source (`[sources.NAME.cache.shared]`). The [`crate::cache`] layer looks a key up
//! in its in-process tier first, then here, then calls the source; a source's answer is written
//! to both. Each entry holds the row, the features it answers and the wall-clock time it was
//! **fetched from the source**, so TTL, STALE and age are reckoned from the original fetch on
//! every replica, not from when a replica copied it.
//!
//! Keys are `{key_prefix}{source}:{view}:{hex sha256 of the entity key}`: an entity key (a Plaid
//! access token, say) never appears in Redis. Entries expire in Redis after `ttl` (default: the
//! cache's `max_staleness`).
//!
//! # Redis Cluster
//! With `mode = "cluster"` the tier's Redis is a cluster (`url` one node, `nodes` others): each
//! key goes to its slot's node, a lookup of many keys is one GET per key sent at once (MGET
//! cannot cross slots) instead of one MGET, and the invalidation channel works as on one server
//! (a cluster forwards every PUBLISH to every node). Keys carry no hash tag: one entity's entry of
//! one view is one key, so grouping them by slot would save no round trip, and keys spread over
//! every node. The client follows no redirection (fred's `ASK` handling is not safe to use; see
//! the `redis` source's client): a command a node redirects is a miss (the tier is a cache; the
//! `redis` source follows both redirections, the tier need not), and after a `MOVED` the client
//! has read the slot map again for the next one.
//!
//! # Newer answers win
//! Each entry also holds when the call that answered it **started**. A write goes through a Lua
//! script that refuses it when the key already holds an entry from a call that started later,
//! or a tombstone from a later invalidation: a slow call can finish after a quicker, newer one
//! (or after a webhook announced a change) and must not put its older answer back.
//!
//! # Invalidations across replicas
//! An invalidation (a Plaid webhook reaches one replica) replaces the keys in Redis with
//! tombstones holding its time (read as misses; they expire like entries) and is published on
//! the channel `{key_prefix}invalidations:{source}`; every replica subscribes to it
//! (on a connection of its own, subscribed again after each reconnection) and invalidates its
//! in-process tier the same way, so no replica goes on serving its local copy as fresh. The
//! message names each key part by its SHA-256 (an access token never crosses Redis) and the
//! replica that sent it, which ignores its own. Messages published while a replica was
//! disconnected are lost to it: its entries then stay fresh until their TTL, as without the
//! channel. `feature_gateway_cache_invalidations_total{source, event}` counts what was
//! published, received, applied, malformed or lost.
//!
//! # Failure
//! This tier never fails a request: every command is bounded by the tier's `timeout` (a lookup
//! also by the request's deadline), is never retried or queued for a reconnection, and a
//! failure (or an entry that does not decode) reads as a miss. Each is counted in
//! `feature_gateway_cache_shared_errors_total{source, op}`. A request waits on this tier for
//! one `timeout` at most, its lookup and the write of its answer together (the cache layer
//! leaves a write still running then to finish in the background), so a hung Redis costs a
//! request at most one `timeout`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::{collections::HashSet, sync::Arc};

use fetcher_api::{CellError, EntityKey, KeyPart, Record, Row, Value};
use fred::{
    prelude::{
        ClientLike, Config, EventInterface, KeysInterface, Options, PubsubInterface,
        ReconnectPolicy, TcpConfig,
    },
    types::{Builder, ClusterHash, CustomCommand, Value as RedisValue, config::ServerConfig},
};
use gateway_config::{SharedCacheConfig, SharedTierMode};

use crate::events::cache::SharedTierMetrics;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// An entry of the shared tier, as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedEntry {
    /// The features the row answers, in order.
    pub features: Vec<String>,
    /// The row.
    pub row: Row,
    /// When the source answered it (wall clock).
    pub fetched_at: SystemTime,
}

impl SharedEntry {
    /// The local (monotonic) instant of its fetch, so ages keep counting from the original
    /// fetch; a fetch time in the future (clock skew between replicas) counts as now.
    pub fn fetched_instant(&self, now: Instant) -> Instant {
        let age = SystemTime::now()
            .duration_since(self.fetched_at)
            .unwrap_or_default();
        now.checked_sub(age).unwrap_or(now)
    }
}

/// A source's shared tier: one Redis client (fred multiplexes one connection), and one more
/// for the invalidation channel (a subscribed connection takes no other commands).
#[derive(Clone)]
pub struct SharedTier {
    client: fred::clients::Client,
    subscriber: fred::clients::Client,
    channel: String,
    /// This replica's id in the messages it publishes.
    replica: Arc<str>,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
    /// A Redis Cluster: a lookup of many keys is one GET per key.
    cluster: bool,
    metrics: SharedTierMetrics,
}

impl std::fmt::Debug for SharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: not shown.
        f.debug_struct("SharedTier")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// An invalidation on the channel: the SHA-256 of each key part whose entries are no longer
/// fresh, from the replica that sent it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvalidationMessage {
    /// The message format's version: 1.
    pub v: u32,
    /// The sending replica's id.
    pub replica: String,
    /// When the invalidation was made (Unix milliseconds).
    pub at_ms: i64,
    /// `part_hash` of each key part.
    pub parts: Vec<String>,
    /// The outside object the invalidation is about (a Plaid Item's id), when the sender had
    /// one: a replica that knows key parts of it the sender did not name invalidates them too,
    /// in both tiers, and publishes them (without an item, so nothing is relayed twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

impl InvalidationMessage {
    /// The message's text, or `None` when it is not a version 1 invalidation.
    pub fn decode(text: &str) -> Option<InvalidationMessage> {
        serde_json::from_str::<InvalidationMessage>(text)
            .ok()
            .filter(|m| {
                m.v == 1
                    && m.parts.iter().all(|p| p.len() == 64)
                    && (!m.parts.is_empty() || m.item.is_some())
            })
    }
}

/// The hex SHA-256 of a key part, as invalidation messages name it.
pub fn part_hash(part: &KeyPart) -> String {
    let mut hash = Sha256::new();
    hash_part(&mut hash, part);
    hex::encode(hash.finalize())
}

/// The first 8 bytes of [`part_hash`]'s digest, as a number: what the in-process tier indexes
/// its entries by, so that an invalidation finds them without a scan.
pub fn part_digest(part: &KeyPart) -> u64 {
    let mut hash = Sha256::new();
    hash_part(&mut hash, part);
    let digest = hash.finalize();
    u64::from_be_bytes(std::array::from_fn(|i| digest[i]))
}

/// [`part_digest`] of the part whose [`part_hash`] is `hex`; `None` for anything but hex.
pub fn digest_of_hash(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex.get(..16)?, 16).ok()
}

fn hash_part(hash: &mut Sha256, part: &KeyPart) {
    match part {
        KeyPart::Int64(i) => {
            hash.update([0u8]);
            hash.update(i.to_le_bytes());
        }
        KeyPart::String(s) => {
            hash.update([1u8]);
            hash.update((s.len() as u64).to_le_bytes());
            hash.update(s.as_bytes());
        }
    }
}

impl SharedTier {
    /// A client for `policy`. Connecting goes on in the background (Redis may start after the
    /// gateway, or be down): until it is up, every lookup is a counted miss.
    pub fn connect(policy: &SharedCacheConfig, source: &str) -> Result<SharedTier, String> {
        // The URL may hold a password: errors are reported by kind only.
        let mut config = Config::from_url(&policy.url)
            .map_err(|e| format!("cache.shared.url: cannot be used ({:?})", e.kind()))?;
        let cluster = policy.mode == SharedTierMode::Cluster;
        if cluster {
            let first = match &config.server {
                ServerConfig::Centralized { server } => (server.host.to_string(), server.port),
                _ => return Err("cache.shared.url: not a server's URL".to_owned()),
            };
            let mut hosts = vec![first];
            hosts.extend(policy.nodes.iter().cloned());
            config.server = ServerConfig::new_clustered(hosts);
            config.database = None;
        }
        // `subscribed`: the invalidation channel's connection, which runs no command of ours
        // after SUBSCRIBE, so only keepalive notices it is dead, and bursts of messages need room
        // while one is applied.
        let builder = |config: Config, subscribed: bool| {
            let mut builder = Builder::from_config(config);
            builder
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    if !subscribed {
                        c.max_command_attempts = 1;
                        // A redirected command is a miss (see the module doc).
                        c.max_redirections = 0;
                    }
                    c.tcp = TcpConfig {
                        nodelay: Some(true),
                        keepalive: subscribed.then(|| {
                            socket2::TcpKeepalive::new().with_time(Duration::from_secs(30))
                        }),
                        ..TcpConfig::default()
                    };
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
            if subscribed {
                builder.with_performance_config(|p| p.broadcast_channel_capacity = 4096);
            }
            builder.build().map_err(|e| {
                format!(
                    "cache.shared: cannot create the Redis client ({:?})",
                    e.kind()
                )
            })
        };
        let client = builder(config.clone(), false)?;
        let subscriber = builder(config, true)?;
        // The connection task runs on its own (and reconnects); its handle is not needed.
        drop(client.connect());
        Ok(SharedTier {
            client,
            subscriber,
            channel: format!("{}invalidations:{source}", policy.key_prefix),
            replica: uuid::Uuid::new_v4().simple().to_string().into(),
            prefix: policy.key_prefix.clone(),
            ttl: policy.ttl,
            timeout: policy.timeout,
            cluster,
            metrics: SharedTierMetrics::new(source),
        })
    }

    /// Waits up to `wait` for the first connection (start-up logging only).
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        matches!(
            tokio::time::timeout(wait, self.client.wait_for_connect()).await,
            Ok(Ok(()))
        )
    }

    /// How long one command may take (`cache.shared.timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The Redis key of a view's entity key (hashed: keys may be secrets).
    pub fn redis_key(&self, source: &str, view: &str, key: &EntityKey) -> String {
        let mut hash = Sha256::new();
        for part in key {
            hash_part(&mut hash, part);
        }
        format!(
            "{}{source}:{view}:{}",
            self.prefix,
            hex::encode(hash.finalize())
        )
    }

    /// Tells the other replicas that entries holding `parts` (or key parts of `item`) are no
    /// longer fresh; `false` (and counted) when Redis could not be told.
    pub async fn publish_invalidation(&self, parts: &HashSet<KeyPart>, item: Option<&str>) -> bool {
        let message = InvalidationMessage {
            v: 1,
            replica: self.replica.to_string(),
            at_ms: millis(SystemTime::now()),
            parts: parts.iter().map(part_hash).collect(),
            item: item.map(str::to_owned),
        };
        let Some(options) = self.options(None) else {
            return false;
        };
        let text = serde_json::to_string(&message).unwrap_or_default();
        match self
            .client
            .with_options(&options)
            .publish::<i64, _, _>(self.channel.as_str(), text)
            .await
        {
            Ok(_) => {
                self.metrics.published.increment(1);
                true
            }
            Err(_) => {
                self.metrics.publish_failed.increment(1);
                false
            }
        }
    }

    /// Subscribes to the invalidation channel, in the background, and calls `apply` with every
    /// other replica's message, until `apply` answers `false` (its cache is gone); then the
    /// connection is closed.
    pub fn listen(&self, apply: impl Fn(InvalidationMessage) -> bool + Send + 'static) {
        let subscriber = self.subscriber.clone();
        let channel = self.channel.clone();
        let replica = self.replica.clone();
        let metrics = self.metrics.clone();
        // Both receivers exist before the first connection, so nothing is missed.
        let mut messages = subscriber.message_rx();
        let mut reconnects = subscriber.reconnect_rx();
        drop(subscriber.connect());
        let resubscriber = subscriber.clone();
        let resubscribe_metrics = metrics.clone();
        let subscribing = tokio::spawn(async move {
            // Subscribes on every (re)connection: a new connection has no subscriptions.
            let subscribe = || async {
                while resubscriber.subscribe(channel.as_str()).await.is_err() {
                    if !resubscriber.is_connected() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                resubscribe_metrics.subscribed.increment(1);
            };
            if resubscriber.wait_for_connect().await.is_ok() {
                subscribe().await;
            }
            while reconnects.recv().await.is_ok() {
                subscribe().await;
            }
        });
        let log_limit = crate::events::LogLimit::new(Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                let message = match messages.recv().await {
                    Ok(message) => message,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        metrics.lost.increment(n);
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                metrics.received.increment(1);
                let decoded = message
                    .value
                    .as_str()
                    .and_then(|text| InvalidationMessage::decode(&text));
                let Some(decoded) = decoded else {
                    metrics.malformed.increment(1);
                    if let Some(suppressed) = log_limit.admit() {
                        tracing::warn!(channel = %message.channel, suppressed, "a malformed cache invalidation message was ignored");
                    }
                    continue;
                };
                if decoded.replica == *replica {
                    continue;
                }
                if !apply(decoded) {
                    break;
                }
                metrics.applied.increment(1);
            }
            subscribing.abort();
            let _ = tokio::time::timeout(Duration::from_secs(1), subscriber.quit()).await;
        });
    }

    fn options(&self, deadline: Option<Instant>) -> Option<Options> {
        let budget = match deadline {
            Some(d) => d.checked_duration_since(Instant::now())?.min(self.timeout),
            None => self.timeout,
        };
        if budget.is_zero() {
            return None;
        }
        Some(Options {
            fail_fast: true,
            timeout: Some(budget),
            max_attempts: Some(1),
            ..Options::default()
        })
    }

    /// Looks `keys` up (one MGET; in a cluster, one GET per key sent at once); a failure is a miss
    /// for every key.
    pub async fn get(
        &self,
        keys: &[String],
        deadline: Option<Instant>,
    ) -> Vec<Option<SharedEntry>> {
        let misses = || vec![None; keys.len()];
        if keys.is_empty() {
            return Vec::new();
        }
        let Some(options) = self.options(deadline) else {
            return misses();
        };
        let answer: Result<Vec<Option<String>>, _> = if keys.len() == 1 {
            self.client
                .with_options(&options)
                .get::<Option<String>, _>(keys[0].as_str())
                .await
                .map(|v| vec![v])
        } else if self.cluster {
            let client = self.client.with_options(&options);
            futures::future::join_all(
                keys.iter()
                    .map(|key| client.get::<Option<String>, _>(key.as_str())),
            )
            .await
            .into_iter()
            .collect()
        } else {
            self.client
                .with_options(&options)
                .mget::<Vec<Option<String>>, _>(keys.to_vec())
                .await
        };
        let texts = match answer {
            Ok(texts) if texts.len() == keys.len() => texts,
            Ok(_) | Err(_) => {
                self.metrics.get_errors.increment(1);
                return misses();
            }
        };
        texts
            .into_iter()
            .map(|text| {
                let entry = text.and_then(|t| match decode(&t) {
                    Some(entry) => Some(entry),
                    None if is_tombstone(&t) => None,
                    None => {
                        self.metrics.get_errors.increment(1);
                        None
                    }
                });
                match entry {
                    Some(_) => self.metrics.hits.increment(1),
                    None => self.metrics.misses.increment(1),
                }
                entry
            })
            .collect()
    }

    /// Stores entries (key, features, row) from a call that started at `started` and was
    /// answered at `fetched_at`. A key holding an answer from a call that started later, or a
    /// later invalidation, keeps it (see the module doc); failures are counted.
    pub async fn put(
        &self,
        entries: Vec<(String, &[String], &Row)>,
        fetched_at: SystemTime,
        started: SystemTime,
    ) {
        let writes = entries
            .into_iter()
            .map(|(key, features, row)| (key, encode(features, row, fetched_at, started)));
        let failed = self.write_newer(writes, started).await;
        self.metrics.set_errors.increment(failed);
    }

    /// Invalidates keys as of `at`: each becomes a tombstone that no answer from a call started
    /// before `at` replaces. `false` (and counted) when Redis could not be told.
    pub async fn invalidate(&self, keys: Vec<String>, at: SystemTime) -> bool {
        let tombstone = json!({ "v": 1, "inv": millis(at) }).to_string();
        let writes = keys.into_iter().map(|key| (key, tombstone.clone()));
        let failed = self.write_newer(writes, at).await;
        self.metrics.del_errors.increment(failed);
        failed == 0
    }

    /// Writes each (key, text) unless the key holds something newer than `since` (one script
    /// call per key, all sent at once); returns how many failed.
    async fn write_newer(
        &self,
        writes: impl Iterator<Item = (String, String)>,
        since: SystemTime,
    ) -> u64 {
        let writes: Vec<(String, String)> = writes.collect();
        let Some(options) = self.options(None) else {
            return writes.len() as u64;
        };
        // EVAL as a custom command: fred's `eval` goes past `with_options` (its Lua interface
        // is not implemented for `WithOptions`, so the call reaches the plain client), and would
        // wait on a hung Redis with no timeout and queue for a reconnection instead of failing.
        let client = self.client.with_options(&options);
        let since = millis(since).to_string();
        let ttl = self.ttl.as_millis().max(1).to_string();
        let calls = writes.into_iter().map(|(key, text)| {
            let client = &client;
            // Routed by the key's slot, computed here: fred's `ClusterHash::Offset` sends a
            // custom command to the wrong node of a cluster, and one attempt allows no retry
            // after MOVED.
            let eval = CustomCommand::new_static("EVAL", ClusterHash::from(key.as_str()), false);
            let args: Vec<RedisValue> = vec![
                WRITE_NEWER.into(),
                1.into(),
                key.into(),
                text.into(),
                since.clone().into(),
                ttl.clone().into(),
            ];
            async move { client.custom::<i64, _>(eval, args).await }
        });
        futures::future::join_all(calls)
            .await
            .iter()
            .filter(|r| r.is_err())
            .count() as u64
    }
}

/// Sets `KEYS[1]` to `ARGV[1]` with a time to live of `ARGV[3]` ms unless it holds an entry
/// whose call started (`st`), or a tombstone whose invalidation happened (`inv`), after
/// `ARGV[2]` (ms since the epoch). Entries written before `st` existed count from their fetch
/// time (`at`). Answers 1 when written, 0 when refused. (Redis runs a script atomically; it
/// sends the script's text each time, which suits this tier's rare writes.)
const WRITE_NEWER: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, held = pcall(cjson.decode, current)
  if ok and type(held) == 'table' then
    local since = held['st'] or held['inv'] or held['at']
    if type(since) == 'number' and since > tonumber(ARGV[2]) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn encode_value(v: &Value) -> Json {
    match v {
        Value::Null => json!({ "n": null }),
        Value::Int64(i) => json!({ "i": i }),
        Value::Double(d) => json!({ "d": d }),
        Value::String(s) => json!({ "s": s }),
        Value::Bool(b) => json!({ "b": b }),
        Value::Bytes(b) => json!({ "y": hex::encode(b) }),
        Value::Timestamp(t) => {
            let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            json!({ "t": [since.as_secs(), since.subsec_nanos()] })
        }
        Value::Int64List(l) => json!({ "il": l }),
        Value::DoubleList(l) => json!({ "dl": l }),
        Value::StringList(l) => json!({ "sl": l }),
    }
}

fn decode_value(j: &Json) -> Option<Value> {
    let (tag, v) = j.as_object()?.iter().next()?;
    Some(match tag.as_str() {
        "n" => Value::Null,
        "i" => Value::Int64(v.as_i64()?),
        // JSON has no NaN or infinity: serde_json writes them as null.
        "d" => Value::Double(v.as_f64().unwrap_or(f64::NAN)),
        "s" => Value::String(v.as_str()?.to_owned()),
        "b" => Value::Bool(v.as_bool()?),
        "y" => Value::Bytes(hex::decode(v.as_str()?).ok()?),
        "t" => {
            let secs = v.get(0)?.as_u64()?;
            let nanos = u32::try_from(v.get(1)?.as_u64()?).ok()?;
            Value::Timestamp(UNIX_EPOCH + Duration::new(secs, nanos))
        }
        "il" => Value::Int64List(serde_json::from_value(v.clone()).ok()?),
        "dl" => Value::DoubleList(serde_json::from_value(v.clone()).ok()?),
        "sl" => Value::StringList(serde_json::from_value(v.clone()).ok()?),
        _ => return None,
    })
}

/// The stored form: `{"v":1,"at":MS,"st":MS,"f":[features],"row":null|{"c":[cells],"et":MS|null}}`
/// (`at` when the source answered, `st` when the call started), a cell being an encoded value
/// or `{"e": message}`. An invalidation's tombstone is `{"v":1,"inv":MS}`.
pub fn encode(
    features: &[String],
    row: &Row,
    fetched_at: SystemTime,
    started: SystemTime,
) -> String {
    let row = match row {
        Row::NotFound => Json::Null,
        Row::Found(record) => json!({
            "c": record.cells.iter().map(|c| match c {
                Ok(v) => encode_value(v),
                Err(e) => json!({ "e": e.0 }),
            }).collect::<Vec<_>>(),
            "et": record.event_time.map(millis),
        }),
    };
    json!({
        "v": 1,
        "at": millis(fetched_at),
        "st": millis(started),
        "f": features,
        "row": row,
    })
    .to_string()
}

/// Whether `text` is an invalidation's tombstone (a miss, not a malformed entry).
fn is_tombstone(text: &str) -> bool {
    serde_json::from_str::<Json>(text)
        .is_ok_and(|j| j.get("inv").is_some() && j.get("row").is_none())
}

/// Reads [`encode`]'s form back; `None` for anything else.
pub fn decode(text: &str) -> Option<SharedEntry> {
    let j: Json = serde_json::from_str(text).ok()?;
    if j.get("v")?.as_i64()? != 1 {
        return None;
    }
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(j.get("at")?.as_i64()?).ok()?);
    let features: Vec<String> = serde_json::from_value(j.get("f")?.clone()).ok()?;
    let row = match j.get("row")? {
        Json::Null => Row::NotFound,
        r => {
            let cells = r
                .get("c")?
                .as_array()?
                .iter()
                .map(|c| match c.get("e") {
                    Some(e) => Some(Err(CellError(e.as_str()?.to_owned()))),
                    None => decode_value(c).map(Ok),
                })
                .collect::<Option<Vec<_>>>()?;
            let event_time = match r.get("et") {
                None | Some(Json::Null) => None,
                Some(ms) => Some(UNIX_EPOCH + Duration::from_millis(ms.as_u64()?)),
            };
            Row::Found(Record { cells, event_time })
        }
    };
    Some(SharedEntry {
        features,
        row,
        fetched_at: at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_messages_round_trip_and_name_parts_by_hash_only() {
        let token = KeyPart::String("access-sandbox-secret".into());
        let message = InvalidationMessage {
            v: 1,
            replica: "r1".into(),
            at_ms: 1_700_000_000_123,
            parts: vec![part_hash(&token), part_hash(&KeyPart::Int64(7))],
            item: Some("item-1".into()),
        };
        let text = serde_json::to_string(&message).unwrap();
        assert!(!text.contains("secret"), "{text}");
        assert_eq!(InvalidationMessage::decode(&text), Some(message));
        // A string and a number that print alike are different parts.
        assert_ne!(
            part_hash(&KeyPart::String("7".into())),
            part_hash(&KeyPart::Int64(7))
        );
        assert_eq!(part_hash(&token).len(), 64);
    }

    #[test]
    fn a_part_hash_names_its_digest() {
        for part in [
            KeyPart::String("access-sandbox-1".into()),
            KeyPart::Int64(-7),
        ] {
            assert_eq!(digest_of_hash(&part_hash(&part)), Some(part_digest(&part)));
        }
        assert_ne!(
            part_digest(&KeyPart::Int64(1)),
            part_digest(&KeyPart::String("1".into()))
        );
        assert_eq!(digest_of_hash("not hex at all, not even sixteen"), None);
        assert_eq!(digest_of_hash("abc"), None);
    }

    #[test]
    fn malformed_invalidation_messages_decode_to_nothing() {
        let hash = part_hash(&KeyPart::Int64(1));
        for text in [
            String::new(),
            "not json".into(),
            "{}".into(),
            format!(r#"{{"v":2,"replica":"r","at_ms":1,"parts":["{hash}"]}}"#),
            r#"{"v":1,"replica":"r","at_ms":1,"parts":["short"]}"#.into(),
            format!(r#"{{"v":1,"replica":"r","parts":["{hash}"]}}"#),
            // Neither a key part nor an item: nothing to invalidate.
            r#"{"v":1,"replica":"r","at_ms":1,"parts":[]}"#.into(),
        ] {
            assert_eq!(InvalidationMessage::decode(&text), None, "{text}");
        }
        let good = format!(r#"{{"v":1,"replica":"r","at_ms":1,"parts":["{hash}"]}}"#);
        assert!(InvalidationMessage::decode(&good).is_some());
        let item_only = r#"{"v":1,"replica":"r","at_ms":1,"parts":[],"item":"i"}"#;
        assert!(InvalidationMessage::decode(item_only).is_some());
    }

    #[test]
    fn entries_round_trip_with_their_fetch_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let features = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let row = Row::Found(Record {
            cells: vec![
                Ok(Value::Double(12.5)),
                Err(CellError("ITEM_LOGIN_REQUIRED".into())),
                Ok(Value::StringList(vec!["x".into()])),
            ],
            event_time: Some(UNIX_EPOCH + Duration::from_millis(1_600_000_000_000)),
        });
        let entry = decode(&encode(&features, &row, at, at)).unwrap();
        assert_eq!(
            entry,
            SharedEntry {
                features: features.clone(),
                row,
                fetched_at: at
            }
        );
        let entry = decode(&encode(&features, &Row::NotFound, at, at)).unwrap();
        assert_eq!(entry.row, Row::NotFound);
        for v in [
            Value::Null,
            Value::Int64(-3),
            Value::Bool(true),
            Value::Bytes(vec![0, 255]),
            Value::Timestamp(UNIX_EPOCH + Duration::new(5, 7)),
            Value::Int64List(vec![1, 2]),
            Value::DoubleList(vec![0.5]),
        ] {
            assert_eq!(decode_value(&encode_value(&v)), Some(v));
        }
        assert!(decode("{\"v\":2}").is_none());
        assert!(decode("not json").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn ages_count_from_the_original_fetch() {
        let now = Instant::now();
        let entry = SharedEntry {
            features: vec![],
            row: Row::NotFound,
            fetched_at: SystemTime::now() - Duration::from_secs(30),
        };
        let age = now.duration_since(entry.fetched_instant(now));
        assert!(
            age >= Duration::from_secs(30) && age < Duration::from_secs(31),
            "{age:?}"
        );
    }
}
