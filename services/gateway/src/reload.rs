//! Configuration reload without a restart: the served [`Generation`] (a built [`Gateway`], its
//! metric handles and its training log) behind one atomically swapped pointer, and the reload
//! that replaces it.
//!
//! # Contract
//! A request loads the current generation once ([`Live::current`]) and runs on it to the end:
//! its plan, its sources' stacks, its limits and its training-log schema are all of one
//! configuration. A reload ([`Live::reload`], on SIGHUP, on a change of the file, or on
//! `POST /admin/reload`) reads the file, parses and validates it as `serve` does, refuses a
//! change to what cannot change while running ([`fixed_fields`]), builds the sources whose
//! definition changed or that are new (sharing the others as they are: connections, pools, cache
//! and all; see [`Gateway::rebuild`]), health-checks what it built, then swaps the new generation
//! in. Requests that started before the swap finish on the old one; the sources only it held
//! are dropped (their connections closed) when the last of them ends.
//!
//! # Failure
//! A file that fails validation, a field that cannot change, a source that fails to build, or a
//! required source whose health check fails: the running generation stays as it was, the
//! reload is refused with every error (in the log, the counter
//! `feature_gateway_config_reloads_total{result}` and the admin answer), and nothing running is
//! disturbed. Reloads run one at a time.
//!
//! # The training log
//! Its sink cannot change while running, but what it logs can: when the logged feature
//! services' schemas (or the sample rates) change, the log is restarted for the new ones
//! after the swap, once the requests still running on the old generation have ended (each logs
//! with its own schema, so none is written under another's columns). The new generation's
//! vectors served meanwhile are held in memory (at most the log's `queue_capacity`, more are
//! counted as dropped with reason `reloading`) and handed to the new log when it starts.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;
use fetcher_api::{Env, Registry};
use tokio::sync::{Notify, OwnedMutexGuard};
use training_log::{Record, SchemaDef, TrainingLog, TrainingLogError};

use gateway_config::{
    Config, ConfigError, ConfigErrors, FeatureRef, training_log::TrainingLogConfig,
};

use crate::{
    gateway::{Gateway, load_config_text},
    plan::Plan,
    telemetry::{self, ServiceMetrics},
};

/// The metric label of ad-hoc requests (explicit feature refs).
pub(crate) const ADHOC: &str = "adhoc";
/// The metric label of requests naming an unknown feature service.
pub(crate) const UNKNOWN: &str = "unknown";

/// How long one health check may take.
pub(crate) const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the configuration file is read to see whether it changed.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// After a change is seen, the file is read again this much later and reloaded only if it
/// reads the same: a file written in place in several writes is not loaded half-written.
const WATCH_SETTLE: Duration = Duration::from_millis(100);

/// One served configuration: what a request runs on from its start to its end.
#[derive(Debug)]
pub struct Generation {
    gateway: Arc<Gateway>,
    /// Metric handles per feature service, plus `adhoc` and `unknown`.
    metrics: HashMap<String, ServiceMetrics>,
    /// Where its vectors are logged, if anywhere.
    log: Option<Arc<LogSlot>>,
}

impl Generation {
    fn new(gateway: Arc<Gateway>, log: Option<Arc<LogSlot>>) -> Self {
        let metrics = gateway
            .plans()
            .keys()
            .map(String::as_str)
            .chain([ADHOC, UNKNOWN])
            .map(|name| (name.to_owned(), ServiceMetrics::new(name)))
            .collect();
        Generation {
            gateway,
            metrics,
            log,
        }
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The metrics of a request's feature service, under a bounded label.
    pub(crate) fn metrics(&self, feature_service: &str) -> &ServiceMetrics {
        let label = if feature_service.is_empty() {
            ADHOC
        } else if self.metrics.contains_key(feature_service) {
            feature_service
        } else {
            UNKNOWN
        };
        &self.metrics[label]
    }

    /// Hands one served vector of `plan` to the training log, if it wants it: `record` makes
    /// the record from the request id, only when it is logged. Ad-hoc requests (no feature
    /// service) have no stable schema and are not logged.
    pub(crate) fn log_vector(
        &self,
        plan: &Plan,
        request_id: impl FnOnce() -> String,
        record: impl FnOnce(String) -> Record,
    ) {
        if let Some(slot) = &self.log {
            slot.submit(&plan.name, request_id, record);
        }
    }
}

/// The training log of one or more generations: started, or starting (after a reload that
/// changed its schemas), with the vectors served meanwhile held for it.
#[derive(Debug)]
pub(crate) struct LogSlot {
    log: OnceLock<TrainingLog>,
    /// While starting: the vectors served, by feature service. `None` once the log has started,
    /// or if it could not.
    pending: Mutex<Option<Vec<(String, Record)>>>,
    /// Most vectors held while starting.
    capacity: usize,
    /// What the log was started for: its schemas and sample rates.
    schemas: Vec<SchemaDef>,
    sample: BTreeMap<String, f64>,
}

impl LogSlot {
    fn started(log: TrainingLog, schemas: Vec<SchemaDef>, config: &TrainingLogConfig) -> Self {
        LogSlot {
            log: OnceLock::from(log),
            pending: Mutex::new(None),
            capacity: 0,
            schemas,
            sample: config.sample.clone(),
        }
    }

    fn starting(schemas: Vec<SchemaDef>, config: &TrainingLogConfig) -> Self {
        LogSlot {
            log: OnceLock::new(),
            pending: Mutex::new(Some(Vec::new())),
            capacity: config.queue_capacity.max(1),
            schemas,
            sample: config.sample.clone(),
        }
    }

    fn logs(&self, schemas: &[SchemaDef], config: &TrainingLogConfig) -> bool {
        self.schemas == schemas && self.sample == config.sample
    }

    /// The started log, if it has.
    pub(crate) fn get(&self) -> Option<&TrainingLog> {
        self.log.get()
    }

    fn submit(
        &self,
        feature_service: &str,
        request_id: impl FnOnce() -> String,
        record: impl FnOnce(String) -> Record,
    ) {
        if let Some(log) = self.log.get() {
            let id = request_id();
            if log.wants(feature_service, &id) {
                log.submit(feature_service, record(id));
            }
            return;
        }
        if !self
            .schemas
            .iter()
            .any(|s| s.feature_service == feature_service)
        {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // Started while this request waited for the lock.
        if let Some(log) = self.log.get() {
            drop(pending);
            let id = request_id();
            if log.wants(feature_service, &id) {
                log.submit(feature_service, record(id));
            }
            return;
        }
        match pending.as_mut() {
            Some(held) if held.len() < self.capacity => {
                held.push((feature_service.to_owned(), record(request_id())));
            }
            // Counted; no log line per vector on the serving path.
            _ => telemetry::training_log_reload_dropped(1),
        }
    }

    /// The log started: the vectors held are handed to it, then new ones go straight to it.
    fn start(&self, log: TrainingLog) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for (feature_service, record) in pending.take().unwrap_or_default() {
            if log.wants(&feature_service, &record.request_id) {
                log.submit(&feature_service, record);
            }
        }
        let _ = self.log.set(log);
    }

    /// The log could not start: the vectors held, and every one served from now on by the
    /// generations it serves, are dropped and counted.
    fn failed(&self, error: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let held = pending.take().map_or(0, |held| held.len());
        telemetry::training_log_reload_dropped(held as u64);
        tracing::error!(
            records = held,
            "the training log cannot start after a reload; the vectors of the reloaded \
             configuration are not logged (counted as dropped, reason reloading) until a restart: \
             {error}"
        );
    }
}

/// The training log schema of a feature service's plan: its inputs and outputs with their
/// types, which outputs the configuration marks `pii`, and the fetched features its derived
/// features read that are not outputs ([`Plan::logged_inputs`], the log's `input:` columns).
pub fn log_schema(config: &Config, plan: &Plan) -> SchemaDef {
    let column = |i: &crate::plan::Input| training_log::Column {
        name: i.name.clone(),
        ty: i.ty,
        pii: i.pii,
    };
    SchemaDef {
        feature_service: plan.name.clone(),
        definition_hash: plan.definition_hash.clone(),
        entities: plan.entities.iter().map(column).collect(),
        context: plan.context.iter().map(column).collect(),
        features: plan
            .outputs
            .iter()
            .map(|o| training_log::FeatureColumn {
                name: o.name.clone(),
                ty: o.ty,
                pii: FeatureRef::parse(&o.name).is_ok_and(|r| {
                    config
                        .views
                        .get(&r.view)
                        .and_then(|v| v.features.get(&r.feature))
                        .is_some_and(|f| f.pii)
                }),
            })
            .collect(),
        inputs: plan
            .logged_inputs
            .iter()
            .map(|&i| {
                let input = &plan.derived_inputs[i];
                training_log::FeatureColumn {
                    name: input.name.clone(),
                    ty: input.ty,
                    pii: input.pii,
                }
            })
            .collect(),
        pii: config
            .training_log
            .as_ref()
            .map(|t| t.pii)
            .unwrap_or_default(),
    }
}

/// The training log schemas of `gateway`'s feature services, in name order.
pub fn log_schemas(gateway: &Gateway) -> Vec<SchemaDef> {
    gateway
        .plans()
        .values()
        .map(|plan| log_schema(gateway.config(), plan))
        .collect()
}

/// Starts the training log of `gateway`'s configuration, if it has one.
pub fn start_training_log(gateway: &Gateway) -> Result<Option<TrainingLog>, TrainingLogError> {
    let Some(config) = gateway.config().training_log.clone() else {
        return Ok(None);
    };
    TrainingLog::start(
        config,
        log_schemas(gateway),
        Arc::new(telemetry::TrainingLogTelemetry::new()),
    )
    .map(Some)
}

/// Fields of the file that cannot change while the gateway runs, each with the reason; a reload
/// that changes one is refused naming it (restart the gateway to apply it).
pub fn fixed_fields(running: &Config, new: &Config) -> Vec<ConfigError> {
    let sampled_apart = |t: &Option<TrainingLogConfig>| {
        t.clone().map(|mut t| {
            t.sample.clear();
            t
        })
    };
    let fixed: [(&str, bool, &str); 7] = [
        (
            "server.tls",
            running.tls != new.tls,
            "TLS is set up when the gRPC port opens",
        ),
        (
            "server.worker_threads",
            running.worker_threads != new.worker_threads,
            "the threads are started with the process",
        ),
        (
            "telemetry.traces",
            running.traces != new.traces,
            "the trace exporter is set up at start",
        ),
        (
            "auth",
            running.auth != new.auth,
            "callers are checked by the gRPC server set up at start",
        ),
        (
            "limits.max_message_bytes",
            running.limits.max_message_bytes != new.limits.max_message_bytes,
            "the gRPC server's message limit is set at start",
        ),
        (
            "limits.max_in_flight",
            running.limits.max_in_flight != new.limits.max_in_flight,
            "load shedding is set up at start",
        ),
        (
            "training_log",
            sampled_apart(&running.training_log) != sampled_apart(&new.training_log),
            "the training log's sink, directories and queue are set up at start \
             (its feature services and `sample` may change)",
        ),
    ];
    fixed
        .into_iter()
        .filter(|(_, changed, _)| *changed)
        .map(|(path, _, why)| ConfigError {
            position: None,
            path: path.to_owned(),
            message: format!(
                "cannot change while the gateway runs ({why}); restart it to apply this, \
                 or put the running value back to reload the rest"
            ),
        })
        .collect()
}

/// What asked for a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The file changed.
    File,
    /// `POST /admin/reload`.
    Admin,
}

impl Trigger {
    /// Its name in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::File => "file",
            Trigger::Admin => "admin",
        }
    }
}

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The new configuration serves.
    Reloaded {
        /// Its hash.
        hash: String,
        /// Sources kept, built and removed.
        rebuilt: crate::gateway::Rebuilt,
    },
    /// The file is the one the running configuration was read from.
    Unchanged {
        /// Its hash.
        hash: String,
    },
    /// A file change already tried (the watcher does not try a failed file again; SIGHUP and
    /// `POST /admin/reload` do). Not counted.
    Skipped,
    /// The file is not a valid configuration, or changes a field that cannot change: every
    /// problem, one per line. The running configuration stays.
    Invalid(String),
    /// A source could not be built, or a required one failed its health check: every error,
    /// one per line. The running configuration stays.
    BuildFailed(String),
    /// The gateway is shutting down.
    Closed,
}

/// Where a reload reads its configuration, and with what.
#[derive(Debug)]
pub struct ConfigSource {
    /// The file.
    pub path: PathBuf,
    /// The source kinds.
    pub registry: Registry,
    /// The environment `${NAME}`s resolve in.
    pub env: Env,
}

#[derive(Debug)]
struct ReloadState {
    closed: bool,
}

/// The served generation, and how a new one replaces it.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Generation>,
    source: Option<ConfigSource>,
    /// Held by the reload running, and by the training log's restart after it.
    reloading: Arc<tokio::sync::Mutex<ReloadState>>,
    /// Hash of the last file text a reload tried (the running one at start).
    last_attempt: Mutex<String>,
    /// Poked after a swap: the health checks run at once on the new sources.
    swapped: Notify,
}

impl Live {
    /// Serves `gateway`, logging to `training_log`; reloads read `source` (none: no reload).
    pub fn new(
        gateway: Gateway,
        training_log: Option<TrainingLog>,
        source: Option<ConfigSource>,
    ) -> Self {
        let hash = gateway.config().hash.clone();
        let log = match (training_log, &gateway.config().training_log) {
            (Some(log), Some(config)) => Some(Arc::new(LogSlot::started(
                log,
                log_schemas(&gateway),
                config,
            ))),
            _ => None,
        };
        telemetry::reloads_registered();
        Live {
            current: ArcSwap::from_pointee(Generation::new(Arc::new(gateway), log)),
            source,
            reloading: Arc::new(tokio::sync::Mutex::new(ReloadState { closed: false })),
            last_attempt: Mutex::new(hash),
            swapped: Notify::new(),
        }
    }

    /// The generation serving now. A request takes it once and keeps it to its end.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Resolves after the next swap of generations.
    pub(crate) async fn swapped(&self) {
        self.swapped.notified().await
    }

    fn last_attempt(&self) -> String {
        self.last_attempt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file and, when it holds a valid configuration whose sources build, serves it
    /// (see the module's contract). Counted and logged by result.
    pub async fn reload(&self, trigger: Trigger) -> Outcome {
        let Some(source) = &self.source else {
            return Outcome::Closed;
        };
        let guard = self.reloading.clone().lock_owned().await;
        if guard.closed {
            return Outcome::Closed;
        }
        let started = std::time::Instant::now();
        let running = self.current();
        let running_hash = running.gateway.config().hash.clone();
        let fail = |result: &'static str, errors: String| {
            telemetry::reload_failed(trigger.as_str(), result, &running_hash, &errors);
            if result == "invalid" {
                Outcome::Invalid(errors)
            } else {
                Outcome::BuildFailed(errors)
            }
        };
        let text = match tokio::fs::read_to_string(&source.path).await {
            Ok(text) => text,
            Err(e) => {
                return fail(
                    "invalid",
                    format!("{}: cannot read the file: {e}", source.path.display()),
                );
            }
        };
        let hash = gateway_config::short_hash(text.as_bytes());
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if trigger == Trigger::File && *last == hash {
                return Outcome::Skipped;
            }
            last.clone_from(&hash);
        }
        if hash == running_hash {
            telemetry::reload_unchanged(trigger.as_str(), &hash);
            return Outcome::Unchanged { hash };
        }
        // Parsing, validating and building take CPU (and a static table's load is synchronous):
        // on a blocking-pool thread, the runtime's workers go on serving requests meanwhile.
        let prepared = {
            let (path, registry, env) = (
                source.path.clone(),
                source.registry.clone(),
                source.env.clone(),
            );
            let (running, runtime) = (running.gateway.clone(), tokio::runtime::Handle::current());
            tokio::task::spawn_blocking(move || {
                runtime.block_on(prepare(&path, &text, &registry, &env, &running))
            })
            .await
            .unwrap_or_else(|e| Err(("build_failed", format!("the reload failed: {e}"))))
        };
        let (gateway, rebuilt) = match prepared {
            Ok(prepared) => prepared,
            Err((result, errors)) => return fail(result, errors),
        };
        let (log, restart) = match (&running.log, &gateway.config().training_log) {
            (Some(slot), Some(config)) => {
                let schemas = log_schemas(&gateway);
                if slot.get().is_some() && slot.logs(&schemas, config) {
                    (Some(slot.clone()), None)
                } else {
                    if let Err(e) = salt_available(config, &schemas) {
                        return fail("build_failed", e);
                    }
                    let slot = Arc::new(LogSlot::starting(schemas, config));
                    (Some(slot.clone()), Some((slot, config.clone())))
                }
            }
            _ => (None, None),
        };
        let gateway = Arc::new(gateway);
        let old = self
            .current
            .swap(Arc::new(Generation::new(gateway.clone(), log)));
        telemetry::reloaded(telemetry::Reloaded {
            trigger: trigger.as_str(),
            old: &running_hash,
            new: &gateway.config().hash,
            kept: &rebuilt.kept,
            built: &rebuilt.built,
            removed: &rebuilt.removed,
            took: started.elapsed(),
        });
        self.swapped.notify_waiters();
        drop(running);
        let hash = gateway.config().hash.clone();
        let old_log = old.log.clone();
        let drained_by = drained_by(&old);
        retire(old);
        if let Some((slot, config)) = restart {
            // Off the reload's answer, still one at a time: the guard goes with it.
            tokio::spawn(restart_log(
                old_log, drained_by, slot, gateway, config, guard,
            ));
        }
        Outcome::Reloaded { hash, rebuilt }
    }

    /// Reloads each time the file's contents change (read every [`WATCH_INTERVAL`]), forever.
    /// Reading the contents rather than watching the file for events also sees a Kubernetes
    /// ConfigMap update (the mounted file is a symlink the kubelet swaps, which an inotify watch
    /// on the file misses) and an editor's save by rename.
    pub async fn watch_file(self: Arc<Self>) {
        let Some(path) = self.source.as_ref().map(|s| s.path.clone()) else {
            return;
        };
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let Some(hash) = file_hash(&path).await else {
                // Missing for a moment while it is replaced: looked at again next time.
                continue;
            };
            if hash == self.last_attempt() {
                continue;
            }
            tokio::time::sleep(WATCH_SETTLE).await;
            if file_hash(&path).await.as_ref() != Some(&hash) {
                continue;
            }
            self.reload(Trigger::File).await;
        }
    }

    /// Reloads on each SIGHUP from now on, forever. Call before saying the gateway is ready:
    /// SIGHUP's default action ends the process.
    pub fn on_hangup(self: &Arc<Self>) -> std::io::Result<tokio::task::JoinHandle<()>> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = signal(SignalKind::hangup())?;
            let live = self.clone();
            Ok(tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    live.reload(Trigger::Signal).await;
                }
            }))
        }
        #[cfg(not(unix))]
        Ok(tokio::spawn(async {}))
    }

    /// Refuses reloads from now on and flushes the training log (after a restart in progress).
    pub async fn close(&self) {
        let mut state = self.reloading.lock().await;
        state.closed = true;
        if let Some(log) = self.current().log.as_ref().and_then(|slot| slot.get()) {
            log.close().await;
        }
    }
}

async fn file_hash(path: &Path) -> Option<String> {
    tokio::fs::read(path)
        .await
        .ok()
        .map(|bytes| gateway_config::short_hash(&bytes))
}

/// Loads `text`, the file at `path`, as the configuration that replaces `running`'s: validated,
/// with no field changed that cannot change, its new sources built and health-checked. The
/// error is the reload's result (`invalid`, `build_failed`) and every problem, one per line.
async fn prepare(
    path: &Path,
    text: &str,
    registry: &Registry,
    env: &Env,
    running: &Gateway,
) -> Result<(Gateway, crate::gateway::Rebuilt), (&'static str, String)> {
    let config = load_config_text(path, text, registry, Some(env))
        .map_err(|e| ("invalid", e.to_string()))?;
    let fixed = fixed_fields(running.config(), &config);
    if !fixed.is_empty() {
        let errors = ConfigErrors {
            file: path.display().to_string(),
            errors: fixed,
        };
        return Err(("invalid", errors.to_string()));
    }
    let (gateway, rebuilt) =
        Gateway::rebuild(config, registry, running)
            .await
            .map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                ("build_failed", lines.join("\n"))
            })?;
    check_built(&gateway, &rebuilt.built)
        .await
        .map_err(|errors| ("build_failed", errors.join("\n")))?;
    Ok((gateway, rebuilt))
}

/// Health-checks the sources a reload built: a required one that fails refuses the reload (it
/// would turn the gateway NOT_SERVING); another one is served, its failure logged, as at start.
async fn check_built(gateway: &Gateway, built: &[String]) -> Result<(), Vec<String>> {
    let checks = gateway
        .sources()
        .iter()
        .filter(|s| built.iter().any(|b| *b == *s.name))
        .filter_map(|s| s.fetcher.clone().map(|f| (s, f)))
        .map(|(source, fetcher)| async move {
            let result = tokio::time::timeout(HEALTH_TIMEOUT, fetcher.health())
                .await
                .unwrap_or_else(|_| {
                    Err(fetcher_api::FetchError::timeout("health check timed out"))
                });
            (source, result)
        });
    let mut errors = Vec::new();
    for (source, result) in futures::future::join_all(checks).await {
        match result {
            Ok(()) => {}
            Err(e) if source.required => errors.push(format!(
                "source `{}`: required, and its health check fails: {e}",
                source.name
            )),
            Err(e) => tracing::warn!(
                source = %source.name,
                "configuration reload: the source's health check fails; served as at start: {e}"
            ),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A pii feature or context value hashed in the log needs the salt (as `TrainingLog::start`
/// requires it): checked before the log is stopped for new schemas, so a reload that could not
/// start it is refused instead.
fn salt_available(config: &TrainingLogConfig, schemas: &[SchemaDef]) -> Result<(), String> {
    let needs_salt =
        config.pii == training_log::PiiMode::Hash && schemas.iter().any(SchemaDef::has_pii);
    match std::env::var(&config.pii_salt_env) {
        _ if !needs_salt => Ok(()),
        Ok(salt) if !salt.is_empty() => Ok(()),
        _ => Err(format!(
            "training_log: pii values are hashed with the salt in ${}, which is not set",
            config.pii_salt_env
        )),
    }
}

/// When every request running on `generation` has ended, at the latest: a request's deadline is
/// at most its `max_deadline`.
fn drained_by(generation: &Generation) -> tokio::time::Instant {
    tokio::time::Instant::now()
        + generation.gateway.config().limits.max_deadline
        + Duration::from_secs(1)
}

/// Drops a replaced generation once the last request running on it has ended, on a blocking-pool
/// thread: what only it held (a static table's rows, a removed source's pool) can take
/// milliseconds to free, which the request that happened to end last would otherwise pay.
fn retire(old: Arc<Generation>) {
    let until = drained_by(&old);
    tokio::spawn(async move {
        let mut old = old;
        loop {
            match Arc::try_unwrap(old) {
                Ok(generation) => {
                    tokio::task::spawn_blocking(move || drop(generation));
                    return;
                }
                // Still in use past every deadline: the last user drops it.
                Err(_) if tokio::time::Instant::now() >= until => return,
                Err(shared) => old = shared,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Restarts the training log for a new generation's schemas: once the requests still running on
/// the generations that log with the old one have ended (each logs with its own schema, and the
/// old log's spool must not be written to while the new log replays it), the old log is flushed
/// and closed, and the new one started, taking the vectors `slot` held meanwhile.
async fn restart_log(
    old_slot: Option<Arc<LogSlot>>,
    drained_by: tokio::time::Instant,
    slot: Arc<LogSlot>,
    gateway: Arc<Gateway>,
    config: TrainingLogConfig,
    _guard: OwnedMutexGuard<ReloadState>,
) {
    if let Some(old_slot) = old_slot {
        // Held by every generation logging to it (earlier ones too, when a reload kept it), and
        // by nothing else once they have ended.
        while Arc::strong_count(&old_slot) > 1 && tokio::time::Instant::now() < drained_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(log) = old_slot.get() {
            log.close().await;
        }
    }
    match TrainingLog::start(
        config,
        log_schemas(&gateway),
        Arc::new(telemetry::TrainingLogTelemetry::new()),
    ) {
        Ok(log) => {
            slot.start(log);
            tracing::info!("training log restarted for the reloaded feature services");
        }
        Err(e) => slot.failed(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two static sources and a feature service over both; `b_path` is the table of `b`'s view.
    fn config_text(b_path: &str, extra: &str) -> String {
        format!(
            r#"
[entities.user_id]
type = "string"

[sources.a]
kind = "static"

[sources.b]
kind = "static"

[views.va]
source = "a"
entities = ["user_id"]
path = "a.csv"
[views.va.features]
x = {{ type = "int64" }}

[views.vb]
source = "b"
entities = ["user_id"]
path = "{b_path}"
[views.vb.features]
y = {{ type = "int64" }}

[feature_services.fs]
features = ["va:x", "vb:y"]
{extra}
"#
        )
    }

    fn tables() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.csv"), "user_id,x\nu1,1\n").unwrap();
        std::fs::write(dir.path().join("b1.csv"), "user_id,y\nu1,10\n").unwrap();
        std::fs::write(dir.path().join("b2.csv"), "user_id,y\nu1,20\n").unwrap();
        dir
    }

    fn load(dir: &Path, text: &str) -> Config {
        let path = dir.join("gateway.toml");
        load_config_text(&path, text, &fetcher_builtin::registry(), None).unwrap()
    }

    fn fetcher(gateway: &Gateway, name: &str) -> Arc<dyn fetcher_api::Fetcher> {
        let source = gateway.sources().iter().find(|s| &*s.name == name);
        source.unwrap().fetcher.clone().unwrap()
    }

    #[tokio::test]
    async fn a_rebuild_shares_unchanged_sources_and_builds_the_others() {
        let dir = tables();
        let registry = fetcher_builtin::registry();
        let first = Gateway::build(load(dir.path(), &config_text("b1.csv", "")), &registry)
            .await
            .unwrap();
        let text = config_text("b2.csv", "[sources.c]\nkind = \"request\"\n");
        let (second, rebuilt) = Gateway::rebuild(load(dir.path(), &text), &registry, &first)
            .await
            .unwrap();
        assert_eq!(rebuilt.kept, ["a"]);
        assert_eq!(rebuilt.built, ["b", "c"]);
        assert!(rebuilt.removed.is_empty());
        assert!(Arc::ptr_eq(&fetcher(&first, "a"), &fetcher(&second, "a")));
        assert!(!Arc::ptr_eq(&fetcher(&first, "b"), &fetcher(&second, "b")));
        // And back: `c` is removed, `b` built again.
        let (_, rebuilt) = Gateway::rebuild(
            load(dir.path(), &config_text("b1.csv", "")),
            &registry,
            &second,
        )
        .await
        .unwrap();
        assert_eq!(
            (rebuilt.kept, rebuilt.built, rebuilt.removed),
            (vec!["a".into()], vec!["b".into()], vec!["c".into()])
        );
    }

    #[tokio::test]
    async fn a_rebuild_reports_every_source_that_fails_to_build() {
        let dir = tables();
        let registry = fetcher_builtin::registry();
        let first = Gateway::build(load(dir.path(), &config_text("b1.csv", "")), &registry)
            .await
            .unwrap();
        let text = config_text("missing.csv", "")
            .replace("path = \"a.csv\"", "path = \"also-missing.csv\"");
        let errors = Gateway::rebuild(load(dir.path(), &text), &registry, &first)
            .await
            .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{text:?}");
        assert!(text[0].starts_with("source `a`: view `va`"), "{text:?}");
        assert!(text[1].starts_with("source `b`: view `vb`"), "{text:?}");
    }

    #[test]
    fn fields_that_cannot_change_while_running_are_named() {
        let dir = tables();
        let running = load(dir.path(), &config_text("b1.csv", ""));
        let text = config_text(
            "b2.csv",
            "[limits]\nmax_message_bytes = 1024\nmax_batch_rows = 10\n\
             [server]\nworker_threads = 3\n",
        );
        let new = load(dir.path(), &text);
        let paths: Vec<String> = fixed_fields(&running, &new)
            .into_iter()
            .map(|e| e.path)
            .collect();
        // `max_batch_rows` applies to the requests after the reload: not refused.
        assert_eq!(paths, ["server.worker_threads", "limits.max_message_bytes"]);
        assert!(fixed_fields(&running, &running).is_empty());
    }

    #[tokio::test]
    async fn a_reload_swaps_a_valid_file_in_and_leaves_a_bad_one_out() {
        let dir = tables();
        let path = dir.path().join("gateway.toml");
        let registry = fetcher_builtin::registry();
        std::fs::write(&path, config_text("b1.csv", "")).unwrap();
        let config = crate::load_config(&path, &registry, None).unwrap();
        let first_hash = config.hash.clone();
        let live = Live::new(
            Gateway::build(config, &registry).await.unwrap(),
            None,
            Some(ConfigSource {
                path: path.clone(),
                registry,
                env: Env::process(),
            }),
        );
        let before = live.current();
        assert_eq!(
            live.reload(Trigger::Admin).await,
            Outcome::Unchanged {
                hash: first_hash.clone()
            }
        );

        std::fs::write(&path, config_text("b2.csv", "")).unwrap();
        let Outcome::Reloaded { hash, rebuilt } = live.reload(Trigger::Signal).await else {
            panic!("not reloaded")
        };
        assert_ne!(hash, first_hash);
        assert_eq!(live.current().gateway().config().hash, hash);
        assert_eq!(
            (rebuilt.kept, rebuilt.built),
            (vec!["a".into()], vec!["b".into()])
        );
        // A request that started before keeps its generation, whole.
        assert_eq!(before.gateway().config().hash, first_hash);

        // A file with problems: every one, named; the running configuration stays.
        let broken = config_text("b1.csv", "")
            .replace("x = { type = \"int64\" }", "x = { type = \"int65\" }")
            .replace("source = \"b\"", "source = \"nope\"");
        std::fs::write(&path, &broken).unwrap();
        let Outcome::Invalid(errors) = live.reload(Trigger::Admin).await else {
            panic!("not refused")
        };
        assert!(errors.contains("views.va.features.x.type"), "{errors}");
        assert!(errors.contains("views.vb.source"), "{errors}");
        assert_eq!(live.current().gateway().config().hash, hash);
        // The watcher does not try the same file again; a signal does.
        assert_eq!(live.reload(Trigger::File).await, Outcome::Skipped);
        assert!(matches!(
            live.reload(Trigger::Signal).await,
            Outcome::Invalid(_)
        ));

        // A source that cannot be built: the running configuration stays.
        std::fs::write(&path, config_text("gone.csv", "")).unwrap();
        let Outcome::BuildFailed(errors) = live.reload(Trigger::Admin).await else {
            panic!("not refused")
        };
        assert!(errors.starts_with("source `b`"), "{errors}");
        assert_eq!(live.current().gateway().config().hash, hash);

        // A field that cannot change while running.
        std::fs::write(
            &path,
            config_text("b1.csv", "[server]\nworker_threads = 7\n"),
        )
        .unwrap();
        let Outcome::Invalid(errors) = live.reload(Trigger::Admin).await else {
            panic!("not refused")
        };
        assert!(
            errors.contains("server.worker_threads: cannot change while the gateway runs"),
            "{errors}"
        );
    }
}
