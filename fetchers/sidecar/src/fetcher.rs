//! [`SidecarFetcher`]: one `Fetcher.Fetch` call per batch, on a channel that connects lazily and
//! reconnects by itself.
//!
//! # Contract
//! - The request's deadline becomes the call's `grpc-timeout` (what is left of it when the call
//!   starts); an already expired deadline fails at once as a timeout without a call.
//! - The channel connects on first use, so the gateway starts while the sidecar is still down.
//!   A refused or timed-out connection fails that call at once as `unavailable` (retryable) and
//!   the next call tries again, so the source comes back by itself when the sidecar does.
//!   HTTP/2 keepalive PINGs, even on an idle connection, notice a sidecar that hangs or
//!   disappears without closing its sockets.
//! - The answer must have one row per key and, in each found row, one cell per feature; anything
//!   else is `invalid_response` for the whole batch. Values are passed on as they are: the
//!   gateway type-checks them against the view, as for every source.
//! - gRPC errors are classified by [`crate::wire::fetch_error_from_status`].

use std::{collections::HashMap, fmt, time::Duration};

use async_trait::async_trait;
use fetcher_api::{FetchError, FetchRequest, Fetcher, Row};
use proto::v1::{self, fetcher_client::FetcherClient};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::wire::{fetch_error_from_status, key_to_wire, row_from_wire};

/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves every view of one `sidecar` source by calling the sidecar.
#[derive(Clone)]
pub struct SidecarFetcher {
    source: String,
    target: String,
    client: FetcherClient<Channel>,
    health: HealthClient<Channel>,
    /// Local view name to the sidecar's name for it.
    views: HashMap<String, String>,
}

impl fmt::Debug for SidecarFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SidecarFetcher")
            .field("source", &self.source)
            .field("target", &self.target)
            .field("views", &self.views)
            .finish_non_exhaustive()
    }
}

impl SidecarFetcher {
    /// A fetcher for `source` calling the sidecar on `channel` (named `target` in messages);
    /// `views` maps each local view name to the sidecar's.
    pub fn new(
        source: String,
        target: String,
        channel: Channel,
        views: HashMap<String, String>,
    ) -> Self {
        SidecarFetcher {
            source,
            target,
            // Values and row batches can be large; the gateway bounds requests itself.
            client: FetcherClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            health: HealthClient::new(channel),
            views,
        }
    }
}

#[async_trait]
impl Fetcher for SidecarFetcher {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let remote_view = self.views.get(&*request.view).ok_or_else(|| {
            FetchError::internal(format!(
                "source `{}` does not serve view `{}`",
                self.source, request.view
            ))
        })?;
        let keys = request.keys.len();
        let features = request.features.len();
        let mut call = tonic::Request::new(v1::FetchRequest {
            view: remote_view.clone(),
            features: request.features.to_vec(),
            keys: request.keys.into_iter().map(key_to_wire).collect(),
        });
        for (name, value) in fetcher_api::trace_context::outgoing_headers() {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                call.metadata_mut().insert(name, value);
            }
        }
        if let Some(deadline) = request.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FetchError::timeout(format!(
                    "view `{}`: the deadline passed before the sidecar call",
                    request.view
                )));
            }
            call.set_timeout(left);
        }
        let response = self
            .client
            .clone()
            .fetch(call)
            .await
            .map_err(|status| {
                let passed = request.deadline.is_some_and(|d| Instant::now() >= d);
                let error = fetch_error_from_status(&status, &self.target, passed);
                tracing::debug!(source = %self.source, view = %request.view, %error, "sidecar call failed");
                error
            })?
            .into_inner();
        if response.rows.len() != keys {
            return Err(FetchError::invalid_response(format!(
                "sidecar {}: view `{}`: {} rows for {keys} keys",
                self.target,
                request.view,
                response.rows.len()
            )));
        }
        response
            .rows
            .into_iter()
            .map(|row| {
                row_from_wire(row, features).map_err(|e| {
                    FetchError::invalid_response(format!(
                        "sidecar {}: view `{}`: {e}",
                        self.target, request.view
                    ))
                })
            })
            .collect()
    }

    /// Asks the sidecar's `grpc.health.v1` service about the whole server (service `""`). A
    /// sidecar without a health service is healthy if it answers at all.
    async fn health(&self) -> Result<(), FetchError> {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(HEALTH_TIMEOUT);
        match self.health.clone().check(request).await {
            Ok(response) => match response.into_inner().status() {
                ServingStatus::Serving => Ok(()),
                status => Err(FetchError::unavailable(format!(
                    "sidecar {}: health is {}",
                    self.target,
                    status.as_str_name()
                ))),
            },
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(()),
            Err(status) => Err(fetch_error_from_status(&status, &self.target, false)),
        }
    }
}
