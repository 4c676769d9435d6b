//! The telemetry layer: one latency and outcome record per fetch, whatever the outcome, and the
//! span of the source call.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use fetcher_api::{FetchError, FetchRequest, Row};
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::{events::source::SourceMetrics, service::BoxFuture};

/// Records every fetch's latency and outcome.
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    metrics: SourceMetrics,
}

impl TelemetryLayer {
    /// A layer recording under the source's name.
    pub fn new(source: Arc<str>) -> Self {
        TelemetryLayer {
            metrics: SourceMetrics::new(source),
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
    metrics: SourceMetrics,
}

impl<S> Service<FetchRequest> for Telemetry<S>
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError>,
    S::Future: Send + 'static,
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = BoxFuture<Result<Vec<Row>, FetchError>>;

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
        let in_flight = metrics.fetch_started();
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = call.await;
                drop(in_flight);
                if let Ok(rows) = &result {
                    let not_found = rows.iter().filter(|r| matches!(r, Row::NotFound)).count();
                    metrics.keys_answered(rows.len() - not_found, not_found);
                }
                let error = result.as_ref().err();
                tracing::Span::current()
                    .record("outcome", error.map_or("ok", |e| e.class().as_str()));
                metrics.fetch_finished(&view, keys, first_key.as_ref(), started.elapsed(), error);
                result
            }
            .instrument(span),
        )
    }
}
