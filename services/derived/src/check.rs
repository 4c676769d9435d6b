//! The type checker: every node of a parsed expression typed against the declared types of the
//! features it reads, with CEL's standard overloads (no implicit conversion: `int + double` is an
//! error, as in CEL's own checker), and the limits that bound an evaluation's cost.
//!
//! The `cel` crate parses and evaluates but does not type-check, so this module does, for the
//! functions listed in [`crate::FUNCTIONS`]; anything else is refused at load time. Each problem
//! is reported with the position of the node it is about, and all of them at once.

use std::collections::{BTreeMap, HashMap};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use fetcher_api::FeatureType;

use crate::{
    Catalog, InputRef, Limits, parity,
    types::{Ty, cel_name},
};

/// A parameter or result pattern of an overload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum P {
    Int,
    Uint,
    Double,
    String,
    Bool,
    Bytes,
    Timestamp,
    Duration,
    Dyn,
    /// A type parameter.
    A,
    /// `list(A)`.
    ListA,
    /// `map(K, V)`.
    MapKv,
    K,
    V,
    Type,
}

/// One overload: its parameters (a member function's target first) and its result.
type Sig = (&'static [P], P);

const NUMBERS: [P; 3] = [P::Int, P::Uint, P::Double];

fn sig(params: &'static [P], ret: P) -> Sig {
    (params, ret)
}

/// The overloads of a function called globally (`member` false) or on a target.
fn overloads(name: &str, member: bool) -> Option<Vec<Sig>> {
    use P::*;
    let same = |types: &[P], ret: Option<P>| -> Vec<Sig> {
        types
            .iter()
            .map(|t| {
                let params: &'static [P] = match t {
                    Int => &[Int, Int],
                    Uint => &[Uint, Uint],
                    Double => &[Double, Double],
                    String => &[String, String],
                    Bytes => &[Bytes, Bytes],
                    Bool => &[Bool, Bool],
                    Timestamp => &[Timestamp, Timestamp],
                    Duration => &[Duration, Duration],
                    _ => unreachable!("no same-type pair for {t:?}"),
                };
                (params, ret.unwrap_or(*t))
            })
            .collect()
    };
    let one = |pairs: &[(P, P)]| -> Vec<Sig> {
        pairs
            .iter()
            .map(|&(p, r)| {
                let params: &'static [P] = match p {
                    Int => &[Int],
                    Uint => &[Uint],
                    Double => &[Double],
                    String => &[String],
                    Bool => &[Bool],
                    Bytes => &[Bytes],
                    Timestamp => &[Timestamp],
                    Duration => &[Duration],
                    Dyn => &[Dyn],
                    ListA => &[ListA],
                    MapKv => &[MapKv],
                    _ => unreachable!("no single parameter {p:?}"),
                };
                (params, r)
            })
            .collect()
    };
    let sigs = match (name, member) {
        ("_+_", false) => {
            let mut s = same(&[Int, Uint, Double, String, Bytes, Duration], None);
            s.push(sig(&[ListA, ListA], ListA));
            s.push(sig(&[Timestamp, Duration], Timestamp));
            s.push(sig(&[Duration, Timestamp], Timestamp));
            s
        }
        ("_-_", false) => {
            let mut s = same(&[Int, Uint, Double, Duration], None);
            s.push(sig(&[Timestamp, Timestamp], Duration));
            s.push(sig(&[Timestamp, Duration], Timestamp));
            s
        }
        ("_*_" | "_/_", false) => same(&NUMBERS, None),
        ("_%_", false) => same(&[Int, Uint], None),
        ("-_", false) => one(&[(Int, Int), (Double, Double)]),
        ("!_" | "@not_strictly_false", false) => one(&[(Bool, Bool)]),
        ("_&&_" | "_||_", false) => same(&[Bool], None),
        ("_?_:_", false) => vec![sig(&[Bool, A, A], A)],
        ("_==_" | "_!=_", false) => vec![sig(&[A, A], Bool)],
        ("_<_" | "_<=_" | "_>_" | "_>=_", false) => {
            let mut s = same(
                &[Int, Uint, Double, String, Bytes, Bool, Timestamp, Duration],
                Some(Bool),
            );
            s.extend([
                sig(&[Int, Double], Bool),
                sig(&[Double, Int], Bool),
                sig(&[Int, Uint], Bool),
                sig(&[Uint, Int], Bool),
                sig(&[Uint, Double], Bool),
                sig(&[Double, Uint], Bool),
            ]);
            s
        }
        ("_[_]", false) => vec![sig(&[ListA, Int], A), sig(&[MapKv, K], V)],
        ("@in", false) => vec![sig(&[A, ListA], Bool), sig(&[K, MapKv], Bool)],
        ("size", _) => one(&[(String, Int), (Bytes, Int), (ListA, Int), (MapKv, Int)]),
        ("int", false) => one(&[
            (Int, Int),
            (Uint, Int),
            (Double, Int),
            (String, Int),
            (Timestamp, Int),
        ]),
        ("uint", false) => one(&[(Int, Uint), (Uint, Uint), (Double, Uint), (String, Uint)]),
        ("double", false) => one(&[
            (Int, Double),
            (Uint, Double),
            (Double, Double),
            (String, Double),
        ]),
        ("string", false) => one(&[
            (Int, String),
            (Uint, String),
            (Double, String),
            (Bool, String),
            (Bytes, String),
            (String, String),
            (Timestamp, String),
            (Duration, String),
        ]),
        ("bool", false) => one(&[(Bool, Bool), (String, Bool)]),
        ("bytes", false) => one(&[(Bytes, Bytes), (String, Bytes)]),
        ("timestamp", false) => one(&[
            (Timestamp, Timestamp),
            (String, Timestamp),
            (Int, Timestamp),
        ]),
        ("duration", false) => one(&[(Duration, Duration), (String, Duration)]),
        ("dyn", false) => one(&[(Dyn, Dyn)]),
        ("type", false) => vec![sig(&[A], Type)],
        ("contains" | "startsWith" | "endsWith", true) => same(&[String], Some(Bool)),
        ("matches", _) => same(&[String], Some(Bool)),
        ("lowerAscii" | "upperAscii" | "trim", true) => one(&[(String, String)]),
        ("substring", true) => vec![
            sig(&[String, Int], String),
            sig(&[String, Int, Int], String),
        ],
        ("indexOf" | "lastIndexOf", true) => {
            vec![
                sig(&[String, String], Int),
                sig(&[String, String, Int], Int),
            ]
        }
        ("charAt", true) => vec![sig(&[String, Int], String)],
        (
            "getFullYear" | "getMonth" | "getDayOfMonth" | "getDate" | "getDayOfWeek"
            | "getDayOfYear",
            true,
        ) => vec![sig(&[Timestamp], Int), sig(&[Timestamp, String], Int)],
        ("getHours" | "getMinutes" | "getSeconds" | "getMilliseconds", true) => vec![
            sig(&[Timestamp], Int),
            sig(&[Timestamp, String], Int),
            sig(&[Duration], Int),
        ],
        ("math.ceil" | "math.floor" | "math.round" | "math.trunc", false) => {
            one(&[(Double, Double)])
        }
        ("math.abs" | "math.sign", false) => one(&[(Int, Int), (Uint, Uint), (Double, Double)]),
        ("math.isNaN" | "math.isInf" | "math.isFinite", false) => one(&[(Double, Bool)]),
        ("math.sqrt", false) => one(&[(Int, Double), (Uint, Double), (Double, Double)]),
        _ => return None,
    };
    Some(sigs)
}

/// The name an operator is written as, for messages.
fn display_name(function: &str) -> &str {
    match function {
        "_+_" => "+",
        "_-_" => "-",
        "_*_" => "*",
        "_/_" => "/",
        "_%_" => "%",
        "-_" => "unary -",
        "!_" => "!",
        "_&&_" => "&&",
        "_||_" => "||",
        "_?_:_" => "? :",
        "_==_" => "==",
        "_!=_" => "!=",
        "_<_" => "<",
        "_<=_" => "<=",
        "_>_" => ">",
        "_>=_" => ">=",
        "_[_]" => "[]",
        "@in" => "in",
        "math.@max" => "math.greatest",
        "math.@min" => "math.least",
        other => other,
    }
}

#[derive(Default)]
struct Bindings {
    a: Option<Ty>,
    k: Option<Ty>,
    v: Option<Ty>,
}

fn bind(slot: &mut Option<Ty>, ty: &Ty) -> bool {
    match slot {
        None => {
            *slot = Some(ty.clone());
            true
        }
        Some(bound) if bound.fits(ty) => {
            *slot = Some(bound.meet(ty));
            true
        }
        Some(_) => false,
    }
}

fn matches(p: P, ty: &Ty, b: &mut Bindings) -> bool {
    let concrete = |want: Ty| *ty == want || *ty == Ty::Dyn;
    match p {
        P::Int => concrete(Ty::Int),
        P::Uint => concrete(Ty::Uint),
        P::Double => concrete(Ty::Double),
        P::String => concrete(Ty::String),
        P::Bool => concrete(Ty::Bool),
        P::Bytes => concrete(Ty::Bytes),
        P::Timestamp => concrete(Ty::Timestamp),
        P::Duration => concrete(Ty::Duration),
        P::Type => concrete(Ty::Type),
        P::Dyn => !matches!(ty, Ty::View(_)),
        P::A => !matches!(ty, Ty::View(_)) && bind(&mut b.a, ty),
        P::K => bind(&mut b.k, ty),
        P::V => bind(&mut b.v, ty),
        P::ListA => match ty {
            Ty::List(e) => bind(&mut b.a, e),
            Ty::Dyn => bind(&mut b.a, &Ty::Dyn),
            _ => false,
        },
        P::MapKv => match ty {
            Ty::Map(k, v) => bind(&mut b.k, k) && bind(&mut b.v, v),
            Ty::Dyn => bind(&mut b.k, &Ty::Dyn) && bind(&mut b.v, &Ty::Dyn),
            _ => false,
        },
    }
}

fn result(p: P, b: &Bindings) -> Ty {
    let or_dyn = |t: &Option<Ty>| t.clone().unwrap_or(Ty::Dyn);
    match p {
        P::Int => Ty::Int,
        P::Uint => Ty::Uint,
        P::Double => Ty::Double,
        P::String => Ty::String,
        P::Bool => Ty::Bool,
        P::Bytes => Ty::Bytes,
        P::Timestamp => Ty::Timestamp,
        P::Duration => Ty::Duration,
        P::Type => Ty::Type,
        P::Dyn => Ty::Dyn,
        P::A => or_dyn(&b.a),
        P::K => or_dyn(&b.k),
        P::V => or_dyn(&b.v),
        P::ListA => Ty::List(Box::new(or_dyn(&b.a))),
        P::MapKv => Ty::Map(Box::new(or_dyn(&b.k)), Box::new(or_dyn(&b.v))),
    }
}

/// What checking an expression found.
pub(crate) struct Checked {
    pub ty: Ty,
    pub inputs: Vec<InputRef>,
    pub errors: Vec<(u64, String)>,
    pub has_comprehension: bool,
    /// Calls the gateway evaluates with its own function (module `parity`): node id → name.
    pub replaced: HashMap<u64, &'static str>,
    /// The nodes that read an input (`view.feature`, or `has(view.feature)` when the flag is
    /// set): node id → (view, feature, presence test).
    pub refs: HashMap<u64, (String, String, bool)>,
    /// Calls of a `math.` function, written as a call on the identifier `math`: their ids.
    pub namespaced: Vec<u64>,
    /// `!x` where `x` is a bool: their ids.
    pub negations: Vec<u64>,
}

/// Type-checks `expr`; `ids` of the errors locate them through the program's source info.
pub(crate) fn check(expr: &IdedExpr, catalog: &Catalog, limits: &Limits) -> Checked {
    let mut c = Checker {
        catalog,
        limits,
        locals: Vec::new(),
        inputs: BTreeMap::new(),
        errors: Vec::new(),
        replaced: HashMap::new(),
        refs: HashMap::new(),
        namespaced: Vec::new(),
        negations: Vec::new(),
        nodes: 0,
        comprehension: None,
        has_comprehension: false,
        too_deep: false,
        loop_cost: 0,
    };
    let ty = c.check(expr, 1);
    if c.nodes > limits.max_nodes {
        c.error(
            expr.id,
            format!(
                "the expression has {} nodes; at most {} are allowed",
                c.nodes, limits.max_nodes
            ),
        );
    }
    let cost = c.nodes.saturating_add(c.loop_cost);
    if cost > limits.max_cost {
        c.error(
            expr.id,
            format!(
                "the expression may evaluate up to {cost} nodes (a macro's body runs once per \
                 element, up to {} elements for an input list); at most {} are allowed",
                limits.max_list_len, limits.max_cost
            ),
        );
    }
    let mut inputs: Vec<InputRef> = c.inputs.into_values().collect();
    inputs.sort_by(|a, b| (&a.view, &a.feature).cmp(&(&b.view, &b.feature)));
    Checked {
        ty,
        inputs,
        errors: c.errors,
        has_comprehension: c.has_comprehension,
        replaced: c.replaced,
        refs: c.refs,
        namespaced: c.namespaced,
        negations: c.negations,
    }
}

/// Where a comprehension's body is being checked: its accumulator's name.
struct InLoop {
    accumulator: String,
}

struct Checker<'a> {
    catalog: &'a Catalog,
    limits: &'a Limits,
    /// Comprehension variables in scope, innermost last.
    locals: Vec<(String, Ty)>,
    inputs: BTreeMap<(String, String), InputRef>,
    errors: Vec<(u64, String)>,
    replaced: HashMap<u64, &'static str>,
    refs: HashMap<u64, (String, String, bool)>,
    namespaced: Vec<u64>,
    negations: Vec<u64>,
    nodes: usize,
    comprehension: Option<InLoop>,
    has_comprehension: bool,
    /// Whether the depth limit was reported (once is enough).
    too_deep: bool,
    /// Node evaluations the macros may cost: each body's nodes times its range's longest length.
    loop_cost: usize,
}

impl Checker<'_> {
    fn error(&mut self, id: u64, message: String) {
        self.errors.push((id, message));
    }

    fn local(&self, name: &str) -> Option<&Ty> {
        self.locals
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
    }

    fn check(&mut self, e: &IdedExpr, depth: usize) -> Ty {
        self.nodes += 1;
        if depth > self.limits.max_depth {
            if self.too_deep {
                return Ty::Dyn;
            }
            self.too_deep = true;
            self.error(
                e.id,
                format!(
                    "the expression nests deeper than {} levels",
                    self.limits.max_depth
                ),
            );
            return Ty::Dyn;
        }
        let d = depth + 1;
        match &e.expr {
            Expr::Unspecified => Ty::Dyn,
            Expr::Literal(l) => match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::UInt(_) => Ty::Uint,
            },
            Expr::Ident(name) => {
                if let Some(t) = self.local(name) {
                    return t.clone();
                }
                if self.catalog.views.contains_key(name) {
                    return Ty::View(name.clone());
                }
                match name.as_str() {
                    "int" | "uint" | "double" | "string" | "bool" | "bytes" | "list" | "map"
                    | "null_type" | "type" => Ty::Type,
                    _ => {
                        self.error(
                            e.id,
                            format!("unknown reference `{name}`: not a view, nor a variable"),
                        );
                        Ty::Dyn
                    }
                }
            }
            Expr::Select(s) => {
                if let Expr::Ident(view) = &s.operand.expr
                    && self.local(view).is_none()
                    && let Some(features) = self.catalog.views.get(view)
                {
                    self.nodes += 1;
                    let Some(&ty) = features.get(&s.field) else {
                        self.error(e.id, format!("view `{view}` has no feature `{}`", s.field));
                        return Ty::Dyn;
                    };
                    self.refs
                        .insert(e.id, (view.clone(), s.field.clone(), s.test));
                    self.inputs
                        .entry((view.clone(), s.field.clone()))
                        .or_insert_with(|| InputRef {
                            view: view.clone(),
                            feature: s.field.clone(),
                            ty,
                        });
                    return if s.test { Ty::Bool } else { Ty::of(ty) };
                }
                let operand = self.check(&s.operand, d);
                match operand {
                    Ty::Map(k, v) if matches!(*k, Ty::String | Ty::Dyn) => {
                        if s.test {
                            Ty::Bool
                        } else {
                            *v
                        }
                    }
                    Ty::Dyn => Ty::Dyn,
                    other => {
                        self.error(
                            e.id,
                            format!("`.{}` selects a field, and {other} has none", s.field),
                        );
                        Ty::Dyn
                    }
                }
            }
            Expr::Call(call) => self.call(e.id, call, d),
            Expr::List(list) => {
                if !list.optional_indices.is_empty() {
                    self.error(e.id, "optional list elements are not supported".into());
                }
                let mut elem: Option<Ty> = None;
                for x in &list.elements {
                    let t = self.check(x, d);
                    elem = Some(match elem {
                        None => t,
                        Some(prev) => prev.join(&t),
                    });
                }
                Ty::List(Box::new(elem.unwrap_or(Ty::Dyn)))
            }
            Expr::Map(map) => {
                let (mut key, mut value): (Option<Ty>, Option<Ty>) = (None, None);
                for entry in &map.entries {
                    let EntryExpr::MapEntry(entry) = &entry.expr else {
                        continue;
                    };
                    if entry.optional {
                        self.error(
                            entry.key.id,
                            "optional map entries are not supported".into(),
                        );
                    }
                    let k = self.check(&entry.key, d);
                    if !matches!(k, Ty::Int | Ty::Uint | Ty::Bool | Ty::String | Ty::Dyn) {
                        self.error(
                            entry.key.id,
                            format!("a map key is an int, uint, bool or string, not {k}"),
                        );
                    }
                    let v = self.check(&entry.value, d);
                    key = Some(key.map_or(k.clone(), |p| p.join(&k)));
                    value = Some(value.map_or(v.clone(), |p| p.join(&v)));
                }
                Ty::Map(
                    Box::new(key.unwrap_or(Ty::Dyn)),
                    Box::new(value.unwrap_or(Ty::Dyn)),
                )
            }
            Expr::Struct(s) => {
                self.error(
                    e.id,
                    format!(
                        "message construction (`{}{{...}}`) is not supported",
                        s.type_name
                    ),
                );
                Ty::Dyn
            }
            Expr::Comprehension(c) => {
                self.has_comprehension = true;
                if self.comprehension.is_some() {
                    self.error(
                        e.id,
                        "a macro (all, exists, exists_one, map, filter) inside another one's \
                         body is not allowed: its cost would grow with the product of two \
                         list sizes"
                            .into(),
                    );
                }
                let range = self.check(&c.iter_range, d);
                let (first, second) = match &range {
                    Ty::List(elem) => (
                        if c.iter_var2.is_some() {
                            Ty::Int
                        } else {
                            (**elem).clone()
                        },
                        (**elem).clone(),
                    ),
                    Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    other => {
                        self.error(
                            c.iter_range.id,
                            format!("a macro ranges over a list or a map, not {other}"),
                        );
                        (Ty::Dyn, Ty::Dyn)
                    }
                };
                let mut accu = self.check(&c.accu_init, d);
                let outer = self.comprehension.replace(InLoop {
                    accumulator: c.accu_var.clone(),
                });
                let scope = self.locals.len();
                self.locals.push((c.iter_var.clone(), first));
                if let Some(v2) = &c.iter_var2 {
                    self.locals.push((v2.clone(), second));
                }
                self.locals.push((c.accu_var.clone(), accu.clone()));
                let body_start = self.nodes;
                let cond = self.check(&c.loop_cond, d);
                if !cond.fits(&Ty::Bool) {
                    self.error(c.loop_cond.id, format!("a condition is a bool, not {cond}"));
                }
                let step = self.check(&c.loop_step, d);
                let body = self.nodes - body_start;
                let longest = match &c.iter_range.expr {
                    Expr::List(list) => list.elements.len(),
                    Expr::Map(map) => map.entries.len(),
                    _ => self.limits.max_list_len,
                };
                self.loop_cost = self.loop_cost.saturating_add(longest.saturating_mul(body));
                if step.fits(&accu) {
                    accu = accu.meet(&step);
                } else {
                    self.error(
                        c.loop_step.id,
                        format!("the macro's step gives {step}, its accumulator is {accu}"),
                    );
                }
                self.comprehension = outer;
                self.locals.truncate(scope);
                self.locals.push((c.accu_var.clone(), accu));
                let result = self.check(&c.result, d);
                self.locals.truncate(scope);
                result
            }
        }
    }

    fn call(&mut self, id: u64, call: &cel::common::ast::CallExpr, d: usize) -> Ty {
        // `math.sqrt(x)` is a call of `sqrt` on the identifier `math`, unless a variable has
        // that name.
        let (name, target) = match call.target.as_deref() {
            Some(IdedExpr {
                expr: Expr::Ident(ns),
                ..
            }) if ns == "math"
                && self.local(ns).is_none()
                && !self.catalog.views.contains_key(ns) =>
            {
                self.namespaced.push(id);
                (format!("math.{}", call.func_name), None)
            }
            t => (call.func_name.clone(), t),
        };
        if name == "matches" {
            self.check_pattern(call, target.is_some());
        }
        let mut args = Vec::with_capacity(call.args.len() + 1);
        if let Some(t) = target {
            args.push(self.check(t, d));
        }
        for a in &call.args {
            args.push(self.check(a, d));
        }
        if let Some(bad) = args.iter().find(|t| matches!(t, Ty::View(_))) {
            self.error(
                id,
                format!("{bad} is not a value: read one of its features, e.g. `view.feature`"),
            );
            return Ty::Dyn;
        }
        if name == "math.@max" || name == "math.@min" {
            return self.extreme(id, &name, &args);
        }
        if name == "_+_"
            && let Some(inner) = &self.comprehension
            && !matches!(
                args.first(),
                Some(Ty::Int | Ty::Uint | Ty::Double | Ty::Duration)
            )
            && !matches!(call.args.first().map(|a| &a.expr), Some(Expr::Ident(n)) if *n == inner.accumulator)
        {
            self.error(
                id,
                "joining strings, bytes or lists inside a macro's body is not allowed: the \
                 result could grow with the square of the list's size"
                    .into(),
            );
        }
        let member = target.is_some();
        let Some(sigs) = overloads(&name, member) else {
            let shown = display_name(&name);
            let message = if overloads(&name, !member).is_some() {
                if member {
                    format!("`{shown}` is called as `{shown}(x)`, not `x.{shown}()`")
                } else {
                    format!("`{shown}` is called as `x.{shown}()`, not `{shown}(x)`")
                }
            } else {
                format!("unknown function `{shown}` (see the derived features' function list)")
            };
            self.error(id, message);
            return Ty::Dyn;
        };
        for (params, ret) in &sigs {
            if params.len() != args.len() {
                continue;
            }
            let mut b = Bindings::default();
            if params
                .iter()
                .zip(&args)
                .all(|(p, t)| matches(*p, t, &mut b))
            {
                if let Some(function) = parity::replacement(&name, &args) {
                    self.replaced.insert(id, function);
                }
                if name == "!_" && args == [Ty::Bool] {
                    self.negations.push(id);
                }
                return result(*ret, &b);
            }
        }
        let shown: Vec<String> = args.iter().map(ToString::to_string).collect();
        self.error(
            id,
            format!(
                "no overload of `{}` takes ({})",
                display_name(&name),
                shown.join(", ")
            ),
        );
        Ty::Dyn
    }

    /// `math.greatest` / `math.least`: numbers, or one list of numbers.
    fn extreme(&mut self, id: u64, name: &str, args: &[Ty]) -> Ty {
        let numeric = |t: &Ty| matches!(t, Ty::Int | Ty::Uint | Ty::Double | Ty::Dyn);
        let candidates: Vec<Ty> = match args {
            [Ty::List(e)] => vec![(**e).clone()],
            _ => args.to_vec(),
        };
        if candidates.is_empty() || !candidates.iter().all(numeric) {
            let shown: Vec<String> = args.iter().map(ToString::to_string).collect();
            self.error(
                id,
                format!(
                    "`{}` takes numbers or a list of numbers, not ({})",
                    display_name(name),
                    shown.join(", ")
                ),
            );
            return Ty::Dyn;
        }
        let first = candidates[0].clone();
        if candidates.iter().all(|t| *t == first) {
            first
        } else {
            Ty::Dyn
        }
    }

    /// `matches` takes a string literal as its pattern, valid for Rust's `regex` (linear-time
    /// matching, no backreferences) and within the compiled-size limit.
    fn check_pattern(&mut self, call: &cel::common::ast::CallExpr, member: bool) {
        let pattern = if member {
            call.args.first()
        } else {
            call.args.get(1)
        };
        let Some(pattern) = pattern else { return };
        match &pattern.expr {
            Expr::Literal(LiteralValue::String(s)) => {
                let text: &str = s.inner();
                if let Some(message) = parity::pattern_difference(text) {
                    self.error(pattern.id, message);
                } else if let Err(e) = regex::RegexBuilder::new(text)
                    .size_limit(self.limits.max_regex_bytes)
                    .build()
                {
                    let first = e.to_string();
                    let first = first.lines().last().unwrap_or_default().trim().to_owned();
                    self.error(
                        pattern.id,
                        format!("invalid pattern for `matches`: {first}"),
                    );
                }
            }
            _ => self.error(
                pattern.id,
                "the pattern of `matches` must be a string literal, checked when the \
                 configuration loads"
                    .into(),
            ),
        }
    }
}

/// Checks the expression's result type against the declared one.
pub(crate) fn result_fits(found: &Ty, declared: FeatureType) -> Result<(), String> {
    let want = Ty::of(declared);
    if found.fits(&want) {
        return Ok(());
    }
    let hint = match (found, declared) {
        (Ty::Int, FeatureType::Double) => "; convert with double(...)",
        (Ty::Double, FeatureType::Int64) => "; convert with int(...)",
        (Ty::Uint, FeatureType::Int64) => "; convert with int(...)",
        (Ty::Duration, _) => "; a duration is not a feature type: e.g. `d.getSeconds()`",
        _ => "",
    };
    Err(format!(
        "the expression gives {found}, the feature is declared {} ({}){hint}",
        declared.name(),
        cel_name(declared)
    ))
}
