//! End-to-end: Plaid views behind the shared Redis cache tier, and Plaid webhooks.
//!
//! Two real gateway processes share one real Redis (`[sources.plaid.cache.shared]`) in front of
//! the fake Plaid. One Plaid call serves both replicas, with ages counted from the original
//! fetch. A webhook signed by the fake Plaid (ES256, key from `/webhook_verification_key/get`)
//! makes the gateway refresh the Item's balance, so the next request sees the new value on both
//! replicas (the replica that received it tells the other one on the shared tier's invalidation
//! channel); a forged or tampered webhook is refused and changes nothing; a duplicate is
//! harmless; a rotated key is fetched once.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{GatewayProcess, map, redis::RedisServer, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{self, PlaidConfig, data, webhooks::unix_now},
    seeded::rfc3339,
};
use proto::v1::{self, FeatureStatus as St};
use serde_json::{Value, json};

const CLIENT_ID: &str = "e2e-webhook-client";
const SECRET: &str = "e2e-webhook-s3cr3t";

fn config(plaid: &FakeServer, redis: &RedisServer, prefix: &str) -> String {
    format!(
        r#"
[entities.plaid_access_token]
type = "string"

[sources.plaid]
kind = "plaid"
base_url = "{base}"
client_id = "${{PLAID_CLIENT_ID}}"
secret = "${{PLAID_SECRET}}"
as_of = "{as_of}"
timeout = "5s"

[sources.plaid.cache]
ttl = "10m"
max_staleness = "1h"
shared = {{ url = "{redis}", key_prefix = "{prefix}", timeout = "500ms" }}

[views.plaid_balance]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "balance"
[views.plaid_balance.features]
available_total = {{ type = "double" }}
account_count = {{ type = "int64" }}

[plaid_webhooks]
source = "plaid"

[feature_services.balance]
deadline = "4s"
features = ["plaid_balance:available_total", "plaid_balance:account_count"]
"#,
        base = plaid.base_url(),
        as_of = rfc3339(data::now(plaid.seed())),
        redis = redis.url(),
    )
}

struct Stack {
    plaid: FakeServer,
    _redis: RedisServer,
    a: GatewayProcess,
    b: GatewayProcess,
    _dir: tempfile::TempDir,
}

async fn start(prefix: &str) -> Stack {
    let plaid = FakeServer::start(FakeConfig {
        population: 5,
        plaid: PlaidConfig::unlimited(CLIENT_ID, SECRET),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&plaid, &redis, prefix)).unwrap();
    let env = [("PLAID_CLIENT_ID", CLIENT_ID), ("PLAID_SECRET", SECRET)];
    let a = GatewayProcess::serve_with_env(&path, &env);
    let b = GatewayProcess::serve_with_env(&path, &env);
    Stack {
        plaid,
        _redis: redis,
        a,
        b,
        _dir: dir,
    }
}

async fn balance(gw: &GatewayProcess, token: &str) -> v1::GetFeaturesResponse {
    let request = v1::GetFeaturesRequest {
        feature_service: "balance".into(),
        entities: map(&[("plaid_access_token", s(token))]),
        include_metadata: true,
        ..Default::default()
    };
    gw.client()
        .await
        .get_features(with_timeout(request, Duration::from_secs(10)))
        .await
        .unwrap()
        .into_inner()
}

fn double(v: &v1::Value) -> f64 {
    match v.kind {
        Some(v1::value::Kind::DoubleValue(d)) => d,
        ref other => panic!("expected a double, got {other:?}"),
    }
}

fn balance_calls(plaid: &FakeServer) -> u64 {
    plaid.plaid().stats().route(plaid::ACCOUNTS_BALANCE_GET).ok
}

fn key_calls(plaid: &FakeServer) -> u64 {
    plaid
        .plaid()
        .stats()
        .route(plaid::WEBHOOK_VERIFICATION_KEY_GET)
        .ok
}

/// `available_total` as the fake computes it, with the checking account's override.
fn expected_available(seed: u64, user: u64, checking: Option<f64>) -> f64 {
    data::accounts(seed, user)
        .iter()
        .enumerate()
        .filter(|(_, a)| a.kind != data::AccountKind::CreditCard)
        .filter_map(|(i, a)| match (i, checking) {
            (0, Some(c)) => Some(c),
            _ => a.available.or(a.current),
        })
        .sum()
}

#[tokio::test]
async fn two_replicas_share_one_plaid_call_with_its_original_fetch_time() {
    let stack = start("e2e-share:").await;
    let token = stack.plaid.plaid().access_token(0);

    let first = balance(&stack.a, &token).await;
    assert_eq!(
        statuses(&first.statuses),
        [St::Present, St::Present],
        "{first:?}"
    );
    assert_eq!(first.metadata[0].cache, v1::CacheOutcome::Miss as i32);
    assert_eq!(balance_calls(&stack.plaid), 1);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = balance(&stack.b, &token).await;
    assert_eq!(statuses(&second.statuses), [St::Present, St::Present]);
    assert_eq!(second.values, first.values);
    assert_eq!(second.metadata[0].cache, v1::CacheOutcome::Hit as i32);
    // Aged from A's fetch, not from B's copy.
    assert!(
        second.metadata[0].age_ms >= 1000,
        "age {} ms",
        second.metadata[0].age_ms
    );
    // One upstream call for both replicas.
    assert_eq!(balance_calls(&stack.plaid), 1);
    // Now in B's own tier too.
    let third = balance(&stack.b, &token).await;
    assert_eq!(third.metadata[0].cache, v1::CacheOutcome::Hit as i32);
    assert_eq!(balance_calls(&stack.plaid), 1);
    let metrics = stack.b.admin_get("/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("feature_gateway_cache_shared_lookups_total")
                && l.contains("outcome=\"hit\"")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn signed_webhooks_refresh_the_item_and_forged_ones_change_nothing() {
    let stack = start("e2e-hooks:").await;
    let fake = stack.plaid.plaid();
    let seed = stack.plaid.seed();
    let (token, item) = (fake.access_token(1), fake.item_id(1));
    let before = expected_available(seed, 1, None);

    let response = balance(&stack.a, &token).await;
    assert_eq!(double(&response.values[0]), before);
    assert_eq!(balance_calls(&stack.plaid), 1);

    // The bank's balance changes; the cache still holds the old one.
    fake.set_balance(&item, 12_345.0, 12_400.0).unwrap();
    let after = expected_available(seed, 1, Some(12_345.0));
    assert_ne!(before, after);
    assert_eq!(double(&balance(&stack.a, &token).await.values[0]), before);

    let body = serde_json::to_vec(&json!({
        "webhook_type": "TRANSACTIONS",
        "webhook_code": "SYNC_UPDATES_AVAILABLE",
        "item_id": item,
        "initial_update_complete": true,
        "historical_update_complete": true,
        "environment": "sandbox",
    }))
    .unwrap();
    let post = |jwt: String, body: Vec<u8>| {
        let a = &stack.a;
        async move {
            a.admin_post(
                "/webhooks/plaid",
                &[
                    ("Content-Type", "application/json"),
                    ("Plaid-Verification", &jwt),
                ],
                &body,
            )
            .await
        }
    };

    // Forged (a key Plaid never published, under its kid), tampered, stale, unsigned: refused.
    let (status, answer) = post(fake.forge_webhook(&body, unix_now()), body.clone()).await;
    assert_eq!(status, 401, "{answer}");
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let (status, answer) = post(fake.sign_webhook(&body, unix_now()), tampered).await;
    assert_eq!(status, 401, "{answer}");
    let (status, _) = post(fake.sign_webhook(&body, unix_now() - 600), body.clone()).await;
    assert_eq!(status, 401);
    let (status, _) = stack.a.admin_post("/webhooks/plaid", &[], &body).await;
    assert_eq!(status, 401);
    // Nothing changed: still the old value, from the cache.
    assert_eq!(double(&balance(&stack.a, &token).await.values[0]), before);
    assert_eq!(balance_calls(&stack.plaid), 1);

    // The real webhook, sent by the fake Plaid itself.
    fake.set_webhook_url(Some(format!("http://{}/webhooks/plaid", stack.a.admin)));
    let mut fields = serde_json::Map::new();
    fields.insert("webhook_type".into(), json!("TRANSACTIONS"));
    fields.insert("webhook_code".into(), json!("SYNC_UPDATES_AVAILABLE"));
    fields.insert("initial_update_complete".into(), json!(true));
    fields.insert("historical_update_complete".into(), json!(true));
    let delivery = fake.send_webhook(&item, fields.clone()).await.unwrap();
    assert_eq!(delivery.status, 200, "{delivery:?}\n{}", stack.a.log());
    let answer: Value = serde_json::from_str(&delivery.body).unwrap();
    assert_eq!(answer["outcome"], "refreshed", "{answer}");
    assert_eq!(answer["refreshing"], 1, "{answer}");

    // The next request sees the new balance (refreshed in the background, or fetched now).
    let started = Instant::now();
    loop {
        let response = balance(&stack.a, &token).await;
        if response.statuses[0] == St::Present as i32 && double(&response.values[0]) == after {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {response:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The other replica never held the Item locally: the shared tier gives it the new value.
    assert_eq!(double(&balance(&stack.b, &token).await.values[0]), after);
    let calls = balance_calls(&stack.plaid);
    assert_eq!(calls, 2, "one refresh for the webhook");

    // A duplicate (Plaid re-sends the same body, signed again): accepted, changes nothing.
    let (status, answer) = post(
        fake.sign_webhook(delivery.sent.as_bytes(), unix_now()),
        delivery.sent.clone().into_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("duplicate"), "{answer}");
    // An older webhook arriving late: superseded.
    let late = serde_json::to_vec(&json!({
        "webhook_type": "TRANSACTIONS", "webhook_code": "DEFAULT_UPDATE", "item_id": item,
        "new_transactions": 3, "environment": "sandbox",
    }))
    .unwrap();
    let (status, answer) = post(fake.sign_webhook(&late, unix_now() - 100), late).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("superseded"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(balance_calls(&stack.plaid), calls);
    assert_eq!(double(&balance(&stack.a, &token).await.values[0]), after);

    // One key fetch so far (cached); a rotated key is fetched once, on its first webhook.
    assert_eq!(key_calls(&stack.plaid), 1);
    fake.rotate_webhook_key();
    fake.set_balance(&item, 1.0, 2.0).unwrap();
    let mut repaired = serde_json::Map::new();
    repaired.insert("webhook_type".into(), json!("ITEM"));
    repaired.insert("webhook_code".into(), json!("LOGIN_REPAIRED"));
    let delivery = fake.send_webhook(&item, repaired).await.unwrap();
    assert_eq!(delivery.status, 200, "{delivery:?}");
    assert_eq!(key_calls(&stack.plaid), 2);
    let newest = expected_available(seed, 1, Some(1.0));
    let started = Instant::now();
    while double(&balance(&stack.a, &token).await.values[0]) != newest {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Replica B copied the previous value into its own tier (its TTL is 10 minutes), and the
    // webhook reached A only: A's invalidation, published on the shared tier's channel, makes B
    // read the refreshed value instead of serving its copy as fresh.
    let started = Instant::now();
    loop {
        let response = balance(&stack.b, &token).await;
        if double(&response.values[0]) == newest {
            assert_eq!(response.statuses[0], St::Present as i32);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "replica B still serves its copy: {response:?}\n{}",
            stack.b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A told B of each of the two webhooks it acted on, and B applied both (B never fetched
    // the Item, so it had nothing to relay). The counters exist from start-up at 0.
    assert_eq!(stack.a.metric(PUBLISHED).await, Some(2.0));
    let applied = stack
        .b
        .metric_until(APPLIED, Duration::from_secs(10), |v| v >= 2.0)
        .await;
    assert_eq!(applied, 2.0);
    assert_eq!(stack.b.metric(PUBLISHED).await, Some(0.0));
    assert_eq!(stack.a.metric(APPLIED).await, Some(0.0));
    // Two refreshing webhooks, the duplicate, the late one, and four refused (forged,
    // tampered, stale, unsigned).
    for (outcome, count) in [
        ("refreshed", 2.0),
        ("duplicate", 1.0),
        ("superseded", 1.0),
        ("rejected", 4.0),
    ] {
        let series = format!("feature_gateway_plaid_webhooks_total{{outcome=\"{outcome}\"}}");
        assert_eq!(stack.a.metric(&series).await, Some(count), "{series}");
    }
}

/// The shared tier's invalidation messages this replica sent.
const PUBLISHED: &str =
    "feature_gateway_cache_invalidations_total{source=\"plaid\",event=\"published\"}";
/// Other replicas' invalidation messages this replica applied.
const APPLIED: &str =
    "feature_gateway_cache_invalidations_total{source=\"plaid\",event=\"applied\"}";

#[tokio::test]
async fn a_webhook_to_a_replica_that_never_fetched_the_item_reaches_the_one_that_did() {
    let stack = start("e2e-relay:").await;
    let fake = stack.plaid.plaid();
    let seed = stack.plaid.seed();
    let (token, item) = (fake.access_token(2), fake.item_id(2));
    let before = expected_available(seed, 2, None);

    // B fetches the Item from Plaid (so B knows its access token); A only copies B's answer
    // from the shared tier, so A cannot tell which token the Item's webhooks are about.
    assert_eq!(double(&balance(&stack.b, &token).await.values[0]), before);
    assert_eq!(double(&balance(&stack.a, &token).await.values[0]), before);
    assert_eq!(balance_calls(&stack.plaid), 1);

    fake.set_balance(&item, 777.0, 800.0).unwrap();
    let after = expected_available(seed, 2, Some(777.0));
    assert_ne!(before, after);

    // The webhook reaches A, which publishes it by the Item's id; B resolves the Item to its
    // token, invalidates it in both tiers, refreshes it, and publishes the token's hash so A
    // drops its copy too.
    fake.set_webhook_url(Some(format!("http://{}/webhooks/plaid", stack.a.admin)));
    let mut fields = serde_json::Map::new();
    fields.insert("webhook_type".into(), json!("TRANSACTIONS"));
    fields.insert("webhook_code".into(), json!("SYNC_UPDATES_AVAILABLE"));
    let delivery = fake.send_webhook(&item, fields).await.unwrap();
    assert_eq!(delivery.status, 200, "{delivery:?}\n{}", stack.a.log());
    let answer: Value = serde_json::from_str(&delivery.body).unwrap();
    assert_eq!(answer["invalidated"], 0, "{answer}");
    assert_eq!(answer["published"], true, "{answer}");

    for (name, gw) in [("B", &stack.b), ("A", &stack.a)] {
        let started = Instant::now();
        loop {
            let response = balance(gw, &token).await;
            if double(&response.values[0]) == after {
                assert_eq!(response.statuses[0], St::Present as i32);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "replica {name} still serves its copy: {response:?}\n{}",
                gw.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A published the webhook by the Item's id and B applied it; B relayed the Item's token
    // (by hash) once, and A applied that. Both counters exist from start-up at 0.
    assert_eq!(stack.a.metric(PUBLISHED).await, Some(1.0));
    assert_eq!(
        stack.b.metric(PUBLISHED).await,
        Some(1.0),
        "B relayed nothing"
    );
    for (name, gw) in [("B", &stack.b), ("A", &stack.a)] {
        let applied = gw
            .metric_until(APPLIED, Duration::from_secs(10), |v| v >= 1.0)
            .await;
        assert_eq!(applied, 1.0, "replica {name}");
    }
}
