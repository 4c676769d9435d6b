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
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::codegen::http;
use tower::{Layer, Service};

use gateway_stack::BoxFuture;

use gateway_config::CallerConfig;

use crate::peer::TlsConnectInfo;

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
            .get::<TlsConnectInfo>()
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
    use gateway_config::TokenHash;

    use super::*;

    fn caller(name: &str, token: &str, services: &[&str]) -> CallerConfig {
        CallerConfig {
            name: name.into(),
            token: Some(TokenHash::parse(&TokenHash::make(token)).unwrap()),
            mtls_name: None,
            feature_services: Some(services.iter().map(|s| s.to_string()).collect()),
            allow_adhoc: false,
            push_views: Some(Default::default()),
            rate_limit: None,
        }
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
}
