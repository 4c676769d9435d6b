//! W3C Trace Context for outgoing calls.
//!
//! The gateway enters a span for every request and every fetch; when tracing is on, it installs
//! the W3C propagator and activates each span's OpenTelemetry context while the span's code
//! runs. A fetcher that calls another service adds [`outgoing_headers`] to its request, so the
//! trace continues there (`traceparent`, and `tracestate` when the caller sent one). When
//! tracing is off the list is empty and costs next to nothing.

use opentelemetry::{Context, propagation::Injector};

/// The trace context headers of the current span: `(name, value)` pairs to set on an outgoing
/// HTTP request or gRPC call. Empty when the gateway does not trace or no span is active.
pub fn outgoing_headers() -> Vec<(String, String)> {
    let cx = Context::current();
    if !opentelemetry::trace::TraceContextExt::has_active_span(&cx) {
        return Vec::new();
    }
    let mut headers = Headers(Vec::with_capacity(2));
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
    headers.0
}

struct Headers(Vec<(String, String)>);

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` is the same as none.
        if !value.is_empty() {
            self.0.push((key.to_owned(), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    #[test]
    fn nothing_without_an_active_span() {
        assert!(outgoing_headers().is_empty());
    }

    #[test]
    fn the_active_span_is_injected_by_the_global_propagator() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _guard = Context::current().with_remote_span_context(span).attach();
        assert_eq!(
            outgoing_headers(),
            vec![(
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()
            )]
        );
    }
}
