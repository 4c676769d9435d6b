//! `[auth]`: the callers allowed, how each authenticates (a bearer token's salted hash or an mTLS
//! name), the feature services each may read and its request rate.
//!
//! Tokens never appear in the configuration: it holds `sha256$SALT$HASH` (hex; HASH = SHA-256
//! of SALT's bytes then the token's), made by `feature-gateway hash-token`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawAuth {
    /// `[auth.callers.NAME]`.
    #[serde(default)]
    pub callers: BTreeMap<String, RawCaller>,
}

/// `[auth.callers.NAME]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawCaller {
    /// `sha256$SALT$HASH` of the caller's bearer token (`feature-gateway hash-token`).
    #[serde(default)]
    pub token_hash: Option<String>,
    /// A file holding `token_hash` (one line), e.g. a mounted secret; relative to the
    /// configuration file.
    #[serde(default)]
    pub token_hash_file: Option<String>,
    /// A DNS name the caller's client certificate is valid for (mutual TLS).
    #[serde(default)]
    pub mtls_name: Option<String>,
    /// The feature services it may read; `"*"` for all.
    #[serde(default)]
    pub feature_services: Vec<String>,
    /// Whether it may send ad-hoc requests (explicit `VIEW:FEATURE` refs, no feature service).
    #[serde(default)]
    pub allow_adhoc: bool,
    /// The aggregation views (of `stream` sources) it may push events to; `"*"` for all. None
    /// by default: pushing writes what every caller reads.
    #[serde(default)]
    pub push_views: Vec<String>,
    /// Requests per second, on average.
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Requests it may send at once above the rate. Default: one second's worth.
    #[serde(default)]
    pub burst: Option<f64>,
}

/// A caller, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct CallerConfig {
    /// Its name in `[auth.callers]`.
    pub name: Arc<str>,
    /// Its token's salted hash.
    pub token: Option<TokenHash>,
    /// The DNS name its client certificate must be valid for.
    pub mtls_name: Option<String>,
    /// The feature services it may read; `None`: all.
    pub feature_services: Option<BTreeSet<String>>,
    /// May it send ad-hoc requests.
    pub allow_adhoc: bool,
    /// The views it may push events to; `None`: all.
    pub push_views: Option<BTreeSet<String>>,
    /// `(rate per second, burst)`.
    pub rate_limit: Option<(f64, f64)>,
}

impl CallerConfig {
    /// Whether this caller may read `feature_service` (empty: an ad-hoc request).
    pub fn may_read(&self, feature_service: &str) -> bool {
        if feature_service.is_empty() {
            return self.allow_adhoc;
        }
        self.feature_services
            .as_ref()
            .is_none_or(|allowed| allowed.contains(feature_service))
    }

    /// Whether this caller may push events to the aggregation view `view`.
    pub fn may_push(&self, view: &str) -> bool {
        self.push_views
            .as_ref()
            .is_none_or(|allowed| allowed.contains(view))
    }
}

/// A salted SHA-256 of a token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash {
    salt: Vec<u8>,
    hash: [u8; 32],
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

impl TokenHash {
    /// Parses `sha256$SALT$HASH`.
    pub fn parse(text: &str) -> Result<TokenHash, String> {
        let bad = || {
            "must be `sha256$SALT$HASH` in hex, as `feature-gateway hash-token` prints it"
                .to_owned()
        };
        let mut parts = text.trim().split('$');
        let (Some("sha256"), Some(salt), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let salt = hex::decode(salt).map_err(|_| bad())?;
        let hash: [u8; 32] = hex::decode(hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(bad)?;
        if salt.len() < 8 {
            return Err("the salt must be at least 8 bytes (16 hex digits)".to_owned());
        }
        Ok(TokenHash { salt, hash })
    }

    /// The salted hash of `token` under a fresh random salt, as configuration text.
    pub fn make(token: &str) -> String {
        let salt: [u8; 16] = rand::random();
        let hash = salted(&salt, token);
        format!("sha256${}${}", hex::encode(salt), hex::encode(hash))
    }

    pub fn matches(&self, token: &str) -> bool {
        // Not secret-dependent in timing beyond the hash itself: compare all 32 bytes.
        let got = salted(&self.salt, token);
        got.iter()
            .zip(self.hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn salted(salt: &[u8], token: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(token.as_bytes());
    hasher.finalize().into()
}

/// Validates `[auth]`: `(callers, problems as (field path, message))`. `read` reads a
/// `token_hash_file` (relative paths resolved by the caller of this function).
pub fn validate(
    raw: &RawAuth,
    read: impl Fn(&str) -> Result<String, String>,
    feature_services: &BTreeSet<String>,
    stream_views: &BTreeSet<String>,
) -> (Vec<CallerConfig>, Vec<(Vec<String>, String)>) {
    let mut callers = Vec::new();
    let mut problems = Vec::new();
    if raw.callers.is_empty() {
        problems.push((
            vec!["auth".to_owned(), "callers".to_owned()],
            "names no caller: nobody could call".to_owned(),
        ));
    }
    for (name, c) in &raw.callers {
        let at = |field: &str| vec!["auth".into(), "callers".into(), name.clone(), field.into()];
        let text = match (&c.token_hash, &c.token_hash_file) {
            (Some(_), Some(_)) => {
                problems.push((
                    at("token_hash_file"),
                    "give `token_hash` or `token_hash_file`, not both".into(),
                ));
                None
            }
            (Some(t), None) => Some((t.clone(), "token_hash")),
            (None, Some(file)) => match read(file) {
                Ok(t) => Some((t, "token_hash_file")),
                Err(e) => {
                    problems.push((at("token_hash_file"), e));
                    None
                }
            },
            (None, None) => None,
        };
        let token = text.and_then(|(t, field)| {
            TokenHash::parse(&t)
                .map_err(|e| problems.push((at(field), e)))
                .ok()
        });
        if c.token_hash.is_none() && c.token_hash_file.is_none() && c.mtls_name.is_none() {
            problems.push((
                at("token_hash"),
                "the caller needs `token_hash`, `token_hash_file` or `mtls_name` to authenticate"
                    .into(),
            ));
        }
        if let Some(n) = &c.mtls_name
            && rustls_pki_types::ServerName::try_from(n.as_str()).is_err()
        {
            problems.push((at("mtls_name"), format!("`{n}` is not a DNS name")));
        }
        let all = c.feature_services.iter().any(|f| f == "*");
        for f in &c.feature_services {
            if f != "*" && !feature_services.contains(f) {
                problems.push((
                    at("feature_services"),
                    format!("unknown feature service `{f}`"),
                ));
            }
        }
        let all_views = c.push_views.iter().any(|v| v == "*");
        for v in &c.push_views {
            if v != "*" && !stream_views.contains(v) {
                problems.push((
                    at("push_views"),
                    format!("`{v}` is not a view of a `stream` source"),
                ));
            }
        }
        let rate_limit = match (c.rate_limit, c.burst) {
            (None, None) => None,
            (None, Some(_)) => {
                problems.push((at("burst"), "needs `rate_limit`".into()));
                None
            }
            (Some(r), b) if r > 0.0 && r.is_finite() => {
                let burst = b.unwrap_or(r.max(1.0));
                if !(burst >= 1.0 && burst.is_finite()) {
                    problems.push((at("burst"), "must be at least 1".into()));
                }
                Some((r, burst))
            }
            (Some(_), _) => {
                problems.push((
                    at("rate_limit"),
                    "must be a positive number of requests per second".into(),
                ));
                None
            }
        };
        callers.push(CallerConfig {
            name: name.as_str().into(),
            token,
            mtls_name: c.mtls_name.clone(),
            feature_services: (!all).then(|| c.feature_services.iter().cloned().collect()),
            allow_adhoc: c.allow_adhoc,
            push_views: (!all_views).then(|| c.push_views.iter().cloned().collect()),
            rate_limit,
        });
    }
    (callers, problems)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn token_hashes_round_trip_and_reject_other_tokens() {
        let text = TokenHash::make("s3cret");
        assert!(text.starts_with("sha256$") && !text.contains("s3cret"));
        let hash = TokenHash::parse(&text).unwrap();
        assert!(hash.matches("s3cret"));
        assert!(!hash.matches("s3cret "));
        assert!(TokenHash::parse("md5$00$00").is_err());
        assert!(TokenHash::parse("sha256$00$00").is_err());
        assert_eq!(format!("{hash:?}"), "TokenHash(..)");
    }

    #[test]
    fn validation_names_the_field() {
        let mut raw = RawAuth::default();
        raw.callers.insert(
            "a".into(),
            RawCaller {
                token_hash: Some("plaintext-token".into()),
                feature_services: vec!["nope".into()],
                push_views: vec!["nope".into()],
                rate_limit: Some(-1.0),
                ..Default::default()
            },
        );
        raw.callers.insert("b".into(), RawCaller::default());
        let known = ["fraud_v1".to_owned()].into_iter().collect();
        let (_, problems) = validate(&raw, |_| Err("unused".into()), &known, &Default::default());
        let fields: Vec<String> = problems.iter().map(|(p, _)| p.join(".")).collect();
        assert_eq!(
            fields,
            [
                "auth.callers.a.token_hash",
                "auth.callers.a.feature_services",
                "auth.callers.a.push_views",
                "auth.callers.a.rate_limit",
                "auth.callers.b.token_hash",
            ]
        );
    }
}
