//! fetcher-sidecar: hosts built-in fetchers in their own process, behind the gRPC `Fetcher`
//! contract of `proto/featuregateway/v1/fetcher.proto`, for a gateway's `sidecar` source.
//!
//! This is how e.g. the Plaid fetcher runs beside the gateway holding the Plaid secrets: the
//! sidecar's configuration (the gateway's own format, loaded with [`gateway_config::load`])
//! has the real sources and their `${SECRET}` references, resolved from the sidecar's
//! environment; the gateway's configuration has a `sidecar` source pointing here, and never sees
//! them.
//!
//! # Contract
//! - [`Host::build`] builds the chosen sources (by default every source but `request` ones) with
//!   the built-in factories, each wrapped in the gateway's own source stack
//!   ([`gateway_stack::source_stack`]), so a source's `timeout` and `max_concurrency` hold here
//!   as they would in the gateway.
//! - A `FetchRequest` names a view; it goes to the source serving it. Unknown view ->
//!   NOT_FOUND naming it; a feature the view does not have, or a key of the wrong arity or type
//!   -> INVALID_ARGUMENT naming it. The call's `grpc-timeout` is the fetch's deadline.
//! - A failed fetch is a gRPC error with the code of its class (see
//!   [`fetcher_sidecar::wire::code_of`]) and the class and retryability as metadata; its message
//!   is the fetcher's, which never holds secrets. Cell errors stay cell errors.
//! - [`serve`] serves `featuregateway.v1.Fetcher`, `grpc.health.v1` and server reflection (v1
//!   and v1alpha, listing those services and no other) on TCP or a Unix socket until its
//!   shutdown future resolves, then reports NOT_SERVING, ends health watches, drains the calls
//!   in flight and returns (removing the socket file).
//!
//! # Failure
//! Building fails on a source that cannot be built (e.g. an unset secret), naming the source and
//! the variable, never a value. Binding a Unix socket fails if another process is serving on it;
//! a stale socket file left by a crash is replaced.

#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use fetcher_api::{FeatureType, FetchRequest, KeySpec, Registry};
use fetcher_sidecar::wire::{key_part_from_wire, row_to_wire, status_from_fetch_error};
use gateway_config::{Config, REQUEST_KIND, SourceConfig};
use gateway_stack::{SourceService, source_stack};
use proto::v1::{self, fetcher_server::FetcherServer};
use tokio::{
    net::{TcpListener, UnixListener},
    time::Instant,
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tonic_health::ServingStatus;
use tower::ServiceExt;

/// The gRPC service name, as `grpc.health.v1` reports it.
pub const SERVICE_NAME: &str = v1::fetcher_server::SERVICE_NAME;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `--source` named a source the configuration does not have, or a `request` one.
    #[error("source `{0}`: {1}")]
    Source(String, String),
    /// A source failed to build.
    #[error(transparent)]
    Build(#[from] fetcher_api::BuildError),
    /// Nothing to serve.
    #[error("no source to host: the configuration has only `request` sources")]
    Empty,
    /// The listening socket.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// A view served here.
#[derive(Debug)]
struct HostedView {
    source: Arc<str>,
    service: SourceService,
    keys: Vec<KeySpec>,
    features: HashSet<String>,
}

/// The hosted sources' views, ready to serve.
#[derive(Debug)]
pub struct Host {
    views: BTreeMap<String, HostedView>,
}

impl Host {
    /// Builds the sources named in `sources` (all but `request` sources when empty) of `config`
    /// with `registry`'s factories.
    pub async fn build(
        config: &Config,
        registry: &Registry,
        sources: &[String],
    ) -> Result<Host, HostError> {
        let chosen: Vec<_> = if sources.is_empty() {
            config
                .sources
                .values()
                .filter(|s| s.kind != REQUEST_KIND)
                .collect()
        } else {
            let mut chosen = Vec::with_capacity(sources.len());
            for name in sources {
                let source = config.sources.get(name).ok_or_else(|| {
                    let known: Vec<_> = config.sources.keys().map(String::as_str).collect();
                    HostError::Source(
                        name.clone(),
                        format!("not in the configuration (known: {})", known.join(", ")),
                    )
                })?;
                if source.kind == REQUEST_KIND {
                    return Err(HostError::Source(
                        name.clone(),
                        "a `request` source is served by the gateway itself".to_owned(),
                    ));
                }
                chosen.push(source);
            }
            chosen
        };
        if chosen.is_empty() {
            return Err(HostError::Empty);
        }
        let mut views = BTreeMap::new();
        for source in chosen {
            let factory = registry
                .get(&source.kind)
                .map_err(|e| HostError::Source(source.name.clone(), e.to_string()))?;
            let fetcher = factory.build(&source.spec).await?;
            let name: Arc<str> = source.name.as_str().into();
            let service = source_stack(
                fetcher,
                // Caching, circuit breaking, retries and hedging are the gateway's: a sidecar
                // answers what its source says now, and doing them on both sides would multiply
                // calls.
                &SourceConfig {
                    cache: None,
                    circuit_breaker: None,
                    retry: None,
                    hedge: None,
                    ..source.clone()
                },
            );
            for view in &source.spec.views {
                views.insert(
                    view.name.clone(),
                    HostedView {
                        source: name.clone(),
                        service: service.clone(),
                        keys: view.keys.clone(),
                        features: view.features.iter().map(|(f, _)| f.clone()).collect(),
                    },
                );
            }
        }
        Ok(Host { views })
    }

    /// The names of the views served, sorted.
    pub fn views(&self) -> impl Iterator<Item = &str> {
        self.views.keys().map(String::as_str)
    }

    /// Checks a request against the view it names and turns it into a fetch.
    fn fetch_request(
        &self,
        request: v1::FetchRequest,
        deadline: Option<Instant>,
    ) -> Result<(&HostedView, FetchRequest), Status> {
        let view = self.views.get(&request.view).ok_or_else(|| {
            Status::not_found(format!(
                "unknown view `{}` (served here: {})",
                request.view,
                self.views.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        if let Some(f) = request
            .features
            .iter()
            .find(|f| !view.features.contains(*f))
        {
            return Err(Status::invalid_argument(format!(
                "view `{}` has no feature `{f}`",
                request.view
            )));
        }
        let mut keys = Vec::with_capacity(request.keys.len());
        for (i, key) in request.keys.into_iter().enumerate() {
            if key.parts.len() != view.keys.len() {
                return Err(Status::invalid_argument(format!(
                    "keys[{i}]: {} parts for the {} entities of view `{}`",
                    key.parts.len(),
                    view.keys.len(),
                    request.view
                )));
            }
            let mut parts = Vec::with_capacity(key.parts.len());
            for (part, spec) in key.parts.into_iter().zip(&view.keys) {
                let type_name = proto::wire_type_name(&part);
                let part = key_part_from_wire(part)
                    .filter(|p| {
                        matches!(
                            (p, spec.ty),
                            (fetcher_api::KeyPart::Int64(_), FeatureType::Int64)
                                | (fetcher_api::KeyPart::String(_), FeatureType::String)
                        )
                    })
                    .ok_or_else(|| {
                        Status::invalid_argument(format!(
                            "keys[{i}]: `{}` is {}, got {type_name}",
                            spec.name, spec.ty
                        ))
                    })?;
                parts.push(part);
            }
            keys.push(parts);
        }
        Ok((
            view,
            FetchRequest {
                view: request.view.into(),
                features: request.features.into(),
                keys,
                deadline,
            },
        ))
    }
}

#[tonic::async_trait]
impl v1::fetcher_server::Fetcher for Host {
    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        // The caller's deadline, as tonic's own client and every gRPC client send it.
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(gateway_stack::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        let (view, fetch) = self.fetch_request(request.into_inner(), deadline)?;
        let view_name = fetch.view.clone();
        match view.service.clone().oneshot(fetch).await {
            Ok(rows) => Ok(Response::new(v1::FetchResponse {
                rows: rows.into_iter().map(row_to_wire).collect(),
            })),
            Err(error) => {
                tracing::warn!(source = %view.source, view = %view_name, %error, "fetch failed");
                Err(status_from_fetch_error(&error))
            }
        }
    }
}

/// Where the host listens.
#[derive(Debug)]
pub enum Listener {
    /// A bound TCP listener.
    Tcp(TcpListener),
    /// A bound Unix socket, and its path (removed when serving ends).
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds a Unix socket at `path`, replacing a stale socket file that no process serves.
    pub fn bind_unix(path: &Path) -> Result<Listener, HostError> {
        use std::os::unix::fs::FileTypeExt;
        let fail = |e| HostError::Listen(format!("unix:{}", path.display()), e);
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket",
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                )));
            }
            std::fs::remove_file(path).map_err(fail)?;
        }
        let listener = UnixListener::bind(path).map_err(fail)?;
        Ok(Listener::Unix(listener, path.to_owned()))
    }

    /// What the ready line prints: `grpc=ADDR` or `unix=PATH`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => format!("grpc={}", proto::server::local_addr(l)),
            Listener::Unix(_, path) => format!("unix={}", path.display()),
        }
    }
}

/// Serves `host` on `listener` until `shutdown` resolves, then drains the calls in flight.
pub async fn serve(
    host: Arc<Host>,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let reporter = tonic_health::server::HealthReporter::new();
    for service in ["", SERVICE_NAME] {
        reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }
    // Health watches end once `stop` is sent, after NOT_SERVING: an open one would otherwise
    // keep the graceful shutdown waiting for it forever.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let health_service = proto::server::health_service(reporter.clone(), stopping);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new calls, finishing those in flight");
        for service in ["", SERVICE_NAME] {
            reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let _ = stop.send(true);
    };
    let fetcher = FetcherServer::from_arc(host)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // Built from descriptors compiled into the binary: it cannot fail but by a build defect.
    // Reflection lists what the host serves: `fetcher.proto` imports `feature_service.proto`,
    // whose `FeatureService` is the gateway's and not listed here.
    let reflection = || proto::server::reflection(proto::FETCHER_DESCRIPTOR_SET, SERVICE_NAME);
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the compiled-in descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the compiled-in descriptors are valid");
    let router = tonic::transport::Server::builder()
        // Notices gateways that vanished without closing their connections.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // The gateway cancels a call at its deadline, possibly before this server took it off
        // the connection; past h2's 20 such calls at once the server would close the connection
        // (GOAWAY) and fail every other call on it. The gateway's own server allows as many.
        .http2_max_pending_accept_reset_streams(Some(1024))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(fetcher);
    let result = match listener {
        Listener::Tcp(listener) => {
            router
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY small responses wait on delayed ACKs (~40 ms each).
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
        Listener::Unix(listener, path) => {
            let result = router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    shutdown,
                )
                .await;
            let _ = std::fs::remove_file(&path);
            result
        }
    };
    tracing::info!("stopped");
    result
}
