//! The bulkhead: at most `max_concurrency` calls in flight to a source; one more is refused at
//! once (SOURCE_ERROR), so a slow source cannot take every task and connection of the gateway.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Row};
use futures::future::{Either, Ready, ready};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

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
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = Either<Permitted<S::Future>, Ready<Result<Vec<Row>, FetchError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Either::Left(Permitted {
                call: self.inner.call(request),
                permit: Some(permit),
            }),
            Err(_) => Either::Right(ready(Err(FetchError::new(
                ErrorClass::Overloaded,
                "the source's concurrency limit is reached",
            )))),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an admitted [`Bulkhead`] call, holding its permit until it finishes (or
    /// is dropped).
    pub struct Permitted<F> {
        #[pin]
        call: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F> Future for Permitted<F>
where
    F: Future<Output = Result<Vec<Row>, FetchError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.call.poll(cx));
        drop(this.permit.take());
        Poll::Ready(result)
    }
}
