//! End-to-end: the real binary answers inside its deadline whatever its sources do.
//!
//! - One feature service over a real Redis, a real PostgreSQL, the fake internal device API and
//!   the fake Plaid, with Plaid at about 3 s median latency, Redis stopped and restarted, and
//!   PostgreSQL slowed by a lock held on its table: every response comes back within its
//!   deadline (plus a generous margin: a correctness bound, not a speed claim) with the status
//!   that says what happened: TIMED_OUT, SOURCE_ERROR, STALE from the cache, PRESENT after
//!   recovery.
//! - Load shedding: with a low `[limits] max_in_flight` and a slow source, a burst of calls is
//!   partly refused at once with RESOURCE_EXHAUSTED and partly served; health is still served.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::{Duration, Instant};

use end_to_end::{
    GatewayProcess, eventually, map, postgres::PostgresServer, redis::RedisServer, s, statuses,
    with_timeout,
};
use fake_upstreams::{
    FakeConfig, FakeServer, Latency, RouteFaults,
    internal::DEVICE_REPUTATION,
    plaid::{self, PlaidConfig, data},
    seeded::rfc3339,
};
use proto::v1::{self, FeatureStatus as St};

const CLIENT_ID: &str = "e2e-resilience-client";
const SECRET: &str = "e2e-resilience-secret";
/// The feature service's deadline.
const DEADLINE: Duration = Duration::from_millis(300);
/// Slack over the deadline for a loaded 2-core machine running debug binaries.
const MARGIN: Duration = Duration::from_secs(1);

fn config(redis: &RedisServer, pg_url: &str, fake: &FakeServer) -> String {
    format!(
        r#"
[entities.user_id]
type = "string"
[entities.device_id]
type = "string"
[entities.plaid_access_token]
type = "string"

[sources.online]
kind = "redis"
url = "{redis}"
timeout = "100ms"
[sources.online.cache]
ttl = "300ms"
max_staleness = "1h"

[sources.db]
kind = "postgres"
url = "{pg_url}"
timeout = "250ms"
[sources.db.cache]
ttl = "300ms"
max_staleness = "1h"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "250ms"

[sources.plaid]
kind = "plaid"
base_url = "{base}"
client_id = "${{PLAID_CLIENT_ID}}"
secret = "${{PLAID_SECRET}}"
as_of = "{as_of}"
timeout = "30s"
[sources.plaid.cache]
ttl = "1h"

[views.user_stats]
source = "online"
entities = ["user_id"]
key = "user_stats:{{user_id}}"
features = {{ txn_count_24h = {{ type = "int64" }} }}

[views.accounts]
source = "db"
entities = ["user_id"]
query = "SELECT credit_limit FROM accounts WHERE user_id = $1"
features = {{ credit_limit = {{ type = "double" }} }}

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}

[views.plaid_balance]
source = "plaid"
entities = ["plaid_access_token"]
endpoint = "balance"
features = {{ account_count = {{ type = "int64" }} }}

[feature_services.fraud_v1]
deadline = "{deadline}ms"
features = [
  "user_stats:txn_count_24h",
  "accounts:credit_limit",
  "device:risk_score",
  "plaid_balance:account_count",
]
"#,
        redis = redis.url(),
        base = fake.base_url(),
        as_of = rfc3339(data::now(fake.seed())),
        deadline = DEADLINE.as_millis(),
    )
}

async fn fake_server() -> FakeServer {
    FakeServer::start(FakeConfig {
        population: 20,
        plaid: PlaidConfig::unlimited(CLIENT_ID, SECRET),
        ..FakeConfig::default()
    })
    .await
    .unwrap()
}

struct Called {
    statuses: Vec<St>,
    values: Vec<v1::Value>,
}

/// Calls the gateway for `user` and checks the answer came back within the deadline.
async fn call(
    client: &mut v1::feature_service_client::FeatureServiceClient<tonic::transport::Channel>,
    fake: &FakeServer,
    user: u64,
    gw: &GatewayProcess,
) -> Called {
    let request = v1::GetFeaturesRequest {
        feature_service: "fraud_v1".into(),
        entities: map(&[
            ("user_id", s(&format!("u{user}"))),
            ("device_id", s(&format!("d_{user:06}"))),
            ("plaid_access_token", s(&fake.plaid().access_token(user))),
        ]),
        ..Default::default()
    };
    let started = Instant::now();
    let response = client
        .get_features(with_timeout(request, Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", gw.log()))
        .into_inner();
    let elapsed = started.elapsed();
    assert!(
        elapsed <= DEADLINE + MARGIN,
        "answered after {elapsed:?}, deadline {DEADLINE:?}"
    );
    Called {
        statuses: statuses(&response.statuses),
        values: response.values,
    }
}

fn int(v: &v1::Value) -> i64 {
    match v.kind {
        Some(v1::value::Kind::Int64Value(i)) => i,
        ref other => panic!("expected an int64, got {other:?}"),
    }
}

/// Calls until `done` holds (each call within its deadline), at most `limit`.
async fn until(
    limit: Duration,
    what: &str,
    mut next: impl AsyncFnMut() -> Called,
    done: impl Fn(&Called) -> bool,
) -> Called {
    let started = Instant::now();
    loop {
        let answer = next().await;
        if done(&answer) {
            return answer;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}, last {:?}",
            answer.statuses
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_answer_is_inside_its_deadline_whatever_the_sources_do() {
    let fake = fake_server().await;
    // Plaid's balance at its real shape: ~3 s median, a heavy tail.
    fake.set_faults(
        plaid::ACCOUNTS_BALANCE_GET,
        RouteFaults {
            latency: Latency::LogNormal {
                median_ms: 3000.0,
                p95_ms: 5000.0,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let mut redis = RedisServer::start();
    for user in 0..4 {
        redis.cli(&["HSET", &format!("user_stats:u{user}"), "txn_count_24h", "7"]);
    }
    let pg = PostgresServer::shared();
    let db = pg.create_database();
    pg.psql(
        &db,
        "CREATE TABLE accounts (user_id text PRIMARY KEY, credit_limit double precision);
         INSERT INTO accounts VALUES ('u0', 100), ('u1', 5000.5), ('u2', 250), ('u3', 900);
         CREATE TABLE release (n int);",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&redis, &pg.url_for(&db), &fake)).unwrap();
    let gw = GatewayProcess::serve_with_env(
        &path,
        &[("PLAID_CLIENT_ID", CLIENT_ID), ("PLAID_SECRET", SECRET)],
    );
    let mut client = gw.client().await;
    use St::{Present as P, Stale, TimedOut};

    // Cold: the stores and the internal API answer; Plaid (~3 s) cannot, inside 300 ms.
    let cold = call(&mut client, &fake, 1, &gw).await;
    assert_eq!(cold.statuses, [P, P, P, TimedOut], "{}", gw.log());

    // Plaid's call was not abandoned: it lands in the cache, and from then on Plaid is served
    // at once, although every Plaid call still takes seconds.
    let warm = until(
        Duration::from_secs(40),
        "plaid filled in the background",
        async || call(&mut client, &fake, 1, &gw).await,
        |c| c.statuses[3] == P,
    )
    .await;
    assert_eq!(warm.statuses, [P, P, P, P]);
    assert_eq!(fake.stats().calls(plaid::ACCOUNTS_BALANCE_GET), 1);

    // Redis stopped: past its TTL a cached value is served STALE (until then, PRESENT from the
    // cache); a key never cached fails with the honest status (refused at once or timed out),
    // and nothing else is affected.
    redis.stop();
    let down = until(
        Duration::from_secs(20),
        "redis's cached value served stale",
        async || {
            let c = call(&mut client, &fake, 1, &gw).await;
            assert!(matches!(c.statuses[0], Stale | P), "{:?}", c.statuses);
            c
        },
        |c| c.statuses[0] == Stale,
    )
    .await;
    assert_eq!(down.statuses, [Stale, P, P, P]);
    let uncached = call(&mut client, &fake, 3, &gw).await;
    assert!(
        matches!(uncached.statuses[0], St::SourceError | St::TimedOut),
        "{:?}",
        uncached.statuses
    );
    assert_eq!(uncached.statuses[1..3], [P, P]);

    // Redis back (empty: reload it, with a new value): PRESENT again, the new value served,
    // without restarting the gateway; until then, STALE.
    redis.restart();
    for user in 0..4 {
        redis.cli(&["HSET", &format!("user_stats:u{user}"), "txn_count_24h", "8"]);
    }
    let back = until(
        Duration::from_secs(20),
        "redis recovered",
        async || {
            let c = call(&mut client, &fake, 1, &gw).await;
            assert!(matches!(c.statuses[0], Stale | P), "{:?}", c.statuses);
            c
        },
        |c| c.statuses[0] == P && int(&c.values[0]) == 8,
    )
    .await;
    assert_eq!(back.statuses, [P, P, P, P]);

    // PostgreSQL slowed: a transaction holds an exclusive lock on the table until this test
    // inserts a row into `release` (or a minute passes), so every query waits. Once the lock
    // is held and the credit limit's TTL has passed, the cached value is served STALE; a user
    // never fetched times out; the other sources are unaffected.
    let lock_db = db.clone();
    let locker = std::thread::spawn(move || {
        PostgresServer::shared().psql(
            &lock_db,
            "BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;
             DO $$ BEGIN FOR i IN 1..1200 LOOP
               EXIT WHEN EXISTS (SELECT 1 FROM release); PERFORM pg_sleep(0.05);
             END LOOP; END $$;
             COMMIT;",
        )
    });
    eventually(
        Duration::from_secs(20),
        "the table lock taken",
        async || {
            let held = pg.psql(
                &db,
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
             WHERE c.relname = 'accounts' AND l.mode = 'AccessExclusiveLock' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            );
            if held == "1" { Ok(()) } else { Err(held) }
        },
    )
    .await;
    let slow = until(
        Duration::from_secs(20),
        "postgres's cached value served stale",
        async || {
            let c = call(&mut client, &fake, 1, &gw).await;
            assert!(matches!(c.statuses[1], Stale | P), "{:?}", c.statuses);
            c
        },
        |c| c.statuses[1] == Stale,
    )
    .await;
    assert_eq!(slow.statuses, [P, Stale, P, P], "{}", gw.log());
    let never_fetched = call(&mut client, &fake, 2, &gw).await;
    assert_eq!(never_fetched.statuses[1], TimedOut);
    assert_eq!(never_fetched.statuses[2], P);
    pg.psql(&db, "INSERT INTO release VALUES (1)");
    locker.join().unwrap();

    // The lock released: PostgreSQL serves again.
    let recovered = until(
        Duration::from_secs(20),
        "postgres recovered",
        async || call(&mut client, &fake, 2, &gw).await,
        |c| c.statuses[1] == P,
    )
    .await;
    assert_eq!(recovered.statuses[..3], [P, P, P]);
}

#[tokio::test]
async fn a_saturated_gateway_sheds_at_once_and_serves_the_rest() {
    let fake = fake_server().await;
    let deadline = Duration::from_secs(6);
    // The source's latency: "at once" below means well before any source call could answer.
    let latency = Duration::from_secs(3);
    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::Fixed {
                ms: latency.as_millis() as f64,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[limits]
max_in_flight = 2

[entities.device_id]
type = "string"

[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "{deadline_ms}ms"

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
features = {{ risk_score = {{ type = "double" }} }}

[feature_services.score]
deadline = "{deadline_ms}ms"
features = ["device:risk_score"]
"#,
            base = fake.base_url(),
            deadline_ms = deadline.as_millis(),
        ),
    )
    .unwrap();
    let gw = GatewayProcess::serve(&path);
    let channel = gw.channel().await;

    let burst: Vec<_> = (0..8)
        .map(|n| {
            let mut client = v1::feature_service_client::FeatureServiceClient::new(channel.clone());
            tokio::spawn(async move {
                let request = v1::GetFeaturesRequest {
                    feature_service: "score".into(),
                    entities: map(&[("device_id", s(&format!("d_{n:06}")))]),
                    ..Default::default()
                };
                let started = Instant::now();
                let result = client
                    .get_features(with_timeout(request, Duration::from_secs(10)))
                    .await;
                (result, started.elapsed())
            })
        })
        .collect();

    // While saturated (a call has reached the slow source), health is still answered, and
    // promptly: it is never queued.
    eventually(
        Duration::from_secs(20),
        "a call reached the source",
        async || match fake.stats().calls(DEVICE_REPUTATION) {
            0 => Err("no call yet".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let started = Instant::now();
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert!(
        started.elapsed() < latency,
        "health took {:?}",
        started.elapsed()
    );

    let (mut served, mut shed) = (0, 0);
    for call in burst {
        let (result, elapsed) = call.await.unwrap();
        match result {
            Ok(response) => {
                assert_eq!(statuses(&response.into_inner().statuses), [St::Present]);
                assert!(elapsed <= deadline + MARGIN, "served after {elapsed:?}");
                served += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                // At once: before the source could have answered.
                assert!(elapsed < latency, "shed after {elapsed:?}");
                shed += 1;
            }
        }
    }
    assert!((1..=2).contains(&served), "{served} served");
    assert_eq!(served + shed, 8);
    // Shed calls never reached the source.
    assert_eq!(fake.stats().calls(DEVICE_REPUTATION), served);
    let metrics = gw.admin_get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "feature_gateway_requests_shed_total{{method=\"GetFeatures\"}} {shed}"
        )),
        "{metrics}"
    );
}
