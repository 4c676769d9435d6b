//! A fake Plaid API that behaves like the real one as `shared/docs/plaid-contract.md` describes,
//! so the gateway's Plaid fetcher is tested against the same rules it meets in production.
//!
//! # Endpoints (all `POST` with a JSON body)
//! | path | route name (faults, stats, rate limits) |
//! |---|---|
//! | `/accounts/balance/get` | [`ACCOUNTS_BALANCE_GET`] |
//! | `/accounts/get` | [`ACCOUNTS_GET`] |
//! | `/transactions/sync` | [`TRANSACTIONS_SYNC`] |
//! | `/item/get` | [`ITEM_GET`] |
//! | `/identity/get` | [`IDENTITY_GET`] |
//! | `/identity/match` | [`IDENTITY_MATCH`] |
//! | `/auth/get` | [`AUTH_GET`] |
//!
//! | `/webhook_verification_key/get` | [`WEBHOOK_VERIFICATION_KEY_GET`] |
//!
//! Webhooks ([`webhooks`]): the fake signs them as Plaid does (a `Plaid-Verification` JWT,
//! ES256) and POSTs them to the webhook URL set with [`PlaidState::set_webhook_url`], when told
//! to ([`PlaidState::send_webhook`] or the admin API). `/webhook_verification_key/get` serves
//! the public keys. An Item's checking balance can be changed ([`PlaidState::set_balance`]), so
//! a test can see a webhook-driven refresh pick up a new value.
//!
//! # Contract
//! Each call passes, in this order, the route's generic faults (counted in
//! [`crate::FakeServer::stats`], delayed by its [`crate::Latency`] times the time scale, hung,
//! or failed with a status mapped to a Plaid code), then the transport checks (`Content-Type:
//! application/json` else `INVALID_HEADERS`; a JSON object body else `INVALID_BODY`;
//! `Plaid-Version`, if sent, `2020-09-14`), the credentials (`PLAID-CLIENT-ID` / `PLAID-SECRET`
//! headers or `client_id` / `secret` body fields; missing -> `MISSING_FIELDS`, wrong ->
//! `INVALID_API_KEYS`), the fields (`UNKNOWN_FIELDS`, `MISSING_FIELDS`, `INVALID_FIELD`), the
//! access token (`INVALID_ACCESS_TOKEN`), the per-Item then per-client rate limit (429 with the
//! endpoint's code), Plaid-coded injected faults ([`PlaidFaults`]), and the Item's state
//! ([`ItemState`]: a login-required Item fails every data call with `ITEM_LOGIN_REQUIRED`, and
//! shows the error in `/item/get`). Every answer, success or error, carries a fresh
//! `request_id`; errors have exactly Plaid's body ([`error`]). Other methods on these paths,
//! and unknown POST paths, get Plaid's 404 `NOT_FOUND`.
//!
//! Data come from [`data`]: a pure function of the seed and the user index, for users
//! `0..population`. A test that needs Items of its own choosing imports them
//! ([`PlaidState::import_item`]): an imported Item answers under the access token the test
//! gives (any string: tokens are looked up as data), with the `/item/get` fields the test gives,
//! and accounts, transactions and identity generated as for a user of its own index.
//!
//! # Failure
//! Control calls ([`PlaidState`]'s methods, `/admin/plaid/...`) that name an unknown item,
//! route or error code are refused whole with a message naming it. The secret is never echoed:
//! not in error messages, not in `Debug` output of [`PlaidConfig`].

pub mod data;
pub mod error;
pub mod limits;
pub mod webhooks;

mod admin;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{FaultError, Refusal, Shared, seeded::SplitMix64};
pub use error::{ERROR_CODES, ErrorCode, PlaidError};
pub use limits::{RateLimit, RateLimitConfig, RateLimitPlan};

/// `POST /accounts/balance/get`.
pub const ACCOUNTS_BALANCE_GET: &str = "plaid_accounts_balance_get";
/// `POST /accounts/get`.
pub const ACCOUNTS_GET: &str = "plaid_accounts_get";
/// `POST /transactions/sync`.
pub const TRANSACTIONS_SYNC: &str = "plaid_transactions_sync";
/// `POST /item/get`.
pub const ITEM_GET: &str = "plaid_item_get";
/// `POST /identity/get`.
pub const IDENTITY_GET: &str = "plaid_identity_get";
/// `POST /identity/match`.
pub const IDENTITY_MATCH: &str = "plaid_identity_match";
/// `POST /auth/get`.
pub const AUTH_GET: &str = "plaid_auth_get";
/// `POST /webhook_verification_key/get`.
pub const WEBHOOK_VERIFICATION_KEY_GET: &str = "plaid_webhook_verification_key_get";
/// The route names of this module.
pub const ROUTES: [&str; 8] = [
    ACCOUNTS_BALANCE_GET,
    ACCOUNTS_GET,
    TRANSACTIONS_SYNC,
    ITEM_GET,
    IDENTITY_GET,
    IDENTITY_MATCH,
    AUTH_GET,
    WEBHOOK_VERIFICATION_KEY_GET,
];
/// The only API version the fake speaks.
pub const PLAID_VERSION: &str = "2020-09-14";
/// `count` of `/transactions/sync` when the request leaves it out.
pub const DEFAULT_SYNC_COUNT: u64 = 100;
/// The largest `count` of `/transactions/sync`.
pub const MAX_SYNC_COUNT: u64 = 500;

/// The fake Plaid's credentials and rate limits.
#[derive(Clone, PartialEq, Eq)]
pub struct PlaidConfig {
    /// The only accepted `client_id`.
    pub client_id: String,
    /// The only accepted `secret`. Never printed (see the `Debug` impl).
    pub secret: String,
    /// Per-Item and per-client limits per endpoint; Plaid's production numbers by default.
    pub rate_limits: RateLimitConfig,
}

impl Default for PlaidConfig {
    fn default() -> Self {
        PlaidConfig {
            client_id: "fake_plaid_client_id".into(),
            secret: "fake_plaid_secret".into(),
            rate_limits: RateLimitConfig::default(),
        }
    }
}

impl PlaidConfig {
    /// These credentials and no rate limit (see [`RateLimitConfig::unlimited`]).
    pub fn unlimited(client_id: &str, secret: &str) -> Self {
        PlaidConfig {
            client_id: client_id.into(),
            secret: secret.into(),
            rate_limits: RateLimitConfig::unlimited(),
        }
    }
}

impl fmt::Debug for PlaidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlaidConfig")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

/// The state of an Item, as the item state machine moves it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    /// Every call is served.
    #[default]
    Healthy,
    /// The user must re-link: data calls fail with `ITEM_LOGIN_REQUIRED`, `/item/get` shows
    /// the error. Setting `Healthy` again is the repair.
    LoginRequired,
    /// Transactions are not extracted yet: `/transactions/sync` answers empty arrays, an empty
    /// `next_cursor` and `transactions_update_status` `NOT_READY`.
    NotReady,
}

/// "Fail the next `count` calls with Plaid error `error_code`".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaidFailNext {
    pub count: u32,
    /// A code of [`ERROR_CODES`], e.g. `INSTITUTION_DOWN`.
    pub error_code: String,
}

/// "Hold the next `count` successful answers for `ms` milliseconds after they are computed".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaidHoldNext {
    pub count: u32,
    /// Not multiplied by the time scale.
    pub ms: f64,
}

/// Plaid-coded faults of one route, applied after the request is validated (so the error is
/// one a valid request can get). They come on top of the route's generic [`crate::RouteFaults`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlaidFaults {
    /// Scripted failures, served before any probabilistic one.
    pub fail_next: Option<PlaidFailNext>,
    /// The probability in `[0, 1]` that a call fails with `error_code`.
    pub error_rate: f64,
    /// The code of probabilistic failures (default `INTERNAL_SERVER_ERROR`).
    pub error_code: String,
    /// Scripted slow answers: the next successful answers are computed from the data as they
    /// stand when the call arrives (after the route's generic faults), then held before they
    /// are sent, like a call that read the bank and then took long to come back. Unlike the
    /// generic `delay_next`, whose calls read the data once their delay is over, such an answer
    /// is older than a change made while it was held ([`PlaidState::set_balance`]). A call that
    /// fails is not held. Setting it replaces the remaining count.
    pub hold_next: Option<PlaidHoldNext>,
}

impl Default for PlaidFaults {
    fn default() -> Self {
        PlaidFaults {
            fail_next: None,
            error_rate: 0.0,
            error_code: "INTERNAL_SERVER_ERROR".into(),
            hold_next: None,
        }
    }
}

/// A change of Plaid-coded faults: route name (or `*`) to its new faults, each replacing the
/// route's faults whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlaidFaultPlan {
    pub routes: BTreeMap<String, PlaidFaults>,
}

/// The `/item/get` fields of an imported Item ([`PlaidState::import_item`]); `None` is a null
/// field in Plaid's answers. Times are Unix seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemFields {
    /// `item.institution_id`.
    pub institution_id: Option<String>,
    /// `item.created_at`.
    pub created_at: Option<i64>,
    /// `item.consent_expiration_time`.
    pub consent_expiration_time: Option<i64>,
    /// `status.transactions.last_successful_update` (null anyway while transactions are
    /// `NotReady`).
    pub last_successful_update: Option<i64>,
}

/// What one Plaid route answered since start or the last reset. Its call count is in
/// [`crate::Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaidRouteStats {
    /// Successful answers.
    pub ok: u64,
    /// Error answers by `error_code`.
    pub errors: BTreeMap<String, u64>,
    /// Errors injected (generic or Plaid-coded).
    pub injected_errors: u64,
    /// Calls refused by a rate limit.
    pub rate_limited: u64,
    /// Successful answers held by `hold_next`, counted as their hold starts (their data are
    /// read by then); each is counted in `ok` too once it is sent.
    #[serde(default)]
    pub held: u64,
}

/// Per-route Plaid statistics, as served by `GET /admin/plaid/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaidStats {
    pub routes: BTreeMap<String, PlaidRouteStats>,
}

impl PlaidStats {
    /// The stats of `route`, zeroed if it never answered.
    pub fn route(&self, route: &str) -> PlaidRouteStats {
        self.routes.get(route).cloned().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ItemRuntime {
    state: ItemState,
    /// Bumped by every data change; a sync cursor of an older epoch taken mid-pagination is
    /// refused with `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION`.
    sync_epoch: u64,
    last_failed_update: Option<i64>,
    /// `(available, current)` of the Item's checking account (its first), when changed.
    checking_balance: Option<(f64, f64)>,
}

#[derive(Debug)]
struct RouteFaultState {
    faults: PlaidFaults,
    remaining: u32,
    /// Successful answers still to hold (`hold_next`).
    hold_remaining: u32,
    rng: StdRng,
}

#[derive(Debug)]
struct Inner {
    /// Only Items that left the default state (healthy, epoch 0) are held.
    items: HashMap<u64, ItemRuntime>,
    limiter: limits::RateLimiter,
    faults: BTreeMap<&'static str, RouteFaultState>,
    stats: BTreeMap<&'static str, PlaidRouteStats>,
    /// Imported Items by user index (from `population` up), with their access tokens.
    imported: HashMap<u64, ItemFields>,
    imported_tokens: HashMap<String, u64>,
}

/// The fake Plaid's mutable state and its controls (reach it with
/// [`crate::FakeServer::plaid`]). A mutex guards it, never held across an `.await`.
#[derive(Debug)]
pub struct PlaidState {
    seed: u64,
    population: u64,
    config: PlaidConfig,
    request_ids: AtomicU64,
    inner: Mutex<Inner>,
    webhooks: Mutex<webhooks::Webhooks>,
}

impl PlaidState {
    pub(crate) fn new(
        seed: u64,
        population: u64,
        config: PlaidConfig,
    ) -> Result<PlaidState, FaultError> {
        if config.client_id.is_empty() || config.secret.is_empty() {
            return Err(FaultError(
                "plaid client_id and secret must not be empty".into(),
            ));
        }
        let limiter = limits::RateLimiter::new(RateLimitConfig {
            window_ms: 1,
            routes: BTreeMap::new(),
        });
        let state = PlaidState {
            seed,
            population,
            request_ids: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                items: HashMap::new(),
                limiter,
                faults: BTreeMap::new(),
                stats: BTreeMap::new(),
                imported: HashMap::new(),
                imported_tokens: HashMap::new(),
            }),
            webhooks: Mutex::new(webhooks::Webhooks::new(seed)),
            config,
        };
        state.set_rate_limits(&RateLimitPlan {
            window_ms: Some(state.config.rate_limits.window_ms),
            routes: state.config.rate_limits.routes.clone(),
        })?;
        state.reset();
        Ok(state)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Each method leaves the state consistent in one step, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The seed of the data.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The access token of user `user_index` (see [`data::access_token`]).
    pub fn access_token(&self, user_index: u64) -> String {
        data::access_token(self.seed, user_index)
    }

    /// The item id of user `user_index` (see [`data::item_id`]).
    pub fn item_id(&self, user_index: u64) -> String {
        data::item_id(self.seed, user_index)
    }

    fn user_of_item(&self, item_id: &str) -> Result<u64, FaultError> {
        data::user_for_item_id(self.seed, self.population, item_id)
            .or_else(|| {
                // Imported Items have indexes from the population up.
                let inner = self.inner();
                let bound = self.population + inner.imported.len() as u64;
                data::user_for_item_id(self.seed, bound, item_id)
                    .filter(|user| inner.imported.contains_key(user))
            })
            .ok_or_else(|| FaultError(format!("unknown plaid item `{item_id}`")))
    }

    /// The user whose Item answers to `token`: a seeded user's exact token, or an imported one.
    fn user_of_token(&self, token: &str) -> Option<u64> {
        data::user_for_access_token(self.seed, self.population, token)
            .or_else(|| self.inner().imported_tokens.get(token).copied())
    }

    /// Imports an Item that answers to `access_token` (any non-empty string that is not a seeded
    /// user's token) with the `/item/get` fields `fields`; its accounts, transactions and
    /// identity are generated as for any user, from an index of its own past the population.
    /// Importing a token again replaces its fields and keeps its Item. Returns the Item's id,
    /// which the other controls ([`PlaidState::set_item_state`], webhooks, ...) take as for a
    /// seeded Item. [`crate::FakeServer::reset`] keeps imported Items (they are data) and puts
    /// them back to healthy.
    pub fn import_item(
        &self,
        access_token: &str,
        fields: ItemFields,
    ) -> Result<String, FaultError> {
        if access_token.is_empty() {
            return Err(FaultError("an imported item needs an access token".into()));
        }
        if data::user_for_access_token(self.seed, self.population, access_token).is_some() {
            return Err(FaultError(
                "that access token is a seeded user's; import under another".into(),
            ));
        }
        let mut inner = self.inner();
        let user = match inner.imported_tokens.get(access_token) {
            Some(user) => *user,
            None => {
                let user = self.population + inner.imported.len() as u64;
                inner.imported_tokens.insert(access_token.to_owned(), user);
                user
            }
        };
        inner.imported.insert(user, fields);
        Ok(data::item_id(self.seed, user))
    }

    /// The `/item/get` view of user `user`'s Item: its imported fields, else the seeded ones.
    fn item_info(&self, user: u64) -> ItemInfo {
        match self.inner().imported.get(&user) {
            Some(fields) => ItemInfo {
                item_id: data::item_id(self.seed, user),
                institution_id: fields.institution_id.clone(),
                created_at: fields.created_at,
                consent_expiration_time: fields.consent_expiration_time,
                last_successful_update: fields.last_successful_update,
            },
            None => {
                let info = data::item(self.seed, user);
                ItemInfo {
                    item_id: info.item_id,
                    institution_id: Some(info.institution_id.to_owned()),
                    created_at: Some(info.created_at),
                    consent_expiration_time: info.consent_expiration_time,
                    last_successful_update: Some(info.last_successful_update),
                }
            }
        }
    }

    /// Moves an Item through the state machine. `LoginRequired` records a failed update at
    /// the data's "now"; `Healthy` from `LoginRequired` is the repair.
    pub fn set_item_state(&self, item_id: &str, state: ItemState) -> Result<(), FaultError> {
        let user = self.user_of_item(item_id)?;
        let now = data::now(self.seed);
        let mut inner = self.inner();
        let item = inner.items.entry(user).or_default();
        if state == ItemState::LoginRequired {
            item.last_failed_update = Some(now);
        }
        item.state = state;
        Ok(())
    }

    /// The current state of an Item, or `None` for an unknown item id.
    pub fn item_state(&self, item_id: &str) -> Option<ItemState> {
        let user = self.user_of_item(item_id).ok()?;
        Some(self.runtime(user).state)
    }

    /// Simulates a change of the Item's transaction data: a client in the middle of a
    /// `/transactions/sync` pagination gets `TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION` on
    /// its next page, and succeeds when it restarts from the loop's first cursor.
    pub fn mutate_transactions(&self, item_id: &str) -> Result<(), FaultError> {
        let user = self.user_of_item(item_id)?;
        self.inner().items.entry(user).or_default().sync_epoch += 1;
        Ok(())
    }

    /// Sets the balances of the Item's checking account (its first account) from now on.
    pub fn set_balance(
        &self,
        item_id: &str,
        available: f64,
        current: f64,
    ) -> Result<(), FaultError> {
        let user = self.user_of_item(item_id)?;
        self.inner().items.entry(user).or_default().checking_balance = Some((available, current));
        Ok(())
    }

    fn webhooks(&self) -> MutexGuard<'_, webhooks::Webhooks> {
        self.webhooks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where webhooks are sent (`None`: nowhere).
    pub fn set_webhook_url(&self, url: Option<String>) {
        self.webhooks().set_url(url);
    }

    /// The key id webhooks are signed under now.
    pub fn webhook_kid(&self) -> String {
        self.webhooks().current_kid()
    }

    /// Expires the current webhook key and signs with a new one; returns its key id.
    pub fn rotate_webhook_key(&self) -> String {
        self.webhooks().rotate()
    }

    /// The `Plaid-Verification` header for `body`, issued at `iat` (Unix seconds).
    pub fn sign_webhook(&self, body: &[u8], iat: i64) -> String {
        self.webhooks().sign(body, iat)
    }

    /// A `Plaid-Verification` header for `body` with the current kid and right claims, signed
    /// with a key Plaid never published (a forgery).
    pub fn forge_webhook(&self, body: &[u8], iat: i64) -> String {
        self.webhooks().forge(body, iat)
    }

    /// The webhook Plaid sends about `item_id`: `fields` (at least `webhook_type` and
    /// `webhook_code`) plus `item_id` and `environment`, signed now, POSTed to the webhook URL.
    pub async fn send_webhook(
        &self,
        item_id: &str,
        fields: Map<String, Value>,
    ) -> Result<webhooks::Delivery, FaultError> {
        self.user_of_item(item_id)?;
        for field in ["webhook_type", "webhook_code"] {
            if !fields.get(field).is_some_and(Value::is_string) {
                return Err(FaultError(format!("a webhook needs a string `{field}`")));
            }
        }
        let mut body = fields;
        body.insert("item_id".into(), json!(item_id));
        body.entry("environment").or_insert(json!("sandbox"));
        let body = serde_json::to_vec(&Value::Object(body))
            .map_err(|e| FaultError(format!("cannot encode the webhook: {e}")))?;
        let (url, verification) = {
            let hooks = self.webhooks();
            let url = hooks
                .url()
                .ok_or_else(|| FaultError("no webhook url is set".into()))?;
            (url, hooks.sign(&body, webhooks::unix_now()))
        };
        webhooks::deliver(&url, body, &verification)
            .await
            .map_err(FaultError)
    }

    /// The public key `kid` as a JWK, if the fake ever signed with it.
    pub fn webhook_jwk(&self, kid: &str) -> Option<Value> {
        self.webhooks().jwk(kid)
    }

    /// Replaces the Plaid-coded faults of `route` (a name of [`ROUTES`], or `*`).
    pub fn set_faults(&self, route: &str, faults: PlaidFaults) -> Result<(), FaultError> {
        self.apply_faults(&PlaidFaultPlan {
            routes: [(route.to_owned(), faults)].into(),
        })
    }

    /// Checks `plan` whole, then applies it, as `POST /admin/plaid/faults` does.
    pub fn apply_faults(&self, plan: &PlaidFaultPlan) -> Result<(), FaultError> {
        for (route, faults) in &plan.routes {
            check_route(route)?;
            let bad = |e: String| FaultError(format!("routes.{route}: {e}"));
            if !(0.0..=1.0).contains(&faults.error_rate) {
                return Err(bad(format!(
                    "error_rate must be within [0, 1], got {}",
                    faults.error_rate
                )));
            }
            if let Some(hold) = faults
                .hold_next
                .filter(|h| !(h.ms.is_finite() && h.ms >= 0.0))
            {
                return Err(bad(format!("hold_next.ms must be >= 0, got {}", hold.ms)));
            }
            let codes = std::iter::once(faults.error_code.as_str())
                .chain(faults.fail_next.iter().map(|f| f.error_code.as_str()));
            for code in codes {
                if error::error_code(code).is_none() {
                    let known: Vec<&str> = ERROR_CODES.iter().map(|c| c.code).collect();
                    return Err(bad(format!(
                        "unknown error_code `{code}` (known: {})",
                        known.join(", ")
                    )));
                }
            }
        }
        let mut inner = self.inner();
        for (route, faults) in &plan.routes {
            for (name, state) in inner.faults.iter_mut() {
                if route == crate::faults::ALL_ROUTES || route == name {
                    state.remaining = faults.fail_next.as_ref().map_or(0, |f| f.count);
                    state.hold_remaining = faults.hold_next.map_or(0, |h| h.count);
                    state.faults = faults.clone();
                }
            }
        }
        Ok(())
    }

    /// Changes the rate-limit window and/or the limits of some routes, as
    /// `POST /admin/plaid/rate_limits` does.
    pub fn set_rate_limits(&self, plan: &RateLimitPlan) -> Result<(), FaultError> {
        if plan.window_ms == Some(0) {
            return Err(FaultError("window_ms must be > 0".into()));
        }
        for route in plan.routes.keys() {
            check_route(route)?;
        }
        let mut inner = self.inner();
        let mut config = inner.limiter.config().clone();
        if let Some(window) = plan.window_ms {
            config.window_ms = window;
        }
        for (route, limit) in &plan.routes {
            for name in ROUTES {
                if route == crate::faults::ALL_ROUTES || route == name {
                    config.routes.insert(name.to_owned(), *limit);
                }
            }
        }
        inner.limiter.set_config(config);
        Ok(())
    }

    /// The rate limits in force.
    pub fn rate_limits(&self) -> RateLimitConfig {
        self.inner().limiter.config().clone()
    }

    /// A snapshot of the per-route answer counters.
    pub fn stats(&self) -> PlaidStats {
        PlaidStats {
            routes: self
                .inner()
                .stats
                .iter()
                .map(|(name, s)| ((*name).to_owned(), s.clone()))
                .collect(),
        }
    }

    /// Back to the start: every Item healthy, no Plaid-coded faults, empty rate windows and
    /// statistics, the configured rate limits. Imported Items stay: they are data.
    pub(crate) fn reset(&self) {
        let mut inner = self.inner();
        inner.items.clear();
        inner.limiter = limits::RateLimiter::new(self.config.rate_limits.clone());
        inner.stats.clear();
        inner.faults = ROUTES
            .iter()
            .map(|route| {
                let route_seed = SplitMix64::for_entity(self.seed, "plaid_faults", 0).next_u64()
                    ^ route
                        .bytes()
                        .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
                (
                    *route,
                    RouteFaultState {
                        faults: PlaidFaults::default(),
                        remaining: 0,
                        hold_remaining: 0,
                        rng: StdRng::seed_from_u64(route_seed),
                    },
                )
            })
            .collect();
    }

    fn runtime(&self, user: u64) -> ItemRuntime {
        self.inner().items.get(&user).copied().unwrap_or_default()
    }

    fn next_request_id(&self) -> String {
        let n = self.request_ids.fetch_add(1, Ordering::Relaxed);
        let mut g = SplitMix64::for_entity(self.seed, "plaid_request_id", n);
        (0..15)
            .map(|_| {
                let a = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
                char::from(a[g.below(62) as usize])
            })
            .collect()
    }

    fn record(&self, route: &'static str, outcome: Result<(), &PlaidError>) {
        let mut inner = self.inner();
        let stats = inner.stats.entry(route).or_default();
        match outcome {
            Ok(()) => stats.ok += 1,
            Err(e) => *stats.errors.entry(e.code.code.to_owned()).or_default() += 1,
        }
    }

    /// How long to hold a successful answer of `route` before sending it (`hold_next`).
    fn take_hold(&self, route: &'static str) -> Option<Duration> {
        let mut inner = self.inner();
        let state = inner.faults.get_mut(route)?;
        let hold = state
            .faults
            .hold_next
            .filter(|_| state.hold_remaining > 0)?;
        state.hold_remaining -= 1;
        inner.stats.entry(route).or_default().held += 1;
        Some(Duration::from_secs_f64(hold.ms / 1000.0))
    }

    fn count_injected(&self, route: &'static str) {
        self.inner().stats.entry(route).or_default().injected_errors += 1;
    }

    /// Rate limits, then Plaid-coded faults, for one valid call.
    fn admit(&self, ep: Endpoint, user: u64, client_id: &str) -> Result<(), PlaidError> {
        let mut inner = self.inner();
        let now = tokio::time::Instant::now();
        if let Err(exceeded) = inner.limiter.admit(ep.route(), user, client_id, now) {
            inner.stats.entry(ep.route()).or_default().rate_limited += 1;
            return Err(PlaidError::new(ep.limit_code(exceeded)));
        }
        let Some(state) = inner.faults.get_mut(ep.route()) else {
            return Ok(());
        };
        let code = if state.remaining > 0 {
            state.remaining -= 1;
            state
                .faults
                .fail_next
                .as_ref()
                .map(|f| f.error_code.clone())
        } else if state.faults.error_rate > 0.0
            && state.rng.random::<f64>() < state.faults.error_rate
        {
            Some(state.faults.error_code.clone())
        } else {
            None
        };
        match code {
            None => Ok(()),
            Some(code) => {
                inner.stats.entry(ep.route()).or_default().injected_errors += 1;
                Err(PlaidError::new(&code))
            }
        }
    }
}

fn check_route(route: &str) -> Result<(), FaultError> {
    if route == crate::faults::ALL_ROUTES || ROUTES.contains(&route) {
        Ok(())
    } else {
        Err(FaultError(format!(
            "unknown plaid route `{route}` (known: {}, or `*` for all)",
            ROUTES.join(", ")
        )))
    }
}

/// One served endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    AccountsBalanceGet,
    AccountsGet,
    TransactionsSync,
    ItemGet,
    IdentityGet,
    IdentityMatch,
    AuthGet,
}

impl Endpoint {
    /// Every served endpoint.
    pub const ALL: [Endpoint; 7] = [
        Endpoint::AccountsBalanceGet,
        Endpoint::AccountsGet,
        Endpoint::TransactionsSync,
        Endpoint::ItemGet,
        Endpoint::IdentityGet,
        Endpoint::IdentityMatch,
        Endpoint::AuthGet,
    ];

    /// The route name (faults, stats, rate limits).
    pub fn route(self) -> &'static str {
        match self {
            Endpoint::AccountsBalanceGet => ACCOUNTS_BALANCE_GET,
            Endpoint::AccountsGet => ACCOUNTS_GET,
            Endpoint::TransactionsSync => TRANSACTIONS_SYNC,
            Endpoint::ItemGet => ITEM_GET,
            Endpoint::IdentityGet => IDENTITY_GET,
            Endpoint::IdentityMatch => IDENTITY_MATCH,
            Endpoint::AuthGet => AUTH_GET,
        }
    }

    /// The URL path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::AccountsBalanceGet => "/accounts/balance/get",
            Endpoint::AccountsGet => "/accounts/get",
            Endpoint::TransactionsSync => "/transactions/sync",
            Endpoint::ItemGet => "/item/get",
            Endpoint::IdentityGet => "/identity/get",
            Endpoint::IdentityMatch => "/identity/match",
            Endpoint::AuthGet => "/auth/get",
        }
    }

    /// The top-level body fields the endpoint accepts (besides `client_id` and `secret`).
    fn fields(self) -> &'static [&'static str] {
        match self {
            Endpoint::TransactionsSync => &["access_token", "cursor", "count", "options"],
            Endpoint::ItemGet => &["access_token"],
            Endpoint::IdentityMatch => &["access_token", "user", "options"],
            _ => &["access_token", "options"],
        }
    }

    /// The `options` fields the endpoint accepts; `None` = any (sync's many flags).
    fn option_fields(self) -> Option<&'static [&'static str]> {
        match self {
            Endpoint::TransactionsSync => None,
            Endpoint::AccountsBalanceGet => Some(&["account_ids", "min_last_updated_datetime"]),
            _ => Some(&["account_ids"]),
        }
    }

    /// The `error_code` of a 429 from the given limit.
    fn limit_code(self, exceeded: limits::Exceeded) -> &'static str {
        match (self, exceeded) {
            (Endpoint::AccountsBalanceGet, limits::Exceeded::Item) => "BALANCE_LIMIT",
            (Endpoint::AccountsBalanceGet, limits::Exceeded::Client) => {
                "ACCOUNTS_BALANCE_GET_LIMIT"
            }
            (Endpoint::AccountsGet, _) => "ACCOUNTS_LIMIT",
            (Endpoint::TransactionsSync, _) => "TRANSACTIONS_SYNC_LIMIT",
            (Endpoint::ItemGet, _) => "ITEM_GET_LIMIT",
            (Endpoint::IdentityGet | Endpoint::IdentityMatch, _) => "IDENTITY_LIMIT",
            (Endpoint::AuthGet, _) => "AUTH_LIMIT",
        }
    }
}

pub(crate) fn router() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for ep in Endpoint::ALL {
        router = router.route(
            ep.path(),
            post(
                move |State(shared): State<Arc<Shared>>,
                      uri: Uri,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    handle(&shared, ep, &uri, &headers, &body).await
                },
            )
            // Plaid serves only POST; any other method on its paths is a plain "not found".
            .fallback(|State(shared): State<Arc<Shared>>, uri: Uri| async move {
                unknown_endpoint(&shared, uri.path())
            }),
        );
    }
    router = router.route(
        "/webhook_verification_key/get",
        post(
            |State(shared): State<Arc<Shared>>, uri: Uri, headers: HeaderMap, body: Bytes| async move {
                verification_key(&shared, &uri, &headers, &body).await
            },
        )
        .fallback(|State(shared): State<Arc<Shared>>, uri: Uri| async move {
            unknown_endpoint(&shared, uri.path())
        }),
    );
    router.merge(admin::router())
}

/// `/webhook_verification_key/get`: `{"key_id"}` -> `{"key": JWK}`, after the same generic
/// faults, transport checks and credentials as every endpoint (no access token, no per-Item
/// limit).
async fn verification_key(
    shared: &Shared,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let plaid = &shared.plaid;
    let route = WEBHOOK_VERIFICATION_KEY_GET;
    let request_id = plaid.next_request_id();
    let outcome = match shared.admit(route, uri, 1).await {
        Err(refusal) => {
            if let Refusal::Injected(_) = refusal {
                plaid.count_injected(route);
            }
            Err(refusal_error(Endpoint::ItemGet, refusal))
        }
        Ok(()) => checked_call(plaid, headers, body).and_then(|(request, _)| {
            if let Some(unknown) = request.keys().find(|k| k.as_str() != "key_id") {
                return Err(PlaidError::with_message(
                    "UNKNOWN_FIELDS",
                    format!("the following fields are not recognized by this endpoint: {unknown}"),
                ));
            }
            let kid = match request.get("key_id") {
                None | Some(Value::Null) => {
                    return Err(PlaidError::with_message(
                        "MISSING_FIELDS",
                        "the following required fields are missing: key_id",
                    ));
                }
                Some(Value::String(kid)) => kid,
                Some(_) => return Err(invalid_field("key_id must be a string")),
            };
            plaid
                .webhook_jwk(kid)
                .map(|key| json!({ "key": key }))
                .ok_or_else(|| {
                    invalid_field(format!("no webhook verification key with key_id {kid}"))
                })
        }),
    };
    match outcome {
        Ok(mut value) => {
            plaid.record(route, Ok(()));
            value["request_id"] = json!(request_id);
            (StatusCode::OK, axum::Json(value)).into_response()
        }
        Err(e) => {
            plaid.record(route, Err(&e));
            e.into_response(&request_id)
        }
    }
}

/// Plaid's 404 for a path (or method) it does not serve.
pub(crate) fn unknown_endpoint(shared: &Shared, path: &str) -> Response {
    let request_id = shared.plaid.next_request_id();
    PlaidError::with_message("NOT_FOUND", format!("not found: {path}")).into_response(&request_id)
}

async fn handle(
    shared: &Shared,
    ep: Endpoint,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let plaid = &shared.plaid;
    let request_id = plaid.next_request_id();
    // Generic faults come first, before any validation: every call that reaches the route is
    // counted (coalescing tests count upstream calls) and pays the injected latency, which
    // models the network and Plaid's queueing as much as the bank.
    let mut outcome = match shared.admit(ep.route(), uri, 1).await {
        Ok(()) => respond(shared, ep, headers, body, &request_id),
        Err(refusal) => {
            if let Refusal::Injected(_) = refusal {
                plaid.count_injected(ep.route());
            }
            Err(refusal_error(ep, refusal))
        }
    };
    // A held answer keeps the data it read; it is counted once it is sent.
    if let Some(hold) = outcome
        .is_ok()
        .then(|| plaid.take_hold(ep.route()))
        .flatten()
    {
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            _ = shutdown.wait_for(|s| *s) => {
                outcome = Err(refusal_error(ep, Refusal::ShuttingDown));
            }
        }
    }
    match outcome {
        Ok(mut value) => {
            plaid.record(ep.route(), Ok(()));
            if let Value::Object(map) = &mut value {
                map.insert("request_id".into(), json!(request_id));
            }
            (StatusCode::OK, axum::Json(value)).into_response()
        }
        Err(e) => {
            plaid.record(ep.route(), Err(&e));
            e.into_response(&request_id)
        }
    }
}

/// The Plaid error for a generic fault: the status a test asked for, with the Plaid code a
/// client would see for it.
fn refusal_error(ep: Endpoint, refusal: Refusal) -> PlaidError {
    match refusal {
        Refusal::ShuttingDown => {
            PlaidError::with_message("PLANNED_MAINTENANCE", "the fake Plaid is shutting down")
        }
        Refusal::Injected(status) => {
            let code = match status.as_u16() {
                429 => ep.limit_code(limits::Exceeded::Client),
                404 => "NOT_FOUND",
                400..=499 => "INSTITUTION_NOT_RESPONDING",
                503 => "PLANNED_MAINTENANCE",
                _ => "INTERNAL_SERVER_ERROR",
            };
            PlaidError {
                status,
                ..PlaidError::new(code)
            }
        }
    }
}

/// Validates one request and computes its answer (without `request_id`).
fn respond(
    shared: &Shared,
    ep: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> Result<Value, PlaidError> {
    let plaid = &shared.plaid;
    let (request, client_id) = checked_call(plaid, headers, body)?;
    answer(shared, ep, request, &client_id, request_id)
}

/// The transport checks every endpoint makes (content type, a JSON object body, the API
/// version, the credentials): the body without the credentials, and the client id.
fn checked_call(
    plaid: &PlaidState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Map<String, Value>, String), PlaidError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    if content_type.as_deref() != Some("application/json") {
        return Err(PlaidError::with_message(
            "INVALID_HEADERS",
            "header Content-Type must be application/json",
        ));
    }
    let mut request = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(PlaidError::with_message(
                "INVALID_BODY",
                "body must be a JSON object",
            ));
        }
        Err(_) => return Err(PlaidError::new("INVALID_BODY")),
    };
    // Left out, Plaid applies the client's default version; sent, it must be the one the fake
    // (and the gateway's fetcher) speaks.
    if headers
        .get("plaid-version")
        .is_some_and(|v| v.as_bytes() != PLAID_VERSION.as_bytes())
    {
        return Err(PlaidError::with_message(
            "INVALID_HEADERS",
            format!("header Plaid-Version must be {PLAID_VERSION}"),
        ));
    }
    let client_id = credentials(&plaid.config, headers, &mut request)?;
    Ok((request, client_id))
}

/// An endpoint's answer to a request that passed [`checked_call`].
fn answer(
    shared: &Shared,
    ep: Endpoint,
    request: Map<String, Value>,
    client_id: &str,
    request_id: &str,
) -> Result<Value, PlaidError> {
    let plaid = &shared.plaid;

    let mut unknown: Vec<&str> = request
        .keys()
        .map(String::as_str)
        .filter(|k| !ep.fields().contains(k))
        .collect();
    if let (Some(allowed), Some(Value::Object(options))) =
        (ep.option_fields(), request.get("options"))
    {
        unknown.extend(
            options
                .keys()
                .map(String::as_str)
                .filter(|k| !allowed.contains(k)),
        );
    }
    if !unknown.is_empty() {
        return Err(PlaidError::with_message(
            "UNKNOWN_FIELDS",
            format!(
                "the following fields are not recognized by this endpoint: {}",
                unknown.join(", ")
            ),
        ));
    }
    let token = match request.get("access_token") {
        None | Some(Value::Null) => {
            return Err(PlaidError::with_message(
                "MISSING_FIELDS",
                "the following required fields are missing: access_token",
            ));
        }
        Some(Value::String(token)) => token.clone(),
        Some(_) => return Err(invalid_field("access_token must be a string")),
    };
    let params = Params::parse(ep, &request)?;
    let user = plaid.user_of_token(&token).ok_or_else(|| {
        PlaidError::with_message(
            "INVALID_ACCESS_TOKEN",
            "could not find matching access token",
        )
    })?;
    plaid.admit(ep, user, client_id)?;
    let runtime = plaid.runtime(user);
    let info = plaid.item_info(user);
    let item = item_json(&info, runtime, request_id);
    // A login-required Item fails every data call; `/item/get` is how a client finds out why.
    if runtime.state == ItemState::LoginRequired && ep != Endpoint::ItemGet {
        return Err(PlaidError::new("ITEM_LOGIN_REQUIRED"));
    }
    let seed = plaid.seed;
    match ep {
        Endpoint::ItemGet => {
            // Never a successful transactions update before the first extraction.
            let last_successful = info
                .last_successful_update
                .filter(|_| runtime.state != ItemState::NotReady)
                .map(crate::seeded::rfc3339);
            Ok(json!({
                "item": item,
                "status": {
                    "transactions": {
                        "last_successful_update": last_successful,
                        "last_failed_update": runtime.last_failed_update.map(crate::seeded::rfc3339),
                    },
                    "last_webhook": null,
                },
            }))
        }
        Endpoint::TransactionsSync => sync(seed, user, runtime, &params),
        Endpoint::AccountsBalanceGet | Endpoint::AccountsGet => {
            let accounts = selected_accounts(seed, user, runtime, &params)?;
            Ok(json!({
                "accounts": accounts.iter().map(data::Account::to_json).collect::<Vec<_>>(),
                "item": item,
            }))
        }
        Endpoint::IdentityGet => {
            let owner = data::identity(seed, user).to_json();
            let accounts: Vec<Value> = selected_accounts(seed, user, runtime, &params)?
                .iter()
                .map(|a| {
                    let mut json = a.to_json();
                    json["owners"] = json!([owner]);
                    json
                })
                .collect();
            Ok(json!({ "accounts": accounts, "item": item }))
        }
        Endpoint::IdentityMatch => {
            let owner = data::identity(seed, user);
            let scores = match_scores(&owner, params.user.as_ref());
            let accounts: Vec<Value> = selected_accounts(seed, user, runtime, &params)?
                .iter()
                .map(|a| {
                    let mut json = a.to_json();
                    if let (Value::Object(map), Value::Object(scores)) = (&mut json, &scores) {
                        map.extend(scores.clone());
                    }
                    json
                })
                .collect();
            Ok(json!({ "accounts": accounts, "item": item }))
        }
        Endpoint::AuthGet => {
            let accounts = selected_accounts(seed, user, runtime, &params)?;
            let ach: Vec<Value> = accounts
                .iter()
                .filter(|a| a.kind != data::AccountKind::CreditCard)
                .map(|a| {
                    let (account, routing, wire_routing) = data::ach_numbers(seed, a);
                    json!({
                        "account_id": a.account_id,
                        "account": account,
                        "routing": routing,
                        "wire_routing": wire_routing,
                    })
                })
                .collect();
            Ok(json!({
                "accounts": accounts.iter().map(data::Account::to_json).collect::<Vec<_>>(),
                "numbers": { "ach": ach, "eft": [], "international": [], "bacs": [] },
                "item": item,
            }))
        }
    }
}

fn invalid_field(message: impl Into<String>) -> PlaidError {
    PlaidError::with_message("INVALID_FIELD", message)
}

/// `client_id` and `secret` from the headers, else from the body (removed from it, so the
/// unknown-field check does not see them). Returns the client id.
fn credentials(
    config: &PlaidConfig,
    headers: &HeaderMap,
    request: &mut Map<String, Value>,
) -> Result<String, PlaidError> {
    let mut take = |header_name: &str, field: &str| -> Result<Option<String>, PlaidError> {
        let from_body = match request.remove(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(invalid_field(format!("{field} must be a string"))),
        };
        let from_header = headers
            .get(header_name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(from_header.or(from_body))
    };
    let client_id = take("plaid-client-id", "client_id")?;
    let secret = take("plaid-secret", "secret")?;
    let missing: Vec<&str> = [("client_id", &client_id), ("secret", &secret)]
        .into_iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        return Err(PlaidError::with_message(
            "MISSING_FIELDS",
            format!(
                "the following required fields are missing: {}",
                missing.join(", ")
            ),
        ));
    }
    match (client_id, secret) {
        (Some(id), Some(secret)) if id == config.client_id && secret == config.secret => Ok(id),
        _ => Err(PlaidError::new("INVALID_API_KEYS")),
    }
}

/// The endpoint-specific request fields, type-checked.
#[derive(Debug, Default)]
struct Params {
    account_ids: Option<Vec<String>>,
    cursor: Option<String>,
    count: u64,
    user: Option<Map<String, Value>>,
}

impl Params {
    fn parse(ep: Endpoint, request: &Map<String, Value>) -> Result<Params, PlaidError> {
        let mut params = Params {
            count: DEFAULT_SYNC_COUNT,
            ..Params::default()
        };
        match request.get("options") {
            None | Some(Value::Null) => {}
            Some(Value::Object(options)) => match options.get("account_ids") {
                None | Some(Value::Null) => {}
                Some(Value::Array(ids)) => {
                    let ids: Option<Vec<String>> =
                        ids.iter().map(|v| v.as_str().map(str::to_owned)).collect();
                    params.account_ids = Some(ids.ok_or_else(|| {
                        invalid_field("options.account_ids must be an array of strings")
                    })?);
                }
                Some(_) => {
                    return Err(invalid_field(
                        "options.account_ids must be an array of strings",
                    ));
                }
            },
            Some(_) => return Err(invalid_field("options must be an object")),
        }
        if ep == Endpoint::TransactionsSync {
            params.cursor = match request.get("cursor") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(invalid_field("cursor must be a string")),
            };
            match request.get("count") {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=MAX_SYNC_COUNT).contains(&n) => params.count = n,
                    _ => {
                        return Err(invalid_field(format!(
                            "count must be an integer from 1 to {MAX_SYNC_COUNT}"
                        )));
                    }
                },
            }
        }
        if ep == Endpoint::IdentityMatch {
            params.user = match request.get("user") {
                None | Some(Value::Null) => None,
                Some(Value::Object(user)) => {
                    for (key, value) in user {
                        let ok = match key.as_str() {
                            "legal_name" | "phone_number" | "email_address" => {
                                value.is_string() || value.is_null()
                            }
                            "address" => value.is_object() || value.is_null(),
                            _ => {
                                return Err(PlaidError::with_message(
                                    "UNKNOWN_FIELDS",
                                    format!(
                                        "the following fields are not recognized by this \
                                         endpoint: user.{key}"
                                    ),
                                ));
                            }
                        };
                        if !ok {
                            return Err(invalid_field(format!("user.{key} has the wrong type")));
                        }
                    }
                    Some(user.clone())
                }
                Some(_) => return Err(invalid_field("user must be an object")),
            };
        }
        Ok(params)
    }
}

/// The Item's accounts, or those of `options.account_ids` (an unknown id is
/// `INVALID_ACCOUNT_ID`, as in Plaid; an empty list means all).
fn selected_accounts(
    seed: u64,
    user: u64,
    runtime: ItemRuntime,
    params: &Params,
) -> Result<Vec<data::Account>, PlaidError> {
    let mut accounts = data::accounts(seed, user);
    if let (Some((available, current)), Some(checking)) =
        (runtime.checking_balance, accounts.first_mut())
    {
        checking.available = Some(available);
        checking.current = Some(current);
    }
    match &params.account_ids {
        Some(ids) if !ids.is_empty() => {
            if ids
                .iter()
                .any(|id| !accounts.iter().any(|a| &a.account_id == id))
            {
                return Err(PlaidError::new("INVALID_ACCOUNT_ID"));
            }
            Ok(accounts
                .into_iter()
                .filter(|a| ids.contains(&a.account_id))
                .collect())
        }
        _ => Ok(accounts),
    }
}

/// An Item's fields as `/item/get` shows them, seeded or imported.
#[derive(Clone, Debug)]
struct ItemInfo {
    item_id: String,
    institution_id: Option<String>,
    created_at: Option<i64>,
    consent_expiration_time: Option<i64>,
    last_successful_update: Option<i64>,
}

/// The Item object shared by several responses.
fn item_json(info: &ItemInfo, runtime: ItemRuntime, request_id: &str) -> Value {
    let error = (runtime.state == ItemState::LoginRequired)
        .then(|| PlaidError::new("ITEM_LOGIN_REQUIRED").body(request_id));
    json!({
        "item_id": info.item_id,
        "institution_id": info.institution_id,
        "webhook": null,
        "error": error,
        "available_products": ["investments", "liabilities"],
        "billed_products": ["auth", "identity", "transactions"],
        "products": ["auth", "balance", "identity", "transactions"],
        "consented_products": ["auth", "balance", "identity", "transactions"],
        "consent_expiration_time": info.consent_expiration_time.map(crate::seeded::rfc3339),
        "update_type": "background",
        "created_at": info.created_at.map(crate::seeded::rfc3339),
    })
}

/// A sync position: which Item, which data epoch, how many transactions already delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    user: u64,
    epoch: u64,
    offset: u64,
}

impl Cursor {
    /// An opaque string: the fields masked with seed-derived keys, and a check word so an
    /// edited or foreign cursor is refused rather than misread.
    fn encode(self, seed: u64) -> String {
        let [k1, k2, k3, k4] = cursor_keys(seed);
        let check = cursor_check(seed, self);
        format!(
            "{:016x}{:016x}{:016x}{:016x}",
            self.user ^ k1,
            self.epoch ^ k2,
            self.offset ^ k3,
            check ^ k4
        )
    }

    fn decode(seed: u64, s: &str) -> Option<Cursor> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let word = |i: usize| u64::from_str_radix(&s[i * 16..(i + 1) * 16], 16).ok();
        let [k1, k2, k3, k4] = cursor_keys(seed);
        let cursor = Cursor {
            user: word(0)? ^ k1,
            epoch: word(1)? ^ k2,
            offset: word(2)? ^ k3,
        };
        (word(3)? ^ k4 == cursor_check(seed, cursor)).then_some(cursor)
    }
}

fn cursor_keys(seed: u64) -> [u64; 4] {
    let mut g = SplitMix64::for_entity(seed, "plaid_cursor_keys", 0);
    [g.next_u64(), g.next_u64(), g.next_u64(), g.next_u64()]
}

fn cursor_check(seed: u64, c: Cursor) -> u64 {
    let mut g = SplitMix64::for_entity(seed ^ c.epoch.rotate_left(17), "plaid_cursor", c.user);
    g.next_u64() ^ c.offset.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// `/transactions/sync`: no cursor is the whole history, paged by `count`, oldest first.
fn sync(seed: u64, user: u64, runtime: ItemRuntime, params: &Params) -> Result<Value, PlaidError> {
    if runtime.state == ItemState::NotReady {
        return Ok(json!({
            "added": [], "modified": [], "removed": [],
            "next_cursor": "",
            "has_more": false,
            "transactions_update_status": "NOT_READY",
            "accounts": [],
        }));
    }
    let txns = data::transactions(seed, user);
    let total = txns.len() as u64;
    let start = match &params.cursor {
        None => 0,
        Some(s) => {
            let cursor = Cursor::decode(seed, s)
                .filter(|c| c.user == user && c.offset <= total)
                .ok_or_else(|| invalid_field("cursor is not valid for this access_token"))?;
            // Data changed since this cursor was issued in the middle of a pagination: Plaid
            // makes the client restart from the loop's first cursor rather than mix versions.
            if cursor.epoch != runtime.sync_epoch && cursor.offset > 0 && cursor.offset < total {
                return Err(PlaidError::new(
                    "TRANSACTIONS_SYNC_MUTATION_DURING_PAGINATION",
                ));
            }
            cursor.offset
        }
    };
    let end = (start + params.count).min(total);
    let added: Vec<Value> = txns[start as usize..end as usize]
        .iter()
        .map(data::Transaction::to_json)
        .collect();
    let next = Cursor {
        user,
        epoch: runtime.sync_epoch,
        offset: end,
    };
    Ok(json!({
        "added": added,
        "modified": [],
        "removed": [],
        "next_cursor": next.encode(seed),
        "has_more": end < total,
        "transactions_update_status": "HISTORICAL_UPDATE_COMPLETE",
        "accounts": data::accounts(seed, user).iter().map(data::Account::to_json).collect::<Vec<_>>(),
    }))
}

/// Lowercase alphanumeric words.
fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// 0-100: the share of words in common, 100 only for the same words.
fn word_score(given: &str, actual: &str) -> u64 {
    let (g, a) = (words(given), words(actual));
    if g.is_empty() || a.is_empty() {
        return 0;
    }
    let common = g.iter().filter(|w| a.contains(w)).count();
    (100 * common / g.len().max(a.len())) as u64
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// `/identity/match` scores of the given user against the Item's owner; fields not given are
/// null, as in Plaid.
fn match_scores(owner: &data::Identity, user: Option<&Map<String, Value>>) -> Value {
    let field = |name: &str| user.and_then(|u| u.get(name));
    let text = |name: &str| field(name).and_then(Value::as_str);
    let legal_name = text("legal_name").map(|given| {
        let score = word_score(given, &owner.legal_name);
        let any_word = words(given)
            .iter()
            .any(|w| words(&owner.legal_name).contains(w));
        json!({
            "score": score,
            "is_first_name_or_last_name_match": any_word,
            "is_nickname_match": false,
            "is_business_name_detected": false,
        })
    });
    let phone_number = text("phone_number").map(|given| {
        let (g, a) = (digits(given), digits(&owner.phone_number));
        let tail = |d: &str| d[d.len().saturating_sub(10)..].to_owned();
        json!({ "score": if !g.is_empty() && tail(&g) == tail(&a) { 100 } else { 0 } })
    });
    let email_address = text("email_address").map(|given| {
        let given = given.trim().to_lowercase();
        let local = |e: &str| e.split('@').next().unwrap_or_default().to_owned();
        let score = if given == owner.email_address {
            100
        } else if local(&given) == local(&owner.email_address) {
            70
        } else {
            0
        };
        json!({ "score": score })
    });
    let address = field("address").and_then(Value::as_object).map(|given| {
        let part = |k: &str| given.get(k).and_then(Value::as_str).unwrap_or_default();
        let a = &owner.address;
        let street = word_score(part("street"), &a.street);
        let place = word_score(
            &format!("{} {}", part("city"), part("region")),
            &format!("{} {}", a.city, a.region),
        );
        let postal = digits(part("postal_code"));
        let is_postal_code_match = postal.len() >= 5 && postal[..5] == a.postal_code[..5];
        let score = (street * 6 + place * 2 + if is_postal_code_match { 200 } else { 0 }) / 10;
        json!({ "score": score, "is_postal_code_match": is_postal_code_match })
    });
    json!({
        "legal_name": legal_name,
        "phone_number": phone_number,
        "email_address": email_address,
        "address": address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_edits() {
        let c = Cursor {
            user: 12,
            epoch: 3,
            offset: 140,
        };
        let s = c.encode(9);
        assert_eq!(Cursor::decode(9, &s), Some(c));
        assert_eq!(Cursor::decode(10, &s), None, "another seed");
        let mut edited = s.clone();
        edited.replace_range(40..41, if &s[40..41] == "0" { "1" } else { "0" });
        assert_eq!(Cursor::decode(9, &edited), None);
        assert_eq!(Cursor::decode(9, "abc"), None);
    }

    #[test]
    fn every_error_code_used_here_is_in_the_table() {
        for source in [include_str!("plaid.rs"), include_str!("plaid/limits.rs")] {
            for part in source.split('"').skip(1).step_by(2) {
                let looks_like_code = part.len() > 3
                    && part.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                    && part.contains('_');
                let exceptions = [
                    "INVALID_REQUEST",
                    "INVALID_INPUT",
                    "ITEM_ERROR",
                    "VERY_HIGH",
                    "NOT_READY",
                    "HISTORICAL_UPDATE_COMPLETE",
                ];
                if looks_like_code && !exceptions.contains(&part) {
                    assert!(
                        error::error_code(part).is_some(),
                        "{part} is not in ERROR_CODES"
                    );
                }
            }
        }
    }

    #[test]
    fn imported_items_answer_to_their_own_tokens_and_survive_a_reset() {
        let state = PlaidState::new(3, 10, PlaidConfig::default()).expect("valid config");
        let token = "k1' OR '1'='1";
        let fields = ItemFields {
            institution_id: Some("ins_x".into()),
            ..ItemFields::default()
        };
        let id = state.import_item(token, fields).expect("imported");
        assert_eq!(state.user_of_token(token), Some(10), "past the population");
        assert_eq!(state.user_of_item(&id).ok(), Some(10));
        assert_eq!(state.item_info(10).institution_id.as_deref(), Some("ins_x"));
        // Importing again replaces the fields and keeps the Item.
        let again = state
            .import_item(token, ItemFields::default())
            .expect("imported");
        assert_eq!(again, id);
        assert_eq!(state.item_info(10).institution_id, None);
        assert!(state.import_item("", ItemFields::default()).is_err());
        let seeded = state.access_token(3);
        assert!(state.import_item(&seeded, ItemFields::default()).is_err());
        assert_eq!(state.user_of_token("k1"), None);

        state
            .set_item_state(&id, ItemState::LoginRequired)
            .expect("a known item");
        state.reset();
        assert_eq!(state.item_state(&id), Some(ItemState::Healthy));
        assert_eq!(state.user_of_token(token), Some(10));
    }

    #[test]
    fn identity_match_scores_exact_and_partial() {
        let owner = data::identity(1, 2);
        let user: Map<String, Value> = serde_json::from_value(json!({
            "legal_name": owner.legal_name.to_uppercase(),
            "phone_number": owner.phone_number.trim_start_matches("+1"),
            "email_address": "someone@else.org",
            "address": {"street": owner.address.street, "postal_code": owner.address.postal_code},
        }))
        .expect("object");
        let scores = match_scores(&owner, Some(&user));
        assert_eq!(scores["legal_name"]["score"], 100);
        assert_eq!(scores["phone_number"]["score"], 100);
        assert_eq!(scores["email_address"]["score"], 0);
        assert_eq!(scores["address"]["is_postal_code_match"], true);
        assert!(scores["address"]["score"].as_u64().is_some_and(|s| s >= 80));
        assert_eq!(match_scores(&owner, None)["legal_name"], Value::Null);
    }
}
