//! The record schema, version [`SCHEMA_VERSION`]: which columns a feature service's log files
//! have, derived from the feature service's definition.
//!
//! # Columns (schema version 1)
//! | column | type | meaning |
//! |---|---|---|
//! | `request_id` | string | the request's id; batch rows are `<request_id>/<row>` |
//! | `served_at` | timestamp[us, UTC] | when the vector was assembled |
//! | `definition_hash` | string | hash of its definition: a new hash is a new schema |
//! | `latency_us` | int64 | the request's latency until the vector was assembled |
//! | `entity:<name>` | int64 or string | each entity key of the request's `entities` map |
//! | `context:<name>` | the context value's type, nullable; a hashed pii one is a string, a dropped one has no column | each context value the plan reads |
//! | `feature:<view>:<feature>` | the feature's type, nullable | the value served (defaults included) |
//! | `status:<view>:<feature>` | string | `PRESENT`, `NOT_FOUND`, `NULL_VALUE`, `OUTSIDE_MAX_AGE`, `TIMED_OUT`, `SOURCE_ERROR`, `STALE` |
//! | `age_ms:<view>:<feature>` | int64, nullable | age of the value by the source's event time, when known |
//! | `input:<view>:<feature>` | the feature's type, nullable | a derived feature's input that is not an output: the value read (no default applies) |
//! | `input_status:<view>:<feature>` | string | its status, as `status:` |
//! | `input_age_ms:<view>:<feature>` | int64, nullable | its age, as `age_ms:` |
//!
//! The `input:` columns are log-only: a derived feature may read a feature that its feature
//! service does not serve (`amount / user_profile.avg_txn_amount_30d` in a service without
//! `user_profile:avg_txn_amount_30d`); the log holds what it read there, after every
//! `feature:` column, so that `training-set` can evaluate the derived feature again from the
//! log. A `request` view's feature is a `context:` column and a served feature its `feature:`
//! column, so neither is an `input:` one; a schema without such inputs has no `input:` columns
//! and keeps the JSON (and schema id) it had before them.
//!
//! The feature service and the date are not columns of the files but their hive partition
//! directories (`feature_service=NAME/date=YYYY-MM-DD/`), which pandas, pyarrow, DuckDB and
//! Spark turn back into columns; a column of the same name would clash with them.
//!
//! Feature types map to Arrow as: int64 → int64, double → double, string → string, bool → bool,
//! bytes → binary, timestamp → timestamp[ns, UTC], `list<T>` → `list<T>`. A `pii` feature's value
//! column is a string (hex salted SHA-256) in `hash` mode and absent in `drop` mode. Context is
//! typed columns rather than one JSON column, so queries filter on it without parsing.
//!
//! A context value is `pii` when a `request` view's feature of that name is marked `pii`,
//! whatever reads it (an output, a derived feature's input, an entity key with
//! `from = "context:NAME"` or `from = "VIEW:FEATURE"`): its column is hashed or left out exactly
//! as a `pii` feature's value column is. An entity key whose value comes from the context is not
//! an `entity:` column: its value is logged once, as that `context:` column. `entity:` columns
//! hold the keys of the request's `entities` map as given (an entity has no `pii` mark).
//!
//! Each file's Parquet key-value metadata holds `training_log.schema_version` and
//! `training_log.schema` (the [`SchemaDef`] as JSON).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use fetcher_api::FeatureType;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::PiiMode;

/// The version of the column layout described in this module.
pub const SCHEMA_VERSION: u32 = 1;
/// Parquet metadata key of the schema version.
pub const VERSION_KEY: &str = "training_log.schema_version";
/// Parquet metadata key of the [`SchemaDef`] JSON.
pub const SCHEMA_KEY: &str = "training_log.schema";

/// A named, typed input column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The entity or context name.
    pub name: String,
    /// Its type.
    #[serde(with = "type_name")]
    pub ty: FeatureType,
    /// Whether it is personal data (logged per [`PiiMode`]): a context value read from a
    /// `request` view's feature marked `pii`; never an entity key. Absent from the JSON when
    /// false, so a schema without pii context keeps the JSON (and schema id) it had before this
    /// field, and files written before it read as not pii.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pii: bool,
}

/// One served feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureColumn {
    /// `VIEW:FEATURE`.
    pub name: String,
    /// Its type.
    #[serde(with = "type_name")]
    pub ty: FeatureType,
    /// Whether it is personal data (logged per [`PiiMode`]).
    #[serde(default)]
    pub pii: bool,
}

/// What determines a feature service's log columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SchemaDef {
    /// The feature service.
    pub feature_service: String,
    /// Its definition hash.
    pub definition_hash: String,
    /// Entity keys, in plan order.
    pub entities: Vec<Column>,
    /// Context values, in plan order.
    pub context: Vec<Column>,
    /// Features, in output order.
    pub features: Vec<FeatureColumn>,
    /// The derived features' inputs that are logged beside the features (the `input:` columns),
    /// in the plan's order. Absent from the JSON when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<FeatureColumn>,
    /// How `pii` features are logged.
    pub pii: PiiMode,
}

/// A [`SchemaDef`] with its Arrow schema and identity, built once per feature service.
#[derive(Debug)]
pub struct LogSchema {
    /// The definition.
    pub def: SchemaDef,
    /// The Arrow schema of its files.
    pub arrow: SchemaRef,
    /// Short hash of the definition's JSON: files of different ids never share a name prefix.
    pub id: String,
}

impl LogSchema {
    /// Builds the schema of `def`.
    pub fn new(def: SchemaDef) -> LogSchema {
        let json = serde_json::to_string(&def).unwrap_or_default();
        let id = hex::encode(&Sha256::digest(json.as_bytes())[..4]);
        let mut fields = vec![
            Field::new("request_id", DataType::Utf8, false),
            Field::new(
                "served_at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("definition_hash", DataType::Utf8, false),
            Field::new("latency_us", DataType::Int64, false),
        ];
        for e in &def.entities {
            fields.push(Field::new(entity_column(&e.name), arrow_type(e.ty), false));
        }
        for c in &def.context {
            if let Some(ty) = def.logged_context_type(c) {
                fields.push(Field::new(context_column(&c.name), ty, true));
            }
        }
        for (f, [value, status, age]) in def.columns() {
            if let Some(ty) = def.logged_type(f) {
                fields.push(Field::new(value, ty, true));
            }
            fields.push(Field::new(status, DataType::Utf8, false));
            fields.push(Field::new(age, DataType::Int64, true));
        }
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(VERSION_KEY.to_owned(), SCHEMA_VERSION.to_string());
        metadata.insert(SCHEMA_KEY.to_owned(), json);
        LogSchema {
            arrow: Arc::new(Schema::new_with_metadata(fields, metadata)),
            id,
            def,
        }
    }
}

impl SchemaDef {
    /// The Arrow type of `feature`'s value column, `None` when it is left out.
    pub fn logged_type(&self, feature: &FeatureColumn) -> Option<DataType> {
        self.logged_as(feature.ty, feature.pii).map(arrow_type)
    }

    /// The Arrow type of context value `column`'s column, `None` when it is left out.
    pub fn logged_context_type(&self, column: &Column) -> Option<DataType> {
        self.logged_as(column.ty, column.pii).map(arrow_type)
    }

    /// The type a value of type `ty` is logged as: its own; a string (its hash) when `pii` in
    /// `hash` mode; `None` (no column) when `pii` in `drop` mode.
    pub fn logged_as(&self, ty: FeatureType, pii: bool) -> Option<FeatureType> {
        match (pii, self.pii) {
            (false, _) => Some(ty),
            (true, PiiMode::Hash) => Some(FeatureType::String),
            (true, PiiMode::Drop) => None,
        }
    }

    /// Whether any feature, input or context value is `pii` (a `hash` mode log then needs the
    /// salt).
    pub fn has_pii(&self) -> bool {
        self.features.iter().chain(&self.inputs).any(|f| f.pii)
            || self.context.iter().any(|c| c.pii)
    }

    /// The features, then the inputs, each with the names of its value, status and age columns
    /// (a `pii` one's value column may be left out: [`SchemaDef::logged_type`]).
    pub fn columns(&self) -> impl Iterator<Item = (&FeatureColumn, [String; 3])> {
        let features = self.features.iter().map(|f| {
            let n = &f.name;
            (f, [feature_column(n), status_column(n), age_column(n)])
        });
        let inputs = self.inputs.iter().map(|f| {
            let n = &f.name;
            (
                f,
                [input_column(n), input_status_column(n), input_age_column(n)],
            )
        });
        features.chain(inputs)
    }
}

/// The column of entity `name`.
pub fn entity_column(name: &str) -> String {
    format!("entity:{name}")
}
/// The column of context value `name`.
pub fn context_column(name: &str) -> String {
    format!("context:{name}")
}
/// The value column of feature `name`.
pub fn feature_column(name: &str) -> String {
    format!("feature:{name}")
}
/// The status column of feature `name`.
pub fn status_column(name: &str) -> String {
    format!("status:{name}")
}
/// The age column of feature `name`.
pub fn age_column(name: &str) -> String {
    format!("age_ms:{name}")
}

/// The value column of derived features' input `name`, logged beside the features.
pub fn input_column(name: &str) -> String {
    format!("input:{name}")
}
/// The status column of derived features' input `name`.
pub fn input_status_column(name: &str) -> String {
    format!("input_status:{name}")
}
/// The age column of derived features' input `name`.
pub fn input_age_column(name: &str) -> String {
    format!("input_age_ms:{name}")
}

/// The Arrow type of a feature type.
pub fn arrow_type(ty: FeatureType) -> DataType {
    let list = |item: DataType| DataType::List(Arc::new(Field::new("item", item, true)));
    match ty {
        FeatureType::Int64 => DataType::Int64,
        FeatureType::Double => DataType::Float64,
        FeatureType::String => DataType::Utf8,
        FeatureType::Bool => DataType::Boolean,
        FeatureType::Bytes => DataType::Binary,
        FeatureType::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        FeatureType::Int64List => list(DataType::Int64),
        FeatureType::DoubleList => list(DataType::Float64),
        FeatureType::StringList => list(DataType::Utf8),
    }
}

/// Feature types as their configuration names (`int64`, `list<string>`, ...).
mod type_name {
    use fetcher_api::FeatureType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ty: &FeatureType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(ty.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FeatureType, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(pii: PiiMode) -> SchemaDef {
        SchemaDef {
            feature_service: "fs".into(),
            definition_hash: "h".into(),
            entities: vec![Column {
                name: "user_id".into(),
                ty: FeatureType::String,
                pii: false,
            }],
            context: vec![
                Column {
                    name: "amount".into(),
                    ty: FeatureType::Double,
                    pii: false,
                },
                Column {
                    name: "card".into(),
                    ty: FeatureType::Int64,
                    pii: true,
                },
            ],
            features: vec![
                FeatureColumn {
                    name: "u:email".into(),
                    ty: FeatureType::Bytes,
                    pii: true,
                },
                FeatureColumn {
                    name: "u:tags".into(),
                    ty: FeatureType::StringList,
                    pii: false,
                },
            ],
            pii,
            inputs: Vec::new(),
        }
    }

    #[test]
    fn columns_follow_the_definition_and_pii_mode() {
        let hashed = LogSchema::new(def(PiiMode::Hash));
        let names: Vec<_> = hashed
            .arrow
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "request_id",
                "served_at",
                "definition_hash",
                "latency_us",
                "entity:user_id",
                "context:amount",
                "context:card",
                "feature:u:email",
                "status:u:email",
                "age_ms:u:email",
                "feature:u:tags",
                "status:u:tags",
                "age_ms:u:tags",
            ]
        );
        let email = hashed.arrow.field_with_name("feature:u:email").unwrap();
        assert_eq!(email.data_type(), &DataType::Utf8);
        // A pii context value is logged as a pii feature's value is: its hash, a string.
        let card = hashed.arrow.field_with_name("context:card").unwrap();
        assert_eq!(card.data_type(), &DataType::Utf8);
        let amount = hashed.arrow.field_with_name("context:amount").unwrap();
        assert_eq!(amount.data_type(), &DataType::Float64);
        let dropped = LogSchema::new(def(PiiMode::Drop));
        assert!(dropped.arrow.field_with_name("feature:u:email").is_err());
        assert!(dropped.arrow.field_with_name("status:u:email").is_ok());
        assert!(dropped.arrow.field_with_name("context:card").is_err());
        assert!(dropped.arrow.field_with_name("context:amount").is_ok());
        assert!(hashed.def.has_pii());
        assert_ne!(
            hashed.id, dropped.id,
            "a different layout is a different schema id"
        );
    }

    #[test]
    fn definitions_round_trip_through_json() {
        let d = def(PiiMode::Hash);
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"list<string>\""), "{json}");
        assert_eq!(serde_json::from_str::<SchemaDef>(&json).unwrap(), d);
    }

    #[test]
    fn columns_without_pii_read_and_write_as_before_the_flag() {
        // A schema written before context values could be pii: its columns have no `pii`.
        let old = r#"{"feature_service":"fs","definition_hash":"h",
            "entities":[{"name":"user_id","ty":"string"}],
            "context":[{"name":"amount","ty":"double"}],
            "features":[{"name":"u:tags","ty":"list<string>","pii":false}],"pii":"hash"}"#;
        let d: SchemaDef = serde_json::from_str(old).unwrap();
        assert!(!d.entities[0].pii && !d.context[0].pii);
        assert!(!d.has_pii());
        // And it writes the same JSON again, so its schema id (its files' names) is unchanged.
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, old.split_whitespace().collect::<String>());
        let mut pii = d.clone();
        pii.context[0].pii = true;
        assert!(
            serde_json::to_string(&pii)
                .unwrap()
                .contains(r#""ty":"double","pii":true"#)
        );
        assert!(pii.has_pii());
    }
}
