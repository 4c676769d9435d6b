//! [`PostgresFetcher`]: one statement per fetch on a pooled connection, cancelled on the server
//! at the deadline, and the classification of what goes wrong.
//!
//! # Contract
//! - One key runs the view's own prepared query; more keys run its batch form (see the crate
//!   docs): one statement, one round trip, whatever the batch size.
//! - Rows come back per key in key order: no row -> [`Row::NotFound`]; more than one ->
//!   the first, or every cell failed, as the view's `multiple_rows` says.
//! - The statement runs in a task of its own that owns the pooled connection; the fetch answers
//!   at the request's deadline whatever the statement does. A statement still running then is
//!   given `cancel_after` to end by itself (its connection then goes back to the pool as it is:
//!   under load most late statements are only queued and end a moment later, and a cancel
//!   request costs the server a new connection of its own). Past that, the task sends
//!   PostgreSQL a cancel request for the statement (so the server stops working on it), waits
//!   briefly for the server to confirm the cancellation, and only then gives the connection back
//!   to the pool. A connection whose cancellation was not confirmed is closed instead: a cancel
//!   request still in flight could otherwise hit the next statement on it. The task does this
//!   even when the caller stopped waiting first (the gateway's own timeout drops the fetch at the
//!   same deadline).
//!
//! # Failure classes
//! | what happened | class | retryable |
//! |---|---|---|
//! | the deadline passed (waiting for a connection, or the statement), `statement_timeout` | timeout | yes |
//! | connection refused / lost, pool exhausted until the deadline, server shutting down, too many connections, serialization failure, deadlock | unavailable | yes |
//! | syntax, undefined table or column, permissions, bad data in a parameter, authentication | rejected | no |
//! | anything else | internal | no |
//!
//! Messages name the view and PostgreSQL's message and SQLSTATE, never the URL.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool, PoolError, Timeouts};
use fetcher_api::{
    CellError, EntityKey, FeatureType, FetchError, FetchRequest, Fetcher, KeyPart, Record, Row,
};
use tokio::time::Instant;
use tokio_postgres::{error::SqlState, types::ToSql};

use crate::{
    config::MultipleRows,
    tls::Connector,
    types::{self, Decoder},
};

/// How long a fetch without a deadline waits for a pooled connection.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// How long a timed-out statement's task waits for the server to confirm its cancellation before
/// it closes the connection instead.
const CANCEL_GRACE: Duration = Duration::from_secs(2);
/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How an entity key is bound to its placeholder: the placeholder's type as PostgreSQL inferred
/// it when the query was prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyParam {
    Int2,
    Int4,
    Int8,
    Text,
}

/// Where a feature is in the result, and how to decode it.
#[derive(Clone, Debug)]
pub(crate) struct Extractor {
    /// The column's index in the view's own query (the batch form has one column before it).
    pub column: usize,
    pub decoder: Decoder,
    pub ty: FeatureType,
    pub json_path: Option<String>,
}

/// A view, prepared and checked against the database.
#[derive(Debug)]
pub(crate) struct PreparedView {
    pub name: Arc<str>,
    /// The view's own query, for one key.
    pub single_sql: Arc<str>,
    /// The batch form: `ord` (1-based index into the key arrays), then the query's columns.
    pub batch_sql: Arc<str>,
    pub keys: Vec<KeyParam>,
    pub features: HashMap<String, Extractor>,
    /// The event-time column's index in the view's own query.
    pub event_time: Option<usize>,
    pub multiple_rows: MultipleRows,
}

/// Serves every view of one `postgres` source from a connection pool.
pub struct PostgresFetcher {
    source: String,
    pool: Pool,
    connect_timeout: Duration,
    /// How long past the deadline a statement may run before it is cancelled.
    cancel_after: Duration,
    /// The pool's own TLS connector: a cancel request opens a new connection, which must be made
    /// as the pool's are (a server that requires TLS refuses a plain cancel request).
    tls: Connector,
    views: HashMap<String, Arc<PreparedView>>,
}

// Hand-written: the pool's configuration holds the password.
impl fmt::Debug for PostgresFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresFetcher")
            .field("source", &self.source)
            .field("views", &self.views.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

type Param = Box<dyn ToSql + Sync + Send>;

impl PostgresFetcher {
    pub(crate) fn new(
        source: String,
        pool: Pool,
        connect_timeout: Duration,
        cancel_after: Duration,
        tls: Connector,
        views: Vec<PreparedView>,
    ) -> Self {
        PostgresFetcher {
            source,
            pool,
            connect_timeout,
            cancel_after,
            tls,
            views: views
                .into_iter()
                .map(|v| (v.name.to_string(), Arc::new(v)))
                .collect(),
        }
    }
}

#[async_trait]
impl Fetcher for PostgresFetcher {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let view = self.views.get(&*request.view).ok_or_else(|| {
            FetchError::internal(format!("view `{}` is not served here", request.view))
        })?;
        let wanted = request
            .features
            .iter()
            .map(|f| {
                view.features.get(f).ok_or_else(|| {
                    FetchError::internal(format!("view `{}` has no feature `{f}`", view.name))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Bound {
            sql,
            params,
            positions,
            offset,
        } = bind(view, &request.keys)?;
        let mut rows = vec![Row::NotFound; request.keys.len()];
        if positions.is_empty() {
            // No key could be bound (each is out of its placeholder's range): none can match.
            return Ok(rows);
        }
        let task = tokio::spawn(execute(
            self.pool.clone(),
            Arc::clone(&view.name),
            sql,
            params,
            Limits {
                deadline: request.deadline,
                connect_timeout: self.connect_timeout,
                cancel_after: self.cancel_after,
            },
            self.tls.clone(),
        ));
        // The answer is due at the deadline; the task goes on to end or cancel the statement.
        let joined = match request.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, task)
                .await
                .map_err(|_| timed_out(&view.name))?,
            None => task.await,
        };
        let result = joined.map_err(|e| {
            FetchError::internal(format!("view `{}`: the query task failed: {e}", view.name))
        })??;

        // Group the result's rows by key: rows of one key arrive together, in the query's order.
        let mut counts = vec![0usize; request.keys.len()];
        let mut firsts: Vec<Option<tokio_postgres::Row>> =
            (0..request.keys.len()).map(|_| None).collect();
        for row in result {
            let key = if offset == 0 {
                positions[0]
            } else {
                let ord: i64 = row.try_get(0).map_err(|e| {
                    FetchError::internal(format!("view `{}`: batch ordinal: {e}", view.name))
                })?;
                usize::try_from(ord - 1)
                    .ok()
                    .and_then(|i| positions.get(i).copied())
                    .ok_or_else(|| {
                        FetchError::internal(format!(
                            "view `{}`: batch ordinal {ord} out of range",
                            view.name
                        ))
                    })?
            };
            counts[key] += 1;
            if firsts[key].is_none() {
                firsts[key] = Some(row);
            }
        }
        for (key, first) in firsts.into_iter().enumerate() {
            let Some(first) = first else { continue };
            rows[key] = Row::Found(
                if counts[key] > 1 && view.multiple_rows == MultipleRows::Error {
                    let message = format!(
                        "the query returned {} rows for this key; the view's multiple_rows = \"error\"",
                        counts[key]
                    );
                    tracing::warn!(view = %view.name, rows = counts[key], "more than one row for a key");
                    Record {
                        cells: wanted
                            .iter()
                            .map(|_| Err(CellError(message.clone())))
                            .collect(),
                        event_time: None,
                    }
                } else {
                    record(&first, offset, &wanted, view.event_time)
                },
            );
        }
        Ok(rows)
    }

    async fn health(&self) -> Result<(), FetchError> {
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        let client = get_client(&self.pool, Some(deadline), self.connect_timeout).await?;
        tokio::time::timeout_at(deadline, client.simple_query("SELECT 1"))
            .await
            .map_err(|_| FetchError::timeout("health check: SELECT 1 timed out"))?
            .map_err(|e| classify("health check", &e))?;
        Ok(())
    }
}

/// A fetch's statement with its keys bound.
struct Bound {
    sql: Arc<str>,
    params: Vec<Param>,
    /// The request's index of each bound key, in binding order.
    positions: Vec<usize>,
    /// Where the view's columns start in the result: 0 for its own query, 1 for the batch form
    /// (after the key's ordinal).
    offset: usize,
}

/// Binds the keys to the view's own query (one key) or to its batch form (more).
fn bind(view: &PreparedView, keys: &[EntityKey]) -> Result<Bound, FetchError> {
    let nothing = || Bound {
        sql: Arc::clone(&view.single_sql),
        params: Vec::new(),
        positions: Vec::new(),
        offset: 0,
    };
    let bad_key = |key: &EntityKey| {
        FetchError::internal(format!(
            "view `{}`: a key has {} parts of the wrong types for {} entity keys",
            view.name,
            key.len(),
            view.keys.len()
        ))
    };
    if keys.len() == 1 {
        let key = &keys[0];
        if key.len() != view.keys.len() {
            return Err(bad_key(key));
        }
        let mut params: Vec<Param> = Vec::with_capacity(key.len());
        for (part, param) in key.iter().zip(&view.keys) {
            match (param, part) {
                (KeyParam::Int8, KeyPart::Int64(i)) => params.push(Box::new(*i)),
                (KeyParam::Int4, KeyPart::Int64(i)) => match i32::try_from(*i) {
                    Ok(v) => params.push(Box::new(v)),
                    Err(_) => return Ok(nothing()),
                },
                (KeyParam::Int2, KeyPart::Int64(i)) => match i16::try_from(*i) {
                    Ok(v) => params.push(Box::new(v)),
                    Err(_) => return Ok(nothing()),
                },
                (KeyParam::Text, KeyPart::String(s)) => params.push(Box::new(s.clone())),
                _ => return Err(bad_key(key)),
            }
        }
        return Ok(Bound {
            sql: Arc::clone(&view.single_sql),
            params,
            positions: vec![0],
            offset: 0,
        });
    }
    // One array per entity key, element i of each holding the i-th bound key.
    enum Column {
        Int2(Vec<i16>),
        Int4(Vec<i32>),
        Int8(Vec<i64>),
        Text(Vec<String>),
    }
    let mut columns: Vec<Column> = view
        .keys
        .iter()
        .map(|p| match p {
            KeyParam::Int2 => Column::Int2(Vec::with_capacity(keys.len())),
            KeyParam::Int4 => Column::Int4(Vec::with_capacity(keys.len())),
            KeyParam::Int8 => Column::Int8(Vec::with_capacity(keys.len())),
            KeyParam::Text => Column::Text(Vec::with_capacity(keys.len())),
        })
        .collect();
    let mut positions = Vec::with_capacity(keys.len());
    'keys: for (index, key) in keys.iter().enumerate() {
        if key.len() != view.keys.len() {
            return Err(bad_key(key));
        }
        // Check the whole key before pushing any part, so the arrays stay aligned.
        for (part, param) in key.iter().zip(&view.keys) {
            let fits = match (param, part) {
                (KeyParam::Int8, KeyPart::Int64(_)) | (KeyParam::Text, KeyPart::String(_)) => true,
                (KeyParam::Int4, KeyPart::Int64(i)) => i32::try_from(*i).is_ok(),
                (KeyParam::Int2, KeyPart::Int64(i)) => i16::try_from(*i).is_ok(),
                _ => return Err(bad_key(key)),
            };
            if !fits {
                // Outside the placeholder type's range: no row can have it.
                continue 'keys;
            }
        }
        for (part, column) in key.iter().zip(&mut columns) {
            match (column, part) {
                (Column::Int2(v), KeyPart::Int64(i)) => v.push(*i as i16),
                (Column::Int4(v), KeyPart::Int64(i)) => v.push(*i as i32),
                (Column::Int8(v), KeyPart::Int64(i)) => v.push(*i),
                (Column::Text(v), KeyPart::String(s)) => v.push(s.clone()),
                _ => return Err(bad_key(key)),
            }
        }
        positions.push(index);
    }
    let params = columns
        .into_iter()
        .map(|c| -> Param {
            match c {
                Column::Int2(v) => Box::new(v),
                Column::Int4(v) => Box::new(v),
                Column::Int8(v) => Box::new(v),
                Column::Text(v) => Box::new(v),
            }
        })
        .collect();
    Ok(Bound {
        sql: Arc::clone(&view.batch_sql),
        params,
        positions,
        offset: 1,
    })
}

fn record(
    row: &tokio_postgres::Row,
    offset: usize,
    wanted: &[&Extractor],
    event_time: Option<usize>,
) -> Record {
    let cells = wanted
        .iter()
        .map(|e| {
            types::decode(
                row,
                e.column + offset,
                e.decoder,
                e.ty,
                e.json_path.as_deref(),
            )
        })
        .collect();
    let event_time = event_time.and_then(|i| {
        match row.try_get::<_, Option<types::Timestamp>>(i + offset) {
            Ok(t) => t.map(|t| t.0),
            Err(e) => {
                // The row is still served; only the max-age check cannot apply to it.
                tracing::warn!(error = %e, "unreadable event time");
                None
            }
        }
    });
    Record { cells, event_time }
}

/// The time limits of one statement.
struct Limits {
    deadline: Option<Instant>,
    connect_timeout: Duration,
    cancel_after: Duration,
}

fn timed_out(view: &str) -> FetchError {
    FetchError::timeout(format!(
        "view `{view}`: the query did not finish by the deadline"
    ))
}

/// Runs one statement under the deadline; one still running `cancel_after` past it is cancelled
/// on the server. Owns everything it uses so it can finish after the caller has gone.
async fn execute(
    pool: Pool,
    view: Arc<str>,
    sql: Arc<str>,
    params: Vec<Param>,
    limits: Limits,
    tls: Connector,
) -> Result<Vec<tokio_postgres::Row>, FetchError> {
    let client = get_client(&pool, limits.deadline, limits.connect_timeout).await?;
    let cancel = client.cancel_token();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let mut work = Box::pin(async {
        let statement = client.prepare_cached(&sql).await?;
        client.query(&statement, &refs).await
    });
    let Some(deadline) = limits.deadline else {
        return work
            .await
            .map_err(|e| classify(&format!("view `{view}`"), &e));
    };
    tokio::select! {
        biased;
        result = &mut work => return result.map_err(|e| classify(&format!("view `{view}`"), &e)),
        () = tokio::time::sleep_until(deadline) => {}
    }
    // The deadline passed with the statement still running. Most late statements end a moment
    // later: give it the grace before costing the server a cancel request.
    if tokio::time::timeout(limits.cancel_after, &mut work)
        .await
        .is_ok()
    {
        tracing::debug!(view = %view, "statement ended after its deadline, within the grace");
        return Err(timed_out(&view));
    }
    let sent = tokio::time::timeout(CANCEL_GRACE, cancel.cancel_query(tls)).await;
    let ended = tokio::time::timeout(CANCEL_GRACE, &mut work).await;
    drop(work);
    let confirmed = matches!(sent, Ok(Ok(())))
        && matches!(&ended, Ok(Err(e)) if e.code() == Some(&SqlState::QUERY_CANCELED));
    if confirmed {
        tracing::debug!(view = %view, "statement cancelled past its deadline");
    } else {
        // The statement finished by itself or the cancel could not be confirmed: a cancel request
        // may still reach this connection's next statement, so the connection is closed.
        tracing::debug!(view = %view, "closing a connection whose cancel was not confirmed");
        drop(Object::take(client));
    }
    Err(FetchError::timeout(format!(
        "view `{view}`: the query did not finish by the deadline and was cancelled"
    )))
}

/// A pooled connection, waiting no longer than the deadline.
pub(crate) async fn get_client(
    pool: &Pool,
    deadline: Option<Instant>,
    connect_timeout: Duration,
) -> Result<Object, FetchError> {
    let wait = match deadline {
        Some(deadline) => deadline.saturating_duration_since(Instant::now()),
        None => DEFAULT_WAIT,
    };
    if wait.is_zero() {
        return Err(FetchError::timeout(
            "the deadline passed before a connection was free",
        ));
    }
    let timeouts = Timeouts {
        wait: Some(wait),
        create: Some(connect_timeout.min(wait)),
        recycle: Some(connect_timeout.min(wait)),
    };
    pool.timeout_get(&timeouts).await.map_err(|e| match e {
        PoolError::Timeout(kind) => {
            let what = format!("no connection ({kind:?} timed out)").to_lowercase();
            if deadline.is_some_and(|d| Instant::now() >= d) {
                FetchError::timeout(what)
            } else {
                FetchError::unavailable(what)
            }
        }
        PoolError::Backend(e) => classify("cannot connect", &e),
        other => FetchError::unavailable(format!("no connection: {other}")),
    })
}

/// Classifies a PostgreSQL error; `context` starts the message.
pub(crate) fn classify(context: &str, e: &tokio_postgres::Error) -> FetchError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let message = format!("{context}: {} (SQLSTATE {code})", db.message());
        let class = &code[..2.min(code.len())];
        return match (class, code) {
            (_, "57014") => FetchError::timeout(message),
            // Transient: the same statement may well succeed if run again.
            (_, "40001" | "40P01") | ("08" | "53" | "57" | "58", _) => {
                FetchError::unavailable(message)
            }
            ("22" | "23" | "28" | "3D" | "42" | "0A" | "25" | "2F" | "39" | "P0", _) => {
                FetchError::rejected(message)
            }
            _ => FetchError::internal(message),
        };
    }
    // Not from the server: the connection itself (refused, reset, closed) is transient. The
    // message carries the causes: "error performing TLS handshake" alone does not say which
    // certificate check failed.
    let text = crate::config::url_error(e);
    let mut cause: &(dyn std::error::Error + 'static) = e;
    loop {
        if cause.is::<std::io::Error>() {
            return FetchError::unavailable(format!("{context}: {text}"));
        }
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    if e.is_closed() || e.to_string().starts_with("error connecting") {
        FetchError::unavailable(format!("{context}: {text}"))
    } else {
        FetchError::internal(format!("{context}: {text}"))
    }
}
