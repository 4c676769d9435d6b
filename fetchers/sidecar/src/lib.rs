//! The `sidecar` source: a fetcher running in its own process beside the gateway, called over
//! the gRPC contract of `proto/featuregateway/v1/fetcher.proto` on TCP or a Unix socket.
//!
//! A sidecar isolates a fetcher (a crash or a leak stays in its process), holds its own secrets
//! (the gateway never sees the Plaid keys) and has its own release cycle; another team can write
//! one in any language from the .proto. `fetcher-sidecar` (services/fetcher-sidecar) hosts any
//! built-in fetcher that way.
//!
//! # Configuration
//! ```toml
//! [sources.plaid]
//! kind = "sidecar"
//! unix_socket = "/run/fg/plaid.sock"     # or: address = "http://127.0.0.1:7001"
//! connect_timeout = "250ms"              # optional, default 1s
//! keepalive_interval = "10s"             # optional: HTTP/2 PING period, default 10s
//! keepalive_timeout = "5s"               # optional: unanswered PING limit, default 5s
//! timeout = "3s"                         # the gateway's own per-source options apply as usual
//!
//! [views.balances]
//! source = "plaid"
//! entities = ["item_id"]
//! remote_view = "plaid_balances"         # optional: the view's name in the sidecar's config
//! features = { available = { type = "double" } }
//! ```
//! The gateway declares the view's entities and typed features as usual; the sidecar's own
//! configuration says how to fetch them.
//!
//! # Layout
//! - [`config`]: the options and their pure compilation (what `validate` checks).
//! - [`fetcher`]: [`SidecarFetcher`], the call, its deadline and the checks on its answer.
//! - [`wire`]: rows to and from the wire and the table between fetch errors and gRPC codes,
//!   shared with the host.
//!
//! # Failure
//! Validation names every bad option. Building makes no connection (the sidecar may start
//! after the gateway) and fails only on options that did not validate. A sidecar that is down
//! or dies makes fetches fail fast as `unavailable` (the features read `SOURCE_ERROR`), and the
//! source recovers by itself when the sidecar is back: every call after a failure reconnects.

#![forbid(unsafe_code)]

pub mod config;
pub mod fetcher;
pub mod wire;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use fetcher_api::{BuildError, Fetcher, FetcherFactory, Problem, SourceSpec};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use config::{CompiledSource, SidecarSourceConfig, SidecarViewConfig, Target};
pub use fetcher::SidecarFetcher;

/// Builds `sidecar` fetchers.
#[derive(Clone, Copy, Debug, Default)]
pub struct SidecarFactory;

#[async_trait]
impl FetcherFactory for SidecarFactory {
    fn kind(&self) -> &'static str {
        "sidecar"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(
            source,
            |config| config::compile_source(source, config),
            config::compile_view,
        )
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let (compiled, remote_views) = fetcher_api::build_options(
            source,
            |config| config::compile_source(source, config),
            config::compile_view,
        )?;
        let views: HashMap<String, String> = source
            .views
            .iter()
            .map(|view| view.name.clone())
            .zip(remote_views)
            .collect();
        let channel = channel(&compiled);
        Ok(Arc::new(SidecarFetcher::new(
            source.name.clone(),
            compiled.target.to_string(),
            channel,
            views,
        )))
    }
}

/// A lazily connecting channel to the sidecar, with the connect timeout and keepalive of
/// `source`. Makes no connection: the first call does.
pub fn channel(source: &CompiledSource) -> Channel {
    let endpoint = match &source.target {
        Target::Tcp(uri) => Endpoint::from(uri.clone()),
        // The URI is only the `:authority` of the calls; the connector below ignores it.
        Target::Unix(_) => Endpoint::from_static("http://sidecar.local"),
    };
    let endpoint = endpoint
        .connect_timeout(source.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(source.keepalive_interval)
        .keep_alive_timeout(source.keepalive_timeout)
        // PING idle connections too: the first call after a quiet spell must not be the one
        // that finds out the sidecar is gone.
        .keep_alive_while_idle(true);
    match &source.target {
        Target::Tcp(_) => endpoint.connect_lazy(),
        // Our own connector rather than tonic's `unix:` endpoints, which ignore the connect
        // timeout (a Unix socket whose listener stopped accepting fills its backlog and hangs).
        Target::Unix(path) => {
            let path: Arc<PathBuf> = Arc::new(path.clone());
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(&*path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::{FeatureType, KeySpec, Options, ViewSpec};

    use super::*;

    fn source(source_options: &str, view_options: &str) -> SourceSpec {
        let options = |text: &str| Options(text.parse().expect("valid TOML"));
        SourceSpec {
            name: "plaid".into(),
            kind: "sidecar".into(),
            options: options(source_options),
            views: vec![ViewSpec {
                name: "balances".into(),
                keys: vec![KeySpec {
                    name: "item_id".into(),
                    ty: FeatureType::String,
                }],
                features: vec![("available".into(), FeatureType::Double)],
                options: options(view_options),
            }],
            base_dir: ".".into(),
        }
    }

    #[test]
    fn validation_names_every_problem() {
        let good = source(r#"address = "http://127.0.0.1:7001""#, "");
        assert!(SidecarFactory.validate(&good).is_empty());
        let good = source(r#"unix_socket = "/x.sock""#, r#"remote_view = "b""#);
        assert!(SidecarFactory.validate(&good).is_empty());
        let bad = source(r#"port = 7001"#, r#"remote_veiw = "b""#);
        let problems = SidecarFactory.validate(&bad);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].view_name(), None);
        assert_eq!(problems[0].field(), ["port"]);
        assert_eq!(problems[1].view_name(), Some("balances"));
        assert_eq!(problems[1].field(), ["remote_veiw"]);
        let bad = source(
            r#"address = "http://127.0.0.1:7001""#,
            r#"remote_view = """#,
        );
        assert_eq!(
            SidecarFactory.validate(&bad)[0].to_string(),
            "view `balances`: remote_view: is empty"
        );
    }

    #[tokio::test]
    async fn building_makes_no_connection() {
        // Nothing listens there: the build still succeeds, and a fetch fails as unavailable.
        let spec = source(r#"unix_socket = "/nonexistent/fg-test.sock""#, "");
        let fetcher = SidecarFactory.build(&spec).await.expect("builds");
        let error = fetcher
            .fetch(fetcher_api::FetchRequest {
                view: "balances".into(),
                features: vec!["available".to_owned()].into(),
                keys: vec![vec![fetcher_api::KeyPart::String("i".into())]],
                deadline: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            error.class(),
            fetcher_api::ErrorClass::Unavailable,
            "{error}"
        );
        assert!(error.retryable());
        assert!(fetcher.health().await.is_err());
    }
}
