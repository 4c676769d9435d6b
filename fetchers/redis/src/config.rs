//! The options of a `redis` source and of its views, and their compilation into what a fetch (or
//! a `materialize` run) uses.
//!
//! Compilation is pure: [`compile_source`] and [`compile_view`] check everything that can be
//! checked without I/O (the URL's shape and `${VAR}` syntax, the mode's companions, the key
//! template against the view's entities, the field map against its features) and return every
//! problem, positioned at the option it concerns ([`Problem`]). `validate`, `build` and
//! `materialize` share them, so what validated is what runs and what is written is what is read.
//!
//! The URL may hold a password, so no message ever quotes it: environment variables are resolved
//! only at build time ([`resolve_url`]), and their values never reach a message or a log. The
//! `${NAME}` syntax, its parsing, resolution and redaction are [`fetcher_api::secret`]'s, shared
//! with the other fetcher kinds; what is Redis's is here: percent-encoding values into the URL,
//! and refusing a password written in the file.

use std::{collections::BTreeMap, time::Duration};

use fetcher_api::{
    ConfigDuration, EntityKey, Env, EnvTemplate, FeatureType, KeySpec, Problem, ViewSpec,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// Default for [`RedisSourceConfig::pool_size`].
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Default for [`RedisSourceConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default for [`RedisSourceConfig::command_timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// How the Redis deployment is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One server (or a proxy in front of many): `url` names it.
    #[default]
    Standalone,
    /// A Redis Cluster: `url` names one node and `nodes` any others; the client discovers the
    /// rest and routes every key to the node owning its slot.
    Cluster,
    /// A master found through Redis Sentinel: `url` names one sentinel (its host, port, the
    /// master's password and database), `nodes` the other sentinels, and
    /// `sentinel_service_name` the master's name.
    Sentinel,
}

/// The source-level options of a `redis` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSourceConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS: the server's
    /// certificate must chain to a root of `tls_ca_file`, or of the system's root store when
    /// that is not set, and be issued for the URL's host (a name or an IP address). Write a password as an environment reference,
    /// `redis://:${REDIS_PASSWORD}@host:6379`: references are resolved when the source is built
    /// and the URL is never logged nor put in an error. A password written literally in the file
    /// is refused. In `sentinel` mode the host and port are a sentinel's (default port 26379)
    /// while the credentials and database are the master's.
    pub url: String,
    /// `standalone` (default), `cluster` or `sentinel`.
    #[serde(default)]
    pub mode: Mode,
    /// More `host:port` addresses: other cluster nodes to discover the cluster from (`cluster`),
    /// or the other sentinels (`sentinel`). Not allowed in `standalone` mode.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The master's name as the sentinels know it. Required in `sentinel` mode, refused otherwise.
    #[serde(default)]
    pub sentinel_service_name: Option<String>,
    /// Connections kept open (each pipelines many requests at once). Default 4.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest time to open a connection, TLS handshake included, e.g. `"250ms"`. Default 1s.
    /// Start-up waits this long for the first connection; if Redis is not there yet the gateway
    /// starts anyway (the source reads as down until it connects).
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// Longest time one fetch (one pipelined round trip) may take, e.g. `"50ms"`; the request's
    /// remaining deadline applies if shorter. Default 1s.
    #[serde(default)]
    pub command_timeout: Option<ConfigDuration>,
    /// A PEM file of the root certificates to trust for the server's certificate instead of the
    /// system's, e.g. `"certs/redis-ca.pem"` (relative to the config file): what a private CA
    /// (or a managed Redis's own CA) needs. Only with a `rediss://` URL.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    /// A PEM file holding the gateway's client certificate (then any intermediates), for a
    /// server started with `tls-auth-clients yes`. Needs `tls_client_key_file`; only with a
    /// `rediss://` URL. Relative to the config file.
    #[serde(default)]
    pub tls_client_cert_file: Option<String>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_client_cert_file`. Keep it readable
    /// by the gateway only. Relative to the config file.
    #[serde(default)]
    pub tls_client_key_file: Option<String>,
}

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

/// How a view's rows are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// One hash per key, one field per feature holding the value's text form (as in a CSV
    /// file: `42`, `0.25`, `true`, RFC 3339 timestamps, JSON arrays for lists). Only the
    /// requested fields are read (HMGET).
    #[default]
    Hash,
    /// One string per key holding a JSON object, one member per feature (lists as JSON arrays,
    /// timestamps as RFC 3339 strings or Unix seconds).
    Json,
}

/// The view-level options of a view on a `redis` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisViewConfig {
    /// The Redis key of a row, with one `{entity}` placeholder per entity of the view, e.g.
    /// `"user_stats:{user_id}"`. Keys are substituted verbatim (int64 keys in decimal), never
    /// interpreted. Write `{{` and `}}` for literal braces, e.g. a cluster hash tag.
    pub key: String,
    /// `hash` (default) or `json`.
    #[serde(default)]
    pub encoding: Encoding,
    /// The hash field (or JSON member) of a feature, when it is not the feature's name:
    /// `{ txn_count_7d = "tc7" }`.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The hash field (or JSON member) holding when the row was computed (RFC 3339 or Unix
    /// seconds). Needed for the view's `max_age`.
    #[serde(default)]
    pub event_time_field: Option<String>,
}

/// A source's options, checked.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    /// The URL as written, unresolved.
    pub url: EnvTemplate,
    /// Whether the URL is `rediss://`.
    pub tls: bool,
    pub mode: Mode,
    /// The other nodes, parsed.
    pub nodes: Vec<(String, u16)>,
    pub sentinel_service_name: Option<String>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// `tls_ca_file`, as written (resolved against the config file's directory at build).
    pub tls_ca_file: Option<String>,
    /// `tls_client_cert_file` and `tls_client_key_file`, as written.
    pub tls_client_cert: Option<(String, String)>,
}

/// A piece of a key template.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Literal(String),
    /// The index of an entity key in the view's key order.
    Key(usize),
}

/// A key template compiled against a view's entities.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyTemplate {
    pieces: Vec<Piece>,
    arity: usize,
}

impl KeyTemplate {
    /// Compiles `text` against the view's entity keys; every entity must appear, or rows of
    /// different entities would share a Redis key.
    pub fn parse(text: &str, keys: &[KeySpec]) -> Result<KeyTemplate, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut used = vec![false; keys.len()];
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(format!("unmatched `}}` in `{text}` (write `}}}}`)")),
                '{' => {
                    let rest = &text[at + 1..];
                    let close = rest
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` in `{text}` (write `{{{{`)"))?;
                    let name = &rest[..close];
                    let index = keys.iter().position(|k| k.name == name).ok_or_else(|| {
                        let known: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                        format!(
                            "unknown placeholder `{{{name}}}` in `{text}` (entity keys: {})",
                            known.join(", ")
                        )
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Key(index));
                    used[index] = true;
                    // Skip the name and the closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        let unused: Vec<&str> = keys
            .iter()
            .zip(&used)
            .filter(|(_, used)| !**used)
            .map(|(k, _)| k.name.as_str())
            .collect();
        if !unused.is_empty() {
            return Err(format!(
                "`{text}` does not use entity key(s) {}: rows would share a Redis key",
                unused
                    .iter()
                    .map(|n| format!("`{{{n}}}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(KeyTemplate {
            pieces,
            arity: keys.len(),
        })
    }

    /// The Redis key of `key`: the template with each entity key's text in place, as is.
    pub fn render(&self, key: &EntityKey) -> Result<String, String> {
        if key.len() != self.arity {
            return Err(format!(
                "a key has {} parts, the view has {} entities",
                key.len(),
                self.arity
            ));
        }
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.push_str(text),
                Piece::Key(i) => out.push_str(&key[*i].to_string()),
            }
        }
        Ok(out)
    }
}

/// A view's options, checked and compiled.
#[derive(Clone, Debug)]
pub struct CompiledView {
    pub name: String,
    pub key: KeyTemplate,
    pub encoding: Encoding,
    /// Every declared feature: its hash field (or JSON member) and type.
    pub features: BTreeMap<String, (String, FeatureType)>,
    pub event_time_field: Option<String>,
}

/// Checks a source's options.
pub fn compile_source(config: &RedisSourceConfig) -> Result<CompiledSource, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut fail = |option: &str, message: String| problems.push(Problem::new(message).at(option));
    let url = match EnvTemplate::parse(&config.url) {
        Ok(template) => Some(template),
        Err(e) => {
            fail("url", e.to_string());
            None
        }
    };
    let mut tls = false;
    let mut shape_ok = false;
    if let Some(template) = &url {
        match check_url_shape(template, config.mode) {
            Ok(is_tls) => {
                tls = is_tls;
                shape_ok = true;
            }
            Err(e) => fail("url", e),
        }
    }
    let mut nodes = Vec::new();
    for node in &config.nodes {
        // Compared with the URL's scheme only when the URL is good: a bad URL has its own message.
        let scheme = match (shape_ok, tls) {
            (true, true) => "rediss",
            (true, false) => "redis",
            (false, _) => node.split_once("://").map_or("redis", |(scheme, _)| scheme),
        };
        match fetcher_api::config::node_address(node, scheme) {
            Ok(parsed) => nodes.push(parsed),
            Err(e) => fail("nodes", e),
        }
    }
    match (config.mode, &config.sentinel_service_name) {
        (Mode::Standalone, _) if !config.nodes.is_empty() => {
            fail(
                "nodes",
                "only `cluster` and `sentinel` modes use more nodes: set `mode`, or remove \
                 `nodes` (a standalone source reads `url` alone)"
                    .into(),
            );
        }
        (Mode::Sentinel, None) => {
            // Said where sentinel mode is chosen: the missing option has no place to point at.
            fail(
                "mode",
                "sentinel_service_name is required in `sentinel` mode".into(),
            );
        }
        (Mode::Sentinel, Some(name)) if name.is_empty() => {
            fail("sentinel_service_name", "cannot be empty".into());
        }
        (Mode::Standalone | Mode::Cluster, Some(_)) => {
            fail(
                "sentinel_service_name",
                "applies only to `sentinel` mode".into(),
            );
        }
        _ => {}
    }
    if config.pool_size == 0 {
        fail("pool_size", "must be at least 1".into());
    }
    let connect_timeout = config
        .connect_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, ConfigDuration::get);
    if connect_timeout.is_zero() {
        fail("connect_timeout", "must be more than zero".into());
    }
    let command_timeout = config
        .command_timeout
        .map_or(DEFAULT_COMMAND_TIMEOUT, ConfigDuration::get);
    if command_timeout.is_zero() {
        fail("command_timeout", "must be more than zero".into());
    }
    for (name, value) in [
        ("tls_ca_file", &config.tls_ca_file),
        ("tls_client_cert_file", &config.tls_client_cert_file),
        ("tls_client_key_file", &config.tls_client_key_file),
    ] {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            fail(name, "is empty".into());
        } else if value.is_some() && shape_ok && !tls {
            // Only said when the URL parsed: a bad URL already has its own message.
            fail(
                name,
                "applies only to TLS connections: use a rediss:// URL".into(),
            );
        }
    }
    let tls_client_cert = match (&config.tls_client_cert_file, &config.tls_client_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        (Some(_), None) => {
            fail(
                "tls_client_cert_file",
                "needs tls_client_key_file (its private key)".into(),
            );
            None
        }
        (None, Some(_)) => {
            fail(
                "tls_client_key_file",
                "needs tls_client_cert_file (its certificate)".into(),
            );
            None
        }
    };
    match url {
        Some(url) if problems.is_empty() => Ok(CompiledSource {
            url,
            tls,
            mode: config.mode,
            nodes,
            sentinel_service_name: config.sentinel_service_name.clone(),
            pool_size: config.pool_size,
            connect_timeout,
            command_timeout,
            tls_ca_file: config.tls_ca_file.clone(),
            tls_client_cert,
        }),
        _ => Err(problems),
    }
}

/// Checks a view's options against its keys and features. The problems are the view's (its
/// caller places them on it).
pub fn compile_view(
    view: &ViewSpec,
    config: &RedisViewConfig,
) -> Result<CompiledView, Vec<Problem>> {
    let mut problems = Vec::new();
    if view.keys.is_empty() {
        problems.push(Problem::new("a redis view needs at least one entity"));
    }
    let key = KeyTemplate::parse(&config.key, &view.keys)
        .map_err(|e| problems.push(Problem::new(e).at("key")))
        .ok();
    for (feature, field) in &config.fields {
        let at = |message: String| Problem::new(message).at("fields").at(feature);
        if !view.features.iter().any(|(f, _)| f == feature) {
            problems.push(at(format!("the view has no feature `{feature}`")));
        }
        if field.is_empty() {
            problems.push(at("the field name cannot be empty".into()));
        }
    }
    let features: BTreeMap<String, (String, FeatureType)> = view
        .features
        .iter()
        .map(|(f, ty)| {
            let field = config.fields.get(f).unwrap_or(f).clone();
            (f.clone(), (field, *ty))
        })
        .collect();
    if let Some(time) = &config.event_time_field {
        let at = |message: String| Problem::new(message).at("event_time_field");
        if time.is_empty() {
            problems.push(at("cannot be empty".into()));
        } else if let Some((feature, _)) = features.iter().find(|(_, (field, _))| field == time) {
            problems.push(at(format!(
                "`{time}` is also the field of feature `{feature}`"
            )));
        }
    }
    match key {
        Some(key) if problems.is_empty() => Ok(CompiledView {
            name: view.name.clone(),
            key,
            encoding: config.encoding,
            features,
            event_time_field: config.event_time_field.clone(),
        }),
        _ => Err(problems),
    }
}

/// Characters of an environment value that go into the URL percent-encoded, so a password may
/// hold `@`, `:`, `/` or `%` (the client decodes credentials).
const URL_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Checks the URL's shape with a placeholder for every reference; returns whether it uses TLS.
fn check_url_shape(template: &EnvTemplate, mode: Mode) -> Result<bool, String> {
    // Marks the password's references so that a literal password can be told apart.
    let text = template.with_stand_in("ENVREF");
    let url = url::Url::parse(&text).map_err(|e| format!("not a valid URL ({e})"))?;
    let tls = match url.scheme() {
        "redis" => false,
        "rediss" => true,
        _ => {
            return Err(
                "must start with redis:// or rediss:// (set `mode` for cluster or sentinel)".into(),
            );
        }
    };
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            "cannot hold a query or fragment: use `nodes` and `sentinel_service_name`".into(),
        );
    }
    if let Some(password) = url.password()
        && !password.split("ENVREF").all(str::is_empty)
    {
        return Err(
            "the password must come from the environment, e.g. `redis://:${REDIS_PASSWORD}@host`, \
             not be written in the file"
                .into(),
        );
    }
    let path = url.path().trim_start_matches('/');
    if !path.is_empty() {
        if mode == Mode::Cluster {
            return Err("a cluster has only database 0: remove the path".into());
        }
        if path.parse::<u8>().is_err() {
            return Err("the path must be a database number, e.g. `/0`".into());
        }
    }
    Ok(tls)
}

/// Resolves the URL's `${NAME}` references with `env`, each value percent-encoded. The error
/// names the variable, never a value nor the URL.
pub fn resolve_url(template: &EnvTemplate, env: &Env) -> Result<String, String> {
    template
        .resolve(env, |value| utf8_percent_encode(value, URL_VALUE).into())
        .map_err(|e| format!("url: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<KeySpec> {
        names
            .iter()
            .map(|n| KeySpec {
                name: (*n).into(),
                ty: FeatureType::String,
            })
            .collect()
    }

    #[test]
    fn key_templates_render_keys_verbatim() {
        let t = KeyTemplate::parse("user_stats:{user_id}", &keys(&["user_id"])).expect("valid");
        let key = vec![fetcher_api::KeyPart::String(
            "{user_id}*\r\nFLUSHALL".into(),
        )];
        assert_eq!(
            t.render(&key).expect("renders"),
            "user_stats:{user_id}*\r\nFLUSHALL"
        );
        let t = KeyTemplate::parse("{{tag}}:{a}:{b}", &keys(&["a", "b"])).expect("valid");
        let key = vec![
            fetcher_api::KeyPart::Int64(-7),
            fetcher_api::KeyPart::String("x".into()),
        ];
        assert_eq!(t.render(&key).expect("renders"), "{tag}:-7:x");
        let e = KeyTemplate::parse("u:{user}", &keys(&["user_id"])).unwrap_err();
        assert!(e.contains("unknown placeholder `{user}`"), "{e}");
        let e = KeyTemplate::parse("u:{a}", &keys(&["a", "b"])).unwrap_err();
        assert!(e.contains("does not use entity key(s) `{b}`"), "{e}");
        assert!(KeyTemplate::parse("u:{a", &keys(&["a"])).is_err());
        assert!(KeyTemplate::parse("u:}{a}", &keys(&["a"])).is_err());
    }

    #[test]
    fn urls_are_checked_without_quoting_them() {
        let check = |url: &str, mode| {
            EnvTemplate::parse(url)
                .map_err(|e| e.to_string())
                .and_then(|template| check_url_shape(&template, mode))
        };
        assert_eq!(
            check("redis://127.0.0.1:6379/2", Mode::Standalone),
            Ok(false)
        );
        assert_eq!(
            check("rediss://:${REDIS_PASSWORD}@cache:6380", Mode::Standalone),
            Ok(true)
        );
        assert_eq!(
            check("redis://${USER}:${PASS}@cache", Mode::Cluster),
            Ok(false)
        );
        let e = check("redis://:hunter2@cache", Mode::Standalone).unwrap_err();
        assert!(e.contains("must come from the environment"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(check("http://cache", Mode::Standalone).is_err());
        assert!(check("redis://cache/1", Mode::Cluster).is_err());
        assert!(check("redis://cache?node=x:1", Mode::Cluster).is_err());
        assert!(check("redis://${A-B}@cache", Mode::Standalone).is_err());

        let parts = EnvTemplate::parse("redis://:${P}@cache:6379").expect("parses");
        let env = Env::from_fn(|_| Some("p@ss:w/rd%".into()));
        let url = resolve_url(&parts, &env).expect("resolves");
        assert_eq!(url, "redis://:p%40ss%3Aw%2Frd%25@cache:6379");
        let e = resolve_url(&parts, &Env::from_fn(|_| None)).unwrap_err();
        assert_eq!(e, "url: environment variable `P` is not set");
        assert!(!format!("{parts:?}").contains("cache"));
    }

    /// The problems of a source with these options, as `field: message`.
    fn problems(options: serde_json::Value) -> Vec<String> {
        let config: RedisSourceConfig = serde_json::from_value(options).expect("well-formed");
        match compile_source(&config) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn node_lists_that_mix_modes_or_schemes_name_the_field() {
        use serde_json::json;
        assert_eq!(
            problems(json!({
                "url": "rediss://cache-1:6380", "mode": "cluster",
                "nodes": ["cache-2:6380", "[::1]:6380"],
            })),
            Vec::<String>::new()
        );
        // A node list beside a standalone URL: which mode was meant is not guessed.
        let found = problems(json!({ "url": "redis://cache-1:6379", "nodes": ["cache-2:6379"] }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("nodes: only `cluster` and `sentinel` modes use more nodes"),
            "{found:?}"
        );
        // TLS for some nodes only, and plain for others.
        let found = problems(json!({
            "url": "redis://cache-1:6379", "mode": "cluster",
            "nodes": ["cache-2:6379", "rediss://cache-3:6380"],
        }));
        assert_eq!(
            found,
            [
                "nodes: `rediss://cache-3:6380` is a rediss:// URL while `url` is redis://: every \
              node is reached the same way, with the scheme, TLS and credentials of `url`; \
              write `host:port`"
            ]
        );
        let found = problems(json!({
            "url": "rediss://cache-1:6380", "mode": "cluster", "nodes": ["redis://cache-2:6379"],
        }));
        assert!(
            found[0].contains("is a redis:// URL while `url` is rediss://"),
            "{found:?}"
        );
        // A URL of the same scheme, or one with a password in it: host:port only.
        let found = problems(json!({
            "url": "redis://cache-1:6379", "mode": "cluster",
            "nodes": ["redis://:secret@cache-2:6379"],
        }));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("nodes: `redis://…@cache-2:6379` is a URL"),
            "{found:?}"
        );
        assert!(!found[0].contains("secret"), "{found:?}");
        // A cluster URL from another client (a scheme fred or redis-py accept) is not ours.
        let found = problems(json!({
            "url": "redis-cluster://cache-1:6379?node=cache-2:6379", "mode": "cluster",
        }));
        assert!(
            found[0].starts_with("url: must start with redis:// or rediss://"),
            "{found:?}"
        );
        // A database in a cluster, a sentinel's service name outside sentinel mode.
        let found = problems(json!({
            "url": "redis://cache-1:6379/2", "mode": "cluster", "sentinel_service_name": "m",
        }));
        assert_eq!(
            found,
            [
                "url: a cluster has only database 0: remove the path",
                "sentinel_service_name: applies only to `sentinel` mode"
            ]
        );
    }
}
