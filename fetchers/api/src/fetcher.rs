//! The [`Fetcher`] trait: one async call that takes a batch of keys and returns one row per key.

use std::{sync::Arc, time::SystemTime};

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{FetchError, KeyPart, Value};

/// The values of a view's entity keys for one row, in the view's key order.
pub type EntityKey = Vec<KeyPart>;

/// A batch fetch for one view.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// The view, as named in the configuration. A fetcher serves every view of its source.
    pub view: Arc<str>,
    /// The features wanted, in the order the returned cells must follow. A subset of the view's
    /// declared features.
    pub features: Arc<[String]>,
    /// One key per row; distinct (the gateway de-duplicates before calling).
    pub keys: Vec<EntityKey>,
    /// When the caller stops waiting. The gateway enforces it; a fetcher that can pass it on
    /// (a statement timeout, a gRPC deadline) should.
    pub deadline: Option<Instant>,
}

/// The answer for one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Row {
    /// The source has no row for this key.
    NotFound,
    /// The source's row.
    Found(Record),
}

/// A row's values, one cell per requested feature.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// In [`FetchRequest::features`] order.
    pub cells: Vec<Cell>,
    /// When the values were computed, if the source records it; the gateway compares it with the
    /// view's max age.
    pub event_time: Option<SystemTime>,
}

/// One feature's value in a row, or why that one value could not be read.
pub type Cell = Result<Value, CellError>;

/// A value that could not be read (e.g. a string stored where a number is declared). The rest of
/// the row is still served; this feature reads as `SOURCE_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CellError(pub String);

/// A source of feature rows.
///
/// Implementations answer one batch per call with one [`Row`] per key, in key order, and
/// classify failures in [`FetchError`]. They do not retry, cache, time out or limit concurrency:
/// the gateway wraps every fetcher in the same stack of layers that does.
#[async_trait]
pub trait Fetcher: Send + Sync + std::fmt::Debug + 'static {
    /// Fetches one row per key of `request`.
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError>;

    /// Checks that the source is reachable, for the health service. The default reports healthy.
    async fn health(&self) -> Result<(), FetchError> {
        Ok(())
    }

    /// The key parts this fetcher has seen belong to an object outside the gateway that events
    /// name (a Plaid Item, named by its webhooks, while its rows are keyed by access token), so
    /// an event about it can invalidate the cached rows keyed by them. The default knows none.
    fn keys_of(&self, _external_id: &str) -> Vec<KeyPart> {
        Vec::new()
    }

    /// Applies events (JSON objects) to the view `view`, for a source that aggregates events
    /// (the `stream` kind's `PushEvents`), exactly as its ingest would. The default refuses: the
    /// source keeps nothing events could update.
    async fn push(&self, view: &str, _events: Vec<EventObject>) -> Result<PushReport, FetchError> {
        Err(FetchError::rejected(format!(
            "view `{view}` does not aggregate events: its source is not a stream"
        )))
    }
}

/// An event as pushed: a JSON object.
pub type EventObject = serde_json::Map<String, serde_json::Value>;

/// What a push did with each event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Events applied.
    pub applied: u64,
    /// Events older than the view's allowed lateness, not applied.
    pub late: u64,
    /// Events that could not be read, by index in the batch, with why.
    pub rejected: Vec<(usize, String)>,
}
