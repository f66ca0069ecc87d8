//! Response headers that make browsers safer with an API (no sniffing, no
//! framing, no referrer leaks; HSTS in production), and CORS from
//! `ALLOWED_ORIGINS`.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue, Method, header},
    middleware::Next,
    response::Response,
};
use keel_shared::Config;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::request_id::REQUEST_ID;

/// The API's default policy: load nothing, be framed by no one. Pages that
/// need scripts (the docs) set their own before this layer sees them.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

const DEFAULTS: [(HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CONTENT_SECURITY_POLICY, API_CSP),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    ),
];

/// Adds the headers a response did not set itself; `hsts` (production) adds
/// `Strict-Transport-Security`.
pub async fn set(State(hsts): State<bool>, req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in DEFAULTS {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    if hsts {
        headers
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static(
                "max-age=31536000; includeSubDomains",
            ));
    }
    response
}

/// CORS for the configured origins; none configured, no CORS headers at all,
/// so browsers keep other origins out.
pub fn cors(config: &Config) -> Option<CorsLayer> {
    let origins = &config.http.allowed_origins;
    let allow_origin = if origins.any {
        AllowOrigin::from(Any)
    } else if origins.list.is_empty() {
        return None;
    } else {
        AllowOrigin::list(
            origins
                .list
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("idempotency-key"),
                REQUEST_ID.clone(),
            ])
            .expose_headers([
                REQUEST_ID.clone(),
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ])
            .max_age(Duration::from_secs(3600)),
    )
}
