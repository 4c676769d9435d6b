//! The crate's scenarios: a reference profiled from a population, windows of it shifted one
//! way at a time, their comparison and report.

use std::sync::Arc;

use fetcher_api::{FeatureType, Value};

use crate::{
    Status,
    compare::{Comparison, Crossed, Reference, Thresholds, Window, number},
    profile::{FeatureSpec, Profiler, Source, SourceKind},
};

/// SplitMix64: deterministic test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const COUNTRIES: [&str; 5] = ["US", "GB", "DE", "FR", "BR"];

/// How served traffic departs from the reference's population.
#[derive(Clone, Copy, Default)]
struct Shift {
    /// `txn:amount` multiplied by this (a unit change); 0 for none.
    amount_times: f64,
    /// `m:score`'s null rate (1% in the reference).
    score_nulls: Option<f64>,
    /// `u:country` never `US` (30% of the reference).
    no_us: bool,
    /// `m:risk` TIMED_OUT, served with its default 0.5, this often.
    risk_timeouts: f64,
}

fn features() -> Vec<FeatureSpec> {
    let spec = |name: &str, ty| FeatureSpec {
        name: name.into(),
        ty,
        values: true,
    };
    vec![
        spec("txn:amount", FeatureType::Double),
        spec("u:count", FeatureType::Int64),
        spec("u:country", FeatureType::String),
        spec("u:verified", FeatureType::Bool),
        spec("m:score", FeatureType::Double),
        spec("m:risk", FeatureType::Double),
    ]
}

/// Observes `rows` vectors of the population (shifted by `shift`) into `observe`.
fn traffic(
    seed: u64,
    rows: usize,
    shift: Shift,
    mut observe: impl FnMut(usize, Status, &Value, Option<bool>),
    mut row: impl FnMut(),
) {
    let mut rng = Rng(seed);
    for _ in 0..rows {
        row();
        let mut amount = (rng.unit() * 7.0).exp();
        if shift.amount_times > 0.0 {
            amount *= shift.amount_times;
        }
        observe(0, Status::Present, &Value::Double(amount), Some(false));
        let count = (rng.unit() * rng.unit() * 40.0) as i64;
        observe(1, Status::Present, &Value::Int64(count), Some(false));
        let u = rng.unit();
        let country = if u < 0.3 && !shift.no_us {
            "US"
        } else {
            COUNTRIES[1 + (rng.next() % 4) as usize]
        };
        observe(
            2,
            Status::Present,
            &Value::String(country.into()),
            Some(false),
        );
        observe(
            3,
            Status::Present,
            &Value::Bool(rng.unit() < 0.8),
            Some(false),
        );
        if rng.unit() < shift.score_nulls.unwrap_or(0.01) {
            observe(4, Status::NullValue, &Value::Null, Some(false));
        } else {
            observe(4, Status::Present, &Value::Double(rng.unit()), Some(false));
        }
        if rng.unit() < shift.risk_timeouts {
            observe(5, Status::TimedOut, &Value::Double(0.5), Some(true));
        } else {
            observe(
                5,
                Status::Present,
                &Value::Double(rng.unit() * 0.1),
                Some(false),
            );
        }
    }
}

fn reference() -> Arc<Reference> {
    let mut p = Profiler::new(features());
    let mut rows = 0;
    traffic(
        1,
        5000,
        Shift::default(),
        |i, s, v, d| p.observe(i, s, v, d),
        || rows += 1,
    );
    for _ in 0..rows {
        p.row();
    }
    let source = Source {
        kind: SourceKind::TrainingLog,
        path: "log".into(),
        from: None,
        to: None,
        first_served_at: None,
        last_served_at: None,
        rows: 5000,
    };
    Arc::new(Reference::new(p.finish(
        "fraud",
        Some("h".into()),
        Some(source),
    )))
}

fn window(reference: &Arc<Reference>, seed: u64, rows: usize, shift: Shift) -> Window {
    let mut w = Window::new(reference.clone());
    let mut n = 0;
    traffic(
        seed,
        rows,
        shift,
        |i, s, v, d| w.observe(i, s, v, d),
        || n += 1,
    );
    for _ in 0..n {
        w.row();
    }
    w
}

fn compare(shift: Shift) -> Comparison {
    window(&reference(), 2, 3000, shift).compare(&Thresholds::default())
}

#[test]
fn the_same_population_moves_no_feature() {
    let reference = reference();
    // The very rows the reference was built from: only the sketches' approximation is left.
    let same = window(&reference, 1, 5000, Shift::default()).compare(&Thresholds::default());
    for f in &same.features {
        assert!(f.psi.unwrap() < 0.01, "{}: PSI {:?}", f.feature, f.psi);
        assert!(f.crossed.is_empty());
    }
    // Other rows of the same population: sampling noise only.
    let other = compare(Shift::default());
    assert_eq!(other.rows, 3000);
    for f in &other.features {
        assert!(f.psi.unwrap() < 0.05, "{}: PSI {:?}", f.feature, f.psi);
        assert!(f.null_rate.points().abs() < 1.0);
        assert!(f.crossed.is_empty(), "{}: {:?}", f.feature, f.crossed);
    }
    assert_eq!(other.crossed().count(), 0);
}

#[test]
fn a_unit_change_ranks_its_feature_first() {
    let c = compare(Shift {
        amount_times: 100.0,
        ..Shift::default()
    });
    let first = &c.features[0];
    assert_eq!(first.feature, "txn:amount");
    assert_eq!(first.crossed, [Crossed::Psi]);
    assert!(first.psi.unwrap() > 2.0, "{:?}", first.psi);
    assert_eq!(c.crossed().count(), 1);
    // Most served values are above the reference's top edge.
    let top = first.buckets[first.buckets.len() - 2].clone();
    assert!(top.label.starts_with("> "), "{top:?}");
    assert!(
        top.served > 0.6 && (top.reference - 0.1).abs() < 0.03,
        "{top:?}"
    );
}

#[test]
fn a_null_rate_from_1_to_20_percent_ranks_its_feature_first() {
    let c = compare(Shift {
        score_nulls: Some(0.2),
        ..Shift::default()
    });
    let first = &c.features[0];
    assert_eq!(first.feature, "m:score");
    assert!(
        first.crossed.contains(&Crossed::NullRate),
        "{:?}",
        first.crossed
    );
    assert!(first.crossed.contains(&Crossed::Status(Status::NullValue)));
    assert!(
        (first.null_rate.points() - 19.0).abs() < 2.0,
        "{:?}",
        first.null_rate
    );
    assert!(first.psi.unwrap() > 0.2);
    assert_eq!(c.crossed().count(), 1);
}

#[test]
fn a_category_disappearing_ranks_its_feature_first() {
    let c = compare(Shift {
        no_us: true,
        ..Shift::default()
    });
    let first = &c.features[0];
    assert_eq!(first.feature, "u:country");
    assert_eq!(first.crossed, [Crossed::Psi]);
    let us = first.buckets.iter().find(|b| b.label == "US").unwrap();
    assert_eq!(us.served, 0.0);
    assert!((us.reference - 0.3).abs() < 0.03);
    assert_eq!(c.crossed().count(), 1);
}

#[test]
fn timeouts_with_a_default_show_in_statuses_and_defaults() {
    let c = compare(Shift {
        risk_timeouts: 0.32,
        ..Shift::default()
    });
    let first = &c.features[0];
    assert_eq!(first.feature, "m:risk");
    assert!(first.crossed.contains(&Crossed::Status(Status::TimedOut)));
    assert!(first.crossed.contains(&Crossed::Default));
    // The default is a value: the null rate does not move, the distribution does.
    assert!(!first.crossed.contains(&Crossed::NullRate));
    assert!(first.crossed.contains(&Crossed::Psi));
    let explained = crate::report::explain(first);
    assert!(
        explained.contains("% TIMED_OUT (reference 0.0%)"),
        "{explained}"
    );
    assert!(explained.contains("default served for 3"), "{explained}");
}

#[test]
fn windows_add_up() {
    let reference = reference();
    let mut a = window(&reference, 7, 1000, Shift::default());
    let b = window(&reference, 8, 2000, Shift::default());
    let mut both = Window::new(reference.clone());
    let mut n = 0;
    traffic(
        7,
        1000,
        Shift::default(),
        |i, s, v, d| both.observe(i, s, v, d),
        || n += 1,
    );
    traffic(
        8,
        2000,
        Shift::default(),
        |i, s, v, d| both.observe(i, s, v, d),
        || n += 1,
    );
    for _ in 0..n {
        both.row();
    }
    a.merge(&b);
    assert_eq!(
        a.compare(&Thresholds::default()),
        both.compare(&Thresholds::default())
    );
}

#[test]
fn a_coded_observation_counts_as_the_value_and_a_weight_as_that_many() {
    // Every feature of a shifted population (nulls, timeouts with defaults, a category gone),
    // coded first and counted three times each, against each observed three times; and a code
    // of a feature the reference has not, ignored.
    let reference = reference();
    let shift = Shift {
        score_nulls: Some(0.2),
        no_us: true,
        risk_timeouts: 0.3,
        ..Shift::default()
    };
    let mut served = Vec::new();
    let mut rows = 0;
    traffic(
        9,
        500,
        shift,
        |i, s, v, d| served.push((i, s, v.clone(), d)),
        || rows += 1,
    );
    let (mut observed, mut coded) = (
        Window::new(reference.clone()),
        Window::new(reference.clone()),
    );
    for (i, s, v, d) in &served {
        for _ in 0..3 {
            observed.observe(*i, *s, v, *d);
        }
        coded.count(*i, reference.code(*i, *s, v, *d), 3);
    }
    for _ in 0..rows {
        observed.row();
        coded.row();
    }
    coded.count(
        99,
        reference.code(99, Status::Present, &Value::Int64(1), None),
        1,
    );
    assert_eq!(
        observed.compare(&Thresholds::default()),
        coded.compare(&Thresholds::default())
    );
}

#[test]
fn features_that_do_not_match_are_named_on_both_sides() {
    let reference = reference();
    let mut logged: Vec<(String, FeatureType)> = features()
        .into_iter()
        .rev()
        .map(|f| (f.name, f.ty))
        .collect();
    // Same features in another order: mapped by name.
    let map = reference.check(&logged, "the log").unwrap();
    assert_eq!(map, [5, 4, 3, 2, 1, 0]);
    logged[0].1 = FeatureType::Int64;
    logged.pop();
    logged.push(("u:new".into(), FeatureType::String));
    let e = reference.check(&logged, "the log").unwrap_err().to_string();
    assert!(
        e.contains("`m:risk` is int64 in the log, double in the reference"),
        "{e}"
    );
    assert!(
        e.contains("`u:new` (string) is in the log, not in the reference"),
        "{e}"
    );
    assert!(
        e.contains("`txn:amount` (double) is in the reference, not in the log"),
        "{e}"
    );
    assert!(
        e.contains("the reference profile of `fraud` (definition h;"),
        "{e}"
    );
}

#[test]
fn the_report_ranks_and_plots_every_feature() {
    let reference = reference();
    let c = window(
        &reference,
        2,
        3000,
        Shift {
            amount_times: 100.0,
            ..Shift::default()
        },
    )
    .compare(&Thresholds::default());
    let mut served = Profiler::new(features());
    traffic(
        2,
        3000,
        Shift {
            amount_times: 100.0,
            ..Shift::default()
        },
        |i, s, v, d| served.observe(i, s, v, d),
        || {},
    );
    let served = served.finish("fraud", Some("h".into()), None);
    let input = crate::report::ReportInput {
        reference_path: "profile.json",
        reference: reference.profile(),
        served: &served,
        comparison: &c,
        consistency: None,
    };
    let md = crate::report::markdown(&input);
    assert!(
        md.contains("1 of 6 features moved past a threshold: `txn:amount` (PSI"),
        "{md}"
    );
    assert!(md.contains("| 1 | `txn:amount` | double |"), "{md}");
    assert!(md.contains("p50 "), "{md}");
    let html = crate::report::html(&input);
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(
        !html.contains("http://") || html.matches("http://").count() == 6,
        "only the SVG namespace"
    );
    assert!(html.contains("<h1>Skew report: <code>fraud</code></h1>"));
}

#[test]
fn numbers_read_well() {
    assert_eq!(number(12.5), "12.5");
    assert_eq!(number(3.0), "3");
    assert_eq!(number(0.00012), "1.200e-4");
    assert_eq!(number(-0.0), "0");
    assert_eq!(number(1.23456789), "1.2346");
    assert_eq!(number(f64::INFINITY), "inf");
}
