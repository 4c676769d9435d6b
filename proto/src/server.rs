//! What every gRPC server of the project shares (the gateway and the fetcher sidecar host): the
//! shutdown signal, the address a listener is bound to (for the ready line), and server reflection
//! listing exactly what the server serves, and a health service whose `Watch` streams end when
//! the server stops, so they cannot hold its graceful shutdown open.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse, health_check_response,
        health_server::{Health, HealthServer},
    },
    server::{HealthReporter, HealthService, WatchStream},
};

/// Resolves on SIGTERM or SIGINT, listened for from the moment of the call: a server calls it
/// before it says it is ready, so a signal sent right after is not missed (the signal's default
/// action would end the process without its clean shutdown). Call it inside a tokio runtime.
pub fn shutdown_signal() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut interrupt)) => Box::pin(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("cannot listen for SIGTERM and SIGINT: {e}");
                Box::pin(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
            }
        }
    }
    #[cfg(not(unix))]
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The address a listener is bound to, for the ready line.
pub fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string())
}

/// The services a server listing `service` in reflection lists: `service` itself, the health
/// service and reflection (both versions): nothing it does not serve.
pub fn served(service: &'static str) -> [&'static str; 4] {
    [
        service,
        tonic_health::pb::health_server::SERVICE_NAME,
        tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
        tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
    ]
}

/// Server reflection (build it with `build_v1` and `build_v1alpha`, both served) over
/// `descriptors`, the descriptor set of `service`'s file and its imports, listing
/// [`served`]`(service)`. A file imported for its messages (`fetcher.proto` imports
/// `feature_service.proto`) does not list that file's services.
pub fn reflection(
    descriptors: &'static [u8],
    service: &'static str,
) -> tonic_reflection::server::Builder<'static> {
    served(service).into_iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Each version registers its own; both are served.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        |builder, name| builder.with_service_name(name),
    )
}

/// `grpc.health.v1.Health` over `reporter`'s statuses, for a server that shuts down gracefully:
/// once `stopping` turns true (or its sender is dropped), every `Watch` stream, open or opened
/// later, sends what is left of its updates, then `NOT_SERVING` if that was not its last, and
/// ends. Without this a watcher (a load balancer, a sidecar's gateway) holds its stream open and
/// the server's graceful shutdown, which waits for every call to end, never finishes. Set the
/// statuses to `NOT_SERVING` before `stopping` turns true, so watchers hear it from the reporter.
pub fn health_service(
    reporter: HealthReporter,
    stopping: watch::Receiver<bool>,
) -> HealthServer<StoppingHealth> {
    HealthServer::new(StoppingHealth::new(reporter, stopping))
}

/// tonic-health's service, its `Watch` streams ended by the server's shutdown (see
/// [`health_service`]).
#[derive(Debug)]
pub struct StoppingHealth {
    inner: HealthService,
    stopping: watch::Receiver<bool>,
}

impl StoppingHealth {
    /// The service over `reporter`'s statuses, its watches ended by `stopping`.
    pub fn new(reporter: HealthReporter, stopping: watch::Receiver<bool>) -> Self {
        StoppingHealth {
            inner: HealthService::from_health_reporter(reporter),
            stopping,
        }
    }
}

#[tonic::async_trait]
impl Health for StoppingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchUntilStopped;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        Ok(Response::new(WatchUntilStopped {
            inner,
            stopped: Box::pin(async move {
                let _ = stopping.wait_for(|s| *s).await;
            }),
            last: None,
            ended: false,
        }))
    }
}

/// A `Watch` stream that ends when the server stops (see [`health_service`]).
pub struct WatchUntilStopped {
    inner: WatchStream,
    stopped: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The status last sent.
    last: Option<i32>,
    ended: bool,
}

impl std::fmt::Debug for WatchUntilStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchUntilStopped")
            .field("last", &self.last)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

const NOT_SERVING: i32 = health_check_response::ServingStatus::NotServing as i32;

impl Stream for WatchUntilStopped {
    type Item = Result<HealthCheckResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // The reporter first: a status set before the stop (NOT_SERVING) is sent, not lost.
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(item)) => {
                if let Ok(response) = &item {
                    self.last = Some(response.status);
                }
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match self.stopped.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.ended = true;
                // A stopping server is not serving, whatever the reporter said last.
                Poll::Ready((self.last != Some(NOT_SERVING)).then(|| {
                    Ok(HealthCheckResponse {
                        status: NOT_SERVING,
                    })
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio_stream::StreamExt;
    use tonic_health::ServingStatus;

    use super::*;

    const SERVING: i32 = health_check_response::ServingStatus::Serving as i32;

    fn request() -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: String::new(),
        })
    }

    async fn statuses(stream: WatchUntilStopped) -> Vec<i32> {
        stream.map(|r| r.unwrap().status).collect().await
    }

    #[tokio::test]
    async fn a_watch_hears_not_serving_then_ends_when_the_server_stops() {
        let reporter = HealthReporter::new();
        let (stop, stopping) = watch::channel(false);
        let health = StoppingHealth::new(reporter.clone(), stopping);
        let mut stream = health.watch(request()).await.unwrap().into_inner();
        assert_eq!(stream.next().await.unwrap().unwrap().status, SERVING);
        // As the servers stop: NOT_SERVING first, then the stop, in one go.
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        stop.send(true).unwrap();
        assert_eq!(statuses(stream).await, [NOT_SERVING]);
        // A watch opened after the stop hears the status once and ends.
        let late = health.watch(request()).await.unwrap().into_inner();
        assert_eq!(statuses(late).await, [NOT_SERVING]);
    }

    #[tokio::test]
    async fn a_stop_without_not_serving_still_ends_the_watch_with_not_serving() {
        let reporter = HealthReporter::new();
        let (stop, stopping) = watch::channel(false);
        let health = StoppingHealth::new(reporter, stopping);
        let stream = health.watch(request()).await.unwrap().into_inner();
        drop(stop);
        assert_eq!(statuses(stream).await, [SERVING, NOT_SERVING]);
    }

    #[tokio::test]
    async fn check_answers_as_tonic_health_does() {
        let reporter = HealthReporter::new();
        let (_stop, stopping) = watch::channel(false);
        let health = StoppingHealth::new(reporter, stopping);
        let answer = health.check(request()).await.unwrap().into_inner();
        assert_eq!(answer.status, SERVING);
        let unknown = Request::new(HealthCheckRequest {
            service: "nope".into(),
        });
        assert_eq!(
            health.check(unknown).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
}
