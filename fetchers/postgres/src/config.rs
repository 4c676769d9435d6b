//! The options of a `postgres` source and of its views, and their pure compilation.
//!
//! [`compile_source`] and [`compile_view`] check everything that can be checked without a
//! connection (the URL's shape and its `${VAR}` references, pool settings, the query's
//! placeholders against the view's entity keys, the column and JSON path mappings against the
//! view's features) and return every problem, positioned at the option it concerns ([`Problem`]).
//! `validate` and `build` share them. Environment variables are read only at build time, by
//! [`resolve_url`], and neither the URL nor a value read from the environment ever appears in a
//! message: either may hold a password. The `${NAME}` syntax, its parsing, resolution and
//! redaction are [`fetcher_api::secret`]'s, shared with the other fetcher kinds; what is
//! PostgreSQL's is here: the URL's shape, this source's wording of a bad reference, and
//! percent-encoding values into the URL.
//!
//! The URL's `sslmode` is read here too (tokio-postgres does not know the verifying modes) and
//! checked against the `tls_*` options by [`crate::tls::check`]; see [`crate::tls`] for what each
//! mode does.

use std::{borrow::Cow, collections::BTreeMap, fmt, str::FromStr, time::Duration};

use fetcher_api::{
    ConfigDuration, Env, EnvTemplate, FeatureType, Problem, TemplateError, ViewSpec,
};
use serde::Deserialize;

use crate::{
    sql::{self, Placeholder},
    tls::{self, TlsSettings},
};

/// The source-level options of a `postgres` source.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSourceConfig {
    /// The connection URL, `postgres://USER:PASSWORD@HOST:PORT/DATABASE?OPTIONS` (anything
    /// libpq-style that tokio-postgres accepts, e.g. a Unix socket as a percent-encoded `host=`
    /// path). Any part may reference environment variables as `${NAME}`, resolved (and
    /// percent-encoded) when the source is built; put the password there, never in the file. The
    /// URL is never logged nor shown in an error.
    ///
    /// `?sslmode=` takes libpq's values: `disable`, `prefer` (the default: TLS if the server
    /// offers it, certificate not checked), `require` (TLS or fail, certificate not checked),
    /// `verify-ca` (TLS, certificate signed by a root in `tls_ca_file`) and `verify-full` (as
    /// `verify-ca`, and issued for the URL's host name or IP address). With `tls_ca_file` set,
    /// `prefer` and `require` check the chain too, as libpq does when it has a root file. Use
    /// `verify-full` across any network you do not control.
    pub url: String,
    /// Connections kept in the pool (default 16), all opened at start with every statement
    /// prepared. A fetch holds one connection for one statement, so this bounds the statements
    /// in flight from this source.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long to wait for a new connection (default `2s`); a fetch further bounds it by what is
    /// left of its deadline.
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// A server-side `statement_timeout` set on every connection of the pool, a backstop for
    /// fetches without a deadline (default: the server's). Fetches with a deadline are cancelled
    /// on the server past their deadline anyway (see `cancel_after`).
    #[serde(default)]
    pub statement_timeout: Option<ConfigDuration>,
    /// How long a statement still running at its fetch's deadline may go on before it is
    /// cancelled on the server (default `100ms`; `"0s"` cancels at the deadline). The fetch
    /// answers at its deadline either way. A statement that ends within this grace gives its
    /// connection back as it is: a cancel request costs the server a new connection, and under
    /// load most late statements are only queued behind others and end a moment later.
    #[serde(default)]
    pub cancel_after: Option<ConfigDuration>,
    /// A PEM file of the root certificates to trust for the server's certificate, e.g.
    /// `"certs/db-ca.pem"` (relative to the config file). Required with `sslmode=verify-ca` and
    /// `verify-full`: no system root store is used, since a database's certificate normally comes
    /// from a private CA. Refused with `sslmode=disable`.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A PEM file holding the gateway's client certificate (then any intermediates), for a server
    /// that authenticates clients by certificate (`clientcert=verify-ca|verify-full` in
    /// `pg_hba.conf`). Needs `tls_client_key_file`. Relative to the config file.
    #[serde(default)]
    pub tls_client_cert_file: Option<String>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_client_cert_file`. Keep it readable
    /// by the gateway only. Relative to the config file.
    #[serde(default)]
    pub tls_client_key_file: Option<String>,
}

// Hand-written: the URL may hold a literal password.
impl fmt::Debug for PostgresSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSourceConfig")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("cancel_after", &self.cancel_after)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_client_cert_file", &self.tls_client_cert_file)
            .field("tls_client_key_file", &self.tls_client_key_file)
            .finish()
    }
}

fn default_pool_size() -> usize {
    16
}

/// The default of [`PostgresSourceConfig::cancel_after`].
pub const DEFAULT_CANCEL_AFTER: Duration = Duration::from_millis(100);

/// The default of [`PostgresSourceConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What to do when the query returns more than one row for a key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultipleRows {
    /// Serve the first row, in the query's own order (write an `ORDER BY` to make it defined).
    First,
    /// Serve the key's row with every feature failed (`SOURCE_ERROR`), naming the row count.
    /// The rest of the batch is served. The default: a query that was meant to return one row
    /// per key and does not is a data problem to see, not to hide.
    #[default]
    Error,
}

/// The view-level options of a view on a `postgres` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresViewConfig {
    /// The SQL query of one key, e.g.
    /// `SELECT txn_count_7d, avg_amount FROM user_txn_stats WHERE user_id = $1`.
    /// `$1..$n` are bound (as parameters, never interpolated) from the view's entity keys in the
    /// view's `entities` order, and each must appear. The query is written for one key; a batch
    /// of keys runs it for every key in one statement (see the crate docs). Write `$1::text`
    /// where PostgreSQL cannot tell a placeholder's type, and an `ORDER BY` where more than one
    /// row can match and `multiple_rows = "first"`.
    pub query: String,
    /// `"error"` (default) or `"first"`: what more than one row for a key means.
    #[serde(default)]
    pub multiple_rows: MultipleRows,
    /// A `timestamptz` (or `timestamp`, read as UTC) column holding when the row's values were
    /// computed; enables the view's `max_age`.
    #[serde(default)]
    pub event_time_column: Option<String>,
    /// Feature name to the result column it is read from, when they differ, e.g.
    /// `{ avg_amount = "avg_amount_usd" }`. A feature not listed is read from the column of its
    /// own name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Feature name to a field inside a `jsonb` (or `json`) column, e.g.
    /// `{ risk = { column = "attributes", path = "/scores/risk" } }`. The path is a JSON pointer
    /// (RFC 6901); a missing field is null. A feature mapped straight to a json column (without
    /// a path) reads the whole document.
    #[serde(default)]
    pub json_paths: BTreeMap<String, JsonPath>,
}

/// A field inside a json column.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPath {
    /// The `jsonb` or `json` result column.
    pub column: String,
    /// A JSON pointer into the column's document, e.g. `/scores/risk`; `""` is the whole
    /// document.
    pub path: String,
}

/// A source's options, checked.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    /// The URL as written; resolved at build.
    pub url: EnvTemplate,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    pub cancel_after: Duration,
    /// The URL's `sslmode` and the `tls_*` options.
    pub tls: TlsSettings,
}

/// Where a feature is read from in the query's result.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSource {
    /// The feature's name.
    pub feature: String,
    /// Its declared type.
    pub ty: FeatureType,
    /// The result column.
    pub column: String,
    /// A JSON pointer into the column, for json columns mapped through `json_paths`.
    pub json_path: Option<String>,
}

/// A view's options, checked: what `build` prepares and checks against the database.
#[derive(Clone, Debug)]
pub struct CompiledView {
    pub name: String,
    pub query: String,
    pub placeholders: Vec<Placeholder>,
    pub multiple_rows: MultipleRows,
    pub event_time_column: Option<String>,
    /// One per declared feature, in declaration order.
    pub features: Vec<FeatureSource>,
}

/// Checks a source's options.
pub fn compile_source(config: &PostgresSourceConfig) -> Result<CompiledSource, Vec<Problem>> {
    let mut problems = Vec::new();
    let at = |option: &str, message: String| Problem::new(message).at(option);
    let mut sslmode = None;
    let url = match EnvTemplate::parse(&config.url) {
        Ok(template) => {
            // Check the URL's shape with every reference replaced by a harmless value.
            let (probe, mode) = tls::split_sslmode(&template.with_stand_in("x"));
            sslmode = mode;
            if !(probe.starts_with("postgres://") || probe.starts_with("postgresql://")) {
                problems.push(at(
                    "url",
                    "must be a postgres:// or postgresql:// URL".into(),
                ));
            } else if let Err(e) = tokio_postgres::Config::from_str(&probe) {
                problems.push(at("url", url_error(&e)));
            }
            template
        }
        Err(e) => {
            problems.push(at("url", url_template_error(&e)));
            EnvTemplate::default()
        }
    };
    if config.pool_size == 0 {
        problems.push(at("pool_size", "must be at least 1".into()));
    }
    let connect_timeout = config
        .connect_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, ConfigDuration::get);
    if connect_timeout.is_zero() {
        problems.push(at("connect_timeout", "must be more than 0".into()));
    }
    let statement_timeout = config.statement_timeout.map(ConfigDuration::get);
    if statement_timeout.is_some_and(|d| d < Duration::from_millis(1)) {
        // PostgreSQL reads 0 as "no timeout", the opposite of what was written.
        problems.push(at("statement_timeout", "must be at least 1ms".into()));
    }
    let tls = tls::check(
        sslmode.as_deref(),
        config.tls_ca_file.as_deref(),
        config.tls_client_cert_file.as_deref(),
        config.tls_client_key_file.as_deref(),
    )
    .map_err(|e| problems.extend(e))
    .unwrap_or_default();
    if problems.is_empty() {
        Ok(CompiledSource {
            url,
            pool_size: config.pool_size,
            connect_timeout,
            statement_timeout,
            cancel_after: config
                .cancel_after
                .map_or(DEFAULT_CANCEL_AFTER, ConfigDuration::get),
            tls,
        })
    } else {
        Err(problems)
    }
}

/// Checks a view's options against the view's keys and features. The problems are the view's
/// (its caller places them on it).
pub fn compile_view(
    view: &ViewSpec,
    config: &PostgresViewConfig,
) -> Result<CompiledView, Vec<Problem>> {
    let mut problems = Vec::new();
    let placeholders = if config.query.trim().is_empty() {
        problems.push(Problem::new("is empty").at("query"));
        Vec::new()
    } else {
        sql::check_placeholders(&config.query, view.keys.len())
            .map_err(|e| problems.push(Problem::new(e).at("query")))
            .unwrap_or_default()
    };
    for key in &view.keys {
        if !key.ty.is_key_type() {
            problems.push(Problem::new(format!(
                "entity `{}` is {}, which cannot be bound as a key",
                key.name, key.ty
            )));
        }
    }
    let is_feature = |name: &str| view.features.iter().any(|(f, _)| f == name);
    for name in config.columns.keys() {
        let at = |message: String| Problem::new(message).at("columns").at(name);
        if !is_feature(name) {
            problems.push(at(format!("the view has no feature `{name}`")));
        }
        if config.json_paths.contains_key(name) {
            problems.push(at(format!(
                "feature `{name}` is in both `columns` and `json_paths`"
            )));
        }
    }
    for (name, path) in &config.json_paths {
        let at = |message: String| Problem::new(message).at("json_paths").at(name);
        if !is_feature(name) {
            problems.push(at(format!("the view has no feature `{name}`")));
        }
        if !(path.path.is_empty() || path.path.starts_with('/')) {
            problems.push(at(format!(
                "`{}` is not a JSON pointer (it starts with `/`)",
                path.path
            )));
        }
    }
    if config
        .event_time_column
        .as_deref()
        .is_some_and(|c| c.trim().is_empty())
    {
        problems.push(Problem::new("is empty").at("event_time_column"));
    }
    let features = view
        .features
        .iter()
        .map(|(name, ty)| match config.json_paths.get(name) {
            Some(path) => FeatureSource {
                feature: name.clone(),
                ty: *ty,
                column: path.column.clone(),
                json_path: Some(path.path.clone()),
            },
            None => FeatureSource {
                feature: name.clone(),
                ty: *ty,
                column: config.columns.get(name).unwrap_or(name).clone(),
                json_path: None,
            },
        })
        .collect();
    if problems.is_empty() {
        Ok(CompiledView {
            name: view.name.clone(),
            query: config.query.clone(),
            placeholders,
            multiple_rows: config.multiple_rows,
            event_time_column: config.event_time_column.clone(),
            features,
        })
    } else {
        Err(problems)
    }
}

/// A URL parse error with its cause (tokio-postgres puts the option's name in the cause). The
/// causes name an option, never its value, so the error cannot leak a password.
pub fn url_error(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// This source's wording of a bad `${NAME}` reference in the URL (unchanged from before the
/// syntax moved to [`fetcher_api::secret`]), said of `url`.
fn url_template_error(e: &TemplateError) -> String {
    match e {
        TemplateError::Unclosed => "a `${` is not closed by `}`".to_owned(),
        TemplateError::InvalidName(name) => {
            format!("`${{{name}}}` is not an environment variable reference")
        }
    }
}

/// The URL with its references replaced by the environment's values, percent-encoded so a
/// password may hold `@`, `/` or `:`. The error names the variable, never a value.
pub fn resolve_url(template: &EnvTemplate, env: &Env) -> Result<String, String> {
    template
        .resolve(env, percent_encode)
        .map_err(|e| format!("url: {e}"))
}

/// Every byte but ASCII letters, digits and `-._~` as `%XX`.
fn percent_encode(value: &str) -> Cow<'_, str> {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fetcher_api::{KeySpec, Options, config::join};

    fn source(text: &str) -> Result<CompiledSource, Vec<Problem>> {
        let config: PostgresSourceConfig = Options(text.parse().unwrap()).parse().unwrap();
        compile_source(&config)
    }

    #[test]
    fn urls_with_references_compile_and_resolve_encoded() {
        let compiled =
            source(r#"url = "postgres://app:${PG_PASSWORD}@127.0.0.1:5432/features""#).unwrap();
        let url = resolve_url(
            &compiled.url,
            &Env::from_fn(|name| (name == "PG_PASSWORD").then(|| "p@ss/w:rd".to_owned())),
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://app:p%40ss%2Fw%3Ard@127.0.0.1:5432/features"
        );
        let config = tokio_postgres::Config::from_str(&url).unwrap();
        assert_eq!(config.get_password(), Some(&b"p@ss/w:rd"[..]));

        let err = resolve_url(&compiled.url, &Env::from_fn(|_| None)).unwrap_err();
        assert_eq!(err, "url: environment variable `PG_PASSWORD` is not set");
    }

    #[test]
    fn bad_source_options_are_all_named_and_the_url_never_shown() {
        let errors = source(
            r#"url = "mysql://root:hunter2@x/y"
               pool_size = 0
               statement_timeout = "0s""#,
        )
        .unwrap_err();
        let text = join(&errors, "\n");
        assert!(text.contains("url: must be a postgres://"), "{text}");
        assert!(text.contains("pool_size: must be at least 1"), "{text}");
        assert!(
            text.contains("statement_timeout: must be at least 1ms"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");

        let errors = source(r#"url = "postgres://u:${A-B}@x/y""#).unwrap_err();
        assert_eq!(
            errors,
            [Problem::source("`${A-B}` is not an environment variable reference").at("url")]
        );
        let errors = source(r#"url = "postgres://u:hunter2@x/y?bogus_option=1""#).unwrap_err();
        assert_eq!(errors[0].field(), ["url"]);
        assert!(errors[0].message().contains("bogus_option"), "{errors:?}");
        assert!(!errors[0].message().contains("hunter2"), "{errors:?}");
    }

    fn view(keys: usize, options: &str) -> Result<CompiledView, Vec<Problem>> {
        let spec = ViewSpec {
            name: "stats".into(),
            keys: (0..keys)
                .map(|i| KeySpec {
                    name: format!("k{i}"),
                    ty: FeatureType::String,
                })
                .collect(),
            features: vec![
                ("count".into(), FeatureType::Int64),
                ("risk".into(), FeatureType::Double),
            ],
            options: Options(options.parse().unwrap()),
        };
        let config: PostgresViewConfig = spec.options.parse().unwrap();
        compile_view(&spec, &config)
    }

    #[test]
    fn views_map_features_to_columns_and_json_paths() {
        let compiled = view(
            1,
            r#"query = "SELECT n, attrs FROM t WHERE id = $1"
               columns = { count = "n" }
               json_paths = { risk = { column = "attrs", path = "/scores/risk" } }
               multiple_rows = "first""#,
        )
        .unwrap();
        assert_eq!(compiled.multiple_rows, MultipleRows::First);
        assert_eq!(compiled.features[0].column, "n");
        assert_eq!(compiled.features[1].column, "attrs");
        assert_eq!(
            compiled.features[1].json_path.as_deref(),
            Some("/scores/risk")
        );
    }

    #[test]
    fn bad_view_options_are_all_named() {
        let errors = view(
            2,
            r#"query = "SELECT * FROM t WHERE id = $1 AND note = '$2'"
               columns = { nope = "x", risk = "r" }
               json_paths = { risk = { column = "a", path = "scores" } }"#,
        )
        .unwrap_err();
        // A view's compilation positions its problems inside the view's options; the view is
        // named when they are placed on it.
        assert!(errors.iter().all(|p| p.view_name().is_none()), "{errors:?}");
        let text = join(&errors, "\n");
        for expected in [
            "query: the query has no placeholder `$2`",
            "columns.nope: the view has no feature `nope`",
            "columns.risk: feature `risk` is in both `columns` and `json_paths`",
            "json_paths.risk: `scores` is not a JSON pointer",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
        let errors = view(1, r#"query = "SELECT 1 WHERE $1 = $2""#).unwrap_err();
        assert!(
            errors[0].message().contains("`$2` has no entity key"),
            "{errors:?}"
        );
    }
}
