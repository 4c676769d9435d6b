//! `feature-gateway ingest --config FILE`: consume a `stream` source's Kafka topic into its
//! views' tiles (see the `ingest` crate for the guarantees), serving metrics on the admin port,
//! until SIGTERM or Ctrl-C (or, with `--until-caught-up`, the end of the topic).

use std::{
    io::IsTerminal,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use fetcher_api::{Env, SourceSpec};
use gateway_config::Config;
use ingest::{Options, Progress};
use tokio::{net::TcpListener, sync::watch};

use crate::{cli::IngestArgs, cmd::serve::install_metrics, exit::Failure};

/// Ingests until stopped.
pub fn run(args: &IngestArgs) -> Result<(), Failure> {
    let config = gateway::load_config(
        &args.config,
        &fetcher_builtin::registry(),
        Some(&Env::process()),
    )?;
    let spec = stream_source(&config, args.source.as_deref())?.clone();
    let partitions = args
        .partitions
        .as_deref()
        .map(parse_partitions)
        .transpose()
        .map_err(|e| Failure::Usage(format!("--partitions: {e}")))?;
    let metrics = install_metrics()
        .map_err(|e| Failure::run(format!("cannot install the metrics recorder: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::run(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let stream = fetcher_stream::open(&spec, &Env::process(), true, None)
            .await
            .map_err(Failure::run)?;
        let admin = TcpListener::bind(args.admin_listen)
            .await
            .map_err(|e| Failure::run(format!("cannot listen on {}: {e}", args.admin_listen)))?;
        let admin_addr = proto::server::local_addr(&admin);
        let (stop_tx, stop_rx) = watch::channel(false);
        let router = Router::new()
            .route(
                "/metrics",
                get(move || std::future::ready(metrics.render())),
            )
            .route("/healthz", get(|| std::future::ready("ok\n")));
        let mut admin_stop = stop_rx.clone();
        let admin_task = tokio::spawn(async move {
            let _ = axum::serve(admin, router)
                .with_graceful_shutdown(async move {
                    let _ = admin_stop.wait_for(|s| *s).await;
                })
                .await;
        });
        let shutdown = proto::server::shutdown_signal();
        println!(
            "feature-gateway ingest ready source={} admin={admin_addr}",
            spec.name
        );
        let progress = Arc::new(Progress::default());
        let reporter = tokio::spawn(report(progress.clone(), std::io::stderr().is_terminal()));
        let options = Options {
            partitions,
            until_caught_up: args.until_caught_up,
        };
        let mut ingest = tokio::spawn(ingest::run(stream, options, progress.clone(), stop_rx));
        let result = tokio::select! {
            r = &mut ingest => r,
            () = shutdown => {
                tracing::info!("stopping: finishing the batches in flight");
                let _ = stop_tx.send(true);
                ingest.await
            }
        };
        let _ = stop_tx.send(true);
        reporter.abort();
        let _ = admin_task.await;
        let p = &progress;
        eprintln!(
            "{} records read; {} events applied, {} replayed, {} late, {} bad; {} errors retried",
            p.records.load(Ordering::Relaxed),
            p.applied.load(Ordering::Relaxed),
            p.replayed.load(Ordering::Relaxed),
            p.late.load(Ordering::Relaxed),
            p.bad.load(Ordering::Relaxed),
            p.errors.load(Ordering::Relaxed),
        );
        result
            .map_err(|e| Failure::run(format!("ingest failed: {e}")))?
            .map_err(Failure::run)
    })
}

/// The stream source to ingest: `--source`, or the only one with Kafka options.
fn stream_source<'a>(config: &'a Config, name: Option<&str>) -> Result<&'a SourceSpec, Failure> {
    let streams: Vec<&SourceSpec> = config
        .sources
        .values()
        .filter(|s| s.kind == "stream" && s.spec.options.0.contains_key("kafka"))
        .map(|s| &s.spec)
        .collect();
    match name {
        Some(name) => match config.sources.get(name) {
            Some(s) if streams.iter().any(|x| x.name == name) => Ok(&s.spec),
            Some(s) => Err(Failure::Usage(format!(
                "--source: `{name}` is a `{}` source, not a `stream` source with `kafka` options",
                s.kind
            ))),
            None => Err(Failure::Usage(format!("--source: unknown source `{name}`"))),
        },
        None => match streams.as_slice() {
            [one] => Ok(one),
            [] => Err(Failure::Usage(
                "the configuration has no `stream` source with `kafka` options".into(),
            )),
            many => Err(Failure::Usage(format!(
                "--source: the configuration has several stream sources ({}): name one",
                many.iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
    }
}

/// `0,2,4-7` as a list of partitions.
fn parse_partitions(text: &str) -> Result<Vec<i32>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a partition or a range like `4-7`");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i32, i32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b || a < 0 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(
                part.parse()
                    .map_err(|_| bad())
                    .and_then(|p: i32| if p < 0 { Err(bad()) } else { Ok(p) })?,
            ),
        }
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err("no partition given".into());
    }
    Ok(out)
}

/// A progress line every second on a terminal.
async fn report(progress: Arc<Progress>, terminal: bool) {
    if !terminal {
        return;
    }
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = &progress;
        let records = p.records.load(Ordering::Relaxed);
        let rate = (records - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
        last = (records, Instant::now());
        eprint!(
            "\r{:>6.0}s  {records} records ({rate:.0}/s), {} applied, {} late, {} bad, lag {}   ",
            started.elapsed().as_secs_f64(),
            p.applied.load(Ordering::Relaxed),
            p.late.load(Ordering::Relaxed),
            p.bad.load(Ordering::Relaxed),
            p.lag.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_read_lists_and_ranges() {
        assert_eq!(parse_partitions("0,2, 4-6,2"), Ok(vec![0, 2, 4, 5, 6]));
        assert!(parse_partitions("3-1").is_err());
        assert!(parse_partitions("x").is_err());
        assert!(parse_partitions("").is_err());
        assert!(parse_partitions("-2").is_err());
    }
}
