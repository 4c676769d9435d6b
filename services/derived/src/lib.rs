//! Derived features: a CEL expression over other views' features, type-checked when the
//! configuration loads and evaluated per row, the same way when serving and when a training set
//! is rebuilt from the log.
//!
//! Parsing and evaluation are the [`cel`] crate's (CEL's standard library plus its `math` and
//! `strings` extensions). The `cel` crate has no type checker, so [`compile`] types every node
//! against the declared types of the features it reads (module `check`), refuses the functions
//! not listed below, and bounds what an evaluation can cost.
//!
//! An expression made only of numbers, strings and bools (inputs, literals, arithmetic,
//! comparisons, `&& || ! ?:`, `has`, `double(int)`, `math.greatest` and `math.least` of two
//! numbers) is also compiled into a plan (module `plan`) that evaluates a row in tens of
//! nanoseconds instead of the interpreter's hundreds. A plan gives the value of a row, or the
//! unavailable input it read first, with CEL's rules for `&&` and `||`; a row that meets any
//! other error is evaluated again by the interpreter, which decides the error. Its differential
//! test sets every plan beside the interpreter over generated rows, edge values and unavailable
//! inputs included.
//!
//! # References
//! An expression reads features as `view.feature`: any view of the configuration, `request`
//! views (the request's context) and other derived views included. `has(view.feature)` tests
//! whether that input is available.
//!
//! # Inputs that are not available
//! An input is available when its status is PRESENT or STALE. Any other (NOT_FOUND, NULL_VALUE,
//! OUTSIDE_MAX_AGE, TIMED_OUT, SOURCE_ERROR) leaves it out: reading it fails the evaluation with
//! [`EvalError::Missing`] naming the first one read, and the caller gives the derived feature
//! that input's status (TIMED_OUT and SOURCE_ERROR pass on; the others become NOT_FOUND), unless
//! the expression's value does not depend on it: it tested `has(view.feature)` first, or `&&`,
//! `||` or `?:` decided without it (CEL's logical operators absorb an error on the side that
//! does not decide: `false && x` is `false` whatever `x` is).
//!
//! # Functions
//! Operators `+ - * / % == != < <= > >= && || ! ?: [] in`, `size`, the conversions `int uint
//! double string bool bytes timestamp duration dyn type`, the string methods `contains
//! startsWith endsWith matches lowerAscii upperAscii trim substring indexOf lastIndexOf charAt`,
//! the timestamp and duration accessors `getFullYear getMonth getDayOfMonth getDate
//! getDayOfWeek getDayOfYear getHours getMinutes getSeconds getMilliseconds` (with an optional
//! time zone), `math.greatest math.least math.ceil math.floor math.round math.trunc math.abs
//! math.sign math.isNaN math.isInf math.isFinite math.sqrt`, and the macros `has all exists
//! exists_one map filter`.
//!
//! # Cost
//! An expression is refused at load time when its source is longer than
//! [`Limits::max_source_bytes`], it has more than [`Limits::max_nodes`] nodes or nests deeper
//! than [`Limits::max_depth`], a macro sits in another macro's body, strings, bytes or lists
//! are joined inside a macro's body, or a `matches` pattern is not a valid literal within
//! [`Limits::max_regex_bytes`] compiled, or its cost, counted in node evaluations with each
//! macro's body once per element of the longest list it may range over, exceeds
//! [`Limits::max_cost`]. At run time a list input longer than
//! [`Limits::max_list_len`] or a string or bytes input longer than [`Limits::max_text_bytes`]
//! is refused (the derived feature is SOURCE_ERROR). Together these bound every evaluation: no
//! macro's cost grows faster than the length of one list, and no value grows past the sum of
//! the inputs it was made of.
//!
//! # Parity with cel-go
//! cel-go is CEL's reference implementation. `tests/tests/cel_parity.rs` (run with `cargo test
//! -p end-to-end --test cel_parity`) evaluates every expression of
//! `tests/cel-parity/derived.toml` over 10,000 generated rows (edge values and unavailable inputs
//! included) with this crate and with cel-go 0.33.3, and requires the same results: integers,
//! strings, bytes, bools and timestamps exactly, doubles bit for bit, an error for an error.
//!
//! Where the `cel` crate disagreed with CEL's spec and cel-go, the gateway evaluates its own way
//! (module `parity`; the checker picks the calls by their types):
//! - `<`, `<=`, `>`, `>=` with a NaN operand are false (IEEE 754, as in cel-go). The `cel` crate
//!   failed the evaluation.
//! - `string(double)` writes what cel-go writes (Go's `%g`): `1e+21`, `1.5e-07`, `123456.789`,
//!   `-0`, `NaN`, `+Inf`; the `cel` crate wrote `1000000000000000000000` and `0.00000015`. A
//!   timestamp after year 9999 (an input; CEL's own arithmetic stays within 0001 to 9999) is
//!   written without a `+` before its year.
//! - `double(string)` of a finite number too large for a double (`'1e309'`) is an error (the
//!   spec: a conversion past the target type's range is an error), not an infinity; so is a
//!   signed NaN (`'-nan'`), as in cel-go.
//! - `timestamp(string)` refuses a space between date and time and a leap second (`23:59:60`),
//!   which chrono reads; neither is an RFC 3339 timestamp CEL can hold.
//! - A `matches` pattern with `\d \D \w \W \s \S \b \B` is refused at load time: CEL's patterns
//!   are RE2's, where these are ASCII classes, and the gateway's regex engine reads them as
//!   Unicode ones (`'١٢٣'.matches('\\d')` would be true). The message names the ASCII class to
//!   write instead, e.g. `[0-9]`.
//! - A timestamp input beyond the years chrono holds (-262143 to 262142) fails the evaluation
//!   (SOURCE_ERROR): it was read as 1970-01-01.
//! - Not a difference of results: `matches` compiles each pattern once, not on every evaluation.
//!
//! Where the two still differ, the gateway keeps its behaviour (each case is an explicit
//! exception of the test):
//! - `s.indexOf(sub, offset)` with `offset` at or past the end of `s` is an error, as CEL's
//!   conformance test `indexof_out_of_range` requires; cel-go 0.33.3 gives -1.
//! - `double(string)` refuses Go's own number syntax (`'1_000'`, `'0x1p-2'`), which cel-go reads.
//! - `duration(string)` refuses `µs` and `μs` (the spec lists `us`), which cel-go reads.
//! - `timestamp(string)` reads a lower-case `t` and `z`, as RFC 3339 allows; cel-go refuses them.
//! - A duration's `getHours()`, `getMinutes()` and `getSeconds()` are exact; cel-go computes them
//!   through a float64 and can give one more (2208988799.999999999 s gives 2208988800 seconds).
//!   Likewise `string(duration)` is exact to the nanosecond, where cel-go writes a float64's
//!   digits (`1440359947.021515s` for `1440359947.021514882s`).
//! - Time zones after 2100: the gateway's tables (chrono-tz, tzdata 2025b) end in 2100 and have
//!   no daylight saving time after it; cel-go applies each zone's rule for ever (`getHours` is
//!   one less in a New York summer of 2200).
//! - A timestamp input beyond chrono's years (above) is evaluated by cel-go.
//! - NaN's bits: cel-go's `double('NaN')` is Go's NaN, 0x7ff8000000000001, and the gateway's is
//!   Rust's, 0x7ff8000000000000 (the test compares NaN as NaN; every other double bit for bit).
//! - An evaluation that reads an unavailable input and also fails otherwise is
//!   [`EvalError::Missing`] here (the input's status decides the feature's), where cel-go reports
//!   whichever error it met first.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, LazyLock},
};

use fetcher_api::{FeatureType, Value};

mod check;
mod eval;
mod parity;
mod plan;
mod types;

pub use types::Ty;

/// The features expressions may read: view name → feature name → declared type.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Views by name.
    pub views: BTreeMap<String, BTreeMap<String, FeatureType>>,
}

/// One feature an expression reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRef {
    /// Its view.
    pub view: String,
    /// The feature.
    pub feature: String,
    /// Its declared type.
    pub ty: FeatureType,
}

/// The bounds that keep an evaluation's cost small whatever the configuration or the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest expression source, in bytes.
    pub max_source_bytes: usize,
    /// Most nodes (literals, references, calls) in an expression.
    pub max_nodes: usize,
    /// Deepest nesting of nodes.
    pub max_depth: usize,
    /// Largest compiled `matches` pattern, in bytes (the `regex` crate's size limit).
    pub max_regex_bytes: usize,
    /// Longest list input, in elements.
    pub max_list_len: usize,
    /// Longest string or bytes input, in bytes.
    pub max_text_bytes: usize,
    /// Most node evaluations an expression may cost: its nodes, plus each macro's body nodes
    /// times the longest list it can range over ([`Limits::max_list_len`] for an input).
    pub max_cost: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: 4096,
            max_nodes: 256,
            max_depth: 48,
            max_regex_bytes: 64 * 1024,
            max_list_len: 1024,
            max_text_bytes: 16 * 1024,
            max_cost: 20_000,
        }
    }
}

impl Limits {
    /// Why `value` is too large for an expression's input, if it is.
    fn oversized(&self, value: &Value) -> Option<String> {
        let (len, limit, unit) = match value {
            Value::String(s) => (s.len(), self.max_text_bytes, "bytes"),
            Value::Bytes(b) => (b.len(), self.max_text_bytes, "bytes"),
            Value::Int64List(l) => (l.len(), self.max_list_len, "elements"),
            Value::DoubleList(l) => (l.len(), self.max_list_len, "elements"),
            Value::StringList(l) => {
                if let Some(s) = l.iter().find(|s| s.len() > self.max_text_bytes) {
                    return Some(format!(
                        "an element of {} bytes, limit {}",
                        s.len(),
                        self.max_text_bytes
                    ));
                }
                (l.len(), self.max_list_len, "elements")
            }
            _ => return None,
        };
        (len > limit).then(|| format!("{len} {unit}, limit {limit}"))
    }
}

/// A problem with an expression, at a line and column of the expression's own text (both from
/// 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    /// Line in the expression.
    pub line: u32,
    /// Column in that line, in characters.
    pub column: u32,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Why an evaluation gave no value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EvalError {
    /// It read input `usize` (an index into [`Expression::inputs`]), which is not available.
    Missing(usize),
    /// It failed: division by zero, overflow, an input too large, ... (the reason).
    Failed(String),
}

/// A compiled, type-checked expression.
pub struct Expression {
    source: String,
    /// What the evaluator runs: the parsed expression with its input references resolved to
    /// input indexes and the calls module `parity` evaluates renamed to its functions (see
    /// `eval::lower`).
    expr: cel::IdedExpr,
    /// The compiled form, when the expression is made of what one has (module `plan`): it
    /// decides the rows that succeed or read an unavailable input; the rest go to the
    /// interpreter.
    plan: Option<plan::Plan>,
    inputs: Vec<InputRef>,
    ty: FeatureType,
    limits: Limits,
    has_comprehension: bool,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expression")
            .field("source", &self.source)
            .field("ty", &self.ty)
            .field("inputs", &self.inputs)
            .finish()
    }
}

impl Expression {
    /// The expression's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The features it reads, sorted by view and feature; [`Expression::eval`] takes their
    /// values in this order.
    pub fn inputs(&self) -> &[InputRef] {
        &self.inputs
    }

    /// The declared type of its result.
    pub fn ty(&self) -> FeatureType {
        self.ty
    }

    /// Whether it uses a macro (a loop over a list or a map).
    pub fn has_macro(&self) -> bool {
        self.has_comprehension
    }
}

/// The environment every expression is compiled and evaluated in.
fn env() -> Arc<cel::Env> {
    static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| {
        let mut env = cel::Env::stdlib();
        env.add_extension(cel::extensions::math)
            .expect("the math extension declares fresh names");
        env.add_extension(cel::extensions::strings)
            .expect("the strings extension declares fresh names");
        parity::register(&mut env).expect("the parity functions have names of their own");
        Arc::new(env)
    });
    ENV.clone()
}

/// Parses and type-checks `source`, whose result is declared `ty`, against `catalog`. Every
/// problem found is returned, each at its position in `source`.
pub fn compile(
    source: &str,
    ty: FeatureType,
    catalog: &Catalog,
    limits: &Limits,
) -> Result<Arc<Expression>, Vec<ExprError>> {
    if source.len() > limits.max_source_bytes {
        return Err(vec![ExprError {
            line: 1,
            column: 1,
            message: format!(
                "the expression is {} bytes long; at most {} are allowed",
                source.len(),
                limits.max_source_bytes
            ),
        }]);
    }
    if source.trim().is_empty() {
        return Err(vec![ExprError {
            line: 1,
            column: 1,
            message: "the expression is empty".to_owned(),
        }]);
    }
    let program = parse(source)?;
    let checked = check::check(program.expression(), catalog, limits);
    let mut errors: Vec<ExprError> = checked
        .errors
        .iter()
        .map(|(id, message)| {
            let offset = program
                .source_info()
                .offset_for(*id)
                .map_or(0, |(start, _)| start as usize);
            let (line, column) = line_column(source, offset);
            ExprError {
                line,
                column,
                message: message.clone(),
            }
        })
        .collect();
    if errors.is_empty()
        && let Err(message) = check::result_fits(&checked.ty, ty)
    {
        errors.push(ExprError {
            line: 1,
            column: 1,
            message,
        });
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        return Err(errors);
    }
    let index: HashMap<(&str, &str), usize> = checked
        .inputs
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.view.as_str(), r.feature.as_str()), i))
        .collect();
    let refs: HashMap<u64, (usize, bool)> = checked
        .refs
        .iter()
        .map(|(id, (view, feature, test))| {
            (*id, (index[&(view.as_str(), feature.as_str())], *test))
        })
        .collect();
    let mut expr = program.expression().clone();
    eval::lower(
        &mut expr,
        &eval::Lowering {
            calls: &checked.replaced,
            refs: &refs,
            namespaced: &checked.namespaced,
            negations: &checked.negations,
        },
    );
    let plan = plan::Plan::build(&expr, &checked.inputs, ty);
    Ok(Arc::new(Expression {
        source: source.to_owned(),
        expr,
        plan,
        inputs: checked.inputs,
        ty,
        limits: limits.clone(),
        has_comprehension: checked.has_comprehension,
    }))
}

/// Parses on a thread of its own with a large stack: the `cel` crate's parser recurses deeply
/// per nesting level (a 2 MiB thread overflows at 20 nested parentheses in a debug build), and
/// stops at 96 levels, which this stack holds.
fn parse(source: &str) -> Result<cel::Program, Vec<ExprError>> {
    const PARSER_STACK: usize = 64 << 20;
    let failed = |what: &str| {
        vec![ExprError {
            line: 1,
            column: 1,
            message: format!("the parser {what}"),
        }]
    };
    let parsed = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cel-parse".into())
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, || env().compile(source))
            .map(|handle| handle.join())
    });
    match parsed {
        Ok(Ok(Ok(program))) => Ok(program),
        Ok(Ok(Err(errors))) => Err(errors
            .errors
            .iter()
            .map(|e| ExprError {
                line: e.pos.0.max(1) as u32,
                column: e.pos.1.max(1) as u32,
                message: e.msg.clone(),
            })
            .collect()),
        Ok(Err(_)) => Err(failed("failed on this expression")),
        Err(e) => Err(failed(&format!("could not start: {e}"))),
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line as u32, column as u32)
}

#[cfg(test)]
mod tests;

/// A feature's status, as the rules of derived features read an input's and give a result's
/// (the gateway's statuses and the training log's map onto it one to one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Present,
    NotFound,
    NullValue,
    OutsideMaxAge,
    TimedOut,
    SourceError,
    Stale,
}

impl Status {
    /// Whether an input of this status is available to an expression: PRESENT or STALE.
    pub fn is_available(self) -> bool {
        matches!(self, Status::Present | Status::Stale)
    }
}

/// One row's derived feature: what [`Expression::evaluate`] gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The value: the expression's result, or null.
    pub value: Value,
    /// Its status.
    pub status: Status,
    /// Why the status is not PRESENT (`None` exactly when it is).
    pub reason: Option<Reason>,
}

/// Why a derived feature is not PRESENT.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// The expression gave null: NULL_VALUE.
    Null,
    /// A value computed while an input was STALE: STALE.
    StaleInput,
    /// It read input `input` (an index into [`Expression::inputs`]), unavailable with `status`:
    /// TIMED_OUT or SOURCE_ERROR pass on, any other is NOT_FOUND.
    Input {
        /// Index into [`Expression::inputs`].
        input: usize,
        /// That input's status.
        status: Status,
    },
    /// The evaluation failed (division by zero, overflow, an input too large): SOURCE_ERROR.
    Failed(String),
}

/// Inputs of at most this many are passed to [`Expression::eval`] without an allocation.
const INPUTS_ON_STACK: usize = 4;

impl Expression {
    /// Evaluates the expression over one row's inputs as served (`inputs[i]` is input `i` of
    /// [`Expression::inputs`]: its status and its value before any default) and gives the
    /// result its status by the rules of "Inputs that are not available" above: a null result is
    /// NULL_VALUE, a value computed while an input was STALE is STALE, reading an unavailable
    /// input gives its status if TIMED_OUT or SOURCE_ERROR and NOT_FOUND otherwise, and a
    /// failed evaluation is SOURCE_ERROR. The gateway serves with it and `training-set`
    /// recomputes with it, so the rules exist in this one place.
    pub fn evaluate(&self, inputs: &[(Status, &Value)]) -> Outcome {
        let mut on_stack: [Option<&Value>; INPUTS_ON_STACK] = [None; INPUTS_ON_STACK];
        let mut on_heap = Vec::new();
        let values: &mut [Option<&Value>] = if inputs.len() <= INPUTS_ON_STACK {
            &mut on_stack[..inputs.len()]
        } else {
            on_heap.resize(inputs.len(), None);
            &mut on_heap
        };
        for (slot, (status, value)) in values.iter_mut().zip(inputs) {
            *slot = status.is_available().then_some(*value);
        }
        let outcome = |value, status, reason| Outcome {
            value,
            status,
            reason,
        };
        match self.eval(values) {
            Ok(Value::Null) => outcome(Value::Null, Status::NullValue, Some(Reason::Null)),
            Ok(value) if inputs.iter().any(|(s, _)| *s == Status::Stale) => {
                outcome(value, Status::Stale, Some(Reason::StaleInput))
            }
            Ok(value) => outcome(value, Status::Present, None),
            Err(EvalError::Missing(input)) => {
                let status = inputs[input].0;
                let passed_on = match status {
                    Status::TimedOut | Status::SourceError => status,
                    _ => Status::NotFound,
                };
                outcome(
                    Value::Null,
                    passed_on,
                    Some(Reason::Input { input, status }),
                )
            }
            Err(EvalError::Failed(reason)) => outcome(
                Value::Null,
                Status::SourceError,
                Some(Reason::Failed(reason)),
            ),
        }
    }
}

#[cfg(test)]
mod status_rules {
    use super::*;

    fn expression(source: &str) -> Arc<Expression> {
        let mut catalog = Catalog::default();
        catalog.views.insert(
            "t".into(),
            [
                ("a".to_owned(), FeatureType::Double),
                ("b".to_owned(), FeatureType::Double),
                ("n".to_owned(), FeatureType::Int64),
            ]
            .into(),
        );
        compile(source, FeatureType::Double, &catalog, &Limits::default()).unwrap()
    }

    #[test]
    fn statuses_follow_the_documented_rules() {
        let e = expression("has(t.b) ? t.a / t.b : double(10 / t.n)");
        let names: Vec<_> = e.inputs().iter().map(|r| r.feature.as_str()).collect();
        assert_eq!(names, ["a", "b", "n"]);
        let (a, b, zero, two) = (
            Value::Double(3.0),
            Value::Double(2.0),
            Value::Int64(0),
            Value::Int64(2),
        );
        let run = |inputs: &[(Status, &Value)]| e.evaluate(inputs);
        let present = Status::Present;

        let o = run(&[(present, &a), (present, &b), (present, &two)]);
        assert_eq!(
            (o.value, o.status, o.reason),
            (Value::Double(1.5), present, None)
        );
        let o = run(&[(present, &a), (Status::Stale, &b), (present, &two)]);
        assert_eq!(
            (o.value, o.status, o.reason),
            (Value::Double(1.5), Status::Stale, Some(Reason::StaleInput))
        );
        // b unavailable: the expression reads n instead, whatever b's value was.
        let o = run(&[(present, &a), (Status::NullValue, &b), (present, &two)]);
        assert_eq!((o.value, o.status), (Value::Double(5.0), present));
        // A is read and unavailable: TIMED_OUT passes on, OUTSIDE_MAX_AGE is NOT_FOUND.
        for (status, given) in [
            (Status::TimedOut, Status::TimedOut),
            (Status::SourceError, Status::SourceError),
            (Status::OutsideMaxAge, Status::NotFound),
            (Status::NotFound, Status::NotFound),
        ] {
            let o = run(&[(status, &a), (present, &b), (present, &two)]);
            assert_eq!(
                (o.value, o.status, o.reason),
                (Value::Null, given, Some(Reason::Input { input: 0, status }))
            );
        }
        let o = run(&[(present, &a), (Status::NotFound, &b), (present, &zero)]);
        assert_eq!(
            (o.status, o.reason),
            (
                Status::SourceError,
                Some(Reason::Failed("division by zero".into()))
            )
        );
    }

    #[test]
    fn more_inputs_than_fit_on_the_stack_evaluate_alike() {
        let mut catalog = Catalog::default();
        let names: Vec<String> = (0..INPUTS_ON_STACK + 3).map(|i| format!("f{i}")).collect();
        catalog.views.insert(
            "t".into(),
            names
                .iter()
                .map(|n| (n.clone(), FeatureType::Int64))
                .collect(),
        );
        let source: Vec<String> = names.iter().map(|n| format!("t.{n}")).collect();
        let e = compile(
            &source.join(" + "),
            FeatureType::Int64,
            &catalog,
            &Limits::default(),
        )
        .unwrap();
        let values: Vec<Value> = (0..names.len() as i64).map(Value::Int64).collect();
        let mut inputs: Vec<(Status, &Value)> =
            values.iter().map(|v| (Status::Present, v)).collect();
        let sum: i64 = (0..names.len() as i64).sum();
        assert_eq!(e.evaluate(&inputs).value, Value::Int64(sum));
        inputs[INPUTS_ON_STACK + 1].0 = Status::TimedOut;
        let o = e.evaluate(&inputs);
        assert_eq!(o.status, Status::TimedOut);
    }
}
