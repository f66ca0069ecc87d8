//! HTTP metrics: `keel_http_requests_total` and
//! `keel_http_request_duration_seconds`, by method, route and status.

use std::time::Instant;

use axum::{extract::MatchedPath, extract::Request, middleware::Next, response::Response};

pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    // The route template, never the raw path: ids in paths would explode cardinality.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let response = next.run(req).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("keel_http_requests_total", &labels).increment(1);
    metrics::histogram!("keel_http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}
