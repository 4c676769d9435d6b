//! The `http` source: other teams' internal JSON APIs, one request per key or one per batch.
//!
//! # Configuration
//! ```toml
//! [sources.device_api]
//! kind = "http"
//! base_url = "http://device-reputation.internal:8080"
//! headers = { Authorization = "Bearer ${DEVICE_API_TOKEN}" }  # resolved at build, never logged
//! pool_max_idle_per_host = 32        # optional: idle keep-alive connections per host
//! connect_timeout = "250ms"          # optional, default 1s
//! max_concurrent_requests = 64       # optional: in-flight requests across the source
//! health_path = "/healthz"           # optional: a 2xx here means the API is up
//!
//! [views.device_reputation]
//! source = "device_api"
//! entities = ["device_id"]
//! method = "GET"                                    # or "POST" (with `body`)
//! path = "/v1/devices/{device_id}/reputation"       # each key encoded as one path segment
//! query = { detail = "full" }                       # optional, values may hold placeholders
//! fields = { risk = "/risk_score" }                 # JSON pointers; default `/<feature name>`
//! event_time_pointer = "/updated_at"                # optional
//!
//! [views.merchant_risk]
//! source = "merchant_api"
//! entities = ["merchant_id"]
//! batch = { path = "/v1/merchants/risk:batch", keys_field = "ids", results_pointer = "/results", key_pointer = "/id", max_keys = 100 }
//! fields = { fraud = "/scores/fraud" }              # relative to each result
//! ```
//!
//! # Layout
//! - [`config`]: the option structs and their pure compilation (what `validate` checks).
//! - [`template`]: path, query and body templates, with keys always treated as data.
//! - [`decode`]: JSON pointers and typed decoding of a response into a row.
//! - [`fetcher`]: [`HttpFetcher`], the calls and the classification of their failures.
//!
//! # Failure
//! Validation names every bad option. Building fails on an unset environment variable named by a
//! header (naming the header and the variable, never a value) or a client that cannot be made
//! (e.g. no TLS crypto provider installed). At fetch time see [`fetcher`] for the status table.

#![forbid(unsafe_code)]

pub mod config;
pub mod decode;
pub mod fetcher;
pub mod template;

use std::sync::Arc;

use async_trait::async_trait;
use fetcher_api::{BuildError, Env, Fetcher, FetcherFactory, Problem, SourceSpec};
use reqwest::header::HeaderMap;

pub use config::{BatchConfig, HttpSourceConfig, HttpViewConfig, Method};
pub use fetcher::HttpFetcher;

/// Builds `http` fetchers.
#[derive(Clone, Debug, Default)]
pub struct HttpFactory {
    /// Where `${NAME}` in header values is looked up (see [`fetcher_api::secret`]).
    env: Env,
}

impl HttpFactory {
    /// A factory that resolves `${NAME}` in headers from the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory that resolves `${NAME}` with `env` instead (tests, or a secrets store).
    pub fn with_env(env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        HttpFactory {
            env: Env::from_fn(env),
        }
    }
}

#[async_trait]
impl FetcherFactory for HttpFactory {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(source, config::compile_source, config::compile_view)
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let (compiled, views) =
            fetcher_api::build_options(source, config::compile_source, config::compile_view)?;
        let fail = |message: String| BuildError::new(source, message);
        let mut headers = HeaderMap::new();
        for (written, name, template) in &compiled.headers {
            let value = config::resolve_header(written, template, &self.env).map_err(fail)?;
            headers.insert(name.clone(), value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .pool_max_idle_per_host(compiled.pool_max_idle_per_host)
            .connect_timeout(compiled.connect_timeout)
            .tcp_nodelay(true)
            // A redirect could carry the configured headers to another host; internal APIs on
            // the critical path have no business redirecting anyway.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(format!("cannot create the HTTP client: {e}")))?;
        Ok(Arc::new(HttpFetcher::new(
            source.name.clone(),
            client,
            compiled.base_url,
            views,
            compiled.max_concurrent_requests,
            compiled.health_path,
        )))
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::{FeatureType, KeySpec, Options, ViewSpec, config::join};

    use super::*;

    fn options(text: &str) -> Options {
        Options(text.parse().expect("valid TOML"))
    }

    fn source(source_options: &str, views: Vec<(&str, &str)>) -> SourceSpec {
        SourceSpec {
            name: "api".into(),
            kind: "http".into(),
            options: options(source_options),
            views: views
                .into_iter()
                .map(|(name, text)| ViewSpec {
                    name: name.into(),
                    keys: vec![KeySpec {
                        name: "device_id".into(),
                        ty: FeatureType::String,
                    }],
                    features: vec![
                        ("risk".into(), FeatureType::Double),
                        ("seen".into(), FeatureType::Int64),
                    ],
                    options: options(text),
                })
                .collect(),
            base_dir: ".".into(),
        }
    }

    #[test]
    fn a_good_source_validates() {
        let spec = source(
            r#"base_url = "http://127.0.0.1:1/api/"
               headers = { Authorization = "Bearer ${TOKEN}", X-Team = "risk" }
               connect_timeout = "250ms""#,
            vec![
                (
                    "one",
                    r#"path = "/v1/devices/{device_id}"
                       query = { d = "{device_id}" }
                       fields = { risk = "/scores/risk" }"#,
                ),
                (
                    "two",
                    r#"batch = { path = "/v1/devices:batch" }
                       event_time_pointer = "/updated_at""#,
                ),
                (
                    "three",
                    r#"method = "POST"
                       path = "/v1/lookup"
                       body = { id = "{device_id}", tags = ["x"] }"#,
                ),
            ],
        );
        assert_eq!(HttpFactory::new().validate(&spec), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_naming_its_option_and_view() {
        let spec = source(
            r#"base_url = "ftp://x"
               headers = { "bad header" = "v", Authorization = "${A-B}" }
               connect_timeout = "soon"
               pool_max_idle_per_host = 0"#,
            vec![
                (
                    "unknown",
                    r#"path = "/x"
                               colour = "red""#,
                ),
                ("placeholder", r#"path = "/v1/{user_id}""#),
                ("relative", r#"path = "v1/{device_id}""#),
                ("dots", r#"path = "/v1/../{device_id}""#),
                ("neither", r#"fields = { risk = "/r" }"#),
                (
                    "get_body",
                    r#"path = "/x/{device_id}"
                                body = { a = 1 }"#,
                ),
                (
                    "pointer",
                    r#"path = "/x/{device_id}"
                               fields = { risk = "scores/risk", nope = "/n" }"#,
                ),
                (
                    "batch",
                    r#"batch = { path = "/b/{device_id}", max_keys = 0 }"#,
                ),
                (
                    "method",
                    r#"path = "/x/{device_id}"
                              method = "DELETE""#,
                ),
            ],
        );
        let problems = HttpFactory::new().validate(&spec);
        let text = join(&problems, "\n");
        // The source's options fail to parse as a whole (the duration), so fix that and check the
        // rest separately.
        assert!(
            text.contains("`soon` is not a duration like \"20ms\" or \"5s\""),
            "{text}"
        );
        let expected = [
            "view `unknown`: colour: unknown field `colour`",
            "view `placeholder`: path: unknown placeholder `{user_id}`",
            "view `relative`: path: `v1/{device_id}` must start with `/`",
            "view `dots`: path: `/v1/../{device_id}` cannot hold `.` or `..` segments",
            "view `neither`: `path` is required",
            "view `get_body`: body: needs method = \"POST\"",
            "view `pointer`: fields.risk: `scores/risk` is not a JSON pointer",
            "view `pointer`: fields.nope: the view has no feature `nope`",
            "view `batch`: batch.path: cannot hold placeholders",
            "view `batch`: batch.max_keys: must be at least 1",
            "view `method`: unknown variant `DELETE`",
        ];
        for e in expected {
            assert!(text.contains(e), "missing `{e}` in:\n{text}");
        }

        let spec = source(
            r#"base_url = "ftp://x"
               headers = { "bad header" = "v", Authorization = "${A-B}" }
               pool_max_idle_per_host = 0"#,
            vec![],
        );
        let problems = HttpFactory::new().validate(&spec);
        let text = join(&problems, "\n");
        for e in [
            "base_url: `ftp://x` must be an http:// or https:// URL",
            "headers.bad header: `bad header` is not a valid header name",
            "headers.Authorization: `${A-B}` is not an environment variable reference",
            "pool_max_idle_per_host: must be at least 1",
        ] {
            assert!(text.contains(e), "missing `{e}` in:\n{text}");
        }
        let header = problems
            .iter()
            .find(|p| p.message().contains("not a valid header name"))
            .expect("a bad header name");
        assert_eq!(header.field(), ["headers", "bad header"]);
        assert_eq!(header.view_name(), None);
    }

    #[tokio::test]
    async fn build_names_a_missing_variable_but_never_a_value() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let spec = source(
            r#"base_url = "http://127.0.0.1:1"
               headers = { Authorization = "Bearer ${TOKEN}", X-Other = "${OTHER}" }"#,
            vec![("one", r#"path = "/v1/{device_id}""#)],
        );
        let factory =
            HttpFactory::with_env(|name| (name == "TOKEN").then(|| "s3cr3t-value".into()));
        let err = factory.build(&spec).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "source `api`: headers.X-Other: environment variable `OTHER` is not set"
        );
        let factory = HttpFactory::with_env(|_| Some("s3cr3t-value".into()));
        let fetcher = factory.build(&spec).await.expect("builds");
        assert!(!format!("{fetcher:?}").contains("s3cr3t"));
    }
}
