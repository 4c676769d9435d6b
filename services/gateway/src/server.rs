//! The gRPC face of the gateway: `featuregateway.v1.FeatureService`, `grpc.health.v1.Health`
//! and server reflection on one port, an admin HTTP port with Prometheus metrics, and a graceful
//! shutdown that turns health NOT_SERVING, ends health watches, stops accepting, finishes the
//! calls in flight, flushes the training log, then exits. Feature calls pass load shedding first ([`crate::admission`]): a saturated gateway
//! answers RESOURCE_EXHAUSTED at once.
//!
//! Each served vector of a feature service is handed to the training log (when configured) as it
//! was put on the wire, and to the drift monitor (when the feature service is monitored); neither
//! makes a request wait (see the training-log crate and [`crate::monitor`]).

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use proto::v1::{
    self,
    feature_service_server::{FeatureService, FeatureServiceServer},
};
use tokio::{net::TcpListener, time::Instant};
use tonic::{Request, Response, Status, metadata::MetadataMap, transport::server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use training_log::{Cell, FeatureEntry, LoggedStatus};

use gateway_stack::{events::cache::refresh_cache_sizes, parse_grpc_timeout, span};

use crate::{
    admission::{self, AdmissionLayer},
    executor::{CacheUse, RowInput, Served},
    gateway::request_deadline,
    plan::Plan,
    reload::{ADHOC, Generation, HEALTH_TIMEOUT, Live, Outcome, Trigger},
    request::{self, RequestError, RowPrefix, row_input},
    status::Status as FeatureStatus,
    telemetry::ServiceMetrics,
    traces,
};

/// Implements `FeatureService` over the [`Live`] gateway: each call runs on the generation
/// serving when it arrives.
#[derive(Clone, Debug)]
pub struct FeatureServiceImpl {
    live: Arc<Live>,
}

impl FeatureServiceImpl {
    /// The service over `live`.
    pub fn new(live: Arc<Live>) -> Self {
        FeatureServiceImpl { live }
    }

    async fn get_features_inner(
        generation: &Generation,
        mut req: v1::GetFeaturesRequest,
        caller: Option<crate::auth::Caller>,
        arrival: Instant,
        client_timeout: Option<Duration>,
    ) -> Result<v1::GetFeaturesResponse, RequestError> {
        // First: an id that is refused is neither recorded on the span nor logged.
        let gateway = generation.gateway();
        request::check_request_id(&req.request_id, &gateway.config().limits)?;
        let request_id = request_id(std::mem::take(&mut req.request_id));
        let span = tracing::Span::current();
        span.record("request_id", request_id.as_str());
        // Before anything else is looked at: a caller learns nothing of what it may not read.
        request::authorize(caller.as_ref(), &req.feature_service)?;
        let plan = gateway.resolve(&req.feature_service, &req.features)?;
        span.record("feature_service", plan_label(&plan));
        let deadline = request_deadline(arrival, plan.deadline, client_timeout)
            .ok_or(RequestError::DeadlineExceeded)?;
        let limits = &gateway.config().limits;
        let row = row_input(
            &plan,
            &mut req.entities,
            &mut req.context,
            limits,
            RowPrefix(None),
        )?;
        let execution = gateway
            .execute(&plan, std::slice::from_ref(&row), deadline)
            .await;
        let served = execution.rows.into_iter().next().unwrap_or_default();
        let inputs = execution
            .logged_inputs
            .first()
            .map_or(&[][..], Vec::as_slice);
        record_not_present(&span, std::slice::from_ref(&served));
        generation.log_vector(
            &plan,
            || request_id.clone(),
            |id| log_record(id, row, &served, inputs, arrival),
        );
        gateway.observe_drift(&plan, &served);
        generation
            .metrics(&plan.name)
            .features_served(&count_statuses(&served));
        let (values, statuses, metadata) = vector(&plan, served, req.include_metadata);
        let request_metadata = req.include_metadata.then(|| v1::RequestMetadata {
            deadline_ms: deadline.duration_since(arrival).as_millis() as i64,
            total_us: arrival.elapsed().as_micros() as i64,
            stage_us: execution
                .stage_times
                .iter()
                .map(|d| d.as_micros() as i64)
                .collect(),
        });
        Ok(v1::GetFeaturesResponse {
            request_id,
            feature_names: plan.feature_names.clone(),
            values,
            statuses,
            metadata,
            request_metadata,
        })
    }

    async fn get_features_batch_inner(
        generation: &Generation,
        mut req: v1::GetFeaturesBatchRequest,
        caller: Option<crate::auth::Caller>,
        arrival: Instant,
        client_timeout: Option<Duration>,
    ) -> Result<v1::GetFeaturesBatchResponse, RequestError> {
        // The batch's one id; each row is logged as `<request_id>/<row>`.
        let gateway = generation.gateway();
        request::check_request_id(&req.request_id, &gateway.config().limits)?;
        let request_id = request_id(std::mem::take(&mut req.request_id));
        let span = tracing::Span::current();
        span.record("request_id", request_id.as_str());
        span.record("rows", req.rows.len());
        request::authorize(caller.as_ref(), &req.feature_service)?;
        let plan = gateway.resolve(&req.feature_service, &req.features)?;
        span.record("feature_service", plan_label(&plan));
        let limits = &gateway.config().limits;
        if req.rows.len() > limits.max_batch_rows {
            return Err(RequestError::invalid(
                "rows",
                format!(
                    "{} rows, more than the limit of {}",
                    req.rows.len(),
                    limits.max_batch_rows
                ),
            ));
        }
        let deadline = request_deadline(arrival, plan.deadline, client_timeout)
            .ok_or(RequestError::DeadlineExceeded)?;
        let rows = req
            .rows
            .iter_mut()
            .enumerate()
            .map(|(i, row)| {
                row_input(
                    &plan,
                    &mut row.entities,
                    &mut row.context,
                    limits,
                    RowPrefix(Some(i)),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let execution = gateway.execute(&plan, &rows, deadline).await;
        record_not_present(&span, &execution.rows);
        // The batch's statuses counted over its rows, recorded once.
        let mut counts = [0u64; FeatureStatus::ALL.len()];
        let vectors = execution
            .rows
            .into_iter()
            .zip(rows)
            .enumerate()
            .map(|(i, (served, row))| {
                // Each row is its own labelled example: `<request_id>/<row>`.
                let inputs = execution
                    .logged_inputs
                    .get(i)
                    .map_or(&[][..], Vec::as_slice);
                generation.log_vector(
                    &plan,
                    || format!("{request_id}/{i}"),
                    |id| log_record(id, row, &served, inputs, arrival),
                );
                gateway.observe_drift(&plan, &served);
                for s in &served {
                    counts[s.status as usize] += 1;
                }
                let (values, statuses, metadata) = vector(&plan, served, req.include_metadata);
                v1::FeatureVector {
                    values,
                    statuses,
                    metadata,
                }
            })
            .collect();
        generation.metrics(&plan.name).features_served(&counts);
        Ok(v1::GetFeaturesBatchResponse {
            request_id,
            feature_names: plan.feature_names.to_vec(),
            rows: vectors,
        })
    }
}

fn request_id(given: String) -> String {
    if given.is_empty() {
        // A random (v4) UUID from the thread's CSPRNG: unique across replicas, so labels can be
        // joined to the logged vector, without a getrandom syscall per request.
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string()
    } else {
        given
    }
}

/// The feature service a span names: the plan's, or `adhoc` for explicit feature refs.
fn plan_label(plan: &Plan) -> &str {
    if plan.name.is_empty() {
        ADHOC
    } else {
        &plan.name
    }
}

/// Records on the request's span how many features were served other than PRESENT.
fn record_not_present(span: &tracing::Span, rows: &[Vec<Served>]) {
    if !span.is_disabled() {
        let n = rows
            .iter()
            .flatten()
            .filter(|s| s.status != FeatureStatus::Present)
            .count();
        span.record("features_not_present", n);
    }
}

fn client_timeout(metadata: &MetadataMap) -> Option<Duration> {
    metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

fn count_statuses(served: &[Served]) -> [u64; FeatureStatus::ALL.len()] {
    let mut counts = [0u64; FeatureStatus::ALL.len()];
    for s in served {
        counts[s.status as usize] += 1;
    }
    counts
}

/// The training log record of one served vector, with the derived features' inputs that are
/// logged beside it (`inputs`, one per [`Plan::logged_inputs`]); the row's keys and context
/// values are moved into it.
pub fn log_record(
    request_id: String,
    row: RowInput,
    served: &[Served],
    inputs: &[Served],
    arrival: Instant,
) -> training_log::Record {
    let now = SystemTime::now();
    let entry = |s: &Served| FeatureEntry {
        value: s.value.clone().into(),
        status: logged_status(s.status),
        age_ms: s
            .event_time
            .and_then(|t| now.duration_since(t).ok())
            .map(|age| age.as_millis() as i64),
    };
    training_log::Record {
        request_id,
        served_at_us: training_log::record::nanos_since_epoch(now) / 1000,
        latency_us: arrival.elapsed().as_micros() as i64,
        entities: row
            .entities
            .into_iter()
            .map(|k| fetcher_api::Value::from(k).into())
            .collect(),
        context: row
            .context
            .into_iter()
            .map(|c| c.map_or(Cell::Null, Cell::from))
            .collect(),
        features: served.iter().map(entry).collect(),
        inputs: inputs.iter().map(entry).collect(),
    }
}

fn logged_status(status: FeatureStatus) -> LoggedStatus {
    match status {
        FeatureStatus::Present => LoggedStatus::Present,
        FeatureStatus::NotFound => LoggedStatus::NotFound,
        FeatureStatus::NullValue => LoggedStatus::NullValue,
        FeatureStatus::OutsideMaxAge => LoggedStatus::OutsideMaxAge,
        FeatureStatus::TimedOut => LoggedStatus::TimedOut,
        FeatureStatus::SourceError => LoggedStatus::SourceError,
        FeatureStatus::Stale => LoggedStatus::Stale,
    }
}

/// Converts one row's served features to the wire.
pub fn vector(
    plan: &Plan,
    served: Vec<Served>,
    include_metadata: bool,
) -> (Vec<v1::Value>, Vec<i32>, Vec<v1::FeatureMetadata>) {
    let mut values = Vec::with_capacity(served.len());
    let mut statuses = Vec::with_capacity(served.len());
    let mut metadata = Vec::with_capacity(if include_metadata { served.len() } else { 0 });
    let now = std::time::SystemTime::now();
    for (output, s) in plan.outputs.iter().zip(served) {
        statuses.push(wire_status(s.status) as i32);
        if include_metadata {
            metadata.push(v1::FeatureMetadata {
                source: output.source.to_string(),
                source_kind: output.source_kind.to_string(),
                event_time: s.event_time.map(proto::timestamp_to_wire),
                // The value's age: by its event time when the source records one, else by when
                // the cache fetched it.
                age_ms: s
                    .event_time
                    .and_then(|t| now.duration_since(t).ok())
                    .or(s.cache_age)
                    .map_or(0, |age| age.as_millis() as i64),
                cache: match s.cache {
                    CacheUse::None => v1::CacheOutcome::Unspecified,
                    CacheUse::Miss => v1::CacheOutcome::Miss,
                    CacheUse::Hit | CacheUse::Stale => v1::CacheOutcome::Hit,
                } as i32,
                fetch_latency_us: s.latency.as_micros() as i64,
                default_applied: s.default_applied,
                // Made into text here, for a caller that asked: never on the path without.
                detail: s
                    .detail
                    .map_or_else(String::new, |detail| detail.into_text(plan)),
            });
        }
        values.push(s.value.into());
    }
    (values, statuses, metadata)
}

/// The wire form of a status.
pub fn wire_status(status: FeatureStatus) -> v1::FeatureStatus {
    match status {
        FeatureStatus::Present => v1::FeatureStatus::Present,
        FeatureStatus::NotFound => v1::FeatureStatus::NotFound,
        FeatureStatus::NullValue => v1::FeatureStatus::NullValue,
        FeatureStatus::OutsideMaxAge => v1::FeatureStatus::OutsideMaxAge,
        FeatureStatus::TimedOut => v1::FeatureStatus::TimedOut,
        FeatureStatus::SourceError => v1::FeatureStatus::SourceError,
        FeatureStatus::Stale => v1::FeatureStatus::Stale,
    }
}

#[tonic::async_trait]
impl FeatureService for FeatureServiceImpl {
    async fn get_features(
        &self,
        request: Request<v1::GetFeaturesRequest>,
    ) -> Result<Response<v1::GetFeaturesResponse>, Status> {
        let arrival = Instant::now();
        let span = traces::request_span("GetFeatures", request.metadata());
        let timeout = client_timeout(request.metadata());
        let caller = request.extensions().get::<crate::auth::Caller>().cloned();
        let req = request.into_inner();
        let generation = self.live.current();
        let metrics = generation.metrics(&req.feature_service).clone();
        let result = span::scope_request(
            span.clone(),
            Self::get_features_inner(&generation, req, caller, arrival, timeout),
        )
        .await;
        finish("GetFeatures", &metrics, arrival, &span, result)
    }

    async fn get_features_batch(
        &self,
        request: Request<v1::GetFeaturesBatchRequest>,
    ) -> Result<Response<v1::GetFeaturesBatchResponse>, Status> {
        let arrival = Instant::now();
        let span = traces::request_span("GetFeaturesBatch", request.metadata());
        let timeout = client_timeout(request.metadata());
        let caller = request.extensions().get::<crate::auth::Caller>().cloned();
        let req = request.into_inner();
        let generation = self.live.current();
        let metrics = generation.metrics(&req.feature_service).clone();
        let result = span::scope_request(
            span.clone(),
            Self::get_features_batch_inner(&generation, req, caller, arrival, timeout),
        )
        .await;
        finish("GetFeaturesBatch", &metrics, arrival, &span, result)
    }

    async fn push_events(
        &self,
        request: Request<v1::PushEventsRequest>,
    ) -> Result<Response<v1::PushEventsResponse>, Status> {
        let caller = request.extensions().get::<crate::auth::Caller>().cloned();
        let generation = self.live.current();
        crate::push::push_events(generation.gateway(), caller.as_ref(), request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_feature_services(
        &self,
        request: Request<v1::ListFeatureServicesRequest>,
    ) -> Result<Response<v1::ListFeatureServicesResponse>, Status> {
        let caller = request.extensions().get::<crate::auth::Caller>();
        let feature_services = self
            .live
            .current()
            .gateway()
            .plans()
            .values()
            // A caller sees the feature services it may read.
            .filter(|p| caller.is_none_or(|c| c.0.may_read(&p.name)))
            .map(|p| v1::FeatureServiceSummary {
                name: p.name.clone(),
                description: p.description.clone(),
                feature_count: p.outputs.len() as i32,
            })
            .collect();
        Ok(Response::new(v1::ListFeatureServicesResponse {
            feature_services,
        }))
    }

    async fn describe_feature_service(
        &self,
        request: Request<v1::DescribeFeatureServiceRequest>,
    ) -> Result<Response<v1::DescribeFeatureServiceResponse>, Status> {
        let caller = request.extensions().get::<crate::auth::Caller>().cloned();
        let name = request.into_inner().name;
        if !name.is_empty() {
            request::authorize(caller.as_ref(), &name)?;
        }
        let plan = self
            .live
            .current()
            .gateway()
            .plans()
            .get(&name)
            .cloned()
            .ok_or_else(|| Status::from(RequestError::UnknownFeatureService(name.clone())))?;
        Ok(Response::new(describe(&plan)))
    }
}

fn finish<T>(
    method: &'static str,
    metrics: &ServiceMetrics,
    arrival: Instant,
    span: &tracing::Span,
    result: Result<T, RequestError>,
) -> Result<Response<T>, Status> {
    let code = result
        .as_ref()
        .map_or_else(RequestError::code, |_| tonic::Code::Ok);
    metrics.request_finished(method, code, arrival.elapsed());
    if !span.is_disabled() {
        span.record("rpc.grpc.status_code", code as i32);
        if code != tonic::Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
    }
    match result {
        Ok(response) => Ok(Response::new(response)),
        Err(e) => {
            span.in_scope(|| tracing::debug!(method, "request refused: {e}"));
            Err(e.into())
        }
    }
}

fn describe(plan: &Plan) -> v1::DescribeFeatureServiceResponse {
    v1::DescribeFeatureServiceResponse {
        name: plan.name.clone(),
        description: plan.description.clone(),
        features: plan
            .outputs
            .iter()
            .map(|o| v1::FeatureDescription {
                name: o.name.clone(),
                r#type: v1::ValueType::from(o.ty) as i32,
                source: o.source.to_string(),
                max_age_ms: o.max_age.map_or(0, |d| d.as_millis() as i64),
                default_value: o.default.clone().map(Into::into),
                description: o.description.clone(),
            })
            .collect(),
        entities: plan
            .entities
            .iter()
            .map(|e| v1::EntityDescription {
                name: e.name.clone(),
                r#type: v1::ValueType::from(e.ty) as i32,
                description: e.description.clone(),
            })
            .collect(),
        context: plan
            .context
            .iter()
            .map(|c| v1::ContextDescription {
                name: c.name.clone(),
                r#type: v1::ValueType::from(c.ty) as i32,
                required: c.required,
            })
            .collect(),
        deadline_ms: plan.deadline.as_millis() as i64,
        definition_hash: plan.definition_hash.clone(),
    }
}

/// How often sources' health checks run while every one passes.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// The first wait before checking a failing source again; it doubles up to [`HEALTH_INTERVAL`].
/// A source that comes up after the gateway (a sidecar started next to it) is seen up within a
/// fraction of a second, not at the next full interval, so `feature_gateway_source_up` and
/// health do not contradict the fetches that already succeed.
const HEALTH_RETRY: Duration = Duration::from_millis(250);
/// The health service's view of the required sources' health checks, over the sources of the
/// generation serving at each round.
#[derive(Debug)]
struct HealthWatch {
    live: Arc<Live>,
    reporter: HealthReporter,
    /// The last result of each source's check, by name.
    up: HashMap<Arc<str>, bool>,
    serving: Option<bool>,
}

impl HealthWatch {
    fn new(live: Arc<Live>, reporter: HealthReporter) -> Self {
        HealthWatch {
            live,
            reporter,
            up: HashMap::new(),
            serving: None,
        }
    }

    /// Runs every source's health check once and updates the health service.
    async fn check(&mut self) {
        let generation = self.live.current();
        let sources = generation.gateway().sources();
        // A source a reload removed is no longer reported.
        self.up
            .retain(|name, _| sources.iter().any(|s| s.name == *name));
        let mut all_required_up = true;
        for source in sources {
            let Some(fetcher) = &source.fetcher else {
                continue;
            };
            let result = tokio::time::timeout(HEALTH_TIMEOUT, fetcher.health())
                .await
                .unwrap_or_else(|_| {
                    Err(fetcher_api::FetchError::timeout("health check timed out"))
                });
            let ok = result.is_ok();
            if self.up.get(&source.name) != Some(&ok) {
                gateway_stack::events::source::source_health(
                    &source.name,
                    ok,
                    result.as_ref().err(),
                );
                self.up.insert(source.name.clone(), ok);
            }
            all_required_up &= ok || !source.required;
        }
        drop(generation);
        if self.serving != Some(all_required_up) {
            let status = if all_required_up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            self.reporter
                .set_service_status("featuregateway.v1.FeatureService", status)
                .await;
            self.reporter.set_service_status("", status).await;
            self.serving = Some(all_required_up);
        }
    }

    /// Checks again every [`HEALTH_INTERVAL`] while every source passes, and sooner while one
    /// fails ([`next_wait`]), and at once after a reload swapped in new sources, forever.
    async fn run(mut self) {
        let mut retry = HEALTH_RETRY;
        loop {
            let all_up = !self.up.values().any(|up| !up);
            let wait;
            (wait, retry) = next_wait(all_up, retry);
            let live = self.live.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = live.swapped() => {}
            }
            self.check().await;
        }
    }
}

/// The wait before the next round of health checks and the retry delay after it: the full
/// interval while every source passes (the retry delay reset), else the retry delay, doubled for
/// the next round up to the full interval.
fn next_wait(all_up: bool, retry: Duration) -> (Duration, Duration) {
    if all_up {
        (HEALTH_INTERVAL, HEALTH_RETRY)
    } else {
        (retry, (retry * 2).min(HEALTH_INTERVAL))
    }
}

/// How many calls cancelled by their client before the server took them one connection may hold
/// before the server closes it (see where the server is built).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 1024;

/// Serves the `live` gateway on `grpc` (and metrics, reloads and webhooks on `admin`) until
/// `shutdown` resolves, then drains the calls in flight, flushes the training log and returns.
/// Meanwhile the configuration file is watched and reloaded when it changes.
pub async fn serve(
    live: Arc<Live>,
    grpc: TcpListener,
    admin: Option<TcpListener>,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // What the gRPC server is set up with: the fields a reload refuses to change.
    let gateway = live.current().gateway().clone();
    // TLS files are read before anything is served: a bad certificate stops the start.
    let tls = match &gateway.config().tls {
        Some(config) => Some(crate::tls::TlsAcceptor::new(config.clone())?),
        None => None,
    };
    // Shutdown, in order: health turns NOT_SERVING, then `stop` ends health watches, the admin
    // server and the gRPC listener, and the calls in flight finish.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reporter = HealthReporter::new();
    let health_service = proto::server::health_service(reporter.clone(), stop_rx.clone());
    // Reflection lists what the gateway serves: the sidecar `Fetcher` contract shares the
    // package but is served by the fetcher sidecar host.
    let reflection = || {
        proto::server::reflection(
            proto::FEATURE_SERVICE_DESCRIPTOR_SET,
            proto::v1::feature_service_server::SERVICE_NAME,
        )
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let max_message = gateway.config().limits.max_message_bytes;
    let service = FeatureServiceImpl::new(live.clone());
    let features = FeatureServiceServer::new(service)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(64 * 1024 * 1024);
    // The first round before the first call is answered: health is never asked too early.
    let mut health = HealthWatch::new(live.clone(), reporter.clone());
    health.check().await;
    let health_task = tokio::spawn(health.run());

    let watch_task = tokio::spawn(live.clone().watch_file());

    let metrics_upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                metrics.run_upkeep();
            }
        })
    };

    let admin_task = admin.map(|listener| {
        let mut stop = stop_rx.clone();
        let router = Router::new()
            .route(
                "/metrics",
                get(move || {
                    refresh_cache_sizes();
                    std::future::ready(metrics.render())
                }),
            )
            .route("/healthz", get(|| std::future::ready("ok\n")))
            .route("/admin/reload", post(admin_reload).with_state(live.clone()))
            // Plaid's webhooks, when the running configuration has them (see `crate::webhooks`).
            .merge(crate::webhooks::router({
                let live = live.clone();
                Arc::new(move || live.current().gateway().webhooks().cloned())
            }));
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        })
    });

    let grpc_stop = {
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let signal_task = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new calls, finishing those in flight");
        reporter
            .set_service_status(
                "featuregateway.v1.FeatureService",
                ServingStatus::NotServing,
            )
            .await;
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(true);
    });

    let max_in_flight = gateway
        .config()
        .limits
        .max_in_flight
        .unwrap_or_else(admission::default_max_in_flight);
    let authenticator = gateway
        .config()
        .auth
        .as_ref()
        .map(|callers| Arc::new(crate::auth::Authenticator::new(callers)));
    // Not held while serving: a reload that replaces it drops its sources when its last
    // request ends.
    drop(gateway);
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Calls a client cancels (RST_STREAM) before the server has taken them off the
        // connection: h2 closes the whole connection (GOAWAY ENHANCE_YOUR_CALM) past 20 of them
        // at once, a defence against "Rapid Reset" floods, which fails every other call on it.
        // A busy gateway with callers' short deadlines reaches 20 in a burst; 1,024 is still a
        // bound (tests/tests/transport.rs).
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
        // Outermost: who is calling, and is it within its rate? Refused callers take no
        // capacity from the others. Health checks pass.
        .layer(tower::util::option_layer(
            authenticator.clone().map(crate::auth::AuthLayer::new),
        ))
        // Then a saturated gateway refuses feature calls at once (RESOURCE_EXHAUSTED) rather
        // than queueing them past their deadlines; health and reflection pass.
        .layer(AdmissionLayer::new(max_in_flight))
        // Innermost, over the router: a request message that does not decode or is too large is
        // the caller's mistake (INVALID_ARGUMENT, RESOURCE_EXHAUSTED), not tonic's INTERNAL or
        // OUT_OF_RANGE; a malformed `grpc-timeout` is refused (see `crate::caller_errors`).
        .layer(crate::caller_errors::CallerErrorsLayer::new(max_message))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(features);
    let (result, reload_task) = match tls {
        Some(acceptor) => {
            let reload = tokio::spawn(acceptor.clone().watch());
            let incoming = crate::tls::incoming(grpc, acceptor, authenticator);
            let result = router
                .serve_with_incoming_shutdown(incoming, grpc_stop)
                .await;
            (result, Some(reload))
        }
        None => {
            let result = router
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY small responses wait on delayed ACKs (~40 ms each).
                    TcpIncoming::from(grpc).with_nodelay(Some(true)),
                    grpc_stop,
                )
                .await;
            (result, None)
        }
    };
    if let Some(task) = reload_task {
        task.abort();
    }
    health_task.abort();
    watch_task.abort();
    metrics_upkeep.abort();
    signal_task.abort();
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    // Every call has finished: every vector served is in the log's queue or spool. No reload
    // runs from now on.
    live.close().await;
    tracing::info!("stopped");
    result.map_err(Into::into)
}

/// `POST /admin/reload`: reloads the configuration file (the request's body is not read: only
/// the file the gateway was started with is loaded). 200 with the configuration hash serving;
/// 422 with the file's problems, or 500 with the sources' build errors, one per line, the
/// running configuration unchanged; 503 while shutting down.
async fn admin_reload(State(live): State<Arc<Live>>) -> (StatusCode, String) {
    match live.reload(Trigger::Admin).await {
        Outcome::Reloaded { hash, rebuilt } => (
            StatusCode::OK,
            format!(
                "reloaded config_hash={hash}\nkept: {}\nbuilt: {}\nremoved: {}\n",
                rebuilt.kept.join(" "),
                rebuilt.built.join(" "),
                rebuilt.removed.join(" ")
            ),
        ),
        Outcome::Unchanged { hash } => (StatusCode::OK, format!("unchanged config_hash={hash}\n")),
        Outcome::Skipped => (
            StatusCode::OK,
            format!(
                "unchanged config_hash={}\n",
                live.current().gateway().config().hash
            ),
        ),
        Outcome::Invalid(errors) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid: the running configuration stays\n{errors}\n"),
        ),
        Outcome::BuildFailed(errors) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("build_failed: the running configuration stays\n{errors}\n"),
        ),
        Outcome::Closed => (
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down: no reload\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_source_is_checked_again_sooner_and_sooner_less_often() {
        let mut retry = HEALTH_RETRY;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let wait;
            (wait, retry) = next_wait(false, retry);
            waits.push(wait.as_millis());
        }
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        // Once every source passes: the full interval, and a fresh start for the next failure.
        let (wait, retry) = next_wait(true, retry);
        assert_eq!((wait, retry), (HEALTH_INTERVAL, HEALTH_RETRY));
    }
}
