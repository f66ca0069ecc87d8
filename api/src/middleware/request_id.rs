//! `X-Request-Id`: echoed when the client sends a sane one, generated
//! otherwise, and recorded on the request's tracing span.

use axum::{
    extract::Request,
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use tracing::Span;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent id we echo; longer ones are replaced.
const MAX_LEN: usize = 128;

/// Drops a client id that is too long or not printable ASCII, so a client
/// cannot stuff our logs or echoed headers; a fresh one is generated instead.
pub async fn sanitize(mut req: Request, next: Next) -> Response {
    if req
        .headers()
        .get(&REQUEST_ID)
        .is_some_and(|v| !acceptable(v))
    {
        req.headers_mut().remove(&REQUEST_ID);
    }
    next.run(req).await
}

fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// The span of one request: method, path (never the query, which may carry
/// a token) and request id.
pub fn span(req: &axum::http::Request<axum::body::Body>) -> Span {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "http",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
    )
}
