//! The general rate limit on the API routes, keyed by the caller, with the
//! `RateLimit-*` headers on every response. Apart from the limiter
//! ([`crate::auth::rate_limit`]), which the state holds: this needs the state.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use crate::{auth::client_ip, error::ApiError, state::AppState};

/// The general limit, keyed by the caller: a user (by a token that verifies
/// — no database needed), else the client IP. API keys count against the IP:
/// telling a real key from a random one takes a database lookup, and a
/// bucket per unverified key would let a client mint endless budgets.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.limiter.enabled {
        return next.run(req).await;
    }
    let bucket = bucket_of(&state, &req);
    match state.limiter.check(&bucket, state.limiter.general).await {
        Ok(decision) if decision.allowed => {
            let mut response = next.run(req).await;
            // A sign-in endpoint's own (stricter) verdict stands.
            if !response.headers().contains_key("ratelimit-limit") {
                decision.apply(response.headers_mut());
            }
            response
        }
        Ok(decision) => ApiError::RateLimited(decision).into_response(),
        Err(e) => {
            // Fail open: a Redis outage must not take the whole API down.
            tracing::warn!(error = %e, "rate limiter unavailable; request allowed");
            next.run(req).await
        }
    }
}

fn bucket_of(state: &AppState, req: &Request) -> String {
    let headers = req.headers();
    if let Some(bearer) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        && let Ok(claims) = state.tokens.verify_access(bearer.trim())
    {
        return format!("user:{}", claims.sub);
    }
    let ip = client_ip::of(
        req.extensions(),
        headers,
        &state.config.http.trusted_proxies,
    );
    format!("ip:{}", client_ip::bucket(ip))
}
