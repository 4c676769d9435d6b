//! `fg-load`: drives one gRPC call at a fixed concurrency for a fixed time and prints latency
//! percentiles, throughput and errors by code as JSON.
//!
//! It exists beside ghz because on a 2-core machine the load tool shares the CPU with the
//! gateway: ghz builds every request from a JSON template through dynamic protobuf messages,
//! which costs it several times what the gateway spends serving a feature vector. `fg-load` uses
//! the generated client and requests built before the clock starts, on a single-threaded
//! runtime, so more of the machine measures the gateway. Every run is bounded by `--seconds`.
//!
//! Two modes: closed loop (`--concurrency` calls always in flight: saturation throughput) and
//! open loop (`--rps`: calls started on a fixed schedule whatever the answers, each latency
//! measured from its scheduled start, so a stall shows in the percentiles instead of silently
//! slowing the load).
//!
//! Besides latency percentiles (of successful calls) it reports what a resilience benchmark
//! needs: the slowest call of all (failed ones too) and how many took longer than `--late-ms`
//! (the first thousand listed with their completion time and, with `--include-metadata`, the time
//! the gateway says it spent on each, which tells a slow gateway from a slow path around it);
//! the feature statuses served, by kind and by view; how many responses held a `TIMED_OUT` or
//! `SOURCE_ERROR` feature ("degraded") and when the first and last of them completed; and, with
//! `--timeline-ms`, the same counts per time bucket, so a script that breaks an upstream
//! mid-run can line its own clock (`started_unix`) up with what the clients saw.
//!
//! `--sequential` walks the keys in order once (`0..COUNT` of every `--entity`) instead of
//! drawing them at random, building each request when it is sent: for warming or filling a
//! cache with every key of a population, however large.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, ValueEnum};
use proto::v1::{self, feature_service_client::FeatureServiceClient};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// `grpc.health.v1.Health/Check`: the gRPC floor of the machine.
    Health,
    /// `GetFeatures` of `--feature-service` with random `--entity` keys and fixed `--context`.
    Features,
}

/// `NAME=PREFIX{WIDTH}:COUNT`: keys PREFIX + a zero-padded number below COUNT, e.g.
/// `user_id=u_{5}:10000` draws `u_00000`..`u_09999`.
#[derive(Clone, Debug)]
struct EntitySpec {
    name: String,
    prefix: String,
    width: usize,
    count: u64,
}

fn parse_entity(text: &str) -> Result<EntitySpec, String> {
    let bad = || format!("`{text}` is not NAME=PREFIX{{WIDTH}}:COUNT");
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let (pattern, count) = rest.rsplit_once(':').ok_or_else(bad)?;
    let (prefix, width) = pattern.split_once('{').ok_or_else(bad)?;
    let width = width
        .strip_suffix('}')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    Ok(EntitySpec {
        name: name.to_owned(),
        prefix: prefix.to_owned(),
        width,
        count: count.parse().map_err(|_| bad())?,
    })
}

/// `NAME=VALUE`: a context value, a double if it parses as one, else a string.
fn parse_context(text: &str) -> Result<(String, v1::Value), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=VALUE"))?;
    let kind = match value.parse::<f64>() {
        Ok(d) => v1::value::Kind::DoubleValue(d),
        Err(_) => v1::value::Kind::StringValue(value.to_owned()),
    };
    Ok((name.to_owned(), v1::Value { kind: Some(kind) }))
}

/// Load a feature-gateway with one kind of call.
#[derive(Clone, Debug, Parser)]
struct Args {
    /// The gateway's gRPC address, e.g. 127.0.0.1:50051.
    #[arg(long)]
    target: String,
    /// What to call.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Client deadline of each call, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// The feature service of the `features` scenario.
    #[arg(long, default_value = "fraud_v1")]
    feature_service: String,
    /// Random entity keys, `NAME=PREFIX{WIDTH}:COUNT` (repeatable).
    #[arg(long = "entity", value_parser = parse_entity)]
    entities: Vec<EntitySpec>,
    /// Fixed context values, `NAME=VALUE` (repeatable).
    #[arg(long = "context", value_parser = parse_context)]
    context: Vec<(String, v1::Value)>,
    /// Call GetFeaturesBatch with this many random rows per call instead of GetFeatures.
    #[arg(long)]
    batch_rows: Option<usize>,
    /// Open loop: start this many calls per second on a fixed schedule.
    #[arg(long)]
    rps: Option<f64>,
    /// Count calls (failed ones too) that take longer than this many milliseconds.
    #[arg(long)]
    late_ms: Option<f64>,
    /// Ask for per-feature metadata (`include_metadata`), so each late call (see `--late-ms`) is
    /// reported with the time the gateway itself says it spent (`late_calls`).
    #[arg(long)]
    include_metadata: bool,
    /// Report counts per time bucket of this many milliseconds (by completion time).
    #[arg(long)]
    timeline_ms: Option<u64>,
    /// Walk the keys in order, once, instead of at random (ends early when every key was sent).
    #[arg(long)]
    sequential: bool,
    /// Count a row as degraded only for a TIMED_OUT / SOURCE_ERROR feature of this view
    /// (default: of any view).
    #[arg(long)]
    watch_view: Option<String>,
}

fn string(s: String) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::StringValue(s)),
    }
}

/// One request row whose keys are numbered `pick(entity)`.
fn row(args: &Args, mut pick: impl FnMut(&EntitySpec) -> u64) -> v1::EntityRow {
    v1::EntityRow {
        entities: args
            .entities
            .iter()
            .map(|e| {
                let n = pick(e);
                let key = format!("{}{n:0width$}", e.prefix, width = e.width);
                (e.name.clone(), string(key))
            })
            .collect(),
        context: args.context.iter().cloned().collect(),
    }
}

/// Rows with random keys, built before the clock starts.
fn random_rows(args: &Args, n: usize) -> Vec<v1::EntityRow> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..n)
        .map(|_| row(args, |e| rng.random_range(0..e.count)))
        .collect()
}

fn single(
    feature_service: &str,
    row: v1::EntityRow,
    include_metadata: bool,
) -> v1::GetFeaturesRequest {
    v1::GetFeaturesRequest {
        feature_service: feature_service.to_owned(),
        entities: row.entities,
        context: row.context,
        include_metadata,
        ..Default::default()
    }
}

fn batch(feature_service: &str, rows: Vec<v1::EntityRow>) -> v1::GetFeaturesBatchRequest {
    v1::GetFeaturesBatchRequest {
        feature_service: feature_service.to_owned(),
        rows,
        ..Default::default()
    }
}

/// The calls of a run: built before the clock starts, or (sequential) as they are sent.
enum Calls {
    Health,
    Features(Vec<v1::GetFeaturesRequest>),
    Batch(Vec<v1::GetFeaturesBatchRequest>),
    /// Keys in order: call `i` holds keys `i * rows .. (i + 1) * rows`, each modulo its count.
    Sequential {
        args: Box<Args>,
        rows: usize,
        batch: bool,
        calls: usize,
    },
}

/// What a call answered: the feature names, each row's statuses, and the time the gateway says
/// it spent (`request_metadata.total_us`, absent for the health RPC).
struct Answer {
    names: Vec<String>,
    rows: Vec<Vec<i32>>,
    server_us: Option<i64>,
}

impl Calls {
    fn prepare(args: &Args) -> Calls {
        let service = args.feature_service.as_str();
        match (args.scenario, args.batch_rows) {
            (Scenario::Health, _) => Calls::Health,
            (Scenario::Features, rows) if args.sequential => {
                let per_call = rows.unwrap_or(1).max(1);
                let keys = args.entities.iter().map(|e| e.count).max().unwrap_or(1) as usize;
                Calls::Sequential {
                    args: Box::new(args.clone()),
                    rows: per_call,
                    batch: rows.is_some(),
                    calls: keys.div_ceil(per_call),
                }
            }
            (Scenario::Features, None) => Calls::Features(
                random_rows(args, 4096)
                    .into_iter()
                    .map(|r| single(service, r, args.include_metadata))
                    .collect(),
            ),
            (Scenario::Features, Some(n)) => {
                let rows = random_rows(args, 64 * n.max(1));
                Calls::Batch(
                    rows.chunks(n.max(1))
                        .map(|chunk| batch(service, chunk.to_vec()))
                        .collect(),
                )
            }
        }
    }

    /// How many calls make one pass, if the run ends after one.
    fn limit(&self) -> Option<usize> {
        match self {
            Calls::Sequential { calls, .. } => Some(*calls),
            _ => None,
        }
    }

    /// Makes call number `i`.
    async fn call(
        &self,
        channel: &Channel,
        i: usize,
        timeout: Duration,
    ) -> Result<Answer, tonic::Status> {
        let mut client = FeatureServiceClient::new(channel.clone());
        let one = |r: tonic::Response<v1::GetFeaturesResponse>| {
            let r = r.into_inner();
            Answer {
                server_us: r.request_metadata.as_ref().map(|m| m.total_us),
                names: r.feature_names.into_vec(),
                rows: vec![r.statuses],
            }
        };
        let many = |r: tonic::Response<v1::GetFeaturesBatchResponse>| {
            let r = r.into_inner();
            Answer {
                server_us: None,
                names: r.feature_names,
                rows: r.rows.into_iter().map(|v| v.statuses).collect(),
            }
        };
        match self {
            Calls::Health => {
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request.set_timeout(timeout);
                HealthClient::new(channel.clone())
                    .check(request)
                    .await
                    .map(|_| Answer {
                        names: Vec::new(),
                        rows: Vec::new(),
                        server_us: None,
                    })
            }
            Calls::Features(requests) => {
                let mut request = tonic::Request::new(requests[i % requests.len()].clone());
                request.set_timeout(timeout);
                client.get_features(request).await.map(one)
            }
            Calls::Batch(requests) => {
                let mut request = tonic::Request::new(requests[i % requests.len()].clone());
                request.set_timeout(timeout);
                client.get_features_batch(request).await.map(many)
            }
            Calls::Sequential {
                args, rows, batch, ..
            } => {
                let first = (i * rows) as u64;
                let mut next = first;
                let mut make = || {
                    let r = row(args, |e| next % e.count);
                    next += 1;
                    r
                };
                let service = args.feature_service.as_str();
                if *batch {
                    let all = (0..*rows).map(|_| make()).collect();
                    let mut request = tonic::Request::new(self::batch(service, all));
                    request.set_timeout(timeout);
                    client.get_features_batch(request).await.map(many)
                } else {
                    let mut request =
                        tonic::Request::new(single(service, make(), args.include_metadata));
                    request.set_timeout(timeout);
                    client.get_features(request).await.map(one)
                }
            }
        }
    }
}

/// How many late calls a run lists one by one.
const LATE_CALLS_KEPT: usize = 1000;

/// Feature statuses by their number in `FeatureStatus` (0 to 7).
const STATUSES: usize = 8;

/// Whether a feature status means its source did not deliver (no value, nothing stale).
fn degraded(status: i32) -> bool {
    matches!(
        v1::FeatureStatus::try_from(status),
        Ok(v1::FeatureStatus::TimedOut | v1::FeatureStatus::SourceError)
            | Ok(v1::FeatureStatus::Unspecified)
            | Err(_)
    )
}

/// Counts of one time bucket.
#[derive(Clone, Copy, Default)]
struct Bucket {
    calls: u64,
    errors: u64,
    degraded: u64,
    late: u64,
    max_us: u64,
}

/// What a run saw.
struct Tally {
    /// When the run started (the clock of every offset below).
    start: Instant,
    late_us: Option<u64>,
    bucket: Option<Duration>,
    watch_view: Option<String>,
    /// Whether a degraded status at each feature position counts (see `--watch-view`).
    watched: Vec<bool>,
    /// Latencies of successful calls.
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// The slowest call, failed ones included.
    max_us: u64,
    late: u64,
    /// The first [`LATE_CALLS_KEPT`] late calls: completion offset, the caller's latency and the
    /// gateway's own time (with `--include-metadata`).
    late_calls: Vec<(Duration, u64, Option<i64>)>,
    /// Feature names of the answers (the same for every answer of one feature service).
    names: Vec<String>,
    /// Status counts by feature position.
    by_position: Vec<[u64; STATUSES]>,
    rows: u64,
    degraded_rows: u64,
    /// Completion offsets of the first and last call with a degraded row.
    first_degraded: Option<Duration>,
    last_degraded: Option<Duration>,
    timeline: Vec<Bucket>,
}

impl Tally {
    fn new(start: Instant, args: &Args) -> Tally {
        Tally {
            start,
            late_us: args.late_ms.map(|ms| (ms * 1000.0) as u64),
            bucket: args
                .timeline_ms
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            watch_view: args.watch_view.clone(),
            watched: Vec::new(),
            latencies_us: Vec::new(),
            errors: BTreeMap::new(),
            max_us: 0,
            late: 0,
            late_calls: Vec::new(),
            names: Vec::new(),
            by_position: Vec::new(),
            rows: 0,
            degraded_rows: 0,
            first_degraded: None,
            last_degraded: None,
            timeline: Vec::new(),
        }
    }

    fn record(&mut self, since: Instant, result: Result<Answer, tonic::Status>) {
        let done = Instant::now();
        let us = done
            .duration_since(since)
            .as_micros()
            .min(u128::from(u32::MAX)) as u64;
        let late = self.late_us.is_some_and(|limit| us > limit);
        self.max_us = self.max_us.max(us);
        self.late += u64::from(late);
        let offset = done.duration_since(self.start);
        if late && self.late_calls.len() < LATE_CALLS_KEPT {
            let server_us = result.as_ref().ok().and_then(|a| a.server_us);
            self.late_calls.push((offset, us, server_us));
        }
        let mut degraded_rows = 0;
        let failed = match result {
            Ok(answer) => {
                self.latencies_us.push(us as u32);
                if self.names.is_empty() && !answer.names.is_empty() {
                    self.names = answer.names;
                    self.watched = self
                        .names
                        .iter()
                        .map(|name| {
                            self.watch_view.as_deref().is_none_or(|view| {
                                name.split_once(':').is_some_and(|(v, _)| v == view)
                            })
                        })
                        .collect();
                }
                for statuses in &answer.rows {
                    if self.by_position.len() < statuses.len() {
                        self.by_position.resize(statuses.len(), [0; STATUSES]);
                    }
                    let mut row_degraded = false;
                    for (position, &status) in statuses.iter().enumerate() {
                        let kind = usize::try_from(status).unwrap_or(0).min(STATUSES - 1);
                        self.by_position[position][kind] += 1;
                        let watched = self.watched.get(position).copied().unwrap_or(true);
                        row_degraded |= watched && degraded(status);
                    }
                    degraded_rows += u64::from(row_degraded);
                }
                self.rows += answer.rows.len() as u64;
                false
            }
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1;
                true
            }
        };
        if degraded_rows > 0 {
            self.degraded_rows += degraded_rows;
            self.first_degraded = Some(self.first_degraded.map_or(offset, |t| t.min(offset)));
            self.last_degraded = Some(self.last_degraded.map_or(offset, |t| t.max(offset)));
        }
        if let Some(width) = self.bucket {
            let index = (offset.as_micros() / width.as_micros().max(1)) as usize;
            if self.timeline.len() <= index {
                self.timeline.resize(index + 1, Bucket::default());
            }
            let b = &mut self.timeline[index];
            b.calls += 1;
            b.errors += u64::from(failed);
            b.degraded += u64::from(degraded_rows > 0);
            b.late += u64::from(late);
            b.max_us = b.max_us.max(us);
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.max_us = self.max_us.max(other.max_us);
        self.late += other.late;
        let room = LATE_CALLS_KEPT.saturating_sub(self.late_calls.len());
        self.late_calls
            .extend(other.late_calls.into_iter().take(room));
        if self.names.is_empty() {
            self.names = other.names;
        }
        if self.by_position.len() < other.by_position.len() {
            self.by_position
                .resize(other.by_position.len(), [0; STATUSES]);
        }
        for (mine, theirs) in self.by_position.iter_mut().zip(other.by_position) {
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a += b;
            }
        }
        self.rows += other.rows;
        self.degraded_rows += other.degraded_rows;
        self.first_degraded = match (self.first_degraded, other.first_degraded) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_degraded = self.last_degraded.max(other.last_degraded);
        if self.timeline.len() < other.timeline.len() {
            self.timeline
                .resize(other.timeline.len(), Bucket::default());
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(other.timeline) {
            mine.calls += theirs.calls;
            mine.errors += theirs.errors;
            mine.degraded += theirs.degraded;
            mine.late += theirs.late;
            mine.max_us = mine.max_us.max(theirs.max_us);
        }
    }

    /// Status counts by kind (`PRESENT`, ...), over all features, and by view.
    fn statuses(&self) -> (serde_json::Value, serde_json::Value) {
        let name = |kind: usize| {
            v1::FeatureStatus::try_from(kind as i32)
                .map(|s| s.as_str_name().trim_start_matches("FEATURE_STATUS_"))
                .unwrap_or("UNKNOWN")
                .to_owned()
        };
        let mut all: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_view: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (position, counts) in self.by_position.iter().enumerate() {
            let view = self
                .names
                .get(position)
                .and_then(|n| n.split_once(':'))
                .map_or("?", |(v, _)| v)
                .to_owned();
            for (kind, &n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                *all.entry(name(kind)).or_default() += n;
                *by_view
                    .entry(view.clone())
                    .or_default()
                    .entry(name(kind))
                    .or_default() += n;
            }
        }
        (serde_json::json!(all), serde_json::json!(by_view))
    }
}

/// Closed loop: one of `--concurrency` workers, calling back to back until `until` (or, in a
/// sequential run, until every call of the pass was taken: `next` hands them out).
async fn worker(
    channel: Channel,
    calls: Arc<Calls>,
    offset: usize,
    next: Arc<AtomicUsize>,
    until: Instant,
    timeout: Duration,
    mut tally: Tally,
) -> Tally {
    let mut i = offset;
    while Instant::now() < until {
        if let Some(limit) = calls.limit() {
            i = next.fetch_add(1, Ordering::Relaxed);
            if i >= limit {
                break;
            }
        }
        let started = Instant::now();
        let result = calls.call(&channel, i, timeout).await;
        i += 1;
        tally.record(started, result);
    }
    tally
}

/// Open loop: starts a call every 1/`rps` s until `until`, each timed from its scheduled start.
/// The open loop: call number `i` is due at `start + i / rps`. The schedule is kept by a thread
/// of its own that sleeps until each call is due (the kernel's timer, tens of microseconds late
/// at most) and hands it to the runtime; tokio's timers round up to the millisecond, so a call
/// scheduled by them would start up to a millisecond late, and that wait, counted in its
/// latency, would hide any difference smaller than it.
async fn open_loop(
    channel: Channel,
    calls: Arc<Calls>,
    rps: f64,
    until: Instant,
    timeout: Duration,
    tally: Tally,
) -> Tally {
    let tally = Arc::new(Mutex::new(tally));
    let (due, mut calls_due) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let limit = calls.limit();
    let pacer = std::thread::Builder::new()
        .name("fg-load-pacer".into())
        .spawn(move || {
            let start = Instant::now();
            let period = Duration::from_secs_f64(1.0 / rps);
            for i in 0.. {
                let scheduled = start + period.mul_f64(i as f64);
                if scheduled >= until || limit.is_some_and(|limit| i >= limit) {
                    break;
                }
                std::thread::sleep(scheduled.saturating_duration_since(Instant::now()));
                if due.send((i, scheduled)).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = pacer {
        eprintln!("fg-load: cannot start the open loop's pacing thread: {e}");
        std::process::exit(1);
    }
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some((i, scheduled)) = calls_due.recv().await {
        let (channel, calls, tally) = (channel.clone(), calls.clone(), tally.clone());
        in_flight.spawn(async move {
            let result = calls.call(&channel, i, timeout).await;
            if let Ok(mut t) = tally.lock() {
                t.record(scheduled, result);
            }
        });
        // Reap finished calls so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    match Arc::try_unwrap(tally) {
        Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
        // Every task was joined, so this is the only reference left.
        Err(_) => unreachable!("open-loop tasks outlived their join"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = Channel::from_shared(format!("http://{}", args.target))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        let calls = Arc::new(Calls::prepare(&args));
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(args.seconds);
        let timeout = Duration::from_millis(args.timeout_ms);
        let mut all = match args.rps {
            Some(rps) => {
                let tally = Tally::new(started, &args);
                open_loop(channel, calls, rps, until, timeout, tally).await
            }
            None => {
                let next = Arc::new(AtomicUsize::new(0));
                let tasks: Vec<_> = (0..args.concurrency)
                    .map(|w| {
                        tokio::spawn(worker(
                            channel.clone(),
                            calls.clone(),
                            w * 257,
                            next.clone(),
                            until,
                            timeout,
                            Tally::new(started, &args),
                        ))
                    })
                    .collect();
                let mut all = Tally::new(started, &args);
                for task in tasks {
                    all.merge(task.await?);
                }
                all
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        all.latencies_us.sort_unstable();
        let pct = |p: f64| -> f64 {
            let l = &all.latencies_us;
            if l.is_empty() {
                return f64::NAN;
            }
            let idx = ((p / 100.0) * (l.len() - 1) as f64).round() as usize;
            f64::from(l[idx]) / 1000.0
        };
        let ok = all.latencies_us.len() as u64;
        let errors: u64 = all.errors.values().sum();
        let percentiles: Vec<(f64, f64)> = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99]
            .iter()
            .map(|&p| (p, pct(p)))
            .collect();
        let (statuses, statuses_by_view) = all.statuses();
        let seconds = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let width_s = all.bucket.map_or(0.0, |b| b.as_secs_f64());
        let timeline: Vec<_> = all
            .timeline
            .iter()
            .enumerate()
            .map(|(i, b)| {
                serde_json::json!([
                    i as f64 * width_s,
                    b.calls,
                    b.errors,
                    b.degraded,
                    b.late,
                    b.max_us as f64 / 1000.0
                ])
            })
            .collect();
        all.late_calls.sort_unstable_by_key(|(offset, ..)| *offset);
        let late_calls: Vec<_> = all
            .late_calls
            .iter()
            .map(|(offset, us, server_us)| {
                serde_json::json!([
                    offset.as_secs_f64(),
                    *us as f64 / 1000.0,
                    server_us.map(|s| s as f64 / 1000.0)
                ])
            })
            .collect();
        let report = serde_json::json!({
            "tool": "fg-load",
            "count": ok + errors,
            "errors": errors,
            "codes": all.errors,
            "rps": (ok + errors) as f64 / elapsed,
            "seconds": elapsed,
            "p50": pct(50.0),
            "p90": pct(90.0),
            "p99": pct(99.0),
            "p999": pct(99.9),
            "percentiles": percentiles,
            "max_ms": all.max_us as f64 / 1000.0,
            "late": all.late,
            "late_ms": args.late_ms,
            "late_calls_columns": ["t_s", "ms", "gateway_ms"],
            "late_calls": late_calls,
            "rows": all.rows,
            "statuses": statuses,
            "statuses_by_view": statuses_by_view,
            "degraded_rows": all.degraded_rows,
            "first_degraded_s": seconds(all.first_degraded),
            "last_degraded_s": seconds(all.last_degraded),
            "started_unix": started_unix,
            "timeline_columns": ["t_s", "calls", "errors", "degraded", "late", "max_ms"],
            "timeline": timeline,
        });
        println!("{report}");
        Ok(())
    })
}
