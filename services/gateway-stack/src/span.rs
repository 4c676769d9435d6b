//! The span of the request a task serves, carried into the tasks the stack spawns (background
//! cache fills and refreshes), so their log lines keep the request's id. A leaf.

tokio::task_local! {
    /// The span of the request a task serves.
    static REQUEST: tracing::Span;
}

/// Runs `future` (a request's handling, inside `span`) so that work it spawns can carry the
/// request's span: see [`in_request_span`].
pub async fn scope_request<F: std::future::Future>(span: tracing::Span, future: F) -> F::Output {
    REQUEST
        .scope(span.clone(), tracing::Instrument::instrument(future, span))
        .await
}

/// Wraps `future`, about to be spawned as its own task, so that it runs inside the current
/// span *and* the span of the request that spawns it. Log lines keep their request id even
/// when the current span is a trace-only (DEBUG) one that the log does not show.
pub fn in_request_span<F: std::future::Future>(
    future: F,
) -> tracing::instrument::Instrumented<tracing::instrument::Instrumented<F>> {
    use tracing::Instrument;
    let request = REQUEST
        .try_with(Clone::clone)
        .unwrap_or_else(|_| tracing::Span::none());
    future.in_current_span().instrument(request)
}
