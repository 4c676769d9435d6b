//! The telemetry layer: one latency and outcome record per fetch, whatever the outcome, and the
//! span of the source call.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use fetcher_api::{EntityKey, FetchError, FetchRequest, Row};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::events::source::{InFlight, SourceMetrics};

/// Records every fetch's latency and outcome.
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    /// Shared by the stack's clones and the calls' futures: one reference count per clone,
    /// where the handles themselves are six.
    metrics: Arc<SourceMetrics>,
}

impl TelemetryLayer {
    /// A layer recording under the source's name.
    pub fn new(source: Arc<str>) -> Self {
        TelemetryLayer {
            metrics: Arc::new(SourceMetrics::new(source)),
        }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`TelemetryLayer`].
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
    metrics: Arc<SourceMetrics>,
}

impl<S> Service<FetchRequest> for Telemetry<S>
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError>,
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        let metrics = self.metrics.clone();
        let span = tracing::debug_span!(
            "source_call",
            otel.kind = "client",
            source = metrics.source(),
            view = &*request.view,
            keys = request.keys.len(),
            background = request.deadline.is_none(),
            outcome = tracing::field::Empty,
            retries = tracing::field::Empty,
            hedges = tracing::field::Empty,
        );
        // Only a failure's log line needs the key: the first one, hashed.
        let first_key = request.keys.first().cloned();
        let view = request.view.clone();
        let keys = request.keys.len();
        let started = Instant::now();
        let in_flight = Some(metrics.fetch_started());
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        TelemetryFuture {
            call,
            span,
            metrics,
            in_flight,
            first_key,
            view,
            keys,
            started,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Telemetry`] call: the inner call inside the source call's span, its
    /// outcome recorded when it finishes (a concrete future: no allocation per call).
    pub struct TelemetryFuture<F> {
        #[pin]
        call: F,
        span: tracing::Span,
        metrics: Arc<SourceMetrics>,
        in_flight: Option<InFlight>,
        first_key: Option<EntityKey>,
        view: Arc<str>,
        keys: usize,
        started: Instant,
    }
}

impl<F> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Vec<Row>, FetchError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.call.poll(cx));
        drop(this.in_flight.take());
        if let Ok(rows) = &result {
            let not_found = rows.iter().filter(|r| matches!(r, Row::NotFound)).count();
            this.metrics
                .keys_answered(rows.len() - not_found, not_found);
        }
        let error = result.as_ref().err();
        this.span
            .record("outcome", error.map_or("ok", |e| e.class().as_str()));
        this.metrics.fetch_finished(
            this.view,
            *this.keys,
            this.first_key.as_ref(),
            this.started.elapsed(),
            error,
        );
        Poll::Ready(result)
    }
}
