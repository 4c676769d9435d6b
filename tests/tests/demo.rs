//! End-to-end: the real binary serving the embedded demo, called over gRPC.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::{GatewayProcess, d, i, map, s, statuses, with_timeout};
use proto::v1::{self, FeatureStatus as St};

fn fraud_request(user: &str, card: &str, merchant: &str) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: "fraud_v1".into(),
        entities: map(&[
            ("user_id", s(user)),
            ("card_id", s(card)),
            ("merchant_id", s(merchant)),
        ]),
        context: map(&[
            ("amount", d(129.99)),
            ("currency", s("USD")),
            ("channel", s("ecom")),
        ]),
        ..Default::default()
    }
}

/// The row of `key` in a demo CSV, as column -> text.
fn csv_row(
    gw: &GatewayProcess,
    file: &str,
    key: &str,
) -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(gw.workdir().join("demo").join(file)).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let line = lines.find(|l| l.split(',').next() == Some(key)).unwrap();
    header
        .iter()
        .zip(line.split(','))
        .map(|(h, v)| ((*h).to_owned(), v.to_owned()))
        .collect()
}

fn text_of(value: &v1::Value) -> String {
    use v1::value::Kind;
    match value.kind.as_ref().unwrap() {
        Kind::Int64Value(v) => v.to_string(),
        Kind::DoubleValue(v) => v.to_string(),
        Kind::StringValue(v) => v.clone(),
        Kind::BoolValue(v) => v.to_string(),
        Kind::NullValue(_) => String::new(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn demo_serves_the_fraud_vector_in_declared_order() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    let response = client
        .get_features(with_timeout(
            fraud_request("u_00042", "c_00042", "m_0042"),
            Duration::from_secs(1),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.feature_names.len(), 20);
    assert_eq!(response.values.len(), 20);
    assert_eq!(response.feature_names[0], "txn:amount");
    assert_eq!(response.feature_names[19], "mcc_risk:risk_tier");
    assert!(!response.request_id.is_empty());
    let st = statuses(&response.statuses);
    assert!(st.iter().all(|s| *s == St::Present), "{st:?}");

    // Every fetched value is the one in the demo's tables.
    let user = csv_row(&gw, "users.csv", "u_00042");
    let card = csv_row(&gw, "cards.csv", "c_00042");
    let merchant = csv_row(&gw, "merchants.csv", "m_0042");
    let mcc = csv_row(&gw, "mcc_risk.csv", &merchant["mcc"]);
    for (name, value) in response.feature_names.iter().zip(&response.values) {
        let (view, feature) = name.split_once(':').unwrap();
        let expected = match view {
            "txn" => continue,
            "user_profile" => &user[feature],
            "card_profile" => &card[feature],
            "merchant_profile" => &merchant[feature],
            "mcc_risk" => &mcc[feature],
            other => panic!("unexpected view {other}"),
        };
        let got = text_of(value);
        match expected.parse::<f64>() {
            Ok(x) => assert_eq!(got.parse::<f64>().unwrap(), x, "{name}"),
            Err(_) => assert_eq!(&got, expected, "{name}"),
        }
    }
    assert_eq!(text_of(&response.values[0]), "129.99");
}

#[tokio::test]
async fn missing_rows_read_not_found_with_defaults_where_configured() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    let mut request = fraud_request("u_99999", "c_00001", "m_9999");
    request.include_metadata = true;
    let response = client.get_features(request).await.unwrap().into_inner();
    let st = statuses(&response.statuses);
    let by_name = |n: &str| response.feature_names.iter().position(|f| f == n).unwrap();
    assert_eq!(st[by_name("user_profile:country")], St::NotFound);
    assert_eq!(st[by_name("card_profile:card_type")], St::Present);
    // Unknown merchant: its risk score gets the configured default, still marked NOT_FOUND.
    let risk = by_name("merchant_profile:risk_score");
    assert_eq!(st[risk], St::NotFound);
    assert_eq!(response.values[risk], d(0.5));
    assert!(response.metadata[risk].default_applied);
    // The dependent view (keyed by the merchant's mcc) has no key, so NOT_FOUND with its default.
    let tier = by_name("mcc_risk:risk_tier");
    assert_eq!(st[tier], St::NotFound);
    assert_eq!(response.values[tier], s("unknown"));
    assert_eq!(response.metadata[tier].detail, "key unavailable: no row");
    let meta = response.request_metadata.unwrap();
    // The feature service's 30 ms, less the 2 ms kept for assembling and sending the answer.
    assert_eq!(meta.deadline_ms, 28);
    assert_eq!(meta.stage_us.len(), 2);
    assert_eq!(
        response.metadata[by_name("card_profile:card_type")].source,
        "tables"
    );
}

#[tokio::test]
async fn stale_rows_are_outside_max_age_and_nulls_are_null_values() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    // u_00013 is one of the demo's customers with a profile older than the view's max age.
    let response = client
        .get_features(fraud_request("u_00013", "c_00001", "m_0001"))
        .await
        .unwrap()
        .into_inner();
    let st = statuses(&response.statuses);
    assert_eq!(st[3..10], [St::OutsideMaxAge; 7]);
    // A customer with no spending history has a null average.
    let users = std::fs::read_to_string(gw.workdir().join("demo/users.csv")).unwrap();
    let new_user = users
        .lines()
        .skip(1)
        .find(|l| l.split(',').nth(5) == Some("") && !l.starts_with("u_00013"))
        .map(|l| l.split(',').next().unwrap().to_owned())
        .unwrap();
    let idx = usize::from(new_user[2..].parse::<u32>().unwrap() % 50 == 13);
    let response = client
        .get_features(fraud_request(&new_user, "c_00001", "m_0001"))
        .await
        .unwrap()
        .into_inner();
    if idx == 0 {
        assert_eq!(statuses(&response.statuses)[7], St::NullValue);
    }
}

#[tokio::test]
async fn batch_returns_one_vector_per_row_in_order() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    let users = ["u_00001", "u_99999", "u_00002", "u_00001"];
    let rows = users
        .iter()
        .map(|u| v1::EntityRow {
            entities: map(&[
                ("user_id", s(u)),
                ("card_id", s("c_00001")),
                ("merchant_id", s("m_0001")),
            ]),
            context: map(&[("amount", i(10))]),
        })
        .collect();
    let response = client
        .get_features_batch(v1::GetFeaturesBatchRequest {
            feature_service: "fraud_v1".into(),
            rows,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.rows.len(), 4);
    let country = 4;
    assert_eq!(response.feature_names[country], "user_profile:country");
    let st = |r: usize| statuses(&response.rows[r].statuses)[country];
    assert_eq!(
        [st(0), st(1), st(2), st(3)],
        [St::Present, St::NotFound, St::Present, St::Present]
    );
    assert_eq!(response.rows[0].values, response.rows[3].values);
    // An int64 amount is accepted for a double context value.
    assert_eq!(response.rows[0].values[0], d(10.0));
}

#[tokio::test]
async fn explicit_feature_refs_and_discovery() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    let response = client
        .get_features(v1::GetFeaturesRequest {
            features: vec!["mcc_risk:fraud_rate".into(), "merchant_profile:mcc".into()],
            entities: map(&[("merchant_id", s("m_0003"))]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        *response.feature_names,
        ["mcc_risk:fraud_rate", "merchant_profile:mcc"]
    );
    assert_eq!(statuses(&response.statuses)[1], St::Present);

    let list = client
        .list_feature_services(v1::ListFeatureServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list
        .feature_services
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["fraud_v1", "fraud_v2", "fraud_v3", "merchant_v1"]);
    assert_eq!(list.feature_services[0].feature_count, 20);

    let described = client
        .describe_feature_service(v1::DescribeFeatureServiceRequest {
            name: "fraud_v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.deadline_ms, 30);
    assert_eq!(described.features.len(), 20);
    assert_eq!(described.definition_hash.len(), 16);
    let entities: Vec<_> = described.entities.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(entities, ["user_id", "card_id", "merchant_id"]);
    let context: Vec<_> = described.context.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(context, ["amount", "currency", "channel"]);
    let risk = described
        .features
        .iter()
        .find(|f| f.name == "merchant_profile:risk_score")
        .unwrap();
    assert_eq!(risk.default_value, Some(d(0.5)));
    assert_eq!(risk.r#type, v1::ValueType::Double as i32);
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_field_named() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    let refused = |r: Result<tonic::Response<v1::GetFeaturesResponse>, tonic::Status>| {
        let status = r.expect_err("the request should be refused");
        (status.code(), status.message().to_owned())
    };

    let mut r = fraud_request("u_1", "c_1", "m_1");
    r.feature_service = "fraud_v9".into();
    let (code, message) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::NotFound);
    assert!(
        message.contains("feature_service") && message.contains("fraud_v9"),
        "{message}"
    );

    let mut r = fraud_request("u_1", "c_1", "m_1");
    r.entities.remove("card_id");
    let (code, message) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(
        message.starts_with("entities.card_id: missing"),
        "{message}"
    );

    let mut r = fraud_request("u_1", "c_1", "m_1");
    r.entities.insert("user_id".into(), i(42));
    let (code, message) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert_eq!(message, "entities.user_id: expected string, got int64");

    let mut r = fraud_request("u_1", "c_1", "m_1");
    r.context.insert("amount".into(), s("lots"));
    let (code, message) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert_eq!(message, "context.amount: expected double, got string");

    let r = fraud_request(&"u".repeat(300), "c_1", "m_1");
    let (code, message) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(
        message.contains("entities.user_id: 300 bytes long"),
        "{message}"
    );

    let r = v1::GetFeaturesRequest {
        features: vec!["user_profile:age".into()],
        ..Default::default()
    };
    let (code, message) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(
        message.starts_with("features[0]: view `user_profile` has no feature `age`"),
        "{message}"
    );

    let (code, message) = refused(client.get_features(v1::GetFeaturesRequest::default()).await);
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.starts_with("feature_service:"), "{message}");

    let mut r = fraud_request("u_1", "c_1", "m_1");
    r.features = vec!["merchant_profile:mcc".into()];
    let (code, _) = refused(client.get_features(r).await);
    assert_eq!(code, tonic::Code::InvalidArgument);

    // A batch over the limit (1000 rows by default).
    let rows = vec![v1::EntityRow::default(); 1001];
    let status = client
        .get_features_batch(v1::GetFeaturesBatchRequest {
            feature_service: "fraud_v1".into(),
            rows,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("rows: 1001 rows"),
        "{}",
        status.message()
    );

    // A bad row in a batch is named by its index.
    let mut rows = vec![
        v1::EntityRow {
            entities: map(&[
                ("user_id", s("u")),
                ("card_id", s("c")),
                ("merchant_id", s("m"))
            ]),
            context: Default::default(),
        };
        3
    ];
    rows[2].entities.remove("merchant_id");
    let status = client
        .get_features_batch(v1::GetFeaturesBatchRequest {
            feature_service: "fraud_v1".into(),
            rows,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .starts_with("rows[2].entities.merchant_id: missing"),
        "{}",
        status.message()
    );

    // The gateway is still serving after all of that.
    assert!(
        client
            .get_features(fraud_request("u_00001", "c_00001", "m_0001"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn health_reflection_and_metrics_answer() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let gw = GatewayProcess::demo();
    let channel = gw.channel().await;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "featuregateway.v1.FeatureService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service `{service}`");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["featuregateway.v1.FeatureService", "grpc.health.v1.Health"] {
        assert!(services.contains(&expected), "{services:?}");
    }

    let mut client = gw.client().await;
    client
        .get_features(fraud_request("u_00001", "c_00001", "m_0001"))
        .await
        .unwrap();
    let metrics = gw.admin_get("/metrics").await;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("feature_gateway_requests_total{method=\"GetFeatures\",")
                && l.contains("feature_service=\"fraud_v1\"")
                && l.contains("code=\"OK\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{metrics}"));
    assert!(line.ends_with(" 1"), "{line}");
    assert!(metrics.contains("feature_gateway_features_served_total{feature_service=\"fraud_v1\",status=\"present\"} 20"), "{metrics}");
    assert!(metrics.contains(
        "feature_gateway_source_fetch_duration_seconds_bucket{source=\"tables\",outcome=\"ok\""
    ));
}

/// The card's streaming aggregates in `fraud_v3`: `(txn_count_10m, txn_count_1h, amount_sum_1h)`.
async fn card_activity(
    client: &mut v1::feature_service_client::FeatureServiceClient<tonic::transport::Channel>,
    card: &str,
) -> (i64, i64, f64) {
    let response = client
        .get_features(v1::GetFeaturesRequest {
            feature_service: "fraud_v3".into(),
            features: vec![],
            ..fraud_request("u_00001", card, "m_0001")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.values.len(), 25);
    assert!(
        statuses(&response.statuses)[20..]
            .iter()
            .all(|s| *s == St::Present)
    );
    let int = |v: &v1::Value| match v.kind {
        Some(v1::value::Kind::Int64Value(n)) => n,
        ref other => panic!("{other:?}"),
    };
    let double = |v: &v1::Value| match v.kind {
        Some(v1::value::Kind::DoubleValue(x)) => x,
        ref other => panic!("{other:?}"),
    };
    (
        int(&response.values[20]),
        int(&response.values[21]),
        double(&response.values[22]),
    )
}

#[tokio::test]
async fn pushed_payments_show_in_the_cards_streaming_aggregates_at_once() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;
    // c_00003 is one of the busy cards the demo's seed (the last day's payments) favours.
    let (n_10m, n_1h, sum_1h) = card_activity(&mut client, "c_00003").await;
    assert!(n_1h > 0, "seeded payments in the last hour: {n_1h}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let event = |card: &str, amount: f64| v1::Event {
        fields: map(&[
            ("card_id", s(card)),
            ("merchant_id", s("m_0042")),
            ("amount", d(amount)),
            (
                "ts",
                v1::Value {
                    kind: Some(v1::value::Kind::TimestampValue(prost_types::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: 0,
                    })),
                },
            ),
        ]),
    };
    let pushed = client
        .push_events(v1::PushEventsRequest {
            view: "card_activity".into(),
            events: vec![
                event("c_00003", 25.5),
                event("c_00003", 4.5),
                v1::Event {
                    fields: map(&[("amount", d(1.0))]),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((pushed.applied, pushed.late), (2, 0));
    assert_eq!(pushed.rejected.len(), 1);
    assert_eq!(pushed.rejected[0].index, 2);
    assert_eq!(pushed.rejected[0].reason, "no entity key `card_id`");
    let (n_10m_after, n_1h_after, sum_1h_after) = card_activity(&mut client, "c_00003").await;
    assert_eq!((n_10m_after, n_1h_after), (n_10m + 2, n_1h + 2));
    assert!(
        (sum_1h_after - sum_1h - 30.0).abs() < 1e-6,
        "{sum_1h} -> {sum_1h_after}"
    );

    // Bad pushes name the field.
    let refused = client
        .push_events(v1::PushEventsRequest {
            view: "nope".into(),
            events: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    assert_eq!(refused.message(), "view: unknown view `nope`");
    let refused = client
        .push_events(v1::PushEventsRequest {
            view: "card_profile".into(),
            events: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .starts_with("view: `card_profile` is not an aggregation view")
    );
    let refused = client
        .push_events(v1::PushEventsRequest {
            view: "card_activity".into(),
            events: vec![event("c_1", 1.0); 10_001],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        refused.message(),
        "events: 10001 events, more than the 10000 a push may carry"
    );
}
