//! A compiled form of the expressions the gateway serves most: those made only of numbers,
//! strings and bools, inputs, presence tests, arithmetic, comparisons, the logical operators,
//! `?:`, `double(int)` and `math.greatest` / `math.least` of two numbers. Built once per
//! expression from the checked and lowered expression, it evaluates a row in a few tens of
//! nanoseconds, where the `cel` crate's interpreter spends hundreds (it looks each operator up
//! by name, and moves every intermediate value through a boxed trait object).
//!
//! # What a plan decides, and what it leaves to the interpreter
//! A plan gives the value of an evaluation that succeeds, and the input reported missing of one
//! that reads an unavailable input (the first one read, in the interpreter's order: operands
//! left to right, each stopping at its first error, and `&&`, `||` absorbing an error on the
//! side that does not decide, as CEL defines: `false && x` is `false` whatever `x` is). At any
//! other error (integer overflow, division or modulus by zero, NaN given to `math.greatest` or
//! `math.least`, an input of another type than declared) it gives up and the row is evaluated
//! again by the interpreter, which decides the error and its reason. An expression has no side
//! effect, so evaluating it twice changes nothing. What a plan computes follows the `cel`
//! crate's operators exactly, including the gateway's own comparisons (module `parity`: an
//! ordering comparison with NaN is false):
//! - `int` arithmetic is checked (an overflow defers); `double` arithmetic is IEEE 754 (`x / 0.0`
//!   is an infinity, not an error, as in CEL);
//! - `==` and `!=` compare values of one type (`double`s as IEEE 754 does: NaN equals nothing,
//!   `-0.0` equals `0.0`), strings byte for byte;
//! - `<`, `<=`, `>`, `>=` order `int`s, `bool`s (`false < true`), strings (byte for byte) and
//!   `double`s (false when either is NaN);
//! - `math.greatest(a, b)` is `b` when `a < b`, else `a` (the first of equal values, so
//!   `math.greatest(-0.0, 0.0)` is `-0.0`), and `math.least` the same the other way.
//!
//! The differential test below evaluates every plan beside the interpreter over generated rows,
//! edge values included, and `tests/tests/cel_parity.rs` sets the whole evaluator beside cel-go.

use cel::common::ast::{Expr, IdedExpr, LiteralValue};
use fetcher_api::{FeatureType, Value};

use crate::{EvalError, InputRef};

/// The type of a node of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Double,
    Bool,
    Str,
}

/// An ordering or equality comparison.
#[derive(Clone, Copy, Debug)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// An arithmetic operator.
#[derive(Clone, Copy, Debug)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A node of a plan; its operands' types were checked when it was built.
#[derive(Debug)]
enum Node {
    Int(i64),
    Double(f64),
    Bool(bool),
    Str(Box<str>),
    /// Input `i`'s value.
    Input(usize, Kind),
    /// Whether input `i` is available.
    Has(usize),
    Cond(Box<[Node; 3]>),
    And(Box<[Node; 2]>),
    Or(Box<[Node; 2]>),
    Compare(Cmp, Box<[Node; 2]>),
    /// Arithmetic on two `int`s or two `double`s (`Rem` on `int`s only).
    Arith(Op, Box<[Node; 2]>),
    Negate(Box<Node>),
    /// `double(x)` of an `int` or a `double`.
    ToDouble(Box<Node>),
    /// `math.greatest` (true) or `math.least` (false) of two numbers of one type.
    Extreme(bool, Box<[Node; 2]>),
}

/// A value of a plan's evaluation: strings borrowed from the inputs or the plan.
#[derive(Clone, Copy, Debug)]
enum Scalar<'a> {
    Int(i64),
    Double(f64),
    Bool(bool),
    Str(&'a str),
}

/// Why a plan's evaluation stopped before a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// It read an unavailable input; the first one read is noted in the [`Row`].
    Missing,
    /// Any other error: the interpreter evaluates the row.
    Defer,
}

/// One row's inputs, and the first unavailable one read.
struct Row<'r, 'a> {
    values: &'r [Option<&'a Value>],
    first_missing: std::cell::Cell<Option<usize>>,
}

/// An expression compiled for the evaluations that succeed or read an unavailable input.
#[derive(Debug)]
pub(crate) struct Plan {
    root: Node,
}

impl Plan {
    /// The plan of `expr` (lowered by `eval::lower`) whose inputs are `inputs`, declared `ty`;
    /// `None` when the expression uses anything a plan does not have.
    pub(crate) fn build(expr: &IdedExpr, inputs: &[InputRef], ty: FeatureType) -> Option<Plan> {
        let (root, kind) = node(expr, inputs)?;
        let fits = match ty {
            FeatureType::Double => matches!(kind, Kind::Double | Kind::Int),
            FeatureType::Int64 => kind == Kind::Int,
            FeatureType::Bool => kind == Kind::Bool,
            FeatureType::String => kind == Kind::Str,
            _ => false,
        };
        fits.then_some(Plan { root })
    }

    /// What evaluating the row `values` (input `i` is `values[i]`, `None` when unavailable)
    /// gives, as a feature of type `ty`: the value, or the first unavailable input read; `None`
    /// when the interpreter must evaluate the row.
    pub(crate) fn run(
        &self,
        values: &[Option<&Value>],
        ty: FeatureType,
    ) -> Option<Result<Value, EvalError>> {
        let row = Row {
            values,
            first_missing: std::cell::Cell::new(None),
        };
        Some(Ok(match (eval(&self.root, &row), ty) {
            (Ok(Scalar::Double(d)), FeatureType::Double) => Value::Double(d),
            (Ok(Scalar::Int(i)), FeatureType::Double) => Value::Double(i as f64),
            (Ok(Scalar::Int(i)), FeatureType::Int64) => Value::Int64(i),
            (Ok(Scalar::Bool(b)), FeatureType::Bool) => Value::Bool(b),
            (Ok(Scalar::Str(s)), FeatureType::String) => Value::String(s.to_owned()),
            (Err(Stop::Missing), _) => {
                return row.first_missing.get().map(|i| Err(EvalError::Missing(i)));
            }
            _ => return None,
        }))
    }
}

fn kind_of(ty: FeatureType) -> Option<Kind> {
    Some(match ty {
        FeatureType::Int64 => Kind::Int,
        FeatureType::Double => Kind::Double,
        FeatureType::Bool => Kind::Bool,
        FeatureType::String => Kind::Str,
        _ => return None,
    })
}

fn pair(a: Node, b: Node) -> Box<[Node; 2]> {
    Box::new([a, b])
}

/// The plan of one node and its type.
fn node(e: &IdedExpr, inputs: &[InputRef]) -> Option<(Node, Kind)> {
    match &e.expr {
        Expr::Literal(literal) => Some(match literal {
            LiteralValue::Int(i) => (Node::Int(*i.inner()), Kind::Int),
            LiteralValue::Double(d) => (Node::Double(*d.inner()), Kind::Double),
            LiteralValue::Boolean(b) => (Node::Bool(*b.inner()), Kind::Bool),
            LiteralValue::String(s) => (Node::Str(s.inner().into()), Kind::Str),
            _ => return None,
        }),
        Expr::Ident(name) => {
            let (sigil, index) = name.split_at_checked(1)?;
            let i: usize = index.parse().ok()?;
            let input = inputs.get(i)?;
            match sigil {
                "#" => {
                    let kind = kind_of(input.ty)?;
                    Some((Node::Input(i, kind), kind))
                }
                "?" => Some((Node::Has(i), Kind::Bool)),
                _ => None,
            }
        }
        Expr::Call(call) if call.target.is_none() => {
            let args = call
                .args
                .iter()
                .map(|a| node(a, inputs))
                .collect::<Option<Vec<_>>>()?;
            call_node(&call.func_name, args)
        }
        _ => None,
    }
}

fn call_node(function: &str, args: Vec<(Node, Kind)>) -> Option<(Node, Kind)> {
    let mut args = args.into_iter();
    let (first, second, third) = (args.next(), args.next(), args.next());
    if args.next().is_some() {
        return None;
    }
    let number = |k: Kind| matches!(k, Kind::Int | Kind::Double);
    match (first, second, third) {
        (Some((c, Kind::Bool)), Some((a, ka)), Some((b, kb)))
            if function == "_?_:_" && ka == kb =>
        {
            Some((Node::Cond(Box::new([c, a, b])), ka))
        }
        (Some((a, ka)), Some((b, kb)), None) if ka == kb => {
            let comparison = match function {
                "_==_" => Some(Cmp::Eq),
                "_!=_" => Some(Cmp::Ne),
                // The ordering comparisons the checker hands to module `parity` (NaN unordered:
                // false) or, for types without a double, to the crate's own ordering.
                "@less" | "@ordered_less" => Some(Cmp::Lt),
                "@less_equals" | "@ordered_less_equals" => Some(Cmp::Le),
                "@greater" | "@ordered_greater" => Some(Cmp::Gt),
                "@greater_equals" | "@ordered_greater_equals" => Some(Cmp::Ge),
                _ => None,
            };
            if let Some(cmp) = comparison {
                return Some((Node::Compare(cmp, pair(a, b)), Kind::Bool));
            }
            let op = match function {
                "_+_" if number(ka) => Op::Add,
                "_-_" if number(ka) => Op::Sub,
                "_*_" if number(ka) => Op::Mul,
                "_/_" if number(ka) => Op::Div,
                "_%_" if ka == Kind::Int => Op::Rem,
                "_&&_" if ka == Kind::Bool => return Some((Node::And(pair(a, b)), Kind::Bool)),
                "_||_" if ka == Kind::Bool => return Some((Node::Or(pair(a, b)), Kind::Bool)),
                "math.@max" | "math.greatest" if number(ka) => {
                    return Some((Node::Extreme(true, pair(a, b)), ka));
                }
                "math.@min" | "math.least" if number(ka) => {
                    return Some((Node::Extreme(false, pair(a, b)), ka));
                }
                _ => return None,
            };
            Some((Node::Arith(op, pair(a, b)), ka))
        }
        (Some((a, ka)), None, None) if number(ka) => match function {
            "-_" => Some((Node::Negate(Box::new(a)), ka)),
            "double" => Some((Node::ToDouble(Box::new(a)), Kind::Double)),
            _ => None,
        },
        _ => None,
    }
}

fn boolean<'a>(n: &'a Node, row: &Row<'_, 'a>) -> Result<bool, Stop> {
    match eval(n, row)? {
        Scalar::Bool(b) => Ok(b),
        _ => Err(Stop::Defer),
    }
}

fn eval<'a>(n: &'a Node, row: &Row<'_, 'a>) -> Result<Scalar<'a>, Stop> {
    Ok(match n {
        Node::Int(i) => Scalar::Int(*i),
        Node::Double(d) => Scalar::Double(*d),
        Node::Bool(b) => Scalar::Bool(*b),
        Node::Str(s) => Scalar::Str(s),
        Node::Input(i, kind) => {
            let Some(value) = row.values.get(*i).copied().flatten() else {
                if row.first_missing.get().is_none() {
                    row.first_missing.set(Some(*i));
                }
                return Err(Stop::Missing);
            };
            match (value, kind) {
                (Value::Int64(v), Kind::Int) => Scalar::Int(*v),
                (Value::Double(v), Kind::Double) => Scalar::Double(*v),
                (Value::Bool(v), Kind::Bool) => Scalar::Bool(*v),
                (Value::String(v), Kind::Str) => Scalar::Str(v),
                _ => return Err(Stop::Defer),
            }
        }
        Node::Has(i) => Scalar::Bool(row.values.get(*i).copied().flatten().is_some()),
        Node::Cond(nodes) => {
            let [c, a, b] = &**nodes;
            if boolean(c, row)? {
                eval(a, row)?
            } else {
                eval(b, row)?
            }
        }
        // The `cel` crate's `&&` and `||`: the left side first; when it does not decide, the
        // right side, whose error is the result's; a left error is absorbed only by a right
        // side that decides alone.
        Node::And(nodes) => {
            let [a, b] = &**nodes;
            Scalar::Bool(logical(boolean(a, row), || boolean(b, row), false)?)
        }
        Node::Or(nodes) => {
            let [a, b] = &**nodes;
            Scalar::Bool(logical(boolean(a, row), || boolean(b, row), true)?)
        }
        Node::Compare(cmp, nodes) => {
            let [a, b] = &**nodes;
            Scalar::Bool(compare(*cmp, eval(a, row)?, eval(b, row)?)?)
        }
        Node::Arith(op, nodes) => {
            let [a, b] = &**nodes;
            arith(*op, eval(a, row)?, eval(b, row)?)?
        }
        Node::Negate(a) => match eval(a, row)? {
            Scalar::Int(i) => Scalar::Int(i.checked_neg().ok_or(Stop::Defer)?),
            Scalar::Double(d) => Scalar::Double(-d),
            _ => return Err(Stop::Defer),
        },
        Node::ToDouble(a) => match eval(a, row)? {
            Scalar::Int(i) => Scalar::Double(i as f64),
            Scalar::Double(d) => Scalar::Double(d),
            _ => return Err(Stop::Defer),
        },
        Node::Extreme(greatest, nodes) => {
            let [a, b] = &**nodes;
            let (a, b) = (eval(a, row)?, eval(b, row)?);
            let order = match (a, b) {
                (Scalar::Int(x), Scalar::Int(y)) => x.cmp(&y),
                (Scalar::Double(x), Scalar::Double(y)) => x.partial_cmp(&y).ok_or(Stop::Defer)?,
                _ => return Err(Stop::Defer),
            };
            let second_wins = if *greatest {
                order.is_lt()
            } else {
                order.is_gt()
            };
            if second_wins { b } else { a }
        }
    })
}

/// `&&` (`decides` false) or `||` (`decides` true) of `left` and the right side.
fn logical(
    left: Result<bool, Stop>,
    right: impl FnOnce() -> Result<bool, Stop>,
    decides: bool,
) -> Result<bool, Stop> {
    if left == Ok(decides) {
        return Ok(decides);
    }
    let right = right()?;
    match left {
        Ok(_) => Ok(right),
        Err(_) if right == decides => Ok(decides),
        Err(stop) => Err(stop),
    }
}

fn compare(cmp: Cmp, a: Scalar<'_>, b: Scalar<'_>) -> Result<bool, Stop> {
    use std::cmp::Ordering;
    let order: Option<Ordering> = match (a, b) {
        (Scalar::Int(x), Scalar::Int(y)) => Some(x.cmp(&y)),
        (Scalar::Double(x), Scalar::Double(y)) => x.partial_cmp(&y),
        (Scalar::Bool(x), Scalar::Bool(y)) => Some(x.cmp(&y)),
        (Scalar::Str(x), Scalar::Str(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        _ => return Err(Stop::Defer),
    };
    // `None` is a NaN operand: unordered, and unequal to everything.
    Ok(match cmp {
        Cmp::Lt => order.is_some_and(Ordering::is_lt),
        Cmp::Le => order.is_some_and(Ordering::is_le),
        Cmp::Gt => order.is_some_and(Ordering::is_gt),
        Cmp::Ge => order.is_some_and(Ordering::is_ge),
        Cmp::Eq => order == Some(Ordering::Equal),
        Cmp::Ne => order != Some(Ordering::Equal),
    })
}

fn arith<'a>(op: Op, a: Scalar<'a>, b: Scalar<'a>) -> Result<Scalar<'a>, Stop> {
    Ok(match (a, b) {
        (Scalar::Int(x), Scalar::Int(y)) => Scalar::Int(
            match op {
                Op::Add => x.checked_add(y),
                Op::Sub => x.checked_sub(y),
                Op::Mul => x.checked_mul(y),
                // `checked_div` and `checked_rem` are `None` for a zero divisor and for
                // `i64::MIN / -1`: the interpreter reports which.
                Op::Div => x.checked_div(y),
                Op::Rem => x.checked_rem(y),
            }
            .ok_or(Stop::Defer)?,
        ),
        (Scalar::Double(x), Scalar::Double(y)) => Scalar::Double(match op {
            Op::Add => x + y,
            Op::Sub => x - y,
            Op::Mul => x * y,
            Op::Div => x / y,
            Op::Rem => return Err(Stop::Defer),
        }),
        _ => return Err(Stop::Defer),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Catalog, Limits, compile};

    fn catalog() -> Catalog {
        let mut catalog = Catalog::default();
        let t: BTreeMap<String, FeatureType> = [
            ("a", FeatureType::Double),
            ("b", FeatureType::Double),
            ("i", FeatureType::Int64),
            ("j", FeatureType::Int64),
            ("s", FeatureType::String),
            ("u", FeatureType::String),
            ("p", FeatureType::Bool),
            ("q", FeatureType::Bool),
            ("ts", FeatureType::Timestamp),
        ]
        .into_iter()
        .map(|(n, ty)| (n.to_owned(), ty))
        .collect();
        catalog.views.insert("t".into(), t);
        catalog
    }

    /// Expressions a plan evaluates, with their declared types: every operator it has, on
    /// every type it has, and the demo's derived features written over `t`.
    const PLANNED: &[(&str, FeatureType)] = &[
        ("t.a + t.b", FeatureType::Double),
        ("t.a - t.b * t.a", FeatureType::Double),
        ("t.a / t.b", FeatureType::Double),
        ("-t.a", FeatureType::Double),
        ("t.i + t.j", FeatureType::Int64),
        ("t.i - t.j", FeatureType::Int64),
        ("t.i * t.j", FeatureType::Int64),
        ("t.i / t.j", FeatureType::Int64),
        ("t.i % t.j", FeatureType::Int64),
        ("-t.i", FeatureType::Int64),
        ("t.i * 2 - 1", FeatureType::Int64),
        ("double(t.i) / 7.0", FeatureType::Double),
        ("double(t.a)", FeatureType::Double),
        ("t.a < t.b", FeatureType::Bool),
        ("t.a <= t.b", FeatureType::Bool),
        ("t.a > t.b", FeatureType::Bool),
        ("t.a >= t.b", FeatureType::Bool),
        ("t.a == t.b", FeatureType::Bool),
        ("t.a != t.b", FeatureType::Bool),
        ("t.i < t.j || t.i >= 3", FeatureType::Bool),
        ("t.i <= t.j && t.i > -2", FeatureType::Bool),
        ("t.i == t.j", FeatureType::Bool),
        ("t.i != t.j", FeatureType::Bool),
        ("t.s < t.u", FeatureType::Bool),
        ("t.s >= t.u", FeatureType::Bool),
        ("t.s == t.u", FeatureType::Bool),
        ("t.s != 'US'", FeatureType::Bool),
        ("t.p < t.q", FeatureType::Bool),
        ("t.p == t.q", FeatureType::Bool),
        ("t.p && t.q", FeatureType::Bool),
        ("t.p || !t.q", FeatureType::Bool),
        ("!(t.a > 1.0) && has(t.s)", FeatureType::Bool),
        ("has(t.a) && t.a > 0.0 ? t.i : t.j", FeatureType::Int64),
        ("math.greatest(t.a, t.b)", FeatureType::Double),
        ("math.least(t.a, t.b * 10.0)", FeatureType::Double),
        ("math.greatest(t.i, t.j)", FeatureType::Int64),
        ("math.least(t.i, 3)", FeatureType::Int64),
        (
            "t.a < 10.0 ? 'small' : t.a < 100.0 ? t.s : 'large'",
            FeatureType::String,
        ),
        (
            "has(t.b) && t.b > 0.0 ? t.a / t.b : -1.0",
            FeatureType::Double,
        ),
        ("t.s != t.u && t.p", FeatureType::Bool),
        ("t.i < 30", FeatureType::Bool),
        ("t.i < 2 && !t.p", FeatureType::Bool),
        ("t.i / t.j > 1 || t.a / t.b > 1.0", FeatureType::Bool),
    ];

    /// Expressions a plan does not have: the interpreter evaluates every row.
    const NOT_PLANNED: &[(&str, FeatureType)] = &[
        ("t.s + t.u", FeatureType::String),
        ("size(t.s)", FeatureType::Int64),
        ("t.s.startsWith('a')", FeatureType::Bool),
        ("string(t.a)", FeatureType::String),
        ("int(t.a)", FeatureType::Int64),
        ("t.ts.getHours()", FeatureType::Int64),
        ("t.i in [1, 2, 3]", FeatureType::Bool),
        ("math.greatest(t.i, t.a)", FeatureType::Double),
        ("dyn(t.i) == t.j", FeatureType::Bool),
    ];

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    fn value(ty: FeatureType, rng: &mut Rng) -> Value {
        match ty {
            FeatureType::Double => Value::Double(if rng.next().is_multiple_of(2) {
                rng.pick(&[
                    0.0,
                    -0.0,
                    1.0,
                    -1.0,
                    1.5,
                    10.0,
                    99.5,
                    1e308,
                    -1e308,
                    f64::MIN_POSITIVE,
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ])
            } else {
                (rng.next() % 200_000) as f64 / 100.0 - 500.0
            }),
            FeatureType::Int64 => Value::Int64(if rng.next().is_multiple_of(2) {
                rng.pick(&[0, 1, -1, 2, 3, 7, 29, 30, i64::MAX, i64::MIN, i64::MIN + 1])
            } else {
                (rng.next() % 101) as i64 - 50
            }),
            FeatureType::String => Value::String(
                rng.pick(&["", "a", "ab", "b", "US", "GB", "é", "\u{10000}"])
                    .into(),
            ),
            FeatureType::Bool => Value::Bool(rng.next().is_multiple_of(2)),
            FeatureType::Timestamp => Value::Timestamp(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(rng.next() % 4_000_000_000),
            ),
            _ => Value::Null,
        }
    }

    /// Equal as results: doubles bit for bit (NaN included), errors as errors.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Double(x), Value::Double(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    #[test]
    fn a_plan_gives_what_the_interpreter_gives_or_defers_to_it() {
        const ROWS: usize = 20_000;
        let catalog = catalog();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut missing_planned = 0;
        for (source, ty) in PLANNED {
            let expr = compile(source, *ty, &catalog, &Limits::default()).unwrap();
            let plan = expr
                .plan
                .as_ref()
                .unwrap_or_else(|| panic!("{source}: no plan"));
            let (mut planned, mut deferred) = (0, 0);
            for _ in 0..ROWS {
                let row: Vec<Option<Value>> = expr
                    .inputs
                    .iter()
                    .map(|input| {
                        (!rng.next().is_multiple_of(10)).then(|| value(input.ty, &mut rng))
                    })
                    .collect();
                let values: Vec<Option<&Value>> = row.iter().map(Option::as_ref).collect();
                let interpreted = expr.interpret(&values);
                match plan.run(&values, *ty) {
                    Some(result) => {
                        planned += 1;
                        missing_planned += usize::from(result.is_err());
                        let agree = match (&result, &interpreted) {
                            (Ok(a), Ok(b)) => same(a, b),
                            (a, b) => a == b,
                        };
                        assert!(
                            agree,
                            "{source} over {row:?}: the plan gave {result:?}, the interpreter \
                             {interpreted:?}"
                        );
                    }
                    None => deferred += 1,
                }
                // What the gateway serves is the interpreter's result, whichever evaluates.
                match (expr.eval(&values), &interpreted) {
                    (Ok(a), Ok(b)) => assert!(same(&a, b), "{source} over {row:?}"),
                    (a, b) => assert_eq!(&a, b, "{source} over {row:?}"),
                }
            }
            // Most rows are planned, unavailable inputs included: only the failures the
            // interpreter reports (overflow, division by zero, NaN in `math.greatest`) defer.
            assert!(
                planned > ROWS / 2,
                "{source}: {planned} rows planned, {deferred} deferred"
            );
        }
        // Rows that read an unavailable input were decided by the plans too.
        assert!(
            missing_planned > PLANNED.len() * ROWS / 20,
            "{missing_planned} rows planned as missing an input"
        );
    }

    #[test]
    fn expressions_beyond_a_plan_have_none() {
        let catalog = catalog();
        for (source, ty) in NOT_PLANNED {
            let expr = compile(source, *ty, &catalog, &Limits::default())
                .unwrap_or_else(|e| panic!("{source}: {e:?}"));
            assert!(expr.plan.is_none(), "{source}: {:?}", expr.plan);
        }
    }

    #[test]
    fn the_failures_of_a_planned_expression_are_the_interpreters() {
        let catalog = catalog();
        type Case<'a> = (
            &'a str,
            FeatureType,
            &'a [Value],
            Result<Value, crate::EvalError>,
        );
        let cases: &[Case<'_>] = &[
            (
                "t.i / t.j",
                FeatureType::Int64,
                &[Value::Int64(1), Value::Int64(0)],
                Err(crate::EvalError::Failed("division by zero".into())),
            ),
            (
                "t.i + t.j",
                FeatureType::Int64,
                &[Value::Int64(i64::MAX), Value::Int64(1)],
                Err(crate::EvalError::Failed("integer overflow in add".into())),
            ),
            (
                "t.a / t.b",
                FeatureType::Double,
                &[Value::Double(1.0), Value::Double(0.0)],
                Ok(Value::Double(f64::INFINITY)),
            ),
        ];
        for (source, ty, row, expected) in cases {
            let expr = compile(source, *ty, &catalog, &Limits::default()).unwrap();
            assert!(expr.plan.is_some(), "{source}");
            let values: Vec<Option<&Value>> = row.iter().map(Some).collect();
            assert_eq!(&expr.eval(&values), expected, "{source}");
        }
        // An unavailable input read, and the `||` that decides without it.
        let expr = compile(
            "t.a > 1.0 || t.p",
            FeatureType::Bool,
            &catalog,
            &Limits::default(),
        )
        .unwrap();
        let (p, a) = (Value::Bool(true), Value::Double(0.0));
        assert_eq!(expr.eval(&[None, Some(&p)]), Ok(Value::Bool(true)));
        assert_eq!(
            expr.eval(&[Some(&a), None]),
            Err(crate::EvalError::Missing(1))
        );
    }
}
