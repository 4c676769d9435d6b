//! What every gRPC server of the project shares (the gateway and the fetcher sidecar host): the
//! shutdown signal and the address a listener is bound to, for the ready line.

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
