//! Derived features: a CEL expression over other views' features, type-checked when the
//! configuration loads and evaluated per row, the same way when serving and when a training set
//! is rebuilt from the log.
//!
//! Parsing and evaluation are the [`cel`] crate's (CEL's standard library plus its `math` and
//! `strings` extensions). The `cel` crate has no type checker, so [`compile`] types every node
//! against the declared types of the features it reads (module `check`), refuses the functions
//! not listed below, and bounds what an evaluation can cost.
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
    collections::BTreeMap,
    fmt,
    sync::{Arc, LazyLock},
};

use fetcher_api::{FeatureType, Value};

mod check;
mod eval;
mod parity;
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
    /// What the evaluator runs: the parsed expression, with the calls module `parity` evaluates
    /// renamed to its functions.
    expr: cel::IdedExpr,
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
    let mut expr = program.expression().clone();
    parity::rewrite(&mut expr, &checked.replaced);
    Ok(Arc::new(Expression {
        source: source.to_owned(),
        expr,
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
