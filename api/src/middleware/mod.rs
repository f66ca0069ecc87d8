//! The HTTP stack every route runs inside, outermost first: request id,
//! tracing span, problem rendering, panic catching, timeout, body limit,
//! CORS, security headers, metrics. The general rate limit ([`rate_limit`])
//! is the routes' own layer, on the resources only.

mod body_budget;
mod body_limit;
mod metrics;
mod problem;
pub mod rate_limit;
mod request_id;
mod security_headers;
pub mod trailing_slash;

use std::time::Duration;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware::{from_fn, from_fn_with_state},
};
use keel_shared::Config;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::{DefaultOnFailure, TraceLayer},
};

pub use request_id::REQUEST_ID;
pub use security_headers::API_CSP;

/// Wraps `router` in Keel's stack.
pub fn apply<S: Clone + Send + Sync + 'static>(router: Router<S>, config: &Config) -> Router<S> {
    let timeout = Duration::from_secs(config.http.request_timeout_seconds);
    router
        // Innermost: sees the matched route.
        .layer(from_fn(metrics::track))
        .layer(
            ServiceBuilder::new()
                .layer(from_fn(request_id::sanitize))
                .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_id::span)
                        // What an operator must see is logged where it
                        // happens (a bug, a panic, a dependency down); each
                        // 503 of a flood at ERROR would flood the log too.
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
                .layer(from_fn(problem::finalize))
                .layer(from_fn_with_state(
                    config.is_production(),
                    security_headers::set,
                ))
                .layer(CatchPanicLayer::custom(problem::from_panic))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    timeout,
                ))
                .layer(from_fn_with_state(
                    body_limit::BodyLimits::new(config),
                    body_limit::limit,
                ))
                .layer(DefaultBodyLimit::max(config.http.max_body_bytes))
                .option_layer(security_headers::cors(config)),
        )
}
