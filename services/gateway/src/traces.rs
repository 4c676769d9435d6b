//! Logs and traces: the `tracing` subscriber, and OpenTelemetry traces exported over OTLP/gRPC.
//!
//! Every request runs in a `request` span (INFO: method, feature service, request id), so every
//! log line of a request carries its request id. Each view fetch runs in a `fetch` span and each
//! call through a source's stack in a `source_call` span, both at DEBUG: the human or JSON log
//! (INFO by default) does not pay for them, and they only exist while traces are exported.
//!
//! With `[telemetry.traces]` configured, spans go to an OTLP/gRPC collector through a batching
//! exporter on its own thread, sampled parent-based: a caller's sampling decision (its
//! `traceparent` flags) is followed, and requests without one are sampled at `sample_ratio`.
//! The W3C `traceparent` of incoming gRPC metadata becomes the parent of the request span, and
//! fetchers pass the current span on to the services they call
//! ([`fetcher_api::trace_context`]). Without traces no context is propagated.
//!
//! Span attributes are configuration names, counts, statuses and error classes; never entity
//! keys, option values or secrets.

use std::sync::atomic::{AtomicBool, Ordering};

use gateway_config::TracesConfig;

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tonic::metadata::MetadataMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, layer::SubscriberExt, util::SubscriberInitExt,
};

/// The installed trace exporter; flushes and stops it when dropped.
#[derive(Debug, Default)]
pub struct TracesGuard {
    provider: Option<SdkTracerProvider>,
}

impl TracesGuard {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("trace exporter shutdown: {e}");
        }
    }
}

impl Drop for TracesGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the trace exporter: {0}")]
pub struct TracesError(String);

/// Installs the global subscriber: logs to stderr (human text, or one JSON object per line),
/// filtered by `RUST_LOG` (default INFO for the gateway, WARN for the HTTP/2 stack); and, when
/// `traces` is given, the OpenTelemetry layer with its exporter and the W3C propagator.
///
/// The OTLP exporter needs a Tokio runtime: call this inside one when `traces` is given.
pub fn init(json: bool, traces: Option<&TracesConfig>) -> Result<TracesGuard, TracesError> {
    // Without a filter, dependencies log at TRACE, which costs more than serving.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,tonic=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let (otel, provider) = match traces {
        None => (None, None),
        Some(config) => {
            let provider = provider(config)?;
            let tracer = provider.tracer("feature-gateway");
            // The gateway's own spans only (its serving core and the stack every source sits
            // behind): fetchers' and libraries' are not part of the tree.
            let targets = Targets::new()
                .with_target("gateway", tracing::Level::DEBUG)
                .with_target("gateway_stack", tracing::Level::DEBUG);
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(targets);
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            EXPORTING.store(true, Ordering::Relaxed);
            (Some(layer), Some(provider))
        }
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TracesError(format!("cannot install the subscriber: {e}")))?;
    Ok(TracesGuard { provider })
}

fn provider(config: &TracesConfig) -> Result<SdkTracerProvider, TracesError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|e| TracesError(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

/// Whether [`init`] installed the OpenTelemetry layer: the request span then carries the
/// attributes of an OpenTelemetry RPC server span.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The span of one gRPC call, a child of the caller's span when its metadata carries a
/// `traceparent` (and traces are on).
///
/// Without traces the span is for the log alone: the method, feature service, request id and
/// rows a log line of the request shows. The log's subscriber formats every field of a span as
/// it is created and again as each is recorded, on every request, so the attributes only a
/// trace reads (`otel.*`, `rpc.system`, `rpc.service`, the status code, the count of features
/// not present) are left out of it: recording one a span lacks does nothing.
pub fn request_span(method: &'static str, metadata: &MetadataMap) -> tracing::Span {
    if !EXPORTING.load(Ordering::Relaxed) {
        return tracing::info_span!(
            "request",
            rpc.method = method,
            feature_service = tracing::field::Empty,
            request_id = tracing::field::Empty,
            rows = tracing::field::Empty,
        );
    }
    let name = match method {
        "GetFeatures" => "featuregateway.v1.FeatureService/GetFeatures",
        "GetFeaturesBatch" => "featuregateway.v1.FeatureService/GetFeaturesBatch",
        other => other,
    };
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = "featuregateway.v1.FeatureService",
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        feature_service = tracing::field::Empty,
        request_id = tracing::field::Empty,
        rows = tracing::field::Empty,
        features_not_present = tracing::field::Empty,
    );
    if !span.is_disabled() && metadata.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&Metadata(metadata));
        let _ = span.set_parent(parent);
    }
    span
}

/// Reads W3C Trace Context headers from gRPC metadata.
struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
