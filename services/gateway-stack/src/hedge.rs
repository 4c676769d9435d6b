//! Hedged requests: when a source's call has not answered by its usual high latency, send the
//! same call again and serve whichever answers first.
//!
//! [`HedgeLayer`] sits in a source's stack inside the deadline (so every attempt, hedges
//! included, ends at the request's deadline) and outside retries and the bulkhead (so each attempt
//! retries on its own and needs its own permit: hedges can never exceed the source's concurrency
//! bound). A source opts in with `[sources.NAME.hedge]`; every fetch is a read (the
//! [`fetcher_api::Fetcher`] contract), so sending one twice is safe.
//!
//! The contract of one call:
//! - the first attempt starts at once; after the hedge delay (a fixed `delay`, or the source's
//!   observed latency percentile `after`, e.g. p95) with no answer, a second attempt starts, and
//!   so on up to `max_extra` extra attempts, one per delay;
//! - the first *successful* answer wins and every other attempt is dropped (cancelled); a
//!   failure is returned only once no attempt is left in flight, so a fast failure of the first
//!   attempt is not hidden by waiting for a hedge;
//! - a hedge is sent only while the remaining deadline leaves the source its median latency to
//!   answer, and only when the source's hedge budget allows: hedges are at most `budget_percent`
//!   of calls (tower's `TpsBudget`), so in an outage, when every call is slow, hedging adds that
//!   fraction of load, never double;
//! - with `after`, no hedge is sent until [`MIN_SAMPLES`] latencies have been observed.
//!
//! The latency estimate is a log-scale histogram of atomic counters (buckets 19% apart from
//! 10 µs to about 100 s), halved every [`DECAY_EVERY`] samples so it follows the source as it
//! changes; the percentile is recomputed every few samples and read with one atomic load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use fetcher_api::{FetchError, FetchRequest, Row};
use futures::{StreamExt, future::Either, stream::FuturesUnordered};
use tokio::time::Instant;
use tower::{
    Layer, Service, ServiceExt,
    retry::budget::{Budget, TpsBudget},
};

use gateway_config::{HedgeConfig, HedgeTrigger};

use crate::{events::hedge::HedgeMetrics, service::BoxFuture};

/// Latencies observed before a percentile trigger starts hedging.
pub const MIN_SAMPLES: u64 = 20;
/// The histogram is halved after this many samples, so old latencies fade.
pub const DECAY_EVERY: u64 = 1024;
/// The cached percentiles are recomputed after this many samples.
const RECOMPUTE_EVERY: u64 = 4;

/// Sends hedged attempts of slow calls (with no policy, a pass-through).
#[derive(Clone, Debug)]
pub struct HedgeLayer {
    state: Option<Arc<HedgeState>>,
}

#[derive(Debug)]
struct HedgeState {
    policy: HedgeConfig,
    latency: LatencyHistogram,
    budget: TpsBudget,
    metrics: HedgeMetrics,
}

impl HedgeLayer {
    /// A layer for `source` with `policy`; with `None`, a pass-through.
    pub fn new(policy: Option<&HedgeConfig>, source: &str) -> Self {
        HedgeLayer {
            state: policy.map(|policy| {
                let percentile = match policy.trigger {
                    HedgeTrigger::Percentile(p) => p,
                    HedgeTrigger::Fixed(_) => 0.95,
                };
                Arc::new(HedgeState {
                    policy: policy.clone(),
                    latency: LatencyHistogram::new(percentile),
                    // Deposits live 10 s; no floor of hedges per second: with no traffic, none.
                    budget: TpsBudget::new(
                        Duration::from_secs(10),
                        0,
                        policy.budget_percent.clamp(0.0, 1.0),
                    ),
                    metrics: HedgeMetrics::new(source),
                })
            }),
        }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See [`HedgeLayer`].
#[derive(Clone, Debug)]
pub struct Hedge<S> {
    inner: S,
    state: Option<Arc<HedgeState>>,
}

impl HedgeState {
    /// How long after the call's start the first hedge goes out, if one may.
    fn delay(&self) -> Option<Duration> {
        match self.policy.trigger {
            HedgeTrigger::Fixed(d) => Some(d),
            HedgeTrigger::Percentile(_) => self.latency.high(),
        }
    }

    /// Whether a hedge may start now: time is left for it and the budget allows it.
    fn may_hedge(&self, deadline: Option<Instant>) -> bool {
        if let Some(deadline) = deadline {
            let needed = self.latency.median().unwrap_or(Duration::ZERO);
            if Instant::now() + needed >= deadline {
                self.metrics.skipped_deadline();
                return false;
            }
        }
        if !self.budget.withdraw() {
            self.metrics.refused();
            return false;
        }
        true
    }
}

impl<S> Service<FetchRequest> for Hedge<S>
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = Either<S::Future, BoxFuture<Result<Vec<Row>, FetchError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: FetchRequest) -> Self::Future {
        // Without a policy, a pass-through: the inner call's own future, not boxed.
        let Some(state) = self.state.clone() else {
            return Either::Left(self.inner.call(request));
        };
        let start = Instant::now();
        let first = self.inner.call(request.clone());
        let inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            state.budget.deposit();
            let mut attempts: FuturesUnordered<BoxFuture<Attempt>> = FuturesUnordered::new();
            attempts.push(Box::pin(async move { (0, start, first.await) }));
            let delay = state.delay();
            let mut sent = 0u32;
            let mut hedging = delay.is_some() && state.policy.max_extra > 0;
            loop {
                let next_hedge = delay
                    .filter(|_| hedging)
                    .map(|d| start + d.saturating_mul(sent + 1));
                tokio::select! {
                    Some((n, started, result)) = attempts.next() => match result {
                        Ok(rows) => {
                            let now = Instant::now();
                            state.latency.record(now.duration_since(started));
                            // The attempts dropped here took at least this long: a lower
                            // bound that keeps the slow tail in the estimate.
                            if !attempts.is_empty() {
                                state.latency.record(now.duration_since(start));
                            }
                            if n > 0 {
                                state.metrics.won();
                                tracing::debug!(attempt = n, "hedge won");
                            }
                            return Ok(rows);
                        }
                        Err(e) if attempts.is_empty() => return Err(e),
                        Err(_) => {}
                    },
                    () = sleep_until_opt(next_hedge), if next_hedge.is_some() => {
                        if state.may_hedge(request.deadline) {
                            sent += 1;
                            state.metrics.sent();
                            // On the source call's span: how many hedges this call sent.
                            tracing::Span::current().record("hedges", sent);
                            let attempt = inner.clone().oneshot(request.clone());
                            let started = Instant::now();
                            attempts.push(Box::pin(async move { (sent, started, attempt.await) }));
                            hedging = sent < state.policy.max_extra;
                        } else {
                            hedging = false;
                        }
                    }
                }
            }
        }))
    }
}

/// One attempt's number (0: the first call), start and outcome.
type Attempt = (u32, Instant, Result<Vec<Row>, FetchError>);

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

const BUCKETS: usize = 96;
/// The upper bound of bucket 0, in nanoseconds; bucket `i` ends at `BASE * 2^(i/4)`.
const BASE_NANOS: f64 = 10_000.0;

/// A cheap concurrent latency histogram with cached percentiles.
#[derive(Debug)]
struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    samples: AtomicU64,
    percentile: f64,
    /// Cached estimates in nanoseconds; 0 while unknown.
    high: AtomicU64,
    median: AtomicU64,
}

impl LatencyHistogram {
    fn new(percentile: f64) -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            samples: AtomicU64::new(0),
            percentile,
            high: AtomicU64::new(0),
            median: AtomicU64::new(0),
        }
    }

    fn bucket(latency: Duration) -> usize {
        let ratio = latency.as_nanos() as f64 / BASE_NANOS;
        if ratio <= 1.0 {
            return 0;
        }
        ((4.0 * ratio.log2()).ceil() as usize).min(BUCKETS - 1)
    }

    fn upper_bound(bucket: usize) -> Duration {
        Duration::from_nanos((BASE_NANOS * (bucket as f64 / 4.0).exp2()) as u64)
    }

    fn record(&self, latency: Duration) {
        self.buckets[Self::bucket(latency)].fetch_add(1, Ordering::Relaxed);
        let n = self.samples.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(DECAY_EVERY) {
            // Approximate under concurrency (an increment may be lost): it is an estimate.
            for b in &self.buckets {
                b.store(b.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
        if n >= MIN_SAMPLES && (n == MIN_SAMPLES || n.is_multiple_of(RECOMPUTE_EVERY)) {
            let (median, high) = self.quantiles();
            self.median.store(median, Ordering::Relaxed);
            self.high.store(high, Ordering::Relaxed);
        }
    }

    /// The median and the configured percentile, in nanoseconds.
    fn quantiles(&self) -> (u64, u64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let at = |q: f64| {
            let target = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= target {
                    return Self::upper_bound(i).as_nanos() as u64;
                }
            }
            Self::upper_bound(BUCKETS - 1).as_nanos() as u64
        };
        (at(0.5), at(self.percentile))
    }

    fn high(&self) -> Option<Duration> {
        match self.high.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn median(&self) -> Option<Duration> {
        match self.median.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source_stack;
    use async_trait::async_trait;
    use fetcher_api::{ErrorClass, Fetcher, KeyPart, Record, Value};
    use gateway_config::SourceConfig;
    use std::sync::Mutex;

    /// Answers each call after the next delay of its script (then `default`), with the call's
    /// number as the value, so a test sees which attempt won. Counts calls and cancellations.
    #[derive(Debug, Default)]
    struct Scripted {
        delays: Mutex<Vec<Duration>>,
        default: Duration,
        calls: AtomicU64,
        finished: AtomicU64,
        fail: bool,
    }

    #[async_trait]
    impl Fetcher for Scripted {
        async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = {
                let mut d = self.delays.lock().unwrap();
                if d.is_empty() {
                    self.default
                } else {
                    d.remove(0)
                }
            };
            tokio::time::sleep(delay).await;
            self.finished.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(FetchError::unavailable("down"));
            }
            Ok(request
                .keys
                .iter()
                .map(|_| {
                    Row::Found(Record {
                        cells: vec![Ok(Value::Int64(n as i64))],
                        event_time: None,
                    })
                })
                .collect())
        }
    }

    fn policy(hedge: HedgeConfig) -> SourceConfig {
        SourceConfig {
            timeout: Some(Duration::from_secs(1)),
            max_concurrency: 64,
            cache: None,
            circuit_breaker: None,
            retry: None,
            hedge: Some(hedge),
            ..SourceConfig::new("s", "test")
        }
    }

    fn fixed(ms: u64, budget_percent: f32) -> HedgeConfig {
        HedgeConfig {
            trigger: HedgeTrigger::Fixed(Duration::from_millis(ms)),
            max_extra: 1,
            budget_percent,
        }
    }

    fn request(budget: Duration) -> FetchRequest {
        FetchRequest {
            view: "v".into(),
            features: vec!["f".to_owned()].into(),
            keys: vec![vec![KeyPart::Int64(1)]],
            deadline: Some(Instant::now() + budget),
        }
    }

    fn winner(rows: &[Row]) -> i64 {
        match &rows[0] {
            Row::Found(r) => match r.cells[0] {
                Ok(Value::Int64(n)) => n,
                _ => panic!("{rows:?}"),
            },
            Row::NotFound => panic!("{rows:?}"),
        }
    }

    /// Installs a local recorder and runs `f`, returning the rendered metrics.
    fn with_metrics<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(f())
        });
        handle.render()
    }

    #[test]
    fn a_slow_first_call_is_overtaken_by_its_hedge() {
        let rendered = with_metrics(|| async {
            let source = Arc::new(Scripted {
                delays: Mutex::new(vec![Duration::from_millis(500), Duration::from_millis(10)]),
                ..Default::default()
            });
            let stack = source_stack(source.clone(), &policy(fixed(20, 1.0)));
            let started = Instant::now();
            let rows = stack
                .oneshot(request(Duration::from_millis(100)))
                .await
                .unwrap();
            // The hedge (call 1) went out at 20 ms and answered 10 ms later.
            assert_eq!(winner(&rows), 1);
            assert_eq!(started.elapsed(), Duration::from_millis(30));
            assert_eq!(source.calls.load(Ordering::SeqCst), 2);
            // The slow first call was dropped: it never finishes.
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(source.finished.load(Ordering::SeqCst), 1);
        });
        assert!(
            rendered.contains("feature_gateway_source_hedges_total{source=\"s\"} 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains("feature_gateway_source_hedges_won_total{source=\"s\"} 1"),
            "{rendered}"
        );
    }

    #[test]
    fn a_fast_call_sends_no_hedge() {
        let rendered = with_metrics(|| async {
            let source = Arc::new(Scripted {
                default: Duration::from_millis(5),
                ..Default::default()
            });
            let stack = source_stack(source.clone(), &policy(fixed(20, 1.0)));
            for _ in 0..10 {
                let rows = stack
                    .clone()
                    .oneshot(request(Duration::from_millis(100)))
                    .await
                    .unwrap();
                assert_eq!(rows.len(), 1);
            }
            assert_eq!(source.calls.load(Ordering::SeqCst), 10);
        });
        assert!(
            rendered.contains("feature_gateway_source_hedges_total{source=\"s\"} 0"),
            "{rendered}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_attempt_wins_when_it_answers_before_the_hedge() {
        let source = Arc::new(Scripted {
            delays: Mutex::new(vec![Duration::from_millis(40), Duration::from_millis(50)]),
            ..Default::default()
        });
        let stack = source_stack(source.clone(), &policy(fixed(20, 1.0)));
        let started = Instant::now();
        let rows = stack
            .oneshot(request(Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(winner(&rows), 0);
        assert_eq!(started.elapsed(), Duration::from_millis(40));
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_stay_within_the_budget_when_every_call_is_slow() {
        // An outage: every call takes 50 ms, the hedge delay is 10 ms, the budget 10%.
        let source = Arc::new(Scripted {
            default: Duration::from_millis(50),
            ..Default::default()
        });
        let stack = source_stack(source.clone(), &policy(fixed(10, 0.1)));
        for _ in 0..100 {
            let rows = stack
                .clone()
                .oneshot(request(Duration::from_millis(200)))
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);
        }
        let calls = source.calls.load(Ordering::SeqCst);
        assert!(
            (105..=111).contains(&calls),
            "{calls} upstream calls for 100 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_hedge_past_the_deadline_and_a_failure_is_returned_once_all_failed() {
        // The deadline (15 ms) ends before the hedge delay (20 ms): one call, a timeout.
        let source = Arc::new(Scripted {
            default: Duration::from_millis(50),
            ..Default::default()
        });
        let stack = source_stack(source.clone(), &policy(fixed(20, 1.0)));
        let err = stack
            .oneshot(request(Duration::from_millis(15)))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Timeout);
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);

        // Both attempts fail: the error comes back when the last one does.
        let source = Arc::new(Scripted {
            delays: Mutex::new(vec![Duration::from_millis(30), Duration::from_millis(30)]),
            fail: true,
            ..Default::default()
        });
        let stack = source_stack(source.clone(), &policy(fixed(20, 1.0)));
        let started = Instant::now();
        let err = stack
            .oneshot(request(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Unavailable);
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_percentile_trigger_learns_the_source_latency() {
        // 20 calls of 10 ms teach the estimate; then a 300 ms call is hedged near p95 (10 ms,
        // rounded up to its bucket's bound), and the hedge answers in 10 ms.
        let source = Arc::new(Scripted {
            default: Duration::from_millis(10),
            ..Default::default()
        });
        let hedge = HedgeConfig {
            trigger: HedgeTrigger::Percentile(0.95),
            max_extra: 1,
            budget_percent: 1.0,
        };
        let stack = source_stack(source.clone(), &policy(hedge));
        for _ in 0..MIN_SAMPLES {
            stack
                .clone()
                .oneshot(request(Duration::from_millis(200)))
                .await
                .unwrap();
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), MIN_SAMPLES);
        source
            .delays
            .lock()
            .unwrap()
            .extend([Duration::from_millis(300), Duration::from_millis(10)]);
        let started = Instant::now();
        let rows = stack
            .oneshot(request(Duration::from_millis(200)))
            .await
            .unwrap();
        assert_eq!(winner(&rows), MIN_SAMPLES as i64 + 1);
        let elapsed = started.elapsed();
        assert!(
            elapsed > Duration::from_millis(20) && elapsed <= Duration::from_millis(25),
            "{elapsed:?}"
        );
    }

    #[test]
    fn histogram_percentiles_follow_the_samples() {
        let h = LatencyHistogram::new(0.95);
        assert_eq!(h.high(), None);
        for i in 0..100u64 {
            // 1..=100 ms
            h.record(Duration::from_millis(i + 1));
        }
        let high = h.high().unwrap();
        let median = h.median().unwrap();
        // Within one bucket (19%) above the true values.
        assert!(
            high >= Duration::from_millis(95) && high <= Duration::from_millis(114),
            "{high:?}"
        );
        assert!(
            median >= Duration::from_millis(50) && median <= Duration::from_millis(60),
            "{median:?}"
        );
    }
}
