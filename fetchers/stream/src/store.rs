//! Where tiles live: a [`TileStore`], Redis shared by every replica and ingest process, or this
//! process's memory.
//!
//! # Layout (Redis)
//! One hash per entity and view, `PREFIX:{VIEW@LAYOUT|KEY1|KEY2}` (the whole name after the
//! prefix is the cluster hash tag, so an entity's tiles live in one slot; `LAYOUT` is
//! [`aggregation::ViewDef::layout_hash`], so tiles written for another definition of the view
//! are never read; `|`, `{`, `}` and `%` in keys are percent-encoded), holding the fields
//! [`aggregation::state`] describes. Its time to live is the view's longest retention, renewed
//! by every write. Ingest's committed offsets are strings `PREFIX:offsets:{SOURCE}:TOPIC:PARTITION`
//! holding `OFFSET WATERMARK_MS`.
//!
//! # Writes
//! A write sets and deletes fields only if the hash's version is still the one read, and bumps
//! it, in one script run atomically ([`CAS_WRITE`]); a refused write is read again and redone by
//! its writer. So concurrent writers (ingest processes, replicas serving `PushEvents`) never
//! lose each other's events.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use aggregation::{Changes, ViewDef};
use async_trait::async_trait;
use fetcher_api::{EntityKey, FetchError, KeyPart};
use fred::{
    prelude::{ClientLike, HashesInterface, KeysInterface, Pool, Value as RedisValue},
    types::{ClusterHash, CustomCommand},
};
use futures::future::join_all;

/// One entity's stored fields.
pub type Fields = Vec<(String, Vec<u8>)>;

/// A store of tiles.
#[async_trait]
pub trait TileStore: Send + Sync + fmt::Debug + 'static {
    /// The fields of each key (empty for a key not stored), in key order, within `timeout`.
    async fn read(&self, keys: &[String], timeout: Duration) -> Result<Vec<Fields>, FetchError>;

    /// Applies `changes` to `key` if its version is still `version` (0: not stored), setting
    /// the version to `version + 1` and the time to live to `ttl_ms`. `Ok(false)` when the
    /// version moved (someone else wrote: read again and redo).
    async fn write(
        &self,
        key: &str,
        version: u64,
        changes: &Changes,
        ttl_ms: i64,
        timeout: Duration,
    ) -> Result<bool, FetchError>;

    /// A plain string value (ingest's committed offsets).
    async fn get(&self, key: &str, timeout: Duration) -> Result<Option<String>, FetchError>;

    /// Sets a plain string value.
    async fn set(&self, key: &str, value: &str, timeout: Duration) -> Result<(), FetchError>;

    /// Checks that the store answers.
    async fn ping(&self, timeout: Duration) -> Result<(), FetchError>;
}

/// The Redis key of an entity of `view`.
pub fn entity_key(prefix: &str, view: &ViewDef, layout: &str, key: &EntityKey) -> String {
    let mut out = format!("{prefix}:{{{}@{layout}", view.name);
    for part in key {
        out.push('|');
        match part {
            KeyPart::Int64(i) => out.push_str(&i.to_string()),
            KeyPart::String(s) => {
                for c in s.chars() {
                    match c {
                        '|' => out.push_str("%7C"),
                        '{' => out.push_str("%7B"),
                        '}' => out.push_str("%7D"),
                        '%' => out.push_str("%25"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out.push('}');
    out
}

/// The key of a partition's committed offset.
pub fn offsets_key(prefix: &str, source: &str, topic: &str, partition: i32) -> String {
    format!("{prefix}:offsets:{{{source}}}:{topic}:{partition}")
}

/// Compare-and-set of an entity's hash. `KEYS[1]` the hash; `ARGV[1]` the version read (`0`:
/// absent), `ARGV[2]` the time to live in ms, `ARGV[3]` the number of fields set, then that many
/// field/value pairs, then the fields deleted. Answers the new version, or 0 when refused.
pub const CAS_WRITE: &str = r#"
local held = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if held ~= tonumber(ARGV[1]) then
  return 0
end
local n = tonumber(ARGV[3])
local i = 4
while i < 4 + 2 * n do
  local last = math.min(i + 2 * 500 - 1, 3 + 2 * n)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
while i <= #ARGV do
  local last = math.min(i + 999, #ARGV)
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
redis.call('HSET', KEYS[1], 'v', held + 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return held + 1
"#;

/// Tiles in Redis.
pub struct RedisStore {
    pool: Pool,
    /// The SHA-1 of [`CAS_WRITE`] as Redis knows it, once loaded.
    sha: tokio::sync::OnceCell<String>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on a connected (or connecting) pool.
    pub fn new(pool: Pool) -> RedisStore {
        RedisStore {
            pool,
            sha: tokio::sync::OnceCell::new(),
        }
    }

    /// The pool, to close it.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

fn redis_error(e: &fred::error::Error) -> FetchError {
    fetcher_redis::client::classify(e)
}

#[async_trait]
impl TileStore for RedisStore {
    async fn read(&self, keys: &[String], timeout: Duration) -> Result<Vec<Fields>, FetchError> {
        let client = self
            .pool
            .next_connected()
            .with_options(&fetcher_redis::client::call_options(timeout));
        let answers = join_all(
            keys.iter()
                .map(|key| client.hgetall::<HashMap<String, RedisValue>, _>(key.as_str())),
        )
        .await;
        answers
            .into_iter()
            .map(|answer| {
                let map = answer.map_err(|e| redis_error(&e))?;
                Ok(map
                    .into_iter()
                    .map(|(field, value)| {
                        let bytes = value.as_bytes().map(<[u8]>::to_vec).unwrap_or_default();
                        (field, bytes)
                    })
                    .collect())
            })
            .collect()
    }

    async fn write(
        &self,
        key: &str,
        version: u64,
        changes: &Changes,
        ttl_ms: i64,
        timeout: Duration,
    ) -> Result<bool, FetchError> {
        let options = fetcher_redis::client::call_options(timeout);
        let client = self.pool.next_connected().with_options(&options);
        let mut args: Vec<RedisValue> =
            Vec::with_capacity(6 + 2 * changes.set.len() + changes.delete.len());
        args.push(1.into());
        args.push(key.into());
        args.push(version.to_string().into());
        args.push(ttl_ms.max(1).to_string().into());
        args.push(changes.set.len().to_string().into());
        for (field, value) in &changes.set {
            args.push(field.as_str().into());
            args.push(RedisValue::Bytes(value.clone().into()));
        }
        for field in &changes.delete {
            args.push(field.as_str().into());
        }
        // EVALSHA of the script loaded once; EVAL (which loads it on that node) when a node does
        // not know it (a restarted or failed-over Redis, another cluster node). Both as custom
        // commands so the call's timeout and fail-fast options apply (see the shared cache),
        // routed by the key's slot computed here: fred's `ClusterHash::Offset` sends a custom
        // command to the wrong node of a cluster, and one attempt allows no MOVED retry.
        let sha = self
            .sha
            .get_or_try_init(|| async {
                client
                    .custom::<String, _>(
                        CustomCommand::new_static("SCRIPT", ClusterHash::Random, false),
                        vec![RedisValue::from("LOAD"), CAS_WRITE.into()],
                    )
                    .await
            })
            .await
            .map_err(|e| redis_error(&e))?
            .clone();
        let mut with_sha = Vec::with_capacity(args.len() + 1);
        with_sha.push(RedisValue::from(sha));
        with_sha.extend(args.iter().cloned());
        let answer = client
            .custom::<i64, _>(
                CustomCommand::new_static("EVALSHA", ClusterHash::from(key), false),
                with_sha,
            )
            .await;
        let answer = match answer {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let mut with_text = Vec::with_capacity(args.len() + 1);
                with_text.push(RedisValue::from(CAS_WRITE));
                with_text.extend(args);
                client
                    .custom::<i64, _>(
                        CustomCommand::new_static("EVAL", ClusterHash::from(key), false),
                        with_text,
                    )
                    .await
            }
            other => other,
        };
        answer.map(|v| v > 0).map_err(|e| redis_error(&e))
    }

    async fn get(&self, key: &str, timeout: Duration) -> Result<Option<String>, FetchError> {
        self.pool
            .next_connected()
            .with_options(&fetcher_redis::client::call_options(timeout))
            .get::<Option<String>, _>(key)
            .await
            .map_err(|e| redis_error(&e))
    }

    async fn set(&self, key: &str, value: &str, timeout: Duration) -> Result<(), FetchError> {
        self.pool
            .next_connected()
            .with_options(&fetcher_redis::client::call_options(timeout))
            .set::<(), _, _>(key, value, None, None, false)
            .await
            .map_err(|e| redis_error(&e))
    }

    async fn ping(&self, timeout: Duration) -> Result<(), FetchError> {
        fetcher_redis::client::ping(&self.pool, timeout).await
    }
}

/// A hash's fields.
type Hash = HashMap<String, Vec<u8>>;

/// Tiles in this process's memory (the embedded demo): the same semantics as Redis, times to
/// live aside (entities are few and the process short-lived).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    hashes: Arc<Mutex<HashMap<String, Hash>>>,
    strings: Arc<Mutex<HashMap<String, String>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

fn poisoned() -> FetchError {
    FetchError::internal("the in-memory tile store is unusable after a panic")
}

#[async_trait]
impl TileStore for MemoryStore {
    async fn read(&self, keys: &[String], _timeout: Duration) -> Result<Vec<Fields>, FetchError> {
        let hashes = self.hashes.lock().map_err(|_| poisoned())?;
        Ok(keys
            .iter()
            .map(|key| {
                hashes.get(key).map_or_else(Vec::new, |h| {
                    h.iter().map(|(f, v)| (f.clone(), v.clone())).collect()
                })
            })
            .collect())
    }

    async fn write(
        &self,
        key: &str,
        version: u64,
        changes: &Changes,
        _ttl_ms: i64,
        _timeout: Duration,
    ) -> Result<bool, FetchError> {
        let mut hashes = self.hashes.lock().map_err(|_| poisoned())?;
        let hash = hashes.entry(key.to_owned()).or_default();
        let held = hash
            .get("v")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            .unwrap_or(0);
        if held != version {
            return Ok(false);
        }
        for (field, value) in &changes.set {
            hash.insert(field.clone(), value.clone());
        }
        for field in &changes.delete {
            hash.remove(field);
        }
        hash.insert("v".into(), (held + 1).to_string().into_bytes());
        Ok(true)
    }

    async fn get(&self, key: &str, _timeout: Duration) -> Result<Option<String>, FetchError> {
        Ok(self
            .strings
            .lock()
            .map_err(|_| poisoned())?
            .get(key)
            .cloned())
    }

    async fn set(&self, key: &str, value: &str, _timeout: Duration) -> Result<(), FetchError> {
        self.strings
            .lock()
            .map_err(|_| poisoned())?
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    async fn ping(&self, _timeout: Duration) -> Result<(), FetchError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_hash_tag_per_entity() {
        let view = ViewDef {
            name: "card".into(),
            keys: Vec::new(),
            time_field: "ts".into(),
            allowed_lateness: 0,
            series: Vec::new(),
            aggregates: Vec::new(),
        };
        assert_eq!(
            entity_key(
                "fg",
                &view,
                "ab12",
                &vec![KeyPart::String("c|1}{%".into()), KeyPart::Int64(-4)]
            ),
            "fg:{card@ab12|c%7C1%7D%7B%25|-4}"
        );
        assert_eq!(
            offsets_key("fg", "payments", "txns", 3),
            "fg:offsets:{payments}:txns:3"
        );
    }
}
