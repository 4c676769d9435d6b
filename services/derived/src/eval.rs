//! Evaluation: the inputs of one row bound to the expression's references, the result turned
//! back into a feature value of the declared type.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use cel::{
    Context, ExecutionError,
    common::{
        types::{CelBool, CelBytes, CelDouble, CelInt, CelString, CelTimestamp},
        value::{CowVal, Val},
    },
    context::VariableResolver,
    objects::Key,
};
use fetcher_api::{FeatureType, Value};

use crate::{EvalError, Expression};

/// No missing input was read.
const NONE: usize = usize::MAX;

/// Resolves `view.feature` (and `view`, for `has(view.feature)`) to a row's inputs, noting the
/// first missing input an evaluation asked for.
struct Row<'a> {
    expression: &'a Expression,
    values: &'a [Option<&'a Value>],
    first_missing: AtomicUsize,
}

impl VariableResolver for Row<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        let inputs = &self.expression.inputs;
        if let Some((view, feature)) = name.split_once('.') {
            let i = inputs
                .iter()
                .position(|r| r.view == view && r.feature == feature)?;
            return match self.values[i] {
                Some(value) => Some(to_val(value)),
                None => {
                    let _ = self.first_missing.compare_exchange(
                        NONE,
                        i,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    None
                }
            };
        }
        // The view itself: a map of its inputs that are available (a presence test reads it).
        if !inputs.iter().any(|r| r.view == name) {
            return None;
        }
        let mut map: HashMap<Key, cel::Value> = HashMap::new();
        for (r, value) in inputs.iter().zip(self.values) {
            if r.view == name
                && let Some(value) = value
            {
                map.insert(Key::String(r.feature.clone().into()), to_value(value));
            }
        }
        let value: Box<dyn Val> = cel::Value::Map(map.into()).try_into().ok()?;
        Some(CowVal::Owned(value))
    }
}

/// A feature value as CEL sees it; strings and bytes are borrowed, not copied.
fn to_val<'b>(value: &'b Value) -> CowVal<'b, 'b> {
    match value {
        Value::Int64(i) => CowVal::owned(CelInt::from(*i)),
        Value::Double(d) => CowVal::owned(CelDouble::from(*d)),
        Value::String(s) => CowVal::owned(CelString::from(s.as_str())),
        Value::Bool(b) => CowVal::owned(CelBool::from(*b)),
        Value::Bytes(b) => CowVal::owned(CelBytes::from(b.as_slice())),
        Value::Timestamp(t) => CowVal::owned(CelTimestamp::from(to_chrono(*t))),
        other => match cel::Value::try_into(to_value(other)) {
            Ok(boxed) => CowVal::Owned(boxed),
            Err(_) => CowVal::owned(cel::common::types::CelNull),
        },
    }
}

/// A feature value as a CEL value.
pub(crate) fn to_value(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Int64(i) => cel::Value::Int(*i),
        Value::Double(d) => cel::Value::Float(*d),
        Value::String(s) => cel::Value::String(s.clone().into()),
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Bytes(b) => cel::Value::Bytes(b.clone().into()),
        Value::Timestamp(t) => cel::Value::Timestamp(to_chrono(*t)),
        Value::Int64List(l) => cel::Value::List(
            l.iter()
                .map(|i| cel::Value::Int(*i))
                .collect::<Vec<_>>()
                .into(),
        ),
        Value::DoubleList(l) => cel::Value::List(
            l.iter()
                .map(|d| cel::Value::Float(*d))
                .collect::<Vec<_>>()
                .into(),
        ),
        Value::StringList(l) => cel::Value::List(
            l.iter()
                .map(|s| cel::Value::String(s.clone().into()))
                .collect::<Vec<_>>()
                .into(),
        ),
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
        let row = Row {
            expression: self,
            values,
            first_missing: AtomicUsize::new(NONE),
        };
        let mut context = Context::with_env(crate::env());
        context.set_variable_resolver(&row);
        let result = cel::Value::resolve(&self.expr, &context);
        drop(context);
        let missing = row.first_missing.load(Ordering::Relaxed);
        match result {
            Ok(value) => from_value(value, self.ty).map_err(EvalError::Failed),
            Err(_) if missing != NONE => Err(EvalError::Missing(missing)),
            Err(e) => Err(EvalError::Failed(reason(&e))),
        }
    }
}
