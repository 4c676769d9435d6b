//! Per-Item and per-client rate limits, per endpoint, over a sliding window.
//!
//! # Contract
//! A call is admitted when, within the last `window` (60 s by default, as Plaid's "per minute"),
//! fewer than `per_item` calls of that endpoint were admitted for its Item and fewer than
//! `per_client` for its client. A refused call is not recorded, so a client that backs off is
//! served again as soon as old calls leave the window. The window is a sliding log of
//! admission instants: exact, and small enough (at most `per_client` instants per endpoint).
//!
//! The window is not multiplied by the latency time scale: a scale of 0 (no delays) must not
//! switch rate limiting off. Tests shorten the window itself instead
//! ([`RateLimitPlan::window_ms`]).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The limits of one endpoint; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Calls per window for one Item.
    pub per_item: Option<u32>,
    /// Calls per window for one client id.
    pub per_client: Option<u32>,
}

/// The rate-limit configuration: a window and the limits of each route (by route name, e.g.
/// `plaid_accounts_balance_get`). Routes left out are unlimited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The window length in milliseconds (Plaid: one minute).
    pub window_ms: u64,
    /// Route name to its limits.
    pub routes: BTreeMap<String, RateLimit>,
}

impl RateLimitConfig {
    /// No route limited: a test about something else than Plaid's limits.
    pub fn unlimited() -> Self {
        RateLimitConfig {
            window_ms: 60_000,
            routes: BTreeMap::new(),
        }
    }
}

impl Default for RateLimitConfig {
    /// Plaid's documented production limits.
    fn default() -> Self {
        let limit = |per_item, per_client| RateLimit {
            per_item: Some(per_item),
            per_client: Some(per_client),
        };
        RateLimitConfig {
            window_ms: 60_000,
            routes: [
                (super::ACCOUNTS_BALANCE_GET, limit(5, 1_200)),
                (super::ACCOUNTS_GET, limit(15, 15_000)),
                (super::TRANSACTIONS_SYNC, limit(50, 2_500)),
                (super::IDENTITY_GET, limit(15, 2_000)),
                // Not in the contract's table; Plaid groups it with identity, so it gets the same.
                (super::IDENTITY_MATCH, limit(15, 2_000)),
                (super::AUTH_GET, limit(15, 12_000)),
                (super::ITEM_GET, limit(15, 5_000)),
            ]
            .into_iter()
            .map(|(route, l)| (route.to_owned(), l))
            .collect(),
        }
    }
}

/// A change of rate limits: an optional new window, and routes whose limits are replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitPlan {
    /// The new window in milliseconds (must be > 0).
    pub window_ms: Option<u64>,
    /// Route name (or `*`) to its new limits.
    pub routes: BTreeMap<String, RateLimit>,
}

/// Which limit refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Item,
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    Item(u64),
    Client(String),
}

/// The sliding windows of every (route, scope) seen.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    config: RateLimitConfig,
    windows: HashMap<(&'static str, Scope), VecDeque<Instant>>,
}

impl RateLimiter {
    pub(crate) fn new(config: RateLimitConfig) -> Self {
        RateLimiter {
            config,
            windows: HashMap::new(),
        }
    }

    pub(crate) fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Replaces the configuration. Windows already recorded stay: a lowered limit applies to
    /// calls already made, as it would on a real server.
    pub(crate) fn set_config(&mut self, config: RateLimitConfig) {
        self.config = config;
    }

    /// Admits (and records) one call of `route` for `item` by `client`, or says which limit it
    /// exceeds. The Item limit is checked first: it is the lower one and the one a single
    /// user's traffic hits.
    pub(crate) fn admit(
        &mut self,
        route: &'static str,
        item: u64,
        client: &str,
        now: Instant,
    ) -> Result<(), Exceeded> {
        let Some(limit) = self.config.routes.get(route).copied() else {
            return Ok(());
        };
        let window = Duration::from_millis(self.config.window_ms);
        let checks = [
            (limit.per_item, Scope::Item(item), Exceeded::Item),
            (
                limit.per_client,
                Scope::Client(client.to_owned()),
                Exceeded::Client,
            ),
        ];
        for (max, scope, exceeded) in &checks {
            let Some(max) = max else { continue };
            let log = self.windows.entry((route, scope.clone())).or_default();
            while log
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                log.pop_front();
            }
            if log.len() >= *max as usize {
                return Err(*exceeded);
            }
        }
        for (max, scope, _) in checks {
            if max.is_some() {
                self.windows
                    .entry((route, scope))
                    .or_default()
                    .push_back(now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_item: u32, per_client: u32) -> RateLimiter {
        RateLimiter::new(RateLimitConfig {
            window_ms: 1000,
            routes: [(
                "r".to_owned(),
                RateLimit {
                    per_item: Some(per_item),
                    per_client: Some(per_client),
                },
            )]
            .into(),
        })
    }

    #[test]
    fn item_then_client_limits_over_a_sliding_window() {
        let mut l = limiter(2, 3);
        let t0 = Instant::now();
        assert_eq!(l.admit("r", 1, "c", t0), Ok(()));
        assert_eq!(l.admit("r", 1, "c", t0), Ok(()));
        assert_eq!(l.admit("r", 1, "c", t0), Err(Exceeded::Item));
        assert_eq!(l.admit("r", 2, "c", t0), Ok(()));
        assert_eq!(l.admit("r", 3, "c", t0), Err(Exceeded::Client));
        assert_eq!(l.admit("r", 3, "other", t0), Ok(()), "per client id");
        assert_eq!(l.admit("unlimited", 1, "c", t0), Ok(()));
        // Refused calls are not recorded: once the window slides past t0, all is admitted.
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(l.admit("r", 1, "c", later), Ok(()));
        assert_eq!(l.admit("r", 3, "c", later), Ok(()));
    }

    #[test]
    fn defaults_are_the_production_numbers() {
        let c = RateLimitConfig::default();
        assert_eq!(c.window_ms, 60_000);
        assert_eq!(
            c.routes[super::super::ACCOUNTS_BALANCE_GET],
            RateLimit {
                per_item: Some(5),
                per_client: Some(1_200)
            }
        );
        assert_eq!(
            c.routes[super::super::TRANSACTIONS_SYNC].per_client,
            Some(2_500)
        );
    }
}
