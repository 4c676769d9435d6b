use super::*;

fn catalog() -> Catalog {
    let mut c = Catalog::default();
    let view = |pairs: &[(&str, FeatureType)]| {
        pairs
            .iter()
            .map(|(n, t)| ((*n).to_owned(), *t))
            .collect::<BTreeMap<_, _>>()
    };
    c.views.insert(
        "txn".into(),
        view(&[
            ("amount", FeatureType::Double),
            ("country", FeatureType::String),
            ("at", FeatureType::Timestamp),
            ("items", FeatureType::Int64),
        ]),
    );
    c.views.insert(
        "user".into(),
        view(&[
            ("avg_amount", FeatureType::Double),
            ("country", FeatureType::String),
            ("txn_count", FeatureType::Int64),
            ("tags", FeatureType::StringList),
            ("tz", FeatureType::String),
        ]),
    );
    c
}

fn ok(source: &str, ty: FeatureType) -> Arc<Expression> {
    compile(source, ty, &catalog(), &Limits::default())
        .unwrap_or_else(|e| panic!("{source}: {e:?}"))
}

fn errors(source: &str, ty: FeatureType) -> Vec<String> {
    compile(source, ty, &catalog(), &Limits::default())
        .expect_err(source)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Evaluates with values by input name ("view.feature"); absent names are unavailable.
fn eval(e: &Expression, values: &[(&str, Value)]) -> Result<Value, EvalError> {
    let row: Vec<Option<&Value>> = e
        .inputs()
        .iter()
        .map(|r| {
            let name = format!("{}.{}", r.view, r.feature);
            values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
        })
        .collect();
    e.eval(&row)
}

#[test]
fn inputs_are_the_features_read_in_view_then_feature_order() {
    let e = ok("txn.amount / user.avg_amount", FeatureType::Double);
    let names: Vec<String> = e
        .inputs()
        .iter()
        .map(|r| format!("{}.{}:{}", r.view, r.feature, r.ty.name()))
        .collect();
    assert_eq!(names, ["txn.amount:double", "user.avg_amount:double"]);
    assert_eq!(
        eval(
            &e,
            &[
                ("txn.amount", Value::Double(30.0)),
                ("user.avg_amount", Value::Double(12.0))
            ]
        ),
        Ok(Value::Double(2.5))
    );
}

#[test]
fn type_errors_are_positioned_and_all_reported() {
    let found = errors(
        "txn.amount / user.txn_count +\n  txn.nope + missing.x",
        FeatureType::Double,
    );
    assert_eq!(
        found,
        [
            "1:12: no overload of `/` takes (double, int)",
            "2:6: view `txn` has no feature `nope`",
            "2:14: unknown reference `missing`: not a view, nor a variable",
        ],
        "{found:#?}"
    );
}

#[test]
fn the_result_must_have_the_declared_type() {
    let found = errors("user.txn_count * 2", FeatureType::Double);
    assert_eq!(
        found,
        [
            "1:1: the expression gives int, the feature is declared double (double); convert with double(...)"
        ]
    );
    ok("double(user.txn_count) * 2.0", FeatureType::Double);
    ok("txn.country != user.country", FeatureType::Bool);
    ok("txn.at.getHours(user.tz)", FeatureType::Int64);
    ok(
        "user.tags.filter(t, t.startsWith('vip'))",
        FeatureType::StringList,
    );
    ok(
        "math.greatest(txn.amount, user.avg_amount)",
        FeatureType::Double,
    );
}

#[test]
fn parse_errors_carry_their_position() {
    let found = errors("txn.amount +\n  (", FeatureType::Double);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("2:4: Syntax error"), "{found:?}");
}

#[test]
fn missing_inputs_fail_unless_tested_with_has() {
    let e = ok("txn.amount / user.avg_amount", FeatureType::Double);
    assert_eq!(
        eval(&e, &[("txn.amount", Value::Double(1.0))]),
        Err(EvalError::Missing(1))
    );
    let e = ok(
        "has(user.avg_amount) ? txn.amount / user.avg_amount : -1.0",
        FeatureType::Double,
    );
    assert_eq!(
        eval(&e, &[("txn.amount", Value::Double(1.0))]),
        Ok(Value::Double(-1.0))
    );
    assert_eq!(
        eval(
            &e,
            &[
                ("txn.amount", Value::Double(1.0)),
                ("user.avg_amount", Value::Double(4.0))
            ]
        ),
        Ok(Value::Double(0.25))
    );
}

#[test]
fn evaluation_errors_are_reasons_not_panics() {
    let e = ok("user.txn_count / txn.items", FeatureType::Int64);
    assert_eq!(
        eval(
            &e,
            &[
                ("user.txn_count", Value::Int64(3)),
                ("txn.items", Value::Int64(0))
            ]
        ),
        Err(EvalError::Failed("division by zero".into()))
    );
    let e = ok("user.txn_count + txn.items", FeatureType::Int64);
    assert_eq!(
        eval(
            &e,
            &[
                ("user.txn_count", Value::Int64(i64::MAX)),
                ("txn.items", Value::Int64(1))
            ]
        ),
        Err(EvalError::Failed("integer overflow in add".into()))
    );
    // IEEE division: no error.
    let e = ok("txn.amount / user.avg_amount", FeatureType::Double);
    assert_eq!(
        eval(
            &e,
            &[
                ("txn.amount", Value::Double(1.0)),
                ("user.avg_amount", Value::Double(0.0))
            ]
        ),
        Ok(Value::Double(f64::INFINITY))
    );
}

#[test]
fn hostile_expressions_are_refused_at_load_time() {
    let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(compile(&deep, FeatureType::Int64, &catalog(), &Limits::default()).is_err());
    let wide = vec!["txn.items"; 300].join(" + ");
    let found = errors(&wide, FeatureType::Int64);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("the expression nests deeper than 48 levels"),
        "{found:?}"
    );
    let wide = format!("size([{}])", vec!["1"; 300].join(", "));
    assert_eq!(
        errors(&wide, FeatureType::Int64),
        ["1:5: the expression has 302 nodes; at most 256 are allowed"]
    );
    // Within the limits, the deepest expression evaluates on a test thread's 2 MiB stack (the
    // gateway's runtime threads have as much), in a debug build too.
    let sum = vec!["txn.items"; 47].join(" + ");
    let e = ok(&sum, FeatureType::Int64);
    assert_eq!(
        eval(&e, &[("txn.items", Value::Int64(2))]),
        Ok(Value::Int64(94))
    );
    let long = format!("'{}'", "a".repeat(5000));
    assert!(errors(&long, FeatureType::String)[0].contains("at most 4096"));
    let nested = "user.tags.all(a, user.tags.exists(b, a == b))";
    let found = errors(nested, FeatureType::Bool);
    assert!(
        found
            .iter()
            .any(|e| e.contains("inside another one's body")),
        "{found:?}"
    );
    let growing = "user.tags.map(t, t + t + t)";
    assert!(errors(growing, FeatureType::StringList)[0].contains("inside a macro's body"));
    assert!(
        errors("user.tz.matches(txn.country)", FeatureType::Bool)[0].contains("string literal")
    );
    assert!(errors("user.tz.matches('(')", FeatureType::Bool)[0].contains("invalid pattern"));
    let huge_regex = "user.tz.matches('(a{1000}){1000}')";
    assert!(errors(huge_regex, FeatureType::Bool)[0].contains("invalid pattern"));
    assert!(
        errors("user.tz.replace('a', 'b')", FeatureType::String)[0].contains("unknown function")
    );
    // A macro's body runs once per element, up to 1,024 for an input list: its cost counts so.
    let body = (0..15)
        .map(|k| format!("t.size() > {k}"))
        .collect::<Vec<_>>()
        .join(" || ");
    let found = errors(&format!("user.tags.exists(t, {body})"), FeatureType::Bool);
    assert!(found[0].contains("may evaluate up to"), "{found:?}");
    // The same body over a literal list of three elements costs little.
    ok(
        &format!("['a', 'b', 'c'].exists(t, {body})"),
        FeatureType::Bool,
    );
    ok(
        "user.tags.exists(t, t.startsWith('vip'))",
        FeatureType::Bool,
    );
}

#[test]
fn oversized_inputs_are_refused_at_run_time() {
    let e = ok("size(user.tags)", FeatureType::Int64);
    let big = Value::StringList(vec!["x".into(); 5000]);
    assert_eq!(
        eval(&e, &[("user.tags", big)]),
        Err(EvalError::Failed(
            "input user.tags is too large for an expression (5000 elements, limit 1024)".into()
        ))
    );
}

#[test]
fn timestamps_cross_both_ways() {
    let e = ok("txn.at + duration('90s')", FeatureType::Timestamp);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
    assert_eq!(
        eval(&e, &[("txn.at", Value::Timestamp(t))]),
        Ok(Value::Timestamp(t + std::time::Duration::from_secs(90)))
    );
    let before = std::time::UNIX_EPOCH - std::time::Duration::from_millis(1500);
    let e = ok("txn.at", FeatureType::Timestamp);
    assert_eq!(
        eval(&e, &[("txn.at", Value::Timestamp(before))]),
        Ok(Value::Timestamp(before))
    );
}
