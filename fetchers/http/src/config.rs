//! The options of an `http` source and of its views, and their compilation into what a fetch
//! uses.
//!
//! Compilation is pure: [`compile_source`] and [`compile_view`] check everything that can be
//! checked without I/O (URLs, header names, `${VAR}` syntax, templates against the view's keys,
//! JSON pointers, batch settings) and return every problem, positioned at the option it concerns
//! ([`Problem`]). `validate` and `build` share them, so a source that validated builds the same
//! way.
//! Environment variables are read only at build time, and header values never appear in a
//! message: they may hold secrets. The `${NAME}` syntax, its parsing, resolution and redaction
//! are [`fetcher_api::secret`]'s, shared with the other fetcher kinds; what is HTTP's is here:
//! which characters a header may carry, and marking resolved values sensitive.

use std::{collections::BTreeMap, time::Duration};

use fetcher_api::{
    ConfigDuration, Env, EnvTemplate, FeatureType, KeySpec, Problem, TemplatePart, ViewSpec,
};
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use url::Url;

use crate::{
    decode::{self, Pointer},
    template::{BodyTemplate, Template},
};

/// The source-level options of an `http` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// The API's base URL (`http://` or `https://`); each view's path is appended to it.
    pub base_url: String,
    /// Headers sent with every request. A value may reference environment variables as
    /// `${NAME}`, resolved when the source is built; values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Idle keep-alive connections kept per host (default 32).
    #[serde(default = "default_pool_max_idle_per_host")]
    pub pool_max_idle_per_host: usize,
    /// How long to wait for a TCP (and TLS) connection (default `1s`). The whole call is further
    /// bounded by the request's deadline.
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// At most this many requests in flight from this source at once, across all views and
    /// fetches (default 64), so one wide batch cannot flood the API.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// A path answered with a 2xx when the API is up, for the health service. Without it the
    /// source always reports healthy.
    #[serde(default)]
    pub health_path: Option<String>,
}

fn default_pool_max_idle_per_host() -> usize {
    32
}

fn default_max_concurrent_requests() -> usize {
    64
}

/// The default of [`HttpSourceConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// An HTTP method a view may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Method {
    #[default]
    #[serde(rename = "GET", alias = "get")]
    Get,
    #[serde(rename = "POST", alias = "post")]
    Post,
}

/// The view-level options of a view on an `http` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpViewConfig {
    /// `GET` (default) or `POST`.
    #[serde(default)]
    pub method: Method,
    /// The path of one key's request, with `{entity_name}` placeholders, e.g.
    /// `/v1/devices/{device_id}/reputation`. Required unless `batch` is set.
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameters: name to a template, e.g. `{ user = "{user_id}", fields = "all" }`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// A JSON body for `POST`; a string that is exactly a placeholder becomes the key's JSON
    /// value.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Feature name to the JSON pointer (RFC 6901) of its value in the response, e.g.
    /// `{ risk = "/scores/risk" }`. A feature not listed is read from `/<feature name>`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// A JSON pointer to when the values were computed (RFC 3339 or Unix seconds), which enables
    /// the view's max age.
    #[serde(default)]
    pub event_time_pointer: Option<String>,
    /// Fetch many keys in one `POST` instead of one request per key.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

/// A batch endpoint: `POST {path}` with `{"<keys_field>": [key, ...]}`, answered with an array of
/// results, each carrying its key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The endpoint's path (no placeholders).
    pub path: String,
    /// The request body's field holding the keys (default `ids`).
    #[serde(default = "default_keys_field")]
    pub keys_field: String,
    /// Where the array of results is in the response (default `/results`).
    #[serde(default = "default_results_pointer")]
    pub results_pointer: String,
    /// Where each result's key is, within the result (default `/id`).
    #[serde(default = "default_key_pointer")]
    pub key_pointer: String,
    /// At most this many keys per call (default 100); larger fetches are split into concurrent
    /// calls.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_keys_field() -> String {
    "ids".into()
}
fn default_results_pointer() -> String {
    "/results".into()
}
fn default_key_pointer() -> String {
    "/id".into()
}
fn default_max_keys() -> usize {
    100
}

/// A source's options, checked.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    /// The base URL without a trailing slash.
    pub base_url: String,
    /// Each header as written in the file (for messages), parsed, and its value's template.
    pub headers: Vec<(String, HeaderName, EnvTemplate)>,
    pub pool_max_idle_per_host: usize,
    pub connect_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub health_path: Option<String>,
}

/// How a view's rows are requested.
#[derive(Clone, Debug)]
pub enum Shape {
    /// One request per key.
    PerKey {
        method: Method,
        path: Template,
        query: Vec<(String, Template)>,
        body: Option<BodyTemplate>,
    },
    /// One request per chunk of keys.
    Batch {
        path: String,
        query: Vec<(String, String)>,
        keys_field: String,
        results_pointer: Pointer,
        key_pointer: Pointer,
        max_keys: usize,
    },
}

/// A view's options, checked and compiled.
#[derive(Clone, Debug)]
pub struct CompiledView {
    pub name: String,
    pub shape: Shape,
    /// Every declared feature with its pointer and type.
    pub features: BTreeMap<String, (Pointer, FeatureType)>,
    pub event_time: Option<Pointer>,
}

/// Checks a source's options.
pub fn compile_source(config: &HttpSourceConfig) -> Result<CompiledSource, Vec<Problem>> {
    let mut problems = Vec::new();
    let at = |option: &str, message: String| Problem::new(message).at(option);
    match Url::parse(&config.base_url) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none() => {}
        Ok(_) => problems.push(at(
            "base_url",
            format!(
                "`{}` must be an http:// or https:// URL without credentials, query or fragment",
                config.base_url
            ),
        )),
        Err(e) => problems.push(at("base_url", format!("`{}`: {e}", config.base_url))),
    }
    let mut headers = Vec::new();
    for (name, value) in &config.headers {
        let at = |message: String| Problem::new(message).at("headers").at(name);
        let header = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => header,
            Err(_) => {
                problems.push(at(format!("`{name}` is not a valid header name")));
                continue;
            }
        };
        match EnvTemplate::parse(value) {
            Ok(template) => {
                let literal_ok = template.parts().iter().all(|p| match p {
                    TemplatePart::Literal(text) => HeaderValue::from_str(text).is_ok(),
                    TemplatePart::Env(_) => true,
                });
                if literal_ok {
                    headers.push((name.clone(), header, template));
                } else {
                    problems.push(at("the value holds characters a header cannot carry".into()));
                }
            }
            Err(e) => problems.push(at(e.to_string())),
        }
    }
    if config.pool_max_idle_per_host == 0 {
        // Zero would disable keep-alive, which every request on the critical path pays for.
        problems.push(at("pool_max_idle_per_host", "must be at least 1".into()));
    }
    if config.max_concurrent_requests == 0 {
        problems.push(at("max_concurrent_requests", "must be at least 1".into()));
    }
    if let Some(path) = config.health_path.as_ref().filter(|p| !p.starts_with('/')) {
        problems.push(at("health_path", format!("`{path}` must start with `/`")));
    }
    let connect_timeout = config
        .connect_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, ConfigDuration::get);
    if connect_timeout.is_zero() {
        problems.push(at("connect_timeout", "must be more than zero".into()));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(CompiledSource {
        base_url: config.base_url.trim_end_matches('/').to_owned(),
        headers,
        pool_max_idle_per_host: config.pool_max_idle_per_host,
        connect_timeout,
        max_concurrent_requests: config.max_concurrent_requests,
        health_path: config.health_path.clone(),
    })
}

/// Resolves a header's `${NAME}` references from `env`. The error names the header and the
/// variable, never a value.
pub fn resolve_header(
    name: &str,
    template: &EnvTemplate,
    env: &Env,
) -> Result<HeaderValue, String> {
    let text = template
        .resolve(env, |value| value.into())
        .map_err(|e| format!("headers.{name}: {e}"))?;
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        format!("headers.{name}: the resolved value holds characters a header cannot carry")
    })?;
    // Keeps the value out of reqwest's and hyper's debug output and out of HPACK tables.
    value.set_sensitive(true);
    Ok(value)
}

/// Checks a view's options against its keys and features. The problems are the view's (its
/// caller places them on it).
pub fn compile_view(
    view: &ViewSpec,
    config: &HttpViewConfig,
) -> Result<CompiledView, Vec<Problem>> {
    let mut problems = Vec::new();
    let keys: &[KeySpec] = &view.keys;
    let mut fail = |problem: Problem| problems.push(problem);

    let shape = match (&config.batch, &config.path) {
        (Some(_), Some(_)) => {
            fail(Problem::new(
                "set either `path` (one request per key) or `batch`, not both",
            ));
            None
        }
        (None, None) => {
            fail(Problem::new(
                "`path` is required (or `batch`, for a batch endpoint)",
            ));
            None
        }
        (None, Some(path)) => per_key_shape(config, path, keys, &mut fail),
        (Some(batch), None) => batch_shape(config, batch, keys, &mut fail),
    };

    let mut features = BTreeMap::new();
    for (feature, ty) in &view.features {
        let text = config
            .fields
            .get(feature)
            .cloned()
            .unwrap_or_else(|| decode::default_pointer(feature));
        match Pointer::parse(&text) {
            Ok(pointer) => {
                features.insert(feature.clone(), (pointer, *ty));
            }
            Err(e) => fail(Problem::new(e).at("fields").at(feature)),
        }
    }
    for feature in config.fields.keys() {
        if !view.features.iter().any(|(f, _)| f == feature) {
            fail(
                Problem::new(format!("the view has no feature `{feature}`"))
                    .at("fields")
                    .at(feature),
            );
        }
    }
    let event_time = match config.event_time_pointer.as_deref().map(Pointer::parse) {
        None => None,
        Some(Ok(pointer)) => Some(pointer),
        Some(Err(e)) => {
            fail(Problem::new(e).at("event_time_pointer"));
            None
        }
    };
    match shape {
        Some(shape) if problems.is_empty() => Ok(CompiledView {
            name: view.name.clone(),
            shape,
            features,
            event_time,
        }),
        _ => Err(problems),
    }
}

fn per_key_shape(
    config: &HttpViewConfig,
    path: &str,
    keys: &[KeySpec],
    fail: &mut impl FnMut(Problem),
) -> Option<Shape> {
    let at_path = |message: String| Problem::new(message).at("path");
    let path = check_path(path)
        .map_err(|e| fail(at_path(e)))
        .ok()
        .and_then(|p| Template::parse(p, keys).map_err(|e| fail(at_path(e))).ok());
    let query = compile_query(config, keys, fail);
    let body = match (&config.body, config.method) {
        (None, _) => None,
        (Some(_), Method::Get) => {
            fail(Problem::new("needs method = \"POST\"").at("body"));
            None
        }
        (Some(body), Method::Post) => BodyTemplate::parse(body, keys)
            .map_err(|e| fail(Problem::new(e).at("body")))
            .ok(),
    };
    Some(Shape::PerKey {
        method: config.method,
        path: path?,
        query: query?,
        body,
    })
}

fn batch_shape(
    config: &HttpViewConfig,
    batch: &BatchConfig,
    keys: &[KeySpec],
    fail: &mut impl FnMut(Problem),
) -> Option<Shape> {
    let at = |option: &str, message: String| Problem::new(message).at("batch").at(option);
    let mut ok = true;
    if keys.len() != 1 {
        fail(
            Problem::new(format!(
                "needs a view with exactly one entity key, this one has {}",
                keys.len()
            ))
            .at("batch"),
        );
        ok = false;
    }
    if config.body.is_some() || config.method != Method::Get {
        // The batch body and method are fixed by the batch contract.
        fail(Problem::new(
            "`method` and `body` do not apply to a batch view",
        ));
        ok = false;
    }
    let path = match check_path(&batch.path) {
        Err(e) => {
            fail(at("path", e));
            None
        }
        Ok(p) => match Template::parse(p, keys) {
            Ok(t) if !t.has_placeholders() => Some(p.to_owned()),
            Ok(_) => {
                fail(at(
                    "path",
                    "cannot hold placeholders: the keys go in the body".into(),
                ));
                None
            }
            Err(e) => {
                fail(at("path", e));
                None
            }
        },
    };
    let query = compile_query(config, keys, fail).and_then(|query| {
        if query.iter().any(|(_, t)| t.has_placeholders()) {
            fail(Problem::new("the values of a batch view cannot hold placeholders").at("query"));
            return None;
        }
        Some(
            query
                .into_iter()
                .map(|(name, t)| (name, t.render_text(&[])))
                .collect::<Vec<_>>(),
        )
    });
    if batch.keys_field.is_empty() {
        fail(at("keys_field", "cannot be empty".into()));
        ok = false;
    }
    if batch.max_keys == 0 {
        fail(at("max_keys", "must be at least 1".into()));
        ok = false;
    }
    let results_pointer = Pointer::parse(&batch.results_pointer)
        .map_err(|e| fail(at("results_pointer", e)))
        .ok();
    let key_pointer = Pointer::parse(&batch.key_pointer)
        .map_err(|e| fail(at("key_pointer", e)))
        .ok();
    if !ok {
        return None;
    }
    Some(Shape::Batch {
        path: path?,
        query: query?,
        keys_field: batch.keys_field.clone(),
        results_pointer: results_pointer?,
        key_pointer: key_pointer?,
        max_keys: batch.max_keys,
    })
}

/// A path must be an absolute path with no query, fragment or dot segment of its own.
fn check_path(path: &str) -> Result<&str, String> {
    if !path.starts_with('/') {
        Err(format!("`{path}` must start with `/`"))
    } else if path.contains(['?', '#']) {
        Err(format!(
            "`{path}` cannot hold `?` or `#`: put parameters in `query`"
        ))
    } else if path.split('/').any(|s| s == "." || s == "..") {
        Err(format!("`{path}` cannot hold `.` or `..` segments"))
    } else {
        Ok(path)
    }
}

fn compile_query(
    config: &HttpViewConfig,
    keys: &[KeySpec],
    fail: &mut impl FnMut(Problem),
) -> Option<Vec<(String, Template)>> {
    let mut query = Vec::new();
    let mut ok = true;
    for (name, value) in &config.query {
        match Template::parse(value, keys) {
            Ok(t) => query.push((name.clone(), t)),
            Err(e) => {
                fail(Problem::new(e).at("query").at(name));
                ok = false;
            }
        }
    }
    ok.then_some(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_split_into_literals_and_env_references() {
        assert_eq!(
            EnvTemplate::parse("Bearer ${TOKEN}")
                .expect("valid")
                .parts(),
            [
                TemplatePart::Literal("Bearer ".into()),
                TemplatePart::Env("TOKEN".into())
            ]
        );
        assert!(EnvTemplate::parse("${A-B}").is_err());
        assert!(EnvTemplate::parse("${OPEN").is_err());
        assert!(EnvTemplate::parse("${}").is_err());
        let name = "Authorization";
        let parts = EnvTemplate::parse("Bearer ${TOKEN}").expect("valid");
        let env = Env::from_fn(|v| (v == "TOKEN").then(|| "s3cr3t".into()));
        let value = resolve_header(name, &parts, &env).expect("resolves");
        assert_eq!(value.to_str().ok(), Some("Bearer s3cr3t"));
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("s3cr3t"));
        let err = resolve_header(name, &parts, &Env::from_fn(|_| None)).unwrap_err();
        assert_eq!(
            err,
            "headers.Authorization: environment variable `TOKEN` is not set"
        );
        let bad = Env::from_fn(|_| Some("bad\nvalue-s3cr3t".into()));
        let err = resolve_header(name, &parts, &bad).unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(
            !format!("{parts:?}").contains("Bearer"),
            "literal parts redacted"
        );
    }
}
