//! The stack as a whole: deadlines, the bulkhead and telemetry around a fetcher.

use std::{sync::Arc, time::Duration};

use fetcher_api::{ErrorClass, FetchError, FetchRequest, Fetcher, Row};
use gateway_config::SourceConfig;
use tokio::time::Instant;

use crate::{effective_deadline, source_stack};

use async_trait::async_trait;
use fetcher_api::{KeyPart, Record, Value};

/// A fetcher that answers after a fixed (virtual) delay.
#[derive(Debug)]
struct Slow(Duration);

#[async_trait]
impl Fetcher for Slow {
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<Row>, FetchError> {
        tokio::time::sleep(self.0).await;
        Ok(request
            .keys
            .iter()
            .map(|_| {
                Row::Found(Record {
                    cells: vec![Ok(Value::Int64(1))],
                    event_time: None,
                })
            })
            .collect())
    }
}

fn request(deadline: Option<Instant>) -> FetchRequest {
    FetchRequest {
        view: "v".into(),
        features: vec!["f".to_owned()].into(),
        keys: vec![vec![KeyPart::Int64(1)]],
        deadline,
    }
}

fn policy(timeout: Option<Duration>, max_concurrency: usize) -> SourceConfig {
    SourceConfig {
        timeout,
        max_concurrency,
        cache: None,
        circuit_breaker: None,
        retry: None,
        hedge: None,
        ..SourceConfig::new("s", "test")
    }
}

#[test]
fn effective_deadline_is_the_earlier_limit() {
    let now = Instant::now();
    let ms = Duration::from_millis;
    assert_eq!(effective_deadline(now, None, None), None);
    assert_eq!(
        effective_deadline(now, Some(ms(5)), None),
        Some(now + ms(5))
    );
    assert_eq!(
        effective_deadline(now, Some(ms(5)), Some(now + ms(3))),
        Some(now + ms(3))
    );
    assert_eq!(
        effective_deadline(now, Some(ms(5)), Some(now + ms(30))),
        Some(now + ms(5))
    );
    assert_eq!(
        effective_deadline(now, None, Some(now + ms(30))),
        Some(now + ms(30))
    );
}

#[tokio::test(start_paused = true)]
async fn source_timeout_applies_when_shorter_than_the_deadline() {
    use tower::ServiceExt;
    let stack = source_stack(
        Arc::new(Slow(Duration::from_millis(50))),
        &policy(Some(Duration::from_millis(10)), 8),
    );
    let started = Instant::now();
    let deadline = Some(started + Duration::from_secs(1));
    let err = stack.oneshot(request(deadline)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(started.elapsed(), Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn request_deadline_applies_when_shorter_than_the_timeout() {
    use tower::ServiceExt;
    let stack = source_stack(
        Arc::new(Slow(Duration::from_millis(50))),
        &policy(Some(Duration::from_secs(1)), 8),
    );
    let started = Instant::now();
    let err = stack
        .oneshot(request(Some(started + Duration::from_millis(20))))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Timeout);
    assert_eq!(started.elapsed(), Duration::from_millis(20));

    let stack = source_stack(Arc::new(Slow(Duration::from_millis(5))), &policy(None, 8));
    let rows = stack
        .oneshot(request(Some(Instant::now() + Duration::from_millis(20))))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_refuses_at_once_beyond_its_limit() {
    use tower::ServiceExt;
    let stack = source_stack(Arc::new(Slow(Duration::from_millis(50))), &policy(None, 1));
    let first = tokio::spawn(stack.clone().oneshot(request(None)));
    tokio::task::yield_now().await;
    let started = Instant::now();
    let err = stack.clone().oneshot(request(None)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Overloaded);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(first.await.unwrap().is_ok());
    // The permit is back.
    assert!(stack.oneshot(request(None)).await.is_ok());
}

/// A source's stack that refuses at readiness (no layer of the stack does today; tower's
/// contract allows it).
#[derive(Clone, Debug)]
struct NotReady;

impl tower::Service<FetchRequest> for NotReady {
    type Response = Vec<Row>;
    type Error = FetchError;
    type Future = std::future::Ready<Result<Vec<Row>, FetchError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), FetchError>> {
        std::task::Poll::Ready(Err(FetchError::new(ErrorClass::Overloaded, "not ready")))
    }

    fn call(&mut self, _: FetchRequest) -> Self::Future {
        std::future::ready(Ok(Vec::new()))
    }
}

#[tokio::test]
async fn an_uncached_source_calls_its_stack_and_answers_a_readiness_error_per_key() {
    use tower::{Layer, ServiceExt, util::BoxCloneSyncService};

    use crate::{CacheLayer, Slot};

    // Without a cache, each call goes straight to the source's stack.
    let stack = source_stack(Arc::new(Slow(Duration::ZERO)), &policy(None, 8));
    let mut request = request(None);
    request.keys.push(vec![KeyPart::Int64(2)]);
    let slots = CacheLayer::new(None, None, "s")
        .layer(stack)
        .oneshot(request.clone())
        .await
        .unwrap();
    assert_eq!(slots.len(), 2);
    assert!(
        slots
            .iter()
            .all(|s| matches!(s, Slot::Fetched { cached: false, .. })),
        "{slots:?}"
    );
    // A stack that is not ready answers its error for every key, as a failed call does.
    let slots = CacheLayer::new(None, None, "s")
        .layer(BoxCloneSyncService::new(NotReady))
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(slots.len(), 2);
    for slot in &slots {
        let Slot::Failed(e) = slot else {
            panic!("{slots:?}")
        };
        assert_eq!(e.class(), ErrorClass::Overloaded);
    }
}
