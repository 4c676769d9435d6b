//! The `http` fetcher against the fake internal APIs, started in-process on loopback: every
//! answer class, deadlines, batching, hostile keys, and what reaches the logs.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use fake_upstreams::{
    FailNext, FakeConfig, FakeServer, Latency, RouteFaults,
    internal::{self, DEVICE_REPUTATION, MERCHANT_RISK, MERCHANT_RISK_BATCH},
};
use fetcher_api::{
    ErrorClass, FeatureType, FetchRequest, Fetcher, FetcherFactory, KeyPart, KeySpec, Options,
    Record, Row, SourceSpec, Value, ViewSpec,
};
use fetcher_http::HttpFactory;
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, time::Instant};

const POPULATION: u64 = 1000;

async fn fake() -> FakeServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    FakeServer::start(FakeConfig {
        population: POPULATION,
        ..FakeConfig::default()
    })
    .await
    .expect("fake upstream starts")
}

fn view(name: &str, key: &str, features: &[(&str, FeatureType)], options: &str) -> ViewSpec {
    ViewSpec {
        name: name.into(),
        keys: vec![KeySpec {
            name: key.into(),
            ty: FeatureType::String,
        }],
        features: features.iter().map(|(f, t)| ((*f).into(), *t)).collect(),
        options: Options(options.parse().expect("valid TOML")),
    }
}

async fn build(source_options: &str, views: Vec<ViewSpec>) -> Arc<dyn Fetcher> {
    let spec = SourceSpec {
        name: "internal".into(),
        kind: "http".into(),
        options: Options(source_options.parse().expect("valid TOML")),
        views,
        base_dir: ".".into(),
    };
    let factory = HttpFactory::new();
    assert_eq!(factory.validate(&spec), Vec::<String>::new());
    factory.build(&spec).await.expect("builds")
}

const DEVICE_FEATURES: [(&str, FeatureType); 5] = [
    ("risk", FeatureType::Double),
    ("is_emulator", FeatureType::Bool),
    ("accounts_seen_30d", FeatureType::Int64),
    ("first_seen", FeatureType::Timestamp),
    ("tags", FeatureType::StringList),
];

async fn device_fetcher(server: &FakeServer) -> Arc<dyn Fetcher> {
    build(
        &format!("base_url = \"{}\"", server.base_url()),
        vec![view(
            "devices",
            "device_id",
            &DEVICE_FEATURES,
            r#"path = "/v1/devices/{device_id}/reputation"
               fields = { risk = "/risk_score" }"#,
        )],
    )
    .await
}

fn request(
    view: &str,
    features: &[&str],
    keys: &[&str],
    deadline: Option<Instant>,
) -> FetchRequest {
    FetchRequest {
        view: view.into(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
        keys: keys
            .iter()
            .map(|k| vec![KeyPart::String((*k).into())])
            .collect(),
        deadline,
    }
}

fn device_request(keys: &[&str]) -> FetchRequest {
    let features: Vec<&str> = DEVICE_FEATURES.iter().map(|(f, _)| *f).collect();
    request("devices", &features, keys, None)
}

fn found(row: &Row) -> &Record {
    match row {
        Row::Found(record) => record,
        Row::NotFound => panic!("expected a found row"),
    }
}

#[tokio::test]
async fn found_rows_carry_typed_values_and_unknown_keys_are_not_found() {
    let server = fake().await;
    let fetcher = device_fetcher(&server).await;
    let rows = fetcher
        .fetch(device_request(&["d_000001", "d_999999", "d_000002"]))
        .await
        .expect("fetch succeeds");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1], Row::NotFound);
    for (row, id) in [(&rows[0], "d_000001"), (&rows[2], "d_000002")] {
        let expected = internal::device_reputation(server.seed(), POPULATION, id).expect("exists");
        let cells = &found(row).cells;
        assert_eq!(
            cells[0],
            Ok(Value::Double(expected["risk_score"].as_f64().expect("f64")))
        );
        assert_eq!(
            cells[1],
            Ok(Value::Bool(
                expected["is_emulator"].as_bool().expect("bool")
            ))
        );
        assert_eq!(
            cells[2],
            Ok(Value::Int64(
                expected["accounts_seen_30d"].as_i64().expect("i64")
            ))
        );
        assert_eq!(
            cells[3].clone().ok(),
            FeatureType::Timestamp
                .parse_text(expected["first_seen"].as_str().expect("str"))
                .ok()
        );
        assert!(matches!(cells[3], Ok(Value::Timestamp(_))));
        assert!(matches!(cells[4], Ok(Value::StringList(_))));
    }
    // One request per key.
    let stats = server.stats();
    assert_eq!(stats.calls(DEVICE_REPUTATION), 3);
    assert_eq!(stats.route(DEVICE_REPUTATION).not_found, 1);
}

#[tokio::test]
async fn nested_pointers_query_templates_event_time_and_missing_fields() {
    let server = fake().await;
    let fetcher = build(
        &format!("base_url = \"{}/\"", server.base_url()),
        vec![view(
            "merchants",
            "merchant_id",
            &[
                ("fraud", FeatureType::Double),
                ("risk_tier", FeatureType::String),
                ("not_in_api", FeatureType::Int64),
            ],
            r#"path = "/v1/merchants/{merchant_id}/risk"
               query = { for = "{merchant_id} & co", detail = "full" }
               fields = { fraud = "/scores/fraud" }
               event_time_pointer = "/updated_at""#,
        )],
    )
    .await;
    let rows = fetcher
        .fetch(request(
            "merchants",
            &["risk_tier", "fraud", "not_in_api"],
            &["m_00042"],
            None,
        ))
        .await
        .expect("fetch succeeds");
    let expected = internal::merchant_risk(server.seed(), POPULATION, "m_00042").expect("exists");
    let record = found(&rows[0]);
    assert_eq!(
        record.cells,
        vec![
            Ok(Value::String(
                expected["risk_tier"].as_str().expect("str").into()
            )),
            Ok(Value::Double(
                expected["scores"]["fraud"].as_f64().expect("f64")
            )),
            Ok(Value::Null),
        ]
    );
    let Ok(Value::Timestamp(updated)) =
        FeatureType::Timestamp.parse_text(expected["updated_at"].as_str().expect("str"))
    else {
        panic!("fake timestamps parse");
    };
    assert_eq!(record.event_time, Some(updated));
    assert!(updated < SystemTime::now());
    assert_eq!(
        server.stats().route(MERCHANT_RISK).last_uri.as_deref(),
        Some("/v1/merchants/m_00042/risk?detail=full&for=m_00042+%26+co")
    );
}

#[tokio::test]
async fn batch_views_make_one_call_per_chunk() {
    let server = fake().await;
    let fetcher = build(
        &format!("base_url = \"{}\"", server.base_url()),
        vec![view(
            "merchants",
            "merchant_id",
            &[("fraud", FeatureType::Double), ("mcc", FeatureType::String)],
            r#"batch = { path = "/v1/merchants/risk:batch", max_keys = 100 }
               fields = { fraud = "/scores/fraud" }"#,
        )],
    )
    .await;
    // 250 keys, every fifth unknown: three chunks of at most 100.
    let ids: Vec<String> = (0..250u64)
        .map(|n| {
            if n % 5 == 4 {
                format!("m_9{n:04}")
            } else {
                internal::merchant_id(n)
            }
        })
        .collect();
    let keys: Vec<&str> = ids.iter().map(String::as_str).collect();
    let rows = fetcher
        .fetch(request("merchants", &["mcc", "fraud"], &keys, None))
        .await
        .expect("fetch succeeds");
    assert_eq!(rows.len(), 250);
    for (row, id) in rows.iter().zip(&ids) {
        match internal::merchant_risk(server.seed(), POPULATION, id) {
            None => assert_eq!(row, &Row::NotFound, "{id}"),
            Some(expected) => assert_eq!(
                found(row).cells,
                vec![
                    Ok(Value::String(expected["mcc"].as_str().expect("str").into())),
                    Ok(Value::Double(
                        expected["scores"]["fraud"].as_f64().expect("f64")
                    )),
                ],
                "{id}"
            ),
        }
    }
    let stats = server.stats().route(MERCHANT_RISK_BATCH);
    assert_eq!((stats.calls, stats.keys, stats.not_found), (3, 250, 50));
    assert_eq!(server.stats().calls(MERCHANT_RISK), 0);
}

#[tokio::test]
async fn post_views_send_the_body_template_with_keys_as_json() {
    let server = fake().await;
    let fetcher = build(
        &format!("base_url = \"{}\"", server.base_url()),
        vec![view(
            "merchant_lookup",
            "merchant_id",
            &[("fraud", FeatureType::Double)],
            r#"method = "POST"
               path = "/v1/merchants/risk:batch"
               body = { ids = ["{merchant_id}"] }
               fields = { fraud = "/results/0/scores/fraud" }"#,
        )],
    )
    .await;
    let rows = fetcher
        .fetch(request(
            "merchant_lookup",
            &["fraud"],
            &["m_00007", "m_99999"],
            None,
        ))
        .await
        .expect("fetch succeeds");
    let expected = internal::merchant_risk(server.seed(), POPULATION, "m_00007").expect("exists");
    assert_eq!(
        found(&rows[0]).cells,
        vec![Ok(Value::Double(
            expected["scores"]["fraud"].as_f64().expect("f64")
        ))]
    );
    // The API answers an unknown id with an empty list: the pointer has no target, so null.
    assert_eq!(found(&rows[1]).cells, vec![Ok(Value::Null)]);
    assert_eq!(server.stats().route(MERCHANT_RISK_BATCH).keys, 2);
}

#[tokio::test]
async fn upstream_errors_are_classified() {
    let server = fake().await;
    let fetcher = device_fetcher(&server).await;
    let cases = [
        (429, ErrorClass::RateLimited, false),
        (500, ErrorClass::Unavailable, true),
        (503, ErrorClass::Unavailable, true),
        (403, ErrorClass::Rejected, false),
    ];
    for (status, class, retryable) in cases {
        server
            .set_faults(
                DEVICE_REPUTATION,
                RouteFaults {
                    fail_next: Some(FailNext { count: 1, status }),
                    ..RouteFaults::default()
                },
            )
            .expect("valid faults");
        let err = fetcher
            .fetch(device_request(&["d_000001"]))
            .await
            .expect_err("injected failure");
        assert_eq!(
            (err.class(), err.retryable()),
            (class, retryable),
            "{status}: {err}"
        );
        assert!(err.message().contains("view `devices`"), "{err}");
        assert!(err.message().contains(&status.to_string()), "{err}");
    }
    let err = {
        server
            .set_faults(
                DEVICE_REPUTATION,
                RouteFaults {
                    fail_next: Some(FailNext {
                        count: 1,
                        status: 429,
                    }),
                    ..RouteFaults::default()
                },
            )
            .expect("valid faults");
        fetcher
            .fetch(device_request(&["d_000001"]))
            .await
            .expect_err("injected failure")
    };
    assert!(err.message().contains("retry after 1"), "{err}");
    // The script is spent: the next call succeeds again.
    let rows = fetcher
        .fetch(device_request(&["d_000001"]))
        .await
        .expect("fetch succeeds");
    assert!(matches!(rows[0], Row::Found(_)));
    assert_eq!(server.stats().calls(DEVICE_REPUTATION), 6);
}

#[tokio::test]
async fn a_refused_connection_is_unavailable_and_retryable() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Bind and drop to find a port nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("has an address").port()
    };
    let fetcher = build(
        &format!("base_url = \"http://127.0.0.1:{port}\""),
        vec![view(
            "devices",
            "device_id",
            &DEVICE_FEATURES,
            r#"path = "/v1/devices/{device_id}/reputation""#,
        )],
    )
    .await;
    let err = fetcher
        .fetch(device_request(&["d_000001"]))
        .await
        .expect_err("nothing listens");
    assert_eq!(
        (err.class(), err.retryable()),
        (ErrorClass::Unavailable, true),
        "{err}"
    );
    assert!(err.message().contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn slow_and_hung_upstreams_time_out_within_the_deadline() {
    let server = fake().await;
    let fetcher = device_fetcher(&server).await;
    let slow = RouteFaults {
        latency: Latency::Fixed { ms: 30_000.0 },
        ..RouteFaults::default()
    };
    let hung = RouteFaults {
        hang: true,
        ..RouteFaults::default()
    };
    for faults in [slow, hung] {
        server
            .set_faults(DEVICE_REPUTATION, faults)
            .expect("valid faults");
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let mut req = device_request(&["d_000001", "d_000002"]);
        req.deadline = Some(deadline);
        let err = fetcher.fetch(req).await.expect_err("too slow");
        assert_eq!(
            (err.class(), err.retryable()),
            (ErrorClass::Timeout, true),
            "{err}"
        );
        // Generous: only that it gave up near the deadline rather than waiting for the upstream.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
    let mut req = device_request(&["d_000001"]);
    req.deadline = Some(Instant::now() - Duration::from_millis(1));
    let err = fetcher
        .fetch(req)
        .await
        .expect_err("deadline already passed");
    assert_eq!(err.class(), ErrorClass::Timeout);
}

#[tokio::test]
async fn a_mistyped_field_fails_only_its_cell_and_is_logged_with_view_and_pointer() {
    let server = fake().await;
    let fetcher = build(
        &format!("base_url = \"{}\"", server.base_url()),
        vec![view(
            "devices",
            "device_id",
            &[
                ("risk", FeatureType::Double),
                ("device_number", FeatureType::Int64),
                ("first_seen", FeatureType::Bool),
            ],
            r#"path = "/v1/devices/{device_id}/reputation"
               fields = { risk = "/risk_score", device_number = "/device_id" }"#,
        )],
    )
    .await;
    let logs = Capture::default();
    let _guard = tracing::subscriber::set_default(logs.clone());
    let rows = fetcher
        .fetch(request(
            "devices",
            &["risk", "device_number", "first_seen"],
            &["d_000003"],
            None,
        ))
        .await
        .expect("fetch succeeds");
    let cells = &found(&rows[0]).cells;
    assert!(matches!(cells[0], Ok(Value::Double(_))));
    let err = cells[1].clone().expect_err("a string is not an int64");
    assert!(
        err.0.contains("`/device_id`") && err.0.contains("expected int64"),
        "{err}"
    );
    let err = cells[2]
        .clone()
        .expect_err("a timestamp string is not a bool");
    assert!(err.0.contains("`/first_seen`"), "{err}");
    let lines = logs.lines();
    let warned: Vec<&String> = lines.iter().filter(|l| l.starts_with("WARN")).collect();
    assert_eq!(warned.len(), 2, "{lines:?}");
    assert!(
        warned[0].contains("view=\"devices\"") && warned[0].contains("pointer=\"/device_id\""),
        "{warned:?}"
    );
}

#[tokio::test]
async fn hostile_keys_stay_data() {
    let server = fake().await;
    let fetcher = device_fetcher(&server).await;
    let hostile = [
        "d_000001/../../../v1/merchants/m_00001/risk",
        "../merchants/m_00001",
        "d_000001?x=1",
        "d_000001#frag",
        "d_000001 ",
        "%2e%2e",
        "d_00%30001",
        "..",
        ".",
    ];
    let rows = fetcher
        .fetch(device_request(&hostile))
        .await
        .expect("fetch succeeds");
    // Each is its own (unknown) device, never d_000001 nor another route's resource.
    assert!(rows.iter().all(|r| *r == Row::NotFound), "{rows:?}");
    let stats = server.stats();
    // `.` and `..` cannot be put in a path at all, so they are not sent.
    assert_eq!(stats.calls(DEVICE_REPUTATION), hostile.len() as u64 - 2);
    assert_eq!(
        stats.route(DEVICE_REPUTATION).not_found,
        hostile.len() as u64 - 2
    );
    assert_eq!(stats.calls(MERCHANT_RISK), 0);
}

#[tokio::test]
async fn headers_come_from_the_environment_and_a_non_json_body_is_invalid() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A minimal HTTP server that records the request head and answers with HTML.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("has an address");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accepts");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.expect("reads");
            assert!(n > 0, "request head is complete");
            head.extend_from_slice(&buf[..n]);
        }
        let body = "<html>oops</html>";
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await.expect("writes");
        String::from_utf8_lossy(&head).to_lowercase()
    });
    let spec = SourceSpec {
        name: "internal".into(),
        kind: "http".into(),
        options: Options(
            format!(
                "base_url = \"http://{addr}\"\nheaders = {{ Authorization = \"Bearer ${{API_TOKEN}}\" }}"
            )
            .parse()
            .expect("valid TOML"),
        ),
        views: vec![view(
            "devices",
            "device_id",
            &[("risk", FeatureType::Double)],
            r#"path = "/v1/devices/{device_id}""#,
        )],
        base_dir: ".".into(),
    };
    let factory = HttpFactory::with_env(|name| (name == "API_TOKEN").then(|| "tok-s3cr3t".into()));
    let fetcher = factory.build(&spec).await.expect("builds");
    let err = fetcher
        .fetch(request("devices", &["risk"], &["d_1"], None))
        .await
        .expect_err("HTML is not JSON");
    assert_eq!(
        (err.class(), err.retryable()),
        (ErrorClass::InvalidResponse, false),
        "{err}"
    );
    let head = server.await.expect("server task");
    assert!(head.contains("authorization: bearer tok-s3cr3t"), "{head}");
    assert!(!err.to_string().contains("s3cr3t"));
    assert!(!format!("{fetcher:?}").contains("s3cr3t"));
}

/// A tracing subscriber that keeps each event as `LEVEL field=value ...`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl Capture {
    fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        if let Ok(mut lines) = self.0.lock() {
            lines.push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn health_checks_the_configured_path() {
    let server = fake().await;
    let views = || {
        vec![view(
            "devices",
            "device_id",
            &DEVICE_FEATURES,
            r#"path = "/v1/devices/{device_id}/reputation""#,
        )]
    };
    let up = build(
        &format!(
            "base_url = \"{}\"\nhealth_path = \"/admin/stats\"",
            server.base_url()
        ),
        views(),
    )
    .await;
    assert_eq!(up.health().await, Ok(()));
    let wrong = build(
        &format!(
            "base_url = \"{}\"\nhealth_path = \"/healthz\"",
            server.base_url()
        ),
        views(),
    )
    .await;
    let err = wrong.health().await.expect_err("no such path");
    assert_eq!(err.class(), ErrorClass::Rejected, "{err}");
    server.shutdown().await.expect("clean shutdown");
    let err = up.health().await.expect_err("server gone");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
}
