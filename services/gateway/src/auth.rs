//! Who may call, and how much: callers identified by a bearer token or by their mTLS client
//! certificate, the feature services each may read, and a request rate per caller.
//!
//! With `[auth]` configured, [`AuthLayer`] wraps the gRPC server (outside load shedding):
//! every call except `grpc.health.v1.Health` must authenticate, as a caller of `[auth.callers]`,
//! with `authorization: Bearer TOKEN` metadata or a client certificate valid for the caller's
//! `mtls_name` (a DNS name of its subject alternative names, checked against the client CA by
//! the TLS handshake). Otherwise the answer is `UNAUTHENTICATED`. A caller over its
//! `rate_limit` is answered `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` saying when a
//! token is next available, before any work. The authenticated [`Caller`] travels in the
//! request's extensions; the service checks it against the requested feature service
//! (`PERMISSION_DENIED`) before any source is called.
//!
//! Tokens never appear in the configuration or in logs: the configuration holds
//! `sha256$SALT$HASH` (hex; HASH = SHA-256 of SALT's bytes then the token's), made by
//! `feature-gateway hash-token`. A presented token is hashed once (SHA-256) to look it up among
//! the tokens already verified; only a first use pays the per-caller salted comparison.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::stack::BoxFuture;

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

    fn matches(&self, token: &str) -> bool {
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
            && rustls::pki_types::ServerName::try_from(n.as_str()).is_err()
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
            rate_limit,
        });
    }
    (callers, problems)
}

/// The authenticated caller of a request, in its extensions.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<CallerConfig>);

/// The callers, their verified tokens and their rate buckets.
#[derive(Debug)]
pub struct Authenticator {
    callers: Vec<(Arc<CallerConfig>, Option<Mutex<Bucket>>)>,
    /// SHA-256 of tokens already verified, to the caller index.
    verified: RwLock<HashMap<[u8; 32], usize>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a call was refused.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// No or unknown credentials.
    Unauthenticated(&'static str),
    /// Over the caller's rate: retry after this long.
    RateLimited(Arc<str>, Duration),
}

impl Authenticator {
    /// The runtime state of `callers`.
    pub fn new(callers: &[CallerConfig]) -> Self {
        Authenticator {
            callers: callers
                .iter()
                .map(|c| {
                    let bucket = c.rate_limit.map(|(_, burst)| {
                        Mutex::new(Bucket {
                            tokens: burst,
                            at: Instant::now(),
                        })
                    });
                    (Arc::new(c.clone()), bucket)
                })
                .collect(),
            verified: RwLock::default(),
        }
    }

    /// The caller whose `mtls_name` the client certificate (DER) is valid for, if any. The TLS
    /// handshake has already checked it against the client CA.
    pub fn identify_certificate(
        &self,
        der: &rustls::pki_types::CertificateDer<'_>,
    ) -> Option<usize> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        self.callers.iter().position(|(c, _)| {
            c.mtls_name.as_deref().is_some_and(|name| {
                rustls::pki_types::ServerName::try_from(name)
                    .is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
            })
        })
    }

    fn identify_token(&self, token: &str) -> Option<usize> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(&i) = self
            .verified
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Some(i);
        }
        let i = self
            .callers
            .iter()
            .position(|(c, _)| c.token.as_ref().is_some_and(|t| t.matches(token)))?;
        self.verified
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, i);
        Some(i)
    }

    /// Authenticates a call by its mTLS caller (`mtls`) or its `authorization` metadata, then
    /// spends one of the caller's rate tokens.
    pub fn admit(
        &self,
        mtls: Option<usize>,
        authorization: Option<&str>,
    ) -> Result<Caller, Refusal> {
        let index = match (mtls, authorization) {
            (Some(i), _) => i,
            (None, Some(value)) => {
                let token = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .ok_or(Refusal::Unauthenticated(
                        "the `authorization` metadata must be `Bearer TOKEN`",
                    ))?;
                self.identify_token(token.trim())
                    .ok_or(Refusal::Unauthenticated("unknown token"))?
            }
            (None, None) => {
                return Err(Refusal::Unauthenticated(
                    "no credentials: send `authorization: Bearer TOKEN` metadata or a client \
                     certificate",
                ));
            }
        };
        let (caller, bucket) = &self.callers[index];
        if let (Some(bucket), Some((rate, burst))) = (bucket, caller.rate_limit) {
            let mut b = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
            b.at = now;
            if b.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - b.tokens) / rate);
                return Err(Refusal::RateLimited(caller.name.clone(), wait));
            }
            b.tokens -= 1.0;
        }
        Ok(Caller(caller.clone()))
    }
}

/// What the TLS acceptor learned of a connection's client certificate: the index of the
/// caller it identifies (see [`Authenticator::identify_certificate`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIdentity(pub Option<usize>);

/// Authenticates and rate-limits every call but health checks; see the module docs.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer over `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(self.inner.call(request));
        }
        let mtls = request
            .extensions()
            .get::<crate::tls::TlsConnectInfo>()
            .and_then(|i| i.identity.0);
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match self.auth.admit(mtls, authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Box::pin(self.inner.call(request))
            }
            Err(refusal) => {
                let status = match refusal {
                    Refusal::Unauthenticated(why) => {
                        crate::telemetry::auth_refused("unauthenticated");
                        tonic::Status::unauthenticated(why)
                    }
                    Refusal::RateLimited(caller, wait) => {
                        crate::telemetry::auth_refused("rate_limited");
                        use tonic_types::{ErrorDetails, StatusExt};
                        tonic::Status::with_error_details(
                            tonic::Code::ResourceExhausted,
                            format!(
                                "caller `{caller}` is over its rate limit: retry in {} ms",
                                wait.as_millis().max(1)
                            ),
                            ErrorDetails::with_retry_info(Some(wait)),
                        )
                    }
                };
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caller(name: &str, token: &str, services: &[&str]) -> CallerConfig {
        CallerConfig {
            name: name.into(),
            token: Some(TokenHash::parse(&TokenHash::make(token)).unwrap()),
            mtls_name: None,
            feature_services: Some(services.iter().map(|s| s.to_string()).collect()),
            allow_adhoc: false,
            rate_limit: None,
        }
    }

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
    fn callers_authenticate_by_token_and_read_only_their_services() {
        let auth = Authenticator::new(&[
            caller("fraud", "t-fraud", &["fraud_v1"]),
            caller("recs", "t-recs", &["recs_v2"]),
        ]);
        let c = auth.admit(None, Some("Bearer t-fraud")).unwrap();
        assert_eq!(&*c.0.name, "fraud");
        assert!(c.0.may_read("fraud_v1") && !c.0.may_read("recs_v2") && !c.0.may_read(""));
        // The second use is served from the verified table.
        assert_eq!(
            &*auth.admit(None, Some("Bearer t-fraud")).unwrap().0.name,
            "fraud"
        );
        assert_eq!(
            &*auth.admit(None, Some("Bearer t-recs")).unwrap().0.name,
            "recs"
        );
        assert!(matches!(
            auth.admit(None, Some("Bearer nope")),
            Err(Refusal::Unauthenticated("unknown token"))
        ));
        assert!(matches!(
            auth.admit(None, Some("t-fraud")),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.admit(None, None),
            Err(Refusal::Unauthenticated(_))
        ));
        assert_eq!(&*auth.admit(Some(1), None).unwrap().0.name, "recs");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_over_its_rate_waits_for_the_next_token() {
        let mut c = caller("burst", "t", &["fs"]);
        c.rate_limit = Some((10.0, 3.0));
        let auth = Authenticator::new(&[c]);
        for _ in 0..3 {
            auth.admit(None, Some("Bearer t")).unwrap();
        }
        let Err(Refusal::RateLimited(name, wait)) = auth.admit(None, Some("Bearer t")) else {
            panic!("not limited");
        };
        assert_eq!(&*name, "burst");
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        auth.admit(None, Some("Bearer t")).unwrap();
        assert!(auth.admit(None, Some("Bearer t")).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let mut raw = RawAuth::default();
        raw.callers.insert(
            "a".into(),
            RawCaller {
                token_hash: Some("plaintext-token".into()),
                feature_services: vec!["nope".into()],
                rate_limit: Some(-1.0),
                ..Default::default()
            },
        );
        raw.callers.insert("b".into(), RawCaller::default());
        let known = ["fraud_v1".to_owned()].into_iter().collect();
        let (_, problems) = validate(&raw, |_| Err("unused".into()), &known);
        let fields: Vec<String> = problems.iter().map(|(p, _)| p.join(".")).collect();
        assert_eq!(
            fields,
            [
                "auth.callers.a.token_hash",
                "auth.callers.a.feature_services",
                "auth.callers.a.rate_limit",
                "auth.callers.b.token_hash",
            ]
        );
    }
}
