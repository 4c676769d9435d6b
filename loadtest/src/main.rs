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

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
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
#[derive(Debug, Parser)]
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
}

fn string(s: String) -> v1::Value {
    v1::Value {
        kind: Some(v1::value::Kind::StringValue(s)),
    }
}

/// Requests with random keys, built before the clock starts.
fn feature_requests(args: &Args, n: usize) -> Vec<v1::GetFeaturesRequest> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..n)
        .map(|_| v1::GetFeaturesRequest {
            feature_service: args.feature_service.clone(),
            entities: args
                .entities
                .iter()
                .map(|e| {
                    let n = rng.random_range(0..e.count);
                    let key = format!("{}{n:0width$}", e.prefix, width = e.width);
                    (e.name.clone(), string(key))
                })
                .collect(),
            context: args.context.iter().cloned().collect(),
            ..Default::default()
        })
        .collect()
}

/// The calls of a run, built before the clock starts.
enum Calls {
    Health,
    Features(Vec<v1::GetFeaturesRequest>),
    Batch(Vec<v1::GetFeaturesBatchRequest>),
}

impl Calls {
    fn prepare(args: &Args) -> Calls {
        match (args.scenario, args.batch_rows) {
            (Scenario::Health, _) => Calls::Health,
            (Scenario::Features, None) => Calls::Features(feature_requests(args, 4096)),
            (Scenario::Features, Some(n)) => {
                let rows = feature_requests(args, 64 * n.max(1));
                Calls::Batch(
                    rows.chunks(n.max(1))
                        .map(|chunk| v1::GetFeaturesBatchRequest {
                            feature_service: args.feature_service.clone(),
                            rows: chunk
                                .iter()
                                .map(|r| v1::EntityRow {
                                    entities: r.entities.clone(),
                                    context: r.context.clone(),
                                })
                                .collect(),
                            ..Default::default()
                        })
                        .collect(),
                )
            }
        }
    }

    /// Makes call number `i`.
    async fn call(
        &self,
        channel: &Channel,
        i: usize,
        timeout: Duration,
    ) -> Result<(), tonic::Status> {
        match self {
            Calls::Health => {
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request.set_timeout(timeout);
                HealthClient::new(channel.clone())
                    .check(request)
                    .await
                    .map(drop)
            }
            Calls::Features(requests) => {
                let mut request = tonic::Request::new(requests[i % requests.len()].clone());
                request.set_timeout(timeout);
                FeatureServiceClient::new(channel.clone())
                    .get_features(request)
                    .await
                    .map(drop)
            }
            Calls::Batch(requests) => {
                let mut request = tonic::Request::new(requests[i % requests.len()].clone());
                request.set_timeout(timeout);
                FeatureServiceClient::new(channel.clone())
                    .get_features_batch(request)
                    .await
                    .map(drop)
            }
        }
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: std::collections::BTreeMap<String, u64>,
}

impl Tally {
    fn record(&mut self, since: Instant, result: Result<(), tonic::Status>) {
        match result {
            Ok(()) => self
                .latencies_us
                .push(since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
            Err(status) => {
                *self
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// Closed loop: one of `--concurrency` workers, calling back to back until `until`.
async fn worker(
    channel: Channel,
    calls: Arc<Calls>,
    offset: usize,
    until: Instant,
    timeout: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let mut i = offset;
    while Instant::now() < until {
        let started = Instant::now();
        let result = calls.call(&channel, i, timeout).await;
        i += 1;
        tally.record(started, result);
    }
    tally
}

/// Open loop: starts a call every 1/`rps` s until `until`, each timed from its scheduled start.
async fn open_loop(
    channel: Channel,
    calls: Arc<Calls>,
    rps: f64,
    until: Instant,
    timeout: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = tokio::task::JoinSet::new();
    let mut i = 0;
    loop {
        let scheduled = ticks.tick().await.into_std();
        if scheduled >= until {
            break;
        }
        let (channel, calls, tally) = (channel.clone(), calls.clone(), tally.clone());
        in_flight.spawn(async move {
            let result = calls.call(&channel, i, timeout).await;
            if let Ok(mut t) = tally.lock() {
                t.record(scheduled, result);
            }
        });
        i += 1;
        // Reap finished calls so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    Arc::try_unwrap(tally)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
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
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(args.seconds);
        let timeout = Duration::from_millis(args.timeout_ms);
        let mut all = Tally::default();
        match args.rps {
            Some(rps) => all.merge(open_loop(channel, calls, rps, until, timeout).await),
            None => {
                let tasks: Vec<_> = (0..args.concurrency)
                    .map(|w| {
                        tokio::spawn(worker(
                            channel.clone(),
                            calls.clone(),
                            w * 257,
                            until,
                            timeout,
                        ))
                    })
                    .collect();
                for task in tasks {
                    all.merge(task.await?);
                }
            }
        }
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
        let report = serde_json::json!({
            "tool": "fg-load",
            "count": ok + errors,
            "errors": errors,
            "codes": all.errors,
            "rps": (ok + errors) as f64 / elapsed,
            "p50": pct(50.0),
            "p90": pct(90.0),
            "p99": pct(99.0),
            "p999": pct(99.9),
            "percentiles": percentiles,
        });
        println!("{report}");
        Ok(())
    })
}
