//! The `stream` source against a real Redis: pushed events read back as the backfill computes
//! them, concurrent writers losing nothing, a replayed batch applied once, a writer's cached
//! states checked by its compare-and-set, and validation.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::{sync::Arc, time::Duration};

use aggregation::{SpineRow, point_in_time};
use end_to_end::redis::RedisServer;
use fetcher_api::{
    EventObject, FeatureType, FetchRequest, Fetcher, FetcherFactory, KeyPart, KeySpec, Options,
    SourceSpec, Value, ViewSpec,
};
use fetcher_stream::{Positioned, StreamFactory, fetcher::now_ms, writer};
use serde_json::json;

const VIEW_OPTIONS: &str = r#"
time_field = "ts"
keys = { card_id = "card" }
allowed_lateness = "3h"
[aggregations]
n_10m = { op = "count", window = "10m" }
n_2h = { op = "count", window = "2h" }
amount_1h = { op = "sum", field = "amount", window = "1h" }
mean_1h = { op = "mean", field = "amount", window = "1h" }
max_1h = { op = "max", field = "amount", window = "1h" }
last_merchant = { op = "last", field = "merchant", window = "1h" }
last_3 = { op = "last_n", n = 3, field = "merchant", window = "1h" }
merchants_1h = { op = "approx_distinct", field = "merchant", window = "1h" }
"#;

fn features() -> Vec<(String, FeatureType)> {
    [
        ("n_10m", FeatureType::Int64),
        ("n_2h", FeatureType::Int64),
        ("amount_1h", FeatureType::Double),
        ("mean_1h", FeatureType::Double),
        ("max_1h", FeatureType::Double),
        ("last_merchant", FeatureType::String),
        ("last_3", FeatureType::StringList),
        ("merchants_1h", FeatureType::Int64),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t))
    .collect()
}

fn spec(source_options: &str, view_options: &str) -> SourceSpec {
    SourceSpec {
        name: "payments".into(),
        kind: "stream".into(),
        options: Options(source_options.parse().unwrap()),
        views: vec![ViewSpec {
            name: "card".into(),
            keys: vec![KeySpec {
                name: "card_id".into(),
                ty: FeatureType::String,
            }],
            features: features(),
            options: Options(view_options.parse().unwrap()),
        }],
        base_dir: ".".into(),
    }
}

fn redis_spec(redis: &RedisServer) -> SourceSpec {
    spec(
        &format!("redis = {{ url = \"{}\" }}", redis.url()),
        VIEW_OPTIONS,
    )
}

/// `n` events of a few cards over the last 100 minutes (so the values hold still for minutes).
fn events(n: usize, seed: u64) -> Vec<EventObject> {
    let now = now_ms();
    (0..n)
        .map(|i| {
            let x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
            let ago = (x % 6_000_000) as i64;
            let event = json!({
                "card": format!("c{}", x % 7),
                "ts": now - ago,
                "amount": (x % 10_000) as f64 / 100.0,
                "merchant": format!("m{}", (x >> 8) % 40),
            });
            event.as_object().unwrap().clone()
        })
        .collect()
}

async fn read(fetcher: &Arc<dyn Fetcher>, cards: &[String]) -> Vec<Vec<Value>> {
    let rows = fetcher
        .fetch(FetchRequest {
            view: "card".into(),
            features: features().into_iter().map(|(n, _)| n).collect(),
            keys: cards
                .iter()
                .map(|c| vec![KeyPart::String(c.clone())])
                .collect(),
            deadline: None,
        })
        .await
        .unwrap();
    rows.into_iter()
        .map(|row| match row {
            fetcher_api::Row::Found(r) => r.cells.into_iter().map(Result::unwrap).collect(),
            fetcher_api::Row::NotFound => panic!("every key has a row"),
        })
        .collect()
}

#[tokio::test]
async fn pushed_events_read_back_as_the_backfill_computes_them() {
    let redis = RedisServer::start();
    let fetcher = StreamFactory::new()
        .build(&redis_spec(&redis))
        .await
        .unwrap();
    let (_, views) = fetcher_stream::compile(&redis_spec(&redis)).unwrap();
    let def = &views[0].def;
    let all = events(3_000, 1);
    // In batches, as producers would push them.
    for chunk in all.chunks(500) {
        let report = fetcher.push("card", chunk.to_vec()).await.unwrap();
        assert_eq!((report.applied, report.late), (chunk.len() as u64, 0));
        assert!(report.rejected.is_empty());
    }
    let cards: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    let served = read(&fetcher, &cards).await;
    let at = now_ms();
    let parsed: Vec<_> = all.iter().map(|o| def.read(o).unwrap()).collect();
    let spine: Vec<SpineRow> = cards
        .iter()
        .map(|c| SpineRow {
            key: vec![KeyPart::String(c.clone())],
            time: at,
        })
        .collect();
    let expected = point_in_time(def, &parsed, &spine);
    assert_eq!(served, expected);
    // c7 had no events: counts are zero, means null, lists empty — values, not missing rows.
    assert_eq!(served[7][0], Value::Int64(0));
    assert_eq!(served[7][3], Value::Null);
    assert_eq!(served[7][6], Value::StringList(vec![]));
    let total: i64 = served
        .iter()
        .map(|r| match r[1] {
            Value::Int64(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 3_000, "the 2h window holds every event");
}

#[tokio::test]
async fn concurrent_writers_lose_nothing_and_a_replay_applies_once() {
    let redis = RedisServer::start();
    let spec = redis_spec(&redis);
    let stream = fetcher_stream::open(&spec, &Default::default(), true, None)
        .await
        .unwrap();
    let view = &stream.views[0];
    let all = events(2_000, 2);
    let positioned: Vec<Positioned> = all
        .iter()
        .enumerate()
        .map(|(i, o)| Positioned {
            event: view.def.read(o).unwrap(),
            at: Some(((i % 4) as i32, i as i64)),
        })
        .collect();
    // Four writers (as four partitions' tasks would) on the same few entities at once.
    let timeout = Duration::from_secs(5);
    let writes = (0..4).map(|p| {
        let batch: Vec<Positioned> = positioned
            .iter()
            .filter(|e| e.at.unwrap().0 == p)
            .cloned()
            .collect();
        writer::apply(&stream.store, "fg", view, batch, timeout)
    });
    let reports = futures::future::join_all(writes).await;
    let applied: u64 = reports.iter().map(|r| r.as_ref().unwrap().applied).sum();
    assert_eq!(applied, 2_000);
    assert!(
        reports
            .iter()
            .map(|r| r.as_ref().unwrap().conflicts)
            .sum::<u64>()
            > 0,
        "the writers did race"
    );
    // The whole input again (a restart from an older commit): nothing applies twice.
    let again = writer::apply(&stream.store, "fg", view, positioned.clone(), timeout)
        .await
        .unwrap();
    assert_eq!((again.applied, again.replayed), (0, 2_000));
    let fetcher = StreamFactory::new().build(&spec).await.unwrap();
    let cards: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let served = read(&fetcher, &cards).await;
    let spine: Vec<SpineRow> = cards
        .iter()
        .map(|c| SpineRow {
            key: vec![KeyPart::String(c.clone())],
            time: now_ms(),
        })
        .collect();
    let events: Vec<_> = positioned.into_iter().map(|p| p.event).collect();
    assert_eq!(served, point_in_time(&view.def, &events, &spine));
    // One hash per entity, in the layout's namespace, with a time to live.
    let keys = redis.cli(&["--scan", "--pattern", "fg:{card@*"]);
    assert_eq!(keys.lines().count(), 7, "{keys}");
    let ttl: i64 = redis
        .cli(&["pttl", keys.lines().next().unwrap()])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 3_600_000, "{ttl}");
}

#[tokio::test]
async fn a_cached_state_is_only_trusted_as_far_as_its_compare_and_set() {
    let redis = RedisServer::start();
    let spec = redis_spec(&redis);
    let stream = fetcher_stream::open(&spec, &Default::default(), true, None)
        .await
        .unwrap();
    let view = &stream.views[0];
    let positioned: Vec<Positioned> = events(3_000, 5)
        .iter()
        .enumerate()
        .map(|(i, o)| Positioned {
            event: view.def.read(o).unwrap(),
            at: Some((0, i as i64)),
        })
        .collect();
    let timeout = Duration::from_secs(5);
    let mut cache = writer::StateCache::new(100_000);
    let (first, rest) = positioned.split_at(1_000);
    let (second, third) = rest.split_at(1_000);
    // A writer keeping its states; the first batch reads every entity, a second one none.
    let report = writer::apply_cached(&stream.store, "fg", view, first, timeout, &mut cache)
        .await
        .unwrap();
    assert_eq!((report.applied, report.conflicts), (1_000, 0));
    assert_eq!(cache.len(), 7);
    // Another writer meanwhile (another process, a push), and one entity's hash gone (expired):
    // every cached version is stale, so each write is refused, read afresh and redone.
    let other: Vec<Positioned> = second
        .iter()
        .map(|p| Positioned {
            event: p.event.clone(),
            at: Some((1, p.at.unwrap().1)),
        })
        .collect();
    writer::apply(&stream.store, "fg", view, other.clone(), timeout)
        .await
        .unwrap();
    let gone = redis.cli(&["--scan", "--pattern", "fg:{card@*c3}"]);
    redis.cli(&["del", gone.trim()]);
    let report = writer::apply_cached(&stream.store, "fg", view, third, timeout, &mut cache)
        .await
        .unwrap();
    assert_eq!(report.applied, 1_000);
    assert_eq!(report.conflicts, 7, "each stale state was refused once");
    // Replayed through the cache: nothing applies twice.
    let again = writer::apply_cached(&stream.store, "fg", view, third, timeout, &mut cache)
        .await
        .unwrap();
    assert_eq!(
        (again.applied, again.replayed, again.conflicts),
        (0, 1_000, 0)
    );
    // What is served is the events of every writer, but those of the deleted hash before it went.
    let fetcher = StreamFactory::new().build(&spec).await.unwrap();
    let cards: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let served = read(&fetcher, &cards).await;
    let deleted = vec![KeyPart::String("c3".into())];
    let expected: Vec<_> = first
        .iter()
        .chain(&other)
        .filter(|p| p.event.key != deleted)
        .chain(third)
        .map(|p| p.event.clone())
        .collect();
    let spine: Vec<SpineRow> = cards
        .iter()
        .map(|c| SpineRow {
            key: vec![KeyPart::String(c.clone())],
            time: now_ms(),
        })
        .collect();
    assert_eq!(served, point_in_time(&view.def, &expected, &spine));
}

#[tokio::test]
async fn pushes_refuse_bad_and_late_events_by_index() {
    let redis = RedisServer::start();
    let fetcher = StreamFactory::new()
        .build(&redis_spec(&redis))
        .await
        .unwrap();
    let now = now_ms();
    let batch: Vec<EventObject> = [
        json!({"card": "c1", "ts": now, "amount": 5.0, "merchant": "m"}),
        json!({"ts": now, "amount": 5.0}),
        json!({"card": "c1", "ts": now - 4 * 3_600_000, "amount": 1.0, "merchant": "m"}),
        json!({"card": "c1", "ts": now, "amount": "five", "merchant": "m"}),
    ]
    .into_iter()
    .map(|v| v.as_object().unwrap().clone())
    .collect();
    let report = fetcher.push("card", batch).await.unwrap();
    assert_eq!((report.applied, report.late), (1, 1));
    assert_eq!(
        report.rejected,
        [
            (1, "no entity key `card`".to_owned()),
            (3, "field `amount` is not a double".to_owned())
        ]
    );
    let served = read(&fetcher, &["c1".to_owned()]).await;
    assert_eq!(served[0][0], Value::Int64(1));
    assert_eq!(served[0][2], Value::Double(5.0));
}

#[tokio::test]
async fn redis_down_fails_fast_and_pushes_work_again_after() {
    let mut redis = RedisServer::start();
    let spec = redis_spec(&redis);
    let fetcher = StreamFactory::new().build(&spec).await.unwrap();
    redis.stop();
    let error = fetcher.push("card", events(10, 3)).await.unwrap_err();
    assert!(error.retryable(), "{error}");
    redis.restart();
    let report = end_to_end::eventually(
        Duration::from_secs(10),
        "a push after the restart",
        async || {
            fetcher
                .push("card", events(10, 3))
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    assert_eq!(report.applied, 10);
}

#[tokio::test]
async fn a_redis_cluster_holds_each_entity_in_one_slot() {
    let cluster = end_to_end::redis::RedisCluster::start(3);
    let urls = cluster.urls();
    let addresses = cluster.addresses();
    let source = format!(
        "redis = {{ url = \"{}\", mode = \"cluster\", nodes = [\"{}\"] }}",
        urls[0],
        addresses[1..].join("\", \"")
    );
    let spec = spec(&source, VIEW_OPTIONS);
    let fetcher = StreamFactory::new().build(&spec).await.unwrap();
    let all = events(2_000, 4);
    for chunk in all.chunks(400) {
        assert_eq!(
            fetcher.push("card", chunk.to_vec()).await.unwrap().applied,
            chunk.len() as u64
        );
    }
    let (_, views) = fetcher_stream::compile(&spec).unwrap();
    let def = &views[0].def;
    let cards: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let served = read(&fetcher, &cards).await;
    let parsed: Vec<_> = all.iter().map(|o| def.read(o).unwrap()).collect();
    let spine: Vec<SpineRow> = cards
        .iter()
        .map(|c| SpineRow {
            key: vec![KeyPart::String(c.clone())],
            time: now_ms(),
        })
        .collect();
    assert_eq!(served, point_in_time(def, &parsed, &spine));
    // The entities spread over the nodes (the script ran wherever each key's slot lives).
    let holding = cluster
        .ports()
        .into_iter()
        .filter(|port| {
            let keys = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "--scan", "--pattern", "fg:{card@*"])
                .output()
                .unwrap();
            !String::from_utf8_lossy(&keys.stdout).trim().is_empty()
        })
        .count();
    assert!(holding >= 2, "{holding} nodes hold entities");
}

#[test]
fn validation_positions_every_problem() {
    let factory = StreamFactory::new();
    let problems = |source: &str, view: &str| -> Vec<String> {
        factory
            .validate(&spec(source, view))
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        problems("", VIEW_OPTIONS),
        [
            "redis: tiles are kept in Redis: give `[redis]` (a `url` and the options of a redis source), or `store = \"memory\"` for this process only"
        ]
    );
    assert_eq!(
        problems(
            "store = \"memory\"\nkafka = { brokers = [\"nohost\"], topic = \"t\" }",
            VIEW_OPTIONS
        ),
        [
            "kafka.brokers: `nohost` is not a `host:port` address",
            "kafka: ingest writes tiles where every gateway reads them: a Kafka stream needs `store = \"redis\"`"
        ]
    );
    let view = r#"
time_field = "ts"
keys = { card = "card" }
[aggregations]
n_10m = { op = "count", window = "90s" }
n_2h = { op = "count", field = "x", window = "2h" }
amount_1h = { op = "sum", field = "amount", window = "1h" }
mean_1h = { op = "median", field = "amount", window = "1h" }
max_1h = { op = "max", field = "amount", window = "1h" }
last_merchant = { op = "last", field = "amount", window = "1h" }
last_3 = { op = "last_n", field = "merchant", window = "1h" }
merchants_1h = { op = "count", window = "7d", tile = "1m" }
extra = { op = "count", window = "1h" }
"#;
    assert_eq!(
        problems("store = \"memory\"", view),
        [
            "view `card`: keys.card: `card` is not an entity of the view",
            "view `card`: aggregations.last_merchant.field: field `amount` would be a string here but is a double for feature `amount_1h`",
            "view `card`: aggregations.n_10m.window: the window (1m 30s) is not a whole number of tiles (1m)",
            "view `card`: aggregations.n_2h.field: `count` counts events: it takes no `field`",
            "view `card`: aggregations.mean_1h.op: unknown aggregation `median` (known: count, sum, mean, min, max, last, last_n, approx_distinct)",
            "view `card`: aggregations.last_merchant: `last` gives a double here, but the feature is declared string",
            "view `card`: aggregations.last_3.n: `last_n` needs `n`, the number of values kept",
            "view `card`: aggregations.merchants_1h.tile: the window spans 10080 tiles, more than 1000: give it a larger `tile`",
            "view `card`: aggregations.extra: the view has no feature `extra`: declare it under `features`",
        ]
    );
}
