//! With TLS_CERT_FILE and TLS_KEY_FILE the API serves HTTPS itself.

use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, RootCertStore, crypto::ring, pki_types::ServerName},
};

use crate::helpers::spawn_app_with;

/// A self-signed certificate for `localhost`, written to files the API reads.
fn self_signed() -> (tempfile_paths::Paths, rcgen::CertifiedKey<rcgen::KeyPair>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let paths = tempfile_paths::write(
        &certified.cert.pem(),
        &certified.signing_key.serialize_pem(),
    );
    (paths, certified)
}

mod tempfile_paths {
    pub struct Paths {
        pub dir: std::path::PathBuf,
        pub cert: String,
        pub key: String,
    }

    impl Drop for Paths {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    pub fn write(cert: &str, key: &str) -> Paths {
        let dir = std::env::temp_dir().join(format!("keel-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        Paths {
            cert: cert_path.to_str().unwrap().into(),
            key: key_path.to_str().unwrap().into(),
            dir,
        }
    }
}

#[tokio::test]
async fn with_a_certificate_the_api_serves_https() {
    let (paths, certified) = self_signed();
    let app = spawn_app_with(&["--tls-cert-file", &paths.cert, "--tls-key-file", &paths.key]).await;
    let port = url::Url::parse(&app.address).unwrap().port().unwrap();

    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the TLS handshake succeeds with our certificate");
    tls.write_all(b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.ok();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#"{"status":"alive"}"#), "{response}");

    // Plain HTTP on the same port gets nothing useful back.
    assert!(
        reqwest::get(app.url("/live")).await.is_err(),
        "plain HTTP is not served on the TLS port"
    );
}

#[tokio::test]
async fn an_unusable_certificate_stops_the_build_naming_the_variable() {
    let paths = tempfile_paths::write("not a certificate", "not a key");
    let db = keel_testing::TestDatabase::create().await.unwrap();
    let config = keel_testing::config(
        &db.url,
        &keel_testing::unique_redis_prefix(),
        &["--tls-cert-file", &paths.cert, "--tls-key-file", &paths.key],
    );
    let key = config.signing_key().unwrap();
    let error = keel_api::startup::Application::build(config, key)
        .await
        .unwrap_err();
    assert!(format!("{error:#}").contains("TLS_CERT_FILE"), "{error:#}");
}
