//! `[telemetry.traces]`: OpenTelemetry traces over OTLP/gRPC.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::Problems;

/// `[telemetry.traces]`.
#[derive(Debug, Deserialize)]
pub struct RawTraces {
    /// The OTLP/gRPC collector, e.g. `"http://127.0.0.1:4317"`.
    pub endpoint: String,
    /// Fraction (0 to 1) of requests without a sampled caller span that are traced. Default
    /// 0.01. A caller's `traceparent` sampling decision is always followed.
    #[serde(default)]
    pub sample_ratio: Option<f64>,
    /// The `service.name` resource attribute. Default `feature-gateway`.
    #[serde(default)]
    pub service_name: Option<String>,
    /// How long one export may take, e.g. `"5s"` (the default).
    #[serde(default)]
    pub export_timeout: Option<String>,
}

/// `[telemetry.traces]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TracesConfig {
    /// The OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
    pub endpoint: String,
    /// Fraction of requests without a sampled parent that are traced.
    pub sample_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// How long one export may take.
    pub export_timeout: Duration,
}

/// Default `service.name`.
pub const DEFAULT_SERVICE_NAME: &str = "feature-gateway";

/// Default fraction of root requests traced: on a hot path, one in a hundred is plenty.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;

/// Default export timeout.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Validates `[telemetry.traces]`; a bad field is reported and replaced by its default.
pub(crate) fn validate_traces(raw: &RawTraces, problems: &mut Problems) -> TracesConfig {
    const AT: [&str; 2] = ["telemetry", "traces"];
    match url::Url::parse(&raw.endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => problems.add(
            &[AT[0], AT[1], "endpoint"],
            "must be an http:// or https:// URL with a host, e.g. \"http://127.0.0.1:4317\"",
        ),
        Err(e) => problems.add(
            &[AT[0], AT[1], "endpoint"],
            format!("not a URL ({e}), e.g. \"http://127.0.0.1:4317\""),
        ),
    }
    let sample_ratio = match raw.sample_ratio {
        None => DEFAULT_SAMPLE_RATIO,
        Some(r) if (0.0..=1.0).contains(&r) => r,
        Some(r) => {
            problems.add(
                &[AT[0], AT[1], "sample_ratio"],
                format!("{r} is not between 0 and 1"),
            );
            DEFAULT_SAMPLE_RATIO
        }
    };
    let export_timeout = problems.duration(
        &[AT[0], AT[1], "export_timeout"],
        raw.export_timeout.as_deref(),
        DEFAULT_EXPORT_TIMEOUT,
        false,
    );
    TracesConfig {
        endpoint: raw.endpoint.clone(),
        sample_ratio,
        service_name: raw
            .service_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned()),
        export_timeout,
    }
}
