//! [`TrainingLog`]: the handle serving submits records to, and the writer thread behind it.
//!
//! # Contract
//! [`TrainingLog::submit`] never blocks on the sink: it applies the PII policy and `try_send`s
//! into a bounded queue; when the queue is full (or the log is closing) the record is appended to
//! the spool instead (a buffered append to a local file). One writer thread, with its own small
//! runtime so file and network I/O never occupy the serving runtime, takes the queued records
//! every couple of milliseconds ([`GATHER`]: a submit never wakes it) and hands them to the
//! configured `Sink`: the Parquet sink (`sink::parquet`) batches them into one open file per
//! (schema, date) and commits it by rename when it reaches `rotate_bytes` or `rotate_interval`;
//! the Kafka sink ([`crate::kafka`]) batches them into produce requests and waits for the
//! broker's acknowledgement.
//!
//! # Failure
//! A delivery that fails (disk full, directory gone or read-only, broker down or slow) spools
//! that batch's records and marks the sink down: records then go straight to the spool until a
//! retry (after `sink::RETRY_INTERVAL`, one second) replays the spool successfully. Whatever the
//! spool cannot keep is reported to the [`Observer`] as dropped, with the reason.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use crate::{
    PiiMode, SinkConfig, TrainingLogConfig, TrainingLogError,
    record::{Cell, Record},
    schema::{LogSchema, SchemaDef},
    sink::{
        Batch, RETRY_INTERVAL, Sink, TICK,
        kafka::KafkaSink,
        parquet::{ParquetSink, sweep_temporaries},
    },
    spool::{Spool, read_segment},
};

/// Most records taken from the queue at once.
const RECV_BATCH: usize = 512;

/// How long the writer lets records gather in the queue after taking some, before it looks
/// again. A writer that waits on the queue itself is woken by every record: a futex wake on the
/// serving thread that submits it and a context switch on the writer, per request, several
/// times the cost of the push. Gathering makes a submit a plain push onto the queue (the writer
/// sleeps on a timer, not on the queue), and the writer takes records tens at a time; a record
/// reaches the sink at most this much later.
const GATHER: Duration = Duration::from_millis(2);

/// Queues of fewer slots than this are drained as records arrive, without gathering: a queue
/// that small could fill while the writer sleeps, spooling records it would have held.
const GATHER_MIN_QUEUE: usize = 1024;

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
        let needs_salt = config.pii == PiiMode::Hash && schemas.iter().any(SchemaDef::has_pii);
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
        if config.sink == SinkConfig::Parquet {
            std::fs::create_dir_all(&config.dir).map_err(io(&config.dir))?;
            sweep_temporaries(&config.dir);
        }
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
        let spool_dir = config.spool_dir.clone();
        let kafka = match &config.sink {
            SinkConfig::Parquet => None,
            SinkConfig::Kafka(k) => Some(KafkaSink::new(k.clone())),
        };
        let parquet = kafka.is_none().then(|| ParquetSink::new(&config));
        let (writer_spool, writer_observer) = (spool.clone(), observer.clone());
        std::thread::Builder::new()
            .name("training-log".into())
            .spawn(move || {
                lower_priority();
                // Its own runtime, with I/O for the Kafka client: the sink never occupies the
                // serving runtime.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let parts = (writer_spool, spool_dir, writer_observer);
                        match (parquet, kafka) {
                            (Some(p), _) => rt.block_on(Writer::new(p, parts).run(rx, close_rx)),
                            (None, Some(k)) => rt.block_on(Writer::new(k, parts).run(rx, close_rx)),
                            (None, None) => {}
                        }
                    }
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
    /// the sink. The values of `pii` features and context values are hashed or dropped here,
    /// before the queue, so neither a sink nor the spool ever holds them.
    pub fn submit(&self, feature_service: &str, mut record: Record) {
        let Some(service) = self.inner.services.get(feature_service) else {
            return;
        };
        let def = &service.schema.def;
        let protect = |cell: &mut Cell| {
            *cell = match def.pii {
                PiiMode::Hash => cell.hashed(&self.inner.salt),
                PiiMode::Drop => Cell::Null,
            };
        };
        let entries = record.features.iter_mut().chain(record.inputs.iter_mut());
        for (entry, f) in entries.zip(def.features.iter().chain(&def.inputs)) {
            if f.pii {
                protect(&mut entry.value);
            }
        }
        for (cell, c) in record.context.iter_mut().zip(&def.context) {
            if c.pii {
                protect(cell);
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
struct Writer<S> {
    sink: S,
    /// While set and in the future, the sink is not tried.
    down_until: Option<Instant>,
    is_down: bool,
    spool: Arc<Spool>,
    spool_dir: std::path::PathBuf,
    observer: Arc<dyn Observer>,
}

impl<S: Sink> Writer<S> {
    fn new(
        sink: S,
        (spool, spool_dir, observer): (Arc<Spool>, std::path::PathBuf, Arc<dyn Observer>),
    ) -> Writer<S> {
        Writer {
            sink,
            down_until: None,
            is_down: false,
            spool,
            spool_dir,
            observer,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Envelope>, mut close: oneshot::Receiver<()>) {
        self.replay().await;
        let mut tick = tokio::time::interval(self.sink.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::with_capacity(RECV_BATCH);
        let mut last_replay = Instant::now();
        let gather = rx.max_capacity() >= GATHER_MIN_QUEUE;
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
                        self.accept(envelope).await;
                    }
                    if gather && n < RECV_BATCH {
                        tokio::select! {
                            biased;
                            _ = &mut close => break,
                            _ = tokio::time::sleep(GATHER) => {}
                        }
                    }
                }
                _ = tick.tick() => {
                    self.rotate(false).await;
                    if self.sink_may_be_tried()
                        && self.spool.bytes() > 0
                        && last_replay.elapsed() >= TICK
                    {
                        last_replay = Instant::now();
                        self.replay().await;
                    }
                }
            }
            self.observer.queue_depth(rx.len());
        }
        // Refuse new records (they are spooled by `submit`), then take every queued one.
        rx.close();
        while let Some(envelope) = rx.recv().await {
            self.accept(envelope).await;
        }
        self.observer.queue_depth(0);
        self.down_until = None;
        self.rotate(true).await;
        if self.spool.bytes() > 0 && !self.is_down {
            self.replay().await;
        }
        tracing::info!("training log flushed");
    }

    fn sink_may_be_tried(&self) -> bool {
        self.down_until.is_none_or(|t| Instant::now() >= t)
    }

    async fn accept(&mut self, envelope: Envelope) {
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
        if let Some(batch) = self.sink.push(&envelope.schema, envelope.record) {
            self.deliver(batch).await;
        }
    }

    /// Delivers the batches due (all of them if `all`).
    async fn rotate(&mut self, all: bool) {
        for batch in self.sink.take_due(all) {
            self.deliver(batch).await;
        }
    }

    /// Delivers `batch`, or spools it when the sink is down or fails.
    async fn deliver(&mut self, batch: S::Batch) {
        let result = if self.sink_may_be_tried() {
            self.sink.deliver(&batch).await
        } else {
            Err(String::new())
        };
        let reason = match result {
            Ok(()) => {
                self.sink_ok();
                for (schema, records) in batch.groups() {
                    self.observer
                        .written(&schema.def.feature_service, records.len() as u64);
                }
                return;
            }
            Err(e) if e.is_empty() => "sink_down",
            Err(e) => {
                self.sink_failed(&e);
                "sink_error"
            }
        };
        for (schema, records) in batch.groups() {
            spool_records(&self.spool, &*self.observer, schema, records, reason);
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
        tracing::debug!("training log sink failed: {error}");
        self.down_until = Some(Instant::now() + RETRY_INTERVAL);
        if !self.is_down {
            self.is_down = true;
            self.observer.sink_down(error);
        }
    }

    /// Replays the spool's segments, oldest first, stopping at the first sink failure; a
    /// segment is removed once the sink has delivered all of it.
    async fn replay(&mut self) {
        let segments = match self.spool.seal() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(dir = %self.spool_dir.display(), "cannot list the training log spool: {e}");
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
            let mut replayed = 0;
            let observer = self.observer.clone();
            let result = self
                .sink
                .replay(&stem, records, &mut |feature_service, n| {
                    observer.written(feature_service, n);
                    replayed += n;
                })
                .await;
            if replayed > 0 {
                self.sink_ok();
                self.observer.replayed(replayed);
            }
            if let Err(e) = result {
                self.sink_failed(&e);
                return;
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

/// The writer thread's nice value, below the request path's priority (a gateway runs at 0):
/// when both want a core, the kernel runs a request's work first, so encoding a row group does
/// not hold up an answer; the writer's share of a contended core (about a tenth of a core's
/// weight against each busy request thread) is still more than it uses at saturation.
pub const WRITER_NICENESS: i32 = 10;

/// Sets the calling thread's nice value to [`WRITER_NICENESS`] (on Linux a nice value belongs
/// to a thread). A failure leaves it as it was: the log is only less polite.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(thread), WRITER_NICENESS) {
        tracing::debug!("training log writer keeps its priority: {e}");
    }
}
