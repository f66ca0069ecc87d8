//! What the API listens with: with `TLS_CERT_FILE` and `TLS_KEY_FILE`, the
//! rustls settings to terminate TLS in process (the server in [`crate::server`]
//! handshakes).

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use tokio_rustls::rustls::{
    ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

/// rustls settings from PEM files: the certificate chain and its private key.
///
/// # Errors
/// A file cannot be read or holds no usable certificate or key.
pub fn tls_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| {
            format!(
                "TLS_CERT_FILE: cannot read certificates from {}",
                cert_file.display()
            )
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "TLS_CERT_FILE: no certificate in {}",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "TLS_KEY_FILE: cannot read a private key from {}",
            key_file.display()
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS_KEY_FILE does not match TLS_CERT_FILE")?;
    // The server speaks HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
