//! [`PlaidFetcher`]: one Plaid call (or one `/transactions/sync` loop) per key, on one pooled
//! client, with the answers turned into derived features.
//!
//! # Contract
//! - Every call is `POST` with a JSON body, the credentials as the `PLAID-CLIENT-ID` /
//!   `PLAID-SECRET` headers and `Plaid-Version: 2020-09-14` (default headers of the client,
//!   marked sensitive so they stay out of `Debug` output and HPACK tables).
//! - The keys of a batch are fetched concurrently, at most `max_concurrent_requests` calls in
//!   flight across the source.
//! - Deadlines flow down: each call's timeout is the lesser of `request_timeout` and what is
//!   left of the request's deadline (measured after waiting for a slot), and the whole fetch is
//!   bounded by the deadline too, so a slow `/accounts/balance/get` comes back as a timeout
//!   within the deadline.
//! - `/transactions/sync` is paged from the start of history (no cursor) until `has_more` is
//!   false; on `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION` the loop restarts from its first
//!   cursor (at most [`MAX_SYNC_RESTARTS`] times).
//!
//! # Failure
//! Plaid errors are classified by [`crate::error::classify`]. An error that concerns the whole
//! call (credentials, rate limits, Plaid or the bank being down, a deadline) fails the batch
//! with the first failed key's error in key order, so the gateway's retry, timeout and circuit
//! breaker layers see it. An error that concerns one Item stays in its row: an unknown token is
//! [`Row::NotFound`]; a login to repair (`ITEM_LOGIN_REQUIRED`), no accounts, a product not
//! ready fail that row's cells with a [`CellError`] naming the code, and the rest of the batch
//! is served. The `item` view reads such a code as data instead (`has_error`, `error_code`).
//! An answer that does not decode fails its row's cells too, with a log line naming the field.
//!
//! Messages and logs name the view, the endpoint, the code and Plaid's `request_id`; never a
//! credential, an access token or a user field.

use std::{collections::HashMap, fmt, future::Future, time::Duration, time::SystemTime};

use async_trait::async_trait;
use fetcher_api::{
    CellError, EntityKey, FetchError, FetchRequest, Fetcher, KeyPart, Record, Row, Value,
};
use futures::future::join_all;
use reqwest::Client;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json, json};
use tokio::{sync::Semaphore, time::Instant};

use crate::{
    config::{CompiledSource, CompiledView},
    error::{CallError, Classified, PlaidErrorBody, Scope},
    features::{
        self, AccountsResponse, Endpoint, Feature, ItemHealth, ItemResponse, MatchResponse,
        SyncPage, TransactionSet, TransactionStats,
    },
    time::{system_time, unix_seconds},
};

/// How many times one fetch restarts a `/transactions/sync` loop whose data changed under it.
pub const MAX_SYNC_RESTARTS: u32 = 3;

const MUTATION: &str = "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION";

/// Serves every view of one `plaid` source.
pub struct PlaidFetcher {
    source: String,
    client: Client,
    base_url: String,
    views: HashMap<String, CompiledView>,
    in_flight: Semaphore,
    request_timeout: Duration,
    page_size: u32,
    max_pages: u32,
    as_of: Option<i64>,
    items: ItemDirectory,
}

/// Which Item each access token belongs to, as learnt from Plaid's answers that name their Item
/// (balance, accounts, item, identity match; `/transactions/sync` does not). Webhooks name
/// Items, cached rows are keyed by access tokens: this joins the two. Bounded: past
/// [`ItemDirectory::MAX`] tokens it starts over (a webhook for an Item not seen since then
/// invalidates nothing in this replica until the Item is fetched again).
#[derive(Debug, Default)]
struct ItemDirectory {
    tokens: std::sync::Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
}

impl ItemDirectory {
    const MAX: usize = 1_000_000;

    fn record(&self, item_id: &str, token: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.get(item_id).is_some_and(|t| t.contains(token)) {
            return;
        }
        if tokens.len() >= Self::MAX {
            tokens.clear();
        }
        tokens
            .entry(item_id.to_owned())
            .or_default()
            .insert(token.to_owned());
    }

    fn tokens(&self, item_id: &str) -> Vec<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(item_id)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

// Hand-written: the client holds the resolved credentials as default headers.
impl fmt::Debug for PlaidFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaidFetcher")
            .field("source", &self.source)
            .field("base_url", &self.base_url)
            .field("views", &self.views.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The result of a full `/transactions/sync` loop.
#[derive(Clone, Debug, PartialEq)]
pub enum Synced {
    /// The Item's transactions.
    Ready(TransactionSet),
    /// Plaid has not extracted any yet (`transactions_update_status` `NOT_READY`).
    NotReady,
}

/// Pages `/transactions/sync` to completion: `next_page(cursor)` makes one call (`None` = from
/// the start). Restarts from the first cursor on a mutation during pagination, at most
/// `max_restarts` times; gives up past `max_pages` pages per pass.
pub async fn sync_to_completion<F, Fut>(
    max_pages: u32,
    max_restarts: u32,
    mut next_page: F,
) -> Result<Synced, CallError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<SyncPage, CallError>>,
{
    let mut restarts = 0;
    'pass: loop {
        let mut set = TransactionSet::default();
        let mut cursor: Option<String> = None;
        for _ in 0..max_pages {
            let page = match next_page(cursor.clone()).await {
                Ok(page) => page,
                Err(e) if e.is_code(MUTATION) && restarts < max_restarts => {
                    restarts += 1;
                    tracing::debug!(restarts, "transactions changed during sync, restarting");
                    continue 'pass;
                }
                Err(e) => return Err(e),
            };
            if page.transactions_update_status.as_deref() == Some("NOT_READY") {
                return Ok(Synced::NotReady);
            }
            let (has_more, next) = (page.has_more, page.next_cursor.clone());
            set.apply(page);
            if !has_more {
                return Ok(Synced::Ready(set));
            }
            if next.is_empty() || cursor.as_deref() == Some(next.as_str()) {
                // A loop that cannot advance would spin until the deadline.
                return Err(CallError {
                    classified: Classified {
                        class: fetcher_api::ErrorClass::InvalidResponse,
                        retryable: false,
                        scope: Scope::RowCells,
                    },
                    code: None,
                    message: "/transactions/sync said has_more without a new cursor".into(),
                });
            }
            cursor = Some(next);
        }
        return Err(CallError {
            classified: Classified {
                class: fetcher_api::ErrorClass::Internal,
                retryable: false,
                scope: Scope::RowCells,
            },
            code: None,
            message: format!(
                "/transactions/sync needed more than {max_pages} pages (transactions_max_pages)"
            ),
        });
    }
}

/// A call's answer that does not decode as the endpoint's documented shape: that row's cells
/// fail (the other rows may be fine).
fn contract_error(view: &str, endpoint: Endpoint, detail: impl fmt::Display) -> CallError {
    CallError {
        classified: Classified {
            class: fetcher_api::ErrorClass::InvalidResponse,
            retryable: false,
            scope: Scope::RowCells,
        },
        code: None,
        message: format!(
            "view `{view}`: plaid {} answered outside its contract: {detail}",
            endpoint.path()
        ),
    }
}

fn deadline_passed(view: &str) -> FetchError {
    FetchError::timeout(format!(
        "view `{view}`: no answer from plaid before the deadline"
    ))
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

/// Classifies a failure to send a call or read its answer.
fn transport_error(view: &str, error: reqwest::Error) -> FetchError {
    let (timeout, connect) = (error.is_timeout(), error.is_connect());
    let detail = chain(&error.without_url());
    if timeout {
        FetchError::timeout(format!(
            "view `{view}`: no answer from plaid in time ({detail})"
        ))
    } else if connect {
        FetchError::unavailable(format!("view `{view}`: cannot connect to plaid ({detail})"))
    } else {
        FetchError::unavailable(format!("view `{view}`: the plaid call failed ({detail})"))
    }
}

/// What one key's call produced, before it becomes cells.
enum Answer {
    Accounts(AccountsResponse),
    Transactions(Synced),
    Item(ItemHealth),
    Match(MatchResponse),
}

impl PlaidFetcher {
    pub(crate) fn new(
        source: String,
        client: Client,
        compiled: &CompiledSource,
        views: Vec<CompiledView>,
    ) -> Self {
        PlaidFetcher {
            source,
            client,
            base_url: compiled.base_url.clone(),
            views: views.into_iter().map(|v| (v.name.clone(), v)).collect(),
            in_flight: Semaphore::new(compiled.max_concurrent_requests),
            request_timeout: compiled.request_timeout,
            page_size: compiled.page_size,
            max_pages: compiled.max_pages,
            as_of: compiled.as_of,
            items: ItemDirectory::default(),
        }
    }

    /// "Now" as Unix seconds: the configured `as_of`, else the wall clock.
    fn now(&self) -> i64 {
        self.as_of
            .unwrap_or_else(|| unix_seconds(SystemTime::now()))
    }

    /// One call within the deadline and the concurrency bound; the decoded 2xx answer.
    async fn call<T: DeserializeOwned>(
        &self,
        view: &str,
        endpoint: Endpoint,
        body: &Json,
        deadline: Option<Instant>,
    ) -> Result<T, CallError> {
        let work = async {
            let _permit = self.in_flight.acquire().await.map_err(|_| {
                CallError::other(FetchError::internal("the plaid request limiter is closed"))
            })?;
            // Computed after the permit: the wait for it used part of the budget.
            let timeout = match deadline {
                None => self.request_timeout,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(CallError::other(deadline_passed(view)));
                    }
                    left.min(self.request_timeout)
                }
            };
            let mut request = self
                .client
                .post(format!("{}{}", self.base_url, endpoint.path()))
                .json(body)
                .timeout(timeout);
            for (name, value) in fetcher_api::trace_context::outgoing_headers() {
                request = request.header(name, value);
            }
            let response = request
                .send()
                .await
                .map_err(|e| CallError::other(transport_error(view, e)))?;
            let status = response.status();
            // Read the body whatever the status, so the connection goes back to the pool.
            let bytes = response
                .bytes()
                .await
                .map_err(|e| CallError::other(transport_error(view, e)))?;
            if status.is_success() {
                return serde_json::from_slice(&bytes)
                    .map_err(|e| contract_error(view, endpoint, e));
            }
            match serde_json::from_slice::<PlaidErrorBody>(&bytes) {
                Ok(error) if !error.error_code.is_empty() => {
                    let e = CallError::plaid(view, endpoint.path(), status.as_u16(), &error);
                    tracing::debug!(
                        view,
                        endpoint = endpoint.path(),
                        code = %error.error_code,
                        request_id = error.request_id.as_deref().unwrap_or(""),
                        plaid_message = %error.error_message,
                        "plaid error"
                    );
                    Err(e)
                }
                // No Plaid error body (a proxy, a load balancer): the status is all there is.
                _ => {
                    let classified = crate::error::classify("", "", status.as_u16());
                    Err(CallError {
                        classified: Classified {
                            scope: Scope::Batch,
                            ..classified
                        },
                        code: None,
                        message: format!(
                            "view `{view}`: plaid {} answered {status} without a Plaid error body",
                            endpoint.path()
                        ),
                    })
                }
            }
        };
        match deadline {
            None => work.await,
            Some(deadline) => tokio::time::timeout_at(deadline, work)
                .await
                .unwrap_or_else(|_| Err(CallError::other(deadline_passed(view)))),
        }
    }

    /// The call (or sync loop) of one key.
    async fn answer(
        &self,
        view: &CompiledView,
        token: &str,
        key: &EntityKey,
        deadline: Option<Instant>,
    ) -> Result<Answer, CallError> {
        let name = view.name.as_str();
        match view.endpoint {
            Endpoint::Balance | Endpoint::Accounts => {
                let body = json!({ "access_token": token });
                self.call(name, view.endpoint, &body, deadline)
                    .await
                    .map(Answer::Accounts)
            }
            Endpoint::Transactions => {
                let synced = sync_to_completion(self.max_pages, MAX_SYNC_RESTARTS, |cursor| {
                    let mut body = json!({ "access_token": token, "count": self.page_size });
                    if let Some(cursor) = cursor {
                        body["cursor"] = Json::String(cursor);
                    }
                    async move {
                        self.call::<SyncPage>(name, Endpoint::Transactions, &body, deadline)
                            .await
                    }
                })
                .await?;
                Ok(Answer::Transactions(synced))
            }
            Endpoint::Item => {
                let body = json!({ "access_token": token });
                match self
                    .call::<ItemResponse>(name, Endpoint::Item, &body, deadline)
                    .await
                {
                    Ok(response) => Ok(Answer::Item(ItemHealth::Answer(response))),
                    // The Item's own health is what this view reports: a login to repair is
                    // a value, not a failed fetch.
                    Err(e) if e.classified.scope == Scope::RowCells && e.code.is_some() => {
                        Ok(Answer::Item(ItemHealth::Failed(e.code.unwrap_or_default())))
                    }
                    Err(e) => Err(e),
                }
            }
            Endpoint::IdentityMatch => {
                let mut user = Map::new();
                let mut address = Map::new();
                for (field, in_address, index) in &view.user {
                    let Some(KeyPart::String(value)) = key.get(*index) else {
                        continue;
                    };
                    if value.is_empty() {
                        continue;
                    }
                    let target = if *in_address { &mut address } else { &mut user };
                    target.insert((*field).to_owned(), Json::String(value.clone()));
                }
                if !address.is_empty() {
                    user.insert("address".into(), Json::Object(address));
                }
                let body = json!({ "access_token": token, "user": user });
                self.call(name, Endpoint::IdentityMatch, &body, deadline)
                    .await
                    .map(Answer::Match)
            }
        }
    }

    /// One key's row.
    async fn fetch_key(
        &self,
        view: &CompiledView,
        wanted: &[Feature],
        key: &EntityKey,
        deadline: Option<Instant>,
    ) -> Result<Row, FetchError> {
        let token = match key.get(view.token_key) {
            Some(KeyPart::String(token)) if !token.is_empty() => token,
            // No linked Item: nothing to ask Plaid about.
            _ => return Ok(Row::NotFound),
        };
        let answer = match self.answer(view, token, key, deadline).await {
            Ok(answer) => {
                let item_id = match &answer {
                    Answer::Accounts(r) => r.item.as_ref().map(|i| i.item_id.as_str()),
                    Answer::Match(r) => r.item.as_ref().map(|i| i.item_id.as_str()),
                    Answer::Item(ItemHealth::Answer(r)) => r.item.item_id.as_deref(),
                    Answer::Item(ItemHealth::Failed(_)) | Answer::Transactions(_) => None,
                };
                if let Some(item_id) = item_id {
                    self.items.record(item_id, token);
                }
                answer
            }
            Err(e) => return row_for_error(view, wanted.len(), e),
        };
        let now = self.now();
        let fail_all = |detail: String| {
            tracing::warn!(view = %view.name, "{detail}");
            let cell = Err(CellError(format!("invalid_response: {detail}")));
            Ok(Row::Found(Record {
                cells: vec![cell; wanted.len()],
                event_time: None,
            }))
        };
        let (cells, event_time) = match answer {
            Answer::Accounts(response) => (
                wanted
                    .iter()
                    .map(|f| {
                        Ok(features::balance_value(
                            &response.accounts,
                            &view.currency,
                            *f,
                        ))
                    })
                    .collect(),
                // Real-time balances are as of the call; cached ones carry no single time.
                (view.endpoint == Endpoint::Balance).then(|| system_time(now)),
            ),
            Answer::Transactions(Synced::NotReady) => (vec![Ok(Value::Null); wanted.len()], None),
            Answer::Transactions(Synced::Ready(set)) => {
                let stats = match TransactionStats::new(&set, now, &view.currency) {
                    Ok(stats) => stats,
                    Err(e) => {
                        return fail_all(format!(
                            "view `{}`: plaid /transactions/sync answered outside its contract: {e}",
                            view.name
                        ));
                    }
                };
                (wanted.iter().map(|f| Ok(stats.value(*f))).collect(), None)
            }
            Answer::Item(health) => {
                let mut cells = Vec::with_capacity(wanted.len());
                for f in wanted {
                    match features::item_value(&health, now, *f) {
                        Ok(v) => cells.push(Ok(v)),
                        Err(e) => {
                            return fail_all(format!(
                                "view `{}`: plaid /item/get answered outside its contract: {e}",
                                view.name
                            ));
                        }
                    }
                }
                (cells, None)
            }
            Answer::Match(response) => (
                wanted
                    .iter()
                    .map(|f| Ok(features::match_value(&response, *f)))
                    .collect(),
                None,
            ),
        };
        Ok(Row::Found(Record { cells, event_time }))
    }
}

/// Turns a failed call into the batch's failure, or into this key's row (see the module docs).
fn row_for_error(view: &CompiledView, cells: usize, error: CallError) -> Result<Row, FetchError> {
    match error.classified.scope {
        Scope::Batch => Err(error.into_fetch_error()),
        Scope::RowNotFound => {
            tracing::debug!(view = %view.name, code = ?error.code, "plaid knows no such item");
            Ok(Row::NotFound)
        }
        Scope::RowCells => {
            let text = match error.code.as_deref() {
                Some("ITEM_LOGIN_REQUIRED") => {
                    "plaid ITEM_LOGIN_REQUIRED: the user must re-link the item (Link update mode)"
                        .to_owned()
                }
                Some(code) => format!("plaid {code}: {}", error.classified.class),
                None => {
                    tracing::warn!(view = %view.name, "{}", error.message);
                    format!("{}: {}", error.classified.class, error.message)
                }
            };
            Ok(Row::Found(Record {
                cells: vec![Err(CellError(text)); cells],
                event_time: None,
            }))
        }
    }
}

#[async_trait]
impl Fetcher for PlaidFetcher {
    /// The access tokens of a Plaid Item (`item_id`), as far as this fetcher has seen them.
    fn keys_of(&self, item_id: &str) -> Vec<KeyPart> {
        self.items
            .tokens(item_id)
            .into_iter()
            .map(KeyPart::String)
            .collect()
    }

    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        let view = self.views.get(&*request.view).ok_or_else(|| {
            FetchError::internal(format!(
                "view `{}` is not served by source `{}`",
                request.view, self.source
            ))
        })?;
        let wanted: Vec<Feature> = request
            .features
            .iter()
            .map(|name| {
                view.features.get(name).copied().ok_or_else(|| {
                    FetchError::internal(format!("view `{}` has no feature `{name}`", view.name))
                })
            })
            .collect::<Result<_, _>>()?;
        if request.keys.is_empty() {
            return Ok(Vec::new());
        }
        if request.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(deadline_passed(&view.name));
        }
        let calls = request
            .keys
            .iter()
            .map(|key| self.fetch_key(view, &wanted, key, request.deadline));
        join_all(calls).await.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::VecDeque};

    use fetcher_api::ErrorClass;

    use super::*;

    fn page(ids: &[&str], removed: &[&str], next: &str, has_more: bool) -> SyncPage {
        serde_json::from_value(json!({
            "added": ids.iter().map(|id| json!({
                "transaction_id": id, "amount": 1.0, "iso_currency_code": "USD",
                "date": "2025-03-10", "pending": false,
            })).collect::<Vec<_>>(),
            "modified": [],
            "removed": removed.iter().map(|id| json!({"transaction_id": id})).collect::<Vec<_>>(),
            "next_cursor": next, "has_more": has_more,
            "transactions_update_status": "HISTORICAL_UPDATE_COMPLETE",
        }))
        .expect("a page")
    }

    fn plaid_error(code: &str) -> CallError {
        let body = PlaidErrorBody {
            error_type: "TRANSACTIONS_ERROR".into(),
            error_code: code.into(),
            ..Default::default()
        };
        CallError::plaid("v", "/transactions/sync", 400, &body)
    }

    /// A scripted sequence of answers; records the cursors asked for.
    struct Script {
        answers: RefCell<VecDeque<Result<SyncPage, CallError>>>,
        cursors: RefCell<Vec<Option<String>>>,
    }

    impl Script {
        fn new(answers: Vec<Result<SyncPage, CallError>>) -> Script {
            Script {
                answers: RefCell::new(answers.into()),
                cursors: RefCell::new(Vec::new()),
            }
        }

        async fn next(&self, cursor: Option<String>) -> Result<SyncPage, CallError> {
            self.cursors.borrow_mut().push(cursor);
            self.answers
                .borrow_mut()
                .pop_front()
                .expect("no more scripted pages")
        }
    }

    fn ids(synced: &Synced) -> Vec<String> {
        let Synced::Ready(set) = synced else {
            panic!("expected transactions, got {synced:?}")
        };
        let mut ids: Vec<String> = set.iter().map(|t| t.transaction_id.clone()).collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn sync_pages_with_cursors_to_completion() {
        let script = Script::new(vec![
            Ok(page(&["a", "b"], &[], "c1", true)),
            Ok(page(&["c"], &["a"], "c2", true)),
            Ok(page(&["d"], &[], "c3", false)),
        ]);
        let synced = sync_to_completion(10, 3, |c| script.next(c))
            .await
            .expect("synced");
        assert_eq!(ids(&synced), ["b", "c", "d"]);
        assert_eq!(
            *script.cursors.borrow(),
            [None, Some("c1".to_owned()), Some("c2".to_owned())]
        );
    }

    #[tokio::test]
    async fn a_mutation_during_pagination_restarts_from_the_first_cursor() {
        let script = Script::new(vec![
            Ok(page(&["a"], &[], "c1", true)),
            Err(plaid_error(MUTATION)),
            Ok(page(&["a2"], &[], "d1", true)),
            Ok(page(&["b2"], &[], "d2", false)),
        ]);
        let synced = sync_to_completion(10, 3, |c| script.next(c))
            .await
            .expect("synced");
        // Nothing of the abandoned pass survives.
        assert_eq!(ids(&synced), ["a2", "b2"]);
        assert_eq!(
            *script.cursors.borrow(),
            [None, Some("c1".to_owned()), None, Some("d1".to_owned())]
        );

        // Restarts are bounded; the last mutation error is the answer.
        let script = Script::new(vec![
            Err(plaid_error(MUTATION)),
            Err(plaid_error(MUTATION)),
            Err(plaid_error(MUTATION)),
        ]);
        let e = sync_to_completion(10, 2, |c| script.next(c))
            .await
            .unwrap_err();
        assert!(e.is_code(MUTATION));
        assert_eq!(e.classified.class, ErrorClass::Unavailable);
        assert!(e.classified.retryable);
    }

    #[tokio::test]
    async fn other_errors_stop_the_loop_and_bounds_hold() {
        let script = Script::new(vec![
            Ok(page(&["a"], &[], "c1", true)),
            Err(plaid_error("ITEM_LOGIN_REQUIRED")),
        ]);
        let e = sync_to_completion(10, 3, |c| script.next(c))
            .await
            .unwrap_err();
        assert!(e.is_code("ITEM_LOGIN_REQUIRED"));
        assert_eq!(e.classified.scope, Scope::RowCells);

        let script = Script::new(vec![
            Ok(page(&["a"], &[], "c1", true)),
            Ok(page(&["b"], &[], "c2", true)),
        ]);
        let e = sync_to_completion(2, 3, |c| script.next(c))
            .await
            .unwrap_err();
        assert!(e.message.contains("more than 2 pages"), "{}", e.message);

        let script = Script::new(vec![Ok(page(&["a"], &[], "", true))]);
        let e = sync_to_completion(5, 3, |c| script.next(c))
            .await
            .unwrap_err();
        assert_eq!(e.classified.class, ErrorClass::InvalidResponse);

        let mut not_ready = page(&[], &[], "", false);
        not_ready.transactions_update_status = Some("NOT_READY".into());
        let script = Script::new(vec![Ok(not_ready)]);
        let synced = sync_to_completion(5, 3, |c| script.next(c))
            .await
            .expect("ok");
        assert_eq!(synced, Synced::NotReady);
    }
}
