//! The bulkhead: at most `max_concurrency` calls in flight to a source; one more is refused at
//! once (SOURCE_ERROR), so a slow source cannot take every task and connection of the gateway.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Row};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::service::BoxFuture;

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
