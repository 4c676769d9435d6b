//! The checks of a whole file: each section validated, and the names that span sections resolved
//! (a view's source and entities, an entity's feature, a feature service's refs).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    time::Duration,
};

use fetcher_api::{FeatureType, KeySpec, Options, Registry, SourceSpec, ViewSpec};

use crate::{
    Config, DEFAULT_DEADLINE, DEFAULT_MAX_CONCURRENCY, DERIVED_KIND, EntityConfig, EntityFrom,
    FeatureConfig, FeatureRef, FeatureServiceConfig, PlaidWebhooksConfig, REQUEST_KIND, RawConfig,
    SourceConfig, ViewConfig,
    breaker::breaker_policy,
    cache::cache_policy,
    feature_service::{resolve_refs, toml_to_value, validate_monitor},
    hedge::hedge_policy,
    problems::{Problems, has_duplicates, known, parse_duration},
    retry::retry_settings,
    short_hash,
    tls::validate_tls,
    traces::validate_traces,
    training_log::validate_training_log,
};

pub(crate) fn validate(
    raw: RawConfig,
    text: &str,
    base_dir: &Path,
    registry: &Registry,
    problems: &mut Problems,
) -> Config {
    let limits = raw.limits.clone();
    if limits.max_batch_rows == 0 {
        problems.add(&["limits", "max_batch_rows"], "must be at least 1");
    }
    if limits.max_in_flight == Some(0) {
        problems.add(&["limits", "max_in_flight"], "must be at least 1");
    }

    // Entities: their own fields; `from` is resolved once views are known.
    let mut entities = BTreeMap::new();
    for (name, e) in &raw.entities {
        let ty = match e.ty.parse::<FeatureType>() {
            Ok(ty) if ty.is_key_type() => ty,
            Ok(ty) => {
                problems.add(
                    &["entities", name, "type"],
                    format!("an entity key must be int64 or string, not {ty}"),
                );
                FeatureType::String
            }
            Err(msg) => {
                problems.add(&["entities", name, "type"], msg);
                FeatureType::String
            }
        };
        let from = match e.from.as_deref() {
            None => EntityFrom::Request,
            Some(from) => match from.split_once(':') {
                Some(("context", key)) if !key.is_empty() => EntityFrom::Context(key.to_owned()),
                _ => match FeatureRef::parse(from) {
                    Ok(r) => EntityFrom::Feature {
                        view: r.view,
                        feature: r.feature,
                    },
                    Err(_) => {
                        problems.add(
                            &["entities", name, "from"],
                            format!("`{from}` is neither `context:NAME` nor `VIEW:FEATURE`"),
                        );
                        EntityFrom::Request
                    }
                },
            },
        };
        entities.insert(
            name.clone(),
            EntityConfig {
                name: name.clone(),
                ty,
                from,
                description: e.description.clone(),
            },
        );
    }

    // Views, minus what depends on sources.
    let mut views = BTreeMap::new();
    for (name, v) in &raw.views {
        let derived = match v.kind.as_deref() {
            None => false,
            Some(DERIVED_KIND) => true,
            Some(other) => {
                problems.add(
                    &["views", name, "kind"],
                    format!(
                        "unknown view kind `{other}`: `{DERIVED_KIND}` computes features from \
                         others; a view without `kind` reads its `source`"
                    ),
                );
                false
            }
        };
        let source = match (&v.source, derived) {
            (Some(source), false) => source.clone(),
            (None, false) => {
                problems.add(
                    &["views", name],
                    format!(
                        "a view needs a `source` to read from, or `kind = \"{DERIVED_KIND}\"` \
                         to compute its features"
                    ),
                );
                String::new()
            }
            (Some(_), true) => {
                problems.add(
                    &["views", name, "source"],
                    "a derived view reads no source: its features are expressions over other \
                     views' features",
                );
                String::new()
            }
            (None, true) => String::new(),
        };
        if derived {
            if !v.entities.is_empty() {
                problems.add(
                    &["views", name, "entities"],
                    "a derived view has no entities: it is computed for whatever keys the views \
                     it reads were fetched with",
                );
            }
            if v.max_age.is_some() {
                problems.add(
                    &["views", name, "max_age"],
                    "a derived view has no max_age: the views it reads apply theirs",
                );
            }
            for key in v.options.keys() {
                problems.add(&["views", name, key], format!("unknown field `{key}`"));
            }
        }
        // `None` for an unknown source (reported below, once sources are known).
        let reads_request = raw.sources.get(&source).map(|s| s.kind == REQUEST_KIND);
        let mut features = BTreeMap::new();
        for (fname, f) in &v.features {
            // A feature with a bad type is kept (as a string) so references to it do not
            // report a second, misleading error.
            let ty = f.ty.parse::<FeatureType>().unwrap_or_else(|msg| {
                problems.add(&["views", name, "features", fname, "type"], msg);
                FeatureType::String
            });
            if f.required.is_some()
                && reads_request != Some(true)
                && (derived || reads_request.is_some())
            {
                problems.add(
                    &["views", name, "features", fname, "required"],
                    if derived {
                        format!(
                            "`required` is for the context values of views of a `request` \
                             source; view `{name}` is derived"
                        )
                    } else {
                        format!(
                            "`required` is for the context values of views of a `request` \
                             source; view `{name}` reads source `{source}`, whose features are \
                             fetched"
                        )
                    },
                );
            }
            match (&f.expr, derived) {
                (None, true) => problems.add(
                    &["views", name, "features", fname],
                    "a feature of a derived view needs an `expr`: the CEL expression computing it",
                ),
                (Some(_), false) => problems.add(
                    &["views", name, "features", fname, "expr"],
                    format!("`expr` is for features of a `kind = \"{DERIVED_KIND}\"` view"),
                ),
                _ => {}
            }
            features.insert(
                fname.clone(),
                FeatureConfig {
                    ty,
                    description: f.description.clone(),
                    pii: f.pii,
                    required: f.required.unwrap_or(false) && reads_request == Some(true),
                    expr: None,
                },
            );
        }
        if v.features.is_empty() {
            problems.add(&["views", name], "a view needs at least one feature");
        }
        for (i, entity) in v.entities.iter().enumerate() {
            if !raw.entities.contains_key(entity) {
                problems.add(
                    &["views", name, "entities", &i.to_string()],
                    format!(
                        "the view is keyed by `{entity}`, which no entity declares{}",
                        known(raw.entities.keys())
                    ),
                );
            }
        }
        if has_duplicates(&v.entities) {
            problems.add(&["views", name, "entities"], "an entity is listed twice");
        }
        let max_age = v.max_age.as_deref().and_then(|t| {
            parse_duration(t)
                .map_err(|msg| problems.add(&["views", name, "max_age"], msg))
                .ok()
        });
        views.insert(
            name.clone(),
            ViewConfig {
                name: name.clone(),
                source,
                derived,
                entities: v.entities.clone(),
                max_age,
                description: v.description.clone(),
                features,
                options: Options(v.options.clone()),
            },
        );
    }
    compile_derived(&raw, &mut views, problems);

    // Sources, with the views that read from them, validated by their kind's factory.
    let mut sources = BTreeMap::new();
    for (name, s) in &raw.sources {
        let timeout = s.timeout.as_deref().and_then(|t| {
            parse_duration(t)
                .map_err(|msg| problems.add(&["sources", name, "timeout"], msg))
                .ok()
        });
        if s.max_concurrency == Some(0) {
            problems.add(&["sources", name, "max_concurrency"], "must be at least 1");
        }
        let cache = s
            .cache
            .as_ref()
            .and_then(|c| cache_policy(c, &["sources", name, "cache"], problems));
        let circuit_breaker = s
            .circuit_breaker
            .as_ref()
            .and_then(|b| breaker_policy(b, &["sources", name, "circuit_breaker"], problems));
        let retry = s
            .retry
            .as_ref()
            .and_then(|r| retry_settings(r, &["sources", name, "retry"], problems));
        let hedge = s
            .hedge
            .as_ref()
            .and_then(|h| hedge_policy(h, &["sources", name, "hedge"], problems));
        let source_views: Vec<ViewSpec> = views
            .values()
            .filter(|v| &v.source == name)
            .map(|v| ViewSpec {
                name: v.name.clone(),
                keys: v
                    .entities
                    .iter()
                    .map(|e| KeySpec {
                        name: e.clone(),
                        ty: entities.get(e).map_or(FeatureType::String, |e| e.ty),
                    })
                    .collect(),
                features: v.features.iter().map(|(n, f)| (n.clone(), f.ty)).collect(),
                options: v.options.clone(),
            })
            .collect();
        let spec = SourceSpec {
            name: name.clone(),
            kind: s.kind.clone(),
            options: Options(s.options.clone()),
            views: source_views,
            base_dir: base_dir.to_owned(),
        };
        if s.kind == REQUEST_KIND {
            if !s.options.is_empty() {
                for key in s.options.keys() {
                    problems.add(&["sources", name, key], format!("unknown field `{key}`"));
                }
            }
            for v in &spec.views {
                if !v.keys.is_empty() {
                    problems.add(
                        &["views", &v.name, "entities"],
                        "a view of a `request` source reads the request's context and has no entities",
                    );
                }
                for key in v.options.0.keys() {
                    problems.add(&["views", &v.name, key], format!("unknown field `{key}`"));
                }
            }
        } else {
            match registry.get(&s.kind) {
                Err(mut unknown) => {
                    unknown.known.push(REQUEST_KIND);
                    unknown.known.sort_unstable();
                    problems.add(&["sources", name, "kind"], unknown.to_string());
                }
                Ok(factory) => {
                    for problem in factory.validate(&spec) {
                        // Placed on the view or the source it concerns, at its field.
                        let mut path = match problem.view_name() {
                            Some(view) => vec!["views", view],
                            None => vec!["sources", name.as_str()],
                        };
                        path.extend(problem.field().iter().map(String::as_str));
                        problems.add(&path, problem.message());
                    }
                }
            }
        }
        sources.insert(
            name.clone(),
            SourceConfig {
                name: name.clone(),
                kind: s.kind.clone(),
                timeout,
                max_concurrency: s.max_concurrency.unwrap_or(DEFAULT_MAX_CONCURRENCY),
                cache,
                circuit_breaker,
                retry,
                hedge,
                required: s.required,
                spec,
            },
        );
    }
    for (name, v) in &views {
        if !v.derived && !v.source.is_empty() && !sources.contains_key(&v.source) {
            problems.add(
                &["views", name, "source"],
                format!("unknown source `{}`{}", v.source, known(sources.keys())),
            );
        }
    }

    // Entities derived from features must name a real feature of the entity's type.
    for (name, e) in &entities {
        if let EntityFrom::Feature { view, feature } = &e.from {
            match views.get(view).map(|v| v.features.get(feature)) {
                None => problems.add(
                    &["entities", name, "from"],
                    format!("unknown view `{view}`{}", known(views.keys())),
                ),
                Some(None) => problems.add(
                    &["entities", name, "from"],
                    format!("view `{view}` has no feature `{feature}`"),
                ),
                Some(Some(_)) if views[view].derived => problems.add(
                    &["entities", name, "from"],
                    format!(
                        "`{view}:{feature}` is a derived feature, computed after every fetch: \
                         it cannot key another view"
                    ),
                ),
                Some(Some(f)) if f.ty != e.ty => problems.add(
                    &["entities", name, "from"],
                    format!(
                        "`{view}:{feature}` is {}, but entity `{name}` is {}",
                        f.ty, e.ty
                    ),
                ),
                Some(Some(_)) => {}
            }
        }
    }

    // Feature services.
    let mut feature_services = BTreeMap::new();
    for (name, fs) in &raw.feature_services {
        let deadline = match fs.deadline.as_deref() {
            None => DEFAULT_DEADLINE,
            Some(t) => match parse_duration(t) {
                Ok(d) if d.is_zero() => {
                    problems.add(&["feature_services", name, "deadline"], "must be positive");
                    DEFAULT_DEADLINE
                }
                Ok(d) if d > limits.max_deadline => {
                    problems.add(
                        &["feature_services", name, "deadline"],
                        format!(
                            "{} is longer than `[limits] max_deadline` ({})",
                            t,
                            fetcher_api::ConfigDuration(limits.max_deadline)
                        ),
                    );
                    limits.max_deadline
                }
                Ok(d) => d,
                Err(msg) => {
                    problems.add(&["feature_services", name, "deadline"], msg);
                    DEFAULT_DEADLINE
                }
            },
        };
        if fs.features.is_empty() {
            problems.add(
                &["feature_services", name, "features"],
                "a feature service needs at least one feature",
            );
        }
        let mut features = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, text) in fs.features.iter().enumerate() {
            let at = ["feature_services", name, "features", &i.to_string()];
            match resolve_refs(text, &views) {
                Ok(refs) => {
                    for r in refs {
                        if !seen.insert(r.clone()) {
                            problems.add(&at, format!("`{r}` is listed twice"));
                        } else {
                            features.push(r);
                        }
                    }
                }
                Err(msg) => problems.add(&at, msg),
            }
        }
        let mut defaults = HashMap::new();
        for (text, value) in &fs.defaults {
            let at = ["feature_services", name, "defaults", text.as_str()];
            let r = match FeatureRef::parse(text) {
                Ok(r) if seen.contains(&r) => r,
                Ok(r) => {
                    problems.add(
                        &at,
                        format!("`{r}` is not a feature of this feature service"),
                    );
                    continue;
                }
                Err(msg) => {
                    problems.add(&at, msg);
                    continue;
                }
            };
            let ty = views[&r.view].features[&r.feature].ty;
            match toml_to_value(value, ty) {
                Ok(v) => {
                    defaults.insert(r, v);
                }
                Err(msg) => problems.add(&at, msg),
            }
        }
        let monitor = fs
            .monitor
            .as_ref()
            .and_then(|m| validate_monitor(m, name, base_dir, problems));
        feature_services.insert(
            name.clone(),
            FeatureServiceConfig {
                name: name.clone(),
                description: fs.description.clone(),
                deadline,
                features,
                defaults,
                monitor,
            },
        );
    }

    let training_log = raw
        .training_log
        .as_ref()
        .map(|t| validate_training_log(t, base_dir, &feature_services, problems));
    let traces = raw
        .telemetry
        .traces
        .as_ref()
        .map(|t| validate_traces(t, problems));
    let plaid_webhooks = raw.plaid_webhooks.as_ref().and_then(|w| {
        match sources.get(&w.source) {
            Some(s) if s.kind == "plaid" => {}
            Some(s) => {
                problems.add(
                    &["plaid_webhooks", "source"],
                    format!("`{}` is a `{}` source, not a `plaid` one", w.source, s.kind),
                );
                return None;
            }
            None => {
                problems.add(
                    &["plaid_webhooks", "source"],
                    format!("unknown source `{}`{}", w.source, known(sources.keys())),
                );
                return None;
            }
        }
        let max_age = match w.max_age.as_deref() {
            None => Duration::from_secs(300),
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    problems.add(&["plaid_webhooks", "max_age"], "must be positive");
                    return None;
                }
                Err(msg) => {
                    problems.add(&["plaid_webhooks", "max_age"], msg);
                    return None;
                }
            },
        };
        Some(PlaidWebhooksConfig {
            source: w.source.clone(),
            max_age,
        })
    });
    let tls = raw
        .server
        .tls
        .as_ref()
        .map(|t| validate_tls(t, base_dir, problems));
    let worker_threads = raw.server.worker_threads;
    if worker_threads.is_some_and(|n| n == 0 || n > 1024) {
        problems.add(&["server", "worker_threads"], "must be from 1 to 1024");
    }
    let auth = raw.auth.as_ref().map(|a| {
        let names = feature_services.keys().cloned().collect();
        let read = |file: &str| {
            let path = base_dir.join(file);
            std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
        };
        let stream_views = raw
            .views
            .iter()
            .filter(|(_, v)| {
                v.source
                    .as_ref()
                    .and_then(|s| raw.sources.get(s))
                    .is_some_and(|s| s.kind == "stream")
            })
            .map(|(name, _)| name.clone())
            .collect();
        let (callers, found) = crate::auth::validate(a, read, &names, &stream_views);
        for (path, message) in found {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            problems.add(&path, message);
        }
        callers
    });
    Config {
        plaid_webhooks,
        limits,
        entities,
        sources,
        views,
        feature_services,
        training_log,
        traces,
        tls,
        worker_threads,
        auth,
        hash: short_hash(text.as_bytes()),
    }
}

/// Type-checks every derived feature's expression against the declared types of all views,
/// and refuses derived features that depend on each other in a cycle.
fn compile_derived(
    raw: &RawConfig,
    views: &mut BTreeMap<String, ViewConfig>,
    problems: &mut Problems,
) {
    if !views.values().any(|v| v.derived) {
        return;
    }
    let catalog = derived::Catalog {
        views: views
            .iter()
            .map(|(name, v)| {
                let features = v.features.iter().map(|(f, c)| (f.clone(), c.ty)).collect();
                (name.clone(), features)
            })
            .collect(),
    };
    let limits = derived::Limits::default();
    for (name, view) in views.iter_mut().filter(|(_, v)| v.derived) {
        for (fname, feature) in view.features.iter_mut() {
            let Some(source) = raw.views[name].features[fname].expr.as_deref() else {
                continue;
            };
            match derived::compile(source, feature.ty, &catalog, &limits) {
                Ok(expr) => feature.expr = Some(expr),
                Err(errors) => {
                    for e in errors {
                        problems.add(
                            &["views", name, "features", fname, "expr"],
                            format!(
                                "at {}:{} of the expression: {}",
                                e.line, e.column, e.message
                            ),
                        );
                    }
                }
            }
        }
    }
    // Cycles: follow each derived feature's derived inputs.
    let derived_inputs = |view: &str, feature: &str| -> Vec<(String, String)> {
        views
            .get(view)
            .and_then(|v| v.features.get(feature))
            .and_then(|f| f.expr.as_ref())
            .map(|e| {
                e.inputs()
                    .iter()
                    .filter(|r| views.get(&r.view).is_some_and(|v| v.derived))
                    .map(|r| (r.view.clone(), r.feature.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut reported = BTreeSet::new();
    for (name, view) in views.iter().filter(|(_, v)| v.derived) {
        for fname in view.features.keys() {
            let start = (name.clone(), fname.clone());
            let mut path = vec![start.clone()];
            if let Some(cycle) = find_cycle(&start, &mut path, &derived_inputs)
                && reported.insert(cycle.iter().min().cloned())
            {
                let shown: Vec<String> = cycle.iter().map(|(v, f)| format!("{v}.{f}")).collect();
                problems.add(
                    &["views", name, "features", fname, "expr"],
                    format!(
                        "derived features depend on each other in a cycle: {}",
                        shown.join(" -> ")
                    ),
                );
            }
        }
    }
}

/// A derived feature: its view and name.
type Node = (String, String);

/// A cycle from `path`'s last node back to `start`, depth first.
fn find_cycle(
    start: &Node,
    path: &mut Vec<Node>,
    inputs: &dyn Fn(&str, &str) -> Vec<Node>,
) -> Option<Vec<Node>> {
    let (view, feature) = path.last().cloned()?;
    for next in inputs(&view, &feature) {
        if next == *start {
            let mut cycle = path.clone();
            cycle.push(next);
            return Some(cycle);
        }
        if path.contains(&next) || path.len() > 64 {
            continue;
        }
        path.push(next);
        if let Some(cycle) = find_cycle(start, path, inputs) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}
