//! End-to-end: configuration reload without a restart, through the real binary.
//!
//! Two configurations over a static table and a Redis server: B reads the table from another
//! file (other values), adds a feature to the feature service `main` and adds the feature service
//! `extra`; the Redis source is the same in both. The gateway is reloaded 100 times, alternating
//! A and B, by SIGHUP, by the file changing and by `POST /admin/reload`, while a load loop calls
//! it at about 1,000 requests/s: no call fails, every answer is wholly A's or wholly B's (names and
//! values), `DescribeFeatureService` shows the new definition at once, and the Redis source keeps
//! its connections (the same client ids in Redis's `CLIENT LIST`). p99 latency with and without
//! reloads is printed, not asserted (tests never assert wall-clock speed).
//!
//! Then a file with errors, a field that cannot change while running, and sources that cannot be
//! built (a table that does not exist, a PostgreSQL on a closed port) each leave the running
//! configuration serving, with every error in the admin answer and the log; and a reload that
//! changes the logged feature services restarts the training log without losing or mislabelling
//! a vector.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use end_to_end::{GatewayProcess, eventually, free_ports, i, map, redis::RedisServer, s};
use proto::v1::{self, FeatureStatus, feature_service_client::FeatureServiceClient};
use tonic::transport::Channel;
use training_log::training_set::{log_files, read_records};

/// Users in the table and in Redis (`u0` ..).
const USERS: usize = 50;
/// Reloads under load.
const RELOADS: usize = 100;
/// Requests per second of the load loop.
const RATE: u64 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    A,
    B,
}

const MAIN_A: [&str; 2] = ["profile:score", "balance:balance"];
const MAIN_B: [&str; 3] = ["profile:score", "profile:tier", "balance:balance"];
const EXTRA_B: [&str; 2] = ["balance:balance", "profile:tier"];

/// The configuration `which`, with `more` appended.
fn config(redis: &str, which: Which, more: &str) -> String {
    let (table, main, extra) = match which {
        Which::A => ("a.csv", format!("{MAIN_A:?}"), String::new()),
        Which::B => (
            "b.csv",
            format!("{MAIN_B:?}"),
            format!("[feature_services.extra]\ndeadline = \"1s\"\nfeatures = {EXTRA_B:?}\n"),
        ),
    };
    format!(
        r#"
[entities.user_id]
type = "string"

[sources.tables]
kind = "static"

[sources.kv]
kind = "redis"
url = "{redis}"

[views.profile]
source = "tables"
entities = ["user_id"]
path = "{table}"
[views.profile.features]
score = {{ type = "int64" }}
tier = {{ type = "string" }}

[views.balance]
source = "kv"
entities = ["user_id"]
key = "kv:{{user_id}}"
[views.balance.features]
balance = {{ type = "int64" }}

[feature_services.main]
deadline = "1s"
features = {main}

{extra}
{more}
"#
    )
}

/// A Redis server with every user's balance, the two tables, and the configuration file.
struct Deployment {
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let mut a = String::from("user_id,score,tier\n");
        let mut b = a.clone();
        for u in 0..USERS {
            redis.cli(&[
                "HSET",
                &format!("kv:u{u}"),
                "balance",
                &(10 * u).to_string(),
            ]);
            a.push_str(&format!("u{u},{u},a\n"));
            b.push_str(&format!("u{u},{},b\n", 1000 + u));
        }
        std::fs::write(dir.path().join("a.csv"), a).unwrap();
        std::fs::write(dir.path().join("b.csv"), b).unwrap();
        let deployment = Deployment { redis, dir };
        deployment.write(&deployment.config(Which::A, ""));
        deployment
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    fn config(&self, which: Which, more: &str) -> String {
        config(&self.redis.url(), which, more)
    }

    /// Replaces the configuration file at once (written aside, then renamed over it).
    fn write(&self, text: &str) {
        let aside = self.dir.path().join(".gateway.toml.new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, self.path()).unwrap();
    }

    /// The ids of the clients connected to Redis (not counting the one asking).
    fn redis_clients(&self) -> BTreeSet<String> {
        self.redis
            .cli(&["CLIENT", "LIST"])
            .lines()
            .filter(|line| !line.contains("cmd=client|list"))
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|field| field.strip_prefix("id="))
                    .map(str::to_owned)
            })
            .collect()
    }
}

fn request(feature_service: &str, user: usize, request_id: String) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: feature_service.to_owned(),
        entities: map(&[("user_id", s(&format!("u{user}")))]),
        request_id,
        ..Default::default()
    }
}

/// Which configuration a successful answer for `user` is wholly consistent with.
fn consistent(
    feature_service: &str,
    user: usize,
    r: &v1::GetFeaturesResponse,
) -> Result<Which, String> {
    let names: Vec<&str> = r.feature_names.iter().map(String::as_str).collect();
    let u = user as i64;
    let (which, values) = match (feature_service, names.as_slice()) {
        ("main", n) if n == MAIN_A => (Which::A, vec![i(u), i(10 * u)]),
        ("main", n) if n == MAIN_B => (Which::B, vec![i(1000 + u), s("b"), i(10 * u)]),
        ("extra", n) if n == EXTRA_B => (Which::B, vec![i(10 * u), s("b")]),
        _ => return Err(format!("{feature_service} u{user}: names {names:?}")),
    };
    let present = r
        .statuses
        .iter()
        .all(|st| *st == FeatureStatus::Present as i32);
    if r.values != values || !present {
        return Err(format!(
            "{feature_service} u{user}: names of {which:?} but values {:?}, statuses {:?}",
            r.values, r.statuses
        ));
    }
    Ok(which)
}

/// What the load loop saw.
#[derive(Debug, Default)]
struct Load {
    sent: usize,
    /// Calls that failed (an error other than `extra` unknown under A).
    failed: Vec<String>,
    /// Answers not wholly of one configuration.
    inconsistent: Vec<String>,
    /// Answers of each configuration.
    seen: HashMap<&'static str, usize>,
    /// Latency of every answered call.
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Load {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    fn summary(&self) -> String {
        format!(
            "{} calls in {:.1}s ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, \
             failed {}, inconsistent {}, answers {:?}",
            self.sent,
            self.elapsed.as_secs_f64(),
            self.sent as f64 / self.elapsed.as_secs_f64(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.percentile(1.0).as_secs_f64() * 1e3,
            self.failed.len(),
            self.inconsistent.len(),
            self.seen,
        )
    }
}

/// Calls the gateway at [`RATE`] per second until `stop`: nine calls in ten to `main`, one to
/// `extra` (unknown under A: NOT_FOUND is A's answer), each with a 2 s deadline.
async fn load(channel: Channel, stop: Arc<AtomicBool>) -> Load {
    let client = FeatureServiceClient::new(channel);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let mut client = client.clone();
        let (user, fs) = (n % USERS, if n % 10 == 9 { "extra" } else { "main" });
        n += 1;
        calls.spawn(async move {
            let mut call = tonic::Request::new(request(fs, user, String::new()));
            call.set_timeout(Duration::from_secs(2));
            let at = Instant::now();
            let result = client.get_features(call).await;
            (fs, user, at.elapsed(), result)
        });
    }
    let mut report = Load {
        sent: n,
        ..Default::default()
    };
    while let Some(done) = calls.join_next().await {
        let (fs, user, latency, result) = done.unwrap();
        match result {
            Ok(answer) => {
                report.latencies.push(latency);
                match consistent(fs, user, answer.get_ref()) {
                    Ok(Which::A) => *report.seen.entry("A").or_default() += 1,
                    Ok(Which::B) => *report.seen.entry("B").or_default() += 1,
                    Err(e) => report.inconsistent.push(e),
                }
            }
            Err(status) if fs == "extra" && status.code() == tonic::Code::NotFound => {
                report.latencies.push(latency);
                *report.seen.entry("A").or_default() += 1;
            }
            Err(status) => report.failed.push(format!("{fs} u{user}: {status:?}")),
        }
    }
    report.elapsed = started.elapsed();
    report
}

async fn definition_hash(client: &mut FeatureServiceClient<Channel>, name: &str) -> String {
    client
        .describe_feature_service(v1::DescribeFeatureServiceRequest {
            name: name.to_owned(),
        })
        .await
        .unwrap()
        .into_inner()
        .definition_hash
}

async fn reloads_counted(gw: &GatewayProcess, result: &str) -> f64 {
    gw.metric(&format!(
        "feature_gateway_config_reloads_total{{result=\"{result}\"}}"
    ))
    .await
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_no_call_and_mix_no_answer() {
    let dep = Deployment::new();
    let gw = GatewayProcess::serve(&dep.path());
    let mut client = gw.client().await;
    let hash_a = definition_hash(&mut client, "main").await;

    // Without reloads first: the latency to compare with, and Redis's clients once warm.
    let stop = Arc::new(AtomicBool::new(false));
    let baseline = tokio::spawn(load(gw.channel().await, stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let baseline = baseline.await.unwrap();
    assert!(baseline.failed.is_empty(), "{:?}", &baseline.failed[..1]);
    assert!(
        baseline.inconsistent.is_empty(),
        "{:?}",
        baseline.inconsistent
    );
    let clients_before = dep.redis_clients();
    assert!(!clients_before.is_empty());

    let stop = Arc::new(AtomicBool::new(false));
    let loaded = tokio::spawn(load(gw.channel().await, stop.clone()));
    let mut hash_b: Option<String> = None;
    let started = Instant::now();
    for k in 0..RELOADS {
        let which = if k % 2 == 0 { Which::B } else { Which::A };
        dep.write(&dep.config(which, ""));
        let expected = match which {
            Which::A => Some(hash_a.clone()),
            Which::B => hash_b.clone(),
        };
        // Swapped in when `main`'s definition hash is the one of `which`.
        let applied = |hash: &str| match &expected {
            Some(expected) => hash == expected,
            None => hash != hash_a,
        };
        match k % 3 {
            0 => gw.hangup(),
            1 => {} // the file changed: the gateway sees it within a second
            _ => {
                let (status, body) = gw.admin_post("/admin/reload", &[], b"").await;
                assert_eq!(status, 200, "reload {k}: {body}");
                assert!(
                    body.starts_with("reloaded config_hash=")
                        || body.starts_with("unchanged config_hash="),
                    "reload {k}: {body}"
                );
                // Answered once swapped in: the new definition is described at once.
                let hash = definition_hash(&mut client, "main").await;
                assert!(
                    applied(&hash),
                    "reload {k} ({which:?}): main is described as {hash}"
                );
            }
        }
        let hash = eventually(Duration::from_secs(20), "the reload applied", async || {
            let hash = definition_hash(&mut client.clone(), "main").await;
            if applied(&hash) { Ok(hash) } else { Err(hash) }
        })
        .await;
        if which == Which::B {
            hash_b = Some(hash);
        }
    }
    let reloading = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let loaded = loaded.await.unwrap();

    println!("without reloads: {}", baseline.summary());
    println!(
        "{RELOADS} reloads in {:.1}s, under load: {}",
        reloading.as_secs_f64(),
        loaded.summary()
    );
    assert!(
        loaded.failed.is_empty(),
        "{} failed, e.g. {:?}",
        loaded.failed.len(),
        &loaded.failed[..1]
    );
    assert!(
        loaded.inconsistent.is_empty(),
        "{} inconsistent, e.g. {:?}",
        loaded.inconsistent.len(),
        &loaded.inconsistent[..1]
    );
    assert!(
        loaded.seen["A"] > 0 && loaded.seen["B"] > 0,
        "{:?}",
        loaded.seen
    );
    // One successful reload per change of the file, whichever trigger got to it first (the
    // others found the file unchanged).
    assert_eq!(reloads_counted(&gw, "ok").await, RELOADS as f64);
    assert_eq!(reloads_counted(&gw, "invalid").await, 0.0);
    assert_eq!(reloads_counted(&gw, "build_failed").await, 0.0);
    // The Redis source's definition never changed: the same connections all along.
    assert_eq!(dep.redis_clients(), clients_before);
    // The static source was built for each change; the Redis one kept.
    let log = plain(&gw.log());
    let reloaded = log
        .lines()
        .filter(|line| line.contains("configuration reloaded"))
        .collect::<Vec<_>>();
    assert_eq!(reloaded.len(), RELOADS, "{log}");
    assert!(
        reloaded
            .iter()
            .all(|line| line.contains("kept=kv built=tables removed=")),
        "{reloaded:?}"
    );
}

#[tokio::test]
async fn a_bad_file_or_a_source_that_cannot_build_leaves_the_running_config_serving() {
    let dep = Deployment::new();
    let gw = GatewayProcess::serve(&dep.path());
    let mut client = gw.client().await;
    let hash_a = definition_hash(&mut client, "main").await;
    let serves_a = async |client: &mut FeatureServiceClient<Channel>| {
        let answer = client
            .get_features(request("main", 7, String::new()))
            .await
            .unwrap();
        assert_eq!(consistent("main", 7, answer.get_ref()), Ok(Which::A));
        assert_eq!(definition_hash(client, "main").await, hash_a);
    };

    // A value of the wrong type and an unknown source: both named, with their positions.
    let broken = dep
        .config(Which::B, "")
        .replace(
            "score = { type = \"int64\" }",
            "score = { type = \"integer\" }",
        )
        .replace("source = \"kv\"", "source = \"kv2\"");
    dep.write(&broken);
    let (status, body) = gw.admin_post("/admin/reload", &[], b"").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.starts_with("invalid: the running configuration stays"),
        "{body}"
    );
    assert!(body.contains("views.profile.features.score.type"), "{body}");
    assert!(body.contains("views.balance.source"), "{body}");
    serves_a(&mut client).await;
    eventually(
        Duration::from_secs(5),
        "the errors in the log",
        async || {
            let log = gw.log();
            if log.contains("configuration reload refused") && log.contains("views.balance.source")
            {
                Ok(())
            } else {
                Err(log)
            }
        },
    )
    .await;

    // A field that cannot change while the gateway runs.
    dep.write(&dep.config(Which::B, "[server]\nworker_threads = 1\n"));
    let (status, body) = gw.admin_post("/admin/reload", &[], b"").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("server.worker_threads: cannot change while the gateway runs"),
        "{body}"
    );
    serves_a(&mut client).await;

    // Sources that cannot be built: a table that does not exist, a PostgreSQL nobody listens
    // for. Both are reported.
    let [closed] = free_ports::<1>();
    let postgres = format!(
        "[sources.pg]\nkind = \"postgres\"\nurl = \"postgres://gateway@127.0.0.1:{closed}/features\"\n\
         [views.accounts]\nsource = \"pg\"\nentities = [\"user_id\"]\n\
         query = \"SELECT segment FROM accounts WHERE user_id = $1\"\n\
         features = {{ segment = {{ type = \"string\" }} }}\n"
    );
    dep.write(&dep.config(Which::B, &postgres).replace("b.csv", "gone.csv"));
    let (status, body) = gw.admin_post("/admin/reload", &[], b"").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body.starts_with("build_failed: the running configuration stays"),
        "{body}"
    );
    assert!(body.contains("source `tables`: view `profile`"), "{body}");
    assert!(body.contains("source `pg`: cannot connect"), "{body}");
    serves_a(&mut client).await;
    // SIGHUP tries the same file again (the watcher does not): still refused.
    gw.hangup();
    gw.metric_until(
        "feature_gateway_config_reloads_total{result=\"build_failed\"}",
        Duration::from_secs(10),
        |n| n >= 2.0,
    )
    .await;
    serves_a(&mut client).await;
    assert!(reloads_counted(&gw, "invalid").await >= 2.0);
    assert_eq!(reloads_counted(&gw, "ok").await, 0.0);

    // The file fixed: served at once.
    dep.write(&dep.config(Which::B, ""));
    let (status, body) = gw.admin_post("/admin/reload", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let answer = client
        .get_features(request("extra", 3, String::new()))
        .await
        .unwrap();
    assert_eq!(consistent("extra", 3, answer.get_ref()), Ok(Which::B));
    assert_ne!(definition_hash(&mut client, "main").await, hash_a);
}

#[tokio::test]
async fn a_reload_of_new_feature_services_restarts_the_training_log_losing_no_vector() {
    let dep = Deployment::new();
    let log_section = "[training_log]\ndir = \"log\"\nspool_dir = \"spool\"\n";
    dep.write(&dep.config(Which::A, log_section));
    let gw = GatewayProcess::serve(&dep.path());
    let channel = gw.channel().await;

    // Calls with known ids go on while the file changes to B (a new definition of `main`, and
    // `extra`) and the log restarts for it.
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (stop, mut client) = (stop.clone(), FeatureServiceClient::new(channel));
        tokio::spawn(async move {
            let mut answered = Vec::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let fs = if n % 4 == 3 { "extra" } else { "main" };
                let id = format!("call-{n}");
                let user = n % USERS;
                n += 1;
                match client.get_features(request(fs, user, id.clone())).await {
                    Ok(r) => answered.push((id, consistent(fs, user, r.get_ref()).unwrap())),
                    Err(e) if fs == "extra" && e.code() == tonic::Code::NotFound => {}
                    Err(e) => panic!("{fs}: {e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            answered
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    dep.write(&dep.config(Which::B, log_section));
    let (status, body) = gw.admin_post("/admin/reload", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    eventually(Duration::from_secs(15), "the log restarted", async || {
        let log = gw.log();
        if log.contains("training log restarted") {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let answered = caller.await.unwrap();
    let mut gw = gw;
    gw.terminate();
    assert!(gw.wait(Duration::from_secs(30)).unwrap().success());

    // Every answered call is in the log exactly once, with the columns of its configuration.
    let mut logged: HashMap<String, usize> = HashMap::new();
    let log_dir = dep.dir.path().join("log");
    for fs in ["main", "extra"] {
        for (path, _, _) in log_files(&log_dir, fs).unwrap() {
            let (def, records) = read_records(&path).unwrap();
            for record in records {
                assert!(
                    logged
                        .insert(record.request_id.clone(), def.features.len())
                        .is_none(),
                    "{} logged twice",
                    record.request_id
                );
            }
        }
    }
    let (mut a, mut b) = (0, 0);
    for (id, which) in &answered {
        let columns = match which {
            Which::A => {
                a += 1;
                MAIN_A.len()
            }
            Which::B if id_is_extra(id) => {
                b += 1;
                EXTRA_B.len()
            }
            Which::B => {
                b += 1;
                MAIN_B.len()
            }
        };
        assert_eq!(logged.get(id), Some(&columns), "{id} ({which:?})");
    }
    assert!(a > 0 && b > 0, "answers of A {a}, of B {b}");
    assert_eq!(logged.len(), answered.len());
}

/// `log` without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(start) = rest.find('\x1b') {
        out.push_str(&rest[..start]);
        rest = rest[start..]
            .find('m')
            .map_or("", |end| &rest[start + end + 1..]);
    }
    out.push_str(rest);
    out
}

/// Whether the load of the training-log test sent call `id` to `extra`.
fn id_is_extra(id: &str) -> bool {
    id.strip_prefix("call-")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n % 4 == 3)
}
