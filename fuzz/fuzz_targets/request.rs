//! Request decoding and validation: bytes as a `GetFeaturesRequest` or `GetFeaturesBatchRequest`
//! (protobuf), resolved and checked against the demo deployment exactly as the gRPC service
//! does before it calls any source; or as a `grpc-timeout` header value.
//!
//! The contract: nothing panics; a refused request is a typed `RequestError` with a field and a
//! message; an accepted row has one key per entity of the plan, each within the key limit.
//!
//! The first byte chooses the input: 0 a single request, 1 a batch, 2 a `grpc-timeout` value.
#![no_main]

use std::{collections::BTreeMap, sync::OnceLock, time::SystemTime};

use fetcher_api::KeyPart;
use gateway::{
    Gateway,
    executor::RowInput,
    request::{RequestError, RowPrefix, row_input},
};
use gateway_config::LimitsConfig;
use gateway_stack::parse_grpc_timeout;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

/// Tight limits so that every limit is within the fuzzer's reach.
const LIMITS: &str = "
[limits]
max_batch_rows = 8
max_key_bytes = 32
max_entities_per_row = 6
max_features_per_request = 24
";

struct Demo {
    gateway: Gateway,
    // Kept alive for whatever the built sources spawned.
    _runtime: tokio::runtime::Runtime,
}

/// The demo deployment with tight limits, built once per process. Its tables are loaded into
/// memory at build, so the directory is removed right after.
fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        gateway::demo::write(dir.path(), SystemTime::now()).expect("the demo tables");
        let text = format!("{}\n{LIMITS}", gateway::demo::CONFIG);
        let registry = fetcher_builtin::registry();
        let config = gateway_config::load_str(&text, "demo.toml", dir.path(), &registry)
            .expect("the demo configuration validates");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let gateway = runtime
            .block_on(Gateway::build(config, &registry))
            .expect("the demo gateway builds");
        Demo {
            gateway,
            _runtime: runtime,
        }
    })
}

fn check_error(e: &RequestError) {
    match e {
        RequestError::InvalidArgument { field, message } => {
            assert!(
                !field.is_empty(),
                "an invalid argument names its field: {e:?}"
            );
            assert!(
                !message.is_empty(),
                "an invalid argument says what is wrong: {e:?}"
            );
        }
        RequestError::UnknownFeatureService(_) | RequestError::DeadlineExceeded => {}
        // No caller is authenticated here, so none is refused; a refusal would still name it.
        RequestError::PermissionDenied { caller, .. } => {
            assert!(!caller.is_empty(), "a refusal names its caller: {e:?}");
        }
    }
    let status = tonic::Status::from(e.clone());
    assert_eq!(status.code(), e.code());
    assert!(!status.message().is_empty());
}

fn check_row(row: &RowInput, plan: &gateway::plan::Plan, limits: &LimitsConfig) {
    assert_eq!(row.entities.len(), plan.entities.len());
    assert_eq!(row.context.len(), plan.context.len());
    for key in &row.entities {
        if let KeyPart::String(s) = key {
            assert!(s.len() <= limits.max_key_bytes);
        }
    }
}

/// Every wire value converts to the value model and back: a `request` source serves the
/// context values it was given, so whatever a caller sends may have to go out again.
fn convert_all(values: &BTreeMap<String, v1::Value>) {
    for v in values.values() {
        let _ = proto::wire_type_name(v);
        let value = fetcher_api::Value::from(v.clone());
        let back = v1::Value::from(value.clone());
        // Compared as text: NaN is not equal to itself.
        let again = fetcher_api::Value::from(back);
        assert_eq!(format!("{again:?}"), format!("{value:?}"), "{v:?}");
    }
}

fn single(bytes: &[u8]) {
    let Ok(mut req) = v1::GetFeaturesRequest::decode(bytes) else {
        return;
    };
    convert_all(&req.entities);
    convert_all(&req.context);
    let gateway = &demo().gateway;
    let limits = &gateway.config().limits;
    let result = gateway
        .resolve(&req.feature_service, &req.features)
        .and_then(|plan| {
            row_input(
                &plan,
                &mut req.entities,
                &mut req.context,
                limits,
                RowPrefix(None),
            )
            .map(|row| (plan, row))
        });
    match result {
        Ok((plan, row)) => check_row(&row, &plan, limits),
        Err(e) => check_error(&e),
    }
}

fn batch(bytes: &[u8]) {
    let Ok(mut req) = v1::GetFeaturesBatchRequest::decode(bytes) else {
        return;
    };
    for row in &req.rows {
        convert_all(&row.entities);
        convert_all(&row.context);
    }
    let gateway = &demo().gateway;
    let limits = &gateway.config().limits;
    let result = gateway
        .resolve(&req.feature_service, &req.features)
        .and_then(|plan| {
            if req.rows.len() > limits.max_batch_rows {
                return Err(RequestError::invalid("rows", "over the limit"));
            }
            req.rows
                .iter_mut()
                .enumerate()
                .map(|(i, row)| {
                    row_input(
                        &plan,
                        &mut row.entities,
                        &mut row.context,
                        limits,
                        RowPrefix(Some(i)),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|rows| (plan, rows))
        });
    match result {
        Ok((plan, rows)) => {
            assert_eq!(rows.len(), req.rows.len());
            for row in &rows {
                check_row(row, &plan, limits);
            }
        }
        Err(e) => check_error(&e),
    }
}

fn grpc_timeout(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Some(d) = parse_grpc_timeout(text) {
        // At most 8 digits of hours.
        assert!(d.as_secs() <= 99_999_999 * 3600);
        assert!(text.len() >= 2 && text.len() <= 9, "{text:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => single(rest),
        1 => batch(rest),
        _ => grpc_timeout(rest),
    }
});
