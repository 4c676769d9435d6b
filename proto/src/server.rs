//! What every gRPC server of the project shares (the gateway and the fetcher sidecar host): the
//! shutdown signal, the address a listener is bound to (for the ready line), and server reflection
//! listing exactly what the server serves.

use std::{future::Future, net::SocketAddr, pin::Pin};

use tokio::net::TcpListener;

/// Resolves on SIGTERM or SIGINT, listened for from the moment of the call: a server calls it
/// before it says it is ready, so a signal sent right after is not missed (the signal's default
/// action would end the process without its clean shutdown). Call it inside a tokio runtime.
pub fn shutdown_signal() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut interrupt)) => Box::pin(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("cannot listen for SIGTERM and SIGINT: {e}");
                Box::pin(async {
                    let _ = tokio::signal::ctrl_c().await;
                })
            }
        }
    }
    #[cfg(not(unix))]
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// The address a listener is bound to, for the ready line.
pub fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a: SocketAddr| a.to_string())
}

/// The services a server listing `service` in reflection lists: `service` itself, the health
/// service and reflection (both versions): nothing it does not serve.
pub fn served(service: &'static str) -> [&'static str; 4] {
    [
        service,
        tonic_health::pb::health_server::SERVICE_NAME,
        tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
        tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
    ]
}

/// Server reflection (build it with `build_v1` and `build_v1alpha`, both served) over
/// `descriptors`, the descriptor set of `service`'s file and its imports, listing
/// [`served`]`(service)`. A file imported for its messages (`fetcher.proto` imports
/// `feature_service.proto`) does not list that file's services.
pub fn reflection(
    descriptors: &'static [u8],
    service: &'static str,
) -> tonic_reflection::server::Builder<'static> {
    served(service).into_iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Each version registers its own; both are served.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        |builder, name| builder.with_service_name(name),
    )
}
