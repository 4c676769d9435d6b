//! Drift monitoring online: what a monitored feature service serves, counted over a rolling
//! window and compared with its reference profile (`[feature_services.NAME.monitor]`), off the
//! request path.
//!
//! # Contract
//! A request offers each served vector of a monitored feature service to [`Monitor::observe`].
//! The vector is kept with the monitor's fixed `sample` share, then by a rate budget per
//! feature service ([`OBSERVED_PER_SECOND`]): every [`SAMPLER_INTERVAL`] the request that finds
//! the interval over measures the traffic offered in it and sets the next interval's rate to
//! the budget over that traffic (1 below the budget). Each vector is drawn on its own at that
//! rate and counted with the inverse of it as its weight, so the window's counts are the served
//! traffic's in expectation, whatever the traffic's rate does over the window, drawn from about
//! [`OBSERVED_PER_SECOND`] vectors a second at most: the monitor's cost is bounded whatever the
//! load. A kept vector is coded where it is served
//! ([`drift::Reference::code`]: per feature its status, null and default flags and reference
//! bucket, four bytes; the values are not copied) and put on a bounded channel. It never waits
//! and never wakes the worker: when the channel is full the vector is dropped and counted
//! (`feature_gateway_drift_observations_dropped_total`).
//!
//! One worker thread owns every window. It takes what is queued every [`DRAIN_EVERY`] and at
//! each bucket's end (a wake per vector cost more than counting it): per feature service a
//! [`drift::Window`] per bucket (the window's length over [`BUCKETS`]), the last [`BUCKETS`] of
//! them forming the rolling window. At each bucket's end the rolling window is compared with the
//! reference and the gauges are set (see [`crate::telemetry`]). Each pass's CPU time is
//! recorded (`feature_gateway_drift_worker_pass_cpu_seconds`): how long the worker holds a
//! core when it wakes bounds the delay it can add to a request on a busy machine.
//!
//! A configuration reload builds new [`Monitored`] feature services; one whose reference,
//! features and settings are those of the running one is kept as it is ([`Monitored::keep`]), so
//! its window goes on; another starts an empty window when its first vector arrives.
//!
//! # Failure
//! A reference that cannot be read or is not a profile, or whose features or types differ from
//! the feature service's, fails [`Monitored::load`] naming both: the gateway is not built (at
//! start, exit code 2; on a reload, the running configuration stays).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TryRecvError, TrySendError},
    },
    time::{Duration, Instant},
};

use drift::{Code, Comparison, Profile, Reference, Thresholds, Window};
use gateway_config::MonitorConfig;

use crate::{executor::Served, plan::Plan, status::Status, telemetry};

/// Buckets per rolling window: the gauges are set this many times per window.
pub const BUCKETS: u32 = 5;
/// Served vectors waiting for the worker, at most; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 16_384;
/// The rate budget: vectors observed per second and monitored feature service, about, whatever
/// the traffic (traffic below it is observed whole).
pub const OBSERVED_PER_SECOND: u64 = 1_000;
/// How often the sampler measures the traffic and sets its rate.
pub const SAMPLER_INTERVAL: Duration = Duration::from_millis(100);
/// How often the worker takes the vectors queued.
pub const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// What a vector observed whole weighs in the monitor's windows: a sampled one weighs this over
/// the rate it was drawn at (a window's shares are ratios of its counts, so their unit is free;
/// in thousandths, a weight is rounded by at most 0.05%).
pub const WEIGHT_UNIT: u64 = 1_000;

/// A monitored feature service, as a built gateway holds it.
#[derive(Debug)]
pub struct Monitored {
    feature_service: String,
    reference: Arc<Reference>,
    /// A hash of the reference's file, to tell whether a reload changed it.
    reference_hash: String,
    /// The reference's position of each of the plan's outputs.
    positions: Vec<usize>,
    thresholds: Thresholds,
    bucket: Duration,
    sample: f64,
    sampler: Sampler,
}

impl Monitored {
    /// Reads the reference profile of `config` and checks it against `plan`'s features.
    pub fn load(plan: &Plan, config: &MonitorConfig) -> Result<Monitored, String> {
        let path = config.reference.display();
        let unusable = |e: String| {
            format!(
                "the reference profile of feature service `{}` cannot be used: {e}",
                plan.name
            )
        };
        let text = std::fs::read_to_string(&config.reference)
            .map_err(|e| unusable(format!("{path}: {e}")))?;
        let profile = Profile::from_json(&text).map_err(|e| unusable(format!("{path}: {e}")))?;
        Monitored::new(plan, profile, &text, config)
    }

    /// `profile`, read from `text`, as `plan`'s reference: refused, naming both, unless it has
    /// the plan's features with their types.
    pub fn new(
        plan: &Plan,
        profile: Profile,
        text: &str,
        config: &MonitorConfig,
    ) -> Result<Monitored, String> {
        let reference = Reference::new(profile);
        let features: Vec<_> = plan
            .outputs
            .iter()
            .map(|o| (o.name.clone(), o.ty))
            .collect();
        let positions = reference
            .check(&features, &format!("feature service `{}`", plan.name))
            .map_err(|e| format!("{e} ({})", config.reference.display()))?;
        Ok(Monitored {
            feature_service: plan.name.clone(),
            reference: Arc::new(reference),
            reference_hash: gateway_config::short_hash(text.as_bytes()),
            positions,
            thresholds: Thresholds {
                psi: config.psi_threshold,
                null_rate_points: config.null_rate_threshold,
                status_points: config.status_threshold,
            },
            bucket: (config.window / BUCKETS).max(Duration::from_millis(1)),
            sample: config.sample,
            sampler: Sampler::new(),
        })
    }

    /// `running` when it monitors what this one does (the same reference, features and
    /// settings), so a reload that changed none of them keeps its window; else this one.
    pub fn keep(self: Arc<Self>, running: Option<&Arc<Monitored>>) -> Arc<Monitored> {
        match running {
            Some(r)
                if r.feature_service == self.feature_service
                    && r.reference_hash == self.reference_hash
                    && r.positions == self.positions
                    && r.thresholds == self.thresholds
                    && r.bucket == self.bucket
                    && r.sample == self.sample =>
            {
                r.clone()
            }
            _ => self,
        }
    }

    /// The feature service.
    pub fn feature_service(&self) -> &str {
        &self.feature_service
    }

    /// The share of its served vectors observed now: the `sample` share times the rate
    /// budget's.
    pub fn observed_share(&self) -> f64 {
        self.sample * self.sampler.share()
    }
}

/// The rate budget of one monitored feature service: which share of its vectors is observed,
/// set every [`SAMPLER_INTERVAL`] from the traffic offered in the last one.
#[derive(Debug)]
struct Sampler {
    start: Instant,
    /// When the current interval ends, in microseconds since `start`.
    ends_us: AtomicU64,
    /// Vectors offered in the current interval.
    offered: AtomicU64,
    /// The probability that a vector offered is observed during the current interval, in
    /// units of 2^-32 ([`Sampler::ALL`] for every vector).
    rate: AtomicU64,
}

impl Sampler {
    /// A rate of 1.
    const ALL: u64 = 1 << 32;

    fn new() -> Sampler {
        Sampler {
            start: Instant::now(),
            ends_us: AtomicU64::new(SAMPLER_INTERVAL.as_micros() as u64),
            offered: AtomicU64::new(0),
            rate: AtomicU64::new(Sampler::ALL),
        }
    }

    /// Whether one more vector offered is observed: `Some(weight)` when it is, the served
    /// vectors it stands for in [`WEIGHT_UNIT`]s (the inverse of the rate it was drawn at). A
    /// few atomic operations, a clock read and a random draw.
    fn draw(&self) -> Option<u64> {
        self.draw_at(self.start.elapsed().as_micros() as u64)
    }

    /// [`Sampler::draw`] at `now`, in microseconds since the sampler's start.
    fn draw_at(&self, now: u64) -> Option<u64> {
        let interval = SAMPLER_INTERVAL.as_micros() as u64;
        self.offered.fetch_add(1, Ordering::Relaxed);
        let ends = self.ends_us.load(Ordering::Relaxed);
        if now >= ends
            && self
                .ends_us
                .compare_exchange(ends, now + interval, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // This request ends the interval (begun at `ends - interval`, or longer ago after a
            // time without traffic): the traffic offered in it sets the next one's rate, the
            // budget over that traffic (at most 1).
            let offered = self.offered.swap(0, Ordering::Relaxed) as u128;
            let elapsed = u128::from((now + interval - ends).max(1));
            let budget = u128::from(OBSERVED_PER_SECOND) * elapsed / 1_000_000;
            let rate = if offered <= budget {
                Sampler::ALL
            } else {
                (budget * u128::from(Sampler::ALL) / offered).max(1) as u64
            };
            self.rate.store(rate, Ordering::Relaxed);
        }
        let rate = self.rate.load(Ordering::Relaxed);
        if rate >= Sampler::ALL {
            return Some(WEIGHT_UNIT);
        }
        (rand::random::<u32>() < rate as u32)
            .then(|| (u128::from(WEIGHT_UNIT) * u128::from(Sampler::ALL) / u128::from(rate)) as u64)
    }

    /// The share of the vectors offered now that are observed.
    fn share(&self) -> f64 {
        self.rate.load(Ordering::Relaxed) as f64 / Sampler::ALL as f64
    }
}

/// One served vector of a monitored feature service, for the worker.
#[derive(Debug)]
struct Observation {
    monitored: Arc<Monitored>,
    /// The served vectors it stands for, in [`WEIGHT_UNIT`]s.
    weight: u64,
    /// Per plan output, its code by the reference.
    codes: Vec<Code>,
}

/// The channel to the drift worker, shared by every generation of a running gateway. The worker
/// thread starts with the first vector observed, and ends when the last generation is dropped.
#[derive(Debug, Default)]
pub struct Monitor {
    sender: OnceLock<SyncSender<Observation>>,
}

impl Monitor {
    /// A monitor whose worker has not started.
    pub fn new() -> Monitor {
        Monitor::default()
    }

    /// Hands one served vector of `monitored`'s feature service to the worker, coded, when
    /// sampled; never waits.
    pub fn observe(&self, monitored: &Arc<Monitored>, served: &[Served]) {
        if monitored.sample < 1.0 && rand::random::<f64>() >= monitored.sample {
            return;
        }
        let Some(weight) = monitored.sampler.draw() else {
            return;
        };
        let reference = &monitored.reference;
        let observation = Observation {
            monitored: monitored.clone(),
            weight,
            codes: served
                .iter()
                .zip(&monitored.positions)
                .map(|(s, &position)| {
                    reference.code(
                        position,
                        drift_status(s.status),
                        &s.value,
                        Some(s.default_applied),
                    )
                })
                .collect(),
        };
        match self.sender().try_send(observation) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                telemetry::drift_observation_dropped()
            }
        }
    }

    fn sender(&self) -> &SyncSender<Observation> {
        self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::sync_channel(QUEUE_CAPACITY);
            telemetry::drift_monitor_started();
            let spawned = std::thread::Builder::new()
                .name("drift-monitor".into())
                .spawn(move || run(receiver));
            if let Err(e) = spawned {
                // The receiver is gone with the closure: every vector counts as dropped.
                tracing::error!(
                    "the drift monitor cannot start its thread; nothing is monitored: {e}"
                );
            }
            sender
        })
    }
}

/// The worker: every [`DRAIN_EVERY`], and when a bucket ends, counts the vectors queued and
/// publishes each feature service whose bucket ended. It sleeps in between rather than waiting
/// on the channel, so a request never wakes it.
fn run(receiver: mpsc::Receiver<Observation>) {
    let mut tracker = Tracker::default();
    let mut gauges: HashMap<String, telemetry::DriftGauges> = HashMap::new();
    let mut publish = |m: &Monitored, c: &Comparison| {
        let service = &m.feature_service;
        if !gauges.contains_key(service) {
            gauges.insert(service.clone(), telemetry::DriftGauges::new(service));
        }
        if let Some(g) = gauges.get_mut(service) {
            g.publish(c, m.observed_share());
        }
    };
    let mut drained = Instant::now();
    loop {
        let wake = tracker
            .next_end()
            .map_or(drained + DRAIN_EVERY, |end| end.min(drained + DRAIN_EVERY));
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let cpu = thread_cpu_time();
        // What is queued was served since the last drain: counted as of then, so a bucket
        // ending meanwhile (the worker wakes at its end) holds it. At most a queue's worth, so
        // the buckets end on time under any load.
        for _ in 0..QUEUE_CAPACITY {
            match receiver.try_recv() {
                Ok(observation) => tracker.observe(observation, drained, &mut publish),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        tracker.tick(now, &mut publish);
        telemetry::drift_worker_pass(thread_cpu_time().saturating_sub(cpu));
        drained = now;
    }
}

/// The CPU time the calling thread has used: a pass's CPU, not the time it was preempted for.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Every monitored feature service's buckets; time is given, so tests drive it.
#[derive(Debug, Default)]
struct Tracker {
    services: HashMap<String, Rolling>,
}

/// One feature service's rolling window: the bucket filling and the last ones ended.
#[derive(Debug)]
struct Rolling {
    monitored: Arc<Monitored>,
    current: Window,
    /// When `current` ends.
    ends: Instant,
    /// The last [`BUCKETS`] buckets ended, oldest first.
    ended: VecDeque<Window>,
}

impl Tracker {
    /// Counts `observation` into its feature service's current bucket (ending the buckets past
    /// first). A feature service monitored anew (a reload changed its reference or settings)
    /// starts an empty window.
    fn observe(
        &mut self,
        observation: Observation,
        now: Instant,
        publish: &mut impl FnMut(&Monitored, &Comparison),
    ) {
        let m = &observation.monitored;
        let rolling = match self.services.get_mut(&m.feature_service) {
            Some(r) if Arc::ptr_eq(&r.monitored, m) => {
                r.roll(now, publish);
                r
            }
            _ => {
                let rolling = Rolling::new(m.clone(), now);
                self.services.insert(m.feature_service.clone(), rolling);
                self.services
                    .get_mut(&m.feature_service)
                    .expect("inserted above")
            }
        };
        let window = &mut rolling.current;
        window.row();
        for (&code, &position) in observation.codes.iter().zip(&m.positions) {
            window.count(position, code, observation.weight);
        }
    }

    /// Ends every bucket past `now`.
    fn tick(&mut self, now: Instant, publish: &mut impl FnMut(&Monitored, &Comparison)) {
        for rolling in self.services.values_mut() {
            rolling.roll(now, publish);
        }
    }

    /// When the next bucket ends.
    fn next_end(&self) -> Option<Instant> {
        self.services.values().map(|r| r.ends).min()
    }
}

impl Rolling {
    fn new(monitored: Arc<Monitored>, now: Instant) -> Rolling {
        Rolling {
            current: Window::new(monitored.reference.clone()),
            ends: now + monitored.bucket,
            ended: VecDeque::with_capacity(BUCKETS as usize + 1),
            monitored,
        }
    }

    /// Ends the buckets past `now` (empty ones for a time without traffic), then compares the
    /// rolling window with the reference and publishes it, once.
    fn roll(&mut self, now: Instant, publish: &mut impl FnMut(&Monitored, &Comparison)) {
        if now < self.ends {
            return;
        }
        let bucket = self.monitored.bucket;
        let mut ended = 0;
        while now >= self.ends {
            let empty = Window::new(self.monitored.reference.clone());
            self.ended
                .push_back(std::mem::replace(&mut self.current, empty));
            if self.ended.len() > BUCKETS as usize {
                self.ended.pop_front();
            }
            self.ends += bucket;
            ended += 1;
            if ended >= BUCKETS && now >= self.ends {
                // A whole window without traffic: every bucket is empty; the next starts now.
                self.ends = now + bucket;
                break;
            }
        }
        let mut window = Window::new(self.monitored.reference.clone());
        for b in &self.ended {
            window.merge(b);
        }
        publish(&self.monitored, &window.compare(&self.monitored.thresholds));
    }
}

/// The drift crate's name of a status.
fn drift_status(status: Status) -> drift::Status {
    match status {
        Status::Present => drift::Status::Present,
        Status::NotFound => drift::Status::NotFound,
        Status::NullValue => drift::Status::NullValue,
        Status::OutsideMaxAge => drift::Status::OutsideMaxAge,
        Status::TimedOut => drift::Status::TimedOut,
        Status::SourceError => drift::Status::SourceError,
        Status::Stale => drift::Status::Stale,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use drift::{FeatureSpec, Profiler};
    use fetcher_api::{FeatureType, Value};

    use super::*;

    const CONFIG: &str = r#"
[sources.request]
kind = "request"

[views.txn]
source = "request"

[views.txn.features]
amount = { type = "double" }
channel = { type = "string" }

[feature_services.model]
features = ["txn:amount", "txn:channel"]

[feature_services.model.monitor]
reference = "model.json"
window = "5s"
"#;

    fn plan(text: &str) -> (Plan, MonitorConfig) {
        let config = gateway_config::load_str(
            text,
            "t.toml",
            Path::new("/profiles"),
            &fetcher_builtin::registry(),
        )
        .unwrap();
        let fs = &config.feature_services["model"];
        let plan = crate::plan::compile(
            &config,
            "model",
            "",
            fs.deadline,
            &fs.features,
            &fs.defaults,
        )
        .unwrap();
        (plan, fs.monitor.clone().unwrap())
    }

    /// `i`-th value of a population: amounts spread over 1..=1000, channels two to one.
    fn row(i: u64, amount_times: f64) -> Vec<(drift::Status, Value, bool)> {
        let amount = ((i * 7919) % 1000 + 1) as f64 * amount_times;
        let channel = if i.is_multiple_of(3) { "pos" } else { "ecom" };
        vec![
            (drift::Status::Present, Value::Double(amount), false),
            (drift::Status::Present, Value::String(channel.into()), false),
        ]
    }

    fn reference() -> Profile {
        let mut profiler = Profiler::new(vec![
            FeatureSpec {
                name: "txn:amount".into(),
                ty: FeatureType::Double,
                values: true,
            },
            FeatureSpec {
                name: "txn:channel".into(),
                ty: FeatureType::String,
                values: true,
            },
        ]);
        for i in 0..5000 {
            profiler.row();
            for (f, (status, value, default)) in row(i, 1.0).iter().enumerate() {
                profiler.observe(f, *status, value, Some(*default));
            }
        }
        profiler.finish("model", None, None)
    }

    fn monitored_by(profile: &Profile, config: &MonitorConfig) -> Arc<Monitored> {
        let (plan, _) = plan(CONFIG);
        let text = profile.to_json();
        Arc::new(Monitored::new(&plan, profile.clone(), &text, config).unwrap())
    }

    fn monitored() -> Arc<Monitored> {
        monitored_by(&reference(), &plan(CONFIG).1)
    }

    /// The comparisons published, with when.
    type Published = Vec<(String, Comparison)>;

    fn observe(
        tracker: &mut Tracker,
        m: &Arc<Monitored>,
        rows: std::ops::Range<u64>,
        amount_times: f64,
        now: Instant,
        published: &mut Published,
    ) {
        for i in rows {
            let observation = Observation {
                monitored: m.clone(),
                weight: 1,
                codes: row(i, amount_times)
                    .iter()
                    .zip(&m.positions)
                    .map(|((status, value, default), &position)| {
                        m.reference.code(position, *status, value, Some(*default))
                    })
                    .collect(),
            };
            tracker.observe(observation, now, &mut |m: &Monitored, c: &Comparison| {
                published.push((m.feature_service.clone(), c.clone()))
            });
        }
    }

    fn tick(tracker: &mut Tracker, now: Instant, published: &mut Published) {
        tracker.tick(now, &mut |m: &Monitored, c: &Comparison| {
            published.push((m.feature_service.clone(), c.clone()))
        });
    }

    fn psi(c: &Comparison, feature: &str) -> f64 {
        c.features
            .iter()
            .find(|f| f.feature == feature)
            .and_then(|f| f.psi)
            .unwrap()
    }

    #[test]
    fn the_window_is_the_last_five_buckets_published_at_each_bucket_end() {
        let m = monitored();
        assert_eq!(m.bucket, Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut tracker = Tracker::default();
        let mut published = Published::new();
        // 100 vectors in each of the first seven buckets.
        for b in 0..7u64 {
            observe(
                &mut tracker,
                &m,
                b * 100..(b + 1) * 100,
                1.0,
                at(b * 1000),
                &mut published,
            );
        }
        // Nothing is published inside a bucket; each bucket's end publishes once, with the
        // vectors of the buckets ended so far, at most five.
        let rows: Vec<u64> = published.iter().map(|(_, c)| c.rows).collect();
        assert_eq!(rows, [100, 200, 300, 400, 500, 500]);
        assert!(published.iter().all(|(fs, _)| fs == "model"));
        assert_eq!(tracker.next_end(), Some(at(7000)));
        tick(&mut tracker, at(6999), &mut published);
        assert_eq!(published.len(), 6);
        tick(&mut tracker, at(7000), &mut published);
        assert_eq!(published.last().unwrap().1.rows, 500);
        // Without traffic the window empties bucket by bucket, then stays empty.
        tick(&mut tracker, at(9000), &mut published);
        assert_eq!(published.last().unwrap().1.rows, 300);
        tick(&mut tracker, at(60_000), &mut published);
        let last = &published.last().unwrap().1;
        assert_eq!(last.rows, 0);
        assert!(last.features.iter().all(|f| f.psi.is_none()));
        assert_eq!(tracker.next_end(), Some(at(61_000)));
    }

    #[test]
    fn the_same_population_stays_below_0_1_and_a_unit_change_crosses_within_two_windows() {
        let m = monitored();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut tracker = Tracker::default();
        let mut published = Published::new();
        // Ten buckets (two windows) of the reference's population.
        for b in 0..10u64 {
            let rows = 10_000 + b * 400..10_000 + (b + 1) * 400;
            observe(
                &mut tracker,
                &m,
                rows,
                1.0,
                at(b * 1000 + 10),
                &mut published,
            );
        }
        assert_eq!(published.len(), 9);
        for (_, c) in &published {
            assert!(c.crossed().next().is_none(), "{c:?}");
            assert!(psi(c, "txn:amount") < 0.1, "{}", psi(c, "txn:amount"));
            assert!(psi(c, "txn:channel") < 0.1);
        }
        // Then amounts a hundred times larger: the first bucket's end finds it.
        let before = published.len();
        for b in 10..20u64 {
            let rows = 20_000 + b * 400..20_000 + (b + 1) * 400;
            observe(
                &mut tracker,
                &m,
                rows,
                100.0,
                at(b * 1000 + 10),
                &mut published,
            );
        }
        let crossed = published[before..]
            .iter()
            .position(|(_, c)| psi(c, "txn:amount") > 0.2)
            .expect("the amount's PSI crosses 0.2");
        assert!(crossed < 2 * BUCKETS as usize, "after {crossed} buckets");
        let (_, first) = &published[before + crossed];
        assert_eq!(first.features[0].feature, "txn:amount");
        assert!(psi(first, "txn:channel") < 0.1);
    }

    #[test]
    fn a_feature_service_monitored_anew_starts_an_empty_window() {
        let m = monitored();
        let start = Instant::now();
        let mut tracker = Tracker::default();
        let mut published = Published::new();
        observe(&mut tracker, &m, 0..100, 1.0, start, &mut published);
        // A reload with another reference: a new `Monitored`, a new window.
        let again = monitored();
        observe(&mut tracker, &again, 0..10, 1.0, start, &mut published);
        tick(&mut tracker, start + Duration::from_secs(1), &mut published);
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].1.rows, 10);
    }

    #[test]
    fn the_sampler_observes_about_its_budget_whatever_the_traffic() {
        let interval = SAMPLER_INTERVAL.as_micros() as u64;
        let budget = OBSERVED_PER_SECOND * interval / 1_000_000;
        let sampler = Sampler::new();
        // `n` vectors offered evenly over interval `i`: (vectors observed, their weights).
        let offer = |i: u64, n: u64| {
            (0..n)
                .filter_map(|j| sampler.draw_at(i * interval + j * interval / n))
                .fold((0, 0), |(seen, weight), w| (seen + 1, weight + w))
        };
        let whole = |n: u64| (n, n * WEIGHT_UNIT);
        // Below the budget every vector is observed, as itself.
        for i in 0..3 {
            assert_eq!(offer(i, budget / 2), whole(budget / 2));
        }
        // Twenty times the budget: the first interval at the rate before, then one in twenty,
        // each weighing twenty.
        assert_eq!(offer(3, 20 * budget), whole(20 * budget));
        let (mut seen, mut weight) = (0, 0);
        for i in 4..14 {
            let (s, w) = offer(i, 20 * budget);
            seen += s;
            weight += w;
        }
        assert_eq!(weight, 20 * WEIGHT_UNIT * seen);
        assert!((sampler.share() - 0.05).abs() < 1e-6);
        // 10 intervals' budget, 1,000 expected; a binomial's spread is about 31.
        assert!((850..=1150).contains(&seen), "{seen} observed");
        // One and a half times the budget: two in three, each weighing one and a half; the
        // budget is observed, not half of it.
        offer(14, budget * 3 / 2);
        let (mut seen, mut weight) = (0, 0);
        for i in 15..25 {
            let (s, w) = offer(i, budget * 3 / 2);
            seen += s;
            weight += w;
        }
        assert_eq!(weight, 1_500 * WEIGHT_UNIT / 1_000 * seen);
        assert!((900..=1100).contains(&seen), "{seen} observed");
        // Traffic falls back: the next interval observes every vector again, as after a time
        // without traffic.
        offer(25, budget / 10);
        assert_eq!(offer(26, budget / 10), whole(budget / 10));
        offer(27, 20 * budget);
        assert_eq!(offer(1000, 1), whole(1));
    }

    #[test]
    fn a_sampled_window_weighs_each_vector_by_the_traffic_it_stands_for() {
        // A window whose traffic grows twentyfold as its amounts change: sampled at the budget,
        // the quiet half and the busy one are observed about as often, and only the weights
        // keep the busy half's share of the served vectors (95%) in the counts.
        let m = monitored();
        let interval = SAMPLER_INTERVAL.as_micros() as u64;
        let budget = OBSERVED_PER_SECOND * interval / 1_000_000;
        let (mut served, mut sampled) = (
            Window::new(m.reference.clone()),
            Window::new(m.reference.clone()),
        );
        let mut unweighted = Window::new(m.reference.clone());
        let mut i = 0;
        for (intervals, per_interval, amount_times) in [(20, budget, 1.0), (20, 20 * budget, 3.0)] {
            for _ in 0..intervals {
                let start = i / budget * interval;
                for j in 0..per_interval {
                    let at = start + j * interval / per_interval;
                    let row = row(i * 31 + j, amount_times);
                    let codes: Vec<Code> = row
                        .iter()
                        .zip(&m.positions)
                        .map(|((status, value, default), &p)| {
                            m.reference.code(p, *status, value, Some(*default))
                        })
                        .collect();
                    for (&code, &p) in codes.iter().zip(&m.positions) {
                        served.count(p, code, 1);
                    }
                    if let Some(weight) = m.sampler.draw_at(at) {
                        sampled.row();
                        unweighted.row();
                        for (&code, &p) in codes.iter().zip(&m.positions) {
                            sampled.count(p, code, weight);
                            unweighted.count(p, code, 1);
                        }
                    }
                }
                i += budget;
            }
        }
        let shares = |w: &Window| -> Vec<f64> {
            let c = w.compare(&Thresholds::default());
            let amount = c
                .features
                .iter()
                .find(|f| f.feature == "txn:amount")
                .unwrap();
            amount.buckets.iter().map(|b| b.served).collect()
        };
        let (truth, estimate, naive) = (shares(&served), shares(&sampled), shares(&unweighted));
        let off = |x: &[f64]| {
            x.iter()
                .zip(&truth)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        };
        // 2,000 + 2,000 observed at first (below the budget, then the first busy interval at
        // the rate before it), then about 100 per interval: about 5,900 of 42,000.
        assert!(sampled.rows() < 6_500, "{} observed", sampled.rows());
        // The weighted shares within sampling noise (about 0.01 at most); the unweighted ones
        // about 0.17 off.
        assert!(off(&estimate) < 0.04, "{estimate:?} against {truth:?}");
        assert!(off(&naive) > 0.1, "{naive:?} against {truth:?}");
    }

    #[test]
    fn a_reload_that_changes_nothing_keeps_the_running_monitor() {
        let (profile, mut config) = (reference(), plan(CONFIG).1);
        let running = monitored_by(&profile, &config);
        let same = monitored_by(&profile, &config);
        assert!(Arc::ptr_eq(&same.clone().keep(Some(&running)), &running));
        let mut other = profile.clone();
        other.rows += 1;
        let changed = monitored_by(&other, &config);
        assert!(!Arc::ptr_eq(&changed.keep(Some(&running)), &running));
        config.psi_threshold = 0.3;
        let changed = monitored_by(&profile, &config);
        assert!(!Arc::ptr_eq(&changed.keep(Some(&running)), &running));
        assert!(!Arc::ptr_eq(&same.keep(None), &running));
    }

    #[test]
    fn a_reference_of_other_features_is_refused_naming_both() {
        let (plan, config) = plan(
            &CONFIG
                .replace(
                    "channel = { type = \"string\" }",
                    "channel = { type = \"int64\" }",
                )
                .replace(
                    "features = [\"txn:amount\", \"txn:channel\"]",
                    "features = [\"txn:channel\"]",
                ),
        );
        let profile = reference();
        let error =
            Monitored::new(&plan, profile.clone(), &profile.to_json(), &config).unwrap_err();
        assert!(
            error.contains(
                "`txn:channel` is int64 in feature service `model`, string in the reference"
            ),
            "{error}"
        );
        assert!(
            error.contains(
                "`txn:amount` (double) is in the reference, not in feature service `model`"
            ),
            "{error}"
        );
        assert!(error.contains("/profiles/model.json"), "{error}");
        // A file that is not there, or not a profile.
        let dir = tempfile::tempdir().unwrap();
        let mut config = config;
        config.reference = dir.path().join("missing.json");
        let error = Monitored::load(&plan, &config).unwrap_err();
        assert!(
            error.contains("feature service `model`") && error.contains("missing.json"),
            "{error}"
        );
        std::fs::write(
            dir.path().join("bad.json"),
            "{\"format\": \"feature-gateway.profile\"",
        )
        .unwrap();
        config.reference = dir.path().join("bad.json");
        let error = Monitored::load(&plan, &config).unwrap_err();
        assert!(error.contains("bad.json: not JSON"), "{error}");
    }
}
