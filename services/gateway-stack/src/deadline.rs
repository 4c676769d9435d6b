//! The deadline layer: a call's time limit is the lesser of the source's own timeout and what is
//! left of the request's deadline; and the `grpc-timeout` header a deadline arrives in.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use fetcher_api::{FetchError, FetchRequest, Row};
use futures::future::Either;
use tokio::time::Instant;
use tower::{Layer, Service};

/// Limits a call to the lesser of the source's timeout and the request's remaining deadline.
#[derive(Clone, Debug)]
pub struct DeadlineLayer {
    timeout: Option<Duration>,
}

impl DeadlineLayer {
    /// A layer with the source's own timeout (`None`: the request's deadline alone).
    pub fn new(timeout: Option<Duration>) -> Self {
        DeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Option<Duration>,
}

/// The instant a call must end by: the earlier of `now + timeout` and `deadline`.
pub fn effective_deadline(
    now: Instant,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> Option<Instant> {
    let own = timeout.map(|t| now + t);
    match (own, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<S> Service<FetchRequest> for Deadline<S>
where
    S: Service<FetchRequest, Response = Vec<Row>, Error = FetchError>,
{
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = Either<S::Future, DeadlineFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FetchError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: FetchRequest) -> Self::Future {
        let limit = effective_deadline(Instant::now(), self.timeout, request.deadline);
        // The fetcher sees the tighter limit, so it can pass it on (statement timeouts, gRPC).
        request.deadline = limit;
        let call = self.inner.call(request);
        match limit {
            None => Either::Left(call),
            Some(limit) => Either::Right(DeadlineFuture {
                call: tokio::time::timeout_at(limit, call),
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Deadline`] call with a limit: a timeout when it passes.
    pub struct DeadlineFuture<F> {
        #[pin]
        call: tokio::time::Timeout<F>,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Vec<Row>, FetchError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx).map(|result| {
            result.unwrap_or_else(|_| Err(FetchError::timeout("no answer within the time limit")))
        })
    }
}

/// Parses a `grpc-timeout` header value (`"100m"`: an ASCII integer of at most 8 digits and a
/// unit: H, M, S, m, u, n).
pub fn parse_grpc_timeout(text: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    // The unit is one ASCII byte; a multi-byte last character is no unit (and no boundary).
    let (digits, unit) = text.split_at_checked(text.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("-1m"), None);
    }

    /// Found by `fuzz/` (target `request`): a value ending in a multi-byte character split
    /// inside it and panicked.
    #[test]
    fn grpc_timeout_ending_in_a_multibyte_character_is_refused() {
        assert_eq!(parse_grpc_timeout("10.01\u{2}10.0\u{3d2}"), None);
        assert_eq!(parse_grpc_timeout("1\u{e9}"), None);
        assert_eq!(parse_grpc_timeout("\u{e9}"), None);
    }
}
