//! Derived features offline: each recomputed per logged row from the logged inputs with the
//! configuration's expression, by the rules serving uses ([`derived::Expression::evaluate`],
//! the very function the gateway calls), to check what was logged (`--recompute`) or to add a
//! derived feature the log does not have (`--derive`), without new traffic.
//!
//! # Where an input is found
//! - A feature the feature service served: its `feature:` and `status:` columns. A value not
//!   PRESENT may have been replaced by the feature service's default, but its status says it
//!   was not PRESENT: unavailable to the expression, as online, where derived features read
//!   their inputs before defaults. The one value a default hides is a STALE one (STALE is
//!   available): such a row cannot be recomputed, and is counted as such, never guessed.
//! - A feature of a `request` view: the `context:` column of that name, PRESENT when it holds a
//!   value and NOT_FOUND when null (online, an absent context value is NOT_FOUND and a null one
//!   NULL_VALUE; both are unavailable and both make a derived feature NOT_FOUND).
//! - A feature the feature service did not serve but a derived feature it served read: its
//!   `input:`, `input_status:` and `input_age_ms:` columns, which the gateway logs for exactly
//!   this (the value read, never replaced by a default).
//! - Another derived feature: recomputed first, never read from the log, where a default may
//!   have replaced it.
//!
//! Anything else is refused before a row is read, naming the input: a feature the feature
//! service neither served nor read for a derived feature (nor, for a context value, read), a
//! `pii` one in the configuration or in the log (hashed or dropped there, a feature's value and
//! a context value alike), or one whose logged type is not the configuration's.
//!
//! # Results
//! A recomputed feature is what serving would have logged: the value before the default with
//! its status, then the feature service's default in place of any value that is not PRESENT,
//! and the age of its oldest available input (the gateway gives a derived value the event time
//! of its oldest available input).

use std::{collections::HashMap, sync::Arc};

use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray,
    builder::{
        BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
        TimestampNanosecondBuilder,
    },
    cast::AsArray,
    types::Int64Type,
};
use derived::{Expression, Status};
use fetcher_api::{FeatureType, Value};
use gateway_config::{Config, FeatureRef, REQUEST_KIND};

use super::{TrainingSetError, cell_at, string_column};
use crate::{
    record::{Cell, LoggedStatus},
    schema::{
        SchemaDef, age_column, context_column, feature_column, input_age_column, input_column,
        input_status_column, status_column,
    },
};

/// What one derived feature is for one row, as it would be logged.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Computed {
    /// The value served: the default when the status is not PRESENT and one is configured.
    pub value: Cell,
    /// The status.
    pub status: LoggedStatus,
    /// The age of its oldest available input, in milliseconds.
    pub age_ms: Option<i64>,
}

/// Where one input of an expression is found in the log.
enum Input {
    /// A served feature's columns.
    Logged(Box<Logged>),
    /// A context column.
    Context { value: ArrayRef, ty: FeatureType },
    /// Another derived feature: an earlier entry of [`Derivation::nodes`].
    Derived(usize),
}

/// A served feature's value, status and age columns.
struct Logged {
    value: ArrayRef,
    ty: FeatureType,
    status: StringArray,
    age: Int64Array,
    /// Whether the feature service has a default for it (so a STALE value is lost).
    defaulted: bool,
}

/// One derived feature to compute per row.
struct Node {
    expr: Arc<Expression>,
    inputs: Vec<Input>,
    default: Option<Value>,
}

/// The derived features asked for, each after the derived features it reads, with where each
/// input is found in one log.
pub(super) struct Derivation {
    nodes: Vec<Node>,
    /// `VIEW:FEATURE` → index into `nodes`.
    index: HashMap<String, usize>,
}

/// One row's result of a node before the default: value, status, age; `None` when an input's
/// value is not in the log.
type Evaluated = Option<(Value, Status, Option<i64>)>;

impl Derivation {
    /// Plans `wanted` (derived features of `config`) over `log`, whose columns `def` describes,
    /// for feature service `service` of `config` (its defaults).
    pub(super) fn plan(
        config: &Config,
        service: &str,
        def: &SchemaDef,
        log: &RecordBatch,
        wanted: &[FeatureRef],
    ) -> Result<Derivation, TrainingSetError> {
        let Some(fs) = config.feature_services.get(service) else {
            return Err(TrainingSetError::Refused(format!(
                "feature service `{service}` is not in the configuration: its defaults are needed \
                 to recompute derived features as they were served"
            )));
        };
        let mut planner = Planner {
            config,
            def,
            log,
            defaults: &fs.defaults,
            derivation: Derivation {
                nodes: Vec::new(),
                index: HashMap::new(),
            },
            visiting: Vec::new(),
        };
        for r in wanted {
            planner.node(r)?;
        }
        Ok(planner.derivation)
    }

    /// Each `wanted` feature (by `VIEW:FEATURE`, as planned) for every row of the log, in
    /// `wanted` order; `None` for a row that cannot be recomputed.
    pub(super) fn compute(
        &self,
        rows: usize,
        wanted: &[FeatureRef],
    ) -> Result<Vec<Vec<Option<Computed>>>, TrainingSetError> {
        let targets: Vec<usize> = wanted.iter().map(|r| self.index[&r.to_string()]).collect();
        let mut out: Vec<Vec<Option<Computed>>> = vec![Vec::with_capacity(rows); targets.len()];
        let mut results: Vec<Evaluated> = Vec::with_capacity(self.nodes.len());
        for row in 0..rows {
            results.clear();
            for node in &self.nodes {
                let evaluated = node.evaluate(row, &results)?;
                results.push(evaluated);
            }
            for (column, &t) in out.iter_mut().zip(&targets) {
                column.push(results[t].as_ref().map(|(value, status, age)| {
                    let value = match &self.nodes[t].default {
                        Some(default) if *status != Status::Present => default.clone(),
                        _ => value.clone(),
                    };
                    Computed {
                        value: Cell::from(value),
                        status: logged(*status),
                        age_ms: *age,
                    }
                }));
            }
        }
        Ok(out)
    }
}

impl Node {
    /// This node for `row`, given the earlier nodes' results for it.
    fn evaluate(&self, row: usize, earlier: &[Evaluated]) -> Result<Evaluated, TrainingSetError> {
        let mut inputs: Vec<(Status, Value, Option<i64>)> = Vec::with_capacity(self.inputs.len());
        for input in &self.inputs {
            inputs.push(match input {
                Input::Logged(logged) => {
                    let Logged {
                        value,
                        ty,
                        status,
                        age,
                        defaulted,
                    } = logged.as_ref();
                    let status = rule(parse_logged(status.value(row))?);
                    if status == Status::Stale && *defaulted {
                        return Ok(None);
                    }
                    let cell = cell_at(value.as_ref(), *ty, row).ok_or_else(|| {
                        TrainingSetError::Failed("a column of another type".into())
                    })?;
                    let age = (!age.is_null(row)).then(|| age.value(row));
                    (status, Value::from(cell), age)
                }
                Input::Context { value, ty } => {
                    match cell_at(value.as_ref(), *ty, row).ok_or_else(|| {
                        TrainingSetError::Failed("a column of another type".into())
                    })? {
                        Cell::Null => (Status::NotFound, Value::Null, None),
                        cell => (Status::Present, Value::from(cell), None),
                    }
                }
                Input::Derived(j) => match &earlier[*j] {
                    Some((value, status, age)) => (*status, value.clone(), *age),
                    None => return Ok(None),
                },
            });
        }
        let refs: Vec<(Status, &Value)> = inputs.iter().map(|(s, v, _)| (*s, v)).collect();
        let outcome = self.expr.evaluate(&refs);
        // As old as its oldest available input.
        let age = inputs
            .iter()
            .filter(|(s, _, _)| s.is_available())
            .filter_map(|(_, _, age)| *age)
            .max();
        Ok(Some((outcome.value, outcome.status, age)))
    }
}

/// Resolves features to nodes and inputs to columns.
struct Planner<'a> {
    config: &'a Config,
    def: &'a SchemaDef,
    log: &'a RecordBatch,
    defaults: &'a HashMap<FeatureRef, Value>,
    derivation: Derivation,
    /// The derived features being planned, outermost first: the chain an error names.
    visiting: Vec<String>,
}

impl Planner<'_> {
    /// The node of derived feature `r`, planned (after the derived features it reads) if not yet.
    fn node(&mut self, r: &FeatureRef) -> Result<usize, TrainingSetError> {
        let name = r.to_string();
        if let Some(&i) = self.derivation.index.get(&name) {
            return Ok(i);
        }
        if self.visiting.contains(&name) {
            return Err(self.refuse("derived features read each other in a cycle".to_owned()));
        }
        let Some(expr) = self
            .config
            .views
            .get(&r.view)
            .filter(|v| v.derived)
            .and_then(|v| v.features.get(&r.feature))
            .and_then(|f| f.expr.clone())
        else {
            return Err(TrainingSetError::Refused(format!(
                "`{name}` is not a derived feature of the configuration"
            )));
        };
        self.visiting.push(name.clone());
        let mut inputs = Vec::with_capacity(expr.inputs().len());
        for input in expr.inputs() {
            inputs.push(self.input(&input.view, &input.feature, input.ty)?);
        }
        self.visiting.pop();
        let i = self.derivation.nodes.len();
        self.derivation.nodes.push(Node {
            default: self.defaults.get(r).cloned(),
            expr,
            inputs,
        });
        self.derivation.index.insert(name, i);
        Ok(i)
    }

    /// Where input `view.feature` (declared `ty`) of the derived feature being planned is.
    fn input(
        &mut self,
        view: &str,
        feature: &str,
        ty: FeatureType,
    ) -> Result<Input, TrainingSetError> {
        let r = FeatureRef {
            view: view.to_owned(),
            feature: feature.to_owned(),
        };
        let Some(v) = self.config.views.get(view) else {
            return Err(self.refuse(format!("input `{view}.{feature}`: no view `{view}`")));
        };
        if v.derived {
            return self.node(&r).map(Input::Derived);
        }
        if v.features.get(feature).is_some_and(|f| f.pii) {
            // Hashed or dropped in the log, whether served or read from the context.
            return Err(self.refuse(format!(
                "input `{view}.{feature}` is pii: personal data is not recomputed from the log"
            )));
        }
        let column = |name: &str| self.log.column_by_name(name).cloned();
        if self
            .config
            .sources
            .get(&v.source)
            .is_some_and(|s| s.kind == REQUEST_KIND)
        {
            let logged = self.def.context.iter().find(|c| c.name == feature);
            if let Some(c) = logged.filter(|c| c.pii) {
                // Logged as pii by a configuration that marked it so, unlike this one.
                return Err(self.refuse(format!(
                    "input `{view}.{feature}` (the context value `{feature}`) was logged as \
                     pii: the log holds it {}, not its value",
                    match self.def.logged_context_type(c) {
                        Some(_) => "hashed",
                        None => "not at all",
                    }
                )));
            }
            let (Some(c), Some(value)) = (logged, column(&context_column(feature))) else {
                return Err(self.refuse(format!(
                    "input `{view}.{feature}` (the context value `{feature}`) is not in the \
                     log: feature service `{}` never read it",
                    self.def.feature_service
                )));
            };
            if c.ty != ty {
                return Err(self.refuse(format!(
                    "input `{view}.{feature}` is logged as {}, the configuration declares {}",
                    c.ty.name(),
                    ty.name()
                )));
            }
            return Ok(Input::Context { value, ty });
        }
        let name = r.to_string();
        // Served, or read by a derived feature that was served (an `input:` column, never
        // replaced by a default).
        let served = self.def.features.iter().find(|f| f.name == name);
        let read = || self.def.inputs.iter().find(|f| f.name == name);
        let (f, [value_name, status_name, age_name]) = match (served, read()) {
            (Some(f), _) => (
                f,
                [
                    feature_column(&name),
                    status_column(&name),
                    age_column(&name),
                ],
            ),
            (None, Some(f)) => (
                f,
                [
                    input_column(&name),
                    input_status_column(&name),
                    input_age_column(&name),
                ],
            ),
            (None, None) => {
                return Err(self.refuse(format!(
                    "input `{view}.{feature}` is not in the log: feature service `{}` never \
                     served `{name}`, nor read it for a derived feature",
                    self.def.feature_service
                )));
            }
        };
        if f.pii {
            return Err(self.refuse(format!(
                "input `{view}.{feature}` was logged as pii: the log holds it {}, not its value",
                match self.def.logged_type(f) {
                    Some(_) => "hashed",
                    None => "not at all",
                }
            )));
        }
        if f.ty != ty {
            return Err(self.refuse(format!(
                "input `{view}.{feature}` is logged as {}, the configuration declares {}",
                f.ty.name(),
                ty.name()
            )));
        }
        let missing = |what: &str| TrainingSetError::Failed(format!("the log has no {what}"));
        let value = column(&value_name).ok_or_else(|| missing(&value_name))?;
        let status = string_column(self.log, &status_name)
            .map_err(TrainingSetError::Failed)?
            .clone();
        let age = self
            .log
            .column_by_name(&age_name)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| missing(&age_name))?
            .clone();
        Ok(Input::Logged(Box::new(Logged {
            value,
            ty,
            status,
            age,
            // An input column holds the value read, before any default.
            defaulted: served.is_some() && self.defaults.contains_key(&r),
        })))
    }

    /// A refusal naming the derived features being planned.
    fn refuse(&self, message: String) -> TrainingSetError {
        let chain = self
            .visiting
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(" reads ");
        TrainingSetError::Refused(format!("derived feature {chain}: {message}"))
    }
}

/// A status column's value.
pub(super) fn parse_logged(text: &str) -> Result<LoggedStatus, TrainingSetError> {
    Ok(match text {
        "PRESENT" => LoggedStatus::Present,
        "NOT_FOUND" => LoggedStatus::NotFound,
        "NULL_VALUE" => LoggedStatus::NullValue,
        "OUTSIDE_MAX_AGE" => LoggedStatus::OutsideMaxAge,
        "TIMED_OUT" => LoggedStatus::TimedOut,
        "SOURCE_ERROR" => LoggedStatus::SourceError,
        "STALE" => LoggedStatus::Stale,
        other => {
            return Err(TrainingSetError::Failed(format!(
                "unknown status `{other}` in the log"
            )));
        }
    })
}

/// A logged status as the rules of derived features read it.
fn rule(status: LoggedStatus) -> Status {
    match status {
        LoggedStatus::Present => Status::Present,
        LoggedStatus::NotFound => Status::NotFound,
        LoggedStatus::NullValue => Status::NullValue,
        LoggedStatus::OutsideMaxAge => Status::OutsideMaxAge,
        LoggedStatus::TimedOut => Status::TimedOut,
        LoggedStatus::SourceError => Status::SourceError,
        LoggedStatus::Stale => Status::Stale,
    }
}

/// A status as the log names it.
fn logged(status: Status) -> LoggedStatus {
    match status {
        Status::Present => LoggedStatus::Present,
        Status::NotFound => LoggedStatus::NotFound,
        Status::NullValue => LoggedStatus::NullValue,
        Status::OutsideMaxAge => LoggedStatus::OutsideMaxAge,
        Status::TimedOut => LoggedStatus::TimedOut,
        Status::SourceError => LoggedStatus::SourceError,
        Status::Stale => LoggedStatus::Stale,
    }
}

/// A column of `ty` holding `cells` (`None` as null), typed as the log types a feature.
pub(super) fn column<'a>(
    ty: FeatureType,
    cells: impl Iterator<Item = Option<&'a Cell>>,
) -> Result<ArrayRef, String> {
    let wrong = |cell: &Cell| format!("a {} feature computed as {cell:?}", ty.name());
    macro_rules! scalar {
        ($builder:expr, $pat:pat => $value:expr) => {{
            let mut b = $builder;
            for cell in cells {
                match cell {
                    None | Some(Cell::Null) => b.append_null(),
                    Some($pat) => b.append_value($value),
                    Some(other) => return Err(wrong(other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    macro_rules! list {
        ($item:expr, $pat:pat => $values:expr) => {{
            let mut b = ListBuilder::new($item);
            for cell in cells {
                match cell {
                    None | Some(Cell::Null) => b.append(false),
                    Some($pat) => {
                        for v in $values {
                            b.values().append_value(v);
                        }
                        b.append(true);
                    }
                    Some(other) => return Err(wrong(other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match ty {
        FeatureType::Int64 => scalar!(Int64Builder::new(), Cell::Int64(v) => *v),
        FeatureType::Double => {
            scalar!(Float64Builder::new(), Cell::Double(v) => f64::from_bits(*v))
        }
        FeatureType::String => scalar!(StringBuilder::new(), Cell::String(v) => v),
        FeatureType::Bool => scalar!(BooleanBuilder::new(), Cell::Bool(v) => *v),
        FeatureType::Bytes => scalar!(BinaryBuilder::new(), Cell::Bytes(v) => v),
        FeatureType::Timestamp => scalar!(
            TimestampNanosecondBuilder::new().with_timezone("UTC"),
            Cell::Timestamp(v) => *v
        ),
        FeatureType::Int64List => {
            list!(Int64Builder::new(), Cell::Int64List(v) => v.iter().copied())
        }
        FeatureType::DoubleList => list!(
            Float64Builder::new(),
            Cell::DoubleList(v) => v.iter().map(|b| f64::from_bits(*b))
        ),
        FeatureType::StringList => list!(StringBuilder::new(), Cell::StringList(v) => v.iter()),
    })
}
