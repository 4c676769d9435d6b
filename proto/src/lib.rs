//! The wire contracts of feature-gateway, generated from `proto/featuregateway/v1/*.proto` at
//! build time (with protox: no protoc needed), and the conversions between the wire `Value` and
//! the value model of [`fetcher_api`].
#![forbid(unsafe_code)]

/// Package `featuregateway.v1`: the public `FeatureService` and the sidecar `Fetcher` contract.
pub mod server;

pub mod codec;
mod response;

pub mod v1 {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    tonic::include_proto!("featuregateway.v1");

    pub use crate::response::{FeatureNames, GetFeaturesResponse};
}

/// The encoded `FileDescriptorSet` of every .proto in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("featuregateway_descriptor");

/// The encoded `FileDescriptorSet` of `FeatureService` (its .proto and the files it imports), for
/// the gateway's server reflection.
pub const FEATURE_SERVICE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("feature_service_descriptor");

/// The encoded `FileDescriptorSet` of `Fetcher` (its .proto and the files it imports), for the
/// fetcher sidecar host's server reflection.
pub const FETCHER_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fetcher_descriptor");

use std::time::{Duration, SystemTime};

use fetcher_api::{FeatureType, KeyPart, Value};
use v1::value::Kind;

impl From<Value> for v1::Value {
    fn from(value: Value) -> Self {
        let kind = match value {
            Value::Null => Kind::NullValue(v1::NullValue::Null as i32),
            Value::Int64(i) => Kind::Int64Value(i),
            Value::Double(d) => Kind::DoubleValue(d),
            Value::String(s) => Kind::StringValue(s),
            Value::Bool(b) => Kind::BoolValue(b),
            Value::Bytes(b) => Kind::BytesValue(b),
            Value::Timestamp(t) => Kind::TimestampValue(timestamp_to_wire(t)),
            Value::Int64List(values) => Kind::Int64ListValue(v1::Int64List { values }),
            Value::DoubleList(values) => Kind::DoubleListValue(v1::DoubleList { values }),
            Value::StringList(values) => Kind::StringListValue(v1::StringList { values }),
        };
        v1::Value { kind: Some(kind) }
    }
}

impl From<v1::Value> for Value {
    fn from(value: v1::Value) -> Self {
        match value.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::Int64Value(i)) => Value::Int64(i),
            Some(Kind::DoubleValue(d)) => Value::Double(d),
            Some(Kind::StringValue(s)) => Value::String(s),
            Some(Kind::BoolValue(b)) => Value::Bool(b),
            Some(Kind::BytesValue(b)) => Value::Bytes(b),
            Some(Kind::TimestampValue(t)) => Value::Timestamp(timestamp_from_wire(&t)),
            Some(Kind::Int64ListValue(l)) => Value::Int64List(l.values),
            Some(Kind::DoubleListValue(l)) => Value::DoubleList(l.values),
            Some(Kind::StringListValue(l)) => Value::StringList(l.values),
        }
    }
}

impl From<KeyPart> for v1::Value {
    fn from(key: KeyPart) -> Self {
        Value::from(key).into()
    }
}

impl From<FeatureType> for v1::ValueType {
    fn from(ty: FeatureType) -> Self {
        match ty {
            FeatureType::Int64 => v1::ValueType::Int64,
            FeatureType::Double => v1::ValueType::Double,
            FeatureType::String => v1::ValueType::String,
            FeatureType::Bool => v1::ValueType::Bool,
            FeatureType::Bytes => v1::ValueType::Bytes,
            FeatureType::Timestamp => v1::ValueType::Timestamp,
            FeatureType::Int64List => v1::ValueType::Int64List,
            FeatureType::DoubleList => v1::ValueType::DoubleList,
            FeatureType::StringList => v1::ValueType::StringList,
        }
    }
}

/// The name of a wire value's type, for error messages ("null" when unset).
pub fn wire_type_name(value: &v1::Value) -> &'static str {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => "null",
        Some(Kind::Int64Value(_)) => "int64",
        Some(Kind::DoubleValue(_)) => "double",
        Some(Kind::StringValue(_)) => "string",
        Some(Kind::BoolValue(_)) => "bool",
        Some(Kind::BytesValue(_)) => "bytes",
        Some(Kind::TimestampValue(_)) => "timestamp",
        Some(Kind::Int64ListValue(_)) => "list<int64>",
        Some(Kind::DoubleListValue(_)) => "list<double>",
        Some(Kind::StringListValue(_)) => "list<string>",
    }
}

/// A `SystemTime` as a protobuf `Timestamp`.
pub fn timestamp_to_wire(t: SystemTime) -> prost_types::Timestamp {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        // Saturating: a time from the wire can lie 2^63 seconds before the epoch, whose
        // negation does not fit an i64.
        Ok(d) => prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: d.subsec_nanos() as i32,
        },
        Err(e) => {
            let d = e.duration();
            let mut seconds = 0i64.saturating_sub_unsigned(d.as_secs());
            let mut nanos = -(d.subsec_nanos() as i32);
            if nanos < 0 {
                seconds = seconds.saturating_sub(1);
                nanos += 1_000_000_000;
            }
            prost_types::Timestamp { seconds, nanos }
        }
    }
}

/// A protobuf `Timestamp` as a `SystemTime` (out-of-range nanos are clamped).
pub fn timestamp_from_wire(t: &prost_types::Timestamp) -> SystemTime {
    let nanos = t.nanos.clamp(0, 999_999_999) as u64;
    let base = if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.seconds as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.seconds.unsigned_abs())
    };
    base + Duration::from_nanos(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_the_wire() {
        let values = [
            Value::Null,
            Value::Int64(-5),
            Value::Double(0.5),
            Value::String("s".into()),
            Value::Bool(true),
            Value::Bytes(vec![0, 1]),
            Value::Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            Value::Timestamp(SystemTime::UNIX_EPOCH - Duration::from_millis(1_500)),
            Value::Int64List(vec![1, 2]),
            Value::DoubleList(vec![1.5]),
            Value::StringList(vec!["a".into()]),
        ];
        for value in values {
            let wire = v1::Value::from(value.clone());
            assert_eq!(Value::from(wire), value);
        }
        assert_eq!(Value::from(v1::Value { kind: None }), Value::Null);
    }

    /// Found with `fuzz/` (target `request`): a context timestamp of i64::MIN seconds was
    /// accepted from the wire, then overflowed when converted back to send it out.
    #[test]
    fn the_widest_wire_timestamps_round_trip() {
        for (seconds, nanos) in [(i64::MIN, 0), (i64::MIN, 5), (i64::MAX, 999_999_999)] {
            let wire = prost_types::Timestamp { seconds, nanos };
            assert_eq!(timestamp_to_wire(timestamp_from_wire(&wire)), wire);
        }
    }

    /// Each service's descriptor set holds its own .proto and everything it imports (so server
    /// reflection can answer every file a client asks for), and only those.
    #[test]
    fn each_service_descriptor_set_is_its_file_and_imports() {
        let files = |set: &[u8]| -> Vec<(String, Vec<String>, Vec<String>)> {
            let set = <prost_types::FileDescriptorSet as prost::Message>::decode(set).unwrap();
            set.file
                .into_iter()
                .map(|f| {
                    let services = f.service.iter().map(|s| s.name().to_owned()).collect();
                    (f.name().to_owned(), f.dependency, services)
                })
                .collect()
        };
        for (set, file, expected) in [
            (
                FEATURE_SERVICE_DESCRIPTOR_SET,
                "featuregateway/v1/feature_service.proto",
                &[
                    "google/protobuf/timestamp.proto",
                    "featuregateway/v1/feature_service.proto",
                ][..],
            ),
            (
                FETCHER_DESCRIPTOR_SET,
                "featuregateway/v1/fetcher.proto",
                &[
                    "google/protobuf/timestamp.proto",
                    "featuregateway/v1/feature_service.proto",
                    "featuregateway/v1/fetcher.proto",
                ][..],
            ),
        ] {
            let files = files(set);
            let mut names: Vec<&str> = files.iter().map(|(n, ..)| n.as_str()).collect();
            names.sort_unstable();
            let mut expected = expected.to_vec();
            expected.sort_unstable();
            assert_eq!(names, expected, "{file}");
            for (name, dependencies, _) in &files {
                for dependency in dependencies {
                    assert!(
                        names.contains(&dependency.as_str()),
                        "{name} imports {dependency}"
                    );
                }
            }
        }
        let services =
            |set: &[u8]| -> Vec<String> { files(set).into_iter().flat_map(|(.., s)| s).collect() };
        assert_eq!(services(FEATURE_SERVICE_DESCRIPTOR_SET), ["FeatureService"]);
        assert_eq!(
            services(FETCHER_DESCRIPTOR_SET),
            ["FeatureService", "Fetcher"]
        );
    }

    #[test]
    fn negative_timestamps_are_normalised() {
        let t = SystemTime::UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(
            timestamp_to_wire(t),
            prost_types::Timestamp {
                seconds: -2,
                nanos: 500_000_000
            }
        );
    }
}
