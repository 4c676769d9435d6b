//! [`HttpFetcher`]: turns a batch of keys into HTTP calls on one pooled client, and classifies
//! what comes back.
//!
//! # Contract
//! - A per-key view makes one request per key, all concurrently; a batch view one `POST` per
//!   chunk of `max_keys` keys. Either way at most `max_concurrent_requests` are in flight.
//! - 2xx with a JSON body -> [`Row::Found`] (see [`crate::decode`]); 404 on a per-key view ->
//!   [`Row::NotFound`], as is a key left out of a batch answer.
//! - 429 -> rate limited (not retryable); 5xx, connection failures and cut-off bodies ->
//!   unavailable (retryable); other 4xx (and 404 from a batch endpoint) -> rejected; 3xx (never
//!   followed, so configured headers cannot leak to another host) and a body that is not JSON ->
//!   invalid response. An expired deadline -> timeout: every call is bounded by what is left of
//!   the request's deadline, both as reqwest's per-request timeout and around the whole call.
//! - A failure of any key fails the fetch with the first failed key's error (in key order): the
//!   trait has no per-row error, and turning a timeout or a 503 into cell errors would hide it
//!   from the gateway's retry and timeout layers.
//!
//! Messages name the view and the status or the transport failure, never a URL's credentials
//! nor a header value.

use std::{collections::HashMap, fmt, time::Duration};

use async_trait::async_trait;
use fetcher_api::{EntityKey, FeatureType, FetchError, FetchRequest, Fetcher, Row};
use futures::future::join_all;
use reqwest::{Client, RequestBuilder, StatusCode, header};
use serde_json::Value as Json;
use tokio::{sync::Semaphore, time::Instant};
use url::Url;

use crate::{
    config::{CompiledView, Method, Shape},
    decode::{Pointer, decode_record},
    template::{Unaddressable, key_json},
};

/// How long a health check may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves every view of one `http` source.
pub struct HttpFetcher {
    source: String,
    client: Client,
    base_url: String,
    views: HashMap<String, CompiledView>,
    in_flight: Semaphore,
    health_path: Option<String>,
}

// Hand-written: the client holds the resolved (secret) default headers.
impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("source", &self.source)
            .field("base_url", &self.base_url)
            .field("views", &self.views.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The features a fetch asked for: pointer and type, in request order.
type Wanted<'a> = Vec<(&'a Pointer, FeatureType)>;

impl HttpFetcher {
    pub(crate) fn new(
        source: String,
        client: Client,
        base_url: String,
        views: Vec<CompiledView>,
        max_concurrent_requests: usize,
        health_path: Option<String>,
    ) -> Self {
        HttpFetcher {
            source,
            client,
            base_url,
            views: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
            in_flight: Semaphore::new(max_concurrent_requests),
            health_path,
        }
    }

    /// The URL of `path` (already encoded) with `query` pairs (raw; encoded here).
    fn url<'a>(
        &self,
        view: &str,
        path: &str,
        query: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<Url, FetchError> {
        let mut url = Url::parse(&format!("{}{path}", self.base_url)).map_err(|e| {
            FetchError::internal(format!("view `{view}`: cannot build the URL: {e}"))
        })?;
        let mut query = query.into_iter().peekable();
        if query.peek().is_some() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    async fn fetch_one(
        &self,
        view: &CompiledView,
        wanted: &Wanted<'_>,
        key: &EntityKey,
        deadline: Option<Instant>,
    ) -> Result<Row, FetchError> {
        let Shape::PerKey {
            method,
            path,
            query,
            body,
        } = &view.shape
        else {
            return Err(FetchError::internal("per-key fetch of a batch view"));
        };
        let path = match path.render_path(key) {
            Ok(path) => path,
            Err(Unaddressable) => {
                // No URL can name this key without naming another resource, so the API cannot
                // hold a row for it that we could ask for.
                tracing::debug!(view = %view.name, "key is a dot segment, answered as not found");
                return Ok(Row::NotFound);
            }
        };
        let url = self.url(
            &view.name,
            &path,
            query
                .iter()
                .map(|(name, t)| (name.as_str(), t.render_text(key))),
        )?;
        let mut request = match method {
            Method::Get => self.client.get(url),
            Method::Post => self.client.post(url),
        };
        if let Some(body) = body {
            request = request.json(&body.render(key));
        }
        Ok(
            match self.call(&view.name, request, deadline, true).await? {
                None => Row::NotFound,
                Some(doc) => Row::Found(decode_record(
                    &view.name,
                    &doc,
                    wanted,
                    view.event_time.as_ref(),
                )),
            },
        )
    }

    async fn fetch_chunk(
        &self,
        view: &CompiledView,
        wanted: &Wanted<'_>,
        keys: &[EntityKey],
        deadline: Option<Instant>,
    ) -> Result<Vec<Row>, FetchError> {
        let Shape::Batch {
            path,
            query,
            keys_field,
            results_pointer,
            key_pointer,
            ..
        } = &view.shape
        else {
            return Err(FetchError::internal("batch fetch of a per-key view"));
        };
        let url = self.url(
            &view.name,
            path,
            query
                .iter()
                .map(|(name, value)| (name.as_str(), value.clone())),
        )?;
        let ids: Vec<Json> = keys
            .iter()
            .filter_map(|k| k.first().map(key_json))
            .collect();
        let body = Json::Object(
            [(keys_field.clone(), Json::Array(ids))]
                .into_iter()
                .collect(),
        );
        let doc = self
            .call(
                &view.name,
                self.client.post(url).json(&body),
                deadline,
                false,
            )
            .await?
            .unwrap_or(Json::Null);
        let results = results_pointer
            .resolve(&doc)
            .and_then(Json::as_array)
            .ok_or_else(|| {
                FetchError::invalid_response(format!(
                    "view `{}`: no array at `{results_pointer}` in the batch response",
                    view.name
                ))
            })?;
        let mut by_key: HashMap<String, &Json> = HashMap::with_capacity(results.len());
        for item in results {
            // Keys are compared in text form, so an API that echoes numeric ids as strings (or
            // the reverse) still matches.
            let id = match key_pointer.resolve(item) {
                Some(Json::String(s)) => s.clone(),
                Some(Json::Number(n)) => n.to_string(),
                _ => continue,
            };
            by_key.entry(id).or_insert(item);
        }
        Ok(keys
            .iter()
            .map(|key| {
                let id = key.first().map(ToString::to_string).unwrap_or_default();
                match by_key.get(&id) {
                    None => Row::NotFound,
                    Some(item) => Row::Found(decode_record(
                        &view.name,
                        item,
                        wanted,
                        view.event_time.as_ref(),
                    )),
                }
            })
            .collect())
    }

    /// Sends one request within the deadline and the concurrency bound. `Ok(None)` is a 404
    /// when `not_found_is_row`; `Ok(Some(doc))` a 2xx JSON body.
    async fn call(
        &self,
        view: &str,
        request: RequestBuilder,
        deadline: Option<Instant>,
        not_found_is_row: bool,
    ) -> Result<Option<Json>, FetchError> {
        let work = async {
            let _permit = self
                .in_flight
                .acquire()
                .await
                .map_err(|_| FetchError::internal("the request limiter is closed"))?;
            let request = match deadline {
                None => request,
                Some(deadline) => {
                    // Computed after the permit: the wait for it used part of the budget.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(deadline_passed(view));
                    }
                    request.timeout(left)
                }
            };
            let mut request = request;
            for (name, value) in fetcher_api::trace_context::outgoing_headers() {
                request = request.header(name, value);
            }
            let response = request.send().await.map_err(|e| transport_error(view, e))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Read the body whatever the status, so the connection goes back to the pool.
            let body = response
                .bytes()
                .await
                .map_err(|e| transport_error(view, e))?;
            if status == StatusCode::NOT_FOUND && not_found_is_row {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(status_error(view, status, retry_after.as_deref()));
            }
            serde_json::from_slice(&body).map(Some).map_err(|e| {
                FetchError::invalid_response(format!(
                    "view `{view}`: the response body is not JSON ({e})"
                ))
            })
        };
        match deadline {
            None => work.await,
            Some(deadline) => tokio::time::timeout_at(deadline, work)
                .await
                .unwrap_or_else(|_| Err(deadline_passed(view))),
        }
    }
}

fn deadline_passed(view: &str) -> FetchError {
    FetchError::timeout(format!("view `{view}`: no answer before the deadline"))
}

/// Classifies an HTTP status that is neither a success nor a 404 row.
pub(crate) fn status_error(
    view: &str,
    status: StatusCode,
    retry_after: Option<&str>,
) -> FetchError {
    let what = format!("view `{view}`: the upstream answered {status}");
    match status.as_u16() {
        429 => FetchError::rate_limited(match retry_after {
            Some(after) => format!("{what} (retry after {after})"),
            None => what,
        }),
        500..=599 => FetchError::unavailable(what),
        300..=399 => FetchError::invalid_response(format!("{what}; redirects are not followed")),
        400..=499 => FetchError::rejected(what),
        _ => FetchError::invalid_response(what),
    }
}

/// Classifies a failure to send a request or read its answer.
fn transport_error(view: &str, error: reqwest::Error) -> FetchError {
    let (timeout, connect, builder) = (error.is_timeout(), error.is_connect(), error.is_builder());
    // The URL is left out: it is long, and the view already says which API this is.
    let detail = chain(&error.without_url());
    if timeout {
        FetchError::timeout(format!(
            "view `{view}`: no answer before the deadline ({detail})"
        ))
    } else if connect {
        FetchError::unavailable(format!("view `{view}`: cannot connect ({detail})"))
    } else if builder {
        FetchError::internal(format!(
            "view `{view}`: cannot build the request ({detail})"
        ))
    } else {
        FetchError::unavailable(format!("view `{view}`: the request failed ({detail})"))
    }
}

/// An error and its sources, outermost first.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[async_trait]
impl Fetcher for HttpFetcher {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let view = self.views.get(&*request.view).ok_or_else(|| {
            FetchError::internal(format!(
                "view `{}` is not served by source `{}`",
                request.view, self.source
            ))
        })?;
        let wanted: Wanted<'_> = request
            .features
            .iter()
            .map(|feature| {
                view.features
                    .get(feature)
                    .map(|(pointer, ty)| (pointer, *ty))
                    .ok_or_else(|| {
                        FetchError::internal(format!(
                            "view `{}` has no feature `{feature}`",
                            view.name
                        ))
                    })
            })
            .collect::<Result<_, _>>()?;
        if request.keys.is_empty() {
            return Ok(Vec::new());
        }
        if request.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(deadline_passed(&view.name));
        }
        match &view.shape {
            Shape::PerKey { .. } => {
                let calls = request
                    .keys
                    .iter()
                    .map(|key| self.fetch_one(view, &wanted, key, request.deadline));
                join_all(calls).await.into_iter().collect()
            }
            Shape::Batch { max_keys, .. } => {
                let calls = request
                    .keys
                    .chunks(*max_keys)
                    .map(|chunk| self.fetch_chunk(view, &wanted, chunk, request.deadline));
                let mut rows = Vec::with_capacity(request.keys.len());
                for chunk in join_all(calls).await {
                    rows.extend(chunk?);
                }
                Ok(rows)
            }
        }
    }

    async fn health(&self) -> Result<(), FetchError> {
        let Some(path) = &self.health_path else {
            return Ok(());
        };
        let url = self.url("(health)", path, std::iter::empty())?;
        let response = self
            .client
            .get(url)
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| transport_error("(health)", e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(status_error("(health)", response.status(), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::ErrorClass;

    use super::*;

    #[test]
    fn statuses_are_classified() {
        let class = |code: u16| {
            let e = status_error("v", StatusCode::from_u16(code).expect("valid"), Some("3"));
            (e.class(), e.retryable())
        };
        assert_eq!(class(429), (ErrorClass::RateLimited, false));
        assert_eq!(class(500), (ErrorClass::Unavailable, true));
        assert_eq!(class(503), (ErrorClass::Unavailable, true));
        assert_eq!(class(400), (ErrorClass::Rejected, false));
        assert_eq!(class(401), (ErrorClass::Rejected, false));
        assert_eq!(
            class(404),
            (ErrorClass::Rejected, false),
            "a 404 that is not a row"
        );
        assert_eq!(class(302), (ErrorClass::InvalidResponse, false));
        let e = status_error("risk", StatusCode::TOO_MANY_REQUESTS, Some("3"));
        assert_eq!(
            e.message(),
            "view `risk`: the upstream answered 429 Too Many Requests (retry after 3)"
        );
    }
}
