//! Online/offline consistency: the values a feature service served against the same requests'
//! features recomputed offline (from a batch pipeline, a warehouse), per feature the share of
//! rows that differ, with examples.
//!
//! Doubles are equal within a relative [`TOLERANCE`] (a pipeline that writes decimal text
//! rarely gives back every bit), NaN equal to NaN; every other type must be equal exactly
//! (a list element by element). A null is equal only to a null.

use fetcher_api::Value;

use crate::compare::number;

/// Rows kept as examples per feature.
pub const EXAMPLES: usize = 5;
/// The relative difference under which two doubles are the same value.
pub const TOLERANCE: f64 = 1e-9;

/// One feature's comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureConsistency {
    /// `VIEW:FEATURE`.
    pub feature: String,
    /// Rows compared.
    pub rows: u64,
    /// Rows whose values differ.
    pub differ: u64,
    /// The first [`EXAMPLES`] of them.
    pub examples: Vec<Example>,
}

impl FeatureConsistency {
    /// The share of rows that differ, 0..1.
    pub fn differ_share(&self) -> f64 {
        crate::profile::share(self.differ, self.rows)
    }
}

/// A row whose served and recomputed values differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// The request.
    pub request_id: String,
    /// The value served, as text.
    pub served: String,
    /// The value recomputed, as text.
    pub recomputed: String,
}

/// Served against recomputed values, per feature.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Consistency {
    /// In the order given.
    pub features: Vec<FeatureConsistency>,
}

impl Consistency {
    /// A comparison of `features`.
    pub fn new(features: Vec<String>) -> Consistency {
        Consistency {
            features: features
                .into_iter()
                .map(|feature| FeatureConsistency {
                    feature,
                    rows: 0,
                    differ: 0,
                    examples: Vec::new(),
                })
                .collect(),
        }
    }

    /// Compares feature `feature`'s value served to `request_id` with the recomputed one.
    pub fn compare(
        &mut self,
        feature: usize,
        request_id: &str,
        served: &Value,
        recomputed: &Value,
    ) {
        let Some(f) = self.features.get_mut(feature) else {
            return;
        };
        f.rows += 1;
        if same(served, recomputed) {
            return;
        }
        f.differ += 1;
        if f.examples.len() < EXAMPLES {
            f.examples.push(Example {
                request_id: request_id.to_owned(),
                served: text(served),
                recomputed: text(recomputed),
            });
        }
    }
}

/// Whether two values are the same by the rules of this module.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Double(x), Value::Double(y)) => same_double(*x, *y),
        (Value::DoubleList(x), Value::DoubleList(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_double(*x, *y))
        }
        _ => a == b,
    }
}

fn same_double(x: f64, y: f64) -> bool {
    if x.is_nan() || y.is_nan() {
        return x.is_nan() && y.is_nan();
    }
    x == y || (x - y).abs() <= TOLERANCE * x.abs().max(y.abs())
}

/// A value as text, for reports.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "null".to_owned(),
        Value::Int64(i) => i.to_string(),
        // Every digit: two doubles that differ must not print alike.
        Value::Double(d) => format!("{d:?}"),
        Value::String(s) => format!("{s:?}"),
        Value::Bool(b) => b.to_string(),
        Value::Bytes(b) => format!("{} bytes", b.len()),
        Value::Timestamp(_) => {
            format!(
                "{} s since the epoch",
                number(crate::profile::measure(v).unwrap_or(0.0))
            )
        }
        Value::Int64List(l) => format!("{l:?}"),
        Value::DoubleList(l) => format!("{l:?}"),
        Value::StringList(l) => format!("{l:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_are_equal_within_the_tolerance_and_the_rest_exactly() {
        assert!(same(&Value::Double(0.1 + 0.2), &Value::Double(0.3)));
        assert!(!same(&Value::Double(1.0), &Value::Double(1.0001)));
        assert!(same(&Value::Double(f64::NAN), &Value::Double(f64::NAN)));
        assert!(!same(&Value::Double(f64::NAN), &Value::Null));
        assert!(!same(&Value::Int64(1), &Value::Double(1.0)));
        assert!(same(
            &Value::DoubleList(vec![1.0, 0.3]),
            &Value::DoubleList(vec![1.0, 0.1 + 0.2])
        ));
        assert!(!same(&Value::String("a".into()), &Value::Null));
    }

    #[test]
    fn differences_are_counted_with_examples() {
        let mut c = Consistency::new(vec!["v:a".into()]);
        for i in 0..10 {
            let recomputed = if i % 2 == 0 { i } else { i + 1 };
            c.compare(
                0,
                &format!("r{i}"),
                &Value::Int64(i),
                &Value::Int64(recomputed),
            );
        }
        let f = &c.features[0];
        assert_eq!((f.rows, f.differ), (10, 5));
        assert_eq!(f.differ_share(), 0.5);
        assert_eq!(f.examples.len(), EXAMPLES);
        assert_eq!(f.examples[0].request_id, "r1");
        assert_eq!(
            (
                f.examples[0].served.as_str(),
                f.examples[0].recomputed.as_str()
            ),
            ("1", "2")
        );
    }
}
