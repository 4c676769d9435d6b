//! The caller's protocol-level mistakes answered as such: a request message that does not decode
//! is INVALID_ARGUMENT (not INTERNAL), one larger than `[limits] max_message_bytes` is
//! RESOURCE_EXHAUSTED (not OUT_OF_RANGE), and a malformed `grpc-timeout` header is refused with
//! INVALID_ARGUMENT instead of being ignored. So INTERNAL always means a fault of the gateway, and
//! an alert on it never fires for a broken client.
//!
//! Why a layer over the gRPC router that rewrites responses, and not a codec: tonic produces both
//! statuses inside the generated service, before the handler runs. The size check is in tonic's
//! framing (`Streaming`, from `max_decoding_message_size`), which reads the 5-byte prefix and
//! refuses before buffering the message, and which no codec sees; the codec (`proto::codec`,
//! which answers a decode error as `tonic_prost` does) would catch decode errors only, and is
//! shared by every server and client of the `proto` crate. The response of a call refused
//! there is a trailers-only response whose `grpc-status` is in its headers, exactly as a
//! handler's error would be; the two cannot be told apart by shape, so the rewrite is limited
//! to the feature service, whose handlers never answer INTERNAL or OUT_OF_RANGE
//! ([`crate::request::RequestError::code`]).
//! Everything tonic answers INTERNAL before the handler there is about the request's bytes: not
//! protobuf, truncated, no message, a bad compression flag. (gRPC's own status code table lists
//! "error parsing request proto" as INTERNAL; the gateway departs from it on purpose, for the
//! reason above. For the size, RESOURCE_EXHAUSTED is what that table specifies.)
//!
//! `grpc-timeout`: the gRPC over HTTP/2 specification defines it as 1 to 8 ASCII digits and a
//! unit (`H`, `M`, `S`, `m`, `u`, `n`); grpc-go refuses a call whose header does not parse.
//! tonic ignores such a header, and the call would then run under the feature service's own
//! deadline, not the caller's budget, without the caller learning that its deadline was lost.
//! Refused on every method, with the same parser the gateway reads deadlines with.

use std::task::{Context, Poll};

use proto::v1::feature_service_server::SERVICE_NAME;
use tonic::{Code, Status, codegen::http};
use tower::{Layer, Service};

use gateway_stack::{BoxFuture, parse_grpc_timeout};

/// Rewrites the statuses of a caller's malformed feature requests, and refuses malformed
/// `grpc-timeout` headers. Innermost of the server's layers: it sees what the router answers.
#[derive(Clone, Copy, Debug)]
pub struct CallerErrorsLayer {
    max_message_bytes: usize,
}

impl CallerErrorsLayer {
    /// The layer of a server whose feature service decodes at most `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        CallerErrorsLayer { max_message_bytes }
    }
}

impl<S> Layer<S> for CallerErrorsLayer {
    type Service = CallerErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerErrors {
            inner,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

/// See [`CallerErrorsLayer`].
#[derive(Clone, Debug)]
pub struct CallerErrors<S> {
    inner: S,
    max_message_bytes: usize,
}

/// The method name of a feature service call (`GetFeatures`), if the path is one.
fn feature_method(path: &str) -> Option<&str> {
    path.strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')
}

/// The refusal of a `grpc-timeout` header that is present but not a gRPC timeout.
fn malformed_timeout(headers: &http::HeaderMap) -> Option<Status> {
    let value = headers.get("grpc-timeout")?;
    if value.to_str().ok().and_then(parse_grpc_timeout).is_some() {
        return None;
    }
    let text = String::from_utf8_lossy(value.as_bytes());
    let shown: String = text.chars().take(24).collect();
    Some(Status::invalid_argument(format!(
        "grpc-timeout: {shown:?}{} is not a gRPC timeout (1 to 8 digits and a unit: H, M, S, m, \
         u or n, e.g. `50m` for 50 ms)",
        if shown.len() < text.len() { "..." } else { "" }
    )))
}

/// Rewrites, in place, tonic's status for a malformed or oversized request message of feature
/// method `method`. Any other response is left as it is.
fn rewrite(response: &mut http::Response<tonic::body::Body>, method: &str, limit: usize) {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return; // not trailers-only: the call was answered
    };
    let rewritten = match status.code() {
        Code::Internal => Status::invalid_argument(format!(
            "request: not a valid `{method}` request message ({})",
            status.message()
        )),
        Code::OutOfRange => Status::resource_exhausted(format!(
            "request: message larger than the limit of {limit} bytes ([limits] \
             max_message_bytes) ({})",
            status.message()
        )),
        _ => return,
    };
    let headers = response.headers_mut();
    headers.remove(Status::GRPC_MESSAGE);
    if rewritten.add_header(headers).is_ok() {
        response.extensions_mut().insert(rewritten);
    }
}

impl<S, B> Service<http::Request<B>> for CallerErrors<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(status) = malformed_timeout(request.headers()) {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let Some(method) = feature_method(request.uri().path()).map(str::to_owned) else {
            return Box::pin(self.inner.call(request));
        };
        let limit = self.max_message_bytes;
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            rewrite(&mut response, &method, limit);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    /// A router stand-in answering every call with `status` (OK: a successful response).
    fn answering(
        status: Status,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(move |_: http::Request<()>| {
            let response = if status.code() == Code::Ok {
                http::Response::new(tonic::body::Body::empty())
            } else {
                status.clone().into_http()
            };
            async move { Ok::<_, Infallible>(response) }
        })
    }

    async fn call(inner: Status, path: &str, timeout: Option<&str>) -> Option<Status> {
        let mut request = http::Request::builder().uri(path);
        if let Some(t) = timeout {
            request = request.header("grpc-timeout", t);
        }
        let response = CallerErrorsLayer::new(1024)
            .layer(answering(inner))
            .oneshot(request.body(()).unwrap())
            .await
            .unwrap();
        let status = Status::from_header_map(response.headers());
        if let Some(s) = &status {
            // The status tonic keeps beside the headers says the same.
            let kept = response.extensions().get::<Status>().expect("kept status");
            assert_eq!((kept.code(), kept.message()), (s.code(), s.message()));
        }
        status
    }

    const GET: &str = "/featuregateway.v1.FeatureService/GetFeatures";

    #[tokio::test]
    async fn an_undecodable_request_is_invalid_argument() {
        let tonic_says = Status::internal("failed to decode Protobuf message: invalid wire type");
        let status = call(tonic_says, GET, None).await.unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "request: not a valid `GetFeatures` request message (failed to decode Protobuf \
             message: invalid wire type)"
        );
    }

    #[tokio::test]
    async fn an_oversized_request_is_resource_exhausted() {
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 2000 bytes, the limit is: 1024 bytes",
        );
        let status = call(tonic_says, GET, None).await.unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("request: message larger than the limit of 1024 bytes"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("found 2000 bytes"));
    }

    #[tokio::test]
    async fn other_answers_and_other_services_pass_unchanged() {
        // The handlers' own refusals.
        let refused = Status::invalid_argument("entities.user_id: missing");
        let status = call(refused, GET, None).await.unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "entities.user_id: missing");
        // A successful call has no status in its headers.
        assert!(call(Status::new(Code::Ok, ""), GET, None).await.is_none());
        // Not the feature service: its INTERNAL is left to mean what it says.
        let health = "/grpc.health.v1.Health/Check";
        let status = call(Status::internal("x"), health, None).await.unwrap();
        assert_eq!(status.code(), Code::Internal);
    }

    #[tokio::test]
    async fn a_malformed_grpc_timeout_is_refused_on_every_method() {
        for path in [GET, "/grpc.health.v1.Health/Check"] {
            for bad in ["5X", "", "m", "123456789m", "-5m", "+5m", "1.5S", "5 m"] {
                let status = call(Status::new(Code::Ok, ""), path, Some(bad))
                    .await
                    .unwrap_or_else(|| panic!("{bad:?} accepted"));
                assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
                assert!(
                    status.message().starts_with("grpc-timeout: "),
                    "{}",
                    status.message()
                );
            }
            for good in ["50m", "1S", "99999999n", "0m", "2H"] {
                assert!(
                    call(Status::new(Code::Ok, ""), path, Some(good))
                        .await
                        .is_none(),
                    "{good:?} refused"
                );
            }
        }
        let long = "9".repeat(100);
        let status = call(Status::new(Code::Ok, ""), GET, Some(&long))
            .await
            .unwrap();
        assert!(status.message().contains("..."), "{}", status.message());
        assert!(!status.message().contains(&long));
    }
}
