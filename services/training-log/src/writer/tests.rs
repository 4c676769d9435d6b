use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use arrow_array::StringArray;
use fetcher_api::FeatureType;

use super::*;
use crate::{
    DEFAULT_ROTATE_BYTES,
    record::{FeatureEntry, LoggedStatus},
    schema::{Column, FeatureColumn},
    sink::parquet::{file_name, partition_dir, write_file},
    training_set::{log_files, read_parquet},
};

#[derive(Debug, Default)]
struct Counts {
    written: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    dropped: AtomicU64,
    down: AtomicU64,
}

impl Observer for Counts {
    fn queue_depth(&self, _: usize) {}
    fn written(&self, _: &str, n: u64) {
        self.written.fetch_add(n, Ordering::SeqCst);
    }
    fn spooled(&self, n: u64, _: &'static str) {
        self.spooled.fetch_add(n, Ordering::SeqCst);
    }
    fn replayed(&self, n: u64) {
        self.replayed.fetch_add(n, Ordering::SeqCst);
    }
    fn dropped(&self, n: u64, _: &'static str, _: &str) {
        self.dropped.fetch_add(n, Ordering::SeqCst);
    }
    fn sink_down(&self, _: &str) {
        self.down.fetch_add(1, Ordering::SeqCst);
    }
    fn sink_up(&self) {}
}

fn def() -> SchemaDef {
    SchemaDef {
        feature_service: "fs".into(),
        definition_hash: "h1".into(),
        entities: vec![Column {
            name: "user_id".into(),
            ty: FeatureType::String,
            pii: false,
        }],
        context: vec![],
        features: vec![
            FeatureColumn {
                name: "u:score".into(),
                ty: FeatureType::Double,
                pii: false,
            },
            FeatureColumn {
                name: "u:email".into(),
                ty: FeatureType::String,
                pii: true,
            },
        ],
        pii: PiiMode::Hash,
        inputs: Vec::new(),
    }
}

fn record(id: &str) -> Record {
    Record {
        request_id: id.into(),
        served_at_us: 1_700_000_000_000_000,
        latency_us: 10,
        entities: vec![Cell::String(format!("user-{id}"))],
        context: vec![],
        features: vec![
            FeatureEntry {
                value: Cell::Double(0.25f64.to_bits()),
                status: LoggedStatus::Present,
                age_ms: Some(3),
            },
            FeatureEntry {
                value: Cell::String("a@example.com".into()),
                status: LoggedStatus::Present,
                age_ms: None,
            },
        ],
        inputs: Vec::new(),
    }
}

fn config(tmp: &tempfile::TempDir) -> TrainingLogConfig {
    TrainingLogConfig {
        sink: crate::SinkConfig::Parquet,
        dir: tmp.path().join("log"),
        rotate_bytes: DEFAULT_ROTATE_BYTES,
        rotate_interval: Duration::from_secs(3600),
        queue_capacity: 1024,
        spool_dir: tmp.path().join("spool"),
        spool_max_bytes: 1 << 30,
        sample: std::collections::BTreeMap::new(),
        pii: PiiMode::Hash,
        pii_salt_env: "UNUSED".into(),
    }
}

fn start(config: &TrainingLogConfig, counts: &Arc<Counts>) -> TrainingLog {
    TrainingLog::start_with_salt(
        config.clone(),
        vec![def()],
        counts.clone(),
        b"salt".to_vec(),
    )
    .unwrap()
}

fn column(batch: &arrow_array::RecordBatch, name: &str) -> Vec<Option<String>> {
    batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .iter()
        .map(|v| v.map(str::to_owned))
        .collect()
}

/// Every request id in the log's files.
fn logged_ids(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for (path, _, _) in log_files(dir, "fs").unwrap() {
        for b in read_parquet(&path).unwrap().1 {
            ids.extend(column(&b, "request_id").into_iter().flatten());
        }
    }
    ids.sort();
    ids
}

fn expected(n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    ids.sort();
    ids
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn close_writes_every_record_once_with_pii_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let counts = Arc::new(Counts::default());
    let log = start(&config, &counts);
    for i in 0..1000 {
        log.submit("fs", record(&format!("r{i:05}")));
    }
    log.submit("unknown_service", record("ignored"));
    log.close().await;
    log.close().await;
    assert_eq!(logged_ids(&config.dir), expected(1000));
    assert_eq!(counts.written.load(Ordering::SeqCst), 1000);
    assert_eq!(counts.dropped.load(Ordering::SeqCst), 0);
    let (path, date, _) = &log_files(&config.dir, "fs").unwrap()[0];
    assert_eq!(date, "2023-11-14");
    let batch = &read_parquet(path).unwrap().1[0];
    let email = column(batch, "feature:u:email");
    let expected_hash = match Cell::String("a@example.com".into()).hashed(b"salt") {
        Cell::String(h) => h,
        other => panic!("{other:?}"),
    };
    assert!(
        email
            .iter()
            .all(|e| e.as_deref() == Some(expected_hash.as_str()))
    );
    // Submitting after close spools (the next start replays it) rather than losing it.
    log.submit("fs", record("late"));
    assert_eq!(counts.spooled.load(Ordering::SeqCst), 1);
}

/// The nice value of every thread of this process named `name`, from `/proc/self/task`.
fn nice_values(name: &str) -> Vec<i32> {
    let mut values = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // After the command's closing parenthesis: state is field 3, nice field 19.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        values.push(fields[16].parse().unwrap());
    }
    values
}

#[tokio::test]
async fn the_writer_thread_runs_below_the_request_paths_priority() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let counts = Arc::new(Counts::default());
    let log = start(&config, &counts);
    log.submit("fs", record("r00000"));
    eventually("the writer's thread at its nice value", || {
        let values = nice_values("training-log");
        !values.is_empty() && values.iter().all(|&n| n == WRITER_NICENESS)
    })
    .await;
    log.close().await;
    assert_eq!(logged_ids(&config.dir), expected(1));
}

#[tokio::test]
async fn a_full_queue_spills_to_the_spool_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(&tmp);
    config.queue_capacity = 1;
    let counts = Arc::new(Counts::default());
    let log = start(&config, &counts);
    for i in 0..3000 {
        log.submit("fs", record(&format!("r{i:05}")));
    }
    log.close().await;
    assert!(
        counts.spooled.load(Ordering::SeqCst) > 0,
        "a 1-slot queue overflows"
    );
    assert_eq!(
        counts.replayed.load(Ordering::SeqCst),
        counts.spooled.load(Ordering::SeqCst)
    );
    assert_eq!(logged_ids(&config.dir), expected(3000));
    assert_eq!(Spool::open(&config.spool_dir, 1).unwrap().bytes(), 0);
}

#[tokio::test]
async fn a_failing_sink_spools_then_delivers_after_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(&tmp);
    config.rotate_interval = Duration::from_millis(50);
    let counts = Arc::new(Counts::default());
    let log = start(&config, &counts);
    // The log directory replaced by a file: every commit fails, whatever the user's rights.
    let aside = tmp.path().join("log.aside");
    std::fs::rename(&config.dir, &aside).unwrap();
    std::fs::write(&config.dir, b"in the way").unwrap();
    for i in 0..200 {
        log.submit("fs", record(&format!("r{i:05}")));
    }
    eventually("the sink to fail and records to be spooled", || {
        counts.down.load(Ordering::SeqCst) > 0 && counts.spooled.load(Ordering::SeqCst) == 200
    })
    .await;
    std::fs::remove_file(&config.dir).unwrap();
    std::fs::rename(&aside, &config.dir).unwrap();
    eventually("the spool to be replayed", || {
        counts.replayed.load(Ordering::SeqCst) == 200
    })
    .await;
    log.close().await;
    assert_eq!(logged_ids(&config.dir), expected(200));
    assert_eq!(counts.dropped.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_spool_left_by_a_crash_is_replayed_at_start_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(&tmp);
    let schema = LogSchema::new(def());
    let spool = Spool::open(&config.spool_dir, 1 << 20).unwrap();
    let records: Vec<_> = (0..10).map(|i| record(&format!("r{i:05}"))).collect();
    spool.append(&schema, &records);
    let segment = spool.seal().unwrap().remove(0);
    drop(spool);
    // A previous replay committed this segment's file, then crashed before removing it.
    let stem = segment.file_stem().unwrap().to_str().unwrap();
    write_file(
        &config.dir,
        &schema,
        "2023-11-14",
        &file_name(&schema, &format!("spool-{stem}")),
        &records,
    )
    .unwrap();
    // And left a temporary file behind.
    let partition = partition_dir(&config.dir, "fs", "2023-11-14");
    std::fs::write(partition.join(".half.parquet.tmp"), b"PAR1").unwrap();
    let counts = Arc::new(Counts::default());
    let log = start(&config, &counts);
    log.close().await;
    assert_eq!(logged_ids(&config.dir), expected(10));
    assert!(!segment.exists());
    assert!(!partition.join(".half.parquet.tmp").exists());
}

#[tokio::test]
async fn sampling_and_pii_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(&tmp);
    config.sample.insert("fs".into(), 0.25);
    config.pii = PiiMode::Drop;
    let counts = Arc::new(Counts::default());
    let log = start(&config, &counts);
    let wanted: Vec<_> = (0..4000)
        .map(|i| format!("r{i:05}"))
        .filter(|id| log.wants("fs", id))
        .collect();
    assert!((800..1200).contains(&wanted.len()), "{}", wanted.len());
    assert!(
        wanted.iter().all(|id| log.wants("fs", id)),
        "sampling is by id"
    );
    assert!(!log.wants("other", "r00000"));
    for id in &wanted {
        log.submit("fs", record(id));
    }
    log.close().await;
    let (path, _, def) = &log_files(&config.dir, "fs").unwrap()[0];
    assert_eq!(def.pii, PiiMode::Drop);
    let (schema, _) = read_parquet(path).unwrap();
    assert!(schema.field_with_name("feature:u:email").is_err());
    assert!(schema.field_with_name("status:u:email").is_ok());
    assert_eq!(logged_ids(&config.dir).len(), wanted.len());
}

/// [`def`] with two context values, `amount` and the pii `email`, and [`record`] with them.
fn def_with_context() -> SchemaDef {
    let mut def = def();
    def.context = vec![
        Column {
            name: "amount".into(),
            ty: FeatureType::Double,
            pii: false,
        },
        Column {
            name: "email".into(),
            ty: FeatureType::String,
            pii: true,
        },
    ];
    def
}

fn record_with_context(id: &str) -> Record {
    let mut r = record(id);
    r.context = vec![
        Cell::Double(12.5f64.to_bits()),
        Cell::String("b@example.com".into()),
    ];
    r
}

/// Every spooled line, as text.
fn spool_text(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn pii_context_values_are_hashed_or_dropped_as_pii_features_are() {
    use sha2::{Digest, Sha256};
    // The documented hash: SHA-256 of the salt's length (u64, little-endian), the salt, and the
    // value's tagged JSON (`{"s":"..."}` for a string), in hex.
    let mut hasher = Sha256::new();
    hasher.update(4u64.to_le_bytes());
    hasher.update(b"salt");
    hasher.update(br#"{"s":"b@example.com"}"#);
    let hash = hex::encode(hasher.finalize());

    for mode in [PiiMode::Hash, PiiMode::Drop] {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = config(&tmp);
        config.pii = mode;
        let counts = Arc::new(Counts::default());
        let log = TrainingLog::start_with_salt(
            config.clone(),
            vec![def_with_context()],
            counts.clone(),
            b"salt".to_vec(),
        )
        .unwrap();
        for i in 0..10 {
            log.submit("fs", record_with_context(&format!("r{i:05}")));
        }
        log.close().await;
        // Spooled after close: the spool never holds the value either.
        log.submit("fs", record_with_context("late"));
        assert_eq!(counts.spooled.load(Ordering::SeqCst), 1);
        let spooled = spool_text(&config.spool_dir);
        assert!(!spooled.contains("b@example.com"), "{spooled}");

        let (path, _, file_def) = &log_files(&config.dir, "fs").unwrap()[0];
        assert!(file_def.context[1].pii && !file_def.context[0].pii);
        let (schema, batches) = read_parquet(path).unwrap();
        let amounts = batches[0]
            .column_by_name("context:amount")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(
            amounts, [12.5; 10],
            "a context value not pii is logged as given"
        );
        let (_, records) = crate::training_set::read_records(path).unwrap();
        match mode {
            PiiMode::Hash => {
                assert_eq!(
                    column(&batches[0], "context:email"),
                    vec![Some(hash.clone()); 10]
                );
                assert!(spooled.contains(&hash), "{spooled}");
                assert!(
                    records
                        .iter()
                        .all(|r| r.context[1] == Cell::String(hash.clone()))
                );
            }
            PiiMode::Drop => {
                assert!(schema.field_with_name("context:email").is_err());
                assert!(records.iter().all(|r| r.context[1] == Cell::Null));
            }
        }
    }
}

#[tokio::test]
async fn a_pii_context_value_alone_needs_the_salt() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(&tmp);
    config.pii_salt_env = "TRAINING_LOG_TEST_SALT_NEVER_SET".into();
    let mut def = def_with_context();
    for f in &mut def.features {
        f.pii = false;
    }
    let counts: Arc<dyn Observer> = Arc::new(Counts::default());
    let err = TrainingLog::start(config.clone(), vec![def.clone()], counts.clone()).unwrap_err();
    assert!(
        matches!(&err, TrainingLogError::MissingSalt(v) if v == "TRAINING_LOG_TEST_SALT_NEVER_SET"),
        "{err}"
    );
    // Dropped, nothing is hashed: no salt needed.
    config.pii = PiiMode::Drop;
    let log = TrainingLog::start(config, vec![def], counts).unwrap();
    log.close().await;
}
