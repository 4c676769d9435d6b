//! Parity of the gateway's CEL evaluator (the `derived` crate, on the `cel` crate) with cel-go,
//! CEL's reference implementation.
//!
//! Every derived expression of `tests/cel-parity/derived.toml` is compiled with
//! [`derived::compile`] and evaluated over the same generated rows of inputs (seeded, so every
//! run sees the same rows; edge values and unavailable inputs included) by
//! [`derived::Expression::eval`] and by cel-go (`tests/cel-parity/main.go`, built here with
//! `go build`). The results must be equal: integers, strings, bytes, bools and timestamps
//! exactly, doubles bit for bit, and an error on one side an error on the other (an unavailable
//! input, the gateway's [`derived::EvalError::Missing`], is cel-go's `no such key`).
//!
//! Two kinds of difference are not failures, each for a reason written where it is allowed:
//! NaN payloads (see [`nan_payloads_differ`]) and the cases of [`KNOWN`], each documented in the
//! "Parity with cel-go" section of the `derived` crate's docs. See [`same`] for how errors pair.
//!
//! cel-go reads time zones from the Go toolchain's own database (`ZONEINFO`), not the machine's,
//! so the answer does not depend on the machine. `-- --nocapture` prints the counts;
//! `CEL_PARITY_DUMP=FILE` writes every disagreement, known ones included, to FILE. `.ci/setup`
//! downloads and builds the Go program once, so the test's `go build` is quick.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::{BufRead, BufReader, BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use derived::{Catalog, EvalError, Expression, Limits};
use fetcher_api::{FeatureType, Value};
use serde_json::{Value as Json, json};

/// Rows generated: every expression is compared over each of them.
const ROWS: usize = 10_000;
/// The generator's seed: the same rows on every run.
const SEED: u64 = 0x5eed_0018_ce1c_0de5;
/// How many disagreements are shown per expression.
const SHOWN: usize = 5;

/// Differences that are known and documented, each in the `derived` crate's "Parity with
/// cel-go" section: the expression (`*`: any that reads such an input), why, and which rows'
/// disagreements are it. Nothing else may differ, and each must still occur.
const KNOWN: &[Known] = &[
    Known {
        expr: "*",
        why: "a timestamp input beyond the years chrono holds (-262143..262142) is refused by \
              the gateway; cel-go (Go's time) evaluates it",
        applies: |c| {
            matches!(c.gateway, Outcome::Error(m) if m.contains("beyond the years"))
                && c.inputs.iter().any(|(_, v)| match v {
                    Some(Value::Timestamp(t)) => {
                        !(-262_143..=262_142).contains(&year_of(seconds_nanos(*t).0))
                    }
                    _ => false,
                })
        },
    },
    Known {
        expr: "text.index_of_from",
        why: "an offset at or past the end is an error in the gateway (the conformance test \
              indexof_out_of_range); cel-go 0.33 answers -1",
        applies: |c| {
            matches!(c.gateway, Outcome::Error(m) if m.contains("index out of range: 2"))
                && *c.go == Outcome::Int(-1)
                && matches!(c.input("txn.memo"), Some(Value::String(s)) if s.chars().count() <= 2)
        },
    },
    Known {
        expr: "conv.dbl_of_str",
        why: "cel-go reads Go's number syntax too (1_000, 0x1p-2); the gateway reads decimal \
              numbers as CEL writes them, and refuses those",
        applies: |c| {
            matches!(c.gateway, Outcome::Error(_))
                && matches!(c.go, Outcome::Double(_))
                && matches!(c.input("txn.memo"), Some(Value::String(s))
                    if s.contains('_') || s.trim_start_matches(['+', '-']).to_ascii_lowercase().starts_with("0x"))
        },
    },
    Known {
        expr: "conv.dur_of_str",
        why: "cel-go (Go's time.ParseDuration) reads µs and μs; CEL's spec lists us, and the \
              gateway refuses the others",
        applies: |c| {
            matches!(c.gateway, Outcome::Error(_))
                && matches!(c.input("txn.memo"), Some(Value::String(s)) if s.contains(['µ', 'μ']))
        },
    },
    Known {
        expr: "conv.ts_of_str",
        why: "RFC 3339 allows a lower-case t and z, which the gateway reads; cel-go (Go's \
              time.Parse) refuses them",
        applies: |c| {
            matches!(c.gateway, Outcome::Timestamp(..))
                && matches!(c.go, Outcome::Error(_))
                && matches!(c.input("txn.memo"), Some(Value::String(s))
                    if s.as_bytes().get(10) == Some(&b't') || s.ends_with('z'))
        },
    },
    Known {
        expr: "time.since_signup_hours",
        why: "cel-go's duration getHours() goes through a float64 and can round up; the \
              gateway's is exact",
        applies: |c| go_duration_rounding(c, 3_600_000_000_000),
    },
    Known {
        expr: "time.since_signup_minutes",
        why: "cel-go's duration getMinutes() goes through a float64 and can round up; the \
              gateway's is exact",
        applies: |c| go_duration_rounding(c, 60_000_000_000),
    },
    Known {
        expr: "time.since_signup_seconds",
        why: "cel-go's duration getSeconds() goes through a float64 and can round up; the \
              gateway's is exact",
        applies: |c| go_duration_rounding(c, 1_000_000_000),
    },
    Known {
        expr: "time.str_of_dur",
        why: "cel-go writes a duration's seconds from a float64 (to about 16 digits); the \
              gateway writes them exactly, to the nanosecond",
        applies: |c| match (c.gateway, c.go, signup_to_at(c)) {
            (Outcome::String(ours), Outcome::String(theirs), Some(nanos)) => {
                *ours == exact_seconds(nanos)
                    && ours.trim_end_matches('s').parse::<f64>().ok()
                        == theirs.trim_end_matches('s').parse::<f64>().ok()
            }
            _ => false,
        },
    },
    Known {
        expr: "time.hours_ny",
        why: "after 2100 the gateway's time zone tables (chrono-tz) have no more daylight \
              saving time; cel-go applies the zone's rule for ever",
        applies: |c| after_2100(c, "txn.at"),
    },
    Known {
        expr: "time.day_of_year_tz",
        why: "after 2100 the gateway's time zone tables (chrono-tz) have no more daylight \
              saving time; cel-go applies the zone's rule for ever",
        applies: |c| after_2100(c, "txn.at"),
    },
];

/// A documented difference: `applies` says whether a disagreement is it.
struct Known {
    expr: &'static str,
    why: &'static str,
    applies: fn(&Case) -> bool,
}

/// The (proleptic Gregorian) year of a second since the epoch, roughly: enough to tell ranges.
fn year_of(seconds: i64) -> i64 {
    1970 + seconds.div_euclid(31_556_952)
}

/// Whether timestamp input `name` is in 2100 or later.
fn after_2100(c: &Case, name: &str) -> bool {
    matches!(c.input(name), Some(Value::Timestamp(t)) if seconds_nanos(*t).0 >= 4_102_444_800)
}

/// `txn.at - user.signup` in nanoseconds, when both are available.
fn signup_to_at(c: &Case) -> Option<i128> {
    let nanos = |name: &str| match c.input(name) {
        Some(Value::Timestamp(t)) => {
            let (s, n) = seconds_nanos(*t);
            Some(i128::from(s) * 1_000_000_000 + i128::from(n))
        }
        _ => None,
    };
    Some(nanos("txn.at")? - nanos("user.signup")?)
}

/// Seconds with exactly the nanoseconds there are, as the gateway writes a duration.
fn exact_seconds(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let (whole, frac) = (nanos.abs() / 1_000_000_000, nanos.abs() % 1_000_000_000);
    if frac == 0 {
        format!("{sign}{whole}s")
    } else {
        let frac = format!("{frac:09}");
        format!("{sign}{whole}.{}s", frac.trim_end_matches('0'))
    }
}

/// The gateway gives the duration `txn.at - user.signup` in whole `unit`s, exactly, and
/// cel-go what Go's `Duration.Hours()` (`Minutes()`, `Seconds()`) gives, a float64, truncated.
fn go_duration_rounding(c: &Case, unit: i128) -> bool {
    let Some(d) = signup_to_at(c) else {
        return false;
    };
    let exact = (d / unit) as i64;
    let go = ((d / unit) as f64 + (d % unit) as f64 / unit as f64) as i64;
    *c.gateway == Outcome::Int(exact) && *c.go == Outcome::Int(go)
}

/// One disagreement: the row's inputs of the expression and both results.
struct Case<'a> {
    inputs: Vec<(String, Option<&'a Value>)>,
    gateway: &'a Outcome,
    go: &'a Outcome,
}

impl Case<'_> {
    /// The input `view.feature`, if available.
    fn input(&self, name: &str) -> Option<&Value> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| *v)
    }
}

/// What an evaluation gave, on either side, in one comparable form.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Int(i64),
    Uint(u64),
    /// IEEE-754 bits.
    Double(u64),
    String(String),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Seconds since the epoch and nanoseconds (0..1e9).
    Timestamp(i64, u32),
    /// Seconds and nanoseconds of one sign.
    Duration(i64, i64),
    List(Vec<Outcome>),
    Null,
    /// An input that is not available was read.
    Missing,
    /// Any other error, with its message.
    Error(String),
    /// cel-go gave a value of a type no feature has (e.g. a map).
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Int(i) => write!(f, "int {i}"),
            Outcome::Uint(u) => write!(f, "uint {u}"),
            Outcome::Double(bits) => write!(f, "double {:?} ({bits:#018x})", f64::from_bits(*bits)),
            Outcome::String(s) => write!(f, "string {s:?}"),
            Outcome::Bool(b) => write!(f, "bool {b}"),
            Outcome::Bytes(b) => write!(f, "bytes {b:?}"),
            Outcome::Timestamp(s, n) => write!(f, "timestamp {s}s+{n}ns"),
            Outcome::Duration(s, n) => write!(f, "duration {s}s{n:+}ns"),
            Outcome::List(items) => {
                f.write_str("[")?;
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
            Outcome::Null => f.write_str("null"),
            Outcome::Missing => f.write_str("error: input not available"),
            Outcome::Error(m) => write!(f, "error: {m}"),
            Outcome::Other(m) => write!(f, "other: {m}"),
        }
    }
}

/// Whether two results are the same, doubles compared bit for bit except NaN payloads.
///
/// An error is an error whatever its message, with one rule: an evaluation that read an
/// unavailable input is [`Outcome::Missing`] in the gateway even when it also failed otherwise
/// (the gateway's documented precedence: the derived feature takes that input's status), while
/// cel-go reports whichever error its evaluation met first. So the gateway's `Missing` matches
/// any cel-go error, but cel-go's `no such key` must be the gateway's `Missing`.
fn same(gateway: &Outcome, go: &Outcome) -> bool {
    match (gateway, go) {
        (Outcome::Double(a), Outcome::Double(b)) => a == b || nan_payloads_differ(*a, *b),
        (Outcome::List(a), Outcome::List(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Outcome::Error(_), Outcome::Error(_)) => true,
        (Outcome::Missing, Outcome::Error(_)) => true,
        (a, b) => a == b,
    }
}

/// What kind of disagreement this is, to show one example of each kind.
fn kind(gateway: &Outcome, go: &Outcome) -> String {
    let shape = |o: &Outcome| match o {
        Outcome::Error(m) => format!("error {}", m.split(':').next().unwrap_or_default()),
        Outcome::Double(bits) => {
            let d = f64::from_bits(*bits);
            format!(
                "double {}",
                if d.is_finite() {
                    "finite"
                } else {
                    "non-finite"
                }
            )
        }
        Outcome::List(_) => "list".to_owned(),
        other => format!("{:?}", std::mem::discriminant(other)),
    };
    format!("{} / {}", shape(gateway), shape(go))
}

/// NaN on both sides with different bits. Go's `math.NaN()` (what cel-go gives for `double('NaN')`
/// and what its math functions return for NaN) is 0x7ff8000000000001, Rust's `f64::NAN` is
/// 0x7ff8000000000000, and x86's arithmetic NaN (0.0 / 0.0 on either side) is
/// 0xfff8000000000000: CEL's spec says nothing of payloads and IEEE-754 leaves them and a NaN's
/// sign to the implementation, so NaN compares as NaN, and the test counts these.
fn nan_payloads_differ(a: u64, b: u64) -> bool {
    f64::from_bits(a).is_nan() && f64::from_bits(b).is_nan()
}

fn nan_payload_differences(gateway: &Outcome, go: &Outcome) -> usize {
    match (gateway, go) {
        (Outcome::Double(a), Outcome::Double(b)) => {
            usize::from(a != b && nan_payloads_differ(*a, *b))
        }
        (Outcome::List(a), Outcome::List(b)) => a
            .iter()
            .zip(b)
            .map(|(x, y)| nan_payload_differences(x, y))
            .sum(),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------------
// The configuration

struct Feature {
    name: String,
    source: String,
    ty: FeatureType,
}

/// The catalog of every view's features, and the derived features in file order.
fn load_config(path: &Path) -> (Catalog, Vec<Feature>) {
    let text = std::fs::read_to_string(path).expect("read derived.toml");
    let table: toml::Table = text.parse().expect("derived.toml parses");
    let views = table["views"].as_table().expect("[views]");
    let mut catalog = Catalog::default();
    let mut derived = Vec::new();
    for (view, def) in views {
        let is_derived = def.get("kind").and_then(toml::Value::as_str) == Some("derived");
        let features = def["features"].as_table().expect("features");
        let mut declared = BTreeMap::new();
        for (feature, spec) in features {
            let ty = FeatureType::from_str(spec["type"].as_str().expect("type")).expect("type");
            declared.insert(feature.clone(), ty);
            if is_derived {
                derived.push(Feature {
                    name: format!("{view}.{feature}"),
                    source: spec["expr"].as_str().expect("expr").to_owned(),
                    ty,
                });
            }
        }
        catalog.views.insert(view.clone(), declared);
    }
    (catalog, derived)
}

// ---------------------------------------------------------------------------------------------
// Rows

/// SplitMix64: small, seeded, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo) as u64) as i64
    }
}

const EDGE_DOUBLES: &[u64] = &[
    0x0000_0000_0000_0000, // 0.0
    0x8000_0000_0000_0000, // -0.0
    0x7ff8_0000_0000_0000, // NaN (Rust's)
    0x7ff8_0000_0000_0001, // NaN (Go's)
    0xfff8_0000_0000_0000, // -NaN (x86's 0/0)
    0x7ff0_0000_0000_0000, // +inf
    0xfff0_0000_0000_0000, // -inf
    0x0000_0000_0000_0001, // smallest subnormal
    0x8000_0000_0000_0001, // its negative
    0x000f_ffff_ffff_ffff, // largest subnormal
    0x0010_0000_0000_0000, // f64::MIN_POSITIVE
    0x7fef_ffff_ffff_ffff, // f64::MAX
    0xffef_ffff_ffff_ffff, // f64::MIN
    0x43e0_0000_0000_0000, // 2^63
    0xc3e0_0000_0000_0000, // -2^63
    0x43df_ffff_ffff_ffff, // largest double below 2^63
    0x43f0_0000_0000_0000, // 2^64
    0x4340_0000_0000_0000, // 2^53
    0x4340_0000_0000_0001, // 2^53 + 2
    0x3fdf_ffff_ffff_ffff, // 0.49999999999999994
];

const SOME_DOUBLES: &[f64] = &[
    1.0, -1.0, 0.5, -0.5, 1.5, 2.5, -2.5, 3.5, 4.5, -0.4, 0.1, 1e21, 1e20, 1e-7, 1e-6, 123456.789,
    1e16, 1e300, -1e-300, 100.0, 7.0, 3.0, 1e15, 0.000001, 86400.5,
];

fn double(rng: &mut Rng) -> f64 {
    match rng.below(10) {
        0..=2 => f64::from_bits(*rng.pick(EDGE_DOUBLES)),
        3 => *rng.pick(SOME_DOUBLES),
        // any finite or not, with any exponent
        4 => f64::from_bits(rng.next()),
        5 => rng.range(-20, 20) as f64 / 2.0,
        _ => rng.range(-1_000_000, 1_000_000) as f64 / 100.0,
    }
}

const EDGE_INTS: &[i64] = &[
    0,
    1,
    -1,
    2,
    -2,
    3,
    5,
    7,
    10,
    i64::MIN,
    i64::MAX,
    i64::MIN + 1,
    i64::MAX - 1,
    1 << 53,
    (1 << 53) + 1,
    -(1 << 53) - 1,
    1 << 62,
    86_400,
    253_402_300_799, // 9999-12-31T23:59:59Z
    253_402_300_800, // 10000-01-01T00:00:00Z
    -62_135_596_800, // 0001-01-01T00:00:00Z
    -62_135_596_801, // one second before
    4_294_967_296,   // 2^32
    -4_294_967_296,
];

fn int(rng: &mut Rng) -> i64 {
    match rng.below(10) {
        0..=2 => *rng.pick(EDGE_INTS),
        3 => rng.next() as i64,
        4 => rng.range(-2_000_000_000, 2_000_000_000) * 1000,
        _ => rng.range(-100, 100),
    }
}

const STRINGS: &[&str] = &[
    "",
    "a",
    "abc",
    "abc123",
    "ABC",
    "Abc_9",
    "vip",
    "héllo",
    "Straße",
    "STRASSE",
    "ΑΒΓ αβγ",
    "日本語テキスト",
    "🙂x🙂",
    "e\u{301}",
    " \t pad \n",
    "\u{85}nel\u{a0}",
    "\u{2003}em\u{3000}",
    "\u{200b}zw\u{200b}",
    "\u{feff}bom",
    "\u{b}vt\u{c}",
    "a\u{0}b",
    "ＡＢＣ１２３",
    "١٢٣",
    "x\u{e9}\u{130}\u{131}",
    "0",
    "-0",
    "1",
    "+5",
    " 5",
    "5 ",
    "1e3",
    "1.5",
    "-2.5e-3",
    ".5",
    "5.",
    "NaN",
    "nan",
    "inf",
    "+Inf",
    "-Infinity",
    "infinity",
    "1e309",
    "1e-400",
    "0x10",
    "0X1F",
    "1_000",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "true",
    "True",
    "TRUE",
    "tRuE",
    "t",
    "f",
    "FALSE",
    "false",
    "yes",
    "2024-02-29T12:34:56Z",
    "2024-02-29T12:34:56.123456789+05:30",
    "2024-02-29T12:34:56.1234567891Z",
    "1969-12-31T23:59:59.5Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "10000-01-01T00:00:00Z",
    "2024-01-01",
    "2024-01-01T00:00:00",
    "2024-01-01t00:00:00z",
    "2024-01-01 00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-03-10T02:30:00-05:00",
    "1h",
    "1.5h",
    "-90m",
    "1h30m",
    "300ms",
    "2us",
    "3µs",
    "100ns",
    "0s",
    "-0s",
    ".5s",
    "1d",
    "10000000h",
    "315576000000s",
    "315576000001s",
    "1.5",
    "-nan",
    "+NaN",
    "0x1p-2",
    "2016-12-31T23:59:60Z",
    "+2024-01-01T00:00:00Z",
];

const NAMES: &[&str] = &[
    "", "a", "b", "ab", "vip", "é", "日本", "abc", "Straße", "5", "🙂",
];
const COUNTRIES: &[&str] = &["US", "CA", "MX", "é", "", "us", "FR", "DE"];
const TAGS: &[&str] = &["vip", "vipgold", "US", "FR", "", "é", "new", "VIP"];
const ZONES: &[&str] = &[
    "America/New_York",
    "UTC",
    "Europe/London",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
    "Pacific/Kiritimati",
    "+05:30",
    "-08:00",
    "+00:00",
    "-00:30",
    "+14:00",
    "+23:59",
    "+24:00",
    "05:30",
    "Mars/Base",
    "",
    "utc",
    "EST",
    "Etc/GMT+5",
];

const CHARS: &[char] = &[
    'a', 'b', 'z', 'A', 'Z', '0', '9', '_', ' ', '-', '.', 'é', 'ß', 'İ', 'Σ', 'ς', '日', '🙂',
    '\u{301}', '\t', '\n', '\u{a0}', '١', 'K', 'k', '\u{212a}',
];

fn string(rng: &mut Rng, pool: &[&str]) -> String {
    if rng.chance(70) {
        return (*rng.pick(pool)).to_owned();
    }
    let len = rng.below(9);
    (0..len).map(|_| *rng.pick(CHARS)).collect()
}

/// Timestamps: seconds since the epoch and nanoseconds.
const EDGE_TIMES: &[(i64, u32)] = &[
    (0, 0),
    (-1, 999_999_999),              // 1 ns before the epoch
    (-2, 500_000_000),              // 1.5 s before
    (-62_135_596_800, 0),           // 0001-01-01T00:00:00Z, CEL's first
    (253_402_300_799, 999_999_999), // 9999-12-31T23:59:59.999999999Z, CEL's last
    (253_402_214_400, 0),           // 9999-12-31T00:00:00Z
    (-62_135_596_801, 0),           // before CEL's range
    (253_402_300_800, 0),           // after it
    (1_710_054_000, 0),             // 2024-03-10T07:00:00Z, New York springs forward
    (1_730_613_600, 0),             // 2024-11-03T06:00:00Z, New York falls back
    (1_709_164_800, 0),             // 2024-02-29
    (951_782_400, 0),               // 2000-02-29
    (-2_208_988_800, 0),            // 1900-01-01
    (-30_610_224_000, 0),           // 1000-01-01
    (4_102_444_800, 123_000_000),   // 2100-01-01
    (2_147_483_647, 0),             // 2^31 - 1
    (1_700_000_000, 1),
    (1_700_000_000, 999_000_000),
    (-62_198_755_200, 0),    // -0001-01-01, before year 0
    (9_404_548_953_600, 0),  // year 299988: beyond what chrono holds
    (-8_334_632_851_200, 0), // year -262144: before it
];

fn timestamp(rng: &mut Rng) -> SystemTime {
    let (secs, nanos) = match rng.below(10) {
        0..=2 => *rng.pick(EDGE_TIMES),
        // anywhere in CEL's range
        3 => (
            rng.range(-62_135_596_800, 253_402_300_800),
            (rng.next() % 1_000_000_000) as u32,
        ),
        // 1900..2100, whole seconds or not
        _ => (
            rng.range(-2_208_988_800, 4_102_444_800),
            if rng.chance(50) {
                0
            } else {
                (rng.next() % 1_000_000_000) as u32
            },
        ),
    };
    at(secs, nanos)
}

fn at(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into())
    }
}

fn seconds_nanos(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

fn bytes(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => Vec::new(),
        1 => b"abc".to_vec(),
        2 => vec![0xff, 0xfe],
        3 => "é日".as_bytes().to_vec(),
        4 => vec![0xe6, 0x97],
        _ => (0..rng.below(6)).map(|_| rng.next() as u8).collect(),
    }
}

fn list<T>(rng: &mut Rng, mut each: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    let len = match rng.below(10) {
        0..=1 => 0,
        2 => 1,
        _ => 1 + rng.below(5),
    };
    (0..len).map(|_| each(rng)).collect()
}

/// One value of `view.feature`, or `None` (not available) at a rate of 1 in 20.
fn input(rng: &mut Rng, view: &str, feature: &str, ty: FeatureType) -> Option<Value> {
    if rng.chance(5) {
        return None;
    }
    Some(match ty {
        FeatureType::Int64 => Value::Int64(int(rng)),
        FeatureType::Double => Value::Double(double(rng)),
        FeatureType::Bool => Value::Bool(rng.chance(50)),
        FeatureType::Bytes => Value::Bytes(bytes(rng)),
        FeatureType::Timestamp => Value::Timestamp(timestamp(rng)),
        FeatureType::String => Value::String(match (view, feature) {
            (_, "name") => string(rng, NAMES),
            (_, "country") => string(rng, COUNTRIES),
            (_, "tz") => string(rng, ZONES),
            _ => string(rng, STRINGS),
        }),
        FeatureType::StringList => Value::StringList(list(rng, |r| string(r, TAGS))),
        FeatureType::DoubleList => Value::DoubleList(list(rng, double)),
        FeatureType::Int64List => Value::Int64List(list(rng, |r| {
            if r.chance(20) {
                *r.pick(&[i64::MIN, i64::MAX, -1, 0])
            } else {
                r.range(-3, 25)
            }
        })),
    })
}

/// One row: a value (or none) for each input, in the order of the inputs' list.
type Row = Vec<Option<Value>>;

fn rows(inputs: &[(String, String, FeatureType)]) -> Vec<Row> {
    let mut rng = Rng(SEED);
    (0..ROWS)
        .map(|_| {
            inputs
                .iter()
                .map(|(view, feature, ty)| input(&mut rng, view, feature, *ty))
                .collect()
        })
        .collect()
}

/// Where each input of `e` is in a row.
fn positions(e: &Expression, inputs: &[(String, String, FeatureType)]) -> Vec<usize> {
    e.inputs()
        .iter()
        .map(|r| {
            inputs
                .iter()
                .position(|(view, feature, _)| *view == r.view && *feature == r.feature)
                .expect("every input is a column of the rows")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tagged JSON values of main.go

fn tagged(value: &Value) -> Json {
    match value {
        Value::Null => json!({"null": true}),
        Value::Int64(i) => json!({"int": i.to_string()}),
        Value::Double(d) => json!({"double": format!("{:016x}", d.to_bits())}),
        Value::String(s) => json!({"string": s}),
        Value::Bool(b) => json!({"bool": b}),
        Value::Bytes(b) => json!({"bytes": base64::engine::general_purpose::STANDARD.encode(b)}),
        Value::Timestamp(t) => {
            let (seconds, nanos) = seconds_nanos(*t);
            json!({"timestamp": {"seconds": seconds.to_string(), "nanos": nanos}})
        }
        Value::Int64List(l) => {
            json!({"list": l.iter().map(|i| tagged(&Value::Int64(*i))).collect::<Vec<_>>()})
        }
        Value::DoubleList(l) => {
            json!({"list": l.iter().map(|d| tagged(&Value::Double(*d))).collect::<Vec<_>>()})
        }
        Value::StringList(l) => {
            json!({"list": l.iter().map(|s| json!({"string": s})).collect::<Vec<_>>()})
        }
    }
}

/// cel-go's result, as the gateway would hand it on for a feature declared `ty`: an `int` where
/// a double is declared is widened, as the gateway does with every source.
fn from_go(json: &Json, ty: Option<FeatureType>) -> Outcome {
    let obj = json.as_object().expect("a tagged value");
    let (tag, raw) = obj.iter().next().expect("one tag");
    let text = || raw.as_str().expect("a string").to_owned();
    let secs_nanos = || {
        let seconds: i64 = raw["seconds"]
            .as_str()
            .expect("seconds")
            .parse()
            .expect("seconds");
        let nanos = raw["nanos"].as_i64().expect("nanos");
        (seconds, nanos)
    };
    match tag.as_str() {
        "int" => {
            let i: i64 = text().parse().expect("int");
            match ty {
                Some(FeatureType::Double | FeatureType::DoubleList) => {
                    Outcome::Double((i as f64).to_bits())
                }
                _ => Outcome::Int(i),
            }
        }
        "uint" => Outcome::Uint(text().parse().expect("uint")),
        "double" => Outcome::Double(u64::from_str_radix(&text(), 16).expect("double bits")),
        "string" => Outcome::String(text()),
        "bool" => Outcome::Bool(raw.as_bool().expect("bool")),
        "bytes" => Outcome::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(text())
                .expect("base64"),
        ),
        "timestamp" => {
            let (s, n) = secs_nanos();
            Outcome::Timestamp(s, n as u32)
        }
        "duration" => {
            let (s, n) = secs_nanos();
            Outcome::Duration(s, n)
        }
        "list" => {
            let elem = match ty {
                Some(FeatureType::DoubleList) => Some(FeatureType::Double),
                _ => None,
            };
            Outcome::List(
                raw.as_array()
                    .expect("list")
                    .iter()
                    .map(|x| from_go(x, elem))
                    .collect(),
            )
        }
        "null" => Outcome::Null,
        "error" if text().contains("no such key") => Outcome::Missing,
        "error" => Outcome::Error(text()),
        _ => Outcome::Other(format!("{tag}: {raw}")),
    }
}

fn from_gateway(result: Result<Value, EvalError>) -> Outcome {
    match result {
        Ok(value) => from_value(&value),
        Err(EvalError::Missing(_)) => Outcome::Missing,
        Err(EvalError::Failed(reason)) => Outcome::Error(reason),
    }
}

fn from_value(value: &Value) -> Outcome {
    match value {
        Value::Null => Outcome::Null,
        Value::Int64(i) => Outcome::Int(*i),
        Value::Double(d) => Outcome::Double(d.to_bits()),
        Value::String(s) => Outcome::String(s.clone()),
        Value::Bool(b) => Outcome::Bool(*b),
        Value::Bytes(b) => Outcome::Bytes(b.clone()),
        Value::Timestamp(t) => {
            let (s, n) = seconds_nanos(*t);
            Outcome::Timestamp(s, n)
        }
        Value::Int64List(l) => Outcome::List(l.iter().map(|i| Outcome::Int(*i)).collect()),
        Value::DoubleList(l) => {
            Outcome::List(l.iter().map(|d| Outcome::Double(d.to_bits())).collect())
        }
        Value::StringList(l) => {
            Outcome::List(l.iter().map(|s| Outcome::String(s.clone())).collect())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// cel-go

fn go_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cel-parity")
}

/// The time zone database of the Go toolchain, so that cel-go reads the same one on every
/// machine, not the system's (whose version varies).
fn go_zoneinfo() -> PathBuf {
    let out = Command::new("go")
        .args(["env", "GOROOT"])
        .output()
        .expect("run `go env GOROOT`");
    let root = String::from_utf8(out.stdout).expect("GOROOT is UTF-8");
    let zip = Path::new(root.trim()).join("lib/time/zoneinfo.zip");
    assert!(zip.exists(), "{} is missing", zip.display());
    zip
}

/// Builds main.go into `dir` and returns the binary.
fn build_go(dir: &Path) -> PathBuf {
    let bin = dir.join("cel-parity");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(go_dir())
        .status()
        .expect("run `go build` (is Go installed and on PATH?)");
    assert!(status.success(), "go build of tests/cel-parity failed");
    bin
}

fn write_input(
    path: &Path,
    catalog: &Catalog,
    inputs: &[(String, String, FeatureType)],
    features: &[Feature],
    rows: &[Row],
) {
    let mut w = BufWriter::new(File::create(path).expect("create input"));
    let mut views = serde_json::Map::new();
    for (view, feature, ty) in inputs {
        views
            .entry(view.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(feature.clone(), json!(ty.name()));
    }
    // Views that only derived features read stay declared, with no features.
    for view in catalog.views.keys() {
        views.entry(view.clone()).or_insert_with(|| json!({}));
    }
    writeln!(w, "{}", json!({"views": views})).expect("write");
    for f in features {
        writeln!(
            w,
            "{}",
            json!({"expr": {"name": f.name, "source": f.source, "type": f.ty.name()}})
        )
        .expect("write");
    }
    for row in rows {
        let mut by_view = serde_json::Map::new();
        for ((view, feature, _), value) in inputs.iter().zip(row) {
            let Some(value) = value else { continue };
            by_view
                .entry(view.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object")
                .insert(feature.clone(), tagged(value));
        }
        writeln!(w, "{}", json!({"row": by_view})).expect("write");
    }
    w.flush().expect("flush");
}

/// cel-go's results per expression name: each row's outcome, or its compile error.
fn read_output(
    path: &Path,
    features: &[Feature],
) -> BTreeMap<String, Result<Vec<Outcome>, String>> {
    let types: BTreeMap<&str, FeatureType> =
        features.iter().map(|f| (f.name.as_str(), f.ty)).collect();
    let file = BufReader::new(File::open(path).expect("open output"));
    let mut out = BTreeMap::new();
    for line in file.lines() {
        let line: Json = serde_json::from_str(&line.expect("read")).expect("json");
        let name = line["name"].as_str().expect("name").to_owned();
        let ty = types.get(name.as_str()).copied();
        let results = match line.get("compile_error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(line["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|r| from_go(r, ty))
                .collect()),
        };
        out.insert(name, results);
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// Expressions the gateway refuses when the configuration loads because cel-go (RE2) would
/// evaluate them differently, with a piece of the message naming what to write instead.
const REFUSED: &[(&str, &str)] = &[
    (r#"txn.memo.matches(r"^\w+$")"#, "[0-9A-Za-z_]"),
    (r#"txn.memo.matches(r"\d")"#, "[0-9]"),
    (r#"txn.memo.matches(r"[\s,]")"#, r"[\t\n\f\r ]"),
    (r#"txn.memo.matches(r"\bvip")"#, "explicit class"),
];

#[test]
fn patterns_that_re2_reads_differently_are_refused_at_load_time() {
    let (catalog, _) = load_config(&go_dir().join("derived.toml"));
    for (source, hint) in REFUSED {
        let errors = derived::compile(source, FeatureType::Bool, &catalog, &Limits::default())
            .expect_err(source);
        assert!(
            errors.iter().any(|e| e.message.contains(hint)),
            "{source}: {errors:?}"
        );
    }
}

/// Evaluates `e` over every row with the gateway's evaluator.
fn evaluate(
    e: &Expression,
    inputs: &[(String, String, FeatureType)],
    rows: &[Row],
) -> Vec<Outcome> {
    let at = positions(e, inputs);
    rows.iter()
        .map(|row| {
            let values: Vec<Option<&Value>> = at.iter().map(|&i| row[i].as_ref()).collect();
            from_gateway(e.eval(&values))
        })
        .collect()
}

#[test]
fn every_expression_agrees_with_cel_go_over_ten_thousand_rows() {
    let started = Instant::now();
    let (catalog, features) = load_config(&go_dir().join("derived.toml"));
    assert!(features.len() >= 40, "{} expressions", features.len());

    let mut compile_errors = Vec::new();
    let mut compiled: Vec<Arc<Expression>> = Vec::new();
    for f in &features {
        match derived::compile(&f.source, f.ty, &catalog, &Limits::default()) {
            Ok(e) => compiled.push(e),
            Err(errors) => compile_errors.push(format!("{} `{}`: {errors:?}", f.name, f.source)),
        }
    }
    assert!(
        compile_errors.is_empty(),
        "the gateway refuses:\n{}",
        compile_errors.join("\n")
    );

    // Every feature of a view that is not derived is an input of every row.
    let inputs: Vec<(String, String, FeatureType)> = catalog
        .views
        .iter()
        .filter(|(view, _)| {
            !features
                .iter()
                .any(|f| f.name.starts_with(&format!("{view}.")))
        })
        .flat_map(|(view, fs)| fs.iter().map(|(f, ty)| (view.clone(), f.clone(), *ty)))
        .collect();
    let rows = rows(&inputs);

    let dir = tempfile::tempdir().expect("temp dir");
    let bin = build_go(dir.path());
    let (input_path, output_path) = (
        dir.path().join("input.jsonl"),
        dir.path().join("output.jsonl"),
    );
    write_input(&input_path, &catalog, &inputs, &features, &rows);

    // cel-go runs while the gateway's evaluator does, each on a core.
    let go_started = Instant::now();
    let mut go_process = Command::new(&bin)
        .arg(&input_path)
        .arg(&output_path)
        .env("ZONEINFO", go_zoneinfo())
        .spawn()
        .expect("run cel-parity");
    let gateway_started = Instant::now();
    // Two threads: the second core is free again once cel-go is done.
    let ours: Vec<Vec<Outcome>> = std::thread::scope(|scope| {
        let half = compiled.len() / 2;
        let (first, second) = compiled.split_at(half);
        let (rows, inputs) = (&rows, &inputs);
        let other = scope.spawn(move || {
            second
                .iter()
                .map(|e| evaluate(e, inputs, rows))
                .collect::<Vec<_>>()
        });
        let mut ours: Vec<Vec<Outcome>> = first.iter().map(|e| evaluate(e, inputs, rows)).collect();
        ours.extend(other.join().expect("evaluation thread"));
        ours
    });
    let gateway_time = gateway_started.elapsed();
    let status = go_process.wait().expect("wait for cel-parity");
    assert!(status.success(), "cel-parity failed");
    let go_time = go_started.elapsed();
    let go = read_output(&output_path, &features);

    let mut failures = Vec::new();
    let mut compared = 0usize;
    let mut nan_payloads = 0usize;
    let mut known_seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut dump = std::env::var_os("CEL_PARITY_DUMP")
        .map(|path| BufWriter::new(File::create(path).expect("create CEL_PARITY_DUMP")));
    for ((f, e), ours) in features.iter().zip(&compiled).zip(&ours) {
        let theirs = match &go[&f.name] {
            Ok(results) => results,
            Err(message) => {
                failures.push(format!(
                    "{} `{}`: cel-go refuses it: {message}",
                    f.name, f.source
                ));
                continue;
            }
        };
        let known: Vec<usize> = (0..KNOWN.len())
            .filter(|&k| KNOWN[k].expr == f.name || KNOWN[k].expr == "*")
            .collect();
        let mut shown: BTreeMap<String, String> = BTreeMap::new();
        let mut differing = 0usize;
        for (i, (row, (ours, theirs))) in rows.iter().zip(ours.iter().zip(theirs)).enumerate() {
            compared += 1;
            nan_payloads += nan_payload_differences(ours, theirs);
            if same(ours, theirs) {
                continue;
            }
            let case = Case {
                inputs: positions(e, &inputs)
                    .into_iter()
                    .map(|i| {
                        let (view, feature, _) = &inputs[i];
                        (format!("{view}.{feature}"), row[i].as_ref())
                    })
                    .collect(),
                gateway: ours,
                go: theirs,
            };
            let shown_inputs = || {
                case.inputs
                    .iter()
                    .map(|(name, v)| match v {
                        Some(v) => format!("{name}={v:?}"),
                        None => format!("{name}=(not available)"),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if let Some(k) = known.iter().position(|k| (KNOWN[*k].applies)(&case)) {
                *known_seen.entry(known[k]).or_default() += 1;
                if let Some(dump) = &mut dump {
                    writeln!(
                        dump,
                        "{} known row {i} [{}]\n  gateway: {ours}\n  cel-go:  {theirs}",
                        f.name,
                        shown_inputs()
                    )
                    .expect("dump");
                }
                continue;
            }
            differing += 1;
            let description = format!(
                "    row {i} [{}]\n      gateway: {ours}\n      cel-go:  {theirs}",
                shown_inputs()
            );
            if let Some(dump) = &mut dump {
                writeln!(dump, "{} {description}", f.name).expect("dump");
            }
            // One example of each kind of disagreement, up to SHOWN.
            let kind = kind(ours, theirs);
            if shown.len() < SHOWN {
                shown.entry(kind).or_insert(description);
            }
        }
        if differing > 0 {
            failures.push(format!(
                "{} `{}`: {differing} of {} rows differ\n{}",
                f.name,
                f.source,
                rows.len(),
                shown.into_values().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    eprintln!(
        "cel parity: {} expressions x {} rows = {compared} results compared; NaN payloads \
         differing (compared as NaN): {nan_payloads}; known differences: {}; \
         gateway {gateway_time:.1?}, cel-go {go_time:.1?}, total {:.1?}",
        features.len(),
        rows.len(),
        known_seen.values().sum::<usize>(),
        started.elapsed()
    );
    for (i, k) in KNOWN.iter().enumerate() {
        eprintln!(
            "  known: {} ({} rows): {}",
            k.expr,
            known_seen.get(&i).copied().unwrap_or(0),
            k.why
        );
    }
    for (i, k) in KNOWN.iter().enumerate() {
        assert!(
            known_seen.contains_key(&i),
            "the known difference of {} ({}) no longer occurs: remove it from KNOWN and the docs",
            k.expr,
            k.why
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} expressions disagree with cel-go:\n{}",
        failures.len(),
        features.len(),
        failures.join("\n")
    );
}
