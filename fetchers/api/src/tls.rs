//! Reading the PEM files a TLS client needs (feature `tls`): root certificates and the client
//! certificate with its private key. Errors name the option and the file, never the files'
//! contents.

use std::path::Path;

use rustls::{
    ClientConfig, ConfigBuilder,
    client::WantsClientCert,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// Every certificate of a PEM file; none is an error. `option` names the option in messages.
pub fn read_certs(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{option}: cannot read `{}`: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{option}: `{}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Finishes `builder` with the client certificate of `tls_client_cert_file` (`cert_path`) and
/// the private key of `tls_client_key_file` (`key_path`), for mutual TLS.
pub fn client_auth(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<ClientConfig, String> {
    let certs = read_certs("tls_client_cert_file", cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "tls_client_key_file: cannot read a PEM private key from `{}`: {e}",
            key_path.display()
        )
    })?;
    builder.with_client_auth_cert(certs, key).map_err(|e| {
        format!(
            "tls_client_cert_file / tls_client_key_file: `{}` and `{}` cannot be used \
             together: {e}",
            cert_path.display(),
            key_path.display()
        )
    })
}
