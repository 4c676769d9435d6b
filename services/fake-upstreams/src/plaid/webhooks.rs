//! The fake Plaid's webhooks: the signing keys behind `/webhook_verification_key/get`, and the
//! sender that POSTs signed webhooks to the configured URL.
//!
//! As Plaid does (docs: "Verify webhooks"), every webhook carries a `Plaid-Verification` header
//! holding a JWT: header `{"alg":"ES256","kid":KID,"typ":"JWT"}`, claims `{"iat":SECONDS,
//! "request_body_sha256":HEX}` where the hash is over the exact body bytes sent, signed with
//! ECDSA P-256 / SHA-256 (the JWS signature is `r || s`, 64 bytes, base64url without padding).
//! `/webhook_verification_key/get` with `{"key_id": KID}` answers the public key as a JWK:
//! `{"key": {"alg","crv","kid","kty","use","x","y","created_at","expired_at"}}`.
//!
//! Keys are derived from the seed and a generation number, so a run is reproducible; rotating
//! expires the current key (it is still served, with `expired_at` set) and signs with the next.
//! The webhook clock is the real wall clock (the receiver checks `iat` against its own), unlike
//! the data's fixed "now".

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use p256::ecdsa::{Signature, SigningKey, signature::Signer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One signing key of the fake Plaid.
#[derive(Clone, Debug)]
struct Key {
    kid: String,
    signing: SigningKey,
    created_at: i64,
    expired_at: Option<i64>,
}

/// The fake Plaid's webhook keys (the last one signs) and where webhooks go.
#[derive(Debug)]
pub(crate) struct Webhooks {
    seed: u64,
    keys: Vec<Key>,
    url: Option<String>,
}

/// Seconds since the Unix epoch, by the wall clock.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The key of generation `generation`: a P-256 scalar hashed from the seed (re-hashed in the
/// astronomically unlikely case the hash is not a valid scalar).
fn derive_key(seed: u64, generation: u64, salt: &str) -> Key {
    let mut material = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update(seed.to_le_bytes())
        .chain_update(generation.to_le_bytes())
        .finalize();
    let signing = loop {
        match SigningKey::from_slice(&material) {
            Ok(key) => break key,
            Err(_) => material = Sha256::digest(material),
        }
    };
    let id = Sha256::new()
        .chain_update(b"kid")
        .chain_update(material)
        .finalize();
    let hex = hex::encode(&id[..16]);
    // A UUID-shaped key id, as Plaid's.
    let kid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    Key {
        kid,
        signing,
        created_at: unix_now(),
        expired_at: None,
    }
}

/// A compact JWS (ES256) over `claims` with `key`, under key id `kid`.
fn sign_jwt(signing: &SigningKey, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: Signature = signing.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// The claims Plaid signs for `body`, issued at `iat`.
pub fn claims(body: &[u8], iat: i64) -> Value {
    json!({"iat": iat, "request_body_sha256": hex::encode(Sha256::digest(body))})
}

impl Webhooks {
    pub(crate) fn new(seed: u64) -> Webhooks {
        Webhooks {
            seed,
            keys: vec![derive_key(seed, 0, "plaid_webhook_key")],
            url: None,
        }
    }

    fn current(&self) -> &Key {
        // Never empty: `new` makes the first key and `rotate` only adds.
        &self.keys[self.keys.len() - 1]
    }

    /// The key id webhooks are signed under now.
    pub(crate) fn current_kid(&self) -> String {
        self.current().kid.clone()
    }

    /// The JWK of `kid`, as `/webhook_verification_key/get` serves it (expired keys included).
    pub(crate) fn jwk(&self, kid: &str) -> Option<Value> {
        let key = self.keys.iter().find(|k| k.kid == kid)?;
        let point = key.signing.verifying_key().to_encoded_point(false);
        let (x, y) = (point.x()?, point.y()?);
        Some(json!({
            "alg": "ES256",
            "crv": "P-256",
            "kid": key.kid,
            "kty": "EC",
            "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "created_at": key.created_at,
            "expired_at": key.expired_at,
        }))
    }

    /// The `Plaid-Verification` value for `body`, issued at `iat`, signed with the current key.
    pub(crate) fn sign(&self, body: &[u8], iat: i64) -> String {
        let key = self.current();
        sign_jwt(&key.signing, &key.kid, &claims(body, iat))
    }

    /// A `Plaid-Verification` value that looks right (current kid, right claims) but is signed
    /// with a key Plaid never published: what a forger would send.
    pub(crate) fn forge(&self, body: &[u8], iat: i64) -> String {
        let forger = derive_key(self.seed, 0, "not_plaid");
        sign_jwt(&forger.signing, &self.current().kid, &claims(body, iat))
    }

    /// Expires the current key and signs with a new one from now on; returns the new kid.
    pub(crate) fn rotate(&mut self) -> String {
        let now = unix_now();
        let generation = self.keys.len() as u64;
        if let Some(last) = self.keys.last_mut() {
            last.expired_at = Some(now);
        }
        self.keys
            .push(derive_key(self.seed, generation, "plaid_webhook_key"));
        self.current_kid()
    }

    pub(crate) fn url(&self) -> Option<String> {
        self.url.clone()
    }

    pub(crate) fn set_url(&mut self, url: Option<String>) {
        self.url = url;
    }
}

/// What the receiver of a webhook answered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    /// The HTTP status the receiver answered.
    pub status: u16,
    /// The receiver's body, as text.
    pub body: String,
    /// The exact body sent.
    pub sent: String,
}

/// POSTs `body` to `url` with `verification` as the `Plaid-Verification` header.
pub(crate) async fn deliver(
    url: &str,
    body: Vec<u8>,
    verification: &str,
) -> Result<Delivery, String> {
    // reqwest is built without a default TLS provider: the process's, else ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| format!("cannot create the webhook client: {e}"))?;
    let sent = String::from_utf8_lossy(&body).into_owned();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("plaid-verification", verification)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("cannot deliver the webhook to {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    Ok(Delivery { status, body, sent })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{VerifyingKey, signature::Verifier};

    #[test]
    fn a_signed_webhook_verifies_with_the_served_jwk() {
        let mut hooks = Webhooks::new(7);
        let body = br#"{"webhook_type":"ITEM","webhook_code":"ERROR"}"#;
        let jwt = hooks.sign(body, 1_700_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["typ"], "JWT");
        let kid = header["kid"].as_str().unwrap().to_owned();
        let jwk = hooks.jwk(&kid).unwrap();
        for field in ["alg", "crv", "kid", "kty", "use", "x", "y", "created_at"] {
            assert!(!jwk[field].is_null(), "{field} missing from {jwk}");
        }
        let x = URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap();
        let y = URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap();
        let point = p256::EncodedPoint::from_affine_coordinates(
            x.as_slice().into(),
            y.as_slice().into(),
            false,
        );
        let key = VerifyingKey::from_encoded_point(&point).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        key.verify(input.as_bytes(), &signature).unwrap();
        let forged = hooks.forge(body, 1_700_000_000);
        let fparts: Vec<&str> = forged.split('.').collect();
        let fsig = Signature::from_slice(&URL_SAFE_NO_PAD.decode(fparts[2]).unwrap()).unwrap();
        assert!(
            key.verify(format!("{}.{}", fparts[0], fparts[1]).as_bytes(), &fsig)
                .is_err()
        );

        // Rotation: the old key is still served, expired; the new one signs.
        let new = hooks.rotate();
        assert_ne!(new, kid);
        assert!(!hooks.jwk(&kid).unwrap()["expired_at"].is_null());
        assert!(hooks.jwk(&new).unwrap()["expired_at"].is_null());
        assert!(hooks.jwk("nope").is_none());
    }
}
