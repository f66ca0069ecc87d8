//! The HTTP client of the OAuth flows: discovery, keys, code exchange,
//! userinfo and GitHub's API, over hyper and rustls (ring, the system's CA
//! roots), as `openidconnect`'s `AsyncHttpClient`. Every call is bounded in
//! time and in the size of what it reads back.

use std::{future::Future, pin::Pin, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use keel_shared::outbound;
use openidconnect::{AsyncHttpClient, HttpRequest, HttpResponse};

/// How long one call may take, from connecting to the last byte of the body.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body read back: discovery documents and key sets are a few KiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a call failed. It names the host, never the path or query, and
/// nothing of the exchange: requests carry client secrets and codes.
#[derive(Debug, thiserror::Error)]
#[error("{host}: {reason}")]
pub struct CallError {
    host: String,
    reason: String,
}

/// A cheap-to-clone client; connections are pooled.
#[derive(Clone)]
pub struct OAuthHttp {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for OAuthHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthHttp").finish_non_exhaustive()
    }
}

impl OAuthHttp {
    pub fn new() -> Self {
        // No redirects are followed (hyper follows none): every endpoint is
        // where discovery or the preset says.
        let https = outbound::tls("https OAuth providers")
            .https_or_http()
            .enable_http1()
            .wrap_connector(outbound::tcp(Duration::from_secs(5)));
        Self {
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// One call, its whole body read.
    ///
    /// # Errors
    /// No connection, a timeout, or a body over the limit.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, CallError> {
        let host = request.uri().host().unwrap_or("?").to_owned();
        let fail = |reason: String| CallError {
            host: host.clone(),
            reason,
        };
        let (parts, body) = request.into_parts();
        let request = hyper::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| fail(chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the response: {e}")))?
                .to_bytes();
            Ok(HttpResponse::from_parts(parts, body.to_vec()))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| fail(format!("no answer within {CALL_TIMEOUT:?}")))?
    }
}

/// An error with its causes, as hyper's own says only "client error (Connect)".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl<'c> AsyncHttpClient<'c> for OAuthHttp {
    type Error = CallError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, CallError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}
