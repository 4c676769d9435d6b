//! `featuregateway.v1.GetFeaturesResponse`, implemented here rather than generated, so that a
//! response's feature names are not copied per request.
//!
//! Every response of a feature service repeats the same names (field 2), in the same order. The
//! gateway encodes them once per plan ([`FeatureNames::encoded`]) and each response shares them
//! behind an `Arc` and writes them with one copy; a generated message would clone every name
//! into the response and encode each one again. The wire format is exactly the generated one
//! (the same fields, tags and encodings, checked against a derived message in the tests), so
//! clients generated from the .proto see no difference, and a response decoded here (the Rust
//! client) holds its names as decoded.
//!
//! The other fields are the generated types, as a derived message would hold them.

use std::{fmt, ops::Deref, sync::Arc};

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut},
    encoding::{DecodeContext, WireType, int32, message, skip_field, string},
};

use crate::v1::{FeatureMetadata, RequestMetadata, Value};

const NAME: &str = "GetFeaturesResponse";
const REQUEST_ID: u32 = 1;
const FEATURE_NAMES: u32 = 2;
const VALUES: u32 = 3;
const STATUSES: u32 = 4;
const METADATA: u32 = 5;
const REQUEST_METADATA: u32 = 6;

/// One feature vector.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GetFeaturesResponse {
    /// The request's id (the caller's, or the one the gateway generated).
    pub request_id: String,
    /// Feature names ("view:feature"), in the feature service's declared order.
    pub feature_names: FeatureNames,
    /// One value per feature, in the order of feature_names.
    pub values: Vec<Value>,
    /// One status per feature (a `FeatureStatus`), in the order of feature_names.
    pub statuses: Vec<i32>,
    /// One entry per feature, in the order of feature_names, when include_metadata was set.
    pub metadata: Vec<FeatureMetadata>,
    /// Where the time went, when include_metadata was set.
    pub request_metadata: Option<RequestMetadata>,
}

impl Message for GetFeaturesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.request_id.is_empty() {
            string::encode(REQUEST_ID, &self.request_id, buf);
        }
        self.feature_names.encode(buf);
        message::encode_repeated(VALUES, &self.values, buf);
        int32::encode_packed(STATUSES, &self.statuses, buf);
        message::encode_repeated(METADATA, &self.metadata, buf);
        if let Some(m) = &self.request_metadata {
            message::encode(REQUEST_METADATA, m, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let (result, field) = match tag {
            REQUEST_ID => (
                string::merge(wire_type, &mut self.request_id, buf, ctx),
                "request_id",
            ),
            FEATURE_NAMES => (
                string::merge_repeated(wire_type, self.feature_names.to_mut(), buf, ctx),
                "feature_names",
            ),
            VALUES => (
                message::merge_repeated(wire_type, &mut self.values, buf, ctx),
                "values",
            ),
            STATUSES => (
                int32::merge_repeated(wire_type, &mut self.statuses, buf, ctx),
                "statuses",
            ),
            METADATA => (
                message::merge_repeated(wire_type, &mut self.metadata, buf, ctx),
                "metadata",
            ),
            REQUEST_METADATA => (
                message::merge(
                    wire_type,
                    self.request_metadata.get_or_insert_with(Default::default),
                    buf,
                    ctx,
                ),
                "request_metadata",
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        result.map_err(|mut error| {
            error.push(NAME, field);
            error
        })
    }

    fn encoded_len(&self) -> usize {
        let request_id = if self.request_id.is_empty() {
            0
        } else {
            string::encoded_len(REQUEST_ID, &self.request_id)
        };
        request_id
            + self.feature_names.encoded_len()
            + message::encoded_len_repeated(VALUES, &self.values)
            + int32::encoded_len_packed(STATUSES, &self.statuses)
            + message::encoded_len_repeated(METADATA, &self.metadata)
            + self
                .request_metadata
                .as_ref()
                .map_or(0, |m| message::encoded_len(REQUEST_METADATA, m))
    }

    fn clear(&mut self) {
        *self = GetFeaturesResponse::default();
    }
}

/// A response's feature names: either encoded once and shared by every response of a plan
/// ([`FeatureNames::encoded`]), or owned (decoded from the wire, or built from a `Vec`). Both
/// read as a `[String]`.
#[derive(Clone, Default)]
pub struct FeatureNames(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<String>),
    Encoded(Arc<Encoded>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

struct Encoded {
    names: Vec<String>,
    /// Field 2 of `GetFeaturesResponse` for every name: key, length and bytes, in order.
    wire: Vec<u8>,
}

impl FeatureNames {
    /// `names`, encoded once: every response given a clone of the result shares the names and
    /// writes their encoding with one copy.
    pub fn encoded(names: Vec<String>) -> FeatureNames {
        let mut wire = Vec::with_capacity(string::encoded_len_repeated(FEATURE_NAMES, &names));
        string::encode_repeated(FEATURE_NAMES, &names, &mut wire);
        FeatureNames(Repr::Encoded(Arc::new(Encoded { names, wire })))
    }

    /// The names, owned.
    pub fn into_vec(self) -> Vec<String> {
        match self.0 {
            Repr::Owned(names) => names,
            Repr::Encoded(e) => e.names.clone(),
        }
    }

    /// The names as a `Vec` to add to: a shared encoding is given up first.
    fn to_mut(&mut self) -> &mut Vec<String> {
        if let Repr::Encoded(e) = &self.0 {
            self.0 = Repr::Owned(e.names.clone());
        }
        match &mut self.0 {
            Repr::Owned(names) => names,
            Repr::Encoded(_) => unreachable!("replaced above"),
        }
    }

    fn encode(&self, buf: &mut impl BufMut) {
        match &self.0 {
            Repr::Owned(names) => string::encode_repeated(FEATURE_NAMES, names, buf),
            Repr::Encoded(e) => buf.put_slice(&e.wire),
        }
    }

    fn encoded_len(&self) -> usize {
        match &self.0 {
            Repr::Owned(names) => string::encoded_len_repeated(FEATURE_NAMES, names),
            Repr::Encoded(e) => e.wire.len(),
        }
    }
}

impl Deref for FeatureNames {
    type Target = [String];

    fn deref(&self) -> &[String] {
        match &self.0 {
            Repr::Owned(names) => names,
            Repr::Encoded(e) => &e.names,
        }
    }
}

impl From<Vec<String>> for FeatureNames {
    fn from(names: Vec<String>) -> Self {
        FeatureNames(Repr::Owned(names))
    }
}

impl FromIterator<String> for FeatureNames {
    fn from_iter<I: IntoIterator<Item = String>>(iter: I) -> Self {
        FeatureNames(Repr::Owned(iter.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a FeatureNames {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for FeatureNames {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<String>> for FeatureNames {
    fn eq(&self, other: &Vec<String>) -> bool {
        **self == **other
    }
}

impl PartialEq<FeatureNames> for Vec<String> {
    fn eq(&self, other: &FeatureNames) -> bool {
        **self == **other
    }
}

impl fmt::Debug for FeatureNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{self, value::Kind};

    /// The message as prost derives it from the .proto: the reference for the wire format.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(string, tag = "1")]
        request_id: String,
        #[prost(string, repeated, tag = "2")]
        feature_names: Vec<String>,
        #[prost(message, repeated, tag = "3")]
        values: Vec<Value>,
        #[prost(enumeration = "v1::FeatureStatus", repeated, tag = "4")]
        statuses: Vec<i32>,
        #[prost(message, repeated, tag = "5")]
        metadata: Vec<FeatureMetadata>,
        #[prost(message, optional, tag = "6")]
        request_metadata: Option<RequestMetadata>,
    }

    fn names(n: usize) -> Vec<String> {
        // Names long enough to need a two-byte length, and one empty.
        (0..n)
            .map(|i| match i % 3 {
                0 => format!("view_{i}:feature"),
                1 => format!("v:{}", "x".repeat(130 + i)),
                _ => String::new(),
            })
            .collect()
    }

    fn cases() -> Vec<Derived> {
        let value = |i: usize| v1::Value {
            kind: Some(match i % 4 {
                0 => Kind::DoubleValue(i as f64 * 0.5),
                1 => Kind::Int64Value(-(i as i64)),
                2 => Kind::StringValue(format!("s{i}")),
                _ => Kind::NullValue(0),
            }),
        };
        let mut out = vec![Derived::default()];
        for n in [1, 3, 20, 200] {
            out.push(Derived {
                request_id: format!("req-{n}"),
                feature_names: names(n),
                values: (0..n).map(value).collect(),
                statuses: (0..n).map(|i| (i % 5) as i32).collect(),
                metadata: if n == 3 {
                    (0..n)
                        .map(|i| FeatureMetadata {
                            source: format!("src{i}"),
                            age_ms: i as i64,
                            ..Default::default()
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                request_metadata: (n == 20).then(|| RequestMetadata {
                    deadline_ms: 30,
                    total_us: 1234,
                    stage_us: vec![1, 2, 3],
                }),
            });
        }
        out
    }

    fn response(d: &Derived, shared: bool) -> GetFeaturesResponse {
        GetFeaturesResponse {
            request_id: d.request_id.clone(),
            feature_names: if shared {
                FeatureNames::encoded(d.feature_names.clone())
            } else {
                d.feature_names.clone().into()
            },
            values: d.values.clone(),
            statuses: d.statuses.clone(),
            metadata: d.metadata.clone(),
            request_metadata: d.request_metadata.clone(),
        }
    }

    #[test]
    fn encodes_the_bytes_of_the_derived_message() {
        for d in cases() {
            let reference = d.encode_to_vec();
            for shared in [true, false] {
                let r = response(&d, shared);
                assert_eq!(r.encoded_len(), reference.len(), "{d:?}");
                assert_eq!(
                    r.encode_to_vec(),
                    reference,
                    "shared names: {shared}, {d:?}"
                );
            }
        }
    }

    #[test]
    fn decodes_what_the_derived_message_encodes() {
        for d in cases() {
            let decoded = GetFeaturesResponse::decode(&d.encode_to_vec()[..]).unwrap();
            assert_eq!(decoded, response(&d, false));
            assert_eq!(decoded, response(&d, true), "names compare by content");
            assert_eq!(Derived::decode(&decoded.encode_to_vec()[..]).unwrap(), d);
        }
    }

    #[test]
    fn decoding_merges_and_skips_as_protobuf_does() {
        let d = &cases()[2];
        // Two messages concatenated merge: repeated fields append, scalars take the last value.
        let mut bytes = d.encode_to_vec();
        bytes.extend(d.encode_to_vec());
        // An unknown field (tag 99, varint) is skipped.
        bytes.extend([0x98, 0x06, 0x01]);
        let mut merged = response(d, true);
        merged.merge(&bytes[..]).unwrap();
        assert_eq!(merged.feature_names.len(), 3 * d.feature_names.len());
        assert_eq!(merged.values.len(), 3 * d.values.len());
        assert_eq!(merged.request_id, d.request_id);
        // An unpacked status (tag 4, varint) is accepted as protobuf requires.
        let mut r = GetFeaturesResponse::default();
        r.merge(&[0x20, 0x03][..]).unwrap();
        assert_eq!(r.statuses, vec![3]);
    }

    #[test]
    fn a_malformed_field_is_an_error_naming_it() {
        // Field 2 with a length beyond the buffer.
        let err = GetFeaturesResponse::decode(&[0x12, 0x05, b'a'][..]).unwrap_err();
        assert!(
            err.to_string()
                .contains("GetFeaturesResponse.feature_names"),
            "{err}"
        );
        // Field 2 as a varint: the wrong wire type.
        let err = GetFeaturesResponse::decode(&[0x10, 0x01][..]).unwrap_err();
        assert!(err.to_string().contains("feature_names"), "{err}");
        // Invalid UTF-8 in a name.
        let err = GetFeaturesResponse::decode(&[0x12, 0x01, 0xff][..]).unwrap_err();
        assert!(err.to_string().contains("feature_names"), "{err}");
    }

    #[test]
    fn shared_names_read_and_clear_like_owned_ones() {
        let shared = FeatureNames::encoded(names(4));
        assert_eq!(shared, names(4));
        assert_eq!(shared.clone().into_vec(), names(4));
        assert_eq!(shared.iter().count(), 4);
        let mut r = GetFeaturesResponse {
            feature_names: shared,
            ..Default::default()
        };
        r.clear();
        assert_eq!(r, GetFeaturesResponse::default());
        assert!(r.encode_to_vec().is_empty());
    }
}
