//! `[server.tls]`: TLS and mutual TLS on the gRPC port.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::problems::Problems;

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
pub struct RawTls {
    /// The server's certificate chain (PEM).
    pub cert: String,
    /// Its private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// Clients must present a certificate issued by this CA (PEM): mutual TLS.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// With `client_ca`: `true` (default) refuses clients without a certificate; `false`
    /// accepts them (they then need a bearer token).
    #[serde(default)]
    pub require_client_cert: Option<bool>,
    /// How often the files are checked for changes, e.g. `"10s"` (the default).
    #[serde(default)]
    pub reload_interval: Option<String>,
}

/// `[server.tls]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TlsConfig {
    /// Certificate chain file.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
    /// Client CA file, for mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate.
    pub require_client_cert: bool,
    /// How often the files are checked.
    pub reload_interval: Duration,
}

/// Default `reload_interval`.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Validates `[server.tls]`.
pub(crate) fn validate_tls(raw: &RawTls, base_dir: &Path, problems: &mut Problems) -> TlsConfig {
    const AT: [&str; 2] = ["server", "tls"];
    let reload_interval = problems.duration(
        &[AT[0], AT[1], "reload_interval"],
        raw.reload_interval.as_deref(),
        DEFAULT_RELOAD_INTERVAL,
        false,
    );
    if raw.require_client_cert.is_some() && raw.client_ca.is_none() {
        problems.add(
            &[AT[0], AT[1], "require_client_cert"],
            "needs `client_ca` (the CA client certificates are checked against)",
        );
    }
    TlsConfig {
        cert: base_dir.join(&raw.cert),
        key: base_dir.join(&raw.key),
        client_ca: raw.client_ca.as_ref().map(|c| base_dir.join(c)),
        require_client_cert: raw.require_client_cert.unwrap_or(true),
        reload_interval,
    }
}
