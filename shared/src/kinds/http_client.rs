//! The HTTP client kinds use: hyper over rustls (ring provider, the
//! system's CA roots), HTTP/1.1, a bounded connect time, and no redirects
//! (hyper follows none, so a redirect cannot lead off the allow-list).

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::outbound;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client for `http_request` and any later kind that calls out.
pub fn http_client() -> HttpClient {
    let https = outbound::tls("https calls from tasks")
        .https_or_http()
        .enable_http1()
        .wrap_connector(outbound::tcp(Duration::from_secs(10)));
    Client::builder(TokioExecutor::new()).build(https)
}
