//! [`StreamFetcher`]: reads each entity's tiles (one pipelined round trip per batch) and merges
//! those covering each window ending now; applies pushed events.
//!
//! # Contract
//! Every key has a row: an entity with no events aggregates nothing (`count` 0, `mean` null...,
//! see [`aggregation`]), which is a value, not a missing row. Only the tiles the wanted windows
//! cover are decoded ([`aggregation::read_fields`]); one that does not decode makes that row's
//! cells errors (SOURCE_ERROR), the rest of the batch is served. The read time
//! is the gateway's clock when the answer arrives.
//!
//! # Failure
//! As the `redis` source: unavailable (fast, retryable) while disconnected, a timeout past the
//! lesser of `command_timeout` and the request's deadline.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration, time::SystemTime};

use aggregation::Millis;
use async_trait::async_trait;
use fetcher_api::{
    CellError, EventObject, FetchError, FetchRequest, Fetcher, PushReport, Record, Row,
};
use tokio::time::Instant;

use crate::{
    store::{TileStore, named},
    writer::{self, Positioned, StreamView},
};

/// Serves the views of one `stream` source.
pub struct StreamFetcher {
    source: String,
    store: Arc<dyn TileStore>,
    prefix: String,
    views: HashMap<String, Arc<StreamView>>,
    command_timeout: Duration,
}

impl fmt::Debug for StreamFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamFetcher")
            .field("source", &self.source)
            .field("store", &self.store)
            .field("views", &self.views.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| {
            Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX)
        })
}

impl StreamFetcher {
    /// A fetcher of `views` kept in `store` under `prefix`.
    pub fn new(
        source: String,
        store: Arc<dyn TileStore>,
        prefix: String,
        views: Vec<StreamView>,
        command_timeout: Duration,
    ) -> StreamFetcher {
        StreamFetcher {
            source,
            store,
            prefix,
            views: views
                .into_iter()
                .map(|v| (v.def.name.clone(), Arc::new(v)))
                .collect(),
            command_timeout,
        }
    }

    /// The lesser of `command_timeout` and what is left of `deadline`.
    fn budget(&self, deadline: Option<Instant>) -> Result<Duration, FetchError> {
        let Some(deadline) = deadline else {
            return Ok(self.command_timeout);
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(FetchError::timeout("the deadline passed before the call"));
        }
        Ok(left.min(self.command_timeout))
    }

    fn view(&self, name: &str) -> Result<&Arc<StreamView>, FetchError> {
        self.views
            .get(name)
            .ok_or_else(|| FetchError::internal(format!("view `{name}` is not served here")))
    }
}

#[async_trait]
impl Fetcher for StreamFetcher {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let view = self.view(&request.view)?;
        let wanted = request
            .features
            .iter()
            .map(|f| {
                view.def
                    .aggregates
                    .iter()
                    .position(|a| &a.feature == f)
                    .ok_or_else(|| {
                        FetchError::internal(format!(
                            "view `{}` has no feature `{f}`",
                            view.def.name
                        ))
                    })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        if request.keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = request
            .keys
            .iter()
            .map(|k| view.key(&self.prefix, k))
            .collect();
        let stored = self
            .store
            .read(&keys, self.budget(request.deadline)?)
            .await?;
        let at = now_ms();
        Ok(stored
            .iter()
            .map(|fields| {
                let read = aggregation::read_fields(&view.def, named(fields), &wanted, at);
                let cells = match read {
                    Ok(values) => values.into_iter().map(Ok).collect(),
                    Err(e) => {
                        tracing::warn!(view = %view.def.name, error = %e, "stored tiles do not decode");
                        wanted
                            .iter()
                            .map(|_| Err(CellError(format!("stream: {e}"))))
                            .collect()
                    }
                };
                Row::Found(Record {
                    cells,
                    event_time: None,
                })
            })
            .collect())
    }

    async fn health(&self) -> Result<(), FetchError> {
        self.store.ping(self.command_timeout).await
    }

    async fn push(&self, view: &str, events: Vec<EventObject>) -> Result<PushReport, FetchError> {
        let view = self.view(view)?;
        let mut report = PushReport::default();
        let mut good = Vec::with_capacity(events.len());
        // Pushed events have no stream watermark: lateness is measured against this clock.
        let oldest = now_ms().saturating_sub(view.def.allowed_lateness);
        for (i, object) in events.iter().enumerate() {
            match view.def.read(object) {
                Ok(e) if e.time < oldest => report.late += 1,
                Ok(e) => good.push(Positioned { event: e, at: None }),
                Err(e) => report.rejected.push((i, e.to_string())),
            }
        }
        let applied = writer::apply(
            &self.store,
            &self.prefix,
            view,
            good,
            self.command_timeout.max(Duration::from_secs(1)),
        )
        .await?;
        report.applied = applied.applied;
        Ok(report)
    }
}
