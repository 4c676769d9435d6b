//! The `postgres` source: transactional facts read from PostgreSQL by parameterized SQL views,
//! over a pool of connections (deadpool-postgres), one statement per fetch.
//!
//! # Configuration
//! ```toml
//! [sources.ledger]
//! kind = "postgres"
//! url = "postgres://gateway:${LEDGER_PG_PASSWORD}@db.internal:5432/ledger?sslmode=verify-full"  # resolved at build, never logged
//! pool_size = 16               # optional, default 16
//! connect_timeout = "500ms"    # optional, default 2s
//! statement_timeout = "2s"     # optional server-side backstop, default the server's
//! cancel_after = "100ms"       # optional: grace past the deadline before a cancel, default 100ms
//! tls_ca_file = "certs/ledger-ca.pem"   # roots for sslmode=verify-ca / verify-full
//! # tls_client_cert_file = "certs/gateway.pem"  # optional: client certificate (mutual TLS)
//! # tls_client_key_file = "certs/gateway.key"
//!
//! [views.user_txn_stats]
//! source = "ledger"
//! entities = ["user_id"]
//! query = """
//!   SELECT txn_count_7d, avg_amount::float8 AS avg_amount, tags, attributes, updated_at
//!   FROM user_txn_stats WHERE user_id = $1"""
//! multiple_rows = "error"                      # or "first"; default "error"
//! event_time_column = "updated_at"             # optional: enables the view's max_age
//! columns = { txn_count = "txn_count_7d" }     # optional: feature -> column, default same name
//! json_paths = { risk = { column = "attributes", path = "/scores/risk" } }  # optional, jsonb fields
//! ```
//! The options are documented on [`PostgresSourceConfig`] and [`PostgresViewConfig`]; the type
//! mapping is in [`types`].
//!
//! # Batching: one statement for any number of keys
//! A view's query is written for one key, with `$1..$n` bound from the view's entity keys. A fetch
//! of one key runs it as written. A fetch of many keys runs one statement built from it at start-up:
//! ```sql
//! SELECT "__fg_keys"."__fg_ord", "__fg_row".*
//! FROM unnest($1::pg_catalog.int8[], ...) WITH ORDINALITY AS "__fg_keys"("__fg_k1", ..., "__fg_ord")
//! CROSS JOIN LATERAL (<the view's query, each $n replaced by "__fg_keys"."__fg_kn">) AS "__fg_row"
//! ```
//! The keys travel as one array parameter per entity key (the placeholder's own type, as
//! PostgreSQL inferred it when the query was prepared), so they are data, never SQL text. Each
//! result row carries the ordinal of the key it belongs to, which is why no key column needs to be
//! echoed by the query and why composite keys, joins, `ORDER BY ... LIMIT 1` per key and
//! collations all behave exactly as in the one-key query. For the usual
//! `WHERE id = $1` the planner runs this as one index probe per key, the same plan as
//! `WHERE id = ANY($1)`, in one round trip. (Rewriting a query into `= ANY($1)` form would need an
//! SQL parser, and would still have to match rows back to keys by re-reading a key column, which
//! breaks for case-insensitive or padded comparisons.) `multiple_rows = "first"` means the first
//! row in the query's own order: with an `ORDER BY`, PostgreSQL keeps the subquery intact
//! per key, so write one when more than one row may match.
//!
//! # Layout
//! - [`config`]: the option structs and their pure compilation (what `validate` checks).
//! - [`sql`]: finding `$n` placeholders outside literals and comments, and rewriting them.
//! - [`types`]: which column types each feature type accepts, and decoding cells.
//! - [`fetcher`]: [`PostgresFetcher`]: pooled execution, server-side cancellation at the deadline,
//!   and the classification of failures.
//! - [`tls`]: `sslmode` with libpq's meaning, and the rustls connector.
//!
//! # Failure
//! Validation (no I/O) names every bad option: the URL's shape (never its text), a placeholder
//! count that differs from the view's entity keys, mappings naming unknown features. Building
//! connects and prepares each query and its batch form, and fails, naming the view, the query and
//! the column, on an unset environment variable, an unreachable database, a query PostgreSQL
//! rejects, a missing or ambiguous column, a column whose type cannot hold the declared feature
//! type, or a placeholder whose inferred type does not fit its entity key. At fetch time see
//! [`fetcher`] for the table of error classes.
//!
//! # TLS
//! rustls with the ring provider, through tokio-postgres-rustls. The URL's `sslmode` keeps libpq's
//! meaning (`disable`, `prefer` by default, `require`, `verify-ca`, `verify-full`); the roots to
//! check the server against come from `tls_ca_file` (there is no system root store, as in libpq
//! without `root.crt`), and a client certificate from `tls_client_cert_file` and
//! `tls_client_key_file`. Validation checks the combination without reading the files; building
//! reads them, naming the option whose file is unreadable, and a handshake that fails (a server
//! without TLS under `require`, a certificate from another CA, for another host) fails the build
//! with the reason and the option to look at. Cancel requests go through the same connector, so
//! a statement is cancelled over TLS too. See [`tls`].

#![forbid(unsafe_code)]

pub mod config;
pub mod fetcher;
pub mod sql;
pub mod tls;
pub mod types;

use std::{collections::HashMap, str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use fetcher_api::{
    BuildError, Env, FeatureType, Fetcher, FetcherFactory, Problem, SourceSpec, ViewSpec,
};
use tokio::time::Instant;
use tokio_postgres::{
    config::Host,
    types::{Kind, Type},
};

pub use config::{JsonPath, MultipleRows, PostgresSourceConfig, PostgresViewConfig};
pub use fetcher::PostgresFetcher;

use crate::{
    config::CompiledView,
    fetcher::{Extractor, KeyParam, PreparedView},
};

/// How long building may wait for the database to prepare one statement.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds `postgres` fetchers.
#[derive(Clone, Debug, Default)]
pub struct PostgresFactory {
    /// Where `${NAME}` in the URL is looked up (see [`fetcher_api::secret`]).
    env: Env,
}

impl PostgresFactory {
    /// A factory that resolves `${NAME}` in URLs from the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory that resolves `${NAME}` with `env` instead (tests, or a secrets store).
    pub fn with_env(env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        PostgresFactory {
            env: Env::from_fn(env),
        }
    }
}

#[async_trait]
impl FetcherFactory for PostgresFactory {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(source, config::compile_source, config::compile_view)
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let (compiled, views) =
            fetcher_api::build_options(source, config::compile_source, config::compile_view)?;
        let views: Vec<_> = source.views.iter().zip(views).collect();
        let fail = |message: String| BuildError::new(source, message);

        let url = config::resolve_url(&compiled.url, &self.env).map_err(fail)?;
        // Taken out again from the resolved URL: tokio-postgres rejects the verifying modes.
        let (url, _) = tls::split_sslmode(&url);
        let mut pg = tokio_postgres::Config::from_str(&url)
            .map_err(|e| fail(format!("url: {}", config::url_error(&e))))?;
        pg.ssl_mode(compiled.tls.mode.for_tokio_postgres());
        let connector =
            tls::connector(&compiled.tls, |path| source.resolve_path(path)).map_err(fail)?;
        pg.connect_timeout(compiled.connect_timeout);
        if pg.get_application_name().is_none() {
            // Lets a DBA find the gateway's sessions in pg_stat_activity.
            pg.application_name("feature-gateway");
        }
        if let Some(timeout) = compiled.statement_timeout {
            let setting = format!("-c statement_timeout={}", timeout.as_millis().max(1));
            let options = match pg.get_options() {
                Some(existing) => format!("{existing} {setting}"),
                None => setting,
            };
            pg.options(options);
        }
        let target = describe(&pg);
        let manager = Manager::from_config(
            pg,
            connector.clone(),
            ManagerConfig {
                // `is_closed` only: a connection the server dropped fails its next statement as
                // unavailable (retryable) and is then discarded; a check query per checkout
                // would add a round trip to every fetch.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(compiled.pool_size)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| fail(format!("cannot create the connection pool: {e}")))?;

        let client = fetcher::get_client(
            &pool,
            Some(Instant::now() + compiled.connect_timeout),
            compiled.connect_timeout,
        )
        .await
        .map_err(|e| {
            let message = e.message();
            match tls::explain_connect_error(message, &compiled.tls) {
                Some(hint) => fail(format!("cannot connect to {target}: {hint} ({message})")),
                None => fail(format!("cannot connect to {target}: {message}")),
            }
        })?;
        let mut prepared = Vec::with_capacity(views.len());
        for (spec, view) in &views {
            prepared.push(prepare_view(&client, spec, view).await.map_err(fail)?);
        }
        drop(client);
        let statements: Vec<Arc<str>> = prepared
            .iter()
            .flat_map(|v| [Arc::clone(&v.single_sql), Arc::clone(&v.batch_sql)])
            .collect();
        warm(
            &pool,
            &statements,
            compiled.pool_size,
            compiled.connect_timeout,
        )
        .await;
        Ok(Arc::new(PostgresFetcher::new(
            source.name.clone(),
            pool,
            compiled.connect_timeout,
            compiled.cancel_after,
            connector,
            prepared,
        )))
    }
}

/// Opens every connection of the pool, each with every statement prepared, so the first
/// requests pay for neither (a new connection is a new server process, then a round trip per
/// statement). Best effort: a connection that cannot be opened now is opened when first needed.
async fn warm(pool: &Pool, statements: &[Arc<str>], size: usize, connect_timeout: Duration) {
    let deadline = Instant::now() + connect_timeout;
    let clients = futures::future::join_all(
        (0..size).map(|_| fetcher::get_client(pool, Some(deadline), connect_timeout)),
    )
    .await;
    let mut opened = 0;
    for client in clients.iter().flatten() {
        opened += 1;
        for sql in statements {
            if tokio::time::timeout_at(deadline, client.prepare_cached(sql))
                .await
                .is_err()
            {
                break;
            }
        }
    }
    if opened < size {
        tracing::info!(
            opened,
            size,
            "postgres: not every pooled connection could be opened at start"
        );
    }
}

/// `host:port/database as user`, for messages: everything about the target but the password.
fn describe(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .zip(pg.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "{}/{} as {}",
        hosts.join(","),
        pg.get_dbname().unwrap_or("(default database)"),
        pg.get_user().unwrap_or("(default user)")
    )
}

/// A type's name as written in SQL (`int4`, `text[]`).
fn type_name(ty: &Type) -> String {
    match ty.kind() {
        Kind::Array(inner) => format!("{}[]", inner.name()),
        _ => ty.name().to_owned(),
    }
}

/// The query on one line and at most 200 characters, for messages.
fn short(query: &str) -> String {
    let one_line = query.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

/// The server's message for a failed prepare (with its position hint), or the client's.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            text
        }
        None => e.to_string(),
    }
}

/// Prepares a view's query and its batch form and checks them against the declared keys and
/// features.
async fn prepare_view(
    client: &Object,
    spec: &ViewSpec,
    view: &CompiledView,
) -> Result<PreparedView, String> {
    let q = short(&view.query);
    let at = |msg: String| format!("view `{}`: query `{q}`: {msg}", view.name);
    let statement = tokio::time::timeout(PREPARE_TIMEOUT, client.prepare(&view.query))
        .await
        .map_err(|_| at("preparing it timed out".to_owned()))?
        .map_err(|e| at(pg_message(&e)))?;

    let mut keys = Vec::with_capacity(spec.keys.len());
    for (i, (param, key)) in statement.params().iter().zip(&spec.keys).enumerate() {
        let bound = match (key.ty, param) {
            (FeatureType::Int64, &Type::INT8) => Some(KeyParam::Int8),
            (FeatureType::Int64, &Type::INT4) => Some(KeyParam::Int4),
            (FeatureType::Int64, &Type::INT2) => Some(KeyParam::Int2),
            (FeatureType::String, &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                Some(KeyParam::Text)
            }
            _ => None,
        };
        let n = i + 1;
        keys.push(bound.ok_or_else(|| {
            let cast = if key.ty == FeatureType::Int64 { "bigint" } else { "text" };
            at(format!(
                "${n} is bound from entity `{}` ({}), but PostgreSQL reads it as {}; cast the placeholder, e.g. `${n}::{cast}`",
                key.name,
                key.ty,
                type_name(param)
            ))
        })?);
    }
    if statement.params().len() != spec.keys.len() {
        return Err(at(format!(
            "PostgreSQL counts {} parameters for {} entity keys",
            statement.params().len(),
            spec.keys.len()
        )));
    }

    let columns = statement.columns();
    let names: Vec<&str> = columns.iter().map(|c| c.name()).collect();
    let find = |column: &str, what: &str| -> Result<usize, String> {
        let mut matches = names.iter().enumerate().filter(|(_, n)| **n == column);
        match (matches.next(), matches.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some(_), Some(_)) => Err(at(format!(
                "column `{column}` ({what}) appears more than once in the result; alias one with `AS`"
            ))),
            (None, _) => Err(at(format!(
                "no column `{column}` ({what}) in the result (columns: {}); alias it with `AS {column}` or map it in `columns`",
                names.join(", ")
            ))),
        }
    };
    let mut features = HashMap::new();
    for feature in &view.features {
        let what = format!("feature `{}`", feature.feature);
        let index = find(&feature.column, &what)?;
        let column_type = columns[index].type_();
        if feature.json_path.is_some() && !matches!(*column_type, Type::JSON | Type::JSONB) {
            return Err(at(format!(
                "json_paths.{}: column `{}` is {}, not json or jsonb",
                feature.feature,
                feature.column,
                type_name(column_type)
            )));
        }
        let decoder = types::decoder(column_type, feature.ty).ok_or_else(|| {
            at(format!(
                "column `{}` is {}, but feature `{}` is declared {} (accepted column types: {}, or json/jsonb); cast it in the query",
                feature.column,
                type_name(column_type),
                feature.feature,
                feature.ty,
                types::accepted(feature.ty)
            ))
        })?;
        features.insert(
            feature.feature.clone(),
            Extractor {
                column: index,
                decoder,
                ty: feature.ty,
                json_path: feature.json_path.clone(),
            },
        );
    }
    let event_time = match &view.event_time_column {
        None => None,
        Some(column) => {
            let index = find(column, "event_time_column")?;
            let ty = columns[index].type_();
            if !matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP) {
                return Err(at(format!(
                    "event_time_column `{column}` is {}, not timestamptz or timestamp",
                    type_name(ty)
                )));
            }
            Some(index)
        }
    };

    let batch_sql = batch_statement(view, statement.params());
    let batch = tokio::time::timeout(PREPARE_TIMEOUT, client.prepare(&batch_sql))
        .await
        .map_err(|_| at("preparing its batch form timed out".to_owned()))?
        .map_err(|e| {
            at(format!(
                "it cannot run as a batch of keys (`CROSS JOIN LATERAL` over the keys): {}",
                pg_message(&e)
            ))
        })?;
    // The batch form must return the same columns, after the ordinal.
    let same = batch.columns().len() == columns.len() + 1
        && batch.columns()[1..]
            .iter()
            .zip(columns)
            .all(|(b, c)| b.type_() == c.type_());
    if !same {
        return Err(at(
            "its batch form returns different columns; this is a bug, please report it".to_owned(),
        ));
    }
    Ok(PreparedView {
        name: view.name.as_str().into(),
        single_sql: view.query.as_str().into(),
        batch_sql: batch_sql.into(),
        keys,
        features,
        event_time,
        multiple_rows: view.multiple_rows,
    })
}

/// The view's query run for every key of arrays of keys in one statement (see the crate docs).
fn batch_statement(view: &CompiledView, params: &[Type]) -> String {
    let arrays: Vec<String> = params
        .iter()
        .enumerate()
        .map(|(i, ty)| format!("${}::pg_catalog.{}[]", i + 1, ty.name()))
        .collect();
    let columns: Vec<String> = (1..=params.len())
        .map(|n| format!("\"__fg_k{n}\""))
        .collect();
    let inner = sql::substitute(&view.query, &view.placeholders, |n| {
        format!("\"__fg_keys\".\"__fg_k{n}\"")
    });
    format!(
        "SELECT \"__fg_keys\".\"__fg_ord\", \"__fg_row\".* FROM unnest({}) WITH ORDINALITY AS \"__fg_keys\"({}, \"__fg_ord\") CROSS JOIN LATERAL (\n{}\n) AS \"__fg_row\"",
        arrays.join(", "),
        columns.join(", "),
        sql::trim_statement(&inner)
    )
}
