//! End-to-end: a `redis` source in `cluster` mode, through the real binary, against a real Redis
//! Cluster on loopback (Debian's redis-server), under failure.
//!
//! - `feature-gateway materialize` loads the users into a cluster of three primaries, each with
//!   a replica: every row lands on its slot's primary and on that primary's replica, and is
//!   served back PRESENT.
//! - A primary is SIGKILLed under continuous traffic (four request loops without pause). Its
//!   replica is promoted after the cluster's node timeout
//!   ([`RedisCluster::FAILOVER_NODE_TIMEOUT`], 2 s here; Redis's default is 15 s) and the
//!   features come back PRESENT by themselves. Measured on the 2-core test machine (three runs):
//!   promotion 3.7 to 4.1 s after the kill, every feature PRESENT again 0.2 to 0.5 s after the
//!   promotion (within the client's 500 ms reconnection wait), 3.9 to 4.6 s after the kill in
//!   all: node timeout + about 2.5 s. Until then the whole source reads SOURCE_ERROR, at once
//!   (the client reconnects to the cluster as a whole, and cannot while a node in its slot map is
//!   down), and the requests in flight at the kill TIMED_OUT at their deadline. Meanwhile no RPC
//!   fails, no request takes the gateway longer than its deadline, every answer is either
//!   PRESENT with the value materialized or SOURCE_ERROR / TIMED_OUT with no value, and no key
//!   reads as NOT_FOUND.
//! - A slot holding 40 of the users is moved to another primary while they are read without
//!   pause, five keys at a time (`CLUSTER SETSLOT ... IMPORTING / MIGRATING`, `MIGRATE`, then
//!   `SETSLOT ... NODE`): through the `ASK` answers of the migration (a key already moved: the
//!   fetcher asks the new node after `ASKING`) and the `MOVED` ones after it (the fetcher sends
//!   again once the client has read the slot map), every answer is PRESENT with its value, and no
//!   connection task of the client ends.
//! - The shared cache tier of a Plaid source on the cluster (`mode = "cluster"`), between two
//!   gateways: one Plaid call per token serves both, a batch's lookup reads keys of every
//!   primary at once, and a webhook to one gateway reaches the other through the cluster's
//!   invalidation channel.
//!
//! The checks are on every answer the traffic got, not on samples; the bounds on time are what
//! the configuration allows times a slack for a loaded machine, and the figures measured are
//! printed.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use end_to_end::{
    GatewayProcess, d, eventually, gateway_binary, i, map, redis::RedisCluster, redis::key_slot, s,
    statuses, with_timeout,
};
use fake_upstreams::{
    FakeConfig, FakeServer,
    plaid::{self, PlaidConfig, data},
    seeded::rfc3339,
};
use proto::v1::{self, FeatureStatus as St, feature_service_client::FeatureServiceClient};

type Client = FeatureServiceClient<tonic::transport::Channel>;

/// The feature service's deadline (and the source's `timeout` and `command_timeout`).
const DEADLINE: Duration = Duration::from_millis(1000);
/// The source's `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest wait of the Redis client between two reconnection attempts (see
/// `fetchers/redis/src/client.rs`).
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// Slack for a loaded machine: the bounds below are what the configuration allows, times this.
const SLACK: u32 = 5;
/// How much longer than its deadline the gateway may take over a request, as it reports it
/// (`request_metadata.total_us`): the deadline is enforced inside the handler; this is the
/// encoding of the answer after it, on a loaded machine.
const DEADLINE_MARGIN: Duration = Duration::from_millis(100);
/// Concurrent request loops of the traffic.
const LOOPS: usize = 4;

/// One user's row, as materialized.
#[derive(Clone, Debug)]
struct User {
    id: String,
    count: i64,
    amount: f64,
    country: &'static str,
}

impl User {
    fn new(id: String, n: usize) -> User {
        User {
            id,
            count: (n * 7 % 1000) as i64,
            amount: n as f64 + 0.25,
            country: ["FR", "DE", "GB", "US"][n % 4],
        }
    }

    fn key(&self) -> String {
        format!("user_stats:{}", self.id)
    }
}

/// `u0` to `u{n-1}`.
fn population(n: usize) -> Vec<User> {
    (0..n).map(|i| User::new(format!("u{i}"), i)).collect()
}

fn config(cluster: &RedisCluster) -> String {
    let addresses = cluster.addresses();
    let nodes = addresses[1..]
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[entities.user_id]
type = "string"

[sources.online]
kind = "redis"
url = "redis://{first}"
mode = "cluster"
nodes = [{nodes}]
connect_timeout = "{connect_ms}ms"
command_timeout = "{deadline_ms}ms"
timeout = "{deadline_ms}ms"

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
        first = addresses[0],
        connect_ms = CONNECT_TIMEOUT.as_millis(),
        deadline_ms = DEADLINE.as_millis(),
    )
}

/// Writes the configuration and `users` as a CSV file into `dir`, and loads them into the
/// cluster with `feature-gateway materialize`; returns the configuration's path.
fn materialize(dir: &Path, cluster: &RedisCluster, users: &[User]) -> std::path::PathBuf {
    let config = dir.join("gateway.toml");
    std::fs::write(&config, self::config(cluster)).unwrap();
    let csv = dir.join("user_stats.csv");
    let mut text = String::from("user_id,txn_count_24h,avg_amount_30d,last_country\n");
    for u in users {
        text.push_str(&format!(
            "{},{},{},{}\n",
            u.id, u.count, u.amount, u.country
        ));
    }
    std::fs::write(&csv, text).unwrap();
    let output = Command::new(gateway_binary())
        .args(["materialize", "--config", config.to_str().unwrap()])
        .args(["--view", "user_stats", "--input", csv.to_str().unwrap()])
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "materialize failed: {summary}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let n = users.len();
    assert!(
        summary.contains(&format!("{n} rows read, {n} written")),
        "{summary}"
    );
    config
}

/// What one request was answered.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Every feature PRESENT with the user's values.
    Present,
    /// The source failing: every feature with this status, no value served.
    SourceDown(St),
}

/// One answer of the traffic.
#[derive(Clone, Debug)]
struct Answer {
    /// The user's index.
    user: usize,
    /// When the request was sent.
    sent: Instant,
    /// When the answer came.
    at: Instant,
    /// The gateway's own time over the request.
    gateway: Duration,
    outcome: Outcome,
}

/// Asks for `users[user]`'s stats and checks the answer whatever the source's state: an RPC that
/// fails, a PRESENT feature with another value, a value served with a failing status, a status
/// other than PRESENT, SOURCE_ERROR and TIMED_OUT (a NOT_FOUND would be a key lost), a mix of
/// statuses, or the gateway over its deadline, each fails the test.
async fn ask(client: &Client, users: &[User], user: usize) -> Answer {
    let u = &users[user];
    let sent = Instant::now();
    let request = v1::GetFeaturesRequest {
        feature_service: "stats".into(),
        entities: map(&[("user_id", s(&u.id))]),
        include_metadata: true,
        ..Default::default()
    };
    // Far above the deadline: the gateway's own deadline is what is checked.
    let response = client
        .clone()
        .get_features(with_timeout(request, DEADLINE * SLACK))
        .await
        .unwrap_or_else(|status| panic!("{}: the RPC failed: {status:?}", u.id))
        .into_inner();
    let gateway = Duration::from_micros(
        response
            .request_metadata
            .as_ref()
            .map_or(0, |m| m.total_us.max(0) as u64),
    );
    assert!(
        gateway <= DEADLINE + DEADLINE_MARGIN,
        "{}: the gateway took {gateway:?}, past its deadline: {response:?}",
        u.id
    );
    let got = statuses(&response.statuses);
    let outcome = if got.iter().all(|st| *st == St::Present) {
        assert_eq!(
            response.values,
            [i(u.count), d(u.amount), s(u.country)],
            "{}: a wrong value",
            u.id
        );
        Outcome::Present
    } else {
        assert!(
            got.iter().all(|st| *st == got[0]) && matches!(got[0], St::SourceError | St::TimedOut),
            "{}: {response:?}",
            u.id
        );
        let null = v1::Value {
            kind: Some(v1::value::Kind::NullValue(v1::NullValue::Null as i32)),
        };
        assert!(
            response.values.iter().all(|v| *v == null),
            "{}: a value served with a failing status: {response:?}",
            u.id
        );
        Outcome::SourceDown(got[0])
    };
    Answer {
        user,
        sent,
        at: Instant::now(),
        gateway,
        outcome,
    }
}

/// Requests without pause from [`LOOPS`] loops, each over the users `pick` gives it in turn,
/// until stopped; every answer is checked by [`ask`] and kept.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Answers so far, for progress.
    answered: Arc<AtomicUsize>,
    /// Answers so far for users `marked` is true of.
    answered_marked: Arc<AtomicUsize>,
    answers: Arc<Mutex<Vec<Answer>>>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(client: &Client, users: Arc<Vec<User>>, marked: impl Fn(usize) -> bool) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let answered_marked = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let marked: Arc<Vec<bool>> = Arc::new((0..users.len()).map(marked).collect());
        let loops = (0..LOOPS)
            .map(|n| {
                let (client, users, marked) = (client.clone(), users.clone(), marked.clone());
                let (stop, answered, answered_marked, answers) = (
                    stop.clone(),
                    answered.clone(),
                    answered_marked.clone(),
                    answers.clone(),
                );
                tokio::spawn(async move {
                    // Each loop walks the users from its own offset.
                    let mut user = n * users.len() / LOOPS;
                    while !stop.load(Ordering::Relaxed) {
                        let answer = ask(&client, &users, user).await;
                        answered.fetch_add(1, Ordering::Relaxed);
                        if marked[user] {
                            answered_marked.fetch_add(1, Ordering::Relaxed);
                        }
                        answers.lock().unwrap().push(answer);
                        user = (user + 1) % users.len();
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            answered,
            answered_marked,
            answers,
            loops,
        }
    }

    /// Waits until `more` answers (for marked users, with `marked`) came after this call.
    async fn wait_for(&self, more: usize, marked: bool, what: &str) {
        let counter = if marked {
            &self.answered_marked
        } else {
            &self.answered
        };
        let target = counter.load(Ordering::Relaxed) + more;
        eventually(Duration::from_secs(60), what, async || {
            let now = counter.load(Ordering::Relaxed);
            if now >= target {
                Ok(())
            } else {
                Err(format!("{now} of {target} answers"))
            }
        })
        .await;
    }

    /// Stops the loops (a panic in one is the test's failure) and returns every answer.
    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.loops {
            handle.await.unwrap();
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// Asks for every user once, all concurrently; the users whose features were not PRESENT.
async fn not_present(client: &Client, users: &Arc<Vec<User>>) -> Vec<(String, Outcome)> {
    let mut asks = tokio::task::JoinSet::new();
    for user in 0..users.len() {
        let (client, users) = (client.clone(), users.clone());
        asks.spawn(async move { ask(&client, &users, user).await });
    }
    let mut down = Vec::new();
    for answer in asks.join_all().await {
        if answer.outcome != Outcome::Present {
            down.push((users[answer.user].id.clone(), answer.outcome));
        }
    }
    down
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_traffic_fails_over_and_its_features_come_back_with_no_wrong_value()
{
    let mut cluster = RedisCluster::start_with_replicas(3);
    let users = Arc::new(population(300));
    let dir = tempfile::tempdir().unwrap();
    let config = materialize(dir.path(), &cluster, &users);

    // Every row on its slot's primary, and on that primary's replica.
    cluster.wait_replicated();
    let nodes = cluster.cluster_nodes();
    let dbsize =
        |port: u16| -> usize { cluster.node_cli(port, &["DBSIZE"]).trim().parse().unwrap() };
    let mut stored = 0;
    for primary in nodes.iter().filter(|n| n.primary) {
        let held = dbsize(primary.port);
        let expected = users
            .iter()
            .filter(|u| primary.serves(key_slot(u.key().as_bytes())))
            .count();
        assert_eq!(held, expected, "primary {}", primary.port);
        assert_eq!(dbsize(cluster.replica_of(primary.port)), held);
        stored += held;
    }
    assert_eq!(stored, users.len());

    let gw = GatewayProcess::serve(&config);
    let client = gw.client().await;
    assert_eq!(not_present(&client, &users).await, [], "{}", gw.log());

    // Traffic without pause, before, during and after the failover.
    let victim_slot = key_slot(users[0].key().as_bytes());
    let victim = cluster.owner(victim_slot);
    let replica = cluster.replica_of(victim);
    let victim_node = nodes.iter().find(|n| n.port == victim).unwrap().clone();
    let on_victim: Vec<bool> = users
        .iter()
        .map(|u| victim_node.serves(key_slot(u.key().as_bytes())))
        .collect();
    let traffic = Traffic::start(&client, users.clone(), move |u| on_victim[u]);
    traffic
        .wait_for(200, false, "traffic before the kill")
        .await;

    // The primary dies; the others deem it failed after the node timeout, and its replica is
    // elected in its place.
    cluster.kill(victim);
    let killed = Instant::now();
    let promoted_port = cluster.wait_for_failover(
        victim,
        (RedisCluster::FAILOVER_NODE_TIMEOUT * 2 + Duration::from_secs(2)) * SLACK,
    );
    let promoted = Instant::now();
    assert_eq!(promoted_port, replica);

    // The gateway follows by itself: its next reconnection reads the new slot map.
    let recovery_bound = (RECONNECT_MAX + CONNECT_TIMEOUT + DEADLINE) * SLACK;
    eventually(recovery_bound, "every feature PRESENT again", async || {
        let down = not_present(&client, &users).await;
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} users not PRESENT: {:?}",
                down.len(),
                &down[..down.len().min(3)]
            ))
        }
    })
    .await;
    let recovered = Instant::now();
    traffic
        .wait_for(200, false, "traffic after the failover")
        .await;
    let answers = traffic.stop().await;

    // The traffic's verdict (each answer was checked as it came): every RPC answered, and the
    // last non-PRESENT answer came before the features were seen PRESENT again.
    let down: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.outcome != Outcome::Present)
        .collect();
    let last_down = down.iter().map(|a| a.at).max();
    let first_down = down.iter().map(|a| a.at).min();
    let slowest = answers.iter().map(|a| a.gateway).max().unwrap();
    let back = last_down.map_or(Duration::ZERO, |t| t.saturating_duration_since(killed));
    eprintln!(
        "failover: replica promoted {:.2} s after the kill; features PRESENT again {:.2} s after \
         the kill ({:.2} s after the promotion; the traffic's last failed answer {:.2} s after \
         the kill, its first {:?}); {} answers, {} not PRESENT ({} SOURCE_ERROR, {} TIMED_OUT); \
         slowest in the gateway {slowest:?}",
        (promoted - killed).as_secs_f64(),
        (recovered - killed).as_secs_f64(),
        recovered.saturating_duration_since(promoted).as_secs_f64(),
        back.as_secs_f64(),
        first_down.map(|t| t.saturating_duration_since(killed)),
        answers.len(),
        down.len(),
        down.iter()
            .filter(|a| a.outcome == Outcome::SourceDown(St::SourceError))
            .count(),
        down.iter()
            .filter(|a| a.outcome == Outcome::SourceDown(St::TimedOut))
            .count(),
    );
    assert!(
        answers
            .iter()
            .rev()
            .take(100)
            .all(|a| a.outcome == Outcome::Present),
        "the last answers are PRESENT"
    );
    assert!(
        last_down.is_none_or(|t| t <= recovered),
        "a failure after the features were PRESENT again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_primary_while_read_serves_every_answer_present() {
    let cluster = RedisCluster::start(3);
    // 200 users spread over the slots, and 40 more whose keys share the slot of `u0`'s.
    let mut users = population(200);
    let slot = key_slot(users[0].key().as_bytes());
    let mut n = 0;
    while users
        .iter()
        .filter(|u| key_slot(u.key().as_bytes()) == slot)
        .count()
        < 40
    {
        let id = format!("s{n}");
        if key_slot(format!("user_stats:{id}").as_bytes()) == slot {
            users.push(User::new(id, users.len()));
        }
        n += 1;
    }
    let users = Arc::new(users);
    let in_slot: Vec<bool> = users
        .iter()
        .map(|u| key_slot(u.key().as_bytes()) == slot)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let config = materialize(dir.path(), &cluster, &users);
    let gw = GatewayProcess::serve(&config);
    let client = gw.client().await;
    assert_eq!(not_present(&client, &users).await, [], "{}", gw.log());

    // The slot's users are read most: half the loops' turns, whatever their place in the list.
    let moved: Vec<usize> = (0..users.len()).filter(|&u| in_slot[u]).collect();
    let order: Vec<usize> = (0..users.len())
        .flat_map(|u| [u, moved[u % moved.len()]])
        .collect();
    let ordered = Arc::new(order.iter().map(|&u| users[u].clone()).collect::<Vec<_>>());
    let marked: Vec<bool> = order.iter().map(|&u| in_slot[u]).collect();
    let traffic = Traffic::start(&client, ordered.clone(), {
        let marked = marked.clone();
        move |u| marked[u]
    });
    traffic
        .wait_for(100, true, "traffic before the migration")
        .await;

    // The slot moves to the next primary, five keys at a time, read between each step: keys
    // moved are behind ASK, the others still on the source.
    let source = cluster.owner(slot);
    let target = cluster
        .cluster_nodes()
        .into_iter()
        .find(|n| n.primary && n.port != source)
        .unwrap()
        .port;
    let asked_before = asking_calls(&cluster, target);
    let migrating = Instant::now();
    let migration = cluster.migrate_slot(slot, target);
    let mut steps = 0;
    while migration.move_keys(5) > 0 {
        steps += 1;
        traffic
            .wait_for(20, true, "traffic during the migration")
            .await;
    }
    // Every key moved, the slot still migrating: every read of the slot is an ASK.
    traffic
        .wait_for(50, true, "traffic with every key moved")
        .await;
    migration.finish(&cluster);
    let finished = Instant::now();
    assert_eq!(cluster.owner(slot), target);
    // The source now answers MOVED to clients that still route the slot to it.
    traffic
        .wait_for(200, true, "traffic after the migration")
        .await;
    let answers = traffic.stop().await;

    // Every answer PRESENT with its value, before, during (ASK followed) and after (MOVED
    // followed) the migration.
    let during = answers
        .iter()
        .filter(|a| a.sent >= migrating && a.at <= finished)
        .count();
    let failed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.outcome != Outcome::Present)
        .collect();
    eprintln!(
        "resharding: slot {slot} ({} keys) moved from port {source} to {target} in {steps} \
         steps over {:.2} s; {} answers ({during} during the migration), {} not PRESENT; {} \
         ASKING on the new node",
        moved.len(),
        (finished - migrating).as_secs_f64(),
        answers.len(),
        failed.len(),
        asking_calls(&cluster, target) - asked_before,
    );
    // The new node was asked: the migration's ASK answers were followed, not outwaited.
    let asked = asking_calls(&cluster, target) - asked_before;
    assert!(asked > 0, "no ASKING reached port {target}");
    assert!(
        failed.is_empty(),
        "{} answers not PRESENT, e.g. {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        gw.log()
    );
    assert!(
        !gw.log().contains("connection task ended"),
        "a connection task of the client ended: {}",
        gw.log()
    );
    assert_eq!(not_present(&client, &users).await, []);
}

/// How many `ASKING` commands the node on `port` has run (`INFO commandstats`).
fn asking_calls(cluster: &RedisCluster, port: u16) -> u64 {
    let stats = cluster.node_cli(port, &["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_asking:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

// ------------------------------------------------------------------------------------------------
// The shared cache tier on a cluster

const PLAID_ID: &str = "e2e-cluster-client";
const PLAID_SECRET: &str = "e2e-cluster-s3cr3t";

fn tier_config(plaid: &FakeServer, cluster: &RedisCluster) -> String {
    let addresses = cluster.addresses();
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
shared = {{ url = "redis://{first}", mode = "cluster", nodes = ["{second}"], key_prefix = "e2e-cluster:", timeout = "500ms" }}

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
        first = addresses[0],
        second = addresses[1],
    )
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

/// The balances of `tokens` in one batch: each row's available total and cache outcome.
async fn balances(gw: &GatewayProcess, tokens: &[String]) -> Vec<(f64, v1::CacheOutcome)> {
    let response = gw
        .client()
        .await
        .get_features_batch(with_timeout(
            v1::GetFeaturesBatchRequest {
                feature_service: "balance".into(),
                rows: tokens
                    .iter()
                    .map(|t| v1::EntityRow {
                        entities: map(&[("plaid_access_token", s(t))]),
                        ..Default::default()
                    })
                    .collect(),
                include_metadata: true,
                ..Default::default()
            },
            Duration::from_secs(30),
        ))
        .await
        .unwrap()
        .into_inner();
    response
        .rows
        .iter()
        .map(|row| {
            assert_eq!(
                statuses(&row.statuses),
                [St::Present, St::Present],
                "{row:?}"
            );
            let available = match row.values[0].kind {
                Some(v1::value::Kind::DoubleValue(v)) => v,
                ref other => panic!("not a double: {other:?}"),
            };
            let outcome = v1::CacheOutcome::try_from(row.metadata[0].cache).unwrap();
            (available, outcome)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_tier_on_a_cluster_serves_every_replica_and_carries_webhook_invalidations() {
    let cluster = RedisCluster::start(3);
    let plaid = FakeServer::start(FakeConfig {
        population: 8,
        plaid: PlaidConfig::unlimited(PLAID_ID, PLAID_SECRET),
        ..FakeConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, tier_config(&plaid, &cluster)).unwrap();
    let env = [
        ("PLAID_CLIENT_ID", PLAID_ID),
        ("PLAID_SECRET", PLAID_SECRET),
    ];
    let a = GatewayProcess::serve_with_env(&path, &env);
    let b = GatewayProcess::serve_with_env(&path, &env);
    let fake = plaid.plaid();
    let seed = plaid.seed();
    let tokens: Vec<String> = (0..6).map(|u| fake.access_token(u)).collect();
    let expected: Vec<f64> = (0..6).map(|u| expected_available(seed, u, None)).collect();

    // A asks Plaid for each token and writes each answer to its slot's node.
    let first = balances(&a, &tokens).await;
    assert_eq!(
        first,
        expected
            .iter()
            .map(|&v| (v, v1::CacheOutcome::Miss))
            .collect::<Vec<_>>()
    );
    let calls = || fake.stats().route(plaid::ACCOUNTS_BALANCE_GET).ok;
    assert_eq!(calls(), 6);
    // Each key on its slot's primary (written in the background: waited for).
    let primaries: Vec<u16> = cluster
        .cluster_nodes()
        .iter()
        .filter(|n| n.primary)
        .map(|n| n.port)
        .collect();
    let holders = eventually(
        Duration::from_secs(30),
        "every answer in the tier",
        async || {
            let mut holders = std::collections::BTreeSet::new();
            let mut keys = 0;
            for &port in &primaries {
                let held = cluster.node_cli(
                    port,
                    &["--scan", "--pattern", "e2e-cluster:plaid:plaid_balance:*"],
                );
                for key in held.lines().filter(|k| !k.is_empty()) {
                    assert_eq!(cluster.owner(key_slot(key.as_bytes())), port, "{key}");
                    holders.insert(port);
                    keys += 1;
                }
            }
            if keys == tokens.len() {
                Ok(holders)
            } else {
                Err(format!("{keys} keys"))
            }
        },
    )
    .await;
    assert!(holders.len() > 1, "the keys are on one primary only");
    // B reads them all from the tier, in one lookup across the primaries.
    let hits = balances(&b, &tokens).await;
    assert_eq!(
        hits,
        expected
            .iter()
            .map(|&v| (v, v1::CacheOutcome::Hit))
            .collect::<Vec<_>>()
    );
    assert_eq!(calls(), 6, "one Plaid call per token for both gateways");

    // The balance of token 1's Item changes and Plaid tells A: B, which holds its own copy,
    // hears of it on the cluster's channel and serves the new balance.
    let item = fake.item_id(1);
    fake.set_balance(&item, 4321.0, 4400.0).unwrap();
    let after = expected_available(seed, 1, Some(4321.0));
    fake.set_webhook_url(Some(format!("http://{}/webhooks/plaid", a.admin)));
    let mut fields = serde_json::Map::new();
    fields.insert("webhook_type".into(), serde_json::json!("TRANSACTIONS"));
    fields.insert(
        "webhook_code".into(),
        serde_json::json!("SYNC_UPDATES_AVAILABLE"),
    );
    let delivery = fake.send_webhook(&item, fields).await.unwrap();
    assert_eq!(delivery.status, 200, "{delivery:?}\n{}", a.log());
    let answer: serde_json::Value = serde_json::from_str(&delivery.body).unwrap();
    assert_eq!(answer["published"], true, "{answer}");
    b.metric_until(
        "feature_gateway_cache_invalidations_total{source=\"plaid\",event=\"applied\"}",
        Duration::from_secs(30),
        |v| v >= 1.0,
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "B serves the new balance",
        async || {
            let got = balances(&b, &tokens[1..2]).await;
            if got[0].0 == after {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    // No command of either tier failed: nothing crossed slots, nothing was redirected.
    for gw in [&a, &b] {
        for op in ["get", "set", "del"] {
            let series = format!(
                "feature_gateway_cache_shared_errors_total{{source=\"plaid\",op=\"{op}\"}}"
            );
            assert_eq!(gw.metric(&series).await.unwrap_or(0.0), 0.0, "{series}");
        }
    }
}
