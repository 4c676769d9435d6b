//! Running a plan for a batch of rows: fan out per stage, then assemble the vectors.
//!
//! Each stage's fetches run concurrently, one call per (view, distinct key set) for the whole
//! batch, every call through its source's stack (which bounds it by the request's deadline).
//! A failing or slow source never fails the request: its features get a status
//! (`TIMED_OUT`, `SOURCE_ERROR`, ...) and, where configured, a default value.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use foldhash::{HashMap, HashMapExt};

use fetcher_api::{
    Cell, EntityKey, ErrorClass, FetchError, FetchRequest, KeyPart, Record, Row, Value,
};
use futures::future::join_all;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::Instrument;

use gateway_stack::{GatewayService, Slot};

use crate::{
    plan::{Arg, At, Derived, KeyInput, Origin, Plan},
    status::Status,
};

/// One row's inputs, validated against the plan (see [`crate::request`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RowInput {
    /// One key per `plan.entities`, in order.
    pub entities: Vec<KeyPart>,
    /// One optional value per `plan.context`, in order, already of the declared type.
    pub context: Vec<Option<Value>>,
}

/// One served feature.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    /// The value (the default, if one was applied).
    pub value: Value,
    /// Why it is this value.
    pub status: Status,
    /// The source's event time of the value, if known.
    pub event_time: Option<SystemTime>,
    /// Time spent on the fetch that produced it.
    pub latency: Duration,
    /// Whether `value` is the configured default.
    pub default_applied: bool,
    /// A short reason for a status other than PRESENT (always set for one, never for PRESENT).
    pub detail: Option<Detail>,
    /// Whether the value came from the cache.
    pub cache: CacheUse,
    /// Time since a cached value was fetched.
    pub cache_age: Option<Duration>,
}

/// Why a feature is not PRESENT. Assembling a vector only picks the variant (no allocation: fixed
/// text, a message the fetch already made, or the numbers a text is made of); the text is made
/// by [`Detail::into_text`] only for a caller that asked for metadata.
#[derive(Clone, Debug, PartialEq)]
pub enum Detail {
    /// Fixed text.
    Text(&'static str),
    /// A message made while fetching: a cell's decode error, a value of the wrong type.
    Message(String),
    /// The source has no row for the key of `plan.fetches[fetch]`: "no row for user_id".
    NoRow {
        /// Index into [`Plan::fetches`].
        fetch: usize,
    },
    /// Input `input` of derived feature `derived` was not available:
    /// "input txn.amount TIMED_OUT".
    Input {
        /// Index into [`Plan::derived`].
        derived: usize,
        /// Index into that feature's inputs.
        input: usize,
        /// The input's status.
        status: Status,
    },
    /// The row's event time is `age` old, more than the view's `max_age`:
    /// "event time 41d 3h ago, max_age 30d".
    TooOld {
        /// Time since the row's event time.
        age: Duration,
        /// The view's max age.
        max_age: Duration,
    },
}

impl Detail {
    /// The reason as the wire's `FeatureMetadata.detail` carries it; `plan` is the plan the
    /// feature was served by.
    pub fn into_text(self, plan: &Plan) -> String {
        match self {
            Detail::Text(text) => text.to_owned(),
            Detail::Message(message) => message,
            Detail::NoRow { fetch } => match plan.fetches.get(fetch) {
                Some(fetch) => format!("no row for {}", and_list(&fetch.entities)),
                None => "no row".to_owned(),
            },
            Detail::Input {
                derived,
                input,
                status,
            } => match plan
                .derived
                .get(derived)
                .and_then(|d| d.expr.inputs().get(input))
            {
                Some(r) => format!(
                    "input {}.{} {}",
                    r.view,
                    r.feature,
                    status.as_str().to_ascii_uppercase()
                ),
                None => format!("an input {}", status.as_str().to_ascii_uppercase()),
            },
            Detail::TooOld { age, max_age } => format!(
                "event time {} ago, max_age {}",
                short_duration(age),
                short_duration(max_age)
            ),
        }
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A duration in its largest unit and the next one if not zero, truncated: `41d 3h`, `30d`,
/// `1m 30s`, `250ms`.
fn short_duration(d: Duration) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let secs = d.as_secs();
    for (i, &(size, unit)) in UNITS.iter().enumerate() {
        if secs >= size {
            let whole = secs / size;
            return match UNITS.get(i + 1) {
                Some(&(next, next_unit)) if secs % size / next > 0 => {
                    format!("{whole}{unit} {}{next_unit}", secs % size / next)
                }
                _ => format!("{whole}{unit}"),
            };
        }
    }
    format!("{}ms", d.as_millis())
}

/// The result of a plan run.
#[derive(Debug)]
pub struct Execution {
    /// One vector per input row, one entry per plan output.
    pub rows: Vec<Vec<Served>>,
    /// Per input row, the derived features' inputs the training log holds beside the outputs,
    /// one per [`Plan::logged_inputs`]; empty when the plan has none.
    pub logged_inputs: Vec<Vec<Served>>,
    /// Wall time of each stage.
    pub stage_times: Vec<Duration>,
}

/// What one fetch produced.
#[derive(Debug, Default)]
enum Outcome {
    /// Not run: no row had a complete key.
    #[default]
    Skipped,
    /// Ran. `row_of[r]` is the index in `slots` of request row `r`'s key, if it had one.
    Ran {
        row_of: Vec<Option<usize>>,
        slots: Vec<Slot>,
        latency: Duration,
    },
}

/// Where a served value came from, as far as the cache is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheUse {
    /// The source has no cache, or the feature needed no fetch.
    #[default]
    None,
    /// Fetched from a cached source now (a miss).
    Miss,
    /// Served from the cache within its TTL.
    Hit,
    /// Served from the cache past its TTL, because the source failed or was slow.
    Stale,
}

/// What a fetch produced for one request row.
#[derive(Debug)]
enum RowState<'a> {
    KeyUnavailable,
    Failed(&'a FetchError),
    NotFound,
    Found(&'a Record),
}

fn state(row: &Row) -> RowState<'_> {
    match row {
        Row::NotFound => RowState::NotFound,
        Row::Found(record) => RowState::Found(record),
    }
}

impl Outcome {
    /// How many request rows read each slot.
    fn readers(&self) -> Vec<u32> {
        match self {
            Outcome::Ran { row_of, slots, .. } => {
                let mut readers = vec![0; slots.len()];
                for &i in row_of.iter().flatten() {
                    readers[i] += 1;
                }
                readers
            }
            Outcome::Skipped => Vec::new(),
        }
    }

    /// Cell `cell` of request row `row`'s fetched row, if found: moved out when no other request
    /// row reads that fetched row (each output reads its cell once), cloned otherwise.
    /// `readers` counts the readers of each fetched row; `None` means one each.
    fn take_cell(&mut self, row: usize, cell: usize, readers: Option<&[u32]>) -> Option<Cell> {
        let Outcome::Ran { row_of, slots, .. } = self else {
            return None;
        };
        let i = row_of[row]?;
        let Some(Row::Found(record)) = slots[i].row_mut() else {
            return None;
        };
        let slot = record.cells.get_mut(cell)?;
        Some(if readers.is_none_or(|r| r[i] == 1) {
            std::mem::replace(slot, Ok(Value::Null))
        } else {
            slot.clone()
        })
    }

    /// The row's state, the fetch's latency, its cache use, and the age of a cached value.
    fn for_row(&self, row: usize) -> (RowState<'_>, Duration, CacheUse, Option<Duration>) {
        match self {
            Outcome::Skipped => (
                RowState::KeyUnavailable,
                Duration::ZERO,
                CacheUse::None,
                None,
            ),
            Outcome::Ran {
                row_of,
                slots,
                latency,
            } => {
                let Some(i) = row_of[row] else {
                    return (RowState::KeyUnavailable, *latency, CacheUse::None, None);
                };
                match &slots[i] {
                    Slot::Fetched { row, cached } => {
                        let cache = if *cached {
                            CacheUse::Miss
                        } else {
                            CacheUse::None
                        };
                        (state(row), *latency, cache, None)
                    }
                    Slot::Cached { row, age } => (state(row), *latency, CacheUse::Hit, Some(*age)),
                    Slot::Stale { row, age, .. } => {
                        (state(row), *latency, CacheUse::Stale, Some(*age))
                    }
                    Slot::Failed(e) => (RowState::Failed(e), *latency, CacheUse::None, None),
                }
            }
        }
    }
}

/// Runs `plan` for `rows` against `sources` (indexed like the configuration's sources), each
/// fetch bounded by `deadline`.
pub async fn execute(
    plan: &Plan,
    sources: &[Option<GatewayService>],
    rows: &[RowInput],
    deadline: Instant,
) -> Execution {
    let mut outcomes: Vec<Outcome> = plan.fetches.iter().map(|_| Outcome::default()).collect();
    let mut stage_times = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let started = Instant::now();
        let calls = stage.iter().map(|&f| {
            let fetch = &plan.fetches[f];
            let (keys, row_of) = distinct_keys(rows.len(), |r| {
                fetch
                    .keys
                    .iter()
                    .map(|k| key_part(*k, r, &rows[r], &outcomes))
                    .collect()
            });
            let service = sources[fetch.source].clone();
            let span = tracing::debug_span!(
                "fetch",
                view = &*fetch.view,
                source = &*fetch.source_name,
                source_kind = &*fetch.source_kind,
                stage = fetch.stage,
                keys = keys.len(),
                cache_hits = tracing::field::Empty,
                cache_stale = tracing::field::Empty,
                failed_keys = tracing::field::Empty,
                error_class = tracing::field::Empty,
            );
            let request = FetchRequest {
                view: fetch.view.clone(),
                features: fetch.features.clone(),
                keys,
                deadline: Some(deadline),
            };
            let call = async move {
                if request.keys.is_empty() {
                    return Outcome::Skipped;
                }
                let keys = request.keys.len();
                let Some(service) = service else {
                    let e = Arc::new(FetchError::internal("the source has no fetcher"));
                    return Outcome::Ran {
                        row_of,
                        slots: vec![Slot::Failed(e); keys],
                        latency: Duration::ZERO,
                    };
                };
                let started = Instant::now();
                let Ok(slots) = service.oneshot(request).await;
                debug_assert_eq!(slots.len(), keys);
                record_fetch(&tracing::Span::current(), &slots);
                Outcome::Ran {
                    row_of,
                    slots,
                    latency: started.elapsed(),
                }
            };
            call.instrument(span)
        });
        let done = join_all(calls).await;
        for (&f, outcome) in stage.iter().zip(done) {
            outcomes[f] = outcome;
        }
        stage_times.push(started.elapsed());
    }
    let (rows, logged_inputs) = assemble(plan, rows, outcomes, SystemTime::now());
    Execution {
        rows,
        logged_inputs,
        stage_times,
    }
}

/// Records on a fetch's span how its keys were answered.
fn record_fetch(span: &tracing::Span, slots: &[Slot]) {
    if span.is_disabled() {
        return;
    }
    let (mut hits, mut stale, mut failed) = (0usize, 0usize, 0usize);
    let mut class = None;
    for slot in slots {
        match slot {
            Slot::Cached { .. } => hits += 1,
            Slot::Stale { .. } => stale += 1,
            Slot::Failed(e) => {
                failed += 1;
                class.get_or_insert(e.class());
            }
            Slot::Fetched { .. } => {}
        }
    }
    span.record("cache_hits", hits);
    span.record("cache_stale", stale);
    span.record("failed_keys", failed);
    if let Some(class) = class {
        span.record("error_class", class.as_str());
    }
}

/// The distinct complete keys of `n` rows, and for each row the index of its key.
fn distinct_keys(
    n: usize,
    key_of: impl Fn(usize) -> Option<EntityKey>,
) -> (Vec<EntityKey>, Vec<Option<usize>>) {
    let mut keys = Vec::new();
    let mut row_of = Vec::with_capacity(n);
    if n == 1 {
        // The common single-row request needs no de-duplication map.
        let key = key_of(0);
        row_of.push(key.as_ref().map(|_| 0));
        keys.extend(key);
        return (keys, row_of);
    }
    let mut index: HashMap<EntityKey, usize> = HashMap::with_capacity(n);
    for r in 0..n {
        row_of.push(key_of(r).map(|key| {
            *index.entry(key).or_insert_with_key(|key| {
                keys.push(key.clone());
                keys.len() - 1
            })
        }));
    }
    (keys, row_of)
}

/// One part of a row's key for a fetch, if available.
fn key_part(input: KeyInput, r: usize, row: &RowInput, outcomes: &[Outcome]) -> Option<KeyPart> {
    match input {
        KeyInput::Entity(i) => Some(row.entities[i].clone()),
        KeyInput::Context(i) => row.context[i].as_ref()?.to_key_part(),
        KeyInput::Feature { fetch, cell } => {
            let (state, ..) = outcomes[fetch].for_row(r);
            match state {
                RowState::Found(record) => record.cells.get(cell)?.as_ref().ok()?.to_key_part(),
                _ => None,
            }
        }
    }
}

/// Builds each row's vector from the fetch outcomes, and the derived features' inputs the
/// training log holds beside it ([`Plan::logged_inputs`]). Pure, so every status rule is
/// unit-tested.
fn assemble(
    plan: &Plan,
    rows: &[RowInput],
    mut outcomes: Vec<Outcome>,
    now: SystemTime,
) -> (Vec<Vec<Served>>, Vec<Vec<Served>>) {
    // A single row reads each fetched row once, so its values can always be moved out.
    let readers: Vec<Vec<u32>> = if rows.len() == 1 {
        Vec::new()
    } else {
        outcomes.iter().map(Outcome::readers).collect()
    };
    let mut vectors = Vec::with_capacity(rows.len());
    let mut logged = Vec::new();
    // The derived inputs and derived features that are not outputs (none, most often: then
    // nothing is allocated), reused from row to row.
    let mut own_inputs: Vec<Served> = Vec::with_capacity(plan.own.0);
    let mut own_derived: Vec<Served> = Vec::with_capacity(plan.own.1);
    for (r, row) in rows.iter().enumerate() {
        // Each cell is read once: by its output, or as a derived input kept on its own.
        let mut cell = |fetch: usize, cell: usize, ty| {
            let shared = readers.get(fetch).map(Vec::as_slice);
            let value = outcomes[fetch].take_cell(r, cell, shared);
            fetched(plan, &outcomes, fetch, r, row, value, ty, now)
        };
        let mut gather = |origin: Origin, ty| match origin {
            Origin::Context(i) => from_context(&row.context[i]),
            Origin::Fetched { fetch, cell: c } => cell(fetch, c, ty),
            // a placeholder, evaluated below
            Origin::Derived(_) => served(Value::Null, Status::NotFound, None),
        };
        let mut vector: Vec<Served> = plan
            .outputs
            .iter()
            .map(|output| gather(output.origin, output.ty))
            .collect();
        own_inputs.clear();
        own_inputs.extend(
            plan.derived_inputs
                .iter()
                .filter(|input| matches!(input.at, At::Own(_)))
                .map(|input| gather(input.origin, input.ty)),
        );
        // Derived features, each after those it reads, from the values before any default.
        own_derived.clear();
        for (i, d) in plan.derived.iter().enumerate() {
            let served = evaluate(i, d, |arg| {
                let (at, own) = match *arg {
                    Arg::Input(k) => (plan.derived_inputs[k].at, &own_inputs),
                    Arg::Derived(j) => (plan.derived[j].at, &own_derived),
                };
                match at {
                    At::Output(o) => &vector[o],
                    At::Own(k) => &own[k],
                }
            });
            match d.at {
                At::Output(o) => vector[o] = served,
                At::Own(_) => own_derived.push(served),
            }
        }
        for (output, served) in plan.outputs.iter().zip(&mut vector) {
            debug_assert_eq!(
                served.detail.is_none(),
                served.status == Status::Present,
                "a reason for every status but PRESENT: {served:?}"
            );
            if served.status != Status::Present
                && let Some(default) = &output.default
            {
                served.value = default.clone();
                served.default_applied = true;
            }
        }
        vectors.push(vector);
        if !plan.logged_inputs.is_empty() {
            logged.push(
                plan.logged_inputs
                    .iter()
                    .filter_map(|&i| match plan.derived_inputs[i].at {
                        At::Own(k) => Some(take(&mut own_inputs[k])),
                        At::Output(_) => None,
                    })
                    .collect(),
            );
        }
    }
    (vectors, logged)
}

/// Moves a served feature out, leaving a placeholder (each is taken once).
fn take(served: &mut Served) -> Served {
    std::mem::replace(served, self::served(Value::Null, Status::NotFound, None))
}

/// A context value as served.
fn from_context(value: &Option<Value>) -> Served {
    match value {
        None => served(Value::Null, Status::NotFound, text("context value missing")),
        Some(Value::Null) => served(Value::Null, Status::NullValue, text("null in the context")),
        Some(v) => served(v.clone(), Status::Present, None),
    }
}

/// Cell `value` (taken or copied from fetch `fetch`'s row for request row `r`) as served.
#[allow(clippy::too_many_arguments)]
fn fetched(
    plan: &Plan,
    outcomes: &[Outcome],
    fetch: usize,
    r: usize,
    row: &RowInput,
    value: Option<Cell>,
    ty: fetcher_api::FeatureType,
    now: SystemTime,
) -> Served {
    let (state, latency, cache, cache_age) = outcomes[fetch].for_row(r);
    let key_unavailable = matches!(state, RowState::KeyUnavailable);
    let max_age = plan.fetches[fetch].max_age;
    let mut s = from_state(state, value, ty, fetch, max_age, now);
    if key_unavailable {
        // Say why: a dependent key missing because its source timed out or failed is not the
        // same, for a model or a training set, as no row.
        let (status, detail) = why_key_unavailable(plan, outcomes, fetch, r, row);
        s.status = status;
        s.detail = text(detail);
    }
    // A value served from past its TTL says so; everything else keeps its status.
    if cache == CacheUse::Stale && s.status == Status::Present {
        s.status = Status::Stale;
        s.detail = text("source failed or slow; cached value served");
    }
    s.latency = latency;
    s.cache = cache;
    s.cache_age = cache_age;
    s
}

/// Derived feature `i` (`d`) of one row, from its inputs as served (`arg` gives each). The status rules are the
/// `derived` crate's ([`derived::Expression::evaluate`], which `training-set` recomputes with
/// too): an unavailable input read passes its status on, an evaluation error is SOURCE_ERROR, a
/// null result NULL_VALUE, and a value computed from a STALE input is STALE.
fn evaluate<'a>(i: usize, d: &Derived, arg: impl Fn(&Arg) -> &'a Served) -> Served {
    use derived::{Reason, Status as D};
    /// Inputs of at most this many are passed without an allocation.
    const ON_STACK: usize = 8;
    static NULL: Value = Value::Null;
    let to_rule = |status: Status| match status {
        Status::Present => D::Present,
        Status::NotFound => D::NotFound,
        Status::NullValue => D::NullValue,
        Status::OutsideMaxAge => D::OutsideMaxAge,
        Status::TimedOut => D::TimedOut,
        Status::SourceError => D::SourceError,
        Status::Stale => D::Stale,
    };
    let mut on_stack = [(D::NotFound, &NULL); ON_STACK];
    let mut on_heap = Vec::new();
    let rows: &mut [(D, &Value)] = if d.inputs.len() <= ON_STACK {
        &mut on_stack[..d.inputs.len()]
    } else {
        on_heap.resize(d.inputs.len(), (D::NotFound, &NULL));
        &mut on_heap
    };
    // The value is as old as its oldest available input, and took as long as its slowest.
    let mut event_time: Option<SystemTime> = None;
    let mut latency = Duration::ZERO;
    for (row, a) in rows.iter_mut().zip(&d.inputs) {
        let s = arg(a);
        *row = (to_rule(s.status), &s.value);
        if row.0.is_available()
            && let Some(t) = s.event_time
        {
            event_time = Some(event_time.map_or(t, |e| e.min(t)));
        }
        latency = latency.max(s.latency);
    }
    let outcome = d.expr.evaluate(rows);
    let status = match outcome.status {
        D::Present => Status::Present,
        D::NotFound => Status::NotFound,
        D::NullValue => Status::NullValue,
        D::OutsideMaxAge => Status::OutsideMaxAge,
        D::TimedOut => Status::TimedOut,
        D::SourceError => Status::SourceError,
        D::Stale => Status::Stale,
    };
    let detail = outcome.reason.map(|reason| match reason {
        Reason::Null => Detail::Text("the expression gave null"),
        Reason::StaleInput => Detail::Text("computed from a cached value served past its TTL"),
        Reason::Input { input, .. } => Detail::Input {
            derived: i,
            input,
            status: arg(&d.inputs[input]).status,
        },
        Reason::Failed(reason) => Detail::Message(format!("expression: {reason}")),
    });
    let mut out = served(outcome.value, status, detail);
    out.event_time = event_time;
    out.latency = latency;
    out
}

/// Why row `r` has no key for `fetch`: the status of the first key part it lacks, followed
/// through the fetches that key parts come from. Timeouts and failures upstream pass on as
/// `TIMED_OUT` and `SOURCE_ERROR`; a key part that is simply absent (no row, a null value, no
/// context value) is `NOT_FOUND`.
fn why_key_unavailable(
    plan: &Plan,
    outcomes: &[Outcome],
    fetch: usize,
    r: usize,
    row: &RowInput,
) -> (Status, &'static str) {
    for input in &plan.fetches[fetch].keys {
        match *input {
            KeyInput::Entity(_) => {}
            KeyInput::Context(i) => match &row.context[i] {
                None => return (Status::NotFound, "key unavailable: context value missing"),
                Some(value) if value.to_key_part().is_none() => {
                    return (Status::NotFound, "key unavailable: context value null");
                }
                Some(_) => {}
            },
            KeyInput::Feature { fetch: from, cell } => match outcomes[from].for_row(r).0 {
                RowState::Failed(e) if e.class() == ErrorClass::Timeout => {
                    return (Status::TimedOut, "key unavailable: its source timed out");
                }
                RowState::Failed(_) => {
                    return (Status::SourceError, "key unavailable: its source failed");
                }
                RowState::KeyUnavailable => {
                    return why_key_unavailable(plan, outcomes, from, r, row);
                }
                RowState::NotFound => return (Status::NotFound, "key unavailable: no row"),
                RowState::Found(record) => {
                    if record
                        .cells
                        .get(cell)
                        .and_then(|c| c.as_ref().ok())
                        .and_then(Value::to_key_part)
                        .is_none()
                    {
                        return (Status::NotFound, "key unavailable: null key feature");
                    }
                }
            },
        }
    }
    (Status::NotFound, "key unavailable")
}

/// A fixed reason.
fn text(text: &'static str) -> Option<Detail> {
    Some(Detail::Text(text))
}

fn served(value: Value, status: Status, detail: Option<Detail>) -> Served {
    Served {
        value,
        status,
        event_time: None,
        latency: Duration::ZERO,
        default_applied: false,
        detail,
        cache: CacheUse::None,
        cache_age: None,
    }
}

/// The served feature for a row's state in fetch `fetch`; `value` is the feature's cell when
/// found.
fn from_state(
    state: RowState<'_>,
    value: Option<Cell>,
    ty: fetcher_api::FeatureType,
    fetch: usize,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Served {
    match state {
        RowState::KeyUnavailable => served(Value::Null, Status::NotFound, text("key unavailable")),
        RowState::Failed(e) if e.class() == ErrorClass::Timeout => {
            served(Value::Null, Status::TimedOut, text(e.class().as_str()))
        }
        RowState::Failed(e) => served(Value::Null, Status::SourceError, text(e.class().as_str())),
        RowState::NotFound => served(Value::Null, Status::NotFound, Some(Detail::NoRow { fetch })),
        RowState::Found(record) => {
            let too_old = match (max_age, record.event_time) {
                (Some(max_age), Some(t)) => now
                    .duration_since(t)
                    .ok()
                    .filter(|age| *age > max_age)
                    .map(|age| Detail::TooOld { age, max_age }),
                _ => None,
            };
            let mut s = if let Some(detail) = too_old {
                served(Value::Null, Status::OutsideMaxAge, Some(detail))
            } else {
                match value {
                    None => served(Value::Null, Status::SourceError, text("missing cell")),
                    Some(Err(e)) => {
                        served(Value::Null, Status::SourceError, Some(Detail::Message(e.0)))
                    }
                    Some(Ok(Value::Null)) => {
                        served(Value::Null, Status::NullValue, text("null in the row"))
                    }
                    Some(Ok(v)) => match ty.conform(v) {
                        Ok(v) => served(v, Status::Present, None),
                        Err(e) => {
                            served(Value::Null, Status::SourceError, Some(Detail::Message(e)))
                        }
                    },
                }
            };
            s.event_time = record.event_time;
            s
        }
    }
}

#[cfg(test)]
mod tests;
