//! The running gateway: the validated configuration, each source behind its stack, and the
//! compiled plans. Built at start-up (this is where the I/O of step 3 happens: connecting and
//! loading every source), then shared read-only by every request. A configuration reload builds
//! a new one from the running one ([`Gateway::rebuild`]): sources whose definition did not change
//! are shared with it as they are, so only what changed is connected or loaded again.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use fetcher_api::{BuildError, Env, Fetcher, Registry};
use tokio::time::Instant;

use gateway_config::{Config, ConfigErrors, DEFAULT_DEADLINE, FeatureRef, REQUEST_KIND};
use gateway_stack::{CacheControl, CacheLayer, GatewayService, stack_with_cache};

use crate::{
    executor::{self, Execution, RowInput, Served},
    monitor::{Monitor, Monitored},
    plan::{self, Plan},
    request::RequestError,
    webhooks::PlaidWebhooks,
};

/// Reads, parses and validates the configuration at `path` (no I/O beyond reading it), then
/// plans every feature service, which finds dependency cycles, and, given an environment, checks
/// that every `${NAME}` the file names is set: every problem at once, each at its line and
/// column. What `serve`, `materialize` and `validate` load.
pub fn load_config(
    path: &Path,
    registry: &Registry,
    env: Option<&Env>,
) -> Result<Config, ConfigErrors> {
    gateway_config::load_checked(path, registry, &|config| {
        let mut problems = plan::check_all(config);
        if let Some(env) = env {
            problems.extend(gateway_config::env::unset_variables(config, env));
        }
        problems
    })
}

/// [`load_config`] of `text`, the contents of the file at `path` as read already (a reload reads
/// the file once, so the hash it compares and the configuration it loads are of the same text).
pub fn load_config_text(
    path: &Path,
    text: &str,
    registry: &Registry,
    env: Option<&Env>,
) -> Result<Config, ConfigErrors> {
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    gateway_config::load_str_checked(
        text,
        &path.display().to_string(),
        base_dir,
        registry,
        &|config| {
            let mut problems = plan::check_all(config);
            if let Some(env) = env {
                problems.extend(gateway_config::env::unset_variables(config, env));
            }
            problems
        },
    )
}

/// A source as the running gateway holds it.
#[derive(Debug)]
pub struct SourceRuntime {
    /// Its name.
    pub name: Arc<str>,
    /// Its kind.
    pub kind: Arc<str>,
    /// Whether health depends on it.
    pub required: bool,
    /// The fetcher itself, for health checks (`None` for `request` sources).
    pub fetcher: Option<Arc<dyn Fetcher>>,
    /// Its cache's control, when it has a cache (invalidation by webhooks).
    pub cache: Option<CacheControl>,
}

/// Most ad-hoc plans kept; beyond it the cache starts over (ad-hoc lists are usually few).
const ADHOC_PLAN_CACHE: usize = 256;

/// Why a gateway could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayBuildError {
    /// A source (or a feature service's plan) could not be built.
    #[error(transparent)]
    Source(#[from] BuildError),
    /// A feature service's drift monitor: its reference profile cannot be read, or does not
    /// match the feature service (the message names both).
    #[error("feature service `{feature_service}`: monitor: {message}")]
    Monitor {
        /// The feature service.
        feature_service: String,
        /// What is wrong.
        message: String,
    },
}

/// The gateway: configuration, sources and plans.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    sources: Vec<SourceRuntime>,
    services: Vec<Option<GatewayService>>,
    plans: BTreeMap<String, Arc<Plan>>,
    adhoc: RwLock<HashMap<Vec<String>, Arc<Plan>>>,
    webhooks: Option<Arc<PlaidWebhooks>>,
    /// The monitored feature services, by name.
    monitored: BTreeMap<String, Arc<Monitored>>,
    /// The drift worker's channel, shared with the gateways a reload builds from this one.
    monitor: Arc<Monitor>,
}

/// What a [`Gateway::rebuild`] did with each source, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebuilt {
    /// Sources whose definition did not change: their fetcher, stack and cache are the
    /// previous gateway's, connections and cached values included.
    pub kept: Vec<String>,
    /// Sources new or changed: built (connected, loaded) for this gateway.
    pub built: Vec<String>,
    /// Sources of the previous gateway that this one does not have.
    pub removed: Vec<String>,
}

impl Gateway {
    /// Connects every source, compiles every feature service and reads the reference profile
    /// of every monitored one.
    pub async fn build(config: Config, registry: &Registry) -> Result<Gateway, GatewayBuildError> {
        Self::assemble(config, registry, None)
            .await
            .map(|(gateway, _)| gateway)
            .map_err(|mut errors| errors.swap_remove(0))
    }

    /// A gateway for `config` that takes over from `previous` (a configuration reload): a
    /// source whose [`SourceConfig`](gateway_config::SourceConfig) is equal to the previous one
    /// of its name (same kind, options, stack settings and views served) is the previous one,
    /// shared as it is; every other source is built. Every source that fails to build, and
    /// every monitor's reference that cannot be used, is reported; `previous` is never changed,
    /// so a failure leaves it serving as before.
    pub async fn rebuild(
        config: Config,
        registry: &Registry,
        previous: &Gateway,
    ) -> Result<(Gateway, Rebuilt), Vec<GatewayBuildError>> {
        Self::assemble(config, registry, Some(previous)).await
    }

    async fn assemble(
        config: Config,
        registry: &Registry,
        previous: Option<&Gateway>,
    ) -> Result<(Gateway, Rebuilt), Vec<GatewayBuildError>> {
        let mut sources = Vec::with_capacity(config.sources.len());
        let mut services = Vec::with_capacity(config.sources.len());
        let mut rebuilt = Rebuilt::default();
        let mut errors = Vec::new();
        for source in config.sources.values() {
            if let Some((runtime, service)) = previous.and_then(|p| p.unchanged_source(source)) {
                rebuilt.kept.push(source.name.clone());
                sources.push(runtime);
                services.push(service);
                continue;
            }
            let (fetcher, cache, service) = if source.kind == REQUEST_KIND {
                (None, None, None)
            } else {
                match build_source(&config, source, registry).await {
                    Ok((fetcher, cache, service)) => (Some(fetcher), cache, Some(service)),
                    Err(e) if previous.is_some() => {
                        // A reload reports every source that fails, not just the first.
                        errors.push(e.into());
                        continue;
                    }
                    Err(e) => return Err(vec![e.into()]),
                }
            };
            rebuilt.built.push(source.name.clone());
            sources.push(SourceRuntime {
                name: source.name.as_str().into(),
                kind: source.kind.as_str().into(),
                required: source.required,
                fetcher,
                cache,
            });
            services.push(service);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        if let Some(previous) = previous {
            rebuilt.removed = previous
                .config
                .sources
                .keys()
                .filter(|name| !config.sources.contains_key(*name))
                .cloned()
                .collect();
        }
        let mut plans = BTreeMap::new();
        for fs in config.feature_services.values() {
            let plan = plan::compile(
                &config,
                &fs.name,
                &fs.description,
                fs.deadline,
                &fs.features,
                &fs.defaults,
            )
            .map_err(|message| {
                vec![GatewayBuildError::from(BuildError {
                    source_name: fs.name.clone(),
                    message,
                })]
            })?;
            plans.insert(fs.name.clone(), Arc::new(plan));
        }
        // Reading a profile is I/O, so it is done here rather than when validating; every
        // reference that cannot be used is reported.
        let mut monitored = BTreeMap::new();
        for fs in config.feature_services.values() {
            let Some(settings) = &fs.monitor else {
                continue;
            };
            match Monitored::load(&plans[&fs.name], settings) {
                Ok(m) => {
                    let running = previous.and_then(|p| p.monitored.get(&fs.name));
                    monitored.insert(fs.name.clone(), Arc::new(m).keep(running));
                }
                Err(message) => errors.push(GatewayBuildError::Monitor {
                    feature_service: fs.name.clone(),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let webhooks = match &config.plaid_webhooks {
            None => None,
            Some(settings) => {
                let runtime = sources
                    .iter()
                    .find(|s| *s.name == *settings.source)
                    .filter(|s| s.fetcher.is_some())
                    .ok_or_else(|| {
                        vec![GatewayBuildError::from(BuildError {
                            source_name: settings.source.clone(),
                            message: "plaid_webhooks: the source is not built".into(),
                        })]
                    })?;
                let reusable = previous.and_then(|p| {
                    // The endpoint (its verification keys, the webhooks it remembers) is kept
                    // when its settings are, and its source was kept.
                    (p.config.plaid_webhooks.as_ref() == Some(settings)
                        && rebuilt.kept.contains(&settings.source))
                    .then(|| p.webhooks.clone())
                    .flatten()
                });
                match reusable {
                    Some(hooks) => Some(hooks),
                    None => Some(Arc::new(
                        PlaidWebhooks::build(
                            &config,
                            settings,
                            runtime
                                .fetcher
                                .clone()
                                .expect("filtered on a built fetcher"),
                            runtime.cache.clone(),
                            &fetcher_api::Env::process(),
                        )
                        .map_err(|e| vec![e.into()])?,
                    )),
                }
            }
        };
        let gateway = Gateway {
            webhooks,
            config,
            sources,
            services,
            plans,
            adhoc: RwLock::new(HashMap::new()),
            monitored,
            monitor: previous.map_or_else(|| Arc::new(Monitor::new()), |p| p.monitor.clone()),
        };
        Ok((gateway, rebuilt))
    }

    /// The running source of `source`'s name, shared, when its definition is unchanged.
    fn unchanged_source(
        &self,
        source: &gateway_config::SourceConfig,
    ) -> Option<(SourceRuntime, Option<GatewayService>)> {
        if self.config.sources.get(&source.name) != Some(source) {
            return None;
        }
        let i = self.sources.iter().position(|s| *s.name == *source.name)?;
        let s = &self.sources[i];
        let runtime = SourceRuntime {
            name: s.name.clone(),
            kind: s.kind.clone(),
            required: s.required,
            fetcher: s.fetcher.clone(),
            cache: s.cache.clone(),
        };
        Some((runtime, self.services[i].clone()))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The Plaid webhook endpoint, when configured.
    pub fn webhooks(&self) -> Option<&Arc<PlaidWebhooks>> {
        self.webhooks.as_ref()
    }

    /// The sources, in configuration order.
    pub fn sources(&self) -> &[SourceRuntime] {
        &self.sources
    }

    /// The feature services' plans, by name.
    pub fn plans(&self) -> &BTreeMap<String, Arc<Plan>> {
        &self.plans
    }

    /// The plan for a request naming either a feature service or explicit feature refs.
    pub fn resolve(
        &self,
        feature_service: &str,
        features: &[String],
    ) -> Result<Arc<Plan>, RequestError> {
        match (feature_service.is_empty(), features.is_empty()) {
            (false, true) => self
                .plans
                .get(feature_service)
                .cloned()
                .ok_or_else(|| RequestError::UnknownFeatureService(feature_service.to_owned())),
            (true, false) => self.adhoc_plan(features),
            (false, false) => Err(RequestError::invalid(
                "feature_service",
                "set either feature_service or features, not both",
            )),
            (true, true) => Err(RequestError::invalid(
                "feature_service",
                "set either feature_service or features",
            )),
        }
    }

    fn adhoc_plan(&self, features: &[String]) -> Result<Arc<Plan>, RequestError> {
        let limit = self.config.limits.max_features_per_request;
        if features.len() > limit {
            return Err(RequestError::invalid(
                "features",
                format!(
                    "{} feature refs, more than the limit of {limit}",
                    features.len()
                ),
            ));
        }
        if let Some(plan) = self
            .adhoc
            .read()
            .ok()
            .and_then(|c| c.get(features).cloned())
        {
            return Ok(plan);
        }
        let mut refs = Vec::with_capacity(features.len());
        for (i, text) in features.iter().enumerate() {
            let field = || format!("features[{i}]");
            let r = FeatureRef::parse(text).map_err(|m| RequestError::invalid(field(), m))?;
            let view = self.config.views.get(&r.view).ok_or_else(|| {
                RequestError::invalid(field(), format!("unknown view `{}`", r.view))
            })?;
            if r.feature == "*" {
                refs.extend(view.features.keys().map(|f| FeatureRef {
                    view: r.view.clone(),
                    feature: f.clone(),
                }));
            } else if view.features.contains_key(&r.feature) {
                refs.push(r);
            } else {
                return Err(RequestError::invalid(
                    field(),
                    format!("view `{}` has no feature `{}`", r.view, r.feature),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = refs.iter().find(|r| !seen.insert(*r)) {
            return Err(RequestError::invalid(
                "features",
                format!("`{dup}` is listed twice"),
            ));
        }
        let plan = plan::compile(
            &self.config,
            "",
            "",
            DEFAULT_DEADLINE,
            &refs,
            &HashMap::new(),
        )
        .map_err(|m| RequestError::invalid("features", m))?;
        let plan = Arc::new(plan);
        if let Ok(mut cache) = self.adhoc.write() {
            if cache.len() >= ADHOC_PLAN_CACHE {
                cache.clear();
            }
            cache.insert(features.to_vec(), plan.clone());
        }
        Ok(plan)
    }

    /// The monitored feature services, by name.
    pub fn monitored(&self) -> &BTreeMap<String, Arc<Monitored>> {
        &self.monitored
    }

    /// Hands a vector served for `plan` to the drift monitor when its feature service is
    /// monitored (sampled; never waits).
    pub fn observe_drift(&self, plan: &Plan, served: &[Served]) {
        if let Some(m) = self.monitored.get(&plan.name) {
            self.monitor.observe(m, served);
        }
    }

    /// Runs `plan` for `rows`, each fetch bounded by `deadline`.
    pub async fn execute(&self, plan: &Plan, rows: &[RowInput], deadline: Instant) -> Execution {
        executor::execute(plan, &self.services, rows, deadline).await
    }
}

/// Builds one fetched source: its fetcher (connected or loaded), its cache, and the stack over
/// both; a cache with a shared tier listens for the other replicas' invalidations.
async fn build_source(
    config: &Config,
    source: &gateway_config::SourceConfig,
    registry: &Registry,
) -> Result<(Arc<dyn Fetcher>, Option<CacheControl>, GatewayService), BuildError> {
    let factory = registry.get(&source.kind).map_err(|e| BuildError {
        source_name: source.name.clone(),
        message: e.to_string(),
    })?;
    let fetcher = factory.build(&source.spec).await?;
    let cache = CacheLayer::for_source(source)
        .await
        .map_err(|message| BuildError {
            source_name: source.name.clone(),
            message,
        })?;
    let control = cache.control();
    let service = stack_with_cache(cache, fetcher.clone(), source);
    if let Some(control) = &control {
        // After the stack is built: applying an invalidation refreshes through it.
        let views = config.single_key_views(&source.name);
        let known = fetcher.clone();
        control.listen_for_invalidations(move |item| known.keys_of(item), views);
    }
    Ok((fetcher, control, service))
}

/// The most of a caller's deadline kept back for sending the answer.
pub const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// The most of a feature service's own deadline kept back for assembling and sending the answer:
/// tokio's timers fire on the millisecond tick after their deadline, so a fetch cut at 49 ms
/// returns at 49 to 50, and the vector is assembled and logged after (a handler with a 1 ms
/// margin answered at 50.0 to 50.8 ms of a 50 ms deadline on a quiet machine).
pub const MAX_PLAN_DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// The deadline of a request that arrived at `arrival`: the earlier of the plan's own and the
/// caller's `grpc-timeout`, each less a margin for sending the answer back. `None` when the
/// caller's deadline leaves no time at all.
pub fn request_deadline(
    arrival: Instant,
    plan_deadline: Duration,
    client_timeout: Option<Duration>,
) -> Option<Instant> {
    // The plan's deadline is when the answer is due: fetches stop a tenth of it, at most 2 ms,
    // before (timers fire on the next 1 ms tick, and the vector is assembled and sent after).
    let own = arrival + plan_deadline - (plan_deadline / 10).min(MAX_PLAN_DEADLINE_MARGIN);
    match client_timeout {
        None => Some(own),
        Some(timeout) => {
            // Leave time to encode and send the response before the caller gives up: a tenth
            // of its budget, at most 5 ms (the answer still has to cross the network too).
            let margin = (timeout / 10).min(MAX_DEADLINE_MARGIN);
            let budget = timeout.checked_sub(margin).filter(|b| !b.is_zero())?;
            Some(own.min(arrival + budget))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadline_is_the_earlier_of_plan_and_caller() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // The plan's own 50 ms, less 2 ms to assemble and send the answer.
        assert_eq!(request_deadline(now, ms(50), None), Some(now + ms(48)));
        // A tenth of a short one.
        assert_eq!(
            request_deadline(now, ms(5), None),
            Some(now + ms(5) - ms(5) / 10)
        );
        // The caller's 20 ms, less a 2 ms margin.
        assert_eq!(
            request_deadline(now, ms(50), Some(ms(20))),
            Some(now + ms(18))
        );
        // The margin is at most 5 ms.
        assert_eq!(
            request_deadline(now, ms(500), Some(ms(200))),
            Some(now + ms(195))
        );
        // The plan's 50 ms is earlier than the caller's 2 s.
        assert_eq!(
            request_deadline(now, ms(50), Some(ms(2000))),
            Some(now + ms(48))
        );
        // A tiny budget keeps 90% of itself.
        assert_eq!(
            request_deadline(now, ms(50), Some(Duration::from_micros(500))),
            Some(now + Duration::from_micros(450))
        );
        assert_eq!(request_deadline(now, ms(50), Some(Duration::ZERO)), None);
    }
}
