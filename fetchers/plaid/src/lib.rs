//! The `plaid` source: features derived from Plaid's API (balances, transactions, Item health,
//! identity match) for an Item whose access token comes from another view.
//!
//! # Configuration
//! ```toml
//! [entities.user_id]
//! type = "string"
//! [entities.plaid_access_token]
//! type = "string"
//! from = "linked_items:access_token"     # a dependent key: read from PostgreSQL first
//! [entities.applicant_email]
//! type = "string"
//! from = "context:email"
//!
//! [sources.plaid]
//! kind = "plaid"
//! base_url = "https://production.plaid.com"   # the default; sandbox.plaid.com, or a fake
//! client_id = "${PLAID_CLIENT_ID}"
//! secret = "${PLAID_SECRET}"                  # must be a ${NAME} reference; never logged
//! request_timeout = "30s"                     # optional: bound on one call (deadline wins)
//! connect_timeout = "2s"                      # optional
//! max_concurrent_requests = 64                # optional: calls in flight across the source
//! transactions_page_size = 500                # optional: `count` of /transactions/sync
//! transactions_max_pages = 100                # optional
//! # as_of = "2025-06-01T12:00:00Z"            # optional: a fixed "now" for replays and tests
//!
//! [views.plaid_balance]
//! source = "plaid"
//! entities = ["plaid_access_token"]
//! endpoint = "balance"                        # balance | accounts | transactions | item | identity_match
//! currency = "USD"                            # optional: the currency amounts are summed in
//! features = { available_total = { type = "double" }, utilisation = { type = "double" } }
//!
//! [views.plaid_identity]
//! source = "plaid"
//! entities = ["plaid_access_token", "applicant_email"]
//! endpoint = "identity_match"
//! access_token = "plaid_access_token"         # optional: default the first key
//! user = { email_address = "applicant_email" }
//! features = { email_address_score = { type = "int64" } }
//! ```
//!
//! Features per endpoint (each with its one type; see [`features`] for the definitions):
//! - `balance`, `accounts`: `available_total`, `current_total`, `credit_balance_total`,
//!   `limit_total`, `utilisation` (double); `account_count`, `depository_count`,
//!   `credit_count`, `loan_count`, `investment_count` (int64).
//! - `transactions`: `debit_count_{1,7,30}d`, `credit_count_{1,7,30}d` (int64),
//!   `debit_sum_{1,7,30}d`, `credit_sum_{1,7,30}d` (double), `pending_count`,
//!   `transaction_count`, `overdraft_fee_count_30d`, `bank_fee_count_30d`,
//!   `distinct_merchants_30d`, `days_since_oldest_txn`, `days_since_latest_txn` (int64).
//! - `item`: `item_age_days`, `days_until_consent_expiration` (int64), `has_error` (bool),
//!   `error_code`, `institution_id` (string), `hours_since_last_successful_update` (double).
//! - `identity_match`: `legal_name_score`, `phone_number_score`, `email_address_score`,
//!   `address_score` (int64), `is_postal_code_match` (bool).
//!
//! # Layout
//! - [`config`]: the option structs and their pure compilation (what `validate` checks).
//! - [`features`]: the feature catalog per endpoint and the derivations, pure and clock-free.
//! - [`error`]: Plaid's error codes, classified (class, retryable, batch or row).
//! - [`fetcher`]: [`PlaidFetcher`], the calls, the sync loop, deadlines.
//! - [`time`]: Plaid's dates as day counts.
//!
//! # Failure
//! Validation names every bad option and every feature an endpoint does not provide (or
//! provides with another type). Building fails on an unset credential variable (naming the
//! option and the variable, never a value). At fetch time see [`fetcher`] and [`error`].
//! A Plaid call takes seconds (balance: ~3 s median, 11 s p95), so Plaid views belong behind
//! the gateway's cache; the fetcher itself never waits past the request's deadline.

#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod features;
pub mod fetcher;
pub mod time;

use std::{borrow::Cow, sync::Arc};

use async_trait::async_trait;
use fetcher_api::{BuildError, Env, EnvTemplate, Fetcher, FetcherFactory, Problem, SourceSpec};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

pub use config::{PlaidSourceConfig, PlaidViewConfig};
pub use features::{Endpoint, Feature};
pub use fetcher::PlaidFetcher;

/// The Plaid API version the fetcher speaks (and decodes).
pub const PLAID_VERSION: &str = "2020-09-14";

/// Builds `plaid` fetchers.
#[derive(Clone, Debug, Default)]
pub struct PlaidFactory {
    /// Where `${NAME}` in `client_id` and `secret` is looked up (see [`fetcher_api::secret`]).
    env: Env,
}

impl PlaidFactory {
    /// A factory that resolves credentials from the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory that resolves `${NAME}` with `env` instead (tests, or a secrets store).
    pub fn with_env(env: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        PlaidFactory {
            env: Env::from_fn(env),
        }
    }
}

/// Resolves a credential into a sensitive header value. Messages name the option and the
/// variable, never the value.
fn credential(option: &str, template: &EnvTemplate, env: &Env) -> Result<HeaderValue, String> {
    let text = template
        .resolve(env, |value| Cow::Borrowed(value))
        .map_err(|e| format!("{option}: {e}"))?;
    if text.is_empty() {
        return Err(format!("{option}: the resolved value is empty"));
    }
    let mut value = HeaderValue::from_str(&text).map_err(|_| {
        format!("{option}: the resolved value holds characters a header cannot carry")
    })?;
    // Keeps the value out of reqwest's and hyper's debug output and out of HPACK tables.
    value.set_sensitive(true);
    Ok(value)
}

#[async_trait]
impl FetcherFactory for PlaidFactory {
    fn kind(&self) -> &'static str {
        "plaid"
    }

    fn validate(&self, source: &SourceSpec) -> Vec<Problem> {
        fetcher_api::validate_options(source, config::compile_source, config::compile_view)
    }

    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let (compiled, views) =
            fetcher_api::build_options(source, config::compile_source, config::compile_view)?;
        let fail = |message: String| BuildError::new(source, message);
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("plaid-client-id"),
            credential("client_id", &compiled.client_id, &self.env).map_err(fail)?,
        );
        headers.insert(
            HeaderName::from_static("plaid-secret"),
            credential("secret", &compiled.secret, &self.env).map_err(fail)?,
        );
        headers.insert(
            HeaderName::from_static("plaid-version"),
            HeaderValue::from_static(PLAID_VERSION),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(compiled.connect_timeout)
            .tcp_nodelay(true)
            // A redirect could carry the credentials to another host; Plaid does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(format!("cannot create the HTTP client: {e}")))?;
        Ok(Arc::new(PlaidFetcher::new(
            source.name.clone(),
            client,
            &compiled,
            views,
        )))
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::{FeatureType, KeySpec, Options, ViewSpec, config::join};

    use super::*;

    fn options(text: &str) -> Options {
        Options(text.parse().expect("valid TOML"))
    }

    fn view(
        name: &str,
        keys: &[(&str, FeatureType)],
        features: &[(&str, FeatureType)],
        text: &str,
    ) -> ViewSpec {
        ViewSpec {
            name: name.into(),
            keys: keys
                .iter()
                .map(|(k, ty)| KeySpec {
                    name: (*k).into(),
                    ty: *ty,
                })
                .collect(),
            features: features.iter().map(|(f, t)| ((*f).into(), *t)).collect(),
            options: options(text),
        }
    }

    fn source(source_options: &str, views: Vec<ViewSpec>) -> SourceSpec {
        SourceSpec {
            name: "plaid".into(),
            kind: "plaid".into(),
            options: options(source_options),
            views,
            base_dir: ".".into(),
        }
    }

    const TOKEN: (&str, FeatureType) = ("plaid_access_token", FeatureType::String);
    const CREDS: &str = r#"client_id = "${PLAID_CLIENT_ID}"
                           secret = "${PLAID_SECRET}""#;

    #[test]
    fn a_good_source_validates() {
        use FeatureType::*;
        let spec = source(
            &format!(
                "{CREDS}\nbase_url = \"http://127.0.0.1:1\"\nrequest_timeout = \"5s\"\nas_of = \"2025-06-01T12:00:00Z\""
            ),
            vec![
                view(
                    "bal",
                    &[TOKEN],
                    &[("available_total", Double), ("credit_count", Int64)],
                    r#"endpoint = "balance""#,
                ),
                view(
                    "txn",
                    &[TOKEN],
                    &[("debit_sum_7d", Double), ("days_since_oldest_txn", Int64)],
                    r#"endpoint = "transactions"
                       currency = "EUR""#,
                ),
                view(
                    "item",
                    &[TOKEN],
                    &[("has_error", Bool), ("error_code", String)],
                    r#"endpoint = "item""#,
                ),
                view(
                    "idm",
                    &[("email", String), TOKEN],
                    &[("email_address_score", Int64)],
                    r#"endpoint = "identity_match"
                       access_token = "plaid_access_token"
                       user = { email_address = "email" }"#,
                ),
            ],
        );
        assert_eq!(
            PlaidFactory::new().validate(&spec),
            Vec::<std::string::String>::new()
        );
    }

    #[test]
    fn every_problem_is_reported_naming_its_option_and_view() {
        use FeatureType::*;
        let spec = source(
            r#"base_url = "ftp://x"
               client_id = "${A-B}"
               secret = "literal-s3cr3t"
               max_concurrent_requests = 0
               transactions_page_size = 501
               as_of = "yesterday""#,
            vec![
                view(
                    "unknown",
                    &[TOKEN],
                    &[],
                    "endpoint = \"balance\"\ncolour = \"red\"",
                ),
                view("endpoint", &[TOKEN], &[], "endpoint = \"auth\""),
                view(
                    "feature",
                    &[TOKEN],
                    &[("utilisation", Double), ("debit_count_7d", Int64)],
                    r#"endpoint = "balance""#,
                ),
                view(
                    "typed",
                    &[TOKEN],
                    &[("debit_count_7d", Double)],
                    r#"endpoint = "transactions""#,
                ),
                view(
                    "keys",
                    &[("plaid_access_token", Int64), ("other", String)],
                    &[],
                    r#"endpoint = "item""#,
                ),
                view(
                    "user",
                    &[TOKEN, ("email", String)],
                    &[],
                    r#"endpoint = "identity_match"
                       user = { email_address = "mail", shoe_size = "email" }"#,
                ),
                view("nokey", &[], &[], r#"endpoint = "item""#),
                view(
                    "currency",
                    &[TOKEN],
                    &[],
                    "endpoint = \"balance\"\ncurrency = \"usd\"",
                ),
            ],
        );
        let text = join(&PlaidFactory::new().validate(&spec), "\n");
        for e in [
            "base_url: `ftp://x` must be an http:// or https:// URL",
            "client_id: `${A-B}` is not an environment variable reference",
            "secret: must reference an environment variable",
            "max_concurrent_requests: must be at least 1",
            "transactions_page_size: must be from 1 to 500",
            "as_of: `yesterday` is not an RFC 3339 date-time",
            "view `unknown`: colour: unknown field `colour`",
            "view `endpoint`: unknown variant `auth`",
            "view `feature`: feature `debit_count_7d` is not one the balance endpoint provides",
            "view `typed`: feature `debit_count_7d` is int64, declared as double",
            "view `keys`: the access token key `plaid_access_token` must be a string entity",
            "view `keys`: the entity key `other` is neither the access token nor a `user` field",
            "view `user`: user.email_address: `mail` is not an entity key of the view",
            "view `user`: user.shoe_size: unknown field",
            "view `user`: the entity key `email` is neither the access token nor a `user` field",
            "view `nokey`: needs an entity key holding the Plaid access token",
            "view `currency`: currency: `usd` must be an ISO 4217 code",
        ] {
            assert!(text.contains(e), "missing `{e}` in:\n{text}");
        }
        assert!(!text.contains("literal-s3cr3t"), "{text}");
    }

    #[tokio::test]
    async fn build_names_a_missing_variable_but_never_a_value() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let spec = source(
            &format!("{CREDS}\nbase_url = \"http://127.0.0.1:1\""),
            vec![view(
                "bal",
                &[TOKEN],
                &[("account_count", FeatureType::Int64)],
                r#"endpoint = "balance""#,
            )],
        );
        let factory =
            PlaidFactory::with_env(|name| (name == "PLAID_CLIENT_ID").then(|| "client".into()));
        let err = factory.build(&spec).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "source `plaid`: secret: environment variable `PLAID_SECRET` is not set"
        );
        let factory = PlaidFactory::with_env(|_| Some("s3cr3t\nvalue".into()));
        let err = factory.build(&spec).await.unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let factory = PlaidFactory::with_env(|_| Some("s3cr3t-value".into()));
        let fetcher = factory.build(&spec).await.expect("builds");
        assert!(!format!("{fetcher:?}").contains("s3cr3t"));
        let config: PlaidSourceConfig = spec.options.parse().expect("parses");
        assert!(!format!("{config:?}").contains("PLAID_SECRET"));
    }
}
