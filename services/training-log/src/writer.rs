//! [`TrainingLog`]: the handle serving submits records to, and the writer thread behind it.
//!
//! # Contract
//! [`TrainingLog::submit`] never blocks on the sink: it applies the PII policy and `try_send`s
//! into a bounded queue; when the queue is full (or the log is closing) the record is appended to
//! the spool instead (a buffered append to a local file). One writer thread, with its own small
//! runtime so file I/O never occupies the serving runtime, batches records into one open file per
//! (schema, date) and commits it by rename when it reaches `rotate_bytes` or `rotate_interval`.
//!
//! # Failure
//! A commit that fails (disk full, directory gone or read-only) spools that file's records and
//! marks the sink down: records then go straight to the spool until a retry ([`RETRY_INTERVAL`])
//! replays the spool successfully. Whatever the spool cannot keep is reported to the
//! [`Observer`] as dropped, with the reason.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    PiiMode, TrainingLogConfig, TrainingLogError,
    record::{Cell, Record, utc_date},
    schema::{LogSchema, SchemaDef},
    sink,
    spool::{Spool, read_segment},
};

/// How long after a sink failure the writer tries the sink again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the writer checks for files due for rotation and for a spool to replay.
const TICK: Duration = Duration::from_millis(200);
/// Most records taken from the queue at once.
const RECV_BATCH: usize = 512;

/// Receives the log's events; the gateway turns them into metrics and log lines.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// Records waiting in the in-memory queue.
    fn queue_depth(&self, depth: usize);
    /// `records` of `feature_service` were committed to a Parquet file (replays included).
    fn written(&self, feature_service: &str, records: u64);
    /// `records` were appended to the spool, because of `reason` (`queue_full`, `sink_error`,
    /// `sink_down`, `closing`).
    fn spooled(&self, records: u64, reason: &'static str);
    /// `records` were replayed from the spool into the sink.
    fn replayed(&self, records: u64);
    /// `records` could not be kept: `reason` is `spool_full`, `spool_error` or `spool_corrupt`.
    fn dropped(&self, records: u64, reason: &'static str, error: &str);
    /// The sink failed; records go to the spool until it recovers.
    fn sink_down(&self, error: &str);
    /// The sink works again.
    fn sink_up(&self);
}

/// The training log of one gateway: cheap to clone, shared by every request.
#[derive(Clone, Debug)]
pub struct TrainingLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Envelope>,
    services: HashMap<String, Service>,
    spool: Arc<Spool>,
    observer: Arc<dyn Observer>,
    salt: Vec<u8>,
    close: Mutex<Option<oneshot::Sender<()>>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

#[derive(Debug)]
struct Service {
    schema: Arc<LogSchema>,
    /// Requests whose id hashes below this are logged.
    threshold: u64,
}

#[derive(Debug)]
struct Envelope {
    schema: Arc<LogSchema>,
    record: Record,
}

impl TrainingLog {
    /// Starts the log for the feature services `schemas` (their `pii` mode is overridden by the
    /// configuration's) and its writer thread, which first replays what a previous run spooled.
    pub fn start(
        config: TrainingLogConfig,
        schemas: Vec<SchemaDef>,
        observer: Arc<dyn Observer>,
    ) -> Result<TrainingLog, TrainingLogError> {
        let needs_salt =
            config.pii == PiiMode::Hash && schemas.iter().any(|s| s.features.iter().any(|f| f.pii));
        let salt = if needs_salt {
            match std::env::var(&config.pii_salt_env) {
                Ok(s) if !s.is_empty() => s.into_bytes(),
                _ => return Err(TrainingLogError::MissingSalt(config.pii_salt_env.clone())),
            }
        } else {
            Vec::new()
        };
        Self::start_with_salt(config, schemas, observer, salt)
    }

    /// [`TrainingLog::start`] with the PII salt given rather than read from the environment.
    pub fn start_with_salt(
        config: TrainingLogConfig,
        schemas: Vec<SchemaDef>,
        observer: Arc<dyn Observer>,
        salt: Vec<u8>,
    ) -> Result<TrainingLog, TrainingLogError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TrainingLogError::Io { path, source }
        };
        std::fs::create_dir_all(&config.dir).map_err(io(&config.dir))?;
        sink::sweep_temporaries(&config.dir);
        let spool = Arc::new(
            Spool::open(&config.spool_dir, config.spool_max_bytes)
                .map_err(io(&config.spool_dir))?,
        );
        let services = schemas
            .into_iter()
            .map(|mut def| {
                def.pii = config.pii;
                let rate = config
                    .sample
                    .get(&def.feature_service)
                    .copied()
                    .unwrap_or(1.0)
                    .clamp(0.0, 1.0);
                let threshold = if rate >= 1.0 {
                    u64::MAX
                } else {
                    (rate * u64::MAX as f64) as u64
                };
                (
                    def.feature_service.clone(),
                    Service {
                        schema: Arc::new(LogSchema::new(def)),
                        threshold,
                    },
                )
            })
            .collect();
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let writer = Writer {
            open: BTreeMap::new(),
            down_until: None,
            is_down: false,
            spool: spool.clone(),
            observer: observer.clone(),
            config,
        };
        std::thread::Builder::new()
            .name("training-log".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt.block_on(writer.run(rx, close_rx)),
                    Err(e) => tracing::error!("training log writer cannot start its runtime: {e}"),
                }
                let _ = done_tx.send(());
            })
            .map_err(TrainingLogError::Thread)?;
        Ok(TrainingLog {
            inner: Arc::new(Inner {
                tx,
                services,
                spool,
                observer,
                salt,
                close: Mutex::new(Some(close_tx)),
                done: tokio::sync::Mutex::new(Some(done_rx)),
            }),
        })
    }

    /// Whether the request `request_id` of `feature_service` is logged (the service is known
    /// and the request is in its sample). Deterministic by id, so every row of a batch, and a
    /// retried request, get the same answer.
    pub fn wants(&self, feature_service: &str, request_id: &str) -> bool {
        self.inner
            .services
            .get(feature_service)
            .is_some_and(|s| s.threshold == u64::MAX || sample_hash(request_id) < s.threshold)
    }

    /// Logs one vector of `feature_service` (call [`TrainingLog::wants`] first). Never blocks on
    /// the sink.
    pub fn submit(&self, feature_service: &str, mut record: Record) {
        let Some(service) = self.inner.services.get(feature_service) else {
            return;
        };
        let def = &service.schema.def;
        for (entry, f) in record.features.iter_mut().zip(&def.features) {
            if f.pii {
                entry.value = match def.pii {
                    PiiMode::Hash => entry.value.hashed(&self.inner.salt),
                    PiiMode::Drop => Cell::Null,
                };
            }
        }
        let envelope = Envelope {
            schema: service.schema.clone(),
            record,
        };
        let (envelope, reason) = match self.inner.tx.try_send(envelope) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(e)) => (e, "queue_full"),
            Err(mpsc::error::TrySendError::Closed(e)) => (e, "closing"),
        };
        spool_records(
            &self.inner.spool,
            &*self.inner.observer,
            &envelope.schema,
            std::slice::from_ref(&envelope.record),
            reason,
        );
    }

    /// Flushes everything: the queue is drained, every open file committed, and the spool
    /// replayed if the sink works (else it stays for the next start). Records submitted from now
    /// on are spooled. Idempotent.
    pub async fn close(&self) {
        if let Some(close) = self
            .inner
            .close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = close.send(());
        }
        if let Some(done) = self.inner.done.lock().await.take() {
            let _ = done.await;
        }
    }
}

/// A hash of a request id for sampling: the first 8 bytes of its SHA-256, stable across
/// versions and replicas, so every gateway samples the same requests.
fn sample_hash(request_id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(request_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

fn spool_records(
    spool: &Spool,
    observer: &dyn Observer,
    schema: &LogSchema,
    records: &[Record],
    reason: &'static str,
) {
    let out = spool.append(schema, records);
    if out.spooled > 0 {
        observer.spooled(out.spooled, reason);
    }
    if out.dropped > 0 {
        let (why, error) = out.reason.unwrap_or(("spool_error", String::new()));
        observer.dropped(out.dropped, why, &error);
    }
}

/// The writer thread's state.
struct Writer {
    config: TrainingLogConfig,
    /// Open files by (schema key, date).
    open: BTreeMap<(String, String), OpenFile>,
    /// While set and in the future, the sink is not tried.
    down_until: Option<Instant>,
    is_down: bool,
    spool: Arc<Spool>,
    observer: Arc<dyn Observer>,
}

struct OpenFile {
    schema: Arc<LogSchema>,
    date: String,
    records: Vec<Record>,
    bytes: usize,
    opened: Instant,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Envelope>, mut close: oneshot::Receiver<()>) {
        self.replay();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(RECV_BATCH);
        loop {
            tokio::select! {
                biased;
                // A dropped handle closes the log too.
                _ = &mut close => break,
                n = rx.recv_many(&mut buf, RECV_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for envelope in buf.drain(..) {
                        self.accept(envelope);
                    }
                }
                _ = tick.tick() => {
                    self.rotate(false);
                    if self.sink_may_be_tried() && self.spool.bytes() > 0 {
                        self.replay();
                    }
                }
            }
            self.observer.queue_depth(rx.len());
        }
        // Refuse new records (they are spooled by `submit`), then take every queued one.
        rx.close();
        while let Some(envelope) = rx.recv().await {
            self.accept(envelope);
        }
        self.observer.queue_depth(0);
        self.down_until = None;
        self.rotate(true);
        if self.spool.bytes() > 0 && !self.is_down {
            self.replay();
        }
        tracing::info!("training log flushed");
    }

    fn sink_may_be_tried(&self) -> bool {
        self.down_until.is_none_or(|t| Instant::now() >= t)
    }

    fn accept(&mut self, envelope: Envelope) {
        if !self.sink_may_be_tried() {
            spool_records(
                &self.spool,
                &*self.observer,
                &envelope.schema,
                std::slice::from_ref(&envelope.record),
                "sink_down",
            );
            return;
        }
        let date = utc_date(envelope.record.served_at_us);
        let key = (
            format!(
                "{}@{}",
                envelope.schema.def.feature_service, envelope.schema.id
            ),
            date,
        );
        let file = self.open.entry(key.clone()).or_insert_with(|| OpenFile {
            schema: envelope.schema.clone(),
            date: key.1.clone(),
            records: Vec::new(),
            bytes: 0,
            opened: Instant::now(),
        });
        file.bytes += envelope.record.size();
        file.records.push(envelope.record);
        if file.bytes as u64 >= self.config.rotate_bytes {
            self.commit(&key);
        }
    }

    /// Commits the files due (all of them if `all`).
    fn rotate(&mut self, all: bool) {
        let due: Vec<_> = self
            .open
            .iter()
            .filter(|(_, f)| all || f.opened.elapsed() >= self.config.rotate_interval)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.commit(&key);
        }
    }

    fn commit(&mut self, key: &(String, String)) {
        let Some(file) = self.open.remove(key) else {
            return;
        };
        if !self.sink_may_be_tried() {
            spool_records(
                &self.spool,
                &*self.observer,
                &file.schema,
                &file.records,
                "sink_down",
            );
            return;
        }
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let name = sink::file_name(&file.schema, &format!("{now_ms}-{}", &unique[..12]));
        match sink::write_file(
            &self.config.dir,
            &file.schema,
            &file.date,
            &name,
            &file.records,
        ) {
            Ok(path) => {
                tracing::debug!(file = %path.display(), records = file.records.len(), "training log file committed");
                self.sink_ok();
                self.observer
                    .written(&file.schema.def.feature_service, file.records.len() as u64);
            }
            Err(e) => {
                self.sink_failed(&e);
                spool_records(
                    &self.spool,
                    &*self.observer,
                    &file.schema,
                    &file.records,
                    "sink_error",
                );
            }
        }
    }

    fn sink_ok(&mut self) {
        self.down_until = None;
        if self.is_down {
            self.is_down = false;
            self.observer.sink_up();
        }
    }

    fn sink_failed(&mut self, error: &str) {
        self.down_until = Some(Instant::now() + RETRY_INTERVAL);
        if !self.is_down {
            self.is_down = true;
            self.observer.sink_down(error);
        }
    }

    /// Replays the spool's segments, oldest first, stopping at the first sink failure. Each
    /// (schema, date) group of a segment becomes one file named after the segment, and one that
    /// exists already is not written again: a replay interrupted by a crash never duplicates.
    fn replay(&mut self) {
        let segments = match self.spool.seal() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %self.config.spool_dir.display(), "cannot list the training log spool: {e}");
                return;
            }
        };
        for segment in segments {
            let (records, bad) = match read_segment(&segment) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(segment = %segment.display(), "cannot read a training log spool segment: {e}");
                    return;
                }
            };
            if bad > 0 {
                self.observer.dropped(
                    bad,
                    "spool_corrupt",
                    &format!("{}: unreadable lines", segment.display()),
                );
            }
            let stem = segment
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("segment")
                .to_owned();
            let mut groups: BTreeMap<(String, String), (Arc<LogSchema>, Vec<Record>)> =
                BTreeMap::new();
            for (schema, record) in records {
                let key = (schema.id.clone(), utc_date(record.served_at_us));
                groups
                    .entry(key)
                    .or_insert_with(|| (schema, Vec::new()))
                    .1
                    .push(record);
            }
            let mut replayed = 0;
            for ((_, date), (schema, records)) in &groups {
                let name = sink::file_name(schema, &format!("spool-{stem}"));
                let target =
                    sink::partition_dir(&self.config.dir, &schema.def.feature_service, date)
                        .join(&name);
                if target.exists() {
                    continue;
                }
                match sink::write_file(&self.config.dir, schema, date, &name, records) {
                    Ok(_) => {
                        self.sink_ok();
                        self.observer
                            .written(&schema.def.feature_service, records.len() as u64);
                        replayed += records.len() as u64;
                    }
                    Err(e) => {
                        self.sink_failed(&e);
                        return;
                    }
                }
            }
            if replayed > 0 {
                self.observer.replayed(replayed);
            }
            if let Err(e) = self.spool.remove(&segment) {
                tracing::warn!(segment = %segment.display(), "cannot remove a replayed spool segment: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
