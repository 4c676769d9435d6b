//! Planning and execution against an in-memory source kind registered for these tests (the
//! registry is the extension point any embedder uses), with tokio's paused clock for deadlines.

use super::*;
use crate::plan;
use async_trait::async_trait;
use fetcher_api::{
    BuildError, CellError, FeatureType, FetchError, Fetcher, FetcherFactory, Registry, SourceSpec,
};
use gateway_config as config;
use std::{
    path::Path,
    sync::{Arc, Mutex},
};

/// A source kind whose views hold their rows inline:
/// `rows = { "k1" = { f = 1 } }`, plus an optional `delay_ms` and a `fail` error class.
#[derive(Clone, Debug, Default)]
struct MemoryFactory {
    calls: Arc<Mutex<Vec<(String, usize)>>>,
}

#[derive(Debug)]
struct Memory {
    views: std::collections::HashMap<String, (toml::Table, Duration, Option<String>)>,
    calls: Arc<Mutex<Vec<(String, usize)>>>,
}

#[async_trait]
impl FetcherFactory for MemoryFactory {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn validate(&self, _: &SourceSpec) -> Vec<fetcher_api::Problem> {
        Vec::new()
    }
    async fn build(&self, source: &SourceSpec) -> Result<Arc<dyn Fetcher>, BuildError> {
        let views = source
            .views
            .iter()
            .map(|v| {
                let rows = v
                    .options
                    .0
                    .get("rows")
                    .and_then(|r| r.as_table())
                    .cloned()
                    .unwrap_or_default();
                let delay = v
                    .options
                    .0
                    .get("delay_ms")
                    .and_then(|d| d.as_integer())
                    .unwrap_or(0);
                let fail = v
                    .options
                    .0
                    .get("fail")
                    .and_then(|f| f.as_str())
                    .map(str::to_owned);
                (
                    v.name.clone(),
                    (rows, Duration::from_millis(delay as u64), fail),
                )
            })
            .collect();
        Ok(Arc::new(Memory {
            views,
            calls: self.calls.clone(),
        }))
    }
}

#[async_trait]
impl Fetcher for Memory {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        self.calls
            .lock()
            .unwrap()
            .push((request.view.to_string(), request.keys.len()));
        let (rows, delay, fail) = &self.views[&*request.view];
        tokio::time::sleep(*delay).await;
        if let Some(class) = fail {
            return Err(match class.as_str() {
                "unavailable" => FetchError::unavailable("injected"),
                _ => FetchError::internal("injected"),
            });
        }
        Ok(request
            .keys
            .iter()
            .map(|key| {
                let key = key
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("|");
                match rows.get(&key).and_then(|r| r.as_table()) {
                    None => Row::NotFound,
                    Some(row) => Row::Found(Record {
                        cells: request
                            .features
                            .iter()
                            .map(|f| match row.get(f) {
                                None => Ok(Value::Null),
                                Some(toml::Value::Integer(i)) => Ok(Value::Int64(*i)),
                                Some(toml::Value::Float(d)) => Ok(Value::Double(*d)),
                                Some(toml::Value::String(s)) if s == "!bad" => {
                                    Err(CellError("undecodable".into()))
                                }
                                Some(toml::Value::String(s)) => Ok(Value::String(s.clone())),
                                Some(other) => Ok(Value::String(format!("{other:?}"))),
                            })
                            .collect(),
                        event_time: row
                            .get("_age_s")
                            .and_then(|a| a.as_integer())
                            .map(|a| SystemTime::now() - Duration::from_secs(a as u64)),
                    }),
                }
            })
            .collect())
    }
}

const CONFIG: &str = r#"
[entities.user_id]
type = "string"
[entities.merchant_id]
type = "string"
[entities.mcc]
type = "int64"
from = "merchants:mcc"
[entities.slow_v]
type = "int64"
from = "slow:v"
[entities.broken_v]
type = "int64"
from = "broken:v"
[entities.order_id]
type = "string"
from = "context:order_id"

[sources.mem]
kind = "memory"
timeout = "1s"
[sources.slow]
kind = "memory"
[sources.broken]
kind = "memory"
[sources.request]
kind = "request"

[views.users]
source = "mem"
entities = ["user_id"]
max_age = "1h"
rows = { u1 = { age = 30, score = 0.9 }, u2 = { age = 40, score = "!bad" }, old = { age = 50, _age_s = 7200 }, u3 = { age = "forty" } }
[views.users.features]
age = { type = "int64" }
score = { type = "double" }

[views.merchants]
source = "mem"
entities = ["merchant_id"]
rows = { m1 = { mcc = 5411 }, m2 = { mcc = 9999 } }
features = { mcc = { type = "int64" } }

[views.mcc_risk]
source = "mem"
entities = ["mcc"]
rows = { 5411 = { rate = 0.01 } }
features = { rate = { type = "double" } }

[views.slow]
source = "slow"
entities = ["user_id"]
delay_ms = 500
rows = { u1 = { v = 1 } }
features = { v = { type = "int64" } }

[views.broken]
source = "broken"
entities = ["user_id"]
fail = "unavailable"
features = { v = { type = "int64" } }

[views.after_slow]
source = "mem"
entities = ["slow_v"]
rows = { 1 = { x = 7 } }
features = { x = { type = "int64" } }

[views.after_broken]
source = "mem"
entities = ["broken_v"]
rows = { 1 = { x = 7 } }
features = { x = { type = "int64" } }

[views.orders]
source = "mem"
entities = ["order_id"]
rows = { o1 = { total = 12.5 } }
features = { total = { type = "double" } }

[views.txn]
source = "request"
features = { amount = { type = "double" } }

[views.risk]
kind = "derived"
[views.risk.features]
age_score = { type = "double", expr = "double(users.age) * users.score" }
slow_plus = { type = "int64", expr = "slow.v + 1" }
broken_or = { type = "int64", expr = "has(broken.v) ? broken.v : -7" }
per_amount = { type = "double", expr = "txn.amount / users.score" }
by_zero = { type = "int64", expr = "users.age / (merchants.mcc - 5411)" }
twice = { type = "double", expr = "risk.age_score * 2.0" }
rate_pct = { type = "double", expr = "mcc_risk.rate * 100.0" }

[feature_services.derived]
deadline = "50ms"
features = ["risk:*"]
[feature_services.derived.defaults]
"risk:slow_plus" = 0

[feature_services.all]
deadline = "50ms"
features = ["txn:amount", "users:age", "users:score", "mcc_risk:rate", "merchants:mcc", "slow:v", "broken:v"]
[feature_services.all.defaults]
"broken:v" = -1
"merchants:mcc" = 0

[feature_services.deps]
deadline = "50ms"
features = ["after_slow:x", "after_broken:x", "mcc_risk:rate"]

[feature_services.by_context]
deadline = "50ms"
features = ["orders:total", "txn:amount"]
"#;

struct Setup {
    plan: Plan,
    services: Vec<Option<gateway_stack::GatewayService>>,
    calls: Arc<Mutex<Vec<(String, usize)>>>,
}

async fn setup() -> Setup {
    let factory = MemoryFactory::default();
    let calls = factory.calls.clone();
    let mut registry = Registry::new();
    registry.register(factory);
    let config = config::load_str(CONFIG, "t.toml", Path::new("."), &registry).unwrap();
    let fs = &config.feature_services["all"];
    let plan = plan::compile(&config, "all", "", fs.deadline, &fs.features, &fs.defaults).unwrap();
    let gateway = crate::Gateway::build(config, &registry).await.unwrap();
    // The gateway's stacks, reused as the executor sees them.
    let services = gateway_services(&gateway);
    Setup {
        plan,
        services,
        calls,
    }
}

fn gateway_services(gateway: &crate::Gateway) -> Vec<Option<gateway_stack::GatewayService>> {
    gateway
        .sources()
        .iter()
        .map(|s| {
            s.fetcher.clone().map(|f| {
                gateway_stack::stack(
                    f,
                    &gateway_config::SourceConfig {
                        max_concurrency: 16,
                        ..gateway_config::SourceConfig::new(&s.name, &s.kind)
                    },
                )
            })
        })
        .collect()
}

fn row(user: &str, merchant: &str, amount: Option<f64>) -> RowInput {
    RowInput {
        entities: vec![
            KeyPart::String(user.into()),
            KeyPart::String(merchant.into()),
        ],
        context: vec![amount.map(Value::Double)],
    }
}

fn statuses(served: &[Served]) -> Vec<Status> {
    served.iter().map(|s| s.status).collect()
}

/// Each feature's reason as the wire carries it ("" for none), after checking that every status
/// but PRESENT has one and PRESENT has none.
fn details(plan: &Plan, served: &[Served]) -> Vec<String> {
    served
        .iter()
        .map(|s| {
            assert_eq!(
                s.detail.is_some(),
                s.status != Status::Present,
                "a reason for every status but PRESENT: {s:?}"
            );
            s.detail
                .clone()
                .map_or_else(String::new, |d| d.into_text(plan))
        })
        .collect()
}

/// Plans feature service `name` of [`CONFIG`] and builds the executor's view of its sources.
async fn setup_service(name: &str) -> (Plan, Vec<Option<gateway_stack::GatewayService>>) {
    let mut registry = Registry::new();
    registry.register(MemoryFactory::default());
    let config = config::load_str(CONFIG, "t.toml", Path::new("."), &registry).unwrap();
    let fs = &config.feature_services[name];
    let plan = plan::compile(&config, name, "", fs.deadline, &fs.features, &fs.defaults).unwrap();
    let gateway = crate::Gateway::build(config, &registry).await.unwrap();
    let services = gateway_services(&gateway);
    (plan, services)
}

#[tokio::test]
async fn plan_stages_follow_dependent_keys() {
    let s = setup().await;
    let view_stage: Vec<(&str, usize)> =
        s.plan.fetches.iter().map(|f| (&*f.view, f.stage)).collect();
    assert!(view_stage.contains(&("users", 0)));
    assert!(view_stage.contains(&("merchants", 0)));
    assert!(view_stage.contains(&("mcc_risk", 1)), "{view_stage:?}");
    assert_eq!(s.plan.stages.len(), 2);
    assert_eq!(
        s.plan
            .entities
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        ["user_id", "merchant_id"]
    );
    assert_eq!(s.plan.outputs[0].origin, plan::Origin::Context(0));
}

#[tokio::test(start_paused = true)]
async fn a_slow_source_times_out_at_the_deadline_while_the_others_are_served() {
    let s = setup().await;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(50);
    let execution = execute(
        &s.plan,
        &s.services,
        &[row("u1", "m1", Some(12.5))],
        deadline,
    )
    .await;
    // Paused time: the run ends exactly at the deadline, not at the slow source's 500 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(50));
    let served = &execution.rows[0];
    assert_eq!(
        statuses(served),
        [
            Status::Present,     // txn:amount
            Status::Present,     // users:age
            Status::Present,     // users:score
            Status::Present,     // mcc_risk:rate, via the merchant's mcc
            Status::Present,     // merchants:mcc
            Status::TimedOut,    // slow:v
            Status::SourceError, // broken:v
        ]
    );
    assert_eq!(served[0].value, Value::Double(12.5));
    assert_eq!(served[1].value, Value::Int64(30));
    assert_eq!(served[3].value, Value::Double(0.01));
    assert_eq!(served[5].value, Value::Null);
    // The default is served with the status that explains it.
    assert_eq!(served[6].value, Value::Int64(-1));
    assert!(served[6].default_applied);
    let details = details(&s.plan, served);
    assert_eq!(details[5], "timeout");
    assert_eq!(details[6], "unavailable");
    assert_eq!(execution.stage_times.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn statuses_say_why_a_value_is_missing() {
    let s = setup().await;
    let deadline = Instant::now() + Duration::from_millis(50);
    let rows = [
        row("u2", "m2", None), // undecodable cell; mcc 9999 has no risk row; no context
        row("old", "m1", None), // older than the view's max age
        row("u3", "nope", None), // a string where an int64 is declared; unknown merchant
        row("ghost", "m1", None), // unknown user
    ];
    let execution = execute(&s.plan, &s.services, &rows, deadline).await;
    let r = &execution.rows;
    let d: Vec<Vec<String>> = r.iter().map(|row| details(&s.plan, row)).collect();
    // txn:amount missing from the context
    assert_eq!(r[0][0].status, Status::NotFound);
    assert_eq!(d[0][0], "context value missing");
    assert_eq!(r[0][1].status, Status::Present);
    assert_eq!(r[0][2].status, Status::SourceError);
    assert_eq!(d[0][2], "undecodable");
    assert_eq!(r[0][3].status, Status::NotFound);
    assert_eq!(d[0][3], "no row for mcc");
    assert_eq!(r[1][1].status, Status::OutsideMaxAge);
    assert_eq!(r[1][1].value, Value::Null);
    assert!(r[1][1].event_time.is_some());
    assert_eq!(d[1][1], "event time 2h ago, max_age 1h");
    assert_eq!(r[2][1].status, Status::SourceError);
    assert_eq!(d[2][1], "expected int64, got string");
    assert_eq!(r[2][2].status, Status::NullValue);
    assert_eq!(d[2][2], "null in the row");
    // No merchant, so no mcc: the dependent view reads as NOT_FOUND (its key is unavailable).
    // The merchant's own feature is served its default, and the reason stays the missing row.
    assert_eq!(r[2][4].status, Status::NotFound);
    assert!(r[2][4].default_applied);
    assert_eq!(r[2][4].value, Value::Int64(0));
    assert_eq!(d[2][4], "no row for merchant_id");
    assert_eq!(r[2][3].status, Status::NotFound);
    assert_eq!(d[2][3], "key unavailable: no row");
    assert_eq!(r[3][1].status, Status::NotFound);
    assert_eq!(d[3][1], "no row for user_id");
}

#[tokio::test(start_paused = true)]
async fn a_key_or_value_from_the_context_says_why_it_is_missing() {
    let (plan, services) = setup_service("by_context").await;
    let deadline = Instant::now() + Duration::from_millis(50);
    let context_row = |order: Option<Value>, amount: Option<Value>| RowInput {
        entities: Vec::new(),
        context: plan
            .context
            .iter()
            .map(|c| match c.name.as_str() {
                "order_id" => order.clone(),
                _ => amount.clone(),
            })
            .collect(),
    };
    let rows = [
        context_row(Some(Value::String("o1".into())), Some(Value::Double(1.0))),
        context_row(None, None),
        context_row(Some(Value::Null), Some(Value::Null)),
        context_row(Some(Value::String("o2".into())), Some(Value::Double(1.0))),
    ];
    let execution = execute(&plan, &services, &rows, deadline).await;
    let r = &execution.rows;
    let d: Vec<Vec<String>> = r.iter().map(|row| details(&plan, row)).collect();
    assert_eq!(statuses(&r[0]), [Status::Present, Status::Present]);
    assert_eq!(statuses(&r[1]), [Status::NotFound, Status::NotFound]);
    assert_eq!(
        d[1],
        [
            "key unavailable: context value missing",
            "context value missing"
        ]
    );
    assert_eq!(statuses(&r[2]), [Status::NotFound, Status::NullValue]);
    assert_eq!(
        d[2],
        ["key unavailable: context value null", "null in the context"]
    );
    assert_eq!(statuses(&r[3]), [Status::NotFound, Status::Present]);
    assert_eq!(d[3], ["no row for order_id", ""]);
}

#[test]
fn reasons_name_every_key_and_durations_read_short() {
    let names = |n: &[&str]| and_list(&n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    assert_eq!(names(&[]), "");
    assert_eq!(names(&["user_id"]), "user_id");
    assert_eq!(names(&["user_id", "card_id"]), "user_id and card_id");
    assert_eq!(names(&["a", "b", "c"]), "a, b and c");
    let cases = [
        (Duration::from_millis(250), "250ms"),
        (Duration::from_millis(1_500), "1s"),
        (Duration::from_secs(90), "1m 30s"),
        (Duration::from_secs(3_600), "1h"),
        (Duration::from_secs(30 * 86_400), "30d"),
        (Duration::from_secs(41 * 86_400 + 3 * 3_600 + 59), "41d 3h"),
    ];
    for (d, text) in cases {
        assert_eq!(short_duration(d), text);
    }
    let plan = Plan {
        name: String::new(),
        description: String::new(),
        deadline: Duration::ZERO,
        definition_hash: String::new(),
        outputs: Vec::new(),
        feature_names: Default::default(),
        fetches: vec![plan::Fetch {
            view: "v".into(),
            source: 0,
            source_name: "s".into(),
            source_kind: "k".into(),
            features: Vec::new().into(),
            types: Vec::new(),
            keys: Vec::new(),
            entities: vec!["user_id".into(), "merchant_id".into()],
            max_age: None,
            stage: 0,
        }],
        stages: Vec::new(),
        entities: Vec::new(),
        context: Vec::new(),
        derived: Vec::new(),
        derived_inputs: Vec::new(),
        logged_inputs: Vec::new(),
        own: (0, 0),
    };
    assert_eq!(
        Detail::NoRow { fetch: 0 }.into_text(&plan),
        "no row for user_id and merchant_id"
    );
    assert_eq!(
        Detail::TooOld {
            age: Duration::from_secs(41 * 86_400),
            max_age: Duration::from_secs(30 * 86_400)
        }
        .into_text(&plan),
        "event time 41d ago, max_age 30d"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_fetches_each_distinct_key_once_per_view() {
    let s = setup().await;
    let deadline = Instant::now() + Duration::from_millis(50);
    let rows = [
        row("u1", "m1", Some(1.0)),
        row("u2", "m1", Some(2.0)),
        row("u1", "m1", Some(3.0)),
    ];
    let execution = execute(&s.plan, &s.services, &rows, deadline).await;
    assert_eq!(execution.rows.len(), 3);
    // Row order is kept and duplicate keys share one fetched row.
    assert_eq!(execution.rows[2][0].value, Value::Double(3.0));
    assert_eq!(execution.rows[0][1].value, execution.rows[2][1].value);
    let calls = s.calls.lock().unwrap().clone();
    let keys_of = |view: &str| -> Vec<usize> {
        calls
            .iter()
            .filter(|(v, _)| v == view)
            .map(|(_, n)| *n)
            .collect()
    };
    assert_eq!(keys_of("users"), [2]);
    assert_eq!(keys_of("merchants"), [1]);
    assert_eq!(keys_of("mcc_risk"), [1]);
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_never_waits() {
    let s = setup().await;
    let started = Instant::now();
    let execution = execute(&s.plan, &s.services, &[row("u1", "m1", Some(1.0))], started).await;
    // Nothing waits: a source that answers without waiting (an in-memory table, later a cache
    // hit) is still served, one that would wait is TIMED_OUT at once.
    assert_eq!(started.elapsed(), Duration::ZERO);
    let st = statuses(&execution.rows[0]);
    assert_eq!(st[1], Status::Present);
    assert_eq!(st[5], Status::TimedOut);
}

#[test]
fn distinct_keys_map_rows_to_unique_keys() {
    let keys = [Some("a"), None, Some("b"), Some("a")];
    let (unique, row_of) = distinct_keys(keys.len(), |r| {
        keys[r].map(|k| vec![KeyPart::String(k.into())])
    });
    assert_eq!(unique.len(), 2);
    assert_eq!(row_of, [Some(0), None, Some(1), Some(0)]);
    let (unique, row_of) = distinct_keys(1, |_| None);
    assert!(unique.is_empty());
    assert_eq!(row_of, [None]);
    let _ = FeatureType::Int64;
}

#[tokio::test(start_paused = true)]
async fn a_dependent_key_lost_to_a_timeout_or_failure_says_so() {
    let (plan, services) = setup_service("deps").await;
    let deadline = Instant::now() + Duration::from_millis(50);
    let execution = execute(&plan, &services, &[row("u1", "nope", None)], deadline).await;
    let served = &execution.rows[0];
    // The key came from a view that timed out / failed: not "no row" for a training set.
    assert_eq!(
        statuses(served),
        [Status::TimedOut, Status::SourceError, Status::NotFound]
    );
    assert_eq!(
        details(&plan, served),
        [
            "key unavailable: its source timed out",
            "key unavailable: its source failed",
            // No merchant row, so no mcc to look the risk up by.
            "key unavailable: no row",
        ]
    );
}

#[tokio::test]
async fn values_from_the_cache_past_their_ttl_say_so() {
    let s = setup().await;
    let fetch_of = |view: &str| {
        s.plan
            .fetches
            .iter()
            .position(|f| &*f.view == view)
            .unwrap()
    };
    let (users, merchants) = (fetch_of("users"), fetch_of("merchants"));
    let cell_of = |fetch: usize, feature: &str| {
        s.plan.fetches[fetch]
            .features
            .iter()
            .position(|f| f == feature)
            .unwrap()
    };
    let mut cells = vec![Ok(Value::Null); s.plan.fetches[users].features.len()];
    cells[cell_of(users, "age")] = Ok(Value::Int64(30));
    let stale = |row: Row| Outcome::Ran {
        row_of: vec![Some(0)],
        slots: vec![Slot::Stale {
            row,
            age: Duration::from_secs(600),
            error: Arc::new(FetchError::unavailable("down")),
        }],
        latency: Duration::from_millis(1),
    };
    let mut outcomes: Vec<Outcome> = s.plan.fetches.iter().map(|_| Outcome::Skipped).collect();
    outcomes[users] = stale(Row::Found(Record {
        cells,
        event_time: None,
    }));
    outcomes[merchants] = stale(Row::NotFound);
    let (rows, _) = assemble(
        &s.plan,
        &[row("u1", "m1", Some(1.0))],
        outcomes,
        SystemTime::now(),
    );
    let served = &rows[0];
    let d = details(&s.plan, served);
    // A cached value is STALE; a cached null or missing row keeps its own status and reason.
    assert_eq!(served[1].status, Status::Stale);
    assert_eq!(served[1].cache, CacheUse::Stale);
    assert_eq!(d[1], "source failed or slow; cached value served");
    assert_eq!(served[2].status, Status::NullValue);
    assert_eq!(d[2], "null in the row");
    assert_eq!(served[4].status, Status::NotFound);
    assert_eq!(d[4], "no row for merchant_id");
}

#[tokio::test(start_paused = true)]
async fn derived_features_are_evaluated_from_their_inputs_with_their_statuses() {
    let (plan, services) = setup_service("derived").await;
    // Only derived features are outputs: their inputs' views are fetched for them alone.
    let fetched: Vec<&str> = plan.fetches.iter().map(|f| &*f.view).collect();
    for view in ["users", "slow", "broken", "merchants", "mcc_risk"] {
        assert!(fetched.contains(&view), "{view} not fetched: {fetched:?}");
    }
    let deadline = Instant::now() + Duration::from_millis(50);
    let input = RowInput {
        entities: vec![KeyPart::String("u1".into()), KeyPart::String("m1".into())],
        context: vec![Some(Value::Double(12.5))],
    };
    let execution = execute(&plan, &services, &[input], deadline).await;
    let served = &execution.rows[0];
    let reasons = details(&plan, served);
    let by_name = |name: &str| {
        let i = plan
            .outputs
            .iter()
            .position(|o| o.name == format!("risk:{name}"))
            .unwrap();
        (&served[i], reasons[i].as_str())
    };
    let (s, _) = by_name("age_score");
    assert_eq!(
        (s.status, &s.value),
        (Status::Present, &Value::Double(30.0 * 0.9))
    );
    let (s, _) = by_name("twice");
    assert_eq!(
        (s.status, &s.value),
        (Status::Present, &Value::Double(30.0 * 0.9 * 2.0))
    );
    let (s, _) = by_name("per_amount");
    assert_eq!(
        (s.status, &s.value),
        (Status::Present, &Value::Double(12.5 / 0.9))
    );
    // A stage-1 view (keyed by the merchant's mcc) read by an expression.
    let (s, _) = by_name("rate_pct");
    assert_eq!(
        (s.status, &s.value),
        (Status::Present, &Value::Double(0.01 * 100.0))
    );
    // A timed-out input passes its status on; the default applies as for any feature.
    let (s, detail) = by_name("slow_plus");
    assert_eq!((s.status, &s.value), (Status::TimedOut, &Value::Int64(0)));
    assert!(s.default_applied);
    assert_eq!(detail, "input slow.v TIMED_OUT");
    // A failed input tested with has() is not read: the expression's own answer.
    let (s, _) = by_name("broken_or");
    assert_eq!((s.status, &s.value), (Status::Present, &Value::Int64(-7)));
    // An evaluation error is the feature's status, never the request's.
    let (s, detail) = by_name("by_zero");
    assert_eq!((s.status, &s.value), (Status::SourceError, &Value::Null));
    assert_eq!(detail, "expression: division by zero");
    assert_eq!(plan.outputs[0].source_kind.as_ref(), "derived");
    // What the expressions read that is not an output, for the training log: each fetched
    // input once, as read (the context value is logged as context, not here).
    let logged: Vec<(&str, Status, &Value)> = plan
        .logged_inputs
        .iter()
        .zip(&execution.logged_inputs[0])
        .map(|(&i, s)| (plan.derived_inputs[i].name.as_str(), s.status, &s.value))
        .collect();
    assert_eq!(
        logged,
        [
            ("users:age", Status::Present, &Value::Int64(30)),
            ("users:score", Status::Present, &Value::Double(0.9)),
            ("broken:v", Status::SourceError, &Value::Null),
            ("merchants:mcc", Status::Present, &Value::Int64(5411)),
            ("mcc_risk:rate", Status::Present, &Value::Double(0.01)),
            ("slow:v", Status::TimedOut, &Value::Null),
        ]
    );

    // Without the context value, what reads it is NOT_FOUND and says which input.
    let input = RowInput {
        entities: vec![KeyPart::String("u1".into()), KeyPart::String("m1".into())],
        context: vec![None],
    };
    let deadline = Instant::now() + Duration::from_millis(50);
    let execution = execute(&plan, &services, &[input], deadline).await;
    let i = plan
        .outputs
        .iter()
        .position(|o| o.name == "risk:per_amount")
        .unwrap();
    assert_eq!(execution.rows[0][i].status, Status::NotFound);
    assert_eq!(
        details(&plan, &execution.rows[0])[i],
        "input txn.amount NOT_FOUND"
    );
}
