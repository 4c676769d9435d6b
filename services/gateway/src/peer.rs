//! Who is at the other end of a gRPC connection, as the TLS handshake established it: what the
//! TLS layer records and authentication reads. A leaf: it imports no other module.

use std::net::SocketAddr;

/// What the server knows of a TLS connection, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct TlsConnectInfo {
    /// The peer's address.
    pub remote: Option<SocketAddr>,
    /// The caller its client certificate identifies, if any.
    pub identity: PeerIdentity,
}

/// What the TLS acceptor learned of a connection's client certificate: the index of the
/// caller it identifies (see [`Authenticator::identify_certificate`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerIdentity(pub Option<usize>);
