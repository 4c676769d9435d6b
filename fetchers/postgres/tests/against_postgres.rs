//! The `postgres` source against a real PostgreSQL 15 server: type mapping, batching, multiple
//! rows, build-time checks, server-side cancellation, a stopped server and error classes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, SystemTime};

use common::{build, build_error, connect, i, request, s, source, view};
use end_to_end::postgres::PostgresServer;
use fetcher_api::{ErrorClass, FeatureType as T, FetcherFactory, KeyPart, Row, Value};
use fetcher_postgres::PostgresFactory;

/// A fresh database on the shared server, with `setup` run in it; returns its URL.
async fn database(setup: &str) -> String {
    let server = PostgresServer::shared();
    let db = server.create_database();
    let url = server.url_for(&db);
    connect(&url).await.batch_execute(setup).await.unwrap();
    url
}

fn found(row: &Row) -> &fetcher_api::Record {
    match row {
        Row::Found(record) => record,
        Row::NotFound => panic!("expected a row, got NotFound"),
    }
}

fn at(secs: u64, micros: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
}

const SECOND: Duration = Duration::from_secs(5);
/// Slack over a deadline for a loaded 2-core machine: a correctness bound, far below the
/// statement times the tests tell apart.
const SLACK: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_maps_to_its_value_and_null_to_null() {
    let url = database(
        r#"CREATE TABLE typed (
             id int8 PRIMARY KEY, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric,
             txt text, vc varchar(20), ch char(4), flag bool, raw bytea, tstz timestamptz, ts timestamp,
             i4s int4[], i8s int8[], f8s float8[], nums numeric[], txts text[], attrs jsonb, i4_as_double int4);
           INSERT INTO typed VALUES
             (1, -2, 40000, 9007199254740993, 0.5, 2.25, 12345.678, 'héllo', 'v', 'ab', true,
              '\x00ff10', '2024-05-01T12:00:00.123456Z', '2024-05-01 12:00:00', '{1,-2,3}',
              '{9007199254740993}', '{0.5,1e300}', '{1.5,-0.0012}', '{"a","b,c",""}',
              '{"scores": {"risk": 0.75, "tier": "gold", "tags": ["x", "y"]}, "seen": 3}', 7),
             (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
              NULL, NULL, NULL, NULL, NULL, NULL, NULL),
             (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'infinity', NULL,
              '{1,NULL}', '{{1,2},{3,4}}', NULL, NULL, NULL, '{"scores": {"risk": "high"}}', NULL);"#,
    )
    .await;
    let features = [
        ("i2", T::Int64),
        ("i4", T::Int64),
        ("i8", T::Int64),
        ("f4", T::Double),
        ("f8", T::Double),
        ("num", T::Double),
        ("txt", T::String),
        ("vc", T::String),
        ("ch", T::String),
        ("flag", T::Bool),
        ("raw", T::Bytes),
        ("tstz", T::Timestamp),
        ("ts", T::Timestamp),
        ("i4s", T::Int64List),
        ("i8s", T::Int64List),
        ("f8s", T::DoubleList),
        ("nums", T::DoubleList),
        ("txts", T::StringList),
        ("risk", T::Double),
        ("tier", T::String),
        ("tags", T::StringList),
        ("missing", T::Int64),
        ("i4_as_double", T::Double),
    ];
    let spec = source(
        &url,
        "",
        vec![view(
            "typed",
            &[("id", T::Int64)],
            &features,
            r#"query = "SELECT * FROM typed WHERE id = $1"
               json_paths = { risk = { column = "attrs", path = "/scores/risk" }, tier = { column = "attrs", path = "/scores/tier" }, tags = { column = "attrs", path = "/scores/tags" }, missing = { column = "attrs", path = "/nope" } }"#,
        )],
    );
    let fetcher = build(&spec).await;
    let names: Vec<&str> = features.iter().map(|(n, _)| *n).collect();
    let expected_1 = vec![
        Value::Int64(-2),
        Value::Int64(40000),
        Value::Int64(9_007_199_254_740_993),
        Value::Double(0.5),
        Value::Double(2.25),
        Value::Double(12345.678),
        Value::String("héllo".into()),
        Value::String("v".into()),
        Value::String("ab  ".into()),
        Value::Bool(true),
        Value::Bytes(vec![0, 0xff, 0x10]),
        Value::Timestamp(at(1_714_564_800, 123_456)),
        Value::Timestamp(at(1_714_564_800, 0)),
        Value::Int64List(vec![1, -2, 3]),
        Value::Int64List(vec![9_007_199_254_740_993]),
        Value::DoubleList(vec![0.5, 1e300]),
        Value::DoubleList(vec![1.5, -0.0012]),
        Value::StringList(vec!["a".into(), "b,c".into(), String::new()]),
        Value::Double(0.75),
        Value::String("gold".into()),
        Value::StringList(vec!["x".into(), "y".into()]),
        Value::Null,
        Value::Double(7.0),
    ];
    // One key (the view's own query) and a batch (its batch form) must read the same.
    for keys in [vec![i(1)], vec![i(2), i(1), i(99)]] {
        let batch = keys.len() > 1;
        let rows = fetcher
            .fetch(request("typed", keys, &names, SECOND))
            .await
            .unwrap();
        let one = found(&rows[if batch { 1 } else { 0 }]);
        for ((name, want), got) in names.iter().zip(&expected_1).zip(&one.cells) {
            assert_eq!(got.as_ref(), Ok(want), "feature {name} (batch: {batch})");
        }
        if batch {
            let nulls = found(&rows[0]);
            for (name, got) in names.iter().zip(&nulls.cells) {
                assert_eq!(
                    got.as_ref(),
                    Ok(&Value::Null),
                    "feature {name} of the NULL row"
                );
            }
            assert_eq!(rows[2], Row::NotFound);
        }
    }

    // Values a feature type cannot hold fail their own cell, naming why; the rest is served.
    let rows = fetcher
        .fetch(request(
            "typed",
            vec![i(3)],
            &["tstz", "i4s", "i8s", "risk", "flag"],
            SECOND,
        ))
        .await
        .unwrap();
    let cells = &found(&rows[0]).cells;
    let error = |i: usize| cells[i].as_ref().unwrap_err().to_string();
    assert!(error(0).contains("infinite timestamp"), "{}", error(0));
    assert!(error(1).contains("NULL"), "{}", error(1));
    assert!(error(2).contains("i8s"), "{}", error(2));
    assert!(error(3).contains("expected double"), "{}", error(3));
    assert_eq!(cells[4], Ok(Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_1000_keys_is_one_statement_in_key_order() {
    let server = PostgresServer::shared();
    let db = server.create_database();
    let url = server.url_for(&db);
    connect(&url)
        .await
        .batch_execute(
            "CREATE TABLE users (user_id int8 PRIMARY KEY, n int8, name text);
             INSERT INTO users SELECT g, g * 10, 'user-' || g FROM generate_series(1, 3000) g
               WHERE g % 3 <> 0;",
        )
        .await
        .unwrap();
    let spec = source(
        &url,
        "",
        vec![view(
            "users",
            &[("user_id", T::Int64)],
            &[("n", T::Int64), ("label", T::String)],
            r#"query = "SELECT n, name FROM users WHERE user_id = $1"
               columns = { label = "name" }"#,
        )],
    );
    let fetcher = build(&spec).await;
    // Reset after the build's own prepares, so only the fetch is counted.
    server.psql(&db, "SELECT pg_stat_statements_reset()");
    let keys: Vec<i64> = (1..=1000).rev().map(|k| k * 3 - 1 - (k % 2)).collect();
    let rows = fetcher
        .fetch(request(
            "users",
            keys.iter().map(|&k| i(k)).collect(),
            &["label", "n"],
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1000);
    for (key, row) in keys.iter().zip(&rows) {
        if key % 3 == 0 {
            assert_eq!(row, &Row::NotFound, "key {key}");
        } else {
            assert_eq!(
                found(row).cells,
                vec![
                    Ok(Value::String(format!("user-{key}"))),
                    Ok(Value::Int64(key * 10))
                ],
                "key {key}"
            );
        }
    }
    // The server executed exactly one statement for the whole batch, returning every found row.
    let stats = server.psql(
        &db,
        "SELECT s.calls, s.rows FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
         WHERE d.datname = current_database() AND s.query LIKE '%FROM users%'",
    );
    let found_rows = keys.iter().filter(|k| *k % 3 != 0).count();
    assert_eq!(
        stats,
        format!("1|{found_rows}"),
        "pg_stat_statements: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_bind_in_entity_order_and_out_of_range_keys_are_not_found() {
    let url = database(
        "CREATE TABLE balances (account int4, currency text, amount numeric(12,2));
         INSERT INTO balances VALUES (1, 'EUR', 10.50), (1, 'USD', 3), (2, 'EUR', -1.25);",
    )
    .await;
    let spec = source(
        &url,
        "",
        vec![view(
            "balances",
            &[("account", T::Int64), ("currency", T::String)],
            &[("amount", T::Double)],
            // $2 before $1 in the text: binding follows the numbers, not the order of appearance.
            r#"query = "SELECT amount FROM balances WHERE currency = $2 AND account = $1""#,
        )],
    );
    let fetcher = build(&spec).await;
    let key = |a: i64, c: &str| vec![KeyPart::Int64(a), KeyPart::String(c.into())];
    let rows = fetcher
        .fetch(request(
            "balances",
            vec![
                key(1, "USD"),
                key(i64::MAX, "EUR"),
                key(2, "EUR"),
                key(1, "EUR"),
                key(2, "USD"),
            ],
            &["amount"],
            SECOND,
        ))
        .await
        .unwrap();
    let amounts: Vec<Option<Value>> = rows
        .iter()
        .map(|r| match r {
            Row::Found(rec) => Some(rec.cells[0].clone().unwrap()),
            Row::NotFound => None,
        })
        .collect();
    assert_eq!(
        amounts,
        [
            Some(Value::Double(3.0)),
            None,
            Some(Value::Double(-1.25)),
            Some(Value::Double(10.5)),
            None
        ]
    );
    // A lone key outside int4's range is not found either, without an error.
    let rows = fetcher
        .fetch(request(
            "balances",
            vec![key(1 << 40, "EUR")],
            &["amount"],
            SECOND,
        ))
        .await
        .unwrap();
    assert_eq!(rows, [Row::NotFound]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_rows_serve_the_first_or_fail_the_key() {
    let url = database(
        "CREATE TABLE txns (user_id text, amount float8, at timestamptz);
         INSERT INTO txns VALUES ('u1', 1.0, '2024-01-01Z'), ('u1', 2.0, '2024-02-01Z'),
                                 ('u2', 5.0, '2024-03-01Z');",
    )
    .await;
    let query = r#"query = "SELECT amount, at FROM txns WHERE user_id = $1 ORDER BY at DESC"
                   event_time_column = "at""#;
    let spec = source(
        &url,
        "",
        vec![
            view(
                "latest",
                &[("user_id", T::String)],
                &[("amount", T::Double)],
                &format!("{query}\nmultiple_rows = \"first\""),
            ),
            view(
                "strict",
                &[("user_id", T::String)],
                &[("amount", T::Double)],
                query,
            ),
        ],
    );
    let fetcher = build(&spec).await;
    for keys in [vec![s("u1")], vec![s("u1"), s("u2")]] {
        let rows = fetcher
            .fetch(request("latest", keys.clone(), &["amount"], SECOND))
            .await
            .unwrap();
        let first = found(&rows[0]);
        assert_eq!(first.cells, [Ok(Value::Double(2.0))], "latest row first");
        assert_eq!(first.event_time, Some(at(1_706_745_600, 0)));

        let rows = fetcher
            .fetch(request("strict", keys, &["amount"], SECOND))
            .await
            .unwrap();
        let err = found(&rows[0]).cells[0].clone().unwrap_err().to_string();
        assert!(err.contains("returned 2 rows"), "{err}");
        if rows.len() > 1 {
            assert_eq!(
                found(&rows[1]).cells,
                [Ok(Value::Double(5.0))],
                "u2 unaffected"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_column_or_type_fails_the_build_naming_view_query_and_column() {
    let url = database(
        "CREATE TABLE stats (user_id int8, n int8, label text, attrs jsonb, seen timestamptz);",
    )
    .await;
    let one = |features: &[(&str, T)], options: &str| {
        source(
            &url,
            "",
            vec![view("stats", &[("user_id", T::Int64)], features, options)],
        )
    };
    let cases = [
        (
            one(
                &[("n", T::Int64), ("nope", T::Int64)],
                r#"query = "SELECT n FROM stats WHERE user_id = $1""#,
            ),
            vec![
                "view `stats`",
                "query `SELECT n FROM stats WHERE user_id = $1`",
                "no column `nope` (feature `nope`) in the result (columns: n)",
            ],
        ),
        (
            one(
                &[("label", T::Double)],
                r#"query = "SELECT label FROM stats WHERE user_id = $1""#,
            ),
            vec![
                "query `SELECT label FROM stats WHERE user_id = $1`",
                "column `label` is text, but feature `label` is declared double",
            ],
        ),
        (
            one(
                &[("n", T::StringList)],
                r#"query = "SELECT n FROM stats WHERE user_id = $1""#,
            ),
            vec!["column `n` is int8, but feature `n` is declared list<string>"],
        ),
        (
            one(
                &[("risk", T::Double)],
                r#"query = "SELECT label FROM stats WHERE user_id = $1"
                   json_paths = { risk = { column = "label", path = "/risk" } }"#,
            ),
            vec!["json_paths.risk: column `label` is text, not json or jsonb"],
        ),
        (
            one(
                &[("n", T::Int64)],
                r#"query = "SELECT n FROM stats WHERE label = $1""#,
            ),
            vec!["$1 is bound from entity `user_id` (int64), but PostgreSQL reads it as text"],
        ),
        (
            one(
                &[("n", T::Int64)],
                r#"query = "SELECT n FROM statz WHERE user_id = $1""#,
            ),
            vec![
                "query `SELECT n FROM statz",
                "relation \"statz\" does not exist",
            ],
        ),
        (
            one(
                &[("n", T::Int64)],
                r#"query = "SELECT n, label FROM stats WHERE user_id = $1"
                   event_time_column = "label""#,
            ),
            vec!["event_time_column `label` is text, not timestamptz or timestamp"],
        ),
        (
            one(
                &[("n", T::Int64)],
                r#"query = "SELECT n, n FROM stats WHERE user_id = $1""#,
            ),
            vec!["column `n` (feature `n`) appears more than once"],
        ),
    ];
    for (spec, expected) in cases {
        let err = build_error(&spec).await;
        assert!(err.starts_with("source `db`: view `stats`"), "{err}");
        for e in expected {
            assert!(err.contains(e), "missing `{e}` in: {err}");
        }
    }
}

#[test]
fn validation_needs_no_server_and_counts_placeholders() {
    let factory = PostgresFactory::new();
    let spec = source(
        "postgres://u:${PW}@127.0.0.1:1/db",
        "pool_size = 0\ncolour = \"red\"",
        vec![
            view(
                "two_keys",
                &[("a", T::Int64), ("b", T::String)],
                &[("x", T::Int64)],
                // '$2' in a literal and -- $2 in a comment are not placeholders.
                "query = \"SELECT x FROM t WHERE a = $1 AND c = '$2' -- $2\"",
            ),
            view(
                "unknown",
                &[("a", T::Int64)],
                &[("x", T::Int64)],
                "query = \"SELECT $1\"\nmode = 1",
            ),
        ],
    );
    let text = fetcher_api::config::join(&factory.validate(&spec), "\n");
    assert!(text.contains("colour: unknown field `colour`"), "{text}");
    assert!(
        text.contains("view `two_keys`: query: the query has no placeholder `$2`"),
        "{text}"
    );
    assert!(
        text.contains("view `unknown`: mode: unknown field `mode`"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pool_is_opened_at_build() {
    let url = database("CREATE TABLE t (id text, v int8); INSERT INTO t VALUES ('k', 1);").await;
    let spec = source(
        &url,
        "pool_size = 3",
        vec![view(
            "t",
            &[("id", T::String)],
            &[("v", T::Int64)],
            r#"query = "SELECT v FROM t WHERE id = $1""#,
        )],
    );
    let fetcher = build(&spec).await;
    let observer = connect(&url).await;
    let connections: i64 = observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        connections, 3,
        "every pooled connection is open before the first fetch"
    );
    let rows = fetcher
        .fetch(request("t", vec![s("k")], &["v"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells[0], Ok(Value::Int64(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_ending_within_the_grace_past_its_deadline_is_not_cancelled() {
    // `late(id)` sleeps 1 s, past the fetch's deadline, then records that it ran to its end.
    let url = database(
        "CREATE TABLE ended (id text);
         CREATE FUNCTION late(k text) RETURNS int8 LANGUAGE plpgsql VOLATILE AS $$
         BEGIN PERFORM pg_sleep(1); INSERT INTO ended VALUES (k); RETURN 1; END $$;",
    )
    .await;
    // How long past its deadline a statement may run before it is cancelled: far more than
    // the statement needs, on any machine.
    let grace = Duration::from_secs(20);
    let deadline = Duration::from_millis(200);
    let spec = source(
        &url,
        // One connection, so the fetch after the late one shows whether it was kept or closed.
        &format!("pool_size = 1\ncancel_after = \"{}s\"", grace.as_secs()),
        vec![
            view(
                "late",
                &[("id", T::String)],
                &[("v", T::Int64)],
                r#"query = "SELECT late($1) AS v""#,
            ),
            view(
                "pid",
                &[("id", T::String)],
                &[("pid", T::Int64)],
                r#"query = "SELECT pg_backend_pid()::int8 AS pid WHERE $1::text IS NOT NULL""#,
            ),
        ],
    );
    let fetcher = build(&spec).await;
    let pid = |rows: Vec<Row>| found(&rows[0]).cells[0].clone().unwrap();
    let before = pid(fetcher
        .fetch(request("pid", vec![s("k")], &["pid"], SECOND))
        .await
        .unwrap());

    let started = std::time::Instant::now();
    let err = fetcher
        .fetch(request("late", vec![s("a")], &["v"], deadline))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout, "{err}");
    // The answer is due at the deadline, not after the statement or the grace.
    assert!(
        started.elapsed() < deadline + SLACK,
        "the fetch waited for the statement or the grace: {:?}",
        started.elapsed()
    );

    // The statement runs to its end (no cancel request) and its connection serves the next fetch.
    let observer = connect(&url).await;
    let ended = async {
        loop {
            let n: i64 = observer
                .query_one("SELECT count(*) FROM ended WHERE id = 'a'", &[])
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(grace, ended)
        .await
        .expect("the late statement was cancelled instead of being let end");
    let after = pid(fetcher
        .fetch(request("pid", vec![s("k")], &["pid"], SECOND))
        .await
        .unwrap());
    assert_eq!(after, before, "the connection was kept, not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_deadline_is_cancelled_on_the_server_and_the_pool_keeps_serving() {
    let url =
        database("CREATE TABLE slow (id text, v int8); INSERT INTO slow VALUES ('k', 1);").await;
    let spec = source(
        &url,
        // One connection: the fetch after the timeout must reuse the very connection.
        "pool_size = 1\ncancel_after = \"0s\"",
        vec![
            view(
                "slow",
                &[("id", T::String)],
                &[("v", T::Int64)],
                r#"query = "SELECT v FROM slow CROSS JOIN pg_sleep(30) WHERE id = $1""#,
            ),
            view(
                "fast",
                &[("id", T::String)],
                &[("v", T::Int64), ("pid", T::Int64)],
                r#"query = "SELECT v, pg_backend_pid()::int8 AS pid FROM slow WHERE id = $1""#,
            ),
        ],
    );
    let fetcher = build(&spec).await;
    let pid = |rows: Vec<Row>| found(&rows[0]).cells[1].clone().unwrap();
    let before = pid(fetcher
        .fetch(request("fast", vec![s("k")], &["v", "pid"], SECOND))
        .await
        .unwrap());
    let observer = connect(&url).await;
    let sleeping = || async {
        observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };

    let deadline = Duration::from_millis(200);
    for keys in [vec![s("k")], vec![s("k"), s("other")]] {
        let started = std::time::Instant::now();
        let err = fetcher
            .fetch(request("slow", keys, &["v"], deadline))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(err.class(), ErrorClass::Timeout, "{err}");
        assert!(err.retryable());
        // The answer comes at the deadline plus the cancel round trip, far before 30 s.
        assert!(elapsed < deadline + SLACK, "took {elapsed:?}");
        let gone = async {
            while sleeping().await > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Polled for up to 10 s: far less than the statement's 30 s.
        tokio::time::timeout(Duration::from_secs(10), gone)
            .await
            .expect("the sleeping query is still running on the server");
        let after = pid(fetcher
            .fetch(request("fast", vec![s("k")], &["v", "pid"], SECOND))
            .await
            .unwrap());
        assert_eq!(
            after, before,
            "the same pooled connection serves the next fetch"
        );
    }

    // The caller may stop waiting before the deadline (the gateway's own timeout drops the
    // fetch): the statement is still cancelled at the deadline.
    let deadline = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        fetcher.fetch(request("slow", vec![s("k")], &["v"], deadline)),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the fetch should still be running at 50ms"
    );
    while sleeping().await == 0 {
        assert!(
            started.elapsed() < deadline,
            "the abandoned query never ran on the server before its deadline"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = async {
        while sleeping().await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(deadline + Duration::from_secs(10), gone)
        .await
        .expect("the abandoned query is still running on the server");
    let rows = fetcher
        .fetch(request("fast", vec![s("k")], &["v", "pid"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells[0], Ok(Value::Int64(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_fast_and_retryably_and_health_reports_it() {
    let mut server = PostgresServer::start();
    let url = server.url();
    connect(&url)
        .await
        .batch_execute("CREATE TABLE t (id text, v int8); INSERT INTO t VALUES ('a', 1);")
        .await
        .unwrap();
    let spec = source(
        &url,
        "",
        vec![view(
            "t",
            &[("id", T::String)],
            &[("v", T::Int64)],
            r#"query = "SELECT v FROM t WHERE id = $1""#,
        )],
    );
    let fetcher = build(&spec).await;
    fetcher.health().await.unwrap();
    assert!(
        fetcher
            .fetch(request("t", vec![s("a")], &["v"], SECOND))
            .await
            .is_ok()
    );

    server.stop();
    let deadline = Duration::from_millis(500);
    for keys in [vec![s("a")], vec![s("a"), s("b")]] {
        let started = std::time::Instant::now();
        let err = fetcher
            .fetch(request("t", keys, &["v"], deadline))
            .await
            .unwrap_err();
        assert!(
            matches!(err.class(), ErrorClass::Unavailable | ErrorClass::Timeout),
            "{err}"
        );
        assert!(err.retryable(), "{err}");
        assert!(
            started.elapsed() < deadline + SLACK,
            "took {:?}",
            started.elapsed()
        );
    }
    let err = fetcher.health().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    assert!(!err.message().contains("postgres://"), "{err}");

    // Building against a server that is not there fails, naming the target but no password.
    let spec = source(
        &format!(
            "postgres://test:${{PG_TEST_PASSWORD}}@127.0.0.1:{}/test",
            server.port()
        ),
        "connect_timeout = \"500ms\"",
        vec![view(
            "t",
            &[("id", T::String)],
            &[("v", T::Int64)],
            r#"query = "SELECT v FROM t WHERE id = $1""#,
        )],
    );
    let factory = PostgresFactory::with_env(|_| Some("s3cr3t-pw".into()));
    let err = factory.build(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "cannot connect to 127.0.0.1:{}/test as test",
            server.port()
        )),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_classified_by_sqlstate() {
    let url = database(
        r#"CREATE FUNCTION lookup(key text) RETURNS TABLE (v int8) LANGUAGE plpgsql AS $$
           BEGIN
             IF key LIKE 'sqlstate:%' THEN
               RAISE EXCEPTION 'injected failure' USING ERRCODE = substr(key, 10);
             END IF;
             RETURN QUERY SELECT length(key)::int8;
           END $$;"#,
    )
    .await;
    let spec = source(
        &url,
        "",
        vec![view(
            "f",
            &[("id", T::String)],
            &[("v", T::Int64)],
            r#"query = "SELECT v FROM lookup($1)""#,
        )],
    );
    let fetcher = build(&spec).await;
    let rows = fetcher
        .fetch(request("f", vec![s("abc")], &["v"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells, [Ok(Value::Int64(3))]);
    for (code, class, retryable) in [
        ("40001", ErrorClass::Unavailable, true), // serialization failure
        ("40P01", ErrorClass::Unavailable, true), // deadlock
        ("53300", ErrorClass::Unavailable, true), // too many connections
        ("57014", ErrorClass::Timeout, true),     // statement timeout / cancelled
        ("42601", ErrorClass::Rejected, false),   // syntax error
        ("22P02", ErrorClass::Rejected, false),   // invalid input
        ("P0001", ErrorClass::Rejected, false),   // raise_exception
        ("XX000", ErrorClass::Internal, false),   // internal error
    ] {
        for keys in [
            vec![s(&format!("sqlstate:{code}"))],
            vec![s("x"), s(&format!("sqlstate:{code}"))],
        ] {
            let err = fetcher
                .fetch(request("f", keys, &["v"], SECOND))
                .await
                .unwrap_err();
            assert_eq!(
                (err.class(), err.retryable()),
                (class, retryable),
                "{code}: {err}"
            );
            assert!(
                err.message().contains(code) && err.message().contains("view `f`"),
                "{err}"
            );
        }
    }
    // The pool still serves after every failure.
    let rows = fetcher
        .fetch(request("f", vec![s("abcd")], &["v"], SECOND))
        .await
        .unwrap();
    assert_eq!(found(&rows[0]).cells, [Ok(Value::Int64(4))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_is_a_server_side_backstop_without_a_deadline() {
    let url = database("SELECT 1").await;
    let spec = source(
        &url,
        "statement_timeout = \"100ms\"",
        vec![view(
            "slow",
            &[("id", T::String)],
            &[("v", T::Int64)],
            r#"query = "SELECT 1::int8 AS v FROM pg_sleep(30) WHERE $1::text IS NOT NULL""#,
        )],
    );
    let fetcher = build(&spec).await;
    let mut req = request("slow", vec![s("k")], &["v"], SECOND);
    req.deadline = None;
    let started = std::time::Instant::now();
    let err = fetcher.fetch(req).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout, "{err}");
    assert!(err.message().contains("57014"), "{err}");
    // At the statement timeout, far before the statement's 30 s.
    assert!(
        started.elapsed() < Duration::from_millis(100) + SLACK,
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_look_like_sql_are_only_keys() {
    let url = database(
        r#"CREATE TABLE k (id text PRIMARY KEY, v int8);
           INSERT INTO k VALUES ('a', 1), ($q$x'); DROP TABLE k; --$q$, 2), ('$1', 3);"#,
    )
    .await;
    let spec = source(
        &url,
        "",
        vec![view(
            "k",
            &[("id", T::String)],
            &[("v", T::Int64)],
            r#"query = "SELECT v FROM k WHERE id = $1""#,
        )],
    );
    let fetcher = build(&spec).await;
    let hostile = ["x'); DROP TABLE k; --", "$1", "' OR '1'='1", "a"];
    for keys in [
        hostile.iter().map(|k| s(k)).collect::<Vec<_>>(),
        vec![s(hostile[0])],
    ] {
        let rows = fetcher
            .fetch(request("k", keys.clone(), &["v"], SECOND))
            .await
            .unwrap();
        let values: Vec<Option<Value>> = rows
            .iter()
            .map(|r| match r {
                Row::Found(rec) => Some(rec.cells[0].clone().unwrap()),
                Row::NotFound => None,
            })
            .collect();
        let expected = [
            Some(Value::Int64(2)),
            Some(Value::Int64(3)),
            None,
            Some(Value::Int64(1)),
        ];
        assert_eq!(values, expected[..keys.len()]);
    }
    let count = connect(&url)
        .await
        .query_one("SELECT count(*) FROM k", &[])
        .await
        .unwrap();
    assert_eq!(count.get::<_, i64>(0), 3, "the table is intact");
}
