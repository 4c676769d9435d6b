//! The `redis` source against real Redis servers (standalone and a 3-node cluster) started on
//! loopback by the `tests` crate: the conformance suite, both encodings, event time, outages,
//! hostile keys, large batches and `materialize`.
#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use end_to_end::redis::{RedisCluster, RedisServer};
use fetcher_api::{
    ErrorClass, FeatureType, FetchRequest, Fetcher, FetcherFactory, KeyPart, KeySpec, Options,
    Record, Row, SourceSpec, Value, ViewSpec,
};
use fetcher_conformance::{Dataset, Harness, Stored, VIEW};
use fetcher_redis::{MaterializeOptions, RedisFactory, codec, materialize};
use fred::prelude::{Client, ClientLike, Config, HashesInterface, KeysInterface, ServerConfig};
use tokio::time::Instant;

// ------------------------------------------------------------------------------------------------
// Helpers

fn options(text: &str) -> Options {
    Options(text.parse().expect("valid TOML"))
}

fn source(source_options: &str, views: Vec<ViewSpec>) -> SourceSpec {
    SourceSpec {
        name: "store".into(),
        kind: "redis".into(),
        options: options(source_options),
        views,
        base_dir: ".".into(),
    }
}

fn view(
    name: &str,
    keys: &[(&str, FeatureType)],
    features: &[(&str, FeatureType)],
    text: &str,
) -> ViewSpec {
    ViewSpec {
        name: name.into(),
        keys: keys
            .iter()
            .map(|(n, ty)| KeySpec {
                name: (*n).into(),
                ty: *ty,
            })
            .collect(),
        features: features.iter().map(|(n, ty)| ((*n).into(), *ty)).collect(),
        options: options(text),
    }
}

fn standalone(server: &RedisServer) -> String {
    format!("url = \"{}\"\ncommand_timeout = \"2s\"", server.url())
}

fn cluster_options(cluster: &RedisCluster) -> String {
    let addresses = cluster.addresses();
    format!(
        "url = \"redis://{}\"\nmode = \"cluster\"\nnodes = [{}]\ncommand_timeout = \"2s\"",
        addresses[0],
        addresses[1..]
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

async fn build(spec: &SourceSpec) -> Arc<dyn Fetcher> {
    let factory = RedisFactory::new();
    assert_eq!(factory.validate(spec), Vec::<String>::new());
    factory.build(spec).await.unwrap()
}

/// A plain client to set fixtures up, standalone or cluster.
async fn raw_client(server: ServerConfig) -> Client {
    let client = Client::new(
        Config {
            server,
            ..Config::default()
        },
        None,
        None,
        None,
    );
    client.init().await.unwrap();
    client
}

async fn raw_standalone(server: &RedisServer) -> Client {
    raw_client(ServerConfig::new_centralized("127.0.0.1", server.port())).await
}

async fn raw_cluster(cluster: &RedisCluster) -> Client {
    raw_client(ServerConfig::new_clustered(
        cluster
            .ports()
            .into_iter()
            .map(|p| ("127.0.0.1", p))
            .collect(),
    ))
    .await
}

fn request(
    view: &str,
    keys: Vec<Vec<KeyPart>>,
    features: &[&str],
    deadline: Duration,
) -> FetchRequest {
    FetchRequest {
        view: view.into(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        keys,
        deadline: Some(Instant::now() + deadline),
    }
}

fn string_keys(keys: &[&str]) -> Vec<Vec<KeyPart>> {
    keys.iter()
        .map(|k| vec![KeyPart::String((*k).into())])
        .collect()
}

fn found(row: &Row) -> &Record {
    match row {
        Row::Found(record) => record,
        Row::NotFound => panic!("expected a row, got NotFound"),
    }
}

// ------------------------------------------------------------------------------------------------
// The conformance suite

/// Loads the dataset as hashes under `conformance:{id}`, through a plain client.
struct RedisHarness {
    client: Client,
    options: String,
    /// Servers stopped for `build_unreachable`, kept so their ports stay theirs.
    stopped: Mutex<Vec<RedisServer>>,
}

fn conformance_view(dataset: &Dataset) -> ViewSpec {
    ViewSpec {
        name: VIEW.into(),
        keys: dataset.keys(),
        features: dataset.features.clone(),
        options: options("key = \"conformance:{id}\""),
    }
}

#[async_trait]
impl Harness for RedisHarness {
    async fn build(&self, dataset: &Dataset) -> Arc<dyn Fetcher> {
        for row in &dataset.rows {
            // A field no feature reads, so a row of nulls is still a hash that exists.
            let mut fields = vec![("_loaded".to_owned(), "1".to_owned())];
            for ((feature, _), cell) in dataset.features.iter().zip(&row.cells) {
                match cell {
                    Stored::Value(v) => {
                        fields.push((feature.clone(), codec::to_text(v).unwrap().unwrap()))
                    }
                    Stored::Null => {}
                    Stored::WrongType(text) => fields.push((feature.clone(), text.clone())),
                }
            }
            let key = format!("conformance:{}", row.key);
            let _: () = self.client.hset(key.as_str(), fields).await.unwrap();
        }
        build(&source(&self.options, vec![conformance_view(dataset)])).await
    }

    async fn build_unreachable(&self, dataset: &Dataset) -> Option<Arc<dyn Fetcher>> {
        // A server that was there at start-up and then died.
        let mut server = RedisServer::start();
        let fetcher = build(&source(
            &standalone(&server),
            vec![conformance_view(dataset)],
        ))
        .await;
        server.stop();
        self.stopped.lock().unwrap().push(server);
        Some(fetcher)
    }
}

#[tokio::test]
async fn standalone_redis_passes_the_conformance_suite() {
    let server = RedisServer::start();
    let harness = RedisHarness {
        client: raw_standalone(&server).await,
        options: standalone(&server),
        stopped: Mutex::new(Vec::new()),
    };
    fetcher_conformance::run(&harness).await;
}

#[tokio::test]
async fn redis_cluster_passes_the_conformance_suite() {
    let cluster = RedisCluster::start(3);
    let harness = RedisHarness {
        client: raw_cluster(&cluster).await,
        options: cluster_options(&cluster),
        stopped: Mutex::new(Vec::new()),
    };
    fetcher_conformance::run(&harness).await;
}

#[tokio::test]
async fn a_server_that_is_not_up_at_start_up_reads_as_unavailable() {
    // Build before the server exists: the gateway may start before Redis.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let spec = source(
        &format!("url = \"redis://127.0.0.1:{port}\"\nconnect_timeout = \"200ms\""),
        vec![view(
            "v",
            &[("id", FeatureType::String)],
            &[("n", FeatureType::Int64)],
            "key = \"v:{id}\"",
        )],
    );
    let fetcher = build(&spec).await;
    let err = fetcher
        .fetch(request(
            "v",
            string_keys(&["a"]),
            &["n"],
            Duration::from_millis(300),
        ))
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err}");
    assert!(fetcher.health().await.is_err());
}

// ------------------------------------------------------------------------------------------------
// Encodings and event time

#[tokio::test]
async fn hash_views_read_mapped_fields_and_event_time() {
    let server = RedisServer::start();
    let client = raw_standalone(&server).await;
    let _: () = client
        .hset(
            "user_stats:42",
            vec![
                ("tc7", "12"),
                ("avg", "3.5"),
                ("tags", "[\"a\",\"b\"]"),
                ("seen", "2024-05-01T12:00:00Z"),
                ("updated_at", "1714564800"),
                ("unrelated", "x"),
            ],
        )
        .await
        .unwrap();
    let _: () = client
        .hset(
            "user_stats:7",
            vec![("tc7", "many"), ("updated_at", "last tuesday")],
        )
        .await
        .unwrap();
    let features = [
        ("txn_count_7d", FeatureType::Int64),
        ("avg", FeatureType::Double),
        ("tags", FeatureType::StringList),
        ("seen", FeatureType::Timestamp),
        ("missing", FeatureType::Bool),
    ];
    let spec = source(
        &standalone(&server),
        vec![view(
            "user_stats",
            &[("user_id", FeatureType::Int64)],
            &features,
            r#"key = "user_stats:{user_id}"
               fields = { txn_count_7d = "tc7" }
               event_time_field = "updated_at""#,
        )],
    );
    let fetcher = build(&spec).await;
    let names: Vec<&str> = features.iter().map(|(n, _)| *n).collect();
    let rows = fetcher
        .fetch(request(
            "user_stats",
            vec![
                vec![KeyPart::Int64(42)],
                vec![KeyPart::Int64(1)],
                vec![KeyPart::Int64(7)],
            ],
            &names,
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
    assert_eq!(
        rows[0],
        Row::Found(Record {
            cells: vec![
                Ok(Value::Int64(12)),
                Ok(Value::Double(3.5)),
                Ok(Value::StringList(vec!["a".into(), "b".into()])),
                Ok(Value::Timestamp(at)),
                Ok(Value::Null),
            ],
            event_time: Some(at),
        })
    );
    assert_eq!(rows[1], Row::NotFound);
    // A wrong type fails its cell; an unreadable event time leaves the row without an age.
    let seven = found(&rows[2]);
    let err = seven.cells[0].as_ref().unwrap_err();
    assert!(err.0.contains("tc7") && err.0.contains("many"), "{err}");
    assert_eq!(seven.cells[1], Ok(Value::Null));
    assert_eq!(seven.event_time, None);
}

#[tokio::test]
async fn json_views_read_one_object_per_key() {
    let server = RedisServer::start();
    let client = raw_standalone(&server).await;
    let _: () = client
        .set(
            "m:{shop}:1",
            r#"{"risk": 0.25, "count": 3, "name": "Shop", "ts": "2024-05-01T12:00:00Z", "emb": [1, 2.5], "flag": null}"#,
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let _: () = client
        .set("m:{shop}:2", r#"{"risk": "high"}"#, None, None, false)
        .await
        .unwrap();
    let _: () = client
        .set("m:{shop}:3", "not json", None, None, false)
        .await
        .unwrap();
    let _: () = client
        .hset("m:{shop}:4", vec![("risk", "1")])
        .await
        .unwrap();
    let features = [
        ("risk", FeatureType::Double),
        ("count", FeatureType::Int64),
        ("display_name", FeatureType::String),
        ("emb", FeatureType::DoubleList),
        ("flag", FeatureType::Bool),
    ];
    let spec = source(
        &standalone(&server),
        vec![view(
            "merchant",
            &[("shop", FeatureType::String), ("id", FeatureType::Int64)],
            &features,
            r#"key = "m:{{{shop}}}:{id}"
               encoding = "json"
               fields = { display_name = "name" }
               event_time_field = "ts""#,
        )],
    );
    let fetcher = build(&spec).await;
    let names: Vec<&str> = features.iter().map(|(n, _)| *n).collect();
    let key = |id| vec![KeyPart::String("shop".into()), KeyPart::Int64(id)];
    let rows = fetcher
        .fetch(request(
            "merchant",
            vec![key(1), key(2), key(3), key(4), key(5)],
            &names,
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    let one = found(&rows[0]);
    assert_eq!(
        one.cells,
        vec![
            Ok(Value::Double(0.25)),
            Ok(Value::Int64(3)),
            Ok(Value::String("Shop".into())),
            Ok(Value::DoubleList(vec![1.0, 2.5])),
            Ok(Value::Null),
        ]
    );
    assert_eq!(
        one.event_time,
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800))
    );
    let two = found(&rows[1]);
    assert!(two.cells[0].is_err(), "{two:?}");
    assert_eq!(two.cells[1], Ok(Value::Null));
    // Not JSON, or not a string at all: every cell fails, the batch does not.
    assert!(found(&rows[2]).cells.iter().all(Result::is_err));
    assert!(found(&rows[3]).cells.iter().all(Result::is_err));
    assert_eq!(rows[4], Row::NotFound);
}

#[tokio::test]
async fn a_string_where_a_hash_is_expected_fails_the_cells_not_the_batch() {
    let server = RedisServer::start();
    let client = raw_standalone(&server).await;
    let _: () = client
        .set("u:a", "just a string", None, None, false)
        .await
        .unwrap();
    let _: () = client.hset("u:b", vec![("n", "1")]).await.unwrap();
    let spec = source(
        &standalone(&server),
        vec![view(
            "u",
            &[("id", FeatureType::String)],
            &[("n", FeatureType::Int64)],
            "key = \"u:{id}\"",
        )],
    );
    let fetcher = build(&spec).await;
    let rows = fetcher
        .fetch(request(
            "u",
            string_keys(&["a", "b"]),
            &["n"],
            Duration::from_secs(5),
        ))
        .await
        .unwrap();
    let err = found(&rows[0]).cells[0].as_ref().unwrap_err();
    assert!(err.0.contains("WRONGTYPE"), "{err}");
    assert_eq!(found(&rows[1]).cells, vec![Ok(Value::Int64(1))]);
}

// ------------------------------------------------------------------------------------------------
// Keys and batches

#[tokio::test]
async fn hostile_keys_are_only_data_and_a_batch_of_1000_is_one_fetch() {
    for cluster in [false, true] {
        let (_server, _cluster, client, opts) = if cluster {
            let c = RedisCluster::start(3);
            let client = raw_cluster(&c).await;
            let opts = cluster_options(&c);
            (None, Some(c), client, opts)
        } else {
            let s = RedisServer::start();
            let client = raw_standalone(&s).await;
            let opts = standalone(&s);
            (Some(s), None, client, opts)
        };
        let spec = source(
            &opts,
            vec![view(
                "v",
                &[("id", FeatureType::String)],
                &[("n", FeatureType::Int64)],
                "key = \"v:{id}\"",
            )],
        );
        let fetcher = build(&spec).await;
        let hostile = [
            "*",
            "v:*",
            "a\r\nFLUSHALL\r\n",
            "{id}",
            "\u{0}",
            "ü🙂",
            "a b\"c'",
        ];
        for (i, key) in hostile.iter().enumerate() {
            let _: () = client
                .hset(format!("v:{key}"), vec![("n", i.to_string())])
                .await
                .unwrap();
        }
        let rows = fetcher
            .fetch(request(
                "v",
                string_keys(&hostile),
                &["n"],
                Duration::from_secs(5),
            ))
            .await
            .unwrap();
        for (i, row) in rows.iter().enumerate() {
            assert_eq!(
                found(row).cells,
                vec![Ok(Value::Int64(i as i64))],
                "key {:?}",
                hostile[i]
            );
        }

        // 1000 keys spread over every slot, every other one present.
        let mut pipeline_keys = Vec::new();
        for i in 0..1000 {
            if i % 2 == 0 {
                let _: () = client
                    .hset(format!("v:user-{i}"), vec![("n", i.to_string())])
                    .await
                    .unwrap();
            }
            pipeline_keys.push(format!("user-{i}"));
        }
        let keys: Vec<&str> = pipeline_keys.iter().map(String::as_str).collect();
        let rows = fetcher
            .fetch(request(
                "v",
                string_keys(&keys),
                &["n"],
                Duration::from_secs(10),
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), 1000);
        for (i, row) in rows.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(
                    found(row).cells,
                    vec![Ok(Value::Int64(i as i64))],
                    "cluster={cluster} key {i}"
                );
            } else {
                assert_eq!(row, &Row::NotFound, "cluster={cluster} key {i}");
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Outages

#[tokio::test]
async fn redis_down_fails_fast_and_the_fetcher_reconnects_by_itself() {
    let mut server = RedisServer::start();
    let spec = source(
        &format!(
            "url = \"{}\"\nconnect_timeout = \"300ms\"\ncommand_timeout = \"2s\"",
            server.url()
        ),
        vec![view(
            "v",
            &[("id", FeatureType::String)],
            &[("n", FeatureType::Int64)],
            "key = \"v:{id}\"",
        )],
    );
    let fetcher = build(&spec).await;
    server.cli(&["hset", "v:a", "n", "5"]);
    let fetch = || {
        fetcher.fetch(request(
            "v",
            string_keys(&["a"]),
            &["n"],
            Duration::from_millis(500),
        ))
    };
    assert_eq!(
        found(&fetch().await.unwrap()[0]).cells,
        vec![Ok(Value::Int64(5))]
    );
    fetcher.health().await.unwrap();

    server.stop();
    // Every fetch while Redis is down fails, retryably, and within its deadline (generously).
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(3), fetch())
            .await
            .expect("a fetch hung while Redis was down");
        let err = result.unwrap_err();
        assert!(
            matches!(err.class(), ErrorClass::Unavailable | ErrorClass::Timeout),
            "{err}"
        );
        assert!(err.retryable(), "{err}");
        assert!(started.elapsed() < Duration::from_millis(500) + Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fetcher.health().await.is_err());

    server.restart();
    server.cli(&["hset", "v:a", "n", "6"]);
    // The same fetcher finds the server again by itself (backoff is at most 2 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(rows) = fetch().await {
            assert_eq!(found(&rows[0]).cells, vec![Ok(Value::Int64(6))]);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the fetcher did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fetcher.health().await.unwrap();
}

// ------------------------------------------------------------------------------------------------
// Configuration and secrets

#[tokio::test]
async fn the_password_comes_from_the_environment_and_is_never_shown() {
    let server = RedisServer::start();
    server.cli(&["config", "set", "requirepass", "s3cr3t/p@ss"]);
    let spec = source(
        &format!(
            "url = \"redis://:${{REDIS_PW}}@127.0.0.1:{}\"\nconnect_timeout = \"500ms\"",
            server.port()
        ),
        vec![view(
            "v",
            &[("id", FeatureType::String)],
            &[("n", FeatureType::Int64)],
            "key = \"v:{id}\"",
        )],
    );
    let factory = RedisFactory::with_env(|name| (name == "REDIS_PW").then(|| "s3cr3t/p@ss".into()));
    assert!(factory.validate(&spec).is_empty());
    let fetcher = factory.build(&spec).await.unwrap();
    fetcher.health().await.unwrap();
    assert!(!format!("{fetcher:?}").contains("s3cr3t"));

    let wrong = RedisFactory::with_env(|_| Some("wrong-s3cr3t".into()));
    let err = wrong.build(&spec).await.unwrap_err().to_string();
    assert!(!err.contains("s3cr3t"), "{err}");
    assert!(err.contains("refused the credentials"), "{err}");

    let unset = RedisFactory::with_env(|_| None);
    let err = unset.build(&spec).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "source `store`: url: environment variable `REDIS_PW` is not set"
    );

    let literal = source(
        "url = \"redis://:hunter2@127.0.0.1:1\"",
        vec![view(
            "v",
            &[("id", FeatureType::String)],
            &[("n", FeatureType::Int64)],
            "key = \"v:{id}\"",
        )],
    );
    let errors = fetcher_api::config::join(&RedisFactory::new().validate(&literal), "\n");
    assert!(
        errors.contains("must come from the environment") && !errors.contains("hunter2"),
        "{errors}"
    );
}

#[test]
fn validation_names_every_bad_option() {
    let spec = source(
        r#"url = "http://x"
           mode = "sentinel"
           pool_size = 0
           nodes = ["nope"]"#,
        vec![
            view(
                "a",
                &[("id", FeatureType::String)],
                &[("n", FeatureType::Int64)],
                "key = \"a:{user}\"",
            ),
            view(
                "b",
                &[("id", FeatureType::String)],
                &[("n", FeatureType::Int64)],
                "key = \"b:{id}\"\nencoding = \"xml\"",
            ),
            view(
                "c",
                &[("id", FeatureType::String)],
                &[("n", FeatureType::Int64)],
                "key = \"c:{id}\"\nfields = { m = \"x\" }\ncolour = 1",
            ),
            view(
                "d",
                &[("id", FeatureType::String)],
                &[("n", FeatureType::Int64)],
                "key = \"d:{id}\"\nfields = { m = \"x\" }\nevent_time_field = \"n\"",
            ),
        ],
    );
    let text = fetcher_api::config::join(&RedisFactory::new().validate(&spec), "\n");
    for e in [
        "url: must start with redis:// or rediss://",
        "mode: sentinel_service_name is required",
        "pool_size: must be at least 1",
        "nodes: `nope` is not a `host:port` address",
        "view `a`: key: unknown placeholder `{user}`",
        "view `b`: unknown variant `xml`",
        "view `c`: colour: unknown field `colour`",
        "view `d`: fields.m: the view has no feature `m`",
        "view `d`: event_time_field: `n` is also the field of feature `n`",
    ] {
        assert!(text.contains(e), "missing `{e}` in:\n{text}");
    }
}

// ------------------------------------------------------------------------------------------------
// materialize

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

const FEATURES: [(&str, FeatureType); 6] = [
    ("count", FeatureType::Int64),
    ("score", FeatureType::Double),
    ("label", FeatureType::String),
    ("flag", FeatureType::Bool),
    ("seen", FeatureType::Timestamp),
    ("emb", FeatureType::DoubleList),
];

fn materialize_spec(opts: &str, encoding: &str) -> SourceSpec {
    source(
        opts,
        vec![view(
            "user",
            &[
                ("user_id", FeatureType::Int64),
                ("market", FeatureType::String),
            ],
            &FEATURES,
            &format!(
                "key = \"user:{{market}}:{{user_id}}\"\nencoding = \"{encoding}\"\nfields = {{ count = \"c\" }}\nevent_time_field = \"updated_at\""
            ),
        )],
    )
}

const GOOD_CSV: &str = "user_id,market,count,score,label,flag,seen,emb,updated_at\n\
1,us,3,0.1,\"with, comma\",true,2024-05-01T12:00:00.25Z,\"[1, 2.5]\",1714564800\n\
2,fr,,,,,,,\n\
-3,us,-7,1e300,ünï,0,1714564800,[],2024-05-01T14:00:00+02:00\n";

async fn read_back(fetcher: &Arc<dyn Fetcher>, keys: &[(i64, &str)]) -> Vec<Row> {
    let names: Vec<&str> = FEATURES.iter().map(|(n, _)| *n).collect();
    fetcher
        .fetch(request(
            "user",
            keys.iter()
                .map(|(id, m)| vec![KeyPart::Int64(*id), KeyPart::String((*m).into())])
                .collect(),
            &names,
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
}

fn expected_user_1() -> Record {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
    Record {
        cells: vec![
            Ok(Value::Int64(3)),
            Ok(Value::Double(0.1)),
            Ok(Value::String("with, comma".into())),
            Ok(Value::Bool(true)),
            Ok(Value::Timestamp(at + Duration::from_millis(250))),
            Ok(Value::DoubleList(vec![1.0, 2.5])),
        ],
        event_time: Some(at),
    }
}

#[tokio::test]
async fn materialized_rows_read_back_the_same_in_both_encodings() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("users.csv");
    write(&input, GOOD_CSV);
    for encoding in ["hash", "json"] {
        server.cli(&["flushall"]);
        let spec = materialize_spec(&standalone(&server), encoding);
        let mut progress = Vec::new();
        let report = materialize(&spec, "user", &input, &MaterializeOptions::default(), |p| {
            progress.push(p)
        })
        .await
        .unwrap();
        assert_eq!(
            (report.rows_read, report.rows_written),
            (3, 3),
            "{report:?}"
        );
        assert!(report.bad_rows.is_empty(), "{report:?}");
        assert_eq!(progress.last().map(|p| p.rows_written), Some(3));

        let fetcher = build(&spec).await;
        let rows = read_back(&fetcher, &[(1, "us"), (2, "fr"), (-3, "us"), (1, "fr")]).await;
        assert_eq!(rows[0], Row::Found(expected_user_1()), "{encoding}");
        if encoding == "hash" {
            // A row of nulls has no fields at all, and Redis keeps no empty hash.
            assert_eq!(rows[1], Row::NotFound);
        } else {
            // An empty JSON object is a row of nulls.
            assert_eq!(
                rows[1],
                Row::Found(Record {
                    cells: vec![Ok(Value::Null); FEATURES.len()],
                    event_time: None
                })
            );
        }
        let three = found(&rows[2]);
        assert_eq!(three.cells[0], Ok(Value::Int64(-7)));
        assert_eq!(three.cells[1], Ok(Value::Double(1e300)));
        assert_eq!(three.cells[2], Ok(Value::String("ünï".into())));
        assert_eq!(three.cells[3], Ok(Value::Bool(false)));
        assert_eq!(three.cells[5], Ok(Value::DoubleList(vec![])));
        assert_eq!(
            three.event_time,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800))
        );
        assert_eq!(rows[3], Row::NotFound);
        // The stored forms are the canonical ones.
        if encoding == "hash" {
            assert_eq!(server.cli(&["hget", "user:us:1", "c"]).trim(), "3");
            assert_eq!(
                server.cli(&["hget", "user:us:1", "seen"]).trim(),
                "2024-05-01T12:00:00.25Z"
            );
            assert_eq!(
                server.cli(&["hget", "user:us:1", "updated_at"]).trim(),
                "2024-05-01T12:00:00Z"
            );
        } else {
            let json: serde_json::Value =
                serde_json::from_str(server.cli(&["get", "user:us:1"]).trim()).unwrap();
            assert_eq!(json["c"], 3);
            assert_eq!(json["emb"], serde_json::json!([1.0, 2.5]));
        }
    }

    // A reload replaces the view's fields and leaves other fields of the hash alone.
    server.cli(&["flushall"]);
    let spec = materialize_spec(&standalone(&server), "hash");
    materialize(
        &spec,
        "user",
        &input,
        &MaterializeOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    server.cli(&["hset", "user:us:1", "other_view_field", "keep"]);
    write(
        &input,
        "user_id,market,count,score,label,flag,seen,emb\n1,us,4,,,,,\n",
    );
    materialize(
        &spec,
        "user",
        &input,
        &MaterializeOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    let fetcher = build(&spec).await;
    let rows = read_back(&fetcher, &[(1, "us")]).await;
    let one = found(&rows[0]);
    assert_eq!(one.cells[0], Ok(Value::Int64(4)));
    assert!(
        one.cells[1..].iter().all(|c| c == &Ok(Value::Null)),
        "{one:?}"
    );
    assert_eq!(one.event_time, None);
    assert_eq!(
        server
            .cli(&["hget", "user:us:1", "other_view_field"])
            .trim(),
        "keep"
    );
}

#[tokio::test]
async fn materialize_reports_bad_rows_with_line_numbers_and_writes_the_good_ones() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("users.csv");
    write(
        &input,
        "user_id,market,count,score,label,flag,seen,emb,updated_at,surprise\n\
         1,us,3,0.5,a,true,,,,x\n\
         one,us,3,0.5,a,true,,,,x\n\
         2,us,three,0.5,a,true,,,,x\n\
         3,us,3,0.5,\"multi\nline\",yes?,,,,x\n\
         4,us,3,0.5,a,true,,[1,,x\n\
         5,us,3,0.5,a,true,,,,x\n\
         six,us,many,0.5,a,maybe,,,,x\n",
    );
    let spec = materialize_spec(&standalone(&server), "hash");
    let options = MaterializeOptions {
        chunk_rows: 2,
        ..MaterializeOptions::default()
    };
    let mut progress = Vec::new();
    let report = materialize(&spec, "user", &input, &options, |p| progress.push(p))
        .await
        .unwrap();
    assert_eq!(report.rows_read, 7);
    assert_eq!(report.rows_written, 2, "{report:?}");
    let lines: Vec<u64> = report.bad_rows.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [1, 3, 4, 5, 7, 9], "{:#?}", report.bad_rows);
    let text = |line: u64| &report.bad_rows.iter().find(|(l, _)| *l == line).unwrap().1;
    assert!(text(1).contains("unknown column `surprise`"), "{}", text(1));
    assert!(
        text(3).contains("column `user_id`") && text(3).contains("`one` is not an int64"),
        "{}",
        text(3)
    );
    assert!(
        text(4).contains("column `count`") && text(4).contains("three"),
        "{}",
        text(4)
    );
    // A quoted field spanning two lines: the row starts on line 5 and the next one is line 7.
    assert!(text(5).contains("column `flag`"), "{}", text(5));
    assert!(text(7).contains("column `emb`"), "{}", text(7));
    // Every bad value of a row is reported, not only the first.
    for column in ["`user_id`", "`count`", "`flag`"] {
        assert!(text(9).contains(column), "{column} not in {}", text(9));
    }
    assert!(progress.len() >= 2, "{progress:?}");
    assert_eq!(
        server
            .cli(&["exists", "user:us:1", "user:us:5", "user:us:2"])
            .trim(),
        "2"
    );

    // Missing columns stop the load before anything is written.
    write(&input, "user_id,count\n1,2\n");
    let err = materialize(&spec, "user", &input, &options, |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("missing column(s) `market`, `score`"),
        "{err}"
    );
    let err = materialize(&spec, "nope", &input, &options, |_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no view `nope`"), "{err}");
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_a_ttl_expires_keys() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("users.csv");
    write(&input, GOOD_CSV);
    for encoding in ["hash", "json"] {
        server.cli(&["flushall"]);
        let spec = materialize_spec(&standalone(&server), encoding);
        let dry = MaterializeOptions {
            dry_run: true,
            ..MaterializeOptions::default()
        };
        let report = materialize(&spec, "user", &input, &dry, |_| {})
            .await
            .unwrap();
        assert_eq!((report.rows_read, report.rows_written), (3, 0));
        assert_eq!(server.cli(&["dbsize"]).trim(), "0");

        let ttl = MaterializeOptions {
            ttl: Some(Duration::from_secs(3600)),
            ..MaterializeOptions::default()
        };
        let report = materialize(&spec, "user", &input, &ttl, |_| {})
            .await
            .unwrap();
        assert_eq!(report.rows_written, 3);
        let left: i64 = server.cli(&["ttl", "user:us:1"]).trim().parse().unwrap();
        assert!((3000..=3600).contains(&left), "{encoding}: ttl {left}");
    }
    // A dry run needs no server at all.
    let spec = materialize_spec("url = \"redis://127.0.0.1:1\"", "hash");
    let dry = MaterializeOptions {
        dry_run: true,
        ..MaterializeOptions::default()
    };
    assert_eq!(
        materialize(&spec, "user", &input, &dry, |_| {})
            .await
            .unwrap()
            .rows_read,
        3
    );
    let err = materialize(
        &spec,
        "user",
        &input,
        &MaterializeOptions::default(),
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, fetcher_redis::MaterializeError::Redis { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn materialize_into_a_cluster_reads_back_across_slots() {
    let cluster = RedisCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("users.csv");
    let mut csv = String::from("user_id,market,count,score,label,flag,seen,emb\n");
    for i in 0..2500 {
        csv.push_str(&format!("{i},m{},{i},{i}.5,l{i},true,,\n", i % 7));
    }
    write(&input, &csv);
    let spec = materialize_spec(&cluster_options(&cluster), "hash");
    let report = materialize(
        &spec,
        "user",
        &input,
        &MaterializeOptions::default(),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.rows_written, 2500, "{report:?}");
    let fetcher = build(&spec).await;
    let keys: Vec<(i64, String)> = (0..2500).map(|i| (i, format!("m{}", i % 7))).collect();
    let keys: Vec<(i64, &str)> = keys.iter().map(|(i, m)| (*i, m.as_str())).collect();
    let rows = read_back(&fetcher, &keys).await;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(found(row).cells[0], Ok(Value::Int64(i as i64)));
        assert_eq!(found(row).cells[2], Ok(Value::String(format!("l{i}"))));
    }
}

// ------------------------------------------------------------------------------------------------
// TLS

/// `tls_ca_file = "<path>"`.
fn tls_ca_option(path: &Path) -> String {
    format!("tls_ca_file = \"{}\"", path.display())
}

/// A plain client of a TLS server, trusting its CA and presenting its client certificate.
async fn raw_tls(server: &RedisServer) -> Client {
    use fred::types::config::TlsConnector;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = server.certificates().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        CertificateDer::pem_file_iter(certs.client_cert())
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap(),
        PrivateKeyDer::from_pem_file(certs.client_key()).unwrap(),
    )
    .unwrap();
    let client = Client::new(
        Config {
            server: ServerConfig::new_centralized("127.0.0.1", server.port()),
            tls: Some(TlsConnector::from(tls).into()),
            ..Config::default()
        },
        None,
        None,
        None,
    );
    client.init().await.unwrap();
    client
}

#[tokio::test]
async fn redis_over_tls_passes_the_conformance_suite() {
    let server = RedisServer::start_tls(false);
    let harness = RedisHarness {
        client: raw_tls(&server).await,
        options: format!(
            "url = \"{}\"\ncommand_timeout = \"2s\"\n{}",
            server.url(),
            tls_ca_option(server.ca_file())
        ),
        stopped: Mutex::new(Vec::new()),
    };
    fetcher_conformance::run(&harness).await;
}

#[tokio::test]
async fn a_server_requiring_client_certificates_accepts_the_configured_one() {
    let server = RedisServer::start_tls(true);
    let certs = server.certificates().unwrap();
    let _: () = raw_tls(&server)
        .await
        .set("v:a", "7", None, None, false)
        .await
        .unwrap();
    let spec = |extra: &str| {
        source(
            &format!(
                "url = \"{}\"\nconnect_timeout = \"2s\"\n{}\n{extra}",
                server.url(),
                tls_ca_option(server.ca_file())
            ),
            vec![view(
                "v",
                &[("id", FeatureType::String)],
                &[("n", FeatureType::Int64)],
                "key = \"v:{id}\"\nencoding = \"json\"",
            )],
        )
    };
    let fetcher = build(&spec(&format!(
        "tls_client_cert_file = \"{}\"\ntls_client_key_file = \"{}\"",
        certs.client_cert().display(),
        certs.client_key().display()
    )))
    .await;
    assert!(fetcher.health().await.is_ok());
}

#[tokio::test]
async fn a_certificate_from_another_ca_fails_the_build_clearly() {
    let server = RedisServer::start_tls(false);
    let certs = server.certificates().unwrap();
    let spec = source(
        &format!(
            "url = \"{}\"\nconnect_timeout = \"2s\"\n{}",
            server.url(),
            tls_ca_option(&certs.other_ca())
        ),
        vec![view(
            "v",
            &[("id", FeatureType::String)],
            &[("n", FeatureType::Int64)],
            "key = \"v:{id}\"",
        )],
    );
    let factory = RedisFactory::new();
    assert_eq!(factory.validate(&spec), Vec::<String>::new());
    let e = factory.build(&spec).await.unwrap_err().to_string();
    assert!(
        e.contains("the server's certificate is not signed by a root in tls_ca_file"),
        "{e}"
    );

    // Checked without I/O: TLS options need a rediss:// URL, and a key needs its certificate.
    let spec = source(
        "url = \"redis://127.0.0.1:1\"\ntls_ca_file = \"ca.pem\"\ntls_client_key_file = \"k.pem\"",
        Vec::new(),
    );
    let errors = fetcher_api::config::join(&factory.validate(&spec), "\n");
    assert!(
        errors.contains("tls_ca_file: applies only to TLS connections: use a rediss:// URL"),
        "{errors}"
    );
    assert!(
        errors.contains("tls_client_key_file: needs tls_client_cert_file"),
        "{errors}"
    );
}
