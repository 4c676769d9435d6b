//! `[training_log]` and `[training_log.kafka]`: where every served vector is logged.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{feature_service::FeatureServiceConfig, problems::Problems, problems::known};

/// How features marked `pii = true` appear in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiMode {
    /// The value column holds the hex SHA-256 of the salt and the value (a string column): rows
    /// can still be grouped by the value, but the value is not in the log.
    #[default]
    Hash,
    /// The value column is left out (status and age stay).
    Drop,
}

/// Where the log's records go.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum SinkConfig {
    /// Parquet files under [`TrainingLogConfig::dir`].
    #[default]
    Parquet,
    /// A Kafka topic.
    Kafka(KafkaConfig),
}

/// The validated `[training_log]` section (see the gateway's configuration reference).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingLogConfig {
    /// The sink.
    pub sink: SinkConfig,
    /// Root directory of the Parquet files (the Parquet sink's).
    pub dir: PathBuf,
    /// A file is committed once its records reach about this many bytes (uncompressed estimate;
    /// the file on disk is smaller). Also bounds the memory an open file holds.
    pub rotate_bytes: u64,
    /// A file is committed at the latest this long after its first record.
    pub rotate_interval: Duration,
    /// Records the in-memory queue holds before new ones spill to the spool.
    pub queue_capacity: usize,
    /// Directory of the spool's segments.
    pub spool_dir: PathBuf,
    /// Most bytes the spool may hold; records beyond it are dropped (and counted).
    pub spool_max_bytes: u64,
    /// Fraction of requests logged, per feature service (default 1.0, all).
    pub sample: BTreeMap<String, f64>,
    /// How `pii` features are logged.
    pub pii: PiiMode,
    /// The environment variable holding the salt for [`PiiMode::Hash`].
    pub pii_salt_env: String,
}

/// Default of [`TrainingLogConfig::rotate_bytes`]: 16 MiB. A file's records are held in
/// memory until it is committed, so this bounds the writer's memory too.
pub const DEFAULT_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// Default of [`TrainingLogConfig::rotate_interval`].
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(60);

/// Default of [`TrainingLogConfig::queue_capacity`]: about a second at 16,000 vectors/s; a
/// longer burst spills to the spool.
pub const DEFAULT_QUEUE_CAPACITY: usize = 16_384;

/// Default of [`TrainingLogConfig::spool_max_bytes`]: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;

/// Default of [`TrainingLogConfig::pii_salt_env`].
pub const DEFAULT_PII_SALT_ENV: &str = "FEATURE_GATEWAY_PII_SALT";

/// Default of [`KafkaConfig::batch_records`].
pub const DEFAULT_BATCH_RECORDS: usize = 1000;

/// Default of [`KafkaConfig::linger`].
pub const DEFAULT_LINGER: Duration = Duration::from_millis(20);

/// Default of [`KafkaConfig::delivery_timeout`].
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`KafkaConfig::client_id`].
pub const DEFAULT_CLIENT_ID: &str = "feature-gateway";

/// The validated `[training_log.kafka]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// The topic; it must exist (the gateway does not create it).
    pub topic: String,
    /// All records to this partition; `None`: by key, as the Java client's default partitioner.
    pub partition: Option<i32>,
    /// A batch is produced once it holds this many records.
    pub batch_records: usize,
    /// A batch is produced at the latest this long after its first record.
    pub linger: Duration,
    /// Longest a produce (connection and retries included) may take before the batch is
    /// spooled and the broker counted as down.
    pub delivery_timeout: Duration,
    /// Snappy-compress batches.
    pub compression: KafkaCompression,
    /// The client id the broker sees.
    pub client_id: String,
}

/// Compression of produced batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KafkaCompression {
    /// None.
    None,
    /// Snappy.
    #[default]
    Snappy,
}

/// `[training_log]`: log every served vector to Parquet files or a Kafka topic (see the
/// training-log crate's docs for the record schema and the Kafka message). Relative paths are
/// resolved against the configuration file's directory.
#[derive(Debug, Deserialize)]
pub struct RawTrainingLog {
    /// Where records go: `"parquet"` (files under `dir`) or `"kafka"` (`[training_log.kafka]`).
    /// Default `"parquet"`.
    #[serde(default)]
    pub sink: Option<String>,
    /// Directory of the Parquet files, partitioned `feature_service=NAME/date=YYYY-MM-DD/`.
    /// Required by the Parquet sink; with Kafka it only places the default spool directory.
    #[serde(default)]
    pub dir: Option<String>,
    /// Commit a file once its records reach about this many bytes (uncompressed estimate).
    /// Default 16 MiB.
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
    /// Commit a file at the latest this long after its first record, e.g. `"1m"`. Default 1m.
    #[serde(default)]
    pub rotate_interval: Option<String>,
    /// Records held in memory for the writer; beyond it they spill to the spool. Default 16384.
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Directory of the on-disk spool (overflow and sink outages). Default `DIR.spool`.
    #[serde(default)]
    pub spool_dir: Option<String>,
    /// Most bytes the spool may hold; records beyond it are dropped and counted. Default 1 GiB.
    #[serde(default)]
    pub spool_max_bytes: Option<u64>,
    /// Fraction of requests logged (0 to 1) by feature service. Default 1 (all).
    #[serde(default)]
    pub sample: BTreeMap<String, f64>,
    /// How features marked `pii = true` are logged: `"hash"` (salted SHA-256, hex) or `"drop"`
    /// (no value column). Default `"hash"`.
    #[serde(default)]
    pub pii: Option<String>,
    /// The environment variable holding the salt of `pii = "hash"`. Default
    /// `FEATURE_GATEWAY_PII_SALT`. The gateway refuses to start when pii features are hashed
    /// and it is unset.
    #[serde(default)]
    pub pii_salt_env: Option<String>,
    /// The Kafka sink's settings (`sink = "kafka"`).
    #[serde(default)]
    pub kafka: Option<RawKafka>,
}

/// `[training_log.kafka]`: the topic the Kafka sink produces to.
#[derive(Debug, Deserialize)]
pub struct RawKafka {
    /// Bootstrap brokers, `["host:port", ...]`.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// The topic; it must exist (the gateway does not create topics).
    #[serde(default)]
    pub topic: Option<String>,
    /// Produce every record to this partition. Default: by key (the request id), as the Java
    /// client's default partitioner does, over all of the topic's partitions.
    #[serde(default)]
    pub partition: Option<i32>,
    /// Produce a batch once it holds this many records. Default 1000.
    #[serde(default)]
    pub batch_records: Option<usize>,
    /// Produce a batch at the latest this long after its first record, e.g. `"20ms"`.
    /// Default 20ms.
    #[serde(default)]
    pub linger: Option<String>,
    /// Longest a produce may take (connecting and retries included) before its records are
    /// spooled and the broker counted as down, e.g. `"10s"`. Default 10s.
    #[serde(default)]
    pub delivery_timeout: Option<String>,
    /// `"snappy"` or `"none"`. Default `"snappy"`.
    #[serde(default)]
    pub compression: Option<String>,
    /// The client id the brokers see. Default `feature-gateway`.
    #[serde(default)]
    pub client_id: Option<String>,
}

/// Validates `[training_log]`; a bad field is reported and replaced by its default.
pub(crate) fn validate_training_log(
    raw: &RawTrainingLog,
    base_dir: &Path,
    feature_services: &BTreeMap<String, FeatureServiceConfig>,
    problems: &mut Problems,
) -> TrainingLogConfig {
    const AT: &str = "training_log";
    let sink = match raw.sink.as_deref() {
        None | Some("parquet") => SinkConfig::Parquet,
        Some("kafka") => match &raw.kafka {
            Some(k) => SinkConfig::Kafka(validate_kafka(k, problems)),
            None => {
                problems.add(
                    &[AT, "sink"],
                    "sink = \"kafka\" needs a [training_log.kafka] section",
                );
                SinkConfig::Parquet
            }
        },
        Some(other) => {
            problems.add(
                &[AT, "sink"],
                format!("`{other}` is not a sink: \"parquet\" or \"kafka\""),
            );
            SinkConfig::Parquet
        }
    };
    if raw.kafka.is_some() && !matches!(sink, SinkConfig::Kafka(_)) {
        problems.add(
            &[AT, "kafka"],
            "[training_log.kafka] is only read with sink = \"kafka\"",
        );
    }
    match raw.dir.as_deref() {
        Some("") => problems.add(&[AT, "dir"], "must name a directory"),
        None if sink == SinkConfig::Parquet => problems.add(
            &[AT],
            "the parquet sink needs `dir`, the directory of its files",
        ),
        None if raw.spool_dir.is_none() => problems.add(
            &[AT],
            "the kafka sink needs `spool_dir` (or `dir`, beside which the spool goes)",
        ),
        _ => {}
    }
    let dir = raw
        .dir
        .as_ref()
        .map_or_else(PathBuf::new, |d| base_dir.join(d));
    let positive =
        |value: Option<u64>, field: &str, default: u64, problems: &mut Problems| match value {
            Some(0) => {
                problems.add(&[AT, field], "must be at least 1");
                default
            }
            Some(v) => v,
            None => default,
        };
    let rotate_bytes = positive(
        raw.rotate_bytes,
        "rotate_bytes",
        DEFAULT_ROTATE_BYTES,
        problems,
    );
    let spool_max_bytes = positive(
        raw.spool_max_bytes,
        "spool_max_bytes",
        DEFAULT_SPOOL_MAX_BYTES,
        problems,
    );
    let queue_capacity = positive(
        raw.queue_capacity.map(|q| q as u64),
        "queue_capacity",
        DEFAULT_QUEUE_CAPACITY as u64,
        problems,
    ) as usize;
    let rotate_interval = problems.duration(
        &[AT, "rotate_interval"],
        raw.rotate_interval.as_deref(),
        DEFAULT_ROTATE_INTERVAL,
        false,
    );
    for (name, rate) in &raw.sample {
        if !feature_services.contains_key(name) {
            problems.add(
                &[AT, "sample", name],
                format!(
                    "unknown feature service `{name}`{}",
                    known(feature_services.keys())
                ),
            );
        }
        if !(0.0..=1.0).contains(rate) {
            problems.add(
                &[AT, "sample", name],
                format!("a sampling rate is between 0 and 1, not {rate}"),
            );
        }
    }
    let pii = match raw.pii.as_deref() {
        None | Some("hash") => PiiMode::Hash,
        Some("drop") => PiiMode::Drop,
        Some(other) => {
            problems.add(
                &[AT, "pii"],
                format!("`{other}` is not a pii mode: \"hash\" or \"drop\""),
            );
            PiiMode::Hash
        }
    };
    let spool_dir = match &raw.spool_dir {
        Some(s) => base_dir.join(s),
        // Beside the log, not in it: dataset readers scan the log directory.
        None => {
            let mut name = dir.file_name().unwrap_or_default().to_os_string();
            name.push(".spool");
            dir.with_file_name(name)
        }
    };
    TrainingLogConfig {
        sink,
        dir,
        rotate_bytes,
        rotate_interval,
        queue_capacity,
        spool_dir,
        spool_max_bytes,
        sample: raw.sample.clone(),
        pii,
        pii_salt_env: raw
            .pii_salt_env
            .clone()
            .unwrap_or_else(|| DEFAULT_PII_SALT_ENV.to_owned()),
    }
}

/// Validates `[training_log.kafka]`; a bad field is reported and replaced by its default.
fn validate_kafka(raw: &RawKafka, problems: &mut Problems) -> KafkaConfig {
    const AT: &str = "training_log";
    const K: &str = "kafka";
    if raw.brokers.is_empty() {
        problems.add(
            &[AT, K],
            "`brokers` must list at least one broker, \"host:port\"",
        );
    }
    for b in &raw.brokers {
        let ok = b
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            problems.add(&[AT, K, "brokers"], format!("`{b}` is not host:port"));
        }
    }
    let topic = raw.topic.clone().unwrap_or_default();
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if raw.topic.is_none() {
        problems.add(&[AT, K], "`topic` must name the topic records go to");
    } else if topic.is_empty()
        || topic.len() > 249
        || topic == "."
        || topic == ".."
        || !topic.chars().all(legal)
    {
        problems.add(
            &[AT, K, "topic"],
            format!("`{topic}` is not a Kafka topic name (1 to 249 of [A-Za-z0-9._-])"),
        );
    }
    if raw.partition.is_some_and(|p| p < 0) {
        problems.add(&[AT, K, "partition"], "must be 0 or more");
    }
    let batch_records = match raw.batch_records {
        Some(0) => {
            problems.add(&[AT, K, "batch_records"], "must be at least 1");
            DEFAULT_BATCH_RECORDS
        }
        Some(n) => n,
        None => DEFAULT_BATCH_RECORDS,
    };
    let linger = problems.duration(
        &[AT, K, "linger"],
        raw.linger.as_deref(),
        DEFAULT_LINGER,
        true,
    );
    let delivery_timeout = problems.duration(
        &[AT, K, "delivery_timeout"],
        raw.delivery_timeout.as_deref(),
        DEFAULT_DELIVERY_TIMEOUT,
        false,
    );
    let compression = match raw.compression.as_deref() {
        None | Some("snappy") => KafkaCompression::Snappy,
        Some("none") => KafkaCompression::None,
        Some(other) => {
            problems.add(
                &[AT, K, "compression"],
                format!("`{other}` is not a compression: \"snappy\" or \"none\""),
            );
            KafkaCompression::Snappy
        }
    };
    KafkaConfig {
        brokers: raw.brokers.clone(),
        topic,
        partition: raw.partition,
        batch_records,
        linger,
        delivery_timeout,
        compression,
        client_id: raw
            .client_id
            .clone()
            .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{Config, ConfigErrors, load_str};

    const BASE: &str = r#"
[entities.user_id]
type = "string"

[sources.tables]
kind = "static"

[views.user]
source = "tables"
entities = ["user_id"]
path = "users.csv"

[views.user.features]
email = { type = "string", pii = true }
score = { type = "double" }

[feature_services.fs]
features = ["user:*"]
"#;

    fn load(extra: &str) -> Result<Config, ConfigErrors> {
        load_str(
            &format!("{BASE}{extra}"),
            "c.toml",
            Path::new("/etc/fg"),
            &fetcher_builtin::registry(),
        )
    }

    #[test]
    fn training_log_is_off_when_absent_and_defaults_apply() {
        let config = load("").unwrap();
        assert!(config.training_log.is_none());
        assert!(config.views["user"].features["email"].pii);
        assert!(!config.views["user"].features["score"].pii);
        let config = load("[training_log]\ndir = \"log\"\n").unwrap();
        let t = config.training_log.unwrap();
        assert_eq!(t.dir, Path::new("/etc/fg/log"));
        assert_eq!(t.spool_dir, Path::new("/etc/fg/log.spool"));
        assert_eq!(t.rotate_bytes, DEFAULT_ROTATE_BYTES);
        assert_eq!(t.pii, PiiMode::Hash);
        assert_eq!(t.pii_salt_env, "FEATURE_GATEWAY_PII_SALT");
    }

    #[test]
    fn every_bad_training_log_field_is_reported_with_its_path() {
        let err = load(
            r#"
[training_log]
dir = "log"
rotate_interval = "soon"
queue_capacity = 0
pii = "blur"
colour = "red"

[training_log.sample]
fs = 1.5
nope = 0.5
"#,
        )
        .unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "training_log.rotate_interval",
            "training_log.queue_capacity",
            "training_log.pii",
            "training_log.colour",
            "training_log.sample.fs",
            "training_log.sample.nope",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert!(err.errors.iter().all(|e| e.position.is_some()), "{err}");
        let err = load("[views.user.features.age]\ntype = \"int64\"\npii = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn the_kafka_sink_is_configured_with_defaults() {
        let config = load(
            "[training_log]\nsink = \"kafka\"\nspool_dir = \"spool\"\n\
             [training_log.kafka]\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"fg.log\"\n",
        )
        .unwrap();
        let t = config.training_log.unwrap();
        assert_eq!(t.spool_dir, Path::new("/etc/fg/spool"));
        let SinkConfig::Kafka(k) = &t.sink else {
            panic!("{:?}", t.sink)
        };
        assert_eq!(k.brokers, ["127.0.0.1:9092"]);
        assert_eq!(k.topic, "fg.log");
        assert_eq!(k.partition, None);
        assert_eq!(k.batch_records, DEFAULT_BATCH_RECORDS);
        assert_eq!(k.linger, DEFAULT_LINGER);
        assert_eq!(k.delivery_timeout, DEFAULT_DELIVERY_TIMEOUT);
        assert_eq!(k.compression, KafkaCompression::Snappy);
        assert_eq!(k.client_id, "feature-gateway");
        // Parquet stays the default sink.
        let t = load("[training_log]\ndir = \"log\"\n")
            .unwrap()
            .training_log
            .unwrap();
        assert_eq!(t.sink, SinkConfig::Parquet);
    }

    #[test]
    fn every_bad_kafka_field_is_reported_with_its_path() {
        let err = load(
            r#"
[training_log]
sink = "kafka"

[training_log.kafka]
brokers = ["nope", "h:1"]
topic = "bad topic"
partition = -1
batch_records = 0
linger = "soon"
delivery_timeout = "0s"
compression = "lz4"
acks = 1
"#,
        )
        .unwrap_err();
        let paths: Vec<_> = err.errors.iter().map(|e| e.path.as_str()).collect();
        for expected in [
            "training_log",
            "training_log.kafka.brokers",
            "training_log.kafka.topic",
            "training_log.kafka.partition",
            "training_log.kafka.batch_records",
            "training_log.kafka.linger",
            "training_log.kafka.delivery_timeout",
            "training_log.kafka.compression",
            "training_log.kafka.acks",
        ] {
            assert!(paths.contains(&expected), "{expected} not in {paths:?}");
        }
        assert_eq!(
            paths
                .iter()
                .filter(|p| **p == "training_log.kafka.brokers")
                .count(),
            1,
            "h:1 is fine: {err}"
        );
        assert!(err.errors.iter().all(|e| e.position.is_some()), "{err}");
        assert!(err.to_string().contains("spool_dir"), "{err}");

        for (text, path, message) in [
            (
                "sink = \"s3\"\ndir = \"log\"\n",
                "training_log.sink",
                "not a sink",
            ),
            (
                "sink = \"kafka\"\ndir = \"log\"\n",
                "training_log.sink",
                "needs a [training_log.kafka]",
            ),
            (
                "dir = \"log\"\n[training_log.kafka]\nbrokers = [\"h:1\"]\ntopic = \"t\"\n",
                "training_log.kafka",
                "only read with sink",
            ),
            (
                "sink = \"kafka\"\ndir = \"log\"\n[training_log.kafka]\n",
                "training_log.kafka",
                "`topic`",
            ),
            ("rotate_bytes = 5\n", "training_log", "needs `dir`"),
        ] {
            let err = load(&format!("[training_log]\n{text}")).unwrap_err();
            assert!(
                err.errors
                    .iter()
                    .any(|e| e.path == path && e.message.contains(message)),
                "{path}: {message} not in {err}"
            );
        }
    }
}
