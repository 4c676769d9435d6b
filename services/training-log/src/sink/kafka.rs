//! The Kafka sink: one Kafka record per served vector, for gateways on more than one machine.
//!
//! # Encoding (schema version 1)
//! - key: the request id, UTF-8 (batch rows `<request_id>/<row>`);
//! - value: the protobuf `featuregateway.v1.TrainingLogRecord` (`proto/featuregateway/v1/
//!   training_log.proto`), values in the same `Value` message the gRPC responses use;
//! - timestamp: when the vector was served (milliseconds, Kafka's precision; `served_at` in the
//!   value keeps microseconds);
//! - headers: `content-type` = [`CONTENT_TYPE`], `schema-version` = `1`.
//!
//! # Partitions
//! By default a record goes to the partition the Java client's default partitioner picks for its
//! key (murmur2 of the key, modulo the topic's partition count), so every record of one request
//! lands in one partition whichever client reads or re-produces it; `partition = N` pins all
//! records to one partition instead.
//!
//! # Delivery
//! Records are produced with `acks = all` (rskafka always asks for every in-sync replica), and a
//! batch counts as delivered only once the broker has acknowledged it. A batch that fails (broker
//! down, timeout, unknown topic) is spooled by the writer and the connection dropped; the writer
//! tries again a second later (the sinks' retry interval) with a fresh connection and replays the
//! spool. The guarantee is at-least-once: a replay interrupted by a crash, or a batch whose
//! acknowledgement was lost after the broker wrote it, is produced again, so consumers may see a
//! `request_id` twice and should de-duplicate on it; nothing acknowledged is ever lost by the
//! gateway, and a clean shutdown delivers (or spools, if the broker is down) every record.

pub use gateway_config::training_log::{
    DEFAULT_BATCH_RECORDS, DEFAULT_CLIENT_ID, DEFAULT_DELIVERY_TIMEOUT, DEFAULT_LINGER,
    KafkaCompression, KafkaConfig,
};
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use proto::v1;
use rskafka::{
    BackoffConfig,
    chrono::{TimeZone, Utc},
    client::{
        Client, ClientBuilder,
        partition::{Compression, PartitionClient, UnknownTopicHandling},
    },
};

use crate::{
    PiiMode,
    record::{Cell, FeatureEntry, LoggedStatus, Record},
    schema::{FeatureColumn, LogSchema},
    sink::{Batch, Sink, TICK},
    spool::SpooledRecords,
};

/// The version of the message layout (the `schema_version` field and header).
pub(crate) const SCHEMA_VERSION: u32 = 1;
/// The `content-type` header of every record.
pub const CONTENT_TYPE: &str =
    "application/x-protobuf; messageType=featuregateway.v1.TrainingLogRecord";
/// Uncompressed bytes of records sent in one produce request, below the broker's default
/// `message.max.bytes` (1 MiB).
const MAX_REQUEST_BYTES: usize = 768 * 1024;

// ---------------------------------------------------------------------------------------------
// Encoding

/// The message of `record`, of the feature service `schema`: the served features, and the
/// derived features' inputs logged beside them ([`Record::inputs`]) as the Parquet log's
/// `input:` columns hold them.
pub(crate) fn message(schema: &LogSchema, record: &Record) -> v1::TrainingLogRecord {
    let def = &schema.def;
    let logged = |cols: &[FeatureColumn], entries: &[FeatureEntry]| {
        cols.iter()
            .zip(entries)
            .map(|(f, e)| v1::LoggedFeature {
                name: f.name.clone(),
                value: (!f.pii || def.pii == PiiMode::Hash).then(|| wire_value(&e.value)),
                status: wire_status(e.status) as i32,
                age_ms: e.age_ms,
            })
            .collect()
    };
    let named = |cols: &[crate::schema::Column], cells: &[Cell]| {
        cols.iter()
            .zip(cells)
            .map(|(c, cell)| v1::NamedValue {
                name: c.name.clone(),
                value: (!c.pii || def.pii == PiiMode::Hash).then(|| wire_value(cell)),
            })
            .collect()
    };
    v1::TrainingLogRecord {
        schema_version: SCHEMA_VERSION,
        request_id: record.request_id.clone(),
        served_at: Some(prost_types::Timestamp {
            seconds: record.served_at_us.div_euclid(1_000_000),
            nanos: (record.served_at_us.rem_euclid(1_000_000) * 1000) as i32,
        }),
        feature_service: def.feature_service.clone(),
        definition_hash: def.definition_hash.clone(),
        latency_us: record.latency_us,
        entities: named(&def.entities, &record.entities),
        context: named(&def.context, &record.context),
        features: logged(&def.features, &record.features),
        inputs: logged(&def.inputs, &record.inputs),
    }
}

/// The encoded value of a Kafka record.
pub(crate) fn encode(schema: &LogSchema, record: &Record) -> Vec<u8> {
    prost::Message::encode_to_vec(&message(schema, record))
}

/// Decodes a Kafka record's value back into the [`Record`] it was made from (a value left out,
/// a dropped pii feature or context value, reads as null).
pub fn decode(bytes: &[u8]) -> Result<(v1::TrainingLogRecord, Record), String> {
    let msg: v1::TrainingLogRecord = prost::Message::decode(bytes).map_err(|e| e.to_string())?;
    if msg.schema_version != SCHEMA_VERSION {
        return Err(format!(
            "schema version {} is not {SCHEMA_VERSION}",
            msg.schema_version
        ));
    }
    let cell = |v: &Option<v1::Value>| {
        v.clone()
            .map_or(Cell::Null, |v| Cell::from(fetcher_api::Value::from(v)))
    };
    let served_at_us = msg
        .served_at
        .as_ref()
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
    let entries = |logged: &[v1::LoggedFeature]| {
        logged
            .iter()
            .map(|f| {
                Ok(FeatureEntry {
                    value: cell(&f.value),
                    status: logged_status(f.status)?,
                    age_ms: f.age_ms,
                })
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let record = Record {
        request_id: msg.request_id.clone(),
        served_at_us,
        latency_us: msg.latency_us,
        entities: msg.entities.iter().map(|n| cell(&n.value)).collect(),
        context: msg.context.iter().map(|n| cell(&n.value)).collect(),
        features: entries(&msg.features)?,
        inputs: entries(&msg.inputs)?,
    };
    Ok((msg, record))
}

fn wire_value(cell: &Cell) -> v1::Value {
    v1::Value::from(fetcher_api::Value::from(cell.clone()))
}

fn wire_status(status: LoggedStatus) -> v1::FeatureStatus {
    match status {
        LoggedStatus::Present => v1::FeatureStatus::Present,
        LoggedStatus::NotFound => v1::FeatureStatus::NotFound,
        LoggedStatus::NullValue => v1::FeatureStatus::NullValue,
        LoggedStatus::OutsideMaxAge => v1::FeatureStatus::OutsideMaxAge,
        LoggedStatus::TimedOut => v1::FeatureStatus::TimedOut,
        LoggedStatus::SourceError => v1::FeatureStatus::SourceError,
        LoggedStatus::Stale => v1::FeatureStatus::Stale,
    }
}

fn logged_status(status: i32) -> Result<LoggedStatus, String> {
    Ok(match v1::FeatureStatus::try_from(status) {
        Ok(v1::FeatureStatus::Present) => LoggedStatus::Present,
        Ok(v1::FeatureStatus::NotFound) => LoggedStatus::NotFound,
        Ok(v1::FeatureStatus::NullValue) => LoggedStatus::NullValue,
        Ok(v1::FeatureStatus::OutsideMaxAge) => LoggedStatus::OutsideMaxAge,
        Ok(v1::FeatureStatus::TimedOut) => LoggedStatus::TimedOut,
        Ok(v1::FeatureStatus::SourceError) => LoggedStatus::SourceError,
        Ok(v1::FeatureStatus::Stale) => LoggedStatus::Stale,
        _ => return Err(format!("{status} is not a feature status")),
    })
}

/// The Kafka record of `record`.
pub(crate) fn kafka_record(schema: &LogSchema, record: &Record) -> rskafka::record::Record {
    let headers = BTreeMap::from([
        ("content-type".to_owned(), CONTENT_TYPE.as_bytes().to_vec()),
        (
            "schema-version".to_owned(),
            SCHEMA_VERSION.to_string().into_bytes(),
        ),
    ]);
    rskafka::record::Record {
        key: Some(record.request_id.as_bytes().to_vec()),
        value: Some(encode(schema, record)),
        headers,
        // Whole milliseconds: Kafka's precision, and rskafka computes a batch's timestamp deltas
        // by truncating the difference, which sub-millisecond parts would skew by one.
        timestamp: Utc
            .timestamp_millis_opt(record.served_at_us.div_euclid(1000))
            .single()
            .unwrap_or_default(),
    }
}

/// The partition the Java client's default partitioner chooses for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

// ---------------------------------------------------------------------------------------------
// The sink

/// Records waiting to be produced, by schema.
#[derive(Debug, Default)]
pub(crate) struct KafkaBatch {
    groups: BTreeMap<String, (Arc<LogSchema>, Vec<Record>)>,
    len: usize,
}

impl Batch for KafkaBatch {
    fn groups(&self) -> Vec<(&LogSchema, &[Record])> {
        self.groups
            .values()
            .map(|(s, r)| (&**s, r.as_slice()))
            .collect()
    }
}

/// The Kafka sink: batches records and produces them, waiting for the acknowledgement.
#[derive(Debug)]
pub(crate) struct KafkaSink {
    config: KafkaConfig,
    compression: Compression,
    connection: Option<Connection>,
    pending: KafkaBatch,
    opened: Option<tokio::time::Instant>,
}

struct Connection {
    /// Kept for the connection's lifetime: the partition clients share its broker pool.
    _client: Client,
    /// Partition clients, by partition id (only the pinned one when `partition` is set).
    partitions: BTreeMap<i32, Arc<PartitionClient>>,
    /// The topic's partition count.
    count: i32,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("partitions", &self.count)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub(crate) fn new(config: KafkaConfig) -> KafkaSink {
        let compression = match config.compression {
            KafkaCompression::None => Compression::NoCompression,
            KafkaCompression::Snappy => Compression::Snappy,
        };
        KafkaSink {
            config,
            compression,
            connection: None,
            pending: KafkaBatch::default(),
            opened: None,
        }
    }

    async fn connect(&self) -> Result<Connection, String> {
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(self.config.delivery_timeout),
        };
        let client = ClientBuilder::new(self.config.brokers.clone())
            .client_id(self.config.client_id.clone())
            .backoff_config(backoff)
            .build()
            .await
            .map_err(|e| format!("kafka {}: {e}", self.config.brokers.join(",")))?;
        let topics = client.list_topics().await.map_err(|e| e.to_string())?;
        let Some(topic) = topics.into_iter().find(|t| t.name == self.config.topic) else {
            return Err(format!(
                "kafka topic `{}` does not exist on {}",
                self.config.topic,
                self.config.brokers.join(",")
            ));
        };
        let count = topic.partitions.len() as i32;
        let wanted: Vec<i32> = match self.config.partition {
            Some(p) if topic.partitions.contains(&p) => vec![p],
            Some(p) => {
                return Err(format!(
                    "kafka topic `{}` has no partition {p} (it has {count})",
                    self.config.topic
                ));
            }
            None => topic.partitions.iter().copied().collect(),
        };
        let mut partitions = BTreeMap::new();
        for p in wanted {
            let pc = client
                .partition_client(self.config.topic.clone(), p, UnknownTopicHandling::Error)
                .await
                .map_err(|e| format!("kafka {}/{p}: {e}", self.config.topic))?;
            partitions.insert(p, Arc::new(pc));
        }
        Ok(Connection {
            _client: client,
            partitions,
            count,
        })
    }

    /// Produces `records` and waits for every acknowledgement; on any failure the connection
    /// is dropped (the next try reconnects) and the error returned.
    async fn produce<'a>(
        &mut self,
        records: impl Iterator<Item = (&'a LogSchema, &'a Record)>,
    ) -> Result<(), String> {
        let timeout = self.config.delivery_timeout;
        let result = tokio::time::timeout(timeout, async {
            if self.connection.is_none() {
                self.connection = Some(self.connect().await?);
            }
            let Some(conn) = &self.connection else {
                return Err("no kafka connection".to_owned());
            };
            // Requests per partition, each under the request size bound.
            let mut requests: BTreeMap<i32, Vec<Vec<rskafka::record::Record>>> = BTreeMap::new();
            let mut sizes: BTreeMap<i32, usize> = BTreeMap::new();
            for (schema, record) in records {
                let r = kafka_record(schema, record);
                let p = self
                    .config
                    .partition
                    .unwrap_or_else(|| partition_for_key(record.request_id.as_bytes(), conn.count));
                let size = r.approximate_size() + 64;
                let chunks = requests.entry(p).or_default();
                let used = sizes.entry(p).or_default();
                if chunks.is_empty() || *used + size > MAX_REQUEST_BYTES {
                    chunks.push(Vec::new());
                    *used = 0;
                }
                *used += size;
                if let Some(last) = chunks.last_mut() {
                    last.push(r);
                }
            }
            let compression = self.compression;
            let sends = requests.into_iter().map(|(p, chunks)| {
                let client = conn.partitions.get(&p).cloned();
                async move {
                    let Some(client) = client else {
                        return Err(format!("no client for partition {p}"));
                    };
                    for chunk in chunks {
                        client
                            .produce(chunk, compression)
                            .await
                            .map_err(|e| format!("kafka produce to partition {p}: {e}"))?;
                    }
                    Ok(())
                }
            });
            futures::future::try_join_all(sends).await.map(|_| ())
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "kafka did not acknowledge within {}",
                humantime::format_duration(timeout)
            ))
        });
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    fn take(&mut self) -> Option<KafkaBatch> {
        self.opened = None;
        (self.pending.len > 0).then(|| std::mem::take(&mut self.pending))
    }
}

impl Sink for KafkaSink {
    type Batch = KafkaBatch;

    fn tick(&self) -> Duration {
        self.config.linger.min(TICK)
    }

    fn push(&mut self, schema: &Arc<LogSchema>, record: Record) -> Option<KafkaBatch> {
        let key = format!("{}@{}", schema.def.feature_service, schema.id);
        self.pending
            .groups
            .entry(key)
            .or_insert_with(|| (schema.clone(), Vec::new()))
            .1
            .push(record);
        self.pending.len += 1;
        self.opened.get_or_insert_with(tokio::time::Instant::now);
        if self.pending.len >= self.config.batch_records {
            self.take()
        } else {
            None
        }
    }

    fn take_due(&mut self, all: bool) -> Vec<KafkaBatch> {
        let due = all
            || self
                .opened
                .is_some_and(|t| t.elapsed() >= self.config.linger);
        if due {
            self.take().into_iter().collect()
        } else {
            Vec::new()
        }
    }

    async fn deliver(&mut self, batch: &KafkaBatch) -> Result<(), String> {
        let records = batch
            .groups
            .values()
            .flat_map(|(s, rs)| rs.iter().map(move |r| (&**s, r)));
        self.produce(records).await
    }

    async fn replay(
        &mut self,
        _segment: &str,
        records: SpooledRecords,
        written: &mut dyn FnMut(&str, u64),
    ) -> Result<(), String> {
        for chunk in records.chunks(self.config.batch_records.max(1)) {
            self.produce(chunk.iter().map(|(s, r)| (&**s, r))).await?;
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for (s, _) in chunk {
                *counts.entry(&s.def.feature_service).or_default() += 1;
            }
            for (fs, n) in counts {
                written(fs, n);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::FeatureType;

    use super::*;
    use crate::{
        schema::{Column, FeatureColumn, SchemaDef},
        sink::tests::schema,
    };

    fn record(features: Vec<Cell>) -> Record {
        Record {
            request_id: "req-1/0".into(),
            served_at_us: 1_700_000_000_123_456,
            latency_us: 812,
            entities: vec![Cell::String("u_1".into()), Cell::Int64(42)],
            context: vec![Cell::Double((0.1f64 + 0.2).to_bits()), Cell::Null],
            features: features
                .into_iter()
                .enumerate()
                .map(|(i, value)| FeatureEntry {
                    status: if value == Cell::Null {
                        LoggedStatus::NotFound
                    } else {
                        LoggedStatus::Present
                    },
                    age_ms: (i % 2 == 0).then_some(i as i64 * 10),
                    value,
                })
                .collect(),
            inputs: Vec::new(),
        }
    }

    #[test]
    fn every_type_round_trips_bit_for_bit() {
        let schema = schema();
        let mut r = record(vec![
            Cell::Int64(-3),
            Cell::Double(f64::MIN_POSITIVE.to_bits() / 3),
            Cell::String("x".into()),
            Cell::Bool(true),
            Cell::Bytes(vec![0, 255]),
            Cell::Timestamp(1_700_000_000_123_456_789),
            Cell::Int64List(vec![1, -2]),
            Cell::DoubleList(vec![(-0.0f64).to_bits(), 1e-310f64.to_bits()]),
            Cell::StringList(vec!["a".into(), String::new()]),
        ]);
        r.entities.truncate(1);
        r.context.truncate(1);
        let bytes = encode(&schema, &r);
        let (msg, back) = decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(msg.schema_version, 1);
        assert_eq!(msg.feature_service, "fs/1");
        assert_eq!(msg.definition_hash, "abc");
        assert_eq!(msg.entities[0].name, "user_id");
        assert_eq!(msg.context[0].name, "amount");
        assert_eq!(msg.features[2].name, "v:string");
        assert_eq!(msg.features[0].status, v1::FeatureStatus::Present as i32);
        let served = msg.served_at.unwrap();
        assert_eq!((served.seconds, served.nanos), (1_700_000_000, 123_456_000));
    }

    #[test]
    fn nulls_statuses_and_dropped_pii_values() {
        let f = |name: &str, pii| FeatureColumn {
            name: name.into(),
            ty: FeatureType::String,
            pii,
        };
        let def = |pii| SchemaDef {
            feature_service: "fs".into(),
            definition_hash: "h".into(),
            entities: vec![
                Column {
                    name: "user_id".into(),
                    ty: FeatureType::String,
                    pii: false,
                },
                Column {
                    name: "n".into(),
                    ty: FeatureType::Int64,
                    pii: false,
                },
            ],
            context: vec![
                Column {
                    name: "amount".into(),
                    ty: FeatureType::Double,
                    pii: false,
                },
                Column {
                    name: "channel".into(),
                    ty: FeatureType::String,
                    pii: true,
                },
            ],
            features: vec![f("v:email", true), f("v:name", false)],
            pii,
            inputs: Vec::new(),
        };
        let mut r = record(vec![Cell::String("5f3a".into()), Cell::Null]);
        r.context[1] = Cell::String("9c0d".into());
        // Hash mode: the (already hashed) values are sent.
        let (msg, back) = decode(&encode(&LogSchema::new(def(PiiMode::Hash)), &r)).unwrap();
        assert_eq!(back, r);
        assert!(msg.features[0].value.is_some());
        // An explicit null is a null value, not an unset one.
        assert!(matches!(
            msg.features[1].value,
            Some(v1::Value {
                kind: Some(v1::value::Kind::NullValue(_))
            })
        ));
        assert_eq!(msg.features[1].status, v1::FeatureStatus::NotFound as i32);
        assert_eq!(msg.context[1].name, "channel");
        assert!(msg.context[1].value.is_some());
        // Drop mode: the pii values are left out, a feature's status and age stay.
        let (msg, back) = decode(&encode(&LogSchema::new(def(PiiMode::Drop)), &r)).unwrap();
        assert_eq!(msg.features[0].value, None);
        assert_eq!(msg.context[1].name, "channel");
        assert_eq!(msg.context[1].value, None);
        assert_eq!(back.context[1], Cell::Null);
        assert_eq!(
            back.context[0], r.context[0],
            "a context value not pii is sent"
        );
        assert_eq!(back.features[0].value, Cell::Null);
        assert_eq!(back.features[0].status, LoggedStatus::Present);
        assert_eq!(back.features[0].age_ms, Some(0));
        // Another schema version is refused.
        let mut other = message(&LogSchema::new(def(PiiMode::Hash)), &r);
        other.schema_version = 2;
        assert!(decode(&prost::Message::encode_to_vec(&other)).is_err());
    }

    #[test]
    fn derived_inputs_travel_with_their_names_statuses_and_ages() {
        let input = |name: &str, ty, pii| FeatureColumn {
            name: name.into(),
            ty,
            pii,
        };
        let with_inputs = |pii| {
            let mut def = schema().def.clone();
            def.inputs = vec![
                input("user_profile:avg_amount_30d", FeatureType::Double, false),
                input("user_profile:email", FeatureType::String, true),
                input("mcc_risk:fraud_rate", FeatureType::Double, false),
            ];
            def.pii = pii;
            LogSchema::new(def)
        };
        let mut r = record(vec![]);
        r.entities.truncate(1);
        r.context.truncate(1);
        r.inputs = vec![
            FeatureEntry {
                value: Cell::Double(33.3f64.to_bits()),
                status: LoggedStatus::Present,
                age_ms: Some(3_600_000),
            },
            FeatureEntry {
                value: Cell::String("5f3a".into()),
                status: LoggedStatus::Stale,
                age_ms: None,
            },
            FeatureEntry {
                value: Cell::Null,
                status: LoggedStatus::TimedOut,
                age_ms: None,
            },
        ];
        let (msg, back) = decode(&encode(&with_inputs(PiiMode::Hash), &r)).unwrap();
        assert_eq!(back, r, "the inputs come back bit for bit");
        let names: Vec<&str> = msg.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "user_profile:avg_amount_30d",
                "user_profile:email",
                "mcc_risk:fraud_rate"
            ]
        );
        assert_eq!(msg.inputs[1].status, v1::FeatureStatus::Stale as i32);
        assert_eq!(msg.inputs[2].status, v1::FeatureStatus::TimedOut as i32);
        assert_eq!(msg.inputs[0].age_ms, Some(3_600_000));
        // Drop mode: a pii input's value is left out, as a pii feature's is.
        let (msg, back) = decode(&encode(&with_inputs(PiiMode::Drop), &r)).unwrap();
        assert_eq!(msg.inputs[1].value, None);
        assert_eq!(back.inputs[1].value, Cell::Null);
        assert_eq!(back.inputs[1].status, LoggedStatus::Stale);
        assert_eq!(back.inputs[0], r.inputs[0]);
        // A feature service without such inputs sends none.
        r.inputs.clear();
        assert!(message(&schema(), &r).inputs.is_empty());
    }

    #[test]
    fn kafka_records_are_keyed_by_request_id_with_headers() {
        let schema = schema();
        let mut r = record(vec![]);
        r.entities.truncate(1);
        r.context.truncate(1);
        let k = kafka_record(&schema, &r);
        assert_eq!(k.key.as_deref(), Some(&b"req-1/0"[..]));
        assert_eq!(k.timestamp.timestamp_millis(), r.served_at_us / 1000);
        assert_eq!(k.headers["schema-version"], b"1");
        assert_eq!(k.headers["content-type"], CONTENT_TYPE.as_bytes());
        assert_eq!(decode(k.value.as_deref().unwrap()).unwrap().1, r);
    }

    #[test]
    fn partitions_match_the_java_default_partitioner() {
        // Values of org.apache.kafka.common.utils.Utils.murmur2 (its own unit test vectors).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        for key in ["r-1", "r-2", "x"] {
            let p = partition_for_key(key.as_bytes(), 6);
            assert!((0..6).contains(&p));
            assert_eq!(p, partition_for_key(key.as_bytes(), 6));
        }
        assert_eq!(partition_for_key(b"anything", 1), 0);
        // Utils.toPositive(Utils.murmur2(key)) % 3, from the Java client.
        assert_eq!(partition_for_key(b"single-17", 3), 1);
        assert_eq!(partition_for_key(b"batch-3/4", 3), 0);
        assert_eq!(partition_for_key(b"a-little-bit-long-string", 3), 2);
    }
}
