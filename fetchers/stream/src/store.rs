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
//! lose each other's events. One script call writes up to [`ENTITIES_PER_CALL`] entities (each
//! compared and set on its own: atomic per entity, not across them) whose keys share a node:
//! any keys on a single Redis, keys of one hash slot on a cluster. A batch's calls are pipelined.

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
    bytes::Bytes,
    prelude::{ClientLike, KeysInterface, Pool, Value as RedisValue},
    types::{ClusterHash, CustomCommand, Resp3Frame},
};
use futures::future::join_all;

/// One entity's stored fields, names and values as the store answered them (for Redis, slices
/// of its reply: nothing copied).
pub type Fields = Vec<(Bytes, Bytes)>;

/// The fields of `fields` named in UTF-8 (every field this crate writes), as text and bytes.
pub fn named(fields: &Fields) -> impl Iterator<Item = (&str, &[u8])> {
    fields
        .iter()
        .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, value.as_ref())))
}

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
    ) -> Result<bool, FetchError> {
        let answers = self
            .write_many(
                &[Write {
                    key,
                    version,
                    changes,
                    ttl_ms,
                }],
                timeout,
            )
            .await?;
        Ok(answers.first().copied().unwrap_or(false))
    }

    /// Several entities' writes, each as [`TileStore::write`] and on its own (atomic per
    /// entity, not across them): whether each was applied, in order. On an error some may have
    /// been applied and others not.
    async fn write_many(
        &self,
        writes: &[Write<'_>],
        timeout: Duration,
    ) -> Result<Vec<bool>, FetchError>;

    /// A plain string value (ingest's committed offsets).
    async fn get(&self, key: &str, timeout: Duration) -> Result<Option<String>, FetchError>;

    /// Sets a plain string value.
    async fn set(&self, key: &str, value: &str, timeout: Duration) -> Result<(), FetchError>;

    /// Checks that the store answers.
    async fn ping(&self, timeout: Duration) -> Result<(), FetchError>;
}

/// One entity's compare-and-set (see [`TileStore::write`]).
#[derive(Clone, Copy, Debug)]
pub struct Write<'a> {
    pub key: &'a str,
    /// The version read (0: not stored).
    pub version: u64,
    pub changes: &'a Changes,
    pub ttl_ms: i64,
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

/// Compare-and-set of entities' hashes, each on its own. `KEYS` the hashes; `ARGV`, for each
/// key in turn: the version read (`0`: absent), the time to live in ms, the number of fields set
/// `S`, the number of fields deleted `D`, then `S` field/value pairs, then `D` fields. Answers,
/// per key, its new version, or 0 when its version moved (nothing of that key written).
pub const CAS_WRITE: &str = r#"
local out = {}
local a = 1
for k = 1, #KEYS do
  local key = KEYS[k]
  local set = tonumber(ARGV[a + 2])
  local del = tonumber(ARGV[a + 3])
  local first = a + 4
  local sets_end = first + 2 * set - 1
  local held = tonumber(redis.call('HGET', key, 'v') or '0')
  if held ~= tonumber(ARGV[a]) then
    out[k] = 0
  else
    local last = math.min(first + 2 * 500 - 1, sets_end)
    redis.call('HSET', key, 'v', held + 1, unpack(ARGV, first, last))
    local i = last + 1
    while i <= sets_end do
      last = math.min(i + 2 * 500 - 1, sets_end)
      redis.call('HSET', key, unpack(ARGV, i, last))
      i = last + 1
    end
    while i <= sets_end + del do
      last = math.min(i + 999, sets_end + del)
      redis.call('HDEL', key, unpack(ARGV, i, last))
      i = last + 1
    end
    redis.call('PEXPIRE', key, ARGV[a + 1])
    out[k] = held + 1
  end
  a = sets_end + del + 1
end
return out
"#;

/// Most entities one [`CAS_WRITE`] call writes: Redis runs a script to its end before anything
/// else, so a call is kept to a fraction of a millisecond.
pub const ENTITIES_PER_CALL: usize = 32;
/// Most arguments of one call (an entity with many changed tiles gets a call to itself).
const ARGS_PER_CALL: usize = 4_000;
/// Script calls sent as one pipeline (on a single Redis).
const CALLS_PER_PIPELINE: usize = 16;
/// Keys read by one pipeline (on a single Redis); fewer are read by one command each.
const PIPELINE_KEYS: usize = 256;

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

/// A pipeline's answers, one per command queued (`expected`); the pipeline's error (a timeout,
/// a lost connection) when it has fewer.
fn whole<T>(
    answered: Result<Vec<Result<T, fred::error::Error>>, fred::error::Error>,
    expected: usize,
) -> Result<Vec<Result<T, fred::error::Error>>, FetchError> {
    let answers = answered.map_err(|e| redis_error(&e))?;
    if answers.len() == expected {
        return Ok(answers);
    }
    Err(answers.into_iter().find_map(Result::err).map_or_else(
        || FetchError::unavailable("a pipeline lost answers"),
        |e| redis_error(&e),
    ))
}

/// A hash's fields from an HGETALL reply: pairs of an array (RESP2), or a map (RESP3).
fn hash_fields(reply: RedisValue) -> Result<Fields, FetchError> {
    let bytes = |v: RedisValue| {
        v.into_bytes()
            .ok_or_else(|| FetchError::internal("HGETALL answered a field that is not a string"))
    };
    match reply {
        RedisValue::Null => Ok(Fields::new()),
        RedisValue::Array(items) => {
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                fields.push((bytes(name)?, bytes(value)?));
            }
            Ok(fields)
        }
        RedisValue::Map(map) => map
            .inner()
            .into_iter()
            .map(|(name, value)| Ok((name.into_bytes(), bytes(value)?)))
            .collect(),
        other => Err(FetchError::internal(format!(
            "HGETALL answered a {}",
            other.kind()
        ))),
    }
}

/// A hash's fields from HGETALL's reply frame, as [`hash_fields`] reads them from a value, without
/// the value: the names and values are the frame's own slices of the bytes read, where making a
/// value of the frame would check each of the hash's names and tiles for UTF-8 and build a
/// string or bytes value of it (about a tenth of the gateway's CPU on a request for a view of
/// 16 windowed aggregates). Any other frame (an error, a RESP3 map) goes through the value.
fn frame_fields(frame: Resp3Frame) -> Result<Fields, FetchError> {
    let Resp3Frame::Array { data, .. } = frame else {
        let value = RedisValue::try_from(frame).map_err(|e| redis_error(&e))?;
        return hash_fields(value);
    };
    let bytes = |frame: Resp3Frame| match frame {
        Resp3Frame::BlobString { data, .. } | Resp3Frame::SimpleString { data, .. } => Ok(data),
        _ => Err(FetchError::internal(
            "HGETALL answered a field that is not a string",
        )),
    };
    let mut fields = Vec::with_capacity(data.len() / 2);
    let mut items = data.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        fields.push((bytes(name)?, bytes(value)?));
    }
    Ok(fields)
}

#[async_trait]
impl TileStore for RedisStore {
    async fn read(&self, keys: &[String], timeout: Duration) -> Result<Vec<Fields>, FetchError> {
        let options = fetcher_redis::client::call_options(timeout);
        let client = self.pool.next_connected();
        // HGETALL as a custom command: its reply stays a list of the hash's fields and values,
        // slices of the bytes read (`hgetall` builds a map of them, then of strings).
        let hgetall = |key: &str| {
            (
                CustomCommand::new_static("HGETALL", ClusterHash::from(key), false),
                vec![RedisValue::from(key)],
            )
        };
        if keys.len() <= PIPELINE_KEYS || client.is_clustered() {
            // A request's few keys, or keys spread over a cluster's nodes: one command each,
            // sent together, their replies read as frames.
            let client = client.with_options(&options);
            return join_all(keys.iter().map(|key| {
                let (command, args) = hgetall(key);
                client.custom_raw(command, args)
            }))
            .await
            .into_iter()
            .map(|answer| frame_fields(answer.map_err(|e| redis_error(&e))?))
            .collect();
        }
        // Ingest's thousands: pipelines of PIPELINE_KEYS commands (one future each rather than
        // one per key).
        let chunks = join_all(keys.chunks(PIPELINE_KEYS).map(|chunk| {
            let pipeline = client.pipeline().with_options(&options);
            async move {
                for key in chunk {
                    let (command, args) = hgetall(key);
                    pipeline.custom::<(), _>(command, args).await?;
                }
                Ok::<_, fred::error::Error>(pipeline.try_all::<RedisValue>().await)
            }
        }))
        .await;
        let mut fields = Vec::with_capacity(keys.len());
        for (chunk, answered) in keys.chunks(PIPELINE_KEYS).zip(chunks) {
            for answer in whole(answered, chunk.len())? {
                fields.push(hash_fields(answer.map_err(|e| redis_error(&e))?)?);
            }
        }
        Ok(fields)
    }

    async fn write_many(
        &self,
        writes: &[Write<'_>],
        timeout: Duration,
    ) -> Result<Vec<bool>, FetchError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let options = fetcher_redis::client::call_options(timeout);
        let client = self.pool.next_connected().with_options(&options);
        // Keys one call may hold: any on a single Redis, one hash slot's on a cluster.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        if client.is_clustered() {
            let mut by_slot: HashMap<u16, usize> = HashMap::new();
            for (i, w) in writes.iter().enumerate() {
                let slot = fred::util::redis_keyslot(w.key.as_bytes());
                let group = *by_slot.entry(slot).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[group].push(i);
            }
        } else {
            groups.push((0..writes.len()).collect());
        }
        let mut calls: Vec<Vec<usize>> = Vec::new();
        for group in groups {
            let mut call: Vec<usize> = Vec::new();
            let mut args = 0;
            for i in group {
                let w = &writes[i];
                let n = 5 + 2 * w.changes.set.len() + w.changes.delete.len();
                if !call.is_empty() && (call.len() == ENTITIES_PER_CALL || args + n > ARGS_PER_CALL)
                {
                    calls.push(std::mem::take(&mut call));
                    args = 0;
                }
                call.push(i);
                args += n;
            }
            if !call.is_empty() {
                calls.push(call);
            }
        }
        // EVALSHA of the script loaded once; EVAL (which loads it on that node) when a node does
        // not know it (a restarted or failed-over Redis, another cluster node). Both as custom
        // commands so the call's timeout and fail-fast options apply (see the shared cache),
        // routed by the keys' slot computed here: fred's `ClusterHash::Offset` sends a custom
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
            .as_str();
        let call_args = |call: &[usize], script: RedisValue| {
            let mut args: Vec<RedisValue> = Vec::with_capacity(
                2 + call
                    .iter()
                    .map(|&i| {
                        let c = writes[i].changes;
                        6 + 2 * c.set.len() + c.delete.len()
                    })
                    .sum::<usize>(),
            );
            args.push(script);
            args.push((call.len() as i64).into());
            for &i in call {
                args.push(writes[i].key.into());
            }
            for &i in call {
                let w = &writes[i];
                args.push(w.version.to_string().into());
                args.push(w.ttl_ms.max(1).to_string().into());
                args.push(w.changes.set.len().to_string().into());
                args.push(w.changes.delete.len().to_string().into());
                for (field, value) in &w.changes.set {
                    args.push(field.as_str().into());
                    args.push(RedisValue::Bytes(value.clone().into()));
                }
                for field in &w.changes.delete {
                    args.push(field.as_str().into());
                }
            }
            args
        };
        let slot = |call: &[usize]| ClusterHash::from(writes[call[0]].key);
        let evalsha = |call: &[usize]| CustomCommand::new_static("EVALSHA", slot(call), false);
        let mut answers = if client.is_clustered() {
            // Calls to several nodes: one command each, sent together.
            join_all(calls.iter().map(|call| {
                client.custom::<Vec<i64>, _>(evalsha(call), call_args(call, RedisValue::from(sha)))
            }))
            .await
        } else {
            // Pipelines of CALLS_PER_PIPELINE calls.
            let pipelines = join_all(calls.chunks(CALLS_PER_PIPELINE).map(|chunk| {
                let pipeline = client.pipeline().with_options(&options);
                let call_args = &call_args;
                async move {
                    for call in chunk {
                        pipeline
                            .custom::<(), _>(evalsha(call), call_args(call, RedisValue::from(sha)))
                            .await?;
                    }
                    Ok::<_, fred::error::Error>(pipeline.try_all::<Vec<i64>>().await)
                }
            }))
            .await;
            let mut answers = Vec::with_capacity(calls.len());
            for (chunk, answered) in calls.chunks(CALLS_PER_PIPELINE).zip(pipelines) {
                answers.extend(whole(answered, chunk.len())?);
            }
            answers
        };
        for (call, answer) in calls.iter().zip(answers.iter_mut()) {
            if matches!(answer, Err(e) if e.details().starts_with("NOSCRIPT")) {
                *answer = client
                    .custom::<Vec<i64>, _>(
                        CustomCommand::new_static("EVAL", slot(call), false),
                        call_args(call, RedisValue::from(CAS_WRITE)),
                    )
                    .await;
            }
        }
        let mut applied = vec![false; writes.len()];
        for (call, answer) in calls.iter().zip(answers) {
            let versions = answer.map_err(|e| redis_error(&e))?;
            if versions.len() != call.len() {
                return Err(FetchError::internal(format!(
                    "the write script answered {} versions for {} keys",
                    versions.len(),
                    call.len()
                )));
            }
            for (&i, version) in call.iter().zip(versions) {
                applied[i] = version > 0;
            }
        }
        Ok(applied)
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
                    h.iter()
                        .map(|(f, v)| {
                            (Bytes::copy_from_slice(f.as_bytes()), Bytes::from(v.clone()))
                        })
                        .collect()
                })
            })
            .collect())
    }

    async fn write_many(
        &self,
        writes: &[Write<'_>],
        _timeout: Duration,
    ) -> Result<Vec<bool>, FetchError> {
        let mut hashes = self.hashes.lock().map_err(|_| poisoned())?;
        Ok(writes
            .iter()
            .map(|w| {
                let hash = hashes.entry(w.key.to_owned()).or_default();
                let held = hash
                    .get("v")
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                    .unwrap_or(0);
                if held != w.version {
                    return false;
                }
                for (field, value) in &w.changes.set {
                    hash.insert(field.clone(), value.clone());
                }
                for field in &w.changes.delete {
                    hash.remove(field);
                }
                hash.insert("v".into(), (held + 1).to_string().into_bytes());
                true
            })
            .collect())
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
    fn reply_frames_read_as_the_values_do() {
        let blob = |b: &'static [u8]| Resp3Frame::BlobString {
            data: Bytes::from_static(b),
            attributes: None,
        };
        // Names and tiles as bytes, a tile that is not UTF-8 included.
        let reply = || Resp3Frame::Array {
            data: vec![
                blob(b"v"),
                blob(b"3"),
                blob(b"t:60:29000000"),
                blob(&[0xff, 0x00, 0x80]),
            ],
            attributes: None,
        };
        let expected: Fields = vec![
            (Bytes::from_static(b"v"), Bytes::from_static(b"3")),
            (
                Bytes::from_static(b"t:60:29000000"),
                Bytes::from_static(&[0xff, 0x00, 0x80]),
            ),
        ];
        assert_eq!(frame_fields(reply()).unwrap(), expected);
        assert_eq!(
            hash_fields(RedisValue::try_from(reply()).unwrap()).unwrap(),
            expected
        );
        // No key: an empty array (RESP2) or a null.
        let empty = Resp3Frame::Array {
            data: Vec::new(),
            attributes: None,
        };
        assert!(frame_fields(empty).unwrap().is_empty());
        assert!(frame_fields(Resp3Frame::Null).unwrap().is_empty());
        // An error reply is an error, as the value's conversion makes it.
        let error = Resp3Frame::SimpleError {
            data: "WRONGTYPE Operation against a key holding the wrong kind of value".into(),
            attributes: None,
        };
        assert!(frame_fields(error).is_err());
        let number = Resp3Frame::Array {
            data: vec![
                blob(b"v"),
                Resp3Frame::Number {
                    data: 3,
                    attributes: None,
                },
            ],
            attributes: None,
        };
        assert!(frame_fields(number).is_err());
    }

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
