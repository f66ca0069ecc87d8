//! The request body limit: `MAX_BODY_BYTES` for everything but the two
//! upload routes, whose bodies are files and get room for them
//! (`MAX_UPLOAD_BYTES` × `MAX_FILES_PER_UPLOAD`, or `MAX_AVATAR_BYTES`),
//! the per-file limits and the quota being checked as the bytes stream in.

use axum::{
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use http_body_util::Limited;
use keel_shared::Config;

/// Room for a form's boundaries and text fields around its files.
const FORM_OVERHEAD: u64 = 1024 * 1024;

/// The limits, by route.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    default: u64,
    files: u64,
    avatar: u64,
}

impl BodyLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            default: config.http.max_body_bytes as u64,
            files: config
                .storage
                .max_upload_bytes
                .saturating_mul(u64::from(config.storage.max_files_per_upload))
                .saturating_add(FORM_OVERHEAD),
            avatar: config
                .storage
                .max_avatar_bytes
                .saturating_add(FORM_OVERHEAD),
        }
    }

    fn of(&self, method: &Method, path: &str) -> u64 {
        match (method, path.trim_end_matches('/')) {
            (&Method::POST, "/api/v1/files") => self.files,
            (&Method::PUT, "/api/v1/users/me/avatar") => self.avatar,
            _ => self.default,
        }
    }
}

/// Refuses a declared length over the route's limit at once (413), and
/// cuts off a body that grows past it.
pub async fn limit(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let limit = limits.of(request.method(), request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    next.run(request.map(|body| Body::new(Limited::new(body, limit))))
        .await
}
