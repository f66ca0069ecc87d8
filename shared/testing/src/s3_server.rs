//! An S3-compatible server (moto) with a bucket and a user allowed on it.

use crate::{
    logs::record_secret,
    processes::{ChildGuard, free_port, tools_bin},
};

/// An S3-compatible server for tests: moto in server mode (PyPI
/// `moto[server]`, installed into `.data/venv` from
/// deploy/local/requirements.txt) on a free loopback port, with one empty
/// bucket and an IAM user allowed `s3:*` on it. Moto checks every request's
/// SigV4 signature against that user's keys, as a real store would, so a
/// badly signed request fails here too. Killed when dropped (or by
/// [`MotoServer::stop`], for a store that is down).
#[derive(Debug)]
pub struct MotoServer {
    pub port: u16,
    pub bucket: String,
    /// The IAM user's keys, made by moto (recorded for the secrets check).
    access_key_id: String,
    secret_access_key: String,
    client: reqwest::Client,
    process: Option<ChildGuard>,
}

impl MotoServer {
    /// Starts moto, creates the user, its keys and the bucket with unsigned
    /// requests (moto takes those until told otherwise), then turns on
    /// authentication.
    ///
    /// # Panics
    /// When moto is not installed or does not come up within 30 s.
    pub async fn start() -> Self {
        let program = tools_bin().join("moto_server");
        assert!(
            program.exists(),
            "{} is missing: run deploy/local/test.sh, or `source deploy/local/services.sh && \
             ensure_python_tools`, or point KEEL_TOOLS_BIN at a directory that has it",
            program.display()
        );
        let port = free_port();
        let mut command = std::process::Command::new(&program);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Unbuffered, so what it says before dying is in the panic below.
            .env("PYTHONUNBUFFERED", "1");
        let mut process = ChildGuard::spawn(command);
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while client
            .get(format!("{endpoint}/moto-api/"))
            .send()
            .await
            .is_err()
        {
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("moto_server exited with {status}: {}", process.stderr());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not answer on {port} within 30 s: {}",
                process.stderr()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        let iam = |params| moto_iam(&client, &endpoint, params);
        iam(&[("Action", "CreateUser"), ("UserName", "keel")]).await;
        let keys = iam(&[("Action", "CreateAccessKey"), ("UserName", "keel")]).await;
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", "keel"),
            ("PolicyName", "s3"),
            ("PolicyDocument", policy),
        ])
        .await;
        let bucket = format!(
            "keel-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let created = client
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("moto answers");
        assert!(
            created.status().is_success(),
            "bucket: {}",
            created.status()
        );

        let server = Self {
            port,
            bucket,
            access_key_id: xml_text(&keys, "AccessKeyId"),
            secret_access_key: xml_text(&keys, "SecretAccessKey"),
            client,
            process: Some(process),
        };
        record_secret(&server.access_key_id);
        record_secret(&server.secret_access_key);
        server.require_signatures(true).await;
        server
    }

    /// Turns moto's authentication on (every request must be signed by the
    /// user's keys) or off.
    async fn require_signatures(&self, on: bool) {
        let unsigned_allowed = if on { "0" } else { "inf" };
        self.client
            .post(format!("{}/moto-api/reset-auth", self.endpoint()))
            .body(unsigned_allowed)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("moto resets its authentication");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The flags that point an app at this server's bucket, for
    /// `spawn_app_with` or [`config`].
    pub fn flags(&self) -> Vec<String> {
        [
            "--s3-bucket",
            &self.bucket,
            "--s3-endpoint",
            &self.endpoint(),
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            &self.access_key_id,
            "--s3-secret-access-key",
            &self.secret_access_key,
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// The keys in the bucket under `prefix`, asked of moto directly
    /// (`ListObjectsV2`), not through the store under test. Authentication
    /// is off meanwhile, so call it while the app is idle.
    ///
    /// # Panics
    /// When moto does not answer.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let xml = self.list(&[("list-type", "2"), ("prefix", prefix)]).await;
        assert!(
            !xml.contains("<IsTruncated>true</IsTruncated>"),
            "a test bucket holds fewer than 1000 keys"
        );
        // Keys are Keel's own (`files/<uuid>`): nothing in them is escaped.
        xml.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }

    /// How many multipart uploads of the bucket were started and neither
    /// completed nor aborted (`ListMultipartUploads`); like [`Self::keys`].
    ///
    /// # Panics
    /// When moto does not answer.
    pub async fn open_multipart_uploads(&self) -> usize {
        self.list(&[("uploads", "")])
            .await
            .matches("<UploadId>")
            .count()
    }

    /// `GET /<bucket>?<query>`, unsigned (authentication off meanwhile).
    async fn list(&self, query: &[(&str, &str)]) -> String {
        let url =
            url::Url::parse_with_params(&format!("{}/{}", self.endpoint(), self.bucket), query)
                .expect("a listing URL");
        self.require_signatures(false).await;
        let listing = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        self.require_signatures(true).await;
        listing
            .expect("moto lists the bucket")
            .text()
            .await
            .expect("a listing")
    }

    /// Kills the server: the store is down from now on.
    pub fn stop(&mut self) {
        drop(self.process.take());
    }
}

/// Calls moto's IAM query API with `params`, unsigned; the response's XML.
async fn moto_iam(client: &reqwest::Client, endpoint: &str, params: &[(&str, &str)]) -> String {
    let mut form = vec![("Version", "2010-05-08")];
    form.extend_from_slice(params);
    let response = client
        .post(format!("{endpoint}/"))
        // Unchecked while authentication is off: it only routes the request to IAM.
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/iam/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .form(&form)
        .send()
        .await
        .expect("moto answers");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "moto IAM {params:?}: {status} {text}");
    text
}

/// The text of the first `<tag>` in `xml`.
fn xml_text(xml: &str, tag: &str) -> String {
    xml.split_once(&format!("<{tag}>"))
        .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
        .map(|(text, _)| text.to_owned())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}
