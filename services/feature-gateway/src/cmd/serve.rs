//! `feature-gateway serve --config FILE`: load the configuration, build every source behind its
//! stack, start the training log, and serve gRPC and the admin port until SIGTERM or Ctrl-C,
//! reloading the configuration on SIGHUP, on a change of the file and on `POST /admin/reload`.

use std::{path::Path, sync::Arc};

use fetcher_api::Env;
use gateway::{
    Gateway, GatewayBuildError,
    reload::{ConfigSource, Live},
    server, telemetry,
};
use gateway_config::{ConfigError, ConfigErrors};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use training_log::{SinkConfig, TrainingLog, TrainingLogError};

use crate::{cli::Listen, exit::Failure};

/// Serves the configuration at `config_path` until a shutdown signal.
pub fn run(config_path: &Path, listen: &Listen, json_logs: bool) -> Result<(), Failure> {
    let registry = fetcher_builtin::registry();
    let config = gateway::load_config(config_path, &registry, Some(&Env::process()))
        .map_err(Failure::NotStarted)?;
    let metrics = install_metrics()
        .map_err(|e| Failure::run(format!("cannot install the metrics recorder: {e}")))?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    // Inside the runtime: the trace exporter's gRPC channel runs on it. Shut down after
    // `block_on`, so the last spans are exported while the runtime still runs.
    let mut traces = runtime
        .block_on(async { gateway::traces::init(json_logs, config.traces.as_ref()) })
        .map_err(Failure::run)?;
    if let Some(t) = &config.traces {
        tracing::info!(endpoint = %t.endpoint, sample_ratio = t.sample_ratio, "traces exported over OTLP");
    }
    let result = runtime.block_on(async {
        let hash = config.hash.clone();
        let gateway = Gateway::build(config, &registry)
            .await
            .map_err(|e| build_failure(e, config_path))?;
        if let Some(tls) = &gateway.config().tls {
            gateway::tls::server_config(tls).map_err(Failure::run)?;
        }
        telemetry::started(&hash);
        let training_log =
            start_training_log(&gateway).map_err(|e| Failure::run(format!("training log: {e}")))?;
        let live = Arc::new(Live::new(
            gateway,
            training_log,
            Some(ConfigSource {
                path: config_path.to_owned(),
                registry: registry.clone(),
                env: Env::process(),
            }),
        ));
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Failure::run(format!("cannot listen on {addr}: {e}")))
        };
        let grpc = bind(listen.listen).await?;
        let admin = bind(listen.admin_listen).await?;
        let (grpc_addr, admin_addr) = (
            proto::server::local_addr(&grpc),
            proto::server::local_addr(&admin),
        );
        // Listening for SIGTERM before saying so: a signal sent on the ready line shuts down
        // cleanly.
        let shutdown = proto::server::shutdown_signal();
        // SIGHUP reloads the configuration (its default action would end the process).
        let hangups = live
            .on_hangup()
            .map_err(|e| Failure::run(format!("cannot listen for SIGHUP: {e}")))?;
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, config_hash = %hash, "serving");
        // One machine-readable line, for scripts and tests that start the gateway on port 0.
        println!("feature-gateway ready grpc={grpc_addr} admin={admin_addr}");
        let served = server::serve(live, grpc, Some(admin), metrics, shutdown)
            .await
            .map_err(Failure::run);
        hangups.abort();
        served
    });
    traces.shutdown();
    result
}

/// A gateway that cannot be built: a monitor's reference that cannot be used is the
/// configuration's error (exit code 2, nothing started), a source that cannot be built a fault
/// at run time.
fn build_failure(error: GatewayBuildError, config_path: &Path) -> Failure {
    match error {
        GatewayBuildError::Monitor {
            feature_service,
            message,
        } => Failure::NotStarted(ConfigErrors {
            file: config_path.display().to_string(),
            errors: vec![ConfigError {
                position: None,
                path: format!("feature_services.{feature_service}.monitor.reference"),
                message,
            }],
        }),
        e => Failure::run(e),
    }
}

/// Starts the training log of `gateway`'s configuration, if it has one.
fn start_training_log(gateway: &Gateway) -> Result<Option<TrainingLog>, TrainingLogError> {
    let log = gateway::reload::start_training_log(gateway)?;
    if let Some(config) = gateway
        .config()
        .training_log
        .as_ref()
        .filter(|_| log.is_some())
    {
        match &config.sink {
            SinkConfig::Parquet => {
                tracing::info!(dir = %config.dir.display(), spool = %config.spool_dir.display(), "training log on")
            }
            SinkConfig::Kafka(k) => {
                tracing::info!(brokers = %k.brokers.join(","), topic = %k.topic, spool = %config.spool_dir.display(), "training log on, to kafka")
            }
        }
    }
    Ok(log)
}

/// The Prometheus recorder, with the latency buckets on every `_seconds` histogram but the
/// drift monitor's passes, which have finer ones (a full name's buckets take precedence).
pub(crate) fn install_metrics() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            gateway_stack::events::LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full(telemetry::names::DRIFT_WORKER_PASS_SECONDS.to_owned()),
            telemetry::DRIFT_PASS_BUCKETS,
        )?
        .install_recorder()?;
    Ok(handle)
}
