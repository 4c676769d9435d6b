//! End-to-end: the real binary refuses a caller's malformed requests as the caller's mistakes,
//! naming what is wrong, and never as a fault of its own.
//!
//! - `request_id`: bounded by `[limits] max_request_id_bytes` (default 128) and printable ASCII
//!   without spaces; anything else is INVALID_ARGUMENT naming `request_id`, in GetFeatures and
//!   in GetFeaturesBatch.
//! - NaN and ±infinity in `context` doubles (and `list<double>` elements): INVALID_ARGUMENT naming
//!   the field (`context.amount`, `rows[1].context.amount`), never served or logged.
//! - A request message that is not protobuf: INVALID_ARGUMENT (tonic says INTERNAL); one over
//!   `max_message_bytes`: RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE); a malformed
//!   `grpc-timeout` header: INVALID_ARGUMENT naming it, on every method (tonic ignores it).
//! - A context value marked `required` in the configuration: a request without it is refused,
//!   naming `context.NAME`; DescribeFeatureService reports which are required.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{path::PathBuf, time::Duration};

use end_to_end::{GatewayProcess, d, map, s, statuses, with_timeout};
use prost::{
    Message,
    bytes::{Buf, BufMut},
};
use proto::v1::{self, FeatureStatus as St};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::Channel,
};

/// Largest request message of the test configuration.
const MAX_MESSAGE: usize = 64 * 1024;

/// A static table, a `request` view whose `amount` is required, and a small message limit.
fn config(dir: &std::path::Path) -> PathBuf {
    std::fs::write(dir.join("users.csv"), "user_id,score\nu1,0.5\n").unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[entities.user_id]
type = "string"
[sources.tables]
kind = "static"
[sources.request]
kind = "request"
[views.users]
source = "tables"
entities = ["user_id"]
path = "users.csv"
features = {{ score = {{ type = "double" }} }}
[views.txn]
source = "request"
[views.txn.features]
amount = {{ type = "double", required = true }}
note = {{ type = "string" }}
weights = {{ type = "list<double>" }}
[feature_services.fraud]
features = ["users:score", "txn:amount", "txn:note", "txn:weights"]
[limits]
max_message_bytes = {MAX_MESSAGE}
"#
        ),
    )
    .unwrap();
    path
}

fn gateway() -> (GatewayProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gw = GatewayProcess::serve(&config(dir.path()));
    (gw, dir)
}

fn request(context: &[(&str, v1::Value)], request_id: &str) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: "fraud".into(),
        entities: map(&[("user_id", s("u1"))]),
        context: map(context),
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn batch(rows: Vec<Vec<(&str, v1::Value)>>, request_id: &str) -> v1::GetFeaturesBatchRequest {
    v1::GetFeaturesBatchRequest {
        feature_service: "fraud".into(),
        rows: rows
            .into_iter()
            .map(|context| v1::EntityRow {
                entities: map(&[("user_id", s("u1"))]),
                context: map(&context),
            })
            .collect(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, message: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(message),
        "`{}` does not start with `{message}`",
        status.message()
    );
}

#[tokio::test]
async fn request_ids_are_bounded_printable_ascii() {
    let (gw, _dir) = gateway();
    let mut client = gw.client().await;
    let amount = [("amount", d(10.0))];

    // The limit itself, and every printable character but the space, are accepted and echoed.
    let printable: String = ('!'..='~').collect();
    for id in [
        "a".repeat(128),
        printable[..90].to_owned(),
        printable[90..].to_owned(),
    ] {
        let response = client
            .get_features(with_timeout(request(&amount, &id), TIMEOUT))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.request_id, id);
    }
    // Empty: the gateway makes one.
    let response = client
        .get_features(with_timeout(request(&amount, ""), TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.request_id.len(), 36);

    let too_long = "a".repeat(129);
    let result = client
        .get_features(with_timeout(request(&amount, &too_long), TIMEOUT))
        .await;
    assert_refused(
        result,
        Code::InvalidArgument,
        "request_id: 129 bytes long, more than the limit of 128",
    );
    let huge = "x".repeat(60_000);
    let result = client
        .get_features(with_timeout(request(&amount, &huge), TIMEOUT))
        .await;
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!status.message().contains("xxxx"), "the id is not echoed");

    for (id, what) in [
        ("label 7", "request_id: a space at byte 5"),
        ("nul\0byte", "request_id: U+0000 at byte 3"),
        ("tab\there", "request_id: U+0009 at byte 3"),
        ("invoice\u{202e}fdp.exe", "request_id: U+202E at byte 7"),
        ("caf\u{e9}", "request_id: U+00E9 at byte 3"),
    ] {
        let result = client
            .get_features(with_timeout(request(&amount, id), TIMEOUT))
            .await;
        assert_refused(result, Code::InvalidArgument, what);
        // A batch carries one id for all its rows: the same rule.
        let result = client
            .get_features_batch(with_timeout(batch(vec![amount.to_vec()], id), TIMEOUT))
            .await;
        assert_refused(result, Code::InvalidArgument, what);
    }
    let ok = client
        .get_features_batch(with_timeout(
            batch(vec![amount.to_vec(), amount.to_vec()], "batch-1"),
            TIMEOUT,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.request_id, "batch-1");
    assert_eq!(ok.rows.len(), 2);
}

#[tokio::test]
async fn nan_and_infinities_in_the_context_are_refused() {
    let (gw, _dir) = gateway();
    let mut client = gw.client().await;
    for (value, name) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "Infinity"),
        (f64::NEG_INFINITY, "-Infinity"),
    ] {
        let result = client
            .get_features(with_timeout(request(&[("amount", d(value))], ""), TIMEOUT))
            .await;
        assert_refused(
            result,
            Code::InvalidArgument,
            &format!("context.amount: {name} is not a value"),
        );
        let rows = vec![vec![("amount", d(1.0))], vec![("amount", d(value))]];
        let result = client
            .get_features_batch(with_timeout(batch(rows, ""), TIMEOUT))
            .await;
        assert_refused(
            result,
            Code::InvalidArgument,
            &format!("rows[1].context.amount: {name} is not a value"),
        );
        let weights = v1::Value {
            kind: Some(v1::value::Kind::DoubleListValue(v1::DoubleList {
                values: vec![0.25, value],
            })),
        };
        let result = client
            .get_features(with_timeout(
                request(&[("amount", d(1.0)), ("weights", weights)], ""),
                TIMEOUT,
            ))
            .await;
        assert_refused(
            result,
            Code::InvalidArgument,
            &format!("context.weights: element 1 is {name}"),
        );
    }
    // Finite extremes are values.
    for value in [f64::MAX, f64::MIN_POSITIVE, -0.0] {
        let response = client
            .get_features(with_timeout(request(&[("amount", d(value))], ""), TIMEOUT))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(statuses(&response.statuses)[1], St::Present);
    }
}

#[tokio::test]
async fn a_required_context_value_is_required_and_described_so() {
    let (gw, _dir) = gateway();
    let mut client = gw.client().await;
    let described = client
        .describe_feature_service(v1::DescribeFeatureServiceRequest {
            name: "fraud".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let context: Vec<(&str, bool)> = described
        .context
        .iter()
        .map(|c| (c.name.as_str(), c.required))
        .collect();
    assert_eq!(
        context,
        [("amount", true), ("note", false), ("weights", false)]
    );

    let result = client
        .get_features(with_timeout(request(&[("note", s("hi"))], ""), TIMEOUT))
        .await;
    assert_refused(
        result,
        Code::InvalidArgument,
        "context.amount: missing; this request needs context value `amount` (double)",
    );
    let rows = vec![
        vec![("amount", d(1.0))],
        vec![("amount", d(2.0))],
        vec![("note", s("no amount"))],
    ];
    let result = client
        .get_features_batch(with_timeout(batch(rows, ""), TIMEOUT))
        .await;
    assert_refused(
        result,
        Code::InvalidArgument,
        "rows[2].context.amount: missing",
    );

    // The optional ones may be left out: their features are NOT_FOUND.
    let response = client
        .get_features(with_timeout(request(&[("amount", d(12.5))], ""), TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses(&response.statuses),
        [St::Present, St::Present, St::NotFound, St::NotFound]
    );
}

/// Sends bytes as they are and returns the answer's bytes: a client that speaks gRPC framing
/// but not necessarily protobuf.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

async fn raw_call(
    channel: &Channel,
    path: &'static str,
    body: Vec<u8>,
    grpc_timeout: Option<&str>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    if let Some(t) = grpc_timeout {
        request
            .metadata_mut()
            .insert("grpc-timeout", t.parse().unwrap());
    }
    grpc.unary(request, PathAndQuery::from_static(path), Raw)
        .await
        .map(tonic::Response::into_inner)
}

const GET_FEATURES: &str = "/featuregateway.v1.FeatureService/GetFeatures";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

#[tokio::test]
async fn malformed_messages_and_timeouts_are_the_callers_mistakes() {
    let (gw, _dir) = gateway();
    let channel = gw.channel().await;
    let valid = request(&[("amount", d(1.0))], "").encode_to_vec();

    // The raw path itself works: the same bytes a generated client sends are answered.
    let answer = raw_call(&channel, GET_FEATURES, valid.clone(), Some("5S"))
        .await
        .unwrap();
    let answer = v1::GetFeaturesResponse::decode(&answer[..]).unwrap();
    assert_eq!(answer.feature_names.len(), 4);

    // Not protobuf: field 1 (a string) sent as a varint; a length running past the end.
    for garbage in [
        vec![0x08, 0x01],
        vec![0x0a, 0xff, 0x01, b'x'],
        vec![0xff; 16],
    ] {
        let result = raw_call(&channel, GET_FEATURES, garbage.clone(), Some("5S")).await;
        assert_refused(
            result,
            Code::InvalidArgument,
            "request: not a valid `GetFeatures` request message (",
        );
    }
    // A valid message past the limit: refused before it is read.
    let mut big = request(&[("amount", d(1.0))], "");
    big.entities
        .insert("padding".into(), s(&"p".repeat(MAX_MESSAGE)));
    let result = raw_call(&channel, GET_FEATURES, big.encode_to_vec(), Some("5S")).await;
    assert_refused(
        result,
        Code::ResourceExhausted,
        &format!("request: message larger than the limit of {MAX_MESSAGE} bytes"),
    );
    // The same through the generated client.
    let result = gw
        .client()
        .await
        .get_features(with_timeout(big.clone(), TIMEOUT))
        .await;
    assert_refused(result, Code::ResourceExhausted, "request: message larger");

    // A grpc-timeout that is not 1-8 digits and a unit is refused, on every method.
    for path in [GET_FEATURES, HEALTH_CHECK] {
        let body = if path == GET_FEATURES {
            valid.clone()
        } else {
            Vec::new() // an empty HealthCheckRequest
        };
        for bad in ["5X", "soon", "123456789m", "1.5S", "-5m"] {
            let result = raw_call(&channel, path, body.clone(), Some(bad)).await;
            assert_refused(result, Code::InvalidArgument, "grpc-timeout: ");
        }
        raw_call(&channel, path, body.clone(), Some("2S"))
            .await
            .unwrap();
        raw_call(&channel, path, body, None).await.unwrap();
    }

    // None of it was answered as a fault of the gateway, and it still serves.
    let response = gw
        .client()
        .await
        .get_features(with_timeout(request(&[("amount", d(1.0))], ""), TIMEOUT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses)[0], St::Present);
}
