//! End-to-end: the shared cache tier under failure, with real gateway processes, a real Redis and
//! the fake Plaid, in real time (no timestamp is made up: every ordering comes from calls that
//! really overlapped).
//!
//! - Redis hung (SIGSTOP) or dead (SIGKILL) is a miss: a lookup waits at most the tier's
//!   `timeout`, the answer comes from Plaid within the feature service's deadline, with Plaid's
//!   values, and the tier's error counters move. When Redis is back, the tier is used again.
//! - Two replicas: a slow Plaid call that read the balance before it changed, answering after a
//!   newer call on the other replica stored the new balance, does not put its older answer back
//!   in the tier; and a webhook that arrives while such a call is held keeps its older answer
//!   out of both tiers on every replica.
//!
//! Slow calls are the fake Plaid's `hold_next`: the answer is read when the call arrives and
//! sent later, so it really is older than a change made meanwhile.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::{GatewayProcess, eventually, map, redis::RedisServer, s, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{self, ACCOUNTS_BALANCE_GET, PlaidConfig, PlaidFaults, PlaidHoldNext, data},
    seeded::rfc3339,
};
use proto::v1::{self, FeatureStatus as St};
use serde_json::json;

const CLIENT_ID: &str = "e2e-shared-tier-client";
/// Plaid users: one per token a test fetches.
const POPULATION: u64 = 64;
const SECRET: &str = "e2e-shared-tier-s3cr3t";

/// How the gateways under test are configured.
struct Settings {
    /// The feature services' deadline.
    deadline: Duration,
    /// The shared tier's `timeout`.
    shared_timeout: Duration,
}

fn config(plaid: &FakeServer, redis: &RedisServer, prefix: &str, settings: &Settings) -> String {
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
timeout = "30s"

[sources.plaid.cache]
ttl = "10m"
max_staleness = "1h"
shared = {{ url = "{redis}", key_prefix = "{prefix}", timeout = "{shared_ms}ms" }}

[views.plaid_balance]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "balance"
[views.plaid_balance.features]
available_total = {{ type = "double" }}
account_count = {{ type = "int64" }}

[views.plaid_accounts]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "accounts"
[views.plaid_accounts.features]
account_count = {{ type = "int64" }}

[plaid_webhooks]
source = "plaid"

[feature_services.balance]
deadline = "{deadline_ms}ms"
features = ["plaid_balance:available_total", "plaid_balance:account_count"]

[feature_services.accounts]
deadline = "{deadline_ms}ms"
features = ["plaid_accounts:account_count"]
"#,
        base = plaid.base_url(),
        as_of = rfc3339(data::now(plaid.seed())),
        redis = redis.url(),
        shared_ms = settings.shared_timeout.as_millis(),
        deadline_ms = settings.deadline.as_millis(),
    )
}

struct Stack {
    plaid: FakeServer,
    redis: RedisServer,
    replicas: Vec<GatewayProcess>,
    prefix: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

const ENV: [(&str, &str); 2] = [("PLAID_CLIENT_ID", CLIENT_ID), ("PLAID_SECRET", SECRET)];

/// The fake Plaid, Redis, and `replicas` gateways sharing the tier under `prefix`.
async fn start(prefix: &str, replicas: usize, settings: &Settings) -> Stack {
    let plaid = FakeServer::start(FakeConfig {
        population: POPULATION,
        plaid: PlaidConfig::unlimited(CLIENT_ID, SECRET),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&plaid, &redis, prefix, settings)).unwrap();
    let replicas = (0..replicas)
        .map(|_| GatewayProcess::serve_with_env(&path, &ENV))
        .collect();
    Stack {
        plaid,
        redis,
        replicas,
        prefix: prefix.to_owned(),
        config: path,
        _dir: dir,
    }
}

impl Stack {
    /// One more replica on the same configuration.
    fn add_replica(&mut self) -> &GatewayProcess {
        self.replicas
            .push(GatewayProcess::serve_with_env(&self.config, &ENV));
        self.replicas.last().unwrap()
    }

    /// The balance view's keys in Redis.
    fn tier_keys(&self) -> Vec<String> {
        let pattern = format!("{}plaid:plaid_balance:*", self.prefix);
        let keys = self.redis.cli(&["--scan", "--pattern", &pattern]);
        keys.lines()
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The available total held for the balance view in Redis: `None` when the key is missing
    /// or holds an invalidation's tombstone. Only for tests that fetch one token's balance.
    fn tier_balance(&self) -> Option<f64> {
        let keys = self.tier_keys();
        assert!(keys.len() <= 1, "{keys:?}");
        let text = self.redis.cli(&["GET", keys.first()?]);
        let entry: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        entry["row"]["c"][0]["d"].as_f64()
    }

    /// How many scripted writes (answers and tombstones) Redis has run.
    fn tier_writes(&self) -> u64 {
        self.redis
            .cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_eval:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    fn balance_route(&self) -> plaid::PlaidRouteStats {
        self.plaid.plaid().stats().route(ACCOUNTS_BALANCE_GET)
    }
}

async fn get(gw: &GatewayProcess, service: &str, token: &str) -> v1::GetFeaturesResponse {
    let request = v1::GetFeaturesRequest {
        feature_service: service.into(),
        entities: map(&[("plaid_access_token", s(token))]),
        include_metadata: true,
        ..Default::default()
    };
    // The client's timeout is far from binding: the feature service's deadline is.
    gw.client()
        .await
        .get_features(with_timeout(request, Duration::from_secs(60)))
        .await
        .unwrap()
        .into_inner()
}

async fn balance(gw: &GatewayProcess, token: &str) -> v1::GetFeaturesResponse {
    get(gw, "balance", token).await
}

fn double(v: &v1::Value) -> f64 {
    match v.kind {
        Some(v1::value::Kind::DoubleValue(d)) => d,
        ref other => panic!("expected a double, got {other:?}"),
    }
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

/// Asserts a balance answered PRESENT with user `user`'s value (and its account count).
#[track_caller]
fn assert_balance(response: &v1::GetFeaturesResponse, want: f64) {
    assert_eq!(
        statuses(&response.statuses),
        [St::Present, St::Present],
        "{response:?}"
    );
    assert_eq!(double(&response.values[0]), want, "{response:?}");
}

fn cache_outcome(response: &v1::GetFeaturesResponse) -> v1::CacheOutcome {
    v1::CacheOutcome::try_from(response.metadata[0].cache).unwrap()
}

fn shared_errors(op: &str) -> String {
    format!("feature_gateway_cache_shared_errors_total{{source=\"plaid\",op=\"{op}\"}}")
}

const SHARED_MISSES: &str =
    "feature_gateway_cache_shared_lookups_total{source=\"plaid\",outcome=\"miss\"}";

/// Polls bound for states that follow at once from a step (a metric, a write landing): long, so
/// a loaded machine only makes the test slower.
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_hung_or_dead_shared_tier_is_a_miss_within_its_timeout_and_plaid_answers() {
    // A lookup and a write that both waited the tier's whole timeout would not fit within the
    // deadline: a hung Redis may cost a request one timeout, not two.
    let settings = Settings {
        deadline: Duration::from_secs(4),
        shared_timeout: Duration::from_millis(2400),
    };
    let mut stack = start("e2e-tier-down:", 1, &settings).await;
    let gw = &stack.replicas[0];
    let seed = stack.plaid.seed();
    let token = |user: u64| stack.plaid.plaid().access_token(user);

    // Healthy: a miss in both tiers, answered by Plaid and written to Redis.
    let first = balance(gw, &token(0)).await;
    assert_balance(&first, expected_available(seed, 0, None));
    assert_eq!(cache_outcome(&first), v1::CacheOutcome::Miss);
    eventually(
        SETTLE,
        "the answer is written to Redis",
        async || match stack.tier_balance() {
            Some(v) if v == expected_available(seed, 0, None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(gw.metric(&shared_errors("get")).await, Some(0.0));
    assert_eq!(gw.metric(&shared_errors("set")).await, Some(0.0));
    assert_eq!(gw.metric(SHARED_MISSES).await, Some(1.0));

    // Hung: the lookup waits out its timeout, then Plaid answers, within the deadline.
    stack.redis.pause();
    let hung = balance(gw, &token(1)).await;
    assert_balance(&hung, expected_available(seed, 1, None));
    assert_eq!(cache_outcome(&hung), v1::CacheOutcome::Miss);
    let spent = hung.request_metadata.as_ref().unwrap();
    assert!(
        spent.total_us >= settings.shared_timeout.as_micros() as i64,
        "the lookup waited its timeout: {spent:?}"
    );
    assert_eq!(gw.metric(&shared_errors("get")).await, Some(1.0));
    // The write of Plaid's answer fails too, in its own time.
    let failed_writes = gw
        .metric_until(&shared_errors("set"), SETTLE, |v| v >= 1.0)
        .await;
    assert_eq!(failed_writes, 1.0);
    // What the replica holds itself is served without asking Redis.
    let local = balance(gw, &token(0)).await;
    assert_balance(&local, expected_available(seed, 0, None));
    assert_eq!(cache_outcome(&local), v1::CacheOutcome::Hit);
    assert_eq!(gw.metric(&shared_errors("get")).await, Some(1.0));

    // Dead: the lookup fails at once, and Plaid answers.
    stack.redis.resume();
    stack.redis.stop();
    let dead = balance(gw, &token(2)).await;
    assert_balance(&dead, expected_available(seed, 2, None));
    assert_eq!(cache_outcome(&dead), v1::CacheOutcome::Miss);
    let get_errors = gw
        .metric_until(&shared_errors("get"), SETTLE, |v| v >= 2.0)
        .await;
    assert_eq!(get_errors, 2.0);
    // One Plaid call per token: nothing was retried, nothing served from nowhere.
    assert_eq!(stack.balance_route().ok, 3);

    // Back (empty): once the gateway has reconnected by itself (its invalidation channel
    // subscribes again), answers are written to Redis again.
    stack.redis.restart();
    gw.metric_until(SUBSCRIBED, SETTLE, |v| v >= 2.0).await;
    let mut user = 3;
    eventually(SETTLE, "answers reach Redis again", async || {
        let response = balance(gw, &token(user)).await;
        assert_balance(&response, expected_available(seed, user, None));
        user += 1;
        assert!(user < POPULATION, "out of Plaid users");
        match stack.tier_keys().len() {
            0 => {
                // The other connection may reconnect a little later: not every 20 ms.
                tokio::time::sleep(Duration::from_millis(250)).await;
                Err("nothing in Redis yet".to_owned())
            }
            _ => Ok(()),
        }
    })
    .await;
}

/// Subscriptions to the invalidation channel, one per (re)connection.
const SUBSCRIBED: &str =
    "feature_gateway_cache_invalidations_total{source=\"plaid\",event=\"subscribed\"}";

/// How long the fake Plaid holds a slow call's answer: far longer than the steps the test takes
/// meanwhile (checked: the test fails, naming it, if the answer came back too soon).
const HOLD: Duration = Duration::from_secs(8);

/// Scripts the next balance call to read the balance at once and answer [`HOLD`] later.
fn hold_next_balance(stack: &Stack) {
    stack
        .plaid
        .plaid()
        .set_faults(
            ACCOUNTS_BALANCE_GET,
            PlaidFaults {
                hold_next: Some(PlaidHoldNext {
                    count: 1,
                    ms: HOLD.as_millis() as f64,
                }),
                ..PlaidFaults::default()
            },
        )
        .unwrap();
}

/// Waits until the fake Plaid holds a balance answer (its balance read).
async fn until_held(stack: &Stack) {
    eventually(SETTLE, "a balance answer is held", async || {
        match stack.balance_route().held {
            0 => Err("not yet".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
}

/// Waits until `gw` has no Plaid call in flight (the held one's answer has been handled).
async fn until_idle(gw: &GatewayProcess) {
    gw.metric_until(
        "feature_gateway_source_fetches_in_flight{source=\"plaid\"}",
        HOLD + SETTLE,
        |v| v == 0.0,
    )
    .await;
}

#[tokio::test]
async fn a_slow_call_older_than_another_replicas_answer_does_not_replace_it_in_the_tier() {
    let settings = Settings {
        deadline: Duration::from_secs(3),
        shared_timeout: Duration::from_millis(500),
    };
    let mut stack = start("e2e-tier-race:", 2, &settings).await;
    let fake = stack.plaid.plaid();
    let seed = stack.plaid.seed();
    let (token, item) = (fake.access_token(1), fake.item_id(1));
    let before = expected_available(seed, 1, None);
    let after = expected_available(seed, 1, Some(5000.0));
    assert_ne!(before, after);

    // Replica A's call reads the balance, then takes longer than A's deadline to answer: A's
    // request ends TIMED_OUT and the call goes on in the background to fill the cache.
    hold_next_balance(&stack);
    let slow = tokio::spawn({
        let a = stack.replicas[0].grpc.clone();
        let token = token.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{a}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            v1::feature_service_client::FeatureServiceClient::new(channel)
                .get_features(with_timeout(
                    v1::GetFeaturesRequest {
                        feature_service: "balance".into(),
                        entities: map(&[("plaid_access_token", s(&token))]),
                        ..Default::default()
                    },
                    Duration::from_secs(60),
                ))
                .await
                .unwrap()
                .into_inner()
        }
    });
    until_held(&stack).await;

    // The balance changes; replica B asks afterwards: a newer call, answered at once, stored.
    fake.set_balance(&item, 5000.0, 5100.0).unwrap();
    let (a, b) = (&stack.replicas[0], &stack.replicas[1]);
    let newer = balance(b, &token).await;
    assert_balance(&newer, after);
    assert_eq!(cache_outcome(&newer), v1::CacheOutcome::Miss);
    assert_eq!(
        stack.balance_route().ok,
        1,
        "the held answer came back before the newer call's: raise HOLD"
    );
    eventually(SETTLE, "B's answer is in Redis", async || {
        match stack.tier_balance() {
            Some(v) if v == after => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let writes = stack.tier_writes();
    let timed_out = slow.await.unwrap();
    assert_eq!(
        statuses(&timed_out.statuses),
        [St::TimedOut, St::TimedOut],
        "{timed_out:?}"
    );

    // The held answer comes back to A, which tries to store it in the tier: refused, because
    // B's call started later.
    eventually(
        HOLD + SETTLE,
        "the held answer is sent",
        async || match stack.balance_route().ok {
            2 => Ok(()),
            n => Err(format!("{n} answers")),
        },
    )
    .await;
    until_idle(a).await;
    eventually(
        SETTLE,
        "A tried to write its answer",
        async || match stack.tier_writes() {
            n if n > writes => Ok(()),
            n => Err(format!("{n} scripted writes")),
        },
    )
    .await;
    assert_eq!(stack.tier_writes(), writes + 1);
    assert_eq!(stack.tier_balance(), Some(after), "the older answer won");
    assert_eq!(a.metric(&shared_errors("set")).await, Some(0.0));

    // A replica with nothing of its own reads the newer answer from the tier, without Plaid.
    let c = stack.add_replica();
    let read = balance(c, &token).await;
    assert_balance(&read, after);
    assert_eq!(cache_outcome(&read), v1::CacheOutcome::Hit);
    assert_eq!(stack.balance_route().ok, 2);
}

#[tokio::test]
async fn a_webhook_during_a_slow_call_keeps_its_older_answer_out_of_both_tiers() {
    let settings = Settings {
        deadline: Duration::from_secs(3),
        shared_timeout: Duration::from_millis(500),
    };
    let stack = start("e2e-tier-hook:", 2, &settings).await;
    let fake = stack.plaid.plaid();
    let seed = stack.plaid.seed();
    let (token, item) = (fake.access_token(2), fake.item_id(2));
    let (a, b) = (&stack.replicas[0], &stack.replicas[1]);
    let before = expected_available(seed, 2, None);
    let after = expected_available(seed, 2, Some(777.0));
    assert_ne!(before, after);

    // B learns the Item's access token from an answer of its own (the accounts view).
    let accounts = get(b, "accounts", &token).await;
    assert_eq!(statuses(&accounts.statuses), [St::Present]);

    // A's balance call reads the old balance and is held past A's deadline.
    hold_next_balance(&stack);
    let slow = tokio::spawn({
        let a = a.grpc.clone();
        let token = token.clone();
        async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{a}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            v1::feature_service_client::FeatureServiceClient::new(channel)
                .get_features(with_timeout(
                    v1::GetFeaturesRequest {
                        feature_service: "balance".into(),
                        entities: map(&[("plaid_access_token", s(&token))]),
                        ..Default::default()
                    },
                    Duration::from_secs(60),
                ))
                .await
                .unwrap()
                .into_inner()
        }
    });
    until_held(&stack).await;

    // The balance changes and Plaid tells B. B invalidates the token in Redis (for every view)
    // and tells A, which marks its call in flight as older than the invalidation.
    fake.set_balance(&item, 777.0, 800.0).unwrap();
    fake.set_webhook_url(Some(format!("http://{}/webhooks/plaid", b.admin)));
    let mut fields = serde_json::Map::new();
    fields.insert("webhook_type".into(), json!("TRANSACTIONS"));
    fields.insert("webhook_code".into(), json!("SYNC_UPDATES_AVAILABLE"));
    let delivery = fake.send_webhook(&item, fields).await.unwrap();
    assert_eq!(delivery.status, 200, "{delivery:?}\n{}", b.log());
    let answer: serde_json::Value = serde_json::from_str(&delivery.body).unwrap();
    assert_eq!(answer["outcome"], "refreshed", "{answer}");
    assert_eq!(answer["published"], true, "{answer}");
    let applied = a.metric_until(APPLIED, SETTLE, |v| v >= 1.0).await;
    assert_eq!(applied, 1.0);

    // B asks for the balance: the tombstone is a miss, a newer call answers and is stored.
    let newer = balance(b, &token).await;
    assert_balance(&newer, after);
    assert_eq!(
        stack.balance_route().ok,
        1,
        "the held answer came back before the newer call's: raise HOLD"
    );
    eventually(SETTLE, "B's answer is in Redis", async || {
        match stack.tier_balance() {
            Some(v) if v == after => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let timed_out = slow.await.unwrap();
    assert_eq!(
        statuses(&timed_out.statuses),
        [St::TimedOut, St::TimedOut],
        "{timed_out:?}"
    );

    // The held answer comes back to A after the webhook: stored in neither tier.
    eventually(
        HOLD + SETTLE,
        "the held answer is sent",
        async || match stack.balance_route().ok {
            2 => Ok(()),
            n => Err(format!("{n} answers")),
        },
    )
    .await;
    until_idle(a).await;
    assert_eq!(stack.tier_balance(), Some(after), "the older answer won");
    // A serves the new balance, from the tier (B's answer), without calling Plaid again.
    let read = balance(a, &token).await;
    assert_balance(&read, after);
    assert_eq!(cache_outcome(&read), v1::CacheOutcome::Hit);
    let again = balance(a, &token).await;
    assert_balance(&again, after);
    assert_eq!(stack.balance_route().ok, 2);
}

/// Other replicas' invalidation messages this replica applied.
const APPLIED: &str =
    "feature_gateway_cache_invalidations_total{source=\"plaid\",event=\"applied\"}";
