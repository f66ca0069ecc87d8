//! The HTTP client `object_store` speaks to S3 through: hyper over rustls
//! with ring (`outbound`, as every client of Keel's), instead of object_store's
//! default reqwest with aws-lc (a C build these machines avoid). It keeps
//! what object_store's own client would: `allow_http`, timeouts, and error
//! kinds precise enough for its retry rules.

use std::{error::Error as _, time::Duration};

use http_body_util::BodyExt as _;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use object_store::{
    ClientConfigKey, ClientOptions,
    client::{
        HttpClient, HttpConnector as StoreConnector, HttpError, HttpErrorKind, HttpRequest,
        HttpRequestBody, HttpResponse, HttpResponseBody, HttpService,
    },
};

use crate::outbound;

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, HttpRequestBody>;

/// A TCP connection that takes longer than this is a store that is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// From sending a request to its response's head (an 8 MiB part is sent
/// within it): object_store's own default. Without it a store that
/// accepts connections and never answers would hold requests forever.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes the one client every S3 request of a store goes through.
#[derive(Debug, Default)]
pub struct Connector;

impl Connector {
    pub fn new() -> Self {
        Self
    }
}

impl StoreConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let builder = outbound::tls("https:// S3 endpoints");
        // object_store's own client refuses http:// unless allowed
        // (`Storage::from_config` allows it for an http:// endpoint only).
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let https = if allow_http {
            builder.https_or_http()
        } else {
            builder.https_only()
        }
        .enable_http1()
        .wrap_connector(outbound::tcp(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(HttpClient::new(Service(client)))
    }
}

#[derive(Debug)]
struct Service(Inner);

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = tokio::time::timeout(RESPONSE_TIMEOUT, self.0.request(request))
            .await
            .map_err(|elapsed| HttpError::new(HttpErrorKind::Timeout, elapsed))?
            .map_err(|e| HttpError::new(request_error_kind(&e), e))?;
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// What kind of failure `e` is, as object_store's retries understand it:
/// `Connect` and `Request` (nothing reached the server) are retried,
/// `Timeout` and `Interrupted` only for idempotent requests, `Unknown`
/// never. The same refinement object_store applies to reqwest's errors.
fn request_error_kind(e: &hyper_util::client::legacy::Error) -> HttpErrorKind {
    if e.is_connect() {
        return HttpErrorKind::Connect;
    }
    let mut source = e.source();
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            if hyper.is_closed() || hyper.is_incomplete_message() || hyper.is_body_write_aborted() {
                return HttpErrorKind::Request;
            }
            if hyper.is_timeout() {
                return HttpErrorKind::Timeout;
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::TimedOut => return HttpErrorKind::Timeout,
                ErrorKind::ConnectionAborted
                | ErrorKind::ConnectionReset
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof => return HttpErrorKind::Interrupted,
                _ => {}
            }
        }
        source = cause.source();
    }
    HttpErrorKind::Unknown
}
