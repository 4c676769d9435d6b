//! End-to-end observability of the real binary: OpenTelemetry spans exported over OTLP/gRPC to a
//! receiver in this test (their tree, attributes, W3C propagation from the caller through the
//! gateway to the HTTP upstream, no secret or key in any attribute), the Prometheus scrape
//! parsed as text format (every family the README documents, bounded labels), JSON logs with
//! the request id on each line of a request and a rate limit on repeated failures, and the
//! Grafana dashboard and alert rules referring only to metrics the gateway exports.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use end_to_end::{GatewayProcess, d, map, otlp::OtlpReceiver, s, statuses};
use fake_upstreams::{
    FakeConfig, FakeServer,
    faults::{FailNext, RouteFaults},
    internal::DEVICE_REPUTATION,
};
use proto::v1::{self, FeatureStatus as St};

const SECRET: &str = "tok_live_5f3c9a1b7e2d4c6f";
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const REQUEST_SPAN: &str = "featuregateway.v1.FeatureService/GetFeatures";

fn config(fake: &FakeServer, otlp: &OtlpReceiver) -> String {
    format!(
        r#"
[entities.device_id]
type = "string"
[entities.merchant_id]
type = "string"

[sources.tables]
kind = "static"
[sources.devices]
kind = "http"
base_url = "{base}"
headers = {{ authorization = "Bearer ${{DEVICE_API_TOKEN}}" }}
timeout = "2s"
[sources.devices.cache]
ttl = "1m"
[sources.devices.circuit_breaker]
consecutive_failures = 50
[sources.devices.retry]
max_attempts = 2
backoff = "1ms"
budget_percent = 1.0
[sources.request]
kind = "request"

[views.merchants]
source = "tables"
entities = ["merchant_id"]
path = "merchants.csv"
features = {{ risk = {{ type = "double" }} }}

[views.device]
source = "devices"
entities = ["device_id"]
path = "/v1/devices/{{device_id}}/reputation"
[views.device.features]
risk_score = {{ type = "double" }}

[views.txn]
source = "request"
features = {{ amount = {{ type = "double" }} }}

[feature_services.score]
deadline = "1s"
features = ["txn:amount", "merchants:risk", "device:risk_score"]

[training_log]
dir = "log"

[telemetry.traces]
endpoint = "{otlp}"
# Requests without a sampled caller are not traced; a caller's sampled flag always is.
sample_ratio = 0.0
service_name = "gateway-under-test"
export_timeout = "2s"
"#,
        base = fake.base_url(),
        otlp = otlp.endpoint(),
    )
}

struct Setup {
    fake: FakeServer,
    otlp: OtlpReceiver,
    gw: GatewayProcess,
    _dir: tempfile::TempDir,
}

async fn setup(extra_env: &[(&str, &str)]) -> Setup {
    let fake = FakeServer::start(FakeConfig::default()).await.unwrap();
    let otlp = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("merchants.csv"),
        "merchant_id,risk\nm1,0.25\n",
    )
    .unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(&fake, &otlp)).unwrap();
    let mut env = vec![("DEVICE_API_TOKEN", SECRET)];
    env.extend_from_slice(extra_env);
    let gw = GatewayProcess::serve_with_env(&path, &env);
    Setup {
        fake,
        otlp,
        gw,
        _dir: dir,
    }
}

fn request(device: &str) -> tonic::Request<v1::GetFeaturesRequest> {
    let mut request = tonic::Request::new(v1::GetFeaturesRequest {
        feature_service: "score".into(),
        entities: map(&[("device_id", s(device)), ("merchant_id", s("m1"))]),
        context: map(&[("amount", d(20.0))]),
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(900));
    request
}

fn traced(device: &str, trace: &str) -> tonic::Request<v1::GetFeaturesRequest> {
    let mut request = request(device);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    request
}

#[tokio::test]
async fn a_callers_trace_continues_through_the_gateway_to_the_upstream() {
    let t = setup(&[]).await;
    let mut client = t.gw.client().await;

    // Not sampled by the caller and a ratio of 0: no spans at all.
    let untraced = client
        .get_features(request("d_000007"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&untraced.statuses), [St::Present; 3]);

    let response = client
        .get_features(traced("d_000042", CALLER_TRACE))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses(&response.statuses), [St::Present; 3]);

    let spans = t
        .otlp
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| s.name == "source_call")
                && spans.iter().any(|s| s.name == REQUEST_SPAN)
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == CALLER_TRACE),
        "only the sampled request is traced: {spans:#?}"
    );
    assert!(spans.iter().all(|s| s.service_name == "gateway-under-test"));

    // The request span: a server span, child of the caller's.
    let requests: Vec<_> = spans.iter().filter(|s| s.name == REQUEST_SPAN).collect();
    assert_eq!(requests.len(), 1, "{spans:#?}");
    let root = requests[0];
    assert_eq!(root.parent_span_id, CALLER_SPAN);
    assert_eq!(root.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(root.attr("feature_service"), Some("score"));
    assert_eq!(root.attr("request_id"), Some(response.request_id.as_str()));
    assert_eq!(root.attr("rpc.system"), Some("grpc"));
    assert_eq!(root.attr("rpc.method"), Some("GetFeatures"));
    assert_eq!(root.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(root.attr("features_not_present"), Some("0"));

    // One fetch span per fetched view (the request context needs none), children of it.
    let fetches: BTreeMap<&str, _> = spans
        .iter()
        .filter(|s| s.name == "fetch")
        .map(|s| (s.attr("view").unwrap(), s))
        .collect();
    assert_eq!(
        fetches.keys().copied().collect::<Vec<_>>(),
        ["device", "merchants"]
    );
    for fetch in fetches.values() {
        assert_eq!(fetch.parent_span_id, root.span_id);
        assert_eq!(fetch.attr("keys"), Some("1"));
        assert_eq!(fetch.attr("failed_keys"), Some("0"));
    }
    let device = fetches["device"];
    assert_eq!(device.attr("source"), Some("devices"));
    assert_eq!(device.attr("source_kind"), Some("http"));
    assert_eq!(device.attr("cache_hits"), Some("0"));

    // Beneath the device fetch (a cache miss), the call through the source's stack: a client
    // span whose id is the parent the upstream was given.
    let call = spans
        .iter()
        .find(|s| s.name == "source_call" && s.attr("view") == Some("device"))
        .unwrap();
    assert_eq!(call.parent_span_id, device.span_id);
    assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(call.attr("outcome"), Some("ok"));
    let upstream = t.fake.trace_parents();
    assert_eq!(upstream.len(), 2, "{upstream:?}");
    // The unsampled request's own trace went on too, marked not sampled (flags 00), so the
    // upstream does not sample it either.
    assert!(
        upstream[0].starts_with("00-") && upstream[0].ends_with("-00"),
        "{upstream:?}"
    );
    assert!(!upstream[0].contains(CALLER_TRACE));
    assert_eq!(
        upstream[1],
        format!("00-{CALLER_TRACE}-{}-01", call.span_id),
        "the sampled call reaches the upstream as a child of the source call"
    );

    // A failing upstream: retried, then SOURCE_ERROR; the span says so and the failure line
    // is an event on it, with the key hashed.
    t.fake
        .set_faults(
            DEVICE_REPUTATION,
            RouteFaults {
                fail_next: Some(FailNext {
                    count: 2,
                    status: 503,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    let failing_trace = "0af7651916cd43dd8448eb211c80319c";
    let response = client
        .get_features(traced("d_000777", failing_trace))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        statuses(&response.statuses),
        [St::Present, St::Present, St::SourceError]
    );
    let spans = t
        .otlp
        .wait_for(Duration::from_secs(20), |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == failing_trace && s.name == REQUEST_SPAN)
        })
        .await;
    let call = spans
        .iter()
        .find(|s| {
            s.trace_id == failing_trace
                && s.name == "source_call"
                && s.attr("view") == Some("device")
        })
        .unwrap();
    assert_eq!(call.attr("outcome"), Some("unavailable"));
    assert_eq!(call.attr("retries"), Some("1"));
    assert!(
        call.events.iter().any(|(name, _)| name == "retrying"),
        "{call:#?}"
    );
    let failure = call
        .events
        .iter()
        .find(|(name, _)| name.starts_with("fetch failed"))
        .unwrap();
    assert_eq!(
        failure.1.get("class").map(String::as_str),
        Some("unavailable")
    );
    assert_eq!(failure.1["key_hash"].len(), 16);
    let root = spans
        .iter()
        .find(|s| s.trace_id == failing_trace && s.name == REQUEST_SPAN)
        .unwrap();
    assert_eq!(root.attr("features_not_present"), Some("1"));

    // Nothing secret and no entity key in any span.
    for span in &spans {
        let text = span.all_text();
        for leak in [SECRET, "d_000042", "d_000777", "m1\""] {
            assert!(!text.contains(leak), "`{leak}` in {span:#?}");
        }
    }
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// The Prometheus text format, parsed: family name by sample, and every sample's labels.
fn parse_metrics(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value in `{line}`"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap();
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in `{line}`"
        );
        samples.push((name, labels, value));
    }
    (types, samples)
}

/// The metric family of a sample name (`_bucket`, `_sum`, `_count` of a histogram).
fn family<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|t| t == "histogram")
        {
            return base;
        }
    }
    name
}

#[tokio::test]
async fn the_scrape_has_every_documented_family_with_bounded_labels() {
    let t = setup(&[]).await;
    let mut client = t.gw.client().await;
    for n in 0..20 {
        let response = client
            .get_features(request(&format!("d_{:06}", n % 5)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(statuses(&response.statuses), [St::Present; 3]);
    }
    let _ = client
        .get_features(v1::GetFeaturesRequest {
            feature_service: "no_such_service".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();

    let text = t.gw.admin_get("/metrics").await;
    let (types, samples) = parse_metrics(&text);
    let families: BTreeSet<&str> = samples.iter().map(|(n, ..)| family(n, &types)).collect();
    for expected in [
        "feature_gateway_requests_total",
        "feature_gateway_request_duration_seconds",
        "feature_gateway_features_served_total",
        "feature_gateway_source_fetches_total",
        "feature_gateway_source_fetch_duration_seconds",
        "feature_gateway_source_fetches_in_flight",
        "feature_gateway_circuit_state",
        "feature_gateway_cache_lookups_total",
        "feature_gateway_cache_entries",
        "feature_gateway_cache_evictions_total",
        "feature_gateway_training_log_queue_depth",
        "feature_gateway_training_log_sink_up",
        "feature_gateway_build_info",
    ] {
        assert!(families.contains(expected), "no `{expected}` in:\n{text}");
    }
    assert_eq!(
        types["feature_gateway_request_duration_seconds"],
        "histogram"
    );

    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(.., v)| v)
            .sum()
    };
    assert_eq!(
        value(
            "feature_gateway_requests_total",
            &[("feature_service", "score"), ("code", "OK")]
        ),
        20.0
    );
    // An unknown feature service is counted under one bounded label, not its name.
    assert_eq!(
        value(
            "feature_gateway_requests_total",
            &[("feature_service", "unknown"), ("code", "NOT_FOUND")]
        ),
        1.0
    );
    // Five distinct devices: five misses, fifteen hits, five upstream calls.
    assert_eq!(
        value(
            "feature_gateway_cache_lookups_total",
            &[("source", "devices"), ("outcome", "miss")]
        ),
        5.0
    );
    assert_eq!(
        value(
            "feature_gateway_cache_lookups_total",
            &[("source", "devices"), ("outcome", "hit")]
        ),
        15.0
    );
    assert_eq!(
        value("feature_gateway_cache_entries", &[("source", "devices")]),
        5.0
    );
    assert_eq!(
        value(
            "feature_gateway_source_fetches_in_flight",
            &[("source", "devices")]
        ),
        0.0
    );
    let build = samples
        .iter()
        .find(|(n, ..)| n == "feature_gateway_build_info")
        .unwrap();
    assert!(build.1.contains_key("version") && build.1["config_hash"].len() >= 8);

    // Labels are bounded: never an entity key, never the secret.
    for (name, labels, _) in &samples {
        for v in labels.values() {
            assert!(
                !v.starts_with("d_0") && !v.contains(SECRET) && v != "no_such_service",
                "unbounded label on {name}: {labels:?}"
            );
        }
    }

    // The dashboard and the alert rules use only metrics the gateway exports.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("ops/grafana/feature-gateway.json")).unwrap();
    let alerts = std::fs::read_to_string(root.join("ops/prometheus/alerts.yml")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let documented: BTreeSet<String> = [dashboard.as_str(), alerts.as_str()]
        .iter()
        .flat_map(|text| metric_names(text))
        .collect();
    assert!(documented.len() >= 10, "{documented:?}");
    let exported: BTreeSet<String> = types.keys().cloned().collect();
    let all_known = [
        // Registered only once their first event happens (a spool, a drop, a retry...).
        "feature_gateway_training_log_records_spooled_total",
        "feature_gateway_training_log_records_dropped_total",
        "feature_gateway_training_log_records_replayed_total",
        "feature_gateway_training_log_records_written_total",
        "feature_gateway_source_up",
        "feature_gateway_log_lines_suppressed_total",
        "feature_gateway_cache_stale_served_total",
        "feature_gateway_source_retries_total",
        "feature_gateway_source_retries_refused_total",
        // Registered for sources that hedge.
        "feature_gateway_source_hedges_total",
        "feature_gateway_source_hedges_won_total",
        "feature_gateway_source_hedges_skipped_total",
        // Registered for monitored feature services ([feature_services.NAME.monitor]).
        "feature_gateway_drift_psi",
        "feature_gateway_drift_null_rate_change",
        "feature_gateway_drift_status_share_change",
        "feature_gateway_drift_default_share_change",
        "feature_gateway_drift_window_rows",
        "feature_gateway_drift_observations_dropped_total",
    ];
    for name in &documented {
        assert!(
            exported.contains(name) || all_known.contains(&name.as_str()),
            "the dashboard or alerts use `{name}`, which the gateway does not export"
        );
    }
}

/// Every `feature_gateway_*` metric family named in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("feature_gateway_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(name);
        names.push(name.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_repeated_failures_are_rate_limited() {
    let t = setup(&[("FEATURE_GATEWAY_LOG_FORMAT", "json")]).await;
    t.fake
        .set_faults(
            DEVICE_REPUTATION,
            RouteFaults {
                error_rate: 1.0,
                ..Default::default()
            },
        )
        .unwrap();
    let mut client = t.gw.client().await;
    let mut ids = Vec::new();
    let started = std::time::Instant::now();
    for n in 0..30 {
        let response = client
            .get_features(request(&format!("d_{:06}", 100 + n)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            statuses(&response.statuses),
            [St::Present, St::Present, St::SourceError]
        );
        ids.push(response.request_id);
    }
    // The failure log's interval (5 s): as many intervals as the calls spanned, each letting
    // one line of a class through (one, unless the machine is very slow).
    let intervals = 1 + started.elapsed().as_secs() as usize / 5;
    let log = t.gw.log();
    let failures: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| {
            j["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("fetch failed"))
        })
        .collect();
    // 30 failing requests: one line per error class and interval, not thirty (the failures
    // open the circuit, whose refusals are a class of their own).
    let unavailable: Vec<_> = failures
        .iter()
        .filter(|j| j["class"] == "unavailable")
        .collect();
    assert!(
        (1..=intervals).contains(&unavailable.len()),
        "{intervals} intervals: {failures:#?}"
    );
    assert!(failures.len() <= 2 * intervals, "{failures:#?}");
    let line = unavailable[0];
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["source"], "devices");
    assert_eq!(line["class"], "unavailable");
    assert_eq!(line["key_hash"].as_str().unwrap().len(), 16);
    assert_eq!(line["span"]["request_id"], ids[0].as_str(), "{line}");
    assert_eq!(line["span"]["feature_service"], "score");
    assert!(!log.contains("d_000100") && !log.contains(SECRET), "{log}");
}
