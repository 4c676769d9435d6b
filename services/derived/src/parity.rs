//! Where the `cel` crate's evaluation departs from CEL's spec and from cel-go, the reference
//! implementation, the gateway evaluates its own way (the crate docs' "Parity with cel-go" lists
//! every case and tests/tests/cel_parity.rs checks them over generated rows).
//!
//! The checker decides, from the types it found, which calls are evaluated here
//! ([`replacement`]); `eval::lower` renames those calls in the expression the evaluator runs to
//! functions registered by [`register`] under names no expression can spell (they start with
//! `@`). Each function handles the case the `cel` crate gets wrong and hands every other to the
//! crate's own overload, so a call whose argument is `dyn` behaves the same either way.

use std::{
    cmp::Ordering,
    collections::HashMap,
    sync::{Arc, LazyLock, PoisonError, RwLock},
    time::SystemTime,
};

use cel::{
    Env, ExecutionError,
    common::{
        types::{CelBool, CelDouble, CelInt, CelString, CelTimestamp, DYN_TYPE},
        value::{CowVal, Val},
    },
    objects::Value,
};
use regex::Regex;

use crate::types::Ty;

/// The function evaluating a call of `function` with arguments of types `args` instead of the
/// `cel` crate's, if there is one.
pub(crate) fn replacement(function: &str, args: &[Ty]) -> Option<&'static str> {
    let may_be_double = |t: &Ty| matches!(t, Ty::Double | Ty::Dyn);
    match function {
        // NaN is unordered: every ordering comparison with it is false (IEEE 754, cel-go); the
        // `cel` crate fails the evaluation instead.
        "_<_" | "_<=_" | "_>_" | "_>=_" if args.iter().any(may_be_double) => Some(match function {
            "_<_" => "@less",
            "_<=_" => "@less_equals",
            "_>_" => "@greater",
            _ => "@greater_equals",
        }),
        // Not a difference of results but of cost: the `cel` crate's own comparison builds
        // the error it would report (type names, strings: five allocations) before comparing,
        // on every evaluation. These compare the same way (the crate's own ordering) and make
        // the error only when there is one.
        "_<_" | "_<=_" | "_>_" | "_>=_" => Some(match function {
            "_<_" => "@ordered_less",
            "_<=_" => "@ordered_less_equals",
            "_>_" => "@ordered_greater",
            _ => "@ordered_greater_equals",
        }),
        // cel-go writes doubles as Go's %g does ("1e+21", "1.5e-07"); the `cel` crate as Rust's
        // Display ("1000000000000000000000", "0.00000015"). A timestamp past year 9999 (outside
        // CEL's range, from an input) has no '+' before its year in cel-go.
        "string" if args.iter().any(|t| may_be_double(t) || *t == Ty::Timestamp) => Some("@string"),
        // A string whose number is out of range is an error (the spec's "conversions which
        // exceed the range of the target type"), not an infinity.
        "double" if args.iter().any(|t| matches!(t, Ty::String | Ty::Dyn)) => Some("@double"),
        // RFC 3339 has no space between date and time, nor leap seconds in a CEL timestamp.
        "timestamp" if args.iter().any(|t| matches!(t, Ty::String | Ty::Dyn)) => Some("@timestamp"),
        // Not a difference of results but of cost: the `cel` crate compiles the pattern anew on
        // every evaluation (tens of microseconds, far more with Unicode classes); the pattern is
        // a literal the checker compiled, so it is compiled once and kept.
        "matches" => Some("@matches"),
        _ => None,
    }
}

/// Registers the functions [`replacement`] names.
pub(crate) fn register(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_overload("@less", "@less_dyn", vec![DYN_TYPE, DYN_TYPE], less)?;
    env.add_overload(
        "@less_equals",
        "@less_equals_dyn",
        vec![DYN_TYPE, DYN_TYPE],
        less_equals,
    )?;
    env.add_overload(
        "@greater",
        "@greater_dyn",
        vec![DYN_TYPE, DYN_TYPE],
        greater,
    )?;
    env.add_overload(
        "@greater_equals",
        "@greater_equals_dyn",
        vec![DYN_TYPE, DYN_TYPE],
        greater_equals,
    )?;
    for (name, id, f) in [
        (
            "@ordered_less",
            "@ordered_less_dyn",
            ordered_less as cel::common::functions::Function,
        ),
        (
            "@ordered_less_equals",
            "@ordered_less_equals_dyn",
            ordered_less_equals,
        ),
        ("@ordered_greater", "@ordered_greater_dyn", ordered_greater),
        (
            "@ordered_greater_equals",
            "@ordered_greater_equals_dyn",
            ordered_greater_equals,
        ),
    ] {
        env.add_overload(name, id, vec![DYN_TYPE, DYN_TYPE], f)?;
    }
    env.add_overload("@string", "@string_dyn", vec![DYN_TYPE], string)?;
    env.add_overload("@double", "@double_dyn", vec![DYN_TYPE], double)?;
    env.add_overload("@timestamp", "@timestamp_dyn", vec![DYN_TYPE], timestamp)?;
    env.add_overload(
        "@matches",
        "@matches_dyn_dyn",
        vec![DYN_TYPE, DYN_TYPE],
        matches,
    )?;
    env.add_member_overload(
        "@matches",
        "@dyn_matches_dyn",
        DYN_TYPE,
        vec![DYN_TYPE],
        matches,
    )?;
    Ok(())
}

/// The `cel` crate's own overload of `function` for `args`.
fn delegate<'b, 'v>(
    function: &str,
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    match crate::env().find_overload(function, &args) {
        Some(op) => op(args),
        None => Err(no_overload(function, &args)),
    }
}

fn no_overload(function: &str, args: &[CowVal<'_, '_>]) -> ExecutionError {
    let types: Vec<&str> = args.iter().map(|a| a.get_type().name()).collect();
    ExecutionError::function_error(
        function,
        format!(
            "found no matching overload for '{function}' applied to '({})'",
            types.join(", ")
        ),
    )
}

fn is_nan(v: &dyn Val) -> bool {
    v.downcast_ref::<CelDouble>()
        .is_some_and(|d| d.inner().is_nan())
}

/// Orders two values as CEL does, NaN against anything giving `None`.
fn order(
    function: &str,
    args: &[CowVal<'_, '_>],
    holds: fn(Ordering) -> bool,
) -> Result<bool, ExecutionError> {
    let [a, b] = args else {
        return Err(no_overload(function, args));
    };
    // Two doubles, by far the most common, compared in place (NaN compares to nothing, so
    // every comparison with it is false).
    if let (Some(x), Some(y)) = (a.downcast_ref::<CelDouble>(), b.downcast_ref::<CelDouble>()) {
        return Ok(x.inner().partial_cmp(y.inner()).is_some_and(holds));
    }
    if is_nan(a.as_ref()) || is_nan(b.as_ref()) {
        return Ok(false);
    }
    let (x, y) = (Value::try_from(a.as_ref())?, Value::try_from(b.as_ref())?);
    match x.partial_cmp(&y) {
        Some(o) => Ok(holds(o)),
        None => Err(no_overload(function, args)),
    }
}

/// A comparison's result: one of two constants, no allocation.
fn boolean<'b, 'v>(b: Result<bool, ExecutionError>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    static TRUE: CelBool = CelBool::TRUE;
    static FALSE: CelBool = CelBool::FALSE;
    b.map(|b| CowVal::Borrowed(if b { &TRUE } else { &FALSE }))
}

fn less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(order("_<_", &args, Ordering::is_lt))
}

fn less_equals<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(order("_<=_", &args, Ordering::is_le))
}

fn greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(order("_>_", &args, Ordering::is_gt))
}

fn greater_equals<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(order("_>=_", &args, Ordering::is_ge))
}

/// Orders two values of types the checker found concrete and not double, as the `cel` crate's
/// own `<` does (its `Comparer`), two ints compared in place.
fn ordered(
    function: &str,
    args: &[CowVal<'_, '_>],
    holds: fn(Ordering) -> bool,
) -> Result<bool, ExecutionError> {
    let [a, b] = args else {
        return Err(no_overload(function, args));
    };
    if let (Some(x), Some(y)) = (a.downcast_ref::<CelInt>(), b.downcast_ref::<CelInt>()) {
        return Ok(holds(x.inner().cmp(y.inner())));
    }
    match a.as_comparer() {
        Some(comparer) => comparer.compare(b.as_ref()).map(holds),
        None => Err(no_overload(function, args)),
    }
}

fn ordered_less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(ordered("_<_", &args, Ordering::is_lt))
}

fn ordered_less_equals<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(ordered("_<=_", &args, Ordering::is_le))
}

fn ordered_greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(ordered("_>_", &args, Ordering::is_gt))
}

fn ordered_greater_equals<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    boolean(ordered("_>=_", &args, Ordering::is_ge))
}

fn string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    if let [arg] = args.as_slice()
        && let Some(d) = arg.downcast_ref::<CelDouble>()
    {
        return Ok(CowVal::owned(CelString::from(format_double(*d.inner()))));
    }
    let timestamp =
        matches!(args.as_slice(), [arg] if arg.downcast_ref::<CelTimestamp>().is_some());
    let result = delegate("string", args)?;
    if timestamp
        && let Some(text) = result.downcast_ref::<CelString>()
        && let Some(unsigned) = text.inner().strip_prefix('+')
    {
        return Ok(CowVal::owned(CelString::from(unsigned.to_owned())));
    }
    Ok(result)
}

fn double<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    if let [arg] = args.as_slice()
        && let Some(s) = arg.downcast_ref::<CelString>()
    {
        return parse_double(s.inner())
            .map(|d| CowVal::owned(CelDouble::from(d)))
            .map_err(|message| ExecutionError::function_error("double", message));
    }
    delegate("double", args)
}

fn timestamp<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    if let [arg] = args.as_slice()
        && let Some(s) = arg.downcast_ref::<CelString>()
        && let Some(message) = not_rfc3339(s.inner())
    {
        return Err(ExecutionError::function_error("timestamp", message));
    }
    delegate("timestamp", args)
}

fn matches<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [text, pattern] = args.as_slice() else {
        return Err(no_overload("matches", &args));
    };
    let (Some(text), Some(pattern)) = (
        text.downcast_ref::<CelString>(),
        pattern.downcast_ref::<CelString>(),
    ) else {
        return Err(no_overload("matches", &args));
    };
    let found = compiled(pattern.inner())?.is_match(text.inner());
    Ok(CowVal::owned(CelBool::from(found)))
}

/// Patterns compiled so far. They are string literals of the configuration's expressions, so
/// few; past [`MAX_PATTERNS`] (many configuration reloads) the cache starts over.
static PATTERNS: LazyLock<RwLock<HashMap<String, Arc<Regex>>>> = LazyLock::new(RwLock::default);
const MAX_PATTERNS: usize = 4096;

/// `pattern` compiled, as the `cel` crate would compile it.
fn compiled(pattern: &str) -> Result<Arc<Regex>, ExecutionError> {
    if let Some(re) = PATTERNS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(pattern)
    {
        return Ok(re.clone());
    }
    let re = Arc::new(Regex::new(pattern).map_err(|e| {
        ExecutionError::function_error("matches", format!("'{pattern}' not a valid regex: {e}"))
    })?);
    let mut cache = PATTERNS.write().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= MAX_PATTERNS {
        cache.clear();
    }
    cache.insert(pattern.to_owned(), re.clone());
    Ok(re)
}

/// A double as cel-go writes it (Go's `%g`): the shortest digits that read back as the same
/// double, in exponent form (`1e+06`, `1.5e-07`, at least two exponent digits) when the decimal
/// exponent is below -4 or at least 6, and `NaN`, `+Inf`, `-Inf`.
pub(crate) fn format_double(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_owned();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    let (sign, digits, exponent) = shortest_digits(d);
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{exp_sign}{:02}", exponent.abs());
    }
    // Fixed notation: the decimal point after digit `exponent + 1`.
    let point = exponent + 1;
    if point <= 0 {
        return format!(
            "{sign}0.{}{digits}",
            "0".repeat(point.unsigned_abs() as usize)
        );
    }
    let point = point as usize;
    if digits.len() <= point {
        format!("{sign}{digits}{}", "0".repeat(point - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..point], &digits[point..])
    }
}

/// The sign, the shortest digits that read back as `d` and the decimal exponent of the first.
/// Rust's `{:e}` finds how many digits are needed; where two decimals of that length are
/// equally near `d` it may end on the odd one (-2128757854122661.25 gives
/// `-2.1287578541226613e15`), while Go, like correctly rounded printing, ends on the even one: the
/// exact value rounded to that many digits (half to even) is it, when it reads back as `d`.
fn shortest_digits(d: f64) -> (&'static str, String, i32) {
    let split = |scientific: &str| -> (String, i32) {
        let (mantissa, exponent) = scientific
            .split_once('e')
            .expect("`{:e}` writes an exponent");
        let digits = mantissa
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>();
        (digits, exponent.parse().expect("a decimal exponent"))
    };
    let sign = if d.is_sign_negative() { "-" } else { "" };
    let shortest = format!("{:e}", d.abs());
    let (digits, exponent) = split(&shortest);
    let rounded = format!("{:.*e}", digits.len() - 1, d.abs());
    if rounded != shortest && rounded.parse::<f64>() == Ok(d.abs()) {
        let (digits, exponent) = split(&rounded);
        return (sign, digits, exponent);
    }
    (sign, digits, exponent)
}

/// `double(string)`: Rust's reading of a decimal number, `inf`, `infinity` or `nan` (any case),
/// an error when a finite number is too large for a double, or NaN has a sign (as cel-go).
pub(crate) fn parse_double(text: &str) -> Result<f64, String> {
    let invalid = || format!("cannot convert {text:?} to a double");
    let d: f64 = text.parse().map_err(|_| invalid())?;
    let unsigned = text.trim_start_matches(['+', '-']);
    let word = unsigned.starts_with(['i', 'I', 'n', 'N']);
    if d.is_infinite() && !word {
        return Err(format!("{text:?} is out of the range of a double"));
    }
    if d.is_nan() && unsigned.len() != text.len() {
        return Err(invalid());
    }
    Ok(d)
}

/// Why `text` is not an RFC 3339 timestamp where the `cel` crate (chrono) would read it as one:
/// a space between date and time, or a leap second (a CEL timestamp, like protobuf's, has none).
pub(crate) fn not_rfc3339(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.get(10) == Some(&b' ') {
        return Some(format!(
            "{text:?} is not an RFC 3339 timestamp: write a 'T' between date and time"
        ));
    }
    if bytes.get(17..19) == Some(b"60") && bytes.get(13) == Some(&b':') {
        return Some(format!(
            "{text:?} is a leap second, which a timestamp cannot hold"
        ));
    }
    None
}

/// Whether the evaluator (chrono) can hold timestamp `t`: years -262143 to 262142. One it
/// cannot is refused as an input rather than read as some other instant.
pub(crate) fn timestamp_representable(t: SystemTime) -> bool {
    let (secs, nanos) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).ok(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).ok().map(|s| -s);
            if d.subsec_nanos() == 0 {
                (secs, 0)
            } else {
                (secs.map(|s| s - 1), 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    secs.is_some_and(|secs| chrono::DateTime::from_timestamp(secs, nanos).is_some())
}

/// A pattern construct that matches differently in Rust's `regex` (what evaluates `matches`) and
/// in RE2 (CEL's regular expressions, cel-go's), with what to write instead.
pub(crate) fn pattern_difference(pattern: &str) -> Option<String> {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        let Some(escaped) = chars.next() else { break };
        let instead = match escaped {
            'd' => "[0-9]",
            'D' => "[^0-9]",
            'w' => "[0-9A-Za-z_]",
            'W' => "[^0-9A-Za-z_]",
            's' => r"[\t\n\f\r ]",
            'S' => r"[^\t\n\f\r ]",
            'b' | 'B' => "an explicit class around the position, e.g. `(^|[^0-9A-Za-z_])`",
            _ => continue,
        };
        return Some(format!(
            "`\\{escaped}` in a `matches` pattern means ASCII only in CEL (RE2) but all of \
             Unicode in the gateway's regex engine: write {instead}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_are_written_as_go_writes_them() {
        // Each pair checked against Go's fmt.Sprintf("%g", x).
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-1.0, "-1"),
            (0.5, "0.5"),
            (1e5, "100000"),
            (123456.789, "123456.789"),
            (1e6, "1e+06"),
            (1234567.5, "1.2345675e+06"),
            (1e20, "1e+20"),
            (1e21, "1e+21"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (0.00012345, "0.00012345"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (9007199254740994.0, "9.007199254740994e+15"),
            (100.0, "100"),
            (1.5e-7, "1.5e-07"),
            (-4.5e-3, "-0.0045"),
            (123.456, "123.456"),
            (1e100, "1e+100"),
            (12345678.0, "1.2345678e+07"),
            // -2128757854122661.25, halfway between two 17-digit decimals
            (
                f64::from_bits(0xc31e_4060_3ed4_ca95),
                "-2.1287578541226612e+15",
            ),
        ];
        for (d, want) in cases {
            assert_eq!(format_double(*d), *want, "{d:?}");
        }
    }

    #[test]
    fn strings_out_of_a_doubles_range_are_errors() {
        assert_eq!(parse_double("1.5"), Ok(1.5));
        assert_eq!(parse_double("-Infinity"), Ok(f64::NEG_INFINITY));
        assert!(parse_double("NaN").is_ok_and(f64::is_nan));
        assert!(parse_double("1e309").is_err());
        assert!(parse_double("-1e309").is_err());
        assert!(parse_double("-nan").is_err());
        assert_eq!(parse_double("1e-400"), Ok(0.0));
    }

    #[test]
    fn timestamps_chrono_reads_but_rfc3339_does_not_are_named() {
        assert!(not_rfc3339("2024-01-01T00:00:00Z").is_none());
        assert!(not_rfc3339("2024-01-01t00:00:00z").is_none());
        assert!(not_rfc3339("2024-01-01 00:00:00Z").is_some());
        assert!(not_rfc3339("2016-12-31T23:59:60Z").is_some());
    }

    #[test]
    fn perl_classes_in_patterns_are_named_with_their_ascii_spelling() {
        assert!(pattern_difference(r"^[a-z]+[0-9]*$").is_none());
        assert!(pattern_difference(r"\p{Greek}+").is_none());
        assert!(pattern_difference(r"a\\d").is_none());
        assert!(pattern_difference(r"\d").is_some_and(|m| m.contains("[0-9]")));
        assert!(pattern_difference(r"[\w.]+").is_some_and(|m| m.contains("[0-9A-Za-z_]")));
        assert!(pattern_difference(r"x\s").is_some());
        assert!(pattern_difference(r"\bword\b").is_some());
    }
}
