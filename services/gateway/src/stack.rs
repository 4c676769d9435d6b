//! The tower stack every source sits behind, built in one place ([`gateway_stack`]).
//!
//! Fetchers only make their call. Everything a production gateway does around a call is a layer
//! here, written once and configured per source, so every source kind gets it and no fetcher
//! re-implements it. Layers, outermost first:
//! - [`CacheLayer`]: TTL, stale serving within a bound, background completion (see
//!   [`crate::cache`]); answers one [`Slot`] per key;
//! - [`TelemetryLayer`]: one latency and outcome record per fetch, whatever the outcome;
//! - [`CircuitBreakerLayer`]: opens after repeated failures and answers at once while open;
//! - [`DeadlineLayer`]: the call's time limit is the lesser of the source's timeout and what is
//!   left of the request's deadline;
//! - [`HedgeLayer`]: for sources that opt in, a second attempt when the first is slower than
//!   usual, the first answer winning (see [`crate::hedge`]);
//! - tower's `Retry` with [`RetryPolicy`]: retryable failures, within the deadline and a budget;
//! - [`BulkheadLayer`]: at most `max_concurrency` calls in flight; one more is refused at once
//!   (so a slow source cannot take every task and connection of the gateway).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Fetcher, Row};
use tokio::{sync::Semaphore, time::Instant};
use tower::{Layer, Service, ServiceBuilder, retry::RetryLayer, util::BoxCloneSyncService};
use tracing::Instrument;

use crate::{
    cache::{CacheLayer, CachePolicy, Slot},
    hedge::{HedgeLayer, HedgePolicy},
    resilience::{BreakerPolicy, CircuitBreakerLayer, RetryPolicy, RetrySettings},
    telemetry::SourceMetrics,
};

/// A source behind its stack.
pub type SourceService = BoxCloneSyncService<FetchRequest, Vec<Row>, FetchError>;

/// A boxed future of a layer.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A source behind its stack and cache, answering one [`Slot`] per key.
pub type GatewayService = BoxCloneSyncService<FetchRequest, Vec<Slot>, Infallible>;

/// Per-source settings of the stack.
#[derive(Clone, Debug)]
pub struct SourcePolicy {
    /// The source's name, for telemetry.
    pub name: Arc<str>,
    /// The source's kind, for telemetry.
    pub kind: Arc<str>,
    /// The source's own timeout.
    pub timeout: Option<Duration>,
    /// Most calls in flight.
    pub max_concurrency: usize,
    /// The source's cache, if it has one.
    pub cache: Option<CachePolicy>,
    /// The source's circuit breaker, if it has one.
    pub circuit_breaker: Option<BreakerPolicy>,
    /// The source's retries, if any.
    pub retry: Option<RetrySettings>,
    /// The source's hedged requests, if it opts in.
    pub hedge: Option<HedgePolicy>,
}

/// The whole stack of a source as the gateway uses it: the cache over [`source_stack`].
pub fn gateway_stack(fetcher: Arc<dyn Fetcher>, policy: &SourcePolicy) -> GatewayService {
    let cache = CacheLayer::new(policy.cache.as_ref(), policy.timeout, &policy.name);
    gateway_stack_with_cache(cache, fetcher, policy)
}

/// [`gateway_stack`] with a cache layer built by the caller (with a shared tier, or kept for
/// its [`crate::cache::CacheControl`]).
pub fn gateway_stack_with_cache(
    cache: CacheLayer,
    fetcher: Arc<dyn Fetcher>,
    policy: &SourcePolicy,
) -> GatewayService {
    let service = ServiceBuilder::new()
        // Outermost: a hit never reaches the source, its telemetry or its concurrency bound,
        // and a call it lets finish in the background is bounded by the source's own timeout.
        .layer(cache)
        .service(source_stack(fetcher, policy));
    BoxCloneSyncService::new(service)
}

/// Wraps `fetcher` in the gateway's stack.
pub fn source_stack(fetcher: Arc<dyn Fetcher>, policy: &SourcePolicy) -> SourceService {
    let retry = policy
        .retry
        .as_ref()
        .map(|r| RetryLayer::new(RetryPolicy::new(r, &policy.name)));
    let service = ServiceBuilder::new()
        // Outermost, so refusals, open circuits and timeouts are recorded like any outcome.
        .layer(TelemetryLayer::new(policy.name.clone()))
        // Sees each call's final outcome (after retries); open, it answers at once.
        .layer(CircuitBreakerLayer::new(
            policy.circuit_breaker.as_ref(),
            &policy.name,
        ))
        // Bounds the call and its retries together by the request's deadline.
        .layer(DeadlineLayer::new(policy.timeout))
        // Inside the deadline, which ends every attempt; outside retries and the bulkhead, so
        // each attempt retries on its own and takes a permit (hedges cannot pass the bound).
        .layer(HedgeLayer::new(policy.hedge.as_ref(), &policy.name))
        // Inside the deadline: a retry happens only if there is time left for it.
        .option_layer(retry)
        // Innermost: every attempt needs a permit, so retries cannot exceed the bound.
        .layer(BulkheadLayer::new(policy.max_concurrency))
        .service(FetcherService(fetcher));
    BoxCloneSyncService::new(service)
}

/// Adapts a [`Fetcher`] to a tower [`Service`].
#[derive(Clone, Debug)]
pub struct FetcherService(pub Arc<dyn Fetcher>);

impl Service<FetchRequest> for FetcherService {
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = BoxFuture<Result<Vec<Row>, FetchError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        let fetcher = self.0.clone();
        let keys = request.keys.len();
        Box::pin(async move {
            let rows = fetcher.fetch(request).await?;
            if rows.len() != keys {
                return Err(FetchError::internal(format!(
                    "the fetcher answered {} rows for {keys} keys",
                    rows.len()
                )));
            }
            Ok(rows)
        })
    }
}

/// Limits a call to the lesser of the source's timeout and the request's remaining deadline.
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    timeout: Option<Duration>,
}

impl DeadlineLayer {
    /// A layer with the source's own timeout (`None`: the request's deadline alone).
    pub fn new(timeout: Option<Duration>) -> Self {
        DeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Option<Duration>,
}

/// The instant a call must end by: the earlier of `now + timeout` and `deadline`.
pub fn effective_deadline(
    now: Instant,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> Option<Instant> {
    let own = timeout.map(|t| now + t);
    match (own, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<S> Service<FetchRequest> for Deadline<S>
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

    fn call(&mut self, mut request: FetchRequest) -> Self::Future {
        let limit = effective_deadline(Instant::now(), self.timeout, request.deadline);
        // The fetcher sees the tighter limit, so it can pass it on (statement timeouts, gRPC).
        request.deadline = limit;
        let call = self.inner.call(request);
        Box::pin(async move {
            match limit {
                None => call.await,
                Some(limit) => tokio::time::timeout_at(limit, call)
                    .await
                    .unwrap_or_else(|_| {
                        Err(FetchError::timeout("no answer within the time limit"))
                    }),
            }
        })
    }
}

/// Refuses calls beyond a number in flight, at once, instead of queueing them.
#[derive(Clone, Debug)]
pub struct BulkheadLayer {
    permits: Arc<Semaphore>,
}

impl BulkheadLayer {
    /// A bulkhead admitting `max_concurrency` calls at a time.
    pub fn new(max_concurrency: usize) -> Self {
        BulkheadLayer {
            permits: Arc::new(Semaphore::new(max_concurrency)),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            permits: self.permits.clone(),
        }
    }
}

/// See [`BulkheadLayer`].
#[derive(Clone, Debug)]
pub struct Bulkhead<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S> Service<FetchRequest> for Bulkhead<S>
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
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let result = call.await;
                    drop(permit);
                    result
                })
            }
            Err(_) => Box::pin(async {
                Err(FetchError::new(
                    ErrorClass::Overloaded,
                    "the source's concurrency limit is reached",
                ))
            }),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use fetcher_api::{KeyPart, Record, Value};

    /// A fetcher that answers after a fixed (virtual) delay.
    #[derive(Debug)]
    struct Slow(Duration);

    #[async_trait]
    impl Fetcher for Slow {
        async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
            tokio::time::sleep(self.0).await;
            Ok(request
                .keys
                .iter()
                .map(|_| {
                    Row::Found(Record {
                        cells: vec![Ok(Value::Int64(1))],
                        event_time: None,
                    })
                })
                .collect())
        }
    }

    fn request(deadline: Option<Instant>) -> FetchRequest {
        FetchRequest {
            view: "v".into(),
            features: vec!["f".to_owned()].into(),
            keys: vec![vec![KeyPart::Int64(1)]],
            deadline,
        }
    }

    fn policy(timeout: Option<Duration>, max_concurrency: usize) -> SourcePolicy {
        SourcePolicy {
            name: "s".into(),
            kind: "test".into(),
            timeout,
            max_concurrency,
            cache: None,
            circuit_breaker: None,
            retry: None,
            hedge: None,
        }
    }

    #[test]
    fn effective_deadline_is_the_earlier_limit() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(effective_deadline(now, None, None), None);
        assert_eq!(
            effective_deadline(now, Some(ms(5)), None),
            Some(now + ms(5))
        );
        assert_eq!(
            effective_deadline(now, Some(ms(5)), Some(now + ms(3))),
            Some(now + ms(3))
        );
        assert_eq!(
            effective_deadline(now, Some(ms(5)), Some(now + ms(30))),
            Some(now + ms(5))
        );
        assert_eq!(
            effective_deadline(now, None, Some(now + ms(30))),
            Some(now + ms(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn source_timeout_applies_when_shorter_than_the_deadline() {
        use tower::ServiceExt;
        let stack = source_stack(
            Arc::new(Slow(Duration::from_millis(50))),
            &policy(Some(Duration::from_millis(10)), 8),
        );
        let started = Instant::now();
        let deadline = Some(started + Duration::from_secs(1));
        let err = stack.oneshot(request(deadline)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Timeout);
        assert_eq!(started.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn request_deadline_applies_when_shorter_than_the_timeout() {
        use tower::ServiceExt;
        let stack = source_stack(
            Arc::new(Slow(Duration::from_millis(50))),
            &policy(Some(Duration::from_secs(1)), 8),
        );
        let started = Instant::now();
        let err = stack
            .oneshot(request(Some(started + Duration::from_millis(20))))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Timeout);
        assert_eq!(started.elapsed(), Duration::from_millis(20));

        let stack = source_stack(Arc::new(Slow(Duration::from_millis(5))), &policy(None, 8));
        let rows = stack
            .oneshot(request(Some(Instant::now() + Duration::from_millis(20))))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bulkhead_refuses_at_once_beyond_its_limit() {
        use tower::ServiceExt;
        let stack = source_stack(Arc::new(Slow(Duration::from_millis(50))), &policy(None, 1));
        let first = tokio::spawn(stack.clone().oneshot(request(None)));
        tokio::task::yield_now().await;
        let started = Instant::now();
        let err = stack.clone().oneshot(request(None)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Overloaded);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(first.await.unwrap().is_ok());
        // The permit is back.
        assert!(stack.oneshot(request(None)).await.is_ok());
    }
}
