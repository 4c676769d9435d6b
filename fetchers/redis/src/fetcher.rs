//! [`RedisFetcher`]: one pipelined round trip per batch, decoded into typed rows.
//!
//! # Contract
//! A batch is one command per key, all sent at once on one connection (the client writes every
//! queued command in one socket write, so the batch, and other requests' commands queued at the
//! same moment, share a round trip): `HMGET key <requested fields> [event time field]` (hash
//! encoding) or `GET key` (json). A hash that lacks every requested field is a row of nulls and
//! a key that does not exist is no row; HMGET answers the same for both, so for the keys whose
//! answer holds no field at all a second round trip asks `EXISTS`. In cluster mode each command
//! goes to its key's slot owner, so a batch may span every node. (MGET is not used for json: it cannot cross slots, and
//! it answers nil for a key of the wrong type, which would hide the mistake as NOT_FOUND.)
//! A command a cluster node redirected (`MOVED`: its slot moved; the client has read the slot map
//! again) is sent once more; one redirected again (`ASK`: its slot is migrating and the key has
//! already moved) is sent to the node the slot migrates to, right after `ASKING`; all within the
//! same deadline (see [`crate::client`]'s "Cluster"). A slot moving is thus invisible.
//!
//! | what Redis holds | what the row is |
//! |---|---|
//! | no key | [`Row::NotFound`] |
//! | the key, without a requested field (or JSON member, or JSON null) | that cell is [`Value::Null`] |
//! | a field that does not parse as its declared type | that cell is a [`CellError`], and a warning names the view, the field and a tag of the key |
//! | a key of another Redis type (a string for a hash view), or json that is not an object | every cell of the row is a [`CellError`], with a warning |
//! | an event-time field that is not a timestamp | the row has no event time, with a warning |
//!
//! # Failure
//! The whole batch fails on a connection problem: [`ErrorClass::Unavailable`] while disconnected
//! (immediately, never queued behind a reconnection) and [`ErrorClass::Timeout`] when the answer
//! does not come within the lesser of `command_timeout` and the request's deadline. Both are
//! retryable. See [`crate::client`].
//!
//! [`ErrorClass::Unavailable`]: fetcher_api::ErrorClass::Unavailable
//! [`ErrorClass::Timeout`]: fetcher_api::ErrorClass::Timeout

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    time::Duration,
    time::SystemTime,
};

use async_trait::async_trait;
use fetcher_api::{
    Cell, CellError, FeatureType, FetchError, FetchRequest, Fetcher, Record, Row, Value,
};
use fred::{
    prelude::{
        Client, ClientLike, HashesInterface, KeysInterface, Options, Pool, Value as RedisValue,
    },
    types::{ClusterHash, CustomCommand, config::Server},
    util::redis_keyslot,
};
use futures::future::join_all;
use tokio::time::Instant;

use crate::{
    client::{self, call_options, classify, is_connection_error, key_tag},
    config::{CompiledView, Encoding},
};

/// Serves the views of one `redis` source.
pub struct RedisFetcher {
    source: String,
    pool: Pool,
    views: HashMap<String, CompiledView>,
    command_timeout: Duration,
}

// Hand-written: the pool's config holds the password.
impl fmt::Debug for RedisFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFetcher")
            .field("source", &self.source)
            .field("views", &self.views.keys().collect::<Vec<_>>())
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisFetcher {
    fn drop(&mut self) {
        // The pool's connection tasks would otherwise keep reconnecting to a server nobody asks
        // about any more.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), pool.quit()).await;
            });
        }
    }
}

/// One command of a batch, kept as data so that it can be sent again, or after `ASKING`.
#[derive(Clone, Copy)]
enum Read<'a> {
    Hmget(&'a str, &'a [&'a str]),
    Exists(&'a str),
    Get(&'a str),
}

impl Read<'_> {
    fn key(&self) -> &str {
        match self {
            Read::Hmget(key, _) | Read::Exists(key) | Read::Get(key) => key,
        }
    }

    /// Sends it on `client` (or queues it, on a pipeline).
    async fn send<C>(self, client: &C) -> Result<RedisValue, fred::error::Error>
    where
        C: HashesInterface + KeysInterface + Sync,
    {
        match self {
            Read::Hmget(key, fields) => client.hmget(key, fields.to_vec()).await,
            Read::Exists(key) => client.exists(key).await,
            Read::Get(key) => client.get(key).await,
        }
    }
}

/// A requested feature: its field and type.
struct Wanted<'a> {
    field: &'a str,
    ty: FeatureType,
}

impl RedisFetcher {
    pub(crate) fn new(
        source: String,
        pool: Pool,
        views: Vec<CompiledView>,
        command_timeout: Duration,
    ) -> Self {
        RedisFetcher {
            source,
            pool,
            views: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
            command_timeout,
        }
    }

    /// Follows the redirections of a cluster among `answers` (see the module doc): each
    /// redirected read (`read(i)` is the `i`th) is sent again on `connection`, the client it was
    /// sent on (whose slot map a `MOVED` refreshed), and one redirected again (`ASK`, or a `MOVED`
    /// the refreshed map did not know of yet) is sent to the node its slot's node names
    /// ([`client::redirect_target`]), after `ASKING`; within what is left of `deadline`. The new
    /// answers take the old ones' places. Nothing to do outside a cluster, nor, mostly, in one:
    /// only while or after a slot moves.
    async fn follow_redirections<'r>(
        &self,
        connection: &Client,
        answers: &mut [Result<RedisValue, fred::error::Error>],
        deadline: Option<Instant>,
        read: impl Fn(usize) -> Read<'r>,
    ) -> Result<(), FetchError> {
        let redirected = |answers: &[Result<RedisValue, fred::error::Error>]| -> Vec<usize> {
            answers
                .iter()
                .enumerate()
                .filter(|(_, a)| a.as_ref().is_err_and(client::is_redirection))
                .map(|(i, _)| i)
                .collect()
        };
        let moved = redirected(answers);
        if moved.is_empty() {
            return Ok(());
        }
        let client = connection.with_options(&call_options(self.budget(deadline)?));
        let again = join_all(moved.iter().map(|&i| read(i).send(&client))).await;
        for (i, answer) in moved.into_iter().zip(again) {
            answers[i] = answer;
        }
        let asked = redirected(answers);
        if asked.is_empty() {
            return Ok(());
        }
        // Where each slot's keys are, asked once per slot (a batch rarely spans two moving slots).
        // Only a node the client is connected to: a command for another node would make it
        // reconnect to the whole cluster (a slot migrating to a node that serves no slot yet
        // stays unavailable until it is handed over).
        let budget = self.budget(deadline)?;
        let connected = connection.active_connections();
        let mut targets: HashMap<u16, Option<Server>> = HashMap::new();
        for &i in &asked {
            let slot = redis_keyslot(read(i).key().as_bytes());
            if let Entry::Vacant(entry) = targets.entry(slot) {
                let target = client::redirect_target(connection, slot, budget).await;
                entry.insert(target.filter(|node| connected.contains(node)));
            }
        }
        let budget = self.budget(deadline)?;
        let asking = asked.iter().map(|&i| {
            let read = read(i);
            let slot = redis_keyslot(read.key().as_bytes());
            let target = targets.get(&slot).cloned().flatten();
            async move {
                let target = target?;
                let pipeline = connection.pipeline();
                let pipeline = pipeline.with_options(&Options {
                    cluster_node: Some(target),
                    ..call_options(budget)
                });
                let asking = CustomCommand::new_static("ASKING", ClusterHash::Custom(slot), false);
                let _ = pipeline
                    .custom::<RedisValue, _>(asking, Vec::<RedisValue>::new())
                    .await;
                let _ = read.send(&pipeline).await;
                pipeline.try_all::<RedisValue>().await.pop()
            }
        });
        for (i, answer) in asked.iter().zip(join_all(asking).await) {
            if let Some(answer) = answer {
                answers[*i] = answer;
            }
        }
        Ok(())
    }

    /// The lesser of `command_timeout` and what is left of `deadline`.
    fn budget(&self, deadline: Option<Instant>) -> Result<Duration, FetchError> {
        let Some(deadline) = deadline else {
            return Ok(self.command_timeout);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError::timeout("the deadline passed before the call"));
        }
        Ok(left.min(self.command_timeout))
    }
}

#[async_trait]
impl Fetcher for RedisFetcher {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let view = self.views.get(&*request.view).ok_or_else(|| {
            FetchError::internal(format!("view `{}` is not served here", request.view))
        })?;
        let wanted = request
            .features
            .iter()
            .map(|f| {
                view.features
                    .get(f)
                    .map(|(field, ty)| Wanted { field, ty: *ty })
                    .ok_or_else(|| {
                        FetchError::internal(format!("view `{}` has no feature `{f}`", view.name))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if request.keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = request
            .keys
            .iter()
            .map(|k| view.key.render(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FetchError::internal(format!("view `{}`: {e}", view.name)))?;
        let connection = self.pool.next_connected();
        let client = connection.with_options(&call_options(self.budget(request.deadline)?));
        // One command per key, all sent at once: the client writes whatever is queued in one
        // socket write, so a batch (and concurrent requests on the same connection) share a
        // round trip.
        let rows = match view.encoding {
            Encoding::Hash => {
                let mut fields: Vec<&str> = wanted.iter().map(|w| w.field).collect();
                if let Some(time) = &view.event_time_field {
                    fields.push(time);
                }
                let mut answers = join_all(
                    keys.iter()
                        .map(|key| client.hmget::<RedisValue, _, _>(key.as_str(), fields.clone())),
                )
                .await;
                self.follow_redirections(connection, &mut answers, request.deadline, |i| {
                    Read::Hmget(&keys[i], &fields)
                })
                .await?;
                failed_call(&answers)?;
                // A key whose requested fields are all missing may be a hash of nulls or no key
                // at all; only EXISTS tells them apart, asked in a second round trip for those
                // keys alone.
                let unclear: Vec<usize> = answers
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| all_nil(a))
                    .map(|(i, _)| i)
                    .collect();
                let mut exists = vec![true; keys.len()];
                if !unclear.is_empty() {
                    let client = client.with_options(&call_options(self.budget(request.deadline)?));
                    let mut answers = join_all(
                        unclear
                            .iter()
                            .map(|&i| client.exists::<RedisValue, _>(keys[i].as_str())),
                    )
                    .await;
                    self.follow_redirections(connection, &mut answers, request.deadline, |j| {
                        Read::Exists(&keys[unclear[j]])
                    })
                    .await?;
                    failed_call(&answers)?;
                    for (&i, answer) in unclear.iter().zip(answers) {
                        exists[i] = matches!(answer, Ok(RedisValue::Integer(n)) if n > 0);
                    }
                }
                keys.iter()
                    .zip(answers)
                    .zip(exists)
                    .map(|((key, answer), exists)| {
                        decode_hash(view, &wanted, key, Some(answer), exists)
                    })
                    .collect()
            }
            Encoding::Json => {
                let mut answers = join_all(
                    keys.iter()
                        .map(|key| client.get::<RedisValue, _>(key.as_str())),
                )
                .await;
                self.follow_redirections(connection, &mut answers, request.deadline, |i| {
                    Read::Get(&keys[i])
                })
                .await?;
                failed_call(&answers)?;
                keys.iter()
                    .zip(answers)
                    .map(|(key, answer)| decode_json(view, &wanted, key, Some(answer)))
                    .collect()
            }
        };
        Ok(rows)
    }

    async fn health(&self) -> Result<(), FetchError> {
        client::ping(&self.pool, self.command_timeout).await
    }
}

type Answer = Option<Result<RedisValue, fred::error::Error>>;

/// The call's error when any answer is about the connection (not connected, timed out): the
/// whole call failed, whatever other keys answered.
fn failed_call(answers: &[Result<RedisValue, fred::error::Error>]) -> Result<(), FetchError> {
    match answers
        .iter()
        .find_map(|r| r.as_ref().err().filter(|e| is_connection_error(e)))
    {
        Some(e) => Err(classify(e)),
        None => Ok(()),
    }
}

/// Whether an HMGET answer holds no field at all.
fn all_nil(answer: &Result<RedisValue, fred::error::Error>) -> bool {
    matches!(answer, Ok(RedisValue::Array(values)) if values.iter().all(|v| matches!(v, RedisValue::Null)))
}

/// A row whose key holds something this view cannot read: every cell fails.
fn unreadable(view: &CompiledView, wanted: &[Wanted<'_>], key: &str, why: &str) -> Row {
    tracing::warn!(
        view = %view.name,
        key_tag = %key_tag(key),
        error = why,
        "redis key is unreadable as this view's encoding"
    );
    tracing::debug!(view = %view.name, key, "the unreadable key");
    Row::Found(Record {
        cells: wanted
            .iter()
            .map(|_| Err(CellError(format!("redis: {why}"))))
            .collect(),
        event_time: None,
    })
}

fn decode_hash(
    view: &CompiledView,
    wanted: &[Wanted<'_>],
    key: &str,
    fields: Answer,
    exists: bool,
) -> Row {
    let values = match fields {
        Some(Ok(RedisValue::Array(values))) => values,
        Some(Ok(other)) => {
            return unreadable(
                view,
                wanted,
                key,
                &format!("HMGET answered {:?}", other.kind()),
            );
        }
        Some(Err(e)) => return unreadable(view, wanted, key, e.details()),
        None => return unreadable(view, wanted, key, "no answer"),
    };
    if !exists && values.iter().all(|v| matches!(v, RedisValue::Null)) {
        return Row::NotFound;
    }
    let mut values = values.into_iter();
    let cells = wanted
        .iter()
        .map(|w| {
            let raw = values.next().unwrap_or(RedisValue::Null);
            decode_text(view, w.field, w.ty, key, &raw)
        })
        .collect();
    let event_time = view.event_time_field.as_deref().and_then(|field| {
        let raw = values.next().unwrap_or(RedisValue::Null);
        let parsed = match bytes_of(&raw) {
            None => return None,
            Some(bytes) => std::str::from_utf8(bytes)
                .map_err(|_| "not UTF-8".to_owned())
                .and_then(|text| FeatureType::Timestamp.parse_text(text)),
        };
        event_time(view, field, key, parsed)
    });
    Row::Found(Record { cells, event_time })
}

fn decode_json(view: &CompiledView, wanted: &[Wanted<'_>], key: &str, answer: Answer) -> Row {
    let raw = match answer {
        Some(Ok(RedisValue::Null)) => return Row::NotFound,
        Some(Ok(raw)) => raw,
        Some(Err(e)) => return unreadable(view, wanted, key, e.details()),
        None => return unreadable(view, wanted, key, "no answer"),
    };
    let Some(bytes) = bytes_of(&raw) else {
        return unreadable(view, wanted, key, "GET answered a non-string");
    };
    let object = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => return unreadable(view, wanted, key, "the value is not a JSON object"),
        Err(e) => return unreadable(view, wanted, key, &format!("the value is not JSON: {e}")),
    };
    let cells = wanted
        .iter()
        .map(|w| match object.get(w.field) {
            None => Ok(Value::Null),
            Some(json) => {
                w.ty.from_json(json)
                    .map_err(|e| bad_cell(view, w.field, key, e))
            }
        })
        .collect();
    let event_time = view.event_time_field.as_deref().and_then(|field| {
        let json = object.get(field)?;
        event_time(view, field, key, FeatureType::Timestamp.from_json(json))
    });
    Row::Found(Record { cells, event_time })
}

/// The bytes of a bulk string answer, `None` for nil.
fn bytes_of(value: &RedisValue) -> Option<&[u8]> {
    match value {
        RedisValue::String(s) => Some(s.as_bytes()),
        RedisValue::Bytes(b) => Some(b),
        _ => None,
    }
}

/// Decodes a hash field's text form as `ty`.
fn decode_text(
    view: &CompiledView,
    field: &str,
    ty: FeatureType,
    key: &str,
    raw: &RedisValue,
) -> Cell {
    let Some(bytes) = bytes_of(raw) else {
        return match raw {
            RedisValue::Null => Ok(Value::Null),
            other => Err(bad_cell(
                view,
                field,
                key,
                format!("unexpected {:?} answer", other.kind()),
            )),
        };
    };
    if ty == FeatureType::Bytes {
        // Raw bytes need not be UTF-8; empty is null, as in every text form.
        return Ok(if bytes.is_empty() {
            Value::Null
        } else {
            Value::Bytes(bytes.to_vec())
        });
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => ty
            .parse_text(text)
            .map_err(|e| bad_cell(view, field, key, e)),
        Err(_) => Err(bad_cell(view, field, key, "not UTF-8 text".into())),
    }
}

/// A cell that does not decode: logged (with a tag of the key, never the key itself, which may
/// be personal data) and returned as the cell's error.
fn bad_cell(view: &CompiledView, field: &str, key: &str, error: String) -> CellError {
    tracing::warn!(
        view = %view.name,
        field,
        key_tag = %key_tag(key),
        error = %error,
        "redis field does not decode as its declared type"
    );
    tracing::debug!(view = %view.name, field, key, "the key of the field that does not decode");
    CellError(format!("field `{field}`: {error}"))
}

fn event_time(
    view: &CompiledView,
    field: &str,
    key: &str,
    parsed: Result<Value, String>,
) -> Option<SystemTime> {
    match parsed {
        Ok(Value::Timestamp(t)) => Some(t),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(
                view = %view.name,
                field,
                key_tag = %key_tag(key),
                error = %e,
                "redis event time field is not a timestamp, serving without an age"
            );
            None
        }
    }
}
