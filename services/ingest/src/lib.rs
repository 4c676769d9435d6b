//! `feature-gateway ingest`: consumes the Kafka topic of a `stream` source and keeps its views'
//! tiles, one task per partition.
//!
//! # Partitions
//! Each process consumes the partitions it is given (`--partitions 0-3`; all of the topic's by
//! default). Several processes split a topic by giving each a disjoint set (a StatefulSet's
//! ordinal, say): there is no consumer-group rebalancing, because consumed offsets are not
//! committed to Kafka but to the tile store, beside the tiles they produced, which is what makes
//! a restart exact. A partition consumed by two processes at once stays correct (the per-entity
//! offsets below make the second application a no-op) but wastes work.
//!
//! # Batches
//! Each partition's fetches run ahead on a task of their own, up to 4 of them (each up to
//! `fetch_max_bytes`), so the next records are on their way while a batch is applied. A batch is
//! what has arrived by the time the previous one is committed, up to 4 fetches: one fetch when
//! ingest keeps up with the topic, several when it is behind, where an entity seen in several
//! fetches is then read and written once rather than once per fetch.
//!
//! # Exactly once in effect
//! A batch is applied view by view: per entity, its tiles and the
//! offset of the last event of this partition applied to it are written together, by one
//! compare-and-set ([`fetcher_stream::store::CAS_WRITE`]). Then the partition's position (next
//! offset, and each view's event-time watermark) is committed. After a crash anywhere in between,
//! the batch is read again from the committed position: entities that had it applied recognise
//! every event by its offset and skip it, the others apply it. Nothing is lost or counted twice.
//!
//! Each partition's task keeps the entity states it wrote ([`StateCache`], bounded), each at the
//! version it wrote: an entity seen again is not read again, and the compare-and-set of its next
//! write is what checks that nobody else wrote it meanwhile (if someone did, it is read afresh
//! and the events applied again to what is stored).
//!
//! # Late and bad events
//! Per partition and view, the watermark is the newest event time seen. An event older than the
//! watermark minus `allowed_lateness` is counted as late and dropped; any other is applied to its
//! tile, however out of order. The watermark is committed with the position, so a replay makes the
//! same decisions. An event a view cannot read (not JSON, a missing or mistyped key or field, an
//! absurd time) is counted by reason and skipped, and copied to `dead_letter_topic` when set
//! (headers `reason`, `view`, `source-partition`, `source-offset`; a replay may copy it twice).
//!
//! # Failures
//! Kafka or the store being unreachable stops progress, never correctness: the partition's task
//! retries with a backoff (up to 5 s) from its last committed position, counting the errors.

pub mod backfill;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aggregation::{Millis, event};
use fetcher_stream::{
    Positioned, Stream,
    config::{DEFAULT_FETCH_MAX_BYTES, DEFAULT_FETCH_MAX_WAIT, KafkaConfig},
    store::offsets_key,
    writer::{self, StateCache},
};
use rskafka::{
    chrono::{TimeZone, Utc},
    client::{
        Client, ClientBuilder,
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::{Record, RecordAndOffset},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// What ingest is asked to do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The partitions to consume; all of the topic's when `None`.
    pub partitions: Option<Vec<i32>>,
    /// Stop once every partition has reached the end it had when ingest started.
    pub until_caught_up: bool,
}

/// Counters for a progress line, shared with the caller.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records read from Kafka.
    pub records: AtomicU64,
    /// Events applied to tiles (per view).
    pub applied: AtomicU64,
    /// Events dropped as late (per view).
    pub late: AtomicU64,
    /// Events that could not be read (per view).
    pub bad: AtomicU64,
    /// Events skipped as already applied (a replay).
    pub replayed: AtomicU64,
    /// Records behind the end of the assigned partitions, summed.
    pub lag: AtomicI64,
    /// Errors of Kafka or the store (each retried).
    pub errors: AtomicU64,
}

/// Why ingest could not run.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("source `{0}` has no `kafka` options: its events come through PushEvents only")]
    NoKafka(String),
    #[error("kafka: {0}")]
    Kafka(String),
    #[error("partition {0} is not a partition of topic `{1}` (it has {2})")]
    NoSuchPartition(i32, String, usize),
}

/// A partition's committed position, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The next offset to read.
    pub next: i64,
    /// Per view, the newest event time seen (ms).
    #[serde(default)]
    pub watermarks: BTreeMap<String, Millis>,
}

/// The longest wait between retries of a failing Kafka or store call.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Timeout of one store call made by ingest (a batch's writes are many such calls at once).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Tiles of entity states one process keeps between batches (split evenly between its
/// partitions' tasks and the views): an entity written again while held is not read again.
const STATE_CACHE_TILES: u64 = 1_000_000;

/// Consumes `stream`'s topic until `stop` turns true (or, with `until_caught_up`, until caught
/// up). Returns when every partition's task has committed its last batch.
pub async fn run(
    stream: Stream,
    options: Options,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let kafka = stream
        .source
        .kafka
        .clone()
        .ok_or_else(|| IngestError::NoKafka(stream.name.clone()))?;
    let client = connect(&kafka, &mut stop).await?;
    let Some(client) = client else {
        return Ok(());
    };
    let topics = client
        .list_topics()
        .await
        .map_err(|e| IngestError::Kafka(e.to_string()))?;
    let mut all: Vec<i32> = topics
        .iter()
        .find(|t| t.name == kafka.topic)
        .map(|t| t.partitions.iter().copied().collect())
        .unwrap_or_default();
    all.sort_unstable();
    if all.is_empty() {
        return Err(IngestError::Kafka(format!(
            "topic `{}` does not exist or has no partitions",
            kafka.topic
        )));
    }
    let assigned = match &options.partitions {
        None => all.clone(),
        Some(list) => {
            for p in list {
                if !all.contains(p) {
                    return Err(IngestError::NoSuchPartition(
                        *p,
                        kafka.topic.clone(),
                        all.len(),
                    ));
                }
            }
            list.clone()
        }
    };
    let dead_letter = match &kafka.dead_letter_topic {
        None => None,
        Some(topic) => Some(
            client
                .partition_client(topic.clone(), 0, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| IngestError::Kafka(format!("dead_letter_topic `{topic}`: {e}")))?,
        ),
    };
    let shared = Arc::new(Shared {
        stream,
        kafka,
        options,
        progress,
        dead_letter,
    });
    tracing::info!(source = %shared.stream.name, topic = %shared.kafka.topic, partitions = ?assigned, "ingesting");
    let cache_tiles =
        STATE_CACHE_TILES / (assigned.len() * shared.stream.views.len()).max(1) as u64;
    let mut tasks = Vec::new();
    for partition in assigned {
        let client = client
            .partition_client(
                shared.kafka.topic.clone(),
                partition,
                UnknownTopicHandling::Retry,
            )
            .await
            .map_err(|e| IngestError::Kafka(e.to_string()))?;
        tasks.push(tokio::spawn(consume(
            shared.clone(),
            partition,
            client,
            cache_tiles,
            stop.clone(),
        )));
    }
    for task in tasks {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "a partition's task failed");
        }
    }
    Ok(())
}

/// Connects to the brokers, retrying until `stop`; `None` when stopped first.
async fn connect(
    kafka: &KafkaConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Client>, IngestError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match ClientBuilder::new(kafka.brokers.clone())
            .client_id("feature-gateway-ingest")
            .build()
            .await
        {
            Ok(client) => return Ok(Some(client)),
            Err(e) => tracing::warn!(error = %e, "cannot reach the Kafka brokers; retrying"),
        }
        if sleep_or_stop(stop, backoff).await {
            return Ok(None);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleeps `d`; true when `stop` turned true meanwhile.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

struct Shared {
    stream: Stream,
    kafka: KafkaConfig,
    options: Options,
    progress: Arc<Progress>,
    dead_letter: Option<PartitionClient>,
}

impl Shared {
    fn position_key(&self, partition: i32) -> String {
        offsets_key(
            &self.stream.source.key_prefix,
            &self.stream.name,
            &self.kafka.topic,
            partition,
        )
    }

    fn error(&self, stage: &'static str) {
        self.progress.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("feature_gateway_ingest_errors_total", "source" => self.stream.name.clone(), "stage" => stage).increment(1);
    }
}

/// Retries `call` with a backoff until it succeeds; `None` when stopped first.
async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    stage: &'static str,
    mut call: impl FnMut() -> F,
) -> Option<T> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(v) => return Some(v),
            Err(e) => {
                shared.error(stage);
                tracing::warn!(source = %shared.stream.name, stage, error = %e, "failed; retrying");
            }
        }
        if sleep_or_stop(stop, backoff).await {
            return None;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One partition: read a batch, apply it, commit the position, until stopped. The entity states
/// written are kept (up to `cache_tiles` tiles per view) for the next batches.
async fn consume(
    shared: Arc<Shared>,
    partition: i32,
    client: PartitionClient,
    cache_tiles: u64,
    mut stop: watch::Receiver<bool>,
) {
    let source = shared.stream.name.clone();
    let mut caches: Vec<StateCache> = shared
        .stream
        .views
        .iter()
        .map(|_| StateCache::new(cache_tiles))
        .collect();
    let label = partition.to_string();
    let key = shared.position_key(partition);
    let store = shared.stream.store.clone();
    let Some(stored) = retry(&shared, &mut stop, "store", || {
        store.get(&key, STORE_TIMEOUT)
    })
    .await
    else {
        return;
    };
    let mut position = match stored.as_deref().map(serde_json::from_str::<Position>) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            tracing::error!(source = %source, partition, error = %e, "the committed position does not parse; starting from the earliest offset");
            Position::default()
        }
        None => {
            let Some(earliest) = retry(&shared, &mut stop, "kafka", || {
                client.get_offset(OffsetAt::Earliest)
            })
            .await
            else {
                return;
            };
            Position {
                next: earliest,
                watermarks: BTreeMap::new(),
            }
        }
    };
    let end = if shared.options.until_caught_up {
        match retry(&shared, &mut stop, "kafka", || {
            client.get_offset(OffsetAt::Latest)
        })
        .await
        {
            Some(end) => Some(end),
            None => return,
        }
    } else {
        None
    };
    tracing::info!(source = %source, partition, next = position.next, "consuming");
    let max_bytes = i32::try_from(
        shared
            .kafka
            .fetch_max_bytes
            .unwrap_or(DEFAULT_FETCH_MAX_BYTES),
    )
    .unwrap_or(i32::MAX);
    let max_wait = shared
        .kafka
        .fetch_max_wait
        .map_or(DEFAULT_FETCH_MAX_WAIT, |d| d.get());
    let max_wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
    // Fetches run ahead of the batches, on a task of their own: the next records are on their
    // way while a batch is applied.
    let (fetched_tx, mut fetched) = mpsc::channel(FETCHES_AHEAD);
    let fetcher = AbortOnDrop(tokio::spawn(fetch_ahead(
        shared.clone(),
        client,
        Fetches {
            partition,
            from: position.next,
            end,
            max_bytes,
            max_wait_ms,
        },
        fetched_tx,
        stop.clone(),
    )));
    let mut held: Option<Fetched> = None;
    let mut lag_seen: i64 = 0;
    loop {
        if *stop.borrow() || end.is_some_and(|end| position.next >= end) {
            break;
        }
        let first = match held.take() {
            Some(f) => f,
            None => {
                let received = tokio::select! {
                    f = fetched.recv() => f,
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(f) = received else { break };
                f
            }
        };
        let (mut records, mut high_watermark) = match first {
            Fetched::Records(records, high_watermark) => (records, high_watermark),
            Fetched::Reset(earliest) => {
                tracing::error!(source = %source, partition, next = position.next, earliest, "the committed offset is no longer in the topic (retention): events were lost; resuming at the earliest");
                position.next = earliest.max(position.next);
                continue;
            }
        };
        // What else has arrived meanwhile joins the batch: behind the topic's end, batches grow
        // up to FETCHES_PER_BATCH fetches (an entity written once per batch, not per fetch).
        for _ in 1..FETCHES_PER_BATCH {
            match fetched.try_recv() {
                Ok(Fetched::Records(more, high)) => {
                    records.extend(more);
                    high_watermark = high;
                }
                Ok(reset) => {
                    held = Some(reset);
                    break;
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        records.retain(|r| r.offset >= position.next);
        if let Some(last) = records.last() {
            let next = last.offset + 1;
            let mut batch = Batch::default();
            for r in &records {
                read_record(
                    &shared,
                    partition,
                    &mut position,
                    r.offset,
                    &r.record,
                    &mut batch,
                );
            }
            if !apply(&shared, &mut stop, batch, partition, &mut caches).await {
                break;
            }
            position.next = next;
            let text = serde_json::to_string(&position).unwrap_or_default();
            if retry(&shared, &mut stop, "store", || {
                store.set(&key, &text, STORE_TIMEOUT)
            })
            .await
            .is_none()
            {
                break;
            }
            shared
                .progress
                .records
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            metrics::counter!("feature_gateway_ingest_records_total", "source" => source.clone(), "partition" => label.clone()).increment(records.len() as u64);
            metrics::gauge!("feature_gateway_ingest_committed_offset", "source" => source.clone(), "partition" => label.clone()).set(position.next as f64);
            metrics::histogram!("feature_gateway_ingest_batch_seconds", "source" => source.clone())
                .record(started.elapsed().as_secs_f64());
        }
        let lag = (high_watermark - position.next).max(0);
        shared
            .progress
            .lag
            .fetch_add(lag - lag_seen, Ordering::Relaxed);
        lag_seen = lag;
        metrics::gauge!("feature_gateway_ingest_lag_records", "source" => source.clone(), "partition" => label.clone()).set(lag as f64);
    }
    drop(fetcher);
    tracing::info!(source = %source, partition, next = position.next, "stopped");
}

/// Fetches a partition holds ahead of the batch being applied (each up to `fetch_max_bytes`).
const FETCHES_AHEAD: usize = 4;
/// Most fetches one batch applies.
const FETCHES_PER_BATCH: usize = 4;

/// What [`fetch_ahead`] hands the partition's task, in offset order.
enum Fetched {
    /// A fetch's records (possibly none) and the partition's high watermark.
    Records(Vec<RecordAndOffset>, i64),
    /// The offset asked for is no longer in the topic (retention): fetching resumed at this
    /// earliest offset.
    Reset(i64),
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What [`fetch_ahead`] fetches.
struct Fetches {
    partition: i32,
    /// The first offset.
    from: i64,
    /// The offset to stop at, if any.
    end: Option<i64>,
    max_bytes: i32,
    max_wait_ms: i32,
}

/// Fetches a partition into `fetched`, one fetch after another, until the end (when given),
/// `stop`, or the receiver is gone. Errors are retried as the batches' are.
async fn fetch_ahead(
    shared: Arc<Shared>,
    client: PartitionClient,
    plan: Fetches,
    fetched: mpsc::Sender<Fetched>,
    mut stop: watch::Receiver<bool>,
) {
    let source = &shared.stream.name;
    let Fetches {
        partition,
        from,
        end,
        max_bytes,
        max_wait_ms,
    } = plan;
    let mut next = from;
    while !*stop.borrow() && end.is_none_or(|end| next < end) {
        let message = match client.fetch_records(next, 1..max_bytes, max_wait_ms).await {
            Ok((records, high_watermark)) => {
                if let Some(last) = records.last() {
                    next = next.max(last.offset + 1);
                }
                Fetched::Records(records, high_watermark)
            }
            Err(rskafka::client::error::Error::ServerError {
                protocol_error: rskafka::client::error::ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                let earliest = retry(&shared, &mut stop, "kafka", || {
                    client.get_offset(OffsetAt::Earliest)
                })
                .await;
                let Some(earliest) = earliest else { return };
                next = earliest.max(next);
                Fetched::Reset(earliest)
            }
            Err(e) => {
                shared.error("kafka");
                tracing::warn!(source = %source, partition, error = %e, "fetch failed; retrying");
                if sleep_or_stop(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
                continue;
            }
        };
        if fetched.send(message).await.is_err() {
            return;
        }
    }
}

/// A batch's events per view, and its bad records for the dead-letter topic.
#[derive(Default)]
struct Batch {
    events: BTreeMap<usize, Vec<Positioned>>,
    dead: Vec<Record>,
}

/// Reads one record into `batch` for every view, updating the watermarks.
fn read_record(
    shared: &Shared,
    partition: i32,
    position: &mut Position,
    offset: i64,
    record: &Record,
    batch: &mut Batch,
) {
    let source = &shared.stream.name;
    let object = record
        .value
        .as_deref()
        .ok_or(event::BadEvent::NotJson)
        .and_then(event::parse);
    for (index, view) in shared.stream.views.iter().enumerate() {
        let name = &view.def.name;
        let read = object
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|o| view.def.read(o));
        let outcome = match read {
            Ok(e) => {
                let watermark = position
                    .watermarks
                    .entry(name.clone())
                    .or_insert(Millis::MIN);
                if e.time < watermark.saturating_sub(view.def.allowed_lateness) {
                    shared.progress.late.fetch_add(1, Ordering::Relaxed);
                    "late"
                } else {
                    *watermark = (*watermark).max(e.time);
                    batch.events.entry(index).or_default().push(Positioned {
                        event: e,
                        at: Some((partition, offset)),
                    });
                    continue;
                }
            }
            Err(bad) => {
                shared.progress.bad.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("feature_gateway_ingest_bad_events_total", "source" => source.clone(), "view" => name.clone(), "reason" => bad.reason()).increment(1);
                tracing::debug!(source = %source, view = %name, partition, offset, error = %bad, "bad event");
                if shared.dead_letter.is_some() {
                    let mut headers = BTreeMap::new();
                    headers.insert("reason".to_owned(), bad.reason().as_bytes().to_vec());
                    headers.insert("error".to_owned(), bad.to_string().into_bytes());
                    headers.insert("view".to_owned(), name.as_bytes().to_vec());
                    headers.insert(
                        "source-partition".to_owned(),
                        partition.to_string().into_bytes(),
                    );
                    headers.insert("source-offset".to_owned(), offset.to_string().into_bytes());
                    batch.dead.push(Record {
                        key: record.key.clone(),
                        value: record.value.clone(),
                        headers,
                        timestamp: Utc
                            .timestamp_millis_opt(fetcher_stream::fetcher::now_ms())
                            .single()
                            .unwrap_or_default(),
                    });
                }
                "bad"
            }
        };
        metrics::counter!("feature_gateway_ingest_events_total", "source" => source.clone(), "view" => name.clone(), "result" => outcome).increment(1);
    }
}

/// Applies a batch, retrying until the store takes it; false when stopped first (nothing of the
/// batch is committed then: it is read again next time).
async fn apply(
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    batch: Batch,
    partition: i32,
    caches: &mut [StateCache],
) -> bool {
    let stream = &shared.stream;
    let source = &stream.name;
    for (index, events) in batch.events {
        let view = &stream.views[index];
        let name = &view.def.name;
        // As `retry` does, but each attempt borrows the view's cache.
        let mut backoff = Duration::from_millis(50);
        let applied = loop {
            match writer::apply_cached(
                &stream.store,
                &stream.source.key_prefix,
                view,
                &events,
                STORE_TIMEOUT,
                &mut caches[index],
            )
            .await
            {
                Ok(applied) => break applied,
                Err(e) => {
                    shared.error("store");
                    tracing::warn!(source = %source, stage = "store", error = %e, "failed; retrying");
                }
            }
            if sleep_or_stop(stop, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        };
        let p = &shared.progress;
        p.applied.fetch_add(applied.applied, Ordering::Relaxed);
        p.replayed.fetch_add(applied.replayed, Ordering::Relaxed);
        metrics::counter!("feature_gateway_ingest_events_total", "source" => source.clone(), "view" => name.clone(), "result" => "applied").increment(applied.applied);
        metrics::counter!("feature_gateway_ingest_events_total", "source" => source.clone(), "view" => name.clone(), "result" => "replayed").increment(applied.replayed);
        metrics::counter!("feature_gateway_ingest_conflicts_total", "source" => source.clone(), "view" => name.clone()).increment(applied.conflicts);
    }
    if let Some(dead) = &shared.dead_letter
        && !batch.dead.is_empty()
    {
        let records = batch.dead;
        let produced = retry(shared, stop, "dead_letter", || {
            dead.produce(records.clone(), Compression::NoCompression)
        })
        .await;
        if produced.is_none() {
            return false;
        }
        metrics::counter!("feature_gateway_ingest_dead_letters_total", "source" => source.clone(), "partition" => partition.to_string()).increment(records.len() as u64);
    }
    true
}
