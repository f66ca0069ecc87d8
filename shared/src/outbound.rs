//! What every outgoing HTTP client of Keel is built on (the task kinds',
//! the OAuth flows' and the S3 store's): TCP with a bounded connect time,
//! and rustls with ring (no C build) and the system's CA roots.

use std::{sync::Arc, time::Duration};

use hyper_rustls::{HttpsConnectorBuilder, builderstates::WantsSchemes};
use hyper_util::client::legacy::connect::HttpConnector;

/// A TCP connector that gives up connecting after `connect_timeout` and
/// leaves https URLs to the TLS layer around it.
pub fn tcp(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    http
}

/// The TLS layer, ready for its schemes: rustls with the ring provider,
/// verifying against the system's CA roots. A machine without CA
/// certificates still gets one, so Keel starts and plain http:// endpoints
/// work (MinIO beside the app), while https fails at the handshake, saying
/// why; the warning names what is then out of reach (`unreachable`).
pub fn tls(unreachable: &str) -> HttpsConnectorBuilder<WantsSchemes> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider.clone()) {
        Ok(builder) => builder,
        Err(e) => {
            tracing::warn!(error = %e, "no CA certificates found: {unreachable} cannot be verified");
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
    }
}
