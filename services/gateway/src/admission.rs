//! Load shedding: when the gateway is saturated, a feature request is refused at once with
//! `RESOURCE_EXHAUSTED` instead of waiting in a queue past its deadline.
//!
//! [`AdmissionLayer`] wraps the whole gRPC server (`Server::builder().layer(...)` in
//! [`crate::server`]). `GetFeatures` and `GetFeaturesBatch` each need one of `max_in_flight`
//! permits (`[limits]`) for as long as they run; with none free, the call is answered at once
//! with `RESOURCE_EXHAUSTED` and counted (`feature_gateway_requests_shed_total`). There is no
//! queue, so an admitted call starts at once and a refused one costs the caller nothing of its
//! deadline: it can retry elsewhere. Everything else (health checks, reflection, discovery) is
//! never shed, so a saturated gateway still reports its health.
//!
//! tonic's `concurrency_limit_per_connection` is not used for this: it queues calls beyond the
//! limit (and per connection), which is what shedding must avoid.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use proto::v1::feature_service_server::SERVICE_NAME;
use tokio::sync::Semaphore;
use tonic::codegen::http;
use tower::{Layer, Service};

use gateway_stack::BoxFuture;

use crate::telemetry::{AdmissionMetrics, METHODS};

/// In-flight feature requests allowed per CPU core when `[limits] max_in_flight` is not set.
pub const DEFAULT_IN_FLIGHT_PER_CORE: usize = 512;

/// The default `max_in_flight`: [`DEFAULT_IN_FLIGHT_PER_CORE`] per available core.
pub fn default_max_in_flight() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) * DEFAULT_IN_FLIGHT_PER_CORE
}

/// Admits at most `max_in_flight` feature requests at a time and refuses the others at once.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: AdmissionMetrics,
}

impl AdmissionLayer {
    /// A layer admitting `max_in_flight` feature requests at a time.
    pub fn new(max_in_flight: usize) -> Self {
        let metrics = AdmissionMetrics::new();
        metrics.in_flight(0);
        AdmissionLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            limit: max_in_flight,
            metrics,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`AdmissionLayer`].
#[derive(Clone, Debug)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

/// The [`METHODS`] index of a request path subject to admission, if it is one.
fn guarded(path: &str) -> Option<usize> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')?;
    METHODS.iter().position(|m| *m == method)
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(method) = guarded(request.uri().path()) else {
            return Box::pin(self.inner.call(request));
        };
        let layer = &self.layer;
        let Ok(permit) = layer.permits.clone().try_acquire_owned() else {
            layer.metrics.shed(method, layer.limit);
            let status = tonic::Status::resource_exhausted(format!(
                "the gateway is saturated ({} requests in flight): retry with backoff or on \
                 another replica",
                layer.limit
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        layer
            .metrics
            .in_flight(layer.limit - layer.permits.available_permits());
        let call = self.inner.call(request);
        let layer = layer.clone();
        Box::pin(async move {
            let result = call.await;
            drop(permit);
            layer
                .metrics
                .in_flight(layer.limit - layer.permits.available_permits());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{convert::Infallible, time::Duration};
    use tokio::time::Instant;
    use tower::ServiceExt;

    /// An inner server that takes 100 ms per call and answers OK.
    fn slow_server() -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
        })
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<tonic::Code> {
        tonic::Status::from_header_map(response.headers()).map(|s| s.code())
    }

    #[test]
    fn only_feature_requests_are_guarded() {
        assert_eq!(
            guarded("/featuregateway.v1.FeatureService/GetFeatures"),
            Some(0)
        );
        assert_eq!(
            guarded("/featuregateway.v1.FeatureService/GetFeaturesBatch"),
            Some(1)
        );
        assert_eq!(
            guarded("/featuregateway.v1.FeatureService/ListFeatureServices"),
            None
        );
        assert_eq!(guarded("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            guarded("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
    }

    #[test]
    fn a_saturated_gateway_sheds_at_once_and_still_serves_health() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(async {
                    let service = AdmissionLayer::new(2).layer(slow_server());
                    let get = "/featuregateway.v1.FeatureService/GetFeatures";
                    let first = tokio::spawn(service.clone().oneshot(request(get)));
                    let second = tokio::spawn(service.clone().oneshot(request(
                        "/featuregateway.v1.FeatureService/GetFeaturesBatch",
                    )));
                    tokio::task::yield_now().await;

                    // Saturated: refused at once, with RESOURCE_EXHAUSTED.
                    let started = Instant::now();
                    let Ok(shed) = service.clone().oneshot(request(get)).await;
                    assert_eq!(started.elapsed(), Duration::ZERO);
                    assert_eq!(grpc_status(&shed), Some(tonic::Code::ResourceExhausted));

                    // Health is still served (it waits on the inner server like any call).
                    let Ok(health) = service
                        .clone()
                        .oneshot(request("/grpc.health.v1.Health/Check"))
                        .await;
                    assert_eq!(grpc_status(&health), None);

                    // The admitted calls finish; their permits come back.
                    for call in [first, second] {
                        let Ok(response) = call.await.unwrap();
                        assert_eq!(grpc_status(&response), None);
                    }
                    let Ok(again) = service.oneshot(request(get)).await;
                    assert_eq!(grpc_status(&again), None);
                });
        });
        let rendered = handle.render();
        assert!(
            rendered.contains("feature_gateway_requests_shed_total{method=\"GetFeatures\"} 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("feature_gateway_requests_shed_total{method=\"GetFeaturesBatch\"} 0"),
            "{rendered}"
        );
    }
}
