use std::{path::Path, time::Duration};

use fetcher_api::Value;

use super::*;

const BASE: &str = r#"
[entities.user_id]
type = "string"

[entities.merchant_id]
type = "int64"

[sources.tables]
kind = "static"
timeout = "20ms"

[sources.request]
kind = "request"

[views.users]
source = "tables"
entities = ["user_id"]
path = "users.csv"
max_age = "1d"

[views.users.features]
age = { type = "int64" }
score = { type = "double" }

[views.txn]
source = "request"

[views.txn.features]
amount = { type = "double" }

[feature_services.model]
deadline = "25ms"
features = ["users:age", "txn:amount", "users:score"]

[feature_services.model.defaults]
"users:score" = 0.5
"#;

fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_str(
        text,
        "test.toml",
        Path::new("/nonexistent"),
        &fetcher_builtin::registry(),
    )
}

/// Loads `text` expecting errors; returns them rendered, one per line.
fn errors(text: &str) -> Vec<String> {
    let errors = load(text).expect_err("the config should be refused");
    errors.to_string().lines().map(str::to_owned).collect()
}

fn assert_one_error(text: &str, expected: &[&str]) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    for part in expected {
        assert!(errors[0].contains(part), "`{}` lacks `{part}`", errors[0]);
    }
}

#[test]
fn a_valid_config_resolves_every_name() {
    let config = load(BASE).unwrap();
    let fs = &config.feature_services["model"];
    assert_eq!(fs.deadline, Duration::from_millis(25));
    assert_eq!(
        fs.features
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["users:age", "txn:amount", "users:score"]
    );
    let score = FeatureRef::parse("users:score").unwrap();
    assert_eq!(fs.defaults[&score], Value::Double(0.5));
    assert_eq!(
        config.sources["tables"].timeout,
        Some(Duration::from_millis(20))
    );
    assert_eq!(
        config.views["users"].max_age,
        Some(Duration::from_secs(86_400))
    );
    let spec = &config.sources["tables"].spec;
    assert_eq!(spec.views.len(), 1);
    assert_eq!(spec.views[0].options.0["path"].as_str(), Some("users.csv"));
}

#[test]
fn syntax_errors_have_a_position() {
    assert_one_error("[entities.user_id\ntype = 1", &["test.toml:1:"]);
}

#[test]
fn every_unknown_field_is_reported_with_its_position() {
    let text = BASE.replace(
        "[entities.user_id]\ntype = \"string\"",
        "[entities.user_id]\ntype = \"string\"\ndescriptoin = \"typo\"",
    ) + "\n[extra]\nx = 1\n";
    let errors = errors(&text);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(
        errors[0].starts_with(
            "test.toml:4:1: entities.user_id.descriptoin: unknown field `descriptoin`"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[1].contains("extra: unknown field `extra`"),
        "{errors:#?}"
    );
}

#[test]
fn unknown_source_is_named_with_the_known_ones() {
    let text = BASE.replace("source = \"tables\"", "source = \"tabels\"");
    assert_one_error(
        &text,
        &[
            "views.users.source",
            "unknown source `tabels`",
            "known: request, tables",
        ],
    );
}

#[test]
fn unknown_source_kind_lists_the_registered_kinds() {
    let text = BASE.replace("kind = \"static\"", "kind = \"mongo\"");
    assert_one_error(
        &text,
        &[
            "sources.tables.kind",
            "unknown source kind `mongo`",
            "request",
            "static",
        ],
    );
}

#[test]
fn source_kind_options_are_validated_by_the_fetcher_factory() {
    let text = BASE.replace("path = \"users.csv\"", "path = \"users.xlsx\"\nsheet = 2");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("views.users") && errors[0].contains("unknown field `sheet`"),
        "{errors:#?}"
    );
}

#[test]
fn unknown_types_are_reported() {
    let text = BASE.replace("age = { type = \"int64\" }", "age = { type = \"integer\" }");
    assert_one_error(
        &text,
        &["views.users.features.age.type", "unknown type `integer`"],
    );
    let text = BASE.replace(
        "type = \"int64\"\n\n[sources",
        "type = \"double\"\n\n[sources",
    );
    assert_one_error(
        &text,
        &["entities.merchant_id.type", "must be int64 or string"],
    );
}

#[test]
fn a_default_must_fit_its_feature_type() {
    let text = BASE.replace("\"users:score\" = 0.5", "\"users:score\" = \"high\"");
    assert_one_error(
        &text,
        &[
            "feature_services.model.defaults.users:score",
            "expected double",
        ],
    );
}

#[test]
fn a_default_must_be_for_a_listed_feature() {
    let text = BASE.replace("\"users:score\" = 0.5", "\"txn:total\" = 1.0");
    assert_one_error(&text, &["not a feature of this feature service"]);
}

#[test]
fn duplicate_features_are_refused() {
    let text = BASE.replace(
        "features = [\"users:age\", \"txn:amount\", \"users:score\"]",
        "features = [\"users:age\", \"txn:amount\", \"users:*\"]",
    );
    assert_one_error(
        &text,
        &[
            "feature_services.model.features.2",
            "`users:age` is listed twice",
        ],
    );
}

#[test]
fn unknown_feature_refs_name_the_view_and_feature() {
    let text = BASE.replace("\"users:age\", \"txn", "\"users:agee\", \"txn");
    assert_one_error(
        &text,
        &[
            "features.0",
            "view `users` has no feature `agee`",
            "known: age, score",
        ],
    );
    let text = BASE.replace("\"users:age\", \"txn", "\"userz:age\", \"txn");
    assert_one_error(&text, &["unknown view `userz`"]);
    let text = BASE.replace("\"users:age\", \"txn", "\"users.age\", \"txn");
    assert_one_error(&text, &["not a feature reference `VIEW:FEATURE`"]);
}

#[test]
fn a_view_keyed_by_an_undeclared_entity_is_refused() {
    let text = BASE.replace("entities = [\"user_id\"]", "entities = [\"account_id\"]");
    assert_one_error(
        &text,
        &[
            "views.users.entities.0",
            "keyed by `account_id`, which no entity declares",
        ],
    );
}

#[test]
fn bad_durations_are_reported() {
    let text = BASE.replace("timeout = \"20ms\"", "timeout = \"20 parsecs\"");
    assert_one_error(&text, &["sources.tables.timeout", "not a duration"]);
    let text = BASE.replace("deadline = \"25ms\"", "deadline = \"0ms\"");
    assert_one_error(
        &text,
        &["feature_services.model.deadline", "must be positive"],
    );
}

#[test]
fn request_views_have_no_entities() {
    let text = BASE.replace(
        "[views.txn]\nsource = \"request\"",
        "[views.txn]\nsource = \"request\"\nentities = [\"user_id\"]",
    );
    assert_one_error(&text, &["views.txn.entities", "has no entities"]);
}

#[test]
fn required_context_values_are_declared_on_request_views_only() {
    let config = load(BASE).unwrap();
    assert!(!config.views["txn"].features["amount"].required, "default");
    let text = BASE.replace(
        "amount = { type = \"double\" }",
        "amount = { type = \"double\", required = true }",
    );
    let config = load(&text).unwrap();
    assert!(config.views["txn"].features["amount"].required);

    // Anywhere else it is refused where it is written, not ignored.
    let text = BASE.replace(
        "age = { type = \"int64\" }",
        "age = { type = \"int64\", required = false }",
    );
    assert_one_error(
        &text,
        &[
            "views.users.features.age.required",
            "view `users` reads source `tables`",
        ],
    );
    let line = text.lines().position(|l| l.starts_with("age = ")).unwrap() + 1;
    let column = "age = { type = \"int64\", ".len() + 1;
    assert!(
        errors(&text)[0].starts_with(&format!("test.toml:{line}:{column}: ")),
        "{:?}",
        errors(&text)
    );
}

#[test]
fn request_ids_are_bounded_by_default() {
    assert_eq!(load(BASE).unwrap().limits.max_request_id_bytes, 128);
    let text = format!("{BASE}\n[limits]\nmax_request_id_bytes = 36\n");
    assert_eq!(load(&text).unwrap().limits.max_request_id_bytes, 36);
}

#[test]
fn dependent_keys_must_name_a_feature_of_the_same_type() {
    let text = BASE.replace(
        "[entities.merchant_id]\ntype = \"int64\"",
        "[entities.merchant_id]\ntype = \"int64\"\nfrom = \"users:score\"",
    );
    assert_one_error(
        &text,
        &[
            "entities.merchant_id.from",
            "`users:score` is double, but entity `merchant_id` is int64",
        ],
    );
    let text = BASE.replace(
        "[entities.merchant_id]\ntype = \"int64\"",
        "[entities.merchant_id]\ntype = \"int64\"\nfrom = \"nowhere\"",
    );
    assert_one_error(&text, &["neither `context:NAME` nor `VIEW:FEATURE`"]);
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = BASE
        .replace("source = \"tables\"", "source = \"tabels\"")
        .replace("timeout = \"20ms\"", "timeout = \"soon\"")
        .replace("\"users:score\" = 0.5", "\"users:score\" = true");
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    // In file order, each with a line and column.
    assert!(errors[0].contains("sources.tables.timeout"), "{errors:#?}");
    assert!(errors[1].contains("views.users.source"), "{errors:#?}");
    assert!(errors[2].contains("defaults"), "{errors:#?}");
    assert!(errors.iter().all(|e| e.starts_with("test.toml:")));
}

#[test]
fn positions_point_at_the_field() {
    let text = BASE.replace("source = \"tables\"", "source = \"tabels\"");
    let errors = load(&text).unwrap_err();
    let line = text
        .lines()
        .position(|l| l == "source = \"tabels\"")
        .unwrap()
        + 1;
    assert_eq!(errors.errors[0].position, Some((line, 1)));
}

#[test]
fn cache_breaker_and_retry_settings_are_checked() {
    let text = BASE.replace(
        "timeout = \"20ms\"",
        "timeout = \"20ms\"\n[sources.tables.cache]\nttl = \"10s\"\nmax_staleness = \"1s\"\n[sources.tables.circuit_breaker]\nfailure_rate = 1.5\n[sources.tables.retry]\nmax_attempts = 0",
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("sources.tables.cache.max_staleness: must be at least the ttl")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("sources.tables.circuit_breaker.failure_rate: must be in (0, 1]")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("sources.tables.retry.max_attempts: must be at least 1")),
        "{errors:#?}"
    );

    let text = BASE.replace(
        "timeout = \"20ms\"",
        "timeout = \"20ms\"\n[sources.tables.cache]\nttl = \"10s\"\nmax_staleness = \"1h\"\nnegative_ttl = \"1s\"\n[sources.tables.circuit_breaker]\nopen_for = \"2s\"\n[sources.tables.retry]\nbackoff = \"5ms\"",
    );
    let config = load(&text).unwrap();
    let source = &config.sources["tables"];
    let cache = source.cache.as_ref().unwrap();
    assert_eq!(
        (cache.ttl, cache.max_staleness),
        (Duration::from_secs(10), Duration::from_secs(3600))
    );
    assert_eq!(cache.negative_ttl, Some(Duration::from_secs(1)));
    assert_eq!(
        source.circuit_breaker.as_ref().unwrap().open_for,
        Duration::from_secs(2)
    );
    let retry = source.retry.as_ref().unwrap();
    assert_eq!(
        (retry.max_attempts, retry.backoff),
        (2, Duration::from_millis(5))
    );
}

#[test]
fn a_shared_tier_on_a_cluster_names_its_nodes_and_refuses_mixed_modes() {
    let with = |shared: &str| {
        BASE.replace(
            "timeout = \"20ms\"",
            &format!(
                "timeout = \"20ms\"\n[sources.tables.cache]\nttl = \"10s\"\nshared = {{ {shared} }}"
            ),
        )
    };
    let config = load(&with(
        r#"url = "rediss://:${P}@cache-1:6380", mode = "cluster", nodes = ["cache-2:6380", "[::1]:6380"]"#,
    ))
    .unwrap();
    let shared = config.sources["tables"]
        .cache
        .as_ref()
        .unwrap()
        .shared
        .as_ref()
        .unwrap();
    assert_eq!(shared.mode, SharedTierMode::Cluster);
    assert_eq!(
        shared.nodes,
        [("cache-2".to_owned(), 6380), ("::1".to_owned(), 6380)]
    );
    let standalone = load(&with(r#"url = "redis://cache:6379/1""#)).unwrap();
    let shared = standalone.sources["tables"].cache.as_ref().unwrap();
    assert_eq!(
        shared.shared.as_ref().unwrap().mode,
        SharedTierMode::Standalone
    );

    assert_one_error(
        &with(r#"url = "redis://cache-1:6379", nodes = ["cache-2:6379"]"#),
        &["sources.tables.cache.shared.nodes: only `cluster` mode uses more nodes"],
    );
    assert_one_error(
        &with(
            r#"url = "redis://cache-1:6379", mode = "cluster", nodes = ["rediss://cache-2:6380"]"#,
        ),
        &[
            "sources.tables.cache.shared.nodes: `rediss://cache-2:6380` is a rediss:// URL while \
             `url` is redis://",
        ],
    );
    assert_one_error(
        &with(r#"url = "redis://cache-1:6379/2", mode = "cluster""#),
        &["sources.tables.cache.shared.url: a cluster has only database 0"],
    );
    assert_one_error(
        &with(r#"url = "redis://cache-1:6379", mode = "sentinel""#),
        &[
            "mode",
            "unknown variant `sentinel`, expected `standalone` or `cluster`",
        ],
    );
    assert_one_error(
        &with(r#"url = "redis-cluster://cache-1:6379", mode = "cluster""#),
        &["sources.tables.cache.shared.url: must start with redis:// or rediss://"],
    );
}

#[test]
fn hedging_refresh_ahead_and_shedding_settings_are_checked() {
    let with = |extra: &str| {
        BASE.replace(
            "timeout = \"20ms\"",
            &format!("timeout = \"20ms\"\n{extra}"),
        )
    };
    let config = load(&with(
        "[sources.tables.hedge]\nafter = \"p99.5\"\n[sources.tables.cache]\nttl = \"10s\"\nrefresh_ahead = 0.8",
    ))
    .unwrap();
    let source = &config.sources["tables"];
    assert_eq!(
        source.hedge,
        Some(crate::HedgeConfig {
            trigger: crate::HedgeTrigger::Percentile(0.995),
            max_extra: 1,
            budget_percent: 0.1,
        })
    );
    assert_eq!(source.cache.as_ref().unwrap().refresh_ahead, Some(0.8));
    assert_eq!(config.limits.max_in_flight, None);

    let config = load(&with(
        "[sources.tables.hedge]\ndelay = \"15ms\"\nmax_extra = 2",
    ))
    .unwrap();
    let hedge = config.sources["tables"].hedge.clone().unwrap();
    assert_eq!(
        hedge.trigger,
        crate::HedgeTrigger::Fixed(Duration::from_millis(15))
    );
    assert_eq!(hedge.max_extra, 2);

    for (extra, expected) in [
        (
            "[sources.tables.hedge]\nmax_extra = 1",
            "sources.tables.hedge: give exactly one",
        ),
        (
            "[sources.tables.hedge]\nafter = \"p95\"\ndelay = \"5ms\"",
            "sources.tables.hedge: give exactly one",
        ),
        (
            "[sources.tables.hedge]\nafter = \"95\"",
            "sources.tables.hedge.after: expected a percentile",
        ),
        (
            "[sources.tables.hedge]\nafter = \"p100\"",
            "sources.tables.hedge.after",
        ),
        (
            "[sources.tables.hedge]\ndelay = \"0ms\"",
            "sources.tables.hedge.delay: must be positive",
        ),
        (
            "[sources.tables.hedge]\ndelay = \"5ms\"\nmax_extra = 4",
            "sources.tables.hedge.max_extra",
        ),
        (
            "[sources.tables.hedge]\ndelay = \"5ms\"\nbudget_percent = 2.0",
            "sources.tables.hedge.budget_percent: must be in (0, 1]",
        ),
        ("[sources.tables.hedge]\ndelay = \"5ms\"\nwhen = 1", "when"),
        (
            "[sources.tables.cache]\nttl = \"1s\"\nrefresh_ahead = 1.0",
            "sources.tables.cache.refresh_ahead: must be in (0, 1)",
        ),
    ] {
        assert_one_error(&with(extra), &[expected]);
    }
    assert_one_error(
        &format!("[limits]\nmax_in_flight = 0\n{BASE}"),
        &["limits.max_in_flight: must be at least 1"],
    );
    let config = load(&format!("[limits]\nmax_in_flight = 64\n{BASE}")).unwrap();
    assert_eq!(config.limits.max_in_flight, Some(64));
}

#[test]
fn security_settings_are_checked_with_their_positions() {
    // A feature service may not outlive `[limits] max_deadline`.
    let text = format!("{BASE}\n[limits]\nmax_deadline = \"10ms\"\n");
    assert_one_error(&text, &["feature_services.model.deadline", "max_deadline"]);

    let config = load(&format!(
        "{BASE}\n[server.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\n\
         [auth.callers.scorer]\ntoken_hash = \"{}\"\nfeature_services = [\"model\"]\n\
         rate_limit = 100.0\n",
        crate::auth::TokenHash::make("t")
    ))
    .unwrap();
    let tls = config.tls.unwrap();
    assert!(tls.require_client_cert);
    assert_eq!(tls.cert, Path::new("/nonexistent/s.pem"));
    let callers = config.auth.unwrap();
    assert_eq!(callers[0].rate_limit, Some((100.0, 100.0)));
    assert!(callers[0].may_read("model") && !callers[0].may_read("other"));

    let errors = errors(&format!(
        "{BASE}\n[server.tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nrequire_client_cert = false\n\
         [auth.callers.scorer]\ntoken_hash = \"secret-in-plain-text\"\n\
         feature_services = [\"nope\"]\n"
    ));
    let text = errors.join("\n");
    for expected in [
        "server.tls.require_client_cert",
        "auth.callers.scorer.token_hash",
        "auth.callers.scorer.feature_services",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("secret-in-plain-text"), "{text}");
}

#[test]
fn worker_threads_is_optional_and_bounded() {
    assert_eq!(load(BASE).unwrap().worker_threads, None);
    let two = format!("{BASE}\n[server]\nworker_threads = 2\n");
    assert_eq!(load(&two).unwrap().worker_threads, Some(2));
    for bad in ["0", "5000"] {
        let text = format!("{BASE}\n[server]\nworker_threads = {bad}\n");
        assert_one_error(&text, &["server.worker_threads", "from 1 to 1024"]);
    }
}

#[test]
fn a_mistyped_field_is_reported_with_every_other_problem() {
    let text = format!(
        "{BASE}
[limits]
max_key_bytes = \"big\"
max_in_flight = -5

[server]
worker_threads = \"many\"

[sources.broken]
kind = \"static\"
max_concurrency = \"lots\"

[sources.kindless]
kind = 7

[views.orphan]
source = \"nowhere\"
features = {{ x = {{ type = \"int64\" }} }}
"
    );
    let errors = load(&text).expect_err("refused");
    let found: Vec<(String, Option<(usize, usize)>)> = errors
        .errors
        .iter()
        .map(|e| (e.path.clone(), e.position))
        .collect();
    for path in [
        "limits.max_key_bytes",
        "limits.max_in_flight",
        "server.worker_threads",
        "sources.broken.max_concurrency",
        "sources.kindless.kind",
        "views.orphan.source",
    ] {
        let hit = found.iter().find(|(p, _)| p == path);
        assert!(
            hit.is_some_and(|(_, pos)| pos.is_some()),
            "{path} in {found:?}"
        );
    }
    // A refused field's entry is reported once, under the field: no "missing field" after it.
    assert!(
        !errors
            .errors
            .iter()
            .any(|e| e.message.contains("missing field")),
        "{errors}"
    );
    let message = |path: &str| {
        errors
            .errors
            .iter()
            .find(|e| e.path == path)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(
        message("limits.max_key_bytes").contains("\"big\""),
        "{errors}"
    );
}

#[test]
fn derived_views_compile_their_expressions_against_every_view() {
    let text = format!(
        "{BASE}
[views.risk]
kind = \"derived\"
[views.risk.features]
ratio = {{ type = \"double\", expr = \"txn.amount / users.score\" }}
doubled = {{ type = \"double\", expr = \"risk.ratio * 2.0\" }}
"
    );
    let config = load(&text).unwrap();
    let risk = &config.views["risk"];
    assert!(risk.derived);
    assert_eq!(risk.source, "");
    let ratio = risk.features["ratio"].expr.as_ref().unwrap();
    let inputs: Vec<String> = ratio
        .inputs()
        .iter()
        .map(|r| format!("{}.{}", r.view, r.feature))
        .collect();
    assert_eq!(inputs, ["txn.amount", "users.score"]);
}

#[test]
fn expression_errors_give_the_file_position_and_the_expression_position() {
    let text = format!(
        "{BASE}
[views.risk]
kind = \"derived\"
[views.risk.features]
ratio = {{ type = \"double\", expr = \"txn.amount / users.age\" }}
label = {{ type = \"string\", expr = \"users.nope\" }}
big = {{ type = \"int64\", expr = \"users.age > 3\" }}
"
    );
    let found = errors(&text);
    assert_eq!(
        found,
        [
            "test.toml:41:28: views.risk.features.ratio.expr: at 1:12 of the expression: no \
             overload of `/` takes (double, int)",
            "test.toml:42:28: views.risk.features.label.expr: at 1:6 of the expression: view \
             `users` has no feature `nope`",
            "test.toml:43:25: views.risk.features.big.expr: at 1:1 of the expression: the \
             expression gives bool, the feature is declared int64 (int)",
        ],
        "{found:#?}"
    );
}

#[test]
fn derived_views_are_refused_what_they_cannot_have() {
    let text = format!(
        "{BASE}
[entities.by_risk]
type = \"string\"
from = \"risk:label\"

[views.risk]
kind = \"derived\"
source = \"tables\"
entities = [\"user_id\"]
[views.risk.features]
label = {{ type = \"string\" }}
loop_a = {{ type = \"int64\", expr = \"risk.loop_b + 1\" }}
loop_b = {{ type = \"int64\", expr = \"risk.loop_a + 1\" }}

[views.odd]
kind = \"computed\"
source = \"tables\"
entities = [\"user_id\"]
path = \"x.csv\"
features = {{ x = {{ type = \"int64\", expr = \"1\" }} }}
"
    );
    let found = errors(&text).join("\n");
    for expected in [
        "entities.by_risk.from: `risk:label` is a derived feature, computed after every fetch",
        "views.risk.source: a derived view reads no source",
        "views.risk.entities: a derived view has no entities",
        "views.risk.features.label: a feature of a derived view needs an `expr`",
        "views.risk.features.loop_a.expr: derived features depend on each other in a cycle: \
         risk.loop_a -> risk.loop_b -> risk.loop_a",
        "views.odd.kind: unknown view kind `computed`",
        "views.odd.features.x.expr: `expr` is for features of a `kind = \"derived\"` view",
    ] {
        assert!(
            found.contains(expected),
            "missing `{expected}` in:\n{found}"
        );
    }
    // One cycle, reported once.
    assert_eq!(found.matches("in a cycle").count(), 1, "{found}");
}

#[test]
fn a_monitor_reads_its_reference_beside_the_file_with_defaults() {
    let text =
        format!("{BASE}\n[feature_services.model.monitor]\nreference = \"profiles/model.json\"\n");
    let config = load(&text).unwrap();
    let monitor = config.feature_services["model"].monitor.clone().unwrap();
    assert_eq!(
        monitor,
        MonitorConfig {
            reference: Path::new("/nonexistent/profiles/model.json").to_owned(),
            window: Duration::from_secs(300),
            psi_threshold: 0.2,
            null_rate_threshold: 5.0,
            status_threshold: 5.0,
            sample: 1.0,
        }
    );
    let text = format!(
        "{BASE}\n[feature_services.model.monitor]\nreference = \"m.json\"\nwindow = \"2s\"\n\
         psi_threshold = 0.25\nnull_rate_threshold = 3\nsample = 0.1\n"
    );
    let monitor = load(&text).unwrap().feature_services["model"]
        .monitor
        .clone()
        .unwrap();
    assert_eq!(monitor.window, Duration::from_secs(2));
    assert_eq!(monitor.psi_threshold, 0.25);
    assert_eq!(monitor.null_rate_threshold, 3.0);
    assert_eq!(monitor.sample, 0.1);
    assert!(
        load(BASE).unwrap().feature_services["model"]
            .monitor
            .is_none()
    );
}

#[test]
fn monitor_settings_are_checked_with_their_positions() {
    let text = format!(
        "{BASE}\n[feature_services.model.monitor]\nreference = \"m.json\"\nwindow = \"500ms\"\n\
         psi_threshold = -1\nnull_rate_threshold = 0\nsample = 1.5\nbins = 3\n"
    );
    let errors = errors(&text);
    let line = |field: &str| {
        text.lines()
            .position(|l| l.starts_with(field))
            .map(|i| i + 1)
            .unwrap()
    };
    let expected = [
        (
            "window",
            "feature_services.model.monitor.window: must be at least 1s",
        ),
        (
            "psi_threshold",
            "feature_services.model.monitor.psi_threshold: a threshold is above 0, not -1",
        ),
        (
            "null_rate_threshold",
            "feature_services.model.monitor.null_rate_threshold: a threshold is above 0, not 0",
        ),
        (
            "sample",
            "feature_services.model.monitor.sample: a sampling rate is above 0 and at most 1, not 1.5",
        ),
        ("bins", "unknown field `bins`"),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for ((field, message), error) in expected.iter().zip(&errors) {
        assert!(
            error.starts_with(&format!("test.toml:{}:1: ", line(field))),
            "{error}"
        );
        assert!(error.contains(message), "{error}");
    }
    assert_one_error(
        &format!("{BASE}\n[feature_services.model.monitor]\nwindow = \"1m\"\n"),
        &[
            "feature_services.model.monitor",
            "missing field `reference`",
        ],
    );
}
