//! End-to-end: a `redis` source in `sentinel` mode, through the real binary, against a real
//! primary, its replica and a Redis Sentinel (Debian's `redis-server --sentinel`) on loopback.
//!
//! Features are served from the primary the sentinel names. When the primary is killed, the
//! sentinel promotes the replica and the gateway follows it by itself: features come back
//! PRESENT, with the same values, within a bound derived from the sentinel's and the source's
//! timeouts. Meanwhile, requests sent without pause all succeed as RPCs (the failing source
//! shows in the feature statuses) and no feature is ever served with a wrong value.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use end_to_end::{GatewayProcess, d, eventually, i, map, redis::RedisSentinel, s, statuses};
use proto::v1::{self, FeatureStatus as St, feature_service_client::FeatureServiceClient};

type Client = FeatureServiceClient<tonic::transport::Channel>;

/// The feature service's deadline.
const DEADLINE: Duration = Duration::from_millis(1000);
/// The source's `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest wait of the Redis client between two reconnection attempts (see
/// `fetchers/redis/src/client.rs`).
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Slack for a loaded machine: the bounds below are what the configuration allows, times this.
const SLACK: u32 = 5;

/// The users seeded, with their stats.
const USERS: [(&str, i64, f64, &str); 2] = [("u1", 12, 42.5, "FR"), ("u2", 3, 7.25, "DE")];

fn config(cluster: &RedisSentinel) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"

[sources.online]
kind = "redis"
url = "{url}"
mode = "sentinel"
sentinel_service_name = "{service}"
connect_timeout = "{connect_ms}ms"
command_timeout = "{deadline_ms}ms"
timeout = "{deadline_ms}ms"
required = true

[views.user_stats]
source = "online"
entities = ["user_id"]
key = "user_stats:{{user_id}}"
[views.user_stats.features]
txn_count_24h = {{ type = "int64" }}
avg_amount_30d = {{ type = "double" }}
last_country = {{ type = "string" }}

[feature_services.stats]
deadline = "{deadline_ms}ms"
features = ["user_stats:txn_count_24h", "user_stats:avg_amount_30d", "user_stats:last_country"]
"#,
        url = cluster.url(),
        service = RedisSentinel::SERVICE,
        connect_ms = CONNECT_TIMEOUT.as_millis(),
        deadline_ms = DEADLINE.as_millis(),
    )
}

/// What one request for a user was answered.
#[derive(Debug)]
enum Outcome {
    /// Every feature PRESENT with the user's values.
    Present,
    /// The source failing: no feature PRESENT, no value served.
    SourceDown(Vec<St>),
}

/// Asks for `user`'s stats and checks the answer is right whatever the source's state: an RPC
/// that fails, a PRESENT feature with another value, a value served with a failing status, or a
/// mix of PRESENT and failing features, each fails the test.
async fn ask(client: &Client, user: usize) -> Outcome {
    let (id, count, amount, country) = USERS[user];
    let response = client
        .clone()
        .get_features(v1::GetFeaturesRequest {
            feature_service: "stats".into(),
            entities: map(&[("user_id", s(id))]),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|status| panic!("the RPC failed: {status:?}"))
        .into_inner();
    let got = statuses(&response.statuses);
    if got.iter().all(|st| *st == St::Present) {
        assert_eq!(response.values, [i(count), d(amount), s(country)], "{id}");
        return Outcome::Present;
    }
    assert!(
        got.iter()
            .all(|st| matches!(st, St::SourceError | St::TimedOut)),
        "{id}: {response:?}"
    );
    let null = v1::Value {
        kind: Some(v1::value::Kind::NullValue(v1::NullValue::Null as i32)),
    };
    assert!(
        response.values.iter().all(|v| *v == null),
        "{id}: a value served with a failing status: {response:?}"
    );
    Outcome::SourceDown(got)
}

#[tokio::test]
async fn features_follow_a_sentinel_failover_with_no_failed_call_and_no_wrong_value() {
    let mut cluster = RedisSentinel::start();
    for (id, count, amount, country) in USERS {
        let key = format!("user_stats:{id}");
        let (count, amount) = (count.to_string(), amount.to_string());
        cluster.primary_cli(&[
            "HSET",
            &key,
            "txn_count_24h",
            &count,
            "avg_amount_30d",
            &amount,
            "last_country",
            country,
        ]);
    }
    // On the replica too before anything fails.
    assert_eq!(cluster.primary_cli(&["WAIT", "1", "5000"]).trim(), "1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&cluster)).unwrap();
    let gw = GatewayProcess::serve(&path);
    let client = gw.client().await;

    // Served through the sentinel, from the primary.
    for user in 0..USERS.len() {
        assert!(
            matches!(ask(&client, user).await, Outcome::Present),
            "{}",
            gw.log()
        );
    }

    // Requests without pause, before, during and after the failover.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (stop, client) = (stop.clone(), client.clone());
        async move {
            let mut outcomes = Vec::new();
            let mut user = 0;
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(ask(&client, user).await);
                user = (user + 1) % USERS.len();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            outcomes
        }
    });

    // The primary dies; the sentinel deems it down, then promotes the replica: within its
    // down-after time and one failover timeout.
    cluster.kill_primary();
    let killed = Instant::now();
    let failover_bound = (RedisSentinel::DOWN_AFTER + RedisSentinel::FAILOVER_TIMEOUT) * SLACK;
    eventually(
        failover_bound,
        "the sentinel promotes the replica",
        async || match cluster.current_primary() {
            Some(port) if port == cluster.replica_port() => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert!(cluster.replica_cli(&["ROLE"]).starts_with("master"));
    let promoted = Instant::now();

    // The gateway follows: its next reconnection asks the sentinel, finds the new primary and
    // serves from it, within one reconnection wait, a connection and a request.
    let recovery_bound = (RECONNECT_MAX + CONNECT_TIMEOUT + DEADLINE) * SLACK;
    eventually(recovery_bound, "features are PRESENT again", async || {
        let mut last = Vec::new();
        for user in 0..USERS.len() {
            match ask(&client, user).await {
                Outcome::Present => {}
                Outcome::SourceDown(got) => last = got,
            }
        }
        if last.is_empty() {
            Ok(())
        } else {
            Err(format!("{last:?}"))
        }
    })
    .await;
    eprintln!(
        "failover: promoted {:?} after the kill, served again {:?} after the promotion",
        promoted - killed,
        promoted.elapsed()
    );

    // A few more rounds on the new primary, then the traffic's verdict: every call answered
    // (each `ask` checked its values), the last ones PRESENT.
    let rounds_after = {
        let started = Instant::now();
        let mut n = 0;
        while n < 20 {
            assert!(matches!(
                ask(&client, n % USERS.len()).await,
                Outcome::Present
            ));
            n += 1;
        }
        started.elapsed()
    };
    stop.store(true, Ordering::Relaxed);
    let outcomes = traffic.await.unwrap();
    assert!(
        matches!(outcomes.last(), Some(Outcome::Present)),
        "{rounds_after:?}: {:?}",
        outcomes.last()
    );
    let down = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::SourceDown(_)))
        .count();
    eprintln!(
        "{} requests during the failover, {down} with the source down, none failed",
        outcomes.len()
    );
    assert!(outcomes.len() > down);
}
