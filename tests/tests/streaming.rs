//! End-to-end: a `stream` source fed from a real Kafka broker by `feature-gateway ingest` into a
//! real Redis, served by the gateway, checked against `feature-gateway backfill` over the same
//! events. Ingest is killed with SIGKILL mid-stream and restarted, and Redis hangs for 10 s
//! while it runs: every aggregate still equals the backfill's (exactly once in effect), bad
//! events are counted by reason and land in the dead-letter topic once each.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime},
};

use end_to_end::{
    GatewayProcess, eventually, gateway_binary, http_get, kafka::KafkaBroker, map, metric,
    redis::RedisServer, s, with_timeout,
};
use proto::v1::{self, value::Kind};
use rskafka::{
    chrono::{TimeZone, Utc},
    client::{
        ClientBuilder,
        partition::{Compression, OffsetAt, UnknownTopicHandling},
    },
    record::Record,
};

const TOPIC: &str = "payments";
const DEAD: &str = "payments.bad";
const PARTITIONS: i32 = 4;
const CARDS: u64 = 2_000;
const EVENTS: usize = 100_000;

fn config_toml(redis: &RedisServer, broker: &KafkaBroker) -> String {
    format!(
        r#"
[entities.card_id]
type = "string"

[sources.payments]
kind = "stream"
timeout = "2s"
redis = {{ url = "{redis}" }}
kafka = {{ brokers = ["{broker}"], topic = "{TOPIC}", dead_letter_topic = "{DEAD}", fetch_max_bytes = 65536 }}

[views.card_activity]
source = "payments"
entities = ["card_id"]
keys = {{ card_id = "card" }}
time_field = "ts"
allowed_lateness = "10m"

[views.card_activity.aggregations]
txn_count_10m = {{ op = "count", window = "10m" }}
txn_count_1h = {{ op = "count", window = "1h" }}
amount_sum_1h = {{ op = "sum", field = "amount", window = "1h" }}
amount_mean_24h = {{ op = "mean", field = "amount", window = "24h" }}
amount_max_24h = {{ op = "max", field = "amount", window = "24h" }}
cents_sum_24h = {{ op = "sum", field = "cents", window = "24h" }}
last_merchant_1h = {{ op = "last", field = "merchant", window = "1h" }}
last_merchants_24h = {{ op = "last_n", n = 3, field = "merchant", window = "24h" }}
merchants_24h = {{ op = "approx_distinct", field = "merchant", window = "24h" }}

[views.card_activity.features]
txn_count_10m = {{ type = "int64" }}
txn_count_1h = {{ type = "int64" }}
amount_sum_1h = {{ type = "double" }}
amount_mean_24h = {{ type = "double" }}
amount_max_24h = {{ type = "double" }}
cents_sum_24h = {{ type = "int64" }}
last_merchant_1h = {{ type = "string" }}
last_merchants_24h = {{ type = "list<string>" }}
merchants_24h = {{ type = "int64" }}

[feature_services.card_stream]
deadline = "2s"
features = ["card_activity:*"]
"#,
        redis = redis.url(),
        broker = broker.bootstrap(),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// SplitMix64: the test's events are the same on every run.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The stream: `EVENTS` payments of `CARDS` cards over the last 100 minutes, in time order
/// but shuffled within 5 minutes (within the 10m lateness), with 40 bad events among them
/// (10 each: not JSON, no card, a string amount, a negative time). Each line is (partition,
/// event text); a card's events all go to one partition.
fn stream(start: i64) -> Vec<(i32, String)> {
    let mut out = Vec::with_capacity(EVENTS + 40);
    for i in 0..EVENTS as u64 {
        let x = mix(i);
        let card = x % CARDS;
        // Mostly ascending with the position, jittered by up to 5 minutes.
        let ts = start - 6_000_000 + (i as i64 * 6_000_000 / EVENTS as i64)
            - ((x >> 20) % 300_000) as i64;
        let cents = (x >> 40) % 50_000;
        let line = serde_json::json!({
            "card": format!("c{card:04}"),
            "ts": ts,
            "amount": cents as f64 / 100.0 + 0.001,
            "cents": cents,
            "merchant": format!("m{}", (x >> 12) % 300),
        })
        .to_string();
        out.push(((card % PARTITIONS as u64) as i32, line));
        if i % 2_500 == 7 {
            let bad = match (i / 2_500) % 4 {
                0 => "{not json".to_owned(),
                1 => format!(r#"{{"ts":{ts},"amount":1.0}}"#),
                2 => format!(r#"{{"card":"c0001","ts":{ts},"amount":"1.50"}}"#),
                _ => r#"{"card":"c0001","ts":-5,"amount":1.0}"#.to_owned(),
            };
            out.push(((i % PARTITIONS as u64) as i32, bad));
        }
    }
    out
}

async fn produce(broker: &KafkaBroker, lines: &[(i32, String)]) {
    let client = ClientBuilder::new(vec![broker.bootstrap()])
        .build()
        .await
        .unwrap();
    let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
    for (p, line) in lines {
        by_partition.entry(*p).or_default().push(Record {
            key: None,
            value: Some(line.clone().into_bytes()),
            headers: BTreeMap::new(),
            timestamp: Utc.timestamp_millis_opt(now_ms()).unwrap(),
        });
    }
    for (p, records) in by_partition {
        let pc = client
            .partition_client(TOPIC, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        for chunk in records.chunks(2_000) {
            pc.produce(chunk.to_vec(), Compression::NoCompression)
                .await
                .unwrap();
        }
    }
}

/// A running `feature-gateway ingest`.
struct Ingest {
    child: Child,
    admin: String,
}

impl Ingest {
    fn start(config: &Path) -> Ingest {
        let mut child = Command::new(gateway_binary())
            .args(["ingest", "--config", config.to_str().unwrap()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .unwrap_or_else(|| panic!("no ready line: {line:?}"))
            .to_owned();
        Ingest { child, admin }
    }

    async fn metrics(&self) -> String {
        http_get(&self.admin, "/metrics").await
    }

    /// Records read so far, over every partition.
    async fn records(&self) -> f64 {
        let scrape = self.metrics().await;
        (0..PARTITIONS)
            .filter_map(|p| {
                metric(
                    &scrape,
                    &format!(
                        "feature_gateway_ingest_records_total{{source=\"payments\",partition=\"{p}\"}}"
                    ),
                )
            })
            .sum()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topic's end offset per partition.
async fn ends(broker: &KafkaBroker) -> Vec<i64> {
    let client = ClientBuilder::new(vec![broker.bootstrap()])
        .build()
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let pc = client
            .partition_client(TOPIC, p, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        out.push(pc.get_offset(OffsetAt::Latest).await.unwrap());
    }
    out
}

/// A served value as the backfill's CSV writes it.
fn text(value: &v1::Value) -> String {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => String::new(),
        Some(Kind::Int64Value(i)) => i.to_string(),
        Some(Kind::DoubleValue(d)) => d.to_string(),
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::StringListValue(l)) => serde_json::to_string(&l.values).unwrap(),
        other => panic!("unexpected value {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_survives_a_kill_and_a_redis_hang_and_serves_what_the_backfill_computes() {
    let broker = KafkaBroker::start().await;
    broker.create_topic(TOPIC, PARTITIONS).await;
    broker.create_topic(DEAD, 1).await;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_toml(&redis, &broker)).unwrap();
    let lines = stream(now_ms());
    let events_file = dir.path().join("events.jsonl");
    std::fs::write(
        &events_file,
        lines
            .iter()
            .map(|(_, l)| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (first, second) = lines.split_at(lines.len() * 3 / 5);

    // Part one, then SIGKILL as soon as ingest is under way.
    produce(&broker, first).await;
    let ingest = Ingest::start(&config);
    eventually(Duration::from_secs(60), "ingest under way", async || {
        let n = ingest.records().await;
        if n >= 5_000.0 {
            Ok(())
        } else {
            Err(format!("{n} records"))
        }
    })
    .await;
    drop(ingest);

    // Restarted: part two arrives while Redis hangs for 10 s.
    let ingest = Ingest::start(&config);
    produce(&broker, second).await;
    redis.pause();
    tokio::time::sleep(Duration::from_secs(10)).await;
    redis.resume();
    let ends = ends(&broker).await;
    let caught_up = eventually(Duration::from_secs(180), "ingest caught up", async || {
        let scrape = ingest.metrics().await;
        let committed: Vec<f64> = (0..PARTITIONS)
            .map(|p| {
                metric(
                    &scrape,
                    &format!(
                        "feature_gateway_ingest_committed_offset{{source=\"payments\",partition=\"{p}\"}}"
                    ),
                )
                .unwrap_or(0.0)
            })
            .collect();
        let done = committed.iter().zip(&ends).all(|(c, e)| *c as i64 == *e);
        if done { Ok(scrape) } else { Err(format!("committed {committed:?} of {ends:?}")) }
    })
    .await;
    assert!(
        metric(
            &caught_up,
            "feature_gateway_ingest_errors_total{source=\"payments\",stage=\"store\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "the Redis hang was felt"
    );

    // Bad events: once each in the dead-letter topic (a replay may copy one twice), by reason.
    let dead = broker.read_all(DEAD).await;
    let mut reasons: BTreeMap<(String, String), String> = BTreeMap::new();
    for (_, r) in &dead {
        let h = |k: &str| String::from_utf8(r.record.headers[k].clone()).unwrap();
        reasons.insert((h("source-partition"), h("source-offset")), h("reason"));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in reasons.values() {
        *counts.entry(reason.as_str()).or_default() += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([
            ("absurd_time", 10),
            ("missing_key", 10),
            ("not_json", 10),
            ("wrong_type", 10)
        ])
    );

    // Served by the gateway, against the backfill at the times bracketing each read.
    let gw = GatewayProcess::serve(&config);
    let mut client = gw.client().await;
    let cards: Vec<String> = (0..CARDS).map(|c| format!("c{c:04}")).collect();
    let mut served = Vec::new();
    for card in &cards {
        let before = now_ms();
        let response = client
            .get_features(with_timeout(
                v1::GetFeaturesRequest {
                    feature_service: "card_stream".into(),
                    entities: map(&[("card_id", s(card))]),
                    ..Default::default()
                },
                Duration::from_secs(5),
            ))
            .await
            .unwrap()
            .into_inner();
        let after = now_ms();
        served.push((card.clone(), before, after, response));
    }
    let spine = dir.path().join("spine.csv");
    let mut text_spine = String::from("card_id,timestamp\n");
    for (card, before, after, _) in &served {
        text_spine.push_str(&format!("{card},{before}\n{card},{after}\n"));
    }
    std::fs::write(&spine, text_spine).unwrap();
    let output = dir.path().join("backfill.csv");
    let run = Command::new(gateway_binary())
        .args(["backfill", "--config", config.to_str().unwrap()])
        .args([
            "--view",
            "card_activity",
            "--events",
            events_file.to_str().unwrap(),
        ])
        .args([
            "--spine",
            spine.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(3), "40 bad events: {stderr}");
    assert!(stderr.contains("... and 20 more bad events"), "{stderr}");
    let mut reader = csv::Reader::from_path(&output).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows: Vec<HashMap<String, String>> = reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(str::to_owned))
                .collect()
        })
        .collect();
    let (mut decided, mut total_events) = (0, 0i64);
    for (i, (card, _, _, response)) in served.iter().enumerate() {
        let (at_before, at_after) = (&rows[2 * i], &rows[2 * i + 1]);
        let got: HashMap<String, String> = response
            .feature_names
            .iter()
            .zip(&response.values)
            .map(|(n, v)| (n.trim_start_matches("card_activity:").to_owned(), text(v)))
            .collect();
        let expect = |row: &HashMap<String, String>| -> HashMap<String, String> {
            got.keys().map(|k| (k.clone(), row[k].clone())).collect()
        };
        let (a, b) = (expect(at_before), expect(at_after));
        assert!(
            got == a || got == b,
            "card {card}: served {got:?}\nbackfill before {a:?}\nbackfill after {b:?}"
        );
        decided += usize::from(a == b);
        total_events += got["txn_count_1h"].parse::<i64>().unwrap();
    }
    assert!(decided >= cards.len() * 9 / 10, "{decided} reads decided");
    assert!(
        total_events > 40_000,
        "{total_events} events in the 1h windows"
    );
}

#[tokio::test]
async fn history_loaded_with_backfill_serves_its_point_in_time_values_at_once() {
    // No Kafka: a day of history loaded into Redis as tiles, then served.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let toml = format!(
        r#"
[entities.card_id]
type = "string"
[sources.payments]
kind = "stream"
redis = {{ url = "{}" }}
[views.card_activity]
source = "payments"
entities = ["card_id"]
keys = {{ card_id = "card" }}
time_field = "ts"
[views.card_activity.aggregations]
txn_count_1h = {{ op = "count", window = "1h" }}
amount_sum_24h = {{ op = "sum", field = "amount", window = "24h" }}
cents_max_7d = {{ op = "max", field = "cents", window = "7d" }}
[views.card_activity.features]
txn_count_1h = {{ type = "int64" }}
amount_sum_24h = {{ type = "double" }}
cents_max_7d = {{ type = "int64" }}
[feature_services.cards]
features = ["card_activity:*"]
"#,
        redis.url()
    );
    std::fs::write(&config, toml).unwrap();
    let now = now_ms();
    let mut history = String::new();
    for i in 0..20_000u64 {
        let x = mix(i ^ 0xABCD);
        // The last 6 days, so the 7-day window holds them all.
        let ts = now - 60_000 - (x % (6 * 86_400_000)) as i64;
        history.push_str(&format!(
            "{{\"card\":\"c{:03}\",\"ts\":{ts},\"amount\":{},\"cents\":{}}}\n",
            x % 300,
            (x >> 20) % 10_000,
            (x >> 40) % 90_000
        ));
    }
    let events = dir.path().join("history.jsonl");
    std::fs::write(&events, history).unwrap();
    let backfill = |extra: &[&str]| {
        let out = Command::new(gateway_binary())
            .args(["backfill", "--config", config.to_str().unwrap()])
            .args([
                "--view",
                "card_activity",
                "--events",
                events.to_str().unwrap(),
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let loaded = backfill(&["--load"]);
    assert!(
        loaded.contains("of 300 entities loaded (0 held already, kept)"),
        "{loaded}"
    );
    // Loading again keeps what the store holds: nothing is counted twice.
    let again = backfill(&["--load"]);
    assert!(again.contains("0 tiles of 0 entities loaded"), "{again}");

    let gw = GatewayProcess::serve(&config);
    let mut client = gw.client().await;
    let cards: Vec<String> = (0..300).map(|c| format!("c{c:03}")).collect();
    let mut served = Vec::new();
    for card in &cards {
        let before = now_ms();
        let response = client
            .get_features(v1::GetFeaturesRequest {
                feature_service: "cards".into(),
                entities: map(&[("card_id", s(card))]),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        served.push((before, now_ms(), response));
    }
    let spine = dir.path().join("spine.csv");
    let mut rows = String::from("card_id,timestamp\n");
    for (card, (before, after, _)) in cards.iter().zip(&served) {
        rows.push_str(&format!("{card},{before}\n{card},{after}\n"));
    }
    std::fs::write(&spine, rows).unwrap();
    let output = dir.path().join("values.csv");
    backfill(&[
        "--spine",
        spine.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let mut reader = csv::Reader::from_path(&output).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let values: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    let mut decided = 0;
    for (i, (_, _, response)) in served.iter().enumerate() {
        let got: Vec<String> = response.values.iter().map(text).collect();
        let pick = |row: &Vec<String>| -> Vec<String> {
            response
                .feature_names
                .iter()
                .map(|n| {
                    let column = header
                        .iter()
                        .position(|h| *h == n.trim_start_matches("card_activity:"))
                        .unwrap();
                    row[column].clone()
                })
                .collect()
        };
        let (a, b) = (pick(&values[2 * i]), pick(&values[2 * i + 1]));
        assert!(
            got == a || got == b,
            "{}: {got:?} vs {a:?} / {b:?}",
            cards[i]
        );
        decided += usize::from(a == b);
    }
    assert!(decided >= 270, "{decided}");
}

#[tokio::test]
async fn backfilled_aggregates_join_the_training_set_and_equal_what_was_served() {
    use training_log::{Cell, training_set::read_records};
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let toml = format!(
        r#"
[entities.card_id]
type = "string"
[sources.payments]
kind = "stream"
redis = {{ url = "{}" }}
[views.card_activity]
source = "payments"
entities = ["card_id"]
keys = {{ card_id = "card" }}
time_field = "ts"
[views.card_activity.aggregations]
txn_count_1h = {{ op = "count", window = "1h" }}
amount_mean_1h = {{ op = "mean", field = "amount", window = "1h" }}
amount_sum_24h = {{ op = "sum", field = "amount", window = "24h" }}
[views.card_activity.features]
txn_count_1h = {{ type = "int64" }}
amount_mean_1h = {{ type = "double" }}
amount_sum_24h = {{ type = "double" }}
[feature_services.cards]
features = ["card_activity:*"]
[training_log]
dir = "log"
spool_dir = "spool"
rotate_interval = "200ms"
"#,
        redis.url()
    );
    std::fs::write(&config, toml).unwrap();
    // The last 20 minutes: every value holds still for the next 40.
    let now = now_ms();
    let mut history = String::new();
    for i in 0..5_000u64 {
        let x = mix(i ^ 0x5EED);
        history.push_str(&format!(
            "{{\"card\":\"c{:02}\",\"ts\":{},\"amount\":{}}}\n",
            x % 50,
            now - 1_000 - (x % 1_200_000) as i64,
            ((x >> 20) % 100_000) as f64 / 100.0
        ));
    }
    let events = dir.path().join("history.jsonl");
    std::fs::write(&events, history).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(gateway_binary())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let config_arg = config.to_str().unwrap();
    let events_arg = events.to_str().unwrap();
    run(&[
        "backfill",
        "--config",
        config_arg,
        "--view",
        "card_activity",
        "--events",
        events_arg,
        "--load",
    ]);

    let mut gw = GatewayProcess::serve(&config);
    let mut client = gw.client().await;
    let mut labels = String::from("request_id,is_fraud\n");
    for i in 0..200u64 {
        client
            .get_features(v1::GetFeaturesRequest {
                feature_service: "cards".into(),
                entities: map(&[("card_id", s(&format!("c{:02}", mix(i) % 50)))]),
                request_id: format!("r-{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        labels.push_str(&format!("r-{i},{}\n", i % 2));
    }
    gw.terminate();
    assert!(gw.wait(Duration::from_secs(60)).unwrap().success());
    std::fs::write(dir.path().join("labels.csv"), labels).unwrap();

    // The training set as served, then the backfill at its rows' times, keyed by request id.
    let summary = run(&[
        "training-set",
        "--logs",
        "log",
        "--labels",
        "labels.csv",
        "--feature-service",
        "cards",
        "--out",
        "train.parquet",
    ]);
    assert!(summary.contains("200 rows from 200 labels"), "{summary}");
    run(&[
        "backfill",
        "--config",
        config_arg,
        "--view",
        "card_activity",
        "--events",
        events_arg,
        "--spine",
        "train.parquet",
        "--output",
        "backfill.csv",
    ]);
    // ... which training-set joins as it is.
    let joined = run(&[
        "training-set",
        "--logs",
        "log",
        "--labels",
        "backfill.csv",
        "--feature-service",
        "cards",
        "--out",
        "joined.parquet",
    ]);
    assert!(joined.contains("200 rows from 200 labels"), "{joined}");

    let (schema, served) = read_records(&dir.path().join("train.parquet")).unwrap();
    let mut reader = csv::Reader::from_path(dir.path().join("backfill.csv")).unwrap();
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let backfilled: HashMap<String, HashMap<String, String>> = reader
        .records()
        .map(|r| {
            let row: HashMap<String, String> = header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(str::to_owned))
                .collect();
            (row["request_id"].clone(), row)
        })
        .collect();
    assert_eq!(backfilled.len(), 200);
    for record in &served {
        let row = &backfilled[&record.request_id];
        for (column, entry) in schema.features.iter().zip(&record.features) {
            let served = match &entry.value {
                Cell::Null => String::new(),
                Cell::Int64(i) => i.to_string(),
                Cell::Double(bits) => f64::from_bits(*bits).to_string(),
                other => panic!("{other:?}"),
            };
            let feature = column.name.trim_start_matches("card_activity:");
            assert_eq!(served, row[feature], "{} {feature}", record.request_id);
        }
    }
}
