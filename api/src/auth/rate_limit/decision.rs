//! The outcome of one rate-limit check and the headers it sets. Apart from
//! the limiter so that `ApiError` can carry it without depending on Redis,
//! the state or the middleware.

use axum::http::{HeaderMap, HeaderValue};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds to wait before a retry can succeed (0 when allowed).
    pub retry_after_secs: u64,
}

impl Decision {
    /// `RateLimit-Limit`, `-Remaining`, `-Reset` (and `Retry-After` when refused).
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(self.reset_secs));
        if !self.allowed {
            headers.insert(
                "retry-after",
                HeaderValue::from(self.retry_after_secs.max(1)),
            );
        }
    }
}
