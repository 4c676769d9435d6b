//! `stream-load`: the Kafka side of `bench.py streaming`. Writes a history of payment events for
//! `feature-gateway backfill --load`, produces events to a topic as fast as it can, consumes a
//! topic raw (the baseline of ingest's throughput), and measures freshness: events produced at a
//! fixed rate with probes among them, each probe's delay from its produce acknowledgement to
//! the first `GetFeatures` answer that counts it (and, as the baseline, to a plain consumer's
//! fetch of it). Prints one JSON object. Every mode is bounded in time or in events.
//!
//! Events are the JSON payments the benchmark's views aggregate:
//! `{"card_id":"c_00042","ts":1767225600000,"amount":12.34,"merchant_id":"m_0123"}`; a card's
//! events all go to the partition `card number % partitions`.

use std::{
    collections::HashMap,
    io::{BufWriter, Write},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, Subcommand};
use futures::future::join_all;
use proto::v1::{self, feature_service_client::FeatureServiceClient};
use rskafka::{
    chrono::{TimeZone, Utc},
    client::{
        Client, ClientBuilder,
        partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling},
    },
    record::Record,
};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

/// The cards events are drawn from: `PREFIX` + a zero-padded number below `cards`.
#[derive(Clone, Debug, clap::Args)]
struct Cards {
    /// How many cards.
    #[arg(long)]
    cards: u64,
    /// The card ids' prefix.
    #[arg(long, default_value = "c_")]
    prefix: String,
    /// The card numbers' width (zero-padded).
    #[arg(long, default_value_t = 5)]
    width: usize,
}

impl Cards {
    fn id(&self, n: u64) -> String {
        format!("{}{n:0width$}", self.prefix, width = self.width)
    }
}

/// A topic.
#[derive(Clone, Debug, clap::Args)]
struct Topic {
    /// The bootstrap broker, `host:port`.
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// The topic's partitions (0 to this, excluded).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Writes `days` of history as JSON lines: each card pays at its own daily rate, drawn
    /// log-uniformly between `min_per_day` and `max_per_day`, at uniformly random times.
    History {
        #[command(flatten)]
        cards: Cards,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 7.0)]
        days: f64,
        #[arg(long, default_value_t = 1.0)]
        min_per_day: f64,
        #[arg(long, default_value_t = 100.0)]
        max_per_day: f64,
        /// The history ends a minute before this time (epoch ms; default now).
        #[arg(long)]
        now_ms: Option<i64>,
    },
    /// Produces `events` events as fast as the broker takes them, their times spread in order
    /// over the `span_ms` before now.
    Produce {
        #[command(flatten)]
        topic: Topic,
        #[command(flatten)]
        cards: Cards,
        #[arg(long)]
        events: u64,
        #[arg(long, default_value_t = 1_800_000)]
        span_ms: i64,
    },
    /// Reads every partition from its earliest offset to the end it has at the start, counting
    /// records and bytes and decoding nothing.
    Consume {
        #[command(flatten)]
        topic: Topic,
        /// Most bytes per fetch and partition (ingest's `fetch_max_bytes`).
        #[arg(long, default_value_t = 1 << 20)]
        max_bytes: i32,
        /// Longest a fetch waits for records (ingest's `fetch_max_wait`).
        #[arg(long, default_value_t = 100)]
        max_wait_ms: i32,
        /// Gives up after this long.
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
    },
    /// Produces at `rate` events/s for `warmup_seconds`, then for `seconds` with
    /// `probes_per_second` probe events among them, each on a card of its own (`probe_prefix` +
    /// its number); polls `GetFeatures` of `feature_service` (whose first feature counts the
    /// card's events) for each probe every `poll_ms` until the count is 1, and fetches the topic
    /// meanwhile as a bare consumer would.
    Fresh {
        #[command(flatten)]
        topic: Topic,
        #[command(flatten)]
        cards: Cards,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        seconds: f64,
        /// Events without probes first (the consumers reach their steady state).
        #[arg(long, default_value_t = 0.0)]
        warmup_seconds: f64,
        #[arg(long, default_value_t = 10.0)]
        probes_per_second: f64,
        #[arg(long)]
        probe_prefix: String,
        /// The gateway's gRPC address.
        #[arg(long)]
        target: String,
        #[arg(long)]
        feature_service: String,
        /// The entity the probe cards are keys of.
        #[arg(long, default_value = "card_id")]
        entity: String,
        #[arg(long, default_value_t = 10)]
        poll_ms: u64,
        /// A probe not seen this long after its acknowledgement is counted as missed.
        #[arg(long, default_value_t = 5_000)]
        give_up_ms: u64,
        /// The bare consumer's `fetch_max_wait`.
        #[arg(long, default_value_t = 100)]
        max_wait_ms: i32,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// SplitMix64: the same events on every run.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from `x`.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// One payment event of `card` at `ts`, its amount and merchant drawn from `x`.
fn event(card: &str, ts: i64, x: u64) -> String {
    let cents = (x >> 8) % 50_000;
    format!(
        r#"{{"card_id":"{card}","ts":{ts},"amount":{}.{:02},"merchant_id":"m_{:04}"}}"#,
        cents / 100,
        cents % 100,
        (x >> 32) % 2_000
    )
}

fn record(value: String, key: Option<Vec<u8>>) -> Record {
    Record {
        key,
        value: Some(value.into_bytes()),
        headers: Default::default(),
        timestamp: Utc
            .timestamp_millis_opt(now_ms())
            .single()
            .unwrap_or_default(),
    }
}

async fn connect(topic: &Topic) -> Result<(Client, Vec<Arc<PartitionClient>>), String> {
    let client = ClientBuilder::new(vec![topic.brokers.clone()])
        .client_id("stream-load")
        .build()
        .await
        .map_err(|e| format!("kafka: {e}"))?;
    let mut partitions = Vec::new();
    for p in 0..topic.partitions {
        partitions.push(Arc::new(
            client
                .partition_client(topic.topic.clone(), p, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| format!("kafka: partition {p}: {e}"))?,
        ));
    }
    Ok((client, partitions))
}

fn history(
    cards: &Cards,
    out: &PathBuf,
    days: f64,
    min_per_day: f64,
    max_per_day: f64,
    now: i64,
) -> Result<serde_json::Value, String> {
    let file = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let span = (days * 86_400_000.0) as i64;
    let end = now - 60_000;
    let mut events = 0u64;
    for c in 0..cards.cards {
        let id = cards.id(c);
        let per_day = min_per_day * (max_per_day / min_per_day).powf(unit(mix(c ^ 0xC0FFEE)));
        let n = (per_day * days).round() as u64;
        for i in 0..n {
            let x = mix((c << 24) ^ i);
            let ts = end - (unit(mix(x)) * span as f64) as i64;
            writeln!(w, "{}", event(&id, ts, x)).map_err(|e| e.to_string())?;
        }
        events += n;
    }
    w.flush().map_err(|e| e.to_string())?;
    Ok(serde_json::json!({ "events": events, "cards": cards.cards }))
}

async fn produce(
    topic: &Topic,
    cards: &Cards,
    events: u64,
    span_ms: i64,
) -> Result<serde_json::Value, String> {
    let (_client, partitions) = connect(topic).await?;
    let n = partitions.len() as u64;
    let now = now_ms();
    let mut by_partition: Vec<Vec<Record>> = vec![Vec::new(); partitions.len()];
    for i in 0..events {
        let x = mix(i ^ 0x5EED);
        let card = x % cards.cards;
        let ts = now - span_ms + (i as i64 * span_ms / events.max(1) as i64);
        by_partition[(card % n) as usize].push(record(event(&cards.id(card), ts, x), None));
    }
    let started = Instant::now();
    let sends = partitions
        .iter()
        .zip(by_partition)
        .map(|(pc, records)| async move {
            let mut records = records;
            while !records.is_empty() {
                let rest = records.split_off(records.len().min(4_000));
                pc.produce(records, Compression::NoCompression)
                    .await
                    .map_err(|e| format!("produce: {e}"))?;
                records = rest;
            }
            Ok::<(), String>(())
        });
    for r in join_all(sends).await {
        r?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({ "events": events, "seconds": seconds, "rate": events as f64 / seconds }))
}

async fn consume(
    topic: &Topic,
    max_bytes: i32,
    max_wait_ms: i32,
    seconds: f64,
) -> Result<serde_json::Value, String> {
    let (_client, partitions) = connect(topic).await?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut ranges = Vec::new();
    for pc in &partitions {
        let first = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| e.to_string())?;
        let end = pc
            .get_offset(OffsetAt::Latest)
            .await
            .map_err(|e| e.to_string())?;
        ranges.push((first, end));
    }
    let started = Instant::now();
    let reads = partitions
        .iter()
        .zip(ranges)
        .map(|(pc, (mut next, end))| async move {
            let (mut records, mut bytes) = (0u64, 0u64);
            while next < end && Instant::now() < until {
                let (batch, _) = pc
                    .fetch_records(next, 1..max_bytes, max_wait_ms)
                    .await
                    .map_err(|e| format!("fetch: {e}"))?;
                for r in batch.iter().filter(|r| r.offset >= next) {
                    records += 1;
                    bytes += r.record.value.as_ref().map_or(0, |v| v.len() as u64);
                }
                if let Some(last) = batch.last() {
                    next = next.max(last.offset + 1);
                }
            }
            Ok::<(u64, u64, bool), String>((records, bytes, next >= end))
        });
    let (mut records, mut bytes, mut complete) = (0, 0, true);
    for r in join_all(reads).await {
        let (n, b, done) = r?;
        records += n;
        bytes += b;
        complete &= done;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "records": records, "bytes": bytes, "seconds": seconds,
        "rate": records as f64 / seconds, "complete": complete,
    }))
}

/// Milliseconds of `p`-th percentile of sorted `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values[((p / 100.0) * (values.len() - 1) as f64).round() as usize]
}

fn summary(mut delays: Vec<f64>) -> serde_json::Value {
    delays.sort_by(f64::total_cmp);
    serde_json::json!({
        "count": delays.len(),
        "p50": percentile(&delays, 50.0),
        "p90": percentile(&delays, 90.0),
        "p99": percentile(&delays, 99.0),
        "max": delays.last().copied().unwrap_or(f64::NAN),
    })
}

/// The first feature of `response` as an integer (0 when absent or not one).
fn count_of(response: &v1::GetFeaturesResponse) -> i64 {
    match response.values.first().and_then(|v| v.kind.as_ref()) {
        Some(v1::value::Kind::Int64Value(n)) => *n,
        _ => 0,
    }
}

/// Polls until `card`'s count reaches 1: the delay since `acked` (ms) and the calls made, or
/// `None` past `give_up`.
async fn poll(
    channel: Channel,
    service: String,
    entity: String,
    card: String,
    acked: Instant,
    every: Duration,
    give_up: Duration,
) -> (Option<f64>, u64) {
    let mut client = FeatureServiceClient::new(channel);
    let request = v1::GetFeaturesRequest {
        feature_service: service,
        entities: [(
            entity,
            v1::Value {
                kind: Some(v1::value::Kind::StringValue(card)),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let mut calls = 0;
    loop {
        let mut r = tonic::Request::new(request.clone());
        r.set_timeout(Duration::from_secs(1));
        let answer = client.get_features(r).await;
        calls += 1;
        if answer.is_ok_and(|a| count_of(a.get_ref()) >= 1) {
            return (Some(acked.elapsed().as_secs_f64() * 1000.0), calls);
        }
        if acked.elapsed() > give_up {
            return (None, calls);
        }
        tokio::time::sleep(every).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn fresh(
    topic: &Topic,
    cards: &Cards,
    rate: f64,
    warmup_seconds: f64,
    seconds: f64,
    probes_per_second: f64,
    probe_prefix: &str,
    target: &str,
    service: &str,
    entity: &str,
    poll_ms: u64,
    give_up_ms: u64,
    max_wait_ms: i32,
) -> Result<serde_json::Value, String> {
    let (_client, partitions) = connect(topic).await?;
    // The bare consumer on connections of its own: Kafka answers a connection's requests in
    // order, so a fetch waiting for records would hold the produce requests behind it.
    let (_consumer_client, consumer_partitions) = connect(topic).await?;
    let channel = Channel::from_shared(format!("http://{target}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("gateway: {e}"))?;
    let n = partitions.len() as u64;
    let give_up = Duration::from_millis(give_up_ms);
    // The bare consumer: from each partition's end now, until the producer is done and every
    // probe was fetched (or given up on).
    let acked: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let fetched: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());
    let mut consumers = Vec::new();
    for pc in &consumer_partitions {
        let mut next = pc
            .get_offset(OffsetAt::Latest)
            .await
            .map_err(|e| e.to_string())?;
        let (pc, fetched, done) = (pc.clone(), fetched.clone(), done.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let fetch = pc.fetch_records(next, 1..(1 << 20), max_wait_ms);
                let batch = tokio::select! {
                    r = fetch => r,
                    () = done.notified() => return,
                };
                let Ok((batch, _)) = batch else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let at = Instant::now();
                for r in batch.iter().filter(|r| r.offset >= next) {
                    if let Some(id) = r
                        .record
                        .key
                        .as_deref()
                        .and_then(|k| std::str::from_utf8(k).ok()?.parse().ok())
                    {
                        fetched
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(id, at);
                    }
                }
                if let Some(last) = batch.last() {
                    next = next.max(last.offset + 1);
                }
            }
        }));
    }

    let started = Instant::now();
    let probing = started + Duration::from_secs_f64(warmup_seconds);
    let until = probing + Duration::from_secs_f64(seconds);
    let total = warmup_seconds + seconds;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut sent, mut probes) = (0u64, 0u64);
    let mut pollers = Vec::new();
    let mut i = 0u64;
    while Instant::now() < until {
        ticks.tick().await;
        let elapsed = started.elapsed().as_secs_f64().min(total);
        let due = (rate * elapsed) as u64 - sent;
        let probing_for = (elapsed - warmup_seconds).max(0.0);
        let probes_due = (probes_per_second * probing_for) as u64 - probes;
        let mut batches: Vec<(Vec<Record>, Vec<u64>)> = vec![(Vec::new(), Vec::new()); n as usize];
        let ts = now_ms();
        for _ in 0..due {
            let x = mix(i ^ 0xF7E5);
            i += 1;
            let card = x % cards.cards;
            batches[(card % n) as usize]
                .0
                .push(record(event(&cards.id(card), ts, x), None));
        }
        for id in probes..probes + probes_due {
            let b = &mut batches[(id % n) as usize];
            let card = format!("{probe_prefix}{id}");
            b.0.push(record(
                event(&card, ts, mix(id)),
                Some(id.to_string().into_bytes()),
            ));
            b.1.push(id);
        }
        sent += due;
        probes += probes_due;
        let sends = partitions
            .iter()
            .zip(batches)
            .map(|(pc, (records, ids))| async move {
                let r = pc.produce(records, Compression::NoCompression).await;
                (r, Instant::now(), ids)
            });
        for (result, at, ids) in join_all(sends).await {
            result.map_err(|e| format!("produce: {e}"))?;
            for id in ids {
                acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, at);
                let second = at.saturating_duration_since(probing).as_secs();
                pollers.push((
                    second,
                    tokio::spawn(poll(
                        channel.clone(),
                        service.to_owned(),
                        entity.to_owned(),
                        format!("{probe_prefix}{id}"),
                        at,
                        Duration::from_millis(poll_ms),
                        give_up,
                    )),
                ));
            }
        }
    }
    let produce_seconds = started.elapsed().as_secs_f64();
    let mut delays = Vec::new();
    let mut by_second: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    let (mut missed, mut polls) = (0u64, 0u64);
    for (second, p) in pollers {
        let (delay, calls) = p.await.map_err(|e| e.to_string())?;
        polls += calls;
        match delay {
            Some(d) => {
                delays.push(d);
                by_second.entry(second).or_default().push(d);
            }
            None => missed += 1,
        }
    }
    // Each second of probing: its probes' median and slowest delay (ms).
    let timeline: Vec<_> = by_second
        .into_iter()
        .map(|(s, mut d)| {
            d.sort_by(f64::total_cmp);
            serde_json::json!([s, d.len(), percentile(&d, 50.0), d.last().copied()])
        })
        .collect();
    // Every probe is acknowledged; give the bare consumer up to `give_up` for the last ones.
    let deadline = Instant::now() + give_up;
    while Instant::now() < deadline
        && fetched.lock().unwrap_or_else(|e| e.into_inner()).len() < probes as usize
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.notify_waiters();
    for c in consumers {
        c.abort();
    }
    let acked = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let fetched = fetched.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let kafka: Vec<f64> = acked
        .iter()
        .filter_map(|(id, a)| {
            let f = fetched.get(id)?;
            // The broker may hand a record to a consumer before the producer reads its ack.
            Some(f.saturating_duration_since(*a).as_secs_f64() * 1000.0)
        })
        .collect();
    let kafka_missed = probes - kafka.len() as u64;
    Ok(serde_json::json!({
        "produced": sent + probes,
        "seconds": produce_seconds,
        "warmup_seconds": warmup_seconds,
        "rate": (sent + probes) as f64 / produce_seconds,
        "probes": probes,
        "missed": missed,
        "polls": polls,
        "poll_ms": poll_ms,
        "gateway": summary(delays),
        "kafka": summary(kafka),
        "kafka_missed": kafka_missed,
        "timeline_columns": ["second", "probes", "p50_ms", "max_ms"],
        "timeline": timeline,
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        match &args.mode {
            Mode::History {
                cards,
                out,
                days,
                min_per_day,
                max_per_day,
                now_ms: now,
            } => history(
                cards,
                out,
                *days,
                *min_per_day,
                *max_per_day,
                now.unwrap_or_else(now_ms),
            ),
            Mode::Produce {
                topic,
                cards,
                events,
                span_ms,
            } => produce(topic, cards, *events, *span_ms).await,
            Mode::Consume {
                topic,
                max_bytes,
                max_wait_ms,
                seconds,
            } => consume(topic, *max_bytes, *max_wait_ms, *seconds).await,
            Mode::Fresh {
                topic,
                cards,
                rate,
                seconds,
                warmup_seconds,
                probes_per_second,
                probe_prefix,
                target,
                feature_service,
                entity,
                poll_ms,
                give_up_ms,
                max_wait_ms,
            } => {
                fresh(
                    topic,
                    cards,
                    *rate,
                    *warmup_seconds,
                    *seconds,
                    *probes_per_second,
                    probe_prefix,
                    target,
                    feature_service,
                    entity,
                    *poll_ms,
                    *give_up_ms,
                    *max_wait_ms,
                )
                .await
            }
        }
    })?;
    println!("{report}");
    Ok(())
}
