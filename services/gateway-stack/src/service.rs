//! The types every layer of the stack shares: a source behind its stack ([`SourceService`]), the
//! boxed future of a layer ([`BoxFuture`]), the cache's answer per key ([`Slot`]), and the
//! adapter from a [`Fetcher`] to a tower service. A leaf: it imports no other module.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use fetcher_api::{FetchError, FetchRequest, Fetcher, Row};
use tower::{Service, util::BoxCloneSyncService};

/// A source behind its stack.
pub type SourceService = BoxCloneSyncService<FetchRequest, Vec<Row>, FetchError>;

/// A boxed future of a layer.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A source behind its stack and cache, answering one [`Slot`] per key.
pub type GatewayService = BoxCloneSyncService<FetchRequest, Vec<Slot>, Infallible>;

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

/// What a source's stack answers for one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Slot {
    /// Fetched from the source by this call; `cached` says whether the source has a cache (a miss).
    Fetched {
        /// The row.
        row: Row,
        /// Whether the source is cached (so this was a cache miss).
        cached: bool,
    },
    /// Served from the cache within its TTL.
    Cached {
        /// The row.
        row: Row,
        /// Time since it was fetched.
        age: Duration,
    },
    /// The source failed or was slow; served from the cache within its max staleness.
    Stale {
        /// The row.
        row: Row,
        /// Time since it was fetched.
        age: Duration,
        /// Why the source could not answer.
        error: Arc<FetchError>,
    },
    /// The source failed and nothing cached may be served.
    Failed(Arc<FetchError>),
}

impl Slot {
    /// The row, if there is one to serve.
    pub fn row(&self) -> Option<&Row> {
        match self {
            Slot::Fetched { row, .. } | Slot::Cached { row, .. } | Slot::Stale { row, .. } => {
                Some(row)
            }
            Slot::Failed(_) => None,
        }
    }

    /// The row, if there is one to serve, to move values out of.
    pub fn row_mut(&mut self) -> Option<&mut Row> {
        match self {
            Slot::Fetched { row, .. } | Slot::Cached { row, .. } | Slot::Stale { row, .. } => {
                Some(row)
            }
            Slot::Failed(_) => None,
        }
    }
}
