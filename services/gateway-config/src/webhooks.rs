//! `[plaid_webhooks]`: Plaid's webhooks on the admin port, refreshing the cached views of the
//! Items they name.

use std::time::Duration;

use serde::Deserialize;

/// `[plaid_webhooks]`: accept Plaid's webhooks and refresh the cached views of the Items they
/// name (see `crate::webhooks`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlaidWebhooks {
    /// The `plaid` source whose cache the webhooks refresh; its `base_url` and credentials
    /// fetch the verification keys.
    pub source: String,
    /// Oldest `iat` (issue time of the webhook's JWT) accepted. Default "5m", as Plaid advises.
    #[serde(default)]
    pub max_age: Option<String>,
}

/// `[plaid_webhooks]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PlaidWebhooksConfig {
    /// The `plaid` source.
    pub source: String,
    /// Oldest accepted `iat`.
    pub max_age: Duration,
}
