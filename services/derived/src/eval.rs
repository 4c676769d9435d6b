//! Evaluation: the inputs of one row bound to the expression's references, the result turned
//! back into a feature value of the declared type.
//!
//! What is bound costs no allocation for a scalar, string or bytes input: each input the
//! expression reads is converted once per evaluation into the `cel` crate's value type (a
//! string or bytes borrowed, not copied), and every reference to it reads that value by
//! reference. References were resolved to input indexes when the expression was compiled
//! ([`lower`]): the evaluator looks up `#3` (input 3) or `?3` (whether input 3 is available),
//! never a `view.feature` name, and no view is ever built into a map.

use std::{
    collections::HashMap,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cel::{
    Context, ExecutionError,
    common::{
        ast::{EntryExpr, Expr, IdedExpr, LiteralValue},
        types::{CelBool, CelBytes, CelDouble, CelInt, CelList, CelNull, CelString, CelTimestamp},
        value::{CowVal, Val},
    },
    context::VariableResolver,
};
use fetcher_api::{FeatureType, Value};

use crate::{EvalError, Expression};

/// No missing input was read.
const NONE: usize = usize::MAX;

/// The identifier input `i`'s value is read by in the expression the evaluator runs.
fn value_name(i: usize) -> String {
    format!("#{i}")
}

/// The identifier that is true when input `i` is available (`has(view.feature)`).
fn presence_name(i: usize) -> String {
    format!("?{i}")
}

/// How the checker's findings change the parsed expression into the one the evaluator runs.
pub(crate) struct Lowering<'a> {
    /// Calls evaluated by module `parity`: node id → its function.
    pub calls: &'a HashMap<u64, &'static str>,
    /// Input references: node id → (input index, presence test).
    pub refs: &'a HashMap<u64, (usize, bool)>,
    /// Calls of a `math.` function on the identifier `math`: their ids.
    pub namespaced: &'a [u64],
    /// `!x` of a bool `x`: their ids.
    pub negations: &'a [u64],
}

/// Rewrites `expr` for evaluation: each input reference (`view.feature`) becomes the identifier
/// of its index, and each presence test of one (`has(view.feature)`) the identifier of its
/// availability, so that a reference costs one lookup of a short name instead of the qualified
/// name's resolution (a `Vec` of its segments, their join into a `String`, a map of the view's
/// features for a presence test); the calls module `parity` evaluates are renamed to its
/// functions; and `math.f(x)` (a call of `f` on the identifier `math`) becomes a call of the
/// function `math.f`, which the `cel` crate would otherwise look up by a name it formats on
/// every evaluation; and `!x` of a bool becomes `x ? false : true`, the same value and the same
/// error, without the error the crate's `!` builds before it looks at `x`. The names given
/// cannot be spelled in an expression, so none collides with a macro's variable.
pub(crate) fn lower(expr: &mut IdedExpr, how: &Lowering<'_>) {
    if let Some(&(input, test)) = how.refs.get(&expr.id) {
        expr.expr = Expr::Ident(if test {
            presence_name(input)
        } else {
            value_name(input)
        });
        return;
    }
    match &mut expr.expr {
        Expr::Call(call) => {
            if let Some(function) = how.calls.get(&expr.id) {
                call.func_name = (*function).to_owned();
            }
            if how.namespaced.contains(&expr.id) {
                call.target = None;
                call.func_name = format!("math.{}", call.func_name);
            }
            if how.negations.contains(&expr.id) {
                let literal = |b: bool| IdedExpr {
                    id: expr.id,
                    expr: Expr::Literal(LiteralValue::Boolean(b.into())),
                };
                call.func_name = "_?_:_".to_owned();
                call.args.extend([literal(false), literal(true)]);
            }
            if let Some(target) = &mut call.target {
                lower(target, how);
            }
            for arg in &mut call.args {
                lower(arg, how);
            }
        }
        Expr::Comprehension(c) => {
            for e in [
                &mut c.iter_range,
                &mut c.accu_init,
                &mut c.loop_cond,
                &mut c.loop_step,
                &mut c.result,
            ] {
                lower(e, how);
            }
        }
        Expr::List(list) => {
            for e in &mut list.elements {
                lower(e, how);
            }
        }
        Expr::Map(map) => {
            for entry in &mut map.entries {
                if let EntryExpr::MapEntry(entry) = &mut entry.expr {
                    lower(&mut entry.key, how);
                    lower(&mut entry.value, how);
                }
            }
        }
        Expr::Select(select) => lower(&mut select.operand, how),
        Expr::Struct(_) | Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

thread_local! {
    /// The root context of this thread's evaluations: the environment, no variables.
    static ROOT: Context<'static, 'static> = Context::with_env(crate::env());
}

static TRUE: CelBool = CelBool::TRUE;
static FALSE: CelBool = CelBool::FALSE;

/// One input as the evaluator reads it, converted once per evaluation. Scalars are copied,
/// strings and bytes borrowed; a list is converted when first read (an expression may not read
/// it at all, e.g. on the side of `&&` that does not decide).
enum Bound<'a> {
    /// Not available.
    Missing,
    Int(CelInt),
    Double(CelDouble),
    Bool(CelBool),
    String(CelString<'a>),
    Bytes(CelBytes<'a>),
    Timestamp(CelTimestamp),
    Null(CelNull),
    List(&'a Value, OnceLock<Box<dyn Val + 'a>>),
}

impl<'a> Bound<'a> {
    fn new(value: Option<&'a Value>) -> Bound<'a> {
        let Some(value) = value else {
            return Bound::Missing;
        };
        match value {
            Value::Null => Bound::Null(CelNull),
            Value::Int64(i) => Bound::Int(CelInt::from(*i)),
            Value::Double(d) => Bound::Double(CelDouble::from(*d)),
            Value::String(s) => Bound::String(CelString::from(s.as_str())),
            Value::Bool(b) => Bound::Bool(CelBool::from(*b)),
            Value::Bytes(b) => Bound::Bytes(CelBytes::from(b.as_slice())),
            Value::Timestamp(t) => Bound::Timestamp(CelTimestamp::from(to_chrono(*t))),
            Value::Int64List(_) | Value::DoubleList(_) | Value::StringList(_) => {
                Bound::List(value, OnceLock::new())
            }
        }
    }

    /// The value, `None` when missing.
    fn get(&self) -> Option<&(dyn Val + 'a)> {
        Some(match self {
            Bound::Missing => return None,
            Bound::Int(v) => v,
            Bound::Double(v) => v,
            Bound::Bool(v) => v,
            Bound::String(v) => v,
            Bound::Bytes(v) => v,
            Bound::Timestamp(v) => v,
            Bound::Null(v) => v,
            Bound::List(value, list) => list.get_or_init(|| to_list(value)).as_ref(),
        })
    }
}

/// A list input as a CEL list; its strings borrowed.
fn to_list(value: &Value) -> Box<dyn Val + '_> {
    let items: Vec<Box<dyn Val + '_>> = match value {
        Value::Int64List(l) => l
            .iter()
            .map(|i| Box::new(CelInt::from(*i)) as Box<dyn Val>)
            .collect(),
        Value::DoubleList(l) => l
            .iter()
            .map(|d| Box::new(CelDouble::from(*d)) as Box<dyn Val>)
            .collect(),
        Value::StringList(l) => l
            .iter()
            .map(|s| Box::new(CelString::from(s.as_str())) as Box<dyn Val + '_>)
            .collect(),
        _ => Vec::new(),
    };
    Box::new(CelList::from(items))
}

/// Resolves the names [`lower`] gave to one row's inputs, noting the first missing input an
/// evaluation asked for.
struct Row<'r, 'a> {
    bound: &'r [Bound<'a>],
    first_missing: FirstMissing,
}

/// The first missing input read. A `Cell` would do (an evaluation runs on one thread), but the
/// resolver must be `Sync`.
struct FirstMissing(std::sync::atomic::AtomicUsize);

impl FirstMissing {
    fn note(&self, i: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.0.compare_exchange(NONE, i, Relaxed, Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl VariableResolver for Row<'_, '_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let (kind, index) = name.split_at_checked(1)?;
        let i: usize = index.parse().ok()?;
        let bound = self.bound.get(i)?;
        match kind {
            "#" => match bound.get() {
                Some(value) => Some(CowVal::Borrowed(value)),
                None => {
                    self.first_missing.note(i);
                    None
                }
            },
            "?" => Some(CowVal::Borrowed(if !matches!(bound, Bound::Missing) {
                &TRUE
            } else {
                &FALSE
            })),
            _ => None,
        }
    }
}

fn to_chrono(t: SystemTime) -> chrono::DateTime<chrono::FixedOffset> {
    let utc = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (secs, nanos) = if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            };
            chrono::DateTime::from_timestamp(secs, nanos)
        }
    };
    utc.unwrap_or_default().fixed_offset()
}

fn from_chrono(t: &chrono::DateTime<chrono::FixedOffset>) -> SystemTime {
    let secs = t.timestamp();
    let nanos = t.timestamp_subsec_nanos();
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    }
}

/// The CEL type name of a value, for messages.
fn type_name(value: &cel::Value) -> &'static str {
    match value {
        cel::Value::List(_) => "list",
        cel::Value::Map(_) => "map",
        cel::Value::Function(..) => "function",
        cel::Value::Int(_) => "int",
        cel::Value::UInt(_) => "uint",
        cel::Value::Float(_) => "double",
        cel::Value::String(_) => "string",
        cel::Value::Bytes(_) => "bytes",
        cel::Value::Bool(_) => "bool",
        cel::Value::Duration(_) => "duration",
        cel::Value::Timestamp(_) => "timestamp",
        cel::Value::Opaque(_) => "opaque",
        cel::Value::Struct(_) => "message",
        cel::Value::Null => "null",
    }
}

/// A CEL result as a value of the declared type; `int` results are widened where a double is
/// declared, as for every other source.
pub(crate) fn from_value(value: cel::Value, ty: FeatureType) -> Result<Value, String> {
    let wrong = |v: &cel::Value| {
        format!(
            "the expression gave {}, the feature is declared {}",
            type_name(v),
            ty.name()
        )
    };
    let list = |items: &[cel::Value], each: fn(&cel::Value) -> Option<Value>| {
        items.iter().map(each).collect::<Option<Vec<Value>>>()
    };
    let converted = match (ty, &value) {
        (_, cel::Value::Null) => Some(Value::Null),
        (FeatureType::Int64, cel::Value::Int(i)) => Some(Value::Int64(*i)),
        (FeatureType::Double, cel::Value::Float(d)) => Some(Value::Double(*d)),
        (FeatureType::Double, cel::Value::Int(i)) => Some(Value::Double(*i as f64)),
        (FeatureType::String, cel::Value::String(s)) => Some(Value::String(s.to_string())),
        (FeatureType::Bool, cel::Value::Bool(b)) => Some(Value::Bool(*b)),
        (FeatureType::Bytes, cel::Value::Bytes(b)) => Some(Value::Bytes(b.to_vec())),
        (FeatureType::Timestamp, cel::Value::Timestamp(t)) => {
            Some(Value::Timestamp(from_chrono(t)))
        }
        (FeatureType::Int64List, cel::Value::List(items)) => list(items, |v| match v {
            cel::Value::Int(i) => Some(Value::Int64(*i)),
            _ => None,
        })
        .map(|l| {
            Value::Int64List(
                l.into_iter()
                    .filter_map(|v| match v {
                        Value::Int64(i) => Some(i),
                        _ => None,
                    })
                    .collect(),
            )
        }),
        (FeatureType::DoubleList, cel::Value::List(items)) => list(items, |v| match v {
            cel::Value::Float(d) => Some(Value::Double(*d)),
            cel::Value::Int(i) => Some(Value::Double(*i as f64)),
            _ => None,
        })
        .map(|l| {
            Value::DoubleList(
                l.into_iter()
                    .filter_map(|v| match v {
                        Value::Double(d) => Some(d),
                        _ => None,
                    })
                    .collect(),
            )
        }),
        (FeatureType::StringList, cel::Value::List(items)) => list(items, |v| match v {
            cel::Value::String(s) => Some(Value::String(s.to_string())),
            _ => None,
        })
        .map(|l| {
            Value::StringList(
                l.into_iter()
                    .filter_map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect(),
            )
        }),
        _ => None,
    };
    converted.ok_or_else(|| wrong(&value))
}

/// A short reason for an evaluation error, as a feature's detail carries it.
fn reason(e: &ExecutionError) -> String {
    match e {
        ExecutionError::DivisionByZero(_) => "division by zero".to_owned(),
        ExecutionError::RemainderByZero(_) => "modulus by zero".to_owned(),
        ExecutionError::Overflow(op, ..) => format!("integer overflow in {op}"),
        ExecutionError::IndexOutOfBounds(_) => "index out of range".to_owned(),
        ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        other => {
            let mut text = other.to_string();
            text.truncate(200);
            text
        }
    }
}

/// A CEL result as a value of the declared type, read in place where it is a scalar, string or
/// bytes (a string copied once, into the feature value); other results go through
/// [`from_value`].
fn from_val(value: &dyn Val, ty: FeatureType) -> Result<Value, String> {
    let scalar = match ty {
        FeatureType::Double => value
            .downcast_ref::<CelDouble>()
            .map(|d| Value::Double(*d.inner()))
            .or_else(|| {
                value
                    .downcast_ref::<CelInt>()
                    .map(|i| Value::Double(*i.inner() as f64))
            }),
        FeatureType::Int64 => value
            .downcast_ref::<CelInt>()
            .map(|i| Value::Int64(*i.inner())),
        FeatureType::Bool => value
            .downcast_ref::<CelBool>()
            .map(|b| Value::Bool(*b.inner())),
        FeatureType::String => value
            .downcast_ref::<CelString>()
            .map(|s| Value::String(s.inner().to_owned())),
        FeatureType::Bytes => value
            .downcast_ref::<CelBytes>()
            .map(|b| Value::Bytes(b.inner().to_vec())),
        _ => None,
    };
    if let Some(scalar) = scalar {
        return Ok(scalar);
    }
    if value.downcast_ref::<CelNull>().is_some() {
        return Ok(Value::Null);
    }
    let value = cel::Value::try_from(value).map_err(|e| reason(&e))?;
    from_value(value, ty)
}

impl Expression {
    /// Evaluates the expression over one row: `values[i]` is input `i` of [`Expression::inputs`],
    /// `None` when it is not available (not PRESENT nor STALE).
    pub fn eval(&self, values: &[Option<&Value>]) -> Result<Value, EvalError> {
        debug_assert_eq!(values.len(), self.inputs.len());
        for (input, value) in self.inputs.iter().zip(values) {
            if let Some(value) = value
                && let Some(size) = self.limits.oversized(value)
            {
                return Err(EvalError::Failed(format!(
                    "input {}.{} is too large for an expression ({size})",
                    input.view, input.feature
                )));
            }
            if let Some(Value::Timestamp(t)) = value
                && !crate::parity::timestamp_representable(*t)
            {
                return Err(EvalError::Failed(format!(
                    "input {}.{} is a timestamp beyond the years an expression can hold \
                     (-262143 to 262142)",
                    input.view, input.feature
                )));
            }
        }
        if let Some(plan) = &self.plan
            && let Some(result) = plan.run(values, self.ty)
        {
            return result;
        }
        self.interpret(values)
    }

    /// [`Expression::eval`] by the `cel` crate's interpreter, once the inputs are known to be
    /// within the limits.
    pub(crate) fn interpret(&self, values: &[Option<&Value>]) -> Result<Value, EvalError> {
        let mut on_stack: [Bound<'_>; crate::INPUTS_ON_STACK] =
            std::array::from_fn(|_| Bound::Missing);
        let mut on_heap = Vec::new();
        let bound: &mut [Bound<'_>] = if values.len() <= crate::INPUTS_ON_STACK {
            &mut on_stack[..values.len()]
        } else {
            on_heap.resize_with(values.len(), || Bound::Missing);
            &mut on_heap
        };
        for (slot, value) in bound.iter_mut().zip(values) {
            *slot = Bound::new(*value);
        }
        let row = Row {
            bound,
            first_missing: FirstMissing(NONE.into()),
        };
        // A scope of this thread's root context holds the row: nothing shared between threads
        // is written (a context of its own would count a reference to the environment).
        let result = ROOT.with(|root| {
            let mut context = root.new_inner_scope();
            context.set_variable_resolver(&row);
            cel::Value::resolve_val(&self.expr, &context).map(|v| from_val(v.as_ref(), self.ty))
        });
        let missing = row.first_missing.get();
        match result {
            Ok(converted) => converted.map_err(EvalError::Failed),
            Err(_) if missing != NONE => Err(EvalError::Missing(missing)),
            Err(e) => Err(EvalError::Failed(reason(&e))),
        }
    }
}
