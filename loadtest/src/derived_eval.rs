//! `derived-eval`: what one derived feature's expression costs to evaluate, alone.
//!
//! `bench.py derived` measures the real gateway serving the demo's `fraud_v2` (ten derived
//! features) beside `fraud_v1` (the same twenty features without them). This tool takes the
//! difference apart: it compiles every derived feature of the demo's configuration exactly as
//! the gateway does, and times `Expression::evaluate` (what the gateway calls per row: the
//! value and its status) over rows of random inputs of the declared types. It then times the
//! costliest expressions the load-time limits admit, over inputs at the run-time limits (a
//! 1,024-element list, 16 KiB strings): the bound on what one evaluation can cost. Output:
//! JSON, one object per line.

use std::{hint::black_box, path::Path, time::Instant};

use clap::Parser;
use fetcher_api::{FeatureType, Value};
use rand::{Rng, SeedableRng, rngs::SmallRng};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEMO: &str = include_str!("../../services/gateway/demo/demo.toml");

#[derive(Parser)]
#[command(about = "Time the evaluation of derived features' expressions")]
struct Args {
    /// Evaluations per expression.
    #[arg(long, default_value_t = 200_000)]
    iterations: u32,
    /// Evaluations of each worst-case expression.
    #[arg(long, default_value_t = 20)]
    worst_iterations: u32,
}

fn random_value(ty: FeatureType, rng: &mut SmallRng) -> Value {
    match ty {
        FeatureType::Int64 => Value::Int64(rng.random_range(0..3000)),
        FeatureType::Double => Value::Double(rng.random_range(1.0..1000.0)),
        FeatureType::String => {
            let words = ["US", "GB", "CA", "FR", "ecom", "pos", "atm"];
            Value::String(words[rng.random_range(0..words.len())].to_owned())
        }
        FeatureType::Bool => Value::Bool(rng.random()),
        other => panic!("no generator for {other:?}"),
    }
}

/// Mean nanoseconds per evaluation of `expr` over `rows`, cycling through them, every input
/// PRESENT: `Expression::evaluate`, as the gateway calls it (the value with its status).
fn time(expr: &derived::Expression, rows: &[Vec<Value>], iterations: u32) -> f64 {
    let bound: Vec<Vec<(derived::Status, &Value)>> = rows
        .iter()
        .map(|row| row.iter().map(|v| (derived::Status::Present, v)).collect())
        .collect();
    for row in &bound {
        let _ = black_box(expr.evaluate(row));
    }
    let started = Instant::now();
    for k in 0..iterations as usize {
        let _ = black_box(expr.evaluate(&bound[k % bound.len()]));
    }
    started.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let args = Args::parse();
    let config = gateway_config::load_str(
        DEMO,
        "demo.toml",
        Path::new("."),
        &fetcher_builtin::registry(),
    )
    .unwrap_or_else(|e| panic!("the demo configuration loads: {e}"));
    let mut rng = SmallRng::seed_from_u64(7);
    let mut total = 0.0;
    let mut count = 0;
    for view in config.views.values().filter(|v| v.derived) {
        for (name, feature) in &view.features {
            let Some(expr) = &feature.expr else { continue };
            let rows: Vec<Vec<Value>> = (0..1024)
                .map(|_| {
                    expr.inputs()
                        .iter()
                        .map(|i| random_value(i.ty, &mut rng))
                        .collect()
                })
                .collect();
            let ns = time(expr, &rows, args.iterations);
            total += ns;
            count += 1;
            println!(
                "{}",
                serde_json::json!({"expression": format!("{}:{name}", view.name), "inputs": expr.inputs().len(), "ns": ns.round()})
            );
        }
    }
    println!(
        "{}",
        serde_json::json!({"expressions": count, "mean_ns": (total / f64::from(count.max(1))).round()})
    );

    // The costliest shapes the limits admit, over inputs at the run-time limits.
    let limits = derived::Limits::default();
    let mut catalog = derived::Catalog::default();
    catalog.views.insert(
        "x".into(),
        [
            ("list".to_owned(), FeatureType::DoubleList),
            ("words".to_owned(), FeatureType::StringList),
            ("text".to_owned(), FeatureType::String),
        ]
        .into_iter()
        .collect(),
    );
    let long_text = "ab".repeat(limits.max_text_bytes / 2);
    let list = Value::DoubleList((0..limits.max_list_len).map(|i| i as f64).collect());
    let words = Value::StringList(vec!["x".repeat(64); limits.max_list_len]);
    // The longest arithmetic body a macro over an input list may have.
    let admitted = |terms: usize| {
        let body = (0..terms)
            .map(|k| format!("v * {k}.5"))
            .collect::<Vec<_>>()
            .join(" + ");
        let source = format!("math.greatest(x.list.map(v, {body}))");
        derived::compile(&source, FeatureType::Double, &catalog, &limits).map(|_| source)
    };
    let longest = (1..64)
        .map_while(|terms| admitted(terms).ok())
        .last()
        .expect("a one-term body is admitted");
    let worst = [
        (
            "the longest arithmetic body admitted over a 1,024-element list (map)",
            longest,
            FeatureType::Double,
        ),
        (
            "a pattern over a 16 KiB string",
            "x.text.matches('(a|b)+(ab){2,8}[a-z]*$')".to_owned(),
            FeatureType::Bool,
        ),
        (
            "16 KiB strings joined and searched 30 times",
            (0..30)
                .map(|_| "(x.text + x.text).contains('ba')")
                .collect::<Vec<_>>()
                .join(" && "),
            FeatureType::Bool,
        ),
        (
            "a filter over 1,024 strings",
            "size(x.words.filter(w, w.startsWith('x'))) > 0".to_owned(),
            FeatureType::Bool,
        ),
    ];
    for (what, source, ty) in worst {
        let expr = derived::compile(&source, ty, &catalog, &limits)
            .unwrap_or_else(|e| panic!("`{what}` is admitted: {e:?}"));
        let row: Vec<Value> = expr
            .inputs()
            .iter()
            .map(|i| match i.feature.as_str() {
                "list" => list.clone(),
                "words" => words.clone(),
                _ => Value::String(long_text.clone()),
            })
            .collect();
        let ns = time(&expr, std::slice::from_ref(&row), args.worst_iterations);
        let bound: Vec<Option<&Value>> = row.iter().map(Some).collect();
        if let Err(e) = expr.eval(&bound) {
            panic!("`{what}` fails: {e:?}");
        }
        println!(
            "{}",
            serde_json::json!({"worst_case": what, "nodes_limit": limits.max_nodes, "us": (ns / 1000.0).round()})
        );
    }
}
