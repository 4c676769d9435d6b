//! TLS to PostgreSQL: the URL's `sslmode` with libpq's meaning, and the rustls connector (ring
//! provider) that every connection of the pool and every cancel request uses.
//!
//! # Modes
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (the default, as in libpq) | if the server offers it, else plain | not checked; with `tls_ca_file`, its chain is |
//! | `require` | always: a server without TLS fails | not checked; with `tls_ca_file`, its chain is |
//! | `verify-ca` | always | chained to a root of `tls_ca_file` |
//! | `verify-full` | always | chained to a root of `tls_ca_file` and issued for the URL's host (a name or an IP address) |
//!
//! "With `tls_ca_file`, its chain is" follows libpq, where `require` behaves as `verify-ca` once a
//! root certificate file exists. libpq's `allow` (plain first, TLS on refusal) is not supported:
//! tokio-postgres has no such mode. There is no default root store: a verifying mode needs
//! `tls_ca_file` (libpq likewise fails without `~/.postgresql/root.crt`), which keeps the gateway
//! from trusting every public CA for a database that normally has a private one.
//!
//! # Why this module parses `sslmode`
//! tokio-postgres knows only `disable`, `prefer` and `require` and rejects the verifying modes, and
//! certificate checks are the connector's business anyway. So the mode is taken out of the URL
//! here ([`split_sslmode`]), tokio-postgres gets the TLS-or-not part of it, and the connector gets
//! the checking part.
//!
//! # Failure
//! [`check`] (no I/O) names a bad mode or a bad combination of options; [`connector`] (I/O) names
//! the option whose file cannot be read or holds no usable PEM data. A failed handshake surfaces
//! as the connection's error at build, which [`explain_connect_error`] turns into a hint naming
//! the option to look at.

use std::{fmt, path::PathBuf, sync::Arc};

use fetcher_api::{Problem, tls};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every connection and cancel request of a source uses.
pub type Connector = MakeRustlsConnect;

/// libpq's `sslmode`, less `allow`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// libpq's default.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The mode named `text`; the error is said of the URL, which holds it.
    fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(
                    "sslmode=allow is not supported; use prefer (TLS when the server offers \
                     it) or disable"
                        .to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                ));
            }
        })
    }

    /// Whether the server's certificate is checked against `tls_ca_file` whatever else is set.
    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// What tokio-postgres is told: whether to try TLS and whether it may fall back to plain.
    pub fn for_tokio_postgres(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A source's TLS options, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// PEM roots to trust, resolved against the config file's directory at build.
    pub ca_file: Option<String>,
    /// PEM client certificate chain and private key, for servers that ask for one.
    pub client_cert: Option<(String, String)>,
}

/// The URL without its `sslmode` parameter, and that parameter's value if present (the last one
/// wins, as in libpq). Only the query string is looked at, so a password is never mistaken for it.
pub fn split_sslmode(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut mode = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslmode", value)) => {
                mode = Some(value.to_owned());
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, mode)
}

/// Checks the mode (from the URL) against the `tls_*` options, without reading any file. A
/// problem with the mode, or one that a `tls_*` option does not cure by being set, is the URL's.
pub fn check(
    sslmode: Option<&str>,
    ca_file: Option<&str>,
    client_cert_file: Option<&str>,
    client_key_file: Option<&str>,
) -> Result<TlsSettings, Vec<Problem>> {
    let mut problems = Vec::new();
    let at = |option: &str, message: String| Problem::new(message).at(option);
    let mode = match sslmode.map(SslMode::parse).transpose() {
        Ok(mode) => mode.unwrap_or_default(),
        Err(e) => {
            problems.push(at("url", e));
            SslMode::default()
        }
    };
    for (name, value) in [
        ("tls_ca_file", ca_file),
        ("tls_client_cert_file", client_cert_file),
        ("tls_client_key_file", client_key_file),
    ] {
        if value.is_some_and(|v| v.trim().is_empty()) {
            problems.push(at(name, "is empty".into()));
        } else if value.is_some() && mode == SslMode::Disable {
            problems.push(at(
                name,
                "has no effect with sslmode=disable: remove it or set another sslmode".into(),
            ));
        }
    }
    if mode.verifies() && ca_file.is_none() {
        problems.push(at(
            "url",
            format!(
                "tls_ca_file is required with sslmode={mode}: the server's certificate is \
                 checked against the roots it holds (no system root store is used)"
            ),
        ));
    }
    let client_cert = match (client_cert_file, client_key_file) {
        (Some(cert), Some(key)) => Some((cert.to_owned(), key.to_owned())),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(at(
                "tls_client_cert_file",
                "needs tls_client_key_file (its private key)".into(),
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(at(
                "tls_client_key_file",
                "needs tls_client_cert_file (its certificate)".into(),
            ));
            None
        }
    };
    if problems.is_empty() {
        Ok(TlsSettings {
            mode,
            ca_file: ca_file.map(str::to_owned),
            client_cert,
        })
    } else {
        Err(problems)
    }
}

/// Builds the connector, reading the files (`resolve` turns an option's path into a file path).
/// The error names the option and the file, never the files' contents.
pub fn connector(
    settings: &TlsSettings,
    resolve: impl Fn(&str) -> PathBuf,
) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match &settings.ca_file {
        Some(ca_file) => {
            let path = resolve(ca_file);
            let certs = tls::read_certs("tls_ca_file", &path)?;
            let mut roots = RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    format!(
                        "tls_ca_file: `{}` holds a certificate rustls cannot use as a root: {e}",
                        path.display()
                    )
                })?;
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| format!("tls_ca_file: `{}`: {e}", path.display()))?;
            if settings.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        None => Arc::new(NoCheck(algorithms)),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &settings.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            tls::client_auth(builder, &resolve(cert_file), &resolve(key_file))?
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// A hint for a connection that failed at build, naming the TLS option to look at; `None` when
/// the failure is not about TLS.
pub fn explain_connect_error(message: &str, settings: &TlsSettings) -> Option<String> {
    if message.contains("server does not support TLS") {
        return Some(format!(
            "the server does not accept TLS connections, and sslmode={} requires TLS: enable \
             `ssl` on the server, or lower sslmode",
            settings.mode
        ));
    }
    let certificate = [
        "invalid peer certificate",
        "UnknownIssuer",
        "NotValidForName",
    ]
    .iter()
    .any(|p| message.contains(p));
    if certificate {
        return Some(if message.contains("NotValidForName") {
            format!(
                "the server's certificate is not issued for the host in the URL \
                 (sslmode={}); connect by a name the certificate holds, or use sslmode=verify-ca",
                settings.mode
            )
        } else {
            "the server's certificate is not signed by a root in tls_ca_file".to_owned()
        });
    }
    if message.contains("TLS") || message.contains("certificate") {
        return Some(format!("TLS handshake failed (sslmode={})", settings.mode));
    }
    None
}

/// Checks the chain against the roots but not the name: libpq's `verify-ca`.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name only after the chain, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any server certificate (libpq's `prefer` and `require` without a root file: the
/// connection is encrypted, the server not authenticated). The handshake's signatures are still
/// checked, so the server must hold the key of the certificate it sent.
#[derive(Debug)]
struct NoCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use fetcher_api::config::join;

    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_query_only() {
        assert_eq!(
            split_sslmode("postgres://u@h/db?sslmode=verify-full&application_name=x"),
            (
                "postgres://u@h/db?application_name=x".to_owned(),
                Some("verify-full".to_owned())
            )
        );
        assert_eq!(
            split_sslmode("postgres://u@h/db?sslmode=require"),
            ("postgres://u@h/db".to_owned(), Some("require".to_owned()))
        );
        assert_eq!(
            split_sslmode("postgres://u:sslmode=x@h/db"),
            ("postgres://u:sslmode=x@h/db".to_owned(), None)
        );
    }

    #[test]
    fn option_combinations_are_checked_without_io() {
        let ok = check(Some("verify-full"), Some("ca.pem"), None, None).unwrap();
        assert_eq!(ok.mode, SslMode::VerifyFull);
        assert_eq!(check(None, None, None, None).unwrap().mode, SslMode::Prefer);

        let text = |r: Result<TlsSettings, Vec<Problem>>| join(&r.unwrap_err(), "\n");
        let e = text(check(Some("verify-ca"), None, None, None));
        assert!(
            e.contains("url: tls_ca_file is required with sslmode=verify-ca"),
            "{e}"
        );
        let e = text(check(Some("disable"), Some("ca.pem"), None, None));
        assert!(
            e.contains("tls_ca_file: has no effect with sslmode=disable"),
            "{e}"
        );
        let e = text(check(Some("require"), None, Some("c.pem"), None));
        assert!(
            e.contains("tls_client_cert_file: needs tls_client_key_file"),
            "{e}"
        );
        let e = text(check(Some("require"), None, None, Some("k.pem")));
        assert!(
            e.contains("tls_client_key_file: needs tls_client_cert_file"),
            "{e}"
        );
        let e = text(check(Some("allow"), None, None, None));
        assert!(e.contains("url: sslmode=allow is not supported"), "{e}");
        let e = text(check(Some("bogus"), Some(" "), None, None));
        assert!(e.contains("url: sslmode `bogus`"), "{e}");
        assert!(e.contains("tls_ca_file: is empty"), "{e}");
    }

    #[test]
    fn unreadable_files_name_their_option() {
        let settings = check(Some("verify-full"), Some("/nonexistent/ca.pem"), None, None).unwrap();
        let e = connector(&settings, |p: &str| PathBuf::from(p))
            .err()
            .unwrap();
        assert!(
            e.starts_with("tls_ca_file: cannot read `/nonexistent/ca.pem`"),
            "{e}"
        );

        let dir = std::env::temp_dir().join(format!("fg-pg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let settings = check(Some("verify-ca"), empty.to_str(), None, None).unwrap();
        let e = connector(&settings, |p: &str| PathBuf::from(p))
            .err()
            .unwrap();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);

        // Without files, the connector is built with no I/O at all.
        assert!(connector(&TlsSettings::default(), |p: &str| PathBuf::from(p)).is_ok());
    }
}
