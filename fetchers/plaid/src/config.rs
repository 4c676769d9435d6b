//! The options of a `plaid` source and of its views, and their pure compilation.
//!
//! [`compile_source`] and [`compile_view`] check everything that needs no I/O (the URL, the
//! `${NAME}` syntax of the credentials, durations, each view's endpoint, keys and declared
//! features against what the endpoint provides) and return every problem, positioned at the
//! option it concerns ([`Problem`]). `validate` and `build` share them. Credentials are read from the
//! environment only at build time and never appear in a message or in `Debug` output.

use std::{collections::BTreeMap, time::Duration};

use fetcher_api::{ConfigDuration, EnvTemplate, FeatureType, Problem, ViewSpec};
use serde::Deserialize;
use url::Url;

use crate::features::{self, Endpoint};

/// Plaid's production API.
pub const PRODUCTION_URL: &str = "https://production.plaid.com";
/// The default bound on one HTTP call: Plaid documents `/accounts/balance/get` at 11 s p95 and
/// "occasionally 30 s or more"; the request's deadline applies when shorter, as it always is on
/// the serving path.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The default bound on opening a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The source-level options of a `plaid` source.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaidSourceConfig {
    /// Plaid's base URL: `https://production.plaid.com` (the default) or
    /// `https://sandbox.plaid.com`; tests point it at a fake on loopback.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The Plaid client id, sent as the `PLAID-CLIENT-ID` header. May reference environment
    /// variables as `${NAME}`, resolved when the source is built.
    pub client_id: String,
    /// The Plaid secret, sent as the `PLAID-SECRET` header. Must reference an environment
    /// variable (`"${PLAID_SECRET}"`): a secret written into the file is refused. Never logged,
    /// never in an error message nor in `Debug` output.
    pub secret: String,
    /// Upper bound on one HTTP call (default 30s); the request's remaining deadline applies
    /// when shorter.
    #[serde(default)]
    pub request_timeout: Option<ConfigDuration>,
    /// Upper bound on opening a connection (default 2s).
    #[serde(default)]
    pub connect_timeout: Option<ConfigDuration>,
    /// Most HTTP calls in flight to Plaid at once across the source's views (default 64);
    /// more wait for a slot, within their deadline.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// `count` of each `/transactions/sync` page, 1 to 500 (default 500: fewer round trips).
    #[serde(default = "default_page_size")]
    pub transactions_page_size: u32,
    /// Most `/transactions/sync` pages one fetch follows before giving up (default 100, i.e.
    /// 50,000 transactions at the default page size).
    #[serde(default = "default_max_pages")]
    pub transactions_max_pages: u32,
    /// Compute time-relative features (windows, ages) as of this RFC 3339 instant instead of
    /// the wall clock: for replaying a past day, and for tests against recorded data.
    #[serde(default)]
    pub as_of: Option<String>,
}

fn default_base_url() -> String {
    PRODUCTION_URL.into()
}
fn default_max_concurrent_requests() -> usize {
    64
}
fn default_page_size() -> u32 {
    500
}
fn default_max_pages() -> u32 {
    100
}

// Hand-written: the credentials as written may be literals.
impl std::fmt::Debug for PlaidSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaidSourceConfig")
            .field("base_url", &self.base_url)
            .field("client_id", &"<redacted>")
            .field("secret", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .finish_non_exhaustive()
    }
}

/// The options of a view of a `plaid` source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaidViewConfig {
    /// Which Plaid call the view's features are derived from: `balance`
    /// (`/accounts/balance/get`, real time, slow), `accounts` (`/accounts/get`, Plaid's cached
    /// balances), `transactions` (`/transactions/sync`, paged to completion), `item`
    /// (`/item/get`) or `identity_match` (`/identity/match`).
    pub endpoint: Endpoint,
    /// The entity key holding the Item's access token (default: the view's first key).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Only amounts in this ISO currency are summed (default `USD`); accounts and transactions
    /// in other currencies are left out of sums, so totals never mix currencies.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// `identity_match` only: which entity key holds each field of the user to match, e.g.
    /// `{ legal_name = "applicant_name", email_address = "applicant_email" }`. Fields:
    /// `legal_name`, `phone_number`, `email_address`, and the address's `street`, `city`,
    /// `region`, `postal_code`, `country`. The keys typically come from the request's context
    /// (`from = "context:..."`). A field whose key is empty is not sent.
    #[serde(default)]
    pub user: BTreeMap<String, String>,
}

fn default_currency() -> String {
    "USD".into()
}

/// The user fields `/identity/match` takes, and whether each belongs to `user.address`.
pub const USER_FIELDS: [(&str, bool); 8] = [
    ("legal_name", false),
    ("phone_number", false),
    ("email_address", false),
    ("street", true),
    ("city", true),
    ("region", true),
    ("postal_code", true),
    ("country", true),
];

/// A source's options, checked. `Debug` is safe: [`EnvTemplate`] prints reference names only.
#[derive(Clone, Debug)]
pub struct CompiledSource {
    /// Without a trailing slash.
    pub base_url: String,
    pub client_id: EnvTemplate,
    pub secret: EnvTemplate,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_concurrent_requests: usize,
    pub page_size: u32,
    pub max_pages: u32,
    /// Unix seconds, if the clock is fixed.
    pub as_of: Option<i64>,
}

/// A view's options, checked.
#[derive(Clone, Debug)]
pub struct CompiledView {
    pub name: String,
    pub endpoint: Endpoint,
    /// The index of the access token among the view's keys.
    pub token_key: usize,
    pub currency: String,
    /// `identity_match`: (user field, is an address part, key index).
    pub user: Vec<(&'static str, bool, usize)>,
    /// Every declared feature, as a feature of the endpoint.
    pub features: BTreeMap<String, features::Feature>,
}

/// Checks a source's options.
pub fn compile_source(config: &PlaidSourceConfig) -> Result<CompiledSource, Vec<Problem>> {
    let mut problems = Vec::new();
    let at = |option: &str, message: String| Problem::new(message).at(option);
    match Url::parse(&config.base_url) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none() => {}
        Ok(_) => problems.push(at(
            "base_url",
            format!(
                "`{}` must be an http:// or https:// URL without credentials, query or fragment",
                config.base_url
            ),
        )),
        Err(e) => problems.push(at("base_url", format!("`{}`: {e}", config.base_url))),
    }
    let client_id = EnvTemplate::parse(&config.client_id)
        .map_err(|e| problems.push(at("client_id", e.to_string())))
        .ok();
    let secret = match EnvTemplate::parse(&config.secret) {
        Ok(t) if t.env_names().next().is_none() => {
            // The message never repeats the value.
            problems.push(at(
                "secret",
                "must reference an environment variable (e.g. \"${PLAID_SECRET}\"), not hold \
                 the secret itself"
                    .into(),
            ));
            None
        }
        Ok(t) => Some(t),
        Err(e) => {
            problems.push(at("secret", e.to_string()));
            None
        }
    };
    let request_timeout = config
        .request_timeout
        .map_or(DEFAULT_REQUEST_TIMEOUT, ConfigDuration::get);
    let connect_timeout = config
        .connect_timeout
        .map_or(DEFAULT_CONNECT_TIMEOUT, ConfigDuration::get);
    if request_timeout.is_zero() {
        problems.push(at("request_timeout", "must be more than zero".into()));
    }
    if connect_timeout.is_zero() {
        problems.push(at("connect_timeout", "must be more than zero".into()));
    }
    if config.max_concurrent_requests == 0 {
        problems.push(at("max_concurrent_requests", "must be at least 1".into()));
    }
    if !(1..=500).contains(&config.transactions_page_size) {
        problems.push(at(
            "transactions_page_size",
            format!(
                "must be from 1 to 500 (Plaid's bounds), got {}",
                config.transactions_page_size
            ),
        ));
    }
    if config.transactions_max_pages == 0 {
        problems.push(at("transactions_max_pages", "must be at least 1".into()));
    }
    let as_of = match config.as_of.as_deref().map(crate::time::parse_datetime) {
        None => None,
        Some(Some(t)) => Some(t),
        Some(None) => {
            problems.push(at(
                "as_of",
                format!(
                    "`{}` is not an RFC 3339 date-time (e.g. 2025-06-01T12:00:00Z)",
                    config.as_of.as_deref().unwrap_or_default()
                ),
            ));
            None
        }
    };
    match (client_id, secret) {
        (Some(client_id), Some(secret)) if problems.is_empty() => Ok(CompiledSource {
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            client_id,
            secret,
            request_timeout,
            connect_timeout,
            max_concurrent_requests: config.max_concurrent_requests,
            page_size: config.transactions_page_size,
            max_pages: config.transactions_max_pages,
            as_of,
        }),
        _ => Err(problems),
    }
}

/// Checks a view's options against its keys and declared features. The problems are the view's
/// (its caller places them on it).
pub fn compile_view(
    view: &ViewSpec,
    config: &PlaidViewConfig,
) -> Result<CompiledView, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut fail = |problem: Problem| problems.push(problem);
    let key_index = |name: &str| view.keys.iter().position(|k| k.name == name);

    let token_key = match &config.access_token {
        None if view.keys.is_empty() => {
            fail(Problem::new(
                "needs an entity key holding the Plaid access token",
            ));
            None
        }
        None => Some(0),
        Some(name) => {
            let index = key_index(name);
            if index.is_none() {
                fail(
                    Problem::new(format!("`{name}` is not an entity key of the view"))
                        .at("access_token"),
                );
            }
            index
        }
    };
    if let Some(key) = token_key.map(|i| &view.keys[i])
        && key.ty != FeatureType::String
    {
        fail(Problem::new(format!(
            "the access token key `{}` must be a string entity, not {}",
            key.name, key.ty
        )));
    }

    let mut user = Vec::new();
    if config.endpoint == Endpoint::IdentityMatch {
        if config.user.is_empty() {
            fail(Problem::new(
                "identity_match needs `user`: which entity key holds each user field",
            ));
        }
        for (field, key) in &config.user {
            let at = |message: String| Problem::new(message).at("user").at(field);
            let Some((name, in_address)) = USER_FIELDS.iter().find(|(f, _)| f == field) else {
                let known: Vec<_> = USER_FIELDS.iter().map(|(f, _)| *f).collect();
                fail(at(format!("unknown field (known: {})", known.join(", "))));
                continue;
            };
            match key_index(key) {
                None => fail(at(format!("`{key}` is not an entity key of the view"))),
                Some(i) if Some(i) == token_key => {
                    fail(at(format!("`{key}` is the access token key")));
                }
                Some(i) if view.keys[i].ty != FeatureType::String => fail(at(format!(
                    "the key `{key}` must be a string entity, not {}",
                    view.keys[i].ty
                ))),
                Some(i) => user.push((*name, *in_address, i)),
            }
        }
    } else if !config.user.is_empty() {
        fail(Problem::new("applies only to endpoint = \"identity_match\"").at("user"));
    }
    // Every key must be used, so a key that silently changes nothing cannot be configured.
    for (i, key) in view.keys.iter().enumerate() {
        if Some(i) != token_key && !user.iter().any(|(_, _, k)| *k == i) {
            fail(Problem::new(format!(
                "the entity key `{}` is neither the access token nor a `user` field",
                key.name
            )));
        }
    }
    if config.currency.len() != 3 || !config.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        fail(
            Problem::new(format!(
                "`{}` must be an ISO 4217 code such as USD",
                config.currency
            ))
            .at("currency"),
        );
    }

    let mut compiled = BTreeMap::new();
    for (feature, ty) in &view.features {
        match features::Feature::parse(config.endpoint, feature) {
            None => fail(Problem::new(format!(
                "feature `{feature}` is not one the {} endpoint provides (known: {})",
                config.endpoint.name(),
                features::catalog(config.endpoint)
                    .iter()
                    .map(|(f, t)| format!("{f}: {t}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Some(f) if f.ty() != *ty => fail(Problem::new(format!(
                "feature `{feature}` is {}, declared as {ty}",
                f.ty()
            ))),
            Some(f) => {
                compiled.insert(feature.clone(), f);
            }
        }
    }
    match token_key {
        Some(token_key) if problems.is_empty() => Ok(CompiledView {
            name: view.name.clone(),
            endpoint: config.endpoint,
            token_key,
            currency: config.currency.clone(),
            user,
            features: compiled,
        }),
        _ => Err(problems),
    }
}
