//! Plaid webhooks: `POST /webhooks/plaid` on the admin port (configured by `[plaid_webhooks]`).
//!
//! # Contract (Plaid's "Verify webhooks")
//! A webhook is accepted only if its `Plaid-Verification` header is a JWT whose header says
//! `alg: ES256` (anything else, `none` and HS256 included, is refused before any key is looked
//! at) and names a `kid`; whose ES256 signature verifies with the public key Plaid serves for that
//! kid at `/webhook_verification_key/get` (fetched with the source's credentials, then cached;
//! an unknown kid is fetched once, and a kid Plaid does not know is not asked again for
//! [`MISSING_KID_BACKOFF`]); whose `iat` is at most `max_age` old (default 5 minutes) and not
//! more than [`CLOCK_SKEW`] in the future; and whose `request_body_sha256` is the hex SHA-256
//! of the exact body received. A key Plaid marked expired is refused.
//!
//! An accepted `TRANSACTIONS` webhook (`SYNC_UPDATES_AVAILABLE`, `DEFAULT_UPDATE`, ...) or
//! `ITEM` webhook (`ERROR`, `LOGIN_REPAIRED`, ...) makes every cached view of its Item
//! (`item_id`) no longer fresh, in both cache tiers, and refreshes them from Plaid in the
//! background (see [`crate::cache::CacheControl::invalidate`]); until the refresh lands a
//! request gets the new value from Plaid within its deadline, or the old one as STALE.
//!
//! Duplicates and reordering: per Item, the gateway remembers the body hashes it handled and the
//! latest `iat`. A body already handled is a `duplicate`; a webhook issued before the latest
//! one handled is `superseded` (the refresh that one caused read Plaid's state after it). Both
//! are answered 200 and change nothing. Every refresh re-reads Plaid, so no order of webhooks
//! can make the gateway serve an Item's older state as fresh.
//!
//! # Answers
//! 200 with `{"outcome": ...}` (refreshed, duplicate, superseded, ignored); 400 for a body
//! that is not a webhook; 401 for a verification failure; 503 when the key cannot be fetched
//! (Plaid retries a webhook that did not get a 2xx). Each outcome is counted in
//! `feature_gateway_plaid_webhooks_total{outcome}`.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use fetcher_api::{BuildError, Env, Fetcher, KeyPart};
use p256::ecdsa::{Signature, VerifyingKey, signature::Verifier};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use gateway_config::{Config, PlaidWebhooksConfig};
use gateway_stack::CacheControl;

/// How far in the future an `iat` may be (clocks differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long a kid Plaid does not know is not asked for again.
pub const MISSING_KID_BACKOFF: Duration = Duration::from_secs(30);
/// Body hashes remembered per Item.
const REMEMBERED_PER_ITEM: usize = 64;
/// Items remembered before the ones whose latest webhook is older than `max_age` are dropped.
const REMEMBERED_ITEMS: usize = 100_000;

/// Why a webhook was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Not a webhook: 400.
    #[error("{0}")]
    Malformed(String),
    /// Verification failed: 401.
    #[error("{0}")]
    Rejected(String),
    /// The verification key could not be fetched from Plaid: 503.
    #[error("{0}")]
    KeysUnavailable(String),
}

impl WebhookError {
    fn status(&self) -> StatusCode {
        match self {
            WebhookError::Malformed(_) => StatusCode::BAD_REQUEST,
            WebhookError::Rejected(_) => StatusCode::UNAUTHORIZED,
            WebhookError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            WebhookError::Malformed(_) => "malformed",
            WebhookError::Rejected(_) => "rejected",
            WebhookError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

fn rejected(message: impl Into<String>) -> WebhookError {
    WebhookError::Rejected(message.into())
}

/// A JWT's header, as far as verification reads it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct JwtHeader {
    /// Must be `ES256`.
    pub alg: String,
    /// The key id.
    pub kid: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iat: i64,
    request_body_sha256: String,
}

/// The verified claims of a webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Issue time, Unix seconds.
    pub iat: i64,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
}

fn part(jwt: &str, index: usize) -> Result<Vec<u8>, WebhookError> {
    let text = jwt
        .split('.')
        .nth(index)
        .ok_or_else(|| rejected("the Plaid-Verification header is not a JWT"))?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| rejected("the Plaid-Verification JWT is not base64url"))
}

/// Reads a JWT's header without verifying anything, and refuses every algorithm but ES256.
pub fn jwt_header(jwt: &str) -> Result<JwtHeader, WebhookError> {
    if jwt.split('.').count() != 3 {
        return Err(rejected("the Plaid-Verification header is not a JWT"));
    }
    let header: JwtHeader = serde_json::from_slice(&part(jwt, 0)?)
        .map_err(|_| rejected("the JWT header lacks alg or kid"))?;
    if header.alg != "ES256" {
        return Err(rejected(format!(
            "the JWT's alg is `{}`: only ES256 is accepted",
            header.alg.chars().take(16).collect::<String>()
        )));
    }
    Ok(header)
}

/// Verifies a webhook's JWT with `key`: the ES256 signature, `iat` within `max_age` of `now`
/// (Unix seconds), and the body hash.
pub fn verify(
    jwt: &str,
    body: &[u8],
    key: &VerifyingKey,
    now: i64,
    max_age: Duration,
) -> Result<Verified, WebhookError> {
    jwt_header(jwt)?;
    let signature = Signature::from_slice(&part(jwt, 2)?)
        .map_err(|_| rejected("the JWT signature is not an ES256 signature"))?;
    let signed = jwt
        .rsplit_once('.')
        .map(|(input, _)| input)
        .unwrap_or_default();
    key.verify(signed.as_bytes(), &signature)
        .map_err(|_| rejected("the JWT signature does not verify"))?;
    let claims: Claims = serde_json::from_slice(&part(jwt, 1)?)
        .map_err(|_| rejected("the JWT claims lack iat or request_body_sha256"))?;
    let age = now - claims.iat;
    if age > max_age.as_secs() as i64 {
        return Err(rejected(format!("the JWT was issued {age} s ago")));
    }
    if -age > CLOCK_SKEW.as_secs() as i64 {
        return Err(rejected("the JWT is issued in the future"));
    }
    let actual = hex::encode(Sha256::digest(body));
    if !claims.request_body_sha256.eq_ignore_ascii_case(&actual) {
        return Err(rejected(
            "the body does not match the JWT's request_body_sha256",
        ));
    }
    Ok(Verified {
        iat: claims.iat,
        body_sha256: actual,
    })
}

/// A JWK as `/webhook_verification_key/get` serves it.
#[derive(Debug, Deserialize)]
struct Jwk {
    alg: String,
    crv: String,
    kty: String,
    x: String,
    y: String,
    #[serde(default)]
    expired_at: Option<i64>,
}

/// The public key of a P-256 JWK.
fn jwk_key(jwk: &Jwk) -> Result<VerifyingKey, String> {
    if jwk.alg != "ES256" || jwk.crv != "P-256" || jwk.kty != "EC" {
        return Err("not an ES256 P-256 key".into());
    }
    let x = URL_SAFE_NO_PAD.decode(&jwk.x).map_err(|e| e.to_string())?;
    let y = URL_SAFE_NO_PAD.decode(&jwk.y).map_err(|e| e.to_string())?;
    if x.len() != 32 || y.len() != 32 {
        return Err("coordinates are not 32 bytes".into());
    }
    let point = p256::EncodedPoint::from_affine_coordinates(
        x.as_slice().into(),
        y.as_slice().into(),
        false,
    );
    VerifyingKey::from_encoded_point(&point).map_err(|_| "not a point of P-256".into())
}

#[derive(Clone, Debug)]
struct CachedKey {
    key: VerifyingKey,
    expired_at: Option<i64>,
}

/// Plaid's verification keys, fetched by kid and cached.
struct KeyStore {
    client: reqwest::Client,
    url: String,
    keys: Mutex<HashMap<String, CachedKey>>,
    missing: Mutex<HashMap<String, Instant>>,
}

impl KeyStore {
    async fn key(&self, kid: &str) -> Result<CachedKey, WebhookError> {
        if let Some(key) = lock(&self.keys).get(kid) {
            return Ok(key.clone());
        }
        if lock(&self.missing)
            .get(kid)
            .is_some_and(|at| at.elapsed() < MISSING_KID_BACKOFF)
        {
            return Err(rejected("unknown key id"));
        }
        let response = self
            .client
            .post(&self.url)
            .json(&json!({ "key_id": kid }))
            .send()
            .await
            .map_err(|e| {
                WebhookError::KeysUnavailable(format!(
                    "cannot fetch the verification key: {}",
                    e.without_url()
                ))
            })?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            // Plaid does not know this kid (or the credentials are wrong: logged).
            tracing::warn!(%status, "plaid refused the webhook verification key request");
            let mut missing = lock(&self.missing);
            if missing.len() > 10_000 {
                missing.clear();
            }
            missing.insert(kid.to_owned(), Instant::now());
            return Err(rejected("unknown key id"));
        }
        if !status.is_success() {
            return Err(WebhookError::KeysUnavailable(format!(
                "plaid answered {status} for the verification key"
            )));
        }
        #[derive(Deserialize)]
        struct KeyResponse {
            key: Jwk,
        }
        let jwk = serde_json::from_slice::<KeyResponse>(&body)
            .map_err(|e| WebhookError::KeysUnavailable(format!("bad verification key: {e}")))?
            .key;
        let key = CachedKey {
            key: jwk_key(&jwk)
                .map_err(|e| WebhookError::KeysUnavailable(format!("bad verification key: {e}")))?,
            expired_at: jwk.expired_at,
        };
        let mut keys = lock(&self.keys);
        if keys.len() > 1_000 {
            keys.clear();
        }
        keys.insert(kid.to_owned(), key.clone());
        Ok(key)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
struct ItemLog {
    last_iat: i64,
    recent: VecDeque<String>,
}

/// The webhook endpoint's state: keys, the source's cache, and what each Item sent.
pub struct PlaidWebhooks {
    max_age: Duration,
    keys: KeyStore,
    fetcher: Arc<dyn Fetcher>,
    cache: Option<CacheControl>,
    /// The source's views keyed by one entity key (the access token).
    views: Vec<Arc<str>>,
    items: Mutex<HashMap<String, ItemLog>>,
}

impl std::fmt::Debug for PlaidWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaidWebhooks")
            .field("url", &self.keys.url)
            .field("views", &self.views)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
struct WebhookBody {
    webhook_type: String,
    webhook_code: String,
    #[serde(default)]
    item_id: Option<String>,
}

impl PlaidWebhooks {
    /// The endpoint for `settings.source`, whose fetcher and cache the gateway built.
    pub fn build(
        config: &Config,
        settings: &PlaidWebhooksConfig,
        fetcher: Arc<dyn Fetcher>,
        cache: Option<CacheControl>,
        env: &Env,
    ) -> Result<PlaidWebhooks, BuildError> {
        let fail = |message: String| BuildError {
            source_name: settings.source.clone(),
            message: format!("plaid_webhooks: {message}"),
        };
        let source = config
            .sources
            .get(&settings.source)
            .ok_or_else(|| fail("unknown source".into()))?;
        let options: fetcher_plaid::PlaidSourceConfig =
            source.spec.options.parse().map_err(fail)?;
        let compiled = fetcher_plaid::config::compile_source(&options)
            .map_err(|e| fail(fetcher_api::config::join(&e, "; ")))?;
        let credential = |name: &str, template: &fetcher_api::EnvTemplate| {
            let text = template
                .resolve(env, |v| Cow::Borrowed(v))
                .map_err(|e| fail(format!("{name}: {e}")))?;
            let mut value = reqwest::header::HeaderValue::from_str(&text)
                .map_err(|_| fail(format!("{name}: not a valid header value")))?;
            value.set_sensitive(true);
            Ok::<_, BuildError>(value)
        };
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "plaid-client-id",
            credential("client_id", &compiled.client_id)?,
        );
        headers.insert("plaid-secret", credential("secret", &compiled.secret)?);
        headers.insert(
            "plaid-version",
            reqwest::header::HeaderValue::from_static(fetcher_plaid::PLAID_VERSION),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(compiled.connect_timeout)
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(format!("cannot create the HTTP client: {e}")))?;
        let views = config.single_key_views(&settings.source);
        if let Some(cache) = &cache {
            // Every webhook looks entries up by key part: index them from the first insert.
            cache.index_by_key_part();
        }
        Ok(PlaidWebhooks {
            max_age: settings.max_age,
            keys: KeyStore {
                client,
                url: format!("{}/webhook_verification_key/get", compiled.base_url),
                keys: Mutex::new(HashMap::new()),
                missing: Mutex::new(HashMap::new()),
            },
            fetcher,
            cache,
            views,
            items: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies and handles one webhook; the outcome's name and details.
    pub async fn handle(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<serde_json::Value, WebhookError> {
        let jwt = headers
            .get("plaid-verification")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| rejected("no Plaid-Verification header"))?;
        let header = jwt_header(jwt)?;
        let key = self.keys.key(&header.kid).await?;
        let now = unix_now();
        if key.expired_at.is_some_and(|at| at <= now) {
            return Err(rejected("the verification key has expired"));
        }
        let verified = verify(jwt, body, &key.key, now, self.max_age)?;
        let webhook: WebhookBody = serde_json::from_slice(body)
            .map_err(|e| WebhookError::Malformed(format!("not a Plaid webhook: {e}")))?;
        let relevant = match webhook.webhook_type.as_str() {
            "TRANSACTIONS" => true,
            "ITEM" => webhook.webhook_code != "WEBHOOK_UPDATE_ACKNOWLEDGED",
            _ => false,
        };
        let Some(item_id) = webhook.item_id.filter(|_| relevant) else {
            return Ok(json!({ "outcome": "ignored" }));
        };
        {
            let mut items = lock(&self.items);
            if items.len() >= REMEMBERED_ITEMS {
                // Older webhooks than max_age are refused anyway: their logs are not needed.
                let oldest = now - self.max_age.as_secs() as i64;
                items.retain(|_, log| log.last_iat >= oldest);
            }
            let log = items.entry(item_id.clone()).or_default();
            if log.recent.contains(&verified.body_sha256) {
                return Ok(json!({ "outcome": "duplicate" }));
            }
            if log.recent.len() >= REMEMBERED_PER_ITEM {
                log.recent.pop_front();
            }
            log.recent.push_back(verified.body_sha256.clone());
            if verified.iat < log.last_iat {
                return Ok(json!({ "outcome": "superseded" }));
            }
            log.last_iat = verified.iat;
        }
        let parts: HashSet<KeyPart> = self.fetcher.keys_of(&item_id).into_iter().collect();
        let done = match &self.cache {
            // Even with no key part known here (this replica never fetched the Item itself):
            // the replicas that did hear of it by the Item's id.
            Some(cache) => cache.invalidate(&parts, &self.views, Some(&item_id)).await,
            None => Default::default(),
        };
        tracing::info!(
            webhook_type = %webhook.webhook_type,
            webhook_code = %webhook.webhook_code,
            local = done.local,
            refreshing = done.refreshing,
            shared_failed = done.shared_failed,
            published = done.published,
            "plaid webhook: item's cached views invalidated"
        );
        Ok(json!({
            "outcome": "refreshed",
            "invalidated": done.local,
            "shared_deleted": done.shared,
            "shared_failed": done.shared_failed,
            "published": done.published,
            "refreshing": done.refreshing,
        }))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `POST /webhooks/plaid`, for the admin router.
/// `POST /webhooks/plaid`, answered by the endpoint `current` returns when called, the running
/// configuration's (a reload may add, replace or remove it); 404 while there is none.
pub fn router(current: Current) -> Router {
    Router::new()
        .route("/webhooks/plaid", post(receive))
        .with_state(current)
}

/// What [`router`] asks for the endpoint that answers a webhook.
pub type Current = Arc<dyn Fn() -> Option<Arc<PlaidWebhooks>> + Send + Sync>;

async fn receive(State(current): State<Current>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(hooks) = current() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match hooks.handle(&headers, &body).await {
        Ok(answer) => {
            let outcome = match answer["outcome"].as_str() {
                Some("duplicate") => "duplicate",
                Some("superseded") => "superseded",
                Some("ignored") => "ignored",
                _ => "refreshed",
            };
            metrics::counter!("feature_gateway_plaid_webhooks_total", "outcome" => outcome)
                .increment(1);
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(e) => {
            metrics::counter!("feature_gateway_plaid_webhooks_total", "outcome" => e.outcome())
                .increment(1);
            tracing::warn!(error = %e, "plaid webhook refused");
            (e.status(), Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{SigningKey, signature::Signer};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn jwt(header: serde_json::Value, claims: serde_json::Value, signer: &SigningKey) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = signer.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    const BODY: &[u8] = br#"{"webhook_type":"TRANSACTIONS","webhook_code":"SYNC_UPDATES_AVAILABLE","item_id":"i1"}"#;
    const NOW: i64 = 1_800_000_000;
    const MAX_AGE: Duration = Duration::from_secs(300);

    fn good_claims(iat: i64) -> serde_json::Value {
        json!({"iat": iat, "request_body_sha256": hex::encode(Sha256::digest(BODY))})
    }

    fn es256() -> serde_json::Value {
        json!({"alg": "ES256", "kid": "k1", "typ": "JWT"})
    }

    #[test]
    fn a_good_signature_is_accepted() {
        let signer = key(7);
        let token = jwt(es256(), good_claims(NOW - 10), &signer);
        assert_eq!(jwt_header(&token).unwrap().kid, "k1");
        let verified = verify(&token, BODY, signer.verifying_key(), NOW, MAX_AGE).unwrap();
        assert_eq!(verified.iat, NOW - 10);
    }

    #[test]
    fn a_bad_signature_is_rejected() {
        let token = jwt(es256(), good_claims(NOW), &key(8));
        let e = verify(&token, BODY, key(7).verifying_key(), NOW, MAX_AGE).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{e}");
        // A signature moved onto other claims does not verify either.
        let good = jwt(es256(), good_claims(NOW), &key(7));
        let other = jwt(es256(), good_claims(NOW - 1), &key(7));
        let spliced = format!(
            "{}.{}",
            other.rsplit_once('.').unwrap().0,
            good.rsplit_once('.').unwrap().1
        );
        assert!(verify(&spliced, BODY, key(7).verifying_key(), NOW, MAX_AGE).is_err());
    }

    #[test]
    fn only_es256_is_accepted() {
        for alg in ["none", "HS256", "RS256", "ES384"] {
            let mut header = es256();
            header["alg"] = json!(alg);
            let token = jwt(header, good_claims(NOW), &key(7));
            let e = jwt_header(&token).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
            assert!(verify(&token, BODY, key(7).verifying_key(), NOW, MAX_AGE).is_err());
        }
        // `alg: none` with an empty signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string()),
            URL_SAFE_NO_PAD.encode(good_claims(NOW).to_string())
        );
        assert!(jwt_header(&none).is_err());
        assert!(jwt_header("not a jwt").is_err());
    }

    #[test]
    fn a_stale_or_future_iat_is_rejected() {
        let signer = key(7);
        let old = jwt(es256(), good_claims(NOW - 301), &signer);
        let e = verify(&old, BODY, signer.verifying_key(), NOW, MAX_AGE).unwrap_err();
        assert!(e.to_string().contains("issued 301 s ago"), "{e}");
        let edge = jwt(es256(), good_claims(NOW - 300), &signer);
        assert!(verify(&edge, BODY, signer.verifying_key(), NOW, MAX_AGE).is_ok());
        let future = jwt(es256(), good_claims(NOW + 120), &signer);
        assert!(verify(&future, BODY, signer.verifying_key(), NOW, MAX_AGE).is_err());
    }

    #[test]
    fn a_body_hash_mismatch_is_rejected() {
        let signer = key(7);
        let token = jwt(es256(), good_claims(NOW), &signer);
        let tampered = br#"{"webhook_type":"TRANSACTIONS","webhook_code":"SYNC_UPDATES_AVAILABLE","item_id":"i2"}"#;
        let e = verify(&token, tampered, signer.verifying_key(), NOW, MAX_AGE).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert!(e.to_string().contains("request_body_sha256"), "{e}");
    }

    #[test]
    fn jwks_decode_to_their_key() {
        let signer = key(9);
        let point = signer.verifying_key().to_encoded_point(false);
        let jwk = Jwk {
            alg: "ES256".into(),
            crv: "P-256".into(),
            kty: "EC".into(),
            x: URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            y: URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            expired_at: None,
        };
        assert_eq!(&jwk_key(&jwk).unwrap(), signer.verifying_key());
        let wrong = Jwk {
            crv: "P-384".into(),
            ..jwk
        };
        assert!(jwk_key(&wrong).is_err());
    }
}
