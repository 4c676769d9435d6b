use std::time::{Duration, UNIX_EPOCH};

use super::*;

/// SplitMix64: deterministic test data.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn spec(name: &str, ty: FeatureType) -> FeatureSpec {
    FeatureSpec {
        name: name.into(),
        ty,
        values: true,
    }
}

fn specs() -> Vec<FeatureSpec> {
    vec![
        spec("txn:amount", FeatureType::Double),
        spec("u:count", FeatureType::Int64),
        spec("u:country", FeatureType::String),
        spec("u:verified", FeatureType::Bool),
        spec("u:seen", FeatureType::Timestamp),
        spec("u:tags", FeatureType::StringList),
        FeatureSpec {
            name: "u:email".into(),
            ty: FeatureType::String,
            values: false,
        },
    ]
}

/// Row `i` of the test population: values, statuses and defaults.
fn observe_row(p: &mut Profiler, i: u64) {
    let mut rng = Rng(i);
    p.row();
    let amount = if i % 1000 == 7 {
        Value::Double(f64::INFINITY)
    } else {
        Value::Double((rng.unit() * 6.0).exp())
    };
    p.observe(0, Status::Present, &amount, Some(false));
    // One in ten not found, served with its default 0.
    if i % 10 == 3 {
        p.observe(1, Status::NotFound, &Value::Int64(0), Some(true));
    } else {
        p.observe(
            1,
            Status::Present,
            &Value::Int64((rng.next() % 40) as i64),
            Some(false),
        );
    }
    let country = ["US", "GB", "DE", "FR"][(rng.next() % 4) as usize];
    p.observe(
        2,
        Status::Present,
        &Value::String(country.into()),
        Some(false),
    );
    if i.is_multiple_of(50) {
        p.observe(3, Status::TimedOut, &Value::Null, Some(false));
    } else {
        p.observe(
            3,
            Status::Present,
            &Value::Bool(!rng.next().is_multiple_of(3)),
            Some(false),
        );
    }
    let seen = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + rng.next() % 86_400);
    p.observe(4, Status::Stale, &Value::Timestamp(seen), None);
    let tags = vec!["a".to_owned(); (rng.next() % 5) as usize];
    p.observe(5, Status::Present, &Value::StringList(tags), Some(false));
    p.observe(6, Status::Present, &Value::Null, Some(false));
}

fn profile_of(rows: std::ops::Range<u64>) -> Profile {
    let mut p = Profiler::new(specs());
    let n = rows.end - rows.start;
    for i in rows {
        observe_row(&mut p, i);
    }
    let source = Source {
        kind: SourceKind::TrainingLog,
        path: "log".into(),
        from: None,
        to: None,
        first_served_at: None,
        last_served_at: None,
        rows: n,
    };
    p.finish("fraud", Some("h1".into()), Some(source))
}

#[test]
fn a_profile_summarizes_each_kind_of_feature() {
    let p = profile_of(0..5000);
    assert_eq!((p.format.as_str(), p.version, p.rows), (FORMAT, 1, 5000));
    let amount = &p.features[0];
    assert_eq!(
        (amount.count, amount.nulls, amount.null_rate),
        (5000, 0, 0.0)
    );
    let n = amount.numeric.as_ref().unwrap();
    assert_eq!(n.measure, Measure::Value);
    assert_eq!(n.max, Some(f64::INFINITY));
    assert_eq!(n.edges.len(), 9);
    assert_eq!(n.shares.len(), 10);
    assert!((n.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    for s in &n.shares {
        assert!((s - 0.1).abs() < 0.03, "{:?}", n.shares);
    }
    // exp(6u): the median is about exp(3).
    let q = n.quantiles.as_ref().unwrap();
    assert!((q.p50.ln() - 3.0).abs() < 0.15, "{q:?}");
    let count = &p.features[1];
    assert_eq!(count.statuses[&Status::NotFound], 500);
    assert_eq!(count.default_served, 500);
    let country = p.features[2].categorical.as_ref().unwrap();
    assert_eq!(country.top.len(), 4);
    assert!(country.other_share.abs() < 1e-12);
    let verified = &p.features[3];
    assert_eq!(
        (verified.nulls, verified.statuses[&Status::TimedOut]),
        (100, 100)
    );
    let seen = &p.features[4];
    assert_eq!(seen.default_unknown, 5000);
    assert_eq!(
        seen.numeric.as_ref().unwrap().measure,
        Measure::EpochSeconds
    );
    let tags = p.features[5].numeric.as_ref().unwrap();
    assert_eq!(
        (tags.measure, tags.min, tags.max),
        (Measure::Length, Some(0.0), Some(4.0))
    );
    // Five lengths: the deciles collapse into at most five distinct edges.
    assert!(tags.edges.len() <= 5, "{:?}", tags.edges);
    assert_eq!(tags.shares.len(), tags.edges.len() + 1);
    let email = &p.features[6];
    assert!(email.numeric.is_none() && email.categorical.is_none());
    assert_eq!((email.count, email.nulls), (5000, 0));
}

#[test]
fn a_profile_round_trips_through_its_json_file() {
    let p = profile_of(0..3000);
    let json = p.to_json();
    assert!(
        json.contains("\"format\": \"feature-gateway.profile\""),
        "{json}"
    );
    assert!(
        json.contains("\"max\": \"inf\""),
        "non-finite numbers are strings"
    );
    assert!(
        json.contains("\"NOT_FOUND\": 300"),
        "statuses by their wire names"
    );
    let back = Profile::from_json(&json).unwrap();
    assert_eq!(back.to_json(), json);
    assert!(back == p, "the profile read back differs");
    // The summaries are the sketches': one edited by hand is read from the sketch again.
    let q = p.features[0]
        .numeric
        .as_ref()
        .unwrap()
        .quantiles
        .as_ref()
        .unwrap();
    let edited = json.replacen(&format!("\"p50\": {:?}", q.p50), "\"p50\": 1e300", 1);
    assert_ne!(edited, json);
    assert!(Profile::from_json(&edited).unwrap() == p);
    let dir = tempfile_dir();
    let path = dir.join("profile.json");
    p.write(&path).unwrap();
    assert!(Profile::read(&path).unwrap() == p);
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "drift-test-{}-{}",
        std::process::id(),
        Rng(std::process::id() as u64).next()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_corrupt_or_foreign_file_is_refused_with_the_reason() {
    let p = profile_of(0..500);
    let json = p.to_json();
    let err = |text: &str| Profile::from_json(text).unwrap_err().to_string();
    assert!(
        err("{not json").starts_with("not JSON"),
        "{}",
        err("{not json")
    );
    assert!(err("{\"format\": \"x\"}").contains("its format is `x`"));
    assert!(err("{\"a\": 1}").contains("not a feature-gateway profile"));
    let v2 = json.replacen("\"version\": 1", "\"version\": 2", 1);
    assert!(err(&v2).contains("profile version 2; this build reads version 1"));
    let truncated = &json[..json.len() / 2];
    assert!(err(truncated).starts_with("not JSON"));
    // A sketch that is not base64, or not a sketch, or not of the counts it claims.
    let n = p.features[0].numeric.as_ref().unwrap();
    let bad = json.replacen(&n.kll, "!!!", 1);
    assert!(
        err(&bad).contains("`txn:amount`: its KLL sketch is not base64"),
        "{}",
        err(&bad)
    );
    let bad = json.replacen(&n.kll, "AAAA", 1);
    assert!(
        err(&bad).contains("its KLL sketch does not decode"),
        "{}",
        err(&bad)
    );
    let mut other = p.clone();
    other.features[2].categorical.as_mut().unwrap().count += 1;
    assert!(err(&other.to_json()).contains("its frequent-items sketch holds 500 values"));
    let bad = json.replacen("\"type\": \"double\"", "\"type\": \"decimal\"", 1);
    assert!(
        err(&bad).contains("unknown type `decimal`"),
        "{}",
        err(&bad)
    );
    let mut other = p.clone();
    other.features[0].ty = FeatureType::String;
    assert!(err(&other.to_json()).contains("a string feature has a numeric distribution"));
    let missing = Profile::read(std::path::Path::new("/nonexistent/profile.json"));
    assert!(matches!(missing, Err(ProfileError::Io { .. })));
}

#[test]
fn a_merge_of_two_profiles_is_the_profile_of_both() {
    let mut merged = profile_of(0..4000);
    merged.merge(&profile_of(4000..10_000)).unwrap();
    let all = profile_of(0..10_000);
    assert_eq!(merged.rows, all.rows);
    assert_eq!(merged.sources.len(), 2);
    for (m, a) in merged.features.iter().zip(&all.features) {
        // Counts are exact.
        assert_eq!(
            (
                m.count,
                &m.statuses,
                m.nulls,
                m.default_served,
                m.default_unknown
            ),
            (
                a.count,
                &a.statuses,
                a.nulls,
                a.default_served,
                a.default_unknown
            ),
            "{}",
            m.name
        );
        assert_eq!(m.null_rate, a.null_rate);
        // Categories seen fewer times than the sketch's map holds are exact too.
        assert_eq!(
            m.categorical,
            a.categorical.clone().map(|mut c| {
                c.frequent_items = m.categorical.as_ref().unwrap().frequent_items.clone();
                c
            }),
            "{}",
            m.name
        );
        // Quantiles and bins are the sketches', within their rank error.
        if let (Some(mn), Some(an)) = (&m.numeric, &a.numeric) {
            assert_eq!(
                (mn.count, mn.min, mn.max),
                (an.count, an.min, an.max),
                "{}",
                m.name
            );
            let (mq, aq) = (
                mn.quantiles.as_ref().unwrap(),
                an.quantiles.as_ref().unwrap(),
            );
            for (x, y) in [(mq.p25, aq.p25), (mq.p50, aq.p50), (mq.p75, aq.p75)] {
                let kll =
                    KllSketch::<KllFloat<f64>>::deserialize(&STANDARD.decode(&an.kll).unwrap())
                        .unwrap();
                let rank = |v: f64| {
                    kll.rank(&KllFloat::<f64>::new(v).unwrap(), SearchCriteria::Inclusive)
                        .unwrap()
                };
                assert!((rank(x) - rank(y)).abs() < 0.03, "{}: {x} vs {y}", m.name);
            }
            if mn.edges.len() == an.edges.len() {
                for (x, y) in mn.shares.iter().zip(&an.shares) {
                    assert!(
                        (x - y).abs() < 0.03,
                        "{}: {:?} vs {:?}",
                        m.name,
                        mn.shares,
                        an.shares
                    );
                }
            }
        }
    }
    // The merged profile reads back as any other.
    assert!(Profile::from_json(&merged.to_json()).unwrap() == merged);
}

#[test]
fn profiles_of_other_features_do_not_merge() {
    let mut a = profile_of(0..100);
    let mut b = profile_of(0..100);
    b.feature_service = "other".into();
    assert!(
        a.merge(&b)
            .unwrap_err()
            .to_string()
            .contains("of `fraud` cannot merge one of `other`")
    );
    let mut b = profile_of(0..100);
    b.definition_hash = Some("h2".into());
    assert!(
        a.merge(&b)
            .unwrap_err()
            .to_string()
            .contains("definition h1 cannot merge definition h2")
    );
    let mut b = profile_of(0..100);
    b.features[1].ty = FeatureType::Double;
    let e = a.merge(&b).unwrap_err().to_string();
    assert!(
        e.contains("u:count (int64)") && e.contains("u:count (double)"),
        "{e}"
    );
}

#[test]
fn log_defaults_are_known_but_for_stale_values() {
    assert_eq!(
        logged_default(Status::Present, &Value::Int64(1)),
        Some(false)
    );
    assert_eq!(
        logged_default(Status::NotFound, &Value::Int64(1)),
        Some(true)
    );
    assert_eq!(logged_default(Status::TimedOut, &Value::Null), Some(false));
    assert_eq!(logged_default(Status::Stale, &Value::Int64(1)), None);
}
