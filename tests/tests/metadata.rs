//! End-to-end: what a caller learns besides the values, through the real binaries. Every
//! feature that is not PRESENT carries a short reason in `FeatureMetadata.detail` (the demo's
//! missing rows, stale profile, nulls and missing context; a failing and a slow HTTP source and
//! the keys they hold), and server reflection lists exactly the services each server serves:
//! the gateway `FeatureService`, the fetcher sidecar `Fetcher`, each with health and reflection.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use end_to_end::{GatewayProcess, d, map, s, sidecar::SidecarProcess, statuses, with_timeout};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{FailNext, Latency, RouteFaults},
    internal::DEVICE_REPUTATION,
};
use proto::v1::{self, FeatureStatus as St};
use tonic::transport::Channel;

fn fraud_request(user: &str, merchant: &str) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: "fraud_v1".into(),
        entities: map(&[
            ("user_id", s(user)),
            ("card_id", s("c_00001")),
            ("merchant_id", s(merchant)),
        ]),
        context: map(&[
            ("amount", d(129.99)),
            ("currency", s("USD")),
            ("channel", s("ecom")),
        ]),
        include_metadata: true,
        ..Default::default()
    }
}

/// `(feature, status, detail)` of each feature of a response, after checking that the reason is
/// there for every status but PRESENT and only there.
fn reasons(
    names: &[String],
    st: &[i32],
    metadata: &[v1::FeatureMetadata],
) -> Vec<(String, St, String)> {
    assert_eq!(metadata.len(), names.len());
    names
        .iter()
        .zip(statuses(st))
        .zip(metadata)
        .map(|((name, status), meta)| {
            assert_eq!(
                meta.detail.is_empty(),
                status == St::Present,
                "{name}: {status:?} with detail {:?}",
                meta.detail
            );
            (name.clone(), status, meta.detail.clone())
        })
        .collect()
}

fn reason_of<'a>(reasons: &'a [(String, St, String)], feature: &str) -> (St, &'a str) {
    let (_, status, detail) = reasons.iter().find(|(n, ..)| n == feature).unwrap();
    (*status, detail)
}

#[tokio::test]
async fn every_status_but_present_says_why_in_the_demo() {
    let gw = GatewayProcess::demo();
    let mut client = gw.client().await;

    // Unknown customer and merchant; the payment's channel left out of the context.
    let mut request = fraud_request("u_99999", "m_9999");
    request.context.remove("channel");
    let response = client.get_features(request).await.unwrap().into_inner();
    let r = reasons(
        &response.feature_names,
        &response.statuses,
        &response.metadata,
    );
    assert_eq!(
        reason_of(&r, "user_profile:country"),
        (St::NotFound, "no row for user_id")
    );
    // A default served in place of a missing row keeps the row's reason.
    let risk = response
        .feature_names
        .iter()
        .position(|n| n == "merchant_profile:risk_score")
        .unwrap();
    assert!(response.metadata[risk].default_applied);
    assert_eq!(response.values[risk], d(0.5));
    assert_eq!(
        reason_of(&r, "merchant_profile:risk_score"),
        (St::NotFound, "no row for merchant_id")
    );
    // The dependent view, keyed by the missing merchant's mcc.
    assert_eq!(
        reason_of(&r, "mcc_risk:risk_tier"),
        (St::NotFound, "key unavailable: no row")
    );
    assert_eq!(
        reason_of(&r, "txn:channel"),
        (St::NotFound, "context value missing")
    );
    assert_eq!(reason_of(&r, "card_profile:card_type"), (St::Present, ""));

    // u_00013's profile is 40 to 41 days old; the view's max_age is 30 days.
    let response = client
        .get_features(fraud_request("u_00013", "m_0001"))
        .await
        .unwrap()
        .into_inner();
    let r = reasons(
        &response.feature_names,
        &response.statuses,
        &response.metadata,
    );
    let (status, detail) = reason_of(&r, "user_profile:country");
    assert_eq!(status, St::OutsideMaxAge);
    assert!(
        detail.starts_with("event time 40d") && detail.ends_with(" ago, max_age 30d"),
        "{detail}"
    );

    // A customer with no spending history has a null average; an explicit null in the context
    // is a null value too.
    let users = std::fs::read_to_string(gw.workdir().join("demo/users.csv")).unwrap();
    let new_user = users
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|c| c[5].is_empty() && c[0][2..].parse::<u32>().unwrap() % 50 != 13)
        .map(|c| c[0].to_owned())
        .unwrap();
    let mut request = fraud_request(&new_user, "m_0001");
    request.context.insert(
        "currency".into(),
        v1::Value {
            kind: Some(v1::value::Kind::NullValue(v1::NullValue::Null as i32)),
        },
    );
    let response = client.get_features(request).await.unwrap().into_inner();
    let r = reasons(
        &response.feature_names,
        &response.statuses,
        &response.metadata,
    );
    assert_eq!(
        reason_of(&r, "user_profile:avg_txn_amount_30d"),
        (St::NullValue, "null in the row")
    );
    assert_eq!(
        reason_of(&r, "txn:currency"),
        (St::NullValue, "null in the context")
    );

    // A batch gives each row its own reasons.
    let rows = ["u_00001", "u_99999"]
        .iter()
        .map(|u| {
            let request = fraud_request(u, "m_0001");
            v1::EntityRow {
                entities: request.entities,
                context: request.context,
            }
        })
        .collect();
    let response = client
        .get_features_batch(v1::GetFeaturesBatchRequest {
            feature_service: "fraud_v1".into(),
            rows,
            include_metadata: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let row = |i: usize| {
        let v = &response.rows[i];
        reasons(&response.feature_names, &v.statuses, &v.metadata)
    };
    assert_eq!(
        reason_of(&row(0), "user_profile:country"),
        (St::Present, "")
    );
    assert_eq!(
        reason_of(&row(1), "user_profile:country"),
        (St::NotFound, "no row for user_id")
    );

    // Without include_metadata there is no metadata at all.
    let mut request = fraud_request("u_99999", "m_9999");
    request.include_metadata = false;
    let response = client.get_features(request).await.unwrap().into_inner();
    assert!(response.metadata.is_empty());
    assert!(response.request_metadata.is_none());
}

/// An HTTP source (the fake device-reputation API) and a table keyed by one of its features
/// (a dependent key): the table's features say what happened to their key.
fn http_config(fake: &FakeServer) -> String {
    format!(
        r#"
[entities.device_id]
type = "string"
[entities.accounts]
type = "int64"
from = "device:accounts_30d"

[sources.tables]
kind = "static"
[sources.devices]
kind = "http"
base_url = "{base}"
timeout = "5s"

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
fields = {{ accounts_30d = "/accounts_seen_30d" }}
[views.device.features]
risk_score = {{ type = "double" }}
accounts_30d = {{ type = "int64" }}

[views.bands]
source = "tables"
entities = ["accounts"]
path = "bands.csv"
features = {{ band = {{ type = "string" }} }}

[feature_services.device_risk]
deadline = "400ms"
features = ["device:risk_score", "device:accounts_30d", "bands:band"]
"#,
        base = fake.base_url()
    )
}

#[tokio::test]
async fn a_failing_or_slow_source_and_the_keys_it_holds_say_why() {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // No band for any number of accounts.
    std::fs::write(dir.path().join("bands.csv"), "accounts,band\n").unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, http_config(&fake)).unwrap();
    let gw = GatewayProcess::serve(&path);
    let mut client = gw.client().await;
    let call = |device: &str| {
        with_timeout(
            v1::GetFeaturesRequest {
                feature_service: "device_risk".into(),
                entities: map(&[("device_id", s(device))]),
                include_metadata: true,
                ..Default::default()
            },
            Duration::from_secs(5),
        )
    };
    let details = |response: &v1::GetFeaturesResponse| {
        reasons(
            &response.feature_names,
            &response.statuses,
            &response.metadata,
        )
        .into_iter()
        .map(|(_, status, detail)| (status, detail))
        .collect::<Vec<_>>()
    };
    let pair = |status: St, detail: &str| (status, detail.to_owned());

    let response = client.get_features(call("d_000042")).await.unwrap();
    assert_eq!(
        details(response.get_ref()),
        [
            pair(St::Present, ""),
            pair(St::Present, ""),
            pair(St::NotFound, "no row for accounts"),
        ]
    );
    let response = client.get_features(call("d_999999")).await.unwrap();
    assert_eq!(
        details(response.get_ref()),
        [
            pair(St::NotFound, "no row for device_id"),
            pair(St::NotFound, "no row for device_id"),
            pair(St::NotFound, "key unavailable: no row"),
        ]
    );

    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            fail_next: Some(FailNext {
                count: 1,
                status: 500,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let response = client.get_features(call("d_000042")).await.unwrap();
    assert_eq!(
        details(response.get_ref()),
        [
            pair(St::SourceError, "unavailable"),
            pair(St::SourceError, "unavailable"),
            pair(St::SourceError, "key unavailable: its source failed"),
        ]
    );

    fake.set_faults(
        DEVICE_REPUTATION,
        RouteFaults {
            latency: Latency::Fixed { ms: 3_000.0 },
            ..Default::default()
        },
    )
    .unwrap();
    let response = client.get_features(call("d_000042")).await.unwrap();
    assert_eq!(
        details(response.get_ref()),
        [
            pair(St::TimedOut, "timeout"),
            pair(St::TimedOut, "timeout"),
            pair(St::TimedOut, "key unavailable: its source timed out"),
        ]
    );
}

/// The services `channel`'s server reflection (v1) lists, sorted.
async fn listed_v1(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The services `channel`'s server reflection (v1alpha, which grpcurl and ghz also speak) lists,
/// sorted.
async fn listed_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// The file descriptor (v1 reflection) of a symbol or a file name, or the gRPC code of the
/// refusal.
async fn file_of(channel: Channel, request: FileRequest<'_>) -> Result<Vec<Vec<u8>>, tonic::Code> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let message = match request {
        FileRequest::Symbol(s) => MessageRequest::FileContainingSymbol(s.to_owned()),
        FileRequest::Name(n) => MessageRequest::FileByFilename(n.to_owned()),
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await {
        Ok(Some(response)) => match response.message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => Ok(files.file_descriptor_proto),
            Some(MessageResponse::ErrorResponse(e)) => Err(tonic::Code::from(e.error_code)),
            other => panic!("unexpected reflection answer {other:?}"),
        },
        Ok(None) => panic!("no reflection answer"),
        Err(status) => Err(status.code()),
    }
}

#[derive(Clone, Copy)]
enum FileRequest<'a> {
    Symbol(&'a str),
    Name(&'a str),
}

const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test]
async fn the_gateway_lists_only_the_services_it_serves() {
    let gw = GatewayProcess::demo();
    let channel = gw.channel().await;
    let mut expected = vec![
        "featuregateway.v1.FeatureService",
        "grpc.health.v1.Health",
        REFLECTION[0],
        REFLECTION[1],
    ];
    expected.sort();
    assert_eq!(listed_v1(channel.clone()).await, expected);
    assert_eq!(listed_v1alpha(channel.clone()).await, expected);
    // Every listed service is described, with the files it imports; the sidecar contract is not.
    for name in &expected {
        assert!(
            file_of(channel.clone(), FileRequest::Symbol(name))
                .await
                .is_ok(),
            "{name}"
        );
    }
    assert!(
        file_of(
            channel.clone(),
            FileRequest::Name("google/protobuf/timestamp.proto")
        )
        .await
        .is_ok()
    );
    assert_eq!(
        file_of(
            channel.clone(),
            FileRequest::Symbol("featuregateway.v1.Fetcher")
        )
        .await,
        Err(tonic::Code::NotFound)
    );
    assert_eq!(
        file_of(
            channel,
            FileRequest::Name("featuregateway/v1/fetcher.proto")
        )
        .await,
        Err(tonic::Code::NotFound)
    );
}

#[tokio::test]
async fn the_fetcher_sidecar_lists_only_the_services_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("merchants.csv"),
        "merchant_id,risk\nm1,0.25\n",
    )
    .unwrap();
    let path = dir.path().join("sidecar.toml");
    std::fs::write(
        &path,
        r#"
[entities.merchant_id]
type = "string"
[sources.tables]
kind = "static"
[views.merchants]
source = "tables"
entities = ["merchant_id"]
path = "merchants.csv"
features = { risk = { type = "double" } }
"#,
    )
    .unwrap();
    let sidecar = SidecarProcess::start(&path);
    let channel = Channel::from_shared(sidecar.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut expected = vec![
        "featuregateway.v1.Fetcher",
        "grpc.health.v1.Health",
        REFLECTION[0],
        REFLECTION[1],
    ];
    expected.sort();
    assert_eq!(listed_v1(channel.clone()).await, expected);
    assert_eq!(listed_v1alpha(channel.clone()).await, expected);
    for name in &expected {
        assert!(
            file_of(channel.clone(), FileRequest::Symbol(name))
                .await
                .is_ok(),
            "{name}"
        );
    }
    // fetcher.proto imports feature_service.proto: a client can load it, though it is not served.
    assert!(
        file_of(
            channel,
            FileRequest::Name("featuregateway/v1/feature_service.proto")
        )
        .await
        .is_ok()
    );
}
