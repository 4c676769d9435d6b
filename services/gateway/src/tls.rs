//! TLS on the gRPC port (rustls), mutual TLS with a client CA, and certificates reloaded when
//! their files change, without a restart.
//!
//! Connections are accepted here and handshaken each on its own task (bounded by
//! [`HANDSHAKE_TIMEOUT`]), so a slow or hostile client never holds up the others; the finished
//! streams feed tonic's server. Every `reload_interval` the certificate, key and client CA files'
//! modification times are checked; on a change the rustls configuration is rebuilt and used for
//! the connections accepted from then on. A file that does not load (half written, wrong key)
//! is logged and the previous configuration stays in use. With a client CA, the peer's
//! certificate is matched once per connection against the callers' `mtls_name`s
//! ([`crate::auth`]).

use std::{
    io,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tonic::transport::server::Connected;

use gateway_config::TlsConfig;

use crate::{
    auth::Authenticator,
    peer::{PeerIdentity, TlsConnectInfo},
};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the rustls configuration of `config` from its files.
pub fn server_config(config: &TlsConfig) -> Result<ServerConfig, String> {
    let certs = fetcher_api::tls::read_certs("server.tls.cert", &config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| {
        format!(
            "server.tls.key: cannot read a PEM private key from `{}`: {e}",
            config.key.display()
        )
    })?;
    let builder = ServerConfig::builder();
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in fetcher_api::tls::read_certs("server.tls.client_ca", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("server.tls.client_ca: `{}`: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if config.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| format!("server.tls.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "server.tls.cert / server.tls.key: `{}` and `{}` cannot be used together: {e}",
            config.cert.display(),
            config.key.display()
        )
    })?;
    // gRPC is HTTP/2 only.
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(server)
}

/// The current rustls configuration, replaced when the files change.
#[derive(Debug)]
pub struct TlsAcceptor {
    config: TlsConfig,
    current: RwLock<(Arc<ServerConfig>, Vec<Option<SystemTime>>)>,
}

impl TlsAcceptor {
    /// Loads `config`'s files.
    pub fn new(config: TlsConfig) -> Result<Arc<TlsAcceptor>, String> {
        let server = server_config(&config)?;
        let stamps = stamps(&config);
        Ok(Arc::new(TlsAcceptor {
            config,
            current: RwLock::new((Arc::new(server), stamps)),
        }))
    }

    fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Reloads the files if they changed since last loaded. `Ok(true)`: reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamps(&self.config);
        let changed = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1
            != now;
        if !changed {
            return Ok(false);
        }
        let server = server_config(&self.config);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Remember these times either way: a broken file is reported once, not every tick.
        current.1 = now;
        current.0 = Arc::new(server?);
        Ok(true)
    }

    /// Checks the files every `reload_interval`, forever.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.config.reload_interval).await;
            match self.reload_if_changed() {
                Ok(true) => tracing::info!("TLS certificate reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    "TLS files changed but do not load, keeping the previous ones: {e}"
                ),
            }
        }
    }
}

fn stamps(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    [
        Some(&config.cert),
        Some(&config.key),
        config.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

/// A handshaken connection.
#[derive(Debug)]
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections on `listener` and handshakes each on its own task; the stream of
/// finished connections is what tonic serves. Ends when the receiving side is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: Arc<TlsAcceptor>,
    auth: Option<Arc<Authenticator>>,
) -> impl futures::Stream<Item = io::Result<TlsConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            // Without TCP_NODELAY small responses wait on delayed ACKs (~40 ms each).
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsAcceptor::from(acceptor.current());
            let (tx, auth) = (tx.clone(), auth.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, "TLS handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = PeerIdentity(
                    stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .zip(auth.as_deref())
                        .and_then(|(cert, auth)| auth.identify_certificate(cert)),
                );
                let info = TlsConnectInfo {
                    remote: Some(remote),
                    identity,
                };
                let _ = tx.send(TlsConn { stream, info }).await;
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|conn| (Ok(conn), rx))
    })
}
