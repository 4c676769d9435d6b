//! Compiling a feature service into a plan, once, when the configuration is loaded.
//!
//! A plan says which views to fetch, from which source, with which keys, and where each output
//! feature's value comes from. A view's key may come from the request's entities, from its
//! context, or from a feature of another view (`user_id -> linked item's access_token ->
//! balances`), so the fetches form a small DAG. The plan runs it in stages: stage 0 holds the
//! fetches keyed by the request alone, stage N the fetches keyed by features of stage N-1 or
//! earlier. A cycle is a configuration error.
//!
//! Derived features (views of kind `derived`) are evaluated once every stage has run, in an
//! order where each comes after the derived features it reads ([`Plan::derived`]); the views
//! they read are fetched like any other, whether or not they are outputs themselves.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use fetcher_api::{FeatureType, Value};

use gateway_config::{Config, DERIVED_KIND, EntityFrom, FeatureRef, REQUEST_KIND, short_hash};

/// The compiled form of a feature service (or of an ad-hoc list of feature refs).
#[derive(Debug)]
pub struct Plan {
    /// The feature service's name (`""` for an ad-hoc plan).
    pub name: String,
    /// Free text.
    pub description: String,
    /// The feature service's own deadline.
    pub deadline: Duration,
    /// Hash of everything that determines the served values: features, types, sources, keys,
    /// max ages, source-kind options and defaults.
    pub definition_hash: String,
    /// The output features, in order.
    pub outputs: Vec<Output>,
    /// The outputs' names as every response carries them, encoded once.
    pub feature_names: proto::v1::FeatureNames,
    /// The view fetches.
    pub fetches: Vec<Fetch>,
    /// Fetch indices per stage, stage 0 first.
    pub stages: Vec<Vec<usize>>,
    /// Entity keys the request must supply.
    pub entities: Vec<Input>,
    /// Context values the plan reads.
    pub context: Vec<Input>,
    /// The derived features the outputs need, each after those it reads.
    pub derived: Vec<Derived>,
    /// What the derived features read that is not itself derived: each fetched feature or
    /// context value once, however many expressions read it. A row's value of each is gathered
    /// once ([`DerivedInput::at`]), before the row's derived features are evaluated.
    pub derived_inputs: Vec<DerivedInput>,
    /// The derived inputs the training log holds beside the outputs (indexes into
    /// [`Plan::derived_inputs`]): fetched features that are not outputs, so that `training-set`
    /// can evaluate the derived features again from the log. (A context value is logged
    /// anyway, and an output is logged as served.)
    pub logged_inputs: Vec<usize>,
    /// How many derived inputs, then derived features, are not outputs (each is kept
    /// [`At::Own`] while a row is evaluated).
    pub own: (usize, usize),
}

/// A derived feature to evaluate per row.
#[derive(Debug)]
pub struct Derived {
    /// `VIEW:FEATURE`.
    pub name: String,
    /// The expression.
    pub expr: Arc<derived::Expression>,
    /// Where each of the expression's inputs comes from, in [`derived::Expression::inputs`]
    /// order.
    pub inputs: Vec<Arg>,
    /// Where a row's value is kept.
    pub at: At,
}

/// Where a row's value of a derived feature, or of a derived feature's input, is kept while the
/// row's derived features are evaluated: in the row's vector when it is an output (nothing is
/// gathered or copied twice), else in a place of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum At {
    /// `outputs[i]` of the row.
    Output(usize),
    /// Entry `i` of the row's own derived inputs or derived features, numbered in
    /// [`Plan::derived_inputs`] or [`Plan::derived`] order.
    Own(usize),
}

/// Where an input of a derived feature comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// `plan.derived_inputs[i]`.
    Input(usize),
    /// `plan.derived[i]`, always an earlier entry than the feature reading it.
    Derived(usize),
}

/// A fetched feature or context value that derived features read.
#[derive(Debug)]
pub struct DerivedInput {
    /// `VIEW:FEATURE`.
    pub name: String,
    /// Its declared type.
    pub ty: FeatureType,
    /// Where it comes from: [`Origin::Context`] or [`Origin::Fetched`], never
    /// [`Origin::Derived`].
    pub origin: Origin,
    /// Whether it is marked `pii` (the training log hashes or drops its value).
    pub pii: bool,
    /// Where a row's value is kept.
    pub at: At,
}

/// A named, typed input of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// The name in the request's `entities` or `context` map.
    pub name: String,
    /// Its type.
    pub ty: FeatureType,
    /// Free text.
    pub description: String,
    /// A context value every request must carry (`required = true` on a feature of a `request`
    /// view this plan reads). Always false for entity keys, which are all required.
    pub required: bool,
    /// A context value that is personal data: a `request` view's feature of its name is marked
    /// `pii` (whatever in the plan reads it: an output, a derived feature, an entity key). The
    /// training log hashes or drops it. Always false for entity keys, which have no `pii` mark.
    pub pii: bool,
}

/// One output feature.
#[derive(Debug)]
pub struct Output {
    /// `VIEW:FEATURE`.
    pub name: String,
    /// Its type.
    pub ty: FeatureType,
    /// The view's source.
    pub source: Arc<str>,
    /// That source's kind.
    pub source_kind: Arc<str>,
    /// Where the value comes from.
    pub origin: Origin,
    /// Served when the feature cannot be.
    pub default: Option<Value>,
    /// The view's max age.
    pub max_age: Option<Duration>,
    /// Free text.
    pub description: String,
}

/// Where an output's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `plan.context[i]`.
    Context(usize),
    /// Cell `cell` of the rows of `plan.fetches[fetch]`.
    Fetched {
        /// Index into [`Plan::fetches`].
        fetch: usize,
        /// Index into that fetch's features.
        cell: usize,
    },
    /// `plan.derived[i]`, evaluated per row.
    Derived(usize),
}

/// One view fetch.
#[derive(Debug)]
pub struct Fetch {
    /// The view.
    pub view: Arc<str>,
    /// Index of its source in the configuration's (sorted) sources.
    pub source: usize,
    /// The source's name, for spans and logs.
    pub source_name: Arc<str>,
    /// The source's kind.
    pub source_kind: Arc<str>,
    /// The features requested, outputs and keys of later stages alike.
    pub features: Arc<[String]>,
    /// Their declared types.
    pub types: Vec<FeatureType>,
    /// Where each part of the view's key comes from.
    pub keys: Vec<KeyInput>,
    /// The view's entity names, one per key part, for the reasons given to callers.
    pub entities: Vec<String>,
    /// The view's max age.
    pub max_age: Option<Duration>,
    /// The stage it runs in.
    pub stage: usize,
}

/// Where one part of a view's key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyInput {
    /// `plan.entities[i]`.
    Entity(usize),
    /// `plan.context[i]`.
    Context(usize),
    /// A feature fetched in an earlier stage.
    Feature {
        /// Index into [`Plan::fetches`].
        fetch: usize,
        /// Index into that fetch's features.
        cell: usize,
    },
}

/// Checks that `features` can be planned (no dependency cycles, consistent context types).
pub fn check(config: &Config, features: &[FeatureRef]) -> Result<(), String> {
    compile(config, "", "", Duration::ZERO, features, &HashMap::new()).map(drop)
}

/// Every feature service of `config` that cannot be planned, as the configuration loader's
/// [`gateway_config::Check`] reports it: at `feature_services.NAME`.
pub fn check_all(config: &Config) -> Vec<(Vec<String>, String)> {
    config
        .feature_services
        .values()
        .filter_map(|fs| {
            check(config, &fs.features)
                .err()
                .map(|msg| (vec!["feature_services".to_owned(), fs.name.clone()], msg))
        })
        .collect()
}

/// Compiles a plan. Names must already resolve (the configuration validated).
pub fn compile(
    config: &Config,
    name: &str,
    description: &str,
    deadline: Duration,
    features: &[FeatureRef],
    defaults: &HashMap<FeatureRef, Value>,
) -> Result<Plan, String> {
    let mut b = Builder {
        config,
        source_index: config
            .sources
            .keys()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect(),
        fetch_of_view: HashMap::new(),
        fetches: Vec::new(),
        entities: Vec::new(),
        context: Vec::new(),
        visiting: Vec::new(),
        derived: Vec::new(),
        derived_index: HashMap::new(),
        derived_inputs: Vec::new(),
    };
    let mut outputs = Vec::with_capacity(features.len());
    for r in features {
        let view = config
            .views
            .get(&r.view)
            .ok_or_else(|| format!("unknown view `{}`", r.view))?;
        let feature = view
            .features
            .get(&r.feature)
            .ok_or_else(|| format!("view `{}` has no feature `{}`", r.view, r.feature))?;
        let origin = b.origin(&r.view, &r.feature)?;
        let (source, source_kind) = match config.sources.get(&view.source) {
            Some(source) => (source.name.as_str(), source.kind.as_str()),
            None => (DERIVED_KIND, DERIVED_KIND),
        };
        outputs.push(Output {
            name: r.to_string(),
            ty: feature.ty,
            source: source.into(),
            source_kind: source_kind.into(),
            origin,
            default: defaults.get(r).cloned(),
            max_age: view.max_age,
            description: feature.description.clone(),
        });
    }
    // Where each derived input and derived feature is kept: its output, else a place of its own.
    let mut own = (0, 0);
    let at =
        |origin: Origin, count: &mut usize| match outputs.iter().position(|o| o.origin == origin) {
            Some(o) => At::Output(o),
            None => {
                *count += 1;
                At::Own(*count - 1)
            }
        };
    for input in &mut b.derived_inputs {
        input.at = at(input.origin, &mut own.0);
    }
    for (i, d) in b.derived.iter_mut().enumerate() {
        d.at = at(Origin::Derived(i), &mut own.1);
    }
    let logged_inputs = (0..b.derived_inputs.len())
        .filter(|&i| {
            let input = &b.derived_inputs[i];
            matches!(input.origin, Origin::Fetched { .. }) && matches!(input.at, At::Own(_))
        })
        .collect();
    let depth = b.fetches.iter().map(|f| f.stage + 1).max().unwrap_or(0);
    let mut stages = vec![Vec::new(); depth];
    let fetches: Vec<Fetch> = b
        .fetches
        .into_iter()
        .map(|f| {
            let view = &config.views[&f.view];
            let source = &config.sources[&view.source];
            Fetch {
                source_name: source.name.as_str().into(),
                source_kind: source.kind.as_str().into(),
                view: f.view.into(),
                source: f.source,
                types: f.features.iter().map(|(_, t)| *t).collect(),
                features: f.features.into_iter().map(|(n, _)| n).collect(),
                keys: f.keys,
                entities: view.entities.clone(),
                max_age: f.max_age,
                stage: f.stage,
            }
        })
        .collect();
    for (i, f) in fetches.iter().enumerate() {
        stages[f.stage].push(i);
    }
    let definition_hash = definition_hash(config, features, defaults);
    let feature_names =
        proto::v1::FeatureNames::encoded(outputs.iter().map(|o| o.name.clone()).collect());
    Ok(Plan {
        name: name.to_owned(),
        description: description.to_owned(),
        deadline,
        definition_hash,
        outputs,
        feature_names,
        fetches,
        stages,
        entities: b.entities,
        context: b.context,
        derived: b.derived,
        derived_inputs: b.derived_inputs,
        logged_inputs,
        own,
    })
}

struct PendingFetch {
    view: String,
    source: usize,
    features: Vec<(String, FeatureType)>,
    keys: Vec<KeyInput>,
    max_age: Option<Duration>,
    stage: usize,
}

struct Builder<'a> {
    config: &'a Config,
    source_index: HashMap<&'a str, usize>,
    fetch_of_view: HashMap<String, usize>,
    fetches: Vec<PendingFetch>,
    entities: Vec<Input>,
    context: Vec<Input>,
    /// The chain of views being planned, to report a cycle as the path that closes it.
    visiting: Vec<String>,
    derived: Vec<Derived>,
    /// `VIEW:FEATURE` → index into `derived`; `None` while its inputs are being planned.
    derived_index: HashMap<String, Option<usize>>,
    derived_inputs: Vec<DerivedInput>,
}

impl Builder<'_> {
    /// Where feature `feature` of `view` comes from, planning what it needs.
    fn origin(&mut self, view_name: &str, feature: &str) -> Result<Origin, String> {
        let view = &self.config.views[view_name];
        if view.derived {
            return self.derived(view_name, feature).map(Origin::Derived);
        }
        let f = &view.features[feature];
        if self.config.sources[&view.source].kind == REQUEST_KIND {
            return Ok(Origin::Context(self.context_input(
                feature,
                f.ty,
                &f.description,
                f.required,
            )?));
        }
        let fetch = self.fetch(view_name)?;
        Ok(Origin::Fetched {
            fetch,
            cell: self.cell(fetch, feature),
        })
    }

    /// The index of derived feature `feature` of `view`, planned after its inputs if not yet.
    fn derived(&mut self, view: &str, feature: &str) -> Result<usize, String> {
        let name = format!("{view}:{feature}");
        match self.derived_index.get(&name) {
            Some(Some(i)) => return Ok(*i),
            Some(None) => {
                return Err(format!(
                    "derived features depend on each other in a cycle through `{name}`"
                ));
            }
            None => {}
        }
        let Some(expr) = self.config.views[view].features[feature].expr.clone() else {
            return Err(format!("derived feature `{name}` has no expression"));
        };
        self.derived_index.insert(name.clone(), None);
        let mut inputs = Vec::with_capacity(expr.inputs().len());
        for input in expr.inputs() {
            inputs.push(match self.origin(&input.view, &input.feature)? {
                Origin::Derived(j) => Arg::Derived(j),
                origin => Arg::Input(self.derived_input(input, origin)),
            });
        }
        let i = self.derived.len();
        self.derived.push(Derived {
            name: name.clone(),
            expr,
            inputs,
            // decided once the outputs are known
            at: At::Own(0),
        });
        self.derived_index.insert(name, Some(i));
        Ok(i)
    }

    /// The index in `derived_inputs` of `input` (from `origin`), added if new.
    fn derived_input(&mut self, input: &derived::InputRef, origin: Origin) -> usize {
        if let Some(i) = self.derived_inputs.iter().position(|d| d.origin == origin) {
            return i;
        }
        self.derived_inputs.push(DerivedInput {
            name: format!("{}:{}", input.view, input.feature),
            ty: input.ty,
            origin,
            pii: self.config.views[&input.view].features[&input.feature].pii,
            // decided once the outputs are known
            at: At::Own(0),
        });
        self.derived_inputs.len() - 1
    }

    /// The fetch of `view`, planned (with the fetches its keys depend on) if not yet.
    fn fetch(&mut self, view_name: &str) -> Result<usize, String> {
        if let Some(&i) = self.fetch_of_view.get(view_name) {
            return Ok(i);
        }
        if let Some(start) = self.visiting.iter().position(|v| v == view_name) {
            let mut cycle = self.visiting[start..].to_vec();
            cycle.push(view_name.to_owned());
            return Err(format!(
                "views depend on each other in a cycle: {}",
                cycle.join(" -> ")
            ));
        }
        self.visiting.push(view_name.to_owned());
        let view = &self.config.views[view_name];
        let mut keys = Vec::with_capacity(view.entities.len());
        let mut stage = 0;
        for entity_name in &view.entities {
            let entity = &self.config.entities[entity_name];
            let key = match &entity.from {
                EntityFrom::Request => KeyInput::Entity(input(
                    &mut self.entities,
                    entity_name,
                    entity.ty,
                    &entity.description,
                )?),
                EntityFrom::Context(name) => KeyInput::Context(self.context_input(
                    name,
                    entity.ty,
                    &entity.description,
                    false,
                )?),
                EntityFrom::Feature { view, feature } => {
                    let source = &self.config.sources[&self.config.views[view].source];
                    if source.kind == REQUEST_KIND {
                        KeyInput::Context(self.context_input(
                            feature,
                            entity.ty,
                            &entity.description,
                            self.config.views[view].features[feature].required,
                        )?)
                    } else {
                        let fetch = self.fetch(view)?;
                        stage = stage.max(self.fetches[fetch].stage + 1);
                        KeyInput::Feature {
                            fetch,
                            cell: self.cell(fetch, feature),
                        }
                    }
                }
            };
            keys.push(key);
        }
        self.visiting.pop();
        let i = self.fetches.len();
        self.fetches.push(PendingFetch {
            view: view_name.to_owned(),
            source: self.source_index[view.source.as_str()],
            features: Vec::new(),
            keys,
            max_age: view.max_age,
            stage,
        });
        self.fetch_of_view.insert(view_name.to_owned(), i);
        Ok(i)
    }

    /// The index of `feature` among `fetch`'s requested features, adding it if needed.
    fn cell(&mut self, fetch: usize, feature: &str) -> usize {
        let f = &mut self.fetches[fetch];
        if let Some(i) = f.features.iter().position(|(n, _)| n == feature) {
            return i;
        }
        let ty = self.config.views[&f.view].features[feature].ty;
        f.features.push((feature.to_owned(), ty));
        f.features.len() - 1
    }

    /// The index of context value `name`; `required` if any place the plan reads it from says so;
    /// `pii` if a `request` view's feature `name` is marked `pii`, read by this plan or not (the
    /// same context value an entity key reads with `from = "context:NAME"`).
    fn context_input(
        &mut self,
        name: &str,
        ty: FeatureType,
        description: &str,
        required: bool,
    ) -> Result<usize, String> {
        let i =
            input(&mut self.context, name, ty, description).map_err(|e| format!("context {e}"))?;
        self.context[i].required |= required;
        let config = self.config;
        self.context[i].pii = config.views.values().any(|v| {
            config
                .sources
                .get(&v.source)
                .is_some_and(|s| s.kind == REQUEST_KIND)
                && v.features.get(name).is_some_and(|f| f.pii)
        });
        Ok(i)
    }
}

fn input(
    inputs: &mut Vec<Input>,
    name: &str,
    ty: FeatureType,
    description: &str,
) -> Result<usize, String> {
    if let Some(i) = inputs.iter().position(|c| c.name == name) {
        if inputs[i].ty != ty {
            return Err(format!(
                "`{name}` is read both as {} and as {ty}",
                inputs[i].ty
            ));
        }
        return Ok(i);
    }
    inputs.push(Input {
        name: name.to_owned(),
        ty,
        description: description.to_owned(),
        required: false,
        pii: false,
    });
    Ok(inputs.len() - 1)
}

/// A hash of everything that determines the values served for `features`: for a derived
/// feature, its expression and the views it reads, transitively.
fn definition_hash(
    config: &Config,
    features: &[FeatureRef],
    defaults: &HashMap<FeatureRef, Value>,
) -> String {
    let mut canonical = String::new();
    let mut views = BTreeMap::new();
    for r in features {
        let view = &config.views[&r.view];
        let ty = view.features[&r.feature].ty;
        canonical.push_str(&format!("{r}:{ty};default={:?}\n", defaults.get(r)));
        views.insert(&r.view, view);
    }
    // The derived features read, and the views they read, until none is new.
    let mut pending: Vec<&String> = views.keys().copied().collect();
    while let Some(name) = pending.pop() {
        for feature in config.views[name].features.values() {
            for input in feature.expr.iter().flat_map(|e| e.inputs()) {
                if let Some((name, view)) = config.views.get_key_value(&input.view)
                    && views.insert(name, view).is_none()
                {
                    pending.push(name);
                }
            }
        }
    }
    for (name, view) in views {
        if view.derived {
            let exprs: Vec<String> = view
                .features
                .iter()
                .map(|(f, c)| {
                    let source = c.expr.as_ref().map_or("", |e| e.source());
                    format!("{f}:{}={source}", c.ty)
                })
                .collect();
            canonical.push_str(&format!("view {name}: derived {exprs:?}\n"));
            continue;
        }
        let source = &config.sources[&view.source];
        let keys: Vec<String> = view
            .entities
            .iter()
            .map(|e| format!("{e}<-{:?}", config.entities[e].from))
            .collect();
        canonical.push_str(&format!(
            "view {name}: source={}({}) keys={keys:?} max_age={:?} options={}\n",
            source.name,
            source.kind,
            view.max_age,
            serde_json::to_string(&view.options.0).unwrap_or_default()
        ));
    }
    short_hash(canonical.as_bytes())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn dependency_cycles_are_refused() {
        let text = r#"
[entities.a]
type = "string"
from = "va:b_of_a"
[entities.b]
type = "string"
from = "vb:a_of_b"
[sources.t]
kind = "static"
[views.va]
source = "t"
entities = ["b"]
path = "a.csv"
features = { b_of_a = { type = "string" } }
[views.vb]
source = "t"
entities = ["a"]
path = "b.csv"
features = { a_of_b = { type = "string" } }
[feature_services.m]
features = ["va:b_of_a"]
"#;
        let errors = gateway_config::load_str_checked(
            text,
            "test.toml",
            Path::new("/nonexistent"),
            &fetcher_builtin::registry(),
            &check_all,
        )
        .expect_err("a cycle is refused");
        // Placed like the loader's own problems: at the feature service, with its line.
        assert_eq!(errors.errors.len(), 1, "{errors}");
        let text = errors.to_string();
        assert!(
            text.starts_with("test.toml:20:19: feature_services.m: "),
            "{text}"
        );
        assert!(text.contains("cycle: va -> vb -> va"), "{text}");
    }

    #[test]
    fn context_values_of_pii_request_features_are_pii_whatever_reads_them() {
        let text = r#"
[entities.customer]
type = "string"
from = "context:email"
[entities.card]
type = "string"
from = "txn:card"
[sources.t]
kind = "static"
[sources.request]
kind = "request"
[views.customers]
source = "t"
entities = ["customer"]
path = "c.csv"
features = { segment = { type = "string" } }
[views.cards]
source = "t"
entities = ["card"]
path = "k.csv"
features = { issuer = { type = "string" } }
[views.txn]
source = "request"
features = { email = { type = "string", pii = true }, card = { type = "string", pii = true }, amount = { type = "double" } }
[feature_services.keys]
features = ["customers:segment", "cards:issuer", "txn:amount"]
[feature_services.outputs]
features = ["txn:email", "txn:amount"]
"#;
        let config = gateway_config::load_str(
            text,
            "test.toml",
            Path::new("/nonexistent"),
            &fetcher_builtin::registry(),
        )
        .unwrap();
        let context = |service: &str| {
            let features = &config.feature_services[service].features;
            let plan = compile(
                &config,
                service,
                "",
                Duration::ZERO,
                features,
                &HashMap::new(),
            );
            let plan = plan.unwrap();
            assert!(plan.entities.iter().all(|e| !e.pii));
            plan.context
                .iter()
                .map(|c| (c.name.clone(), c.pii))
                .collect::<Vec<_>>()
        };
        // Read only as entity keys (`from = "context:email"`, `from = "txn:card"`): still pii.
        assert_eq!(
            context("keys"),
            [
                ("email".to_owned(), true),
                ("card".to_owned(), true),
                ("amount".to_owned(), false)
            ]
        );
        assert_eq!(
            context("outputs"),
            [("email".to_owned(), true), ("amount".to_owned(), false)]
        );
    }
}
